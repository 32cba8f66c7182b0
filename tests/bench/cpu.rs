//! `make bench-cpu`: CPU time per delivered-and-charged message, by process. Every service
//! runs as its own process (the release binaries, as `make up` lays them out) against its own
//! tansu broker (SQLite engine), the machine's Postgres and Redis, and the simulator as the
//! network. Two operating points, each followed by the wait until every message it sent is
//! delivered and charged:
//!
//! 1. a fixed rate, `BENCH_RATE` (500) templates a second over `BENCH_TENANTS` (10) tenants of
//!    one number each, for `BENCH_SECONDS` (10);
//! 2. saturation: a closed loop of `BENCH_IN_FLIGHT` (256) calls at once for `BENCH_SECONDS`,
//!    a refused call retried after the delay it was told.
//!
//! Each process's CPU (user + system, `/proc/<pid>/stat`) is read before and after each point:
//! Finestra's five services, the simulator, the broker, Postgres (every `postgres` process,
//! and what its exited backends left in the postmaster's children's time), Redis and this
//! load generator. Printed as microseconds per delivered-and-charged message; written to
//! `var/bench-cpu.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finestra_e2e::cluster::{Broker, Cluster, ClusterSpec, SERVICES};
use finestra_e2e::env_num;
use finestra_e2e::load::{self, Generator};
use finestra_e2e::procstat::{stat, ticks_per_second};
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_platform::status::retry_after_of;
use finestra_testkit::{Scope, infra};

/// Ticks used so far by every process whose command name is `name`, plus what their exited
/// children left (Postgres's backends come and go).
fn ticks_of_all(name: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|(n, _, _)| n == name)
        .map(|(_, own, children)| own + children)
        .sum()
}

/// CPU ticks of every process of interest.
fn snapshot(cluster: &Cluster, broker: &Broker) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for service in SERVICES {
        if let Some((_, own, _)) = cluster.pid(service).and_then(stat) {
            out.insert(service.to_owned(), own);
        }
    }
    if let Some((_, own, _)) = broker.pid().and_then(stat) {
        out.insert("broker (tansu)".into(), own);
    }
    out.insert("postgres".into(), ticks_of_all("postgres"));
    out.insert("redis".into(), ticks_of_all("redis-server"));
    if let Some((_, own, _)) = stat(std::process::id()) {
        out.insert("load generator (this bench)".into(), own);
    }
    out
}

/// Messages of the run's tenants delivered and charged so far.
async fn charged(tenants: &[String]) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM billing.ledger WHERE tenant_id = ANY($1) AND kind = 'charge'",
    )
    .bind(tenants)
    .fetch_one(&infra().await?.pool)
    .await?;
    Ok(n)
}

/// Waits until every message the run's tenants had accepted is settled and every delivered
/// one charged.
async fn settle(tenants: &[String]) -> anyhow::Result<()> {
    let pool = &infra().await?.pool;
    let began = Instant::now();
    loop {
        let (open, delivered): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status NOT IN ('DELIVERED', 'READ', 'FAILED')),
                    count(*) FILTER (WHERE status IN ('DELIVERED', 'READ'))
               FROM dispatch.messages WHERE tenant_id = ANY($1)",
        )
        .bind(tenants)
        .fetch_one(pool)
        .await?;
        if open == 0 && charged(tenants).await? >= delivered {
            return Ok(());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "{open} messages still unsettled after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One operating point's figures: µs of CPU per delivered-and-charged message by process.
struct Point {
    label: String,
    messages: i64,
    seconds: f64,
    per_message_micros: BTreeMap<String, f64>,
}

impl Point {
    fn finestra(&self) -> f64 {
        ["accounts", "ingest", "window", "billing", "dispatch"]
            .iter()
            .filter_map(|s| self.per_message_micros.get(*s))
            .sum()
    }

    fn everything(&self) -> f64 {
        self.per_message_micros
            .iter()
            .filter(|(name, _)| !name.starts_with("load generator"))
            .map(|(_, v)| v)
            .sum()
    }
}

async fn measure<F, Fut>(
    label: String,
    cluster: &Cluster,
    broker: &Broker,
    tenant_ids: &[String],
    load: F,
) -> anyhow::Result<Point>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let hz = ticks_per_second();
    let before = snapshot(cluster, broker);
    let charged_before = charged(tenant_ids).await?;
    let began = Instant::now();
    load().await?;
    settle(tenant_ids).await?;
    let seconds = began.elapsed().as_secs_f64();
    let after = snapshot(cluster, broker);
    let messages = charged(tenant_ids).await? - charged_before;
    let per_message_micros = after
        .iter()
        .map(|(name, ticks)| {
            let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
            let micros = used as f64 / hz * 1e6;
            (name.clone(), micros / messages.max(1) as f64)
        })
        .collect();
    Ok(Point {
        label,
        messages,
        seconds,
        per_message_micros,
    })
}

