//! Admission per tenant (docs/fairness.md): the SendMessage calls a dispatch decides at once
//! are shared by weight among the tenants sending right now (`domain::fairness::Shares`), so
//! a flooding tenant is refused at once instead of filling the queue in front of everyone
//! else. A tenant's own rate and burst are a Redis bucket checked in the same script as the
//! idempotency claim (`hot`), so they hold across replicas and restarts.
//!
//! Metrics name no tenant: per-tenant counts go to one of [`BUCKETS`] hashed buckets, so the
//! series stay bounded however many tenants there are, and a hot bucket points at a handful
//! of tenants that `finestra tenant limits` and the logs can tell apart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use finestra_domain::fairness::{ShareRefusal, Shares, TenantLimits};

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
    /// Sends decided at once by this process (shared by weight).
    pub capacity: usize,
    /// Sends a tenant may always have in flight, whatever the others do.
    pub floor: usize,
    /// Room beyond `capacity` kept for tenants under their floor.
    pub reserve: usize,
    /// Limits for fields a partner left unset.
    pub defaults: TenantLimits,
    /// What a tenant over its share is told to wait.
    pub retry_over_share: Duration,
}

pub struct Admission {
    shares: Mutex<Shares<String>>,
    pub settings: AdmissionSettings,
}

/// A send admitted for a tenant; its share is given back when this is dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    tenant_id: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut shares) = self.admission.shares.lock() {
            shares.release(&self.tenant_id);
        }
    }
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Arc<Self> {
        Arc::new(Self {
            shares: Mutex::new(Shares::new(
                settings.capacity,
                settings.floor,
                settings.reserve,
            )),
            settings,
        })
    }

    /// Takes a place for one send of `tenant_id` with `weight`, or says why not.
    pub fn enter(self: &Arc<Self>, tenant_id: &str, weight: u32) -> Result<Ticket, ShareRefusal> {
        let mut shares = self.shares.lock().map_err(|_| ShareRefusal::Full)?;
        shares.try_admit(&tenant_id.to_owned(), weight)?;
        metrics::gauge!("finestra_dispatch_sends_in_flight").set(shares.total() as f64);
        metrics::gauge!("finestra_dispatch_sending_tenants").set(shares.active() as f64);
        drop(shares);
        Ok(Ticket {
            admission: self.clone(),
            tenant_id: tenant_id.to_owned(),
        })
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
            reserve: 0,
            defaults: TenantLimits::default(),
            retry_over_share: Duration::from_millis(50),
        });
        let t1 = a.enter("x", 1).expect("room");
        let _t2 = a.enter("x", 1).expect("room");
        assert!(a.enter("x", 1).is_err());
        drop(t1);
        assert!(a.enter("x", 1).is_ok());
    }
}
