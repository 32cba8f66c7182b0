use std::sync::Arc;

use finestra_platform::{SystemClock, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_ingest::IngestConfig::from_env()?;
    let telemetry = telemetry::init("finestra-ingest", config.common.otlp_endpoint.as_deref())?;
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("ingest", grace, telemetry, |shutdown| {
        finestra_ingest::start(config, Arc::new(SystemClock), shutdown)
    })
    .await?;
    Ok(())
}
