//! The delivery worker: consumes `finestra.outbound.v1`, paces every number and (number, user)
//! pair (docs/rules.md §5), sends through the `Provider`, retries what is retryable with backoff and
//! full jitter, and records the outcome. Each message is its own task, so a paced number never
//! holds up another number or tenant; offsets are committed per partition only below the
//! oldest message not yet finished (`offsets::InFlight`).
//!
//! A failure is published as a `failed` status on `finestra.status.v1` (billing releases the
//! reservation from it, tenants see it); one that exhausted its retries also goes to the DLQ.
//!
//! Fair between tenants (docs/fairness.md): a tenant holds at most its share of the messages
//! taken up in memory (`tenant_queue` × weight); the rest of its backlog is parked in its rows
//! (`pg::park`), its records passed, and taken back oldest first as its share frees up
//! (`pg::unpark`), so consuming never stops behind one tenant's backlog. Provider calls go
//! through a gate that serves tenants by weight and a tenant's numbers in turn (`gate`).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use finestra_domain::delivery::{Progress, RetryPolicy};
use finestra_domain::pacing::{Pacer, Rate};
use finestra_domain::{Clock, Timestamp};
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer, Outgoing};
use finestra_platform::offsets::InFlight;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, MessageStatus, StatusError, UserRef};
use futures::FutureExt as _;
use rand::Rng as _;
use rdkafka::Message as _;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::facts::Facts;
use crate::gate::Gate;
use crate::hot::Hot;
use crate::pg::{self, StatusChange};
use finestra_provider::{Provider, ProviderError};

const CONSUMER: &str = "dispatch-worker";
/// Messages a parked tenant is always given back, even while the worker is full.
const LOW_WATER: usize = 64;
/// Parked tenants served per take-back turn (every 200 ms).
const TENANTS_PER_REFILL: usize = 64;

pub struct Worker {
    pub consumer: Arc<BatchConsumer>,
    pub pool: PgPool,
    pub hot: Hot,
    pub facts: Facts,
    pub provider: Arc<dyn Provider>,
    pub producer: FutureProducer,
    pub status_topic: String,
    /// Where a user's marketing stop the network reported (131050) is told.
    pub user_topic: String,
    pub dlq_topic: String,
    pub retry: RetryPolicy,
    /// Messages taken up and not finished, at most (then consuming pauses).
    pub max_in_flight: usize,
    /// Provider calls at once.
    pub send_concurrency: usize,
    pub clock: Arc<dyn Clock>,
    /// The outbound topic (its partitions say which parked messages are this worker's).
    pub outbound_topic: String,
    /// Messages of one tenant of weight 1 held in memory at most (× its weight); the rest
    /// of its backlog waits parked in Postgres.
    pub tenant_queue: usize,
    /// Weights of tenants whose partner left them unset.
    pub tenant_defaults: finestra_domain::fairness::TenantLimits,
    /// Only tenants whose id starts with this are looked for among parked messages (empty:
    /// all; tests sharing a database).
    pub tenant_prefix: String,
}

/// Where a job came from: a consumed record (its offset is finished with it) or a parked row.
enum Source {
    Record(Arc<OwnedMessage>),
    Parked { partition: i32 },
}

/// One message to deliver.
struct Job {
    source: Source,
    tenant_id: String,
    weight: u32,
    message_id: String,
    /// When it was accepted (µs): part of its row's key.
    accepted_at: i64,
    phone_number_id: String,
    to: String,
    body: Vec<u8>,
    slot: Timestamp,
}

enum Outcome {
    Sent {
        wamid: String,
        attempts: u32,
    },
    Failed {
        error: ProviderError,
        attempts: u32,
        /// Retries were exhausted: the record goes to the DLQ too.
        exhausted: bool,
    },
    /// Shutdown came before it was sent: left unfinished, so it is redelivered.
    Abandoned,
    /// Its task panicked (a defect): the message is parked, so it is taken up again and its
    /// record does not hold the partition's offset back.
    Panicked,
}

struct Done {
    job: Job,
    outcome: Outcome,
}

