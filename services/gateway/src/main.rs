use finestra_platform::telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = finestra_gateway::GatewayConfig::from_env()?;
    // A proxy's work per request is small: on few cores one runtime thread spends less on
    // waking others than more threads would gain (docs/gateway.md); replicas add cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let telemetry =
            telemetry::init("finestra-gateway", config.common.otlp_endpoint.as_deref())?;
        let grace = config.common.shutdown_grace;
        finestra_platform::service::serve_until_signalled(
            "gateway",
            grace,
            telemetry,
            |shutdown| finestra_gateway::start(config, shutdown),
        )
        .await?;
        Ok(())
    })
}
