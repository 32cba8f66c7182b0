//! What a `SendMessageRequest` asks for: the domain's view of it (for the rules), the Cloud API
//! body the worker will post, and the request's identity (message id and hash) for
//! idempotency.

use finestra_domain::send::{FreeForm, Outgoing};
use finestra_proto::v1::SendMessageRequest;
use finestra_proto::v1::send_message_request::Content;
use prost::Message as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Media kinds (sent by link or by the network's media id).
const MEDIA_KINDS: [&str; 5] = ["image", "document", "video", "audio", "sticker"];

/// A request made sense of.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub outgoing: Outgoing,
    /// `text`, `image`, …, `template`.
    pub kind: String,
    /// The Cloud API object of `kind` (the body is built with the message id later).
    pub object: Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Malformed(pub String);

/// The recipient as the network keys it: digits, without `+`.
pub fn recipient(to: &str) -> &str {
    to.strip_prefix('+').unwrap_or(to)
}

pub fn parse(req: &SendMessageRequest) -> Result<Parsed, Malformed> {
    let content = req
        .content
        .as_ref()
        .ok_or_else(|| Malformed("content is required (text, media, template, …)".into()))?;
    let free = |f: FreeForm| Outgoing::FreeForm(f);
    Ok(match content {
        Content::Text(t) => Parsed {
            outgoing: free(FreeForm::Text {
                body: t.body.clone(),
            }),
            kind: "text".into(),
            object: finestra_cloudapi::send::text(&t.body, t.preview_url),
        },
        Content::Media(m) => {
            if !MEDIA_KINDS.contains(&m.kind.as_str()) {
                return Err(Malformed(format!(
                    "media.kind must be one of {}",
                    MEDIA_KINDS.join(", ")
                )));
            }
            Parsed {
                outgoing: free(FreeForm::Media {
                    kind: m.kind.clone(),
                    link: m.link.clone(),
                    media_id: m.media_id.clone(),
                    caption: m.caption.clone(),
                }),
                kind: m.kind.clone(),
                object: finestra_cloudapi::send::media(
                    &m.kind,
                    &m.link,
                    &m.media_id,
                    &m.caption,
                    &m.filename,
                ),
            }
        }
        Content::Template(t) => Parsed {
            outgoing: Outgoing::Template {
                name: t.name.clone(),
                language: t.language.clone(),
                parameters: t.parameters.clone(),
            },
            kind: "template".into(),
            object: finestra_cloudapi::send::template(&t.name, &t.language, &t.parameters),
        },
        Content::Interactive(i) => {
            let object: Value = serde_json::from_str(&i.json)
                .map_err(|e| Malformed(format!("interactive.json is not JSON: {e}")))?;
            if !object.is_object() {
                return Err(Malformed("interactive.json must be an object".into()));
            }
            Parsed {
                outgoing: free(FreeForm::Interactive),
                kind: "interactive".into(),
                object,
            }
        }
        Content::Location(l) => {
            if !(-90.0..=90.0).contains(&l.latitude) || !(-180.0..=180.0).contains(&l.longitude) {
                return Err(Malformed("latitude or longitude out of range".into()));
            }
            Parsed {
                outgoing: free(FreeForm::Location),
                kind: "location".into(),
                object: finestra_cloudapi::send::location(
                    l.latitude,
                    l.longitude,
                    &l.name,
                    &l.address,
                ),
            }
        }
        Content::Reaction(r) => {
            if r.message_id.is_empty() {
                return Err(Malformed("reaction.message_id is required".into()));
            }
            Parsed {
                outgoing: free(FreeForm::Reaction),
                kind: "reaction".into(),
                object: finestra_cloudapi::send::reaction(&r.message_id, &r.emoji),
            }
        }
        Content::Contacts(c) => {
            let cards: Value = serde_json::from_str(&c.json)
                .map_err(|e| Malformed(format!("contacts.json is not JSON: {e}")))?;
            let plausible = cards
                .as_array()
                .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object));
            if !plausible {
                return Err(Malformed(
                    "contacts.json must be a non-empty array of contact objects".into(),
                ));
            }
            Parsed {
                outgoing: free(FreeForm::Contacts),
                kind: "contacts".into(),
                object: cards,
            }
        }
    })
}

/// Finestra's id of the message a (tenant, idempotency key) names: every retry of a key, on
/// any replica, with or without Redis, arrives at the same id.
pub fn message_id(tenant_id: &str, idempotency_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(tenant_id.as_bytes());
    h.update([0]);
    h.update(idempotency_key.as_bytes());
    let digest = h.finalize();
    format!("m_{}", hex::encode(&digest[..16]))
}

/// The request's fingerprint (its protobuf encoding is deterministic for equal requests).
pub fn request_hash(req: &SendMessageRequest) -> Vec<u8> {
    Sha256::digest(req.encode_to_vec()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use finestra_proto::v1::{MediaContent, TemplateContent, TextContent};

    fn req(content: Content) -> SendMessageRequest {
        SendMessageRequest {
            tenant_id: "t".into(),
            phone_number_id: "pn".into(),
            to: "+393331234567".into(),
            idempotency_key: "k1".into(),
            send_at: None,
            send_at_local: String::new(),
            content: Some(content),
        }
    }

    #[test]
    fn each_kind_maps_to_the_rules_and_the_wire() {
        let t = parse(&req(Content::Text(TextContent {
            body: "hi".into(),
            preview_url: false,
        })))
        .expect("text");
        assert_eq!(t.kind, "text");
        assert!(matches!(
            t.outgoing,
            Outgoing::FreeForm(FreeForm::Text { .. })
        ));
        let d = parse(&req(Content::Media(MediaContent {
            kind: "document".into(),
            link: "https://files.example/a.pdf".into(),
            caption: "Invoice".into(),
            filename: "a.pdf".into(),
            media_id: String::new(),
        })))
        .expect("document");
        assert_eq!(d.object["filename"], "a.pdf");
        let by_id = parse(&req(Content::Media(MediaContent {
            kind: "image".into(),
            media_id: "1037543291543636".into(),
            ..Default::default()
        })))
        .expect("an image by id");
        assert_eq!(by_id.object["id"], "1037543291543636");
        let tpl = parse(&req(Content::Template(TemplateContent {
            name: "order_ready".into(),
            language: "it".into(),
            parameters: vec!["A-1".into()],
        })))
        .expect("template");
        assert!(matches!(tpl.outgoing, Outgoing::Template { .. }));
        assert!(
            parse(&req(Content::Media(MediaContent {
                kind: "hologram".into(),
                ..Default::default()
            })))
            .is_err()
        );
        let mut empty = req(Content::Text(TextContent::default()));
        empty.content = None;
        assert!(parse(&empty).is_err());
    }

    #[test]
    fn identity_is_stable_per_tenant_and_key() {
        assert_eq!(message_id("t", "k"), message_id("t", "k"));
        assert_ne!(message_id("t", "k"), message_id("u", "k"));
        assert_ne!(message_id("t", "k"), message_id("t", "k2"));
        assert_ne!(message_id("ab", "c"), message_id("a", "bc"));
        let a = req(Content::Text(TextContent {
            body: "hi".into(),
            preview_url: false,
        }));
        let mut b = a.clone();
        assert_eq!(request_hash(&a), request_hash(&b));
        b.content = Some(Content::Text(TextContent {
            body: "hello".into(),
            preview_url: false,
        }));
        assert_ne!(request_hash(&a), request_hash(&b));
    }
}
