//! Reservations: the atomic funds check in Redis, then the durable record in Postgres.
//!
//! Order: the Redis script decides (available ≥ price, idempotent by message id), then the
//! reservation is written to Postgres by a group-commit writer (concurrent requests share one
//! multi-row transaction), and only then is the caller answered. A crash in between leaves at
//! worst funds withheld in Redis (never an overdraft) until the caller's retry writes the row
//! or the hash is reloaded. A free message is recorded in Postgres only.

use std::collections::BTreeMap;
use std::sync::Arc;

use finestra_domain::pricing::Micros;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, WalletLowBalance};
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::hot::{HotEnd, HotReserve, HotWallets};
use crate::reservations::{self, LowBalance, ReservationRow, Stored};

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("insufficient funds: {needed} needed, {available} available")]
    InsufficientFunds { needed: Micros, available: Micros },
    #[error("message {0} was reserved for a different charge")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
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
    reply: oneshot::Sender<Result<Reserved, ReserveError>>,
}

/// Batches reservations: whatever arrived while the previous batches were being handled
/// goes into the next one (one Redis script call per tenant, one Postgres transaction);
/// `parallel` batches are in flight at once.
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

    /// Reserves the priced message: funds held in Redis (loading the wallet when it is not
    /// cached), then the durable row, then the answer.
    pub async fn reserve(&self, row: ReservationRow) -> Result<Reserved, ReserveError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { row, reply })
            .await
            .map_err(|_| ReserveError::Unavailable("the reservation writer stopped".into()))?;
        answer
            .await
            .map_err(|_| ReserveError::Unavailable("the reservation writer stopped".into()))?
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

