//! Crash and resume of the window consumer against the real broker: a consumer that dies
//! before committing makes its successor re-process the batch without double history rows, and
//! a consumer that committed in the middle of a producer batch resumes with no record skipped.

use std::time::Duration;

use finestra_e2e::WAIT;
use finestra_platform::kafka::{self, BatchConsumer, ConsumerSettings, Outgoing};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, InboundMessage, UserRef};
use finestra_testkit::{Scope, committed, count_records, eventually, infra, now_secs};

fn inbound(tenant: &str, number: &str, i: usize, sent: i64) -> (String, Envelope) {
    let user = format!("3934{:08}", i % 997);
    let wamid = format!("wamid.resume.{i}");
    let envelope = Envelope {
        event_id: format!("in:{wamid}"),
        tenant_id: tenant.to_owned(),
        occurred_at: Some(finestra_proto::time::from_micros(
            (sent + i as i64) * 1_000_000,
        )),
        recorded_at: None,
        payload: Some(Payload::InboundMessage(InboundMessage {
            phone_number_id: number.to_owned(),
            user: Some(UserRef {
                wa_id: user.clone(),
                ..Default::default()
            }),
            message_id: wamid,
            message_type: "text".into(),
            ..Default::default()
        })),
    };
    (kafka::conversation_key(tenant, number, &user), envelope)
}

/// Produces `n` inbound events for the tenant in one burst (so the producer packs them into
/// large batches).
async fn produce(scope: &Scope, tenant: &str, number: &str, n: usize) -> anyhow::Result<()> {
    let producer = kafka::producer(&infra().await?.brokers)?;
    let topic = scope.topics().inbound;
    let sent = now_secs() - 3600;
    let records: Vec<Outgoing<'_>> = (0..n)
        .map(|i| {
            let (key, envelope) = inbound(tenant, number, i, sent);
            Outgoing {
                traceparent: None,
                topic: &topic,
                key,
                envelope,
            }
        })
        .collect();
    kafka::publish_all(&producer, &records).await?;
    assert_eq!(count_records(&topic).await?, n as i64);
    Ok(())
}

async fn history_rows(tenant: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM windows.window_events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&infra().await?.pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_before_committing_reprocesses_without_double_history_rows()
-> anyhow::Result<()> {
    let scope = Scope::new();
    let infra = infra().await?;
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("crash", 1).await?;
    let n = 300;
    produce(&scope, &tenant, &number, n).await?;
    let topics = scope.topics();
    let group = scope.group("window");

    // A consumer applies everything durably, then dies before its commit.
    {
        let consumer = BatchConsumer::new(ConsumerSettings {
            brokers: infra.brokers.clone(),
            group_id: group.clone(),
            topics: vec![topics.inbound.clone()],
            max_batch: 1_000,
            linger: Duration::from_millis(50),
        })?;
        let applier = finestra_window::apply::Applier {
            pool: infra.pool.clone(),
            hot: finestra_window::hot::HotStore::new(infra.redis.clone(), "fin"),
            producer: kafka::producer(&infra.brokers)?,
            window_topic: topics.window.clone(),
            clock: finestra_testkit::system_clock(),
        };
        let shutdown = finestra_platform::Shutdown::new();
        let now = finestra_domain::Clock::now(&finestra_platform::SystemClock);
        let mut seen = 0;
        while seen < n {
            let batch = consumer.next_batch(&shutdown).await?;
            let events: Vec<_> = batch
                .iter()
                .filter_map(|m| {
                    finestra_window::state::decode(&kafka::decode(m).ok()?, now)
                        .ok()
                        .flatten()
                })
                .collect();
            applier.apply(&events).await?;
            seen += batch.len();
        }
        // Dropped here: no commit.
    }
    assert_eq!(history_rows(&tenant).await?, n as i64);
    assert_eq!(
        committed(&group, &topics.inbound).await?,
        0,
        "nothing was committed"
    );

    // Its successor in the same group gets everything again.
    let window = finestra_testkit::start_window(&scope, "window", 1_000).await?;
    eventually("the successor to commit every record", WAIT, || async {
        Ok((committed(&group, &topics.inbound).await? == n as i64).then_some(()))
    })
    .await?;
    assert_eq!(
        history_rows(&tenant).await?,
        n as i64,
        "re-processing added no history row"
    );
    let windows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM windows.pair_state WHERE tenant_id = $1")
            .bind(&tenant)
            .fetch_one(&infra.pool)
            .await?;
    assert_eq!(
        windows, 300,
        "one window per user (users 0..300 are distinct)"
    );
    window.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_resuming_from_a_commit_inside_a_producer_batch_skips_no_record()
-> anyhow::Result<()> {
    let scope = Scope::new();
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("resume", 1).await?;
    let n: i64 = 3_000;
    produce(&scope, &tenant, &number, n as usize).await?;
    let topics = scope.topics();
    let group = scope.group("window");

    // Batches of at most 7 records: every commit lands inside a producer batch.
    let first = finestra_testkit::start_window(&scope, "window", 7).await?;
    eventually("a third of the records applied", WAIT, || async {
        Ok((history_rows(&tenant).await? >= n / 3).then_some(()))
    })
    .await?;
    first.stop().await;
    let resumed_at = committed(&group, &topics.inbound).await?;
    assert!(
        resumed_at > 0 && resumed_at < n,
        "stopped mid-stream (committed {resumed_at} of {n})"
    );

    let second = finestra_testkit::start_window(&scope, "window", 7).await?;
    eventually(
        "every record committed",
        Duration::from_secs(120),
        || async { Ok((committed(&group, &topics.inbound).await? == n).then_some(())) },
    )
    .await?;
    assert_eq!(
        history_rows(&tenant).await?,
        n,
        "every produced record was applied exactly once"
    );
    second.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dead_letter_topic_and_never_block_the_partition()
-> anyhow::Result<()> {
    let scope = Scope::new();
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("poison", 1).await?;
    let topics = scope.topics();
    let producer = kafka::producer(&infra().await?.brokers)?;
    let sent = now_secs() - 60;
    // All for one user, so all on one partition, in this order.
    let (key, good_before) = inbound(&tenant, &number, 0, sent);
    let (_, mut undecodable) = inbound(&tenant, &number, 1, sent);
    undecodable.occurred_at = Some(finestra_proto::time::from_micros(sent * 1_000_000_000)); // ms as s, ×1000
    let (_, mut refused_by_store) = inbound(&tenant, &number, 2, sent);
    if let Some(Payload::InboundMessage(m)) = &mut refused_by_store.payload {
        m.message_id = "wamid.with\u{0}nul".into(); // Postgres text cannot hold NUL
    }
    let (_, good_after) = inbound(&tenant, &number, 3, sent);
    let records: Vec<Outgoing<'_>> = [good_before, undecodable, refused_by_store, good_after]
        .into_iter()
        .map(|envelope| Outgoing {
            traceparent: None,
            topic: &topics.inbound,
            key: key.clone(),
            envelope,
        })
        .collect();
    // One at a time, so the order on the partition is the order above.
    for r in records {
        kafka::publish_all(&producer, std::slice::from_ref(&r)).await?;
    }
    let window = finestra_testkit::start_window(&scope, "window", 100).await?;
    let group = scope.group("window");
    eventually("all four records committed", WAIT, || async {
        Ok((committed(&group, &topics.inbound).await? == 4).then_some(()))
    })
    .await?;
    assert_eq!(
        history_rows(&tenant).await?,
        2,
        "both good events applied around the poison"
    );
    let dead = finestra_testkit::read_all(&topics.dlq).await?;
    let mut reasons: Vec<String> = dead
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::DeadLetter(d)) => Some(d.error.clone()),
            _ => None,
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("occurred_at")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("postgres")),
        "{reasons:?}"
    );
    window.stop().await;
    Ok(())
}

