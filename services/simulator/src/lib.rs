//! The simulator: the default messaging network. It knows only what a real network would: the
//! numbers a partner registered with it (`/sim/v1/numbers`, as an app is configured at Meta)
//! and what Finestra sent it through the Cloud API, kept in its own `sim` schema (`store`). It
//! serves the Cloud API's send surface (`POST /v{version}/{phone_number_id}/messages`, the
//! number's bearer token), applies the network's own rules (window, block, throughput:
//! `network`), answers a `wamid`, then posts signed status webhooks (`sent`, `delivered`,
//! `read`, or `failed`) to ingest, echoing `biz_opaque_callback_data`. Templates are submitted,
//! listed, edited and deleted through `/{waba_id}/message_templates` (`templates_api`) and
//! reviewed by the network (`reviews`). A control API plays the users: a user writes to a
//! number (an inbound webhook, with a chosen time), blocks or unblocks it (reported to ingest),
//! stops or resumes marketing; it injects send failures, reviews templates now and emits the
//! network's health events (`health`).

pub mod network;
pub mod reviews;
pub mod store;
pub mod webhooks;

mod cloud_api;
mod controls;
mod health;
mod media_api;
mod observe;
mod templates_api;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use finestra_domain::Clock;
use finestra_platform::Shutdown;
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
        /// Postgres, for the network's own state (schema `sim`: registered numbers, submitted
        /// templates). It never reads Finestra's schemas.
        pub database_url: String = ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/finestra"),
        /// This network's name in its store: simulators sharing a database keep apart by it.
        pub network: String = ("SIM_NETWORK", "sim"),
        /// Where the network posts its webhooks (ingest).
        pub webhook_url: String = ("SIM_WEBHOOK_URL", "http://127.0.0.1:8080/webhooks/cloud-api"),
        /// The access token of a number registered without one.
        pub access_token: String = ("SIM_ACCESS_TOKEN", "finestra-simulator-token"),
        /// Delay before each status webhook (`sent` goes with `delivered` or `failed` in one;
        /// `read` follows in another).
        pub status_delay: Duration = ("SIM_STATUS_DELAY_MS", "50"),
        /// Share of sends that fail after `sent`, per mille.
        pub failure_per_mille: u32 = ("SIM_FAILURE_PER_MILLE", "0"),
        /// Share of delivered messages the user reads, per mille.
        pub read_per_mille: u32 = ("SIM_READ_PER_MILLE", "500"),
        /// Messages per second a number registered without a throughput may send before 130429.
        pub number_rate: u32 = ("SIM_NUMBER_RATE", "80"),
        /// Ingest's gRPC address: blocks are reported through `IngestInbound`, as a channel
        /// without block webhooks does. Empty: blocks stay inside the network (it still
        /// refuses sends with 131026).
        pub ingest_url: String = ("SIM_INGEST_URL", "http://127.0.0.1:7051"),
        /// An operator key (scope `send`) for `IngestInbound`.
        pub ingest_key: String = ("SIM_INGEST_KEY", ""),
        /// A submitted template is approved this long after its submission...
        pub review_delay: Duration = ("SIM_REVIEW_DELAY_MS", "2000"),
        /// ...unless its body contains this word (case-insensitive; empty: none).
        pub banned_word: String = ("SIM_BANNED_WORD", "casino"),
    }
}

/// Numbers as the store has them, kept briefly (a send looks its number up).
type NumberCache = Mutex<HashMap<String, (std::time::Instant, store::SimNumber)>>;

/// Reviewed templates by (WABA, name, language), kept briefly (`None`: none a send may name).
type TemplateCache =
    Mutex<HashMap<(String, String, String), (std::time::Instant, Option<network::KnownTemplate>)>>;

/// How long a cached number or template is used. This simulator drops its caches on every
/// change it makes; the bound covers another simulator process sharing the network's store.
const CACHE_TTL: Duration = Duration::from_secs(5);

struct Sim {
    templates: TemplateCache,
    numbers: NumberCache,
    populations: Mutex<HashMap<String, Population>>,
    faults: Mutex<HashMap<String, Fault>>,
    stats: Mutex<HashMap<String, NumberStats>>,
    /// Per number, the messages it accepted in the order it accepted them (their
    /// `biz_opaque_callback_data`, the newest `RECEIVED_KEPT`).
    received: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
    /// Per number, the wamids of the newest `RECEIVED_KEPT` messages its users sent (a read
    /// receipt must name one).
    inbound: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
    net: Mutex<Network>,
    pool: sqlx::PgPool,
    poster: Poster,
    config: SimConfig,
    clock: Arc<dyn Clock>,
    /// The status reports still to post: the server waits for them when it stops.
    reports: tokio_util::task::TaskTracker,
}

impl Sim {
    fn network(&self) -> &str {
        &self.config.network
    }

