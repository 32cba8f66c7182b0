//! Opt-out keywords (docs/rules.md §3): a user message that is only a stop keyword (by default
//! `STOP`, `ANNULLA`, `BASTA`, `DISISCRIVIMI`, `UNSUBSCRIBE`) stops marketing from the number
//! exactly like the network's own marketing stop; one that is only a start keyword (`START`)
//! resumes it. A tenant may set its own lists (each replaces the default one). Case, accents,
//! surrounding spaces and punctuation are ignored; a keyword inside a sentence is not one.

/// What a keyword asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
}

pub const STOP_KEYWORDS: [&str; 5] = ["STOP", "ANNULLA", "BASTA", "DISISCRIVIMI", "UNSUBSCRIBE"];
pub const START_KEYWORDS: [&str; 1] = ["START"];

/// The letter without its accent, for the accented Latin letters users type.
fn unaccented(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ä' | 'ã' | 'å' => 'a',
        'è' | 'é' | 'ê' | 'ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'ò' | 'ó' | 'ô' | 'ö' | 'õ' => 'o',
        'ù' | 'ú' | 'û' | 'ü' => 'u',
        'ç' => 'c',
        'ñ' => 'n',
        other => other,
    }
}

/// A text folded for comparison: accents off, upper case, without the spaces and punctuation
/// around it.
pub fn fold(text: &str) -> String {
    text.trim_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
        .chars()
        .flat_map(|c| c.to_lowercase())
        .map(unaccented)
        .flat_map(char::to_uppercase)
        .collect()
}

/// The most keywords of each kind a tenant may set, and their longest length.
pub const MAX_KEYWORDS: usize = 20;
pub const MAX_KEYWORD_CHARS: usize = 32;

/// A tenant's keywords, folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keywords {
    stop: Vec<String>,
    start: Vec<String>,
}

impl Default for Keywords {
    fn default() -> Self {
        Self::of_tenant(&[], &[])
    }
}

/// Why a tenant's keywords cannot be kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    #[error("at most {MAX_KEYWORDS} keywords of each kind")]
    TooMany,
    #[error("{0:?} is not a keyword (1 to {MAX_KEYWORD_CHARS} characters, not only punctuation)")]
    Invalid(String),
    #[error("{0:?} cannot both stop and start")]
    Both(String),
}

impl Keywords {
    /// A tenant's lists; an empty one takes the default.
    pub fn of_tenant(stop: &[String], start: &[String]) -> Self {
        let folded = |list: &[String], default: &[&str]| -> Vec<String> {
            if list.is_empty() {
                default.iter().map(|k| fold(k)).collect()
            } else {
                list.iter().map(|k| fold(k)).collect()
            }
        };
        Self {
            stop: folded(stop, &STOP_KEYWORDS),
            start: folded(start, &START_KEYWORDS),
        }
    }

    /// Checks lists a tenant sets (before they are stored).
    pub fn check(stop: &[String], start: &[String]) -> Result<(), KeywordError> {
        if stop.len() > MAX_KEYWORDS || start.len() > MAX_KEYWORDS {
            return Err(KeywordError::TooMany);
        }
        for k in stop.iter().chain(start) {
            let f = fold(k);
            if f.is_empty() || f.chars().count() > MAX_KEYWORD_CHARS {
                return Err(KeywordError::Invalid(k.clone()));
            }
        }
        let keywords = Self::of_tenant(stop, start);
        if let Some(both) = keywords.stop.iter().find(|k| keywords.start.contains(k)) {
            return Err(KeywordError::Both(both.clone()));
        }
        Ok(())
    }

    /// The stop keywords in force, folded.
    pub fn stop(&self) -> &[String] {
        &self.stop
    }

    /// The start keywords in force, folded.
    pub fn start(&self) -> &[String] {
        &self.start
    }

    /// The keyword `text` is, when it is only one.
    pub fn keyword_of(&self, text: &str) -> Option<Keyword> {
        let folded = fold(text);
        if self.stop.contains(&folded) {
            Some(Keyword::Stop)
        } else if self.start.contains(&folded) {
            Some(Keyword::Start)
        } else {
            None
        }
    }
}

/// The keyword `text` is under the default lists.
pub fn keyword_of(text: &str) -> Option<Keyword> {
    Keywords::default().keyword_of(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_message_that_is_a_keyword_is_one() {
        for stop in [
            "STOP",
            "stop",
            " Stop! ",
            "basta.",
            "Annulla",
            "DISISCRIVIMI",
            "unsubscribe",
        ] {
            assert_eq!(keyword_of(stop), Some(Keyword::Stop), "{stop:?}");
        }
        assert_eq!(keyword_of("start"), Some(Keyword::Start));
        assert_eq!(keyword_of("Stàrt"), Some(Keyword::Start), "accents ignored");
        for not in ["please stop", "stop it", "", "...", "STOPPED", "bastaaa"] {
            assert_eq!(keyword_of(not), None, "{not:?}");
        }
    }

    #[test]
    fn a_tenants_lists_replace_the_defaults() {
        let own = Keywords::of_tenant(&["ferma".into(), "Cancellami".into()], &[]);
        assert_eq!(own.keyword_of("Fermà!"), Some(Keyword::Stop));
        assert_eq!(own.keyword_of("cancellami"), Some(Keyword::Stop));
        assert_eq!(
            own.keyword_of("STOP"),
            None,
            "the default stop list is replaced"
        );
        assert_eq!(
            own.keyword_of("start"),
            Some(Keyword::Start),
            "the start list is not"
        );
        assert_eq!(
            Keywords::check(&["ferma".into()], &["riprendi".into()]),
            Ok(())
        );
        assert!(matches!(
            Keywords::check(&["Ferma".into()], &["fermà".into()]),
            Err(KeywordError::Both(_))
        ));
        assert!(matches!(
            Keywords::check(&["!!".into()], &[]),
            Err(KeywordError::Invalid(_))
        ));
        assert_eq!(
            Keywords::check(&vec!["x".to_owned(); MAX_KEYWORDS + 1], &[]),
            Err(KeywordError::TooMany)
        );
    }

    #[test]
    fn folding_drops_accents_case_and_surrounding_punctuation() {
        assert_eq!(fold("  Disiscrivimì!! "), "DISISCRIVIMI");
        assert_eq!(fold("Ça va?"), "CA VA");
    }
}
