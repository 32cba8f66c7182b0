//! The control API (`/sim/v1/...`): a partner registers its numbers with the network (as it
//! configures an app at Meta); the rest plays the users: a user writes to a number, a
//! population of users writes and replies, a user blocks a number or stops its marketing; it
//! also injects send failures and reviews templates now.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{self, SimNumber};
use crate::{Sim, reviews};

/// A control call the network's store failed: logged, answered 500 "try again".
pub(crate) fn control_failed(what: &str, e: &dyn std::fmt::Display) -> (StatusCode, Json<Value>) {
    tracing::error!(error = %e, "{what} failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": "try again"})),
    )
}

/// A number a partner registers with the network.
#[derive(Deserialize)]
pub(crate) struct Registration {
    phone_number_id: String,
    waba_id: String,
    #[serde(default)]
    display_phone_number: String,
    app_secret: String,
    /// The token its senders present (default: the simulator's `SIM_ACCESS_TOKEN`).
    #[serde(default)]
    access_token: Option<String>,
    /// Messages a second before 130429 (default: `SIM_NUMBER_RATE`).
    #[serde(default)]
    throughput_per_second: Option<u32>,
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Registers (or re-registers) a number with the network.
pub(crate) async fn register_number(
    State(sim): State<Arc<Sim>>,
    Json(r): Json<Registration>,
) -> (StatusCode, Json<Value>) {
    let throughput = r.throughput_per_second.unwrap_or(sim.config.number_rate);
    let problem = if !is_id(&r.phone_number_id) || !is_id(&r.waba_id) {
        Some("phone_number_id and waba_id are 1 to 64 letters, digits, '-' and '_'")
    } else if r.app_secret.len() < 8 {
        Some("app_secret has at least 8 characters")
    } else if !(1..=10_000).contains(&throughput) {
        Some("throughput_per_second is 1 to 10000")
    } else {
        None
    };
    if let Some(why) = problem {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": why })));
    }
    let number = SimNumber {
        display_phone_number: if r.display_phone_number.is_empty() {
            format!("+{}", r.phone_number_id)
        } else {
            r.display_phone_number
        },
        phone_number_id: r.phone_number_id,
        waba_id: r.waba_id,
        app_secret: r.app_secret,
        access_token: r
            .access_token
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| sim.config.access_token.clone()),
        throughput_per_second: i32::try_from(throughput).unwrap_or(i32::MAX),
    };
    match store::register_number(&sim.pool, sim.network(), &number).await {
        Ok(n) => {
            sim.changed();
            (
                StatusCode::OK,
                Json(
                    json!({ "phone_number_id": n.phone_number_id, "waba_id": n.waba_id,
                              "throughput_per_second": n.throughput_per_second }),
                ),
            )
        }
        Err(e) => control_failed("registering a number", &e),
    }
}

/// The numbers registered with the network (their secrets left out).
pub(crate) async fn list_numbers(State(sim): State<Arc<Sim>>) -> (StatusCode, Json<Value>) {
    match store::numbers(&sim.pool, sim.network()).await {
        Ok(numbers) => {
            let numbers: Vec<Value> = numbers
                .into_iter()
                .map(|n| {
                    json!({ "phone_number_id": n.phone_number_id, "waba_id": n.waba_id,
                            "display_phone_number": n.display_phone_number,
                            "throughput_per_second": n.throughput_per_second })
                })
                .collect();
            (StatusCode::OK, Json(json!({ "numbers": numbers })))
        }
        Err(e) => control_failed("listing numbers", &e),
    }
}

/// Failures a test or a demo injects for a number: the next `next` sends (or every send while
/// `always`) answer HTTP `http_status` with the Cloud API error `code` (by default 500 with
/// code 1, a temporary error).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
pub struct Fault {
    #[serde(default)]
    pub next: u32,
    #[serde(default)]
    pub always: bool,
    #[serde(default = "default_fault_status")]
    pub http_status: u16,
    #[serde(default = "default_fault_code")]
    pub code: i32,
}

fn default_fault_status() -> u16 {
    500
}

