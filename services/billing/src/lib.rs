//! Billing service: rate cards and partner markups price every message (docs/rules.md §6); tenant
//! wallets hold reservations (Redis hot, Postgres durable) that the status consumer captures
//! into an append-only ledger or releases (docs/rules.md §7); usage, invoices and reconciliation are
//! read from the ledger.

pub mod api;
pub mod consumer;
pub mod failures;
pub mod hot;
pub mod pg;
pub mod pricer;
pub mod reconcile;
pub mod reports;
pub mod reservations;
pub mod reserve;
pub mod settle;

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::{Clock, Timestamp};
use finestra_platform::auth::RequireKey;
use finestra_platform::health::Dependency;
use finestra_platform::kafka::{self, BatchConsumer, ConsumerSettings};
use finestra_platform::service::{self, Observed, retry_until_ready};
use finestra_platform::{ConfigError, Running, Shutdown, StartError, stores};
use finestra_proto::v1::billing_service_server::BillingServiceServer;

finestra_platform::settings! {
    /// Billing's settings (docs/configuration.md).
    pub struct BillingConfig: common("0.0.0.0:7053", "0.0.0.0:9103") {
        /// Consumer group on the status topic (captures and releases).
        pub consumer_group: String = ("BILLING_CONSUMER_GROUP", "finestra-billing"),
        /// Statuses one settlement batch takes. Larger than the window's: a batch is one
        /// transaction whose fixed costs (commit, wallet locks, offset commit) dominate below a
        /// few thousand statuses.
        pub max_batch: usize = ("BILLING_MAX_BATCH", "5000"),
        /// How long a consumer waits for a batch to fill.
        pub linger: Duration = ("BILLING_LINGER_MS", "20"),
        /// How long a loaded hot wallet lives before it is reloaded from Postgres.
        pub wallet_cache: Duration = ("BILLING_WALLET_CACHE_SECS", "600"),
        /// Reservations never delivered are released after this long.
        pub reservation_expiry: Duration = ("BILLING_RESERVATION_EXPIRY_HOURS", "720"),
        /// How often expired reservations are swept.
        pub sweep_every: Duration = ("BILLING_SWEEP_SECS", "60"),
        /// A new rate card must start at least this far ahead (replicas reload within it).
        pub card_margin: Duration = ("BILLING_CARD_MARGIN_SECS", "60"),
        /// Reservations written in one group commit.
        pub reserve_batch: usize = ("BILLING_RESERVE_BATCH", "500"),
        /// Group commits in flight at once.
        pub reserve_parallel: usize = ("BILLING_RESERVE_PARALLEL", "4"),
        /// Test failpoint, only in a build with the `failpoints` feature (which `make test`
        /// enables): abort after this many consumer batches were written to Postgres, before
        /// the offset commit.
        pub crash_after_batches: Option<u64> = ("BILLING_CRASH_AFTER_BATCHES", ""),
    }
}

impl BillingConfig {
    /// Refuses a failpoint in a build that has none, so a stray variable is not ignored.
    pub fn check(self) -> Result<Self, ConfigError> {
        match self.crash_after_batches {
            Some(n) if !cfg!(feature = "failpoints") => Err(ConfigError::Invalid {
                name: "FINESTRA_BILLING_CRASH_AFTER_BATCHES".into(),
                value: n.to_string(),
                reason: "a test failpoint; this build has none (cargo feature `failpoints`)".into(),
            }),
            _ => Ok(self),
        }
    }
}

pub const SERVICE_NAME: &str = "finestra.v1.BillingService";

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Releases reservations that were never delivered within the expiry.
async fn sweep_expired(
    pool: sqlx::PgPool,
    hot: hot::HotWallets,
    clock: Arc<dyn Clock>,
    expiry: Duration,
    every: Duration,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = clock.now();
        let before = now.plus_micros(-micros(expiry));
        match sweep_once(&pool, &hot, before, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "expired reservations released"),
            Err(e) => tracing::warn!(error = %e, "the expiry sweep failed; retrying later"),
        }
    }
}