/// What the delivery tasks share.
struct Shared {
    hot: Hot,
    facts: Facts,
    pool: PgPool,
    provider: Arc<dyn Provider>,
    retry: RetryPolicy,
    gate: Arc<Gate>,
    clock: Arc<dyn Clock>,
}

/// A message to a blocked user fails USER_BLOCKED without reaching the network.
fn blocked(title: &str) -> Outcome {
    Outcome::Failed {
        error: ProviderError {
            retryable: false,
            code: 0,
            title: title.into(),
            reason: "USER_BLOCKED",
        },
        attempts: 0,
        exhausted: false,
    }
}

fn micros_until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::from_micros(u64::try_from(at.micros() - now.micros()).unwrap_or(0))
}

/// Waits `d`, or returns false when shutdown comes first.
async fn pause(d: Duration, shutdown: &Shutdown) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        () = shutdown.wait() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn deliver(shared: &Shared, job: &Job, shutdown: &Shutdown) -> Outcome {
    if !pause(micros_until(job.slot, shared.clock.now()), shutdown).await {
        return Outcome::Abandoned;
    }
    let permit = tokio::select! {
        () = shutdown.wait() => None,
        p = shared.gate.acquire(&job.tenant_id, job.weight, &job.phone_number_id) => p,
    };
    let Some(_permit) = permit else {
        return Outcome::Abandoned;
    };
    // A user who blocked since acceptance receives nothing more (docs/rules.md §3).
    let window = shared
        .hot
        .window(&shared.pool, &job.tenant_id, &job.phone_number_id, &job.to)
        .await;
    match window {
        Ok(w) if w.is_blocked() => return blocked("the user blocked this number"),
        Ok(_) => {}
        // The network refuses blocked users itself (131026): go on without the check.
        Err(e) => tracing::warn!(error = %e, "reading the window before a send failed"),
    }
    // Nor does a user the tenant blocked since acceptance. The network does not know that
    // block, so a failed read is tried again; only a store away for all of it lets the send
    // go (acceptance checked the block already).
    for try_ in 0..3 {
        match shared.facts.contact(&job.tenant_id, &job.to).await {
            Ok(contact) if contact.blocked => return blocked("the tenant blocked this user"),
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, try_, "reading the tenant's blocks before a send failed");
                if !pause(Duration::from_millis(100), shutdown).await {
                    return Outcome::Abandoned;
                }
            }
        }
    }
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let started = std::time::Instant::now();
        let sent = shared.provider.send(&job.phone_number_id, &job.body).await;
        metrics::histogram!("finestra_dispatch_provider_seconds")
            .record(started.elapsed().as_secs_f64());
        match sent {
            Ok(wamid) => {
                return Outcome::Sent { wamid, attempts };
            }
            Err(error) if error.retryable => {
                let unit: f64 = rand::rng().random();
                let Some(wait) = shared.retry.pause_after(attempts, unit) else {
                    return Outcome::Failed {
                        error,
                        attempts,
                        exhausted: true,
                    };
                };
                metrics::counter!("finestra_dispatch_retries_total", "reason" => error.reason)
                    .increment(1);
                let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
                if !pause(wait, shutdown).await {
                    return Outcome::Abandoned;
                }
            }
            Err(error) => {
                return Outcome::Failed {
                    error,
                    attempts,
                    exhausted: false,
                };
            }
        }
    }
}

/// The `failed` status dispatch reports for a message it could not send.
fn failed_status(job: &Job, error: &ProviderError, at: Timestamp) -> Envelope {
    let ts = finestra_proto::time::from_micros(at.micros());
    Envelope {
        event_id: format!("failed:{}", job.message_id),
        tenant_id: job.tenant_id.clone(),
        occurred_at: Some(ts),
        recorded_at: Some(ts),
        payload: Some(Payload::MessageStatus(MessageStatus {
            phone_number_id: job.phone_number_id.clone(),
            message_id: String::new(),
            status: "failed".into(),
            recipient: Some(UserRef {
                wa_id: job.to.clone(),
                ..UserRef::default()
            }),
            errors: vec![StatusError {
                code: error.code,
                title: error.reason.to_owned(),
                message: error.title.clone(),
                details: String::new(),
            }],
            callback_data: job.message_id.clone(),
            ..MessageStatus::default()
        })),
    }
}