fn default_fault_code() -> i32 {
    1
}

#[derive(Deserialize)]
pub(crate) struct FaultRequest {
    phone_number_id: String,
    #[serde(flatten)]
    fault: Fault,
}

/// Injects failures for a number (`next: 0, always: false` clears them).
pub(crate) async fn faults(
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

#[derive(Deserialize)]
pub(crate) struct Say {
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
    /// The file's size in bytes (default 2 KiB).
    #[serde(default)]
    media_bytes: Option<usize>,
    /// The webhook announces a hash the file does not have (a download must notice).
    #[serde(default)]
    media_wrong_sha256: bool,
}

/// The number a control call names, or the answer to give when there is none.
async fn control_number(
    sim: &Sim,
    phone_number_id: &str,
) -> Result<SimNumber, (StatusCode, Json<Value>)> {
    match sim.number(phone_number_id).await {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown phone number id"})),
        )),
        Err(e) => Err(control_failed("looking up a number", &e)),
    }
}

/// A user writes to a number: the network records the window and posts the webhook.
pub(crate) async fn say(
    State(sim): State<Arc<Sim>>,
    Json(say): Json<Say>,
) -> (StatusCode, Json<Value>) {
    let number = match control_number(&sim, &say.phone_number_id).await {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    let blocked = sim
        .net
        .lock()
        .map(|net| net.business_blocked(&number.phone_number_id, &say.from))
        .unwrap_or(false);
    if blocked {
        return (
            StatusCode::OK,
            Json(json!({ "delivered": false, "why": "the business blocked this user" })),
        );
    }
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
    let media = say.media.as_deref().map(|kind| UserMedia {
        kind,
        bytes: say.media_bytes.unwrap_or(2_048).min(MAX_USER_MEDIA),
        wrong_sha256: say.media_wrong_sha256,
    });
    let written = user_writes_kind(
        &sim, &number, &say.from, &say.name, &say.text, at, referral, media,
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

/// The largest file a simulated user sends.
const MAX_USER_MEDIA: usize = 4 * 1024 * 1024;

/// A file a simulated user sends.
#[derive(Clone, Copy)]
struct UserMedia<'a> {
    kind: &'a str,
    bytes: usize,
    wrong_sha256: bool,
}

impl UserMedia<'_> {
    /// Its content type and, for a document, its file name.
    fn described(&self) -> (&'static str, &'static str) {
        match self.kind {
            "image" => ("image/jpeg", ""),
            "document" => ("application/pdf", "receipt.pdf"),
            "audio" => ("audio/ogg", ""),
            "video" => ("video/mp4", ""),
            _ => ("image/webp", ""),
        }
    }

    /// Its bytes: a recognisable pattern, different per message.
    fn data(&self, wamid: &str) -> Vec<u8> {
        let pattern = format!("{} of {wamid};", self.kind);
        pattern.bytes().cycle().take(self.bytes.max(1)).collect()
    }
}

/// A user's text reaches the number at `at` (µs): the network records the window and posts
/// the signed webhook. The wamid, or it with why ingest did not take it.
pub(crate) async fn user_writes(
    sim: &Sim,
    number: &SimNumber,
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
    number: &SimNumber,
    from: &str,
    name: &str,
    text: &str,
    at: i64,
    referral: Option<Value>,
    media: Option<UserMedia<'_>>,
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
    if let Some(media) = media {
        // The network keeps the file; the webhook carries an id to download it by, its type,
        // its hash and a caption, as the Cloud API's does.
        let (content_type, filename) = media.described();
        let data = media.data(&wamid);
        let kept = crate::media_api::keep(
            sim,
            &number.phone_number_id,
            content_type,
            filename,
            &data,
            true,
        )
        .await
        .map_err(|e| {
            (
                wamid.clone(),
                format!("the network could not keep the file: {e}"),
            )
        })?;
        let sha256 = if media.wrong_sha256 {
            crate::media_api::sha256_hex(b"not this file")
        } else {
            kept.sha256
        };
        let mut object = json!({ "id": kept.media_id, "mime_type": content_type,
                                 "sha256": sha256, "caption": text });
        if !filename.is_empty() {
            object["filename"] = json!(filename);
        }
        let m = &mut body["entry"][0]["changes"][0]["value"]["messages"][0];
        if let Some(obj) = m.as_object_mut() {
            obj.remove("text");
            obj.insert("type".into(), json!(media.kind));
            obj.insert(media.kind.to_owned(), object);
        }
    }
    if let Ok(mut net) = sim.net.lock() {
        if net.business_blocked(&number.phone_number_id, from) {
            // The business blocked this user: the network delivers nothing of theirs.
            return Err((wamid, "the business blocked this user".into()));
        }
        net.user_wrote(&number.phone_number_id, from, at);
    }
    match sim.poster.post(&number.app_secret, &body, 8).await {
        Ok(status) if status < 300 => {
            sim.note_inbound(&number.phone_number_id, &wamid);
            Ok(wamid)
        }
        Ok(status) => Err((wamid, format!("ingest answered {status}"))),
        Err(e) => Err((wamid, e)),
    }
}

/// Simulated users of a number: `users` of them wrote once; any user replies to a delivered
/// message with probability `reply_per_mille` / 1000.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Population {
    pub(crate) reply_per_mille: u32,
}

