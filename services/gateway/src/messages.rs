//! `POST /{version}/{phone_number_id}/messages` bodies, read as the Cloud API defines them
//! (docs/gateway.md, its compatibility table), into what dispatch's `SendMessage` or `MarkRead` takes. Keys
//! the Cloud API does not define are refused as it refuses them (`(#100) Unexpected key`);
//! keys it defines that Finestra does not carry out are refused by name, never ignored.

use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{
    ContactsContent, InteractiveContent, LocationContent, MediaContent, ReactionContent,
    SendMessageRequest, TemplateContent, TextContent,
};
use serde_json::{Map, Value, json};

use crate::errors::CloudError;

/// What a messages request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Asked {
    /// A message: the request to send (tenant and idempotency key are the caller's to set).
    Send(Box<SendMessageRequest>),
    /// `{"status":"read","message_id":…}`: a read receipt for a user's message.
    MarkRead {
        message_id: String,
        typing_indicator: bool,
    },
}

const MEDIA: [&str; 5] = ["image", "audio", "video", "document", "sticker"];

/// The message types, each written under its own key.
const TYPES: [&str; 11] = [
    "text",
    "template",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "interactive",
    "reaction",
    "location",
    "contacts",
];

/// An object of the request with the keys it may have.
pub(crate) struct Obj<'a> {
    pub(crate) map: &'a Map<String, Value>,
    name: &'a str,
}

impl<'a> Obj<'a> {
    pub(crate) fn of(value: &'a Value, name: &'a str) -> Result<Self, CloudError> {
        value
            .as_object()
            .map(|map| Self { map, name })
            .ok_or_else(|| CloudError::invalid(format!("Param {name} must be a JSON object.")))
    }

    /// Refuses any key outside `allowed`.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), CloudError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(CloudError::unexpected_key(k, self.name)),
            None => Ok(()),
        }
    }

    pub(crate) fn text(&self, key: &str) -> Result<Option<&'a str>, CloudError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(CloudError::invalid(format!(
                "Param {}[{key}] must be a string.",
                self.name
            ))),
        }
    }

    pub(crate) fn required(&self, key: &str) -> Result<&'a str, CloudError> {
        self.text(key)?.filter(|s| !s.is_empty()).ok_or_else(|| {
            CloudError::invalid(format!("The parameter {}[{key}] is required.", self.name))
        })
    }

    fn flag(&self, key: &str) -> Result<bool, CloudError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(CloudError::invalid(format!(
                "Param {}[{key}] must be a boolean.",
                self.name
            ))),
        }
    }

    /// A number written as a JSON number or as a numeric string (the Cloud API takes both).
    fn number(&self, key: &str) -> Result<f64, CloudError> {
        let bad = || CloudError::invalid(format!("Param {}[{key}] must be a number.", self.name));
        match self.map.get(key) {
            Some(Value::Number(n)) => n.as_f64().ok_or_else(bad),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| bad()),
            _ => Err(CloudError::invalid(format!(
                "The parameter {}[{key}] is required.",
                self.name
            ))),
        }
    }
}

/// Reads a messages request body.
pub fn parse(body: &Value) -> Result<Asked, CloudError> {
    let top = Obj::of(body, "body")?;
    match top.text("messaging_product")? {
        Some("whatsapp") => {}
        Some(other) => {
            return Err(CloudError::invalid(format!(
                "Param messaging_product must be \"whatsapp\", not \"{other}\"."
            )));
        }
        None => {
            return Err(CloudError::invalid(
                "The parameter messaging_product is required.",
            ));
        }
    }
    if top.map.contains_key("status") {
        return read_receipt(&top);
    }
    let envelope = [
        "messaging_product",
        "recipient_type",
        "to",
        "type",
        "context",
        "biz_opaque_callback_data",
    ];
    top.only(&[&envelope[..], &TYPES[..]].concat())?;
    for unsupported in ["context", "biz_opaque_callback_data"] {
        if top.map.contains_key(unsupported) {
            return Err(CloudError::not_supported(&format!("Param {unsupported}")));
        }
    }
    match top.text("recipient_type")? {
        None | Some("individual") => {}
        Some(other) => {
            return Err(CloudError::not_supported(&format!(
                "recipient_type \"{other}\""
            )));
        }
    }
    let to = top.required("to")?.to_owned();
    let kind = top.text("type")?.unwrap_or("text");
    let object = top.map.get(kind).ok_or_else(|| {
        CloudError::invalid(format!("The parameter {kind} is required for type {kind}."))
    })?;
    // Only the object of the message's own type.
    if let Some(stray) = TYPES
        .iter()
        .find(|k| **k != kind && top.map.contains_key(**k))
    {
        return Err(CloudError::invalid(format!(
            "Param {stray} is not valid for a message of type {kind}."
        )));
    }
    let content = content(kind, object)?;
    Ok(Asked::Send(Box::new(SendMessageRequest {
        to,
        content: Some(content),
        ..Default::default()
    })))
}

