//! Finestra and the network meet only through the network's API: templates made in Finestra
//! are submitted to the network, reviewed there and usable only once it approved them; what
//! the network refuses, deletes or holds alone is seen in Finestra; and the simulator, the
//! network's stand-in, never reads Finestra's schemas.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, TOKEN, UTILITY_IT, reason};
use finestra_platform::auth::AuthedChannel;
use finestra_platform::auth::Scope as KeyScope;
use finestra_platform::status::reason_of;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::{self, accounts_service_client::AccountsServiceClient};
use finestra_testkit::{eventually, infra};
use tonic::Code;

fn create(tenant: &str, name: &str, category: &str, body: &str) -> v1::CreateTemplateRequest {
    v1::CreateTemplateRequest {
        tenant_id: tenant.into(),
        name: name.into(),
        language: "it".into(),
        category: category.into(),
        body: body.into(),
        ..Default::default()
    }
}

async fn template_named(
    accounts: &mut AccountsServiceClient<AuthedChannel>,
    tenant: &str,
    name: &str,
) -> anyhow::Result<Option<v1::Template>> {
    Ok(accounts
        .list_templates(v1::ListTemplatesRequest {
            tenant_id: tenant.into(),
            page_size: 100,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .templates
        .into_iter()
        .find(|t| t.name == name))
}

/// Waits until the template reaches `status`.
async fn reaches(
    accounts: &AccountsServiceClient<AuthedChannel>,
    tenant: &str,
    template_id: &str,
    status: &str,
) -> anyhow::Result<v1::Template> {
    eventually(&format!("{template_id} is {status}"), WAIT, || async {
        let t = accounts
            .clone()
            .get_template(v1::GetTemplateRequest {
                tenant_id: tenant.into(),
                template_id: template_id.into(),
            })
            .await?
            .into_inner();
        Ok((t.status == status).then_some(t))
    })
    .await
}

/// Sends a template whose approval the control plane has recorded: dispatch holds a tenant's
/// template facts for up to `FINESTRA_DISPATCH_FACTS_TTL_MS`, so a send refused meanwhile is
/// made again (a refusal stores nothing, so the same key is free).
async fn accepted_once_dispatch_sees_it(
    c: &Chain,
    user: &str,
    key: &str,
    template: &str,
    params: &[&str],
) -> anyhow::Result<v1::SendMessageResponse> {
    eventually("dispatch sees the approval", WAIT, || async {
        match c.template_send(user, key, template, params).await {
            Ok(sent) => Ok(Some(sent)),
            Err(s) if reason_of(&s).as_deref() == Some("TEMPLATE_NOT_APPROVED") => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_is_sendable_only_once_the_network_approved_what_finestra_submitted()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let accounts =
        finestra_testkit::start_accounts_with_network(&c.scope, &c.sim.base_url(), TOKEN).await?;
    let admin = c.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    let mut api = AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &admin).await?,
    );
    c.top_up(10 * UTILITY_IT).await?;
    let user = "393471230001";

    // Made in Finestra: submitted to the network at once, pending its review.
    let made = api
        .create_template(create(&c.tenant, "order_ready", "UTILITY", "Ciao {{1}}"))
        .await?
        .into_inner();
    assert!(
        made.submitted && !made.provider_template_id.is_empty(),
        "{made:?}"
    );
    assert_eq!(made.status, "PENDING");
    let early = c
        .template_send(user, "early", "order_ready", &["A-1"])
        .await;
    assert_eq!(
        reason(&early),
        (Code::FailedPrecondition, "TEMPLATE_NOT_APPROVED".into()),
        "not before the network approved it"
    );
    reaches(&api, &c.tenant, &made.template_id, "APPROVED").await?;
    let sent =
        accepted_once_dispatch_sees_it(&c, user, "approved", "order_ready", &["A-1"]).await?;
    c.settles(&sent.message_id, &["DELIVERED", "READ"]).await?;

    // The network's review rejects one, with its reason.
    let jackpot = api
        .create_template(create(
            &c.tenant,
            "jackpot",
            "MARKETING",
            "Casino night, {{1}}!",
        ))
        .await?
        .into_inner();
    let rejected = reaches(&api, &c.tenant, &jackpot.template_id, "REJECTED").await?;
    assert_eq!(rejected.status_reason, "PROMOTIONAL");

    // A submission the network refuses (it holds that name already) is not kept, and the
    // tenant is told the network's reason.
    let waba = c.scope.waba_id("acme");
    c.sim
        .template(&waba, "made_there", "UTILITY", "Hello {{1}}", "APPROVED")
        .await?;
    let refused = api
        .create_template(create(&c.tenant, "made_there", "UTILITY", "Hi {{1}}"))
        .await
        .expect_err("the network holds that name already");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&refused).as_deref(), Some("PROVIDER_REFUSED"));
    assert!(
        refused.message().contains("already exists"),
        "{}",
        refused.message()
    );
    assert!(
        template_named(&mut api, &c.tenant, "made_there")
            .await?
            .is_none()
    );

    // A sync adopts what the network holds alone and drops what it deleted.
    let deleted_there = reqwest::Client::new()
        .delete(format!(
            "{}/v21.0/{waba}/message_templates",
            c.sim.base_url()
        ))
        .bearer_auth(TOKEN)
        .query(&[("name", "order_ready")])
        .send()
        .await?;
    assert_eq!(deleted_there.status(), 200);
    let synced = api
        .sync_templates(v1::SyncTemplatesRequest {
            tenant_id: c.tenant.clone(),
        })
        .await?
        .into_inner();
    assert_eq!((synced.adopted, synced.removed), (1, 1), "{synced:?}");
    let adopted = template_named(&mut api, &c.tenant, "made_there")
        .await?
        .ok_or_else(|| anyhow::anyhow!("adopted"))?;
    assert_eq!(
        (adopted.status.as_str(), adopted.submitted),
        ("APPROVED", true)
    );
    assert!(
        template_named(&mut api, &c.tenant, "order_ready")
            .await?
            .is_none()
    );
    // Refused once dispatch's facts (held up to FINESTRA_DISPATCH_FACTS_TTL_MS) see the deletion;
    // a send accepted before then fails at the network (it holds no such template) and costs
    // nothing (reconciled below).
    let tries = std::sync::atomic::AtomicU32::new(0);
    eventually(
        "sends of the deleted template are refused",
        WAIT,
        || async {
            let key = format!(
                "gone-{}",
                tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let gone = reason(&c.template_send(user, &key, "order_ready", &["A-2"]).await);
            Ok((gone == (Code::FailedPrecondition, "TEMPLATE_NOT_APPROVED".into())).then_some(()))
        },
    )
    .await?;
    let adopted_send = c
        .template_send(user, "adopted", "made_there", &["A-3"])
        .await?;
    c.settles(&adopted_send.message_id, &["DELIVERED", "READ"])
        .await?;

    // A template the network never received cannot reach a user, whatever Finestra's table
    // says: the network refuses it (132001).
    sqlx::query(
        "INSERT INTO accounts.templates
            (template_id, tenant_id, name, language, category, body, parameter_count, status)
         VALUES ($1, $2, 'ghost', 'it', 'UTILITY', 'Boo {{1}}', 1, 'APPROVED')",
    )
    .bind(format!("tpl-ghost-{}", c.scope.id()))
    .bind(&c.tenant)
    .execute(&infra().await?.pool)
    .await?;
    let ghost = c.template_send(user, "ghost", "ghost", &["x"]).await?;
    let failed = c.settles(&ghost.message_id, &["FAILED"]).await?;
    assert_eq!(failed.failure_reason, "TEMPLATE_NOT_APPROVED");

    // Deleted in Finestra: deleted at the network too.
    api.delete_template(v1::DeleteTemplateRequest {
        tenant_id: c.tenant.clone(),
        template_id: adopted.template_id.clone(),
    })
    .await?;
    assert_eq!(
        c.sim.network().template_id(&waba, "made_there").await?,
        None
    );

    c.books_settled().await?;
    c.reconcile().await?;
    accounts.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_made_while_the_network_is_down_is_submitted_when_it_is_back()
-> anyhow::Result<()> {
    let scope = finestra_testkit::Scope::new();
    infra().await?;
    scope.create_topics().await?;
    let (tenant, _, _) = scope.tenant_with_number("later", 1).await?;
    // The network's address, before the network is up.
    let network_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let accounts = finestra_testkit::start_accounts_with_network(
        &scope,
        &format!("http://{network_addr}"),
        TOKEN,
    )
    .await?;
    let admin = scope.tenant_key("later", &[KeyScope::Admin]).await?;
    let mut api = AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &admin).await?,
    );
    let kept = api
        .create_template(create(&tenant, "reminder", "UTILITY", "See you at {{1}}"))
        .await?
        .into_inner();
    assert_eq!((kept.status.as_str(), kept.submitted), ("PENDING", false));
    let now = api
        .submit_template(v1::SubmitTemplateRequest {
            tenant_id: tenant.clone(),
            template_id: kept.template_id.clone(),
        })
        .await
        .expect_err("the network is down");
    assert_eq!(now.code(), Code::Unavailable);
    assert_eq!(reason_of(&now).as_deref(), Some("PROVIDER_UNAVAILABLE"));
    // A tenant without a business account has nowhere to submit templates.
    sqlx::query("UPDATE accounts.tenants SET waba_id = NULL WHERE tenant_id = $1")
        .bind(&tenant)
        .execute(&infra().await?.pool)
        .await?;
    let nowhere = api
        .create_template(create(&tenant, "other", "UTILITY", "Hi"))
        .await
        .expect_err("no business account");
    assert_eq!(reason_of(&nowhere).as_deref(), Some("NO_BUSINESS_ACCOUNT"));
    sqlx::query("UPDATE accounts.tenants SET waba_id = $2 WHERE tenant_id = $1")
        .bind(&tenant)
        .bind(scope.waba_id("later"))
        .execute(&infra().await?.pool)
        .await?;

    // The network comes up: the background submitter submits it, the network approves it.
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let sim =
        finestra_testkit::start_simulator_on(&scope, &ingest.running, TOKEN, 80, network_addr)
            .await?;
    let approved = eventually(
        "submitted and approved",
        Duration::from_secs(30),
        || async {
            let t = api
                .clone()
                .get_template(v1::GetTemplateRequest {
                    tenant_id: tenant.clone(),
                    template_id: kept.template_id.clone(),
                })
                .await?
                .into_inner();
            Ok((t.submitted && t.status == "APPROVED").then_some(t))
        },
    )
    .await?;
    assert_eq!(
        sim.network()
            .template_id(&scope.waba_id("later"), "reminder")
            .await?,
        Some(approved.provider_template_id)
    );
    sim.stop().await;
    ingest.stop().await;
    accounts.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_template_is_reviewed_again_before_it_is_sent_again() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let accounts =
        finestra_testkit::start_accounts_with_network(&c.scope, &c.sim.base_url(), TOKEN).await?;
    let admin = c.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    let mut api = AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &admin).await?,
    );
    let made = api
        .create_template(create(&c.tenant, "pickup", "UTILITY", "Pick up at {{1}}"))
        .await?
        .into_inner();
    let edit = |body: &str| v1::EditTemplateRequest {
        tenant_id: c.tenant.clone(),
        template_id: made.template_id.clone(),
        body: body.into(),
        ..Default::default()
    };
    let under_review = api
        .edit_template(edit("Pick up at {{1}} today"))
        .await
        .expect_err("a template under review cannot be edited");
    assert_eq!(
        reason_of(&under_review).as_deref(),
        Some("INVALID_TRANSITION")
    );
    reaches(&api, &c.tenant, &made.template_id, "APPROVED").await?;

    let edited = api
        .edit_template(edit("Pick up at {{1}} from {{2}}"))
        .await?
        .into_inner();
    assert_eq!(
        (edited.status.as_str(), edited.parameter_count),
        ("PENDING", 2)
    );
    let user = "393471230002";
    c.top_up(10 * UTILITY_IT).await?;
    let during = c
        .template_send(user, "during", "pickup", &["Via Roma", "18:00"])
        .await;
    assert_eq!(
        reason(&during),
        (Code::FailedPrecondition, "TEMPLATE_NOT_APPROVED".into()),
        "not while the network reviews the edit"
    );
    reaches(&api, &c.tenant, &made.template_id, "APPROVED").await?;
    // The network holds the new content: two parameters now.
    let after =
        accepted_once_dispatch_sees_it(&c, user, "after", "pickup", &["Via Roma", "18:00"]).await?;
    c.settles(&after.message_id, &["DELIVERED", "READ"]).await?;
    accounts.stop().await;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_error_the_network_answers_ends_in_its_reason_and_retry_decision() -> anyhow::Result<()>
{
    let c = Chain::start(1_000).await?;
    c.template("order_ready", "UTILITY", 1).await?;
    let codes = finestra_provider::KNOWN_CODES;
    c.top_up(i64::try_from(codes.len())? * 2 * UTILITY_IT)
        .await?;
    for (i, known) in codes.iter().enumerate() {
        // The network's HTTP status for it, as Meta answers it.
        let http_status = match known.code {
            130_429 => 429,
            1 | 2 | 131_000 | 131_016 => 503,
            190 => 401,
            _ => 400,
        };
        c.sim(
            "faults",
            serde_json::json!({"phone_number_id": c.number, "next": 1, "code": known.code,
                               "http_status": http_status}),
        )
        .await?;
        let user = format!("3934712{i:05}");
        let sent = c
            .template_send(
                &user,
                &format!("code-{}", known.code),
                "order_ready",
                &["x"],
            )
            .await?;
        let m = c
            .settles(&sent.message_id, &["FAILED", "DELIVERED", "READ"])
            .await?;
        if known.retryable {
            assert_ne!(m.status, "FAILED", "{} is retried: {m:?}", known.code);
            assert_eq!(m.attempts, 2, "{}: one refusal, then delivered", known.code);
        } else {
            assert_eq!(
                (m.status.as_str(), m.failure_reason.as_str(), m.attempts),
                ("FAILED", known.reason, 1),
                "{} is final",
                known.code
            );
        }
    }
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_business_marks_messages_read_shows_typing_and_blocks_users_at_the_network()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("order_ready", "UTILITY", 1).await?;
    c.top_up(10 * UTILITY_IT).await?;
    let user = "393471230003";
    let wamid = c.user_writes(user, 0, false).await?;
    let mut client = c.client.clone();

    client
        .mark_read(v1::MarkReadRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            message_id: wamid.clone(),
            typing_indicator: true,
        })
        .await?;
    let stats = c.sim_stats(&c.number).await?;
    assert_eq!(
        (
            stats["marked_read"].as_u64(),
            stats["typing_shown"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let unknown = client
        .mark_read(v1::MarkReadRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            message_id: "wamid.nobody-wrote-this".into(),
            typing_indicator: false,
        })
        .await
        .expect_err("no user sent it");
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&unknown).as_deref(), Some("PROVIDER_REFUSED"));
    // Another tenant's number is out of reach.
    let (_, other_number, _) = c.scope.tenant_with_number("other", 2).await?;
    let foreign = client
        .mark_read(v1::MarkReadRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: other_number,
            message_id: wamid.clone(),
            typing_indicator: false,
        })
        .await
        .expect_err("not the tenant's number");
    assert_eq!(foreign.code(), Code::NotFound);

    // Blocked at the network: the user's messages no longer arrive, nothing reaches them.
    let block = |unblock: bool, users: Vec<String>| v1::BlockUsersRequest {
        tenant_id: c.tenant.clone(),
        phone_number_id: c.number.clone(),
        users,
        unblock,
    };
    let blocked = client
        .block_users(block(false, vec![format!("+{user}")]))
        .await?
        .into_inner();
    assert_eq!(blocked.users, vec![user.to_owned()]);
    let silent = c
        .sim(
            "say",
            serde_json::json!({"phone_number_id": c.number, "from": user, "text": "hello?"}),
        )
        .await?;
    assert_eq!(silent["delivered"], false);
    let refused = c
        .template_send(user, "blocked", "order_ready", &["x"])
        .await?;
    let failed = c.settles(&refused.message_id, &["FAILED"]).await?;
    assert_eq!(failed.failure_reason, "UNDELIVERABLE");
    let bad = client
        .block_users(block(false, vec!["not-a-number".into()]))
        .await
        .expect_err("a wa_id is digits");
    assert_eq!(bad.code(), Code::InvalidArgument);

    let unblocked = client
        .block_users(block(true, vec![user.to_owned()]))
        .await?
        .into_inner();
    assert_eq!(unblocked.users, vec![user.to_owned()]);
    assert!(!c.user_writes(user, 0, false).await?.is_empty());
    let stats = c.sim_stats(&c.number).await?;
    assert_eq!(
        (stats["blocks"].as_u64(), stats["unblocks"].as_u64()),
        (Some(1), Some(1))
    );
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

