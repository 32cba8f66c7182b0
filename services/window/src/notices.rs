//! Closing notices (docs/rules.md §1): `WindowClosingSoon` once a window is within the lead of its
//! `csw_until`, `WindowClosed` once it passed, each once per `csw_until` (a newer user message
//! moves it, and a new notice follows). The sweep marks rows and publishes in one transaction:
//! if the broker does not acknowledge, nothing is marked and the next sweep tries again.

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::time::from_micros;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, WindowClosed, WindowClosingSoon};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::apply::user_ref;

/// Closed windows older than this get no notice (a service down for longer, or history from
/// before notices existed, must not flood tenants).
const CLOSED_NOTICE_HORIZON_MICROS: i64 = 24 * 3_600 * 1_000_000;
const SWEEP_LIMIT: i64 = 2_000;

pub struct Notices {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub window_topic: String,
    pub clock: Arc<dyn Clock>,
    pub lead: Duration,
    pub every: Duration,
    /// Only tenants whose id starts with this (empty: all). Tests sharing one database scope
    /// their service to their own tenants, or one test's sweep would announce another's windows.
    pub tenant_prefix: String,
}

/// A window a sweep marked, to announce.
struct Due {
    tenant_id: String,
    phone_number_id: String,
    user_key: String,
    csw_until: i64,
}

#[derive(Clone, Copy)]
enum Kind {
    ClosingSoon,
    Closed,
}

fn notice(
    kind: Kind,
    tenant: &str,
    number: &str,
    user: &str,
    csw_until: i64,
    now: i64,
) -> Envelope {
    let (tag, payload) = match kind {
        Kind::ClosingSoon => (
            "closing",
            Payload::WindowClosingSoon(WindowClosingSoon {
                phone_number_id: number.to_owned(),
                user: Some(user_ref(user)),
                csw_until: Some(from_micros(csw_until)),
            }),
        ),
        Kind::Closed => (
            "closed",
            Payload::WindowClosed(WindowClosed {
                phone_number_id: number.to_owned(),
                user: Some(user_ref(user)),
                csw_until: Some(from_micros(csw_until)),
            }),
        ),
    };
    Envelope {
        event_id: format!("{tag}:{tenant}:{number}:{user}:{csw_until}"),
        tenant_id: tenant.to_owned(),
        occurred_at: Some(from_micros(match kind {
            Kind::ClosingSoon => now,
            Kind::Closed => csw_until,
        })),
        recorded_at: Some(from_micros(now)),
        payload: Some(payload),
    }
}

impl Notices {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            for kind in [Kind::Closed, Kind::ClosingSoon] {
                match self.sweep(kind).await {
                    Ok(0) => {}
                    Ok(n) => {
                        let label = match kind {
                            Kind::ClosingSoon => "closing_soon",
                            Kind::Closed => "closed",
                        };
                        metrics::counter!("finestra_window_notices_total", "kind" => label)
                            .increment(n as u64);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the closing-notice sweep failed; retrying")
                    }
                }
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One sweep of one kind; returns the notices published.
    async fn sweep(&self, kind: Kind) -> Result<usize, SweepError> {
        let now = self.clock.now().micros();
        let lead = i64::try_from(self.lead.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Due> = match kind {
            Kind::ClosingSoon => {
                sqlx::query_as!(
                    Due,
                    "UPDATE windows.pair_state p SET closing_noticed = p.csw_until
                       FROM (SELECT tenant_id, phone_number_id, user_key FROM windows.pair_state
                              WHERE csw_until > $1 AND csw_until <= $1 + $2
                                AND closing_noticed IS DISTINCT FROM csw_until
                                AND starts_with(tenant_id, $4)
                              ORDER BY csw_until LIMIT $3 FOR UPDATE SKIP LOCKED) due
                      WHERE p.tenant_id = due.tenant_id AND p.phone_number_id = due.phone_number_id
                        AND p.user_key = due.user_key
                  RETURNING p.tenant_id, p.phone_number_id, p.user_key, p.csw_until AS \"csw_until!\"",
                    now,
                    lead,
                    SWEEP_LIMIT,
                    &self.tenant_prefix
                )
                .fetch_all(&mut *tx)
                .await?
            }
            Kind::Closed => {
                sqlx::query_as!(
                    Due,
                    "UPDATE windows.pair_state p SET closed_noticed = p.csw_until
                       FROM (SELECT tenant_id, phone_number_id, user_key FROM windows.pair_state
                              WHERE csw_until <= $1 AND csw_until > $1 - $2
                                AND closed_noticed IS DISTINCT FROM csw_until
                                AND starts_with(tenant_id, $4)
                              ORDER BY csw_until LIMIT $3 FOR UPDATE SKIP LOCKED) due
                      WHERE p.tenant_id = due.tenant_id AND p.phone_number_id = due.phone_number_id
                        AND p.user_key = due.user_key
                  RETURNING p.tenant_id, p.phone_number_id, p.user_key, p.csw_until AS \"csw_until!\"",
                    now,
                    CLOSED_NOTICE_HORIZON_MICROS,
                    SWEEP_LIMIT,
                    &self.tenant_prefix
                )
                .fetch_all(&mut *tx)
                .await?
            }
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let records: Vec<Outgoing<'_>> = rows
            .iter()
            .map(|r| Outgoing {
                traceparent: None,
                topic: &self.window_topic,
                key: kafka::conversation_key(&r.tenant_id, &r.phone_number_id, &r.user_key),
                envelope: notice(
                    kind,
                    &r.tenant_id,
                    &r.phone_number_id,
                    &r.user_key,
                    r.csw_until,
                    now,
                ),
            })
            .collect();
        kafka::publish_all(&self.producer, &records).await?;
        tx.commit().await?;
        Ok(rows.len())
    }
}

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Bus(#[from] kafka::BusError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_identified_by_its_window_and_close_time() {
        let a = notice(Kind::ClosingSoon, "t", "pn", "39", 1_000, 500);
        let b = notice(Kind::ClosingSoon, "t", "pn", "39", 1_000, 700);
        assert_eq!(
            a.event_id, b.event_id,
            "a replayed sweep publishes the same id"
        );
        let c = notice(Kind::Closed, "t", "pn", "39", 1_000, 1_200);
        assert_ne!(a.event_id, c.event_id);
        assert!(matches!(c.payload, Some(Payload::WindowClosed(_))));
    }
}
