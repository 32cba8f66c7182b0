use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, stores, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-dispatch` serves; `finestra-dispatch migrate` applies the schema and exits.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_dispatch::DispatchConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-dispatch", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_dispatch::pg::migrate(&pool).await?;
        tracing::info!("dispatch migrations applied");
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running =
        match finestra_dispatch::start(config, Arc::new(SystemClock), shutdown.clone()).await {
            Ok(running) => running,
            Err(finestra_platform::StartError::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    shutdown.wait().await;
    finestra_platform::service::drain_and_exit(running, grace, "dispatch", _telemetry).await
}
