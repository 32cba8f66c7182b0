//! Tenant webhooks: each recorded event is POSTed as JSON to every endpoint of the tenant, in
//! Finestra's format or the Cloud API's (`cloud`), signed as `signing` says, retried on
//! `WebhookSchedule` (backoff ×4 from 5 s, ±25 % jitter, capped at 6 h) and dead-lettered after
//! 3 days. Deliveries are claimed with a lease (`FOR UPDATE SKIP LOCKED`), so replicas share
//! the work and a crashed one's claims come back after the lease.

pub mod cloud;
pub mod handshake;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_domain::delivery::WebhookSchedule;
use finestra_platform::Shutdown;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use prost::Message as _;
use rand::Rng as _;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;

fn micros(ts: &Option<prost_types::Timestamp>) -> Option<i64> {
    ts.as_ref().map(finestra_proto::time::to_micros)
}

fn user_of(u: &Option<finestra_proto::v1::UserRef>) -> Value {
    let u = u.clone().unwrap_or_default();
    json!({ "wa_id": u.wa_id, "user_id": u.user_id })
}

/// The JSON a tenant receives for an event.
pub fn body(tenant_id: &str, cursor: i64, kind: &str, env: &Envelope) -> Value {
    let data = match &env.payload {
        Some(Payload::MessageStatus(s)) => json!({
            "message_id": s.callback_data, "provider_message_id": s.message_id,
            "phone_number_id": s.phone_number_id, "status": s.status,
            "recipient": user_of(&s.recipient),
            "errors": s.errors.iter().map(|e| json!({"code": e.code, "title": e.title, "message": e.message})).collect::<Vec<_>>(),
        }),
        Some(Payload::InboundMessage(m)) => json!({
            "phone_number_id": m.phone_number_id, "from": user_of(&m.user),
            "provider_message_id": m.message_id, "type": m.message_type, "text": m.text,
            "referral": m.referral.as_ref().map(|r| json!({"source_id": r.source_id, "source_type": r.source_type})),
        }),
        Some(Payload::WindowOpened(w)) => json!({
            "phone_number_id": w.phone_number_id, "user": user_of(&w.user), "csw_until_us": micros(&w.csw_until),
        }),
        Some(Payload::WindowRefreshed(w)) => json!({
            "phone_number_id": w.phone_number_id, "user": user_of(&w.user), "csw_until_us": micros(&w.csw_until),
        }),
        Some(Payload::WindowClosingSoon(w)) => json!({
            "phone_number_id": w.phone_number_id, "user": user_of(&w.user), "csw_until_us": micros(&w.csw_until),
        }),
        Some(Payload::WindowClosed(w)) => json!({
            "phone_number_id": w.phone_number_id, "user": user_of(&w.user), "csw_until_us": micros(&w.csw_until),
        }),
        Some(Payload::UserBlock(b)) => json!({
            "phone_number_id": b.phone_number_id, "user": user_of(&b.user), "blocked": b.blocked,
        }),
        Some(Payload::UserPreference(p)) => json!({
            "phone_number_id": p.phone_number_id, "user": user_of(&p.user),
            "category": p.category, "stop": p.stop,
        }),
        _ => Value::Null,
    };
    json!({
        "event_id": env.event_id, "tenant_id": tenant_id, "cursor": cursor.to_string(),
        "kind": kind, "occurred_at_us": micros(&env.occurred_at), "data": data,
    })
}

pub struct Deliverer {
    pub pool: PgPool,
    pub http: reqwest::Client,
    pub schedule: WebhookSchedule,
    pub clock: Arc<dyn Clock>,
    pub recorded: Arc<Notify>,
    /// Deliveries claimed at once (and POSTed concurrently).
    pub batch: i64,
    /// How long a claim holds before another deliverer may take it.
    pub lease: Duration,
    /// Only tenants whose id starts with this (empty: all).
    pub tenant_prefix: String,
    /// Who a Cloud API notification says it comes from, by (tenant, number).
    pub accounts: AccountCache,
}

/// The business account and display number of (tenant, number), kept a minute: they change
/// with onboarding only.
#[derive(Clone)]
pub struct AccountCache {
    registry: finestra_registry::Registry,
    cache: moka::future::Cache<(String, String), cloud::Account>,
}

