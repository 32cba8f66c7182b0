//! Golden tests: requests written as Cloud API clients write them (one per message type, with
//! the sample values Cloud API examples use), each read into the `SendMessage` it asks for.

use super::*;

fn send(body: Value) -> SendMessageRequest {
    match parse(&body) {
        Ok(Asked::Send(req)) => *req,
        other => panic!("{body} was read as {other:?}"),
    }
}

fn refused(body: Value) -> CloudError {
    match parse(&body) {
        Err(e) => e,
        Ok(asked) => panic!("{body} was accepted as {asked:?}"),
    }
}

#[test]
fn a_text_message() {
    let req = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": "+16505551234", "type": "text",
        "text": { "preview_url": true, "body": "As requested, here's the link to our latest product: https://www.meta.com/quest/quest-3/" }
    }));
    assert_eq!(req.to, "+16505551234");
    assert_eq!(
        req.content,
        Some(Content::Text(TextContent {
            body: "As requested, here's the link to our latest product: https://www.meta.com/quest/quest-3/".into(),
            preview_url: true,
        }))
    );
}

#[test]
fn a_message_without_a_type_is_text() {
    let req =
        send(json!({"messaging_product": "whatsapp", "to": "16505551234", "text": {"body": "hi"}}));
    assert!(matches!(req.content, Some(Content::Text(t)) if t.body == "hi" && !t.preview_url));
}

#[test]
fn a_template_with_body_parameters() {
    let req = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
        "type": "template",
        "template": {
            "name": "order_confirmation",
            "language": { "policy": "deterministic", "code": "en_US" },
            "components": [{
                "type": "body",
                "parameters": [
                    { "type": "text", "text": "Pablo" },
                    { "type": "currency", "currency": { "fallback_value": "$100.99", "code": "USD", "amount_1000": 100990 } },
                    { "type": "date_time", "date_time": { "fallback_value": "February 25, 1977" } }
                ]
            }]
        }
    }));
    assert_eq!(
        req.content,
        Some(Content::Template(TemplateContent {
            name: "order_confirmation".into(),
            language: "en_US".into(),
            parameters: vec!["Pablo".into(), "$100.99".into(), "February 25, 1977".into()],
        }))
    );
}

#[test]
fn a_template_without_parameters() {
    let req = send(json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "template",
        "template": { "name": "hello_world", "language": { "code": "en_US" } }
    }));
    assert_eq!(
        req.content,
        Some(Content::Template(TemplateContent {
            name: "hello_world".into(),
            language: "en_US".into(),
            parameters: vec![],
        }))
    );
}

#[test]
fn media_by_id_and_by_link() {
    let image = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
        "type": "image", "image": { "id": "1479537139650973", "caption": "The best succulent ever?" }
    }));
    assert_eq!(
        image.content,
        Some(Content::Media(MediaContent {
            kind: "image".into(),
            media_id: "1479537139650973".into(),
            caption: "The best succulent ever?".into(),
            ..Default::default()
        }))
    );
    let document = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
        "type": "document",
        "document": { "link": "https://www.luckyshrub.com/invoices/FmOzfD9cKf/lucky-shrub-invoice.pdf",
                      "caption": "Lucky Shrub Invoice", "filename": "lucky-shrub-invoice.pdf" }
    }));
    assert_eq!(
        document.content,
        Some(Content::Media(MediaContent {
            kind: "document".into(),
            link: "https://www.luckyshrub.com/invoices/FmOzfD9cKf/lucky-shrub-invoice.pdf".into(),
            caption: "Lucky Shrub Invoice".into(),
            filename: "lucky-shrub-invoice.pdf".into(),
            ..Default::default()
        }))
    );
    for kind in ["audio", "video", "sticker"] {
        let req = send(json!({
            "messaging_product": "whatsapp", "to": "16505551234", "type": kind,
            kind: { "id": "1013859600285441" }
        }));
        assert!(
            matches!(req.content, Some(Content::Media(m)) if m.kind == kind && m.media_id == "1013859600285441")
        );
    }
}

#[test]
fn media_needs_exactly_one_of_id_and_link_and_its_own_keys() {
    let both = refused(
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image",
                              "image": {"id": "1", "link": "https://x/y.png"}}),
    );
    assert_eq!(both.code, 100);
    let filename = refused(
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image",
                                  "image": {"id": "1", "filename": "a.png"}}),
    );
    assert!(
        filename.details.contains("Unexpected key \"filename\""),
        "{}",
        filename.details
    );
}

#[test]
fn interactive_buttons_and_lists_pass_through() {
    let buttons = json!({
        "type": "button",
        "header": { "type": "text", "text": "Choose" },
        "body": { "text": "Hi Pablo! Your gardening workshop is scheduled for 9am tomorrow." },
        "footer": { "text": "Lucky Shrub" },
        "action": { "buttons": [
            { "type": "reply", "reply": { "id": "change-button", "title": "Change" } },
            { "type": "reply", "reply": { "id": "cancel-button", "title": "Cancel" } }
        ] }
    });
    let req = send(
        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                          "to": "+16505551234", "type": "interactive", "interactive": buttons}),
    );
    let Some(Content::Interactive(i)) = req.content else {
        panic!("not interactive")
    };
    assert_eq!(serde_json::from_str::<Value>(&i.json).unwrap(), buttons);
    let list = json!({
        "type": "list",
        "body": { "text": "Which shipping option do you prefer?" },
        "action": { "button": "Shipping Options", "sections": [{
            "title": "I want it ASAP!",
            "rows": [{ "id": "priority_express", "title": "Express Shipping", "description": "Next Day to 2 Days" }]
        }] }
    });
    let req = send(json!({"messaging_product": "whatsapp", "to": "16505551234",
                          "type": "interactive", "interactive": list}));
    assert!(matches!(req.content, Some(Content::Interactive(_))));
}

