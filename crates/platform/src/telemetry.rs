//! Tracing: human-readable or JSON logs (`FINESTRA_LOG`, `FINESTRA_LOG_FORMAT`), plus an
//! OpenTelemetry OTLP exporter when `FINESTRA_OTLP_ENDPOINT` is set.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogSettings;

/// Keeps the exporter alive; flushes spans on drop.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Shutdown blocks until spans are flushed; off the async runtime's threads it
            // cannot deadlock a current-thread runtime.
            let flushed = std::thread::spawn(move || p.shutdown()).join();
            if !matches!(flushed, Ok(Ok(()))) {
                eprintln!("flushing traces failed");
            }
        }
    }
}

/// Installs the global subscriber for a binary. Safe to call when one is installed already
/// (tests): the existing one stays.
pub fn init(
    service_name: &'static str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<TelemetryGuard> {
    let log = LogSettings::from_env()?;
    let filter = EnvFilter::try_new(&log.filter)?;
    let json = log.format == "json";
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(service_name).build())
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    // Logs go to stderr (stdout stays free for a command's output); colours only on a terminal.
    let installed = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init()
    };
    if let Err(e) = installed {
        eprintln!("tracing already initialised: {e}");
    }
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    Ok(TelemetryGuard { provider })
}
