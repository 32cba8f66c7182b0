//! Turns provider payloads into Finestra events. Pure: no I/O, so every mapping rule and
//! every event id derivation is unit-tested.

use std::collections::HashMap;

use finestra_domain::{Timestamp, UserKey, is_plausible_event_time};
use finestra_proto::v1::{self, envelope::Payload};

use finestra_cloudapi::webhook;

/// Which topic an event goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Inbound,
    Status,
    User,
    /// Provider account events (template reviews).
    Provider,
}

/// An event before the tenant is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub stream: Stream,
    pub phone_number_id: String,
    /// Keys the record; `None` for number-level events (provider errors).
    pub user: Option<UserKey>,
    pub event_id: String,
    /// The provider's time of the fact; `None` where the provider gives none (errors), and
    /// the recording time stands in.
    pub occurred_at: Option<Timestamp>,
    pub payload: Payload,
}

/// An item of a payload that could not become an event. The provider would retry a refused
/// POST forever, so such items are counted and logged, never fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Mapped {
    pub drafts: Vec<Draft>,
    pub skipped: Vec<Skipped>,
}

impl Mapped {
    fn skip(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.skipped.push(Skipped {
            reason,
            detail: detail.into(),
        });
    }
}

pub fn inbound_event_id(message_id: &str) -> String {
    format!("in:{message_id}")
}

pub fn status_event_id(message_id: &str, status: &str) -> String {
    format!("st:{message_id}:{status}")
}

pub fn preference_event_id(
    phone_number_id: &str,
    user: &UserKey,
    category: &str,
    stop: bool,
    at: Timestamp,
) -> String {
    let value = if stop { "stop" } else { "resume" };
    format!(
        "up:{phone_number_id}:{user}:{category}:{value}:{}",
        at.micros()
    )
}

pub fn block_event_id(
    phone_number_id: &str,
    user: &UserKey,
    blocked: bool,
    at: Timestamp,
) -> String {
    let value = if blocked { "block" } else { "unblock" };
    format!("ub:{phone_number_id}:{user}:{value}:{}", at.micros())
}

/// Provider errors carry no id: the id is a digest of what identifies the error, so a
/// re-delivered webhook yields the same id.
pub fn provider_error_event_id(phone_number_id: &str, error: &v1::StatusError) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(phone_number_id)
        .chain_update([0])
        .chain_update(error.code.to_be_bytes())
        .chain_update(&error.title)
        .chain_update([0])
        .chain_update(&error.message)
        .chain_update([0])
        .chain_update(&error.details)
        .finalize();
    format!("pe:{phone_number_id}:{}", hex::encode(&digest[..12]))
}

fn status_error(e: &webhook::ErrorObject) -> v1::StatusError {
    v1::StatusError {
        code: e.code,
        title: e.title.clone(),
        message: e.message.clone(),
        details: e
            .error_data
            .as_ref()
            .map(|d| d.details.clone())
            .unwrap_or_default(),
    }
}

fn user_ref(user: &UserKey, wa_id: &str, user_id: &str, profile_name: &str) -> v1::UserRef {
    let wa_id = wa_id.trim().trim_start_matches('+');
    v1::UserRef {
        wa_id: if wa_id.is_empty() {
            String::new()
        } else {
            user.as_str().to_owned()
        },
        user_id: user_id.to_owned(),
        profile_name: profile_name.to_owned(),
    }
}

