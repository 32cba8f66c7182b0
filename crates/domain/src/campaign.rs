//! Campaigns (docs/rules.md §12) as rules: a campaign's states and the moves between them,
//! what a send's refusal means for one recipient and for the whole campaign, the template's
//! parameters taken from each contact, the quote's tally, and when the circuit breaker pauses
//! a running campaign. Every recipient is still decided by the send rules (`send::admit`, the
//! frequency cap, the tier, funds); this module only says what a campaign does with the answer.

use std::collections::BTreeMap;

use crate::template::Category;

/// Where a campaign is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Created, not launched: it can be quoted, launched or cancelled.
    Draft,
    /// Launched: its recipients go out at the number's pace (from its start time on).
    Running,
    /// Stopped by the tenant or by a rule (funds, tier, template, quality, failures); resumed
    /// by the tenant.
    Paused,
    /// Every recipient has an outcome, or the campaign's end time passed.
    Completed,
    Cancelled,
}

/// What moves a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Launch,
    Pause,
    Resume,
    Cancel,
    Complete,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {from} campaign cannot {action}")]
pub struct InvalidMove {
    pub from: &'static str,
    pub action: &'static str,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "DRAFT",
            State::Running => "RUNNING",
            State::Paused => "PAUSED",
            State::Completed => "COMPLETED",
            State::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "DRAFT" => State::Draft,
            "RUNNING" => State::Running,
            "PAUSED" => State::Paused,
            "COMPLETED" => State::Completed,
            "CANCELLED" => State::Cancelled,
            _ => return None,
        })
    }

    /// Nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Cancelled)
    }

    /// The state `action` leads to. Repeating the move a campaign just made (pausing a paused
    /// one) answers the same state, so a retried call is harmless.
    pub fn after(self, action: Action) -> Result<State, InvalidMove> {
        use Action as A;
        use State as S;
        match (self, action) {
            (S::Draft, A::Launch) | (S::Running, A::Launch) => Ok(S::Running),
            (S::Running, A::Pause) | (S::Paused, A::Pause) => Ok(S::Paused),
            (S::Paused, A::Resume) | (S::Running, A::Resume) => Ok(S::Running),
            (S::Draft | S::Running | S::Paused | S::Cancelled, A::Cancel) => Ok(S::Cancelled),
            (S::Running | S::Completed, A::Complete) => Ok(S::Completed),
            (from, action) => Err(InvalidMove {
                from: from.as_str(),
                action: action.as_str(),
            }),
        }
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Launch => "launch",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Complete => "complete",
        }
    }
}

/// Why a recipient is left out before anything is sent to them (the campaign's own rule;
/// the send rules' refusals keep their reasons).
pub const NO_OPT_IN: &str = "NO_OPT_IN";
/// A parameter names an attribute the contact does not have.
pub const MISSING_PARAMETER: &str = "MISSING_PARAMETER";

/// A marketing campaign goes only to contacts with a recorded opt-in (docs/rules.md §12).
pub fn needs_opt_in(category: Category) -> bool {
    category == Category::Marketing
}

/// What a send's answer means for a recipient and for its campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Refused for this user only: the recipient is excluded with the reason, the campaign
    /// goes on.
    Exclude(String),
    /// Refused for everyone (funds, tier, template, tenant, number): the campaign pauses with
    /// the reason and the recipient waits for the resume.
    Pause(String),
    /// Capacity or a store: the recipient is tried again shortly.
    Retry,
}

/// The step for a refused send, by its machine-readable reason (`unavailable`: the answer's
/// code was UNAVAILABLE, whatever its reason). A reason no rule here knows pauses the
/// campaign: better to stop and say so than to drop recipients silently.
pub fn step_of_refusal(reason: &str, unavailable: bool) -> Step {
    match reason {
        "USER_BLOCKED"
        | "MARKETING_OPT_OUT"
        | "FREQUENCY_CAPPED"
        | "INVALID_MESSAGE"
        | "TEMPLATE_PARAMS_MISMATCH"
        | "INVALID_ARGUMENT"
        | "WINDOW_CLOSED" => Step::Exclude(reason.to_owned()),
        "BACKLOG_FULL" | "TENANT_RATE_LIMITED" | "STORE_UNAVAILABLE" | "IN_PROGRESS" => Step::Retry,
        _ if unavailable => Step::Retry,
        "" => Step::Pause("REFUSED".to_owned()),
        other => Step::Pause(other.to_owned()),
    }
}

