//! Rule slips found by reading the code as a newcomer would, each shown end to end on the whole
//! chain (real Postgres, Redis, broker; the simulator as the network): a suspended tenant sends
//! nothing whoever asks, and a message that failed does not count toward the tier.

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, reason, template};
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_platform::status::reason_of;
use finestra_proto::v1::SendMessageRequest;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_testkit::{eventually, infra};
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_tenant_sends_nothing_even_through_its_partners_key() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let user = "393510000001";
    c.user_says(user, 0, false).await?;
    let partner_key = c
        .scope
        .key(
            Owner::Partner {
                partner_id: c.scope.partner_id(),
            },
            &[KeyScope::Send],
        )
        .await?;
    let mut partner = DispatchServiceClient::new(
        finestra_testkit::authed_channel(c.dispatch_url.clone(), &partner_key).await?,
    );
    let request = |key: &str| SendMessageRequest {
        tenant_id: c.tenant.clone(),
        phone_number_id: c.number.clone(),
        to: user.into(),
        idempotency_key: key.into(),
        send_at: None,
        send_at_local: String::new(),
        content: Some(finestra_e2e::chain::text("Your order shipped")),
    };
    partner.send_message(request("before")).await?;

    let infra = infra().await?;
    sqlx::query("UPDATE accounts.tenants SET status = 'suspended' WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    let attempt = std::sync::atomic::AtomicU32::new(0);
    let refused = eventually("the suspension applies", WAIT, || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(partner
            .clone()
            .send_message(request(&format!("after-{n}")))
            .await
            .err())
    })
    .await?;
    assert_eq!(
        (
            refused.code(),
            finestra_platform::status::reason_of(&refused)
        ),
        (Code::FailedPrecondition, Some("TENANT_SUSPENDED".into())),
        "{refused:?}"
    );
    c.stop().await;
    Ok(())
}

/// The tenant's tier count in Redis: the score of `user`, if counted.
async fn tier_score(tenant: &str, user: &str) -> anyhow::Result<Option<f64>> {
    let mut redis = infra().await?.redis.clone();
    Ok(redis::cmd("ZSCORE")
        .arg(format!("fin:{{{tenant}}}:tier"))
        .arg(user)
        .query_async(&mut redis)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_failed_reached_nobody_and_does_not_count_toward_the_tier()
-> anyhow::Result<()> {
    let c = Chain::start(1_000).await?;
    c.template("offer", "MARKETING", 1).await?;
    c.top_up(300 * MARKETING_IT).await?;

    // The first user's message fails: the network refuses every try.
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "always": true}),
    )
    .await?;
    let lost_user = "393520000000";
    let lost = c.template_send(lost_user, "lost", "offer", &["x"]).await?;
    let m = c
        .settles(&lost.message_id, &["FAILED", "DELIVERED"])
        .await?;
    assert_eq!(m.status, "FAILED");
    eventually("the failed user leaves the tier count", WAIT, || async {
        Ok(tier_score(&c.tenant, lost_user)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "next": 0, "always": false}),
    )
    .await?;

    // So the tier of 250 still has room for 250 users reached.
    for chunk in (1..=250).collect::<Vec<_>>().chunks(50) {
        let sends = chunk.iter().map(|i| {
            c.send(c.request(
                &format!("39352{i:07}"),
                &format!("tier-{i}"),
                template("offer", &["x"]),
            ))
        });
        for answer in futures::future::join_all(sends).await {
            answer?;
        }
    }
    assert_eq!(
        reason(
            &c.template_send("393529999999", "tier-251", "offer", &["x"])
                .await
        ),
        (Code::ResourceExhausted, "TIER_LIMIT_REACHED".into())
    );

    // Rebuilt from Postgres after Redis lost it, the count is the same: the failed user is
    // not among the 250, so messaging them again is a new user over the limit.
    c.scope.lose_redis().await?;
    assert_eq!(
        reason(
            &c.template_send(lost_user, "lost-again", "offer", &["x"])
                .await
        ),
        (Code::ResourceExhausted, "TIER_LIMIT_REACHED".into())
    );
    // A user already counted still is.
    c.template_send("393520000007", "tier-7-again", "offer", &["x"])
        .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn money_inputs_are_bounded_and_refused_with_the_rule() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let max = finestra_domain::wallet::MAX_AMOUNT_MICROS;
    let top_up = |amount: i64, id: &str| {
        let mut books = c.books.clone();
        let request = finestra_proto::v1::TopUpRequest {
            tenant_id: c.tenant.clone(),
            amount_micros: amount,
            top_up_id: id.into(),
            note: "bounds".into(),
        };
        async move { books.top_up(request).await }
    };
    for (amount, id) in [(i64::MAX, "huge"), (max + 1, "just-over")] {
        let refused = top_up(amount, id).await.expect_err("over the bound");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(&max.to_string()),
            "{}",
            refused.message()
        );
    }
    let credit = c
        .books
        .clone()
        .set_credit_limit(finestra_proto::v1::SetCreditLimitRequest {
            tenant_id: c.tenant.clone(),
            credit_limit_micros: i64::MAX,
            low_balance_threshold_micros: 0,
        })
        .await
        .expect_err("an unbounded credit limit");
    assert_eq!(credit.code(), Code::InvalidArgument, "{credit:?}");
    // The largest amounts are taken, and the wallet still reads and adds up.
    top_up(max, "largest").await?;
    c.books
        .clone()
        .set_credit_limit(finestra_proto::v1::SetCreditLimitRequest {
            tenant_id: c.tenant.clone(),
            credit_limit_micros: max,
            low_balance_threshold_micros: max,
        })
        .await?;
    let w = c.wallet().await?;
    assert_eq!(w.balance_micros, max);
    assert_eq!(w.available_micros, 2 * max);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_marketing_frequency_cap_refuses_the_third_in_the_window_and_never_a_utility_one()
