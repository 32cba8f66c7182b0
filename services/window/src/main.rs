use std::sync::Arc;

use finestra_platform::{SystemClock, stores, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-window` serves; `finestra-window migrate` applies the schema and exits (for an
/// init container or `make up`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_window::WindowConfig::from_env()?;
    let telemetry = telemetry::init("finestra-window", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_window::pg::migrate(&pool).await?;
        tracing::info!("window migrations applied");
        return Ok(());
    }
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("window", grace, telemetry, |shutdown| {
        finestra_window::start(config, Arc::new(SystemClock), shutdown)
    })
    .await?;
    Ok(())
}
