//! Builders of webhook notifications exactly as the Cloud API sends them.

use serde_json::{Value, json};

/// A user message as it appears in `value.messages[]`.
#[derive(Clone, Debug)]
pub struct InboundText<'a> {
    pub wamid: &'a str,
    pub from: &'a str,
    pub profile_name: &'a str,
    /// Unix seconds: when the user sent it.
    pub timestamp: i64,
    pub body: &'a str,
    /// Ad / call-to-action referral, if the user came from one.
    pub referral: Option<Value>,
}

fn metadata(phone_number_id: &str, display: &str) -> Value {
    json!({ "display_phone_number": display, "phone_number_id": phone_number_id })
}

/// Wraps change values into a notification (`entry[].changes[]`).
pub fn notification(waba_id: &str, changes: Vec<(&str, Value)>) -> Value {
    let changes: Vec<Value> = changes
        .into_iter()
        .map(|(field, value)| json!({ "field": field, "value": value }))
        .collect();
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": waba_id, "changes": changes }] })
}

/// The `value` of a `messages` change carrying user messages.
pub fn messages_value(phone_number_id: &str, display: &str, messages: &[InboundText<'_>]) -> Value {
    let contacts: Vec<Value> = messages
        .iter()
        .map(|m| json!({ "profile": { "name": m.profile_name }, "wa_id": m.from }))
        .collect();
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut v = json!({
                "from": m.from, "id": m.wamid, "timestamp": m.timestamp.to_string(),
                "type": "text", "text": { "body": m.body }
            });
            if let (Some(r), Some(obj)) = (&m.referral, v.as_object_mut()) {
                obj.insert("referral".into(), r.clone());
            }
            v
        })
        .collect();
    json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(phone_number_id, display),
        "contacts": contacts,
        "messages": msgs,
    })
}

/// A notification with user text messages for one number.
pub fn text_messages(phone_number_id: &str, display: &str, messages: &[InboundText<'_>]) -> Value {
    notification(
        "WABA",
        vec![(
            "messages",
            messages_value(phone_number_id, display, messages),
        )],
    )
}

/// A referral object as sent for click-to-WhatsApp ads.
pub fn ad_referral(source_id: &str) -> Value {
    json!({
        "source_url": format!("https://fb.me/{source_id}"),
        "source_id": source_id,
        "source_type": "ad",
        "headline": "Autumn sale",
        "body": "Tap to chat",
        "media_type": "image",
        "ctwa_clid": format!("clid-{source_id}"),
    })
}

/// A `user_preferences` notification: marketing stop (`stop = true`) or resume.
pub fn marketing_preference(
    phone_number_id: &str,
    display: &str,
    wa_id: &str,
    stop: bool,
    timestamp: i64,
) -> Value {
    let value = json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(phone_number_id, display),
        "contacts": [{ "wa_id": wa_id, "profile": { "name": "" } }],
        "user_preferences": [{
            "wa_id": wa_id,
            "detail": if stop { "User requested to stop marketing messages" } else { "User requested to resume marketing messages" },
            "category": "marketing_messages",
            "value": if stop { "stop" } else { "resume" },
            "timestamp": timestamp,
        }],
    });
    notification("WABA", vec![("user_preferences", value)])
}

/// A `messages` notification with one status of a business message.
pub fn status(
    phone_number_id: &str,
    display: &str,
    wamid: &str,
    status: &str,
    recipient: &str,
    timestamp: i64,
) -> Value {
    status_with_callback(
        phone_number_id,
        display,
        wamid,
        status,
        recipient,
        timestamp,
        "",
    )
}

/// A status of a message that was sent with `biz_opaque_callback_data` (echoed back).
pub fn status_with_callback(
    phone_number_id: &str,
    display: &str,
    wamid: &str,
    status: &str,
    recipient: &str,
    timestamp: i64,
    callback_data: &str,
) -> Value {
    statuses_with_callback(
        phone_number_id,
        display,
        wamid,
        &[status],
        recipient,
        timestamp,
        callback_data,
    )
}