/// The network refused a marketing template because the user stopped marketing (131050): the
/// stop is recorded as if the user had told it (the tenant's suppression, docs/rules.md §3),
/// so the next marketing template to them is refused before it costs anything.
fn network_opt_out(job: &Job, at: Timestamp) -> Envelope {
    let ts = finestra_proto::time::from_micros(at.micros());
    Envelope {
        event_id: format!("optout:{}", job.message_id),
        tenant_id: job.tenant_id.clone(),
        occurred_at: Some(ts),
        recorded_at: Some(ts),
        payload: Some(Payload::UserPreference(
            finestra_proto::v1::UserPreference {
                phone_number_id: job.phone_number_id.clone(),
                user: Some(UserRef {
                    wa_id: job.to.clone(),
                    ..UserRef::default()
                }),
                category: "marketing_messages".into(),
                stop: true,
                detail: format!("the network refused {} with 131050", job.message_id),
            },
        )),
    }
}

impl Worker {
    pub async fn run(self, shutdown: Shutdown) {
        let shared = Arc::new(Shared {
            hot: self.hot.clone(),
            facts: self.facts.clone(),
            pool: self.pool.clone(),
            provider: self.provider.clone(),
            retry: self.retry,
            gate: Gate::new(self.send_concurrency),
            clock: self.clock.clone(),
        });
        let consumer = self.consumer.clone();
        // Fetching runs on its own so a batch being gathered is never dropped half-way.
        let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<OwnedMessage>>(1);
        let fetch_consumer = consumer.clone();
        let fetch_shutdown = shutdown.clone();
        let fetcher = tokio::spawn(async move {
            while let Some(batch) = fetch_consumer
                .next_batch_until_shutdown(&fetch_shutdown)
                .await
            {
                if batch_tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let mut state = LoopState {
            in_flight: InFlight::default(),
            active: HashSet::new(),
            deliveries: JoinSet::new(),
            conversations: HashMap::new(),
            held: HashMap::new(),
            parked: HashSet::new(),
            pacer: Pacer::default(),
            finished: Vec::new(),
            next_refill: tokio::time::Instant::now(),
            next_discovery: tokio::time::Instant::now(),
            assigned: Vec::new(),
            refill_turn: 0,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                Some(joined) = state.deliveries.join_next(), if !state.deliveries.is_empty() => {
                    match joined {
                        Ok(done) => {
                            let next = Self::next_in_conversation(&mut state, &done.job);
                            state.finished.push(done);
                            match next {
                                Some(job) if !stopping => {
                                    self.start(job, &mut state, &shared, &shutdown).await;
                                }
                                // Stopping: it is left unsent, as the tasks that end now are.
                                Some(job) => state.finished.push(Done {
                                    job,
                                    outcome: Outcome::Abandoned,
                                }),
                                None => {}
                            }
                        }
                        // Only an abort ends a task without its Done (panics are caught in it).
                        Err(e) => tracing::error!(error = %e, "a delivery task was cancelled"),
                    }
                    if state.finished.len() >= 1_000 {
                        self.flush(&consumer, &mut state, &shutdown).await;
                    }
                }
                _ = tick.tick() => {
                    self.flush(&consumer, &mut state, &shutdown).await;
                    state.pacer.forget_idle(self.clock.now());
                    if !stopping {
                        self.refill(&consumer, &mut state, &shared, &shutdown).await;
                    }
                }
                // Consuming never stops for one tenant's backlog: beyond the shares, records
                // are parked (their rows wait), so the next tenant's record is always read.
                batch = batch_rx.recv(), if !stopping => match batch {
                    Some(batch) => self.take_up(batch, &mut state, &shared, &shutdown).await,
                    None => stopping = true,
                },
                () = shutdown.wait(), if !stopping => stopping = true,
            }
            if stopping && state.deliveries.is_empty() {
                break;
            }
        }
        // Messages still waiting behind others of their conversation are left unsent.
        for (_, waiting) in state.conversations.drain() {
            state.finished.extend(waiting.into_iter().map(|job| Done {
                job,
                outcome: Outcome::Abandoned,
            }));
        }
        self.flush(&consumer, &mut state, &shutdown).await;
        if let Err(e) = consumer
            .commit_positions_sync(&state.in_flight.positions())
            .await
        {
            tracing::warn!(error = %e, "the final offset commit failed; the next owner replays");
        }
        fetcher.abort();
        tracing::info!("dispatch worker stopped");
    }

    /// The weight of a tenant (its partner's setting, else the default).
    async fn weight_of(&self, tenant_id: &str) -> u32 {
        let own = self.facts.limits(tenant_id).await.unwrap_or_default();
        own.or(self.tenant_defaults).weight
    }

    /// Messages of a tenant of `weight` held in memory at most.
    fn cap(&self, weight: u32) -> usize {
        self.tenant_queue
            .max(1)
            .saturating_mul(weight.max(1) as usize)
            .min(self.max_in_flight.max(1))
    }

    /// Takes up a batch: decodes it, skips what is no longer waiting to be sent, parks what
    /// is beyond its tenant's share, paces the rest and starts a task per message.
    async fn take_up(
        &self,
        batch: Vec<OwnedMessage>,
        state: &mut LoopState,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for m in batch {
            state.in_flight.start(m.topic(), m.partition(), m.offset());
            match kafka::decode(&m) {
                Ok(Envelope {
                    tenant_id,
                    payload: Some(Payload::OutboundMessage(o)),
                    ..
                }) if !tenant_id.is_empty() && !o.message_id.is_empty() => jobs.push(Job {
                    source: Source::Record(Arc::new(m)),
                    tenant_id,
                    weight: 1,
                    message_id: o.message_id,
                    accepted_at: o
                        .accepted_at
                        .as_ref()
                        .map_or(0, finestra_proto::time::to_micros),
                    phone_number_id: o.phone_number_id,
                    to: o.to,
                    body: o.body_json,
                    slot: Timestamp::from_micros(0),
                }),
                Ok(_) => dead.push((m, "not an outbound message".to_owned())),
                Err(e) => dead.push((m, format!("undecodable: {e}"))),
            }
        }
        if !dead.is_empty() {
            let letters: Vec<Envelope> = dead
                .iter()
                .map(|(m, why)| kafka::dead_letter(m, CONSUMER, why.clone()))
                .collect();
            let outgoing: Vec<Outgoing<'_>> = letters
                .into_iter()
                .map(|envelope| Outgoing {
                    traceparent: None,
                    topic: &self.dlq_topic,
                    key: String::new(),
                    envelope,
                })
                .collect();
            if retry_forever("dead-lettering records", shutdown, || {
                kafka::publish_all(&self.producer, &outgoing)
            })
            .await
            .is_none()
            {
                // Shutdown first: nothing of this batch is finished, the next owner replays it.
                return;
            }
            for (m, _) in &dead {
                state.in_flight.finish(m.topic(), m.partition(), m.offset());
            }
        }
        let keys: Vec<(String, String)> = jobs
            .iter()
            .map(|j| (j.tenant_id.clone(), j.message_id.clone()))
            .collect();
        let Some(current) = retry_forever("reading message states", shutdown, || {
            pg::statuses(&self.pool, &keys)
        })
        .await
        else {
            return;
        };
        let waiting: HashSet<(String, String)> = current
            .into_iter()
            .filter(|(_, _, status)| status == Progress::Accepted.as_str())
            .map(|(t, m, _)| (t, m))
            .collect();
        // Partitions taken over (a start, a rebalance) may hold backlogs parked by their last
        // owner: those tenants park their new records too until the old ones are out, or a
        // new message would overtake an older one of the same conversation.
        let assigned = consumer_assigned(&self.consumer, &self.outbound_topic);
        if assigned != state.assigned {
            let fresh: Vec<i32> = assigned
                .iter()
                .copied()
                .filter(|p| !state.assigned.contains(p))
                .collect();
            if !fresh.is_empty() {
                let Some(found) = retry_forever("looking for parked backlogs", shutdown, || {
                    pg::parked_tenants(&self.pool, &fresh, &self.tenant_prefix)
                })
                .await
                else {
                    return;
                };
                state.parked.extend(found);
            }
            state.assigned = assigned;
        }
        let mut to_park = Vec::new();
        for mut job in jobs {
            let key = (job.tenant_id.clone(), job.message_id.clone());
            if !waiting.contains(&key) || state.active.contains(&job.message_id) {
                // Sent already, failed, unknown, or being sent by this worker: a replay.
                job.finish_record(&mut state.in_flight);
                continue;
            }
            job.weight = self.weight_of(&job.tenant_id).await;
            let held = state.held.get(&job.tenant_id).copied().unwrap_or(0);
            // Once a tenant parks, all its later records park too, so its messages keep their
            // order: the park is emptied oldest first before new records are taken up.
            if state.parked.contains(&job.tenant_id)
                || held >= self.cap(job.weight)
                || state.deliveries.len() >= self.max_in_flight
            {
                state.parked.insert(job.tenant_id.clone());
                to_park.push(job);
                continue;
            }
            self.schedule(job, state, shared, shutdown).await;
        }
        if !to_park.is_empty() {
            let rows: Vec<pg::Parking> = to_park.iter().map(Job::parking).collect();
            if retry_forever("parking a backlog", shutdown, || {
                pg::park(&self.pool, &rows)
            })
            .await
            .is_none()
            {
                return;
            }
            for job in &to_park {
                crate::admission::count(&job.tenant_id, "parked");
                job.finish_record(&mut state.in_flight);
            }
        }
    }

    /// Paces a waiting message and starts its task.
    async fn schedule(
        &self,
        job: Job,
        state: &mut LoopState,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) {
        state.active.insert(job.message_id.clone());
        *state.held.entry(job.tenant_id.clone()).or_insert(0) += 1;
        // One message of a conversation at a time, in the order they were taken up: a retry
        // (or a slower request) never lets a later message reach the user first.
        match state.conversations.get_mut(&job.conversation()) {
            Some(waiting) => waiting.push_back(job),
            None => {
                state
                    .conversations
                    .insert(job.conversation(), std::collections::VecDeque::new());
                self.start(job, state, shared, shutdown).await;
            }
        }
    }

    /// The next message of a finished one's conversation, if one waits (its turn now).
    fn next_in_conversation(state: &mut LoopState, finished: &Job) -> Option<Job> {
        let conversation = finished.conversation();
        let next = state.conversations.get_mut(&conversation)?.pop_front();
        if next.is_none() {
            state.conversations.remove(&conversation);
        }
        next
    }

    /// Paces a message whose turn it is and starts its task.
    async fn start(
        &self,
        mut job: Job,
        state: &mut LoopState,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) {
        let tps = match self.facts.number(&job.phone_number_id).await {
            Ok(Some(n)) => n.throughput_per_second,
            _ => 80,
        };
        // 5% under the network's own rate and half its burst: requests reach the network
        // with their own transit jitter, and the slack absorbs it (a 130429 costs a retry).
        let mut rate = Rate::per_second(tps);
        rate.interval_micros += rate.interval_micros / 20;
        rate.burst = (rate.burst / 2).max(1);
        job.slot = state
            .pacer
            .schedule(&job.phone_number_id, &job.to, rate, self.clock.now());
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // A traced send (its SendMessage carried a context) gets a span of its own; the
        // provider call under it carries the context on to the network.
        let span = match job.traceparent() {
            Some(tp) => {
                let span = tracing::info_span!("dispatch.deliver", message_id = %job.message_id);
                finestra_platform::trace::adopt(&span, Some(tp));
                span
            }
            None => tracing::Span::none(),
        };
        state.deliveries.spawn(
            async move {
                let delivered = AssertUnwindSafe(deliver(&shared, &job, &shutdown))
                    .catch_unwind()
                    .await;
                let outcome = delivered.unwrap_or_else(|_| {
                    tracing::error!(message_id = %job.message_id, "a delivery panicked");
                    metrics::counter!("finestra_dispatch_delivery_panics_total").increment(1);
                    Outcome::Panicked
                });
                Done { job, outcome }
            }
            .instrument(span),
        );
    }

    /// Takes back parked messages of tenants whose share has room again (oldest first), and
    /// every few seconds looks for parked backlogs of this worker's partitions that nobody
    /// in this process knows of (after a restart or a rebalance).
    async fn refill(
        &self,
        consumer: &BatchConsumer,
        state: &mut LoopState,
        shared: &Arc<Shared>,
        shutdown: &Shutdown,
    ) {
        let now = tokio::time::Instant::now();
        if now < state.next_refill {
            return;
        }
        state.next_refill = now + Duration::from_millis(200);
        let discover = now >= state.next_discovery;
        if state.parked.is_empty() && !discover {
            return;
        }
        let partitions = consumer.assigned(&self.outbound_topic);
        if partitions.is_empty() {
            return;
        }
        if discover {
            state.next_discovery = now + Duration::from_secs(5);
            match pg::parked_tenants(&self.pool, &partitions, &self.tenant_prefix).await {
                Ok(found) => state.parked.extend(found),
                Err(e) => tracing::warn!(error = %e, "looking for parked backlogs failed"),
            }
        }
        // One budget for all tenants per turn, handed out in turn, a bounded number of tenants
        // per turn: memory stays bounded however many tenants are parked, and the loop is
        // not held up by thousands of queries.
        let mut budget = if state.deliveries.len() < self.max_in_flight {
            self.max_in_flight - state.deliveries.len()
        } else {
            LOW_WATER
        };
        let mut tenants: Vec<String> = state.parked.iter().cloned().collect();
        tenants.sort_unstable();
        let start = state.refill_turn % tenants.len().max(1);
        tenants.rotate_left(start);
        tenants.truncate(TENANTS_PER_REFILL);
        state.refill_turn = state.refill_turn.wrapping_add(tenants.len());
        for tenant_id in tenants {
            if budget == 0 {
                break;
            }
            let weight = self.weight_of(&tenant_id).await;
            let cap = self.cap(weight);
            let held = state.held.get(&tenant_id).copied().unwrap_or(0);
            // Taken back in large steps once half its share is free; over the global bound a
            // tenant still gets a few, so nobody waits for everybody's backlog.
            let room = if state.deliveries.len() >= self.max_in_flight {
                LOW_WATER.min(cap).saturating_sub(held)
            } else if held <= cap / 2 {
                cap - held
            } else {
                0
            }
            .min(budget);
            if room == 0 {
                continue;
            }
            let rows = match pg::unpark(
                &self.pool,
                &tenant_id,
                &partitions,
                i64::try_from(room).unwrap_or(i64::MAX),
                self.clock.now().micros(),
            )
            .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "taking back parked messages failed; retrying");
                    continue;
                }
            };
            budget -= rows.len().min(budget);
            if rows.len() < room {
                state.parked.remove(&tenant_id);
            }
            for r in rows {
                if state.active.contains(&r.message_id) {
                    continue;
                }
                let job = Job {
                    source: Source::Parked {
                        partition: r.partition,
                    },
                    tenant_id: r.tenant_id,
                    weight,
                    message_id: r.message_id,
                    accepted_at: r.accepted_at,
                    phone_number_id: r.phone_number_id,
                    to: r.recipient,
                    body: r.body.into_bytes(),
                    slot: Timestamp::from_micros(0),
                };
                self.schedule(job, state, shared, shutdown).await;
            }
        }
    }

    /// Records finished sends (statuses, failure events), then commits what is done.
    async fn flush(&self, consumer: &BatchConsumer, state: &mut LoopState, shutdown: &Shutdown) {
        if state.finished.is_empty() {
            return;
        }
        let finished = std::mem::take(&mut state.finished);
        let now = self.clock.now();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        let mut abandoned_parked = Vec::new();
        for d in &finished {
            match &d.outcome {
                Outcome::Sent { wamid, attempts } => {
                    metrics::counter!("finestra_dispatch_sent_total").increment(1);
                    changes.push(StatusChange {
                        tenant_id: d.job.tenant_id.clone(),
                        message_id: d.job.message_id.clone(),
                        progress: Progress::Sent,
                        at: now.micros(),
                        provider_message_id: wamid.clone(),
                        failure_reason: String::new(),
                        error_code: 0,
                        error_title: String::new(),
                        attempts: i32::try_from(*attempts).unwrap_or(i32::MAX),
                    });
                }
                Outcome::Failed {
                    error,
                    attempts,
                    exhausted,
                } => {
                    metrics::counter!("finestra_dispatch_failed_total", "reason" => error.reason)
                        .increment(1);
                    changes.push(StatusChange {
                        tenant_id: d.job.tenant_id.clone(),
                        message_id: d.job.message_id.clone(),
                        progress: Progress::Failed,
                        at: now.micros(),
                        provider_message_id: String::new(),
                        failure_reason: error.reason.to_owned(),
                        error_code: error.code,
                        error_title: error.title.clone(),
                        attempts: i32::try_from(*attempts).unwrap_or(i32::MAX),
                    });
                    let key = kafka::conversation_key(
                        &d.job.tenant_id,
                        &d.job.phone_number_id,
                        &d.job.to,
                    );
                    if error.code == 131_050 {
                        events.push((
                            self.user_topic.as_str(),
                            key.clone(),
                            network_opt_out(&d.job, now),
                        ));
                    }
                    events.push((
                        self.status_topic.as_str(),
                        key,
                        failed_status(&d.job, error, now),
                    ));
                    if *exhausted {
                        let why = format!(
                            "{} after {attempts} attempts: {} ({})",
                            error.reason, error.title, error.code
                        );
                        events.push((
                            self.dlq_topic.as_str(),
                            String::new(),
                            d.job.dead_letter(&self.outbound_topic, why),
                        ));
                    }
                }
                Outcome::Abandoned => {
                    // A parked message taken back but not sent goes back to the park (a
                    // consumed record is simply not committed).
                    if let Source::Parked { .. } = d.job.source {
                        abandoned_parked.push(d.job.parking());
                    }
                }
                // Parked whatever its source, and its record finished: the message waits in
                // its row and is taken up again, and the partition's offset moves on.
                Outcome::Panicked => abandoned_parked.push(d.job.parking()),
            }
        }
        if retry_forever("recording send outcomes", shutdown, || {
            pg::apply_statuses(&self.pool, &changes, now.micros())
        })
        .await
        .is_none()
        {
            return;
        }
        if let Err(e) = pg::park(&self.pool, &abandoned_parked).await {
            // The re-queue sweep finds them instead.
            tracing::warn!(error = %e, "parking unsent messages again failed");
        }
        let outgoing: Vec<Outgoing<'_>> = events
            .into_iter()
            .map(|(topic, key, envelope)| Outgoing {
                traceparent: None,
                topic,
                key,
                envelope,
            })
            .collect();
        if retry_forever("publishing failures", shutdown, || {
            kafka::publish_all(&self.producer, &outgoing)
        })
        .await
        .is_none()
        {
            return;
        }
        for d in &finished {
            state.active.remove(&d.job.message_id);
            if let Some(held) = state.held.get_mut(&d.job.tenant_id) {
                *held -= 1;
                if *held == 0 {
                    state.held.remove(&d.job.tenant_id);
                }
            }
            if !matches!(d.outcome, Outcome::Abandoned) {
                d.job.finish_record(&mut state.in_flight);
            }
        }
        let moved = state.in_flight.advanced();
        if let Err(e) = consumer.commit_positions(&moved) {
            tracing::warn!(error = %e, "committing offsets failed; a restart replays idempotently");
        }
    }
}

