//! The foundation's vertical slice against real Postgres, Redis and the broker:
//! signed webhook → ingest → Kafka → window service → GetWindow.

use finestra_e2e::{Slice, WAIT, secs};
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::ingest_service_client::IngestServiceClient;
use finestra_proto::v1::{
    InboundItem, InboundMessage, IngestInboundRequest, UserBlock, UserRef, inbound_item,
};
use finestra_testkit::{count_records, eventually, now_secs};

const DAY: i64 = 24 * 3600;

#[tokio::test(flavor = "multi_thread")]
async fn signed_text_webhook_opens_the_window_for_24_hours_from_the_message_time()
-> anyhow::Result<()> {
    let s = Slice::start().await?;
    let sent = now_secs() - 60;
    let status = s
        .post_signed(&s.text("wamid.open.1", "393471110001", sent, None))
        .await?;
    assert_eq!(status, 200);
    let w = s.wait_window("393471110001", |w| w.open).await?;
    assert_eq!(secs(w.csw_until.as_ref()), Some(sent + DAY));
    assert_eq!(w.last_inbound_message_id, "wamid.open.1");
    assert!(!w.fep_eligible && !w.marketing_opt_out && !w.blocked);

    let published = finestra_testkit::read_all(&s.scope.topics().window).await?;
    let [opened] = published.as_slice() else {
        panic!("one window event expected, got {published:?}")
    };
    assert_eq!(opened.event_id, "win:in:wamid.open.1");
    assert_eq!(opened.tenant_id, s.tenant);
    let Some(Payload::WindowOpened(o)) = &opened.payload else {
        panic!("WindowOpened expected")
    };
    assert_eq!(secs(o.csw_until.as_ref()), Some(sent + DAY));
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_sent_25_hours_ago_leaves_the_window_closed() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let sent = now_secs() - 25 * 3600;
    assert_eq!(
        s.post_signed(&s.text("wamid.old.1", "393471110002", sent, None))
            .await?,
        200
    );
    s.wait_history("393471110002", 1).await?;
    let w = s.window("393471110002").await?;
    assert!(!w.open);
    assert_eq!(
        secs(w.csw_until.as_ref()),
        Some(sent + DAY),
        "closed one hour ago"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_delivered_in_reverse_order_keep_the_newer_closing_time() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "393471110003";
    let newer = now_secs() - 60;
    let older = newer - 3 * 3600;
    assert_eq!(
        s.post_signed(&s.text("wamid.rev.new", user, newer, None))
            .await?,
        200
    );
    assert_eq!(
        s.post_signed(&s.text("wamid.rev.old", user, older, None))
            .await?,
        200
    );
    s.wait_history(user, 2).await?;
    let w = s.window(user).await?;
    assert_eq!(secs(w.csw_until.as_ref()), Some(newer + DAY));
    assert_eq!(w.last_inbound_message_id, "wamid.rev.new");
    let published = finestra_testkit::read_all(&s.scope.topics().window).await?;
    assert_eq!(
        published.len(),
        1,
        "the older message changed nothing, so it announced nothing"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_webhook_posted_three_times_is_one_history_row_and_one_state() -> anyhow::Result<()>
{
    let s = Slice::start().await?;
    let user = "393471110004";
    let sent = now_secs() - 120;
    let body = s.text("wamid.dup.1", user, sent, None);
    for _ in 0..3 {
        assert_eq!(s.post_signed(&body).await?, 200);
    }
    assert_eq!(
        count_records(&s.scope.topics().inbound).await?,
        3,
        "each POST was published (same event id)"
    );
    // A later, older message of the same pair travels the same partition behind the duplicates:
    // once it is applied, so are they.
    assert_eq!(
        s.post_signed(&s.text("wamid.dup.sentinel", user, sent - 600, None))
            .await?,
        200
    );
    s.wait_history(user, 2).await?;
    assert_eq!(
        s.history_rows(user).await?,
        2,
        "three deliveries of one event are one row"
    );
    let w = s.window(user).await?;
    assert_eq!(secs(w.csw_until.as_ref()), Some(sent + DAY));
    assert_eq!(w.last_inbound_message_id, "wamid.dup.1");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_redelivered_with_a_later_time_changes_neither_the_window_nor_the_history()
-> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "393471110014";
    let sent = now_secs() - 4 * 3600;
    assert_eq!(
        s.post_signed(&s.text("wamid.again.1", user, sent, None))
            .await?,
        200
    );
    s.wait_history(user, 1).await?;
    // The provider re-delivers the same message claiming it was sent three hours later.
    assert_eq!(
        s.post_signed(&s.text("wamid.again.1", user, sent + 3 * 3600, None))
            .await?,
        200
    );
    // An older message of the same pair travels the same partition behind the re-delivery.
    assert_eq!(
        s.post_signed(&s.text("wamid.again.sentinel", user, sent - 600, None))
            .await?,
        200
    );
    s.wait_history(user, 2).await?;
    assert_eq!(s.history_rows(user).await?, 2, "the re-delivery is no row");
    let w = s.window(user).await?;
    assert_eq!(
        secs(w.csw_until.as_ref()),
        Some(sent + DAY),
        "the window follows the time the history kept"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_wrongly_signed_oversized_and_garbage_posts_are_refused_and_publish_nothing()
-> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "393471110005";
    let body = serde_json::to_vec(&s.text("wamid.bad.1", user, now_secs(), None))?;
    let ingest = &s.ingest.running;

    let unsigned = finestra_testkit::post_webhook(&s.http, ingest, &body, None).await?;
    assert_eq!(unsigned, 401);
    let wrong =
        finestra_testkit::post_webhook(&s.http, ingest, &body, Some("not-the-secret")).await?;
    assert_eq!(wrong, 401);

    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(
        finestra_testkit::post_webhook(&s.http, ingest, &big, Some(&s.secret)).await?,
        413
    );
    let garbage = b"{\"object\": \"whatsapp_business_account\", \"entry\": [";
    assert_eq!(
        finestra_testkit::post_webhook(&s.http, ingest, garbage, Some(&s.secret)).await?,
        400
    );

    for topic in s.scope.topics().all() {
        assert_eq!(count_records(topic).await?, 0, "nothing on {topic}");
    }
    let w = s.window(user).await?;
    assert!(!w.open && w.csw_until.is_none(), "no state change");

    let addr = ingest.metrics_addr;
    let metrics = s
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("finestra_ingest_webhooks_total{outcome=\"bad_signature\"}"),
        "the refusal is counted"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_for_an_unknown_number_is_acknowledged_and_dropped() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let body = finestra_cloudapi::build::text_messages(
        "pn-nobody-has-this",
        "",
        &[finestra_cloudapi::build::InboundText {
            wamid: "wamid.unknown.1",
            from: "393471110006",
            profile_name: "X",
            timestamp: now_secs(),
            body: "hi",
            referral: None,
        }],
    );
    assert_eq!(
        s.post_signed(&body).await?,
        200,
        "the provider must not retry forever"
    );
    assert_eq!(count_records(&s.scope.topics().inbound).await?, 0);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn several_numbers_messages_and_statuses_in_one_post_are_all_handled() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let t = now_secs() - 30;
    let msgs = [
        finestra_cloudapi::build::InboundText {
            wamid: "wamid.multi.1",
            from: "393471110101",
            profile_name: "A",
            timestamp: t,
            body: "a",
            referral: None,
        },
        finestra_cloudapi::build::InboundText {
            wamid: "wamid.multi.2",
            from: "393471110102",
            profile_name: "B",
            timestamp: t,
            body: "b",
            referral: None,
        },
    ];
    let status = finestra_cloudapi::build::status(
        &s.number,
        "",
        "wamid.biz.1",
        "delivered",
        "393471110101",
        t,
    );
    let mut body = finestra_cloudapi::build::text_messages(&s.number, "", &msgs);
    // Second entry: a status of a business message.
    if let (Some(entries), Some(extra)) = (body["entry"].as_array_mut(), status["entry"].as_array())
    {
        entries.extend(extra.iter().cloned());
    }
    assert_eq!(s.post_signed(&body).await?, 200);
    assert_eq!(count_records(&s.scope.topics().inbound).await?, 2);
    assert_eq!(count_records(&s.scope.topics().status).await?, 1);
    s.wait_window("393471110101", |w| w.open).await?;
    s.wait_window("393471110102", |w| w.open).await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_referral_message_makes_the_pair_fep_eligible() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "5511988880001";
    let sent = now_secs() - 10;
    let referral = finestra_cloudapi::build::ad_referral("ad-42");
    assert_eq!(
        s.post_signed(&s.text("wamid.ad.1", user, sent, Some(referral)))
            .await?,
        200
    );
    let w = s.wait_window(user, |w| w.open).await?;
    assert!(w.fep_eligible, "a reply now would start a 72 h FEP");
    assert!(!w.fep_open, "no FEP before the business replies");
    assert_eq!(secs(w.referral_at.as_ref()), Some(sent));
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn marketing_stop_sets_the_opt_out_and_resume_clears_it() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "4915112340001";
    let t = now_secs() - 100;
    let stop = finestra_cloudapi::build::marketing_preference(&s.number, "", user, true, t);
    assert_eq!(s.post_signed(&stop).await?, 200);
    s.wait_window(user, |w| w.marketing_opt_out).await?;
    let resume = finestra_cloudapi::build::marketing_preference(&s.number, "", user, false, t + 50);
    assert_eq!(s.post_signed(&resume).await?, 200);
    let w = s.wait_window(user, |w| !w.marketing_opt_out).await?;
    assert!(!w.open, "a preference change does not open a window");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_redis_loses_everything_get_window_gives_the_same_answer() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let user = "447700900001";
    let sent = now_secs() - 300;
    let referral = finestra_cloudapi::build::ad_referral("ad-7");
    assert_eq!(
        s.post_signed(&s.text("wamid.flush.1", user, sent, Some(referral)))
            .await?,
        200
    );
    let stop = finestra_cloudapi::build::marketing_preference(&s.number, "", user, true, sent + 1);
    assert_eq!(s.post_signed(&stop).await?, 200);
    let mut before = s
        .wait_window(user, |w| w.open && w.marketing_opt_out)
        .await?;

    assert!(s.scope.lose_redis().await? > 0, "the hot window is lost");

    let mut after = s.window(user).await?;
    before.as_of = None;
    after.as_of = None;
    assert_eq!(after, before);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_inbound_over_grpc_has_the_webhook_semantics() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let operator = s.scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    let mut client = IngestServiceClient::new(
        finestra_testkit::authed_channel(s.ingest.running.grpc_url(), &operator).await?,
    );
    // Internal: a tenant key (even an admin one) is refused.
    let tenant_key = s.scope.tenant_key("acme", &[KeyScope::Admin]).await?;
    let mut as_tenant = IngestServiceClient::new(
        finestra_testkit::authed_channel(s.ingest.running.grpc_url(), &tenant_key).await?,
    );
    let sent = now_secs() - 5;
    let item = |id: &str| InboundItem {
        timestamp: Some(finestra_proto::time::from_micros(sent * 1_000_000)),
        item: Some(inbound_item::Item::Message(InboundMessage {
            user: Some(UserRef {
                wa_id: "919800000001".into(),
                ..Default::default()
            }),
            message_id: id.into(),
            message_type: "text".into(),
            text: "namaste".into(),
            ..Default::default()
        })),
    };
    let req = IngestInboundRequest {
        phone_number_id: s.number.clone(),
        items: vec![item("wamid.grpc.1")],
    };
    let refused = as_tenant
        .ingest_inbound(req.clone())
        .await
        .expect_err("tenant key");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let answer = client.ingest_inbound(req.clone()).await?.into_inner();
    assert_eq!(answer.event_ids, ["in:wamid.grpc.1"]);
    client.ingest_inbound(req).await?;
    let w = s.wait_window("919800000001", |w| w.open).await?;
    assert_eq!(secs(w.csw_until.as_ref()), Some(sent + DAY));
    s.wait_history("919800000001", 1).await?;
    assert_eq!(s.history_rows("919800000001").await?, 1);

    let unknown = IngestInboundRequest {
        phone_number_id: "pn-unknown".into(),
        items: vec![item("wamid.grpc.2")],
    };
    let err = client
        .ingest_inbound(unknown)
        .await
        .expect_err("unknown number");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        finestra_platform::status::reason_of(&err).as_deref(),
        Some("NOT_FOUND")
    );

    let no_time = IngestInboundRequest {
        phone_number_id: s.number.clone(),
        items: vec![InboundItem {
            timestamp: None,
            ..item("wamid.grpc.3")
        }],
    };
    let err = client
        .ingest_inbound(no_time)
        .await
        .expect_err("missing timestamp");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verification_handshake_echoes_the_challenge_only_for_the_right_token()
-> anyhow::Result<()> {
    let s = Slice::start().await?;
    let addr = s.ingest.running.http_addr.expect("http listener");
    let url = |token: &str| {
        format!(
            "http://{addr}/webhooks/cloud-api?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        )
    };
    let ok = s
        .http
        .get(url(&format!("verify-{}", s.scope.id())))
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await?, "1158201444");
    let wrong = s.http.get(url("guess")).send().await?;
    assert_eq!(wrong.status(), 403);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_once_the_dependencies_answer() -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let s = Slice::start().await?;
    let services = [
        (s.ingest.running.grpc_url(), finestra_ingest::SERVICE_NAME),
        (s.window.running.grpc_url(), finestra_window::SERVICE_NAME),
    ];
    for (url, name) in services {
        let health = HealthClient::new(
            tonic::transport::Channel::from_shared(url)?
                .connect()
                .await?,
        );
        for service in ["", name] {
            eventually(&format!("{service:?} SERVING"), WAIT, || {
                let mut health = health.clone();
                async move {
                    let r = health
                        .check(HealthCheckRequest {
                            service: service.into(),
                        })
                        .await?
                        .into_inner();
                    Ok((r.status == ServingStatus::Serving as i32).then_some(()))
                }
            })
            .await?;
        }
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_open_windows_pages_through_open_windows_only() -> anyhow::Result<()> {
    use finestra_proto::v1::ListOpenWindowsRequest;
    let s = Slice::start().await?;
    let now = now_secs();
    for i in 0..5 {
        let user = format!("39347222000{i}");
        let sent = if i == 2 { now - 30 * 3600 } else { now - 60 };
        assert_eq!(
            s.post_signed(&s.text(&format!("wamid.list.{i}"), &user, sent, None))
                .await?,
            200
        );
    }
    for i in 0..5 {
        s.wait_history(&format!("39347222000{i}"), 1).await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .windows
            .clone()
            .list_open_windows(ListOpenWindowsRequest {
                tenant_id: s.tenant.clone(),
                phone_number_id: s.number.clone(),
                page_size: 2,
                page_token: token,
            })
            .await?
            .into_inner();
        assert!(page.windows.len() <= 2);
        seen.extend(page.windows.into_iter().map(|w| w.user));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        [
            "393472220000",
            "393472220001",
            "393472220003",
            "393472220004"
        ]
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_secret_rotation_both_secrets_verify_during_the_overlap_only() -> anyhow::Result<()>
{
    let s = Slice::start().await?;
    let infra = finestra_testkit::infra().await?;
    let rotate = |overlap_secs: i64| {
        sqlx::query(
            "UPDATE accounts.numbers SET previous_app_secret = app_secret, app_secret = $2,
                    previous_secret_valid_until = now() + $3 * interval '1 second'
             WHERE phone_number_id = $1",
        )
        .bind(s.number.clone())
        .bind(format!("{}-new", s.secret))
        .bind(overlap_secs)
    };
    rotate(3600).execute(&infra.pool).await?;
    // The number lookup is cached briefly; wait until ingest sees the new secret.
    let body = serde_json::to_vec(&s.text("wamid.rot.1", "393471119001", now_secs(), None))?;
    let new_secret = format!("{}-new", s.secret);
    eventually("the new secret verifies", WAIT, || async {
        let st =
            finestra_testkit::post_webhook(&s.http, &s.ingest.running, &body, Some(&new_secret))
                .await?;
        Ok((st == 200).then_some(()))
    })
    .await?;
    let old =
        finestra_testkit::post_webhook(&s.http, &s.ingest.running, &body, Some(&s.secret)).await?;
    assert_eq!(
        old, 200,
        "the previous secret still verifies during the overlap"
    );

    // Overlap over: only the newest secret verifies.
    sqlx::query("UPDATE accounts.numbers SET previous_secret_valid_until = now() - interval '1 second' WHERE phone_number_id = $1")
        .bind(&s.number)
        .execute(&infra.pool)
        .await?;
    eventually("the previous secret is refused", WAIT, || async {
        let st = finestra_testkit::post_webhook(&s.http, &s.ingest.running, &body, Some(&s.secret))
            .await?;
        Ok((st == 401).then_some(()))
    })
    .await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_numbers_webhooks_are_acknowledged_and_dropped() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    sqlx::query("UPDATE accounts.numbers SET status = 'suspended' WHERE phone_number_id = $1")
        .bind(&s.number)
        .execute(&finestra_testkit::infra().await?.pool)
        .await?;
    // Nothing was cached for this number yet, so the suspension is seen at once.
    assert_eq!(
        s.post_signed(&s.text("wamid.susp.1", "393471118001", now_secs(), None))
            .await?,
        200
    );
    assert_eq!(count_records(&s.scope.topics().inbound).await?, 0);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_who_never_wrote_is_cached_as_closed_and_then_opens_normally() -> anyhow::Result<()>
{
    let s = Slice::start().await?;
    let user = "393471117001";
    let w = s.window(user).await?;
    assert!(!w.open && w.csw_until.is_none());
    // The answer is now cached in Redis as the empty state, an empty string (polled: it is
    // written after the answer).
    let redis = finestra_testkit::infra().await?.redis.clone();
    let key = finestra_registry::windows::key("fin", &s.scope.tenant_id("acme"), &s.number, user);
    eventually("the empty state cached", WAIT, || {
        let (mut redis, key) = (redis.clone(), key.clone());
        let s = &s;
        async move {
            s.window(user).await?;
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
            Ok((value.as_deref() == Some("")).then_some(()))
        }
    })
    .await?;
    // ...which the user's first message then completes.
    let sent = now_secs() - 30;
    assert_eq!(
        s.post_signed(&s.text("wamid.neg.1", user, sent, None))
            .await?,
        200
    );
    let w = s.wait_window(user, |w| w.open).await?;
    assert_eq!(secs(w.csw_until.as_ref()), Some(sent + DAY));
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_and_an_unblock_within_one_second_leave_the_user_unblocked() -> anyhow::Result<()> {
    let s = Slice::start().await?;
    let operator = s.scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    let mut client = IngestServiceClient::new(
        finestra_testkit::authed_channel(s.ingest.running.grpc_url(), &operator).await?,
    );
    let user = "393530000001";
    let second = (now_secs() - 5) * 1_000_000;
    let toggle = |blocked: bool, micros: i64| IngestInboundRequest {
        phone_number_id: s.number.clone(),
        items: vec![InboundItem {
            timestamp: Some(finestra_proto::time::from_micros(micros)),
            item: Some(inbound_item::Item::Block(UserBlock {
                user: Some(UserRef {
                    wa_id: user.into(),
                    ..Default::default()
                }),
                blocked,
                ..Default::default()
            })),
        }],
    };
    // Blocked at .1 s, unblocked at .9 s of the same second; the unblock arrives first.
    client
        .ingest_inbound(toggle(false, second + 900_000))
        .await?;
    client
        .ingest_inbound(toggle(true, second + 100_000))
        .await?;
    s.wait_history(user, 2).await?;
    let w = s.window(user).await?;
    assert!(!w.blocked, "the later toggle, the unblock, wins: {w:?}");
    // And a block after it, in the same second, wins over it.
    client
        .ingest_inbound(toggle(true, second + 950_000))
        .await?;
    s.wait_window(user, |w| w.blocked).await?;
    s.stop().await;
    Ok(())
}
