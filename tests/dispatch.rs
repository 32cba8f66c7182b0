//! Dispatch end to end, with every part real: the simulator as the network, ingest taking its
//! signed webhooks, the window service, billing reserving and capturing, and dispatch
//! accepting, pacing, sending and following statuses; Postgres, Redis and the broker are the
//! machine's.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, MARKETING_IT, UTILITY_IT, reason, template, text};
use finestra_platform::auth::Scope as KeyScope;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{self, SendMessageRequest};
use finestra_testkit::{eventually, infra};
use serde_json::{Value, json};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_inside_the_window_is_sent_delivered_and_not_charged() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let giulia = "393331110001";
    c.user_says(giulia, 0, false).await?;

    let reply = c.text(giulia, "reply-1", "Your order is ready").await?;
    assert_eq!(reply.status, "ACCEPTED");
    assert!(reply.free, "a service reply is free");
    assert_eq!(
        (reply.price_micros, reply.free_reason.as_str()),
        (0, "SERVICE")
    );
    let doc = c
        .send(c.request(
            giulia,
            "doc-1",
            Content::Media(v1::MediaContent {
                kind: "document".into(),
                link: "https://files.example/invoice-17.pdf".into(),
                caption: "Your invoice".into(),
                filename: "invoice-17.pdf".into(),
                media_id: String::new(),
            }),
        ))
        .await?;
    for id in [&reply.message_id, &doc.message_id] {
        let m = c.settles(id, &["DELIVERED"]).await?;
        assert!(m.provider_message_id.starts_with("wamid.sim."));
        assert!(m.sent_at.is_some() && m.delivered_at.is_some());
        assert_eq!(m.attempts, 1);
    }
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.balance_micros, 0, "nothing charged");
    assert!(c.charges().await?.iter().all(|(_, amount)| *amount == 0));

    let listed = c
        .client
        .clone()
        .list_messages(v1::ListMessagesRequest {
            tenant_id: c.tenant.clone(),
            to: giulia.into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.messages.len(), 1);
    assert!(!listed.next_page_token.is_empty());
    let second = c
        .client
        .clone()
        .list_messages(v1::ListMessagesRequest {
            tenant_id: c.tenant.clone(),
            to: giulia.into(),
            page_size: 1,
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(second.messages.len(), 1);
    assert_ne!(second.messages[0].message_id, listed.messages[0].message_id);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

/// An accepted send's idempotency key is kept for a day (confirmed in a pipeline after the
/// answer, not on its path) and a refused one's is freed at once, for a retry to be decided
/// afresh; the window read with the claim decided both.
#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_sends_key_is_kept_for_a_day_and_a_refused_ones_is_freed() -> anyhow::Result<()>
{
    let c = Chain::start(80).await?;
    let redis = infra().await?.redis.clone();
    let key_of = |message_id: &str| format!("fin:{{{}}}:idem:{message_id}", c.tenant);
    let ttl = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut redis)
                .await
        }
    };
    let wrote = "393331110081";
    c.user_says(wrote, 0, false).await?;
    let reply = c.text(wrote, "kept-1", "Your order is ready").await?;
    assert!(reply.free, "the window read with the claim is open");
    eventually("the accepted key is kept for a day", WAIT, || async {
        let left = ttl(key_of(&reply.message_id)).await?;
        Ok((left > 3_600).then_some(()))
    })
    .await?;

    let silent = "393331110082";
    let refused = c.text(silent, "freed-1", "Nobody asked").await;
    assert_eq!(reason(&refused).1, "WINDOW_CLOSED");
    let refused_id = finestra_dispatch::content::message_id(&c.tenant, "freed-1");
    eventually("the refused key is freed", WAIT, || async {
        let left = ttl(key_of(&refused_id)).await?;
        // -2: no such key.
        Ok((left == -2).then_some(()))
    })
    .await?;
    c.stop().await;
    Ok(())
}

