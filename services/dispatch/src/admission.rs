//! Admission per tenant (docs/fairness.md): the SendMessage calls a dispatch decides at once
//! are shared by weight among the tenants sending right now (`domain::fairness::Shares`), so
//! a flooding tenant is refused at once instead of filling the queue in front of everyone
//! else. How many that is follows the calls' latency (`domain::fairness::AdaptiveLimit`): as
//! many as the chain serves without a queue forming. When every place is taken, a send within
//! its tenant's share waits its turn, at most the latency target, and places are handed out
//! in weighted round robin over tenants (`domain::fairness::FairQueue`), so tenants that all
//! want more get places in proportion to their weights. Over time the admissions themselves
//! follow the weights among tenants that want more than they get
//! (`domain::fair_clock::FairClock`), so weights show however few places there are. A tenant's
//! own rate and burst are a
//! Redis bucket checked in the same script as the idempotency claim (`hot`), so they hold
//! across replicas and restarts.
//!
//! Metrics name no tenant: per-tenant counts go to one of [`BUCKETS`] hashed buckets, so the
//! series stay bounded however many tenants there are, and a hot bucket points at a handful
//! of tenants that `finestra tenant limits` and the logs can tell apart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use finestra_domain::fair_clock::FairClock;
use finestra_domain::fairness::{
    AdaptiveLimit, FairQueue, Lane as _, LimitSettings, ShareRefusal, Shares, TenantLimits,
};
use tokio::sync::oneshot;

/// The adaptive limit's floor.
const MIN_LIMIT: usize = 8;

/// Sends (of weight 1) a tenant may run ahead of the tenants that want more than they get.
const CLOCK_SLACK_SENDS: u64 = 2;
/// How long a refusal counts a tenant as wanting more than it gets.
const BACKLOG_FOR: Duration = Duration::from_millis(500);
/// The fair clock forgets tenants that no longer matter every this many calls.
const PRUNE_EVERY: u64 = 1_024;

/// Hashed buckets for per-tenant metrics.
pub const BUCKETS: usize = 16;
const BUCKET_LABELS: [&str; BUCKETS] = [
    "00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15",
];

/// The metric bucket of a tenant: FNV-1a of its id, stable across processes and releases.
pub fn bucket(tenant_id: &str) -> &'static str {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    BUCKET_LABELS[(h % BUCKETS as u64) as usize]
}

/// Counts a SendMessage outcome of a tenant in its bucket.
pub fn count(tenant_id: &str, outcome: &'static str) {
    metrics::counter!(
        "finestra_dispatch_tenant_sends_total",
        "bucket" => bucket(tenant_id),
        "outcome" => outcome
    )
    .increment(1);
}

#[derive(Clone, Copy, Debug)]
pub struct AdmissionSettings {
    /// Sends decided at once by this process at most (shared by weight); the adaptive limit
    /// moves below it.
    pub capacity: usize,
    /// Sends a tenant may always have in flight, whatever the others do.
    pub floor: usize,
    /// The latency a send may take before the limit counts it as queueing; also the longest
    /// a send waits for its turn when every place is taken.
    pub latency_target: Duration,
    /// Limits for fields a partner left unset.
    pub defaults: TenantLimits,
    /// What a tenant over its share is told to wait.
    pub retry_over_share: Duration,
}

pub struct Admission {
    state: Mutex<State>,
    pub settings: AdmissionSettings,
    /// Where the limit's clock starts (monotonic).
    epoch: Instant,
}

/// A send waiting for a place: handed a ticket when its turn comes.
struct Waiter {
    tenant_id: String,
    weight: u32,
    tx: oneshot::Sender<Ticket>,
}

struct State {
    shares: Shares<String>,
    /// Admissions over time, by weight, among tenants that want more than they get.
    clock: FairClock<String>,
    calls: u64,
    limit: AdaptiveLimit,
    /// Sends waiting for a place, in weighted round robin over tenants.
    waiting: FairQueue<String, VecDeque<Waiter>>,
    /// Live waiters per tenant (the queue may still hold some that gave up).
    waiting_of: HashMap<String, usize>,
    waiting_live: usize,
}