/// `in_flight` callers sending as fast as they are answered for `span`; a refusal is retried
/// after the delay it names (or 50 ms).
async fn closed_loop(
    dispatch_url: &str,
    tenants: Arc<Vec<load::Tenant>>,
    in_flight: usize,
    span: Duration,
) -> anyhow::Result<u64> {
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for t in tenants.iter() {
        clients.push(load::client(dispatch_url, &t.send_key).await?);
    }
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..in_flight {
        let t_index = caller % tenants.len();
        let (tenants, accepted, stop) = (tenants.clone(), accepted.clone(), stop.clone());
        let mut client = clients[t_index].clone();
        callers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = load::request(
                    &tenants[t_index],
                    t_index,
                    10_000_000 + caller as u64 * 1_000_000 + n,
                );
                match client.send_message(req).await {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Err(status) => {
                        let wait = retry_after_of(&status).unwrap_or(Duration::from_millis(50));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    while callers.join_next().await.is_some() {}
    Ok(accepted.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tokio::select! {
        result = run() => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted: the services and the broker were stopped"),
    }
}

async fn run() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("FINESTRA_LOG").unwrap_or_else(|_| "warn,sqlx=error".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let rate = env_num("BENCH_RATE", 500);
    let seconds = env_num("BENCH_SECONDS", 10);
    let in_flight = env_num("BENCH_IN_FLIGHT", 256) as usize;
    let tenant_count = env_num("BENCH_TENANTS", 10) as usize;
    let bin_dir = PathBuf::from(std::env::var("BENCH_BIN_DIR").unwrap_or("target/release".into()));
    let scope = Scope::new();
    let dir = std::env::current_dir()?
        .join("var/bench-cpu")
        .join(scope.id());

    let broker = Broker::start(dir.join("broker")).await?;
    finestra_platform::kafka::ensure_topics(&broker.brokers(), &scope.topics().all(), 4).await?;
    let tenants = Arc::new(load::setup_tenants(&scope, tenant_count).await?);
    let tenant_ids: Vec<String> = tenants.iter().map(|t| t.id.clone()).collect();
    let operator_key = scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    let mut cluster = Cluster::new(ClusterSpec {
        scope: scope.clone(),
        brokers: broker.brokers(),
        bin_dir,
        log_dir: dir.join("logs"),
        operator_key,
        provider_token: format!("token-{}", scope.id()),
        grace_secs: 10,
    })?;
    eprintln!(
        "[bench-cpu] starting the services (logs in {})",
        dir.join("logs").display()
    );
    cluster.start_all().await?;
    let dispatch_url = cluster.grpc_url("dispatch")?;
    // Its users write first, so one send in 200 is a free reply inside a window.
    load::open_windows(&cluster, &tenants).await?;

    eprintln!("[bench-cpu] warming up: 2 s at 200/s");
    let warm = Generator::start(&dispatch_url, tenants.clone(), 200, "warm").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    warm.stop().await?;
    settle(&tenant_ids).await?;

    eprintln!("[bench-cpu] fixed rate: {rate}/s over {tenant_count} numbers for {seconds} s");
    let fixed = measure(
        format!("{rate}/s over {tenant_count} numbers"),
        &cluster,
        &broker,
        &tenant_ids,
        || async {
            let generator =
                Generator::start_at(&dispatch_url, tenants.clone(), rate, "fixed", 1_000_000)
                    .await?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            generator.stop().await?;
            Ok(())
        },
    )
    .await?;
    eprintln!("[bench-cpu] saturation: {in_flight} calls in flight for {seconds} s");
    let saturated = measure(
        format!("saturation ({in_flight} in flight)"),
        &cluster,
        &broker,
        &tenant_ids,
        || async {
            closed_loop(
                &dispatch_url,
                tenants.clone(),
                in_flight,
                Duration::from_secs(seconds),
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    cluster.stop_all().await?;
    let differences = load::reconcile_differences(&tenant_ids).await?;

    println!(
        "bench-cpu (this machine: {} cores; every service its own process; Postgres 15, Redis 7, tansu 0.6 SQLite)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("  CPU µs per delivered-and-charged message (user + system, /proc/<pid>/stat):");
    let names: Vec<String> = fixed.per_message_micros.keys().cloned().collect();
    println!(
        "  {:<30} {:>16} {:>16}",
        "process", fixed.label, saturated.label
    );
    for name in &names {
        println!(
            "  {name:<30} {:>16.0} {:>16.0}",
            fixed.per_message_micros.get(name).copied().unwrap_or(0.0),
            saturated
                .per_message_micros
                .get(name)
                .copied()
                .unwrap_or(0.0)
        );
    }
    println!(
        "  {:<30} {:>16.0} {:>16.0}",
        "Finestra's five services",
        fixed.finestra(),
        saturated.finestra()
    );
    println!(
        "  {:<30} {:>16.0} {:>16.0}",
        "everything but the generator",
        fixed.everything(),
        saturated.everything()
    );
    for p in [&fixed, &saturated] {
        println!(
            "  {}: {} messages delivered and charged in {:.1} s (load and settling) = {:.0}/s",
            p.label,
            p.messages,
            p.seconds,
            p.messages as f64 / p.seconds
        );
    }
    println!("  reconcile differences after the run: {differences}");
    let points: Vec<serde_json::Value> = [&fixed, &saturated]
        .iter()
        .map(|p| {
            serde_json::json!({
                "label": p.label, "messages": p.messages, "seconds": p.seconds,
                "per_message_micros": p.per_message_micros,
                "finestra_micros": p.finestra(), "everything_micros": p.everything(),
            })
        })
        .collect();
    let json = serde_json::json!({ "points": points, "reconcile_differences": differences });
    std::fs::create_dir_all("var")?;
    std::fs::write("var/bench-cpu.json", serde_json::to_string_pretty(&json)?)?;
    anyhow::ensure!(
        differences == 0,
        "the books did not reconcile after the benchmark"
    );
    Ok(())
}
