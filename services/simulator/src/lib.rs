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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use finestra_domain::Clock;
use finestra_platform::Shutdown;
use finestra_platform::config::{env_addr, env_parse, env_string};
use finestra_registry::Registry;
use rand::Rng as _;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use network::{Network, Refusal};
use webhooks::Poster;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub http_addr: SocketAddr,
    pub database_url: String,
    /// Where the network posts its webhooks (ingest).
    pub webhook_url: String,
    /// The bearer token senders must present.
    pub access_token: String,
    /// Delay before each status webhook.
    pub status_delay: Duration,
    /// Share of sends that fail after `sent`, per mille.
    pub failure_per_mille: u32,
    /// Share of delivered messages the user reads, per mille.
    pub read_per_mille: u32,
    /// Messages per second a number may send before 130429.
    pub number_rate: u32,
    /// Ingest's gRPC address and an operator key (scope `send`): blocks are reported through
    /// `IngestInbound`, as a channel without block webhooks does. Empty: blocks stay inside
    /// the network (it still refuses sends with 131026).
    pub ingest_url: String,
    pub ingest_key: String,
    /// A submitted template is approved this long after its creation...
    pub review_delay: Duration,
    /// ...unless its body contains this word (case-insensitive; empty: none).
    pub banned_word: String,
    /// Review only tenants whose id starts with this (empty: all; tests scope it).
    pub review_tenant_prefix: String,
}

impl SimConfig {
    pub fn from_env() -> Result<Self, finestra_platform::ConfigError> {
        Ok(Self {
            http_addr: env_addr("SIM_HTTP_ADDR", "127.0.0.1:8090")?,
            database_url: env_string(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/finestra",
            ),
            webhook_url: env_string(
                "SIM_WEBHOOK_URL",
                "http://127.0.0.1:8080/webhooks/cloud-api",
            ),
            access_token: env_string("SIM_ACCESS_TOKEN", "finestra-simulator-token"),
            status_delay: Duration::from_millis(env_parse("SIM_STATUS_DELAY_MS", 50u64)?),
            failure_per_mille: env_parse("SIM_FAILURE_PER_MILLE", 0u32)?,
            read_per_mille: env_parse("SIM_READ_PER_MILLE", 500u32)?,
            number_rate: env_parse("SIM_NUMBER_RATE", 80u32)?,
            ingest_url: env_string("SIM_INGEST_URL", "http://127.0.0.1:7051"),
            ingest_key: env_string("SIM_INGEST_KEY", ""),
            review_delay: Duration::from_millis(env_parse("SIM_REVIEW_DELAY_MS", 2_000u64)?),
            banned_word: env_string("SIM_BANNED_WORD", "casino"),
            review_tenant_prefix: env_string("SIM_REVIEW_TENANT_PREFIX", ""),
        })
    }
}

/// Failures a test or a demo injects for a number: the next `next` sends (or every send while
/// `always`) answer HTTP `http_status` with a temporary Cloud API error.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct Fault {
    #[serde(default)]
    pub next: u32,
    #[serde(default)]
    pub always: bool,
    #[serde(default = "default_fault_status")]
    pub http_status: u16,
}

fn default_fault_status() -> u16 {
    500
}

/// What the network did with a number's sends (for tests and demos).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NumberStats {
    pub accepted: u64,
    pub refused: u64,
    pub rate_limited: u64,
    pub injected_failures: u64,
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

/// A Cloud-API-shaped error answer.
fn cloud_error(
    status: StatusCode,
    code: i32,
    title: &str,
    details: &str,
) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({
            "error": {
                "message": format!("({code}) {title}"),
                "type": "OAuthException",
                "code": code,
                "error_data": { "messaging_product": "whatsapp", "details": details },
                "fbtrace_id": "sim"
            }
        })),
    )
}

/// Message types the send surface accepts.
const TYPES: [&str; 11] = [
    "text",
    "template",
    "image",
    "document",
    "interactive",
    "reaction",
    "location",
    "audio",
    "video",
    "sticker",
    "contacts",
];

