//! Admission per tenant (docs/fairness.md): the SendMessage calls a dispatch decides at once
//! are shared by weight among the tenants sending right now (`domain::fairness::Shares`), so
//! a flooding tenant is refused at once instead of filling the queue in front of everyone
//! else. How many that is follows the calls' latency (`domain::fairness::AdaptiveLimit`): as
//! many as the chain serves without a queue forming. A tenant's own rate and burst are a Redis bucket checked in the same script as the
//! idempotency claim (`hot`), so they hold across replicas and restarts.
//!
//! Metrics name no tenant: per-tenant counts go to one of [`BUCKETS`] hashed buckets, so the
//! series stay bounded however many tenants there are, and a hot bucket points at a handful
//! of tenants that `finestra tenant limits` and the logs can tell apart.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use finestra_domain::fairness::{AdaptiveLimit, LimitSettings, ShareRefusal, Shares, TenantLimits};

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
    /// The latency a send may take before the limit counts it as queueing.
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

struct State {
    shares: Shares<String>,
    limit: AdaptiveLimit,
}

/// A send admitted for a tenant; its share is given back when this is dropped, and its
/// latency teaches the limit.
pub struct Ticket {
    admission: Arc<Admission>,
    tenant_id: String,
    started: Instant,
    /// Sends in flight when it started.
    in_flight: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let now = Instant::now();
        let latency =
            i64::try_from(now.duration_since(self.started).as_micros()).unwrap_or(i64::MAX);
        let at =
            i64::try_from(now.duration_since(self.admission.epoch).as_micros()).unwrap_or(i64::MAX);
        let mut state = self.admission.lock();
        state.shares.release(&self.tenant_id);
        let before = state.limit.limit();
        let limit = state.limit.sample(latency, self.in_flight, at);
        if limit != before {
            let reserve = self.admission.reserve(limit);
            state.shares.set_capacity(limit, reserve);
            metrics::gauge!("finestra_dispatch_admission_limit").set(limit as f64);
        }
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
            min: floor.min(capacity),
            max: capacity,
            target_micros: i64::try_from(settings.latency_target.as_micros()).unwrap_or(i64::MAX),
            ..LimitSettings::default()
        });
        let me = Self {
            state: Mutex::new(State {
                shares: Shares::new(capacity, floor, 0),
                limit,
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

    /// Takes a place for one send of `tenant_id` with `weight`, or says why not.
    pub fn enter(self: &Arc<Self>, tenant_id: &str, weight: u32) -> Result<Ticket, ShareRefusal> {
        let mut state = self.lock();
        let in_flight = state.shares.total();
        state.shares.try_admit(&tenant_id.to_owned(), weight)?;
        metrics::gauge!("finestra_dispatch_sends_in_flight").set((in_flight + 1) as f64);
        metrics::gauge!("finestra_dispatch_sending_tenants").set(state.shares.active() as f64);
        drop(state);
        Ok(Ticket {
            admission: self.clone(),
            tenant_id: tenant_id.to_owned(),
            started: Instant::now(),
            in_flight,
        })
    }

    /// The current adaptive limit.
    pub fn limit(&self) -> usize {
        self.lock().limit.limit()
    }

    /// The limits of a tenant with its partner's settings applied over the defaults.
    pub fn effective(&self, own: TenantLimits) -> TenantLimits {
        own.or(self.settings.defaults)
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

    #[test]
    fn a_ticket_gives_its_place_back() {
        let a = Admission::new(AdmissionSettings {
            capacity: 2,
            floor: 1,
            latency_target: Duration::from_secs(60),
            defaults: TenantLimits::default(),
            retry_over_share: Duration::from_millis(50),
        });
        let t1 = a.enter("x", 1).expect("room");
        let _t2 = a.enter("x", 1).expect("room");
        assert!(a.enter("x", 1).is_err());
        // Another tenant under its floor gets in from the reserve.
        let _y = a.enter("y", 1).expect("the reserve");
        drop(t1);
        assert!(a.enter("x", 1).is_err(), "x is over its half now");
        assert_eq!(a.limit(), 2);
    }
}
