//! The Cloud API's send request (`POST /v{n}/{phone_number_id}/messages`) and its answers, as
//! Meta defines them: the body builders dispatch uses and the simulator reads, the success
//! answer (`messages[0].id`) and the error object (`error.code`).

use serde::Deserialize;
use serde_json::{Value, json};

/// A send body: `type` and its object, the recipient, and `biz_opaque_callback_data` (which the
/// network echoes on every status of the message).
pub fn body(to: &str, kind: &str, object: Value, callback: &str) -> Value {
    let mut v = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        "biz_opaque_callback_data": callback,
    });
    if let Some(obj) = v.as_object_mut() {
        obj.insert(kind.to_owned(), object);
    }
    v
}

pub fn text(body_text: &str, preview_url: bool) -> Value {
    json!({ "body": body_text, "preview_url": preview_url })
}

/// image / document / video / audio / sticker by link, or by the network's id of an uploaded
/// file when `media_id` is given. Audio and stickers carry no caption; only documents carry a
/// file name.
pub fn media(kind: &str, link: &str, media_id: &str, caption: &str, filename: &str) -> Value {
    let mut v = if media_id.is_empty() {
        json!({ "link": link })
    } else {
        json!({ "id": media_id })
    };
    if let Some(obj) = v.as_object_mut() {
        if !caption.is_empty() && !matches!(kind, "audio" | "sticker") {
            obj.insert("caption".into(), json!(caption));
        }
        if !filename.is_empty() && kind == "document" {
            obj.insert("filename".into(), json!(filename));
        }
    }
    v
}

/// A template with positional body parameters.
pub fn template(name: &str, language: &str, parameters: &[String]) -> Value {
    let mut v = json!({ "name": name, "language": { "code": language } });
    if !parameters.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        let params: Vec<Value> = parameters
            .iter()
            .map(|p| json!({ "type": "text", "text": p }))
            .collect();
        obj.insert(
            "components".into(),
            json!([{ "type": "body", "parameters": params }]),
        );
    }
    v
}

pub fn location(latitude: f64, longitude: f64, name: &str, address: &str) -> Value {
    json!({ "latitude": latitude, "longitude": longitude, "name": name, "address": address })
}

pub fn reaction(message_id: &str, emoji: &str) -> Value {
    json!({ "message_id": message_id, "emoji": emoji })
}

/// Marks a user's message read (`POST /{phone_number_id}/messages`), with the typing indicator
/// when `typing`.
pub fn mark_read(message_id: &str, typing: bool) -> Value {
    let mut v = json!({
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": message_id,
    });
    if typing && let Some(obj) = v.as_object_mut() {
        obj.insert("typing_indicator".into(), json!({ "type": "text" }));
    }
    v
}

/// The body of `POST` (block) or `DELETE` (unblock) `/{phone_number_id}/block_users`.
pub fn block_users(users: &[String]) -> Value {
    let users: Vec<Value> = users.iter().map(|u| json!({ "user": u })).collect();
    json!({ "messaging_product": "whatsapp", "block_users": users })
}

