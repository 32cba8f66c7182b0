//! The customer-service window (CSW) and free entry point (FEP) of one (number, user) pair,
//! docs/rules.md §1.
//!
//! The state is a join-semilattice: every field only moves "up" (a later time, or a later
//! preference), so applying the same events in any order and any number of times gives the
//! same state, and two partial states can be merged with [`WindowState::merge`]. The stores
//! (Postgres upsert, Redis Lua script) implement exactly this merge.

use crate::time::Timestamp;

/// Hours a user message keeps the customer-service window open.
pub const CSW_HOURS: i64 = 24;
/// Hours a free entry point lasts from the business reply that started it.
pub const FEP_HOURS: i64 = 72;

/// The newest inbound message of the pair (by provider timestamp, ties by id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LastInbound {
    pub at: Timestamp,
    pub message_id: String,
}

/// A boolean the user toggles over time (marketing stop/resume, block/unblock). The newest
/// toggle wins; at the same instant `on` wins, the safer reading (stopped, blocked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flag {
    pub at: Timestamp,
    pub on: bool,
}

/// What a user message did to the window, as seen when it is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowChange {
    /// The window was closed and is now open.
    Opened { csw_until: Timestamp },
    /// The window was open and now closes later.
    Refreshed { csw_until: Timestamp },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowState {
    pub csw_until: Option<Timestamp>,
    pub last_inbound: Option<LastInbound>,
    /// Timestamp of the newest inbound message that carried an ad / CTA referral.
    pub referral_at: Option<Timestamp>,
    pub fep_until: Option<Timestamp>,
    pub marketing_opt_out: Option<Flag>,
    pub blocked: Option<Flag>,
}

fn max_opt<T: Ord + Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x >= y { x.clone() } else { y.clone() }),
        (x, None) => x.clone(),
        (None, y) => y.clone(),
    }
}

impl WindowState {
    /// A user message (any type) opens or refreshes the window:
    /// `csw_until = max(csw_until, sent_at + 24h)`. `sent_at` is the provider's timestamp;
    /// `now` is when the message is processed. Returns what changed as of `now`: `None` for a
    /// duplicate, for a message older than the newest one, and for a late message whose window
    /// has already ended (its `csw_until` is still recorded).
    pub fn on_user_message(
        &mut self,
        sent_at: Timestamp,
        message_id: &str,
        has_referral: bool,
        now: Timestamp,
    ) -> Option<WindowChange> {
        let until = sent_at.plus_hours(CSW_HOURS);
        let was_open = self.is_open(now);
        let extends = self.csw_until.is_none_or(|u| until > u);
        if extends {
            self.csw_until = Some(until);
        }
        self.last_inbound = max_opt(
            &self.last_inbound,
            &Some(LastInbound {
                at: sent_at,
                message_id: message_id.to_owned(),
            }),
        );
        if has_referral {
            self.referral_at = max_opt(&self.referral_at, &Some(sent_at));
        }
        match (extends && until > now, was_open) {
            (false, _) => None,
            (true, false) => Some(WindowChange::Opened { csw_until: until }),
            (true, true) => Some(WindowChange::Refreshed { csw_until: until }),
        }
    }

    /// Marketing stop (`stop = true`) or resume from the user at `at`.
    pub fn on_marketing_preference(&mut self, at: Timestamp, stop: bool) {
        self.marketing_opt_out = max_opt(&self.marketing_opt_out, &Some(Flag { at, on: stop }));
    }

    /// The user blocked (`blocked = true`) or unblocked the number at `at`. Unblocking does not
    /// open a window.
    pub fn on_block(&mut self, at: Timestamp, blocked: bool) {
        self.blocked = max_opt(&self.blocked, &Some(Flag { at, on: blocked }));
    }

    /// The business replied at `at`. If the pair is FEP-eligible (a referral message whose
    /// window contains `at`) and no FEP is running, an FEP opens for 72 h. An FEP is never
    /// extended. Returns the new `fep_until` when one started.
    pub fn on_business_reply(&mut self, at: Timestamp) -> Option<Timestamp> {
        if !self.fep_eligible(at) {
            return None;
        }
        let until = at.plus_hours(FEP_HOURS);
        self.fep_until = Some(until);
        Some(until)
    }

    /// Whether a business reply at `at` would start an FEP.
    pub fn fep_eligible(&self, at: Timestamp) -> bool {
        let in_referral_window = self
            .referral_at
            .is_some_and(|r| r <= at && at < r.plus_hours(CSW_HOURS));
        // Inside the referral message's own window the CSW is open too: that message
        // refreshed it.
        in_referral_window && !self.fep_open(at)
    }

