//! The simulated network's own rules, as the real one applies them to a send: the number's
//! throughput, the user's block, and the customer-service window it tracks from the user
//! messages it delivered itself. Pure: times are given.

use std::collections::{HashMap, HashSet};

/// A user message opens the window for this long.
pub const WINDOW_MICROS: i64 = 24 * 3_600 * 1_000_000;

/// Why the network refuses a send (Cloud API error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 131047: free-form outside the 24-hour window.
    OutsideWindow,
    /// 131026: the user cannot receive it (here: the user blocked the number).
    Undeliverable,
    /// 130429: the number's throughput is exceeded.
    RateLimited,
    /// 132001: no approved template of that name and language.
    TemplateMissing,
    /// 132000: the number of parameters does not match the template's.
    ParamsMismatch,
    /// 131050: the user stopped marketing messages.
    MarketingStopped,
    /// 132015: the template is paused for its low quality.
    TemplatePaused,
    /// 132016: the template is disabled.
    TemplateDisabled,
}

impl Refusal {
    pub fn code(self) -> i32 {
        match self {
            Refusal::OutsideWindow => 131_047,
            Refusal::Undeliverable => 131_026,
            Refusal::RateLimited => 130_429,
            Refusal::TemplateMissing => 132_001,
            Refusal::ParamsMismatch => 132_000,
            Refusal::MarketingStopped => 131_050,
            Refusal::TemplatePaused => 132_015,
            Refusal::TemplateDisabled => 132_016,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Refusal::OutsideWindow => "Re-engagement message",
            Refusal::Undeliverable => "Message Undeliverable",
            Refusal::RateLimited => "Rate limit hit",
            Refusal::TemplateMissing => "Template name does not exist in the translation",
            Refusal::ParamsMismatch => {
                "Number of parameters does not match the expected number of params"
            }
            Refusal::MarketingStopped => "Unable to deliver message",
            Refusal::TemplatePaused => "Template is Paused",
            Refusal::TemplateDisabled => "Template is Disabled",
        }
    }
}

/// A token bucket of one number: `rate` tokens a second, at most `rate` held.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: i64,
}

type Pair = (String, String);

/// A template the network reviewed favourably, as a send finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownTemplate {
    pub marketing: bool,
    pub parameter_count: usize,
    pub state: TemplateState,
}

/// Where a reviewed template stands (one still pending or rejected is not known to sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateState {
    Approved,
    Paused,
    Disabled,
}

