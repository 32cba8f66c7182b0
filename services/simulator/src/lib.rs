//! The simulator: the default messaging network. It serves the Cloud API's send surface
//! (`POST /v{version}/{phone_number_id}/messages`, bearer token), applies the network's own
//! rules (window, block, throughput: `network`), answers a `wamid`, then posts signed status
//! webhooks (`sent`, `delivered`, `read`, or `failed`) to ingest, echoing
//! `biz_opaque_callback_data`. A control API plays the users: a user writes to a number (an
//! inbound webhook, with a chosen time), blocks or unblocks it (reported to ingest), stops or
//! resumes marketing; it injects send failures and reviews templates (`reviews`).

pub mod network;
pub mod reviews;
pub mod webhooks;

mod cloud_api;
mod controls;
mod observe;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use finestra_domain::Clock;
use finestra_platform::Shutdown;
use finestra_registry::Registry;
use std::collections::HashMap;

use controls::Population;
use network::Network;
use observe::RECEIVED_KEPT;
use webhooks::Poster;

pub use controls::Fault;
pub use observe::NumberStats;

finestra_platform::settings! {
    /// The simulator's settings (docs/configuration.md).
    pub struct SimConfig {
        /// The network's Cloud API listener.
        pub http_addr: SocketAddr = ("SIM_HTTP_ADDR", "127.0.0.1:8090"),
        /// Postgres, for the accounts read model (numbers, app secrets, templates to review).
        pub database_url: String = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finestra"),
        /// Where the network posts its webhooks (ingest).
        pub webhook_url: String = ("SIM_WEBHOOK_URL", "http://127.0.0.1:8080/webhooks/cloud-api"),
        /// The bearer token senders must present.
        pub access_token: String = ("SIM_ACCESS_TOKEN", "finestra-simulator-token"),
        /// Delay before each status webhook (`sent` goes with `delivered` or `failed` in one;
        /// `read` follows in another).
        pub status_delay: Duration = ("SIM_STATUS_DELAY_MS", "50"),
        /// Share of sends that fail after `sent`, per mille.
        pub failure_per_mille: u32 = ("SIM_FAILURE_PER_MILLE", "0"),
        /// Share of delivered messages the user reads, per mille.
        pub read_per_mille: u32 = ("SIM_READ_PER_MILLE", "500"),
        /// Messages per second a number may send before 130429.
        pub number_rate: u32 = ("SIM_NUMBER_RATE", "80"),
        /// Ingest's gRPC address: blocks are reported through `IngestInbound`, as a channel
        /// without block webhooks does. Empty: blocks stay inside the network (it still
        /// refuses sends with 131026).
        pub ingest_url: String = ("SIM_INGEST_URL", "http://127.0.0.1:7051"),
        /// An operator key (scope `send`) for `IngestInbound`.
        pub ingest_key: String = ("SIM_INGEST_KEY", ""),
        /// A submitted template is approved this long after its creation...
        pub review_delay: Duration = ("SIM_REVIEW_DELAY_MS", "2000"),
        /// ...unless its body contains this word (case-insensitive; empty: none).
        pub banned_word: String = ("SIM_BANNED_WORD", "casino"),
        /// Review only tenants whose id starts with this (empty: all; tests scope it).
        pub review_tenant_prefix: String = ("SIM_REVIEW_TENANT_PREFIX", ""),
    }
}

/// Numbers as the registry has them, kept briefly (a send looks its number up).
type NumberCache = Mutex<HashMap<String, (std::time::Instant, finestra_registry::Number)>>;

/// Approved templates by (tenant, name, language), kept briefly.
type TemplateCache =
    Mutex<HashMap<(String, String, String), (std::time::Instant, Option<network::KnownTemplate>)>>;

struct Sim {
    templates: TemplateCache,
    numbers: NumberCache,
    populations: Mutex<HashMap<String, Population>>,
    faults: Mutex<HashMap<String, Fault>>,
    stats: Mutex<HashMap<String, NumberStats>>,
    /// Per number, the messages it accepted in the order it accepted them (their
    /// `biz_opaque_callback_data`, the newest `RECEIVED_KEPT`).
    received: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
    net: Mutex<Network>,
    registry: Registry,
    poster: Poster,
    config: SimConfig,
    clock: Arc<dyn Clock>,
    /// The status reports still to post: the server waits for them when it stops.
    reports: tokio_util::task::TaskTracker,
}