#[derive(Deserialize)]
pub(crate) struct PopulationRequest {
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
pub(crate) async fn population(
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
pub(crate) struct Block {
    phone_number_id: String,
    user: String,
    blocked: bool,
}

/// A user blocks (or unblocks) a number: sends to them fail with 131026 meanwhile, and the
/// block is reported to ingest.
pub(crate) async fn block(
    State(sim): State<Arc<Sim>>,
    Json(b): Json<Block>,
) -> (StatusCode, Json<Value>) {
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
pub(crate) struct Preference {
    phone_number_id: String,
    user: String,
    /// true: stop marketing messages; false: resume them.
    stop: bool,
}

/// A user stops (or resumes) marketing messages: the network refuses marketing templates to
/// them (131050) and posts a `user_preferences` webhook (Finestra then refuses them itself
/// with MARKETING_OPT_OUT).
pub(crate) async fn preference(
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
pub(crate) struct TemplateReview {
    /// The network's template id (as the submission's answer gave it)...
    #[serde(default)]
    template_id: String,
    /// ...or the business account, name and language.
    #[serde(default)]
    waba_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    language: String,
    /// APPROVED, REJECTED, PAUSED, REINSTATED, DISABLED, FLAGGED, ...
    event: String,
    /// Why (a rejection's or a pause's reason).
    #[serde(default)]
    reason: String,
}

/// The network reviews a template now (e.g. pauses it for low quality).
pub(crate) async fn review_template(
    State(sim): State<Arc<Sim>>,
    Json(r): Json<TemplateReview>,
) -> (StatusCode, Json<Value>) {
    let template_id = if r.template_id.is_empty() {
        match store::template_named(&sim.pool, sim.network(), &r.waba_id, &r.name, &r.language)
            .await
        {
            Ok(Some(t)) => t.template_id,
            Ok(None) => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "no such template"})),
                );
            }
            Err(e) => {
                return control_failed("looking up a template", &e);
            }
        }
    } else {
        r.template_id
    };
    let event = r.event.to_ascii_uppercase();
    let now = sim.clock.now().micros() / 1_000_000;
    let reviewed = reviews::review(
        &sim.pool,
        &sim.poster,
        sim.network(),
        reviews::Event {
            template_id: &template_id,
            event: &event,
            reason: &r.reason,
            only_pending: false,
        },
        now,
    )
    .await;
    sim.changed();
    match reviewed {
        Ok(t) => (
            StatusCode::OK,
            Json(json!({ "event": event, "template_id": t.template_id, "status": t.status })),
        ),
        Err(reviews::ReviewError::NotFound) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such template"})),
        ),
        Err(e @ reviews::ReviewError::Db(_)) => control_failed("reviewing a template", &e),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}