impl AccountCache {
    pub fn new(registry: finestra_registry::Registry) -> Self {
        Self {
            registry,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    async fn get(&self, tenant_id: &str, phone_number_id: &str) -> Result<cloud::Account, String> {
        let registry = self.registry.clone();
        let (tenant, number) = (tenant_id.to_owned(), phone_number_id.to_owned());
        self.cache
            .try_get_with((tenant.clone(), number.clone()), async move {
                let (waba_id, display_phone_number) =
                    registry.business_account(&tenant, &number).await?;
                Ok::<_, finestra_registry::RegistryError>(cloud::Account {
                    waba_id,
                    display_phone_number,
                })
            })
            .await
            .map_err(|e| format!("looking up the business account: {e}"))
    }
}

fn phone_number_id(env: &Envelope) -> &str {
    match &env.payload {
        Some(Payload::MessageStatus(s)) => &s.phone_number_id,
        Some(Payload::InboundMessage(m)) => &m.phone_number_id,
        Some(Payload::UserPreference(p)) => &p.phone_number_id,
        _ => "",
    }
}

/// A claimed delivery with its endpoint and event.
struct Due {
    tenant_id: String,
    endpoint_id: String,
    seq: i64,
    attempts: i32,
    first_at: i64,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_valid_until: Option<i64>,
    format: String,
    kind: String,
    envelope: Vec<u8>,
}

struct Outcome {
    tenant_id: String,
    endpoint_id: String,
    seq: i64,
    result: Result<(), String>,
    attempts: i32,
    first_at: i64,
}

impl Deliverer {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            let worked = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "a webhook delivery round failed; retrying");
                    0
                }
            };
            if worked > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = self.recorded.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Claims due deliveries, POSTs them, records the outcomes; returns how many it tried.
    async fn round(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now().micros();
        let lease = i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX);
        let due = sqlx::query_as!(
            Due,
            "WITH claimed AS (
                 UPDATE dispatch.webhook_deliveries d SET next_attempt_at = $1 + $2
                   FROM (SELECT tenant_id, endpoint_id, seq FROM dispatch.webhook_deliveries
                          WHERE state = 'pending' AND next_attempt_at <= $1
                            AND starts_with(tenant_id, $4)
                          ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
                  WHERE d.tenant_id = due.tenant_id AND d.endpoint_id = due.endpoint_id
                    AND d.seq = due.seq
              RETURNING d.tenant_id, d.endpoint_id, d.seq, d.attempts, d.first_at)
             SELECT c.tenant_id AS \"tenant_id!\", c.endpoint_id AS \"endpoint_id!\",
                    c.seq AS \"seq!\", c.attempts AS \"attempts!\", c.first_at AS \"first_at!\",
                    w.url, w.secret, w.previous_secret, w.previous_valid_until, w.format,
                    e.kind, e.envelope
               FROM claimed c
               JOIN dispatch.webhook_endpoints w USING (tenant_id, endpoint_id)
               JOIN dispatch.tenant_events e USING (tenant_id, seq)",
            now,
            lease,
            self.batch,
            &self.tenant_prefix,
        )
        .fetch_all(&self.pool)
        .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let tried = due.len();
        let posts = due.into_iter().map(|d| self.post(d, now));
        let outcomes = futures::future::join_all(posts).await;
        self.settle(&outcomes).await?;
        Ok(tried)
    }

    async fn post(&self, d: Due, now: i64) -> Outcome {
        let Due {
            tenant_id,
            endpoint_id,
            seq,
            attempts,
            first_at,
            url,
            secret,
            previous_secret: previous,
            previous_valid_until: until,
            format,
            kind,
            envelope,
        } = d;
        let result = async {
            let env = Envelope::decode(envelope.as_slice()).map_err(|e| e.to_string())?;
            let request = if format == "cloud_api" {
                let account = self.accounts.get(&tenant_id, phone_number_id(&env)).await?;
                let Some(notification) = cloud::notification(&env, &account) else {
                    // Nothing the Cloud API would post (fan-out does not queue such events).
                    return Ok(());
                };
                let payload = serde_json::to_vec(&notification).map_err(|e| e.to_string())?;
                self.http
                    .post(&url)
                    .header(
                        finestra_cloudapi::SIGNATURE_HEADER,
                        signing::cloud_api(&secret, &payload),
                    )
                    .body(payload)
            } else {
                let payload = serde_json::to_vec(&body(&tenant_id, seq, &kind, &env))
                    .map_err(|e| e.to_string())?;
                let mut secrets = vec![secret.as_str()];
                if let (Some(p), Some(u)) = (previous.as_deref(), until)
                    && now < u
                {
                    secrets.push(p);
                }
                let timestamp = now / 1_000_000;
                self.http
                    .post(&url)
                    .header("finestra-event-id", &env.event_id)
                    .header(
                        "finestra-signature",
                        signing::finestra(&secrets, timestamp, &payload),
                    )
                    .header("webhook-id", &env.event_id)
                    .header("webhook-timestamp", timestamp)
                    .header(
                        "webhook-signature",
                        signing::standard(&secrets, &env.event_id, timestamp, &payload),
                    )
                    .body(payload)
            };
            let answer = request
                .header("content-type", "application/json")
                .send()
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            if answer.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", answer.status().as_u16()))
            }
        }
        .await;
        Outcome {
            tenant_id,
            endpoint_id,
            seq,
            result,
            attempts: attempts + 1,
            first_at,
        }
    }

    async fn settle(&self, outcomes: &[Outcome]) -> Result<(), sqlx::Error> {
        let now = self.clock.now().micros();
        let mut t = Vec::new();
        let mut e = Vec::new();
        let mut s = Vec::new();
        let mut state = Vec::new();
        let mut attempts = Vec::new();
        let mut next = Vec::new();
        let mut error = Vec::new();
        for o in outcomes {
            let (st, at, err) = match &o.result {
                Ok(()) => ("delivered", now, String::new()),
                Err(why) => {
                    let unit: f64 = rand::rng().random();
                    match self.schedule.next_attempt(
                        u32::try_from(o.attempts).unwrap_or(u32::MAX),
                        o.first_at,
                        now,
                        unit,
                    ) {
                        Some(at) => ("pending", at, why.clone()),
                        None => ("dead", now, why.clone()),
                    }
                }
            };
            let label = st;
            metrics::counter!("finestra_dispatch_webhook_deliveries_total", "outcome" => label)
                .increment(1);
            t.push(o.tenant_id.clone());
            e.push(o.endpoint_id.clone());
            s.push(o.seq);
            state.push(st.to_owned());
            attempts.push(o.attempts);
            next.push(at);
            error.push(err);
        }
        sqlx::query!(
            "UPDATE dispatch.webhook_deliveries d SET state = u.state, attempts = u.attempts,
                    next_attempt_at = u.next, last_error = u.error,
                    delivered_at = CASE WHEN u.state = 'delivered' THEN u.next END
               FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                           $6::bigint[], $7::text[]) AS u(t, e, s, state, attempts, next, error)
              WHERE d.tenant_id = u.t AND d.endpoint_id = u.e AND d.seq = u.s",
            &t,
            &e,
            &s,
            &state,
            &attempts,
            &next,
            &error,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
