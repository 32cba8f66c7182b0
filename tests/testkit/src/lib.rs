//! Test helpers. Every test runs against the machine's one Postgres, Redis and broker, in
//! parallel with the others, so each one owns its names: a [`Scope`] gives it tenant ids,
//! number ids, topic names and consumer groups nobody else uses. Services start in-process
//! exactly as in production, on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use finestra_domain::Clock;
use finestra_platform::{CommonConfig, Running, Shutdown, SystemClock, Topics};
use rand::Rng as _;
use tokio::sync::OnceCell;

/// The shared servers, reached once per test process (migrations run once).
pub struct Infra {
    pub pool: sqlx::PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub brokers: String,
}

static MIGRATED: OnceCell<()> = OnceCell::const_new();

thread_local! {
    /// Clients of the current test's runtime. Each `#[tokio::test]` has its own runtime (with
    /// its own threads), and a pooled connection or a Redis driver task opened on one test's
    /// runtime dies with it, so clients are never shared across tests' threads.
    static CLIENTS: std::cell::RefCell<Option<Arc<Infra>>> = const { std::cell::RefCell::new(None) };
}

/// Connects to the real servers (migrations run once per process). Fails with a hint when
/// the infrastructure is not up (`make up` or `scripts/infra.sh` starts it).
pub async fn infra() -> anyhow::Result<Arc<Infra>> {
    MIGRATED.get_or_try_init(migrate).await?;
    if let Some(clients) = CLIENTS.with(|c| c.borrow().clone()) {
        return Ok(clients);
    }
    let clients = Arc::new(connect().await?);
    CLIENTS.with(|c| *c.borrow_mut() = Some(clients.clone()));
    Ok(clients)
}

/// The database the tests use: never the one `make up` serves (`finestra`), so nothing a test
/// leaves behind (a rate card effective in 2100, say) reaches the dev stack. `make test`
/// creates it afresh for each run; a test run without `make` creates it when it is missing.
pub fn test_database_url() -> String {
    std::env::var("FINESTRA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/finestra_test".into())
}

/// The Redis database the tests use (the dev stack uses database 0).
pub fn test_redis_url() -> String {
    std::env::var("FINESTRA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/1".into())
}

