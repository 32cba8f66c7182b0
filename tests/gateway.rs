//! The Cloud API gateway against the whole platform: requests as the Cloud API's reference
//! writes them go out through dispatch to the network and answer in the Cloud API's shapes;
//! every refusal of the send rules comes back with the network's error code; bad requests get
//! the Cloud API's error shape, never a 500.

use finestra_e2e::WAIT;
use finestra_e2e::chain::UTILITY_IT;
use finestra_e2e::facade::{Answer, Facade};
use finestra_platform::auth::Scope as KeyScope;
use finestra_testkit::eventually;
use serde_json::{Value, json};

const USER: &str = "393331110001";

fn text(to: &str, body: &str) -> Value {
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
           "type": "text", "text": {"preview_url": false, "body": body}})
}

/// A template as pywa and the Cloud API's reference write it.
fn template(to: &str, name: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"type": "text", "text": p}))
        .collect();
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
           "type": "template",
           "template": {"name": name, "language": {"code": "it"},
                        "components": [{"type": "BODY", "parameters": parameters}]}})
}

fn is_cloud_error(a: &Answer, code: i64, http: u16) {
    assert_eq!((a.code(), a.status), (code, http), "{}", a.body);
    let error = &a.body["error"];
    assert_eq!(
        error["message"]
            .as_str()
            .map(|m| m.starts_with(&format!("(#{code})"))),
        Some(true),
        "{}",
        a.body
    );
    assert_eq!(error["type"], "OAuthException");
    assert_eq!(error["error_data"]["messaging_product"], "whatsapp");
    assert!(error["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_type_goes_out_and_answers_as_the_cloud_api() -> anyhow::Result<()> {
    let f = Facade::start().await?;
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.top_up(10 * UTILITY_IT).await?;

    // Outside any window only a template may go: free-form is the network's 131047.
    let closed = f.message(&text(USER, "Ciao")).await?;
    is_cloud_error(&closed, 131_047, 400);
    assert_eq!(
        closed.body["error"]["error_data"]["finestra_reason"],
        "WINDOW_CLOSED"
    );

    let sent = f
        .message(&template(USER, "order_update", &["Giulia", "A-1"]))
        .await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(
        sent.body["contacts"],
        json!([{"input": USER, "wa_id": USER}])
    );
    assert_eq!(sent.body["messaging_product"], "whatsapp");
    assert_eq!(sent.body["messages"][0]["message_status"], "accepted");
    let template_id = sent.message_id().to_owned();
    let delivered = f
        .chain
        .settles(&template_id, &["DELIVERED", "READ"])
        .await?;
    assert_eq!(
        (delivered.kind.as_str(), delivered.template_name.as_str()),
        ("template", "order_update")
    );

    // The user writes: every free-form type may go, each as its kind.
    let wamid = f.chain.user_writes(USER, 0, false).await?;
    f.chain.user_says(USER, 0, false).await?;
    let bodies = [
        ("text", text(&format!("+{USER}"), "Thanks, it ships today")),
        (
            "image",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "image",
                          "image": {"link": "https://example.com/a.jpg", "caption": "Your plant"}}),
        ),
        (
            "document",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "document",
                             "document": {"link": "https://example.com/invoice.pdf",
                                          "caption": "Invoice", "filename": "invoice.pdf"}}),
        ),
        (
            "audio",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "audio",
                          "audio": {"link": "https://example.com/a.ogg"}}),
        ),
        (
            "video",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "video",
                          "video": {"link": "https://example.com/a.mp4", "caption": "How to"}}),
        ),
        (
            "interactive",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "Change or cancel?"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "change", "title": "Change"}},
                                       {"type": "reply", "reply": {"id": "cancel", "title": "Cancel"}}]}}}),
        ),
        (
            "interactive",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "interactive",
            "interactive": {"type": "list", "body": {"text": "Which shipping?"},
                "action": {"button": "Options", "sections": [{"title": "Fast",
                    "rows": [{"id": "express", "title": "Express", "description": "Next day"}]}]}}}),
        ),
        (
            "reaction",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "reaction",
                             "reaction": {"message_id": wamid, "emoji": "\u{1F44D}"}}),
        ),
        (
            "location",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "location",
                             "location": {"latitude": 45.4642, "longitude": 9.19,
                                          "name": "Duomo", "address": "Piazza del Duomo, Milano"}}),
        ),
        (
            "contacts",
            json!({"messaging_product": "whatsapp", "to": USER, "type": "contacts",
                             "contacts": [{"name": {"formatted_name": "Barbara Johnson", "first_name": "Barbara"},
                                           "phones": [{"phone": "+16505559999", "type": "WORK"}]}]}),
        ),
    ];
    for (kind, body) in &bodies {
        let a = f.message(body).await?;
        assert_eq!(a.status, 200, "{kind}: {}", a.body);
        assert!(a.body["messages"][0].get("message_status").is_none());
        let m = f
            .chain
            .settles(a.message_id(), &["DELIVERED", "READ"])
            .await?;
        assert_eq!(m.kind, *kind);
    }

    // A read receipt of the user's message.
    let read = f
        .message(
            &json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid,
                         "typing_indicator": {"type": "text"}}),
        )
        .await?;
    assert_eq!((read.status, &read.body), (200, &json!({"success": true})));

    // Idempotency-Key is honoured; without it each POST is a new message.
    let path = format!("{}/messages", f.chain.number);
    let keyed = [("idempotency-key", "order-77-shipped")];
    let once = f
        .post_as(&path, Some(&f.token), &text(USER, "Once"), &keyed)
        .await?;
    let again = f
        .post_as(&path, Some(&f.token), &text(USER, "Once"), &keyed)
        .await?;
    assert_eq!(once.message_id(), again.message_id());
    let conflict = f
        .post_as(&path, Some(&f.token), &text(USER, "Other"), &keyed)
        .await?;
    is_cloud_error(&conflict, 100, 400);
    let first = f.message(&text(USER, "Twice")).await?;
    let second = f.message(&text(USER, "Twice")).await?;
    assert_ne!(first.message_id(), second.message_id());
    f.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_of_the_send_rules_has_the_networks_error_code() -> anyhow::Result<()> {
    let f = Facade::start().await?;
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.template("autumn_sale", "MARKETING", 0).await?;
    f.chain
        .template_with_status("draft_offer", "MARKETING", 0, "PENDING")
        .await?;

    // No funds yet: a paid template is refused as the network refuses an unpaid account.
    let unpaid = f
        .message(&template(USER, "order_update", &["a", "b"]))
        .await?;
    is_cloud_error(&unpaid, 131_042, 400);
    f.chain.top_up(100 * UTILITY_IT).await?;

    is_cloud_error(&f.message(&text(USER, "hi")).await?, 131_047, 400);
    is_cloud_error(
        &f.message(&template(USER, "order_update", &["only one"]))
            .await?,
        132_000,
        400,
    );
    is_cloud_error(
        &f.message(&template(USER, "no_such_template", &[])).await?,
        132_001,
        400,
    );
    is_cloud_error(
        &f.message(&template(USER, "draft_offer", &[])).await?,
        132_001,
        400,
    );
    let too_long = "x".repeat(4_097);
    f.chain.user_says(USER, 0, false).await?;
    is_cloud_error(&f.message(&text(USER, &too_long)).await?, 100, 400);
    is_cloud_error(&f.message(&text("not-a-number", "hi")).await?, 100, 400);

    // The user stops marketing: a marketing template is the network's 131050.
    f.chain
        .sim(
            "preference",
            json!({"phone_number_id": f.chain.number, "user": USER, "stop": true}),
        )
        .await?;
    eventually("the stop is known", WAIT, || async {
        let a = f.message(&template(USER, "autumn_sale", &[])).await?;
        Ok((a.code() == 131_050).then_some(a))
    })
    .await?;

    // The user blocks the number: 131026.
    f.chain
        .sim(
            "block",
            json!({"phone_number_id": f.chain.number, "user": USER, "blocked": true}),
        )
        .await?;
    let blocked = eventually("the block is known", WAIT, || async {
        let a = f
            .message(&template(USER, "order_update", &["a", "b"]))
            .await?;
        Ok((a.code() == 131_026).then_some(a))
    })
    .await?;
    is_cloud_error(&blocked, 131_026, 400);
    assert_eq!(
        blocked.body["error"]["error_data"]["finestra_reason"],
        "USER_BLOCKED"
    );

    // Keys: none or a bad one is 190; a read key may not send (10); another tenant's key does
    // not learn that the number exists (100, as for a number nobody has).
    let path = format!("{}/messages", f.chain.number);
    let body = template(USER, "order_update", &["a", "b"]);
    is_cloud_error(&f.post_as(&path, None, &body, &[]).await?, 190, 401);
    is_cloud_error(
        &f.post_as(&path, Some("fin_test_notakeyatall"), &body, &[])
            .await?,
        190,
        401,
    );
    let reader = f.chain.scope.tenant_key("acme", &[KeyScope::Read]).await?;
    is_cloud_error(&f.post_as(&path, Some(&reader), &body, &[]).await?, 10, 403);
    f.chain.scope.tenant_with_number("rival", 2).await?;
    let rival = f.chain.scope.tenant_key("rival", &[KeyScope::Send]).await?;
    let foreign = f.post_as(&path, Some(&rival), &body, &[]).await?;
    is_cloud_error(&foreign, 100, 400);
    let nobodys = f.post("999000111/messages", &body).await?;
    is_cloud_error(&nobodys, 100, 400);
    assert_eq!(
        foreign.body["error"]["error_subcode"],
        nobodys.body["error"]["error_subcode"]
    );

    // The lowest tier (250 new users a day): past it, the network's spam rate limit.
    f.chain.top_up(300 * UTILITY_IT).await?;
    sqlx::query("UPDATE accounts.tenants SET tier = 250 WHERE tenant_id = $1")
        .bind(&f.chain.tenant)
        .execute(&finestra_testkit::infra().await?.pool)
        .await?;
    // The facts cache sees the tier within its TTL.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut accepted = 0;
    let mut capped = None;
    for i in 0..300 {
        let a = f
            .message(&template(
                &format!("3933320{i:05}"),
                "order_update",
                &["a", "b"],
            ))
            .await?;
        if a.status == 200 {
            accepted += 1;
        } else {
            capped = Some(a);
            break;
        }
    }
    let capped = capped.ok_or_else(|| anyhow::anyhow!("300 new users were all accepted"))?;
    is_cloud_error(&capped, 131_048, 400);
    assert_eq!(
        capped.body["error"]["error_data"]["finestra_reason"],
        "TIER_LIMIT_REACHED"
    );
    assert!(
        accepted <= 250,
        "{accepted} new users before the tier refused"
    );

    // The partner suspends the tenant: its own key stops working (190), and a send the
    // partner makes for it is the locked account's 131031.
    use finestra_platform::auth::Owner;
    use finestra_proto::v1::accounts_service_client::AccountsServiceClient;
    let s = &f.chain.scope;
    let partner = s
        .key(
            Owner::Partner {
                partner_id: s.partner_id(),
            },
            &[KeyScope::Admin],
        )
        .await?;
    AccountsServiceClient::new(
        finestra_testkit::authed_channel(f.accounts.running.grpc_url(), &partner).await?,
    )
    .set_tenant_status(finestra_proto::v1::SetTenantStatusRequest {
        tenant_id: f.chain.tenant.clone(),
        status: finestra_proto::v1::Status::Suspended as i32,
    })
    .await?;
    let locked = eventually("the suspension is known", WAIT, || async {
        let a = f.post_as(&path, Some(&partner), &body, &[]).await?;
        Ok((a.code() == 131_031).then_some(a))
    })
    .await?;
    assert_eq!(
        locked.body["error"]["error_data"]["finestra_reason"],
        "TENANT_SUSPENDED"
    );
    let own = eventually("the tenant's key stops working", WAIT, || async {
        let a = f.post_as(&path, Some(&f.token), &body, &[]).await?;
        Ok((a.code() == 190).then_some(a))
    })
    .await?;
    is_cloud_error(&own, 190, 401);
    f.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_cloud_api_error_shape_and_never_a_500() -> anyhow::Result<()> {
    let f = Facade::start().await?;
    let path = format!("{}/messages", f.chain.number);
    let url = f.url(&path);
    let raw = |body: Vec<u8>| {
        f.chain
            .http
            .post(&url)
            .bearer_auth(&f.token)
            .header("content-type", "application/json")
            .body(body)
    };
    let answers = [
        ("bad JSON", raw(b"{\"messaging_product\": ".to_vec())),
        ("not an object", raw(b"[1,2]".to_vec())),
        (
            "unknown field",
            raw(
                br#"{"messaging_product":"whatsapp","to":"1","text":{"body":"x"},"colour":"red"}"#
                    .to_vec(),
            ),
        ),
        (
            "oversize",
            raw(format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024)).into_bytes()),
        ),
        (
            "unknown path",
            f.chain
                .http
                .post(f.url("123/frobnicate"))
                .bearer_auth(&f.token)
                .body("{}"),
        ),
        (
            "bad version",
            f.chain
                .http
                .post(format!("{}/latest/{path}", f.base))
                .bearer_auth(&f.token)
                .body("{}"),
        ),
        (
            "wrong method",
            f.chain.http.delete(f.url(&path)).bearer_auth(&f.token),
        ),
        (
            "a filter not carried out",
            f.chain
                .http
                .get(f.url(&format!(
                    "{}/message_templates?name=x",
                    f.chain.scope.waba_id("acme")
                )))
                .bearer_auth(&f.token),
        ),
    ];
    for (what, request) in answers {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        assert!((400..500).contains(&status), "{what}: HTTP {status}");
        assert_eq!(body["error"]["code"], 100, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("(#100)")),
            "{what}: {body}"
        );
    }
    let unknown = f
        .message(&json!({"messaging_product": "whatsapp", "to": "1", "text": {"body": "x"}, "colour": "red"}))
        .await?;
    assert_eq!(
        unknown.body["error"]["error_data"]["details"],
        "Unexpected key \"colour\" on param \"body\"."
    );
    f.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_numbers_and_media_in_the_cloud_apis_shape() -> anyhow::Result<()> {
    let f = Facade::start().await?;
    let waba = f.chain.scope.waba_id("acme");
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.top_up(10 * UTILITY_IT).await?;

    // A template created through the Cloud API's endpoint is submitted to the network.
    let created = f
        .post(
            &format!("{waba}/message_templates"),
            &json!({"name": "seasonal_promo", "language": "it", "category": "MARKETING",
                    "components": [{"type": "HEADER", "format": "TEXT", "text": "Autumn"},
                                   {"type": "BODY", "text": "Ciao {{1}}, 20% off until {{2}}."},
                                   {"type": "FOOTER", "text": "Reply STOP to stop"}]}),
        )
        .await?;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["category"], "MARKETING");
    assert!(created.body["id"].as_str().is_some_and(|id| !id.is_empty()));
    let listed = f.get(&format!("{waba}/message_templates?limit=10")).await?;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let names: Vec<&str> = listed.body["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"seasonal_promo") && names.contains(&"order_update"),
        "{names:?}"
    );
    let promo = listed.body["data"]
        .as_array()
        .and_then(|d| d.iter().find(|t| t["name"] == "seasonal_promo"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        promo["components"][1],
        json!({"type": "BODY", "text": "Ciao {{1}}, 20% off until {{2}}."})
    );
    // Another tenant's business account is no account at all to this key.
    f.chain.scope.tenant_with_number("rival", 2).await?;
    let rival_waba = f.chain.scope.waba_id("rival");
    let foreign = f.get(&format!("{rival_waba}/message_templates")).await?;
    assert_eq!(
        (foreign.code(), foreign.status),
        (100, 400),
        "{}",
        foreign.body
    );

    // The number, described as the Cloud API describes it.
    let number = f.get(&f.chain.number).await?;
    assert_eq!(number.status, 200, "{}", number.body);
    assert_eq!(number.body["id"], f.chain.number.as_str());
    assert_eq!(number.body["platform_type"], "CLOUD_API");
    assert!(
        number.body["display_phone_number"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    // An upload answers an id that a message sends by.
    let form = reqwest::multipart::Form::new()
        .text("messaging_product", "whatsapp")
        .text("type", "application/pdf")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec())
                .file_name("invoice.pdf")
                .mime_str("application/pdf")?,
        );
    let uploaded = f
        .chain
        .http
        .post(f.url(&format!("{}/media", f.chain.number)))
        .bearer_auth(&f.token)
        .multipart(form)
        .send()
        .await?;
    assert_eq!(uploaded.status().as_u16(), 200);
    let uploaded: Value = uploaded.json().await?;
    let media_id = uploaded["id"].as_str().unwrap_or_default().to_owned();
    assert!(!media_id.is_empty(), "{uploaded}");
    // It can be read back by its id, as the Cloud API lets an uploader.
    let described = f.get(&media_id).await?;
    assert_eq!(described.status, 200, "{}", described.body);
    assert_eq!(
        (&described.body["mime_type"], &described.body["file_size"]),
        (&json!("application/pdf"), &json!(16))
    );
    let back = f
        .chain
        .http
        .get(described.body["url"].as_str().unwrap_or_default())
        .bearer_auth(&f.token)
        .send()
        .await?
        .bytes()
        .await?;
    assert_eq!(&back[..], b"%PDF-1.4 invoice");
    let sent = f
        .message(&json!({"messaging_product": "whatsapp", "to": USER, "type": "template",
                         "template": {"name": "order_update", "language": {"code": "it"},
                                      "components": [{"type": "body", "parameters": [
                                          {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}}))
        .await?;
    assert_eq!(sent.status, 200, "{}", sent.body);
    f.chain.user_says(USER, 0, false).await?;
    let by_id = f
        .message(
            &json!({"messaging_product": "whatsapp", "to": USER, "type": "document",
                         "document": {"id": media_id, "filename": "invoice.pdf"}}),
        )
        .await?;
    assert_eq!(by_id.status, 200, "{}", by_id.body);
    f.chain
        .settles(by_id.message_id(), &["DELIVERED", "READ"])
        .await?;

    // A photo the user sent: described, then downloaded from the URL given, with the key.
    let said = f
        .chain
        .sim(
            "say",
            json!({"phone_number_id": f.chain.number, "from": USER, "name": "Giulia",
                   "text": "this one", "media": "image", "media_bytes": 4_096}),
        )
        .await?;
    let wamid = said["wamid"].as_str().unwrap_or_default();
    let user_media = f.chain.announced_media(wamid).await?.media_id;
    let described = eventually("the user's photo is kept", WAIT, || async {
        let a = f.get(&user_media).await?;
        Ok((a.status == 200).then_some(a))
    })
    .await?;
    assert_eq!(described.body["file_size"], 4_096);
    assert_eq!(described.body["id"], user_media.as_str());
    let url = described.body["url"].as_str().unwrap_or_default();
    let bytes = f.chain.http.get(url).bearer_auth(&f.token).send().await?;
    assert_eq!(bytes.status().as_u16(), 200);
    assert_eq!(bytes.bytes().await?.len(), 4_096);
    let keyless = f.chain.http.get(url).send().await?;
    assert_eq!(keyless.status().as_u16(), 401);
    f.stop().await;
    Ok(())
}

/// One gateway endpoint of the authorization table: its method, path, body and the scope its
/// Finestra call needs.
struct Endpoint {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
    needs: KeyScope,
}

/// Whether the answer reached the tenant's data (anything but a refused key or "no object").
fn reached(a: &Answer) -> bool {
    let not_found = a.code() == 100 && a.body["error"]["error_subcode"] == 33;
    !(matches!(a.status, 401 | 403) || not_found)
}

/// The gateway's keys, scopes and tenant isolation are the gRPC API's: the tenant's partner and
/// the operator reach every endpoint, another tenant or partner finds nothing (100), a key
/// without the scope is 10 and no or a bad key 190.
#[tokio::test(flavor = "multi_thread")]
async fn every_gateway_endpoint_enforces_reach_and_scope() -> anyhow::Result<()> {
    use finestra_platform::auth::Owner;
    let f = Facade::start().await?;
    f.chain.template("order_update", "UTILITY", 2).await?;
    f.chain.top_up(100 * UTILITY_IT).await?;
    let s = &f.chain.scope;
    let wamid = f.chain.user_writes(USER, 0, false).await?;
    f.chain.user_says(USER, 0, false).await?;
    let said = f
        .chain
        .sim(
            "say",
            json!({"phone_number_id": f.chain.number, "from": USER, "text": "photo", "media": "image"}),
        )
        .await?;
    let media = f
        .chain
        .announced_media(said["wamid"].as_str().unwrap_or_default())
        .await?
        .media_id;
    let (number, waba) = (f.chain.number.clone(), s.waba_id("acme"));
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    let endpoints = [
        Endpoint {
            name: "send",
            method: post.clone(),
            path: format!("{number}/messages"),
            body: Some(template(USER, "order_update", &["a", "b"])),
            needs: KeyScope::Send,
        },
        Endpoint {
            name: "mark read",
            method: post.clone(),
            path: format!("{number}/messages"),
            body: Some(
                json!({"messaging_product": "whatsapp", "status": "read", "message_id": wamid}),
            ),
            needs: KeyScope::Send,
        },
        Endpoint {
            name: "list templates",
            method: get.clone(),
            path: format!("{waba}/message_templates"),
            body: None,
            needs: KeyScope::Read,
        },
        Endpoint {
            name: "create template",
            method: post.clone(),
            path: format!("{waba}/message_templates"),
            body: Some(
                json!({"name": "t{unique}", "language": "it", "category": "UTILITY",
                                     "components": [{"type": "BODY", "text": "Ciao {{1}}"}]}),
            ),
            needs: KeyScope::Admin,
        },
        Endpoint {
            name: "number",
            method: get.clone(),
            path: number.clone(),
            body: None,
            needs: KeyScope::Read,
        },
        Endpoint {
            name: "media",
            method: get.clone(),
            path: format!("{media}?phone_number_id={number}"),
            body: None,
            needs: KeyScope::Read,
        },
    ];
    let all = [KeyScope::Admin];
    let partner = s
        .key(
            Owner::Partner {
                partner_id: s.partner_id(),
            },
            &all,
        )
        .await?;
    let operator = s.key(Owner::Operator, &all).await?;
    s.tenant_with_number("rival", 2).await?;
    let rival = s.tenant_key("rival", &all).await?;
    let mut unique = 0;
    let mut call = |e: &Endpoint, key: Option<&str>| {
        unique += 1;
        let mut request = f.chain.http.request(e.method.clone(), f.url(&e.path));
        if let Some(body) = &e.body {
            let text = body.to_string().replace("{unique}", &unique.to_string());
            request = request
                .header("content-type", "application/json")
                .body(text);
        }
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body: Value = response.json().await?;
            anyhow::Ok(Answer {
                status,
                body,
                headers,
            })
        }
    };
    for e in &endpoints {
        for (who, key) in [("the partner", &partner), ("the operator", &operator)] {
            let a = call(e, Some(key)).await?;
            assert!(reached(&a), "{}: {who}: {}", e.name, a.body);
        }
        let narrower: &[KeyScope] = match e.needs {
            KeyScope::Admin => &[KeyScope::Send],
            KeyScope::Send => &[KeyScope::Read],
            KeyScope::Read => &[],
        };
        if !narrower.is_empty() {
            let weak = s.tenant_key("acme", narrower).await?;
            let a = call(e, Some(&weak)).await?;
            assert_eq!(
                (a.code(), a.status),
                (10, 403),
                "{}: narrower key: {}",
                e.name,
                a.body
            );
        }
        let a = call(e, Some(&rival)).await?;
        assert_eq!(a.code(), 100, "{}: another tenant: {}", e.name, a.body);
        assert!(!reached(&a), "{}: another tenant: {}", e.name, a.body);
        for key in [None, Some("fin_test_garbage"), Some("")] {
            let a = call(e, key).await?;
            assert_eq!(
                (a.code(), a.status),
                (190, 401),
                "{}: key {key:?}: {}",
                e.name,
                a.body
            );
        }
    }
    f.stop().await;
    Ok(())
}