/// Maps the `value` of a `messages` change: user messages (and the marketing stop or resume
/// of a message that is only one of the tenant's opt-out `keywords`), statuses and errors.
/// Items whose provider timestamp is not plausible at `now` are skipped.
pub fn map_messages(
    value: &webhook::Value,
    now: Timestamp,
    keywords: &finestra_domain::opt_out::Keywords,
) -> Mapped {
    let mut out = Mapped::default();
    let number = &value.metadata.phone_number_id;
    let names: HashMap<&str, &str> = value
        .contacts
        .iter()
        .flat_map(|c| {
            let name = c
                .profile
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or_default();
            [(c.wa_id.as_str(), name), (c.user_id.as_str(), name)]
        })
        .filter(|(k, _)| !k.is_empty())
        .collect();

    for raw in &value.messages {
        let m: webhook::Message = match serde_json::from_str(raw.get()) {
            Ok(m) => m,
            Err(e) => {
                out.skip("malformed_message", e.to_string());
                continue;
            }
        };
        let user = match UserKey::from_parts(&m.from, &m.from_user_id) {
            Ok(u) => u,
            Err(e) => {
                out.skip("bad_user", format!("{}: {e}", m.id));
                continue;
            }
        };
        if m.id.is_empty() {
            out.skip("missing_id", "message without id");
            continue;
        }
        let sent_at = Timestamp::from_secs(m.timestamp);
        if !is_plausible_event_time(sent_at, now) {
            out.skip(
                "implausible_timestamp",
                format!("{}: {}", m.id, m.timestamp),
            );
            continue;
        }
        let name = names
            .get(m.from.as_str())
            .or_else(|| names.get(m.from_user_id.as_str()))
            .copied()
            .unwrap_or_default();
        let text = m
            .text
            .as_ref()
            .map(|t| t.body.clone())
            .or_else(|| m.media().map(|x| x.caption.clone()))
            .unwrap_or_default();
        let media = m
            .media()
            .filter(|x| !x.id.is_empty())
            .map(|x| v1::InboundMedia {
                media_id: x.id.clone(),
                content_type: x.mime_type.clone(),
                sha256: x.sha256.clone(),
                filename: x.filename.clone(),
            });
        let payload = Payload::InboundMessage(v1::InboundMessage {
            phone_number_id: number.clone(),
            display_phone_number: value.metadata.display_phone_number.clone(),
            user: Some(user_ref(&user, &m.from, &m.from_user_id, name)),
            message_id: m.id.clone(),
            message_type: m.kind.clone(),
            text,
            referral: m.referral.map(|r| v1::Referral {
                source_url: r.source_url,
                source_id: r.source_id,
                source_type: r.source_type,
                headline: r.headline,
                body: r.body,
                media_type: r.media_type,
                ctwa_clid: r.ctwa_clid,
            }),
            raw_json: raw.get().as_bytes().to_vec(),
            context_message_id: m.context.map(|c| c.id).unwrap_or_default(),
            media,
        });
        // A text that is only an opt-out keyword is also a marketing stop (or, START, a
        // resume), as the network's own preference webhook is (docs/rules.md §3).
        let keyword = m
            .text
            .as_ref()
            .filter(|_| m.kind == "text")
            .and_then(|t| keywords.keyword_of(&t.body));
        if let Some(keyword) = keyword {
            let stop = keyword == finestra_domain::opt_out::Keyword::Stop;
            let said = m.text.as_ref().map(|t| t.body.trim()).unwrap_or_default();
            out.drafts.push(Draft {
                stream: Stream::User,
                phone_number_id: number.clone(),
                event_id: format!("kw:{}", m.id),
                occurred_at: Some(sent_at),
                payload: Payload::UserPreference(v1::UserPreference {
                    phone_number_id: number.clone(),
                    user: Some(user_ref(&user, &m.from, &m.from_user_id, name)),
                    category: MARKETING_MESSAGES.into(),
                    stop,
                    detail: format!("the user wrote {said:?}"),
                }),
                user: Some(user.clone()),
            });
        }
        out.drafts.push(Draft {
            stream: Stream::Inbound,
            phone_number_id: number.clone(),
            user: Some(user),
            event_id: inbound_event_id(&m.id),
            occurred_at: Some(sent_at),
            payload,
        });
    }

    for raw in &value.statuses {
        let s: webhook::Status = match serde_json::from_str(raw.get()) {
            Ok(s) => s,
            Err(e) => {
                out.skip("malformed_status", e.to_string());
                continue;
            }
        };
        let user = match UserKey::from_parts(&s.recipient_id, &s.recipient_user_id) {
            Ok(u) => u,
            Err(e) => {
                out.skip("bad_user", format!("{}: {e}", s.id));
                continue;
            }
        };
        if s.id.is_empty() || s.status.is_empty() {
            out.skip("missing_id", "status without id or status");
            continue;
        }
        let at = Timestamp::from_secs(s.timestamp);
        if !is_plausible_event_time(at, now) {
            out.skip(
                "implausible_timestamp",
                format!("{}: {}", s.id, s.timestamp),
            );
            continue;
        }
        let payload = Payload::MessageStatus(v1::MessageStatus {
            phone_number_id: number.clone(),
            message_id: s.id.clone(),
            status: s.status.clone(),
            recipient: Some(user_ref(&user, &s.recipient_id, &s.recipient_user_id, "")),
            errors: s.errors.iter().map(status_error).collect(),
            conversation_id: s.conversation.map(|c| c.id).unwrap_or_default(),
            pricing_category: s
                .pricing
                .as_ref()
                .map(|p| p.category.clone())
                .unwrap_or_default(),
            billable: s.pricing.is_some_and(|p| p.billable),
            raw_json: raw.get().as_bytes().to_vec(),
            callback_data: s.biz_opaque_callback_data,
        });
        out.drafts.push(Draft {
            stream: Stream::Status,
            phone_number_id: number.clone(),
            user: Some(user),
            event_id: status_event_id(&s.id, &s.status),
            occurred_at: Some(at),
            payload,
        });
    }

    for e in &value.errors {
        let error = status_error(e);
        out.drafts.push(Draft {
            stream: Stream::Status,
            phone_number_id: number.clone(),
            user: None,
            event_id: provider_error_event_id(number, &error),
            occurred_at: None,
            payload: Payload::ProviderError(v1::ProviderError {
                phone_number_id: number.clone(),
                error: Some(error),
            }),
        });
    }
    out
}