/// Several statuses of one message in one notification, in order (the Cloud API batches
/// statuses that are ready together).
pub fn statuses_with_callback(
    phone_number_id: &str,
    display: &str,
    wamid: &str,
    statuses: &[&str],
    recipient: &str,
    timestamp: i64,
    callback_data: &str,
) -> Value {
    let items: Vec<Value> = statuses
        .iter()
        .map(|status| {
            let mut item = json!({
                "id": wamid, "status": status, "timestamp": timestamp.to_string(),
                "recipient_id": recipient,
                "pricing": { "billable": true, "pricing_model": "PMP", "category": "marketing" }
            });
            if !callback_data.is_empty() {
                item["biz_opaque_callback_data"] = json!(callback_data);
            }
            item
        })
        .collect();
    let value = json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(phone_number_id, display),
        "statuses": items,
    });
    notification("WABA", vec![("messages", value)])
}

/// A `message_template_status_update` notification of a business account.
pub fn template_status(
    waba_id: &str,
    time: i64,
    template_id: &str,
    name: &str,
    language: &str,
    event: &str,
    reason: &str,
) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": waba_id, "time": time, "changes": [{
            "field": "message_template_status_update",
            "value": { "event": event, "message_template_id": template_id, "message_template_name": name,
                       "message_template_language": language,
                       "reason": if reason.is_empty() { "NONE" } else { reason } }
        }]}]
    })
}

/// A business account's notification with one change of `field`.
fn account_change(waba_id: &str, time: i64, field: &str, value: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": waba_id, "time": time, "changes": [{ "field": field, "value": value }]}]
    })
}

/// A `phone_number_quality_update` notification: the number's quality flag or messaging limit
/// changed (`event` FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE).
pub fn number_quality(
    waba_id: &str,
    time: i64,
    display_phone_number: &str,
    event: &str,
    current_limit: &str,
    old_limit: &str,
) -> Value {
    let mut value = json!({ "display_phone_number": display_phone_number, "event": event });
    if let Some(obj) = value.as_object_mut() {
        if !current_limit.is_empty() {
            obj.insert("current_limit".into(), json!(current_limit));
        }
        if !old_limit.is_empty() {
            obj.insert("old_limit".into(), json!(old_limit));
        }
    }
    account_change(waba_id, time, "phone_number_quality_update", value)
}

/// An `account_update` notification (`detail`, when given, goes in as the event's info:
/// `ban_info` for DISABLED_UPDATE, `restriction_info` for ACCOUNT_RESTRICTION, else
/// `violation_info`).
pub fn account_update(waba_id: &str, time: i64, event: &str, detail: Option<Value>) -> Value {
    let mut value = json!({ "event": event });
    if let (Some(detail), Some(obj)) = (detail, value.as_object_mut()) {
        let key = match event {
            "DISABLED_UPDATE" => "ban_info",
            "ACCOUNT_RESTRICTION" => "restriction_info",
            _ => "violation_info",
        };
        obj.insert(key.into(), detail);
    }
    account_change(waba_id, time, "account_update", value)
}

/// A `message_template_quality_update` notification.
pub fn template_quality(
    waba_id: &str,
    time: i64,
    template_id: &str,
    name: &str,
    language: &str,
    previous: &str,
    new: &str,
) -> Value {
    account_change(
        waba_id,
        time,
        "message_template_quality_update",
        json!({ "previous_quality_score": previous, "new_quality_score": new,
                "message_template_id": template_id, "message_template_name": name,
                "message_template_language": language }),
    )
}

/// A `business_capability_update` notification: the business's messaging limit.
pub fn capability(waba_id: &str, time: i64, limit: &str) -> Value {
    account_change(
        waba_id,
        time,
        "business_capability_update",
        json!({ "max_daily_conversations_per_business": limit }),
    )
}

/// A `template_category_update` notification of a business account.
pub fn template_category(
    waba_id: &str,
    time: i64,
    name: &str,
    language: &str,
    previous: &str,
    new: &str,
) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": waba_id, "time": time, "changes": [{
            "field": "template_category_update",
            "value": { "message_template_id": "1", "message_template_name": name, "message_template_language": language,
                       "previous_category": previous, "new_category": new }
        }]}]
    })
}
