use std::sync::Arc;

use finestra_platform::{SystemClock, stores, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `finestra-dispatch` serves; `finestra-dispatch migrate` applies the schema and exits.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_dispatch::DispatchConfig::from_env()?.check()?;
    let telemetry = telemetry::init("finestra-dispatch", config.common.otlp_endpoint.as_deref())?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let pool = stores::postgres(&config.common).await?;
        finestra_dispatch::pg::migrate(&pool).await?;
        tracing::info!("dispatch migrations applied");
        return Ok(());
    }
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("dispatch", grace, telemetry, |shutdown| {
        finestra_dispatch::start(config, Arc::new(SystemClock), shutdown)
    })
    .await?;
    Ok(())
}
