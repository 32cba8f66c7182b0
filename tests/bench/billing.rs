//! `make bench-billing`: reservations/s through the `Reserve` RPC (Redis script + group-committed
//! Postgres rows), captures/s from a pre-filled status topic (a fresh billing instance drains
//! it), and, in the same run, Postgres single-row INSERTs/s for comparison. Prints figures and
//! writes `var/bench-billing.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finestra_e2e::env_num;
use finestra_platform::auth::{AuthedChannel, Owner, Scope as KeyScope};
use finestra_platform::kafka::{self, Outgoing};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::envelope::Payload;
use finestra_proto::v1::{self, Envelope, MessageStatus};
use finestra_testkit::{Scope, infra};
use hdrhistogram::Histogram;

struct ReserveFigures {
    ok: u64,
    errors: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One load phase.
struct Phase<'a> {
    in_flight: usize,
    connections: usize,
    duration: Duration,
    /// Reservations per call: `Reserve` when 1, else `ReserveBatch`.
    batch: usize,
    /// Message ids are `<prefix><n>`: each phase reserves messages of its own.
    prefix: &'a str,
}

/// Closed loop: `in_flight` callers over `connections` channels for `duration`; each call
/// reserves `batch` new messages of `tenants`.
async fn reserve_load(
    url: &str,
    key: &str,
    tenants: &[(String, String)],
    phase: Phase<'_>,
) -> anyhow::Result<(ReserveFigures, Vec<(String, String, String)>)> {
    let Phase {
        in_flight,
        connections,
        duration,
        batch,
        prefix,
    } = phase;
    let mut clients: Vec<BillingServiceClient<AuthedChannel>> = Vec::new();
    for _ in 0..connections {
        clients.push(BillingServiceClient::new(
            finestra_testkit::authed_channel(url.to_owned(), key).await?,
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let mut client = clients[w % clients.len()].clone();
        let (stop, next) = (stop.clone(), next.clone());
        let tenants = tenants.to_vec();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).map_err(anyhow::Error::from)?;
            let mut reserved = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                let requests: Vec<v1::ReserveRequest> = (first..first + batch as u64)
                    .map(|i| {
                        let (tenant, number) = &tenants[(i as usize) % tenants.len()];
                        v1::ReserveRequest {
                            tenant_id: tenant.clone(),
                            message_id: format!("{prefix}{i}"),
                            phone_number_id: number.clone(),
                            recipient: "393471234567".into(),
                            free_form: false,
                            category: "MARKETING".into(),
                            csw_open: false,
                            fep_open: false,
                            accepted_at: None,
                        }
                    })
                    .collect();
                let keys: Vec<(String, String, String)> = requests
                    .iter()
                    .map(|r| {
                        (
                            r.tenant_id.clone(),
                            r.phone_number_id.clone(),
                            r.message_id.clone(),
                        )
                    })
                    .collect();
                let t = Instant::now();
                let oks: Vec<bool> = if batch == 1 {
                    let r = requests.into_iter().next().map(|req| client.reserve(req));
                    match r {
                        Some(call) => vec![call.await.is_ok()],
                        None => Vec::new(),
                    }
                } else {
                    match client
                        .reserve_batch(v1::ReserveBatchRequest {
                            reservations: requests,
                        })
                        .await
                    {
                        Ok(r) => r
                            .into_inner()
                            .results
                            .iter()
                            .map(|x| x.reserved.is_some())
                            .collect(),
                        Err(_) => vec![false; keys.len()],
                    }
                };
                hist.record(t.elapsed().as_micros() as u64)?;
                for (ok, key) in oks.into_iter().zip(keys) {
                    if ok {
                        reserved.push(key);
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((hist, reserved, errors))
        }));
    }
    // Progress, once a second.
    let deadline = started + duration;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprint!(
            "\r[bench-billing] reserving: {:>8} calls, {:>4.0} s",
            next.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    eprintln!();
    let mut hist = Histogram::<u64>::new(3)?;
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (h, r, e) = t.await??;
        hist.add(&h)?;
        all.extend(r);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        ReserveFigures {
            ok: all.len() as u64,
            errors,
            seconds,
            p50_ms: hist.value_at_quantile(0.5) as f64 / 1_000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1_000.0,
        },
        all,
    ))
}

async fn charges(pool: &sqlx::PgPool, tenants: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM billing.ledger WHERE tenant_id = ANY($1) AND kind = 'charge'",
    )
    .bind(tenants)
    .fetch_one(pool)
    .await?)
}

