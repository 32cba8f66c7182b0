use finestra_platform::{Shutdown, telemetry};

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_accounts::AccountsConfig::from_env()?;
    let _telemetry = telemetry::init("finestra-accounts", config.common.otlp_endpoint.as_deref())?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals()?;
    let grace = config.common.shutdown_grace;
    let running = match finestra_accounts::start(config, shutdown.clone()).await {
        Ok(running) => running,
        Err(finestra_platform::StartError::Interrupted) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    shutdown.wait().await;
    finestra_platform::service::drain_and_exit(running, grace, "accounts", _telemetry).await
}