    /// The customer-service window is open at `now` iff `now < csw_until`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.csw_until.is_some_and(|u| now < u)
    }

    pub fn fep_open(&self, now: Timestamp) -> bool {
        self.fep_until.is_some_and(|u| now < u)
    }

    pub fn is_marketing_opted_out(&self) -> bool {
        self.marketing_opt_out.is_some_and(|f| f.on)
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some_and(|f| f.on)
    }

    /// The last instant at which anything time-bound in this state still matters (for store
    /// TTLs). Preferences never expire: stores keep them in their durable copy.
    pub fn expires_at(&self) -> Option<Timestamp> {
        max_opt(&self.csw_until, &self.fep_until)
    }

    /// Lattice join: the state that results from the events of both. Commutative, associative,
    /// idempotent.
    pub fn merge(&mut self, other: &WindowState) {
        self.csw_until = max_opt(&self.csw_until, &other.csw_until);
        self.last_inbound = max_opt(&self.last_inbound, &other.last_inbound);
        self.referral_at = max_opt(&self.referral_at, &other.referral_at);
        self.fep_until = max_opt(&self.fep_until, &other.fep_until);
        self.marketing_opt_out = max_opt(&self.marketing_opt_out, &other.marketing_opt_out);
        self.blocked = max_opt(&self.blocked, &other.blocked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

    fn hours(h: i64) -> i64 {
        h * Timestamp::HOUR
    }

    #[test]
    fn a_user_message_opens_the_window_for_24_hours() {
        let mut w = WindowState::default();
        assert!(!w.is_open(T0));
        let change = w.on_user_message(T0, "wamid.1", false, T0);
        assert_eq!(
            change,
            Some(WindowChange::Opened {
                csw_until: T0.plus_hours(24)
            })
        );
        assert!(w.is_open(T0));
        assert!(w.is_open(T0.plus_micros(hours(24) - 1)));
        assert!(!w.is_open(T0.plus_hours(24)), "open iff now < csw_until");
    }

    #[test]
    fn a_later_message_refreshes_and_an_earlier_one_does_nothing() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.1", false, T0);
        let later = T0.plus_hours(5);
        assert_eq!(
            w.on_user_message(later, "wamid.2", false, later),
            Some(WindowChange::Refreshed {
                csw_until: later.plus_hours(24)
            })
        );
        assert_eq!(
            w.on_user_message(T0.plus_hours(1), "wamid.0", false, T0.plus_hours(1)),
            None
        );
        assert_eq!(w.csw_until, Some(later.plus_hours(24)));
        assert_eq!(
            w.last_inbound.as_ref().map(|l| l.message_id.as_str()),
            Some("wamid.2")
        );
    }

    #[test]
    fn a_message_after_the_window_closed_opens_a_new_one() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.1", false, T0);
        let after = T0.plus_hours(30);
        assert_eq!(
            w.on_user_message(after, "wamid.2", false, after),
            Some(WindowChange::Opened {
                csw_until: after.plus_hours(24)
            })
        );
    }

    #[test]
    fn a_message_sent_25_hours_ago_leaves_the_window_closed_now() {
        let now = T0;
        let mut w = WindowState::default();
        w.on_user_message(Timestamp(now.0 - hours(25)), "wamid.old", false, now);
        assert!(!w.is_open(now));
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.1", true, T0);
        let before = w.clone();
        assert_eq!(w.on_user_message(T0, "wamid.1", true, T0), None);
        assert_eq!(w, before);
    }

    #[test]
    fn fep_starts_on_a_reply_within_the_referral_window_and_lasts_72_hours() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.ad", true, T0);
        let reply = T0.plus_hours(2);
        assert!(w.fep_eligible(reply));
        assert_eq!(w.on_business_reply(reply), Some(reply.plus_hours(72)));
        assert!(w.fep_open(reply.plus_hours(71)));
        assert!(!w.fep_open(reply.plus_hours(72)));
    }

    #[test]
    fn fep_is_not_extended_by_later_replies() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.ad", true, T0);
        let first = T0.plus_hours(1);
        w.on_business_reply(first);
        assert_eq!(w.on_business_reply(T0.plus_hours(3)), None);
        assert_eq!(w.fep_until, Some(first.plus_hours(72)));
    }

    #[test]
    fn no_fep_without_referral_or_after_the_referral_window() {
        let mut plain = WindowState::default();
        plain.on_user_message(T0, "wamid.1", false, T0);
        assert_eq!(plain.on_business_reply(T0.plus_hours(1)), None);

        let mut late = WindowState::default();
        late.on_user_message(T0, "wamid.ad", true, T0);
        assert_eq!(
            late.on_business_reply(T0.plus_hours(24)),
            None,
            "reply after the CSW"
        );
        assert_eq!(
            late.on_business_reply(Timestamp(T0.0 - 1)),
            None,
            "reply before the referral"
        );
    }

    #[test]
    fn a_new_fep_can_start_only_after_the_previous_one_ended() {
        let mut w = WindowState::default();
        w.on_user_message(T0, "wamid.ad1", true, T0);
        w.on_business_reply(T0.plus_hours(1));
        let second_ad = T0.plus_hours(50);
        w.on_user_message(second_ad, "wamid.ad2", true, second_ad);
        assert_eq!(
            w.on_business_reply(second_ad.plus_hours(1)),
            None,
            "first FEP still running"
        );
        let third_ad = T0.plus_hours(80);
        w.on_user_message(third_ad, "wamid.ad3", true, third_ad);
        let reply = third_ad.plus_hours(1);
        assert_eq!(w.on_business_reply(reply), Some(reply.plus_hours(72)));
    }

    #[test]
    fn newest_preference_wins_and_stop_wins_a_tie() {
        let mut w = WindowState::default();
        w.on_marketing_preference(T0.plus_hours(2), false);
        w.on_marketing_preference(T0.plus_hours(1), true);
        assert!(
            !w.is_marketing_opted_out(),
            "the later resume wins although it arrived first"
        );
        w.on_marketing_preference(T0.plus_hours(2), true);
        assert!(w.is_marketing_opted_out(), "at the same instant stop wins");
    }

    #[test]
    fn unblock_does_not_open_a_window() {
        let mut w = WindowState::default();
        w.on_block(T0, true);
        assert!(w.is_blocked());
        w.on_block(T0.plus_hours(1), false);
        assert!(!w.is_blocked());
        assert!(!w.is_open(T0.plus_hours(1)));
    }

    #[derive(Clone, Debug)]
    enum Event {
        Message { at: i64, id: u8, referral: bool },
        Marketing { at: i64, stop: bool },
        Block { at: i64, blocked: bool },
    }

    fn apply(state: &mut WindowState, e: &Event) {
        match *e {
            Event::Message { at, id, referral } => {
                state.on_user_message(T0.plus_micros(at), &format!("wamid.{id}"), referral, T0);
            }
            Event::Marketing { at, stop } => {
                state.on_marketing_preference(T0.plus_micros(at), stop)
            }
            Event::Block { at, blocked } => state.on_block(T0.plus_micros(at), blocked),
        }
    }

    fn event() -> impl Strategy<Value = Event> {
        // Times within a few days, with many collisions so ties are exercised.
        let at = (0i64..200).prop_map(|m| m * hours(1) / 2);
        prop_oneof![
            (at.clone(), 0u8..6, any::<bool>()).prop_map(|(at, id, referral)| Event::Message {
                at,
                id,
                referral
            }),
            (at.clone(), any::<bool>()).prop_map(|(at, stop)| Event::Marketing { at, stop }),
            (at, any::<bool>()).prop_map(|(at, blocked)| Event::Block { at, blocked }),
        ]
    }

    fn fold(events: &[Event]) -> WindowState {
        let mut s = WindowState::default();
        events.iter().for_each(|e| apply(&mut s, e));
        s
    }

    proptest! {
        #[test]
        fn any_order_with_duplicates_gives_the_same_state(
            events in proptest::collection::vec(event(), 0..40),
            seed in any::<u64>(),
            dup_mask in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let reference = fold(&events);
            let mut shuffled: Vec<Event> = events.clone();
            for (e, dup) in events.iter().zip(&dup_mask) {
                if *dup { shuffled.push(e.clone()); }
            }
            // Deterministic Fisher-Yates from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(fold(&shuffled), reference);
        }

        #[test]
        fn merging_partial_states_equals_applying_everything(
            events in proptest::collection::vec(event(), 0..40),
            split in 0usize..40,
        ) {
            let split = split.min(events.len());
            let (a, b) = events.split_at(split);
            let mut left = fold(a);
            let right = fold(b);
            let mut right_then_left = right.clone();
            right_then_left.merge(&left);
            left.merge(&right);
            prop_assert_eq!(&left, &fold(&events));
            prop_assert_eq!(&right_then_left, &left, "merge is commutative");
            let once = left.clone();
            left.merge(&once);
            prop_assert_eq!(left, once, "merge is idempotent");
        }

        #[test]
        fn window_is_open_exactly_within_24h_of_the_newest_message(
            events in proptest::collection::vec(event(), 1..30),
            probe in 0i64..(120 * 3_600_000_000),
        ) {
            let s = fold(&events);
            let newest = events.iter().filter_map(|e| match e {
                Event::Message { at, .. } => Some(*at), _ => None,
            }).max();
            let now = T0.plus_micros(probe);
            let expected = newest.is_some_and(|at| now < T0.plus_micros(at).plus_hours(24));
            prop_assert_eq!(s.is_open(now), expected);
        }
    }
}
