//! Sending at the recipient's local time (docs/rules.md §2): a wall-clock time without a zone
//! is read in the recipient's time zone, the contact's own (an IANA name its tenant recorded)
//! or else the one of the recipient's market (the calling code of its number).

use chrono::{LocalResult, NaiveDateTime, TimeZone as _};
use chrono_tz::Tz;

use crate::time::Timestamp;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalTimeError {
    #[error("{0:?} is not a local time (YYYY-MM-DDTHH:MM or YYYY-MM-DDTHH:MM:SS, no zone)")]
    Syntax(String),
    #[error("{0:?} is not a time zone (an IANA name such as Europe/Rome)")]
    Zone(String),
}

/// The time zone a market's users are taken to live in when their contact names none: the
/// capital's, or for +1 (several zones) New York's; UTC for a market without one.
pub fn zone_of_market(market: &str) -> &'static str {
    match market {
        "IT" => "Europe/Rome",
        "DE" => "Europe/Berlin",
        "GB" => "Europe/London",
        "BR" => "America/Sao_Paulo",
        "IN" => "Asia/Kolkata",
        "NA" => "America/New_York",
        _ => "UTC",
    }
}

/// Whether `zone` names a time zone.
pub fn is_zone(zone: &str) -> bool {
    zone.parse::<Tz>().is_ok()
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]`.
pub fn parse_local(text: &str) -> Result<NaiveDateTime, LocalTimeError> {
    let t = text.trim();
    NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M"))
        .map_err(|_| LocalTimeError::Syntax(text.to_owned()))
}

/// The instant `local` is in `zone`. A time that occurs twice (clocks going back) is the first;
/// one that does not occur (clocks going forward) is the same wall time an hour later.
pub fn resolve(local: NaiveDateTime, zone: &str) -> Result<Timestamp, LocalTimeError> {
    let tz: Tz = zone
        .parse()
        .map_err(|_| LocalTimeError::Zone(zone.to_owned()))?;
    let at = match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
        LocalResult::None => {
            let later = local + chrono::Duration::hours(1);
            match tz.from_local_datetime(&later) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
                // No zone skips two hours; should one, its UTC reading stands.
                LocalResult::None => {
                    return Ok(Timestamp::from_micros(local.and_utc().timestamp_micros()));
                }
            }
        }
    };
    Ok(Timestamp::from_micros(at.timestamp_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Timestamp {
        Timestamp::from_micros(
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
                .map(|t| t.and_utc().timestamp_micros())
                .unwrap_or_default(),
        )
    }

    #[test]
    fn nine_in_the_morning_is_another_instant_in_each_market() {
        let nine = parse_local("2026-12-24T09:00").expect("local");
        let at = |market: &str| resolve(nine, zone_of_market(market)).expect("zone");
        assert_eq!(
            at("IT"),
            utc("2026-12-24T08:00:00"),
            "CET is UTC+1 in winter"
        );
        assert_eq!(at("GB"), utc("2026-12-24T09:00:00"));
        assert_eq!(at("BR"), utc("2026-12-24T12:00:00"));
        assert_eq!(at("IN"), utc("2026-12-24T03:30:00"));
        assert_eq!(at("NA"), utc("2026-12-24T14:00:00"));
        assert_eq!(at("XX"), utc("2026-12-24T09:00:00"), "UTC without a zone");
        let summer = parse_local("2026-07-01T09:00:00").expect("local");
        assert_eq!(
            resolve(summer, "Europe/Rome"),
            Ok(utc("2026-07-01T07:00:00")),
            "CEST is UTC+2"
        );
    }

    #[test]
    fn the_clock_changes_are_resolved() {
        // Rome, 29 March 2026: 02:00 → 03:00; 25 October 2026: 03:00 → 02:00.
        let gap = parse_local("2026-03-29T02:30").expect("local");
        assert_eq!(resolve(gap, "Europe/Rome"), Ok(utc("2026-03-29T01:30:00")));
        let twice = parse_local("2026-10-25T02:30").expect("local");
        assert_eq!(
            resolve(twice, "Europe/Rome"),
            Ok(utc("2026-10-25T00:30:00")),
            "the first of the two"
        );
    }

    #[test]
    fn bad_times_and_zones_are_refused() {
        assert!(matches!(
            parse_local("24/12/2026 9:00"),
            Err(LocalTimeError::Syntax(_))
        ));
        assert!(matches!(
            parse_local("2026-12-24T09:00:00Z"),
            Err(LocalTimeError::Syntax(_))
        ));
        let nine = parse_local("2026-12-24T09:00").expect("local");
        assert_eq!(
            resolve(nine, "Mars/Olympus"),
            Err(LocalTimeError::Zone("Mars/Olympus".into()))
        );
        assert!(is_zone("Europe/Rome") && !is_zone("Rome"));
    }
}
