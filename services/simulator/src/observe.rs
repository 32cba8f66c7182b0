//! What the network saw, for tests and demos: a number's counters (`/sim/v1/stats/...`) and
//! the messages it accepted, in order (`/sim/v1/received/...`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Sim;

/// What the network did with a number's sends (for tests and demos).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NumberStats {
    pub accepted: u64,
    pub refused: u64,
    pub rate_limited: u64,
    pub injected_failures: u64,
    /// User messages the business marked read, and typing indicators it showed.
    pub marked_read: u64,
    pub typing_shown: u64,
    /// Users the business blocked and unblocked at the network.
    pub blocks: u64,
    pub unblocks: u64,
}

/// How many accepted messages per number `received` keeps.
pub(crate) const RECEIVED_KEPT: usize = 10_000;

/// The messages a number accepted, oldest first (their callback data: Finestra's message ids).
pub(crate) async fn received(
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

/// A number's counters.
pub(crate) async fn stats(
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