impl Sim {
    /// The number, from a 5 s cache in front of the registry.
    async fn number(
        &self,
        phone_number_id: &str,
    ) -> Result<Option<finestra_registry::Number>, finestra_registry::RegistryError> {
        if let Ok(cache) = self.numbers.lock()
            && let Some((at, n)) = cache.get(phone_number_id)
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(Some(n.clone()));
        }
        let found = self.registry.number(phone_number_id).await?;
        if let (Some(n), Ok(mut cache)) = (&found, self.numbers.lock()) {
            cache.insert(
                phone_number_id.to_owned(),
                (std::time::Instant::now(), n.clone()),
            );
        }
        Ok(found)
    }

    /// The tenant's approved template (5 s cache in front of the control plane's table).
    async fn template(
        &self,
        tenant_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<network::KnownTemplate>, sqlx::Error> {
        let key = (tenant_id.to_owned(), name.to_owned(), language.to_owned());
        if let Ok(cache) = self.templates.lock()
            && let Some((at, t)) = cache.get(&key)
            && at.elapsed() < Duration::from_secs(5)
        {
            return Ok(*t);
        }
        // As the control plane stores it, judged by the channel's rules (a pause that has
        // ended counts as approved: one rule, in finestra_domain).
        let now = self.clock.now();
        let known =
            finestra_registry::template_send_facts(self.registry.pool(), tenant_id, name, language)
                .await?
                .and_then(|row| row.facts())
                .filter(|t| t.status.at(now) == finestra_domain::template::Status::Approved)
                .map(|t| network::KnownTemplate {
                    marketing: t.category == finestra_domain::template::Category::Marketing,
                    parameter_count: t.parameter_count,
                });
        if let Ok(mut cache) = self.templates.lock() {
            cache.insert(key, (std::time::Instant::now(), known));
        }
        Ok(known)
    }

    /// Consumes one injected failure of the number, if any.
    fn take_fault(&self, number: &str) -> bool {
        let Ok(mut faults) = self.faults.lock() else {
            return false;
        };
        let Some(f) = faults.get_mut(number) else {
            return false;
        };
        let fire = if f.always {
            true
        } else if f.next > 0 {
            f.next -= 1;
            true
        } else {
            false
        };
        drop(faults);
        if fire {
            self.count(number, |s| s.injected_failures += 1);
        }
        fire
    }

    fn count(&self, number: &str, f: impl FnOnce(&mut NumberStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(stats.entry(number.to_owned()).or_default());
        }
    }

    fn note_received(&self, number: &str, callback: &str) {
        if let Ok(mut received) = self.received.lock() {
            let order = received.entry(number.to_owned()).or_default();
            if order.len() == RECEIVED_KEPT {
                order.pop_front();
            }
            order.push_back(callback.to_owned());
        }
    }
}

/// A started simulator.
pub struct Running {
    pub http_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

pub async fn start(
    config: SimConfig,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> anyhow::Result<Running> {
    let pool = finestra_registry::connect(&config.database_url).await?;
    let review_pool = pool.clone();
    let sim = Arc::new(Sim {
        templates: Mutex::new(HashMap::new()),
        numbers: Mutex::new(HashMap::new()),
        populations: Mutex::new(HashMap::new()),
        faults: Mutex::new(HashMap::new()),
        stats: Mutex::new(HashMap::new()),
        received: Mutex::new(HashMap::new()),
        net: Mutex::new(Network::default()),
        registry: Registry::new(pool),
        poster: Poster {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: config.webhook_url.clone(),
        },
        config: config.clone(),
        clock: clock.clone(),
        reports: tokio_util::task::TaskTracker::new(),
    });
    let reports = sim.reports.clone();
    let reviewer = tokio::spawn(
        reviews::Reviewer {
            pool: review_pool,
            poster: sim.poster.clone(),
            delay: config.review_delay,
            banned_word: config.banned_word.clone(),
            tenant_prefix: config.review_tenant_prefix.clone(),
            every: Duration::from_millis(250),
            clock,
        }
        .run(shutdown.clone()),
    );
    let app = Router::new()
        .route(
            "/{version}/{phone_number_id}/messages",
            post(cloud_api::send),
        )
        .route("/sim/v1/say", post(controls::say))
        .route("/sim/v1/block", post(controls::block))
        .route("/sim/v1/faults", post(controls::faults))
        .route("/sim/v1/preference", post(controls::preference))
        .route("/sim/v1/template", post(controls::review_template))
        .route("/sim/v1/population", post(controls::population))
        .route("/sim/v1/stats/{phone_number_id}", get(observe::stats))
        .route("/sim/v1/received/{phone_number_id}", get(observe::received))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(sim);
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let http_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the simulator's HTTP server failed");
        }
        if let Err(e) = reviewer.await {
            tracing::error!(error = %e, "the template reviewer ended abnormally");
        }
        // Reports in flight are posted, within a bound (a stopping network says no more).
        reports.close();
        if tokio::time::timeout(Duration::from_secs(5), reports.wait())
            .await
            .is_err()
        {
            tracing::warn!("status reports still pending at shutdown were dropped");
        }
    });
    tracing::info!(%http_addr, "simulator started");
    Ok(Running { http_addr, task })
}
