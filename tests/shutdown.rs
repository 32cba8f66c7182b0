//! Graceful shutdown of every service binary under load. SIGTERM makes a service answer
//! `NOT_SERVING`, stop taking work, finish what it holds, flush its batches, commit its offsets
//! and exit 0 within the grace period. Each service is stopped that way and started again in
//! turn while an open-loop SendMessage load runs; afterwards every accepted message is
//! DELIVERED or FAILED exactly once and nothing is charged twice.

use std::sync::Arc;
use std::time::Duration;

use finestra_e2e::cluster::{Cluster, ClusterSpec};
use finestra_e2e::load::{self, Generator};
use finestra_platform::auth::{Owner, Scope as KeyScope};
use finestra_testkit::{Scope, infra};

const GRACE_SECS: u64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_each_service_under_load_exits_cleanly_and_loses_nothing() -> anyhow::Result<()>
{
    let infra = infra().await?;
    let scope = Scope::new();
    scope.create_topics().await?;
    let tenants = Arc::new(load::setup_tenants(&scope, 2).await?);
    let bin_dir = finestra_testkit::workspace_binary("finestra-dispatch")?
        .parent()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    let mut cluster = Cluster::new(ClusterSpec {
        scope: scope.clone(),
        brokers: infra.brokers.clone(),
        bin_dir,
        log_dir: std::env::temp_dir().join(format!("finestra-shutdown-{}", scope.id())),
        operator_key: scope.key(Owner::Operator, &[KeyScope::Send]).await?,
        provider_token: format!("token-{}", scope.id()),
        grace_secs: GRACE_SECS,
    })?;
    cluster.start_all().await?;
    let windows_before = load::open_windows(&cluster, &tenants).await?;

    let generator = Generator::start(
        &cluster.grpc_url("dispatch")?,
        tenants.clone(),
        50,
        "shutdown",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The simulator stands for the network (not a Finestra service): it keeps running.
    for service in ["ingest", "window", "billing", "dispatch", "accounts"] {
        let (status, took) = cluster.terminate(service).await?;
        assert!(
            status.success(),
            "{service} exited with {status} after SIGTERM"
        );
        assert!(
            took < Duration::from_secs(GRACE_SECS),
            "{service} took {took:?} to drain"
        );
        cluster.start(service).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let seen = generator.stop().await?;
    let accepted = seen.accepted_ids.lock().await.clone();
    assert_eq!(
        seen.gave_up.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every send was accepted in the end"
    );
    assert!(
        accepted.len() > 100,
        "the load ran: {} accepted",
        accepted.len()
    );

    let verdict = load::settle_and_check(
        &cluster,
        &tenants,
        &accepted,
        &windows_before,
        Duration::from_secs(120),
        "shutdown",
    )
    .await?;
    assert!(verdict.passed(), "{verdict:#?}");
    assert_eq!(verdict.lost, 0);
    assert_eq!(verdict.double_charges, 0);
    assert_eq!(verdict.charges, verdict.paid_delivered);

    // And every one stops cleanly at the end too.
    for service in [
        "dispatch",
        "simulator",
        "billing",
        "window",
        "ingest",
        "accounts",
    ] {
        let (status, _) = cluster.terminate(service).await?;
        assert!(status.success(), "{service} exited with {status}");
    }
    Ok(())
}
