use std::sync::Arc;

use finestra_platform::{SystemClock, stores, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-billing` serves; `finestra-billing migrate` applies the schema (and the default
/// rate card) and exits; `finestra-billing reconcile [--tenant T]` checks the books offline.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_billing::BillingConfig::from_env()?.check()?;
    let telemetry = telemetry::init("finestra-billing", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_billing::pg::migrate(&pool).await?;
        finestra_billing::pg::ensure_default_card(&pool).await?;
        tracing::info!("billing migrations applied");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("reconcile") {
        // Offline, for CI and operators without a running service: exits non-zero on any
        // difference. `--tenant <id>` limits it to one tenant.
        let args: Vec<String> = std::env::args().collect();
        let tenant = args
            .iter()
            .position(|a| a == "--tenant")
            .and_then(|i| args.get(i + 1))
            .cloned();
        let pool = stores::postgres(&config.common).await?;
        let hot = finestra_billing::hot::HotWallets::new(
            stores::redis(&config.common).await?,
            &config.common.redis_prefix,
            config.wallet_cache,
        );
        let report = finestra_billing::reconcile::run(&pool, &hot, tenant.as_deref()).await?;
        println!(
            "reconcile: {} tenants, {} ledger entries, {} captured messages, {} open reservations",
            report.tenants_checked,
            report.ledger_entries,
            report.captured_messages,
            report.open_reservations
        );
        for d in &report.differences {
            println!(
                "DIFFERENCE {}: {} (expected {}, found {})",
                d.tenant_id, d.check, d.expected, d.actual
            );
        }
        anyhow::ensure!(
            report.differences.is_empty(),
            "{} differences",
            report.differences.len()
        );
        println!("reconcile: the books balance");
        return Ok(());
    }
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("billing", grace, telemetry, |shutdown| {
        finestra_billing::start(config, Arc::new(SystemClock), shutdown)
    })
    .await?;
    Ok(())
}
