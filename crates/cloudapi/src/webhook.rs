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
    #[serde(default)]
    pub audio: Option<Media>,
    #[serde(default)]
    pub sticker: Option<Media>,
}

impl Message {
    /// The file of a media message.
    pub fn media(&self) -> Option<&Media> {
        [
            &self.image,
            &self.video,
            &self.document,
            &self.audio,
            &self.sticker,
        ]
        .into_iter()
        .flatten()
        .next()
    }
}

#[derive(Debug, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub body: String,
}

/// A file a user sent: the network's id to fetch it by, its type and hash, a caption.
#[derive(Debug, Deserialize)]
pub struct Media {
    #[serde(default)]
    pub caption: String,
    #[serde(default, deserialize_with = "id_text")]
    pub id: String,
    #[serde(default)]
    pub mime_type: String,
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub filename: String,
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

/// `value` of a `phone_number_quality_update` change: a number's quality flag or messaging
/// limit changed. It names the number by its display number.
#[derive(Debug, Deserialize)]
pub struct NumberQualityUpdate {
    pub display_phone_number: String,
    /// FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE, ONBOARDING.
    pub event: String,
    #[serde(default)]
    pub current_limit: Option<String>,
    #[serde(default)]
    pub old_limit: Option<String>,
}

/// `value` of an `account_update` change.
#[derive(Debug, Deserialize)]
pub struct AccountUpdate {
    pub event: String,
    #[serde(default)]
    pub phone_number: Option<String>,
    #[serde(default)]
    pub ban_info: Option<serde_json::Value>,
    #[serde(default)]
    pub violation_info: Option<serde_json::Value>,
    #[serde(default)]
    pub restriction_info: Option<serde_json::Value>,
}

/// `value` of a `message_template_quality_update` change.
#[derive(Debug, Deserialize)]
pub struct TemplateQualityUpdate {
    #[serde(default)]
    pub previous_quality_score: String,
    pub new_quality_score: String,
    #[serde(default, deserialize_with = "id_text")]
    pub message_template_id: String,
    pub message_template_name: String,
    pub message_template_language: String,
}

/// `value` of a `business_capability_update` change: the business's messaging limit.
#[derive(Debug, Deserialize)]
pub struct CapabilityUpdate {
    /// TIER_250, TIER_2K, TIER_10K, TIER_100K, TIER_UNLIMITED.
    #[serde(default)]
    pub max_daily_conversations_per_business: Option<String>,
    /// The older shape: a number of conversations a day.
    #[serde(default)]
    pub max_daily_conversation_per_phone_number: Option<u64>,
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