/// One template parameter of a campaign: the same text for everyone, or taken from each
/// contact (`{{name}}`, `{{user}}`, `{{<attribute>}}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Literal(String),
    Name,
    User,
    Attribute(String),
}

/// Reads the campaign's parameter list.
pub fn parse_params(spec: &[String]) -> Vec<Param> {
    spec.iter()
        .map(|p| {
            let t = p.trim();
            match t
                .strip_prefix("{{")
                .and_then(|r| r.strip_suffix("}}"))
                .map(str::trim)
            {
                Some("name") => Param::Name,
                Some("user") => Param::User,
                Some(key) if !key.is_empty() => Param::Attribute(key.to_owned()),
                _ => Param::Literal(p.clone()),
            }
        })
        .collect()
}

/// The attributes a contact must have for these parameters.
pub fn attributes_needed(params: &[Param]) -> Vec<&str> {
    params
        .iter()
        .filter_map(|p| match p {
            Param::Attribute(k) => Some(k.as_str()),
            _ => None,
        })
        .collect()
}

/// A contact as parameters read it.
pub struct ContactView<'a> {
    pub user: &'a str,
    pub name: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

/// The parameters for one contact; `Err(key)` names what it lacks (an empty name or value
/// counts as missing: the network refuses an empty parameter).
pub fn render(params: &[Param], contact: &ContactView<'_>) -> Result<Vec<String>, String> {
    params
        .iter()
        .map(|p| {
            let value = match p {
                Param::Literal(v) => return Ok(v.clone()),
                Param::Name => Some(contact.name),
                Param::User => Some(contact.user),
                Param::Attribute(k) => contact.attributes.get(k).map(String::as_str),
            };
            match value {
                Some(v) if !v.trim().is_empty() => Ok(v.to_owned()),
                _ => Err(match p {
                    Param::Attribute(k) => k.clone(),
                    Param::Name => "name".to_owned(),
                    _ => "user".to_owned(),
                }),
            }
        })
        .collect()
}

/// What a quote says of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteOutcome {
    /// Goes free (inside the window or a free entry point); the reason as pricing gives it.
    Free(String),
    /// Charged this price in the recipient's market.
    Charged { market: &'static str, price: i64 },
    /// Left out, with the reason a send or the campaign would give.
    Excluded(String),
}

/// A quote's counts and total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub recipients: u64,
    pub free: u64,
    pub charged: u64,
    pub total_price: i64,
    /// market → (recipients, price).
    pub by_market: BTreeMap<&'static str, (u64, i64)>,
    /// reason → recipients.
    pub excluded: BTreeMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, outcome: &QuoteOutcome) {
        self.recipients += 1;
        match outcome {
            QuoteOutcome::Free(_) => self.free += 1,
            QuoteOutcome::Charged { market, price } => {
                self.charged += 1;
                self.total_price += price;
                let m = self.by_market.entry(market).or_default();
                m.0 += 1;
                m.1 += price;
            }
            QuoteOutcome::Excluded(reason) => {
                *self.excluded.entry(reason.clone()).or_default() += 1
            }
        }
    }

    pub fn excluded_total(&self) -> u64 {
        self.excluded.values().sum()
    }
}

/// The campaign circuit breaker's thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    /// Finished sends (delivered, read or failed) the failure rate is judged on at least.
    pub min_finished: u64,
    /// More failed than this share of the recent finished sends (percent) trips it.
    pub max_failed_percent: u64,
}

impl Breaker {
    pub const DEFAULT: Breaker = Breaker {
        min_finished: 20,
        max_failed_percent: 20,
    };
}

/// What the breaker looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health<'a> {
    /// The number's quality rating (GREEN, YELLOW, RED, UNKNOWN).
    pub number_quality: &'a str,
    /// The template's quality score.
    pub template_quality: &'a str,
    /// Of the campaign's most recent finished sends: how many, and how many failed.
    pub recent_finished: u64,
    pub recent_failed: u64,
}

