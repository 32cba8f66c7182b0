//! Free entry points that a race would lose (docs/rules.md §1). A reply inside a referral
//! message's window starts an FEP; dispatch flags the reply when, at acceptance, the window
//! service has recorded the referral. When the business answers first (the window service
//! applies the referral a moment later), nothing flagged the reply. So the event log notes
//! every referral message (`note`), and this checker, a grace period later (longer than any
//! acceptance in flight), looks once the window service has the referral for the first reply
//! after it, and publishes a `FepReply` for the window service (on the user topic) under the
//! id every `FepReply` of that message has, so a reply counted both ways counts once.
//! Later replies need no check: dispatch sees the referral for them.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::{Clock, Timestamp};
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::time::from_micros;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, FepReply};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::hot::Hot;

/// A referral message to look after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub tenant_id: String,
    pub phone_number_id: String,
    pub user_key: String,
    pub referral_at: i64,
}

/// The referral message of an inbound envelope, if it is one.
pub fn check_of(env: &Envelope) -> Option<Check> {
    let Some(Payload::InboundMessage(m)) = env.payload.as_ref() else {
        return None;
    };
    let user = m.user.as_ref()?;
    let user_key = if user.wa_id.is_empty() {
        &user.user_id
    } else {
        &user.wa_id
    };
    (m.referral.is_some() && !env.tenant_id.is_empty() && !user_key.is_empty()).then(|| Check {
        tenant_id: env.tenant_id.clone(),
        phone_number_id: m.phone_number_id.clone(),
        user_key: user_key.clone(),
        referral_at: env
            .occurred_at
            .as_ref()
            .map_or(0, finestra_proto::time::to_micros),
    })
}

/// Notes referral messages, to be looked at from `due_at` (a note seen again is kept as is).
pub async fn note(pool: &PgPool, checks: &[Check], due_at: i64) -> Result<(), sqlx::Error> {
    if checks.is_empty() {
        return Ok(());
    }
    let t: Vec<String> = checks.iter().map(|c| c.tenant_id.clone()).collect();
    let n: Vec<String> = checks.iter().map(|c| c.phone_number_id.clone()).collect();
    let u: Vec<String> = checks.iter().map(|c| c.user_key.clone()).collect();
    let r: Vec<i64> = checks.iter().map(|c| c.referral_at).collect();
    sqlx::query!(
        "INSERT INTO dispatch.fep_checks (tenant_id, phone_number_id, user_key, referral_at, due_at)
         SELECT t, n, u, r, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
             AS x(t, n, u, r)
         ON CONFLICT DO NOTHING",
        &t,
        &n,
        &u,
        &r,
        due_at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The first reply to the pair accepted in `[from, until)` that did not fail: its id, time
/// and whether it was flagged as starting an FEP.
async fn first_reply(
    pool: &PgPool,
    c: &Check,
    until: i64,
) -> Result<Option<(String, i64, bool)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT message_id, accepted_at, starts_fep FROM dispatch.messages
          WHERE tenant_id = $1 AND accepted_at >= $4 AND accepted_at < $5
            AND phone_number_id = $2 AND recipient = $3 AND status <> 'FAILED'
          ORDER BY accepted_at, message_id LIMIT 1",
        &c.tenant_id,
        &c.phone_number_id,
        &c.user_key,
        c.referral_at,
        until,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.message_id, r.accepted_at, r.starts_fep)))
}

/// The event that tells the window service a reply starts a free entry point (on the user
/// topic, keyed by conversation). Its id is the message's `out:` id wherever it comes from, so
/// the window service counts a reply once.
pub fn reply_event(
    tenant_id: &str,
    message_id: &str,
    phone_number_id: &str,
    user: &str,
    replied_at: i64,
) -> Envelope {
    Envelope {
        event_id: format!("out:{message_id}"),
        tenant_id: tenant_id.to_owned(),
        occurred_at: Some(from_micros(replied_at)),
        recorded_at: Some(from_micros(replied_at)),
        payload: Some(Payload::FepReply(FepReply {
            message_id: message_id.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            to: user.to_owned(),
            replied_at: Some(from_micros(replied_at)),
        })),
    }
}

pub struct Checker {
    pub pool: PgPool,
    pub hot: Hot,
    pub producer: FutureProducer,
    pub user_topic: String,
    pub clock: Arc<dyn Clock>,
    /// How long after a referral message it is looked at.
    pub grace: Duration,
    /// Only tenants whose id starts with this (empty: all).
    pub tenant_prefix: String,
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("reading the window: {0}")]
    Window(#[from] finestra_registry::windows::WindowReadError),
    #[error("publishing: {0}")]
    Bus(#[from] kafka::BusError),
}

impl Checker {
    pub async fn run(self, shutdown: Shutdown) {
        let every = (self.grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "checking referral replies failed; retrying");
            }
        }
    }

    fn grace_micros(&self) -> i64 {
        i64::try_from(self.grace.as_micros()).unwrap_or(i64::MAX)
    }

    async fn sweep(&self) -> Result<(), CheckError> {
        let now = self.clock.now().micros();
        let due = sqlx::query!(
            "SELECT tenant_id, phone_number_id, user_key, referral_at FROM dispatch.fep_checks
              WHERE due_at <= $1 AND starts_with(tenant_id, $2)
              ORDER BY due_at LIMIT 200",
            now,
            &self.tenant_prefix,
        )
        .fetch_all(&self.pool)
        .await?;
        for row in due {
            let c = Check {
                tenant_id: row.tenant_id,
                phone_number_id: row.phone_number_id,
                user_key: row.user_key,
                referral_at: row.referral_at,
            };
            self.check(&c, now).await?;
        }
        Ok(())
    }

    async fn check(&self, c: &Check, now: i64) -> Result<(), CheckError> {
        let window = self
            .hot
            .window(&self.pool, &c.tenant_id, &c.phone_number_id, &c.user_key)
            .await?;
        let recorded = window
            .referral_at
            .is_some_and(|r| r.micros() >= c.referral_at);
        if !recorded {
            // Until the window service has the referral, replies are not flagged: look again.
            sqlx::query!(
                "UPDATE dispatch.fep_checks SET due_at = $5
                  WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3
                    AND referral_at = $4",
                &c.tenant_id,
                &c.phone_number_id,
                &c.user_key,
                c.referral_at,
                now.saturating_add(self.grace_micros()),
            )
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        let until = Timestamp::from_micros(c.referral_at)
            .plus_hours(24)
            .micros();
        // Published whether or not acceptance flagged it: the flag's own event may have been
        // lost with a failed produce, and the window service counts one id once.
        if let Some((message_id, replied_at, flagged)) = first_reply(&self.pool, c, until).await? {
            let envelope = reply_event(
                &c.tenant_id,
                &message_id,
                &c.phone_number_id,
                &c.user_key,
                replied_at,
            );
            kafka::publish_all(
                &self.producer,
                &[Outgoing {
                    traceparent: None,
                    topic: &self.user_topic,
                    key: kafka::conversation_key(&c.tenant_id, &c.phone_number_id, &c.user_key),
                    envelope,
                }],
            )
            .await?;
            if !flagged {
                metrics::counter!("finestra_dispatch_late_fep_replies_total").increment(1);
                tracing::info!(
                    message_id,
                    "a reply accepted before its referral was recorded starts the FEP"
                );
            }
        }
        sqlx::query!(
            "DELETE FROM dispatch.fep_checks
              WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3 AND referral_at = $4",
            &c.tenant_id,
            &c.phone_number_id,
            &c.user_key,
            c.referral_at,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
