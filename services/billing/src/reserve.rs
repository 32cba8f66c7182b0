//! Reservations: the atomic funds check in Redis, then the durable record in Postgres.
//!
//! Order: the Redis script decides (available ≥ price, idempotent by message id), then the
//! reservation is written to Postgres by a group-commit writer (concurrent requests share one
//! multi-row transaction), and only then is the caller answered. A crash in between leaves at
//! worst funds withheld in Redis (never an overdraft) until the caller's retry writes the row
//! or the hash is reloaded. A free message is recorded in Postgres only.

use std::sync::Arc;

use finestra_domain::pricing::Micros;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, WalletLowBalance};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::hot::{HotReserve, HotWallets};
use crate::reservations::{self, LowBalance, ReservationRow, Stored};

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("insufficient funds: {needed} needed, {available} available")]
    InsufficientFunds { needed: Micros, available: Micros },
    #[error("message {0} was reserved for a different charge")]
    Conflict(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
    #[error("the reservation writer stopped")]
    WriterGone,
}

/// What a reservation came to.
#[derive(Clone, Debug)]
pub struct Reserved {
    pub row: ReservationRow,
    pub replayed: bool,
    pub state: String,
}

struct Job {
    row: ReservationRow,
    reply: oneshot::Sender<Result<Stored, Arc<sqlx::Error>>>,
}

/// Batches reservation writes: whatever arrived while the previous batches were being
/// written goes into the next one; `parallel` batches are in flight at once.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

pub struct WriterSettings {
    pub pool: PgPool,
    pub hot: HotWallets,
    pub producer: FutureProducer,
    pub billing_topic: String,
    pub currency: Arc<dyn Fn() -> String + Send + Sync>,
    pub max_batch: usize,
    pub parallel: usize,
    pub clock: Arc<dyn finestra_domain::Clock>,
}

impl Writer {
    pub fn spawn(settings: WriterSettings) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.max_batch * settings.parallel.max(1) * 4);
        let task = tokio::spawn(run_writer(settings, rx));
        (Self { jobs: tx }, task)
    }

    pub async fn write(&self, row: ReservationRow) -> Result<Stored, ReserveError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { row, reply })
            .await
            .map_err(|_| ReserveError::WriterGone)?;
        match answer.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => Err(ReserveError::Store(sqlx::Error::Protocol(e.to_string()))),
            Err(_) => Err(ReserveError::WriterGone),
        }
    }
}

/// Runs until every sender is gone (the gRPC server drained), then finishes the batches in
/// flight.
async fn run_writer(settings: WriterSettings, mut rx: mpsc::Receiver<Job>) {
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < settings.max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let settings = settings.clone();
        in_flight.spawn(async move {
            flush(&settings, jobs).await;
            drop(permit);
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

async fn flush(settings: &WriterSettings, jobs: Vec<Job>) {
    let rows: Vec<ReservationRow> = jobs.iter().map(|j| j.row.clone()).collect();
    metrics::histogram!("finestra_billing_reserve_batch_size").record(rows.len() as f64);
    match reservations::insert_batch(&settings.pool, &rows).await {
        Ok((answers, low)) => {
            // Durable: make sure the hot wallets hold every new priced reservation (a reload
            // may have snapshotted Postgres before these rows existed).
            let confirm: Vec<(&str, &str, Micros)> = rows
                .iter()
                .zip(&answers)
                .filter(|(r, a)| r.price > 0 && **a == Stored::Inserted)
                .map(|(r, _)| (r.tenant_id.as_str(), r.message_id.as_str(), r.price))
                .collect();
            if let Err(e) = settings.hot.confirm(&confirm).await {
                tracing::warn!(error = %e, "confirming reservations in redis failed; the hash heals on reload");
            }
            if !low.is_empty() {
                publish_low_balance(settings, &low).await;
            }
            for (job, answer) in jobs.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, rows = rows.len(), "writing reservations failed");
            let e = Arc::new(e);
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn publish_low_balance(settings: &WriterSettings, low: &[LowBalance]) {
    let currency = (settings.currency)();
    let records: Vec<Outgoing<'_>> = low
        .iter()
        .map(|l| Outgoing {
            topic: &settings.billing_topic,
            key: l.tenant_id.clone(),
            envelope: Envelope {
                event_id: format!("low-balance:{}:{}", l.tenant_id, l.message_id),
                tenant_id: l.tenant_id.clone(),
                occurred_at: Some(finestra_proto::time::from_micros(
                    settings.clock.now().micros(),
                )),
                recorded_at: None,
                payload: Some(Payload::WalletLowBalance(WalletLowBalance {
                    currency: currency.clone(),
                    balance_micros: l.wallet.balance,
                    credit_limit_micros: l.wallet.credit_limit,
                    reserved_micros: l.wallet.reserved,
                    available_micros: l.wallet.available(),
                    threshold_micros: l.wallet.low_balance_threshold,
                })),
            },
        })
        .collect();
    match kafka::publish_all(&settings.producer, &records).await {
        Ok(()) => metrics::counter!("finestra_billing_low_balance_events_total")
            .increment(records.len() as u64),
        Err(e) => tracing::warn!(error = %e, "publishing a low-balance event failed"),
    }
}

/// Reserves the priced message: funds in Redis (loading the wallet when it is not cached),
/// then the durable row.
pub async fn reserve(
    hot: &HotWallets,
    writer: &Writer,
    pool: &PgPool,
    row: ReservationRow,
) -> Result<Reserved, ReserveError> {
    // Whether the script added the reservation now (false: the hash held it already).
    let mut fresh = false;
    if row.price > 0 {
        let mut loads = 0;
        loop {
            match hot
                .reserve(&row.tenant_id, &row.message_id, row.price)
                .await?
            {
                HotReserve::Reserved { .. } => {
                    fresh = true;
                    break;
                }
                HotReserve::Existing { amount } if amount == row.price => break,
                HotReserve::Existing { .. } => {
                    return Err(ReserveError::Conflict(row.message_id));
                }
                HotReserve::Insufficient { available } => {
                    metrics::counter!("finestra_billing_reservations_refused_total").increment(1);
                    return Err(ReserveError::InsufficientFunds {
                        needed: row.price,
                        available,
                    });
                }
                HotReserve::NotLoaded if loads < 3 => {
                    loads += 1;
                    let snapshot = crate::pg::snapshot(pool, &row.tenant_id).await?;
                    hot.load(&row.tenant_id, &snapshot).await?;
                    metrics::counter!("finestra_billing_wallet_loads_total").increment(1);
                }
                HotReserve::NotLoaded => {
                    return Err(ReserveError::Redis(redis::RedisError::from((
                        redis::ErrorKind::ResponseError,
                        "the wallet hash vanished after every load",
                    ))));
                }
            }
        }
    }
    match writer.write(row.clone()).await? {
        Stored::Inserted => {
            metrics::counter!("finestra_billing_reservations_total").increment(1);
            Ok(Reserved {
                row,
                replayed: false,
                state: "open".into(),
            })
        }
        Stored::Existing { row: stored, state } => {
            if !stored.same_charge(&row) {
                return Err(ReserveError::Conflict(row.message_id));
            }
            if state != "open" && stored.price > 0 {
                // A retry after the reservation ended. If the script added it just now, undo
                // that; if the hash held it, the hash is stale: end it as Postgres did.
                let captured = !fresh && state == "captured";
                hot.end(&[(&stored.tenant_id, &stored.message_id, captured)])
                    .await?;
            }
            Ok(Reserved {
                row: stored,
                replayed: true,
                state,
            })
        }
    }
}