impl Breaker {
    /// Why the campaign must pause now, if it must.
    pub fn trips(&self, h: &Health<'_>) -> Option<&'static str> {
        if h.number_quality.eq_ignore_ascii_case("RED") {
            return Some("NUMBER_QUALITY_LOW");
        }
        if h.template_quality.eq_ignore_ascii_case("RED") {
            return Some("TEMPLATE_QUALITY_LOW");
        }
        if h.recent_finished >= self.min_finished.max(1)
            && h.recent_failed * 100 > h.recent_finished * self.max_failed_percent
        {
            return Some("FAILURE_RATE");
        }
        None
    }
}

/// How many recipients a campaign may hand to the send decision now, at `per_second` for
/// `elapsed_micros`, carrying the fraction left (in millionths of a message) to the next
/// round, and never more than `most` at once.
pub fn slice(per_second: i64, elapsed_micros: i64, carry: &mut i64, most: i64) -> i64 {
    let credit = *carry + per_second.max(1) * elapsed_micros.max(0);
    let n = (credit / 1_000_000).min(most.max(0));
    *carry = (credit - n * 1_000_000).min(per_second.max(1) * 1_000_000);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATES: [State; 5] = [
        State::Draft,
        State::Running,
        State::Paused,
        State::Completed,
        State::Cancelled,
    ];
    const ACTIONS: [Action; 5] = [
        Action::Launch,
        Action::Pause,
        Action::Resume,
        Action::Cancel,
        Action::Complete,
    ];

    #[test]
    fn the_moves_a_campaign_makes() {
        assert_eq!(State::Draft.after(Action::Launch), Ok(State::Running));
        assert_eq!(State::Running.after(Action::Pause), Ok(State::Paused));
        assert_eq!(State::Paused.after(Action::Resume), Ok(State::Running));
        assert_eq!(State::Paused.after(Action::Cancel), Ok(State::Cancelled));
        assert_eq!(State::Running.after(Action::Complete), Ok(State::Completed));
        assert!(State::Draft.after(Action::Pause).is_err());
        assert!(State::Draft.after(Action::Resume).is_err());
        assert!(State::Completed.after(Action::Cancel).is_err());
        assert!(State::Cancelled.after(Action::Resume).is_err());
        assert!(State::Paused.after(Action::Launch).is_err());
        assert_eq!(
            State::Completed
                .after(Action::Launch)
                .unwrap_err()
                .to_string(),
            "a COMPLETED campaign cannot launch"
        );
    }

    #[test]
    fn every_state_round_trips_and_final_states_never_run_again() {
        for s in STATES {
            assert_eq!(State::parse(s.as_str()), Some(s));
            for a in ACTIONS {
                if let Ok(next) = s.after(a) {
                    if s.is_final() {
                        assert_eq!(next, s, "{s:?} {a:?}: a final state stays");
                    }
                    // Repeating a move that succeeded answers the same state.
                    assert_eq!(next.after(a), Ok(next), "{s:?} {a:?} twice");
                }
            }
        }
        assert_eq!(State::parse("running"), None);
    }

    #[test]
    fn a_refusal_excludes_the_user_pauses_the_campaign_or_is_retried() {
        for r in [
            "USER_BLOCKED",
            "MARKETING_OPT_OUT",
            "FREQUENCY_CAPPED",
            "INVALID_MESSAGE",
        ] {
            assert_eq!(step_of_refusal(r, false), Step::Exclude(r.to_owned()));
        }
        for r in [
            "INSUFFICIENT_FUNDS",
            "TIER_LIMIT_REACHED",
            "TEMPLATE_PAUSED",
            "TEMPLATE_NOT_APPROVED",
            "TENANT_SUSPENDED",
            "NOT_FOUND",
        ] {
            assert_eq!(step_of_refusal(r, false), Step::Pause(r.to_owned()));
        }
        for r in ["BACKLOG_FULL", "TENANT_RATE_LIMITED", "STORE_UNAVAILABLE"] {
            assert_eq!(step_of_refusal(r, false), Step::Retry);
        }
        assert_eq!(step_of_refusal("", true), Step::Retry);
        assert_eq!(step_of_refusal("", false), Step::Pause("REFUSED".into()));
        assert_eq!(
            step_of_refusal("SOMETHING_NEW", false),
            Step::Pause("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn parameters_come_from_the_contact_or_stand_as_written() {
        let params = parse_params(&[
            "{{name}}".into(),
            "{{ city }}".into(),
            "Saldi!".into(),
            "{{user}}".into(),
            "{{}}".into(),
        ]);
        assert_eq!(
            params,
            vec![
                Param::Name,
                Param::Attribute("city".into()),
                Param::Literal("Saldi!".into()),
                Param::User,
                Param::Literal("{{}}".into()),
            ]
        );
        assert_eq!(attributes_needed(&params), vec!["city"]);
        let mut attributes = BTreeMap::new();
        attributes.insert("city".to_owned(), "Roma".to_owned());
        let contact = ContactView {
            user: "393470000001",
            name: "Ada",
            attributes: &attributes,
        };
        assert_eq!(
            render(&params, &contact),
            Ok(vec![
                "Ada".into(),
                "Roma".into(),
                "Saldi!".into(),
                "393470000001".into(),
                "{{}}".into()
            ])
        );
        let nameless = ContactView {
            name: " ",
            ..contact
        };
        assert_eq!(render(&params, &nameless), Err("name".into()));
        let empty = BTreeMap::new();
        let no_city = ContactView {
            user: "393470000001",
            name: "Ada",
            attributes: &empty,
        };
        assert_eq!(render(&params, &no_city), Err("city".into()));
    }

    #[test]
    fn only_marketing_needs_an_opt_in() {
        assert!(needs_opt_in(Category::Marketing));
        assert!(!needs_opt_in(Category::Utility));
        assert!(!needs_opt_in(Category::Authentication));
    }

    #[test]
    fn the_tally_adds_up() {
        let mut t = Tally::default();
        for o in [
            QuoteOutcome::Free("UTILITY_IN_WINDOW".into()),
            QuoteOutcome::Charged {
                market: "IT",
                price: 30_000,
            },
            QuoteOutcome::Charged {
                market: "IT",
                price: 30_000,
            },
            QuoteOutcome::Charged {
                market: "BR",
                price: 70_000,
            },
            QuoteOutcome::Excluded("USER_BLOCKED".into()),
            QuoteOutcome::Excluded(NO_OPT_IN.into()),
            QuoteOutcome::Excluded(NO_OPT_IN.into()),
        ] {
            t.add(&o);
        }
        assert_eq!((t.recipients, t.free, t.charged), (7, 1, 3));
        assert_eq!(t.total_price, 130_000);
        assert_eq!(t.by_market["IT"], (2, 60_000));
        assert_eq!(t.by_market["BR"], (1, 70_000));
        assert_eq!(t.excluded[NO_OPT_IN], 2);
        assert_eq!(t.excluded_total(), 3);
    }

    #[test]
    fn the_breaker_trips_on_quality_and_on_failures() {
        let b = Breaker::DEFAULT;
        let fine = Health {
            number_quality: "GREEN",
            template_quality: "UNKNOWN",
            recent_finished: 100,
            recent_failed: 20,
        };
        assert_eq!(b.trips(&fine), None, "exactly the threshold holds");
        assert_eq!(
            b.trips(&Health {
                recent_failed: 21,
                ..fine
            }),
            Some("FAILURE_RATE")
        );
        assert_eq!(
            b.trips(&Health {
                recent_finished: 19,
                recent_failed: 19,
                ..fine
            }),
            None,
            "too few to judge"
        );
        assert_eq!(
            b.trips(&Health {
                number_quality: "red",
                ..fine
            }),
            Some("NUMBER_QUALITY_LOW")
        );
        assert_eq!(
            b.trips(&Health {
                template_quality: "RED",
                ..fine
            }),
            Some("TEMPLATE_QUALITY_LOW")
        );
        assert_eq!(
            b.trips(&Health {
                number_quality: "YELLOW",
                ..fine
            }),
            None
        );
    }

    proptest! {
        /// Over any run of rounds, the slices add up to the rate times the time (less than
        /// one message short), and no slice is larger than allowed.
        #[test]
        fn slices_keep_the_rate(
            per_second in 1i64..5_000,
            rounds in proptest::collection::vec(0i64..2_000_000, 1..60),
        ) {
            let mut carry = 0;
            let mut sent = 0;
            let mut elapsed = 0;
            for r in &rounds {
                let n = slice(per_second, *r, &mut carry, i64::MAX);
                prop_assert!(n >= 0);
                sent += n;
                elapsed += r;
            }
            // Nothing is lost between rounds: the fractions carry over.
            prop_assert_eq!(sent, per_second * elapsed / 1_000_000);
        }

        #[test]
        fn a_slice_never_exceeds_its_bound(per_second in 1i64..5_000, elapsed in 0i64..10_000_000, most in 0i64..500) {
            let mut carry = 0;
            prop_assert!(slice(per_second, elapsed, &mut carry, most) <= most);
        }
    }
}