/// A send admitted for a tenant; its place is given back (to the next waiter in turn) when
/// this is dropped, and its latency teaches the limit.
pub struct Ticket {
    admission: Option<Arc<Admission>>,
    tenant_id: String,
    started: Instant,
    /// Sends in flight when it started.
    in_flight: usize,
    /// It was used for a send (a ticket dropped in the channel of a waiter that gave up says
    /// nothing about latency).
    used: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(admission) = self.admission.take() else {
            return;
        };
        let now = Instant::now();
        let sample = self.used.then(|| {
            (
                i64::try_from(now.duration_since(self.started).as_micros()).unwrap_or(i64::MAX),
                i64::try_from(now.duration_since(admission.epoch).as_micros()).unwrap_or(i64::MAX),
            )
        });
        let mut state = admission.lock();
        state.shares.release(&self.tenant_id);
        if let Some((latency, at)) = sample {
            let before = state.limit.limit();
            let limit = state.limit.sample(latency, self.in_flight, at);
            if limit != before {
                let reserve = admission.reserve(limit);
                state.shares.set_capacity(limit, reserve);
                metrics::gauge!("finestra_dispatch_admission_limit").set(limit as f64);
            }
        }
        admission.hand_out(&mut state);
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Arc<Self> {
        let capacity = settings.capacity.max(1);
        let floor = settings.floor.clamp(1, capacity);
        let settings = AdmissionSettings {
            capacity,
            floor,
            ..settings
        };
        let limit = AdaptiveLimit::new(LimitSettings {
            // Never so low that acceptance batches are a handful: below a few places a busy
            // machine's latency is not the chain's queue, and shrinking further only costs rate.
            min: floor.max(MIN_LIMIT).min(capacity),
            max: capacity,
            target_micros: i64::try_from(settings.latency_target.as_micros()).unwrap_or(i64::MAX),
            ..LimitSettings::default()
        });
        let me = Self {
            state: Mutex::new(State {
                shares: Shares::new(capacity, floor, 0),
                clock: FairClock::new(
                    CLOCK_SLACK_SENDS,
                    i64::try_from(BACKLOG_FOR.as_micros()).unwrap_or(i64::MAX),
                ),
                calls: 0,
                limit,
                waiting: FairQueue::default(),
                waiting_of: HashMap::new(),
                waiting_live: 0,
            }),
            settings,
            epoch: Instant::now(),
        };
        {
            let mut state = me.lock();
            let reserve = me.reserve(capacity);
            state.shares.set_capacity(capacity, reserve);
        }
        metrics::gauge!("finestra_dispatch_admission_limit").set(capacity as f64);
        Arc::new(me)
    }

