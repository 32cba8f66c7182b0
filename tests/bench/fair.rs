//! `make bench-fair`: fairness between tenants on the whole chain (every service in this
//! process against the local Postgres, Redis and tansu; the simulator as the network).
//!
//! 1. The clinic alone: 20 UTILITY templates a second for `BENCH_SECONDS`: its SendMessage
//!    p50/p99 alone.
//! 2. The chain's capacity: the retailer alone, closed loop, clients honouring RetryInfo.
//! 3. Noisy neighbour: the retailer offers `BENCH_FLOOD_FACTOR` (10) × that capacity, open
//!    loop, while the clinic sends its 20 a second again: the clinic's refusals (goal 0) and
//!    p99 against its p99 alone (goal ≤ 2×), the retailer's answers by reason and whether each
//!    refusal carried retry info (goal: all; never INTERNAL).
//! 4. Weights: ten tenants with weights 1..10, each with more callers than its share, closed
//!    loop for `BENCH_SECONDS`: each tenant's share of the delivered messages against
//!    weight / 55 (goal: within 10 % of it).
//!
//! Prints the figures and writes `var/bench-fair.json`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use finestra_e2e::{env_num, load};
use finestra_platform::auth::{AuthedChannel, Scope as KeyScope};
use finestra_platform::status::{reason_of, retry_after_of};
use finestra_proto::v1;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_proto::v1::send_message_request::Content;
use finestra_testkit::{Scope, infra};
use hdrhistogram::Histogram;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = DispatchServiceClient<AuthedChannel>;

struct Tenant {
    id: String,
    number: String,
    /// Which tenant of the run (the users' numbers carry it).
    index: usize,
    clients: Vec<Client>,
    next: AtomicU64,
}

impl Tenant {
    fn request(&self, tag: &str) -> v1::SendMessageRequest {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        v1::SendMessageRequest {
            tenant_id: self.id.clone(),
            phone_number_id: self.number.clone(),
            // One user per message: the pair limit never paces the benchmark.
            to: format!("39{:02}{n:09}", self.index),
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

    fn client(&self, n: usize) -> Client {
        self.clients[n % self.clients.len()].clone()
    }
}

/// What one tenant saw in a phase.
#[derive(Default)]
struct Seen {
    latencies: Option<Histogram<u64>>,
    ok: u64,
    /// Refusals by reason (or gRPC code when there is none).
    refused: BTreeMap<String, u64>,
    refused_with_retry_info: u64,
}

impl Seen {
    fn record(
        &mut self,
        answer: &Result<tonic::Response<v1::SendMessageResponse>, tonic::Status>,
        micros: u64,
    ) {
        match answer {
            Ok(_) => {
                self.ok += 1;
                let h = self
                    .latencies
                    .get_or_insert_with(|| Histogram::new(3).expect("3 significant digits"));
                let _ = h.record(micros);
            }
            Err(status) => {
                let why = reason_of(status).unwrap_or_else(|| format!("{:?}", status.code()));
                *self.refused.entry(why).or_default() += 1;
                if retry_after_of(status).is_some() {
                    self.refused_with_retry_info += 1;
                }
            }
        }
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.latencies
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1_000.0)
    }

    fn refusals(&self) -> u64 {
        self.refused.values().sum()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.ok, "refused": self.refused, "refused_with_retry_info": self.refused_with_retry_info,
            "p50_ms": self.quantile_ms(0.5), "p99_ms": self.quantile_ms(0.99),
        })
    }
}

