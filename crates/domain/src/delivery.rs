//! A sent message's life (issue 6, docs/rules.md §2, §9): the status it has, how network statuses move
//! it, and how long a retryable failure waits. Statuses arrive late, twice and out of order, so
//! a status only ever moves a message forward: `ACCEPTED → SENT → DELIVERED → READ`, with
//! `FAILED` final and possible only before delivery (a `read` implies `delivered`).

/// Where a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Progress {
    Accepted,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Progress {
    pub fn as_str(self) -> &'static str {
        match self {
            Progress::Accepted => "ACCEPTED",
            Progress::Sent => "SENT",
            Progress::Delivered => "DELIVERED",
            Progress::Read => "READ",
            Progress::Failed => "FAILED",
        }
    }

    /// Our names, or the network's lowercase status names.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "ACCEPTED" => Some(Progress::Accepted),
            "SENT" => Some(Progress::Sent),
            "DELIVERED" => Some(Progress::Delivered),
            "READ" => Some(Progress::Read),
            "FAILED" => Some(Progress::Failed),
            _ => None,
        }
    }

    /// The order statuses move in (stored beside the status so a store can compare).
    pub fn rank(self) -> i16 {
        match self {
            Progress::Accepted => 0,
            Progress::Sent => 1,
            Progress::Delivered => 2,
            Progress::Read => 3,
            Progress::Failed => 4,
        }
    }

    /// The message reached the user: a `read` implies `delivered`, whichever came first.
    pub fn reached_the_user(self) -> bool {
        matches!(self, Progress::Delivered | Progress::Read)
    }

    /// What this status does to the money reserved for the message (docs/rules.md §7): a
    /// message that reached the user is charged, a failed one released, others wait.
    pub fn settles(self) -> Option<Settles> {
        if self.reached_the_user() {
            Some(Settles::Capture)
        } else if self == Progress::Failed {
            Some(Settles::Release)
        } else {
            None
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Progress::Read | Progress::Failed)
    }

    /// The status after `incoming` arrived, or `None` when it changes nothing (a duplicate, a
    /// stale status, anything after `FAILED`, a failure after delivery).
    pub fn advance(self, incoming: Progress) -> Option<Progress> {
        match (self, incoming) {
            (Progress::Failed, _) => None,
            (current, Progress::Failed) => {
                (current < Progress::Delivered).then_some(Progress::Failed)
            }
            (current, next) => (next > current).then_some(next),
        }
    }
}

/// How a status settles a message's reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settles {
    Capture,
    Release,
}

/// Folds statuses in any order into where they leave a message that is at `start`.
pub fn settle(start: Progress, statuses: impl IntoIterator<Item = Progress>) -> Progress {
    statuses
        .into_iter()
        .fold(start, |at, s| at.advance(s).unwrap_or(at))
}

/// Retry policy of a retryable send failure: exponential backoff with full jitter
/// (`random(0, min(cap, base · 2^attempt))`), up to `max_attempts` sends in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_micros: i64,
    pub cap_micros: i64,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The pause before send number `attempt + 1` (attempt counts from 1), given a uniform
    /// draw `unit` in [0, 1); `None` once the attempts are spent.
    pub fn pause_after(&self, attempt: u32, unit: f64) -> Option<i64> {
        if attempt >= self.max_attempts {
            return None;
        }
        let ceiling = self
            .base_micros
            .saturating_mul(1i64 << (attempt.saturating_sub(1)).min(30))
            .min(self.cap_micros);
        // The draw only spreads the pause; the bound is integer arithmetic.
        let unit = unit.clamp(0.0, 1.0);
        Some(((ceiling as f64) * unit) as i64)
    }
}

/// When a failed tenant-webhook delivery is tried again: `first · 4^(attempts−1)`, capped,
/// spread ±25 % by jitter so endpoints recovering from an outage are not hit in lockstep;
/// given up once `give_up_after` has passed since the first attempt (3 days by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookSchedule {
    pub first_micros: i64,
    pub cap_micros: i64,
    pub give_up_after_micros: i64,
}

impl WebhookSchedule {
    pub const DEFAULT: WebhookSchedule = WebhookSchedule {
        first_micros: 5_000_000,
        cap_micros: 6 * 3_600 * 1_000_000,
        give_up_after_micros: 3 * 24 * 3_600 * 1_000_000,
    };

    /// The time of the next attempt after `attempts` failed ones (≥ 1), or `None` (dead
    /// letter) when it would fall after the give-up time. `unit` is a uniform draw in [0, 1).
    pub fn next_attempt(&self, attempts: u32, first_at: i64, now: i64, unit: f64) -> Option<i64> {
        let exp = attempts.saturating_sub(1).min(20);
        let pause = self
            .first_micros
            .saturating_mul(4i64.saturating_pow(exp))
            .min(self.cap_micros);
        let spread = ((pause as f64) * (0.75 + 0.5 * unit.clamp(0.0, 1.0))) as i64;
        let at = now.saturating_add(spread.max(1));
        (at <= first_at.saturating_add(self.give_up_after_micros)).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Progress; 5] = [
        Progress::Accepted,
        Progress::Sent,
        Progress::Delivered,
        Progress::Read,
        Progress::Failed,
    ];