/// The preference category of marketing messages, as the network names it.
const MARKETING_MESSAGES: &str = "marketing_messages";

/// Maps the `value` of a `user_preferences` change: marketing stop / resume.
pub fn map_user_preferences(value: &webhook::Value, now: Timestamp) -> Mapped {
    let mut out = Mapped::default();
    let number = &value.metadata.phone_number_id;
    for raw in &value.user_preferences {
        let p: webhook::UserPreference = match serde_json::from_str(raw.get()) {
            Ok(p) => p,
            Err(e) => {
                out.skip("malformed_preference", e.to_string());
                continue;
            }
        };
        let user = match UserKey::from_parts(&p.wa_id, &p.user_id) {
            Ok(u) => u,
            Err(e) => {
                out.skip("bad_user", e.to_string());
                continue;
            }
        };
        let stop = match p.value.as_str() {
            "stop" => true,
            "resume" => false,
            other => {
                out.skip("unknown_preference", other.to_owned());
                continue;
            }
        };
        let at = Timestamp::from_secs(p.timestamp);
        if !is_plausible_event_time(at, now) {
            out.skip(
                "implausible_timestamp",
                format!("preference of {user}: {}", p.timestamp),
            );
            continue;
        }
        out.drafts.push(Draft {
            stream: Stream::User,
            phone_number_id: number.clone(),
            event_id: preference_event_id(number, &user, &p.category, stop, at),
            occurred_at: Some(at),
            payload: Payload::UserPreference(v1::UserPreference {
                phone_number_id: number.clone(),
                user: Some(user_ref(&user, &p.wa_id, &p.user_id, "")),
                category: p.category.clone(),
                stop,
                detail: p.detail.clone(),
            }),
            user: Some(user),
        });
    }
    out
}