-> anyhow::Result<()> {
    // The platform's default: 2 marketing templates per user per 7 days.
    let c = Chain::start_tuned(80, true, |config| {
        config.marketing_cap = 2;
        config.marketing_cap_days = 7;
    })
    .await?;
    c.template("offer", "MARKETING", 1).await?;
    c.template("receipt", "UTILITY", 1).await?;
    c.top_up(20 * MARKETING_IT).await?;
    let capped = (Code::FailedPrecondition, "FREQUENCY_CAPPED".to_owned());
    let giulia = "393510000101";
    let first = c.template_send(giulia, "offer-1", "offer", &["x"]).await?;
    c.template_send(giulia, "offer-2", "offer", &["x"]).await?;
    assert_eq!(
        reason(&c.template_send(giulia, "offer-3", "offer", &["x"]).await),
        capped
    );
    assert_eq!(
        reason(&c.template_send(giulia, "offer-3", "offer", &["x"]).await),
        capped,
        "a refusal stores nothing: the same key is refused again"
    );
    let replayed = c.template_send(giulia, "offer-1", "offer", &["x"]).await?;
    assert!(
        replayed.replayed && replayed.message_id == first.message_id,
        "a retried send is not a new one"
    );
    c.template_send(giulia, "receipt-1", "receipt", &["x"])
        .await?;
    let marco = c
        .template_send("393510000102", "marco-1", "offer", &["x"])
        .await?;
    // (Everything sent so far is delivered before the network is told to fail the next.)
    c.settles(&marco.message_id, &["DELIVERED", "READ"]).await?;

    // A marketing template that failed reached nobody: it does not count.
    let eva = "393510000103";
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "next": 1, "code": 131_026, "http_status": 400}),
    )
    .await?;
    let lost = c.template_send(eva, "eva-1", "offer", &["x"]).await?;
    c.settles(&lost.message_id, &["FAILED"]).await?;
    eventually("the failed one no longer counts", WAIT, || async {
        let infra = infra().await?;
        let mut redis = infra.redis.clone();
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("fin:{{{}}}:mcap:{eva}", c.tenant))
            .arg(&lost.message_id)
            .query_async(&mut redis)
            .await?;
        Ok(score.is_none().then_some(()))
    })
    .await?;
    c.template_send(eva, "eva-2", "offer", &["x"]).await?;
    c.template_send(eva, "eva-3", "offer", &["x"]).await?;
    assert_eq!(
        reason(&c.template_send(eva, "eva-4", "offer", &["x"]).await),
        capped
    );

    // Redis loses the counts: they are rebuilt from the messages, and still refuse.
    c.scope.lose_redis().await?;
    assert_eq!(
        reason(&c.template_send(giulia, "offer-4", "offer", &["x"]).await),
        capped
    );

    // The tenant's partner raises its cap: it applies within the facts' cache time.
    let accounts = finestra_testkit::start_accounts(&c.scope).await?;
    let partner_key = c
        .scope
        .key(
            Owner::Partner {
                partner_id: c.scope.partner_id(),
            },
            &[KeyScope::Admin],
        )
        .await?;
    let mut partner = finestra_proto::v1::accounts_service_client::AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &partner_key).await?,
    );
    partner
        .set_tenant_limits(finestra_proto::v1::SetTenantLimitsRequest {
            tenant_id: c.tenant.clone(),
            limits: Some(finestra_proto::v1::TenantLimits {
                marketing_cap_per_user: 3,
                ..Default::default()
            }),
        })
        .await?;
    eventually("the raised cap applies", WAIT, || async {
        Ok(c.template_send(giulia, "offer-5", "offer", &["x"])
            .await
            .ok())
    })
    .await?;
    assert_eq!(
        reason(&c.template_send(giulia, "offer-6", "offer", &["x"]).await),
        capped
    );
    accounts.stop().await;
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_keyword_stops_marketing_start_resumes_it_and_the_networks_131050_suppresses()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("offer", "MARKETING", 1).await?;
    c.template("receipt", "UTILITY", 1).await?;
    c.top_up(20 * MARKETING_IT).await?;
    let opted_out = (Code::FailedPrecondition, "MARKETING_OPT_OUT".to_owned());
    let chain = &c;
    // (The provider's times are whole seconds, and a stop wins a tie: each message is
    // written some seconds before the next.)
    let says = |user: &'static str, text: &'static str, seconds_ago: i64| async move {
        chain
            .sim(
                "say",
                json!({"phone_number_id": chain.number, "from": user, "text": text,
                       "seconds_ago": seconds_ago}),
            )
            .await
    };
    let stopped = |user: &'static str, want: bool| async move {
        eventually("the preference is recorded", WAIT, || async {
            Ok((chain.window(user).await?.is_marketing_opted_out() == want).then_some(()))
        })
        .await
    };

    // "Basta!" is only a stop keyword (case, accent and punctuation aside): marketing stops,
    // utility goes on.
    let giulia = "393510000201";
    says(giulia, " Basta! ", 10).await?;
    stopped(giulia, true).await?;
    assert_eq!(
        reason(&c.template_send(giulia, "offer-1", "offer", &["x"]).await),
        opted_out
    );
    c.template_send(giulia, "receipt-1", "receipt", &["x"])
        .await?;
    // A sentence with the word in it is no keyword.
    let marco = "393510000202";
    says(marco, "please stop by the shop tomorrow", 0).await?;
    c.user_says(marco, 0, false).await?;
    assert!(!c.window(marco).await?.is_marketing_opted_out());
    // START resumes it.
    says(giulia, "START", 0).await?;
    stopped(giulia, false).await?;
    let resumed = c.template_send(giulia, "offer-2", "offer", &["x"]).await?;
    // (Everything sent so far is delivered before the network is told to refuse the next.)
    c.settles(&resumed.message_id, &["DELIVERED", "READ"])
        .await?;

    // The network refuses a marketing template with 131050: the user is suppressed.
    let eva = "393510000203";
    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "next": 1, "code": 131_050, "http_status": 400}),
    )
    .await?;
    let refused = c.template_send(eva, "eva-1", "offer", &["x"]).await?;
    let failed = c.settles(&refused.message_id, &["FAILED"]).await?;
    assert_eq!(failed.failure_reason, "MARKETING_OPT_OUT");
    stopped(eva, true).await?;
    assert_eq!(
        reason(&c.template_send(eva, "eva-2", "offer", &["x"]).await),
        opted_out,
        "refused before it costs anything"
    );
    // ... and put on the tenant's suppression list, for every one of its numbers; her START
    // takes her off it and marketing goes again.
    let key = c
        .scope
        .tenant_key("acme", &[KeyScope::Send, KeyScope::Read])
        .await?;
    let dispatch_url = c
        .dispatch
        .as_ref()
        .map(|d| d.running.grpc_url())
        .unwrap_or_else(|| c.dispatch_url.clone());
    let contacts = finestra_proto::v1::contacts_service_client::ContactsServiceClient::new(
        finestra_testkit::authed_channel(dispatch_url, &key).await?,
    );
    let suppressed = |want: bool| {
        let contacts = contacts.clone();
        let tenant = c.tenant.clone();
        async move {
            eventually("the suppression list follows", WAIT, || async {
                let found = contacts
                    .clone()
                    .get_contact(finestra_proto::v1::GetContactRequest {
                        tenant_id: tenant.clone(),
                        user: eva.into(),
                    })
                    .await;
                Ok(match found {
                    Ok(contact) => {
                        let contact = contact.into_inner();
                        (contact.opted_out_at.is_some() == want).then_some(contact)
                    }
                    Err(s) if s.code() == Code::NotFound => None,
                    Err(s) => return Err(s.into()),
                })
            })
            .await
        }
    };
    let listed = suppressed(true).await?;
    assert_eq!(listed.source, "network");
    // (The refusal's stop has microseconds, her START whole seconds: a later second.)
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    says(eva, "START", 0).await?;
    stopped(eva, false).await?;
    suppressed(false).await?;
    let again = eventually("marketing goes again", WAIT, || async {
        match c.template_send(eva, "eva-3", "offer", &["x"]).await {
            Ok(sent) => Ok(Some(sent)),
            Err(s) if reason_of(&s).as_deref() == Some("MARKETING_OPT_OUT") => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await?;
    c.settles(&again.message_id, &["DELIVERED", "READ"]).await?;
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_own_opt_out_keywords_replace_the_platforms_and_its_answer_is_sent()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let accounts = finestra_testkit::start_accounts(&c.scope).await?;
    let admin = c.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    let mut api = finestra_proto::v1::accounts_service_client::AccountsServiceClient::new(
        finestra_testkit::authed_channel(accounts.running.grpc_url(), &admin).await?,
    );
    let set = api
        .set_opt_out_keywords(finestra_proto::v1::SetOptOutKeywordsRequest {
            tenant_id: c.tenant.clone(),
            stop_keywords: vec!["Ferma".into(), "cancellami".into()],
            start_keywords: vec!["riprendi".into()],
            stop_reply: "Non riceverai più offerte.".into(),
            start_reply: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(set.effective_stop_keywords, ["FERMA", "CANCELLAMI"]);
    let both = api
        .set_opt_out_keywords(finestra_proto::v1::SetOptOutKeywordsRequest {
            tenant_id: c.tenant.clone(),
            stop_keywords: vec!["ferma".into()],
            start_keywords: vec!["FERMA".into()],
            ..Default::default()
        })
        .await
        .expect_err("a word cannot both stop and start");
    assert_eq!(both.code(), Code::InvalidArgument);

    let says = |user: &'static str, text: &'static str, seconds_ago: i64| {
        c.sim(
            "say",
            json!({"phone_number_id": c.number, "from": user, "text": text,
                   "seconds_ago": seconds_ago}),
        )
    };
    let giulia = "393510000301";
    says(giulia, "fermà", 10).await?;
    eventually("the tenant's stop word stops marketing", WAIT, || async {
        Ok(c.window(giulia)
            .await?
            .is_marketing_opted_out()
            .then_some(()))
    })
    .await?;
    // The tenant's answer goes to her, inside the window her message opened, free.
    let replied = eventually("the stop is answered", WAIT, || async {
        let sent = c
            .client
            .clone()
            .list_messages(finestra_proto::v1::ListMessagesRequest {
                tenant_id: c.tenant.clone(),
                to: giulia.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .messages;
        Ok(sent
            .into_iter()
            .find(|m| m.kind == "text" && ["DELIVERED", "READ"].contains(&m.status.as_str())))
    })
    .await?;
    assert!(replied.free, "{replied:?}");
    says(giulia, "Riprendi!", 0).await?;
    eventually("the tenant's start word resumes it", WAIT, || async {
        Ok((!c.window(giulia).await?.is_marketing_opted_out()).then_some(()))
    })
    .await?;
    // The platform's STOP is not this tenant's word any more. (Its message is recorded before
    // the later one the test waits for: one conversation stays in order.)
    let marco = "393510000302";
    says(marco, "STOP", 5).await?;
    c.user_says(marco, 0, false).await?;
    assert!(!c.window(marco).await?.is_marketing_opted_out());
    accounts.stop().await;
    c.stop().await;
    Ok(())
}
