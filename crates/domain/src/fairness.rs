//! Fair sharing between tenants (docs/fairness.md). Three pure pieces, each driven by the
//! caller's clock and counters:
//!
//! - [`TenantLimits`] and [`RateLimit`]: a tenant's sustained rate and burst of sends (a GCRA
//!   bucket, the same arithmetic the Redis script runs so every dispatch replica shares it),
//!   and its weight; what a partner may set, within bounds.
//! - [`Shares`]: the admission capacity (sends being decided at once) split by weight among
//!   the tenants that are sending right now, with a floor so a small tenant always gets in.
//! - [`FairQueue`]: weighted round robin over lanes (tenants, and inside a tenant its numbers),
//!   so a lane with a deep backlog delays only itself.
//! - [`AdaptiveLimit`]: how many sends may be decided at once, found from their latency, so
//!   the capacity the shares split is what the chain serves without queueing.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Bounds of what a partner may set (inclusive).
pub const MAX_RATE_PER_SECOND: u32 = 100_000;
pub const MAX_BURST: u32 = 1_000_000;
pub const MAX_WEIGHT: u32 = 100;

/// A tenant's limits as stored: 0 means "the platform's default" for each field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// SendMessage calls per second, sustained.
    pub rate_per_second: u32,
    /// Calls that may come back to back above the sustained rate.
    pub burst: u32,
    /// The tenant's share of contended capacity, relative to other tenants' weights.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("send_rate_per_second is 0 (the default) or 1..={MAX_RATE_PER_SECOND}")]
    Rate,
    #[error("send_burst is 0 (the default) or 1..={MAX_BURST}")]
    Burst,
    #[error("weight is 0 (the default) or 1..={MAX_WEIGHT}")]
    Weight,
}

impl LimitError {
    pub fn field(&self) -> &'static str {
        match self {
            LimitError::Rate => "send_rate_per_second",
            LimitError::Burst => "send_burst",
            LimitError::Weight => "weight",
        }
    }
}

impl TenantLimits {
    /// Checks what a partner asks for.
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.rate_per_second > MAX_RATE_PER_SECOND {
            return Err(LimitError::Rate);
        }
        if self.burst > MAX_BURST {
            return Err(LimitError::Burst);
        }
        if self.weight > MAX_WEIGHT {
            return Err(LimitError::Weight);
        }
        Ok(())
    }

    /// These limits with every unset field taken from `defaults`.
    pub fn or(self, defaults: TenantLimits) -> TenantLimits {
        let pick = |own: u32, default: u32| if own == 0 { default.max(1) } else { own };
        TenantLimits {
            rate_per_second: pick(self.rate_per_second, defaults.rate_per_second),
            burst: pick(self.burst, defaults.burst),
            weight: pick(self.weight, defaults.weight),
        }
    }

    pub fn rate(&self) -> RateLimit {
        RateLimit::new(self.rate_per_second, self.burst)
    }
}

/// A sustained rate with a burst, as a GCRA bucket: the state is the "theoretical arrival
/// time" `tat`; a call at `now` is allowed iff `tat - now <= (burst - 1) * interval`, and
/// moves `tat` one interval on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub interval_micros: i64,
    pub burst: i64,
}

impl RateLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = i64::from(per_second.max(1));
        Self {
            interval_micros: (1_000_000 / per_second).max(1),
            burst: i64::from(burst.max(1)),
        }
    }

    /// The bucket's state after a call at `now`, or how long until the call would be allowed.
    pub fn admit(&self, tat: Option<i64>, now: i64) -> Result<i64, i64> {
        let tat = tat.unwrap_or(now).max(now);
        let allowance = (self.burst - 1) * self.interval_micros;
        let ahead = tat - now;
        if ahead > allowance {
            Err(ahead - allowance)
        } else {
            Ok(tat + self.interval_micros)
        }
    }
}

/// Why [`Shares::try_admit`] said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareRefusal {
    /// The tenant holds its whole share while others are sending.
    OverShare,
    /// Everything is taken (the reserve too, for a tenant under its floor), or a tenant alone
    /// holds the whole capacity.
    Full,
}

