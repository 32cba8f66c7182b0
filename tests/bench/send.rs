//! `make bench-send`: the whole chain on this machine — SendMessage → broker → dispatch worker
//! → simulator (Cloud API) → signed status webhooks → ingest → broker → dispatch statuses and
//! billing captures — with every service in this process against the local Postgres, Redis and
//! tansu. Phases: an open loop at a rate the chain sustains; a latency sweep (open loops of
//! rising rates, `BENCH_SWEEP`, until the SendMessage p99 exceeds 25 ms); an open loop far
//! beyond capacity (what is shed, and how); a closed loop at full speed, settled on its own so
//! its end-to-end rate is measured first to last delivery with nothing else running; then
//! SendMessages (batches). It counts the broker records produced and consumed per settled
//! message from the broker's offsets, measures the raw broker produce rate in the same run,
//! prints the figures and writes `var/bench-send.json`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use finestra_e2e::env_num;
use finestra_platform::auth::{AuthedChannel, Owner, Scope as KeyScope};
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_proto::v1::{self, Envelope};
use finestra_testkit::{Scope, infra};
use hdrhistogram::Histogram;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = DispatchServiceClient<AuthedChannel>;

struct Tenant {
    id: String,
    number: String,
    clients: Vec<Client>,
}

fn request(t: &Tenant, n: u64, tag: &str, t_index: usize) -> v1::SendMessageRequest {
    v1::SendMessageRequest {
        tenant_id: t.id.clone(),
        phone_number_id: t.number.clone(),
        // One user per message: the pair limit never paces the benchmark.
        to: format!("39{t_index:02}{n:09}"),
        idempotency_key: format!("{tag}-{n}"),
        send_at: None,
        send_at_local: String::new(),
        content: Some(Content::Template(v1::TemplateContent {
            name: "bench_util".into(),
            language: "it".into(),
            parameters: vec!["A-1".into()],
        })),
    }
}

