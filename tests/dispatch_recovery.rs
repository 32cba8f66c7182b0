//! Dispatch losing nothing: a dispatch process killed mid-stream, one killed between its
//! event pipeline's writes and their offset commit, and a stored message whose event never
//! reached the broker: each message is sent once, delivered and charged once, each status
//! recorded once.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_e2e::chain::{Chain, UTILITY_IT, template};
use finestra_proto::v1;
use finestra_testkit::{eventually, infra};

#[tokio::test(flavor = "multi_thread")]
async fn dispatch_killed_mid_stream_loses_nothing_and_charges_nothing_twice() -> anyhow::Result<()>
{
    let c = std::sync::Arc::new(Chain::start_with(80, false).await?);
    let infra = infra().await?;
    sqlx::query("UPDATE accounts.tenants SET tier = NULL WHERE tenant_id = $1")
        .bind(&c.tenant)
        .execute(&infra.pool)
        .await?;
    c.template("order_ready", "UTILITY", 1).await?;
    let n = 300usize;
    c.top_up(n as i64 * UTILITY_IT).await?;
    let mut child = c.spawn_dispatch(&[])?;

    // The client keeps sending; a failed call is retried with the same key, as a client must.
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sender = {
        let c = c.clone();
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let req = c.request(
                    &format!("39333500{i:04}"),
                    &format!("crash-{i}"),
                    template("order_ready", &["A-1"]),
                );
                loop {
                    match c.send(req.clone()).await {
                        Ok(r) => {
                            ids.push(r.message_id);
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            ids
        })
    };
    eventually("a third of the messages are accepted", WAIT, || async {
        Ok((accepted.load(std::sync::atomic::Ordering::Relaxed) >= n / 3).then_some(()))
    })
    .await?;
    child.kill()?; // SIGKILL: no drain, no final commit
    child.wait()?;
    let killed_at = accepted.load(std::sync::atomic::Ordering::Relaxed);
    // The successor starts after the dead member's session expired (10 s): tansu 0.6 leaves
    // a group stuck when a member is replaced within it (README, "Dev broker"); Kafka does not.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut child = c.spawn_dispatch(&[])?;
    let ids = sender.await?;
    assert!(
        killed_at < n,
        "killed mid-stream ({killed_at} of {n} accepted)"
    );
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        n
    );

    let restarted = std::time::Instant::now();
    let mut delivered = 0i64;
    for id in &ids {
        // The successor joins the consumer groups only after the killed member's session
        // expires (the broker waits for it first), then replays what was not committed.
        let m = eventually(&format!("{id} settles"), 3 * WAIT, || async {
            let m = c.message(id).await?;
            Ok(["DELIVERED", "READ", "FAILED"]
                .contains(&m.status.as_str())
                .then_some(m))
        })
        .await?;
        delivered += i64::from(m.status != "FAILED");
    }
    let wallet = c.books_settled().await?;
    let charges = c.charges().await?;
    assert_eq!(
        charges.len() as i64,
        delivered,
        "one charge per delivered message"
    );
    assert_eq!(wallet.balance_micros, (n as i64 - delivered) * UTILITY_IT);
    let sent = c.sim_stats(&c.number).await?["accepted"]
        .as_u64()
        .unwrap_or_default();
    println!(
        "every message settled {:?} after the restart",
        restarted.elapsed()
    );
    println!(
        "killed after {killed_at} accepted; {delivered} of {n} delivered; the network received {sent} sends ({} repeated after the kill)",
        sent.saturating_sub(n as u64)
    );
    c.reconcile().await?;
    child.kill()?;
    child.wait()?;
    if let Ok(c) = std::sync::Arc::try_unwrap(c) {
        c.stop().await;
    }
    Ok(())
}

