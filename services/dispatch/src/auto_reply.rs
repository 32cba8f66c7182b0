//! Answers to opt-out keywords (docs/rules.md §3): when a user stops or resumes marketing with
//! a keyword and the tenant has set an answer for it, the event pipeline notes the reply owed
//! (`note`, in the batch it records), and the replier (`Replier::run`) sends it as the
//! tenant's own free-form message inside the window the user's message opened: through the
//! same SendMessage decision as any other send, with the idempotency key
//! `auto-reply:<event id>`, so a reply noted twice or sent twice is one message. A refusal the
//! window service may still cure (the window not yet recorded) is tried again for a while; any
//! other refusal drops the reply.

use std::sync::Arc;
use std::time::Duration;

use finestra_platform::Shutdown;
use finestra_platform::status::reason_of;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{Envelope, SendMessageRequest, TextContent};
use sqlx::PgPool;

use crate::api::DispatchApi;

/// Tries before a reply is dropped (its window never showed up, or a store kept failing).
const MAX_ATTEMPTS: i32 = 10;

/// A keyword preference that may owe a reply.
#[derive(Clone, Debug)]
pub struct Keyworded {
    pub tenant_id: String,
    pub event_id: String,
    pub phone_number_id: String,
    pub user: String,
    pub stop: bool,
}

/// The keyword preference an envelope is, if it is one (ingest's `kw:` events).
pub fn keyworded(env: &Envelope) -> Option<Keyworded> {
    let Some(Payload::UserPreference(p)) = &env.payload else {
        return None;
    };
    let user = p.user.as_ref().map(|u| u.wa_id.clone()).unwrap_or_default();
    (env.event_id.starts_with("kw:") && !env.tenant_id.is_empty() && !user.is_empty()).then(|| {
        Keyworded {
            tenant_id: env.tenant_id.clone(),
            event_id: env.event_id.clone(),
            phone_number_id: p.phone_number_id.clone(),
            user,
            stop: p.stop,
        }
    })
}

/// Notes the replies the tenants set for these keyword preferences (none when a tenant set no
/// answer). Idempotent by event id.
pub async fn note(pool: &PgPool, keyworded: &[Keyworded]) -> Result<(), sqlx::Error> {
    for k in keyworded {
        let body = finestra_registry::opt_out_reply(pool, &k.tenant_id, k.stop).await?;
        if body.trim().is_empty() {
            continue;
        }
        sqlx::query!(
            "INSERT INTO dispatch.auto_replies (tenant_id, event_id, phone_number_id, recipient, body)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &k.tenant_id,
            &k.event_id,
            &k.phone_number_id,
            &k.user,
            body
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

struct Owed {
    tenant_id: String,
    event_id: String,
    phone_number_id: String,
    recipient: String,
    body: String,
    attempts: i32,
}

pub struct Replier {
    pub pool: PgPool,
    pub api: Arc<DispatchApi>,
    /// Only tenants whose id starts with this (tests share a database).
    pub tenant_prefix: String,
    pub every: Duration,
}

impl Replier {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "an auto-reply round failed");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    async fn round(&self) -> Result<(), sqlx::Error> {
        let owed = sqlx::query_as!(
            Owed,
            "UPDATE dispatch.auto_replies r
                SET lease_until = now() + interval '1 minute', attempts = r.attempts + 1
              WHERE (r.tenant_id, r.event_id) IN (
                    SELECT tenant_id, event_id FROM dispatch.auto_replies
                     WHERE next_at <= now() AND (lease_until IS NULL OR lease_until < now())
                       AND starts_with(tenant_id, $1)
                     ORDER BY next_at LIMIT 32 FOR UPDATE SKIP LOCKED)
             RETURNING r.tenant_id, r.event_id, r.phone_number_id, r.recipient, r.body, r.attempts",
            &self.tenant_prefix
        )
        .fetch_all(&self.pool)
        .await?;
        for o in owed {
            let request = SendMessageRequest {
                tenant_id: o.tenant_id.clone(),
                phone_number_id: o.phone_number_id.clone(),
                to: o.recipient.clone(),
                idempotency_key: format!("auto-reply:{}", o.event_id),
                send_at: None,
                send_at_local: String::new(),
                content: Some(Content::Text(TextContent {
                    body: o.body.clone(),
                    preview_url: false,
                })),
            };
            let sent = self.api.send_internal(request).await;
            let again = match &sent {
                Ok(_) => false,
                Err(status) => {
                    let reason = reason_of(status).unwrap_or_default();
                    // The window service may not have recorded the user's message yet; stores
                    // and capacity recover. Anything else will not change.
                    matches!(
                        reason.as_str(),
                        "WINDOW_CLOSED"
                            | "STORE_UNAVAILABLE"
                            | "BACKLOG_FULL"
                            | "TENANT_RATE_LIMITED"
                            | "IN_PROGRESS"
                    ) && o.attempts < MAX_ATTEMPTS
                }
            };
            if again {
                sqlx::query!(
                    "UPDATE dispatch.auto_replies
                        SET lease_until = NULL, next_at = now() + attempts * interval '1 second'
                      WHERE tenant_id = $1 AND event_id = $2",
                    &o.tenant_id,
                    &o.event_id
                )
                .execute(&self.pool)
                .await?;
                continue;
            }
            match &sent {
                Ok(_) => metrics::counter!("finestra_dispatch_auto_replies_total").increment(1),
                Err(status) => {
                    tracing::warn!(tenant_id = %o.tenant_id, event_id = %o.event_id, error = %status.message(), "an opt-out reply was dropped")
                }
            }
            sqlx::query!(
                "DELETE FROM dispatch.auto_replies WHERE tenant_id = $1 AND event_id = $2",
                &o.tenant_id,
                &o.event_id
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