struct LoadFigures {
    ok: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn figures(h: &Histogram<u64>, ok: u64, errors: u64, seconds: f64) -> LoadFigures {
    LoadFigures {
        ok,
        errors,
        seconds,
        p50_ms: h.value_at_quantile(0.50) as f64 / 1_000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1_000.0,
        max_ms: h.max() as f64 / 1_000.0,
    }
}

/// Answers per second of the whole run, for the chart: each second's accepted count and
/// SendMessage p99, labelled with the phase that produced them.
/// One second of the run: the phase, SendMessage latencies of the calls answered OK, errors.
type Second = (&'static str, Histogram<u64>, u64);

struct Timeline {
    run_started: Instant,
    seconds: Mutex<std::collections::BTreeMap<u64, Second>>,
    /// Accepted so far in the current phase (the progress line reads it).
    phase_ok: std::sync::atomic::AtomicU64,
}

impl Timeline {
    fn new() -> Self {
        Self {
            run_started: Instant::now(),
            seconds: Mutex::default(),
            phase_ok: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn record(&self, phase: &'static str, micros: Option<u64>) {
        let second = self.run_started.elapsed().as_secs();
        if let Ok(mut s) = self.seconds.lock()
            && let Ok(fresh) = Histogram::<u64>::new(3)
        {
            let entry = s.entry(second).or_insert((phase, fresh, 0));
            match micros {
                Some(us) => {
                    let _ = entry.1.record(us);
                    self.phase_ok
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                None => entry.2 += 1,
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let s = self.seconds.lock().map(|s| {
            s.iter()
                .map(|(second, (phase, h, errors))| {
                    serde_json::json!({
                        "t": second, "phase": phase, "accepted": h.len(), "errors": errors,
                        "p99_ms": h.value_at_quantile(0.99) as f64 / 1_000.0,
                    })
                })
                .collect::<Vec<_>>()
        });
        serde_json::Value::Array(s.unwrap_or_default())
    }

    /// Prints `[bench-send] <phase> 3/10 s, 2,950 accepted` once a second until `done`.
    fn progress(
        self: &Arc<Self>,
        phase: &'static str,
        duration: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.phase_ok.store(0, std::sync::atomic::Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < duration {
                tokio::time::sleep(Duration::from_secs(1)).await;
                eprint!(
                    "\r[bench-send]   {phase}: {:>3.0}/{} s, {} accepted   ",
                    started.elapsed().as_secs_f64().min(duration.as_secs_f64()),
                    duration.as_secs(),
                    me.phase_ok.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            eprintln!();
        })
    }
}

/// Open loop: `rate` sends a second for `duration`, each on its own task, whatever the answers.
async fn open_loop(
    tenants: &Arc<Vec<Tenant>>,
    rate: u64,
    duration: Duration,
    tag: &'static str,
    timeline: &Arc<Timeline>,
) -> anyhow::Result<LoadFigures> {
    let progress = timeline.progress(tag, duration);
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let codes: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut issued = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while issued < due {
            let n = issued;
            issued += 1;
            let t_index = (n as usize) % tenants.len();
            let tenants = tenants.clone();
            let (hist, errors, codes) = (hist.clone(), errors.clone(), codes.clone());
            let timeline = timeline.clone();
            tasks.spawn(async move {
                let t = &tenants[t_index];
                let mut client = t.clients[(n as usize / tenants.len()) % t.clients.len()].clone();
                let at = Instant::now();
                let answer = client.send_message(request(t, n, tag, t_index)).await;
                let us = at.elapsed().as_micros() as u64;
                timeline.record(tag, answer.is_ok().then_some(us));
                match answer {
                    Ok(_) => {
                        if let Ok(mut h) = hist.lock() {
                            let _ = h.record(us);
                        }
                    }
                    Err(status) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Ok(mut c) = codes.lock() {
                            let reason =
                                finestra_platform::status::reason_of(&status).unwrap_or_default();
                            *c.entry(format!("{:?} {reason}", status.code()))
                                .or_default() += 1;
                        }
                    }
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let _ = progress.await;
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    if errors > 0 {
        let by_code = codes.lock().map(|c| c.clone()).unwrap_or_default();
        eprintln!("[bench-send]   errors by code and reason: {by_code:?}");
    }
    Ok(figures(&h, h.len(), errors, seconds))
}

/// Closed loop: `in_flight` senders back to back for `duration`.
async fn closed_loop(
    tenants: &Arc<Vec<Tenant>>,
    in_flight: usize,
    duration: Duration,
    tag: &'static str,
    timeline: &Arc<Timeline>,
) -> anyhow::Result<LoadFigures> {
    let progress = timeline.progress(tag, duration);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let tenants = tenants.clone();
        let next = next.clone();
        let timeline = timeline.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut errors = 0u64;
            while started.elapsed() < duration {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t_index = (n as usize) % tenants.len();
                let t = &tenants[t_index];
                let mut client = t.clients[w % t.clients.len()].clone();
                let at = Instant::now();
                match client.send_message(request(t, n, tag, t_index)).await {
                    Ok(_) => {
                        let us = at.elapsed().as_micros() as u64;
                        let _ = hist.record(us);
                        timeline.record(tag, Some(us));
                    }
                    Err(_) => {
                        errors += 1;
                        timeline.record(tag, None);
                    }
                }
            }
            Ok::<_, anyhow::Error>((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(&h)?;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = progress.await;
    Ok(figures(&hist, hist.len(), errors, seconds))
}

/// Bulk senders: `callers` clients each send `SendMessages` batches of `size` in a closed
/// loop. Returns the messages accepted, those refused, the seconds, and the batch calls'
/// latency (p50, p99 ms).
async fn batch_loop(
    tenants: &Arc<Vec<Tenant>>,
    callers: usize,
    size: u64,
    duration: Duration,
    tag: &'static str,
) -> anyhow::Result<(u64, u64, f64, f64, f64)> {
    use finestra_proto::v1::send_message_result::Outcome;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..callers {
        let tenants = tenants.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let (mut accepted, mut refused) = (0u64, 0u64);
            while started.elapsed() < duration {
                let first = next.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                let t_index = w % tenants.len();
                let t = &tenants[t_index];
                let messages = (first..first + size)
                    .map(|n| request(t, n, tag, t_index))
                    .collect();
                let mut client = t.clients[w % t.clients.len()].clone();
                let at = Instant::now();
                let batch = v1::SendMessagesRequest {
                    tenant_id: t.id.clone(),
                    messages,
                };
                match client.send_messages(batch).await {
                    Ok(answer) => {
                        let _ = hist.record(at.elapsed().as_micros() as u64);
                        for r in answer.into_inner().results {
                            match r.outcome {
                                Some(Outcome::Accepted(_)) => accepted += 1,
                                _ => refused += 1,
                            }
                        }
                    }
                    Err(_) => refused += size,
                }
            }
            Ok::<_, anyhow::Error>((hist, accepted, refused))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut accepted, mut refused) = (0, 0);
    for t in tasks {
        let (h, a, r) = t.await??;
        hist.add(&h)?;
        accepted += a;
        refused += r;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    Ok((
        accepted,
        refused,
        started.elapsed().as_secs_f64(),
        ms(0.5),
        ms(0.99),
    ))
}

async fn count(pool: &sqlx::PgPool, tenants: &[String], sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .bind(tenants)
        .fetch_one(pool)
        .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("FINESTRA_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let seconds = env_num("BENCH_SECONDS", 10);
    let rate = env_num("BENCH_RATE", 5_000);
    let in_flight = env_num("BENCH_IN_FLIGHT", 512) as usize;
    let tenant_count = env_num("BENCH_TENANTS", 10) as usize;
    let connections = env_num("BENCH_CONNECTIONS", 8) as usize;
    let infra = infra().await?;
    let scope = Scope::new();
    finestra_platform::kafka::ensure_topics(&infra.brokers, &scope.topics().all(), 4).await?;

    let mut ids = Vec::new();
    for t in 0..tenant_count {
        let (tenant, number) = finestra_e2e::load::sending_tenant(
            &scope,
            &format!("send{t}"),
            t as u32,
            "bench_util",
            1_000_000_000_000_000,
        )
        .await?;
        ids.push((tenant, number));
    }

    let chain = finestra_e2e::load::InProcessChain::start(&scope, |_| {}).await?;
    let url = chain.dispatch.running.grpc_url();

    let mut tenants = Vec::new();
    for (t, (id, number)) in ids.iter().enumerate() {
        let key = scope
            .tenant_key(&format!("send{t}"), &[KeyScope::Send])
            .await?;
        let mut clients = Vec::new();
        for _ in 0..connections.div_ceil(tenant_count).max(1) {
            clients.push(Client::new(
                finestra_testkit::authed_channel(url.clone(), &key).await?,
            ));
        }
        tenants.push(Tenant {
            id: id.clone(),
            number: number.clone(),
            clients,
        });
    }
    let tenants = Arc::new(tenants);
    let tenant_ids: Vec<String> = ids.iter().map(|(t, _)| t.clone()).collect();
    let _ = Owner::Operator;

    let timeline = Arc::new(Timeline::new());
    eprintln!("[bench-send] warming up (1 s at 500/s)");
    open_loop(&tenants, 500, Duration::from_secs(1), "warm", &timeline).await?;
    let sustained_rate = env_num("BENCH_SUSTAINED_RATE", 500);
    eprintln!(
        "[bench-send] open loop at a rate the chain sustains: {sustained_rate}/s for {seconds} s"
    );
    let sustained = open_loop(
        &tenants,
        sustained_rate,
        Duration::from_secs(seconds),
        "sustained",
        &timeline,
    )
    .await?;
    eprintln!(
        "[bench-send]   accepted {} ({:.0}/s), errors {}, SendMessage p50 {:.2} ms, p99 {:.2} ms",
        sustained.ok,
        sustained.ok as f64 / sustained.seconds,
        sustained.errors,
        sustained.p50_ms,
        sustained.p99_ms
    );
    // Its messages settle before the next phase, so its latencies are its own.
    finestra_e2e::load::settle(&infra.pool, &tenant_ids, "bench-send").await?;

    // The latency sweep: open loops of rising rates, each settled before the next, until the
    // SendMessage p99 exceeds the target (or a call fails).
    let sweep_rates: Vec<u64> = std::env::var("BENCH_SWEEP")
        .unwrap_or_else(|_| "250,500,750,1000,1250,1500,2000,3000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let sweep_seconds = env_num("BENCH_SWEEP_SECONDS", 3);
    let p99_target_ms = 25.0;
    let mut sweep = Vec::new();
    let mut first_over: Option<u64> = None;
    for r in sweep_rates {
        let tag: &'static str = Box::leak(format!("sweep{r}").into_boxed_str());
        let f = open_loop(
            &tenants,
            r,
            Duration::from_secs(sweep_seconds),
            tag,
            &timeline,
        )
        .await?;
        eprintln!(
            "[bench-send]   sweep {r}/s: accepted {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            f.ok as f64 / f.seconds,
            f.p50_ms,
            f.p99_ms,
            f.errors
        );
        finestra_e2e::load::settle(&infra.pool, &tenant_ids, "bench-send").await?;
        let over = f.p99_ms > p99_target_ms || f.errors > 0;
        sweep.push((r, f));
        if over {
            first_over = Some(r);
            break;
        }
    }
    eprintln!("[bench-send] open loop: {rate}/s for {seconds} s over {tenant_count} tenants");
    let fixed = open_loop(
        &tenants,
        rate,
        Duration::from_secs(seconds),
        "fixed",
        &timeline,
    )
    .await?;
    eprintln!(
        "[bench-send]   accepted {} ({:.0}/s), errors {}, SendMessage p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        fixed.ok,
        fixed.ok as f64 / fixed.seconds,
        fixed.errors,
        fixed.p50_ms,
        fixed.p99_ms,
        fixed.max_ms
    );
    eprintln!("[bench-send] closed loop: {in_flight} in flight for {seconds} s");
    let full = closed_loop(
        &tenants,
        in_flight,
        Duration::from_secs(seconds),
        "full",
        &timeline,
    )
    .await?;
    eprintln!(
        "[bench-send]   accepted {} ({:.0}/s), errors {}, SendMessage p50 {:.2} ms, p99 {:.2} ms",
        full.ok,
        full.ok as f64 / full.seconds,
        full.errors,
        full.p50_ms,
        full.p99_ms
    );

    // The closed loop's messages settle before the batch phase: its end-to-end rate is its
    // own, first to last delivery with no other phase competing.
    finestra_e2e::load::settle(&infra.pool, &tenant_ids, "bench-send").await?;
    let (full_first_delivery, full_last_delivery, full_delivered): (i64, i64, i64) =
        sqlx::query_as(
            "SELECT min(updated_at), max(updated_at), count(*) FROM dispatch.messages
          WHERE tenant_id = ANY($1) AND idempotency_key LIKE 'full-%'
            AND status IN ('DELIVERED', 'READ')",
        )
        .bind(&tenant_ids)
        .fetch_one(&infra.pool)
        .await?;
    let steady_span_s = (full_last_delivery - full_first_delivery) as f64 / 1e6;
    let steady_per_s = full_delivered as f64 / steady_span_s.max(1e-3);

    let batch_size = env_num("BENCH_BATCH_SIZE", 500);
    let batch_callers = env_num("BENCH_BATCH_CALLERS", 4) as usize;
    eprintln!(
        "[bench-send] SendMessages: {batch_callers} callers, batches of {batch_size}, {seconds} s"
    );
    let (batch_ok, batch_refused, batch_seconds, batch_p50, batch_p99) = batch_loop(
        &tenants,
        batch_callers,
        batch_size,
        Duration::from_secs(seconds),
        "batch",
    )
    .await?;
    let batch_per_s = batch_ok as f64 / batch_seconds;
    eprintln!(
        "[bench-send]   accepted {batch_ok} ({batch_per_s:.0}/s), refused {batch_refused}, a batch call p50 {batch_p50:.1} ms, p99 {batch_p99:.1} ms"
    );

    let accepted = count(
        &infra.pool,
        &tenant_ids,
        "SELECT count(*) FROM dispatch.messages WHERE tenant_id = ANY($1)",
    )
    .await?;
    let mut settled = Vec::new();
    let waited = Instant::now();
    loop {
        let delivered = count(
            &infra.pool,
            &tenant_ids,
            "SELECT count(*) FROM dispatch.messages WHERE tenant_id = ANY($1) AND status IN ('DELIVERED', 'READ', 'FAILED')",
        )
        .await?;
        settled.push((timeline.run_started.elapsed().as_secs_f64(), delivered));
        eprint!("\r[bench-send] settled {delivered:>8} of {accepted}");
        if delivered >= accepted {
            break;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(600),
            "not every message settled within 10 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!();
    let (first_accept, last_delivery, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT min(accepted_at), max(updated_at),
                count(*) FILTER (WHERE status = 'FAILED')
           FROM dispatch.messages WHERE tenant_id = ANY($1) AND idempotency_key NOT LIKE 'warm-%'",
    )
    .bind(&tenant_ids)
    .fetch_one(&infra.pool)
    .await?;
    let measured = count(
        &infra.pool,
        &tenant_ids,
        "SELECT count(*) FROM dispatch.messages WHERE tenant_id = ANY($1) AND idempotency_key NOT LIKE 'warm-%'",
    )
    .await?;
    let end_to_end_per_s = measured as f64 / ((last_delivery - first_accept) as f64 / 1e6);
    let (p50_e2e, p99_e2e): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY updated_at - accepted_at) / 1000.0,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY updated_at - accepted_at) / 1000.0
           FROM dispatch.messages WHERE tenant_id = ANY($1) AND idempotency_key LIKE 'fixed-%'
            AND delivered_at IS NOT NULL",
    )
    .bind(&tenant_ids)
    .fetch_one(&infra.pool)
    .await?;

    let (sus_p50, sus_p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY updated_at - accepted_at) / 1000.0,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY updated_at - accepted_at) / 1000.0
           FROM dispatch.messages WHERE tenant_id = ANY($1) AND idempotency_key LIKE 'sustained-%'
            AND delivered_at IS NOT NULL",
    )
    .bind(&tenant_ids)
    .fetch_one(&infra.pool)
    .await?;
    // Every delivered message is charged once.
    let charges_done = Instant::now();
    let delivered_total = count(&infra.pool, &tenant_ids, "SELECT count(*) FROM dispatch.messages WHERE tenant_id = ANY($1) AND status IN ('DELIVERED', 'READ')").await?;
    loop {
        let charged = count(
            &infra.pool,
            &tenant_ids,
            "SELECT count(*) FROM billing.ledger WHERE tenant_id = ANY($1) AND kind = 'charge'",
        )
        .await?;
        if charged >= delivered_total {
            break;
        }
        anyhow::ensure!(
            charges_done.elapsed() < Duration::from_secs(300),
            "captures lag: {charged} of {delivered_total}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    chain.stop().await;
    let differences = finestra_e2e::load::reconcile_differences(&tenant_ids).await?;

    // Broker records per settled message, from the broker's own offsets: every record produced
    // to this run's topics, and every record each consumer group of the chain committed past
    // (the chain has stopped, so every group committed all it processed). A record carrying
    // several events counts once.
    let topics = scope.topics();
    let mut records_produced = 0i64;
    for topic in topics.all() {
        records_produced += finestra_testkit::produced(topic).await?;
    }
    let mut records_consumed = 0i64;
    for group in ["window", "billing", "dispatch-worker", "dispatch-events"] {
        for topic in topics.all() {
            records_consumed += finestra_testkit::committed(&scope.group(group), topic).await?;
        }
    }
    let produced_per_message = records_produced as f64 / accepted.max(1) as f64;
    let consumed_per_message = records_consumed as f64 / accepted.max(1) as f64;

    // The raw broker rate, same run, same machine: 100k records of the outbound event's size.
    let producer = kafka::producer(&infra.brokers)?;
    let topic = format!("finestra.bench-raw.{}", scope.id());
    finestra_platform::kafka::ensure_topics(&infra.brokers, &[topic.as_str()], 4).await?;
    let sample = Envelope {
        event_id: "out:m_0123456789abcdef0123456789abcdef".into(),
        tenant_id: "tbench".into(),
        payload: Some(v1::envelope::Payload::OutboundMessage(
            v1::OutboundMessage {
                message_id: "m_0123456789abcdef0123456789abcdef".into(),
                body_json: vec![b'x'; 300],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let raw_started = Instant::now();
    let raw_n = 100_000usize;
    for chunk in (0..raw_n).collect::<Vec<_>>().chunks(20_000) {
        let records: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|i| Outgoing {
                traceparent: None,
                topic: &topic,
                key: format!("k{i}"),
                envelope: sample.clone(),
            })
            .collect();
        kafka::publish_all(&producer, &records).await?;
    }
    let raw_per_s = raw_n as f64 / raw_started.elapsed().as_secs_f64();

    let full_per_s = full.ok as f64 / full.seconds;
    println!(
        "bench-send (this machine: 2 cores; every service in one process; Postgres 15, Redis 7, tansu 0.6 SQLite)"
    );
    println!(
        "  open loop at {sustained_rate}/s, {seconds} s: {:.0} accepted/s, SendMessage p50 {:.2} ms, p99 {:.2} ms, {} errors; accepted→delivered p50 {sus_p50:.0} ms, p99 {sus_p99:.0} ms",
        sustained.ok as f64 / sustained.seconds,
        sustained.p50_ms,
        sustained.p99_ms,
        sustained.errors
    );
    println!(
        "  open loop at {rate}/s, {seconds} s: {:.0} accepted/s, SendMessage p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors",
        fixed.ok as f64 / fixed.seconds,
        fixed.p50_ms,
        fixed.p99_ms,
        fixed.max_ms,
        fixed.errors
    );
    println!(
        "  closed loop, {in_flight} in flight, {seconds} s: {full_per_s:.0} accepted/s, SendMessage p50 {:.2} ms, p99 {:.2} ms, {} errors",
        full.p50_ms, full.p99_ms, full.errors
    );
    println!(
        "  end to end, steady (closed-loop phase, first to last delivery): {full_delivered} messages in {steady_span_s:.1} s = {steady_per_s:.0} delivered and charged/s"
    );
    println!(
        "  end to end, whole run (pauses included): {measured} messages accepted→delivered in {:.1} s = {end_to_end_per_s:.0} messages/s ({failed} failed)",
        (last_delivery - first_accept) as f64 / 1e6
    );
    for (r, f) in &sweep {
        println!(
            "  sweep, open loop at {r}/s for {sweep_seconds} s: {:.0} accepted/s, SendMessage p50 {:.2} ms, p99 {:.2} ms, {} errors",
            f.ok as f64 / f.seconds,
            f.p50_ms,
            f.p99_ms,
            f.errors
        );
    }
    match first_over {
        Some(r) => println!(
            "  SendMessage p99 first exceeds {p99_target_ms} ms (or a call fails) at {r}/s open loop"
        ),
        None => println!("  SendMessage p99 stayed within {p99_target_ms} ms at every rate swept"),
    }
    println!("  accepted→delivered (open-loop phase): p50 {p50_e2e:.0} ms, p99 {p99_e2e:.0} ms");
    println!(
        "  raw broker produce: {raw_per_s:.0} records/s (steady end to end × {produced_per_message:.2} records produced per message = {:.1}% of it)",
        100.0 * steady_per_s * produced_per_message / raw_per_s
    );
    println!(
        "  SendMessages, {batch_callers} callers × batches of {batch_size}: {batch_per_s:.0} messages/s accepted ({batch_refused} refused), a call p50 {batch_p50:.1} ms, p99 {batch_p99:.1} ms"
    );
    println!(
        "  broker records per settled message: {produced_per_message:.2} produced, {consumed_per_message:.2} consumed ({records_produced} and {records_consumed} for {accepted} messages)"
    );
    println!("  reconcile differences after the run: {differences}");
    let sweep_json: Vec<serde_json::Value> = sweep
        .iter()
        .map(|(r, f)| {
            serde_json::json!({
                "rate": r, "accepted_per_s": f.ok as f64 / f.seconds,
                "p50_ms": f.p50_ms, "p99_ms": f.p99_ms, "errors": f.errors,
            })
        })
        .collect();
    let json = serde_json::json!({
        "sustained_rate": sustained_rate, "sustained_accepted_per_s": sustained.ok as f64 / sustained.seconds,
        "sustained_p50_ms": sustained.p50_ms, "sustained_p99_ms": sustained.p99_ms, "sustained_errors": sustained.errors,
        "sustained_accepted_to_delivered_p50_ms": sus_p50, "sustained_accepted_to_delivered_p99_ms": sus_p99,
        "open_loop_rate": rate, "open_loop_accepted_per_s": fixed.ok as f64 / fixed.seconds,
        "open_loop_p50_ms": fixed.p50_ms, "open_loop_p99_ms": fixed.p99_ms, "open_loop_errors": fixed.errors,
        "closed_loop_in_flight": in_flight, "closed_loop_accepted_per_s": full_per_s,
        "closed_loop_p50_ms": full.p50_ms, "closed_loop_p99_ms": full.p99_ms, "closed_loop_errors": full.errors,
        "end_to_end_messages": measured, "end_to_end_per_s": end_to_end_per_s, "failed": failed,
        "steady_end_to_end_per_s": steady_per_s, "steady_delivered": full_delivered,
        "steady_span_s": steady_span_s, "sweep": sweep_json, "p99_first_over_25ms_at": first_over,
        "accepted_to_delivered_p50_ms": p50_e2e, "accepted_to_delivered_p99_ms": p99_e2e,
        "raw_produce_per_s": raw_per_s, "reconcile_differences": differences,
        "batch_size": batch_size, "batch_callers": batch_callers, "batch_accepted_per_s": batch_per_s,
        "batch_refused": batch_refused, "batch_call_p50_ms": batch_p50, "batch_call_p99_ms": batch_p99,
        "records_produced_per_message": produced_per_message,
        "records_consumed_per_message": consumed_per_message,
        "settled_timeline": settled, "tenants": tenant_count, "seconds": seconds,
        "per_second": timeline.json(),
    });
    std::fs::create_dir_all("var")?;
    std::fs::write("var/bench-send.json", serde_json::to_string_pretty(&json)?)?;
    anyhow::ensure!(
        differences == 0,
        "the books did not reconcile after the benchmark"
    );
    Ok(())
}
