//! `make bench-gateway`: the Cloud API gateway's overhead. Every service runs as its own
//! process (the release binaries) against its own tansu broker (SQLite engine), the gateway in
//! front of dispatch. The same sends (a UTILITY template to a new user each) are made
//! `BENCH_MESSAGES` (6,000) times each way per concurrency: directly with
//! `SendMessage` over gRPC, and as Cloud API `POST /{number}/messages` through the gateway,
//! alternating in `BENCH_ROUNDS` (4) rounds (and which goes first) so the machine's noise and
//! the growing backlog behind acceptance fall on both alike, at each of `BENCH_CONCURRENCY`
//! (`32,64`) senders at a time. The tenant's own send rate is lifted, so the limiter is not
//! what is measured, and the number's pace (`BENCH_NUMBER_RATE`, 1/s) holds delivery back, so
//! the two ways compete on acceptance, the only path the gateway is on; a refused send
//! (BACKLOG_FULL at saturation) is retried after 50 ms.
//! Printed per concurrency: each way's accepted messages a second, refusals and latency, the
//! gateway's overhead (1 − gateway rate / direct rate), and the CPU the gateway, dispatch and
//! this client process spent per message (`/proc/<pid>/stat`, user + system). Written to
//! `var/bench-gateway.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use finestra_e2e::cluster::{Broker, Cluster, ClusterSpec};
use finestra_e2e::env_num;
use finestra_e2e::load::{self, Tenant};
use finestra_e2e::procstat::cpu_seconds;
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_proto::v1;
use finestra_testkit::{Scope, infra};
use serde_json::json;
use tokio::sync::Mutex;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Direct,
    Gateway,
}

/// What one way's sends saw.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    /// Refusals by reason (a Finestra reason, or the Cloud API code through the gateway).
    refusals: Mutex<std::collections::BTreeMap<String, u64>>,
    seconds: Mutex<f64>,
    latencies_us: Mutex<Vec<u64>>,
    gateway_cpu: Mutex<f64>,
    dispatch_cpu: Mutex<f64>,
    /// This process: the client's own cost (gRPC and protobuf, or HTTP/1.1 and JSON), on the
    /// same two cores as the services.
    client_cpu: Mutex<f64>,
}

struct Target {
    tenant: Tenant,
    direct: finestra_proto::v1::dispatch_service_client::DispatchServiceClient<
        finestra_platform::auth::AuthedChannel,
    >,
    http: reqwest::Client,
    gateway: String,
}

