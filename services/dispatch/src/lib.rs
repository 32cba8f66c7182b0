//! Dispatch service: `SendMessage` under the channel's rules (docs/rules.md §2, §5), acceptance as a
//! group commit (billing reservation, Postgres, `finestra.outbound.v1`), the paced delivery
//! worker with its Cloud API connector, and the message status machine.

pub mod accept;
pub mod admission;
pub mod api;
pub mod auto_reply;
pub mod batch;
pub mod campaigns;
pub mod contacts;
pub mod content;
pub mod error;
pub mod events;
pub mod facts;
pub mod fep;
pub mod gate;
pub mod hot;
pub mod media;
pub mod media_api;
pub mod media_store;
pub mod network_api;
pub mod outbox;
pub mod pg;
pub mod scheduled;
pub mod statuses;
pub mod tenant_api;
pub mod webhooks;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Clock;
use finestra_domain::delivery::RetryPolicy;
use finestra_platform::auth::{Bearer, RequireKey};
use finestra_platform::health::Dependency;
use finestra_platform::kafka::{self, BatchConsumer, ConsumerSettings};
use finestra_platform::service::{self, Observed, retry_until_ready};
use finestra_platform::{ConfigError, Running, Shutdown, StartError, stores};
use finestra_proto::v1::billing_service_client::BillingServiceClient;
use finestra_proto::v1::campaign_service_server::CampaignServiceServer;
use finestra_proto::v1::contacts_service_server::ContactsServiceServer;
use finestra_proto::v1::dispatch_service_server::DispatchServiceServer;