impl TemplateState {
    /// The state of a stored status; `None` for a template sends cannot use or name
    /// (PENDING, REJECTED).
    pub fn of(status: &str) -> Option<Self> {
        match status {
            "APPROVED" => Some(Self::Approved),
            "PAUSED" => Some(Self::Paused),
            "DISABLED" => Some(Self::Disabled),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Network {
    last_inbound: HashMap<Pair, i64>,
    blocked: HashSet<Pair>,
    /// Users the business blocked at the network (`/block_users`).
    business_blocked: HashSet<Pair>,
    marketing_stopped: HashSet<Pair>,
    buckets: HashMap<String, Bucket>,
}

fn pair(number: &str, user: &str) -> Pair {
    (number.to_owned(), user.to_owned())
}

impl Network {
    /// The user wrote to the number at `at` (µs): the window runs 24 h from the newest message.
    pub fn user_wrote(&mut self, number: &str, user: &str, at: i64) {
        let e = self.last_inbound.entry(pair(number, user)).or_insert(at);
        *e = (*e).max(at);
    }

    pub fn set_blocked(&mut self, number: &str, user: &str, blocked: bool) {
        if blocked {
            self.blocked.insert(pair(number, user));
        } else {
            self.blocked.remove(&pair(number, user));
        }
    }

    /// The business blocks (or unblocks) the user: nothing passes either way meanwhile.
    pub fn set_business_blocked(&mut self, number: &str, user: &str, blocked: bool) {
        if blocked {
            self.business_blocked.insert(pair(number, user));
        } else {
            self.business_blocked.remove(&pair(number, user));
        }
    }

    /// Whether the business blocked the user (the user's messages do not reach it).
    pub fn business_blocked(&self, number: &str, user: &str) -> bool {
        self.business_blocked.contains(&pair(number, user))
    }

    pub fn set_marketing_stopped(&mut self, number: &str, user: &str, stopped: bool) {
        if stopped {
            self.marketing_stopped.insert(pair(number, user));
        } else {
            self.marketing_stopped.remove(&pair(number, user));
        }
    }

    /// A template send's own checks: it exists approved, the parameters fit, and a marketing
    /// one goes only to a user who did not stop marketing.
    pub fn check_template(
        &self,
        number: &str,
        user: &str,
        template: Option<KnownTemplate>,
        given_parameters: usize,
    ) -> Result<(), Refusal> {
        let t = template.ok_or(Refusal::TemplateMissing)?;
        match t.state {
            TemplateState::Approved => {}
            TemplateState::Paused => return Err(Refusal::TemplatePaused),
            TemplateState::Disabled => return Err(Refusal::TemplateDisabled),
        }
        if t.parameter_count != given_parameters {
            return Err(Refusal::ParamsMismatch);
        }
        if t.marketing && self.marketing_stopped.contains(&pair(number, user)) {
            return Err(Refusal::MarketingStopped);
        }
        Ok(())
    }

    pub fn window_open(&self, number: &str, user: &str, now: i64) -> bool {
        self.last_inbound
            .get(&pair(number, user))
            .is_some_and(|at| now < at + WINDOW_MICROS)
    }

    /// Whether a message may go out now: throughput first (a refused send takes no token
    /// twice), then the block, then the window (templates need none).
    pub fn admit(
        &mut self,
        number: &str,
        user: &str,
        template: bool,
        now: i64,
        rate_per_second: u32,
    ) -> Result<(), Refusal> {
        let rate = f64::from(rate_per_second.max(1));
        let bucket = self.buckets.entry(number.to_owned()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = (now - bucket.at).max(0) as f64 / 1_000_000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        bucket.tokens -= 1.0;
        let p = pair(number, user);
        if self.blocked.contains(&p) || self.business_blocked.contains(&p) {
            return Err(Refusal::Undeliverable);
        }
        if !template && !self.window_open(number, user, now) {
            return Err(Refusal::OutsideWindow);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_must_exist_fit_and_respect_a_marketing_stop() {
        let mut n = Network::default();
        let offer = Some(KnownTemplate {
            marketing: true,
            parameter_count: 1,
            state: TemplateState::Approved,
        });
        assert_eq!(
            n.check_template("pn", "39", None, 0),
            Err(Refusal::TemplateMissing)
        );
        assert_eq!(
            n.check_template("pn", "39", offer, 2),
            Err(Refusal::ParamsMismatch)
        );
        assert_eq!(n.check_template("pn", "39", offer, 1), Ok(()));
        n.set_marketing_stopped("pn", "39", true);
        assert_eq!(
            n.check_template("pn", "39", offer, 1)
                .map_err(Refusal::code),
            Err(131_050)
        );
        let utility = KnownTemplate {
            marketing: false,
            parameter_count: 0,
            state: TemplateState::Approved,
        };
        assert_eq!(n.check_template("pn", "39", Some(utility), 0), Ok(()));
        n.set_marketing_stopped("pn", "39", false);
        assert_eq!(n.check_template("pn", "39", offer, 1), Ok(()));
        let paused = KnownTemplate {
            state: TemplateState::Paused,
            ..utility
        };
        assert_eq!(
            n.check_template("pn", "39", Some(paused), 0)
                .map_err(Refusal::code),
            Err(132_015)
        );
        let disabled = KnownTemplate {
            state: TemplateState::Disabled,
            ..utility
        };
        assert_eq!(
            n.check_template("pn", "39", Some(disabled), 0)
                .map_err(Refusal::code),
            Err(132_016)
        );
        assert_eq!(TemplateState::of("PENDING"), None);
        assert_eq!(TemplateState::of("REJECTED"), None);
    }

    const T: i64 = 1_764_000_000_000_000;

    #[test]
    fn free_form_needs_the_window_templates_do_not() {
        let mut n = Network::default();
        assert_eq!(
            n.admit("pn", "39", false, T, 80),
            Err(Refusal::OutsideWindow)
        );
        assert_eq!(n.admit("pn", "39", true, T, 80), Ok(()));
        n.user_wrote("pn", "39", T - WINDOW_MICROS + 1);
        assert_eq!(n.admit("pn", "39", false, T, 80), Ok(()), "1 µs left");
        assert_eq!(
            n.admit("pn", "39", false, T + 1, 80),
            Err(Refusal::OutsideWindow),
            "closed exactly 24 h after the user's message"
        );
        n.user_wrote("pn", "39", T - 10 * WINDOW_MICROS);
        assert!(
            n.window_open("pn", "39", T),
            "an older message never shortens it"
        );
        assert!(!n.window_open("pn2", "39", T), "per number");
    }

    #[test]
    fn a_block_refuses_everything_until_unblocked() {
        let mut n = Network::default();
        n.user_wrote("pn", "39", T);
        n.set_blocked("pn", "39", true);
        assert_eq!(
            n.admit("pn", "39", true, T, 80),
            Err(Refusal::Undeliverable)
        );
        n.set_blocked("pn", "39", false);
        assert_eq!(n.admit("pn", "39", false, T, 80), Ok(()));
        n.set_business_blocked("pn", "39", true);
        assert_eq!(
            n.admit("pn", "39", true, T, 80),
            Err(Refusal::Undeliverable),
            "nor to a user the business blocked"
        );
        assert!(n.business_blocked("pn", "39") && !n.business_blocked("pn2", "39"));
        n.set_business_blocked("pn", "39", false);
        assert_eq!(n.admit("pn", "39", false, T, 80), Ok(()));
    }

    #[test]
    fn throughput_is_a_token_bucket_per_number() {
        let mut n = Network::default();
        let sent = (0..15)
            .filter(|_| n.admit("pn", "39", true, T, 10).is_ok())
            .count();
        assert_eq!(sent, 10, "a burst of one second's worth");
        assert_eq!(n.admit("pn", "39", true, T, 10), Err(Refusal::RateLimited));
        assert_eq!(n.admit("other", "39", true, T, 10), Ok(()), "per number");
        assert_eq!(
            n.admit("pn", "39", true, T + 100_000, 10),
            Ok(()),
            "a token back every 100 ms"
        );
        assert_eq!(Refusal::RateLimited.code(), 130_429, "the Cloud API's code");
    }
}
