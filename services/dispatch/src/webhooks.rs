//! Tenant webhooks: each recorded event is POSTed as JSON to every endpoint of the tenant,
//! signed with HMAC-SHA256 over `"{timestamp}.{body}"` (header
//! `Finestra-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex with the previous secret>]`), retried
//! on `WebhookSchedule` (backoff ×4 from 5 s, ±25 % jitter, capped at 6 h) and dead-lettered
//! after 3 days. Deliveries are claimed with a lease (`FOR UPDATE SKIP LOCKED`), so replicas
//! share the work and a crashed one's claims come back after the lease.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_domain::delivery::WebhookSchedule;
use finestra_platform::Shutdown;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use hmac::{Hmac, Mac};
use prost::Message as _;
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::Notify;

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        // An HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

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
                    w.url, w.secret, w.previous_secret, w.previous_valid_until, e.kind, e.envelope
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
            kind,
            envelope,
        } = d;
        let result = async {
            let env = Envelope::decode(envelope.as_slice()).map_err(|e| e.to_string())?;
            let payload = serde_json::to_vec(&body(&tenant_id, seq, &kind, &env))
                .map_err(|e| e.to_string())?;
            let mut secrets = vec![secret.as_str()];
            if let (Some(p), Some(u)) = (previous.as_deref(), until)
                && now < u
            {
                secrets.push(p);
            }
            let timestamp = now / 1_000_000;
            let answer = self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("finestra-event-id", &env.event_id)
                .header(
                    "finestra-signature",
                    signature(&secrets, timestamp, &payload),
                )
                .body(payload)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body_once_per_secret() {
        let one = signature(&["s3cret"], 1_764_000_000, b"{}");
        assert!(one.starts_with("t=1764000000,v1="));
        assert_eq!(one.matches("v1=").count(), 1);
        let two = signature(&["new", "s3cret"], 1_764_000_000, b"{}");
        assert_eq!(two.matches("v1=").count(), 2);
        assert!(two.ends_with(one.trim_start_matches("t=1764000000,")));
        assert_ne!(one, signature(&["s3cret"], 1_764_000_001, b"{}"));
        assert_ne!(one, signature(&["s3cret"], 1_764_000_000, b"{ }"));
    }
}
