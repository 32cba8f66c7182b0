use finestra_platform::telemetry;

// glibc's malloc was a fifth of the CPU of a loaded service (perf); mimalloc is cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_accounts::AccountsConfig::from_env()?;
    let telemetry = telemetry::init("finestra-accounts", config.common.otlp_endpoint.as_deref())?;
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("accounts", grace, telemetry, |shutdown| {
        finestra_accounts::start(config, shutdown)
    })
    .await?;
    Ok(())
}
