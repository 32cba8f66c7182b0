//! `GET` and `POST /{version}/{waba_id}/message_templates` in the Cloud API's shape, over
//! accounts' ListTemplates and CreateTemplate (which submits the template to the network).

use finestra_cloudapi::templates::{Content, Created, Cursors, Listed, Page, Paging};
use finestra_proto::v1::{CreateTemplateRequest, Template};
use serde_json::Value;

use crate::errors::CloudError;
use crate::messages::Obj;

/// One template as a listing shows it.
pub fn listed(t: &Template) -> Listed {
    let content = Content {
        body: t.body.clone(),
        header: t.header.clone(),
        footer: t.footer.clone(),
        buttons: serde_json::from_str(&t.buttons_json).ok(),
    };
    Listed {
        id: t.template_id.clone(),
        name: t.name.clone(),
        language: t.language.clone(),
        status: t.status.clone(),
        category: t.category.clone(),
        components: content.components().as_array().cloned().unwrap_or_default(),
        rejected_reason: (t.status == "REJECTED").then(|| t.status_reason.clone()),
        quality_score: (!t.quality.is_empty()).then(|| serde_json::json!({ "score": t.quality })),
    }
}

/// A page of templates; `after` continues it (the Cloud API's cursor paging).
pub fn page(templates: &[Template], next_page_token: &str) -> Page {
    Page {
        data: templates.iter().map(listed).collect(),
        paging: Some(Paging {
            cursors: Cursors {
                before: String::new(),
                after: next_page_token.to_owned(),
            },
            next: (!next_page_token.is_empty()).then(|| format!("?after={next_page_token}")),
        }),
    }
}

/// A creation request (`name`, `language`, `category`, `components`) for `tenant_id`.
pub fn creation(tenant_id: &str, body: &Value) -> Result<CreateTemplateRequest, CloudError> {
    let o = Obj::of(body, "body")?;
    o.only(&[
        "name",
        "language",
        "category",
        "components",
        "allow_category_change",
        "parameter_format",
    ])?;
    if let Some(format) = o.text("parameter_format")?
        && !format.eq_ignore_ascii_case("positional")
    {
        return Err(CloudError::not_supported("parameter_format NAMED"));
    }
    let components = match o.map.get("components") {
        Some(Value::Array(a)) => a.as_slice(),
        _ => {
            return Err(CloudError::invalid(
                "The parameter components is required and must be an array.",
            ));
        }
    };
    // What Finestra's templates hold: a text header, a body, a footer, buttons.
    for component in components {
        let c = Obj::of(component, "components")?;
        match c.required("type")?.to_ascii_uppercase().as_str() {
            "HEADER" => match c.text("format")? {
                None => {}
                Some(f) if f.eq_ignore_ascii_case("TEXT") => {}
                Some(f) => {
                    return Err(CloudError::not_supported(&format!(
                        "A {f} header (media or location)"
                    )));
                }
            },
            "BODY" | "FOOTER" | "BUTTONS" => {}
            other => {
                return Err(CloudError::not_supported(&format!("A {other} component")));
            }
        }
    }
    let content = Content::from_components(components);
    if content.body.is_empty() {
        return Err(CloudError::invalid(
            "The parameter components must have a BODY component with text.",
        ));
    }
    Ok(CreateTemplateRequest {
        tenant_id: tenant_id.to_owned(),
        name: o.required("name")?.to_owned(),
        language: o.required("language")?.to_owned(),
        category: o.required("category")?.to_ascii_uppercase(),
        body: content.body,
        header: content.header,
        footer: content.footer,
        buttons_json: content.buttons.map(|b| b.to_string()).unwrap_or_default(),
    })
}

/// The answer to a creation.
pub fn created(t: &Template) -> Created {
    Created {
        id: t.template_id.clone(),
        status: t.status.clone(),
        category: t.category.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The Cloud API's example of a utility template with a header, body, footer and buttons.
    #[test]
    fn a_creation_is_read_from_the_cloud_apis_components() {
        let body = json!({
            "name": "order_confirmation",
            "language": "en_US",
            "category": "utility",
            "components": [
                { "type": "HEADER", "format": "TEXT", "text": "Your order" },
                { "type": "BODY", "text": "Thank you, {{1}}! Your order {{2}} is confirmed." },
                { "type": "FOOTER", "text": "Lucky Shrub" },
                { "type": "BUTTONS", "buttons": [{ "type": "QUICK_REPLY", "text": "Thanks" }] }
            ]
        });
        let req = creation("t1", &body).unwrap();
        assert_eq!(req.name, "order_confirmation");
        assert_eq!(req.category, "UTILITY");
        assert_eq!(req.body, "Thank you, {{1}}! Your order {{2}} is confirmed.");
        assert_eq!(req.header, "Your order");
        assert_eq!(req.footer, "Lucky Shrub");
        assert_eq!(
            serde_json::from_str::<Value>(&req.buttons_json).unwrap(),
            json!([{ "type": "QUICK_REPLY", "text": "Thanks" }])
        );
        let stray = creation(
            "t1",
            &json!({"name": "x", "language": "en", "category": "UTILITY",
                                           "components": [], "colour": "red"}),
        );
        assert_eq!(stray.unwrap_err().code, 100);
    }

    #[test]
    fn a_listing_is_the_cloud_apis_page() {
        let t = Template {
            template_id: "tpl_1".into(),
            name: "order_confirmation".into(),
            language: "en_US".into(),
            category: "UTILITY".into(),
            body: "Hi {{1}}".into(),
            status: "APPROVED".into(),
            ..Default::default()
        };
        let page = serde_json::to_value(page(&[t], "next1")).unwrap();
        assert_eq!(
            page,
            json!({
                "data": [{ "id": "tpl_1", "name": "order_confirmation", "language": "en_US",
                           "status": "APPROVED", "category": "UTILITY",
                           "components": [{ "type": "BODY", "text": "Hi {{1}}" }] }],
                "paging": { "cursors": { "before": "", "after": "next1" }, "next": "?after=next1" }
            })
        );
    }
}
