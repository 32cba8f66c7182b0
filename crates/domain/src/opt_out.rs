//! Opt-out keywords (docs/rules.md §3): a user message that is only a stop keyword (`STOP`,
//! `ANNULLA`, `BASTA`, `DISISCRIVIMI`, `UNSUBSCRIBE`) stops marketing from the number exactly
//! like the network's own marketing stop; one that is only `START` resumes it. Case, accents,
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

/// The keyword `text` is, when it is only one.
pub fn keyword_of(text: &str) -> Option<Keyword> {
    let folded = fold(text);
    if STOP_KEYWORDS.contains(&folded.as_str()) {
        Some(Keyword::Stop)
    } else if START_KEYWORDS.contains(&folded.as_str()) {
        Some(Keyword::Start)
    } else {
        None
    }
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
    fn folding_drops_accents_case_and_surrounding_punctuation() {
        assert_eq!(fold("  Disiscrivimì!! "), "DISISCRIVIMI");
        assert_eq!(fold("Ça va?"), "CA VA");
    }
}
