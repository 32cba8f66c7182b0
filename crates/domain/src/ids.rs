//! The shape of the ids and secrets clients choose (docs/rules.md §10). Checked before any store
//! sees them, so a client reads the rule, not a database constraint's name; the accounts
//! schema's constraints say the same and stay as the last line.

/// Partner and tenant ids: they appear in keys, topics and URLs.
pub const ACCOUNT_ID_RULE: &str =
    "1 to 63 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit";
/// Ids the network assigns (phone number ids, WhatsApp Business Account ids).
pub const NETWORK_ID_RULE: &str = "1 to 64 characters: letters, digits, '-' and '_'";
/// A webhook signing secret.
pub const SECRET_RULE: &str = "8 to 512 characters";
/// A display name.
pub const NAME_RULE: &str = "1 to 200 characters";

/// A partner or tenant id: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn is_account_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// A network id: `[A-Za-z0-9_-]{1,64}`.
pub fn is_network_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

pub fn is_secret(secret: &str) -> bool {
    (8..=512).contains(&secret.chars().count())
}

pub fn is_name(name: &str) -> bool {
    !name.trim().is_empty() && name.chars().count() <= 200
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn account_ids_follow_their_rule() {
        for ok in ["acme", "0shop", "a", "t3f9-acme_1", &"a".repeat(63)] {
            assert!(is_account_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-acme",
            "_acme",
            "Acme",
            "ac me",
            "acmé",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(!is_account_id(bad), "{bad}");
        }
    }

    #[test]
    fn network_ids_secrets_and_names_follow_their_rules() {
        assert!(is_network_id("1234567890") && is_network_id("pn_A-1"));
        assert!(!is_network_id("") && !is_network_id("pn 1") && !is_network_id(&"1".repeat(65)));
        assert!(is_secret("12345678") && !is_secret("1234567") && !is_secret(&"s".repeat(513)));
        assert!(is_name("Acme") && !is_name("  ") && !is_name(&"n".repeat(201)));
    }

    proptest! {
        /// The check agrees with the accounts schema's constraint `^[a-z0-9][a-z0-9_-]{0,62}$`.
        #[test]
        fn the_account_id_check_is_the_constraints_pattern(id in "[a-zA-Z0-9_ /-]{0,70}") {
            let b = id.as_bytes();
            let pattern = !b.is_empty() && b.len() <= 63
                && matches!(b[0], b'a'..=b'z' | b'0'..=b'9')
                && b.iter().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
            prop_assert_eq!(is_account_id(&id), pattern);
        }
    }
}
