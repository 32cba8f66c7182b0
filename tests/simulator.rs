//! The simulator as the provider: the Cloud API's send surface, its own window/block/
//! throughput rules, and signed status and inbound webhooks that ingest accepts (so they reach
//! the topics), against the real ingest, Postgres and broker. It knows only the numbers
//! registered with it and the templates submitted to it.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_proto::v1::envelope::Payload;
use finestra_testkit::{Scope, eventually, infra, read_all};
use serde_json::{Value, json};

const TOKEN: &str = "sim-test-token";

struct Net {
    base: String,
    number: String,
    http: reqwest::Client,
}

impl Net {
    async fn send(&self, token: &str, number: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/v21.0/{number}/messages", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await?))
    }

    async fn control(&self, path: &str, body: Value) -> anyhow::Result<u16> {
        Ok(self
            .http
            .post(format!("{}/sim/v1/{path}", self.base))
            .json(&body)
            .send()
            .await?
            .status()
            .as_u16())
    }
}

fn text(to: &str) -> Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": "hi"}})
}

fn template(to: &str, callback: &str) -> Value {
    json!({"messaging_product": "whatsapp", "to": to, "type": "template",
           "template": {"name": "offer", "language": {"code": "it"}},
           "biz_opaque_callback_data": callback})
}

/// Tells the network of the scope's number, and submits the marketing template `offer` (no
/// parameters) that the sends use, approved.
async fn network_with_offer(
    scope: &Scope,
    base_url: &str,
    rate: u32,
) -> anyhow::Result<finestra_testkit::Network> {
    let network = finestra_testkit::Network::new(base_url, TOKEN, rate);
    network.register_all(scope).await?;
    let waba = scope
        .network_numbers()
        .first()
        .map(|n| n.waba_id.clone())
        .unwrap_or_default();
    network
        .template(
            &waba,
            "offer",
            "MARKETING",
            "Half price tonight",
            "APPROVED",
        )
        .await?;
    Ok(network)
}