fn read_receipt(top: &Obj<'_>) -> Result<Asked, CloudError> {
    top.only(&[
        "messaging_product",
        "status",
        "message_id",
        "typing_indicator",
    ])?;
    if top.text("status")? != Some("read") {
        return Err(CloudError::invalid("Param status must be \"read\"."));
    }
    let message_id = top.required("message_id")?.to_owned();
    let typing_indicator = match top.map.get("typing_indicator") {
        None => false,
        Some(v) => {
            let t = Obj::of(v, "typing_indicator")?;
            t.only(&["type"])?;
            match t.required("type")? {
                "text" => true,
                other => {
                    return Err(CloudError::invalid(format!(
                        "Param typing_indicator[type] must be \"text\", not \"{other}\"."
                    )));
                }
            }
        }
    };
    Ok(Asked::MarkRead {
        message_id,
        typing_indicator,
    })
}

fn content(kind: &str, object: &Value) -> Result<Content, CloudError> {
    Ok(match kind {
        "text" => {
            let o = Obj::of(object, "text")?;
            o.only(&["body", "preview_url"])?;
            Content::Text(TextContent {
                body: o.required("body")?.to_owned(),
                preview_url: o.flag("preview_url")?,
            })
        }
        "template" => Content::Template(template(object)?),
        k if MEDIA.contains(&k) => {
            let o = Obj::of(object, k)?;
            let mut allowed = vec!["id", "link"];
            if k != "audio" && k != "sticker" {
                allowed.push("caption");
            }
            if k == "document" {
                allowed.push("filename");
            }
            o.only(&allowed)?;
            let (id, link) = (o.text("id")?.unwrap_or(""), o.text("link")?.unwrap_or(""));
            if id.is_empty() == link.is_empty() {
                return Err(CloudError::invalid(format!(
                    "Param {k} must have exactly one of id and link."
                )));
            }
            Content::Media(MediaContent {
                kind: k.to_owned(),
                link: link.to_owned(),
                media_id: id.to_owned(),
                caption: o.text("caption")?.unwrap_or("").to_owned(),
                filename: o.text("filename")?.unwrap_or("").to_owned(),
            })
        }
        "interactive" => {
            let o = Obj::of(object, "interactive")?;
            o.only(&["type", "header", "body", "footer", "action"])?;
            o.required("type")?;
            Content::Interactive(InteractiveContent {
                json: object.to_string(),
            })
        }
        "reaction" => {
            let o = Obj::of(object, "reaction")?;
            o.only(&["message_id", "emoji"])?;
            Content::Reaction(ReactionContent {
                message_id: o.required("message_id")?.to_owned(),
                // An empty emoji removes a reaction.
                emoji: o.text("emoji")?.unwrap_or("").to_owned(),
            })
        }
        "location" => {
            let o = Obj::of(object, "location")?;
            o.only(&["latitude", "longitude", "name", "address"])?;
            Content::Location(LocationContent {
                latitude: o.number("latitude")?,
                longitude: o.number("longitude")?,
                name: o.text("name")?.unwrap_or("").to_owned(),
                address: o.text("address")?.unwrap_or("").to_owned(),
            })
        }
        "contacts" => {
            let cards = object
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| CloudError::invalid("Param contacts must be a non-empty array."))?;
            for card in cards {
                let c = Obj::of(card, "contacts")?;
                c.only(&[
                    "addresses",
                    "birthday",
                    "emails",
                    "name",
                    "org",
                    "phones",
                    "urls",
                ])?;
                let name = c.map.get("name").ok_or_else(|| {
                    CloudError::invalid("The parameter contacts[name] is required.")
                })?;
                Obj::of(name, "contacts[name]")?.required("formatted_name")?;
            }
            Content::Contacts(ContactsContent {
                json: object.to_string(),
            })
        }
        other => {
            return Err(CloudError::invalid(format!(
                "Param type must be one of text, template, image, audio, video, document, \
                 sticker, interactive, reaction, location, contacts; not \"{other}\"."
            )));
        }
    })
}

