//! Scheduled sends (docs/rules.md §2): a SendMessage with `send_at` is kept, answered
//! SCHEDULED with the message id its key gives, and handed to the send decision at its time,
//! where every rule is decided as for any send. Until it is handed on it can be cancelled.
//! The scheduler takes due messages under a lease (several replicas share the table); a
//! transient refusal (capacity, a store) is tried again, any other is the message's outcome.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Timestamp;
use finestra_domain::local_time;
use finestra_platform::Shutdown;
use finestra_platform::status::{self, Reason, invalid_argument, not_found, reason_of};
use finestra_proto::v1::{ScheduledMessage, SendMessageRequest, SendMessageResponse};
use prost::Message as _;
use sqlx::PgPool;
use tonic::{Code, Status};

use crate::api::DispatchApi;

/// How far ahead a message may be scheduled.
pub const MAX_AHEAD_MICROS: i64 = 30 * 24 * 3_600 * 1_000_000;
/// A send_at closer than this sends now.
const NOW_MICROS: i64 = 1_000_000;
/// How long the scheduler holds a message it hands on before another may take it.
const LEASE_MICROS: i64 = 60_000_000;
/// Hand-offs refused for capacity or a store are tried again this many times.
const MAX_ATTEMPTS: i32 = 100;

/// When the request asks to be sent later than now (`None`: send now), `send_at_local` read in
/// `zone` (the recipient's, docs/rules.md §2) or `send_at`.
pub fn scheduled_for(
    req: &SendMessageRequest,
    zone: &str,
    now: Timestamp,
) -> Result<Option<i64>, Status> {
    let at = if req.send_at_local.is_empty() {
        match &req.send_at {
            Some(at) => finestra_proto::time::to_micros(at),
            None => return Ok(None),
        }
    } else {
        if req.send_at.is_some() {
            return Err(invalid_argument(
                "send_at_local",
                "a message has send_at or send_at_local, not both",
            ));
        }
        let local = local_time::parse_local(&req.send_at_local)
            .map_err(|e| invalid_argument("send_at_local", e.to_string()))?;
        local_time::resolve(local, zone)
            .map_err(|e| invalid_argument("send_at_local", e.to_string()))?
            .micros()
    };
    Ok((at > now.micros() + NOW_MICROS).then_some(at))
}

/// The time zone a recipient's local time is read in: its contact's `time_zone` attribute when
/// it names one, else its market's.
pub fn recipient_zone(contact_zone: Option<&str>, recipient: &str) -> String {
    contact_zone
        .map(str::trim)
        .filter(|z| local_time::is_zone(z))
        .map_or_else(
            || {
                local_time::zone_of_market(finestra_domain::pricing::market_of(recipient))
                    .to_owned()
            },
            str::to_owned,
        )
}

struct Row {
    message_id: String,
    idempotency_key: String,
    send_at: i64,
    state: String,
    refusal_reason: String,
    refusal_message: String,
    request: Vec<u8>,
}

fn scheduled_of(tenant_id: &str, r: &Row) -> ScheduledMessage {
    ScheduledMessage {
        tenant_id: tenant_id.to_owned(),
        message_id: r.message_id.clone(),
        idempotency_key: r.idempotency_key.clone(),
        send_at: Some(finestra_proto::time::from_micros(r.send_at)),
        // 'handing' is the scheduler's: the caller sees it still scheduled.
        state: match r.state.as_str() {
            "handing" => "SCHEDULED".to_owned(),
            other => other.to_ascii_uppercase(),
        },
        refusal_reason: r.refusal_reason.clone(),
        refusal_message: r.refusal_message.clone(),
    }
}

