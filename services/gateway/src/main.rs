use finestra_platform::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = finestra_gateway::GatewayConfig::from_env()?;
    let telemetry = telemetry::init("finestra-gateway", config.common.otlp_endpoint.as_deref())?;
    let grace = config.common.shutdown_grace;
    finestra_platform::service::serve_until_signalled("gateway", grace, telemetry, |shutdown| {
        finestra_gateway::start(config, shutdown)
    })
    .await?;
    Ok(())
}
