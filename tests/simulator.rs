//! The simulator as the provider: the Cloud API's send surface, its own window/block/
//! throughput rules, and signed status and inbound webhooks that ingest accepts (so they reach
//! the topics), against the real ingest, Postgres and broker.

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

/// The approved marketing template `offer` (no parameters) the sends use.
async fn approved_offer(tenant: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO accounts.templates
            (template_id, tenant_id, name, language, category, body, parameter_count, status)
         VALUES ('tpl-' || $1, $1, 'offer', 'it', 'MARKETING', 'Half price tonight', 0, 'APPROVED')",
    )
    .bind(tenant)
    .execute(&infra().await?.pool)
    .await?;
    Ok(())
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
    let (tenant, number, _) = scope.tenant_with_number("sim", 1).await?;
    approved_offer(&tenant).await?;
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let http_addr = ingest
        .running
        .http_addr
        .ok_or_else(|| anyhow::anyhow!("ingest has an HTTP listener"))?;
    let shutdown = finestra_platform::Shutdown::new();
    let sim = finestra_simulator::start(
        finestra_simulator::SimConfig {
            http_addr: "127.0.0.1:0".parse()?,
            database_url: scope.config()?.database_url,
            webhook_url: format!("http://{http_addr}/webhooks/cloud-api"),
            access_token: TOKEN.into(),
            status_delay: Duration::from_millis(10),
            failure_per_mille: 0,
            read_per_mille: 1_000,
            number_rate: 80,
            ingest_url: String::new(),
            ingest_key: String::new(),
            review_delay: Duration::from_millis(100),
            banned_word: "casino".into(),
            review_tenant_prefix: scope.tenant_prefix(),
        },
        finestra_testkit::system_clock(),
        shutdown.clone(),
    )
    .await?;
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

    // Wrong token, unknown number, malformed body.
    let (status, body) = net.send("nope", &net.number, template(user, "x")).await?;
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
    let (tenant, number, _) = scope.tenant_with_number("simrate", 1).await?;
    approved_offer(&tenant).await?;
    let shutdown = finestra_platform::Shutdown::new();
    let sim = finestra_simulator::start(
        finestra_simulator::SimConfig {
            http_addr: "127.0.0.1:0".parse()?,
            database_url: scope.config()?.database_url,
            // Nobody listens: statuses are dropped after their retries, sends are unaffected.
            webhook_url: "http://127.0.0.1:9/webhooks/cloud-api".into(),
            access_token: TOKEN.into(),
            status_delay: Duration::from_secs(3_600),
            failure_per_mille: 0,
            read_per_mille: 0,
            // One message a second, burst of one: the second of two back-to-back sends is
            // refused unless a whole second passed between them (timing-proof on a busy box).
            number_rate: 1,
            ingest_url: String::new(),
            ingest_key: String::new(),
            review_delay: Duration::from_millis(100),
            banned_word: "casino".into(),
            review_tenant_prefix: scope.tenant_prefix(),
        },
        finestra_testkit::system_clock(),
        shutdown.clone(),
    )
    .await?;
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
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_network_reviews_templates_approves_rejects_the_banned_word_and_pauses()
-> anyhow::Result<()> {
    let scope = Scope::new();
    let infra = infra().await?;
    scope.create_topics().await?;
    let (tenant, _, _) = scope.tenant_with_number("reviews", 1).await?;
    let waba = format!("waba{}", scope.id());
    sqlx::query("UPDATE accounts.tenants SET waba_id = $2 WHERE tenant_id = $1")
        .bind(&tenant)
        .bind(&waba)
        .execute(&infra.pool)
        .await?;
    for (id, name, body) in [
        ("ok", "order_ready", "Ciao {{1}}, il tuo ordine è pronto"),
        ("bad", "big_win", "Win big at our Casino, {{1}}!"),
    ] {
        sqlx::query(
            "INSERT INTO accounts.templates
                (template_id, tenant_id, name, language, category, body, parameter_count)
             VALUES ($1, $2, $3, 'it', 'MARKETING', $4, 1)",
        )
        .bind(format!("{id}-{}", scope.id()))
        .bind(&tenant)
        .bind(name)
        .bind(body)
        .execute(&infra.pool)
        .await?;
    }
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let accounts = finestra_testkit::start_accounts(&scope).await?;
    let sim = finestra_testkit::start_simulator(&scope, &ingest.running, TOKEN, 80).await?;
    let status = |id: &'static str| {
        let (pool, template) = (infra.pool.clone(), format!("{id}-{}", scope.id()));
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM accounts.templates WHERE template_id = $1",
            )
            .bind(&template)
            .fetch_one(&pool)
            .await
        }
    };
    eventually(
        "the network approves one and rejects the other",
        WAIT,
        || async {
            let (ok, bad) = (status("ok").await?, status("bad").await?);
            Ok((ok != "PENDING" && bad != "PENDING").then_some((ok, bad)))
        },
    )
    .await
    .map(|(ok, bad)| {
        assert_eq!((ok.as_str(), bad.as_str()), ("APPROVED", "REJECTED"));
    })?;

    let answer = reqwest::Client::new()
        .post(format!("{}/sim/v1/template", sim.base_url()))
        .json(&json!({"template_id": format!("ok-{}", scope.id()), "event": "PAUSED"}))
        .send()
        .await?;
    assert!(answer.status().is_success());
    eventually("the pause reaches the control plane", WAIT, || async {
        Ok((status("ok").await? == "PAUSED").then_some(()))
    })
    .await?;
    sim.stop().await;
    accounts.stop().await;
    ingest.stop().await;
    Ok(())
}