impl Job {
    /// Its conversation: the business number and the user.
    fn conversation(&self) -> String {
        format!("{}\u{1f}{}", self.phone_number_id, self.to)
    }

    /// Marks its record done (a parked row has none).
    fn finish_record(&self, in_flight: &mut InFlight) {
        if let Source::Record(r) = &self.source {
            in_flight.finish(r.topic(), r.partition(), r.offset());
        }
    }

    /// Its row, to park.
    fn parking(&self) -> pg::Parking {
        pg::Parking {
            tenant_id: self.tenant_id.clone(),
            message_id: self.message_id.clone(),
            accepted_at: self.accepted_at,
            partition: self.partition(),
        }
    }

    fn partition(&self) -> i32 {
        match &self.source {
            Source::Record(r) => r.partition(),
            Source::Parked { partition } => *partition,
        }
    }

    fn traceparent(&self) -> Option<&str> {
        match &self.source {
            Source::Record(r) => kafka::traceparent(r),
            Source::Parked { .. } => None,
        }
    }

    /// The dead letter of a message that exhausted its retries: its record, or for a parked
    /// message its outbound event as the record carried it.
    fn dead_letter(&self, outbound_topic: &str, why: String) -> Envelope {
        match &self.source {
            Source::Record(r) => kafka::dead_letter(r, CONSUMER, why),
            Source::Parked { partition } => Envelope {
                event_id: format!("dlq:parked:{}:{CONSUMER}", self.message_id),
                tenant_id: self.tenant_id.clone(),
                occurred_at: None,
                recorded_at: None,
                payload: Some(Payload::DeadLetter(finestra_proto::v1::DeadLetter {
                    source_topic: outbound_topic.to_owned(),
                    partition: *partition,
                    offset: -1,
                    consumer: CONSUMER.to_owned(),
                    error: why,
                    key: kafka::conversation_key(&self.tenant_id, &self.phone_number_id, &self.to)
                        .into_bytes(),
                    payload: prost::Message::encode_to_vec(&Envelope {
                        event_id: format!("out:{}", self.message_id),
                        tenant_id: self.tenant_id.clone(),
                        occurred_at: None,
                        recorded_at: None,
                        payload: Some(Payload::OutboundMessage(
                            finestra_proto::v1::OutboundMessage {
                                message_id: self.message_id.clone(),
                                phone_number_id: self.phone_number_id.clone(),
                                to: self.to.clone(),
                                body_json: self.body.clone(),
                                ..Default::default()
                            },
                        )),
                    }),
                })),
            },
        }
    }
}