fn spawn_window(scope: &Scope, group: &str) -> anyhow::Result<std::process::Child> {
    Ok(
        std::process::Command::new(finestra_testkit::workspace_binary("finestra-window")?)
            .envs(finestra_testkit::store_env())
            .env("FINESTRA_TOPIC_SUFFIX", format!(".{}", scope.id()))
            .env("FINESTRA_WINDOW_CONSUMER_GROUP", group)
            .env("FINESTRA_WINDOW_MAX_BATCH", "7")
            .env("FINESTRA_GRPC_ADDR", "127.0.0.1:0")
            .env("FINESTRA_METRICS_ADDR", "127.0.0.1:0")
            .env("FINESTRA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_process_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let scope = Scope::new();
    scope.create_topics().await?;
    let (tenant, number, _) = scope.tenant_with_number("kill", 1).await?;
    let n: i64 = 3_000;
    produce(&scope, &tenant, &number, n as usize).await?;
    let topics = scope.topics();
    let group = scope.group("window-process");

    let mut first = spawn_window(&scope, &group)?;
    let waited = eventually("a third of the records applied", WAIT, || async {
        Ok((history_rows(&tenant).await? >= n / 3).then_some(()))
    })
    .await;
    // SIGKILL: no drain, no final commit; whatever batch was between apply and commit is
    // applied but uncommitted.
    first.kill()?;
    first.wait()?;
    waited?;
    let committed_at_kill = committed(&group, &topics.inbound).await?;
    let applied_at_kill = history_rows(&tenant).await?;
    assert!(
        committed_at_kill < n,
        "killed mid-stream ({committed_at_kill} of {n} committed)"
    );
    assert!(
        applied_at_kill >= committed_at_kill,
        "effects are durable before the commit"
    );

    // The successor starts after the dead member's session expired (10 s), as a restarted pod
    // would. On Kafka it could start at once. tansu 0.6 cannot: when the dead leader's session
    // expires during the newcomer's SyncGroup, the group settles with the newcomer owning no
    // partition and never rebalances again (see README, "Dev broker").
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut second = spawn_window(&scope, &group)?;
    let finished = eventually(
        "every record committed",
        Duration::from_secs(120),
        || async { Ok((committed(&group, &topics.inbound).await? == n).then_some(())) },
    )
    .await;
    second.kill()?;
    second.wait()?;
    finished?;
    assert_eq!(
        history_rows(&tenant).await?,
        n,
        "each record applied once: none lost, none doubled"
    );
    Ok(())
}
