//! Pacing (docs/rules.md §5): when the next message of a number, and of a (number, user) pair, may
//! go, so the network never answers "rate limited". Two token buckets, computed as "the
//! earliest time it may go" rather than polled: the number's (default 80 msg/s, burst one
//! second's worth) and the pair's (one per 6 s sustained, bursts of up to 45). Pure: times are
//! given, and a paced message reserves its slot so the next one lines up behind it.

use std::collections::HashMap;

use crate::time::Timestamp;

/// A token bucket expressed as the time it becomes full again ("theoretical arrival time",
/// GCRA): a send is allowed at `t` iff `t >= tat - burst * interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Time between two messages at the sustained rate, µs.
    pub interval_micros: i64,
    /// Messages that may go back to back.
    pub burst: i64,
}

impl Rate {
    pub const fn per_second(messages: i64) -> Self {
        let m = if messages < 1 { 1 } else { messages };
        Self {
            interval_micros: 1_000_000 / m,
            burst: m,
        }
    }

    /// One message per 6 s sustained, bursts of up to 45 (the network's per-pair limit).
    pub const PAIR: Rate = Rate {
        interval_micros: 6_000_000,
        burst: 45,
    };
}

/// The earliest time a message may go under `rate`, given the bucket's state `tat`, and the
/// state after it went then.
fn slot(tat: Option<i64>, rate: Rate, now: i64) -> (i64, i64) {
    let tat = tat
        .unwrap_or(now)
        .max(now - rate.interval_micros * rate.burst);
    let earliest = (tat - rate.interval_micros * (rate.burst - 1)).max(now);
    (earliest, tat.max(earliest) + rate.interval_micros)
}

#[derive(Debug, Default)]
pub struct Pacer {
    numbers: HashMap<String, i64>,
    pairs: HashMap<(String, String), i64>,
}

impl Pacer {
    /// Reserves the earliest slot at or after `now` that both the number's `rate` and the
    /// pair's limit allow, and returns it.
    pub fn schedule(
        &mut self,
        number: &str,
        user: &str,
        number_rate: Rate,
        now: Timestamp,
    ) -> Timestamp {
        let now = now.micros();
        let pair_key = (number.to_owned(), user.to_owned());
        let (pair_at, _) = slot(self.pairs.get(&pair_key).copied(), Rate::PAIR, now);
        let (at, number_tat) = slot(self.numbers.get(number).copied(), number_rate, pair_at);
        // The pair's bucket is charged at the slot actually taken.
        let (_, pair_tat) = slot(self.pairs.get(&pair_key).copied(), Rate::PAIR, at);
        self.numbers.insert(number.to_owned(), number_tat);
        self.pairs.insert(pair_key, pair_tat);
        Timestamp::from_micros(at)
    }

    /// Drops buckets that are full again at `now` (they would schedule exactly as an unknown
    /// one), so a long-running worker keeps only the pairs it recently paced.
    pub fn forget_idle(&mut self, now: Timestamp) {
        let now = now.micros();
        self.numbers.retain(|_, tat| *tat > now);
        self.pairs.retain(|_, tat| *tat > now);
    }

    /// Buckets held (numbers + pairs).
    pub fn len(&self) -> usize {
        self.numbers.len() + self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buckets_are_forgotten_without_changing_any_schedule() {
        let mut p = Pacer::default();
        let rate = Rate::per_second(10);
        let first = p.schedule("n", "u", rate, T);
        assert_eq!(first, T);
        p.forget_idle(T);
        assert_eq!(p.len(), 2, "both buckets still drain after T");
        p.forget_idle(T.plus_micros(7_000_000));
        assert!(p.is_empty());
        let mut fresh = Pacer::default();
        let later = T.plus_micros(7_000_000);
        assert_eq!(
            p.schedule("n", "u", rate, later),
            fresh.schedule("n", "u", rate, later)
        );
    }

    const T: Timestamp = Timestamp::from_secs(1_764_000_000);

    fn secs_after(t: Timestamp) -> f64 {
        (t.micros() - T.micros()) as f64 / 1e6
    }

    #[test]
    fn a_number_sends_a_seconds_burst_then_at_its_rate() {
        let mut p = Pacer::default();
        let rate = Rate::per_second(10);
        let slots: Vec<f64> = (0..25)
            .map(|i| secs_after(p.schedule("pn", &format!("u{i}"), rate, T)))
            .collect();
        assert!(slots[..10].iter().all(|s| *s == 0.0), "{slots:?}");
        for (i, s) in slots[10..].iter().enumerate() {
            assert!((s - 0.1 * (i as f64 + 1.0)).abs() < 1e-6, "{slots:?}");
        }
        // Another number is not delayed by this one.
        assert_eq!(p.schedule("other", "u", rate, T), T);
    }

    #[test]
    fn a_pair_bursts_45_then_one_per_six_seconds() {
        let mut p = Pacer::default();
        let rate = Rate::per_second(1_000);
        let slots: Vec<Timestamp> = (0..48).map(|_| p.schedule("pn", "u", rate, T)).collect();
        // The number's own rate spaces the burst by 1 ms; the pair allows 45 of them.
        assert!(slots[44].micros() - T.micros() < 1_000_000);
        assert!(
            (secs_after(slots[45]) - 6.0).abs() < 0.1,
            "{}",
            secs_after(slots[45])
        );
        assert!((secs_after(slots[47]) - 18.0).abs() < 0.1);
    }

    #[test]
    fn an_idle_bucket_refills_but_never_beyond_its_burst() {
        let mut p = Pacer::default();
        let rate = Rate::per_second(2);
        for _ in 0..2 {
            assert_eq!(p.schedule("pn", "a", rate, T), T);
        }
        assert!(p.schedule("pn", "b", rate, T) > T, "the burst is used up");
        // An hour later only a burst's worth goes at once.
        let later = T.plus_hours(1);
        let slots: Vec<Timestamp> = (0..3)
            .map(|i| p.schedule("pn", &format!("c{i}"), rate, later))
            .collect();
        assert_eq!(&slots[..2], &[later, later]);
        assert_eq!(slots[2], later.plus_micros(500_000));
    }

    #[test]
    fn slots_never_go_back_in_time() {
        let mut p = Pacer::default();
        let rate = Rate::per_second(5);
        let mut last = Timestamp::from_micros(0);
        for i in 0..200 {
            let now = T.plus_micros(i * 37_000);
            let at = p.schedule("pn", &format!("u{}", i % 7), rate, now);
            assert!(at >= now);
            last = last.max(at);
        }
        assert!(last > T);
    }
}