/// One sweep: releases up to 5,000 reservations accepted before `before`.
pub async fn sweep_once(
    pool: &sqlx::PgPool,
    hot: &hot::HotWallets,
    before: Timestamp,
    now: Timestamp,
) -> Result<usize, settle::SettleError> {
    let expired = reservations::expired(pool, before.micros(), 5_000).await?;
    let batch: Vec<reservations::Settlement> = expired
        .into_iter()
        .map(|(tenant_id, message_id)| reservations::Settlement {
            tenant_id,
            message_id,
            end: reservations::End::Release,
            at: now.micros(),
            reason: "expired".into(),
        })
        .collect();
    let settled = settle::settle(pool, hot, &batch).await?;
    metrics::counter!("finestra_billing_expired_total").increment(settled.released as u64);
    Ok(settled.released)
}

pub async fn start(
    config: BillingConfig,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    let common = &config.common;
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

    retry_until_ready("migrating the billing schema", &shutdown, || async {
        pg::migrate(&pool).await?;
        pg::ensure_default_card(&pool)
            .await
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))
    })
    .await
    .ok_or(StartError::Interrupted)?;
    let pricer = retry_until_ready("loading rate cards", &shutdown, || {
        pricer::Pricer::load(pool.clone(), Duration::from_secs(5))
    })
    .await
    .ok_or(StartError::Interrupted)?;
    let redis = retry_until_ready("connecting to redis", &shutdown, || stores::redis(common))
        .await
        .ok_or(StartError::Interrupted)?;
    let hot = hot::HotWallets::new(redis.clone(), &common.redis_prefix, config.wallet_cache);

    let currency_pricer = pricer.clone();
    let (writer, writer_task) = reserve::Writer::spawn(reserve::WriterSettings {
        pool: pool.clone(),
        hot: hot.clone(),
        producer: producer.clone(),
        billing_topic: common.topics.billing.clone(),
        currency: Arc::new(move || currency_pricer.currency()),
        max_batch: config.reserve_batch,
        parallel: config.reserve_parallel,
        clock: clock.clone(),
    });
    let consumer = BatchConsumer::new(ConsumerSettings {
        brokers: common.kafka_brokers.clone(),
        group_id: config.consumer_group.clone(),
        topics: vec![common.topics.status.clone()],
        max_batch: config.max_batch,
        linger: config.linger,
    })?;

    let auth = finestra_registry::authenticator(pool.clone());
    let invalidation_task = finestra_platform::auth::spawn_invalidation(
        auth.clone(),
        &common.kafka_brokers,
        &common.topics.accounts,
        shutdown.clone(),
    )?;
    let api = api::BillingApi {
        pool: pool.clone(),
        redis,
        redis_prefix: common.redis_prefix.clone(),
        hot: hot.clone(),
        writer,
        pricer: pricer.clone(),
        auth: auth.clone(),
        clock: clock.clone(),
        card_margin_micros: micros(config.card_margin),
    };
    let (incoming, grpc_addr) = finestra_platform::grpc::bind(common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(finestra_platform::grpc::reflection()?)
        .add_service(RequireKey::new(BillingServiceServer::new(api), auth));
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let consumer_task = tokio::spawn(
        consumer::Loop {
            consumer,
            pool: pool.clone(),
            hot: hot.clone(),
            producer,
            dlq_topic: common.topics.dlq.clone(),
            clock: clock.clone(),
            crash_after_batches: config.crash_after_batches,
        }
        .run(shutdown.clone()),
    );
    let sweep_task = tokio::spawn(sweep_expired(
        pool.clone(),
        hot,
        clock,
        config.reservation_expiry,
        config.sweep_every,
        shutdown.clone(),
    ));
    let reload_pricer = pricer;
    let reload_shutdown = shutdown.clone();
    let reload_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = reload_shutdown.wait() => return,
                () = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
            if let Err(e) = reload_pricer.reload().await {
                tracing::warn!(error = %e, "reloading rate cards failed; keeping the loaded ones");
            }
        }
    });

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, None);
    running.own("grpc", grpc_task);
    running.own("reservation-writer", writer_task);
    running.own("consumer", consumer_task);
    running.own("auth-invalidation", invalidation_task);
    running.own("expiry-sweep", sweep_task);
    running.own("card-reload", reload_task);
    tracing::info!(%grpc_addr, %metrics_addr, group = %config.consumer_group, "billing started");
    Ok(running)
}
