//! `make chaos`: every service as its own process against its own tansu broker, under a
//! sustained SendMessage load, while faults are injected one after another: kill -9 and
//! restart of each Finestra service, an outage of the network (the simulator answers 500 for
//! a while), FLUSHALL of Redis, kill -9 and restart of the broker. The simulator itself is not
//! killed: it stands for the messaging network, which keeps its state. Afterwards:
//! every accepted message is DELIVERED or FAILED, exactly once; no message is charged twice;
//! the books reconcile; the windows opened before the faults answer as before. Prints the
//! figures, writes `var/chaos.json`, exits non-zero when any check fails.
//!
//! Knobs: `CHAOS_RATE` (sends/s, default 100), `CHAOS_PAUSE_SECS` (load between faults,
//! default 8), `CHAOS_DOWN_SECS` (how long a killed service stays down, default 12: longer
//! than the consumer session timeout, as a replaced pod would be), `CHAOS_TENANTS` (default 4),
//! `CHAOS_BIN_DIR` (default target/debug).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finestra_e2e::cluster::{Broker, Cluster, ClusterSpec};
use finestra_e2e::env_num;
use finestra_e2e::load::{self, Generator};
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_testkit::{Scope, infra};

fn log(started: Instant, what: &str) {
    eprintln!(
        "\r[chaos] {:>6.1} s  {what}",
        started.elapsed().as_secs_f64()
    );
}