/// Maps a template webhook of business account `waba_id` sent at `time` (Unix seconds).
/// `field` is `message_template_status_update` or `template_category_update`.
pub fn map_template_change(
    waba_id: &str,
    time: i64,
    field: &str,
    value: &str,
    now: Timestamp,
) -> Mapped {
    let mut out = Mapped::default();
    let at = Timestamp::from_secs(time);
    if !is_plausible_event_time(at, now) {
        out.skip(
            "implausible_timestamp",
            format!("template change of {waba_id}: {time}"),
        );
        return out;
    }
    let reviewed = match field {
        "message_template_status_update" => {
            serde_json::from_str::<webhook::TemplateStatusUpdate>(value).map(|v| {
                v1::TemplateReviewed {
                    waba_id: waba_id.to_owned(),
                    provider_template_id: v.message_template_id,
                    name: v.message_template_name,
                    language: v.message_template_language,
                    event: v.event.to_ascii_uppercase(),
                    reason: v.reason.unwrap_or_default(),
                    new_category: String::new(),
                }
            })
        }
        _ => serde_json::from_str::<webhook::TemplateCategoryUpdate>(value).map(|v| {
            v1::TemplateReviewed {
                waba_id: waba_id.to_owned(),
                provider_template_id: v.message_template_id,
                name: v.message_template_name,
                language: v.message_template_language,
                event: "RECATEGORISED".into(),
                reason: format!("was {}", v.previous_category),
                new_category: v.new_category.to_ascii_uppercase(),
            }
        }),
    };
    match reviewed {
        Ok(r) => out.drafts.push(Draft {
            stream: Stream::Provider,
            // Keys the record: one template's reviews stay in order on one partition.
            phone_number_id: waba_id.to_owned(),
            user: None,
            event_id: format!(
                "tpl:{waba_id}:{}:{}:{}:{}:{time}",
                r.name, r.language, r.event, r.new_category
            ),
            occurred_at: Some(at),
            payload: Payload::TemplateReviewed(r),
        }),
        Err(e) => out.skip("malformed_template_change", e.to_string()),
    }
    out
}

/// The business-account changes that tell of its health.
pub fn is_health_field(field: &str) -> bool {
    matches!(
        field,
        "phone_number_quality_update"
            | "account_update"
            | "message_template_quality_update"
            | "business_capability_update"
    )
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Maps a health change of business account `waba_id` (its numbers `numbers`) sent at `time`
/// (Unix seconds) to a `HealthChanged` event on the provider stream.
pub fn map_health_change(
    waba_id: &str,
    time: i64,
    field: &str,
    value: &str,
    numbers: &[finestra_registry::Number],
    now: Timestamp,
) -> Mapped {
    use finestra_domain::health;
    use v1::health_changed::Kind;
    let mut out = Mapped::default();
    let at = Timestamp::from_secs(time);
    if !is_plausible_event_time(at, now) {
        out.skip(
            "implausible_timestamp",
            format!("{field} of {waba_id}: {time}"),
        );
        return out;
    }
    let base = v1::HealthChanged {
        waba_id: waba_id.to_owned(),
        ..Default::default()
    };
    let changed: Result<v1::HealthChanged, String> = match field {
        "phone_number_quality_update" => {
            serde_json::from_str::<webhook::NumberQualityUpdate>(value)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let display = digits(&v.display_phone_number);
                    let number = numbers
                        .iter()
                        .find(|n| digits(&n.display_phone_number) == display)
                        .ok_or_else(|| {
                            format!("no number {} in {waba_id}", v.display_phone_number)
                        })?;
                    Ok(v1::HealthChanged {
                        kind: Kind::NumberQuality.into(),
                        phone_number_id: number.phone_number_id.clone(),
                        quality: health::rating_after(&v.event)
                            .unwrap_or_default()
                            .to_owned(),
                        event: v.event.to_ascii_uppercase(),
                        messaging_limit: v.current_limit.unwrap_or_default().to_ascii_uppercase(),
                        detail: v
                            .old_limit
                            .map(|old| serde_json::json!({ "old_limit": old }).to_string())
                            .unwrap_or_default(),
                        ..base
                    })
                })
        }
        "account_update" => serde_json::from_str::<webhook::AccountUpdate>(value)
            .map_err(|e| e.to_string())
            .map(|v| v1::HealthChanged {
                kind: Kind::Account.into(),
                event: v.event.to_ascii_uppercase(),
                detail: v
                    .ban_info
                    .or(v.restriction_info)
                    .or(v.violation_info)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                ..base
            }),
        "message_template_quality_update" => {
            serde_json::from_str::<webhook::TemplateQualityUpdate>(value)
                .map_err(|e| e.to_string())
                .map(|v| v1::HealthChanged {
                    kind: Kind::TemplateQuality.into(),
                    quality: v.new_quality_score.to_ascii_uppercase(),
                    previous_quality: v.previous_quality_score.to_ascii_uppercase(),
                    provider_template_id: v.message_template_id,
                    template_name: v.message_template_name,
                    template_language: v.message_template_language,
                    ..base
                })
        }
        _ => serde_json::from_str::<webhook::CapabilityUpdate>(value)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                let limit = v
                    .max_daily_conversations_per_business
                    .map(|l| l.to_ascii_uppercase())
                    .or(v
                        .max_daily_conversation_per_phone_number
                        .map(|n| health::limit_of_daily(n).to_owned()))
                    .ok_or("no messaging limit in the capability update")?;
                Ok(v1::HealthChanged {
                    kind: Kind::Capability.into(),
                    event: "CAPABILITY_UPDATE".into(),
                    messaging_limit: limit,
                    ..base
                })
            }),
    };
    match changed {
        Ok(h) => out.drafts.push(Draft {
            stream: Stream::Provider,
            // Keys the record: one business account's health stays in order on one partition.
            phone_number_id: waba_id.to_owned(),
            user: None,
            event_id: format!(
                "health:{waba_id}:{field}:{}{}:{}:{}:{}:{time}",
                h.phone_number_id, h.provider_template_id, h.event, h.quality, h.messaging_limit
            ),
            occurred_at: Some(at),
            payload: Payload::HealthChanged(h),
        }),
        Err(e) => out.skip("malformed_health_change", e),
    }
    out
}

