//! Template lifecycle through the accounts service (real Postgres): create → review events,
//! illegal ones refused, stale ones ignored.

use finestra_platform::auth::{Owner, Scope};
use finestra_proto::v1::{self, accounts_service_client::AccountsServiceClient};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_template_goes_through_review_and_never_backwards() -> anyhow::Result<()> {
    let scope = finestra_testkit::Scope::new();
    scope.create_topics().await?;
    let (tenant, _, _) = scope.tenant_with_number("tpl", 1).await?;
    let accounts = finestra_testkit::start_accounts(&scope).await?;
    let url = accounts.running.grpc_url();
    let tenant_admin = scope.tenant_key("tpl", &[Scope::Admin]).await?;
    let operator = scope.key(Owner::Operator, &[Scope::Admin]).await?;
    let mut as_tenant = AccountsServiceClient::new(
        finestra_testkit::authed_channel(url.clone(), &tenant_admin).await?,
    );
    let mut as_operator =
        AccountsServiceClient::new(finestra_testkit::authed_channel(url, &operator).await?);

    let created = as_tenant
        .create_template(v1::CreateTemplateRequest {
            tenant_id: tenant.clone(),
            name: "order_ready".into(),
            language: "en_US".into(),
            category: "utility".into(),
            body: "Hi {{1}}, order {{2}} is ready".into(),
            footer: "Reply STOP to opt out".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            created.status.as_str(),
            created.parameter_count,
            created.category.as_str()
        ),
        ("PENDING", 2, "UTILITY")
    );

    let bad = as_tenant
        .create_template(v1::CreateTemplateRequest {
            tenant_id: tenant.clone(),
            name: "gap".into(),
            language: "en".into(),
            category: "MARKETING".into(),
            body: "{{1}} {{3}}".into(),
            ..Default::default()
        })
        .await
        .expect_err("parameter gap");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let dup = as_tenant
        .create_template(v1::CreateTemplateRequest {
            tenant_id: tenant.clone(),
            name: "order_ready".into(),
            language: "en_US".into(),
            category: "UTILITY".into(),
            body: "again".into(),
            ..Default::default()
        })
        .await
        .expect_err("same name and language");
    assert_eq!(dup.code(), Code::AlreadyExists);

    let now = finestra_testkit::now_secs();
    let at = |s: i64| Some(finestra_proto::time::from_micros((now + s) * 1_000_000));
    let review = |event: &str, new_category: &str, when| v1::ReviewTemplateRequest {
        tenant_id: tenant.clone(),
        template_id: created.template_id.clone(),
        event: event.into(),
        new_category: new_category.into(),
        reviewed_at: when,
    };
    // Tenants cannot review their own templates.
    let err = as_tenant
        .review_template(review("APPROVED", "", at(-100)))
        .await
        .expect_err("operator only");
    assert_eq!(err.code(), Code::PermissionDenied);

    let t = as_operator
        .review_template(review("APPROVED", "", at(-100)))
        .await?
        .into_inner();
    assert_eq!(t.status, "APPROVED");
    let t = as_operator
        .review_template(review("PAUSED", "", at(-50)))
        .await?
        .into_inner();
    assert_eq!(t.status, "PAUSED");
    assert_eq!(
        t.paused_until.map(|p| p.seconds),
        Some(now - 50 + 3 * 3600),
        "first pause: 3 h"
    );
    // The approval delivered again, late: stale, nothing moves.
    let t = as_operator
        .review_template(review("APPROVED", "", at(-100)))
        .await?
        .into_inner();
    assert_eq!(t.status, "PAUSED");
    // Illegal from PAUSED: rejected.
    let err = as_operator
        .review_template(review("REJECTED", "", at(-40)))
        .await
        .expect_err("illegal");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        finestra_platform::status::reason_of(&err).as_deref(),
        Some("INVALID_TRANSITION")
    );
    let t = as_operator
        .review_template(review("RECATEGORISED", "MARKETING", at(-30)))
        .await?
        .into_inner();
    assert_eq!(
        (t.status.as_str(), t.category.as_str()),
        ("PAUSED", "MARKETING")
    );
    let t = as_operator
        .review_template(review("UNPAUSED", "", at(-20)))
        .await?
        .into_inner();
    assert_eq!(t.status, "APPROVED");
    as_operator
        .review_template(review("PAUSED", "", at(-10)))
        .await?;
    as_operator
        .review_template(review("UNPAUSED", "", at(-5)))
        .await?;
    let t = as_operator
        .review_template(review("PAUSED", "", at(-1)))
        .await?
        .into_inner();
    assert_eq!(
        (t.status.as_str(), t.pauses),
        ("DISABLED", 3),
        "the third pause disables"
    );

    let listed = as_tenant
        .list_templates(v1::ListTemplatesRequest {
            tenant_id: tenant.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(listed.templates.len(), 1);
    accounts.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_template_webhooks_drive_the_lifecycle_and_stale_ones_change_nothing()
-> anyhow::Result<()> {
    let scope = finestra_testkit::Scope::new();
    scope.create_topics().await?;
    let infra = finestra_testkit::infra().await?;
    let (tenant, _, secret) = scope.tenant_with_number("hook", 1).await?;
    let waba = format!("waba{}", scope.id());
    sqlx::query("UPDATE accounts.tenants SET waba_id = $2 WHERE tenant_id = $1")
        .bind(&tenant)
        .bind(&waba)
        .execute(&infra.pool)
        .await?;
    let accounts = finestra_testkit::start_accounts(&scope).await?;
    let ingest = finestra_testkit::start_ingest(&scope).await?;
    let admin = scope.tenant_key("hook", &[Scope::Admin]).await?;
    let mut client = AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &admin).await?,
    );
    let template = client
        .create_template(v1::CreateTemplateRequest {
            tenant_id: tenant.clone(),
            name: "weekly_offer".into(),
            language: "it".into(),
            category: "UTILITY".into(),
            body: "Offerta per {{1}}".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value, secret: String| {
        let http = http.clone();
        let running = &ingest.running;
        async move {
            let bytes = serde_json::to_vec(&body)?;
            finestra_testkit::post_webhook(&http, running, &bytes, Some(&secret)).await
        }
    };
    let status_of = || {
        let mut client = client.clone();
        let req = v1::GetTemplateRequest {
            tenant_id: tenant.clone(),
            template_id: template.template_id.clone(),
        };
        async move { anyhow::Ok(client.get_template(req).await?.into_inner()) }
    };
    let t0 = finestra_testkit::now_secs() - 600;
    let approved = finestra_cloudapi::build::template_status(
        &waba,
        t0,
        "77",
        "weekly_offer",
        "it",
        "APPROVED",
        "",
    );
    assert_eq!(post(approved.clone(), secret.clone()).await?, 200);
    finestra_testkit::eventually("approved", finestra_e2e::WAIT, || async {
        Ok((status_of().await?.status == "APPROVED").then_some(()))
    })
    .await?;

    let recategorised = finestra_cloudapi::build::template_category(
        &waba,
        t0 + 10,
        "weekly_offer",
        "it",
        "UTILITY",
        "MARKETING",
    );
    assert_eq!(post(recategorised, secret.clone()).await?, 200);
    let paused = finestra_cloudapi::build::template_status(
        &waba,
        t0 + 20,
        "77",
        "weekly_offer",
        "it",
        "PAUSED",
        "",
    );
    assert_eq!(post(paused, secret.clone()).await?, 200);
    // The approval delivered again after the pause: stale.
    assert_eq!(post(approved, secret.clone()).await?, 200);
    // A marker review after everything, so that once it shows, all earlier ones were applied.
    let reinstated = finestra_cloudapi::build::template_status(
        &waba,
        t0 + 30,
        "77",
        "weekly_offer",
        "it",
        "REINSTATED",
        "",
    );
    assert_eq!(post(reinstated, secret.clone()).await?, 200);
    let t = finestra_testkit::eventually("reinstated", finestra_e2e::WAIT, || async {
        let t = status_of().await?;
        Ok((t.pauses == 1 && t.status == "APPROVED").then_some(t))
    })
    .await?;
    assert_eq!(t.category, "MARKETING", "re-categorised by the provider");

    // Wrong signature: refused; unknown business account: acknowledged, dropped.
    let other = finestra_cloudapi::build::template_status(
        &waba,
        t0 + 40,
        "77",
        "weekly_offer",
        "it",
        "DISABLED",
        "",
    );
    assert_eq!(post(other.clone(), "not-the-secret".into()).await?, 401);
    let unknown = finestra_cloudapi::build::template_status(
        "waba-nobody",
        t0 + 40,
        "77",
        "weekly_offer",
        "it",
        "DISABLED",
        "",
    );
    assert_eq!(post(unknown, secret.clone()).await?, 200);
    assert_eq!(status_of().await?.status, "APPROVED");
    ingest.stop().await;
    accounts.stop().await;
    Ok(())
}
