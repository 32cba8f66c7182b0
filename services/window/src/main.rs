use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, stores, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-window` serves; `finestra-window migrate` applies the schema and exits (for an
/// init container or `make up`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_window::WindowConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-window", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_window::pg::migrate(&pool).await?;
        tracing::info!("window migrations applied");
        return Ok(());
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running =
        match finestra_window::start(config, Arc::new(SystemClock), shutdown.clone()).await {
            Ok(running) => running,
            // SIGTERM while waiting for a dependency: nothing to drain.
            Err(finestra_platform::StartError::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    shutdown.wait().await;
    finestra_platform::service::drain_and_exit(running, grace, "window", _telemetry).await
}
