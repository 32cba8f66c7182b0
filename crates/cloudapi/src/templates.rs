//! Template management as Meta defines it: a business account's templates are created with
//! `POST /{waba_id}/message_templates`, listed with `GET` on the same path, deleted with `DELETE`
//! on it (`?name=`, and `&hsm_id=` for one language), and edited with `POST /{template_id}`.
//! The content travels as `components`: a `HEADER` (text format), a `BODY`, a `FOOTER` and
//! `BUTTONS`. The provider connector builds these bodies, the simulator reads them.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A template's content as Finestra keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    pub body: String,
    pub header: String,
    pub footer: String,
    /// A JSON array of buttons as the Cloud API writes them, when the template has any.
    pub buttons: Option<Value>,
}

impl Content {
    /// The `components` array of this content (empty parts are left out).
    pub fn components(&self) -> Value {
        let mut parts = Vec::with_capacity(4);
        if !self.header.is_empty() {
            parts.push(json!({ "type": "HEADER", "format": "TEXT", "text": self.header }));
        }
        parts.push(json!({ "type": "BODY", "text": self.body }));
        if !self.footer.is_empty() {
            parts.push(json!({ "type": "FOOTER", "text": self.footer }));
        }
        if let Some(buttons) = &self.buttons {
            parts.push(json!({ "type": "BUTTONS", "buttons": buttons }));
        }
        Value::Array(parts)
    }

    /// Reads content back from `components` (the parts a listing or a submission carries).
    pub fn from_components(components: &[Value]) -> Self {
        let text_of = |kind: &str| {
            components
                .iter()
                .find(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(kind))
                })
                .map(|c| c["text"].as_str().unwrap_or_default().to_owned())
        };
        Self {
            body: text_of("BODY").unwrap_or_default(),
            header: text_of("HEADER").unwrap_or_default(),
            footer: text_of("FOOTER").unwrap_or_default(),
            buttons: components
                .iter()
                .find(|c| {
                    c["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case("BUTTONS"))
                })
                .map(|c| c["buttons"].clone()),
        }
    }
}

/// The body of `POST /{waba_id}/message_templates`.
pub fn submission(name: &str, language: &str, category: &str, content: &Content) -> Value {
    json!({
        "name": name,
        "language": language,
        "category": category,
        "components": content.components(),
    })
}

/// The body of `POST /{template_id}` (an edit: new content, and a category when it changes).
pub fn edit(category: Option<&str>, content: &Content) -> Value {
    let mut v = json!({ "components": content.components() });
    if let (Some(category), Some(obj)) = (category, v.as_object_mut()) {
        obj.insert("category".into(), json!(category));
    }
    v
}

/// The answer to a submission: the network's id for the template, its first status and the
/// category it accepted it under (the network may change it).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub category: String,
}

/// One template of a listing.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub language: String,
    pub status: String,
    pub category: String,
    #[serde(default)]
    pub components: Vec<Value>,
    /// Why it was rejected, when it was (`NONE` otherwise, as Meta writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reason: Option<String>,
    /// The quality rating (`GREEN`, `YELLOW`, `RED`, `UNKNOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_score: Option<Value>,
}

/// A page of a listing; `paging.cursors.after` continues it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Page {
    pub data: Vec<Listed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paging: Option<Paging>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Paging {
    #[serde(default)]
    pub cursors: Cursors,
    /// Present when there is another page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Cursors {
    #[serde(default)]
    pub before: String,
    #[serde(default)]
    pub after: String,
}

impl Page {
    /// The cursor of the next page, when there is one.
    pub fn next_after(&self) -> Option<&str> {
        self.paging
            .as_ref()
            .filter(|p| p.next.is_some())
            .map(|p| p.cursors.after.as_str())
            .filter(|a| !a.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_survives_the_components_round_trip() {
        let content = Content {
            body: "Hi {{1}}, order {{2}} is ready".into(),
            header: "Order".into(),
            footer: "Reply STOP to stop".into(),
            buttons: Some(json!([{ "type": "QUICK_REPLY", "text": "Thanks" }])),
        };
        let components = content.components();
        assert_eq!(components[0]["type"], "HEADER");
        assert_eq!(components[1]["text"], "Hi {{1}}, order {{2}} is ready");
        let back = Content::from_components(components.as_array().map_or(&[][..], |v| v));
        assert_eq!(back, content);
        let plain = Content {
            body: "Hello".into(),
            ..Content::default()
        };
        assert_eq!(
            plain.components().as_array().map(Vec::len),
            Some(1),
            "empty parts are left out"
        );
    }

    #[test]
    fn a_submission_and_an_edit_are_shaped_as_meta_defines_them() {
        let content = Content {
            body: "Hello".into(),
            ..Content::default()
        };
        let s = submission("order_ready", "it", "UTILITY", &content);
        assert_eq!(s["name"], "order_ready");
        assert_eq!(s["language"], "it");
        assert_eq!(s["components"][0]["type"], "BODY");
        assert_eq!(edit(None, &content).get("category"), None);
        assert_eq!(edit(Some("MARKETING"), &content)["category"], "MARKETING");
    }

    #[test]
    fn a_listing_parses_with_its_cursor() {
        let page: Page = serde_json::from_str(
            r#"{"data":[{"id":"1","name":"a","language":"en","status":"APPROVED","category":"UTILITY",
                "components":[{"type":"BODY","text":"Hi"}]}],
                "paging":{"cursors":{"before":"x","after":"y"},"next":"https://next"}}"#,
        )
        .unwrap_or_default();
        assert_eq!(page.data.len(), 1);
        assert_eq!(page.next_after(), Some("y"));
        let last: Page = serde_json::from_str(r#"{"data":[],"paging":{"cursors":{"after":"z"}}}"#)
            .unwrap_or_default();
        assert_eq!(last.next_after(), None, "no next link: the last page");
    }
}