/// What acceptance leaves when its process is killed between the store and the produce, and
/// the client never retries: a reserved, stored message whose outbound event never reached the
/// broker. The sweep queues it again: it is sent once, delivered, charged once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_message_whose_event_was_lost_is_queued_again_and_charged_once()
-> anyhow::Result<()> {
    let c = Chain::start_tuned(80, true, |cfg| {
        cfg.requeue_after = Duration::from_secs(1);
        cfg.requeue_every = Duration::from_millis(200);
    })
    .await?;
    c.template("order_ready", "UTILITY", 1).await?;
    c.top_up(1_000_000).await?;
    let user = "393331110090";
    let request = c.request(user, "lost-event", template("order_ready", &["A-17"]));
    let message_id = finestra_dispatch::content::message_id(&c.tenant, "lost-event");
    let parsed = finestra_dispatch::content::parse(&request)?;
    let accepted_at = finestra_testkit::now_secs() * 1_000_000;

    // Reserved and stored, as the acceptance batch does, and then nothing.
    let reserved = c
        .books
        .clone()
        .reserve_batch(v1::ReserveBatchRequest {
            reservations: vec![v1::ReserveRequest {
                tenant_id: c.tenant.clone(),
                message_id: message_id.clone(),
                phone_number_id: c.number.clone(),
                recipient: user.into(),
                free_form: false,
                category: "UTILITY".into(),
                csw_open: false,
                fep_open: false,
                accepted_at: Some(finestra_proto::time::from_micros(accepted_at)),
            }],
        })
        .await?
        .into_inner();
    let quote = reserved
        .results
        .first()
        .and_then(|r| r.reserved.as_ref())
        .and_then(|r| r.quote.clone())
        .ok_or_else(|| anyhow::anyhow!("not reserved: {reserved:?}"))?;
    let price = quote.price_micros;
    assert!(price > 0, "a utility template outside the window is paid");
    let stored = finestra_dispatch::pg::insert(
        &infra().await?.pool,
        &[finestra_dispatch::pg::NewMessage {
            tenant_id: c.tenant.clone(),
            message_id: message_id.clone(),
            idempotency_key: "lost-event".into(),
            request_hash: finestra_dispatch::content::request_hash(&request),
            phone_number_id: c.number.clone(),
            recipient: user.into(),
            kind: parsed.kind.clone(),
            template_name: "order_ready".into(),
            category: "UTILITY".into(),
            body: finestra_cloudapi::send::body(user, &parsed.kind, parsed.object, &message_id)
                .to_string(),
            price_micros: price,
            currency: quote.currency.clone(),
            free: quote.free,
            free_reason: quote.free_reason.clone(),
            business_initiated: true,
            starts_fep: false,
            accepted_at,
        }],
    )
    .await?;
    assert_eq!(stored, vec![message_id.clone()]);

    c.settles(&message_id, &["DELIVERED"]).await?;
    c.books_settled().await?;
    // A few more sweeps (every 200 ms): a delivered message is not queued again. What is
    // asserted is that nothing happens, so there is no effect to wait on: time must pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.sim_stats(&c.number).await?["accepted"], 1, "sent once");
    let charges: Vec<i64> = c
        .charges()
        .await?
        .into_iter()
        .filter(|(reference, _)| reference.contains(&message_id))
        .map(|(_, amount)| amount)
        .collect();
    assert_eq!(charges.len(), 1, "charged once: {charges:?}");
    assert_eq!(charges[0].abs(), price);
    c.reconcile().await?;
    c.stop().await;
    Ok(())
}