/// A simulator of this test's own network, posting its webhooks to `ingest_http`.
fn sim_config(
    scope: &Scope,
    ingest_http: std::net::SocketAddr,
    read_per_mille: u32,
) -> anyhow::Result<finestra_simulator::SimConfig> {
    Ok(finestra_simulator::SimConfig {
        http_addr: "127.0.0.1:0".parse()?,
        database_url: scope.config()?.database_url,
        network: format!("test-{}", scope.id()),
        webhook_url: format!("http://{ingest_http}/webhooks/cloud-api"),
        access_token: TOKEN.into(),
        status_delay: Duration::from_millis(10),
        failure_per_mille: 0,
        read_per_mille,
        number_rate: 80,
        ingest_url: String::new(),
        ingest_key: String::new(),
        review_delay: Duration::from_millis(100),
        banned_word: "casino".into(),
    })
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_sends_applies_the_networks_rules_and_reports_statuses() -> anyhow::Result<()>
{
    let scope = Scope::new();
    infra().await?;
    scope.create_topics().await?;
    let (_, number, _) = scope.tenant_with_number("sim", 1).await?;
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let http_addr = ingest
        .running
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("ingest has an HTTP listener"))?;
    let shutdown = finestra_platform::Shutdown::new();
    let sim = finestra_simulator::start(
        sim_config(&scope, http_addr, 1_000)?,
        finestra_testkit::system_clock(),
        shutdown.clone(),
    )
    .await?;
    // Before the partner registers it, the network does not know the number.
    let unregistered = Net {
        base: sim.base_url(),
        number: number.clone(),
        http: reqwest::Client::new(),
    };
    let (status, body) = unregistered
        .send(TOKEN, &number, template("393470000999", "early"))
        .await?;
    assert_eq!((status, error_code(&body)), (400, 100), "{body}");
    let network = network_with_offer(&scope, &sim.base_url(), 80).await?;
    let waba = scope.waba_id("sim");
    let net = Net {
        base: sim.base_url(),
        number: number.clone(),
        http: reqwest::Client::new(),
    };
    let user = "393470000123";

    // A template needs no window: accepted, then sent → delivered → read, signed and echoed.
    let (status, body) = net
        .send(TOKEN, &net.number, template(user, "msg-1"))
        .await?;
    assert_eq!(status, 200, "{body}");
    let wamid = body["messages"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("a wamid in {body}"))?
        .to_owned();
    assert_eq!(body["contacts"][0]["wa_id"], user);
    let topics = scope.topics();
    let statuses = eventually("three statuses ingested", WAIT, || async {
        let seen: Vec<(String, String)> = read_all(&topics.status)
            .await?
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(Payload::MessageStatus(s)) if s.message_id == wamid => {
                    Some((s.status, s.callback_data))
                }
                _ => None,
            })
            .collect();
        Ok((seen.len() == 3).then_some(seen))
    })
    .await?;
    assert_eq!(
        statuses,
        vec![
            ("sent".to_owned(), "msg-1".to_owned()),
            ("delivered".to_owned(), "msg-1".to_owned()),
            ("read".to_owned(), "msg-1".to_owned())
        ]
    );
    // `sent` and `delivered` were reported in one webhook, so they travel in one record;
    // `read` came later in its own.
    assert_eq!(
        finestra_testkit::count_records(&topics.status).await?,
        2,
        "sent+delivered packed in one record, read in another"
    );

    // Free-form outside the window: 131047, as the real network answers.
    let (status, body) = net.send(TOKEN, &net.number, text(user)).await?;
    assert_eq!((status, error_code(&body)), (400, 131_047), "{body}");
    // The user writes (through ingest, so the business sees it): the window opens.
    assert_eq!(
        net.control(
            "say",
            json!({"phone_number_id": number, "from": user, "name": "Giulia", "text": "ciao"})
        )
        .await?,
        200
    );
    eventually("the user's message ingested", WAIT, || async {
        Ok(read_all(&topics.inbound)
            .await?
            .iter()
            .any(|e| matches!(&e.payload, Some(Payload::InboundMessage(m)) if m.text == "ciao"))
            .then_some(()))
    })
    .await?;
    let (status, body) = net.send(TOKEN, &net.number, text(user)).await?;
    assert_eq!(status, 200, "inside the window: {body}");
    // Users send media too: an inbound image with its caption.
    assert_eq!(
        net.control(
            "say",
            json!({"phone_number_id": number, "from": user, "text": "our receipt", "media": "image"})
        )
        .await?,
        200
    );
    eventually("the user's image ingested", WAIT, || async {
        Ok(read_all(&topics.inbound)
            .await?
            .iter()
            .any(|e| {
                matches!(&e.payload, Some(Payload::InboundMessage(m))
                if m.message_type == "image" && m.text == "our receipt")
            })
            .then_some(()))
    })
    .await?;

    // A user who blocked the number receives nothing.
    net.control(
        "block",
        json!({"phone_number_id": number, "user": user, "blocked": true}),
    )
    .await?;
    let (status, body) = net
        .send(TOKEN, &net.number, template(user, "msg-2"))
        .await?;
    assert_eq!((status, error_code(&body)), (400, 131_026), "{body}");
    net.control(
        "block",
        json!({"phone_number_id": number, "user": user, "blocked": false}),
    )
    .await?;

    // Templates: unknown, wrong parameter count, marketing to a user who stopped it.
    let mut unknown = template(user, "x");
    unknown["template"]["name"] = json!("no_such_template");
    let (status, body) = net.send(TOKEN, &net.number, unknown).await?;
    assert_eq!((status, error_code(&body)), (400, 132_001), "{body}");
    let mut extra = template(user, "x");
    extra["template"]["components"] =
        json!([{"type": "body", "parameters": [{"type": "text", "text": "surplus"}]}]);
    let (status, body) = net.send(TOKEN, &net.number, extra).await?;
    assert_eq!((status, error_code(&body)), (400, 132_000), "{body}");
    net.control(
        "preference",
        json!({"phone_number_id": number, "user": user, "stop": true}),
    )
    .await?;
    let (status, body) = net.send(TOKEN, &net.number, template(user, "x")).await?;
    assert_eq!((status, error_code(&body)), (400, 131_050), "{body}");
    net.control(
        "preference",
        json!({"phone_number_id": number, "user": user, "stop": false}),
    )
    .await?;
    // A template the network paused or disabled, or one it has not reviewed yet.
    for (event, code) in [("PAUSED", 132_015), ("DISABLED", 132_016)] {
        assert_eq!(
            net.control(
                "template",
                json!({"waba_id": waba, "name": "offer", "language": "it", "event": event})
            )
            .await?,
            200
        );
        let (status, body) = net.send(TOKEN, &net.number, template(user, "x")).await?;
        assert_eq!((status, error_code(&body)), (400, code), "{event}: {body}");
    }
    let pending = reqwest::Client::new()
        .post(format!("{}/v21.0/{waba}/message_templates", sim.base_url()))
        .bearer_auth(TOKEN)
        .json(
            &json!({"name": "fresh", "language": "it", "category": "UTILITY",
                      "components": [{"type": "BODY", "text": "Hello"}]}),
        )
        .send()
        .await?;
    assert_eq!(pending.status(), 200);
    let mut fresh = template(user, "x");
    fresh["template"]["name"] = json!("fresh");
    let (status, body) = net.send(TOKEN, &net.number, fresh).await?;
    assert_eq!(
        (status, error_code(&body)),
        (400, 132_001),
        "not usable before its review: {body}"
    );
    drop(network);

    // Wrong token, unknown number, malformed body.
    let (status, body) = net.send("nope", &net.number, text(user)).await?;
    assert_eq!((status, error_code(&body)), (401, 190));
    let (status, body) = net.send(TOKEN, "pn-unknown", template(user, "x")).await?;
    assert_eq!((status, error_code(&body)), (400, 100));
    let (status, body) = net
        .send(
            TOKEN,
            &net.number,
            json!({"messaging_product": "whatsapp", "to": "abc", "type": "text"}),
        )
        .await?;
    assert_eq!((status, error_code(&body)), (400, 100));

    shutdown.trigger();
    sim.task.await?;
    ingest.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_refuses_beyond_a_numbers_throughput() -> anyhow::Result<()> {
    let scope = Scope::new();
    infra().await?;
    scope.create_topics().await?;
    let (_, number, _) = scope.tenant_with_number("simrate", 1).await?;
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let http_addr = ingest
        .running
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("ingest has an HTTP listener"))?;
    let shutdown = finestra_platform::Shutdown::new();
    let mut config = sim_config(&scope, http_addr, 0)?;
    config.status_delay = Duration::from_secs(3_600);
    let sim = finestra_simulator::start(config, finestra_testkit::system_clock(), shutdown.clone())
        .await?;
    // One message a second, burst of one: the second of two back-to-back sends is refused
    // unless a whole second passed between them (timing-proof on a busy box).
    network_with_offer(&scope, &sim.base_url(), 1).await?;
    let net = Net {
        base: sim.base_url(),
        number,
        http: reqwest::Client::new(),
    };
    let mut codes = Vec::new();
    for i in 0..3 {
        let (status, body) = net
            .send(TOKEN, &net.number, template(&format!("3934700{i:05}"), ""))
            .await?;
        codes.push((status, error_code(&body)));
    }
    assert_eq!(codes[0], (200, 0), "{codes:?}");
    assert!(
        codes[1..].contains(&(429, 130_429)),
        "past the number's rate the network answers 130429: {codes:?}"
    );
    shutdown.trigger();
    sim.task.await?;
    ingest.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_network_reviews_submitted_templates_approves_rejects_the_banned_word_and_pauses()