    /// Room kept beyond the limit for tenants under their floor: a quarter of it, and at least
    /// one floor.
    fn reserve(&self, limit: usize) -> usize {
        (limit / 4).max(self.settings.floor)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is one step: the state stays consistent under a panic elsewhere.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Microseconds since this admission started (the fair clock's time).
    fn now(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    fn ticket(self: &Arc<Self>, tenant_id: &str, in_flight: usize, used: bool) -> Ticket {
        Ticket {
            admission: Some(self.clone()),
            tenant_id: tenant_id.to_owned(),
            started: Instant::now(),
            in_flight,
            used,
        }
    }

    /// Hands free places to waiters in turn (weighted round robin over tenants).
    fn hand_out(self: &Arc<Self>, state: &mut State) {
        while state.waiting_live > 0 && state.shares.total() < state.shares.capacity() {
            let Some(w) = state.waiting.pop() else {
                break;
            };
            let in_flight = state.shares.total();
            state.shares.force_admit(&w.tenant_id, w.weight);
            state.clock.admitted(&w.tenant_id, w.weight);
            let ticket = self.ticket(&w.tenant_id, in_flight, false);
            if let Err(mut unused) = w.tx.send(ticket) {
                // That waiter gave up (it counted itself out): undo here, under the lock. Its
                // turn stays spent on the fair clock: it was offered.
                unused.admission = None;
                state.shares.release(&w.tenant_id);
            }
        }
        metrics::gauge!("finestra_dispatch_admission_waiting").set(state.waiting_live as f64);
    }

    /// Takes a place for one send of `tenant_id` with `weight`: at once when there is room
    /// and nobody waits (or the tenant is under its floor); otherwise it waits its turn, at
    /// most the latency target, if its share of waiting places has room. Refused at once when
    /// the tenant already holds its share, or waits with all of its share, or has been
    /// admitted more than its weight's part while others wanted more (the fair clock).
    pub async fn enter(
        self: &Arc<Self>,
        tenant_id: &str,
        weight: u32,
    ) -> Result<Ticket, ShareRefusal> {
        let key = tenant_id.to_owned();
        let now = self.now();
        let refused = |state: &mut State, why: ShareRefusal| {
            state.clock.refused(&key, now);
            Err(why)
        };
        let waiter = {
            let mut state = self.lock();
            state.calls += 1;
            if state.calls.is_multiple_of(PRUNE_EVERY) {
                state.clock.prune(now);
            }
            let in_flight = state.shares.total();
            let under_floor = state.shares.held_by(&key) < state.shares.floor();
            // Before the floor: a tenant ahead of the others holds nothing between two closed-loop
            // calls, and its floor would otherwise let it take every turn. A tenant that is not
            // backlogged (a clinic beside a flood) is never ahead, so the floor still lets it in.
            if state.clock.check(&key, now).is_err() {
                return refused(&mut state, ShareRefusal::OverShare);
            }
            if state.waiting_live == 0 || under_floor {
                match state.shares.try_admit(&key, weight) {
                    Ok(()) => {
                        state.clock.admitted(&key, weight);
                        metrics::gauge!("finestra_dispatch_sends_in_flight")
                            .set((in_flight + 1) as f64);
                        metrics::gauge!("finestra_dispatch_sending_tenants")
                            .set(state.shares.active() as f64);
                        return Ok(self.ticket(tenant_id, in_flight, true));
                    }
                    Err(ShareRefusal::OverShare) => {
                        return refused(&mut state, ShareRefusal::OverShare);
                    }
                    Err(ShareRefusal::Full) => {}
                }
            }
            // What it holds and what it waits with stay within its share.
            let waiting = state.waiting_of.get(&key).copied().unwrap_or(0);
            if state.shares.held_by(&key) + waiting >= state.shares.share_of(&key, weight) {
                let alone = state.shares.active() <= usize::from(state.shares.held_by(&key) > 0)
                    && state.waiting_live == waiting;
                let why = if alone {
                    ShareRefusal::Full
                } else {
                    ShareRefusal::OverShare
                };
                return refused(&mut state, why);
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.push(
                &key,
                weight,
                Waiter {
                    tenant_id: key.clone(),
                    weight,
                    tx,
                },
            );
            *state.waiting_of.entry(key.clone()).or_insert(0) += 1;
            state.waiting_live += 1;
            // A place may have come free since (a lower limit, a release racing this).
            self.hand_out(&mut state);
            rx
        };
        let outcome = tokio::time::timeout(self.settings.latency_target, waiter).await;
        let mut state = self.lock();
        if let Some(n) = state.waiting_of.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.waiting_of.remove(&key);
            }
        }
        state.waiting_live -= 1;
        if !matches!(outcome, Ok(Ok(_))) {
            state.clock.refused(&key, self.now());
        }
        drop(state);
        match outcome {
            Ok(Ok(mut ticket)) => {
                ticket.used = true;
                ticket.started = Instant::now();
                Ok(ticket)
            }
            // Its turn did not come in time: the chain is full.
            _ => Err(ShareRefusal::Full),
        }
    }

    /// The limits of a tenant with its partner's settings applied over the defaults.
    pub fn effective(&self, own: TenantLimits) -> TenantLimits {
        own.or(self.settings.defaults)
    }

    /// The current adaptive limit.
    pub fn limit(&self) -> usize {
        self.lock().limit.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("acme"), bucket("acme"));
        let used: std::collections::HashSet<_> =
            (0..400).map(|i| bucket(&format!("tenant-{i}"))).collect();
        assert_eq!(used.len(), BUCKETS, "400 tenants reach every bucket");
    }

    fn admission(capacity: usize, floor: usize) -> Arc<Admission> {
        Admission::new(AdmissionSettings {
            capacity,
            floor,
            latency_target: Duration::from_secs(60),
            defaults: TenantLimits::default(),
            retry_over_share: Duration::from_millis(50),
        })
    }

    #[tokio::test]
    async fn a_ticket_gives_its_place_back() {
        let a = admission(2, 1);
        let t1 = a.enter("x", 1).await.expect("room");
        let _t2 = a.enter("x", 1).await.expect("room");
        // Alone and holding everything: full, at once (its share is all it holds).
        assert!(matches!(a.enter("x", 1).await, Err(ShareRefusal::Full)));
        // Another tenant under its floor gets in from the reserve.
        let _y = a.enter("y", 1).await.expect("the reserve");
        drop(t1);
        assert!(
            matches!(a.enter("x", 1).await, Err(ShareRefusal::OverShare)),
            "x holds its half now"
        );
        assert_eq!(a.limit(), 2);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_next_free_place_in_turn() {
        let a = Admission::new(AdmissionSettings {
            capacity: 4,
            floor: 1,
            latency_target: Duration::from_millis(300),
            defaults: TenantLimits::default(),
            retry_over_share: Duration::from_millis(50),
        });
        // x holds the four places, y the reserve (one floor).
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.enter("x", 1).await.expect("room"));
        }
        let y = a.enter("y", 1).await.expect("the reserve");
        // z (under its floor, but the reserve is gone) waits its turn.
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.enter("z", 1).await })
        };
        while a.lock().waiting_live < 1 {
            tokio::task::yield_now().await;
        }
        // x holds more than its third now: refused at once, it does not wait.
        assert!(matches!(
            a.enter("x", 1).await,
            Err(ShareRefusal::OverShare)
        ));
        // Five held over a limit of four (y from the reserve): the second freed place is z's.
        drop(held.pop());
        drop(held.pop());
        let z = waiting.await.expect("task").expect("z's turn came");
        assert_eq!(z.tenant_id, "z");
        assert_eq!(a.lock().waiting_live, 0);
        drop(z);
        drop(y);
        drop(held);
        assert_eq!(a.lock().shares.total(), 0, "every place came back");
    }
}
