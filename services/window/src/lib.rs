//! Window service: consumes inbound and user events, keeps the window of every
//! (number, user) pair (Redis hot, Postgres system of record with an append-only history),
//! answers `GetWindow` / `ListOpenWindows`, and publishes `WindowOpened` / `WindowRefreshed`.

pub mod api;
pub mod apply;
pub mod consumer;
pub mod hot;
pub mod notices;
pub mod pg;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_platform::auth::RequireKey;
use finestra_platform::health::Dependency;
use finestra_platform::kafka::{self, BatchConsumer, ConsumerSettings};
use finestra_platform::service::{self, Observed, retry_until_ready};
use finestra_platform::{Running, Shutdown, StartError, stores};
use finestra_proto::v1::window_service_server::WindowServiceServer;

finestra_platform::settings! {
    /// The window service's settings (docs/configuration.md).
    pub struct WindowConfig: common("0.0.0.0:7052", "0.0.0.0:9102") {
        /// Consumer group on the inbound and user topics.
        pub consumer_group: String = ("WINDOW_CONSUMER_GROUP", "finestra-window"),
        /// Records one consumer batch takes.
        pub max_batch: usize = ("WINDOW_MAX_BATCH", "2000"),
        /// How long a consumer waits for a batch to fill.
        pub linger: Duration = ("WINDOW_LINGER_MS", "20"),
        /// WindowClosingSoon goes out this long before a window closes.
        pub closing_lead: Duration = ("WINDOW_CLOSING_LEAD_SECS", "3600"),
        /// How often the closing-notice sweep runs.
        pub notice_every: Duration = ("WINDOW_NOTICE_EVERY_MS", "10000"),
        /// Announce closings of tenants whose id starts with this only (empty: all).
        pub notice_tenant_prefix: String = ("WINDOW_NOTICE_TENANT_PREFIX", ""),
    }
}

pub const SERVICE_NAME: &str = "finestra.v1.WindowService";

/// Keeps the monthly history partitions ahead of time for a service that runs for months.
async fn maintain_partitions(pool: sqlx::PgPool, clock: Arc<dyn Clock>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(6 * 3600)) => {}
        }
        if let Err(e) = pg::ensure_partitions(&pool, clock.now()).await {
            tracing::warn!(error = %e, "creating the next history partitions failed; retrying later");
        }
    }
}

pub async fn start(
    config: WindowConfig,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    let common = &config.common;
    // Nothing here waits for a dependency: health and the admin endpoint come up first and
    // say NOT_SERVING until Postgres, Redis and the broker answer.
    let pool = stores::postgres_lazy(common)?;
    let redis_client = redis::Client::open(common.redis_url.as_str())?;
    let producer = kafka::producer(&common.kafka_brokers)?;
    let Observed {
        health_service,
        admin,
    } = service::observe(
        SERVICE_NAME,
        common.metrics_addr,
        vec![
            Dependency::Postgres(pool.clone()),
            Dependency::Redis(redis_client),
            Dependency::Kafka(producer.clone()),
        ],
        &shutdown,
    )
    .await?;

    let migrated = retry_until_ready("migrating the window schema", &shutdown, || {
        pg::migrate(&pool)
    })
    .await;
    migrated.ok_or(StartError::Interrupted)?;
    if let Err(e) = pg::ensure_partitions(&pool, clock.now()).await {
        // Rows then land in the default partition; nothing is lost.
        tracing::warn!(error = %e, "creating this month's history partitions failed");
    }
    let redis = retry_until_ready("connecting to redis", &shutdown, || stores::redis(common))
        .await
        .ok_or(StartError::Interrupted)?;
    let hot = hot::HotStore::new(redis, &common.redis_prefix);
    let consumer = BatchConsumer::new(ConsumerSettings {
        brokers: common.kafka_brokers.clone(),
        group_id: config.consumer_group.clone(),
        topics: vec![
            common.topics.inbound.clone(),
            // Preferences, blocks, and the replies that start a free entry point.
            common.topics.user.clone(),
        ],
        max_batch: config.max_batch,
        linger: config.linger,
    })?;

    let api = api::WindowApi {
        hot: hot.clone(),
        pool: pool.clone(),
        clock: clock.clone(),
        auth: finestra_registry::authenticator(pool.clone()),
    };
    let auth_for_layer = api.auth.clone();
    let invalidation_task = finestra_platform::auth::spawn_invalidation(
        api.auth.clone(),
        &common.kafka_brokers,
        &common.topics.accounts,
        shutdown.clone(),
    )?;
    let (incoming, grpc_addr) = finestra_platform::grpc::bind(common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(finestra_platform::grpc::reflection()?)
        .add_service(RequireKey::new(
            WindowServiceServer::new(api),
            auth_for_layer,
        ));
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let notices_task = tokio::spawn(
        notices::Notices {
            pool: pool.clone(),
            producer: producer.clone(),
            window_topic: common.topics.window.clone(),
            clock: clock.clone(),
            lead: config.closing_lead,
            every: config.notice_every,
            tenant_prefix: config.notice_tenant_prefix.clone(),
        }
        .run(shutdown.clone()),
    );
    let pool_for_partitions = pool.clone();
    let clock_for_partitions = clock.clone();
    let consumer_loop = consumer::Loop {
        consumer,
        applier: apply::Applier {
            pool,
            hot,
            producer,
            window_topic: common.topics.window.clone(),
            clock,
        },
        dlq_topic: common.topics.dlq.clone(),
    };
    let consumer_task = tokio::spawn(consumer_loop.run(shutdown.clone()));
    let partitions_task = tokio::spawn(maintain_partitions(
        pool_for_partitions,
        clock_for_partitions,
        shutdown.clone(),
    ));

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, None);
    running.own("grpc", grpc_task);
    running.own("consumer", consumer_task);
    running.own("closing-notices", notices_task);
    running.own("auth-invalidation", invalidation_task);
    running.own("partitions", partitions_task);
    tracing::info!(%grpc_addr, %metrics_addr, group = %config.consumer_group, "window started");
    Ok(running)
}