/// The admission capacity shared by weight among the tenants with sends in flight.
///
/// A tenant may hold up to `max(floor, ⌈capacity * weight / active_weight⌉)` sends at once,
/// where `active_weight` sums the weights of the tenants holding any (itself included). A
/// tenant alone may use the whole capacity; as soon as another arrives, the first is refused
/// new sends until it is back under its share (its sends finish in milliseconds). Beyond the
/// capacity a `reserve` stays for tenants under their floor, so the arrival of a small tenant
/// never waits for a big one to drain.
#[derive(Debug, Clone)]
pub struct Shares<K> {
    capacity: usize,
    floor: usize,
    reserve: usize,
    held: HashMap<K, Held>,
    total: usize,
    active_weight: u64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    count: usize,
    weight: u32,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    pub fn new(capacity: usize, floor: usize, reserve: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            floor: floor.max(1),
            reserve,
            held: HashMap::new(),
            total: 0,
            active_weight: 0,
        }
    }

    /// A new capacity (the adaptive limit moved) and its reserve; sends held beyond it finish
    /// normally, new ones wait for room.
    pub fn set_capacity(&mut self, capacity: usize, reserve: usize) {
        self.capacity = capacity.max(1);
        self.reserve = reserve;
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most `weight` may hold now (its share).
    pub fn share_of(&self, tenant: &K, weight: u32) -> usize {
        let weight = u64::from(weight.max(1));
        let active = match self.held.get(tenant) {
            Some(h) => self.active_weight - u64::from(h.weight) + weight,
            None => self.active_weight + weight,
        };
        // Rounded up: with few places, a weight's fraction of one is still a place (the fair
        // clock shares the admissions over time beyond that).
        let share = (self.capacity as u64)
            .saturating_mul(weight)
            .div_ceil(active.max(1));
        usize::try_from(share).unwrap_or(usize::MAX).max(self.floor)
    }

    pub fn try_admit(&mut self, tenant: &K, weight: u32) -> Result<(), ShareRefusal> {
        let weight = weight.max(1);
        let count = self.held.get(tenant).map_or(0, |h| h.count);
        if count >= self.share_of(tenant, weight) {
            // Alone, its share is everything: the platform is full, not the tenant greedy.
            let others = self.held.len() > usize::from(count > 0);
            return Err(if others {
                ShareRefusal::OverShare
            } else {
                ShareRefusal::Full
            });
        }
        let room = if count < self.floor {
            self.capacity + self.reserve
        } else {
            self.capacity
        };
        if self.total >= room {
            return Err(ShareRefusal::Full);
        }
        self.hold(tenant, weight);
        Ok(())
    }

    /// Counts a send of `tenant` as held without the checks (a waiter handed a place that
    /// fair queueing chose for it).
    pub fn force_admit(&mut self, tenant: &K, weight: u32) {
        self.hold(tenant, weight.max(1));
    }

    /// Counts one more send of `tenant`; a changed weight applies from now on.
    fn hold(&mut self, tenant: &K, weight: u32) {
        let held = self
            .held
            .entry(tenant.clone())
            .or_insert(Held { count: 0, weight });
        if held.count == 0 {
            self.active_weight += u64::from(weight);
        } else if held.weight != weight {
            self.active_weight = self.active_weight - u64::from(held.weight) + u64::from(weight);
        }
        held.weight = weight;
        held.count += 1;
        self.total += 1;
    }

    /// The floor: sends any tenant may hold whatever the others do.
    pub fn floor(&self) -> usize {
        self.floor
    }

    /// A send admitted for `tenant` finished.
    pub fn release(&mut self, tenant: &K) {
        let Some(held) = self.held.get_mut(tenant) else {
            return;
        };
        held.count -= 1;
        self.total -= 1;
        if held.count == 0 {
            self.active_weight -= u64::from(held.weight);
            self.held.remove(tenant);
        }
    }

    pub fn held_by(&self, tenant: &K) -> usize {
        self.held.get(tenant).map_or(0, |h| h.count)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Tenants holding any.
    pub fn active(&self) -> usize {
        self.held.len()
    }
}

/// Settings of an [`AdaptiveLimit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitSettings {
    pub min: usize,
    pub max: usize,
    /// Latency is "not queueing" while the interval's mean stays within
    /// `baseline × tolerance + slack_micros`, the baseline being the lowest latency seen lately,
    pub tolerance: f64,
    pub slack_micros: i64,
    /// ... or within this: the latency an operator accepts in any case. Before a baseline is
    /// known (a flood from the start) it is the only bound.
    pub target_micros: i64,
    /// An interval ends after this long with at least `min_samples` samples.
    pub interval_micros: i64,
    pub min_samples: u32,
    /// The baseline is the minimum over the last two windows of this length, so it follows a
    /// chain that became slower for good (a bigger database) within two windows.
    pub baseline_window_micros: i64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            min: 8,
            max: 512,
            tolerance: 2.0,
            slack_micros: 5_000,
            target_micros: 25_000,
            interval_micros: 100_000,
            min_samples: 8,
            baseline_window_micros: 30_000_000,
        }
    }
}