/// Why an `IngestInbound` item was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ItemError {
    #[error("item {index}: {field} is required")]
    Missing { index: usize, field: &'static str },
    #[error("item {index}: {reason}")]
    BadUser { index: usize, reason: String },
    #[error("item {index}: the timestamp is more than 30 days old or in the future")]
    ImplausibleTime { index: usize },
}

fn item_user(index: usize, user: Option<&v1::UserRef>) -> Result<UserKey, ItemError> {
    let user = user.ok_or(ItemError::Missing {
        index,
        field: "user",
    })?;
    UserKey::from_parts(&user.wa_id, &user.user_id).map_err(|e| ItemError::BadUser {
        index,
        reason: e.to_string(),
    })
}

fn normalised_ref(user: &UserKey, given: Option<v1::UserRef>) -> Option<v1::UserRef> {
    given.map(|u| user_ref(user, &u.wa_id, &u.user_id, &u.profile_name))
}

/// Maps one `IngestInbound` item of `phone_number_id`, with the same event ids as the webhook
/// path so a message reported both ways is one event.
pub fn map_item(
    phone_number_id: &str,
    index: usize,
    item: v1::InboundItem,
    now: Timestamp,
) -> Result<Draft, ItemError> {
    use v1::inbound_item::Item;
    // Whole seconds, like the webhook's timestamps: the history is keyed by (event id, time),
    // so one message reported both ways must carry the same time. Blocks come only this way,
    // and keep the source's microseconds: a block and an unblock within one second are
    // ordered by when they happened (at a whole-second tie "blocked" would win for good).
    let exact = item
        .timestamp
        .as_ref()
        .map(finestra_proto::time::to_micros)
        .ok_or(ItemError::Missing {
            index,
            field: "timestamp",
        })?;
    let at = Timestamp::from_secs(exact.div_euclid(1_000_000));
    if !is_plausible_event_time(at, now) {
        return Err(ItemError::ImplausibleTime { index });
    }
    let number = phone_number_id.to_owned();
    match item.item.ok_or(ItemError::Missing {
        index,
        field: "item",
    })? {
        Item::Message(mut m) => {
            let user = item_user(index, m.user.as_ref())?;
            if m.message_id.is_empty() {
                return Err(ItemError::Missing {
                    index,
                    field: "message.message_id",
                });
            }
            m.phone_number_id = number.clone();
            m.user = normalised_ref(&user, m.user.take());
            Ok(Draft {
                stream: Stream::Inbound,
                event_id: inbound_event_id(&m.message_id),
                phone_number_id: number,
                user: Some(user),
                occurred_at: Some(at),
                payload: Payload::InboundMessage(m),
            })
        }
        Item::Status(mut s) => {
            let user = item_user(index, s.recipient.as_ref())?;
            if s.message_id.is_empty() || s.status.is_empty() {
                return Err(ItemError::Missing {
                    index,
                    field: "status.message_id and status.status",
                });
            }
            s.phone_number_id = number.clone();
            s.recipient = normalised_ref(&user, s.recipient.take());
            Ok(Draft {
                stream: Stream::Status,
                event_id: status_event_id(&s.message_id, &s.status),
                phone_number_id: number,
                user: Some(user),
                occurred_at: Some(at),
                payload: Payload::MessageStatus(s),
            })
        }
        Item::Preference(mut p) => {
            let user = item_user(index, p.user.as_ref())?;
            if p.category.is_empty() {
                p.category = "marketing_messages".to_owned();
            }
            p.phone_number_id = number.clone();
            p.user = normalised_ref(&user, p.user.take());
            Ok(Draft {
                stream: Stream::User,
                event_id: preference_event_id(&number, &user, &p.category, p.stop, at),
                phone_number_id: number,
                user: Some(user),
                occurred_at: Some(at),
                payload: Payload::UserPreference(p),
            })
        }
        Item::Block(mut b) => {
            let user = item_user(index, b.user.as_ref())?;
            b.phone_number_id = number.clone();
            b.user = normalised_ref(&user, b.user.take());
            Ok(Draft {
                stream: Stream::User,
                event_id: block_event_id(&number, &user, b.blocked, Timestamp::from_micros(exact)),
                phone_number_id: number,
                user: Some(user),
                occurred_at: Some(Timestamp::from_micros(exact)),
                payload: Payload::UserBlock(b),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test payloads carry timestamps around 2023-11 (1_700_000_000) and 2024-11.
    const NOW: Timestamp = Timestamp::from_secs(1_700_000_100);

    fn value(json: &str) -> webhook::Value {
        serde_json::from_str(json).expect("test payload parses")
    }

    #[test]
    fn maps_a_text_message_with_its_contact_name_and_time() {
        let v = value(
            r#"{"messaging_product":"whatsapp",
                "metadata":{"display_phone_number":"15550001111","phone_number_id":"PN1"},
                "contacts":[{"profile":{"name":"Kerry"},"wa_id":"16315551181"}],
                "messages":[{"from":"16315551181","id":"wamid.A","timestamp":"1700000000",
                             "type":"text","text":{"body":"Hello"}}]}"#,
        );
        let m = map_messages(&v, NOW, &Default::default());
        assert!(m.skipped.is_empty());
        let [d] = m.drafts.as_slice() else {
            panic!("one draft expected")
        };
        assert_eq!(d.event_id, "in:wamid.A");
        assert_eq!(d.stream, Stream::Inbound);
        assert_eq!(d.occurred_at, Some(Timestamp::from_secs(1_700_000_000)));
        let Payload::InboundMessage(msg) = &d.payload else {
            panic!("inbound expected")
        };
        assert_eq!(msg.text, "Hello");
        assert_eq!(
            msg.user.as_ref().map(|u| u.profile_name.as_str()),
            Some("Kerry")
        );
        assert!(msg.referral.is_none());
        assert!(std::str::from_utf8(&msg.raw_json).is_ok_and(|s| s.contains("wamid.A")));
    }

    #[test]
    fn maps_a_referral_and_a_business_scoped_user() {
        let v = value(
            r#"{"metadata":{"phone_number_id":"PN1"},
                "contacts":[{"profile":{"name":"Ann"},"user_id":"US.123"}],
                "messages":[{"from":"","from_user_id":"US.123","id":"wamid.R","timestamp":"1700000000",
                  "type":"text","text":{"body":"from the ad"},
                  "referral":{"source_url":"https://fb.me/x","source_type":"ad","source_id":"42",
                              "headline":"Sale","ctwa_clid":"abc"}}]}"#,
        );
        let m = map_messages(&v, NOW, &Default::default());
        let Payload::InboundMessage(msg) = &m.drafts[0].payload else {
            panic!()
        };
        assert_eq!(
            m.drafts[0].user.as_ref().map(UserKey::as_str),
            Some("US.123")
        );
        assert_eq!(
            msg.referral.as_ref().map(|r| r.source_id.as_str()),
            Some("42")
        );
        assert_eq!(
            msg.user.as_ref().map(|u| u.profile_name.as_str()),
            Some("Ann")
        );
    }

    #[test]
    fn statuses_are_keyed_by_message_and_status() {
        let v = value(
            r#"{"metadata":{"phone_number_id":"PN1"},
                "statuses":[{"id":"wamid.S","status":"delivered","timestamp":"1700000001",
                  "recipient_id":"393331234567","pricing":{"billable":true,"category":"marketing"},
                  "biz_opaque_callback_data":"msg_01"},
                  {"id":"wamid.S","status":"failed","timestamp":"1700000002","recipient_id":"393331234567",
                   "errors":[{"code":131047,"title":"Re-engagement message","error_data":{"details":"x"}}]}]}"#,
        );
        let m = map_messages(&v, NOW, &Default::default());
        let ids: Vec<&str> = m.drafts.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, ["st:wamid.S:delivered", "st:wamid.S:failed"]);
        let Payload::MessageStatus(failed) = &m.drafts[1].payload else {
            panic!()
        };
        assert_eq!(failed.errors[0].code, 131047);
        assert_eq!(failed.errors[0].details, "x");
        let Payload::MessageStatus(delivered) = &m.drafts[0].payload else {
            panic!()
        };
        assert!(delivered.billable);
        assert_eq!(delivered.pricing_category, "marketing");
        assert_eq!(
            (
                delivered.callback_data.as_str(),
                failed.callback_data.as_str()
            ),
            ("msg_01", ""),
            "the sender's callback data is echoed; absent stays empty"
        );
    }

    #[test]
    fn provider_errors_get_a_stable_digest_id() {
        let json = r#"{"metadata":{"phone_number_id":"PN1"},
                       "errors":[{"code":131000,"title":"Something went wrong"}]}"#;
        let a = map_messages(&value(json), NOW, &Default::default());
        let b = map_messages(&value(json), NOW, &Default::default());
        assert_eq!(a.drafts[0].event_id, b.drafts[0].event_id);
        assert!(a.drafts[0].event_id.starts_with("pe:PN1:"));
        assert!(a.drafts[0].user.is_none());
    }

    #[test]
    fn bad_items_are_skipped_not_fatal() {
        let v = value(
            r#"{"metadata":{"phone_number_id":"PN1"},
                "messages":[{"from":"","id":"wamid.X","timestamp":"1700000000","type":"text"},
                            {"from":"15551234567","id":"wamid.Y","timestamp":"soon","type":"text"},
                            {"from":"15551234567","id":"wamid.Z","timestamp":"1700000000","type":"image",
                             "image":{"caption":"look"}}]}"#,
        );
        let m = map_messages(&v, NOW, &Default::default());
        assert_eq!(m.drafts.len(), 1);
        let Payload::InboundMessage(msg) = &m.drafts[0].payload else {
            panic!()
        };
        assert_eq!(msg.text, "look");
        let reasons: Vec<&str> = m.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(reasons, ["bad_user", "malformed_message"]);
    }

    #[test]
    fn user_preferences_stop_and_resume() {
        let v = value(
            r#"{"messaging_product":"whatsapp","metadata":{"phone_number_id":"PN1"},
                "contacts":[{"wa_id":"16505551234","profile":{"name":"S"}}],
                "user_preferences":[
                  {"wa_id":"16505551234","detail":"User requested to stop marketing messages",
                   "category":"marketing_messages","value":"stop","timestamp":1700000021},
                  {"wa_id":"16505551234","category":"marketing_messages","value":"resume","timestamp":1700000080},
                  {"wa_id":"16505551234","category":"marketing_messages","value":"maybe","timestamp":1700000080}]}"#,
        );
        let m = map_user_preferences(&v, NOW);
        assert_eq!(m.drafts.len(), 2);
        assert_eq!(m.skipped[0].reason, "unknown_preference");
        let Payload::UserPreference(p) = &m.drafts[0].payload else {
            panic!()
        };
        assert!(p.stop);
        assert_eq!(m.drafts[0].stream, Stream::User);
        assert_eq!(
            m.drafts[0].event_id,
            "up:PN1:16505551234:marketing_messages:stop:1700000021000000"
        );
    }

    #[test]
    fn grpc_items_get_the_same_ids_as_webhooks() {
        let item = v1::InboundItem {
            timestamp: Some(finestra_proto::time::from_micros(1_700_000_000_000_000)),
            item: Some(v1::inbound_item::Item::Message(v1::InboundMessage {
                user: Some(v1::UserRef {
                    wa_id: "+393331234567".into(),
                    ..Default::default()
                }),
                message_id: "wamid.G".into(),
                message_type: "text".into(),
                ..Default::default()
            })),
        };
        let d = map_item("PN1", 0, item, NOW).expect("valid item");
        assert_eq!(d.event_id, inbound_event_id("wamid.G"));
        assert_eq!(d.user.as_ref().map(UserKey::as_str), Some("393331234567"));
        let Payload::InboundMessage(m) = d.payload else {
            panic!()
        };
        assert_eq!(
            m.phone_number_id, "PN1",
            "the request's number is authoritative"
        );
        assert_eq!(m.user.map(|u| u.wa_id), Some("393331234567".into()));
    }

    #[test]
    fn grpc_items_without_user_or_time_are_refused() {
        let no_time = v1::InboundItem {
            timestamp: None,
            item: None,
        };
        assert_eq!(
            map_item("PN1", 3, no_time, NOW),
            Err(ItemError::Missing {
                index: 3,
                field: "timestamp"
            })
        );
        let no_user = v1::InboundItem {
            timestamp: Some(finestra_proto::time::from_micros(1_700_000_000_000_000)),
            item: Some(v1::inbound_item::Item::Block(v1::UserBlock {
                blocked: true,
                ..Default::default()
            })),
        };
        assert_eq!(
            map_item("PN1", 0, no_user, NOW),
            Err(ItemError::Missing {
                index: 0,
                field: "user"
            })
        );
    }

    #[test]
    fn items_with_implausible_timestamps_are_skipped_or_refused() {
        let v = value(
            r#"{"metadata":{"phone_number_id":"PN1"},
                "messages":[{"from":"15551234567","id":"wamid.ms","timestamp":"1700000000000","type":"text"},
                            {"from":"15551234567","id":"wamid.zero","timestamp":"0","type":"text"}],
                "statuses":[{"id":"wamid.S","status":"sent","timestamp":"1600000000","recipient_id":"15551234567"}]}"#,
        );
        let m = map_messages(&v, NOW, &Default::default());
        assert!(m.drafts.is_empty());
        assert!(
            m.skipped
                .iter()
                .all(|s| s.reason == "implausible_timestamp")
        );
        assert_eq!(m.skipped.len(), 3);

        let item = v1::InboundItem {
            timestamp: Some(finestra_proto::time::from_micros(1_700_000_000_000_000_000)),
            item: Some(v1::inbound_item::Item::Block(v1::UserBlock {
                user: Some(v1::UserRef {
                    wa_id: "15551234567".into(),
                    ..Default::default()
                }),
                blocked: true,
                ..Default::default()
            })),
        };
        assert_eq!(
            map_item("PN1", 2, item, NOW),
            Err(ItemError::ImplausibleTime { index: 2 })
        );
    }

    #[test]
    fn grpc_item_times_are_whole_seconds_like_webhooks_but_blocks_keep_microseconds() {
        let at = Some(finestra_proto::time::from_micros(1_700_000_000_654_321));
        let user = Some(v1::UserRef {
            wa_id: "15551234567".into(),
            ..Default::default()
        });
        let message = v1::InboundItem {
            timestamp: at,
            item: Some(v1::inbound_item::Item::Message(v1::InboundMessage {
                user: user.clone(),
                message_id: "wamid.1".into(),
                message_type: "text".into(),
                text: "hi".into(),
                ..Default::default()
            })),
        };
        let d = map_item("PN1", 0, message, NOW).expect("valid");
        assert_eq!(d.occurred_at, Some(Timestamp::from_secs(1_700_000_000)));
        let block = v1::InboundItem {
            timestamp: at,
            item: Some(v1::inbound_item::Item::Block(v1::UserBlock {
                user,
                blocked: true,
                ..Default::default()
            })),
        };
        let d = map_item("PN1", 0, block, NOW).expect("valid");
        assert_eq!(
            d.occurred_at,
            Some(Timestamp::from_micros(1_700_000_000_654_321))
        );
        assert!(d.event_id.ends_with(":1700000000654321"), "{}", d.event_id);
    }
}