struct LoopState {
    in_flight: InFlight,
    /// Message ids with a task running (a replayed event for one of them is skipped).
    active: HashSet<String>,
    /// The delivery tasks running; each ends in its `Done`.
    deliveries: JoinSet<Done>,
    /// Conversations with a message in flight, and the messages waiting behind it in order.
    conversations: HashMap<String, std::collections::VecDeque<Job>>,
    /// Messages per tenant taken up and not finished.
    held: HashMap<String, usize>,
    /// Tenants with messages parked: their new records park too until the park is empty.
    parked: HashSet<String>,
    pacer: Pacer,
    finished: Vec<Done>,
    next_refill: tokio::time::Instant,
    next_discovery: tokio::time::Instant,
    /// The outbound partitions held when the last batch was taken up.
    assigned: Vec<i32>,
    /// Where the next take-back starts among the parked tenants (turns go round).
    refill_turn: usize,
}

/// The partitions of `topic` the consumer holds, sorted.
fn consumer_assigned(consumer: &BatchConsumer, topic: &str) -> Vec<i32> {
    let mut p = consumer.assigned(topic);
    p.sort_unstable();
    p
}

/// Retries a store or broker step until it succeeds; `None` if shutdown came first (the
/// records stay uncommitted and are replayed by the next owner).
async fn retry_forever<T, E, F, Fut>(what: &str, shutdown: &Shutdown, mut step: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match step().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "{what} failed; retrying"),
        }
        if !pause(kafka::retry_backoff(attempt), shutdown).await {
            return None;
        }
        attempt += 1;
    }
}
