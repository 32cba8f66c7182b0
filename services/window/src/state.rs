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
    UserMessage { message_id: String, referral: bool },
    MarketingPreference { stop: bool },
    Block { blocked: bool },
}

impl EventKind {
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::UserMessage { .. } => "user_message",
            EventKind::MarketingPreference { .. } => "marketing_preference",
            EventKind::Block { .. } => "block",
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
}

/// Only marketing preferences change the window's opt-out; other categories are not tracked.
const MARKETING: &str = "marketing_messages";

/// The window-relevant event of an envelope; `Ok(None)` for envelopes this service ignores.
pub fn decode(env: &Envelope) -> Result<Option<WindowEvent>, DecodeError> {
    let occurred_at = env
        .occurred_at
        .as_ref()
        .map(|t| Timestamp::from_micros(to_micros(t)))
        .ok_or(DecodeError::Missing("occurred_at"))?;
    if env.tenant_id.is_empty() || env.event_id.is_empty() {
        return Err(DecodeError::Missing("tenant_id or event_id"));
    }
    let (number, user, kind) = match &env.payload {
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

/// Applies an event to a state; returns what a user message did to the window.
pub fn apply(state: &mut WindowState, e: &WindowEvent) -> Option<finestra_domain::WindowChange> {
    match &e.kind {
        EventKind::UserMessage {
            message_id,
            referral,
        } => state.on_user_message(e.occurred_at, message_id, *referral),
        EventKind::MarketingPreference { stop } => {
            state.on_marketing_preference(e.occurred_at, *stop);
            None
        }
        EventKind::Block { blocked } => {
            state.on_block(e.occurred_at, *blocked);
            None
        }
    }
}