finestra_platform::settings! {
    /// Dispatch's settings (docs/configuration.md).
    pub struct DispatchConfig: common("0.0.0.0:7054", "0.0.0.0:9104") {
        /// The worker's consumer group (outbound topic).
        pub worker_group: String = ("DISPATCH_WORKER_GROUP", "finestra-dispatch-worker"),
        /// The event pipeline's consumer group: message states from statuses, and the tenant
        /// event log.
        pub events_group: String = ("DISPATCH_EVENTS_GROUP", "finestra-dispatch-events"),
        /// Billing's gRPC address, for reservations.
        pub billing_url: String = ("DISPATCH_BILLING_URL", "http://127.0.0.1:7053"),
        /// An operator key with `send` scope: Reserve/ReserveBatch are internal calls.
        pub billing_key: String = ("DISPATCH_BILLING_KEY", ""),
        /// Connections to billing, used in turn.
        pub billing_connections: usize = ("DISPATCH_BILLING_CONNECTIONS", "4"),
        /// Deadline of a reservation call to billing.
        pub billing_timeout: Duration = ("DISPATCH_BILLING_TIMEOUT_MS", "5000"),
        /// The network's Cloud API base address.
        pub provider_url: String = ("PROVIDER_URL", "http://127.0.0.1:8090"),
        /// The Graph API version in the Cloud API path.
        pub provider_version: String = ("PROVIDER_API_VERSION", "v21.0"),
        /// The bearer token the network expects.
        pub provider_token: String = ("PROVIDER_TOKEN", "finestra-simulator-token"),
        /// Deadline of one send to the network.
        pub provider_timeout: Duration = ("PROVIDER_TIMEOUT_MS", "10000"),
        /// First pause before a failed delivery is tried again (doubling, with jitter).
        pub retry_base: Duration = ("DISPATCH_RETRY_BASE_MS", "250"),
        /// Longest pause between two attempts of a delivery.
        pub retry_cap: Duration = ("DISPATCH_RETRY_CAP_MS", "30000"),
        /// Attempts before a message fails for good.
        pub retry_attempts: u32 = ("DISPATCH_RETRY_ATTEMPTS", "8"),
        /// Messages the worker holds in memory across all tenants.
        pub max_in_flight: usize = ("DISPATCH_MAX_IN_FLIGHT", "50000"),
        /// Deliveries to the network in flight at once.
        pub send_concurrency: usize = ("DISPATCH_SEND_CONCURRENCY", "256"),
        /// SendMessage calls stored (and reserved) in one group commit.
        pub accept_batch: usize = ("DISPATCH_ACCEPT_BATCH", "500"),
        /// Group commits in flight at once.
        pub accept_parallel: usize = ("DISPATCH_ACCEPT_PARALLEL", "4"),
        /// Records one consumer batch takes.
        pub max_batch: usize = ("DISPATCH_MAX_BATCH", "2000"),
        /// How long a consumer waits for a batch to fill.
        pub linger: Duration = ("DISPATCH_LINGER_MS", "5"),
        /// How long a tenant's, number's or template's facts are cached.
        pub facts_ttl: Duration = ("DISPATCH_FACTS_TTL_MS", "2000"),
        /// How long a repeated idempotency key waits for the first call's answer.
        pub replay_wait: Duration = ("DISPATCH_REPLAY_WAIT_MS", "5000"),
        /// SendMessage calls decided at once, shared by weight among the tenants sending
        /// (docs/fairness.md); a quarter more is kept for tenants under their floor.
        pub max_pending_sends: usize = ("DISPATCH_MAX_PENDING_SENDS", "512"),
        /// Sends any tenant may always have in flight, whatever the others do.
        pub tenant_floor: usize = ("DISPATCH_TENANT_FLOOR", "1"),
        /// A SendMessage taking longer than this (and than twice its unloaded time) counts as
        /// queueing: the number decided at once shrinks until it does not.
        pub send_latency_target: Duration = ("DISPATCH_SEND_LATENCY_TARGET_MS", "25"),
        /// Sustained SendMessage rate of a tenant whose partner set none (per second).
        pub tenant_rate: u32 = ("DISPATCH_TENANT_RATE", "1000"),
        /// Burst of a tenant whose partner set none.
        pub tenant_burst: u32 = ("DISPATCH_TENANT_BURST", "2000"),
        /// Weight of a tenant whose partner set none.
        pub tenant_weight: u32 = ("DISPATCH_TENANT_WEIGHT", "1"),
        /// Messages of one tenant (of weight 1) the worker holds in memory; the rest of its
        /// backlog is parked in Postgres and taken back in order.
        pub tenant_queue: usize = ("DISPATCH_TENANT_QUEUE", "5000"),
        /// First pause before a failed webhook delivery is retried.
        pub webhook_first_retry: Duration = ("DISPATCH_WEBHOOK_FIRST_RETRY_MS", "5000"),
        /// Longest pause between two webhook attempts.
        pub webhook_max_pause: Duration = ("DISPATCH_WEBHOOK_MAX_PAUSE_SECS", "21600"),
        /// A webhook delivery failing this long is dead-lettered.
        pub webhook_give_up: Duration = ("DISPATCH_WEBHOOK_GIVE_UP_SECS", "259200"),
        /// Deadline of one tenant webhook delivery.
        pub webhook_timeout: Duration = ("DISPATCH_WEBHOOK_TIMEOUT_MS", "10000"),
        /// Sweeps over every tenant's rows (webhook deliveries, stale accepted messages) take
        /// only tenants whose id starts with this (empty: every tenant). Lets dispatchers with
        /// other schedules and topics share a database without doing each other's work.
        pub sweep_tenant_prefix: String = ("DISPATCH_SWEEP_TENANT_PREFIX", ""),
        /// A message still ACCEPTED this long after it was stored is queued again (its event
        /// may have been lost with a process killed between the store and the produce).
        pub requeue_after: Duration = ("DISPATCH_REQUEUE_AFTER_SECS", "300"),
        /// How often stale ACCEPTED messages are looked for (and once right after start, for
        /// every message stored before the process started).
        pub requeue_every: Duration = ("DISPATCH_REQUEUE_EVERY_SECS", "30"),
        /// How long after a referral message dispatch looks for a reply accepted before the
        /// window service recorded the referral (longer than any acceptance in flight).
        pub fep_grace: Duration = ("DISPATCH_FEP_GRACE_SECS", "30"),
        /// Marketing templates a user may receive from one tenant per window (the frequency
        /// cap, docs/rules.md §2), for tenants whose partner set no cap of their own.
        pub marketing_cap: u32 = ("DISPATCH_MARKETING_CAP", "2"),
        /// The frequency cap's window, in days, for those tenants.
        pub marketing_cap_days: u32 = ("DISPATCH_MARKETING_CAP_DAYS", "7"),
        /// The directory where files users sent are kept once fetched from the network
        /// (`<dir>/<tenant>/<media id>`; production keeps them in object storage).
        pub media_dir: String = ("DISPATCH_MEDIA_DIR", "var/media"),
        /// Test failpoint, only in a build with the `failpoints` feature (which `make test`
        /// enables): abort after this many event-pipeline batches were written to Postgres,
        /// before the offset commit.
        pub crash_after_event_batches: Option<u64> = ("DISPATCH_CRASH_AFTER_EVENT_BATCHES", ""),
    }
}

