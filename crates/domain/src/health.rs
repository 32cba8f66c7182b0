//! The network's word on an account's health, as rules: a number's quality flag and the
//! business's messaging limit, which becomes the tier Finestra enforces (docs/rules.md §5).

/// The tier of a messaging limit as the network names it: `Some(Some(n))` distinct users per
/// rolling 24 h, `Some(None)` unlimited, `None` for a name that is no limit. Meta's former
/// `TIER_1K` is the 2,000 users of `TIER_2K`.
pub fn tier_of_limit(limit: &str) -> Option<Option<u32>> {
    Some(match limit.trim().to_ascii_uppercase().as_str() {
        "TIER_250" => Some(250),
        "TIER_1K" | "TIER_2K" => Some(2_000),
        "TIER_10K" => Some(10_000),
        "TIER_100K" => Some(100_000),
        "TIER_UNLIMITED" => None,
        _ => return None,
    })
}

/// The limit's name for a number of conversations a day (the older shape of the capability
/// webhook): the smallest tier that holds it.
pub fn limit_of_daily(conversations: u64) -> &'static str {
    match conversations {
        0..=250 => "TIER_250",
        251..=2_000 => "TIER_2K",
        2_001..=10_000 => "TIER_10K",
        10_001..=100_000 => "TIER_100K",
        _ => "TIER_UNLIMITED",
    }
}

/// A number's quality rating after a quality event: FLAGGED means its quality is low (RED),
/// UNFLAGGED that it recovered (GREEN); a limit change says nothing of it (`None`).
pub fn rating_after(event: &str) -> Option<&'static str> {
    match event.to_ascii_uppercase().as_str() {
        "FLAGGED" => Some("RED"),
        "UNFLAGGED" => Some("GREEN"),
        _ => None,
    }
}

/// A quality score as the network names one (GREEN, YELLOW, RED, UNKNOWN).
pub fn is_quality(score: &str) -> bool {
    matches!(score, "GREEN" | "YELLOW" | "RED" | "UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_tiers_and_back() {
        assert_eq!(tier_of_limit("TIER_250"), Some(Some(250)));
        assert_eq!(tier_of_limit("tier_1k"), Some(Some(2_000)));
        assert_eq!(tier_of_limit("TIER_2K"), Some(Some(2_000)));
        assert_eq!(tier_of_limit("TIER_100K"), Some(Some(100_000)));
        assert_eq!(tier_of_limit("TIER_UNLIMITED"), Some(None));
        assert_eq!(tier_of_limit("TIER_5"), None);
        for (daily, limit) in [
            (250, "TIER_250"),
            (1_000, "TIER_2K"),
            (10_000, "TIER_10K"),
            (100_000, "TIER_100K"),
            (100_001, "TIER_UNLIMITED"),
        ] {
            assert_eq!(limit_of_daily(daily), limit);
            assert!(tier_of_limit(limit).is_some());
        }
    }

    #[test]
    fn a_flag_sets_the_rating_and_a_limit_change_does_not() {
        assert_eq!(rating_after("FLAGGED"), Some("RED"));
        assert_eq!(rating_after("UNFLAGGED"), Some("GREEN"));
        assert_eq!(rating_after("UPGRADE"), None);
        assert!(is_quality("YELLOW") && !is_quality("BLUE"));
    }
}