/// One accepted send of message `n` (refusals are counted and retried after a pause).
async fn send(target: &Target, way: Way, n: u64, tally: &Tally) -> anyhow::Result<()> {
    let user = format!("3977{n:08}");
    loop {
        let started = Instant::now();
        let refusal: Option<String> = match way {
            Way::Direct => target
                .direct
                .clone()
                .send_message(v1::SendMessageRequest {
                    tenant_id: target.tenant.id.clone(),
                    phone_number_id: target.tenant.number.clone(),
                    to: user.clone(),
                    idempotency_key: format!("bench-{n}"),
                    content: Some(v1::send_message_request::Content::Template(
                        v1::TemplateContent {
                            name: "chaos_util".into(),
                            language: "it".into(),
                            parameters: vec![format!("A-{n}")],
                        },
                    )),
                    ..Default::default()
                })
                .await
                .err()
                .map(|s| {
                    finestra_platform::status::reason_of(&s)
                        .unwrap_or_else(|| format!("{:?}", s.code()))
                }),
            Way::Gateway => {
                let answer = target
                    .http
                    .post(format!(
                        "{}/v21.0/{}/messages",
                        target.gateway, target.tenant.number
                    ))
                    .bearer_auth(&target.tenant.send_key)
                    .json(&json!({
                        "messaging_product": "whatsapp", "recipient_type": "individual",
                        "to": user, "type": "template",
                        "template": {"name": "chaos_util", "language": {"code": "it"},
                                     "components": [{"type": "body", "parameters": [
                                         {"type": "text", "text": format!("A-{n}")}]}]}
                    }))
                    .send()
                    .await?;
                if answer.status().is_success() {
                    None
                } else {
                    let body: serde_json::Value = answer.json().await.unwrap_or_default();
                    Some(format!(
                        "{} {}",
                        body["error"]["code"],
                        body["error"]["error_data"]["finestra_reason"]
                            .as_str()
                            .unwrap_or("")
                    ))
                }
            }
        };
        let Some(refusal) = refusal else {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            tally.latencies_us.lock().await.push(us);
            tally.accepted.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        tally.refused.fetch_add(1, Ordering::Relaxed);
        *tally.refusals.lock().await.entry(refusal).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends messages `first..first + count` one way, `concurrency` at a time.
async fn round(
    target: &Arc<Target>,
    way: Way,
    first: u64,
    count: u64,
    concurrency: u64,
    tally: &Arc<Tally>,
    pids: (u32, u32),
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let me = std::process::id();
    let (gateway_before, dispatch_before, client_before) =
        (cpu_seconds(pids.0), cpu_seconds(pids.1), cpu_seconds(me));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, next, tally) = (target.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        return anyhow::Ok(());
                    }
                    send(&target, way, n, &tally).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    *tally.seconds.lock().await += started.elapsed().as_secs_f64();
    *tally.gateway_cpu.lock().await += cpu_seconds(pids.0) - gateway_before;
    *tally.dispatch_cpu.lock().await += cpu_seconds(pids.1) - dispatch_before;
    *tally.client_cpu.lock().await += cpu_seconds(me) - client_before;
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1_000.0
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
    let messages = env_num("BENCH_MESSAGES", 6_000);
    // Closed-loop senders at each of these concurrencies in turn: below dispatch's admission
    // limit, and at it (where BACKLOG_FULL refusals start).
    let concurrencies: Vec<u64> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "32,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let top = concurrencies.iter().copied().max().unwrap_or(32);
    let rounds = env_num("BENCH_ROUNDS", 4).max(1);
    let bin_dir = PathBuf::from(std::env::var("BENCH_BIN_DIR").unwrap_or("target/release".into()));
    let scope = Scope::new();
    let dir = std::env::current_dir()?
        .join("var/bench-gateway")
        .join(scope.id());
    infra().await?;
    let broker = Broker::start(dir.join("broker")).await?;
    finestra_platform::kafka::ensure_topics(&broker.brokers(), &scope.topics().all(), 4).await?;
    let tenant = load::setup_tenants(&scope, 1)
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no tenant"))?;
    // The partner lifts the tenant's own send rate (1,000/s by default), so what is measured
    // is each way's cost, not the tenant's limiter.
    sqlx::query(
        "UPDATE accounts.tenants SET send_rate_per_second = 100000, send_burst = 1000000
          WHERE tenant_id = $1",
    )
    .bind(&tenant.id)
    .execute(&infra().await?.pool)
    .await?;
    // The gateway is on the acceptance path only: what happens after (pacing, the network,
    // statuses, captures) is the same for a message whichever way it came. The number's pace
    // (`BENCH_NUMBER_RATE`, 1 a second) holds delivery back, so its work, which grows with the
    // backlog and not with either way, does not share the two cores with what is compared.
    sqlx::query(
        "UPDATE accounts.numbers SET throughput_per_second = $2 WHERE phone_number_id = $1",
    )
    .bind(&tenant.number)
    .bind(i32::try_from(env_num("BENCH_NUMBER_RATE", 1))?)
    .execute(&infra().await?.pool)
    .await?;
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
        "[bench-gateway] starting the services (logs in {})",
        dir.join("logs").display()
    );
    cluster.start_all().await?;
    cluster.start_gateway().await?;
    let pid = |s: &str| {
        cluster
            .pid(s)
            .ok_or_else(|| anyhow::anyhow!("{s} has no pid"))
    };
    let pids = (pid("gateway")?, pid("dispatch")?);
    let direct = load::client(&cluster.grpc_url("dispatch")?, &tenant.send_key).await?;
    let target = Arc::new(Target {
        tenant,
        direct,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(top as usize)
            .timeout(Duration::from_secs(10))
            .build()?,
        gateway: cluster.gateway_url()?,
    });

    // A warm-up of each way (connections, caches), not counted.
    let warm = Arc::new(Tally::default());
    round(&target, Way::Direct, 0, 200, top, &warm, pids).await?;
    round(&target, Way::Gateway, 200, 200, top, &warm, pids).await?;

    let mut report = serde_json::Map::new();
    let mut n = 1_000;
    println!(
        "bench-gateway: {messages} template sends each way per concurrency, {rounds} alternating rounds"
    );
    for concurrency in &concurrencies {
        let (direct_tally, gateway_tally) =
            (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let per_round = messages / rounds;
        for r in 0..rounds {
            eprintln!(
                "[bench-gateway] {concurrency} at a time, round {}/{rounds}: {per_round} each way",
                r + 1
            );
            // Which way goes first alternates too: the backlog behind acceptance grows.
            let order = if r % 2 == 0 {
                [(Way::Direct, &direct_tally), (Way::Gateway, &gateway_tally)]
            } else {
                [(Way::Gateway, &gateway_tally), (Way::Direct, &direct_tally)]
            };
            for (way, tally) in order {
                round(&target, way, n, per_round, *concurrency, tally, pids).await?;
                n += per_round;
            }
        }
        println!("  {concurrency} at a time:");
        let mut rates = Vec::new();
        let mut point = serde_json::Map::new();
        for (name, tally) in [("direct", &direct_tally), ("gateway", &gateway_tally)] {
            let accepted = tally.accepted.load(Ordering::Relaxed);
            let seconds = *tally.seconds.lock().await;
            let rate = accepted as f64 / seconds;
            let mut lat = tally.latencies_us.lock().await.clone();
            lat.sort_unstable();
            let per_msg = |cpu: f64| cpu / accepted as f64 * 1e6;
            let (gateway_cpu, dispatch_cpu, client_cpu) = (
                *tally.gateway_cpu.lock().await,
                *tally.dispatch_cpu.lock().await,
                *tally.client_cpu.lock().await,
            );
            println!(
                "    {name:>7}: {accepted} accepted in {seconds:.2} s = {rate:.0}/s, refused-and-retried {} {:?}, \
                 latency p50 {:.1} ms p99 {:.1} ms; CPU per message: gateway {:.0} µs, dispatch {:.0} µs, \
                 client {:.0} µs",
                tally.refused.load(Ordering::Relaxed),
                tally.refusals.lock().await,
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                per_msg(gateway_cpu),
                per_msg(dispatch_cpu),
                per_msg(client_cpu),
            );
            rates.push(rate);
            point.insert(
                name.into(),
                json!({
                    "accepted": accepted, "seconds": seconds, "per_second": rate,
                    "refused_and_retried": tally.refused.load(Ordering::Relaxed),
                    "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                    "gateway_cpu_us_per_message": per_msg(gateway_cpu),
                    "dispatch_cpu_us_per_message": per_msg(dispatch_cpu),
                    "client_cpu_us_per_message": per_msg(client_cpu),
                }),
            );
        }
        let overhead = 1.0 - rates[1] / rates[0];
        println!(
            "    overhead: {:.1} % of the direct rate (goal < 15 %): {}",
            overhead * 100.0,
            if overhead < 0.15 { "met" } else { "NOT met" }
        );
        point.insert("overhead".into(), json!(overhead));
        report.insert(concurrency.to_string(), serde_json::Value::Object(point));
    }
    std::fs::create_dir_all("var")?;
    std::fs::write(
        "var/bench-gateway.json",
        serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
    )?;
    cluster.stop_all().await?;
    drop(broker);
    Ok(())
}