/// Single-row INSERTs (one statement, one transaction each) from `tasks` connections.
async fn single_row_inserts(
    pool: &sqlx::PgPool,
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE UNLOGGED TABLE IF NOT EXISTS billing_bench_single_rows (
            id text PRIMARY KEY, tenant_id text NOT NULL, amount bigint NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("TRUNCATE billing_bench_single_rows")
        .execute(pool)
        .await?;
    // Logged, like the ledger: the comparison is with a durable single-row write.
    sqlx::query("ALTER TABLE billing_bench_single_rows SET LOGGED")
        .execute(pool)
        .await?;
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (pool, count) = (pool.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            let mut i = 0u64;
            while started.elapsed() < duration {
                sqlx::query("INSERT INTO billing_bench_single_rows VALUES ($1, 't', 1)")
                    .bind(format!("{t}-{i}"))
                    .execute(&pool)
                    .await?;
                i += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE billing_bench_single_rows")
        .execute(pool)
        .await?;
    Ok(rate)
}

// The services under test run in this process: the same allocator as their binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = env_num("BENCH_SECONDS", 10);
    let in_flight = env_num("BENCH_IN_FLIGHT", 256) as usize;
    let connections = env_num("BENCH_CONNECTIONS", 8) as usize;
    let tenant_count = env_num("BENCH_TENANTS", 8) as usize;
    let infra = infra().await?;
    let scope = Scope::new();
    scope.create_topics().await?;
    let mut tenants = Vec::new();
    for t in 0..tenant_count {
        let (tenant, number, _) = scope
            .tenant_with_number(&format!("bench{t}"), t as u32)
            .await?;
        finestra_billing::pg::top_up(
            &infra.pool,
            &tenant,
            "bench-funds",
            1_000_000_000_000_000,
            "EUR",
            "bench",
            finestra_domain::Timestamp::from_micros(0),
        )
        .await?;
        tenants.push((tenant, number));
    }
    let operator = scope.key(Owner::Operator, &[KeyScope::Admin]).await?;
    let mut config = finestra_testkit::billing_config(&scope, "billing")?;
    config.common.db_max_connections = 16;
    // As the service defaults (FINESTRA_BILLING_MAX_BATCH).
    config.max_batch = env_num("BENCH_CAPTURE_BATCH", 5_000) as usize;
    let billing =
        finestra_testkit::start_billing_with(config.clone(), finestra_testkit::system_clock())
            .await?;
    let url = billing.running.grpc_url();
    let batch = env_num("BENCH_BATCH", 100) as usize;
    // Warm the caches (keys, tenants, markups, hot wallets) before timing.
    let (_, warm) = reserve_load(
        &url,
        &operator,
        &tenants,
        Phase {
            in_flight: 16,
            connections: 2,
            duration: Duration::from_millis(500),
            batch: 1,
            prefix: "warm",
        },
    )
    .await?;

    eprintln!(
        "[bench-billing] Reserve: {in_flight} in flight over {connections} connections, {tenant_count} tenants, {seconds} s"
    );
    let (r, mut reserved) = reserve_load(
        &url,
        &operator,
        &tenants,
        Phase {
            in_flight,
            connections,
            duration: Duration::from_secs(seconds),
            batch: 1,
            prefix: "single",
        },
    )
    .await?;
    let reserves_per_s = r.ok as f64 / r.seconds;
    eprintln!(
        "[bench-billing] reservations: {} ok, {} errors, {reserves_per_s:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        r.ok, r.errors, r.p50_ms, r.p99_ms
    );
    let batch_in_flight = (in_flight / batch).max(4);
    eprintln!(
        "[bench-billing] ReserveBatch: {batch} per call, {batch_in_flight} calls in flight over {connections} connections, {seconds} s"
    );
    let (rb, reserved_in_batches) = reserve_load(
        &url,
        &operator,
        &tenants,
        Phase {
            in_flight: batch_in_flight,
            connections,
            duration: Duration::from_secs(seconds),
            batch,
            prefix: "batched",
        },
    )
    .await?;
    let batched_per_s = rb.ok as f64 / rb.seconds;
    eprintln!(
        "[bench-billing] batched reservations: {} ok, {} errors, {batched_per_s:.0}/s, call p50 {:.2} ms, p99 {:.2} ms",
        rb.ok, rb.errors, rb.p50_ms, rb.p99_ms
    );
    reserved.extend(warm);
    reserved.extend(reserved_in_batches);
    billing.stop().await;

    // Pre-fill the status topic with one `delivered` per reservation, then let a fresh
    // instance drain it.
    let topic = scope.topics().status;
    let producer = kafka::producer(&infra.brokers)?;
    let now = finestra_testkit::now_secs() * 1_000_000;
    let fill = Instant::now();
    for chunk in reserved.chunks(20_000) {
        let records: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|(tenant, number, message_id)| Outgoing {
                traceparent: None,
                topic: &topic,
                key: kafka::conversation_key(tenant, number, message_id),
                envelope: Envelope {
                    event_id: format!("st:{message_id}:delivered"),
                    tenant_id: tenant.clone(),
                    occurred_at: Some(finestra_proto::time::from_micros(now)),
                    recorded_at: None,
                    payload: Some(Payload::MessageStatus(MessageStatus {
                        phone_number_id: number.clone(),
                        message_id: format!("wamid.{message_id}"),
                        status: "delivered".into(),
                        callback_data: message_id.clone(),
                        ..MessageStatus::default()
                    })),
                },
            })
            .collect();
        kafka::publish_all(&producer, &records).await?;
    }
    let produce_per_s = reserved.len() as f64 / fill.elapsed().as_secs_f64();
    eprintln!(
        "[bench-billing] status topic pre-filled: {} records, raw produce {produce_per_s:.0}/s",
        reserved.len()
    );

    let tenant_ids: Vec<String> = tenants.iter().map(|(t, _)| t.clone()).collect();
    let billing =
        finestra_testkit::start_billing_with(config, finestra_testkit::system_clock()).await?;
    let total = reserved.len() as i64;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last_print = Instant::now();
    loop {
        let n = charges(&infra.pool, &tenant_ids).await?;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if last_print.elapsed() >= Duration::from_secs(1) || n >= total {
            eprint!("\r[bench-billing] capturing: {n:>8} of {total}");
            last_print = Instant::now();
        }
        if n >= total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "captures did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!();
    let done = Instant::now();
    let steady = done.duration_since(first.unwrap_or(started)).as_secs_f64();
    let captures_per_s = total as f64 / steady.max(0.001);
    let with_join = total as f64 / done.duration_since(started).as_secs_f64();
    billing.stop().await;
    let hot = finestra_billing::hot::HotWallets::new(
        infra.redis.clone(),
        "fin",
        Duration::from_secs(600),
    );
    let mut differences = 0;
    for t in &tenant_ids {
        differences += finestra_billing::reconcile::run(&infra.pool, &hot, Some(t))
            .await?
            .differences
            .len();
    }

    eprintln!("[bench-billing] Postgres single-row INSERTs (32 connections, 5 s) ...");
    let pg_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&finestra_testkit::Scope::new().config()?.database_url)
        .await?;
    let single = single_row_inserts(&pg_pool, 32, Duration::from_secs(5)).await?;

    println!("bench-billing (this machine; broker = tansu 0.6 SQLite; {tenant_count} tenants)");
    println!(
        "  reservations:        {reserves_per_s:>9.0}/s  ({} ok, {} errors; p50 {:.2} ms, p99 {:.2} ms; {in_flight} in flight, {connections} connections)",
        r.ok, r.errors, r.p50_ms, r.p99_ms
    );
    println!(
        "  captures:            {captures_per_s:>9.0}/s  first to last of {total}; {with_join:.0}/s including the group join"
    );
    println!(
        "  batched reservations:{batched_per_s:>9.0}/s  (ReserveBatch of {batch}: {} ok, {} errors; call p50 {:.2} ms, p99 {:.2} ms)",
        rb.ok, rb.errors, rb.p50_ms, rb.p99_ms
    );
    println!("  pg single-row INSERT: {single:>8.0}/s  (32 connections, same run)");
    println!("  raw broker produce:  {produce_per_s:>9.0}/s  (pre-filling the status topic)");
    println!("  reconcile differences after the run: {differences}");
    let json = serde_json::json!({
        "reservations_per_s": reserves_per_s, "reserve_p50_ms": r.p50_ms, "reserve_p99_ms": r.p99_ms,
        "reserve_errors": r.errors, "captures_per_s": captures_per_s,
        "batched_reservations_per_s": batched_per_s, "batch": batch,
        "batch_call_p50_ms": rb.p50_ms, "batch_call_p99_ms": rb.p99_ms,
        "captures_per_s_with_join": with_join, "captured": total,
        "pg_single_row_inserts_per_s": single, "raw_produce_per_s": produce_per_s,
        "reconcile_differences": differences, "tenants": tenant_count,
        "in_flight": in_flight, "connections": connections,
    });
    std::fs::create_dir_all("var")?;
    std::fs::write(
        "var/bench-billing.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    anyhow::ensure!(
        differences == 0,
        "the books did not reconcile after the benchmark"
    );
    Ok(())
}