/// The Redis verdict of each priced job (`None` for free ones, which skip Redis), loading
/// wallets that are not cached. A tenant whose script fails gets the error.
async fn hold_funds(
    settings: &WriterSettings,
    jobs: &[Job],
) -> Vec<Option<Result<HotReserve, String>>> {
    let mut verdicts: Vec<Option<Result<HotReserve, String>>> = vec![None; jobs.len()];
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        if j.row.price > 0 {
            groups.entry(j.row.tenant_id.as_str()).or_default().push(i);
        }
    }
    for _attempt in 0..3 {
        if groups.is_empty() {
            break;
        }
        let calls = groups.iter().map(|(tenant, idx)| {
            let items: Vec<(&str, Micros)> = idx
                .iter()
                .map(|i| (jobs[*i].row.message_id.as_str(), jobs[*i].row.price))
                .collect();
            async move { (*tenant, settings.hot.reserve(tenant, &items).await) }
        });
        let mut unloaded = Vec::new();
        for (tenant, result) in futures::future::join_all(calls).await {
            let Some(idx) = groups.get(tenant) else {
                continue;
            };
            match result {
                Ok(Some(answers)) => {
                    for (i, a) in idx.iter().zip(answers) {
                        verdicts[*i] = Some(Ok(a));
                    }
                }
                Ok(None) => unloaded.push(tenant),
                Err(e) => {
                    for i in idx {
                        verdicts[*i] = Some(Err(e.to_string()));
                    }
                }
            }
        }
        groups.retain(|t, _| unloaded.contains(t));
        for tenant in unloaded {
            let loaded = async {
                let snapshot = crate::pg::snapshot(&settings.pool, tenant)
                    .await
                    .map_err(|e| e.to_string())?;
                settings
                    .hot
                    .load(tenant, &snapshot)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            metrics::counter!("finestra_billing_wallet_loads_total").increment(1);
            if let Err(e) = loaded
                && let Some(idx) = groups.remove(tenant)
            {
                for i in idx {
                    verdicts[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    for idx in groups.into_values() {
        for i in idx {
            verdicts[i] = Some(Err("the wallet could not be loaded into redis".into()));
        }
    }
    verdicts
}

async fn flush(settings: &WriterSettings, jobs: Vec<Job>) {
    metrics::histogram!("finestra_billing_reserve_batch_size").record(jobs.len() as f64);
    let verdicts = hold_funds(settings, &jobs).await;
    // Decide per job: refused here, or on to Postgres (remembering whether Redis added it).
    let mut to_write: Vec<(Job, bool)> = Vec::with_capacity(jobs.len());
    for (job, verdict) in jobs.into_iter().zip(verdicts) {
        let price = job.row.price;
        let outcome = match verdict {
            None => Ok(false),
            Some(Ok(HotReserve::Reserved { .. })) => Ok(true),
            Some(Ok(HotReserve::Existing { amount })) if amount == price => Ok(false),
            Some(Ok(HotReserve::Existing { .. })) => {
                Err(ReserveError::Conflict(job.row.message_id.clone()))
            }
            Some(Ok(HotReserve::Insufficient { available })) => {
                metrics::counter!("finestra_billing_reservations_refused_total").increment(1);
                Err(ReserveError::InsufficientFunds {
                    needed: price,
                    available,
                })
            }
            Some(Err(e)) => Err(ReserveError::Unavailable(e)),
        };
        match outcome {
            Ok(fresh) => to_write.push((job, fresh)),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    if to_write.is_empty() {
        return;
    }
    let rows: Vec<ReservationRow> = to_write.iter().map(|(j, _)| j.row.clone()).collect();
    let (answers, low) = match reservations::insert_batch(&settings.pool, &rows).await {
        Ok(done) => done,
        Err(e) => {
            // Funds held in Redis stay held (never an overdraft) until a retry writes the row
            // or the hash is reloaded.
            tracing::error!(error = %e, rows = rows.len(), "writing reservations failed");
            for (job, _) in to_write {
                let _ = job
                    .reply
                    .send(Err(ReserveError::Unavailable(format!("postgres: {e}"))));
            }
            return;
        }
    };
    let mut confirm: Vec<(&str, &str, Micros)> = Vec::new();
    let mut undo: Vec<(&str, &str, HotEnd)> = Vec::new();
    let mut replies: Vec<Result<Reserved, ReserveError>> = Vec::with_capacity(rows.len());
    for ((row, (_, fresh)), answer) in rows.iter().zip(&to_write).zip(answers) {
        match answer {
            Stored::Inserted => {
                if row.price > 0 {
                    confirm.push((&row.tenant_id, &row.message_id, row.price));
                }
                metrics::counter!("finestra_billing_reservations_total").increment(1);
                replies.push(Ok(Reserved {
                    row: row.clone(),
                    replayed: false,
                    state: "open".into(),
                }));
            }
            Stored::Existing { row: stored, state } => {
                let conflict = !stored.same_charge(row);
                if row.price > 0 && (*fresh && (conflict || state != "open")) {
                    // Redis added it just now for a request that reserves nothing: undo.
                    undo.push((&row.tenant_id, &row.message_id, HotEnd::Undo));
                } else if row.price > 0 && !*fresh && state != "open" && !conflict {
                    // The hash still held an ended reservation (stale): end it as Postgres did.
                    let how = if state == "captured" {
                        HotEnd::Captured
                    } else {
                        HotEnd::Released
                    };
                    undo.push((&row.tenant_id, &row.message_id, how));
                }
                replies.push(if conflict {
                    Err(ReserveError::Conflict(row.message_id.clone()))
                } else {
                    Ok(Reserved {
                        row: *stored,
                        replayed: true,
                        state,
                    })
                });
            }
        }
    }
    // Durable: make sure the hot wallets hold every new priced reservation (a reload may
    // have snapshotted Postgres before these rows existed).
    if let Err(e) = settings.hot.confirm(&confirm).await {
        tracing::warn!(error = %e, "confirming reservations in redis failed; the hash heals on reload");
    }
    if let Err(e) = settings.hot.end(&undo).await {
        tracing::warn!(error = %e, "undoing held funds in redis failed; the hash heals on reload");
    }
    if !low.is_empty() {
        publish_low_balance(settings, &low).await;
    }
    for ((job, _), reply) in to_write.into_iter().zip(replies) {
        let _ = job.reply.send(reply);
    }
}

async fn publish_low_balance(settings: &WriterSettings, low: &[LowBalance]) {
    let currency = (settings.currency)();
    let records: Vec<Outgoing<'_>> = low
        .iter()
        .map(|l| Outgoing {
            traceparent: None,
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