#[test]
fn a_reaction_a_location_and_contacts() {
    let reaction = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
        "type": "reaction",
        "reaction": { "message_id": "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQUZCMTY0MDc2MUYwNzBDNTY5MAA=", "emoji": "\u{1F600}" }
    }));
    assert_eq!(
        reaction.content,
        Some(Content::Reaction(ReactionContent {
            message_id: "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQUZCMTY0MDc2MUYwNzBDNTY5MAA=".into(),
            emoji: "\u{1F600}".into(),
        }))
    );
    let location = send(json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
        "type": "location",
        "location": { "latitude": "37.44216251868683", "longitude": "-122.16153582049394",
                      "name": "Philz Coffee", "address": "101 Forest Ave, Palo Alto, CA 94301" }
    }));
    assert_eq!(
        location.content,
        Some(Content::Location(LocationContent {
            latitude: 37.442_162_518_686_83,
            longitude: -122.161_535_820_493_94,
            name: "Philz Coffee".into(),
            address: "101 Forest Ave, Palo Alto, CA 94301".into(),
        }))
    );
    let cards = json!([{
        "addresses": [{ "street": "1 Lucky Shrub Way", "city": "Menlo Park", "state": "CA", "zip": "94025", "country": "United States", "country_code": "US", "type": "WORK" }],
        "birthday": "1999-01-23",
        "emails": [{ "email": "bjohnson@luckyshrub.com", "type": "WORK" }],
        "name": { "formatted_name": "Barbara J. Johnson", "first_name": "Barbara", "last_name": "Johnson" },
        "org": { "company": "Lucky Shrub", "department": "Legal", "title": "Lead Counsel" },
        "phones": [{ "phone": "+16505559999", "type": "HOME" }],
        "urls": [{ "url": "https://www.luckyshrub.com", "type": "WORK" }]
    }]);
    let contacts = send(
        json!({"messaging_product": "whatsapp", "to": "+16505551234",
                               "type": "contacts", "contacts": cards}),
    );
    let Some(Content::Contacts(c)) = contacts.content else {
        panic!("not contacts")
    };
    assert_eq!(serde_json::from_str::<Value>(&c.json).unwrap(), cards);
}

#[test]
fn mark_as_read_with_and_without_a_typing_indicator() {
    assert_eq!(
        parse(&json!({"messaging_product": "whatsapp", "status": "read",
                      "message_id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"}))
        .unwrap(),
        Asked::MarkRead {
            message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA".into(),
            typing_indicator: false,
        }
    );
    assert_eq!(
        parse(
            &json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X",
                      "typing_indicator": {"type": "text"}})
        )
        .unwrap(),
        Asked::MarkRead {
            message_id: "wamid.X".into(),
            typing_indicator: true,
        }
    );
}

#[test]
fn unknown_keys_and_missing_parameters_are_the_cloud_apis_100() {
    let stray = refused(json!({"messaging_product": "whatsapp", "to": "1", "txt": {"body": "x"}}));
    assert_eq!(stray.code, 100);
    assert_eq!(stray.details, "Unexpected key \"txt\" on param \"body\".");
    let nested = refused(json!({"messaging_product": "whatsapp", "to": "1",
                                "text": {"body": "x", "bold": true}}));
    assert_eq!(nested.details, "Unexpected key \"bold\" on param \"text\".");
    let no_product = refused(json!({"to": "1", "text": {"body": "x"}}));
    assert_eq!(
        no_product.details,
        "The parameter messaging_product is required."
    );
    let no_to = refused(json!({"messaging_product": "whatsapp", "text": {"body": "x"}}));
    assert!(no_to.details.contains("to"));
    let wrong_object = refused(
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image",
                                      "text": {"body": "x"}}),
    );
    assert_eq!(wrong_object.code, 100);
    let not_an_object = refused(json!(["messaging_product"]));
    assert_eq!(not_an_object.code, 100);
}

#[test]
fn what_finestra_does_not_carry_out_is_refused_by_name() {
    let reply = refused(json!({"messaging_product": "whatsapp", "to": "1",
                               "context": {"message_id": "wamid.X"}, "text": {"body": "x"}}));
    assert!(reply.details.contains("context"), "{}", reply.details);
    let header = refused(
        json!({"messaging_product": "whatsapp", "to": "1", "type": "template",
        "template": {"name": "t", "language": {"code": "en"}, "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/y.png"}}]}]}}),
    );
    assert!(header.details.contains("header"), "{}", header.details);
    let group = refused(
        json!({"messaging_product": "whatsapp", "recipient_type": "group",
                               "to": "1", "text": {"body": "x"}}),
    );
    assert_eq!(group.code, 100);
}

#[test]
fn the_answer_is_the_cloud_apis() {
    assert_eq!(
        accepted("+16505551234", "m_1", false),
        json!({"messaging_product": "whatsapp",
               "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
               "messages": [{"id": "m_1"}]})
    );
    assert_eq!(
        accepted("16505551234", "m_2", true)["messages"][0]["message_status"],
        "accepted"
    );
}
