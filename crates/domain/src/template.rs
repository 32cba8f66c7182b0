//! Message templates (docs/rules.md §4): what a valid template is, and its review lifecycle.
//!
//! `PENDING → APPROVED | REJECTED`; `APPROVED → PAUSED → APPROVED` (3 h the first time, 6 h
//! the second); a third pause → `DISABLED` (final). The provider may re-categorise an approved
//! template. Review events arrive late, twice and out of order: each carries the provider's
//! time, and an event not newer than the last one applied is stale and changes nothing.

use crate::time::Timestamp;

pub const FIRST_PAUSE_HOURS: i64 = 3;
pub const SECOND_PAUSE_HOURS: i64 = 6;
pub const MAX_BODY_CHARS: usize = 1_024;
pub const MAX_HEADER_FOOTER_CHARS: usize = 60;

/// Template categories a business may submit. (Pricing knows more categories as data.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    Marketing,
    Utility,
    Authentication,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "MARKETING",
            Category::Utility => "UTILITY",
            Category::Authentication => "AUTHENTICATION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "MARKETING" => Some(Category::Marketing),
            "UTILITY" => Some(Category::Utility),
            "AUTHENTICATION" => Some(Category::Authentication),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Paused { until: Timestamp },
    Disabled,
}

impl Status {
    /// A status as a store keeps it: its name and, for a pause, when the pause ends (unknown
    /// means it has not ended). `None` for a name that is no status.
    pub fn from_stored(name: &str, paused_until: Option<Timestamp>) -> Option<Status> {
        Some(match name {
            "PENDING" => Status::Pending,
            "APPROVED" => Status::Approved,
            "REJECTED" => Status::Rejected,
            "DISABLED" => Status::Disabled,
            "PAUSED" => Status::Paused {
                until: paused_until.unwrap_or(Timestamp::from_micros(i64::MAX)),
            },
            _ => return None,
        })
    }

    /// The status as of `now`: a pause whose time is over counts as approved (docs/rules.md
    /// §4). The one place that rule lives.
    pub fn at(self, now: Timestamp) -> Status {
        match self {
            Status::Paused { until } if now >= until => Status::Approved,
            s => s,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Rejected => "REJECTED",
            Status::Paused { .. } => "PAUSED",
            Status::Disabled => "DISABLED",
        }
    }

    /// Whether a template in this status may be edited. The network reviews an edited
    /// template again (it is PENDING until then): an approved, rejected or paused one can be
    /// edited; one under review already, or disabled, cannot.
    pub fn editable(self) -> bool {
        matches!(
            self,
            Status::Approved | Status::Rejected | Status::Paused { .. }
        )
    }
}

/// A review decision from the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    Approve,
    Reject,
    Pause,
    Unpause,
    Disable,
    Recategorise(Category),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub status: Status,
    pub category: Category,
    pub pauses: u8,
    /// Provider time of the last review applied.
    pub last_review_at: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("a {from} template cannot be {event}")]
    Illegal {
        from: &'static str,
        event: &'static str,
    },
}

/// What applying a review did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// Not newer than the last review applied: ignored.
    Stale,
}

fn event_name(r: Review) -> &'static str {
    match r {
        Review::Approve => "approved",
        Review::Reject => "rejected",
        Review::Pause => "paused",
        Review::Unpause => "unpaused",
        Review::Disable => "disabled",
        Review::Recategorise(_) => "re-categorised",
    }
}

impl Lifecycle {
    pub fn new(category: Category) -> Self {
        Self {
            status: Status::Pending,
            category,
            pauses: 0,
            last_review_at: None,
        }
    }

    /// The status as of `now`: a pause whose time is over counts as approved.
    pub fn status_at(&self, now: Timestamp) -> Status {
        self.status.at(now)
    }

    /// Whether a message may use the template at `now`.
    pub fn is_usable(&self, now: Timestamp) -> bool {
        self.status_at(now) == Status::Approved
    }