async fn send(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token != Some(sim.config.access_token.as_str()) {
        return cloud_error(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token",
            "the bearer token is missing or wrong",
        );
    }
    if !version.starts_with('v') {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "unknown API version",
        );
    }
    let number = match sim.number(&phone_number_id).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return cloud_error(
                StatusCode::BAD_REQUEST,
                100,
                "Invalid parameter",
                "unknown phone number id",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "looking up a number failed");
            return cloud_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                1,
                "Unknown error",
                "try again",
            );
        }
    };
    if sim.take_fault(&phone_number_id) {
        return cloud_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            1,
            "An unknown error occurred",
            "injected by the simulator",
        );
    }
    let to = body["to"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('+')
        .to_owned();
    let kind = body["type"].as_str().unwrap_or("text");
    if body["messaging_product"] != "whatsapp"
        || to.is_empty()
        || !to.bytes().all(|b| b.is_ascii_digit())
        || !TYPES.contains(&kind)
        || body.get(kind).is_none()
    {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "messaging_product, to (digits), type and its object are required",
        );
    }
    let now = sim.clock.now().micros();
    let admitted = sim.net.lock().map_err(|_| ()).map(|mut net| {
        net.admit(
            &phone_number_id,
            &to,
            kind == "template",
            now,
            sim.config.number_rate,
        )
    });
    match admitted {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => {
            sim.count(&phone_number_id, |s| {
                s.refused += 1;
                if refusal == Refusal::RateLimited {
                    s.rate_limited += 1;
                }
            });
            metrics::counter!("finestra_simulator_refused_total", "code" => refusal.code().to_string())
                .increment(1);
            let status = if refusal == Refusal::RateLimited {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::BAD_REQUEST
            };
            return cloud_error(status, refusal.code(), refusal.title(), &to);
        }
        Err(()) => {
            return cloud_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                1,
                "Unknown error",
                "try again",
            );
        }
    }
    if kind == "template" {
        let t = &body["template"];
        let name = t["name"].as_str().unwrap_or_default();
        let language = t["language"]["code"].as_str().unwrap_or_default();
        let given: usize = t["components"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| c["type"] == "body")
                    .map(|c| c["parameters"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        let known = match sim.template(&number.tenant_id, name, language).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "looking up a template failed");
                return cloud_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    1,
                    "Unknown error",
                    "try again",
                );
            }
        };
        let checked = sim
            .net
            .lock()
            .map(|net| net.check_template(&phone_number_id, &to, known, given));
        if let Ok(Err(refusal)) = checked {
            sim.count(&phone_number_id, |s| s.refused += 1);
            return cloud_error(
                StatusCode::BAD_REQUEST,
                refusal.code(),
                refusal.title(),
                &to,
            );
        }
    }
    let wamid = format!("wamid.sim.{:032x}", rand::rng().random::<u128>());
    let callback = body["biz_opaque_callback_data"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    metrics::counter!("finestra_simulator_accepted_total").increment(1);
    sim.count(&phone_number_id, |s| s.accepted += 1);
    sim.note_received(&phone_number_id, &callback);
    sim.reports.spawn(report_statuses(
        sim.clone(),
        StatusReport {
            number: number.phone_number_id.clone(),
            display: number.display_phone_number.clone(),
            secret: number.app_secret.clone(),
            wamid: wamid.clone(),
            to: to.clone(),
            callback,
            traceparent: finestra_platform::trace::header(&headers).map(str::to_owned),
        },
    ));
    (
        StatusCode::OK,
        Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": to }],
            "messages": [{ "id": wamid }]
        })),
    )
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

#[derive(Deserialize)]
struct FaultRequest {
    phone_number_id: String,
    #[serde(flatten)]
    fault: Fault,
}

/// Injects failures for a number (`next: 0, always: false` clears them).
async fn faults(
    State(sim): State<Arc<Sim>>,
    Json(f): Json<FaultRequest>,
) -> (StatusCode, Json<Value>) {
    match sim.faults.lock() {
        Ok(mut faults) => {
            faults.insert(f.phone_number_id, f.fault);
            (StatusCode::OK, Json(json!({ "ok": true })))
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "try again"})),
        ),
    }
}

/// A number's counters.
/// How many accepted messages per number `received` keeps.
const RECEIVED_KEPT: usize = 10_000;