    /// The number, from a short cache in front of the store.
    async fn number(&self, phone_number_id: &str) -> Result<Option<store::SimNumber>, sqlx::Error> {
        if let Ok(cache) = self.numbers.lock()
            && let Some((at, n)) = cache.get(phone_number_id)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(n.clone()));
        }
        let found = store::number(&self.pool, self.network(), phone_number_id).await?;
        if let (Some(n), Ok(mut cache)) = (&found, self.numbers.lock()) {
            cache.insert(
                phone_number_id.to_owned(),
                (std::time::Instant::now(), n.clone()),
            );
        }
        Ok(found)
    }

    /// The business account's reviewed template a send names (short cache in front of the
    /// store).
    async fn template(
        &self,
        waba_id: &str,
        name: &str,
        language: &str,
    ) -> Result<Option<network::KnownTemplate>, sqlx::Error> {
        let key = (waba_id.to_owned(), name.to_owned(), language.to_owned());
        if let Ok(cache) = self.templates.lock()
            && let Some((at, t)) = cache.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(*t);
        }
        let known = store::template_named(&self.pool, self.network(), waba_id, name, language)
            .await?
            .and_then(|t| {
                Some(network::KnownTemplate {
                    marketing: t.category == "MARKETING",
                    parameter_count: usize::try_from(t.parameter_count).unwrap_or(0),
                    state: network::TemplateState::of(&t.status)?,
                })
            });
        if let Ok(mut cache) = self.templates.lock() {
            cache.insert(key, (std::time::Instant::now(), known));
        }
        Ok(known)
    }

    /// Forgets cached numbers and templates (after this simulator changed one).
    fn changed(&self) {
        if let Ok(mut c) = self.templates.lock() {
            c.clear();
        }
        if let Ok(mut c) = self.numbers.lock() {
            c.clear();
        }
    }

    /// Consumes one injected failure of the number, if any.
    fn take_fault(&self, number: &str) -> Option<Fault> {
        let Ok(mut faults) = self.faults.lock() else {
            return None;
        };
        let f = faults.get_mut(number)?;
        let fire = if f.always {
            true
        } else if f.next > 0 {
            f.next -= 1;
            true
        } else {
            false
        };
        let fault = *f;
        drop(faults);
        if fire {
            self.count(number, |s| s.injected_failures += 1);
        }
        fire.then_some(fault)
    }

    fn count(&self, number: &str, f: impl FnOnce(&mut NumberStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(stats.entry(number.to_owned()).or_default());
        }
    }

    fn note_inbound(&self, number: &str, wamid: &str) {
        if let Ok(mut inbound) = self.inbound.lock() {
            let kept = inbound.entry(number.to_owned()).or_default();
            if kept.len() == RECEIVED_KEPT {
                kept.pop_front();
            }
            kept.push_back(wamid.to_owned());
        }
    }

    fn wrote(&self, number: &str, wamid: &str) -> bool {
        self.inbound
            .lock()
            .map(|i| i.get(number).is_some_and(|k| k.iter().any(|w| w == wamid)))
            .unwrap_or(false)
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
    let pool = finestra_platform::stores::pool_options(8).connect_lazy(&config.database_url)?;
    store::migrate(&pool).await?;
    let review_pool = pool.clone();
    let sim = Arc::new(Sim {
        templates: Mutex::new(HashMap::new()),
        numbers: Mutex::new(HashMap::new()),
        populations: Mutex::new(HashMap::new()),
        faults: Mutex::new(HashMap::new()),
        stats: Mutex::new(HashMap::new()),
        received: Mutex::new(HashMap::new()),
        inbound: Mutex::new(HashMap::new()),
        net: Mutex::new(Network::default()),
        pool,
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
            network: config.network.clone(),
            delay: config.review_delay,
            banned_word: config.banned_word.clone(),
            every: Duration::from_millis(250),
            clock,
        }
        .run(shutdown.clone()),
    );
    let app = Router::new()
        // One parameter name per position: the router needs it across these paths.
        .route("/{version}/{id}/messages", post(cloud_api::send))
        .route(
            "/{version}/{id}/message_templates",
            post(templates_api::submit)
                .get(templates_api::list)
                .delete(templates_api::delete),
        )
        .route(
            "/{version}/{id}",
            post(templates_api::edit).get(media_api::info),
        )
        .route("/{version}/{id}/media", post(media_api::upload))
        .route("/media-download/{id}", get(media_api::download))
        .route(
            "/{version}/{id}/block_users",
            post(cloud_api::block_users).delete(cloud_api::unblock_users),
        )
        .route(
            "/sim/v1/numbers",
            post(controls::register_number).get(controls::list_numbers),
        )
        .route("/sim/v1/say", post(controls::say))
        .route("/sim/v1/block", post(controls::block))
        .route("/sim/v1/faults", post(controls::faults))
        .route("/sim/v1/preference", post(controls::preference))
        .route("/sim/v1/template", post(controls::review_template))
        .route("/sim/v1/health", post(health::emit))
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
