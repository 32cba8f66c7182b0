//! `make bench-campaign`: a campaign of `BENCH_RECIPIENTS` (100,000) contacts through the
//! simulator, every service its own process (the release binaries) against its own tansu broker
//! (SQLite engine), the machine's Postgres and Redis. The contacts arrive by `ImportContacts`
//! (a CSV streamed in 1 MiB chunks); the number's throughput is set to `BENCH_RATE` (1,000)
//! messages a second. Before it, `BENCH_IMPORT_ROWS` (1,000,000) other contacts are imported
//! in one file, for the import's rate and the memory it takes. Printed: the imports' times, the
//! quote's time (QuoteCampaign over every
//! recipient), the runner's rate from its first to its last accepted recipient against the
//! number's, the time until every message settled, and dispatch's resident memory before and at
//! its peak during the run (`/proc/<pid>/status` VmRSS). Written to `var/bench-campaign.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use finestra_e2e::cluster::{Broker, Cluster, ClusterSpec};
use finestra_e2e::env_num;
use finestra_e2e::load;
use finestra_e2e::procstat::rss;
use finestra_platform::auth::{AuthedChannel, Owner, Scope as KeyScope};
use finestra_proto::v1;
use finestra_proto::v1::campaign_service_client::CampaignServiceClient;
use finestra_proto::v1::contacts_service_client::ContactsServiceClient;
use finestra_testkit::{Scope, infra};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A CSV of `rows` contacts numbered from `first`, in 1 MiB chunks of one import.
fn csv_chunks(
    tenant: &str,
    import_id: &str,
    first: i64,
    rows: i64,
    tag: &str,
) -> Vec<v1::ImportContactsChunk> {
    let mut file = String::from("phone,name,tags,attr.order\n");
    for i in first..first + rows {
        file.push_str(&format!("+39377{i:07},Cliente {i},{tag},A-{i}\n"));
    }
    file.as_bytes()
        .chunks(1024 * 1024)
        .enumerate()
        .map(|(i, data)| v1::ImportContactsChunk {
            tenant_id: if i == 0 { tenant.into() } else { String::new() },
            import_id: if i == 0 {
                import_id.into()
            } else {
                String::new()
            },
            default_calling_code: String::new(),
            data: data.to_vec(),
        })
        .collect()
}

