//! Time as integer microseconds since the Unix epoch, and the clock abstraction.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

/// An instant, in microseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MICROS_PER_SECOND: i64 = 1_000_000;
    pub const HOUR: i64 = 3_600 * Self::MICROS_PER_SECOND;

    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(Self::MICROS_PER_SECOND))
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    pub const fn plus_hours(self, hours: i64) -> Self {
        Self(self.0.saturating_add(hours.saturating_mul(Self::HOUR)))
    }

    pub const fn plus_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}µs", self.0)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM` (UTC) → [its first µs, the next month's first µs).
pub fn month_range(month: &str) -> Option<(Timestamp, Timestamp)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let y: i64 = y.parse().ok()?;
    let m: i64 = m.parse().ok()?;
    if !(1..=12).contains(&m) || !(1970..=9999).contains(&y) {
        return None;
    }
    let (next_y, next_m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((
        Timestamp::from_secs(days_from_civil(y, m, 1) * 86_400),
        Timestamp::from_secs(days_from_civil(next_y, next_m, 1) * 86_400),
    ))
}

/// How old a provider timestamp may be when it reaches Finestra (the provider retries a
/// webhook for days; a month is generous).
pub const MAX_EVENT_AGE_HOURS: i64 = 30 * 24;
/// How far a provider timestamp may be ahead of our clock.
pub const MAX_EVENT_SKEW_HOURS: i64 = 1;

/// Whether a provider timestamp is believable at `now`. Anything else is a malformed item
/// (milliseconds sent as seconds, a zero, a clock gone wrong) and would poison every store
/// it reaches.
pub fn is_plausible_event_time(at: Timestamp, now: Timestamp) -> bool {
    at >= now.plus_hours(-MAX_EVENT_AGE_HOURS) && at <= now.plus_hours(MAX_EVENT_SKEW_HOURS)
}

/// The source of "now". Production uses the system clock (in `finestra-platform`); tests use
/// [`FixedClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicI64);

impl FixedClock {
    pub fn new(at: Timestamp) -> Self {
        Self(AtomicI64::new(at.0))
    }

    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }

    pub fn advance_micros(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let clock = FixedClock::new(Timestamp::from_secs(10));
        assert_eq!(clock.now(), Timestamp::from_secs(10));
        clock.advance_micros(5);
        assert_eq!(clock.now(), Timestamp::from_micros(10_000_005));
        clock.set(Timestamp::from_secs(1));
        assert_eq!(clock.now(), Timestamp::from_secs(1));
    }

    #[test]
    fn plausible_event_times_are_within_a_month_back_and_an_hour_ahead() {
        let now = Timestamp::from_secs(1_764_000_000);
        assert!(is_plausible_event_time(now, now));
        assert!(is_plausible_event_time(now.plus_hours(-30 * 24), now));
        assert!(!is_plausible_event_time(
            now.plus_hours(-30 * 24).plus_micros(-1),
            now
        ));
        assert!(is_plausible_event_time(now.plus_hours(1), now));
        assert!(!is_plausible_event_time(
            now.plus_hours(1).plus_micros(1),
            now
        ));
        // Milliseconds taken for seconds land far in the future.
        assert!(!is_plausible_event_time(
            Timestamp::from_secs(1_764_000_000_000),
            now
        ));
        assert!(!is_plausible_event_time(Timestamp::from_secs(0), now));
    }

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Timestamp(i64::MAX).plus_hours(24), Timestamp(i64::MAX));
        assert_eq!(
            Timestamp::from_secs(0).plus_hours(1).micros(),
            3_600_000_000
        );
    }
}
