use std::sync::Arc;

use finestra_platform::{Shutdown, SystemClock, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-simulator`: the default messaging network for `make up`, the demo and the
/// benchmarks.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_simulator::SimConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-simulator", None)?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let running =
        finestra_simulator::start(config, Arc::new(SystemClock), shutdown.clone()).await?;
    shutdown.wait().await;
    running.task.await?;
    tracing::info!("simulator stopped");
    Ok(())
}