/// Keeps the message for later; a repeat of the key with the same request answers the same.
pub async fn schedule(
    pool: &PgPool,
    req: SendMessageRequest,
    message_id: &str,
    send_at: i64,
    now: Timestamp,
) -> Result<SendMessageResponse, Status> {
    if send_at > now.micros() + MAX_AHEAD_MICROS {
        return Err(invalid_argument(
            "send_at",
            "a message is scheduled at most 30 days ahead",
        ));
    }
    let mut stored = req.clone();
    stored.send_at = None;
    stored.send_at_local.clear();
    let request = stored.encode_to_vec();
    let inserted = sqlx::query!(
        "INSERT INTO dispatch.scheduled_messages
             (tenant_id, idempotency_key, message_id, request, send_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
        &req.tenant_id,
        &req.idempotency_key,
        message_id,
        &request,
        send_at,
        now.micros()
    )
    .execute(pool)
    .await
    .map_err(|e| status::store("scheduling a message", &e))?
    .rows_affected()
        == 1;
    if !inserted {
        let kept = row(pool, &req.tenant_id, message_id).await?;
        if kept.request != request || kept.send_at != send_at {
            return Err(status::with_reason(
                Code::AlreadyExists,
                Reason::IdempotencyConflict,
                "this idempotency key was used for another request",
                &[("message_id", message_id)],
            ));
        }
    } else {
        metrics::counter!("finestra_dispatch_scheduled_total").increment(1);
    }
    Ok(SendMessageResponse {
        message_id: message_id.to_owned(),
        status: "SCHEDULED".to_owned(),
        replayed: !inserted,
        ..SendMessageResponse::default()
    })
}

async fn row(pool: &PgPool, tenant_id: &str, message_id: &str) -> Result<Row, Status> {
    sqlx::query_as!(
        Row,
        "SELECT message_id, idempotency_key, send_at, state, refusal_reason, refusal_message,
                request
           FROM dispatch.scheduled_messages WHERE tenant_id = $1 AND message_id = $2",
        tenant_id,
        message_id
    )
    .fetch_optional(pool)
    .await
    .map_err(|e| status::store("reading a scheduled message", &e))?
    .ok_or_else(|| not_found("message_id", message_id))
}

pub async fn get(
    pool: &PgPool,
    tenant_id: &str,
    message_id: &str,
) -> Result<ScheduledMessage, Status> {
    Ok(scheduled_of(
        tenant_id,
        &row(pool, tenant_id, message_id).await?,
    ))
}

pub async fn cancel(
    pool: &PgPool,
    tenant_id: &str,
    message_id: &str,
) -> Result<ScheduledMessage, Status> {
    sqlx::query!(
        "UPDATE dispatch.scheduled_messages SET state = 'cancelled'
          WHERE tenant_id = $1 AND message_id = $2 AND state = 'scheduled'",
        tenant_id,
        message_id
    )
    .execute(pool)
    .await
    .map_err(|e| status::store("cancelling a scheduled message", &e))?;
    let now = row(pool, tenant_id, message_id).await?;
    match now.state.as_str() {
        "cancelled" => Ok(scheduled_of(tenant_id, &now)),
        _ => Err(status::with_reason(
            Code::FailedPrecondition,
            Reason::InvalidTransition,
            "the message was already handed on to be sent",
            &[("message_id", message_id), ("state", &now.state)],
        )),
    }
}

/// Hands due messages to the send decision.
pub struct Scheduler {
    pub pool: PgPool,
    pub api: Arc<DispatchApi>,
    /// Tests share one database: each takes only its own tenants' messages.
    pub tenant_prefix: String,
    pub every: Duration,
}

struct Due {
    tenant_id: String,
    message_id: String,
    request: Vec<u8>,
    attempts: i32,
}

impl Scheduler {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "handing scheduled messages on failed; trying again");
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    async fn round(&self) -> Result<(), sqlx::Error> {
        let now = self.api.clock.now().micros();
        let due = sqlx::query_as!(
            Due,
            "UPDATE dispatch.scheduled_messages s
                SET state = 'handing', lease_until = $2, attempts = s.attempts + 1
              WHERE (s.tenant_id, s.idempotency_key) IN (
                    SELECT tenant_id, idempotency_key FROM dispatch.scheduled_messages
                     WHERE send_at <= $1 AND starts_with(tenant_id, $3)
                       AND state IN ('scheduled', 'handing')
                       AND (lease_until IS NULL OR lease_until < $1)
                     ORDER BY send_at LIMIT 64 FOR UPDATE SKIP LOCKED)
             RETURNING s.tenant_id, s.message_id, s.request, s.attempts",
            now,
            now + LEASE_MICROS,
            &self.tenant_prefix
        )
        .fetch_all(&self.pool)
        .await?;
        for d in due {
            let sent = match SendMessageRequest::decode(d.request.as_slice()) {
                Ok(req) => self.api.send_internal(req).await,
                Err(e) => Err(status::internal("decoding a scheduled message", &e)),
            };
            let (state, reason, message) = match &sent {
                Ok(_) => ("handed", String::new(), String::new()),
                Err(s) => {
                    let reason = reason_of(s).unwrap_or_else(|| format!("{:?}", s.code()));
                    let transient = matches!(
                        reason.as_str(),
                        "STORE_UNAVAILABLE"
                            | "BACKLOG_FULL"
                            | "TENANT_RATE_LIMITED"
                            | "IN_PROGRESS"
                    ) || s.code() == Code::Unavailable;
                    if transient && d.attempts < MAX_ATTEMPTS {
                        // Back to the queue (still cancellable), taken again a second later.
                        sqlx::query!(
                            "UPDATE dispatch.scheduled_messages
                                SET state = 'scheduled', lease_until = $3
                              WHERE tenant_id = $1 AND message_id = $2",
                            &d.tenant_id,
                            &d.message_id,
                            now + 1_000_000
                        )
                        .execute(&self.pool)
                        .await?;
                        continue;
                    }
                    ("refused", reason, s.message().to_owned())
                }
            };
            metrics::counter!("finestra_dispatch_scheduled_handed_total", "state" => state)
                .increment(1);
            sqlx::query!(
                "UPDATE dispatch.scheduled_messages
                    SET state = $3, refusal_reason = $4, refusal_message = $5, lease_until = NULL
                  WHERE tenant_id = $1 AND message_id = $2",
                &d.tenant_id,
                &d.message_id,
                state,
                reason,
                message
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
