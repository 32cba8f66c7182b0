//! Ingest: provider webhooks in, events out. Answers the provider 200 only after the broker
//! acknowledged every event of the request, so a crash before that makes the provider retry
//! and nothing is lost; event ids are derived from provider ids, so a retry duplicates nothing
//! downstream.

pub mod grpc;
pub mod http;
pub mod mapping;
pub mod numbers;
pub mod publish;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_platform::auth::RequireKey;
use finestra_platform::health::Dependency;
use finestra_platform::service::{self, Observed};
use finestra_platform::{Running, Shutdown, StartError, Topics, kafka, stores};
use finestra_proto::v1::ingest_service_server::IngestServiceServer;
use finestra_registry::Registry;
use rdkafka::producer::FutureProducer;

finestra_platform::settings! {
    /// Ingest's settings (docs/configuration.md).
    pub struct IngestConfig: common("0.0.0.0:7051", "0.0.0.0:9101") {
        /// The webhook HTTP listener.
        pub http_addr: SocketAddr = ("HTTP_ADDR", "0.0.0.0:8080"),
        /// The token the provider echoes in the subscription handshake.
        pub verify_token: String = ("WEBHOOK_VERIFY_TOKEN", "finestra-dev-verify-token"),
        /// How long a number lookup is cached (a new number is seen within this time).
        pub number_cache_ttl: Duration = ("NUMBER_CACHE_TTL_MS", "5000"),
    }
}

/// What the handlers share.
pub struct App {
    pub directory: numbers::NumberDirectory,
    pub producer: FutureProducer,
    pub topics: Topics,
    pub clock: Arc<dyn Clock>,
    pub verify_token: String,
}

pub const SERVICE_NAME: &str = "finestra.v1.IngestService";

/// Starts the webhook listener, the gRPC server and the admin endpoint.
pub async fn start(
    config: IngestConfig,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    // Connects on first use: the service starts and says NOT_SERVING while Postgres is down.
    let pool = stores::postgres_lazy(&config.common)?;
    let authenticator = finestra_registry::authenticator(pool.clone());
    let invalidation_task = finestra_platform::auth::spawn_invalidation(
        authenticator.clone(),
        &config.common.kafka_brokers,
        &config.common.topics.accounts,
        shutdown.clone(),
    )?;
    let producer = kafka::producer(&config.common.kafka_brokers)?;
    let app = Arc::new(App {
        directory: numbers::NumberDirectory::new(
            Registry::new(pool.clone()),
            config.number_cache_ttl,
        ),
        producer: producer.clone(),
        topics: config.common.topics.clone(),
        clock,
        verify_token: config.verify_token.clone(),
    });

    let Observed {
        health_service,
        admin,
    } = service::observe(
        SERVICE_NAME,
        config.common.metrics_addr,
        vec![
            Dependency::Postgres(pool),
            Dependency::Kafka(producer.clone()),
        ],
        &shutdown,
    )
    .await?;

    let (incoming, grpc_addr) = finestra_platform::grpc::bind(config.common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(finestra_platform::grpc::reflection()?)
        .add_service(RequireKey::new(
            IngestServiceServer::new(grpc::IngestApi { app: app.clone() }),
            authenticator,
        ));
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let http_addr = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        // In-flight requests finish (their events are acked) before the server returns.
        let served = axum::serve(listener, http::router(app))
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "webhook listener failed");
        }
        // Whatever is still queued in the producer is delivered before exit.
        let flushed = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            producer.flush(Duration::from_secs(10))
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::error!("producer flush at shutdown failed");
        }
    });

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, Some(http_addr));
    running.own("grpc", grpc_task);
    running.own("webhooks", http_task);
    running.own("auth-invalidation", invalidation_task);
    tracing::info!(%http_addr, %grpc_addr, %metrics_addr, "ingest started");
    Ok(running)
}