    /// Applies a provider review that happened at `at`.
    pub fn apply(&mut self, review: Review, at: Timestamp) -> Result<Applied, ReviewError> {
        if self.last_review_at.is_some_and(|last| at <= last) {
            return Ok(Applied::Stale);
        }
        let current = self.status_at(at);
        let next = match (current, review) {
            (Status::Pending, Review::Approve) => Status::Approved,
            (Status::Pending, Review::Reject) => Status::Rejected,
            (Status::Approved, Review::Pause) => {
                self.pauses = self.pauses.saturating_add(1);
                match self.pauses {
                    1 => Status::Paused {
                        until: at.plus_hours(FIRST_PAUSE_HOURS),
                    },
                    2 => Status::Paused {
                        until: at.plus_hours(SECOND_PAUSE_HOURS),
                    },
                    _ => Status::Disabled,
                }
            }
            (Status::Paused { .. }, Review::Unpause) => Status::Approved,
            // The provider reinstates a template whose pause already ran out: nothing to do,
            // but the review is recorded (older ones are stale from now on).
            (Status::Approved, Review::Unpause) => Status::Approved,
            (Status::Approved | Status::Paused { .. }, Review::Disable) => Status::Disabled,
            // The category is the provider's to change at any time before the template ends.
            (
                Status::Pending | Status::Approved | Status::Paused { .. },
                Review::Recategorise(c),
            ) => {
                self.category = c;
                current
            }
            (from, event) => {
                return Err(ReviewError::Illegal {
                    from: from.name(),
                    event: event_name(event),
                });
            }
        };
        self.status = next;
        self.last_review_at = Some(at);
        Ok(Applied::Changed)
    }
}

/// Why a template was refused at creation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("name must be 1..512 lowercase letters, digits or '_'")]
    BadName,
    #[error("language must look like `en`, `it` or `en_US`")]
    BadLanguage,
    #[error("the body must have 1..{MAX_BODY_CHARS} characters")]
    BadBody,
    #[error("header and footer have at most {MAX_HEADER_FOOTER_CHARS} characters")]
    TooLong,
    #[error("parameters must be {{{{1}}}}..{{{{n}}}} without gaps; {0}")]
    BadParameters(String),
}

/// Checks a template and returns its number of positional parameters.
pub fn validate(
    name: &str,
    language: &str,
    body: &str,
    header: &str,
    footer: &str,
) -> Result<usize, TemplateError> {
    if name.is_empty()
        || name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(TemplateError::BadName);
    }
    let lang_ok = match language.split_once('_') {
        None => {
            (2..=3).contains(&language.len()) && language.bytes().all(|b| b.is_ascii_lowercase())
        }
        Some((l, r)) => {
            (2..=3).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_lowercase())
                && r.len() == 2
                && r.bytes().all(|b| b.is_ascii_uppercase())
        }
    };
    if !lang_ok {
        return Err(TemplateError::BadLanguage);
    }
    let chars = body.chars().count();
    if chars == 0 || chars > MAX_BODY_CHARS || body.trim().is_empty() {
        return Err(TemplateError::BadBody);
    }
    if header.chars().count() > MAX_HEADER_FOOTER_CHARS
        || footer.chars().count() > MAX_HEADER_FOOTER_CHARS
    {
        return Err(TemplateError::TooLong);
    }
    parameter_count(body)
}

