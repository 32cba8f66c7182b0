//! The network's health events, emitted on request (`POST /sim/v1/health`): a number's quality
//! flag or messaging limit, an account update, a template's quality score, the business's
//! messaging limit. Each is a signed webhook of the business account, as Meta sends them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Sim;
use crate::controls::control_failed;
use crate::store;

type Answer = (StatusCode, Json<Value>);

fn answer(status: StatusCode, body: Value) -> Answer {
    (status, Json(body))
}

/// What to emit.
#[derive(Deserialize)]
pub(crate) struct HealthRequest {
    /// number_quality, account, template_quality or capability.
    kind: String,
    #[serde(default)]
    phone_number_id: String,
    #[serde(default)]
    waba_id: String,
    /// number_quality: FLAGGED, UNFLAGGED, UPGRADE, DOWNGRADE; account: VERIFIED_ACCOUNT,
    /// DISABLED_UPDATE, ACCOUNT_VIOLATION, ACCOUNT_RESTRICTION, ...
    #[serde(default)]
    event: String,
    /// number_quality and capability: TIER_250, TIER_2K, TIER_10K, TIER_100K, TIER_UNLIMITED.
    #[serde(default)]
    current_limit: String,
    #[serde(default)]
    old_limit: String,
    /// template_quality: the network's template id, and the new score.
    #[serde(default)]
    template_id: String,
    #[serde(default)]
    quality: String,
    /// account: the network's words about it.
    #[serde(default)]
    detail: Option<Value>,
}

pub(crate) async fn emit(State(sim): State<Arc<Sim>>, Json(r): Json<HealthRequest>) -> Answer {
    let now = sim.clock.now().micros() / 1_000_000;
    let (waba_id, body) = match r.kind.as_str() {
        "number_quality" => {
            let number = match sim.number(&r.phone_number_id).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return answer(
                        StatusCode::NOT_FOUND,
                        json!({"error": "unknown phone number id"}),
                    );
                }
                Err(e) => return control_failed("looking up a number", &e),
            };
            let body = finestra_cloudapi::build::number_quality(
                &number.waba_id,
                now,
                &number.display_phone_number,
                &r.event,
                &r.current_limit,
                &r.old_limit,
            );
            (number.waba_id, body)
        }
        "account" => {
            let body =
                finestra_cloudapi::build::account_update(&r.waba_id, now, &r.event, r.detail);
            (r.waba_id, body)
        }
        "capability" => {
            let body = finestra_cloudapi::build::capability(&r.waba_id, now, &r.current_limit);
            (r.waba_id, body)
        }
        "template_quality" => {
            let rated =
                store::rate_template(&sim.pool, sim.network(), &r.template_id, &r.quality).await;
            let (t, previous) = match rated {
                Ok(Some(rated)) => rated,
                Ok(None) => {
                    return answer(StatusCode::NOT_FOUND, json!({"error": "no such template"}));
                }
                Err(e) => return control_failed("rating a template", &e),
            };
            let body = finestra_cloudapi::build::template_quality(
                &t.waba_id,
                now,
                &t.template_id,
                &t.name,
                &t.language,
                &previous,
                &t.quality,
            );
            (t.waba_id, body)
        }
        _ => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "kind is number_quality, account, template_quality or capability"}),
            );
        }
    };
    let secret = match store::waba_numbers(&sim.pool, sim.network(), &waba_id).await {
        Ok(numbers) => match numbers.into_iter().next() {
            Some(n) => n.app_secret,
            None => {
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({"error": "no registered number of that business account"}),
                );
            }
        },
        Err(e) => return control_failed("looking up a business account", &e),
    };
    match sim.poster.post(&secret, &body, 8).await {
        Ok(status) if status < 300 => answer(StatusCode::OK, json!({ "posted": body })),
        Ok(status) => answer(
            StatusCode::BAD_GATEWAY,
            json!({ "error": format!("ingest answered {status}") }),
        ),
        Err(e) => answer(StatusCode::BAD_GATEWAY, json!({ "error": e })),
    }
}
