//! Accounts: the control plane of partners, tenants, numbers and API keys. It owns the
//! `accounts` schema (migrations in `crates/registry`, shared with the read models of the
//! other services) and announces changes that caches must drop on `finestra.accounts.v1`.

pub mod api;
pub mod convert;
pub mod health;
pub mod reviews;
pub mod submissions;
pub mod templates;

use finestra_platform::auth::RequireKey;
use finestra_platform::health::Dependency;
use finestra_platform::service::{self, Observed, retry_until_ready};
use finestra_platform::{Running, Shutdown, StartError, kafka, stores};
use finestra_proto::v1::accounts_service_server::AccountsServiceServer;

finestra_platform::settings! {
    /// The accounts service's settings (docs/configuration.md).
    pub struct AccountsConfig: common("0.0.0.0:7050", "0.0.0.0:9100") {
        /// Prefix of the API keys it issues: `fin_live_` in production, `fin_test_` for test
        /// deployments.
        pub key_prefix: String = ("KEY_PREFIX", "fin_live_"),
        /// Consumer group of the template-review consumer.
        pub consumer_group: String = ("ACCOUNTS_CONSUMER_GROUP", "finestra-accounts"),
        /// The network's Cloud API base address (templates are submitted there).
        pub provider_url: String = ("PROVIDER_URL", "http://127.0.0.1:8090"),
        /// The Graph API version in the Cloud API path.
        pub provider_version: String = ("PROVIDER_API_VERSION", "v21.0"),
        /// The bearer token the network expects.
        pub provider_token: String = ("PROVIDER_TOKEN", "finestra-simulator-token"),
        /// Deadline of one call to the network.
        pub provider_timeout: std::time::Duration = ("PROVIDER_TIMEOUT_MS", "10000"),
        /// How often templates the network has not received yet are submitted, and templates
        /// deleted here are deleted there.
        pub submit_every: std::time::Duration = ("ACCOUNTS_SUBMIT_EVERY_MS", "30000"),
        /// The background submitter serves only tenants whose id starts with this (empty:
        /// every tenant; tests confine each one to their own).
        pub submit_tenant_prefix: String = ("ACCOUNTS_SUBMIT_TENANT_PREFIX", ""),
    }
}

pub const SERVICE_NAME: &str = "finestra.v1.AccountsService";

pub async fn start(config: AccountsConfig, shutdown: Shutdown) -> Result<Running, StartError> {
    let common = &config.common;
    let pool = stores::postgres_lazy(common)?;
    let producer = kafka::producer(&common.kafka_brokers)?;
    let Observed {
        health_service,
        admin,
    } = service::observe(
        SERVICE_NAME,
        common.metrics_addr,
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Kafka(producer.clone()),
        ],
        &shutdown,
    )
    .await?;
    retry_until_ready("migrating the accounts schema", &shutdown, || {
        finestra_registry::migrate(&pool)
    })
    .await
    .ok_or(StartError::Interrupted)?;

    let consumer = kafka::BatchConsumer::new(kafka::ConsumerSettings {
        brokers: common.kafka_brokers.clone(),
        group_id: config.consumer_group.clone(),
        topics: vec![common.topics.provider.clone()],
        max_batch: 500,
        linger: std::time::Duration::from_millis(20),
    })?;
    let reviews_task = tokio::spawn(reviews::run(consumer, pool.clone(), shutdown.clone()));
    let provider: std::sync::Arc<dyn finestra_provider::Provider> = std::sync::Arc::new(
        finestra_provider::CloudApi::new(
            &config.provider_url,
            &config.provider_version,
            &config.provider_token,
            config.provider_timeout,
        )
        .map_err(|e| finestra_platform::ConfigError::Invalid {
            name: "FINESTRA_PROVIDER_URL".into(),
            value: config.provider_url.clone(),
            reason: e.to_string(),
        })?,
    );
    let submitter_task = tokio::spawn(submissions::run(
        pool.clone(),
        provider.clone(),
        config.submit_every,
        config.submit_tenant_prefix.clone(),
        shutdown.clone(),
    ));
    let auth = finestra_registry::authenticator(pool.clone());
    let api = api::AccountsApi {
        pool,
        auth: auth.clone(),
        producer,
        topic: common.topics.accounts.clone(),
        key_prefix: config.key_prefix.clone(),
        provider,
    };
    let (incoming, grpc_addr) = finestra_platform::grpc::bind(common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(finestra_platform::grpc::reflection()?)
        .add_service(RequireKey::new(AccountsServiceServer::new(api), auth));
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, None);
    running.own("grpc", grpc_task);
    running.own("template-reviews", reviews_task);
    running.own("template-submitter", submitter_task);
    tracing::info!(%grpc_addr, %metrics_addr, "accounts started");
    Ok(running)
}
