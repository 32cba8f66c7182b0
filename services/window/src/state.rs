//! Events the window service applies, decoded from envelopes, and the keys they touch.

use finestra_domain::{Timestamp, UserKey, WindowState};
use finestra_proto::time::to_micros;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;

/// The identity of a window.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub tenant_id: String,
    pub phone_number_id: String,
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    UserMessage {
        message_id: String,
        referral: bool,
    },
    MarketingPreference {
        stop: bool,
    },
    Block {
        blocked: bool,
    },
    /// The business answered inside the window of a referral message: an FEP starts.
    BusinessReply {
        message_id: String,
    },
}

impl EventKind {
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::UserMessage { .. } => "user_message",
            EventKind::MarketingPreference { .. } => "marketing_preference",
            EventKind::Block { .. } => "block",
            EventKind::BusinessReply { .. } => "business_reply",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowEvent {
    pub key: PairKey,
    pub event_id: String,
    pub occurred_at: Timestamp,
    pub kind: EventKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("envelope without {0}")]
    Missing(&'static str),
    #[error("bad user: {0}")]
    User(#[from] finestra_domain::UserKeyError),
    #[error("occurred_at {0} is before 2010 or more than a day ahead")]
    ImplausibleTime(Timestamp),
}

/// Ingest refuses implausible provider times; this wider bound only keeps values no store can
/// hold out of the stores (a replay of old events must still apply).
const EARLIEST_EVENT: Timestamp = Timestamp::from_secs(1_262_304_000); // 2010-01-01

/// Only marketing preferences change the window's opt-out; other categories are not tracked.
const MARKETING: &str = "marketing_messages";

/// The window-relevant event of an envelope; `Ok(None)` for envelopes this service ignores.
pub fn decode(env: &Envelope, now: Timestamp) -> Result<Option<WindowEvent>, DecodeError> {
    let occurred_at = env
        .occurred_at
        .as_ref()
        .map(|t| Timestamp::from_micros(to_micros(t)))
        .ok_or(DecodeError::Missing("occurred_at"))?;
    if occurred_at < EARLIEST_EVENT || occurred_at > now.plus_hours(24) {
        return Err(DecodeError::ImplausibleTime(occurred_at));
    }
    if env.tenant_id.is_empty() || env.event_id.is_empty() {
        return Err(DecodeError::Missing("tenant_id or event_id"));
    }
    let (number, user, kind) = match &env.payload {
        // Notices the network writes on the user's behalf (e.g. "changed their number") are
        // not the user writing: they open no window.
        Some(Payload::InboundMessage(m)) if m.message_type == "system" => return Ok(None),
        Some(Payload::InboundMessage(m)) => (
            &m.phone_number_id,
            m.user.as_ref(),
            EventKind::UserMessage {
                message_id: m.message_id.clone(),
                referral: m.referral.is_some(),
            },
        ),
        Some(Payload::UserPreference(p)) if p.category == MARKETING => (
            &p.phone_number_id,
            p.user.as_ref(),
            EventKind::MarketingPreference { stop: p.stop },
        ),
        Some(Payload::UserBlock(b)) => (
            &b.phone_number_id,
            b.user.as_ref(),
            EventKind::Block { blocked: b.blocked },
        ),
        // A business reply that starts a free entry point (dispatch tells, on the user topic):
        // the only outbound fact that changes a window.
        Some(Payload::FepReply(f)) => {
            let user = UserKey::from_parts(&f.to, "")?;
            if f.phone_number_id.is_empty() {
                return Err(DecodeError::Missing("phone_number_id"));
            }
            return Ok(Some(WindowEvent {
                key: PairKey {
                    tenant_id: env.tenant_id.clone(),
                    phone_number_id: f.phone_number_id.clone(),
                    user: user.as_str().to_owned(),
                },
                event_id: env.event_id.clone(),
                occurred_at,
                kind: EventKind::BusinessReply {
                    message_id: f.message_id.clone(),
                },
            }));
        }
        _ => return Ok(None),
    };
    let user = user.ok_or(DecodeError::Missing("user"))?;
    let user = UserKey::from_parts(&user.wa_id, &user.user_id)?;
    if number.is_empty() {
        return Err(DecodeError::Missing("phone_number_id"));
    }
    Ok(Some(WindowEvent {
        key: PairKey {
            tenant_id: env.tenant_id.clone(),
            phone_number_id: number.clone(),
            user: user.as_str().to_owned(),
        },
        event_id: env.event_id.clone(),
        occurred_at,
        kind,
    }))
}

/// Applies an event to a state at `now`; returns what a user message did to the window.
pub fn apply(
    state: &mut WindowState,
    e: &WindowEvent,
    now: Timestamp,
) -> Option<finestra_domain::WindowChange> {
    match &e.kind {
        EventKind::UserMessage {
            message_id,
            referral,
        } => state.on_user_message(e.occurred_at, message_id, *referral, now),
        EventKind::MarketingPreference { stop } => {
            state.on_marketing_preference(e.occurred_at, *stop);
            None
        }
        EventKind::Block { blocked } => {
            state.on_block(e.occurred_at, *blocked);
            None
        }
        EventKind::BusinessReply { .. } => {
            state.on_business_reply(e.occurred_at);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_proto::time::from_micros;
    use finestra_proto::v1::{InboundMessage, UserRef};

    const NOW: Timestamp = Timestamp::from_secs(1_764_000_000);

    fn envelope(at: Timestamp, message_type: &str) -> Envelope {
        Envelope {
            event_id: "in:wamid.1".into(),
            tenant_id: "t1".into(),
            occurred_at: Some(from_micros(at.micros())),
            recorded_at: None,
            payload: Some(Payload::InboundMessage(InboundMessage {
                phone_number_id: "pn1".into(),
                user: Some(UserRef {
                    wa_id: "393331234567".into(),
                    ..Default::default()
                }),
                message_id: "wamid.1".into(),
                message_type: message_type.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_user_message_becomes_a_window_event() {
        let e = decode(&envelope(NOW, "text"), NOW)
            .expect("valid")
            .expect("relevant");
        assert_eq!(e.key.user, "393331234567");
        assert_eq!(
            e.kind,
            EventKind::UserMessage {
                message_id: "wamid.1".into(),
                referral: false
            }
        );
    }

    #[test]
    fn a_reply_that_starts_an_fep_is_an_event_and_outbound_messages_are_not() {
        use finestra_proto::v1::{FepReply, OutboundMessage};
        let mut env = envelope(NOW, "text");
        env.event_id = "out:m_1".into();
        env.payload = Some(Payload::FepReply(FepReply {
            message_id: "m_1".into(),
            phone_number_id: "pn1".into(),
            to: "393331234567".into(),
            replied_at: Some(from_micros(NOW.micros())),
        }));
        let e = decode(&env, NOW).expect("valid").expect("relevant");
        assert_eq!(
            e.kind,
            EventKind::BusinessReply {
                message_id: "m_1".into()
            }
        );
        let mut s = WindowState::default();
        s.on_user_message(NOW.plus_hours(-1), "wamid.r", true, NOW);
        apply(&mut s, &e, NOW);
        assert_eq!(s.fep_until, Some(NOW.plus_hours(72)));
        env.payload = Some(Payload::OutboundMessage(OutboundMessage {
            message_id: "m_1".into(),
            phone_number_id: "pn1".into(),
            to: "393331234567".into(),
            starts_fep: true,
            ..Default::default()
        }));
        assert_eq!(decode(&env, NOW), Ok(None));
    }

    #[test]
    fn system_notices_open_no_window() {
        assert_eq!(decode(&envelope(NOW, "system"), NOW), Ok(None));
    }

    #[test]
    fn times_no_store_can_hold_are_refused() {
        let far = Timestamp::from_secs(1_764_000_000_000);
        assert_eq!(
            decode(&envelope(far, "text"), NOW),
            Err(DecodeError::ImplausibleTime(far))
        );
        let zero = Timestamp::from_secs(0);
        assert!(decode(&envelope(zero, "text"), NOW).is_err());
        assert!(
            decode(&envelope(Timestamp::from_secs(1_300_000_000), "text"), NOW).is_ok(),
            "old replays apply"
        );
    }
}