/// A template message: its name, language and body parameters in order. Header and button
/// parameters (media headers, dynamic URLs) are refused by name: Finestra's templates carry
/// body parameters only (docs/gateway.md).
fn template(object: &Value) -> Result<TemplateContent, CloudError> {
    let o = Obj::of(object, "template")?;
    o.only(&["name", "language", "components", "namespace"])?;
    let name = o.required("name")?.to_owned();
    let language = o
        .map
        .get("language")
        .ok_or_else(|| CloudError::invalid("The parameter template[language] is required."))?;
    let language = Obj::of(language, "template[language]")?;
    language.only(&["code", "policy"])?;
    if let Some(policy) = language.text("policy")?
        && policy != "deterministic"
    {
        return Err(CloudError::invalid(
            "Param template[language][policy] must be \"deterministic\".",
        ));
    }
    let code = language.required("code")?.to_owned();
    let mut parameters = Vec::new();
    let components = match o.map.get("components") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(CloudError::invalid(
                "Param template[components] must be an array.",
            ));
        }
    };
    for component in components {
        let c = Obj::of(component, "template[components]")?;
        c.only(&["type", "sub_type", "index", "parameters"])?;
        let kind = c.required("type")?.to_ascii_lowercase();
        let params = match c.map.get("parameters") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => {
                return Err(CloudError::invalid(
                    "Param template[components][parameters] must be an array.",
                ));
            }
        };
        match kind.as_str() {
            "body" => {
                for p in params {
                    parameters.push(body_parameter(p)?);
                }
            }
            "header" | "button" | "footer" if params.is_empty() => {}
            "header" | "button" => {
                return Err(CloudError::not_supported(&format!(
                    "A {kind} component with parameters"
                )));
            }
            other => {
                return Err(CloudError::invalid(format!(
                    "Param template[components][type] \"{other}\" is not valid."
                )));
            }
        }
    }
    Ok(TemplateContent {
        name,
        language: code,
        parameters,
    })
}

/// One body parameter's text: `text`, or the fallback of a `currency` or `date_time`.
fn body_parameter(p: &Value) -> Result<String, CloudError> {
    let o = Obj::of(p, "template[components][parameters]")?;
    o.only(&["type", "text", "currency", "date_time", "parameter_name"])?;
    if o.map.contains_key("parameter_name") {
        return Err(CloudError::not_supported("A named template parameter"));
    }
    let fallback = |key: &str| -> Result<String, CloudError> {
        let inner = o.map.get(key).ok_or_else(|| {
            CloudError::invalid(format!("The parameter parameters[{key}] is required."))
        })?;
        Ok(Obj::of(inner, key)?.required("fallback_value")?.to_owned())
    };
    match o.required("type")? {
        "text" => Ok(o.required("text")?.to_owned()),
        "currency" => fallback("currency"),
        "date_time" => fallback("date_time"),
        other => Err(CloudError::not_supported(&format!(
            "A body parameter of type \"{other}\""
        ))),
    }
}

/// The answer to an accepted message, as the Cloud API writes it.
pub fn accepted(to: &str, message_id: &str, is_template: bool) -> Value {
    let mut message = json!({ "id": message_id });
    if is_template && let Some(obj) = message.as_object_mut() {
        obj.insert("message_status".into(), json!("accepted"));
    }
    json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": to.trim_start_matches('+') }],
        "messages": [message],
    })
}

#[cfg(test)]
mod tests;