/// The network-health events the tenant was told of, by event id, in order.
fn health_events(events: &[v1::TenantEvent]) -> Vec<(String, v1::HealthChanged)> {
    events
        .iter()
        .filter_map(|e| {
            let env = e.event.as_ref()?;
            match &env.payload {
                Some(v1::envelope::Payload::HealthChanged(h)) if e.kind == "network_health" => {
                    Some((env.event_id.clone(), h.clone()))
                }
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_health_event_changes_what_it_should_and_reaches_the_tenant_once() -> anyhow::Result<()>
{
    let c = Chain::start(80).await?;
    let accounts =
        finestra_testkit::start_accounts_with_network(&c.scope, &c.sim.base_url(), TOKEN).await?;
    let reader = c.scope.tenant_key("acme", &[KeyScope::Read]).await?;
    let api = AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &reader).await?,
    );
    c.template("offer", "MARKETING", 1).await?;
    c.top_up(10 * MARKETING_IT).await?;
    let waba = c.scope.waba_id("acme");
    let secret = c
        .scope
        .network_numbers()
        .first()
        .map(|n| n.app_secret.clone())
        .unwrap_or_default();
    let health = || async {
        Ok::<_, anyhow::Error>(
            api.clone()
                .get_number_health(v1::GetNumberHealthRequest {
                    tenant_id: c.tenant.clone(),
                    phone_number_id: c.number.clone(),
                })
                .await?
                .into_inner(),
        )
    };
    let mut stream = c
        .client
        .clone()
        .stream_events(v1::StreamEventsRequest {
            tenant_id: c.tenant.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();

    // The tenant's 250 users of the day (tier 250, the default) are taken already.
    let mut redis = infra().await?.redis.clone();
    let tier_key = format!("fin:{{{}}}:tier", c.tenant);
    let now = chrono::Utc::now().timestamp_micros();
    let mut taken = redis::cmd("ZADD");
    taken.arg(&tier_key);
    for i in 0..250 {
        taken.arg(now).arg(format!("393000{i:06}"));
    }
    taken.query_async::<()>(&mut redis).await?;
    redis::cmd("SET")
        .arg(format!("{tier_key}:v"))
        .arg(1)
        .arg("EX")
        .arg(3_600)
        .query_async::<()>(&mut redis)
        .await?;
    let user = "393471239999";
    assert_eq!(
        reason(&c.template_send(user, "over-tier", "offer", &["x"]).await),
        (Code::ResourceExhausted, "TIER_LIMIT_REACHED".into())
    );

    // The network raises the number's messaging limit: the tier follows, dispatch applies it.
    c.sim(
        "health",
        serde_json::json!({"kind": "number_quality", "phone_number_id": c.number,
                           "event": "UPGRADE", "current_limit": "TIER_2K", "old_limit": "TIER_250"}),
    )
    .await?;
    eventually("the limit is recorded", WAIT, || async {
        let h = health().await?;
        Ok((h.messaging_limit == "TIER_2K" && h.tier == 2_000).then_some(()))
    })
    .await?;
    eventually("dispatch applies the new tier", WAIT, || async {
        let answer = c.template_send(user, "over-tier", "offer", &["x"]).await;
        Ok(answer.ok())
    })
    .await?;

    // Flagged for its quality: the rating is RED. The same webhook delivered twice is told once.
    let flagged = c
        .sim(
            "health",
            serde_json::json!({"kind": "number_quality", "phone_number_id": c.number,
                               "event": "FLAGGED"}),
        )
        .await?;
    let again = serde_json::to_vec(&flagged["posted"])?;
    assert_eq!(
        finestra_testkit::post_webhook(&c.http, &c.ingest.running, &again, Some(&secret)).await?,
        200
    );
    eventually("the flag is recorded", WAIT, || async {
        let h = health().await?;
        Ok((h.quality_rating == "RED" && h.quality_event == "FLAGGED").then_some(()))
    })
    .await?;

    // The business's limit (unlimited now), an account update, a template's quality.
    c.sim(
        "health",
        serde_json::json!({"kind": "capability", "waba_id": waba, "current_limit": "TIER_UNLIMITED"}),
    )
    .await?;
    c.sim(
        "health",
        serde_json::json!({"kind": "account", "waba_id": waba, "event": "ACCOUNT_VIOLATION",
                           "detail": {"violation_type": "SPAM"}}),
    )
    .await?;
    let offer_id = c
        .sim
        .network()
        .template_id(&waba, "offer")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the network holds offer"))?;
    c.sim(
        "health",
        serde_json::json!({"kind": "template_quality", "template_id": offer_id, "quality": "YELLOW"}),
    )
    .await?;
    let recorded = eventually("the account and the tier are recorded", WAIT, || async {
        let h = health().await?;
        Ok((h.tier == 0 && h.account_status == "ACCOUNT_VIOLATION").then_some(h))
    })
    .await?;
    assert!(recorded.account_detail.contains("SPAM"), "{recorded:?}");
    eventually("the template's quality is recorded", WAIT, || async {
        let offer = api
            .clone()
            .get_template(v1::GetTemplateRequest {
                tenant_id: c.tenant.clone(),
                template_id: format!("tpl-{}-offer", c.scope.id()),
            })
            .await?
            .into_inner();
        Ok((offer.quality == "YELLOW").then_some(()))
    })
    .await?;

    // Paused by the network for its quality: sends are refused TEMPLATE_PAUSED.
    c.sim(
        "template",
        serde_json::json!({"waba_id": waba, "name": "offer", "language": "it", "event": "PAUSED"}),
    )
    .await?;
    // (Each try its own key: one accepted before the pause applied would be replayed.)
    let tries = std::sync::atomic::AtomicU32::new(0);
    eventually("sends of the paused template are refused", WAIT, || async {
        let key = format!(
            "paused-{}",
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let answer = reason(&c.template_send("393471230077", &key, "offer", &["x"]).await);
        Ok((answer == (Code::FailedPrecondition, "TEMPLATE_PAUSED".into())).then_some(()))
    })
    .await?;

    // A last event marks the end: everything before it was told, each once.
    c.sim(
        "health",
        serde_json::json!({"kind": "number_quality", "phone_number_id": c.number,
                           "event": "UNFLAGGED"}),
    )
    .await?;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !health_events(&seen)
        .iter()
        .any(|(_, h)| h.event == "UNFLAGGED")
    {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("the stream went quiet; {} events read", seen.len()))??;
        seen.push(next.ok_or_else(|| anyhow::anyhow!("the stream ended"))?);
    }
    let told: Vec<String> = health_events(&seen)
        .into_iter()
        .map(|(_, h)| format!("{}{}{}", h.event, h.messaging_limit, h.quality))
        .collect();
    assert_eq!(
        told,
        [
            "UPGRADETIER_2K",
            "FLAGGEDRED",
            "CAPABILITY_UPDATETIER_UNLIMITED",
            "ACCOUNT_VIOLATION",
            "YELLOW",
            "UNFLAGGEDGREEN"
        ],
        "each once, in order"
    );
    assert!(
        seen.iter().any(|e| e.kind == "template_review"
            && matches!(e.event.as_ref().and_then(|env| env.payload.as_ref()),
                    Some(v1::envelope::Payload::TemplateReviewed(r)) if r.event == "PAUSED")),
        "the pause was told too"
    );
    accounts.stop().await;
    c.stop().await;
    Ok(())
}

/// The file as GetMedia streams it: its first chunk (the description) and its bytes.
async fn fetched(
    client: &DispatchServiceClient<AuthedChannel>,
    tenant: &str,
    media_id: &str,
) -> Result<(v1::MediaChunk, Vec<u8>, usize), tonic::Status> {
    let mut stream = client
        .clone()
        .get_media(v1::GetMediaRequest {
            tenant_id: tenant.into(),
            media_id: media_id.into(),
        })
        .await?
        .into_inner();
    let mut first = None;
    let mut data = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await? {
        chunks += 1;
        data.extend_from_slice(&chunk.data);
        first.get_or_insert(chunk);
    }
    Ok((first.unwrap_or_default(), data, chunks))
}

#[tokio::test(flavor = "multi_thread")]
async fn media_is_uploaded_and_sent_by_id_and_a_users_file_is_fetched_checked_and_kept_for_its_tenant()
-> anyhow::Result<()> {
    use sha2::Digest as _;
    let c = Chain::start(80).await?;
    let user = "393471230004";
    c.user_says(user, 0, false).await?;
    let client = c.client.clone();

    // Uploaded for the number, then sent by its id.
    let menu: Vec<u8> = b"not really a png, but the network only checks type and size".repeat(100);
    let uploaded = client
        .clone()
        .upload_media(v1::UploadMediaRequest {
            tenant_id: c.tenant.clone(),
            phone_number_id: c.number.clone(),
            content_type: "image/png".into(),
            filename: "menu.png".into(),
            data: menu.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (uploaded.kind.as_str(), uploaded.size),
        ("image", menu.len() as u64)
    );
    let image = |key: &str, media_id: &str| {
        c.request(
            user,
            key,
            v1::send_message_request::Content::Media(v1::MediaContent {
                kind: "image".into(),
                media_id: media_id.into(),
                caption: "Our menu".into(),
                ..Default::default()
            }),
        )
    };
    let sent = c.send(image("menu", &uploaded.media_id)).await?;
    c.settles(&sent.message_id, &["DELIVERED", "READ"]).await?;
    let unknown = c.send(image("unknown", "9999999999")).await?;
    let failed = c.settles(&unknown.message_id, &["FAILED"]).await?;
    assert_eq!(failed.failure_reason, "MEDIA_UPLOAD_FAILED");
    // The network's limits, before anything reaches it.
    for (content_type, size) in [
        ("image/png", 5 * 1024 * 1024 + 1),
        ("application/x-msdownload", 10),
    ] {
        let refused = client
            .clone()
            .upload_media(v1::UploadMediaRequest {
                tenant_id: c.tenant.clone(),
                phone_number_id: c.number.clone(),
                content_type: content_type.into(),
                filename: "x".into(),
                data: vec![7; size],
            })
            .await
            .expect_err("outside the network's limits");
        assert_eq!(refused.code(), Code::InvalidArgument, "{content_type}");
    }

    // A user sends a photo: fetched from the network, checked, kept, streamed in chunks.
    let said = c
        .sim(
            "say",
            serde_json::json!({"phone_number_id": c.number, "from": user, "text": "the receipt",
                               "media": "image", "media_bytes": 1_500_000}),
        )
        .await?;
    let wamid = said["wamid"].as_str().unwrap_or_default().to_owned();
    let announced = c.announced_media(&wamid).await?;
    assert_eq!(announced.content_type, "image/jpeg");
    let (first, data, chunks) = eventually("the photo is fetched", WAIT, || async {
        match fetched(&client, &c.tenant, &announced.media_id).await {
            Ok(got) => Ok(Some(got)),
            Err(s) if s.code() == Code::Unavailable => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await?;
    assert_eq!(
        (first.content_type.as_str(), first.size, data.len()),
        ("image/jpeg", 1_500_000, 1_500_000)
    );
    assert!(chunks >= 3, "streamed in chunks: {chunks}");
    let digest = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(
        (first.sha256.as_str(), digest.as_str()),
        (announced.sha256.as_str(), announced.sha256.as_str())
    );

    // Another tenant cannot reach it, by its own id nor by the owner's.
    c.scope.tenant_with_number("other", 2).await?;
    let other_key = c.scope.tenant_key("other", &[KeyScope::Read]).await?;
    let other = DispatchServiceClient::new(
        finestra_testkit::authed_channel(c.dispatch_url.clone(), &other_key).await?,
    );
    let theirs = fetched(&other, &c.scope.tenant_id("other"), &announced.media_id)
        .await
        .expect_err("not the other tenant's file");
    assert_eq!(theirs.code(), Code::NotFound);
    let owners = fetched(&other, &c.tenant, &announced.media_id)
        .await
        .expect_err("not the other tenant's tenant");
    assert_eq!(owners.code(), Code::NotFound);

    // A file that does not match what the webhook announced is not kept.
    let said = c
        .sim(
            "say",
            serde_json::json!({"phone_number_id": c.number, "from": user, "text": "tampered",
                               "media": "document", "media_wrong_sha256": true}),
        )
        .await?;
    let tampered = c
        .announced_media(said["wamid"].as_str().unwrap_or_default())
        .await?;
    let refused = eventually("the mismatch is found", WAIT, || async {
        match fetched(&client, &c.tenant, &tampered.media_id).await {
            Err(s) if s.code() == Code::Unavailable => Ok(None),
            Err(s) => Ok(Some(s)),
            Ok(_) => anyhow::bail!("a file that does not match was served"),
        }
    })
    .await?;
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("SHA-256"),
        "{}",
        refused.message()
    );
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

/// Finestra's schemas (each owned by one service) the network must never read.
const FINESTRA_SCHEMAS: [&str; 4] = ["accounts", "windows", "billing", "dispatch"];

/// Finestra's crates that hold its stores and services.
const FINESTRA_STORE_CRATES: [&str; 6] = [
    "finestra-registry",
    "finestra-accounts",
    "finestra-window",
    "finestra-billing",
    "finestra-dispatch",
    "finestra-ingest",
];

/// Every `schema.table` reference in `text` to one of Finestra's schemas.
fn schema_references(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for schema in FINESTRA_SCHEMAS {
        let needle = format!("{schema}.");
        let mut from = 0;
        while let Some(at) = text[from..].find(&needle) {
            let start = from + at;
            let end = start + needle.len();
            let word_start = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let table_follows = bytes
                .get(end)
                .is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
            if word_start && table_follows {
                let table: String = text[end..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push(format!("{schema}.{table}"));
            }
            from = end;
        }
    }
    found
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[test]
fn the_simulator_never_reads_finestras_schemas() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/simulator");
    let mut files = Vec::new();
    files_under(&root.join("src"), &mut files)?;
    files_under(&root.join("migrations"), &mut files)?;
    anyhow::ensure!(
        files.len() > 5,
        "the simulator's sources are where expected"
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for reference in schema_references(&text) {
            offences.push(format!("{}: {reference}", file.display()));
        }
        for store in [
            "finestra_registry",
            "finestra_accounts",
            "finestra_dispatch",
        ] {
            if text.contains(store) {
                offences.push(format!("{}: {store}", file.display()));
            }
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    for krate in FINESTRA_STORE_CRATES {
        if manifest.contains(krate) {
            offences.push(format!("Cargo.toml depends on {krate}"));
        }
    }
    assert!(
        offences.is_empty(),
        "the simulator reaches into Finestra's state: {offences:#?}"
    );
    // The scan itself finds what it looks for.
    assert_eq!(
        schema_references("SELECT 1 FROM accounts.templates JOIN sim.numbers"),
        vec!["accounts.templates".to_owned()]
    );
    assert!(schema_references("ingest told dispatch. Then").is_empty());
    Ok(())
}
