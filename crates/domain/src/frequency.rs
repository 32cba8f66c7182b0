//! The marketing frequency cap (docs/rules.md §2): a user receives at most `max` marketing
//! templates from a tenant in any rolling `window`, whatever the number, on top of the
//! network's own per-user marketing limit (its 131049). A message that failed reached nobody
//! and does not count. A tenant's partner sets its cap; 0 takes the platform's (dispatch's
//! `FINESTRA_DISPATCH_MARKETING_CAP`, default 2 per 7 days).

use crate::time::Timestamp;

const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrequencyCap {
    /// Marketing templates a user may receive per window.
    pub max: u32,
    pub window_micros: i64,
}

impl FrequencyCap {
    /// Two marketing templates per user per 7 days.
    pub const DEFAULT: FrequencyCap = FrequencyCap {
        max: 2,
        window_micros: 7 * DAY_MICROS,
    };

    /// `max` templates per `days` days.
    pub fn per_days(max: u32, days: u32) -> Self {
        FrequencyCap {
            max,
            window_micros: i64::from(days) * DAY_MICROS,
        }
    }

    /// A tenant's cap: `max` templates per `days` days, each 0 taking the platform's.
    pub fn of_tenant(max: u32, days: u32, platform: FrequencyCap) -> Self {
        FrequencyCap {
            max: if max == 0 { platform.max } else { max },
            window_micros: if days == 0 {
                platform.window_micros
            } else {
                i64::from(days) * DAY_MICROS
            },
        }
    }

    /// The oldest send that still counts at `now` was accepted after this.
    pub fn cutoff(self, now: Timestamp) -> i64 {
        now.micros() - self.window_micros
    }

    /// Whether one more marketing template may go to a user who was sent marketing templates
    /// at `earlier` (µs, those that did not fail).
    pub fn admits(self, earlier: &[i64], now: Timestamp) -> bool {
        let cutoff = self.cutoff(now);
        let counted = earlier.iter().filter(|&&at| at > cutoff).count();
        u32::try_from(counted).is_ok_and(|n| n < self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp::from_micros(1_764_000_000_000_000);

    #[test]
    fn the_third_in_seven_days_is_refused_and_the_oldest_leaving_frees_one() {
        let cap = FrequencyCap::DEFAULT;
        let day = DAY_MICROS;
        assert!(cap.admits(&[], NOW));
        assert!(cap.admits(&[NOW.micros() - day], NOW));
        let two = [NOW.micros() - 6 * day, NOW.micros() - day];
        assert!(!cap.admits(&two, NOW), "a third within the window");
        let later = Timestamp::from_micros(NOW.micros() + day);
        assert!(cap.admits(&two, later), "the oldest left the window");
        let exactly = Timestamp::from_micros(NOW.micros() - 6 * day + 7 * day);
        assert!(
            cap.admits(&two, exactly),
            "a send exactly a window ago no longer counts"
        );
    }

    #[test]
    fn a_tenant_sets_its_own_or_takes_the_default() {
        let platform = FrequencyCap::DEFAULT;
        assert_eq!(
            FrequencyCap::of_tenant(0, 0, platform),
            FrequencyCap::DEFAULT
        );
        assert_eq!(
            FrequencyCap::of_tenant(0, 3, platform),
            FrequencyCap::per_days(2, 3)
        );
        let own = FrequencyCap::of_tenant(5, 1, platform);
        assert_eq!((own.max, own.window_micros), (5, DAY_MICROS));
        assert!(own.admits(&[NOW.micros(); 4], NOW));
        assert!(!own.admits(&[NOW.micros(); 5], NOW));
    }

    proptest! {
        /// Admitting is the same as counting the sends inside the window against the cap, and
        /// a send outside the window never changes the answer.
        #[test]
        fn only_sends_inside_the_window_count(
            max in 1u32..6,
            days in 1u32..10,
            ages in proptest::collection::vec(0i64..20 * DAY_MICROS, 0..12),
            stale in proptest::collection::vec(0i64..5 * DAY_MICROS, 0..5),
        ) {
            let cap = FrequencyCap::per_days(max, days);
            let inside: Vec<i64> = ages
                .iter()
                .filter(|&&a| a < cap.window_micros)
                .map(|a| NOW.micros() - a)
                .collect();
            let expected = (inside.len() as u64) < u64::from(max);
            prop_assert_eq!(cap.admits(&inside, NOW), expected);
            let mut with_stale = inside.clone();
            with_stale.extend(stale.iter().map(|s| NOW.micros() - cap.window_micros - s));
            prop_assert_eq!(cap.admits(&with_stale, NOW), expected);
        }
    }
}
