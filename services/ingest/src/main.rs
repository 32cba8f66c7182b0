use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_ingest::IngestConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-ingest", config.common.otlp_endpoint.as_deref())?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running =
        match finestra_ingest::start(config, Arc::new(SystemClock), shutdown.clone()).await {
            Ok(running) => running,
            // SIGTERM while waiting for a dependency: nothing to drain.
            Err(finestra_platform::StartError::Interrupted) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
    shutdown.wait().await;
    finestra_platform::service::drain_and_exit(running, grace, "ingest", _telemetry).await
}