/// Every number answers 500 to the next `count` sends: the network is down for a while.
async fn network_outage(
    cluster: &Cluster,
    tenants: &[load::Tenant],
    count: u32,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for t in tenants {
        http.post(format!("{}/sim/v1/faults", cluster.network_url()?))
            .json(&serde_json::json!({"phone_number_id": t.number, "next": count, "always": false}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Ctrl-C drops the run, and with it the cluster and the broker: their children are killed.
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
    let rate = env_num("CHAOS_RATE", 100);
    let pause = Duration::from_secs(env_num("CHAOS_PAUSE_SECS", 8));
    let down = Duration::from_secs(env_num("CHAOS_DOWN_SECS", 15));
    let tenant_count = env_num("CHAOS_TENANTS", 4) as usize;
    let bin_dir = PathBuf::from(std::env::var("CHAOS_BIN_DIR").unwrap_or("target/debug".into()));
    let scope = Scope::new();
    let dir = std::env::current_dir()?.join("var/chaos").join(scope.id());
    let infra = infra().await?;

    let mut broker = Broker::start(dir.join("broker")).await?;
    finestra_platform::kafka::ensure_topics(&broker.brokers(), &scope.topics().all(), 4).await?;
    let tenants = Arc::new(load::setup_tenants(&scope, tenant_count).await?);
    let operator_key = scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    let mut cluster = Cluster::new(ClusterSpec {
        scope: scope.clone(),
        brokers: broker.brokers(),
        bin_dir: bin_dir.clone(),
        log_dir: dir.join("logs"),
        operator_key,
        provider_token: format!("token-{}", scope.id()),
        grace_secs: 10,
    })?;
    let started = Instant::now();
    log(
        started,
        &format!(
            "starting the services (logs in {})",
            dir.join("logs").display()
        ),
    );
    cluster.start_all().await?;
    let windows_before = load::open_windows(&cluster, &tenants).await?;
    log(
        started,
        &format!("{} windows open before the faults", windows_before.len()),
    );

    let generator = Generator::start(
        &cluster.grpc_url("dispatch")?,
        tenants.clone(),
        rate,
        "chaos",
    )
    .await?;
    let mut faults = Vec::new();
    tokio::time::sleep(pause).await;
    for service in ["ingest", "window", "billing", "dispatch", "accounts"] {
        log(
            started,
            &format!("kill -9 {service}; down for {} s", down.as_secs()),
        );
        cluster.kill9(service).await?;
        tokio::time::sleep(down).await;
        cluster.start(service).await?;
        log(started, &format!("{service} restarted and ready"));
        faults.push(format!("kill -9 {service}"));
        tokio::time::sleep(pause).await;
    }
    log(
        started,
        "network outage: every number's next 300 sends answer 500",
    );
    network_outage(&cluster, &tenants, 300).await?;
    faults.push("network outage (300 sends per number answered 500)".into());
    tokio::time::sleep(pause).await;
    log(
        started,
        "FLUSHALL: Redis loses every hot window, wallet, counter and lease",
    );
    let mut redis = infra.redis.clone();
    redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
    faults.push("FLUSHALL redis".into());
    tokio::time::sleep(pause).await;
    log(started, "kill -9 the broker; down for 3 s");
    broker.kill9_and_restart(Duration::from_secs(3)).await?;
    log(started, "broker restarted");
    faults.push("kill -9 broker".into());
    tokio::time::sleep(pause).await;
    let load_seconds = started.elapsed().as_secs_f64();
    log(
        started,
        "load stopped; waiting for the senders still retrying",
    );
    let seen = generator.stop().await?;
    let accepted_ids = seen.accepted_ids.lock().await.clone();
    let issued = seen.issued.load(std::sync::atomic::Ordering::Relaxed);
    let gave_up = seen.gave_up.load(std::sync::atomic::Ordering::Relaxed);
    let retried = seen
        .retried_calls
        .load(std::sync::atomic::Ordering::Relaxed);
    let errors = seen.errors_by_code.lock().await.clone();
    log(
        started,
        &format!(
            "{issued} sends issued, {} accepted, {gave_up} never accepted; waiting until all settle",
            accepted_ids.len()
        ),
    );

    let verdict = load::settle_and_check(
        &cluster,
        &tenants,
        &accepted_ids,
        &windows_before,
        Duration::from_secs(300),
        "chaos",
    )
    .await?;
    cluster.stop_all().await?;
    drop(broker);
    let reconcile = std::process::Command::new(bin_dir.join("finestra-billing"))
        .arg("reconcile")
        .envs(finestra_testkit::store_env())
        .env("FINESTRA_LOG", "warn")
        .status()?;

    println!(
        "chaos (this machine; every service its own process; a tansu SQLite broker of its own)"
    );
    println!(
        "  load held: {rate} sends/s for {load_seconds:.0} s; {issued} issued, {} accepted, {gave_up} never accepted; {retried} calls retried with the same key ({errors:?})",
        verdict.accepted
    );
    println!(
        "  faults injected ({}): {}",
        faults.len(),
        faults.join(", ")
    );
    println!(
        "  outcome: {} delivered, {} failed, {} lost (must be 0), {} duplicated messages (must be 0)",
        verdict.delivered, verdict.failed, verdict.lost, verdict.duplicate_messages
    );
    println!(
        "  charges: {} for {} delivered paid messages; {} double charges (must be 0), {} failed messages charged (must be 0), {} uncharged (must be 0)",
        verdict.charges,
        verdict.paid_delivered,
        verdict.double_charges,
        verdict.failed_charged,
        verdict.uncharged
    );
    println!(
        "  windows: {} checked after the faults, {} answer differently (must be 0)",
        verdict.windows_checked, verdict.windows_differing
    );
    println!(
        "  finestra-billing reconcile: exit {}",
        reconcile.code().unwrap_or(-1)
    );
    let passed = verdict.passed() && reconcile.success() && gave_up == 0;
    let json = serde_json::json!({
        "rate": rate, "load_seconds": load_seconds, "issued": issued, "never_accepted": gave_up,
        "retried_calls": retried, "errors_by_code": errors, "faults": faults,
        "verdict": verdict, "reconcile_exit": reconcile.code(), "passed": passed,
    });
    std::fs::create_dir_all("var")?;
    std::fs::write("var/chaos.json", serde_json::to_string_pretty(&json)?)?;
    println!(
        "  figures written to var/chaos.json; {}",
        if passed { "PASSED" } else { "FAILED" }
    );
    anyhow::ensure!(
        passed,
        "the chaos run found lost, doubled or unbalanced work"
    );
    Ok(())
}