/// The answer to a block (`added_users`) or an unblock (`removed_users`): the users it applied
/// to, by wa_id.
pub fn blocked_users(answer: &[u8], block: bool) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    let key = if block {
        "added_users"
    } else {
        "removed_users"
    };
    Some(
        v["block_users"][key]
            .as_array()?
            .iter()
            .filter_map(|u| u["wa_id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// The answer to `GET /{media_id}`: where to download the file (a short-lived URL that wants
/// the bearer token), its type, hex SHA-256 and size.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct MediaInfo {
    pub url: String,
    pub mime_type: String,
    pub sha256: String,
    pub file_size: u64,
    pub id: String,
}

/// The answer to an upload (`POST /{phone_number_id}/media`): the file's id.
pub fn uploaded_id(answer: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    v["id"].as_str().map(str::to_owned)
}

/// The answer to a block: `added_users` (or `removed_users`) as the network lists them.
pub fn block_answer(users: &[String], block: bool) -> Value {
    let key = if block {
        "added_users"
    } else {
        "removed_users"
    };
    let listed: Vec<Value> = users
        .iter()
        .map(|u| json!({ "input": u, "wa_id": u }))
        .collect();
    json!({ "messaging_product": "whatsapp", "block_users": { key: listed } })
}

#[derive(Debug, Deserialize)]
struct Accepted {
    messages: Vec<AcceptedMessage>,
}

#[derive(Debug, Deserialize)]
struct AcceptedMessage {
    id: String,
}

/// The wamid of a successful answer.
pub fn accepted_id(answer: &[u8]) -> Option<String> {
    serde_json::from_slice::<Accepted>(answer)
        .ok()
        .and_then(|a| a.messages.into_iter().next())
        .map(|m| m.id)
}

#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    error: ErrorObject,
}

#[derive(Debug, Deserialize)]
struct ErrorObject {
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_user_msg: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: String,
}

/// The `error.code` and `error.message` of an error answer.
pub fn error_of(answer: &[u8]) -> Option<(i32, String)> {
    serde_json::from_slice::<ErrorAnswer>(answer)
        .ok()
        .map(|e| (e.error.code, e.error.message))
}

/// The `error.code`, and the network's explanation: `error.message` followed by
/// `error_user_msg` or `error_data.details` when the answer has one (what a tenant is shown).
pub fn error_explained(answer: &[u8]) -> Option<(i32, String)> {
    serde_json::from_slice::<ErrorAnswer>(answer).ok().map(|e| {
        let detail = e
            .error
            .error_user_msg
            .or(e.error.error_data.map(|d| d.details))
            .filter(|d| !d.is_empty());
        let text = match detail {
            Some(d) => format!("{}: {d}", e.error.message),
            None => e.error.message,
        };
        (e.error.code, text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_shaped_as_meta_defines_them() {
        let b = body(
            "393331234567",
            "template",
            template("order_ready", "it", &["Giulia".into(), "A-17".into()]),
            "m_1",
        );
        assert_eq!(b["type"], "template");
        assert_eq!(b["template"]["language"]["code"], "it");
        assert_eq!(
            b["template"]["components"][0]["parameters"][1]["text"],
            "A-17"
        );
        assert_eq!(b["biz_opaque_callback_data"], "m_1");
        let d = media(
            "document",
            "https://x.example/a.pdf",
            "",
            "Your invoice",
            "a.pdf",
        );
        assert_eq!(d["filename"], "a.pdf");
        assert_eq!(
            media("audio", "https://x/a.ogg", "", "ignored", "")["caption"],
            Value::Null
        );
        let by_id = media("image", "", "1037543291543636", "Look", "");
        assert_eq!(
            (by_id["id"].as_str(), by_id.get("link")),
            (Some("1037543291543636"), None)
        );
        assert_eq!(
            template("hello", "en", &[])["components"],
            Value::Null,
            "no components without parameters"
        );
    }

    #[test]
    fn answers_parse() {
        let ok = br#"{"messaging_product":"whatsapp","contacts":[{"input":"39","wa_id":"39"}],"messages":[{"id":"wamid.X"}]}"#;
        assert_eq!(accepted_id(ok), Some("wamid.X".into()));
        let err = br#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,"fbtrace_id":"A"}}"#;
        assert_eq!(
            error_of(err),
            Some((131_047, "(#131047) Re-engagement message".into()))
        );
        let explained = br#"{"error":{"message":"(#100) Invalid parameter","code":100,"error_data":{"details":"name exists"}}}"#;
        assert_eq!(
            error_explained(explained),
            Some((100, "(#100) Invalid parameter: name exists".into()))
        );
        assert_eq!(accepted_id(b"nonsense"), None);
        let users = vec!["39333".to_owned()];
        let answer = serde_json::to_vec(&block_answer(&users, true)).unwrap_or_default();
        assert_eq!(blocked_users(&answer, true), Some(users.clone()));
        assert_eq!(
            blocked_users(&answer, false),
            None,
            "no removed_users in a block"
        );
        assert_eq!(block_users(&users)["block_users"][0]["user"], "39333");
        assert_eq!(
            mark_read("wamid.X", true)["typing_indicator"]["type"],
            "text"
        );
        assert_eq!(mark_read("wamid.X", false).get("typing_indicator"), None);
        assert_eq!(error_of(b"<html>"), None);
    }
}
