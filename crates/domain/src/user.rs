//! Identity of an end user on the messenger.

/// The key a user is tracked by: the `wa_id` (E.164 digits, no `+`) when the provider gives
/// one, else the business-scoped `user_id` (Meta's usernames roll-out).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserKeyError {
    #[error("the message names no user: both wa_id and user_id are empty")]
    Missing,
    #[error("wa_id {0:?} is not E.164 digits (1 to 15 digits, no '+')")]
    BadWaId(String),
    #[error(
        "user_id {0:?} has characters other than letters, digits, '.', '_', '-' or is too long"
    )]
    BadUserId(String),
}

impl UserKey {
    /// Picks the key from what a webhook carries: `wa_id` first, `user_id` otherwise.
    pub fn from_parts(wa_id: &str, user_id: &str) -> Result<Self, UserKeyError> {
        let wa_id = wa_id.trim().trim_start_matches('+');
        if !wa_id.is_empty() {
            return Self::wa_id(wa_id);
        }
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(UserKeyError::Missing);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if user_id.len() > 128 || !user_id.chars().all(allowed) {
            return Err(UserKeyError::BadUserId(user_id.to_owned()));
        }
        Ok(Self(user_id.to_owned()))
    }

    fn wa_id(digits: &str) -> Result<Self, UserKeyError> {
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UserKeyError::BadWaId(digits.to_owned()));
        }
        Ok(Self(digits.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wa_id_wins_over_user_id() {
        assert_eq!(
            UserKey::from_parts("393471234567", "US.abc").map(|k| k.0),
            Ok("393471234567".into())
        );
    }

    #[test]
    fn falls_back_to_business_scoped_user_id() {
        assert_eq!(
            UserKey::from_parts("", "US.13491208655302741918").map(|k| k.0),
            Ok("US.13491208655302741918".into())
        );
    }

    #[test]
    fn strips_a_leading_plus() {
        assert_eq!(
            UserKey::from_parts("+4915112345678", "").map(|k| k.0),
            Ok("4915112345678".into())
        );
    }

    #[test]
    fn refuses_bad_identities() {
        assert_eq!(UserKey::from_parts("", " "), Err(UserKeyError::Missing));
        assert!(matches!(
            UserKey::from_parts("39abc", ""),
            Err(UserKeyError::BadWaId(_))
        ));
        assert!(matches!(
            UserKey::from_parts("1234567890123456", ""),
            Err(UserKeyError::BadWaId(_))
        ));
        assert!(matches!(
            UserKey::from_parts("", "a:b"),
            Err(UserKeyError::BadUserId(_))
        ));
    }
}
