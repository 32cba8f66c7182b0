use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_ingest::IngestConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-ingest", config.common.otlp_endpoint.as_deref())?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running = finestra_ingest::start(config, Arc::new(SystemClock), shutdown.clone()).await?;
    shutdown.wait().await;
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        anyhow::bail!("drain did not finish within {grace:?}");
    }
    tracing::info!("ingest stopped");
    Ok(())
}
