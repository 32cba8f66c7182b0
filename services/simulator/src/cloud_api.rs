//! The Cloud API's send surface (`POST /v{version}/{phone_number_id}/messages`): checks the
//! token and the request, applies the network's rules, answers a `wamid` or a Cloud-API-shaped
//! error, then reports the message's statuses to ingest (and, now and then, a user replies).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use rand::Rng as _;
use serde_json::{Value, json};

use crate::Sim;
use crate::controls::user_writes;
use crate::network::Refusal;

/// A Cloud-API-shaped error answer.
pub(crate) fn cloud_error(
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

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(crate) fn invalid_token() -> (StatusCode, Json<Value>) {
    cloud_error(
        StatusCode::UNAUTHORIZED,
        190,
        "Invalid OAuth access token",
        "the bearer token is missing or wrong",
    )
}

pub(crate) fn unknown_version(version: &str) -> Option<(StatusCode, Json<Value>)> {
    (!version.starts_with('v')).then(|| {
        cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "unknown API version",
        )
    })
}

pub(crate) fn try_again(what: &str, e: &dyn std::fmt::Display) -> (StatusCode, Json<Value>) {
    tracing::error!(error = %e, "{what} failed");
    cloud_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        1,
        "Unknown error",
        "try again",
    )
}

/// The registered number a Cloud API request is for, when the request carries that number's
/// token: 100 for a number the network does not know, 190 for a wrong token.
pub(crate) async fn number_of_request(
    sim: &Sim,
    headers: &HeaderMap,
    phone_number_id: &str,
) -> Result<crate::store::SimNumber, (StatusCode, Json<Value>)> {
    let number = match sim.number(phone_number_id).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(cloud_error(
                StatusCode::BAD_REQUEST,
                100,
                "Invalid parameter",
                "unknown phone number id",
            ));
        }
        Err(e) => return Err(try_again("looking up a number", &e)),
    };
    if bearer(headers) == Some(number.access_token.as_str()) {
        Ok(number)
    } else {
        Err(invalid_token())
    }
}

pub(crate) async fn send(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    let number = match number_of_request(&sim, &headers, &phone_number_id).await {
        Ok(n) => n,
        Err(answer) => return answer,
    };
    if body["status"] == "read" {
        return mark_read(&sim, &phone_number_id, &body);
    }
    if let Some(fault) = sim.take_fault(&phone_number_id) {
        return cloud_error(
            StatusCode::from_u16(fault.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            fault.code,
            "An error injected by the simulator",
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
            u32::try_from(number.throughput_per_second).unwrap_or(1),
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
    // A file sent by id must be one uploaded for this number.
    if let Some(media_id) = body[kind]["id"].as_str() {
        match crate::media_api::sendable(&sim, &phone_number_id, media_id).await {
            Ok(true) => {}
            Ok(false) => {
                sim.count(&phone_number_id, |s| s.refused += 1);
                return cloud_error(
                    StatusCode::BAD_REQUEST,
                    131_053,
                    "Media upload error",
                    "no file of that id was uploaded for this number",
                );
            }
            Err(e) => return try_again("looking up a file", &e),
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
        let known = match sim.template(&number.waba_id, name, language).await {
            Ok(k) => k,
            Err(e) => return try_again("looking up a template", &e),
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

/// The business marks a user's message read (and may show the typing indicator): the message
/// must be one a user sent to this number.
fn mark_read(sim: &Sim, phone_number_id: &str, body: &Value) -> (StatusCode, Json<Value>) {
    let message_id = body["message_id"].as_str().unwrap_or_default();
    if body["messaging_product"] != "whatsapp" || !sim.wrote(phone_number_id, message_id) {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "message_id names no message a user sent to this number",
        );
    }
    let typing = body["typing_indicator"]["type"] == "text";
    sim.count(phone_number_id, |s| {
        s.marked_read += 1;
        s.typing_shown += u64::from(typing);
    });
    (StatusCode::OK, Json(json!({ "success": true })))
}

#[derive(serde::Deserialize)]
pub(crate) struct BlockUsers {
    #[serde(default)]
    messaging_product: String,
    #[serde(default)]
    block_users: Vec<BlockUser>,
}

#[derive(serde::Deserialize)]
struct BlockUser {
    user: String,
}

/// Most users one block request may name.
const BLOCK_BATCH: usize = 1_000;

pub(crate) async fn block_users(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<BlockUsers>,
) -> (StatusCode, Json<Value>) {
    set_business_block(&sim, &version, &phone_number_id, &headers, body, true).await
}

pub(crate) async fn unblock_users(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<BlockUsers>,
) -> (StatusCode, Json<Value>) {
    set_business_block(&sim, &version, &phone_number_id, &headers, body, false).await
}

async fn set_business_block(
    sim: &Sim,
    version: &str,
    phone_number_id: &str,
    headers: &HeaderMap,
    body: BlockUsers,
    block: bool,
) -> (StatusCode, Json<Value>) {
    if let Some(answer) = unknown_version(version) {
        return answer;
    }
    if let Err(answer) = number_of_request(sim, headers, phone_number_id).await {
        return answer;
    }
    let users: Vec<String> = body
        .block_users
        .into_iter()
        .map(|u| u.user.trim_start_matches('+').to_owned())
        .collect();
    if body.messaging_product != "whatsapp"
        || users.is_empty()
        || users.len() > BLOCK_BATCH
        || users
            .iter()
            .any(|u| u.is_empty() || !u.bytes().all(|b| b.is_ascii_digit()))
    {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "block_users lists 1 to 1000 users by wa_id",
        );
    }
    if let Ok(mut net) = sim.net.lock() {
        for u in &users {
            net.set_business_blocked(phone_number_id, u, block);
        }
    }
    let n = users.len() as u64;
    sim.count(phone_number_id, |s| {
        if block {
            s.blocks += n;
        } else {
            s.unblocks += n;
        }
    });
    (
        StatusCode::OK,
        Json(finestra_cloudapi::send::block_answer(&users, block)),
    )
}

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

/// Posts the message's statuses in order: `sent` with its outcome (`delivered` or `failed`)
/// in one notification after the configured delay, as the Cloud API batches statuses that
/// are ready together, then `read`, when the user reads it, after another delay.
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
    let mut posts: Vec<Vec<&str>> = vec![vec!["sent", if fail { "failed" } else { "delivered" }]];
    if read && !fail {
        posts.push(vec!["read"]);
    }
    for statuses in posts {
        tokio::time::sleep(sim.config.status_delay).await;
        let at = sim.clock.now().micros() / 1_000_000;
        let mut body = finestra_cloudapi::build::statuses_with_callback(
            &number, &display, &wamid, &statuses, &to, at, &callback,
        );
        if let Some(i) = statuses.iter().position(|s| *s == "failed") {
            body["entry"][0]["changes"][0]["value"]["statuses"][i]["errors"] = json!([{
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
            tracing::warn!(error = %e, %wamid, ?statuses, "a status webhook could not be delivered");
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