/// A business replies the moment it hears of a user's message (a webhook handler does): the
/// reply finds the window open even while the window service has not recorded the message yet,
/// and it is free; a user who never wrote still gets WINDOW_CLOSED.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_made_on_the_tenants_news_of_a_message_finds_the_window_open() -> anyhow::Result<()>
{
    let mut c = Chain::start(80).await?;
    let giulia = "393331110007";
    c.stop_window().await;
    let wamid = c.user_writes(giulia, 0, false).await?;
    let infra = infra().await?;
    eventually("the tenant is told of the message", WAIT, || async {
        let told: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM dispatch.tenant_events
              WHERE tenant_id = $1 AND kind = 'inbound_message' AND event_id = $2",
        )
        .bind(&c.tenant)
        .bind(format!("in:{wamid}"))
        .fetch_optional(&infra.pool)
        .await?;
        Ok(told.map(|_| ()))
    })
    .await?;
    assert!(
        !c.window(giulia)
            .await?
            .is_open(finestra_domain::Timestamp::from_micros(
                chrono::Utc::now().timestamp_micros()
            )),
        "the window service is stopped: it has not opened the window"
    );
    let reply = c.text(giulia, "reply-on-news", "Right away!").await?;
    assert_eq!((reply.free, reply.free_reason.as_str()), (true, "SERVICE"));
    let stranger = c.text("393331110008", "to-a-stranger", "Hello?").await;
    assert_eq!(reason(&stranger).1, "WINDOW_CLOSED");
    c.start_window().await?;
    c.settles(&reply.message_id, &["DELIVERED", "READ"]).await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_window_a_free_form_is_refused_and_a_template_is_charged_once()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let marco = "393331110002";
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;
    c.user_says(marco, 25 * 3_600, false).await?;

    let refused = c.text(marco, "late-1", "Are you still there?").await;
    assert_eq!(
        reason(&refused),
        (Code::FailedPrecondition, "WINDOW_CLOSED".into())
    );
    assert_eq!(c.reservations().await?, 0, "nothing reserved");

    let offer = c
        .template_send(marco, "offer-1", "weekend_offer", &["Marco"])
        .await?;
    assert!(!offer.free);
    assert_eq!(offer.price_micros, MARKETING_IT);
    assert_eq!(offer.category, "MARKETING");
    let m = c.settles(&offer.message_id, &["DELIVERED"]).await?;
    assert_eq!(m.price_micros, MARKETING_IT);
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.balance_micros, 1_000_000 - MARKETING_IT);
    assert_eq!(
        c.charges().await?,
        vec![(offer.message_id.clone(), -MARKETING_IT)],
        "charged exactly once"
    );
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn utility_inside_the_window_is_free_and_a_referral_reply_opens_a_free_entry_point()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("order_ready", "UTILITY", 1).await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;

    let giulia = "393331110003";
    c.user_says(giulia, 0, false).await?;
    let utility = c
        .template_send(giulia, "u-1", "order_ready", &["A-17"])
        .await?;
    assert!(utility.free);
    assert_eq!(utility.free_reason, "UTILITY_IN_WINDOW");

    // A user from an ad writes; the business replies inside the window: a 72 h FEP starts.
    let ada = "393331110004";
    c.user_says(ada, 60, true).await?;
    let reply = c.text(ada, "r-1", "Thanks for your interest").await?;
    assert!(reply.free);
    eventually("the window service records the FEP", WAIT, || async {
        Ok(c.window(ada).await?.fep_until.map(|_| ()))
    })
    .await?;
    let offer = c
        .template_send(ada, "o-1", "weekend_offer", &["Ada"])
        .await?;
    assert!(offer.free, "marketing inside the FEP is free");
    assert_eq!(offer.free_reason, "FREE_ENTRY_POINT");
    for id in [&utility.message_id, &reply.message_id, &offer.message_id] {
        c.settles(id, &["DELIVERED"]).await?;
    }
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.balance_micros, 1_000_000, "nothing charged");
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_sent_before_the_window_service_saw_the_ad_click_still_opens_the_free_entry_point()
-> anyhow::Result<()> {
    let mut c = Chain::start(80).await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;
    let ada = "393331110024";
    // Ada wrote earlier: her window is open.
    c.user_says(ada, 120, false).await?;
    // She clicks an ad and writes while the window service is down, and the business answers
    // at once: dispatch cannot know the reply starts a free entry point.
    c.stop_window().await;
    c.user_writes(ada, 0, true).await?;
    let reply = c.text(ada, "late-1", "Thanks for your interest").await?;
    assert!(reply.free);
    assert_eq!(
        c.window(ada).await?.referral_at,
        None,
        "the referral was not recorded when the reply was accepted"
    );
    let replied_at = c
        .message(&reply.message_id)
        .await?
        .accepted_at
        .as_ref()
        .map(finestra_proto::time::to_micros)
        .ok_or_else(|| anyhow::anyhow!("no accepted_at"))?;
    // The window service comes back and records the referral; dispatch finds the reply.
    c.start_window().await?;
    let fep_until = eventually("the early reply starts the FEP", WAIT, || async {
        Ok(c.window(ada).await?.fep_until)
    })
    .await?;
    assert_eq!(
        fep_until,
        finestra_domain::Timestamp::from_micros(replied_at).plus_hours(72),
        "72 h from the reply, as if the flag had been set"
    );
    let offer = c
        .template_send(ada, "late-o-1", "weekend_offer", &["Ada"])
        .await?;
    assert!(offer.free, "marketing inside the FEP is free");
    assert_eq!(offer.free_reason, "FREE_ENTRY_POINT");
    c.settles(&offer.message_id, &["DELIVERED", "READ"]).await?;
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.balance_micros, 1_000_000, "nothing charged");
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_to_one_user_reach_the_network_in_the_order_they_were_accepted_even_through_retries()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let user = "393331110031";
    c.user_says(user, 60, false).await?;
    // The network fails the next three sends: the first message is retried after a pause
    // while the ones behind it are ready to go.
    c.sim(
        "faults",
        json!({ "phone_number_id": c.number, "next": 3, "http_status": 500 }),
    )
    .await?;
    let mut accepted = Vec::new();
    for i in 0..8 {
        let sent = c
            .text(user, &format!("order-{i}"), &format!("part {i}"))
            .await?;
        accepted.push(sent.message_id);
    }
    for id in &accepted {
        c.settles(id, &["DELIVERED", "READ"]).await?;
    }
    let received: Value = c
        .http
        .get(format!("{}/sim/v1/received/{}", c.sim.base_url(), c.number))
        .send()
        .await?
        .json()
        .await?;
    let order: Vec<String> = received["message_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|id| accepted.iter().any(|a| a == id))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        order, accepted,
        "the network received them in the order they were accepted"
    );
    assert_eq!(
        c.sim_stats(&c.number).await?["injected_failures"].as_i64(),
        Some(3),
        "and the first one went through retries"
    );
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_send_ten_times_at_once_is_one_message_and_one_charge() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;
    let luca = "393331110005";
    let req = c.request(
        luca,
        "campaign-7/luca",
        template("weekend_offer", &["Luca"]),
    );
    let answers = futures::future::join_all((0..10).map(|_| c.send(req.clone()))).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|a| {
            a.as_ref()
                .map(|r| r.message_id.clone())
                .map_err(|s| anyhow::anyhow!("{s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(ids.len(), 1, "one message: {answers:?}");
    let id = ids.into_iter().next().unwrap_or_default();
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.as_ref().is_ok_and(|r| !r.replayed))
            .count(),
        1,
        "exactly one was new"
    );

    let mut other = req.clone();
    other.content = Some(template("weekend_offer", &["Someone else"]));
    assert_eq!(
        reason(&c.send(other).await),
        (Code::AlreadyExists, "IDEMPOTENCY_CONFLICT".into())
    );
    c.settles(&id, &["DELIVERED"]).await?;
    let again = c.send(req).await?;
    assert!(again.replayed);
    assert_eq!(again.message_id, id);
    assert_eq!(again.status, "DELIVERED");
    c.books_settled().await?;
    assert_eq!(c.charges().await?, vec![(id, -MARKETING_IT)]);
    assert_eq!(c.reservations().await?, 1);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

/// A bulk sender's batch: each message is decided as SendMessage decides it and answered on
/// its own, in order; the same batch retried answers the same message ids and charges nothing
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_answers_each_message_on_its_own_and_a_retried_batch_changes_nothing()
-> anyhow::Result<()> {
    use finestra_proto::v1::send_message_result::Outcome;
    let c = Chain::start(80).await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;
    let users: Vec<String> = (0..4).map(|i| format!("39333111{i:04}")).collect();
    let mut messages: Vec<v1::SendMessageRequest> = users
        .iter()
        .map(|u| {
            c.request(
                u,
                &format!("batch-1/{u}"),
                template("weekend_offer", &["Ada"]),
            )
        })
        .collect();
    // Refused on their own: a free-form outside any window, a template missing its parameter,
    // a message of another tenant, and a message without an idempotency key.
    messages.insert(1, c.request(&users[0], "batch-1/free-form", text("hello?")));
    messages.insert(
        3,
        c.request(
            &users[1],
            "batch-1/no-param",
            template("weekend_offer", &[]),
        ),
    );
    let mut foreign = c.request(
        &users[2],
        "batch-1/foreign",
        template("weekend_offer", &["X"]),
    );
    foreign.tenant_id = "someone-else".into();
    messages.push(foreign);
    messages.push(c.request(&users[3], "", template("weekend_offer", &["Ada"])));
    let batch = v1::SendMessagesRequest {
        tenant_id: c.tenant.clone(),
        messages,
    };

    let answers = c
        .client
        .clone()
        .send_messages(batch.clone())
        .await?
        .into_inner();
    let outcomes: Vec<Outcome> = answers
        .results
        .into_iter()
        .map(|r| r.outcome.ok_or_else(|| anyhow::anyhow!("an empty result")))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(outcomes.len(), 8, "one result per message, in order");
    let refused: Vec<(usize, String)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Refused(r) => Some((i, r.reason.clone())),
            Outcome::Accepted(_) => None,
        })
        .collect();
    assert_eq!(
        refused,
        [
            (1, "WINDOW_CLOSED".to_owned()),
            (3, "TEMPLATE_PARAMS_MISMATCH".to_owned()),
            (6, "INVALID_ARGUMENT".to_owned()),
            (7, "INVALID_ARGUMENT".to_owned()),
        ]
    );
    let accepted: Vec<v1::SendMessageResponse> = outcomes
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Accepted(a) => Some(a),
            Outcome::Refused(_) => None,
        })
        .collect();
    assert_eq!(accepted.len(), 4);
    assert!(
        accepted
            .iter()
            .all(|a| !a.replayed && a.price_micros == MARKETING_IT)
    );
    for a in &accepted {
        c.settles(&a.message_id, &["DELIVERED", "READ"]).await?;
    }

    let again = c.client.clone().send_messages(batch).await?.into_inner();
    let replayed: Vec<(String, bool)> = again
        .results
        .iter()
        .filter_map(|r| match &r.outcome {
            Some(Outcome::Accepted(a)) => Some((a.message_id.clone(), a.replayed)),
            _ => None,
        })
        .collect();
    assert_eq!(
        replayed,
        accepted
            .iter()
            .map(|a| (a.message_id.clone(), true))
            .collect::<Vec<_>>(),
        "the retried batch answers the same messages, as replays"
    );
    c.books_settled().await?;
    let mut charged: Vec<String> = c.charges().await?.into_iter().map(|(id, _)| id).collect();
    charged.sort();
    let mut ids: Vec<String> = accepted.iter().map(|a| a.message_id.clone()).collect();
    ids.sort();
    assert_eq!(charged, ids, "each accepted message charged once");
    assert_eq!(
        c.reservations().await?,
        4,
        "nothing reserved for a refusal or a replay"
    );

    let empty = c
        .client
        .clone()
        .send_messages(v1::SendMessagesRequest {
            tenant_id: c.tenant.clone(),
            messages: Vec::new(),
        })
        .await;
    assert_eq!(
        empty.err().map(|s| s.code()),
        Some(Code::InvalidArgument),
        "an empty batch is refused as a whole"
    );
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_errors_are_retried_then_dead_lettered_and_released() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(1_000_000).await?;
    let sara = "393331110006";

    c.sim("faults", json!({"phone_number_id": c.number, "next": 2}))
        .await?;
    let flaky = c
        .template_send(sara, "flaky-1", "weekend_offer", &["Sara"])
        .await?;
    let m = c
        .settles(&flaky.message_id, &["DELIVERED", "FAILED"])
        .await?;
    assert_eq!((m.status.as_str(), m.attempts), ("DELIVERED", 3));

    c.sim(
        "faults",
        json!({"phone_number_id": c.number, "always": true}),
    )
    .await?;
    let doomed = c
        .template_send(sara, "doomed-1", "weekend_offer", &["Sara"])
        .await?;
    let m = c
        .settles(&doomed.message_id, &["FAILED", "DELIVERED"])
        .await?;
    assert_eq!(m.status, "FAILED");
    assert_eq!(m.failure_reason, "PROVIDER_ERROR");
    assert_eq!(m.attempts, 4, "the configured bound");
    let dlq = finestra_testkit::read_all(&c.scope.topics().dlq).await?;
    assert!(
        dlq.iter().any(|e| matches!(&e.payload,
            Some(v1::envelope::Payload::DeadLetter(d)) if d.error.contains("after 4 attempts"))),
        "the message is dead-lettered"
    );
    let wallet = c.books_settled().await?;
    assert_eq!(
        c.charges().await?,
        vec![(flaky.message_id.clone(), -MARKETING_IT)],
        "the delivered one charged once, the failed one released"
    );
    assert_eq!(wallet.balance_micros, 1_000_000 - MARKETING_IT);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_number_is_paced_while_another_tenants_messages_flow() -> anyhow::Result<()> {
    let c = Chain::start(10).await?;
    let infra = infra().await?;
    // The slow number: 10 messages a second, on the network and in the control plane.
    sqlx::query(
        "UPDATE accounts.numbers SET throughput_per_second = 10 WHERE phone_number_id = $1",
    )
    .bind(&c.number)
    .execute(&infra.pool)
    .await?;
    sqlx::query("UPDATE accounts.tenants SET tier = NULL WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    c.template("order_ready", "UTILITY", 1).await?;
    c.top_up(200 * UTILITY_IT).await?;
    let (other_tenant, other_number, _) = c.scope.tenant_with_number("other", 2).await?;
    c.sim.register_all(&c.scope).await?;
    let other_key = c.scope.tenant_key("other", &[KeyScope::Send]).await?;
    let mut other = DispatchServiceClient::new(
        finestra_testkit::authed_channel(c.dispatch_url.clone(), &other_key).await?,
    );

    let started = std::time::Instant::now();
    let sends = (0..200).map(|i| {
        c.send(c.request(
            &format!("39333200{i:04}"),
            &format!("bulk-{i}"),
            template("order_ready", &["A-1"]),
        ))
    });
    let accepted: Vec<String> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.map(|a| a.message_id))
        .collect::<Result<_, _>>()?;

    // The other tenant's user writes and gets a reply while the slow number is paced.
    let user = "393334440000";
    let say = c
        .http
        .post(format!("{}/sim/v1/say", c.sim.base_url()))
        .json(&json!({"phone_number_id": other_number, "from": user, "text": "hi"}))
        .send()
        .await?;
    assert!(say.status().is_success());
    eventually("the other window opens", WAIT, || async {
        let w = finestra_registry::windows::read(
            &infra.redis,
            &infra.pool,
            "fin",
            &other_tenant,
            &other_number,
            user,
        )
        .await?;
        Ok(w.last_inbound.map(|_| ()))
    })
    .await?;
    let reply = other
        .send_message(SendMessageRequest {
            tenant_id: other_tenant.clone(),
            phone_number_id: other_number.clone(),
            to: user.into(),
            idempotency_key: "other-1".into(),
            send_at: None,
            send_at_local: String::new(),
            content: Some(text("On its way")),
        })
        .await?
        .into_inner();
    let other_delivered = eventually("the other tenant's reply is delivered", WAIT, || async {
        let m = other
            .clone()
            .get_message(v1::GetMessageRequest {
                tenant_id: other_tenant.clone(),
                message_id: reply.message_id.clone(),
            })
            .await?
            .into_inner();
        Ok((m.status == "DELIVERED").then(|| started.elapsed()))
    })
    .await?;
    let slow_done = c.sim_stats(&c.number).await?["accepted"]
        .as_u64()
        .unwrap_or_default();
    assert!(
        slow_done < 150,
        "the other tenant was not queued behind the slow number ({slow_done} of 200 sent when it was delivered after {other_delivered:?})"
    );

    for id in &accepted {
        c.settles(id, &["DELIVERED"]).await?;
    }
    let paced_for = started.elapsed();
    let stats = c.sim_stats(&c.number).await?;
    assert_eq!(
        stats["rate_limited"], 0,
        "the network never said 130429: {stats}"
    );
    assert_eq!(stats["accepted"], 200);
    assert!(
        paced_for >= Duration::from_secs(17),
        "200 messages at 10/s (burst 10) take at least 19 s, took {paced_for:?}"
    );
    // Billing captures from the statuses on its own: reconciled once every capture is in (a
    // capture landing between reconcile's Postgres and Redis reads looks like a difference).
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_refuses_sends_fails_queued_ones_and_an_unblock_restores_sending()
-> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let infra = infra().await?;
    // One message a second: the later ones are still queued when the user blocks. Dispatch
    // caches a number's rate from the first message it paces, and none has been sent yet: the
    // first one already reads this rate, so there is nothing to wait for.
    sqlx::query("UPDATE accounts.numbers SET throughput_per_second = 1 WHERE phone_number_id = $1")
        .bind(&c.number)
        .execute(&infra.pool)
        .await?;
    c.template("weekend_offer", "MARKETING", 1).await?;
    c.top_up(10 * MARKETING_IT).await?;
    let bea = "393331110007";
    c.user_says(bea, 25 * 3_600, false).await?;

    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            c.template_send(bea, &format!("q-{i}"), "weekend_offer", &["Bea"])
                .await?
                .message_id,
        );
    }
    c.sim(
        "block",
        json!({"phone_number_id": c.number, "user": bea, "blocked": true}),
    )
    .await?;
    eventually("the window service records the block", WAIT, || async {
        Ok(c.window(bea).await?.is_blocked().then_some(()))
    })
    .await?;
    assert_eq!(
        reason(
            &c.template_send(bea, "after-block", "weekend_offer", &["Bea"])
                .await
        ),
        (Code::FailedPrecondition, "USER_BLOCKED".into())
    );

    let mut delivered = Vec::new();
    let mut blocked = 0;
    for id in &queued {
        let m = c.settles(id, &["DELIVERED", "READ", "FAILED"]).await?;
        match m.status.as_str() {
            "FAILED" => {
                assert!(
                    ["USER_BLOCKED", "UNDELIVERABLE"].contains(&m.failure_reason.as_str()),
                    "{m:?}"
                );
                blocked += usize::from(m.failure_reason == "USER_BLOCKED");
            }
            _ => delivered.push(id.clone()),
        }
    }
    assert!(
        blocked >= 2,
        "the queued messages failed with USER_BLOCKED ({blocked})"
    );
    let wallet = c.books_settled().await?;
    let charges = c.charges().await?;
    assert_eq!(
        charges.len(),
        delivered.len(),
        "only delivered ones are charged"
    );
    assert_eq!(
        wallet.balance_micros,
        10 * MARKETING_IT - MARKETING_IT * delivered.len() as i64
    );

    c.sim(
        "block",
        json!({"phone_number_id": c.number, "user": bea, "blocked": false}),
    )
    .await?;
    eventually("the window service records the unblock", WAIT, || async {
        Ok((!c.window(bea).await?.is_blocked()).then_some(()))
    })
    .await?;
    assert_eq!(
        reason(&c.text(bea, "after-unblock-text", "Hello again").await),
        (Code::FailedPrecondition, "WINDOW_CLOSED".into()),
        "an unblock opens no window"
    );
    let again = c
        .template_send(bea, "after-unblock", "weekend_offer", &["Bea"])
        .await?;
    c.settles(&again.message_id, &["DELIVERED"]).await?;
    c.books_settled().await?;
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_has_its_reason_and_reserves_nothing() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let infra = infra().await?;
    c.template("offer", "MARKETING", 1).await?;
    c.template_with_status("draft", "MARKETING", 1, "PENDING")
        .await?;
    c.template_with_status("paused", "MARKETING", 1, "PAUSED")
        .await?;
    sqlx::query(
        "UPDATE accounts.templates SET paused_until = now() + interval '3 hours'
          WHERE tenant_id = $1 AND name = 'paused'",
    )
    .bind(&c.tenant)
    .execute(&infra.pool)
    .await?;
    let ugo = "393331110008";
    let eva = "393331110009";
    c.user_says(ugo, 25 * 3_600, false).await?;
    c.user_says(eva, 0, false).await?;

    let cases = [
        (
            c.template_send(ugo, "r1", "draft", &["x"]).await,
            Code::FailedPrecondition,
            "TEMPLATE_NOT_APPROVED",
        ),
        (
            c.template_send(ugo, "r2", "paused", &["x"]).await,
            Code::FailedPrecondition,
            "TEMPLATE_PAUSED",
        ),
        (
            c.template_send(ugo, "r3", "missing", &["x"]).await,
            Code::FailedPrecondition,
            "TEMPLATE_NOT_APPROVED",
        ),
        (
            c.template_send(ugo, "r4", "offer", &["x", "y"]).await,
            Code::InvalidArgument,
            "TEMPLATE_PARAMS_MISMATCH",
        ),
        (
            c.text(eva, "r5", "").await,
            Code::InvalidArgument,
            "INVALID_MESSAGE",
        ),
        (
            c.text(eva, "r6", &"x".repeat(4_097)).await,
            Code::InvalidArgument,
            "INVALID_MESSAGE",
        ),
        (
            c.text("12ab", "r7", "hi").await,
            Code::InvalidArgument,
            "INVALID_MESSAGE",
        ),
        (
            c.send(c.request(
                eva,
                "r8",
                Content::Media(v1::MediaContent {
                    kind: "image".into(),
                    link: "not a url".into(),
                    ..Default::default()
                }),
            ))
            .await,
            Code::InvalidArgument,
            "INVALID_MESSAGE",
        ),
        // No funds yet: the first chargeable send is refused at the reservation.
        (
            c.template_send(ugo, "r9", "offer", &["x"]).await,
            Code::FailedPrecondition,
            "INSUFFICIENT_FUNDS",
        ),
    ];
    for (i, (answer, code, why)) in cases.iter().enumerate() {
        assert_eq!(reason(answer), (*code, (*why).to_owned()), "case {}", i + 1);
    }

    c.sim(
        "preference",
        json!({"phone_number_id": c.number, "user": ugo, "stop": true}),
    )
    .await?;
    eventually("the window service records the opt-out", WAIT, || async {
        Ok(c.window(ugo).await?.is_marketing_opted_out().then_some(()))
    })
    .await?;
    assert_eq!(
        reason(&c.template_send(ugo, "r10", "offer", &["x"]).await),
        (Code::FailedPrecondition, "MARKETING_OPT_OUT".into())
    );
    assert_eq!(c.reservations().await?, 0, "no refusal reserved anything");

    // The tier: 250 distinct users a day may be messaged first.
    c.top_up(251 * MARKETING_IT).await?;
    let sends = (0..250).map(|i| {
        c.send(c.request(
            &format!("39333300{i:04}"),
            &format!("tier-{i}"),
            template("offer", &["x"]),
        ))
    });
    for answer in futures::future::join_all(sends).await {
        answer?;
    }
    assert_eq!(
        reason(
            &c.template_send("393334009999", "tier-251", "offer", &["x"])
                .await
        ),
        (Code::ResourceExhausted, "TIER_LIMIT_REACHED".into())
    );
    c.template_send("393333000007", "tier-again", "offer", &["x"])
        .await?;
    // Unlimited now, but the wallet is empty. Dispatch holds the old tier in its cache of the
    // tenant's facts for a moment; a send it still refuses for the tier reserves nothing and
    // frees its key, so the same send is retried until the new tier decides it.
    sqlx::query("UPDATE accounts.tenants SET tier = NULL WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    let untiered = eventually("the lifted tier applies", WAIT, || async {
        let answer = reason(
            &c.template_send("393334009999", "tier-252", "offer", &["x"])
                .await,
        );
        Ok((answer.1 != "TIER_LIMIT_REACHED").then_some(answer))
    })
    .await?;
    assert_eq!(
        untiered,
        (Code::FailedPrecondition, "INSUFFICIENT_FUNDS".into())
    );
    assert_eq!(c.reservations().await?, 251);
    let wallet = c.books_settled().await?;
    assert_eq!(wallet.balance_micros, 0);
    assert_eq!(c.charges().await?.len(), 251);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_population_writes_and_answers_delivered_messages() -> anyhow::Result<()> {
    let c = Chain::start(80).await?;
    let infra = infra().await?;
    let started = c
        .sim(
            "population",
            json!({"phone_number_id": c.number, "users": 20, "reply_per_mille": 1000,
                   "user_prefix": "39377"}),
        )
        .await?;
    assert_eq!(started["wrote"], 20);
    let user_messages = || async {
        Ok::<i64, anyhow::Error>(
            sqlx::query_scalar(
                "SELECT count(*) FROM windows.window_events
                  WHERE tenant_id = $1 AND kind = 'user_message'",
            )
            .bind(&c.tenant)
            .fetch_one(&infra.pool)
            .await?,
        )
    };
    eventually("every simulated user wrote once", WAIT, || async {
        Ok((user_messages().await? == 20).then_some(()))
    })
    .await?;
    for i in 0..5 {
        let user = format!("39377{i:06}");
        let sent = c
            .text(&user, &format!("pop-{i}"), "Thanks for writing!")
            .await?;
        c.settles(&sent.message_id, &["DELIVERED"]).await?;
    }
    eventually("each delivered message got its reply", WAIT, || async {
        Ok((user_messages().await? == 25).then_some(()))
    })
    .await?;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_its_capacity_dispatch_refuses_with_backlog_full_at_once() -> anyhow::Result<()> {
    let c = Chain::start_tuned(80, true, |cfg| cfg.max_pending_sends = 1).await?;
    let ida = "393331110020";
    c.user_says(ida, 0, false).await?;
    let sends = (0..40).map(|i| c.send(c.request(ida, &format!("burst-{i}"), text("hello"))));
    let answers = futures::future::join_all(sends).await;
    let full = answers
        .iter()
        .filter(|a| reason(a) == (Code::ResourceExhausted, "BACKLOG_FULL".into()))
        .count();
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert!(
        ok >= 1 && full >= 1,
        "{ok} accepted, {full} refused: {answers:?}"
    );
    assert_eq!(ok + full, 40, "nothing else: {answers:?}");
    // A refused key is free: the retry is decided afresh and accepted.
    let refused = answers.iter().position(|a| a.is_err()).unwrap_or_default();
    let again = c.text(ida, &format!("burst-{refused}"), "hello").await?;
    assert!(!again.replayed);
    c.stop().await;
    Ok(())
}

/// One message is one trace: the context a client sets on SendMessage is carried through the
/// outbound event (a Kafka header), the worker, the provider call (an HTTP header), the
/// network's status webhook, the status event and billing's capture. Every service runs in
/// this process, so one in-memory exporter sees every span.
#[tokio::test(flavor = "multi_thread")]
async fn the_trace_set_at_send_message_is_the_parent_of_the_capture() -> anyhow::Result<()> {
    use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt as _;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("finestra-test")));
    tracing::subscriber::set_global_default(subscriber)?;

    let c = Chain::start(80).await?;
    c.template("order_ready", "UTILITY", 1).await?;
    c.top_up(1_000_000).await?;
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")?;
    let client_span = SpanId::from_hex("00f067aa0ba902b7")?;
    let mut call = tonic::Request::new(c.request(
        "393331110077",
        "traced-1",
        template("order_ready", &["A-7"]),
    ));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{client_span}-01").parse()?,
    );
    let sent = c.client.clone().send_message(call).await?.into_inner();
    c.settles(&sent.message_id, &["DELIVERED"]).await?;
    eventually("the capture", WAIT, || async {
        Ok((c.charges().await?.len() == 1).then_some(()))
    })
    .await?;

    // The capture's span closes when its batch is written, a moment after the ledger row.
    let capture = eventually("the capture span", WAIT, || async {
        let spans = exporter.get_finished_spans()?;
        Ok(spans.into_iter().find(|s| {
            s.name == "billing.capture"
                && s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "message_id" && kv.value.as_str() == sent.message_id
                })
        }))
    })
    .await?;
    assert_eq!(
        capture.span_context.trace_id(),
        trace_id,
        "same trace as the call"
    );

    // Walk up from the capture: every hop is a span of this trace, and the root's parent is
    // the client's span.
    let spans = exporter.get_finished_spans()?;
    let by_id: std::collections::HashMap<SpanId, _> = spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let mut chain = vec![capture.name.to_string()];
    let mut parent = capture.parent_span_id;
    while let Some(span) = by_id.get(&parent) {
        chain.push(span.name.to_string());
        parent = span.parent_span_id;
    }
    assert_eq!(
        parent, client_span,
        "the chain ends at the caller: {chain:?}"
    );
    chain.reverse();
    assert_eq!(
        chain,
        vec![
            "/finestra.v1.DispatchService/SendMessage",
            "dispatch.deliver",
            "ingest.webhook",
            "billing.capture"
        ],
        "SendMessage → worker → status webhook → capture"
    );
    c.stop().await;
    let _ = provider.shutdown();
    Ok(())
}