/// `rate` sends a second of `tenant` for `duration`, each on its own task.
async fn open_loop(tenant: Arc<Tenant>, rate: u64, duration: Duration, tag: &'static str) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut issued = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while issued < due {
            let (tenant, seen) = (tenant.clone(), seen.clone());
            let n = issued as usize;
            issued += 1;
            tasks.spawn(async move {
                let at = Instant::now();
                let answer = tenant.client(n).send_message(tenant.request(tag)).await;
                let us = at.elapsed().as_micros() as u64;
                if let Ok(mut s) = seen.lock() {
                    s.record(&answer, us);
                }
            });
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(seen)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

/// `callers` clients of `tenant` back to back for `duration`. A refused caller backs off as a
/// well-behaved client does: at least what its RetryInfo says, doubling with each refusal in
/// a row (capped at 2 s), with full jitter.
async fn closed_loop(
    tenant: Arc<Tenant>,
    callers: usize,
    duration: Duration,
    tag: &'static str,
) -> Seen {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut refused_in_a_row = 0u32;
            while started.elapsed() < duration {
                let at = Instant::now();
                let answer = tenant
                    .client(caller)
                    .send_message(tenant.request(tag))
                    .await;
                seen.record(&answer, at.elapsed().as_micros() as u64);
                match &answer {
                    Ok(_) => refused_in_a_row = 0,
                    Err(status) => {
                        let base = retry_after_of(status).unwrap_or(Duration::from_millis(100));
                        let ceiling = (base * 2u32.saturating_pow(refused_in_a_row.min(5)))
                            .min(Duration::from_secs(2))
                            .max(base);
                        let extra = ceiling.saturating_sub(base).mul_f64(jitter());
                        refused_in_a_row += 1;
                        tokio::time::sleep(base + extra).await;
                    }
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        if let Ok(seen) = t.await {
            all.ok += seen.ok;
            all.refused_with_retry_info += seen.refused_with_retry_info;
            for (k, v) in seen.refused {
                *all.refused.entry(k).or_default() += v;
            }
            if let Some(h) = seen.latencies {
                let mine = all
                    .latencies
                    .get_or_insert_with(|| Histogram::new(3).expect("3 significant digits"));
                let _ = mine.add(&h);
            }
        }
    }
    all
}

/// The admission limit dispatch reports on its metrics endpoint.
async fn scrape_limit(chain: &finestra_e2e::load::InProcessChain) -> String {
    let url = format!("http://{}/metrics", chain.dispatch.running.metrics_addr);
    let Ok(answer) = reqwest::get(&url).await else {
        return "unknown".into();
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("finestra_dispatch_admission_limit"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("unknown")
        .to_owned()
}

/// A uniform draw in [0, 1).
fn jitter() -> f64 {
    use rand::Rng as _;
    rand::rng().random()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("FINESTRA_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let seconds = Duration::from_secs(env_num("BENCH_SECONDS", 10));
    let flood_factor = env_num("BENCH_FLOOD_FACTOR", 10);
    let clinic_rate = env_num("BENCH_CLINIC_RATE", 20);
    let infra = infra().await?;
    let scope = Scope::new();
    finestra_platform::kafka::ensure_topics(&infra.brokers, &scope.topics().all(), 4).await?;

    // The platform's defaults for every tenant (a partner could set them per tenant).
    // Admission as in production (the test harness's settings are lenient for debug builds).
    let production = finestra_dispatch::DispatchConfig::from_env()?;
    let chain = finestra_e2e::load::InProcessChain::start(&scope, |config| {
        config.tenant_rate = 100_000;
        config.tenant_burst = 100_000;
        config.max_pending_sends = production.max_pending_sends;
        config.tenant_floor = production.tenant_floor;
        config.send_latency_target = production.send_latency_target;
    })
    .await?;
    let url = chain.dispatch.running.grpc_url();
    let names: Vec<String> = ["clinic", "retailer"]
        .into_iter()
        .map(str::to_owned)
        .chain((1..=10).map(|w| format!("w{w}")))
        .collect();
    let mut tenants = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let (id, number) = finestra_e2e::load::sending_tenant(
            &scope,
            name,
            index as u32,
            "bench_util",
            1_000_000_000_000_000,
        )
        .await?;
        let key = scope.tenant_key(name, &[KeyScope::Send]).await?;
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(Client::new(
                finestra_testkit::authed_channel(url.clone(), &key).await?,
            ));
        }
        tenants.push(Arc::new(Tenant {
            id,
            number,
            index,
            clients,
            next: AtomicU64::new(0),
        }));
    }
    chain.sim.register_all(&scope).await?;
    let clinic = tenants[0].clone();
    let retailer = tenants[1].clone();
    let weighted: Vec<Arc<Tenant>> = tenants[2..].to_vec();
    for (w, t) in weighted.iter().enumerate() {
        sqlx::query("UPDATE accounts.tenants SET send_weight = $2 WHERE tenant_id = $1")
            .bind(&t.id)
            .bind(w as i32 + 1)
            .execute(&infra.pool)
            .await?;
    }
    let all_ids: Vec<String> = tenants.iter().map(|t| t.id.clone()).collect();

    eprintln!("[bench-fair] warming up");
    open_loop(clinic.clone(), 100, Duration::from_secs(1), "warm").await;

    eprintln!("[bench-fair] 1. the clinic alone: {clinic_rate}/s for {seconds:?}");
    let alone = open_loop(clinic.clone(), clinic_rate, seconds, "alone").await;
    eprintln!(
        "[bench-fair]   {} accepted, {} refused, p50 {:.1} ms, p99 {:.1} ms",
        alone.ok,
        alone.refusals(),
        alone.quantile_ms(0.5),
        alone.quantile_ms(0.99)
    );
    load::settle(&infra.pool, &all_ids, "bench-fair").await?;

    let probe = Duration::from_secs(5);
    eprintln!("[bench-fair] 2. the chain's capacity: the retailer alone, closed loop, {probe:?}");
    let capacity = closed_loop(retailer.clone(), 128, probe, "capacity").await;
    let capacity_per_s = capacity.ok as f64 / probe.as_secs_f64();
    eprintln!("[bench-fair]   {capacity_per_s:.0} accepted/s");
    load::settle(&infra.pool, &all_ids, "bench-fair").await?;

    let flood_rate = (capacity_per_s * flood_factor as f64).max(100.0) as u64;
    eprintln!(
        "[bench-fair] 3. noisy neighbour: the retailer offers {flood_rate}/s ({flood_factor}× capacity), the clinic {clinic_rate}/s, {seconds:?}"
    );
    let flood = {
        let retailer = retailer.clone();
        tokio::spawn(async move { open_loop(retailer, flood_rate, seconds, "flood").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let beside = open_loop(
        clinic.clone(),
        clinic_rate,
        seconds - Duration::from_millis(500),
        "beside",
    )
    .await;
    let flood = flood.await?;
    eprintln!(
        "[bench-fair]   clinic: {} accepted, {} refused, p50 {:.1} ms, p99 {:.1} ms; retailer: {} accepted, refused {:?}",
        beside.ok,
        beside.refusals(),
        beside.quantile_ms(0.5),
        beside.quantile_ms(0.99),
        flood.ok,
        flood.refused
    );
    load::settle(&infra.pool, &all_ids, "bench-fair").await?;

    eprintln!("[bench-fair] 4. weights 1..10, closed loop, {seconds:?}");
    let mut runs = Vec::new();
    for t in &weighted {
        // More callers than any share of what this machine serves at once, so each wants more.
        runs.push(tokio::spawn(closed_loop(t.clone(), 48, seconds, "weights")));
    }
    let mut weight_seen = Vec::new();
    for r in runs {
        weight_seen.push(r.await?);
    }
    load::settle(&infra.pool, &all_ids, "bench-fair").await?;
    let weighted_ids: Vec<String> = weighted.iter().map(|t| t.id.clone()).collect();
    let delivered: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM dispatch.messages
          WHERE tenant_id = ANY($1) AND idempotency_key LIKE 'weights-%'
            AND status IN ('DELIVERED', 'READ')
          GROUP BY tenant_id",
    )
    .bind(&weighted_ids)
    .fetch_all(&infra.pool)
    .await?;
    let delivered: BTreeMap<String, i64> = delivered.into_iter().collect();
    let total: i64 = delivered.values().sum();
    let mut shares = Vec::new();
    let mut worst = 0.0f64;
    for (w, t) in weighted.iter().enumerate() {
        let weight = w as f64 + 1.0;
        let got = delivered.get(&t.id).copied().unwrap_or(0);
        let share = got as f64 / total.max(1) as f64;
        let expected = weight / 55.0;
        let off = (share - expected).abs() / expected;
        worst = worst.max(off);
        shares.push(serde_json::json!({
            "weight": weight, "delivered": got, "share": share, "expected": expected,
            "relative_error": off,
        }));
    }

    let limit_at_end = scrape_limit(&chain).await;
    chain.stop().await;
    let differences = finestra_e2e::load::reconcile_differences(&all_ids).await?;

    let p99_ratio = beside.quantile_ms(0.99) / alone.quantile_ms(0.99).max(0.001);
    let flood_refused = flood.refusals();
    let internal = flood.refused.get("Internal").copied().unwrap_or(0);
    println!(
        "bench-fair (this machine: 2 cores; every service and the load in one process; Postgres 15, Redis 7, tansu 0.6 SQLite)"
    );
    println!(
        "  admission: limit ≤ {}, floor {}, latency target {:?} (production defaults; the limit at the end: {})",
        production.max_pending_sends,
        production.tenant_floor,
        production.send_latency_target,
        limit_at_end
    );
    println!(
        "  clinic alone at {clinic_rate}/s: {} accepted, {} refused, SendMessage p50 {:.1} ms, p99 {:.1} ms",
        alone.ok,
        alone.refusals(),
        alone.quantile_ms(0.5),
        alone.quantile_ms(0.99)
    );
    println!("  chain capacity (retailer alone, closed loop): {capacity_per_s:.0} accepted/s");
    println!(
        "  noisy neighbour: retailer offered {flood_rate}/s → {} accepted, {} refused {:?} ({} with retry info, {internal} INTERNAL)",
        flood.ok, flood_refused, flood.refused, flood.refused_with_retry_info
    );
    println!(
        "    clinic beside it at {clinic_rate}/s: {} accepted, {} refused, p50 {:.1} ms, p99 {:.1} ms = {p99_ratio:.2}× its p99 alone (goal: 0 refused, ≤ 2×)",
        beside.ok,
        beside.refusals(),
        beside.quantile_ms(0.5),
        beside.quantile_ms(0.99)
    );
    println!(
        "  weights 1..10 at saturation: {total} delivered; share of each (expected weight/55):"
    );
    for s in &shares {
        println!(
            "    weight {:>2}: {:>6} delivered, {:>5.1}% (expected {:>5.1}%, off by {:>4.1}%)",
            s["weight"].as_f64().unwrap_or_default(),
            s["delivered"].as_i64().unwrap_or_default(),
            100.0 * s["share"].as_f64().unwrap_or_default(),
            100.0 * s["expected"].as_f64().unwrap_or_default(),
            100.0 * s["relative_error"].as_f64().unwrap_or_default()
        );
    }
    println!(
        "    largest relative error: {:.1}% (goal ≤ 10%)",
        100.0 * worst
    );
    println!("  reconcile differences after the run: {differences}");
    let json = serde_json::json!({
        "clinic_rate": clinic_rate, "alone": alone.json(), "capacity_per_s": capacity_per_s,
        "flood_rate": flood_rate, "flood": flood.json(), "beside": beside.json(),
        "clinic_p99_ratio": p99_ratio, "weights": shares, "weights_worst_relative_error": worst,
        "weights_callers": weight_seen.iter().map(Seen::json).collect::<Vec<_>>(),
        "reconcile_differences": differences,
    });
    std::fs::create_dir_all("var")?;
    std::fs::write("var/bench-fair.json", serde_json::to_string_pretty(&json)?)?;
    anyhow::ensure!(
        differences == 0,
        "the books did not reconcile after the benchmark"
    );
    Ok(())
}