/// A concurrency limit found from latency (in the manner of TCP Vegas): while the sends of an
/// interval take about as long as the fastest ones lately (and no longer than the target),
/// there is no queue, and the limit grows by about its square root when it was used; once
/// they take longer, a queue has formed, and the limit shrinks by a fifth. It starts at the
/// maximum, so a quiet start refuses nothing. So the number of sends in flight stays close to
/// what the chain serves at its best latency, and a burst beyond it is refused at once
/// instead of waiting in front of everyone else.
#[derive(Clone, Debug)]
pub struct AdaptiveLimit {
    settings: LimitSettings,
    limit: f64,
    /// Lowest latency of the current and the previous baseline window.
    window_min: i64,
    previous_min: i64,
    window_started: Option<i64>,
    interval_started: Option<i64>,
    sum_micros: i64,
    samples: u32,
    /// The most sends in flight seen during the interval.
    peak_in_flight: usize,
}

impl AdaptiveLimit {
    pub fn new(settings: LimitSettings) -> Self {
        let max = settings.max.max(settings.min).max(1);
        Self {
            settings: LimitSettings { max, ..settings },
            limit: max as f64,
            window_min: i64::MAX,
            previous_min: i64::MAX,
            window_started: None,
            interval_started: None,
            sum_micros: 0,
            samples: 0,
            peak_in_flight: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The latency below which sends are not queueing (`None` before the first sample).
    pub fn baseline(&self) -> Option<i64> {
        let b = self.window_min.min(self.previous_min);
        (b != i64::MAX).then_some(b)
    }

    /// A send that started with `in_flight` others took `latency_micros`, finishing at `now`;
    /// returns the limit after it. Only sends that started nearly alone (at most twice the
    /// minimum limit in flight) teach the baseline: under a flood every send queues, and its
    /// latency says nothing about the chain's own.
    pub fn sample(&mut self, latency_micros: i64, in_flight: usize, now: i64) -> usize {
        let s = self.settings;
        let latency = latency_micros.max(1);
        let window_started = *self.window_started.get_or_insert(now);
        if now - window_started >= s.baseline_window_micros {
            self.previous_min = self.window_min;
            self.window_min = i64::MAX;
            self.window_started = Some(now);
        }
        self.peak_in_flight = self.peak_in_flight.max(in_flight);
        if in_flight <= s.min.saturating_mul(2) {
            self.window_min = self.window_min.min(latency);
        }
        let interval_started = *self.interval_started.get_or_insert(now);
        self.sum_micros = self.sum_micros.saturating_add(latency);
        self.samples += 1;
        if now - interval_started < s.interval_micros || self.samples < s.min_samples {
            return self.limit();
        }
        let mean = self.sum_micros / i64::from(self.samples);
        // Queueing means slower than the target *and* than the tolerance over the unloaded
        // latency: a chain whose rounds grow with load (a group commit takes more per round)
        // is not queueing while it stays within the operator's target.
        let target = match self.baseline() {
            Some(baseline) => {
                ((baseline as f64 * s.tolerance) as i64 + s.slack_micros).max(s.target_micros)
            }
            None => s.target_micros,
        };
        if mean > target {
            self.limit *= 0.8;
        } else if self.peak_in_flight as f64 >= self.limit * 0.75 {
            self.limit += self.limit.sqrt().max(1.0);
        }
        self.limit = self.limit.clamp(s.min as f64, s.max as f64);
        self.interval_started = Some(now);
        self.sum_micros = 0;
        self.samples = 0;
        self.peak_in_flight = 0;
        self.limit()
    }
}

/// What a lane of a [`FairQueue`] holds: a plain queue, or another fair queue (numbers
/// inside a tenant).
pub trait Lane: Default {
    type Item;
    fn pop(&mut self) -> Option<Self::Item>;
    fn is_empty(&self) -> bool;
}

impl<T> Lane for VecDeque<T> {
    type Item = T;
    fn pop(&mut self) -> Option<T> {
        self.pop_front()
    }
    fn is_empty(&self) -> bool {
        VecDeque::is_empty(self)
    }
}

/// Weighted round robin over lanes: each turn a lane hands out up to its weight in items,
/// then the next lane with items has its turn. With every lane backlogged, lane `i` gets
/// `weight_i / Σ weight` of the items; a lane with nothing waiting costs nothing.
#[derive(Debug)]
pub struct FairQueue<K, L> {
    lanes: HashMap<K, Slot<L>>,
    /// Lanes with items, in turn order; the front one is being served.
    ring: VecDeque<K>,
    len: usize,
}

#[derive(Debug)]
struct Slot<L> {
    weight: u32,
    credit: u32,
    lane: L,
}

impl<K, L> Default for FairQueue<K, L> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, L: Lane> FairQueue<K, L> {
    /// Adds one item to `key`'s lane through `put` (a changed weight applies from its next
    /// turn).
    pub fn push_with(&mut self, key: &K, weight: u32, put: impl FnOnce(&mut L)) {
        let weight = weight.max(1);
        let slot = self.lanes.entry(key.clone()).or_insert_with(|| Slot {
            weight,
            credit: weight,
            lane: L::default(),
        });
        let was_empty = slot.lane.is_empty();
        slot.weight = weight;
        put(&mut slot.lane);
        if was_empty {
            self.ring.push_back(key.clone());
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items waiting in `key`'s lane.
    pub fn lane(&self, key: &K) -> Option<&L> {
        self.lanes.get(key).map(|s| &s.lane)
    }
}

impl<K: Hash + Eq + Clone, T> FairQueue<K, VecDeque<T>> {
    pub fn push(&mut self, key: &K, weight: u32, item: T) {
        self.push_with(key, weight, |q| q.push_back(item));
    }
}

impl<K: Hash + Eq + Clone, L: Lane> FairQueue<K, FairQueue<K, L>> {
    /// Adds an item to lane `outer` (weight `weight`), inside it to lane `inner` (weight 1).
    pub fn push_nested(&mut self, outer: &K, weight: u32, inner: &K, put: impl FnOnce(&mut L)) {
        self.push_with(outer, weight, |lane| lane.push_with(inner, 1, put));
    }
}

impl<K: Hash + Eq + Clone, L: Lane> Lane for FairQueue<K, L> {
    type Item = L::Item;

    fn pop(&mut self) -> Option<L::Item> {
        while let Some(key) = self.ring.front().cloned() {
            let Some(slot) = self.lanes.get_mut(&key) else {
                self.ring.pop_front();
                continue;
            };
            let Some(item) = slot.lane.pop() else {
                // An empty lane leaves the ring (a later push puts it at the back).
                self.ring.pop_front();
                self.lanes.remove(&key);
                continue;
            };
            self.len -= 1;
            slot.credit = slot.credit.saturating_sub(1);
            if slot.lane.is_empty() {
                self.ring.pop_front();
                self.lanes.remove(&key);
            } else if slot.credit == 0 {
                slot.credit = slot.weight;
                self.ring.rotate_left(1);
            }
            return Some(item);
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unset_limits_take_the_defaults_and_bounds_are_enforced() {
        let defaults = TenantLimits {
            rate_per_second: 200,
            burst: 400,
            weight: 1,
        };
        let own = TenantLimits {
            rate_per_second: 50,
            burst: 0,
            weight: 3,
        };
        assert_eq!(
            own.or(defaults),
            TenantLimits {
                rate_per_second: 50,
                burst: 400,
                weight: 3
            }
        );
        assert_eq!(TenantLimits::default().or(defaults), defaults);
        assert_eq!(
            TenantLimits {
                weight: MAX_WEIGHT + 1,
                ..own
            }
            .validate(),
            Err(LimitError::Weight)
        );
        assert_eq!(
            TenantLimits {
                rate_per_second: MAX_RATE_PER_SECOND + 1,
                ..own
            }
            .validate(),
            Err(LimitError::Rate)
        );
        assert_eq!(
            TenantLimits {
                burst: MAX_BURST + 1,
                ..own
            }
            .validate(),
            Err(LimitError::Burst)
        );
        assert_eq!(own.validate(), Ok(()));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry() {
        let limit = RateLimit::new(10, 3);
        let now = 1_000_000_000;
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(limit.admit(tat, now).expect("within the burst"));
        }
        assert_eq!(
            limit.admit(tat, now),
            Err(100_000),
            "the fourth waits one interval"
        );
        assert!(limit.admit(tat, now + 100_000).is_ok());
        // A bucket left alone fills up again, never beyond its burst.
        let later = now + 10_000_000;
        let mut t = tat;
        for _ in 0..3 {
            t = Some(limit.admit(t, later).expect("full again"));
        }
        assert!(limit.admit(t, later).is_err());
    }

    proptest! {
        #[test]
        fn a_bucket_never_admits_more_than_burst_plus_rate_times_time(
            per_second in 1u32..2_000,
            burst in 1u32..500,
            gaps in proptest::collection::vec(0i64..50_000, 1..400),
        ) {
            let limit = RateLimit::new(per_second, burst);
            let start = 5_000_000_000i64;
            let mut now = start;
            let mut tat = None;
            let mut admitted = 0i64;
            for gap in gaps {
                now += gap;
                if let Ok(t) = limit.admit(tat, now) {
                    tat = Some(t);
                    admitted += 1;
                }
            }
            let elapsed = now - start;
            prop_assert!(admitted <= i64::from(burst) + elapsed / limit.interval_micros + 1);
        }
    }

    #[test]
    fn a_tenant_alone_may_use_everything_and_shrinks_to_its_share_when_another_arrives() {
        let mut s = Shares::new(100, 4, 20);
        for _ in 0..100 {
            s.try_admit(&"a", 1).expect("alone, the whole capacity");
        }
        assert_eq!(s.try_admit(&"a", 1), Err(ShareRefusal::Full), "alone: full");
        // b comes: under its floor it gets in from the reserve.
        for _ in 0..4 {
            s.try_admit(&"b", 1).expect("the floor always gets in");
        }
        assert_eq!(s.try_admit(&"b", 1), Err(ShareRefusal::Full));
        // a is over its half now: refused until it is back under 50.
        for _ in 0..50 {
            s.release(&"a");
        }
        assert_eq!(s.try_admit(&"a", 1), Err(ShareRefusal::OverShare));
        s.release(&"a");
        // 49 + 4 held: both may go on up to their shares.
        s.try_admit(&"a", 1).expect("back under its share");
        for _ in 0..40 {
            s.try_admit(&"b", 1).expect("b has room to its share");
        }
        assert_eq!(s.held_by(&"b"), 44);
        assert_eq!(s.total(), 94);
    }

    #[test]
    fn shares_follow_weights() {
        let s = {
            let mut s = Shares::new(120, 1, 0);
            s.try_admit(&"light", 1).unwrap();
            s.try_admit(&"heavy", 2).unwrap();
            s
        };
        assert_eq!(s.share_of(&"light", 1), 40);
        assert_eq!(s.share_of(&"heavy", 2), 80);
        assert_eq!(s.share_of(&"new", 3), 120 * 3 / 6);
    }

    proptest! {
        #[test]
        fn shares_never_exceed_capacity_plus_reserve_and_release_restores_everything(
            ops in proptest::collection::vec((0usize..5, 1u32..5, any::<bool>()), 1..600),
        ) {
            let (capacity, floor, reserve) = (40, 2, 8);
            let mut s = Shares::new(capacity, floor, reserve);
            let mut held = [0usize; 5];
            for (tenant, weight, admit) in ops {
                if admit {
                    if s.try_admit(&tenant, weight).is_ok() {
                        held[tenant] += 1;
                    }
                } else if held[tenant] > 0 {
                    s.release(&tenant);
                    held[tenant] -= 1;
                }
                prop_assert!(s.total() <= capacity + reserve);
                prop_assert_eq!(s.total(), held.iter().sum::<usize>());
                // A tenant under its floor is refused only when the reserve is gone too.
                for (t, h) in held.iter().enumerate() {
                    if *h < floor && s.total() < capacity + reserve {
                        let mut probe = s.clone();
                        prop_assert!(probe.try_admit(&t, 1).is_ok());
                    }
                }
            }
            for (tenant, h) in held.iter().enumerate() {
                for _ in 0..*h { s.release(&tenant); }
            }
            prop_assert_eq!(s.total(), 0);
            prop_assert_eq!(s.active(), 0);
        }
    }

    fn drain<L: Lane>(q: &mut L, n: usize) -> Vec<L::Item> {
        (0..n).map_while(|_| q.pop()).collect()
    }

    #[test]
    fn a_deep_lane_does_not_delay_another() {
        let mut q: FairQueue<&str, VecDeque<u32>> = FairQueue::default();
        for i in 0..100_000 {
            q.push(&"flood", 1, i);
        }
        q.push(&"clinic", 1, 7);
        let first = drain(&mut q, 2);
        assert_eq!(first, vec![0, 7], "the clinic's message is the second out");
        assert_eq!(q.len(), 99_999);
    }

    #[test]
    fn lanes_keep_their_own_order_and_nested_lanes_alternate_numbers() {
        type Numbers<'a> = FairQueue<&'a str, VecDeque<(&'a str, u32)>>;
        let mut q: FairQueue<&str, Numbers<'_>> = FairQueue::default();
        for i in 0..3 {
            q.push_nested(&"t1", 1, &"n1", |l| l.push_back(("n1", i)));
        }
        for i in 0..3 {
            q.push_nested(&"t1", 1, &"n2", |l| l.push_back(("n2", i)));
        }
        let out = drain(&mut q, 10);
        assert_eq!(
            out,
            vec![
                ("n1", 0),
                ("n2", 0),
                ("n1", 1),
                ("n2", 1),
                ("n1", 2),
                ("n2", 2)
            ]
        );
        assert!(Lane::is_empty(&q));
    }

    proptest! {
        #[test]
        fn backlogged_lanes_get_items_in_proportion_to_their_weights(
            weights in proptest::collection::vec(1u32..11, 1..10),
            rounds in 1usize..20,
        ) {
            let mut q: FairQueue<usize, VecDeque<usize>> = FairQueue::default();
            let total_weight: u32 = weights.iter().sum();
            let taken = total_weight as usize * rounds;
            for (lane, w) in weights.iter().enumerate() {
                for _ in 0..(*w as usize * rounds + 5) {
                    q.push(&lane, *w, lane);
                }
            }
            let mut got = vec![0usize; weights.len()];
            for lane in drain(&mut q, taken) {
                got[lane] += 1;
            }
            for (lane, w) in weights.iter().enumerate() {
                prop_assert_eq!(got[lane], *w as usize * rounds);
            }
        }

        #[test]
        fn every_item_comes_out_once_in_its_lanes_order(
            pushes in proptest::collection::vec((0usize..6, 1u32..4), 0..300),
        ) {
            let mut q: FairQueue<usize, VecDeque<usize>> = FairQueue::default();
            for (i, (lane, w)) in pushes.iter().enumerate() {
                q.push(lane, *w, i);
            }
            let out = drain(&mut q, pushes.len() + 1);
            prop_assert_eq!(out.len(), pushes.len());
            let mut last = [None::<usize>; 6];
            for i in out {
                let lane = pushes[i].0;
                prop_assert!(last[lane].is_none_or(|prev| prev < i));
                last[lane] = Some(i);
            }
        }
    }

    fn settings() -> LimitSettings {
        LimitSettings {
            min: 4,
            max: 400,
            ..LimitSettings::default()
        }
    }

    /// A chain that serves `rate` sends a second at `base` µs each: latency grows with the
    /// queue once more than `rate × base` are in flight (Little's law).
    fn latency_at(in_flight: usize, rate: f64, base: i64) -> i64 {
        let served_without_queue = rate * base as f64 / 1e6;
        if in_flight as f64 <= served_without_queue {
            base
        } else {
            (in_flight as f64 / rate * 1e6) as i64
        }
    }

    #[test]
    fn the_limit_settles_where_the_chain_serves_without_a_queue() {
        let mut l = AdaptiveLimit::new(settings());
        let (rate, base) = (1_000.0, 20_000); // 20 in flight at 20 ms each
        let mut now = 0;
        for _ in 0..20_000 {
            let in_flight = l.limit(); // a flood keeps it full
            now += 1_000;
            l.sample(latency_at(in_flight, rate, base), in_flight, now);
        }
        let settled = l.limit();
        assert!(
            (20..=60).contains(&settled),
            "settled at {settled}: about rate × latency (20), within the tolerance"
        );
        // Latency at that limit stays within the tolerance of the unloaded one.
        assert!(latency_at(settled, rate, base) <= 2 * base + 5_000);
    }

    #[test]
    fn a_chain_slower_than_the_target_is_not_mistaken_for_a_queue() {
        let mut l = AdaptiveLimit::new(settings());
        let (rate, base) = (1_000.0, 40_000); // 40 ms unloaded, above the 25 ms target
        let mut now = 0;
        for _ in 0..20_000 {
            let in_flight = l.limit();
            now += 1_000;
            l.sample(latency_at(in_flight, rate, base), in_flight, now);
        }
        assert_eq!(l.baseline(), Some(40_000));
        assert!(
            l.limit() >= 30,
            "it serves ~40 at once unqueued: {}",
            l.limit()
        );
    }

    #[test]
    fn an_unused_limit_does_not_grow_and_a_used_one_recovers() {
        let mut l = AdaptiveLimit::new(settings());
        let mut now = 0;
        // Alone, a send takes 10 ms: the baseline.
        l.sample(10_000, 1, now);
        // Queueing: latency 10× the baseline shrinks it to the minimum.
        for _ in 0..200 {
            now += 20_000;
            l.sample(100_000, l.limit(), now);
        }
        assert_eq!(l.limit(), 4);
        // Fast again but hardly used: it stays.
        for _ in 0..10 {
            now += 20_000;
            l.sample(10_000, 1, now);
        }
        let unused = l.limit();
        for _ in 0..200 {
            now += 20_000;
            l.sample(10_000, 1, now);
        }
        assert_eq!(l.limit(), unused);
        // Fast and used: it grows back to the maximum.
        for _ in 0..2_000 {
            now += 20_000;
            l.sample(10_000, l.limit(), now);
        }
        assert_eq!(l.limit(), 400);
    }

    #[test]
    fn the_baseline_follows_a_chain_that_became_slower_for_good() {
        let mut l = AdaptiveLimit::new(settings());
        let mut now = 0;
        for _ in 0..100 {
            now += 10_000;
            l.sample(5_000, 1, now);
        }
        assert_eq!(l.baseline(), Some(5_000));
        for _ in 0..10_000 {
            now += 10_000;
            l.sample(50_000, 1, now);
        }
        assert_eq!(l.baseline(), Some(50_000), "two windows later");
    }
}
