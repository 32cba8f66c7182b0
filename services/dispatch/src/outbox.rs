//! Re-queueing stored messages whose outbound event may be lost. Acceptance stores a message,
//! queues its event and answers while the event travels (`accept.rs`); a process killed before
//! the event reached the broker, or a broker that refused it, leaves a stored (and reserved)
//! message that no worker will ever see. A retried key queues
//! it again (`api`), but a client that gives up would leave it ACCEPTED for ever. So every
//! replica sweeps messages still ACCEPTED long after they were last touched and queues them
//! again. A message that was merely waiting in a backlog costs one record the worker skips
//! (it sends only what is still ACCEPTED and not in flight).

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BusError};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::pg;

#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error("reading stale messages: {0}")]
    Store(#[from] sqlx::Error),
    #[error("queueing them again: {0}")]
    Bus(#[from] BusError),
}

/// How long after start the first sweep runs (the process is serving by then).
const START_PAUSE: Duration = Duration::from_secs(2);

pub struct Requeuer {
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub topic: String,
    pub clock: Arc<dyn Clock>,
    /// A message still ACCEPTED this long after it was stored (or last queued again) is queued
    /// again. Well above the worst expected backlog: earlier only adds skipped records.
    pub after: Duration,
    pub every: Duration,
    /// Messages queued again per sweep at most.
    pub batch: i64,
    /// Only tenants whose id starts with this (empty: all).
    pub tenant_prefix: String,
}

impl Requeuer {
    /// Sweeps every `every`. The first sweep, right after start, takes every message still
    /// ACCEPTED that was stored before this process started: a predecessor killed with events
    /// still on its producer's queue (acceptance answers before they reach the broker) left
    /// them, and they are queued again now instead of one `after` later. A message another
    /// replica is still handling costs a record its worker skips.
    pub async fn run(self, shutdown: Shutdown) {
        let started = self.clock.now().micros();
        let mut cutoff = Some(started);
        let mut pause = START_PAUSE.min(self.every);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(pause) => {}
            }
            let swept = self.sweep(cutoff.take()).await;
            pause = self.every;
            match swept {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("finestra_dispatch_requeued_total").increment(n as u64);
                    tracing::info!(messages = n, "queued stored messages again");
                }
                Err(e) => tracing::warn!(error = %e, "re-queueing stale messages failed; retrying"),
            }
        }
    }

    /// Queues again the messages ACCEPTED and untouched since `cutoff` (by default one `after`
    /// ago).
    async fn sweep(&self, cutoff: Option<i64>) -> Result<usize, SweepError> {
        let now = self.clock.now().micros();
        let after = i64::try_from(self.after.as_micros()).unwrap_or(i64::MAX);
        // Marked before the produce: a failed produce is tried again one `after` later.
        let stale = pg::claim_stale_accepted(
            &self.pool,
            cutoff.unwrap_or(now.saturating_sub(after)),
            now,
            self.batch,
            &self.tenant_prefix,
        )
        .await?;
        let records: Vec<_> = stale
            .iter()
            .map(|m| crate::accept::outbound_record(&self.topic, m))
            .collect();
        kafka::publish_all(&self.producer, &records).await?;
        Ok(stale.len())
    }
}