/// The messages a number accepted, oldest first (their callback data: Finestra's message ids).
async fn received(
    State(sim): State<Arc<Sim>>,
    Path(phone_number_id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let order: Vec<String> = sim
        .received
        .lock()
        .ok()
        .and_then(|r| r.get(&phone_number_id).map(|o| o.iter().cloned().collect()))
        .unwrap_or_default();
    (StatusCode::OK, Json(json!({ "message_ids": order })))
}

async fn stats(
    State(sim): State<Arc<Sim>>,
    Path(phone_number_id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let s = sim
        .stats
        .lock()
        .ok()
        .and_then(|s| s.get(&phone_number_id).copied())
        .unwrap_or_default();
    (StatusCode::OK, Json(json!(s)))
}

/// Posts the message's statuses in order, each after the configured delay.
/// Status webhooks are retried the way the real network retries them (for days there): here
/// about a quarter of an hour at the 5 s cap, so an ingest outage delays statuses, never loses
/// them.
const STATUS_ATTEMPTS: u32 = 200;

/// What the network reports on one accepted send.
struct StatusReport {
    number: String,
    display: String,
    secret: String,
    wamid: String,
    to: String,
    callback: String,
    /// The send's trace context, echoed on its status webhooks.
    traceparent: Option<String>,
}

async fn report_statuses(sim: Arc<Sim>, report: StatusReport) {
    let StatusReport {
        number,
        display,
        secret,
        wamid,
        to,
        callback,
        traceparent,
    } = report;
    let (fail, read) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..1_000) < sim.config.failure_per_mille,
            rng.random_range(0..1_000) < sim.config.read_per_mille,
        )
    };
    let mut statuses = vec!["sent"];
    if fail {
        statuses.push("failed");
    } else {
        statuses.push("delivered");
        if read {
            statuses.push("read");
        }
    }
    for status in statuses {
        tokio::time::sleep(sim.config.status_delay).await;
        let at = sim.clock.now().micros() / 1_000_000;
        let mut body = finestra_cloudapi::build::status_with_callback(
            &number, &display, &wamid, status, &to, at, &callback,
        );
        if status == "failed" {
            body["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = json!([{
                "code": 131000, "title": "Something went wrong",
                "message": "Something went wrong",
                "error_data": { "details": "the simulator failed this message" }
            }]);
        }
        let posted = sim
            .poster
            .post_traced(&secret, &body, STATUS_ATTEMPTS, traceparent.as_deref())
            .await;
        if let Err(e) = posted {
            tracing::warn!(error = %e, %wamid, status, "a status webhook could not be delivered");
        }
    }
    if !fail {
        maybe_reply(&sim, &number, &to).await;
    }
}

/// A user of the number's population answers a delivered message, now and then.
async fn maybe_reply(sim: &Sim, number: &str, to: &str) {
    let share = sim
        .populations
        .lock()
        .ok()
        .and_then(|p| p.get(number).copied())
        .map_or(0, |p| p.reply_per_mille);
    if share == 0 || rand::rng().random_range(0..1_000) >= share {
        return;
    }
    let Ok(Some(n)) = sim.number(number).await else {
        return;
    };
    let at = sim.clock.now().micros();
    if let Err((wamid, e)) = user_writes(sim, &n, to, "Simulated user", "Thanks!", at, None).await {
        tracing::warn!(%wamid, error = %e, "a population reply could not be delivered");
    }
}

#[derive(Deserialize)]
struct Say {
    phone_number_id: String,
    from: String,
    #[serde(default)]
    name: String,
    text: String,
    /// The message was sent this long ago (the provider delivers late).
    #[serde(default)]
    seconds_ago: i64,
    /// The user came from this ad (a referral: an FEP if the business replies in time).
    #[serde(default)]
    referral_source_id: Option<String>,
    /// The user sends media instead of text: image, document, audio, video or sticker (the
    /// text becomes its caption).
    #[serde(default)]
    media: Option<String>,
}

/// The number a control call names, or the answer to give when there is none.
async fn control_number(
    sim: &Sim,
    phone_number_id: &str,
) -> Result<finestra_registry::Number, (StatusCode, Json<Value>)> {
    match sim.number(phone_number_id).await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown phone number id"})),
        )),
        Err(e) => {
            tracing::error!(error = %e, "looking up a number failed");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "try again"})),
            ))
        }
    }
}

/// A user writes to a number: the network records the window and posts the webhook.
async fn say(State(sim): State<Arc<Sim>>, Json(say): Json<Say>) -> (StatusCode, Json<Value>) {
    let number = match control_number(&sim, &say.phone_number_id).await {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let at = sim.clock.now().micros() - say.seconds_ago.max(0) * 1_000_000;
    let referral = say
        .referral_source_id
        .as_deref()
        .map(finestra_cloudapi::build::ad_referral);
    if let Some(kind) = &say.media
        && !MEDIA.contains(&kind.as_str())
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("media is one of {}", MEDIA.join(", "))})),
        );
    }
    let written = user_writes_kind(
        &sim,
        &number,
        &say.from,
        &say.name,
        &say.text,
        at,
        referral,
        say.media.as_deref(),
    )
    .await;
    match written {
        Ok(wamid) => (StatusCode::OK, Json(json!({ "wamid": wamid }))),
        Err((wamid, e)) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "wamid": wamid, "error": e })),
        ),
    }
}