/// The positional parameters `{{1}}..{{n}}` of a text: they must be exactly 1..n.
pub fn parameter_count(text: &str) -> Result<usize, TemplateError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| TemplateError::BadParameters("an unclosed `{{`".into()))?;
        let inner = after[..close].trim();
        let n: usize = inner.parse().map_err(|_| {
            TemplateError::BadParameters(format!("`{{{{{inner}}}}}` is not a number"))
        })?;
        if n == 0 {
            return Err(TemplateError::BadParameters("numbering starts at 1".into()));
        }
        seen.insert(n);
        rest = &after[close + 2..];
    }
    let n = seen.len();
    if seen.iter().copied().eq(1..=n) {
        Ok(n)
    } else {
        Err(TemplateError::BadParameters(format!("found {seen:?}")))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_a_reviewed_template_that_is_not_disabled_can_be_edited() {
        assert!(Status::Approved.editable());
        assert!(Status::Rejected.editable());
        assert!(
            Status::Paused {
                until: Timestamp::from_secs(1)
            }
            .editable()
        );
        assert!(!Status::Pending.editable(), "under review already");
        assert!(!Status::Disabled.editable());
    }
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

    fn approved() -> Lifecycle {
        let mut l = Lifecycle::new(Category::Marketing);
        assert_eq!(l.apply(Review::Approve, T0), Ok(Applied::Changed));
        l
    }

    #[test]
    fn every_legal_transition() {
        let mut rejected = Lifecycle::new(Category::Utility);
        assert_eq!(rejected.apply(Review::Reject, T0), Ok(Applied::Changed));
        assert_eq!(rejected.status, Status::Rejected);

        let mut l = approved();
        assert_eq!(l.status, Status::Approved);
        l.apply(Review::Pause, T0.plus_hours(1))
            .expect("first pause");
        assert_eq!(
            l.status,
            Status::Paused {
                until: T0.plus_hours(4)
            }
        );
        l.apply(Review::Unpause, T0.plus_hours(2)).expect("unpause");
        assert_eq!(l.status, Status::Approved);
        l.apply(Review::Pause, T0.plus_hours(5))
            .expect("second pause");
        assert_eq!(
            l.status,
            Status::Paused {
                until: T0.plus_hours(11)
            }
        );
        l.apply(Review::Recategorise(Category::Utility), T0.plus_hours(6))
            .expect("re-categorise while paused");
        assert_eq!(l.category, Category::Utility);
        l.apply(Review::Unpause, T0.plus_hours(7)).expect("unpause");
        l.apply(Review::Pause, T0.plus_hours(8))
            .expect("third pause");
        assert_eq!(l.status, Status::Disabled, "a third pause disables");

        let mut d = approved();
        d.apply(Review::Disable, T0.plus_hours(1)).expect("disable");
        assert_eq!(d.status, Status::Disabled);
    }

    #[test]
    fn a_pause_ends_by_itself() {
        let mut l = approved();
        let paused_at = T0.plus_hours(1);
        l.apply(Review::Pause, paused_at).expect("pause");
        assert!(!l.is_usable(paused_at.plus_hours(2)));
        assert!(
            l.is_usable(paused_at.plus_hours(3)),
            "3 h later it is approved again"
        );
        // A second pause after the first one lapsed lasts 6 h.
        let again = paused_at.plus_hours(4);
        l.apply(Review::Pause, again).expect("second pause");
        assert_eq!(
            l.status,
            Status::Paused {
                until: again.plus_hours(6)
            }
        );
    }

    #[test]
    fn every_illegal_transition_is_refused() {
        let states = [
            ("pending", Lifecycle::new(Category::Marketing)),
            ("approved", approved()),
            ("rejected", {
                let mut l = Lifecycle::new(Category::Marketing);
                l.apply(Review::Reject, T0).expect("reject");
                l
            }),
            ("paused", {
                let mut l = approved();
                l.apply(Review::Pause, T0.plus_micros(1)).expect("pause");
                l
            }),
            ("disabled", {
                let mut l = approved();
                l.apply(Review::Disable, T0.plus_micros(1))
                    .expect("disable");
                l
            }),
        ];
        let reviews = [
            Review::Approve,
            Review::Reject,
            Review::Pause,
            Review::Unpause,
            Review::Disable,
            Review::Recategorise(Category::Utility),
        ];
        let legal = |state: &str, r: Review| {
            matches!(
                (state, r),
                (
                    "pending",
                    Review::Approve | Review::Reject | Review::Recategorise(_)
                ) | (
                    "approved",
                    Review::Pause | Review::Unpause | Review::Disable | Review::Recategorise(_)
                ) | (
                    "paused",
                    Review::Unpause | Review::Disable | Review::Recategorise(_)
                )
            )
        };
        for (name, state) in &states {
            for r in reviews {
                let mut l = state.clone();
                let result = l.apply(r, T0.plus_hours(1));
                if legal(name, r) {
                    assert_eq!(result, Ok(Applied::Changed), "{name} + {r:?}");
                } else {
                    assert!(
                        matches!(result, Err(ReviewError::Illegal { .. })),
                        "{name} + {r:?} must be refused"
                    );
                    assert_eq!(&l, state, "a refused review changes nothing");
                }
            }
        }
    }

    #[test]
    fn stale_reviews_do_not_move_a_template_backwards() {
        let mut l = approved();
        l.apply(Review::Pause, T0.plus_hours(2)).expect("pause");
        let before = l.clone();
        // The approval arrives again, and a pause from before: both stale.
        assert_eq!(l.apply(Review::Approve, T0), Ok(Applied::Stale));
        assert_eq!(
            l.apply(Review::Unpause, T0.plus_hours(1)),
            Ok(Applied::Stale)
        );
        assert_eq!(l, before);
    }

    #[test]
    fn validation() {
        assert_eq!(
            validate(
                "order_ready",
                "en_US",
                "Hi {{1}}, order {{2}} is ready",
                "",
                ""
            ),
            Ok(2)
        );
        assert_eq!(
            validate("promo", "it", "No parameters", "Header", "Footer"),
            Ok(0)
        );
        assert_eq!(
            validate("Bad-Name", "en", "x", "", ""),
            Err(TemplateError::BadName)
        );
        assert_eq!(
            validate("ok", "english", "x", "", ""),
            Err(TemplateError::BadLanguage)
        );
        assert_eq!(
            validate("ok", "en", "  ", "", ""),
            Err(TemplateError::BadBody)
        );
        assert_eq!(
            validate("ok", "en", &"x".repeat(1_025), "", ""),
            Err(TemplateError::BadBody)
        );
        assert_eq!(
            validate("ok", "en", "x", &"h".repeat(61), ""),
            Err(TemplateError::TooLong)
        );
        assert!(matches!(
            validate("ok", "en", "{{1}} {{3}}", "", ""),
            Err(TemplateError::BadParameters(_))
        ));
        assert!(matches!(
            validate("ok", "en", "{{0}}", "", ""),
            Err(TemplateError::BadParameters(_))
        ));
        assert!(matches!(
            validate("ok", "en", "{{name}}", "", ""),
            Err(TemplateError::BadParameters(_))
        ));
        assert!(matches!(
            validate("ok", "en", "{{1", "", ""),
            Err(TemplateError::BadParameters(_))
        ));
        assert_eq!(
            parameter_count("{{1}} and {{1}} again, {{2}}"),
            Ok(2),
            "a parameter may repeat"
        );
    }

    proptest! {
        #[test]
        fn replaying_reviews_in_any_order_never_moves_past_the_newest(
            order in proptest::collection::vec(0usize..4, 1..12),
        ) {
            // A legal history: approve, pause, unpause, re-categorise at increasing times.
            let history = [
                (Review::Approve, T0),
                (Review::Pause, T0.plus_hours(1)),
                (Review::Unpause, T0.plus_hours(2)),
                (Review::Recategorise(Category::Utility), T0.plus_hours(3)),
            ];
            let mut reference = Lifecycle::new(Category::Marketing);
            for (r, at) in history {
                reference.apply(r, at).expect("legal history");
            }
            // Re-deliver random earlier events after the full history: all stale.
            let mut l = reference.clone();
            for i in order {
                let (r, at) = history[i];
                prop_assert_eq!(l.apply(r, at), Ok(Applied::Stale));
            }
            prop_assert_eq!(l, reference);
        }
    }
}