    #[test]
    fn a_read_settles_like_a_delivery_and_a_failure_releases() {
        assert_eq!(Progress::Delivered.settles(), Some(Settles::Capture));
        assert_eq!(
            Progress::parse("read").and_then(Progress::settles),
            Some(Settles::Capture)
        );
        assert_eq!(Progress::Failed.settles(), Some(Settles::Release));
        assert_eq!(Progress::Sent.settles(), None);
        assert_eq!(Progress::Accepted.settles(), None);
    }

    #[test]
    fn statuses_move_forward_only() {
        use Progress::*;
        let table = [
            (Accepted, Sent, Some(Sent)),
            (Accepted, Delivered, Some(Delivered)),
            (Accepted, Read, Some(Read)),
            (Sent, Sent, None),
            (Sent, Accepted, None),
            (Delivered, Sent, None),
            (Delivered, Read, Some(Read)),
            (Read, Delivered, None),
            (Accepted, Failed, Some(Failed)),
            (Sent, Failed, Some(Failed)),
            (Delivered, Failed, None),
            (Read, Failed, None),
            (Failed, Sent, None),
            (Failed, Read, None),
            (Failed, Failed, None),
        ];
        for (from, incoming, want) in table {
            assert_eq!(from.advance(incoming), want, "{from:?} + {incoming:?}");
        }
    }

    #[test]
    fn names_round_trip_and_accept_the_networks_lowercase() {
        for p in ALL {
            assert_eq!(Progress::parse(p.as_str()), Some(p));
            assert_eq!(Progress::parse(&p.as_str().to_lowercase()), Some(p));
        }
        assert_eq!(Progress::parse("deleted"), None);
        let mut ranks: Vec<i16> = ALL.iter().map(|p| p.rank()).collect();
        ranks.dedup();
        assert_eq!(ranks.len(), 5);
    }

    #[test]
    fn retry_pauses_grow_to_the_cap_and_stop_after_the_last_attempt() {
        let p = RetryPolicy {
            base_micros: 100_000,
            cap_micros: 1_000_000,
            max_attempts: 6,
        };
        let full: Vec<Option<i64>> = (1..=6).map(|a| p.pause_after(a, 0.999_999)).collect();
        assert_eq!(
            full,
            vec![
                Some(99_999),
                Some(199_999),
                Some(399_999),
                Some(799_999),
                Some(999_999),
                None
            ]
        );
        assert_eq!(p.pause_after(3, 0.0), Some(0), "full jitter starts at zero");
    }

    #[test]
    fn webhook_retries_grow_fourfold_with_jitter_and_stop_after_three_days() {
        let s = WebhookSchedule::DEFAULT;
        let t0 = 1_000_000_000_000;
        assert_eq!(s.next_attempt(1, t0, t0, 0.5), Some(t0 + 5_000_000));
        assert_eq!(s.next_attempt(2, t0, t0, 0.5), Some(t0 + 20_000_000));
        assert_eq!(s.next_attempt(1, t0, t0, 0.0), Some(t0 + 3_750_000));
        assert_eq!(s.next_attempt(1, t0, t0, 1.0), Some(t0 + 6_250_000));
        assert_eq!(
            s.next_attempt(30, t0, t0, 0.5),
            Some(t0 + 6 * 3_600 * 1_000_000),
            "capped at 6 h"
        );
        let late = t0 + 3 * 24 * 3_600 * 1_000_000 - 1_000_000;
        assert_eq!(
            s.next_attempt(12, t0, late, 0.5),
            None,
            "past 3 days: dead letter"
        );
        // Attempts over three days: a handful, not thousands.
        let (mut now, mut attempts) = (t0, 0);
        while let Some(next) = s.next_attempt(attempts + 1, t0, now, 0.5) {
            now = next;
            attempts += 1;
        }
        assert!((15..30).contains(&attempts), "{attempts} attempts");
    }

    fn progress() -> impl Strategy<Value = Progress> {
        prop::sample::select(ALL.to_vec())
    }

    proptest! {
        /// Any order of the same statuses settles where the forward order does, and a
        /// replay of all of them changes nothing.
        #[test]
        fn order_and_duplicates_do_not_matter_for_the_successful_path(
            mut statuses in prop::collection::vec(
                prop::sample::select(vec![Progress::Sent, Progress::Delivered, Progress::Read]), 1..12),
            seed in any::<u64>(),
        ) {
            let forward = settle(Progress::Accepted, statuses.clone());
            let n = statuses.len();
            statuses.rotate_left((seed as usize) % n);
            prop_assert_eq!(settle(Progress::Accepted, statuses.clone()), forward);
            prop_assert_eq!(settle(forward, statuses), forward);
        }

        #[test]
        fn never_moves_backwards_and_failed_is_final(
            start in progress(), statuses in prop::collection::vec(progress(), 0..10)
        ) {
            let mut at = start;
            for s in statuses {
                let next = at.advance(s).unwrap_or(at);
                if at == Progress::Failed {
                    prop_assert_eq!(next, Progress::Failed);
                }
                prop_assert!(next == Progress::Failed || next >= at);
                if next == Progress::Failed && at != Progress::Failed {
                    prop_assert!(at < Progress::Delivered);
                }
                at = next;
            }
        }
    }
}
