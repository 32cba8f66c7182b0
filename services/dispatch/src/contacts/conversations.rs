//! Conversations for customer care (docs/rules.md §11): a number's users by their newest
//! message, and one user's messages in both directions. Outbound messages are dispatch's
//! `messages`, inbound ones the tenant event log's `inbound_message` events (found by their
//! pair), the window the window service's read model.

use finestra_domain::Timestamp;
use finestra_proto::v1::{self, Envelope};
use prost::Message as _;
use sqlx::PgPool;

/// A customer-service window's length (docs/rules.md §1): the domain's, in microseconds.
pub const WINDOW_MICROS: i64 = finestra_domain::window::CSW_HOURS * Timestamp::HOUR;

/// One row of ListConversations.
pub struct SummaryRow {
    pub user_key: String,
    pub last_inbound_at: i64,
    pub profile_name: String,
    pub answered: bool,
}

/// Which conversations a list keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Only {
    pub open_window: bool,
    pub needs_reply: bool,
    /// Windows closing by this time (and still open).
    pub closing_by: Option<i64>,
}

/// A number's conversations, newest message first, after the cursor (`before_at`,
/// `before_user`).
pub async fn list(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    only: Only,
    now: Timestamp,
    before: (i64, &str),
    limit: i64,
) -> Result<Vec<SummaryRow>, sqlx::Error> {
    let opened_after = now.micros() - WINDOW_MICROS;
    // A window closing by T had its newest message by T - 24 h.
    let closing_last_by = only.closing_by.map(|by| by - WINDOW_MICROS);
    sqlx::query_as!(
        SummaryRow,
        r#"SELECT c.user_key, c.last_inbound_at, COALESCE(ct.profile_name, '') AS "profile_name!",
                  EXISTS (SELECT 1 FROM dispatch.messages m
                           WHERE m.tenant_id = c.tenant_id AND m.phone_number_id = c.phone_number_id
                             AND m.recipient = c.user_key AND m.accepted_at >= c.last_inbound_at
                             AND m.status <> 'FAILED') AS "answered!"
             FROM dispatch.conversations c
             LEFT JOIN dispatch.contacts ct
               ON ct.tenant_id = c.tenant_id AND ct.user_key = c.user_key
            WHERE c.tenant_id = $1 AND c.phone_number_id = $2
              AND (c.last_inbound_at, c.user_key) < ($3, $4::text COLLATE "C")
              AND (NOT $5 OR c.last_inbound_at > $6)
              AND ($7::int8 IS NULL OR (c.last_inbound_at > $6 AND c.last_inbound_at <= $7))
              AND (NOT $8 OR NOT EXISTS (
                       SELECT 1 FROM dispatch.messages m
                        WHERE m.tenant_id = c.tenant_id AND m.phone_number_id = c.phone_number_id
                          AND m.recipient = c.user_key AND m.accepted_at >= c.last_inbound_at
                          AND m.status <> 'FAILED'))
            ORDER BY c.last_inbound_at DESC, c.user_key DESC
            LIMIT $9"#,
        tenant_id,
        phone_number_id,
        before.0,
        before.1,
        only.open_window,
        opened_after,
        closing_last_by,
        only.needs_reply,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Where a page of one conversation starts: messages strictly older than (at, key), where an
/// outbound key is `o<message id>` and an inbound one `i<seq>` (zero-padded).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub at: i64,
    pub key: String,
}

impl Position {
    pub const NEWEST: Position = Position {
        at: i64::MAX,
        key: String::new(),
    };

    pub fn encode(&self) -> String {
        format!("{}/{}", self.at, self.key)
    }

    pub fn decode(cursor: &str) -> Option<Self> {
        if cursor.is_empty() {
            return Some(Self::NEWEST);
        }
        let (at, key) = cursor.split_once('/')?;
        Some(Self {
            at: at.parse().ok()?,
            key: key.to_owned(),
        })
    }
}

/// One message of a conversation, with its position.
pub struct Item {
    pub position: Position,
    pub message: v1::ConversationMessage,
}

struct OutRow {
    message_id: String,
    kind: String,
    template_name: String,
    status: String,
    failure_reason: String,
    body: String,
    accepted_at: i64,
}

struct InRow {
    seq: i64,
    occurred_at: i64,
    envelope: Vec<u8>,
}

/// Up to `limit` messages of the pair older than `before`, newest first.
pub async fn messages(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    user_key: &str,
    before: &Position,
    limit: i64,
) -> Result<Vec<Item>, sqlx::Error> {
    // Keys compare as bytes ('i' < 'o'): the same order as in Rust.
    let outbound = sqlx::query_as!(
        OutRow,
        r#"SELECT message_id, kind, template_name, status, failure_reason, body, accepted_at
             FROM dispatch.messages
            WHERE tenant_id = $1 AND phone_number_id = $2 AND recipient = $3
              AND (accepted_at, ('o' || message_id) COLLATE "C") < ($4, $5::text COLLATE "C")
            ORDER BY accepted_at DESC, message_id DESC LIMIT $6"#,
        tenant_id,
        phone_number_id,
        user_key,
        before.at,
        before.key,
        limit
    )
    .fetch_all(pool)
    .await?;
    let inbound = sqlx::query_as!(
        InRow,
        r#"SELECT seq, occurred_at, envelope FROM dispatch.tenant_events
            WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3
              AND kind = 'inbound_message'
              AND (occurred_at, ('i' || lpad(seq::text, 20, '0')) COLLATE "C")
                  < ($4, $5::text COLLATE "C")
            ORDER BY occurred_at DESC, seq DESC LIMIT $6"#,
        tenant_id,
        phone_number_id,
        user_key,
        before.at,
        before.key,
        limit
    )
    .fetch_all(pool)
    .await?;
    let mut items: Vec<Item> = Vec::with_capacity(outbound.len() + inbound.len());
    for o in outbound {
        items.push(Item {
            position: Position {
                at: o.accepted_at,
                key: format!("o{}", o.message_id),
            },
            message: v1::ConversationMessage {
                direction: v1::conversation_message::Direction::Outbound as i32,
                message_id: o.message_id,
                at: Some(finestra_proto::time::from_micros(o.accepted_at)),
                kind: o.kind,
                text: String::new(),
                body_json: o.body,
                template_name: o.template_name,
                status: o.status,
                failure_reason: o.failure_reason,
            },
        });
    }
    for i in inbound {
        let Ok(env) = Envelope::decode(i.envelope.as_slice()) else {
            continue;
        };
        let Some(v1::envelope::Payload::InboundMessage(m)) = env.payload else {
            continue;
        };
        items.push(Item {
            position: Position {
                at: i.occurred_at,
                key: format!("i{:020}", i.seq),
            },
            message: v1::ConversationMessage {
                direction: v1::conversation_message::Direction::Inbound as i32,
                message_id: m.message_id,
                at: Some(finestra_proto::time::from_micros(i.occurred_at)),
                kind: m.message_type,
                text: m.text,
                body_json: String::from_utf8_lossy(&m.raw_json).into_owned(),
                template_name: String::new(),
                status: "RECEIVED".to_owned(),
                failure_reason: String::new(),
            },
        });
    }
    items.sort_by(|a, b| b.position.cmp(&a.position));
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_outbound_after_inbound_at_one_time() {
        let p = Position {
            at: 42,
            key: "omsg_1".into(),
        };
        assert_eq!(Position::decode(&p.encode()), Some(p.clone()));
        assert_eq!(Position::decode(""), Some(Position::NEWEST));
        assert_eq!(Position::decode("x"), None);
        let inbound = Position {
            at: 42,
            key: format!("i{:020}", 7),
        };
        assert!(inbound < p);
        assert!(p < Position::NEWEST);
    }
}
