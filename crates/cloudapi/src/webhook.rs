//! The WhatsApp Cloud API webhook payload, as Meta defines it. Only the fields Finestra uses
//! are typed; unknown fields are ignored so new provider fields never break ingest.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
pub struct Notification {
    pub object: String,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    /// The business account (WABA) id.
    #[serde(default)]
    pub id: String,
    /// Unix seconds; template webhooks carry their time here.
    #[serde(default)]
    pub time: i64,
    #[serde(default)]
    pub changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
pub struct Change {
    pub field: String,
    /// Parsed according to `field`, after the signature was checked.
    pub value: Box<RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub display_phone_number: String,
    pub phone_number_id: String,
}

/// `value` of a change whose `field` is `messages` or `user_preferences`.
#[derive(Debug, Deserialize)]
pub struct Value {
    pub metadata: Metadata,
    #[serde(default)]
    pub contacts: Vec<Contact>,
    /// Kept raw so the original message JSON can be handed on to the tenant.
    #[serde(default)]
    pub messages: Vec<Box<RawValue>>,
    #[serde(default)]
    pub statuses: Vec<Box<RawValue>>,
    #[serde(default)]
    pub errors: Vec<ErrorObject>,
    /// Kept raw so one malformed item does not reject its neighbours.
    #[serde(default)]
    pub user_preferences: Vec<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
pub struct Contact {
    #[serde(default)]
    pub wa_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub from_user_id: String,
    pub id: String,
    #[serde(deserialize_with = "seconds")]
    pub timestamp: i64,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub text: Option<Text>,
    #[serde(default)]
    pub referral: Option<Referral>,
    #[serde(default)]
    pub context: Option<Context>,
    #[serde(default)]
    pub image: Option<Media>,
    #[serde(default)]
    pub video: Option<Media>,
    #[serde(default)]
    pub document: Option<Media>,
}

#[derive(Debug, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
pub struct Media {
    #[serde(default)]
    pub caption: String,
}

#[derive(Debug, Deserialize)]
pub struct Context {
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Referral {
    #[serde(default)]
    pub source_url: String,
    #[serde(default)]
    pub source_id: String,
    #[serde(default)]
    pub source_type: String,
    #[serde(default)]
    pub headline: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub ctwa_clid: String,
}

#[derive(Debug, Deserialize)]
pub struct Status {
    pub id: String,
    pub status: String,
    #[serde(deserialize_with = "seconds")]
    pub timestamp: i64,
    #[serde(default)]
    pub recipient_id: String,
    #[serde(default)]
    pub recipient_user_id: String,
    #[serde(default)]
    pub conversation: Option<Conversation>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    #[serde(default)]
    pub errors: Vec<ErrorObject>,
    /// What the sender put in the message's `biz_opaque_callback_data`.
    #[serde(default)]
    pub biz_opaque_callback_data: String,
}

#[derive(Debug, Deserialize)]
pub struct Conversation {
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct Pricing {
    #[serde(default)]
    pub billable: bool,
    #[serde(default)]
    pub category: String,
}

#[derive(Debug, Deserialize)]
pub struct ErrorObject {
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorData {
    #[serde(default)]
    pub details: String,
}

#[derive(Debug, Deserialize)]
pub struct UserPreference {
    #[serde(default)]
    pub wa_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub detail: String,
    pub category: String,
    pub value: String,
    #[serde(deserialize_with = "seconds")]
    pub timestamp: i64,
}

/// Unix seconds, given by Meta as a string in messages and statuses and as a number in
/// `user_preferences`.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Text(String),
        Number(i64),
    }
    match Secs::deserialize(d)? {
        Secs::Number(n) => Ok(n),
        Secs::Text(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// `value` of a `message_template_status_update` change.
#[derive(Debug, Deserialize)]
pub struct TemplateStatusUpdate {
    pub event: String,
    #[serde(default, deserialize_with = "id_text")]
    pub message_template_id: String,
    pub message_template_name: String,
    pub message_template_language: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `value` of a `template_category_update` change.
#[derive(Debug, Deserialize)]
pub struct TemplateCategoryUpdate {
    #[serde(default, deserialize_with = "id_text")]
    pub message_template_id: String,
    pub message_template_name: String,
    pub message_template_language: String,
    #[serde(default)]
    pub previous_category: String,
    pub new_category: String,
}

/// Ids Meta sends as numbers or strings.
fn id_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    })
}
