//! Tenant events as the Cloud API's webhook notifications (docs/webhooks.md §Cloud API format):
//! what the network posted, re-addressed to the business. A user message is passed on as the
//! network sent it; a status carries Finestra's message id (the `messages[0].id` the business
//! was answered) in place of the network's, as the business never saw the latter.

use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{InboundMessage, MessageStatus, UserPreference};
use serde_json::{Map, Value, json};

/// The tenant event kinds an endpoint in the Cloud API format receives.
pub const KINDS: [&str; 3] = ["inbound_message", "message_status", "user_preference"];

/// Where the notification says it comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// `entry[].id`: the tenant's WhatsApp Business Account.
    pub waba_id: String,
    /// `metadata.display_phone_number` of the number the event is about.
    pub display_phone_number: String,
}

fn unix_seconds(env: &Envelope) -> String {
    env.occurred_at
        .as_ref()
        .map_or(0, |t| t.seconds)
        .to_string()
}

fn metadata(phone_number_id: &str, display: &str) -> Value {
    json!({ "display_phone_number": display, "phone_number_id": phone_number_id })
}

fn raw_object(raw: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(raw) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// The notification of an event, `None` for an event the Cloud API has no webhook for.
pub fn notification(env: &Envelope, account: &Account) -> Option<Value> {
    let (field, value) = match env.payload.as_ref()? {
        Payload::InboundMessage(m) => ("messages", inbound(env, m, account)),
        Payload::MessageStatus(s) if !s.callback_data.is_empty() => {
            ("messages", status(env, s, account))
        }
        Payload::UserPreference(p) => ("user_preferences", preference(env, p, account)),
        _ => return None,
    };
    Some(finestra_cloudapi::build::notification(
        &account.waba_id,
        vec![(field, value)],
    ))
}

fn inbound(env: &Envelope, m: &InboundMessage, account: &Account) -> Value {
    let user = m.user.clone().unwrap_or_default();
    let message = raw_object(&m.raw_json).map_or_else(
        || {
            json!({
                "from": user.wa_id, "id": m.message_id, "timestamp": unix_seconds(env),
                "type": m.message_type, "text": { "body": m.text },
            })
        },
        Value::Object,
    );
    let display = if m.display_phone_number.is_empty() {
        &account.display_phone_number
    } else {
        &m.display_phone_number
    };
    json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(&m.phone_number_id, display),
        "contacts": [{ "profile": { "name": user.profile_name }, "wa_id": user.wa_id }],
        "messages": [message],
    })
}

fn status(env: &Envelope, s: &MessageStatus, account: &Account) -> Value {
    let recipient = s.recipient.clone().unwrap_or_default();
    let mut object = raw_object(&s.raw_json).unwrap_or_else(|| {
        let mut o = Map::new();
        o.insert("status".into(), json!(s.status));
        o.insert("timestamp".into(), json!(unix_seconds(env)));
        o.insert("recipient_id".into(), json!(recipient.wa_id));
        if !s.errors.is_empty() {
            let errors: Vec<Value> = s
                .errors
                .iter()
                .map(|e| {
                    json!({ "code": e.code, "title": e.title, "message": e.message,
                            "error_data": { "details": e.details } })
                })
                .collect();
            o.insert("errors".into(), Value::Array(errors));
        }
        o
    });
    // The id the business holds is Finestra's; the callback data was Finestra's own.
    object.insert("id".into(), json!(s.callback_data));
    object.remove("biz_opaque_callback_data");
    json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(&s.phone_number_id, &account.display_phone_number),
        "statuses": [Value::Object(object)],
    })
}