impl DispatchConfig {
    /// Refuses a failpoint in a build that has none, so a stray variable is not ignored.
    pub fn check(self) -> Result<Self, finestra_platform::config::ConfigError> {
        match self.crash_after_event_batches {
            Some(n) if !cfg!(feature = "failpoints") => {
                Err(finestra_platform::config::ConfigError::Invalid {
                    name: "FINESTRA_DISPATCH_CRASH_AFTER_EVENT_BATCHES".into(),
                    value: n.to_string(),
                    reason: "a test failpoint; this build has none (cargo feature `failpoints`)"
                        .into(),
                })
            }
            _ => Ok(self),
        }
    }

    /// The delivery retry schedule.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            base_micros: micros(self.retry_base),
            cap_micros: micros(self.retry_cap),
            max_attempts: self.retry_attempts,
        }
    }

    /// Limits of tenants whose partner left them unset.
    pub fn tenant_defaults(&self) -> finestra_domain::fairness::TenantLimits {
        finestra_domain::fairness::TenantLimits {
            rate_per_second: self.tenant_rate,
            burst: self.tenant_burst,
            weight: self.tenant_weight,
        }
    }

    /// The webhook retry schedule.
    pub fn webhook_schedule(&self) -> finestra_domain::delivery::WebhookSchedule {
        finestra_domain::delivery::WebhookSchedule {
            first_micros: micros(self.webhook_first_retry),
            cap_micros: micros(self.webhook_max_pause),
            give_up_after_micros: micros(self.webhook_give_up),
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub const SERVICE_NAME: &str = "finestra.v1.DispatchService";

pub async fn start(
    config: DispatchConfig,
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
    retry_until_ready("migrating the dispatch schema", &shutdown, || {
        pg::migrate(&pool)
    })
    .await
    .ok_or(StartError::Interrupted)?;
    let redis = retry_until_ready("connecting to redis", &shutdown, || stores::redis(common))
        .await
        .ok_or(StartError::Interrupted)?;

    let bearer = Bearer::new(&config.billing_key).map_err(|s| ConfigError::Invalid {
        name: "FINESTRA_DISPATCH_BILLING_KEY".into(),
        value: "(hidden)".into(),
        reason: s.message().to_owned(),
    })?;
    let mut billing = Vec::new();
    for _ in 0..config.billing_connections.max(1) {
        let channel = tonic::transport::Channel::from_shared(config.billing_url.clone())
            .map_err(|e| ConfigError::Invalid {
                name: "FINESTRA_DISPATCH_BILLING_URL".into(),
                value: config.billing_url.clone(),
                reason: e.to_string(),
            })?
            .connect_lazy();
        billing.push(BillingServiceClient::new(
            tonic::service::interceptor::InterceptedService::new(channel, bearer.clone()),
        ));
    }
    // A campaign's quote prices through billing too (PriceBatch), on the first connection.
    let quote_billing = billing[0].clone();
    let (acceptor, accept_task) = accept::spawn(accept::AcceptorSettings {
        pool: pool.clone(),
        billing,
        producer: producer.clone(),
        outbound_topic: common.topics.outbound.clone(),
        user_topic: common.topics.user.clone(),
        max_batch: config.accept_batch,
        parallel: config.accept_parallel,
        billing_timeout: config.billing_timeout,
    });
    let provider: Arc<dyn finestra_provider::Provider> = Arc::new(
        finestra_provider::CloudApi::new(
            &config.provider_url,
            &config.provider_version,
            &config.provider_token,
            config.provider_timeout,
        )
        .map_err(|e| ConfigError::Invalid {
            name: "FINESTRA_PROVIDER_URL".into(),
            value: config.provider_url.clone(),
            reason: e.to_string(),
        })?,
    );
    let facts = facts::Facts::new(pool.clone(), config.facts_ttl);
    let hot = hot::Hot::new(redis.clone(), &common.redis_prefix);

    let auth = finestra_registry::authenticator(pool.clone());
    let invalidation_task = finestra_platform::auth::spawn_invalidation(
        auth.clone(),
        &common.kafka_brokers,
        &common.topics.accounts,
        shutdown.clone(),
    )?;
    let recorded = Arc::new(tokio::sync::Notify::new());
    let request_tasks = tokio_util::task::TaskTracker::new();
    let media_store: Arc<dyn media_store::MediaStore> =
        Arc::new(media_store::DirStore::new(&config.media_dir));
    let api = Arc::new(api::DispatchApi {
        admission: admission::Admission::new(admission::AdmissionSettings {
            capacity: config.max_pending_sends.max(1),
            floor: config.tenant_floor.max(1),
            latency_target: config.send_latency_target,
            defaults: config.tenant_defaults(),
            retry_over_share: Duration::from_millis(100),
        }),
        recorded: recorded.clone(),
        shutdown: shutdown.clone(),
        producer: producer.clone(),
        outbound_topic: common.topics.outbound.clone(),
        facts: facts.clone(),
        hot: hot.clone(),
        acceptor,
        auth: auth.clone(),
        clock: clock.clone(),
        replay_wait: config.replay_wait,
        tasks: request_tasks.clone(),
        provider: provider.clone(),
        media_store: media_store.clone(),
        marketing_cap: finestra_domain::frequency::FrequencyCap::per_days(
            config.marketing_cap.max(1),
            config.marketing_cap_days.max(1),
        ),
    });
    let scheduler_task = tokio::spawn(
        scheduled::Scheduler {
            pool: pool.clone(),
            api: api.clone(),
            tenant_prefix: config.sweep_tenant_prefix.clone(),
            every: Duration::from_millis(250),
        }
        .run(shutdown.clone()),
    );
    let replier_task = tokio::spawn(
        auto_reply::Replier {
            pool: pool.clone(),
            api: api.clone(),
            tenant_prefix: config.sweep_tenant_prefix.clone(),
            every: Duration::from_millis(500),
        }
        .run(shutdown.clone()),
    );
    let campaigns = Arc::new(campaigns::CampaignsApi {
        pool: pool.clone(),
        facts: api.facts.clone(),
        hot: api.hot.clone(),
        auth: auth.clone(),
        clock: clock.clone(),
        billing: quote_billing,
        marketing_cap: api.marketing_cap,
        shutdown: shutdown.clone(),
    });
    let campaign_task = tokio::spawn(
        campaigns::runner::Runner {
            pool: pool.clone(),
            api: api.clone(),
            campaigns: campaigns.clone(),
            tenant_prefix: config.sweep_tenant_prefix.clone(),
            every: Duration::from_millis(100),
            breaker: finestra_domain::campaign::Breaker::DEFAULT,
            id: finestra_platform::auth::generate_key("runner_"),
        }
        .run(shutdown.clone()),
    );
    let (incoming, grpc_addr) = finestra_platform::grpc::bind(common.grpc_addr).await?;
    let router = tonic::transport::Server::builder()
        .trace_fn(finestra_platform::trace::grpc_request_span)
        .add_service(health_service)
        .add_service(finestra_platform::grpc::reflection()?)
        .add_service(RequireKey::new(
            ContactsServiceServer::new(contacts::ContactsApi {
                pool: pool.clone(),
                facts: api.facts.clone(),
                hot: api.hot.clone(),
                auth: auth.clone(),
                clock: clock.clone(),
            })
            .max_decoding_message_size(contacts::MAX_CHUNK + 1024),
            auth.clone(),
        ))
        .add_service(RequireKey::new(
            CampaignServiceServer::from_arc(campaigns),
            auth.clone(),
        ))
        .add_service(RequireKey::new(
            DispatchServiceServer::from_arc(api)
                .max_decoding_message_size(media_api::MAX_REQUEST_BYTES)
                .max_encoding_message_size(media_api::MAX_REQUEST_BYTES),
            auth,
        ));
    let grpc_task = service::spawn_grpc(router, incoming, shutdown.clone());

    let events_pool = pool.clone();
    let webhooks_pool = pool.clone();
    let worker = worker::Worker {
        consumer: Arc::new(BatchConsumer::new(ConsumerSettings {
            brokers: common.kafka_brokers.clone(),
            group_id: config.worker_group.clone(),
            topics: vec![common.topics.outbound.clone()],
            max_batch: config.max_batch,
            linger: config.linger,
        })?),
        pool: pool.clone(),
        hot: hot.clone(),
        facts,
        provider: provider.clone(),
        producer: producer.clone(),
        status_topic: common.topics.status.clone(),
        user_topic: common.topics.user.clone(),
        dlq_topic: common.topics.dlq.clone(),
        retry: config.retry(),
        max_in_flight: config.max_in_flight,
        send_concurrency: config.send_concurrency,
        clock: clock.clone(),
        outbound_topic: common.topics.outbound.clone(),
        tenant_queue: config.tenant_queue,
        tenant_defaults: config.tenant_defaults(),
        tenant_prefix: config.sweep_tenant_prefix.clone(),
    };
    let media_task = tokio::spawn(
        media::Fetcher {
            pool: pool.clone(),
            provider: provider.clone(),
            store: media_store.clone(),
            tenant_prefix: config.sweep_tenant_prefix.clone(),
            every: Duration::from_millis(250),
        }
        .run(shutdown.clone()),
    );
    let fep_task = tokio::spawn(
        fep::Checker {
            pool: pool.clone(),
            hot: hot.clone(),
            producer: producer.clone(),
            user_topic: common.topics.user.clone(),
            clock: clock.clone(),
            grace: config.fep_grace,
            tenant_prefix: config.sweep_tenant_prefix.clone(),
        }
        .run(shutdown.clone()),
    );
    let requeue_task = tokio::spawn(
        outbox::Requeuer {
            pool: pool.clone(),
            producer,
            topic: common.topics.outbound.clone(),
            clock: clock.clone(),
            after: config.requeue_after,
            every: config.requeue_every,
            batch: 500,
            tenant_prefix: config.sweep_tenant_prefix.clone(),
        }
        .run(shutdown.clone()),
    );
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let events_task = tokio::spawn(
        events::EventLoop {
            consumer: BatchConsumer::new(ConsumerSettings {
                brokers: common.kafka_brokers.clone(),
                group_id: config.events_group.clone(),
                topics: vec![
                    common.topics.status.clone(),
                    common.topics.inbound.clone(),
                    common.topics.user.clone(),
                    common.topics.window.clone(),
                    // Template reviews and health events: few, told to the tenant.
                    common.topics.provider.clone(),
                ],
                max_batch: config.max_batch,
                linger: config.linger,
            })?,
            pool: events_pool,
            statuses: statuses::StatusApplier {
                pool,
                hot: hot.clone(),
            },
            clock: clock.clone(),
            recorded: recorded.clone(),
            fep_grace: config.fep_grace,
            crash_after_batches: config.crash_after_event_batches,
        }
        .run(shutdown.clone()),
    );
    let accounts =
        webhooks::AccountCache::new(finestra_registry::Registry::new(webhooks_pool.clone()));
    let deliverer_task = tokio::spawn(
        webhooks::Deliverer {
            pool: webhooks_pool,
            http: reqwest::Client::builder()
                .timeout(config.webhook_timeout)
                .build()
                .map_err(|e| ConfigError::Invalid {
                    name: "FINESTRA_DISPATCH_WEBHOOK_TIMEOUT_MS".into(),
                    value: String::new(),
                    reason: e.to_string(),
                })?,
            schedule: config.webhook_schedule(),
            clock: clock.clone(),
            recorded,
            batch: 200,
            lease: Duration::from_secs(60),
            tenant_prefix: config.sweep_tenant_prefix.clone(),
            accounts,
        }
        .run(shutdown.clone()),
    );

    let metrics_addr = admin.metrics_addr;
    let mut running = admin.running(grpc_addr, None);
    running.own("events", events_task);
    running.own("webhooks", deliverer_task);
    running.own("grpc", grpc_task);
    running.own(
        "request tasks",
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                shutdown.wait().await;
                request_tasks.close();
                request_tasks.wait().await;
            }
        }),
    );
    running.own("worker", worker_task);
    running.own("requeue", requeue_task);
    running.own("fep checks", fep_task);
    running.own("media fetcher", media_task);
    running.own("opt-out replies", replier_task);
    running.own("scheduled messages", scheduler_task);
    running.own("campaigns", campaign_task);
    running.own("auth-invalidation", invalidation_task);
    // Last: acceptance drains once the gRPC server (its only sender) has stopped.
    running.own("acceptance", accept_task);
    tracing::info!(%grpc_addr, %metrics_addr, "dispatch started");
    Ok(running)
}