/// Dispatch's event pipeline (message states, then the tenant's event log, then the offsets)
/// killed right after a batch's writes are durable and before its offsets are committed: the
/// successor reads the batch again. Every message ends delivered and every status is in the
/// tenant's event log, once.
#[tokio::test(flavor = "multi_thread")]
async fn dispatch_killed_between_the_event_writes_and_the_offset_commit_loses_and_doubles_nothing()
-> anyhow::Result<()> {
    use finestra_platform::kafka::{self, Outgoing};
    let c = Chain::start_with(80, false).await?;
    let infra = infra().await?;
    let n = 60usize;
    let accepted_at = finestra_testkit::now_secs() * 1_000_000;
    // Messages as acceptance stores them; their statuses as ingest publishes them (sent and
    // delivered of one webhook in one record).
    let rows: Vec<finestra_dispatch::pg::NewMessage> = (0..n)
        .map(|i| finestra_dispatch::pg::NewMessage {
            tenant_id: c.tenant.clone(),
            message_id: format!("m-evcrash-{i}"),
            idempotency_key: format!("evcrash-{i}"),
            request_hash: vec![0],
            phone_number_id: c.number.clone(),
            recipient: format!("39333700{i:04}"),
            kind: "template".into(),
            template_name: "order_ready".into(),
            category: "UTILITY".into(),
            body: "{}".into(),
            price_micros: 0,
            currency: "EUR".into(),
            free: false,
            free_reason: String::new(),
            business_initiated: true,
            starts_fep: false,
            accepted_at,
        })
        .collect();
    finestra_dispatch::pg::insert(&infra.pool, &rows).await?;
    let topic = c.scope.topics().status;
    let mut records = Vec::with_capacity(n);
    for m in &rows {
        records.push(Outgoing {
            traceparent: None,
            topic: &topic,
            key: kafka::conversation_key(&c.tenant, &c.number, &m.recipient),
            envelope: finestra_proto::packing::pack(vec![
                c.status(
                    &m.message_id,
                    &format!("wamid.{}", m.message_id),
                    &m.recipient,
                    "sent",
                ),
                c.status(
                    &m.message_id,
                    &format!("wamid.{}", m.message_id),
                    &m.recipient,
                    "delivered",
                ),
            ])
            .ok_or_else(|| anyhow::anyhow!("statuses pack"))?,
        });
    }
    kafka::publish_all(&kafka::producer(&infra.brokers)?, &records).await?;

    let delivered = || {
        let (pool, tenant) = (infra.pool.clone(), c.tenant.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM dispatch.messages
                  WHERE tenant_id = $1 AND message_id LIKE 'm-evcrash-%' AND status = 'DELIVERED'",
            )
            .bind(&tenant)
            .fetch_one(&pool)
            .await
        }
    };
    let recorded = || {
        let (pool, tenant) = (infra.pool.clone(), c.tenant.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM dispatch.tenant_events
                  WHERE tenant_id = $1 AND event_id LIKE 'st:wamid.m-evcrash-%'",
            )
            .bind(&tenant)
            .fetch_one(&pool)
            .await
        }
    };
    // The failpoint aborts the process right after its first event batch (ten records at
    // most) is written, before the offset commit.
    let mut first = c.spawn_dispatch(&[
        ("FINESTRA_DISPATCH_CRASH_AFTER_EVENT_BATCHES", "1"),
        ("FINESTRA_DISPATCH_MAX_BATCH", "10"),
    ])?;
    let exit = eventually("the process ended", Duration::from_secs(90), || {
        let status = first.try_wait();
        async move { Ok(status?) }
    })
    .await?;
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(exit.signal(), Some(6), "aborted by the failpoint: {exit:?}");
    let written = delivered().await?;
    assert!(
        written > 0 && written < n as i64,
        "the first batch was written, not everything: {written} of {n}"
    );
    assert_eq!(
        recorded().await?,
        2 * written,
        "a batch's events are written with its states"
    );
    let group = &c.dispatch_config.events_group;
    assert_eq!(
        finestra_testkit::committed(group, &topic).await?,
        0,
        "nothing was committed"
    );

    // The successor joins after the dead member's session expired (see above), reads the
    // batch again and the rest.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut second = c.spawn_dispatch(&[])?;
    eventually("every message delivered", 3 * WAIT, || async {
        Ok((delivered().await? == n as i64).then_some(()))
    })
    .await?;
    eventually("every status recorded", WAIT, || async {
        Ok((recorded().await? == 2 * n as i64).then_some(()))
    })
    .await?;
    eventually("every record committed", WAIT, || async {
        Ok((finestra_testkit::committed(group, &topic).await? == n as i64).then_some(()))
    })
    .await?;
    assert_eq!(recorded().await?, 2 * n as i64, "each status recorded once");
    second.kill()?;
    second.wait()?;
    c.stop().await;
    Ok(())
}