fn preference(env: &Envelope, p: &UserPreference, account: &Account) -> Value {
    let user = p.user.clone().unwrap_or_default();
    let timestamp = env.occurred_at.as_ref().map_or(0, |t| t.seconds);
    json!({
        "messaging_product": "whatsapp",
        "metadata": metadata(&p.phone_number_id, &account.display_phone_number),
        "contacts": [{ "wa_id": user.wa_id, "profile": { "name": user.profile_name } }],
        "user_preferences": [{
            "wa_id": user.wa_id, "detail": p.detail, "category": p.category,
            "value": if p.stop { "stop" } else { "resume" }, "timestamp": timestamp,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_proto::v1::UserRef;

    fn account() -> Account {
        Account {
            waba_id: "102290129340398".into(),
            display_phone_number: "15550783881".into(),
        }
    }

    fn envelope(payload: Payload) -> Envelope {
        Envelope {
            event_id: "e1".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_749_416_383,
                nanos: 0,
            }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn a_user_message_is_passed_on_as_the_network_sent_it() {
        let raw = br#"{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}"#;
        let env = envelope(Payload::InboundMessage(InboundMessage {
            phone_number_id: "106540352242922".into(),
            display_phone_number: "15550783881".into(),
            user: Some(UserRef {
                wa_id: "16505551234".into(),
                profile_name: "Sheena Nelson".into(),
                ..Default::default()
            }),
            message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=".into(),
            message_type: "text".into(),
            raw_json: raw.to_vec(),
            ..Default::default()
        }));
        let expected = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": { "display_phone_number": "15550783881", "phone_number_id": "106540352242922" },
                        "contacts": [{ "profile": { "name": "Sheena Nelson" }, "wa_id": "16505551234" }],
                        "messages": [serde_json::from_slice::<Value>(raw).unwrap()],
                    }
                }]
            }]
        });
        assert_eq!(notification(&env, &account()), Some(expected));
    }

    #[test]
    fn a_status_carries_finestras_message_id_and_not_the_callback_data() {
        let raw = br#"{"id":"wamid.NET","status":"delivered","timestamp":"1750263773","recipient_id":"16505551234","biz_opaque_callback_data":"m_1","pricing":{"billable":true,"pricing_model":"PMP","category":"utility"}}"#;
        let env = envelope(Payload::MessageStatus(MessageStatus {
            phone_number_id: "106540352242922".into(),
            message_id: "wamid.NET".into(),
            status: "delivered".into(),
            raw_json: raw.to_vec(),
            callback_data: "m_1".into(),
            ..Default::default()
        }));
        let n = notification(&env, &account()).unwrap();
        let value = &n["entry"][0]["changes"][0]["value"];
        assert_eq!(value["metadata"]["phone_number_id"], "106540352242922");
        let status = &value["statuses"][0];
        assert_eq!(status["id"], "m_1");
        assert_eq!(status["status"], "delivered");
        assert_eq!(status["pricing"]["category"], "utility");
        assert!(status.get("biz_opaque_callback_data").is_none());
    }

    #[test]
    fn a_status_of_a_message_finestra_did_not_send_and_a_window_event_have_no_notification() {
        let foreign = envelope(Payload::MessageStatus(MessageStatus::default()));
        assert_eq!(notification(&foreign, &account()), None);
        let window = envelope(Payload::WindowOpened(Default::default()));
        assert_eq!(notification(&window, &account()), None);
    }

    #[test]
    fn a_marketing_stop_is_a_user_preferences_notification() {
        let env = envelope(Payload::UserPreference(UserPreference {
            phone_number_id: "106540352242922".into(),
            user: Some(UserRef {
                wa_id: "16505551234".into(),
                ..Default::default()
            }),
            category: "marketing_messages".into(),
            stop: true,
            detail: "User requested to stop marketing messages".into(),
        }));
        let n = notification(&env, &account()).unwrap();
        assert_eq!(n["entry"][0]["changes"][0]["field"], "user_preferences");
        let pref = &n["entry"][0]["changes"][0]["value"]["user_preferences"][0];
        assert_eq!(pref["value"], "stop");
        assert_eq!(pref["timestamp"], 1_749_416_383);
    }
}
