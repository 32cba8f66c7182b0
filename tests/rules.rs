//! Rule slips found by reading the code as a newcomer would, each shown end to end on the whole
//! chain (real Postgres, Redis, broker; the simulator as the network): a suspended tenant sends
//! nothing whoever asks, and a message that failed does not count toward the tier.

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, reason, template};
use finestra_platform::auth::{Owner, Scope as KeyScope};
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
