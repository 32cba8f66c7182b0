//! `make bench-ingest`: how many signed webhooks ingest accepts per second (each answered only
//! after the broker acked its event), how many window updates the window service applies per
//! second from a pre-filled topic, and the raw broker produce rate measured in the same run.
//! Prints figures; asserts nothing about time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{Envelope, InboundMessage, UserRef};
use finestra_testkit::{Scope, infra, now_secs};
use hdrhistogram::Histogram;
use rdkafka::producer::FutureRecord;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raw produce rate: `n` small records with the same producer settings, no envelope work.
async fn raw_produce(scope: &Scope, n: usize) -> anyhow::Result<f64> {
    let producer = kafka::producer(&infra().await?.brokers)?;
    let topic = format!("bench.raw.{}", scope.id());
    kafka::ensure_topics(&infra().await?.brokers, &[&topic], 4).await?;
    let payload = vec![7u8; 120];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = format!("k{}", i % 1000);
        let p = producer.clone();
        let (t, pl) = (topic.clone(), payload.clone());
        pending.push(tokio::spawn(async move {
            p.send(
                FutureRecord::to(&t).key(&key).payload(&pl),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
        }));
        if pending.len() == 10_000 {
            for h in pending.drain(..) {
                h.await??;
            }
        }
    }
    for h in pending {
        h.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

struct WebhookFigures {
    accepted: u64,
    failed: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// Signed single-message webhooks from `clients` concurrent keep-alive clients for `duration`.
async fn webhooks(
    scope: &Scope,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<WebhookFigures> {
    let (_, number, secret) = scope.tenant_with_number("bench", 1).await?;
    let ingest = finestra_testkit::start_ingest(scope).await?;
    let addr = ingest.running.http_addr.context("http listener")?;
    let url = Arc::new(format!("http://{addr}/webhooks/cloud-api"));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, number, secret) = (url.clone(), number.clone(), secret.clone());
        let (accepted, failed) = (accepted.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut hist = Histogram::<u64>::new(3)?;
            let mut i = 0u64;
            let sent = now_secs();
            while Instant::now() < deadline {
                let wamid = format!("wamid.bench.{c}.{i}");
                let from = format!("39347{:07}", (c as u64 * 1_000_003 + i) % 10_000_000);
                let body = serde_json::to_vec(&finestra_cloudapi::build::text_messages(
                    &number,
                    "",
                    &[finestra_cloudapi::build::InboundText {
                        wamid: &wamid,
                        from: &from,
                        profile_name: "Bench",
                        timestamp: sent,
                        body: "hello",
                        referral: None,
                    }],
                ))?;
                let signature = finestra_cloudapi::signature::sign(secret.as_bytes(), &body);
                let t0 = Instant::now();
                let r = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header(finestra_cloudapi::SIGNATURE_HEADER, signature)
                    .body(body)
                    .send()
                    .await;
                hist.record(t0.elapsed().as_micros() as u64)?;
                match r {
                    Ok(r) if r.status().is_success() => accepted.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    ingest.stop().await;
    let accepted = accepted.load(Ordering::Relaxed);
    Ok(WebhookFigures {
        accepted,
        failed: failed.load(Ordering::Relaxed),
        per_second: accepted as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// Pre-fills the inbound topic with `n` user messages over `users` users, then times a fresh
/// window service until it committed every record.
struct WindowFigures {
    /// From the service's start until every record was applied.
    overall_per_second: f64,
    /// From the first applied record to the last (excludes joining the consumer group).
    steady_per_second: f64,
    first_applied_after: Duration,
    prefill_per_second: f64,
    /// Mean `MEMORY USAGE` of a sample of the windows' keys, and the sample's size.
    bytes_per_window: f64,
    sampled: usize,
}

/// The mean `MEMORY USAGE` (key, fields, values and Redis's overhead) of the keys of the
/// first `sample` users' windows.
async fn redis_bytes_per_window(
    tenant: &str,
    number: &str,
    sample: usize,
) -> anyhow::Result<(f64, usize)> {
    let mut redis = infra().await?.redis.clone();
    let (mut total, mut found) = (0i64, 0usize);
    for i in 0..sample {
        let user = format!("39348{i:07}");
        let key = finestra_registry::windows::key("fin", tenant, number, &user);
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut redis)
            .await?;
        if let Some(bytes) = bytes {
            total += bytes;
            found += 1;
        }
    }
    Ok((total as f64 / found.max(1) as f64, found))
}

async fn window_updates(scope: &Scope, n: usize, users: usize) -> anyhow::Result<WindowFigures> {
    let (tenant, number, _) = scope.tenant_with_number("winbench", 2).await?;
    let topics = scope.topics();
    let producer = kafka::producer(&infra().await?.brokers)?;
    let sent = now_secs() - 600;
    let fill_started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(20_000) {
        let records: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|&i| {
                let user = format!("39348{:07}", i % users);
                Outgoing {
                    traceparent: None,
                    topic: &topics.inbound,
                    key: kafka::conversation_key(&tenant, &number, &user),
                    envelope: Envelope {
                        event_id: format!("in:wamid.wb.{i}"),
                        tenant_id: tenant.clone(),
                        occurred_at: Some(finestra_proto::time::from_micros(
                            (sent + i as i64 / 100) * 1_000_000,
                        )),
                        recorded_at: None,
                        payload: Some(Payload::InboundMessage(InboundMessage {
                            phone_number_id: number.clone(),
                            user: Some(UserRef {
                                wa_id: user.clone(),
                                ..Default::default()
                            }),
                            message_id: format!("wamid.wb.{i}"),
                            message_type: "text".into(),
                            ..Default::default()
                        })),
                    },
                }
            })
            .collect();
        kafka::publish_all(&producer, &records).await?;
    }
    let fill_rate = n as f64 / fill_started.elapsed().as_secs_f64();

    let started = Instant::now();
    let window =
        finestra_testkit::start_window(scope, "bench", env_usize("BENCH_WINDOW_BATCH", 2_000))
            .await?;
    let mut last_print = Instant::now();
    let mut first: Option<(Instant, i64)> = None;
    loop {
        // Committed offsets, not a count over the history table: polling a growing table would
        // take CPU from what is measured.
        let applied = finestra_testkit::committed(&scope.group("bench"), &topics.inbound).await?;
        if first.is_none() && applied > 0 {
            first = Some((Instant::now(), applied));
        }
        if applied as usize >= n {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            eprint!(
                "\r  window: {applied}/{n} applied ({:.0}/s)   ",
                applied as f64 / started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "window updates did not finish in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!();
    let done = Instant::now();
    window.stop().await;
    let (first_at, first_count) = first.context("nothing applied")?;
    let (bytes_per_window, sampled) = redis_bytes_per_window(&tenant, &number, 1_000).await?;
    Ok(WindowFigures {
        bytes_per_window,
        sampled,
        overall_per_second: n as f64 / (done - started).as_secs_f64(),
        steady_per_second: (n as i64 - first_count) as f64
            / (done - first_at).as_secs_f64().max(1e-3),
        first_applied_after: first_at - started,
        prefill_per_second: fill_rate,
    })
}

// The services under test run in this process: the same allocator as their binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = env_usize("BENCH_CLIENTS", 64);
    let seconds = env_usize("BENCH_SECONDS", 15);
    let updates = env_usize("BENCH_WINDOW_EVENTS", 200_000);
    let raw = env_usize("BENCH_RAW_RECORDS", 200_000);
    let engine = std::env::var("BENCH_BROKER_ENGINE").unwrap_or_else(|_| "unknown".into());
    let _telemetry = finestra_platform::telemetry::init("bench-ingest", None)?;
    let scope = Scope::new();
    infra().await?;
    scope.create_topics().await?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "bench-ingest: {cores} cores, broker {} ({engine})",
        infra().await?.brokers
    );

    eprintln!("  raw produce: {raw} records ...");
    let raw_rate = raw_produce(&scope, raw).await?;
    eprintln!("  webhooks: {clients} clients for {seconds} s ...");
    let w = webhooks(&scope, clients, Duration::from_secs(seconds as u64)).await?;
    eprintln!("  window updates: {updates} events ...");
    let win = window_updates(&scope, updates, 50_000).await?;

    println!(
        "raw broker produce          {raw_rate:>10.0} records/s   ({raw} records, idempotent producer, acks=all)"
    );
    println!(
        "webhooks accepted           {:>10.0} /s          ({} ok, {} failed, {clients} keep-alive clients, {seconds} s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)",
        w.per_second, w.accepted, w.failed, w.p50_ms, w.p99_ms, w.max_ms
    );
    println!(
        "  ratio to raw produce      {:>10.2}",
        w.per_second / raw_rate
    );
    println!(
        "topic pre-fill (envelopes)  {:>10.0} records/s",
        win.prefill_per_second
    );
    println!(
        "window updates applied      {:>10.0} /s          (steady: first to last applied; {updates} events over 50,000 users, pre-filled topic)",
        win.steady_per_second
    );
    println!(
        "  including group join      {:>10.0} /s          (first record applied {:.1} s after start)",
        win.overall_per_second,
        win.first_applied_after.as_secs_f64()
    );
    println!(
        "  ratio to raw produce      {:>10.2}",
        win.steady_per_second / raw_rate
    );
    println!(
        "redis bytes per open window {:>10.0}            (MEMORY USAGE, mean of {} windows)",
        win.bytes_per_window, win.sampled
    );
    let json = serde_json::json!({
        "cores": cores, "broker_engine": engine,
        "raw_produce_per_s": raw_rate,
        "webhooks": {"per_s": w.per_second, "accepted": w.accepted, "failed": w.failed, "clients": clients,
                      "seconds": seconds, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms, "max_ms": w.max_ms},
        "window_updates": {"steady_per_s": win.steady_per_second, "overall_per_s": win.overall_per_second,
                            "first_applied_after_s": win.first_applied_after.as_secs_f64(),
                            "events": updates, "prefill_per_s": win.prefill_per_second,
                            "redis_bytes_per_window": win.bytes_per_window, "redis_sampled": win.sampled},
    });
    std::fs::create_dir_all("var")?;
    std::fs::write("var/bench-ingest.json", serde_json::to_vec_pretty(&json)?)?;
    println!("figures written to var/bench-ingest.json");
    Ok(())
}
