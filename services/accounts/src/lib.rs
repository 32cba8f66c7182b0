//! Accounts: the control plane of partners, tenants, numbers and API keys. It owns the
//! `accounts` schema (migrations in `crates/registry`, shared with the read models of the
//! other services) and announces changes that caches must drop on `finestra.accounts.v1`.

pub mod api;
pub mod convert;
pub mod reviews;
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
    let auth = finestra_registry::authenticator(pool.clone());
    let api = api::AccountsApi {
        pool,
        auth: auth.clone(),
        producer,
        topic: common.topics.accounts.clone(),
        key_prefix: config.key_prefix.clone(),
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
    tracing::info!(%grpc_addr, %metrics_addr, "accounts started");
    Ok(running)
}