-> anyhow::Result<()> {
    let scope = Scope::new();
    infra().await?;
    scope.create_topics().await?;
    scope.tenant_with_number("reviews", 1).await?;
    let waba = scope.waba_id("reviews");
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let sim = finestra_testkit::start_simulator(&scope, &ingest.running, TOKEN, 80).await?;
    let http = reqwest::Client::new();
    let submit = |name: &'static str, body: &'static str| {
        let (http, url) = (
            http.clone(),
            format!("{}/v21.0/{waba}/message_templates", sim.base_url()),
        );
        async move {
            let answer = http
                .post(url)
                .bearer_auth(TOKEN)
                .json(
                    &json!({"name": name, "language": "it", "category": "MARKETING",
                              "components": [{"type": "BODY", "text": body}]}),
                )
                .send()
                .await?;
            anyhow::ensure!(answer.status() == 200, "submitting {name}");
            let created: Value = answer.json().await?;
            assert_eq!(created["status"], "PENDING");
            Ok::<_, anyhow::Error>(created["id"].as_str().unwrap_or_default().to_owned())
        }
    };
    submit("order_ready", "Ciao {{1}}, il tuo ordine è pronto").await?;
    submit("big_win", "Win big at our Casino, {{1}}!").await?;
    let listed = || async {
        let page: finestra_cloudapi::templates::Page = http
            .get(format!("{}/v21.0/{waba}/message_templates", sim.base_url()))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(page.data)
    };
    let reviewed = eventually("the network reviews both", WAIT, || async {
        let data = listed().await?;
        Ok(data.iter().all(|t| t.status != "PENDING").then_some(data))
    })
    .await?;
    let verdict = |name: &str| {
        reviewed.iter().find(|t| t.name == name).map(|t| {
            (
                t.status.clone(),
                t.rejected_reason.clone().unwrap_or_default(),
            )
        })
    };
    assert_eq!(
        verdict("order_ready"),
        Some(("APPROVED".into(), "NONE".into()))
    );
    assert_eq!(
        verdict("big_win"),
        Some(("REJECTED".into(), "PROMOTIONAL".into()))
    );

    // A duplicate name and language is refused at once, as the Cloud API refuses it.
    let duplicate = http
        .post(format!("{}/v21.0/{waba}/message_templates", sim.base_url()))
        .bearer_auth(TOKEN)
        .json(
            &json!({"name": "order_ready", "language": "it", "category": "UTILITY",
                      "components": [{"type": "BODY", "text": "Again"}]}),
        )
        .send()
        .await?;
    assert_eq!(duplicate.status(), 400);
    // Another business account's token cannot see or touch this one's templates.
    let foreign = http
        .get(format!("{}/v21.0/{waba}/message_templates", sim.base_url()))
        .bearer_auth("someone-else")
        .send()
        .await?;
    assert_eq!(foreign.status(), 401);

    let answer = http
        .post(format!("{}/sim/v1/template", sim.base_url()))
        .json(&json!({"waba_id": waba, "name": "order_ready", "language": "it", "event": "PAUSED"}))
        .send()
        .await?;
    assert!(answer.status().is_success());
    let data = listed().await?;
    assert_eq!(
        data.iter()
            .find(|t| t.name == "order_ready")
            .map(|t| t.status.as_str()),
        Some("PAUSED")
    );
    // Deleted by name: gone from the listing.
    let deleted = http
        .delete(format!("{}/v21.0/{waba}/message_templates", sim.base_url()))
        .bearer_auth(TOKEN)
        .query(&[("name", "big_win")])
        .send()
        .await?;
    assert_eq!(deleted.status(), 200);
    assert!(listed().await?.iter().all(|t| t.name != "big_win"));
    sim.stop().await;
    ingest.stop().await;
    Ok(())
}
