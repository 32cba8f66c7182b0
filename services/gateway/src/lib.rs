//! The gateway: the Cloud API's business-facing HTTP surface over Finestra (docs/gateway.md).
//! Code written against the Cloud API works by changing its base URL and token. It keeps no
//! state of its own: each request becomes a call to dispatch or accounts under the caller's own
//! key, so keys, scopes and tenant isolation are exactly the gRPC API's.

pub mod errors;
pub mod http;
pub mod media;
pub mod messages;
pub mod numbers;
pub mod owners;
pub mod templates;

use std::net::SocketAddr;
use std::time::Duration;

use finestra_platform::health::Dependency;
use finestra_platform::service::{self, Observed};
use finestra_platform::{Running, Shutdown, StartError, stores};
use finestra_proto::v1::accounts_service_client::AccountsServiceClient;
use finestra_proto::v1::dispatch_service_client::DispatchServiceClient;
use finestra_registry::Registry;
use tonic::transport::Channel;

finestra_platform::settings! {
    /// The gateway's settings (docs/configuration.md).
    pub struct GatewayConfig: common("0.0.0.0:7056", "0.0.0.0:9106") {
        /// The Cloud API HTTP listener.
        pub http_addr: SocketAddr = ("GATEWAY_HTTP_ADDR", "0.0.0.0:8088"),
        /// This listener's address as clients reach it, the base of media download URLs;
        /// empty: `http://` and the address it listens on (127.0.0.1 for a wildcard one).
        pub public_url: String = ("GATEWAY_PUBLIC_URL", ""),
        /// Dispatch's gRPC address (messages, media, read receipts).
        pub dispatch_url: String = ("GATEWAY_DISPATCH_URL", "http://127.0.0.1:7054"),
        /// Accounts' gRPC address (templates, numbers).
        pub accounts_url: String = ("GATEWAY_ACCOUNTS_URL", "http://127.0.0.1:7050"),
        /// The largest JSON body taken; larger ones are refused with the Cloud API's error.
        pub max_json_bytes: usize = ("GATEWAY_MAX_JSON_BYTES", "262144"),
        /// The largest media upload taken (the Cloud API's own limit is 100 MB).
        pub max_upload_bytes: usize = ("GATEWAY_MAX_UPLOAD_BYTES", "104857600"),
        /// Threads of the async runtime.
        pub worker_threads: usize = ("GATEWAY_WORKER_THREADS", "1"),
        /// How long a number's or business account's owner is cached.
        pub owner_cache_ttl: Duration = ("GATEWAY_OWNER_CACHE_TTL_MS", "10000"),
    }
}

/// What the handlers share.
pub struct App {
    pub dispatch: DispatchServiceClient<Channel>,
    pub accounts: AccountsServiceClient<Channel>,
    pub owners: owners::Owners,
    pub auth: finestra_platform::auth::Authenticator,
    pub public_url: String,
    pub max_json_bytes: usize,
    pub max_upload_bytes: usize,
    /// Uploads being read at once (each holds its file in memory).
    pub uploads: tokio::sync::Semaphore,
}

/// Uploads read at once.
const UPLOADS_AT_ONCE: usize = 4;

pub const SERVICE_NAME: &str = "finestra.v1.Gateway";

fn channel(name: &str, url: &str) -> Result<Channel, StartError> {
    Ok(Channel::from_shared(url.to_owned())
        .map_err(|e| finestra_platform::config::ConfigError::Invalid {
            name: name.into(),
            value: url.to_owned(),
            reason: e.to_string(),
        })?
        .connect_lazy())
}

/// Starts the HTTP listener, gRPC health and the admin endpoint.
pub async fn start(config: GatewayConfig, shutdown: Shutdown) -> Result<Running, StartError> {
    let pool = stores::postgres_lazy(&config.common)?;
    let auth = finestra_registry::authenticator(pool.clone());
    let invalidation_task = finestra_platform::auth::spawn_invalidation(
        auth.clone(),
        &config.common.kafka_brokers,
        &config.common.topics.accounts,
        shutdown.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let http_addr = listener.local_addr()?;
    let public_url = if config.public_url.is_empty() {
        // A wildcard listener is reached on this machine as 127.0.0.1.
        let mut reachable = http_addr;
        if reachable.ip().is_unspecified() {
            reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{reachable}")
    } else {
        config.public_url.trim_end_matches('/').to_owned()
    };
    let app = std::sync::Arc::new(App {
        dispatch: DispatchServiceClient::new(channel(
            "FINESTRA_GATEWAY_DISPATCH_URL",
            &config.dispatch_url,
        )?)
        .max_decoding_message_size(config.max_upload_bytes + 4096)
        .max_encoding_message_size(config.max_upload_bytes + 4096),
        accounts: AccountsServiceClient::new(channel(
            "FINESTRA_GATEWAY_ACCOUNTS_URL",
            &config.accounts_url,
        )?),
        owners: owners::Owners::new(Registry::new(pool.clone()), config.owner_cache_ttl),
        auth,
        public_url,
        max_json_bytes: config.max_json_bytes,
        max_upload_bytes: config.max_upload_bytes,
        uploads: tokio::sync::Semaphore::new(UPLOADS_AT_ONCE),
    });

    let Observed {
        health_service,
        admin,
    } = service::observe(
        SERVICE_NAME,
        config.common.metrics_addr,
        vec![Dependency::Postgres(pool)],
        &shutdown,
    )
    .await?;
    let (incoming, grpc_addr) = finestra_platform::grpc::bind(config.common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service);
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        // In-flight requests finish before the server returns.
        let served = axum::serve(listener, http::router(app))
            .with_graceful_shutdown(async move { http_shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gateway listener failed");
        }
    });

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, Some(http_addr));
    running.own("grpc", grpc_task);
    running.own("http", http_task);
    running.own("auth-invalidation", invalidation_task);
    tracing::info!(%http_addr, %grpc_addr, %metrics_addr, "gateway started");
    Ok(running)
}
