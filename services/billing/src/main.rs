use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, stores, telemetry};

/// `finestra-billing` serves; `finestra-billing migrate` applies the schema (and the default
/// rate card) and exits.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_billing::BillingConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-billing", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_billing::pg::migrate(&pool).await?;
        finestra_billing::pg::ensure_default_card(&pool).await?;
        tracing::info!("billing migrations applied");
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running =
        match finestra_billing::start(config, Arc::new(SystemClock), shutdown.clone()).await {
            Ok(running) => running,
            Err(finestra_platform::StartError::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    shutdown.wait().await;
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        anyhow::bail!("drain did not finish within {grace:?}");
    }
    tracing::info!("billing stopped");
    Ok(())
}