/// Media a simulated user can send.
const MEDIA: [&str; 5] = ["image", "document", "audio", "video", "sticker"];

/// A user's text reaches the number at `at` (µs): the network records the window and posts
/// the signed webhook. The wamid, or it with why ingest did not take it.
async fn user_writes(
    sim: &Sim,
    number: &finestra_registry::Number,
    from: &str,
    name: &str,
    text: &str,
    at: i64,
    referral: Option<Value>,
) -> Result<String, (String, String)> {
    user_writes_kind(sim, number, from, name, text, at, referral, None).await
}

/// Like `user_writes`, as media of `media` kind (the text as its caption) when given.
#[allow(clippy::too_many_arguments)]
async fn user_writes_kind(
    sim: &Sim,
    number: &finestra_registry::Number,
    from: &str,
    name: &str,
    text: &str,
    at: i64,
    referral: Option<Value>,
    media: Option<&str>,
) -> Result<String, (String, String)> {
    let wamid = format!("wamid.sim.in.{:032x}", rand::rng().random::<u128>());
    let msg = finestra_cloudapi::build::InboundText {
        wamid: &wamid,
        from,
        profile_name: name,
        timestamp: at / 1_000_000,
        body: text,
        referral,
    };
    let mut body = finestra_cloudapi::build::text_messages(
        &number.phone_number_id,
        &number.display_phone_number,
        &[msg],
    );
    if let Some(kind) = media {
        // The Cloud API shape of inbound media: an id to download it by, its type, a caption.
        let m = &mut body["entry"][0]["changes"][0]["value"]["messages"][0];
        if let Some(obj) = m.as_object_mut() {
            obj.remove("text");
            obj.insert("type".into(), json!(kind));
            obj.insert(
                kind.to_owned(),
                json!({ "id": format!("media.sim.{:016x}", rand::rng().random::<u64>()),
                        "mime_type": "application/octet-stream", "caption": text }),
            );
        }
    }
    if let Ok(mut net) = sim.net.lock() {
        net.user_wrote(&number.phone_number_id, from, at);
    }
    match sim.poster.post(&number.app_secret, &body, 8).await {
        Ok(status) if status < 300 => Ok(wamid),
        Ok(status) => Err((wamid, format!("ingest answered {status}"))),
        Err(e) => Err((wamid, e)),
    }
}

/// Simulated users of a number: `users` of them wrote once; any user replies to a delivered
/// message with probability `reply_per_mille` / 1000.
#[derive(Clone, Copy, Debug, Default)]
struct Population {
    reply_per_mille: u32,
}

#[derive(Deserialize)]
struct PopulationRequest {
    phone_number_id: String,
    users: u32,
    #[serde(default)]
    reply_per_mille: u32,
    /// wa_ids are `<prefix><6 digits>`.
    #[serde(default = "default_population_prefix")]
    user_prefix: String,
}

fn default_population_prefix() -> String {
    "39377".into()
}

/// Starts a population: every user writes once now (opening their windows); from then on a
/// share of the number's delivered messages get a reply.
async fn population(
    State(sim): State<Arc<Sim>>,
    Json(p): Json<PopulationRequest>,
) -> (StatusCode, Json<Value>) {
    let number = match control_number(&sim, &p.phone_number_id).await {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    if let Ok(mut pops) = sim.populations.lock() {
        pops.insert(
            p.phone_number_id.clone(),
            Population {
                reply_per_mille: p.reply_per_mille.min(1_000),
            },
        );
    }
    let at = sim.clock.now().micros();
    let mut wrote = 0u32;
    let users: Vec<String> = (0..p.users)
        .map(|i| format!("{}{i:06}", p.user_prefix))
        .collect();
    for chunk in users.chunks(32) {
        let writes = chunk
            .iter()
            .map(|u| user_writes(&sim, &number, u, "Simulated user", "Hi!", at, None));
        wrote += futures::future::join_all(writes)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count() as u32;
    }
    (
        StatusCode::OK,
        Json(json!({ "users": p.users, "wrote": wrote })),
    )
}

#[derive(Deserialize)]
struct Block {
    phone_number_id: String,
    user: String,
    blocked: bool,
}

/// A user blocks (or unblocks) a number: sends to them fail with 131026 meanwhile, and the
/// block is reported to ingest.
async fn block(State(sim): State<Arc<Sim>>, Json(b): Json<Block>) -> (StatusCode, Json<Value>) {
    match sim.net.lock() {
        Ok(mut net) => net.set_blocked(&b.phone_number_id, &b.user, b.blocked),
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "try again"})),
            );
        }
    }
    if sim.config.ingest_key.is_empty() {
        return (
            StatusCode::OK,
            Json(json!({ "blocked": b.blocked, "reported": false })),
        );
    }
    match report_block(&sim, &b).await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "blocked": b.blocked, "reported": true })),
        ),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "blocked": b.blocked, "error": e })),
        ),
    }
}