/// The environment a service binary started by a test needs to use the tests' stores.
pub fn store_env() -> [(&'static str, String); 2] {
    [
        ("FINESTRA_DATABASE_URL", test_database_url()),
        ("FINESTRA_REDIS_URL", test_redis_url()),
    ]
}

/// Creates the tests' database if it is missing (several test processes may race to do it).
async fn create_test_database(url: &str) -> anyhow::Result<()> {
    use sqlx::ConnectOptions as _;
    use std::str::FromStr as _;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .context("the test database url names no database")?
        .to_owned();
    anyhow::ensure!(
        name != "finestra",
        "the tests never use the dev stack's database `finestra` ({url})"
    );
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("postgres at {url} (run scripts/infra.sh)"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let created = sqlx::query(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))
        .execute(&mut admin)
        .await;
        match created {
            Ok(_) => {}
            // 42P04 duplicate_database, 23505 when two creators race in the catalogue.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies every schema's migrations with a pool that is closed afterwards.
async fn migrate() -> anyhow::Result<()> {
    let base = base_config()?;
    create_test_database(&base.database_url).await?;
    // Test processes start together on a fresh database: one migrates at a time (the steps
    // after the migrations proper, such as adopting old rows into partitions, are not safe to
    // run twice at once). One connection, so the session lock covers every step.
    let mut one = base.clone();
    one.db_max_connections = 1;
    let pool = finestra_platform::stores::postgres(&one)
        .await
        .with_context(|| format!("postgres at {} (run scripts/infra.sh)", base.database_url))?;
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('finestra-testkit-migrate', 0))")
        .execute(&pool)
        .await?;
    finestra_registry::migrate(&pool).await?;
    finestra_window::pg::migrate(&pool).await?;
    finestra_billing::pg::migrate(&pool).await?;
    finestra_billing::pg::ensure_default_card(&pool).await?;
    finestra_dispatch::pg::migrate(&pool).await?;
    finestra_simulator::store::migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

async fn connect() -> anyhow::Result<Infra> {
    let base = base_config()?;
    let pool = finestra_platform::stores::postgres(&base).await?;
    let redis = finestra_platform::stores::redis(&base)
        .await
        .with_context(|| format!("redis at {}", base.redis_url))?;
    Ok(Infra {
        pool,
        redis,
        brokers: base.kafka_brokers,
    })
}

fn base_config() -> anyhow::Result<CommonConfig> {
    let mut c = CommonConfig::from_env("127.0.0.1:0", "127.0.0.1:0")?;
    c.database_url = test_database_url();
    c.redis_url = test_redis_url();
    c.grpc_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    c.db_max_connections = 5;
    c.shutdown_grace = Duration::from_secs(10);
    Ok(c)
}

/// The names one test owns.
#[derive(Clone, Debug)]
pub struct Scope {
    id: String,
    /// The numbers its tenants got, to register with its simulator (the network knows a
    /// number only once a partner registered it there).
    numbers: Arc<std::sync::Mutex<Vec<NetworkNumber>>>,
    /// Approved templates its tenants got straight in the control plane's table, which the
    /// network must hold too.
    templates: Arc<std::sync::Mutex<Vec<NetworkTemplate>>>,
}

/// A template as the network is to hold it.
#[derive(Clone, Debug)]
pub struct NetworkTemplate {
    pub waba_id: String,
    pub name: String,
    pub category: String,
    pub body: String,
    /// APPROVED, PAUSED, DISABLED or REJECTED.
    pub event: String,
}

/// A number as the network is told of it.
#[derive(Clone, Debug)]
pub struct NetworkNumber {
    pub phone_number_id: String,
    pub waba_id: String,
    pub app_secret: String,
}

impl Default for Scope {
    fn default() -> Self {
        Self::new()
    }
}

impl Scope {
    pub fn new() -> Self {
        let n: u64 = rand::rng().random();
        Self {
            id: format!("{:012x}", n & 0xffff_ffff_ffff),
            numbers: Arc::default(),
            templates: Arc::default(),
        }
    }

    /// Notes a template the network must hold (`Network::register_all` submits it there).
    pub fn note_template(&self, t: NetworkTemplate) {
        if let Ok(mut templates) = self.templates.lock() {
            templates.push(t);
        }
    }

    /// The templates noted so far.
    pub fn network_templates(&self) -> Vec<NetworkTemplate> {
        self.templates.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The business account (WABA) id of this test's tenant `name`.
    pub fn waba_id(&self, name: &str) -> String {
        format!("w{}{name}", self.id)
    }

    /// The numbers this test's tenants got so far.
    pub fn network_numbers(&self) -> Vec<NetworkNumber> {
        self.numbers.lock().map(|n| n.clone()).unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// A tenant id unique to this test, e.g. `t3f9a…-acme`.
    pub fn tenant_id(&self, name: &str) -> String {
        format!("{}{name}", self.tenant_prefix())
    }

    /// What every tenant id of this test starts with: services that sweep across tenants are
    /// confined to it, so tests sharing a database leave each other's rows alone.
    pub fn tenant_prefix(&self) -> String {
        format!("t{}-", self.id)
    }

    /// The partner this test's tenants belong to.
    pub fn partner_id(&self) -> String {
        format!("p{}", self.id)
    }

    pub fn phone_number_id(&self, n: u32) -> String {
        format!("pn{}{n}", self.id)
    }

    /// This test's topic names (`finestra.inbound.v1.<id>`, ...).
    pub fn topics(&self) -> Topics {
        Topics::with_suffix(&format!(".{}", self.id))
    }

    pub fn group(&self, name: &str) -> String {
        format!("{name}.{}", self.id)
    }

    /// Redis loses everything of this test: every key of its tenants (each key names its
    /// tenant in a hash tag), leaving the tests running beside it alone, as FLUSHALL would not.
    /// Returns the keys deleted.
    pub async fn lose_redis(&self) -> anyhow::Result<usize> {
        let mut redis = infra().await?.redis.clone();
        let pattern = format!("*{{{}*", self.tenant_prefix());
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                deleted += keys.len();
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut redis)
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The Redis key prefix of this test's tenant `name`.
    pub fn redis_prefix(&self, tenant: &str) -> String {
        format!("fin:{{{}}}:", self.tenant_id(tenant))
    }

    /// Service config for this test: real servers, its own topics, port 0 everywhere.
    pub fn config(&self) -> anyhow::Result<CommonConfig> {
        let mut c = base_config()?;
        c.topics = self.topics();
        Ok(c)
    }

    /// Creates this test's topics (2 partitions each, so ordering per key is what is tested).
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let infra = infra().await?;
        let topics = self.topics();
        finestra_platform::kafka::ensure_topics(&infra.brokers, &topics.all(), 2).await?;
        Ok(())
    }

    /// Registers a tenant with one number; returns (tenant_id, phone_number_id, app secret).
    pub async fn tenant_with_number(
        &self,
        name: &str,
        n: u32,
    ) -> anyhow::Result<(String, String, String)> {
        let infra = infra().await?;
        let registry = finestra_registry::Registry::new(infra.pool.clone());
        let tenant = self.tenant_id(name);
        let number = self.phone_number_id(n);
        let secret = format!("secret-{}-{name}-{n}", self.id);
        registry
            .put_partner(&self.partner_id(), "Test partner")
            .await?;
        registry
            .put_tenant(&self.partner_id(), &tenant, name)
            .await?;
        registry
            .put_number(&tenant, &number, "+39 02 0000 0000", &secret)
            .await?;
        // Templates belong to a business account: every test tenant has one.
        let waba = self.waba_id(name);
        sqlx::query(
            "UPDATE accounts.tenants SET waba_id = $2 WHERE tenant_id = $1 AND waba_id IS NULL",
        )
        .bind(&tenant)
        .bind(&waba)
        .execute(&infra.pool)
        .await?;
        if let Ok(mut numbers) = self.numbers.lock() {
            numbers.push(NetworkNumber {
                phone_number_id: number.clone(),
                waba_id: waba,
                app_secret: secret.clone(),
            });
        }
        Ok((tenant, number, secret))
    }
}

impl Scope {
    /// Creates an API key (prefix `fin_test_`) and returns its secret.
    pub async fn key(
        &self,
        owner: finestra_platform::auth::Owner,
        scopes: &[finestra_platform::auth::Scope],
    ) -> anyhow::Result<String> {
        let infra = infra().await?;
        let (_, secret) =
            finestra_registry::keys::create(&infra.pool, &owner, scopes, "test", "fin_test_")
                .await?;
        Ok(secret)
    }

    /// A key of this test's tenant `name` (which `tenant_with_number` created).
    pub async fn tenant_key(
        &self,
        name: &str,
        scopes: &[finestra_platform::auth::Scope],
    ) -> anyhow::Result<String> {
        self.key(
            finestra_platform::auth::Owner::Tenant {
                partner_id: self.partner_id(),
                tenant_id: self.tenant_id(name),
            },
            scopes,
        )
        .await
    }
}

/// A channel to `url` whose calls carry `key`.
pub async fn authed_channel(
    url: String,
    key: &str,
) -> anyhow::Result<finestra_platform::auth::AuthedChannel> {
    let channel = tonic::transport::Channel::from_shared(url)?
        .connect()
        .await?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        finestra_platform::auth::Bearer::new(key)?,
    ))
}

/// A service started in-process, with the shutdown that stops it.
pub struct Started {
    pub running: Running,
    pub shutdown: Shutdown,
}

impl Started {
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.running.wait().await;
    }
}

pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

pub async fn start_ingest(scope: &Scope) -> anyhow::Result<Started> {
    let config = finestra_ingest::IngestConfig {
        common: scope.config()?,
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        verify_token: format!("verify-{}", scope.id()),
        number_cache_ttl: Duration::from_secs(5),
    };
    let shutdown = Shutdown::new();
    let running = finestra_ingest::start(config, system_clock(), shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// Starts a window service consuming this test's topics as consumer group `group`.
pub async fn start_window(scope: &Scope, group: &str, max_batch: usize) -> anyhow::Result<Started> {
    let config = finestra_window::WindowConfig {
        common: scope.config()?,
        consumer_group: scope.group(group),
        max_batch,
        linger: Duration::from_millis(10),
        closing_lead: Duration::from_secs(3_600),
        notice_every: Duration::from_millis(200),
        notice_tenant_prefix: scope.tenant_prefix(),
    };
    let shutdown = Shutdown::new();
    let running = finestra_window::start(config, system_clock(), shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// Billing settings for a test: this scope's topics and consumer group `group`, short
/// caches so changes show at once.
pub fn billing_config(
    scope: &Scope,
    group: &str,
) -> anyhow::Result<finestra_billing::BillingConfig> {
    Ok(finestra_billing::BillingConfig {
        common: scope.config()?,
        consumer_group: scope.group(group),
        max_batch: 2_000,
        linger: Duration::from_millis(10),
        wallet_cache: Duration::from_secs(600),
        reservation_expiry: Duration::from_secs(30 * 24 * 3_600),
        sweep_every: Duration::from_secs(3_600),
        card_margin: Duration::from_secs(60),
        reserve_batch: 500,
        reserve_parallel: 4,
        crash_after_batches: None,
    })
}

pub async fn start_billing(scope: &Scope, group: &str) -> anyhow::Result<Started> {
    start_billing_with(billing_config(scope, group)?, system_clock()).await
}

pub async fn start_billing_with(
    config: finestra_billing::BillingConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Started> {
    let shutdown = Shutdown::new();
    let running = finestra_billing::start(config, clock, shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// Dispatch settings for a test: this scope's topics and groups, `billing_url` for
/// reservations (with an operator key made here), `provider_url` as the network, and retries
/// fast enough for a test (base 20 ms, cap 200 ms, 4 attempts).
pub async fn dispatch_config(
    scope: &Scope,
    billing_url: &str,
    provider_url: &str,
    provider_token: &str,
) -> anyhow::Result<finestra_dispatch::DispatchConfig> {
    use finestra_platform::auth::{Owner, Scope as KeyScope};
    let billing_key = scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    Ok(finestra_dispatch::DispatchConfig {
        common: scope.config()?,
        worker_group: scope.group("dispatch-worker"),
        billing_url: billing_url.to_owned(),
        billing_key,
        billing_connections: 2,
        billing_timeout: Duration::from_secs(5),
        provider_url: provider_url.to_owned(),
        provider_version: "v21.0".into(),
        provider_token: provider_token.to_owned(),
        provider_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(20),
        retry_cap: Duration::from_millis(200),
        retry_attempts: 4,
        max_in_flight: 10_000,
        send_concurrency: 64,
        accept_batch: 200,
        accept_parallel: 2,
        max_batch: 500,
        linger: Duration::from_millis(5),
        facts_ttl: Duration::from_millis(200),
        replay_wait: Duration::from_secs(5),
        max_pending_sends: 2_048,
        tenant_floor: 8,
        // A debug build on a busy machine is slow; tests about admission under load set less.
        send_latency_target: Duration::from_secs(10),
        // Tests that are not about tenant limits are never held back by them.
        tenant_rate: 100_000,
        tenant_burst: 200_000,
        tenant_weight: 1,
        tenant_queue: 5_000,
        events_group: scope.group("dispatch-events"),
        // Fast enough for a test: retries after ~50 ms, dead letters after 3 s.
        webhook_first_retry: Duration::from_millis(50),
        webhook_max_pause: Duration::from_millis(500),
        webhook_give_up: Duration::from_secs(3),
        webhook_timeout: Duration::from_secs(5),
        sweep_tenant_prefix: scope.tenant_prefix(),
        requeue_after: Duration::from_secs(300),
        requeue_every: Duration::from_secs(30),
        fep_grace: Duration::from_secs(1),
        // Tests that are not about the frequency cap are never held back by it.
        marketing_cap: 1_000,
        marketing_cap_days: 1,
        media_dir: std::env::temp_dir()
            .join(format!("finestra-media-{}", scope.id()))
            .to_string_lossy()
            .into_owned(),
        crash_after_event_batches: None,
    })
}

pub async fn start_dispatch_with(
    config: finestra_dispatch::DispatchConfig,
) -> anyhow::Result<Started> {
    let shutdown = Shutdown::new();
    let running = finestra_dispatch::start(config, system_clock(), shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// A simulator started in-process for a test.
pub struct StartedSim {
    pub running: finestra_simulator::Running,
    pub shutdown: Shutdown,
    /// The access token its numbers are registered with.
    pub token: String,
    /// Their throughput.
    pub number_rate: u32,
}

impl StartedSim {
    pub fn base_url(&self) -> String {
        self.running.base_url()
    }

    /// The network's control and Cloud API, as this test's partner uses them.
    pub fn network(&self) -> Network {
        Network::new(&self.base_url(), &self.token, self.number_rate)
    }

    /// Registers every number (and noted template) of `scope` with the network.
    pub async fn register_all(&self, scope: &Scope) -> anyhow::Result<()> {
        self.network().register_all(scope).await
    }

    /// See `Network::template`.
    pub async fn template(
        &self,
        waba_id: &str,
        name: &str,
        category: &str,
        body: &str,
        event: &str,
    ) -> anyhow::Result<String> {
        self.network()
            .template(waba_id, name, category, body, event)
            .await
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.running.task.await;
    }
}

/// A simulator's control API and Cloud API, reached over HTTP (in-process or a process).
#[derive(Clone)]
pub struct Network {
    pub base_url: String,
    /// The access token numbers are registered with.
    pub token: String,
    /// Their throughput.
    pub number_rate: u32,
    http: reqwest::Client,
}

impl Network {
    pub fn new(base_url: &str, token: &str, number_rate: u32) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            number_rate,
            http: reqwest::Client::new(),
        }
    }

    fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Registers a number with the network, as a partner configures its app.
    pub async fn register(&self, n: &NetworkNumber) -> anyhow::Result<()> {
        let answer = self
            .http
            .post(format!("{}/sim/v1/numbers", self.base_url()))
            .json(&serde_json::json!({
                "phone_number_id": n.phone_number_id, "waba_id": n.waba_id,
                "display_phone_number": "+39 02 0000 0000", "app_secret": n.app_secret,
                "access_token": self.token, "throughput_per_second": self.number_rate,
            }))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "registering {} with the network: {}",
            n.phone_number_id,
            answer.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Registers every number `scope`'s tenants got so far, and the templates it noted
    /// (a template the network holds already is left as it is).
    pub async fn register_all(&self, scope: &Scope) -> anyhow::Result<()> {
        for n in scope.network_numbers() {
            self.register(&n).await?;
        }
        for t in scope.network_templates() {
            if self.template_id(&t.waba_id, &t.name).await?.is_none() {
                self.template(&t.waba_id, &t.name, &t.category, &t.body, &t.event)
                    .await?;
            }
        }
        Ok(())
    }

    /// The network's id of the business account's template `name`, if it holds one.
    pub async fn template_id(&self, waba_id: &str, name: &str) -> anyhow::Result<Option<String>> {
        let page: finestra_cloudapi::templates::Page = self
            .http
            .get(format!(
                "{}/v21.0/{waba_id}/message_templates",
                self.base_url()
            ))
            .bearer_auth(&self.token)
            .query(&[("name", name)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(page.data.into_iter().next().map(|t| t.id))
    }

    /// A template of business account `waba_id` as it stands at the network: submitted through
    /// the Cloud API, then given `event` (APPROVED, PAUSED, DISABLED, REJECTED) by a review
    /// now. Returns the network's template id.
    pub async fn template(
        &self,
        waba_id: &str,
        name: &str,
        category: &str,
        body: &str,
        event: &str,
    ) -> anyhow::Result<String> {
        let content = finestra_cloudapi::templates::Content {
            body: body.into(),
            ..Default::default()
        };
        let created = self
            .http
            .post(format!(
                "{}/v21.0/{waba_id}/message_templates",
                self.base_url()
            ))
            .bearer_auth(&self.token)
            .json(&finestra_cloudapi::templates::submission(
                name, "it", category, &content,
            ))
            .send()
            .await?;
        anyhow::ensure!(
            created.status().is_success(),
            "submitting {name}: {}",
            created.text().await.unwrap_or_default()
        );
        let created: finestra_cloudapi::templates::Created = created.json().await?;
        let reviewed = self
            .http
            .post(format!("{}/sim/v1/template", self.base_url()))
            .json(&serde_json::json!({ "template_id": created.id, "event": event }))
            .send()
            .await?;
        anyhow::ensure!(
            reviewed.status().is_success(),
            "reviewing {name}: {}",
            reviewed.text().await.unwrap_or_default()
        );
        Ok(created.id)
    }
}

/// Starts the simulator posting webhooks to `ingest` (HTTP and gRPC addresses), reporting
/// blocks with an operator key, statuses 10 ms apart; its network is this test's own, and the
/// numbers the test's tenants got so far are registered with it (token `token`, throughput
/// `number_rate`).
pub async fn start_simulator(
    scope: &Scope,
    ingest: &Running,
    token: &str,
    number_rate: u32,
) -> anyhow::Result<StartedSim> {
    start_simulator_on(
        scope,
        ingest,
        token,
        number_rate,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
}

/// `start_simulator` listening on `http_addr` (a test that needs the network's address
/// before the network is up).
pub async fn start_simulator_on(
    scope: &Scope,
    ingest: &Running,
    token: &str,
    number_rate: u32,
    http_addr: SocketAddr,
) -> anyhow::Result<StartedSim> {
    use finestra_platform::auth::{Owner, Scope as KeyScope};
    let http = ingest.http_addr.context("ingest has an HTTP listener")?;
    let ingest_key = scope.key(Owner::Operator, &[KeyScope::Send]).await?;
    let shutdown = Shutdown::new();
    let running = finestra_simulator::start(
        finestra_simulator::SimConfig {
            http_addr,
            database_url: scope.config()?.database_url,
            webhook_url: format!("http://{http}/webhooks/cloud-api"),
            access_token: token.to_owned(),
            status_delay: Duration::from_millis(10),
            failure_per_mille: 0,
            read_per_mille: 0,
            number_rate,
            ingest_url: ingest.grpc_url(),
            ingest_key,
            review_delay: Duration::from_millis(100),
            banned_word: "casino".into(),
            network: format!("test-{}", scope.id()),
        },
        system_clock(),
        shutdown.clone(),
    )
    .await?;
    let sim = StartedSim {
        running,
        shutdown,
        token: token.to_owned(),
        number_rate,
    };
    sim.register_all(scope).await?;
    Ok(sim)
}

/// Accounts with no network to reach: templates are kept unsubmitted (see
/// `start_accounts_with_network`).
pub async fn start_accounts(scope: &Scope) -> anyhow::Result<Started> {
    // Port 9 (discard) has no listener here: the network is unreachable at once.
    start_accounts_with_network(scope, "http://127.0.0.1:9", "").await
}

/// Accounts submitting templates to the network at `provider_url` with `token`.
pub async fn start_accounts_with_network(
    scope: &Scope,
    provider_url: &str,
    token: &str,
) -> anyhow::Result<Started> {
    let config = finestra_accounts::AccountsConfig {
        common: scope.config()?,
        key_prefix: "fin_test_".into(),
        consumer_group: scope.group("accounts"),
        provider_url: provider_url.into(),
        provider_version: "v21.0".into(),
        provider_token: token.into(),
        provider_timeout: Duration::from_secs(5),
        submit_every: Duration::from_millis(500),
        submit_tenant_prefix: scope.tenant_prefix(),
    };
    let shutdown = Shutdown::new();
    let running = finestra_accounts::start(config, shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// The Cloud API gateway over dispatch and accounts at these gRPC URLs, its HTTP listener on
/// a port of its own (`running.http_addr`).
pub async fn start_gateway(
    scope: &Scope,
    dispatch_url: &str,
    accounts_url: &str,
) -> anyhow::Result<Started> {
    let mut config = finestra_gateway::GatewayConfig::from_lookup(&|_| None)?;
    config.common = scope.config()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    config.dispatch_url = dispatch_url.into();
    config.accounts_url = accounts_url.into();
    config.max_upload_bytes = 1 << 20;
    let shutdown = Shutdown::new();
    let running = finestra_gateway::start(config, shutdown.clone()).await?;
    Ok(Started { running, shutdown })
}

/// Posts a webhook body signed with `secret` (or unsigned when `None`).
pub async fn post_webhook(
    client: &reqwest::Client,
    ingest: &Running,
    body: &[u8],
    secret: Option<&str>,
) -> anyhow::Result<reqwest::StatusCode> {
    let addr = ingest.http_addr.context("ingest has an HTTP listener")?;
    let mut req = client
        .post(format!("http://{addr}/webhooks/cloud-api"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        req = req.header(
            finestra_cloudapi::SIGNATURE_HEADER,
            finestra_cloudapi::signature::sign(secret.as_bytes(), body),
        );
    }
    Ok(req.send().await?.status())
}

/// Polls `probe` until it returns `Some`, or fails after `within`. For effects that travel
/// through the broker: there is no event to wait on for "nothing changed", so tests poll the
/// observable state instead of sleeping a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Unix seconds now (provider timestamps are seconds).
pub fn now_secs() -> i64 {
    SystemClock.now().micros() / 1_000_000
}

/// Counts the records currently on `topic` (all partitions: high − low watermark).
pub async fn count_records(topic: &str) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let infra = infra().await?;
    let brokers = infra.brokers.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let mut total = 0;
        for t in md.topics() {
            for p in t.partitions() {
                let (lo, hi) = c.fetch_watermarks(&topic, p.id(), Duration::from_secs(5))?;
                total += hi - lo;
            }
        }
        Ok(total)
    })
    .await?
}

pub use serde_json;
pub use tonic;

/// Every event currently on `topic`, all partitions, in offset order per partition (a record
/// carrying several, `MessageStatuses`, gives each as its own envelope).
pub async fn read_all(topic: &str) -> anyhow::Result<Vec<finestra_proto::v1::Envelope>> {
    use prost::Message as _;
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let infra = infra().await?;
    let brokers = infra.brokers.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(
        move || -> anyhow::Result<Vec<finestra_proto::v1::Envelope>> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "finestra-testkit-reader")
                .set("enable.auto.commit", "false")
                .create()?;
            let md = c.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            let mut remaining = 0i64;
            for t in md.topics() {
                for p in t.partitions() {
                    let (lo, hi) = c.fetch_watermarks(&topic, p.id(), Duration::from_secs(5))?;
                    remaining += hi - lo;
                    tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Offset(lo))?;
                }
            }
            c.assign(&tpl)?;
            let mut out = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while remaining > 0 {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "reading {topic} timed out"
                );
                if let Some(m) = c.poll(Duration::from_millis(200)) {
                    let m = m?;
                    out.extend(finestra_proto::packing::unpack(
                        finestra_proto::v1::Envelope::decode(m.payload().unwrap_or_default())?,
                    ));
                    remaining -= 1;
                }
            }
            Ok(out)
        },
    )
    .await?
}

/// Runs `read` on a consumer of the test broker (in `group`, when given) with the partitions
/// of `topic`, off the async runtime (librdkafka's calls block).
async fn with_partitions(
    group: Option<&str>,
    topic: &str,
    read: impl FnOnce(&rdkafka::consumer::BaseConsumer, &str, Vec<i32>) -> anyhow::Result<i64>
    + Send
    + 'static,
) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = infra().await?.brokers.clone();
    let (group, topic) = (group.map(str::to_owned), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &brokers);
        if let Some(group) = &group {
            config.set("group.id", group);
        }
        let c: BaseConsumer = config.create()?;
        let md = c.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let partitions = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        read(&c, &topic, partitions)
    })
    .await?
}

/// Σ high watermarks of `topic`'s partitions: how many records were ever produced to it.
pub async fn produced(topic: &str) -> anyhow::Result<i64> {
    with_partitions(None, topic, |c, topic, partitions| {
        use rdkafka::consumer::Consumer;
        let mut total = 0;
        for p in partitions {
            total += c.fetch_watermarks(topic, p, Duration::from_secs(5))?.1;
        }
        Ok(total)
    })
    .await
}

/// Σ committed offsets of consumer group `group` on `topic` (0 for partitions it never
/// committed): how many records the group has fully processed.
pub async fn committed(group: &str, topic: &str) -> anyhow::Result<i64> {
    with_partitions(Some(group), topic, |c, topic, partitions| {
        use rdkafka::consumer::Consumer;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, p);
        }
        let offsets = c.committed_offsets(tpl, Duration::from_secs(5))?;
        Ok(offsets
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum())
    })
    .await
}

/// A binary of the workspace next to the running test's executable (`make test` builds the
/// service binaries and the CLI before the tests).
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `make test` (or `cargo build --bins`) first",
        bin.display()
    );
    Ok(bin)
}