async fn progress(
    client: &CampaignServiceClient<AuthedChannel>,
    tenant: &str,
) -> anyhow::Result<(String, v1::CampaignProgress)> {
    let c = client
        .clone()
        .get_campaign(v1::GetCampaignRequest {
            tenant_id: tenant.into(),
            campaign_id: "bench".into(),
        })
        .await?
        .into_inner();
    Ok((c.state, c.progress.unwrap_or_default()))
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
    let recipients = env_num("BENCH_RECIPIENTS", 100_000) as i64;
    let rate = env_num("BENCH_RATE", 1_000) as i64;
    let bin_dir = PathBuf::from(std::env::var("BENCH_BIN_DIR").unwrap_or("target/release".into()));
    let scope = Scope::new();
    let dir = std::env::current_dir()?
        .join("var/bench-campaign")
        .join(scope.id());
    let infra = infra().await?;

    let broker = Broker::start(dir.join("broker")).await?;
    finestra_platform::kafka::ensure_topics(&broker.brokers(), &scope.topics().all(), 4).await?;
    let tenants = load::setup_tenants(&scope, 1).await?;
    let tenant = &tenants[0];
    sqlx::query(
        "UPDATE accounts.numbers SET throughput_per_second = $2 WHERE phone_number_id = $1",
    )
    .bind(&tenant.number)
    .bind(i32::try_from(rate)?)
    .execute(&infra.pool)
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
        "[bench-campaign] starting the services (logs in {})",
        dir.join("logs").display()
    );
    cluster.start_all().await?;
    let dispatch_url = cluster.grpc_url("dispatch")?;
    let dispatch_pid = cluster
        .pid("dispatch")
        .ok_or_else(|| anyhow::anyhow!("dispatch has no pid"))?;
    let key = scope
        .tenant_key("chaos0", &[KeyScope::Send, KeyScope::Read])
        .await?;
    let channel = finestra_testkit::authed_channel(dispatch_url.clone(), &key).await?;
    let contacts =
        ContactsServiceClient::new(channel.clone()).max_encoding_message_size(8 * 1024 * 1024);
    let campaigns = CampaignServiceClient::new(channel);

    let bulk_rows = env_num("BENCH_IMPORT_ROWS", 1_000_000) as i64;
    eprintln!("[bench-campaign] importing {bulk_rows} contacts in one file");
    let chunks = csv_chunks(&tenant.id, "bulk", 0, bulk_rows, "bulk");
    let rss_before_import = rss(dispatch_pid).unwrap_or(0);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss(dispatch_pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let bulk = contacts
        .clone()
        .import_contacts(futures::stream::iter(chunks))
        .await?
        .into_inner();
    let bulk_seconds = started.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_import_peak = sampler.await?.max(rss_before_import);
    anyhow::ensure!(bulk.created == bulk_rows as u64, "imported {bulk:?}");

    eprintln!("[bench-campaign] importing the campaign's {recipients} contacts");
    let chunks = csv_chunks(&tenant.id, "bench", bulk_rows, recipients, "bench");
    let started = Instant::now();
    let imported = contacts
        .clone()
        .import_contacts(futures::stream::iter(chunks))
        .await?
        .into_inner();
    let import_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        imported.created == recipients as u64,
        "imported {imported:?}"
    );

    campaigns
        .clone()
        .create_campaign(v1::CreateCampaignRequest {
            tenant_id: tenant.id.clone(),
            campaign_id: "bench".into(),
            name: "bench".into(),
            phone_number_id: tenant.number.clone(),
            template_name: "chaos_util".into(),
            template_language: "it".into(),
            parameters: vec!["{{order}}".into()],
            filter: Some(v1::ContactFilter {
                tags: vec!["bench".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    eprintln!("[bench-campaign] quoting");
    let started = Instant::now();
    let quote = campaigns
        .clone()
        .quote_campaign(v1::QuoteCampaignRequest {
            tenant_id: tenant.id.clone(),
            campaign_id: "bench".into(),
            detail: false,
        })
        .await?
        .into_inner();
    let quote_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(quote.recipients == recipients, "quoted {quote:?}");

    let rss_before = rss(dispatch_pid).unwrap_or(0);
    let mut rss_peak = rss_before;
    eprintln!("[bench-campaign] running at {rate}/s");
    let launched = Instant::now();
    campaigns
        .clone()
        .launch_campaign(v1::CampaignActionRequest {
            tenant_id: tenant.id.clone(),
            campaign_id: "bench".into(),
        })
        .await?;
    let mut first: Option<(Instant, i64)> = None;
    let last;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss(dispatch_pid).unwrap_or(0));
        let (state, p) = progress(&campaigns, &tenant.id).await?;
        if first.is_none() && p.accepted > 0 {
            first = Some((Instant::now(), p.accepted));
        }
        eprint!(
            "\r[bench-campaign]   {state} accepted {:>7} delivered {:>7} queued {:>7}   ",
            p.accepted, p.delivered, p.queued
        );
        if p.queued == 0 && state == "COMPLETED" {
            last = (Instant::now(), p.accepted);
            break;
        }
        anyhow::ensure!(
            state == "RUNNING" || state == "COMPLETED",
            "the campaign stopped: {state}"
        );
        anyhow::ensure!(
            launched.elapsed() < Duration::from_secs(900),
            "the campaign did not complete within 15 minutes"
        );
    }
    eprintln!();
    let (first_at, first_count) = first.unwrap_or((launched, 0));
    let run_seconds = last.0.duration_since(first_at).as_secs_f64();
    let runner_rate = (last.1 - first_count) as f64 / run_seconds.max(0.001);
    load::settle(
        &infra.pool,
        std::slice::from_ref(&tenant.id),
        "bench-campaign",
    )
    .await?;
    let settled_seconds = launched.elapsed().as_secs_f64();
    let (_, done) = progress(&campaigns, &tenant.id).await?;
    cluster.stop_all().await?;
    let differences = load::reconcile_differences(std::slice::from_ref(&tenant.id)).await?;

    println!(
        "bench-campaign (this machine: {} cores; every service its own process; Postgres 15, Redis 7, tansu 0.6 SQLite)",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "  import of {bulk_rows} contacts in one file (ImportContacts, 1 MiB chunks): {bulk_seconds:.1} s = {:.0} rows/s; dispatch resident memory {:.0} MiB before, {:.0} MiB at its peak (+{:.0} MiB)",
        bulk_rows as f64 / bulk_seconds,
        mib(rss_before_import),
        mib(rss_import_peak),
        mib(rss_import_peak.saturating_sub(rss_before_import))
    );
    println!(
        "  import of the campaign's {recipients} contacts: {import_seconds:.1} s = {:.0} rows/s",
        recipients as f64 / import_seconds
    );
    println!(
        "  quote of {recipients} recipients: {:.2} s ({} charged, total {} µ{})",
        quote_seconds, quote.charged, quote.total_price_micros, quote.currency
    );
    println!(
        "  runner: {:.0} recipients/s from the first to the last accepted, {:.1} % of the number's {rate}/s",
        runner_rate,
        100.0 * runner_rate / rate as f64
    );
    println!(
        "  every message settled {settled_seconds:.1} s after the launch: {} delivered, {} failed",
        done.delivered, done.failed
    );
    println!(
        "  dispatch resident memory: {:.0} MiB before the launch, {:.0} MiB at its peak during the run (+{:.0} MiB)",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_peak.saturating_sub(rss_before))
    );
    println!("  reconcile differences after the run: {differences}");
    let json = serde_json::json!({
        "recipients": recipients, "rate": rate,
        "import_seconds": import_seconds, "quote_seconds": quote_seconds,
        "bulk_import_rows": bulk_rows, "bulk_import_seconds": bulk_seconds,
        "dispatch_rss_before_import": rss_before_import, "dispatch_rss_import_peak": rss_import_peak,
        "runner_per_s": runner_rate, "settled_seconds": settled_seconds,
        "dispatch_rss_before": rss_before, "dispatch_rss_peak": rss_peak,
        "delivered": done.delivered, "failed": done.failed,
        "reconcile_differences": differences,
    });
    std::fs::create_dir_all("var")?;
    std::fs::write(
        "var/bench-campaign.json",
        serde_json::to_string_pretty(&json)?,
    )?;
    anyhow::ensure!(
        differences == 0,
        "the books did not reconcile after the benchmark"
    );
    Ok(())
}