async fn report_block(sim: &Sim, b: &Block) -> Result<(), String> {
    use finestra_proto::v1::ingest_service_client::IngestServiceClient;
    use finestra_proto::v1::{InboundItem, IngestInboundRequest, UserBlock, UserRef, inbound_item};
    let channel = tonic::transport::Channel::from_shared(sim.config.ingest_url.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("ingest is unreachable: {e}"))?;
    let bearer =
        finestra_platform::auth::Bearer::new(&sim.config.ingest_key).map_err(|e| e.to_string())?;
    let mut client = IngestServiceClient::new(
        tonic::service::interceptor::InterceptedService::new(channel, bearer),
    );
    let at = sim.clock.now().micros();
    client
        .ingest_inbound(IngestInboundRequest {
            phone_number_id: b.phone_number_id.clone(),
            items: vec![InboundItem {
                timestamp: Some(finestra_proto::time::from_micros(at)),
                item: Some(inbound_item::Item::Block(UserBlock {
                    phone_number_id: b.phone_number_id.clone(),
                    user: Some(UserRef {
                        wa_id: b.user.clone(),
                        ..UserRef::default()
                    }),
                    blocked: b.blocked,
                })),
            }],
        })
        .await
        .map_err(|s| format!("ingest refused the block: {}", s.message()))?;
    Ok(())
}

#[derive(Deserialize)]
struct Preference {
    phone_number_id: String,
    user: String,
    /// true: stop marketing messages; false: resume them.
    stop: bool,
}

/// A user stops (or resumes) marketing messages: the network refuses marketing templates to
/// them (131050) and posts a `user_preferences` webhook (Finestra then refuses them itself
/// with MARKETING_OPT_OUT).
async fn preference(
    State(sim): State<Arc<Sim>>,
    Json(p): Json<Preference>,
) -> (StatusCode, Json<Value>) {
    let number = match control_number(&sim, &p.phone_number_id).await {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    if let Ok(mut net) = sim.net.lock() {
        net.set_marketing_stopped(&number.phone_number_id, &p.user, p.stop);
    }
    let at = sim.clock.now().micros() / 1_000_000;
    let body = finestra_cloudapi::build::marketing_preference(
        &number.phone_number_id,
        &number.display_phone_number,
        &p.user,
        p.stop,
        at,
    );
    match sim.poster.post(&number.app_secret, &body, 8).await {
        Ok(status) if status < 300 => (StatusCode::OK, Json(json!({ "stop": p.stop }))),
        Ok(status) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": format!("ingest answered {status}") })),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": e }))),
    }
}

#[derive(Deserialize)]
struct TemplateReview {
    template_id: String,
    /// APPROVED, REJECTED, PAUSED, REINSTATED, DISABLED, ...
    event: String,
}

/// The network reviews a template now (e.g. pauses it for low quality).
async fn review_template(
    State(sim): State<Arc<Sim>>,
    Json(r): Json<TemplateReview>,
) -> (StatusCode, Json<Value>) {
    let found = reviews::one(sim.registry.pool(), &r.template_id).await;
    let t = match found {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Json(
                    json!({"error": "no such template (or its tenant has no business account id)"}),
                ),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "looking up a template failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "try again"})),
            );
        }
    };
    // Strictly after the last review applied (two reviews in one second: the later one wins).
    let last = reviews::last_review_secs(sim.registry.pool(), &r.template_id)
        .await
        .ok()
        .flatten();
    let now = (sim.clock.now().micros() / 1_000_000).max(last.map_or(0, |l| l + 1));
    match reviews::post(&sim.poster, &t, &r.event, now).await {
        Ok(status) if status < 300 => (StatusCode::OK, Json(json!({ "event": r.event }))),
        Ok(status) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": format!("ingest answered {status}") })),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": e }))),
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
        .route("/{version}/{phone_number_id}/messages", post(send))
        .route("/sim/v1/say", post(say))
        .route("/sim/v1/block", post(block))
        .route("/sim/v1/faults", post(faults))
        .route("/sim/v1/preference", post(preference))
        .route("/sim/v1/template", post(review_template))
        .route("/sim/v1/population", post(population))
        .route("/sim/v1/stats/{phone_number_id}", get(stats))
        .route("/sim/v1/received/{phone_number_id}", get(received))
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
