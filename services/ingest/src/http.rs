//! The webhook endpoint: `GET /webhooks/cloud-api` (verification handshake) and
//! `POST /webhooks/cloud-api` (signed notifications).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use subtle::ConstantTimeEq;

use crate::App;
use crate::mapping::{self, Draft, Mapped};
use finestra_cloudapi::signature;
use finestra_cloudapi::webhook::{Notification, Value};

/// Meta caps notifications well below this; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An oversized body up to this size is read and discarded before the 413, so the client sees
/// the answer instead of a connection reset (closing a socket with unread data resets it).
/// Larger ones are cut off at once.
const DRAIN_LIMIT_BYTES: usize = 16 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/webhooks/cloud-api", get(verify).post(receive))
        .with_state(app)
}

enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the body, keeping at most `MAX_BODY_BYTES` in memory.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    use futures::StreamExt as _;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Err(BodyError::TooLarge);
    }
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    let mut total = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        total += chunk.len();
        if total > DRAIN_LIMIT_BYTES {
            return Err(BodyError::TooLarge);
        }
        if total <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(kept))
}

fn outcome(outcome: &'static str) {
    metrics::counter!("finestra_ingest_webhooks_total", "outcome" => outcome).increment(1);
}

/// The subscription handshake: echo `hub.challenge` when the verify token matches.
async fn verify(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let mode_ok = q.get("hub.mode").is_some_and(|m| m == "subscribe");
    let token_ok = q
        .get("hub.verify_token")
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(app.verify_token.as_bytes())));
    match q.get("hub.challenge") {
        Some(challenge) if mode_ok && token_ok => (StatusCode::OK, challenge.clone()),
        _ if !(mode_ok && token_ok) => (StatusCode::FORBIDDEN, "verification refused".into()),
        _ => (StatusCode::BAD_REQUEST, "hub.challenge is missing".into()),
    }
}

/// A parsed change of a known kind.
struct ParsedChange {
    field: Field,
    value: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Messages,
    UserPreferences,
}

async fn receive(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let body = match read_body(&headers, body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            outcome("too_large");
            return (StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB");
        }
        Err(BodyError::Unreadable) => {
            outcome("unreadable");
            return (StatusCode::BAD_REQUEST, "unreadable body");
        }
    };
    let header = headers
        .get(finestra_cloudapi::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let claimed = match signature::parse_header(header) {
        Ok(c) => c,
        Err(e) => {
            outcome("bad_signature");
            tracing::warn!(error = %e, "webhook refused");
            return (StatusCode::UNAUTHORIZED, "missing or malformed signature");
        }
    };
    let (changes, account_changes) = match parse(&body) {
        Ok(c) => c,
        Err(e) => {
            outcome("malformed");
            tracing::warn!(error = %e, "malformed webhook");
            return (StatusCode::BAD_REQUEST, "malformed notification");
        }
    };

    // Every number the POST names must be known to verify the signature with its secret.
    let mut tenants: HashMap<&str, Option<String>> = HashMap::new();
    for change in &changes {
        let id = change.value.metadata.phone_number_id.as_str();
        if tenants.contains_key(id) {
            continue;
        }
        let number = match app.directory.lookup(id).await {
            Ok(n) => n,
            Err(e) => {
                outcome("registry_unavailable");
                tracing::error!(error = %e, "number lookup failed");
                return (StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        };
        match number {
            Some(n) => {
                let now = app.clock.now().micros();
                let verified = n
                    .webhook_secrets(now)
                    .any(|secret| signature::verify(secret.as_bytes(), &body, &claimed).is_ok());
                if !verified {
                    outcome("bad_signature");
                    tracing::warn!(phone_number_id = id, "webhook signature mismatch");
                    return (StatusCode::UNAUTHORIZED, "signature mismatch");
                }
                tenants.insert(id, Some(n.tenant_id.clone()));
            }
            None => {
                tenants.insert(id, None);
            }
        }
    }

    let mut events: Vec<(String, Draft)> = Vec::new();
    for change in &changes {
        let id = change.value.metadata.phone_number_id.as_str();
        let Some(Some(tenant)) = tenants.get(id) else {
            // The provider would retry a refusal forever: accept, publish nothing, say so.
            metrics::counter!("finestra_ingest_unknown_number_total").increment(1);
            tracing::warn!(
                phone_number_id = id,
                "webhook for a number no tenant has; ignored"
            );
            continue;
        };
        let now = app.clock.now();
        let Mapped { drafts, skipped } = match change.field {
            // Only user messages can be keywords: statuses never wait for the lookup.
            Field::Messages if change.value.messages.is_empty() => {
                mapping::map_messages(&change.value, now, &Default::default())
            }
            Field::Messages => {
                let keywords = match app.directory.keywords(tenant).await {
                    Ok(k) => k,
                    Err(e) => {
                        outcome("registry_unavailable");
                        tracing::error!(error = %e, "opt-out keyword lookup failed");
                        return (StatusCode::SERVICE_UNAVAILABLE, "try again");
                    }
                };
                mapping::map_messages(&change.value, now, &keywords)
            }
            Field::UserPreferences => mapping::map_user_preferences(&change.value, now),
        };
        for s in skipped {
            metrics::counter!("finestra_ingest_items_skipped_total", "reason" => s.reason)
                .increment(1);
            tracing::warn!(reason = s.reason, detail = %s.detail, tenant = %tenant, "webhook item skipped");
        }
        events.extend(drafts.into_iter().map(|d| (tenant.clone(), d)));
    }

    // Template reviews and health changes name the business account; they are signed like its
    // numbers' webhooks.
    for change in &account_changes {
        let owner = match app.directory.by_waba(&change.waba_id).await {
            Ok(o) => o,
            Err(e) => {
                outcome("registry_unavailable");
                tracing::error!(error = %e, "business account lookup failed");
                return (StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        };
        let Some(owner) = owner else {
            metrics::counter!("finestra_ingest_unknown_number_total").increment(1);
            tracing::warn!(waba_id = %change.waba_id, "template webhook for an unknown business account; ignored");
            continue;
        };
        let now = app.clock.now();
        let verified = owner.1.iter().any(|n| {
            n.webhook_secrets(now.micros())
                .any(|secret| signature::verify(secret.as_bytes(), &body, &claimed).is_ok())
        });
        if !verified {
            outcome("bad_signature");
            tracing::warn!(waba_id = %change.waba_id, "template webhook signature mismatch");
            return (StatusCode::UNAUTHORIZED, "signature mismatch");
        }
        let Mapped { drafts, skipped } = if mapping::is_health_field(&change.field) {
            mapping::map_health_change(
                &change.waba_id,
                change.time,
                &change.field,
                change.value.get(),
                &owner.1,
                now,
            )
        } else {
            mapping::map_template_change(
                &change.waba_id,
                change.time,
                &change.field,
                change.value.get(),
                now,
            )
        };
        for s in skipped {
            metrics::counter!("finestra_ingest_items_skipped_total", "reason" => s.reason)
                .increment(1);
            tracing::warn!(reason = s.reason, detail = %s.detail, "webhook item skipped");
        }
        events.extend(drafts.into_iter().map(|d| (owner.0.clone(), d)));
    }

    // A webhook that carries a trace context (the network propagated the send's) continues
    // that trace: its span is the parent of the events' consumers.
    let span = match finestra_platform::trace::header(&headers) {
        Some(tp) => {
            let span = tracing::info_span!("ingest.webhook", events = events.len());
            finestra_platform::trace::adopt(&span, Some(tp));
            span
        }
        None => tracing::Span::none(),
    };
    let traceparent = finestra_platform::trace::traceparent_of(&span);
    let published = crate::publish::publish(
        &app.producer,
        &app.topics,
        app.clock.as_ref(),
        events,
        traceparent.as_deref(),
    )
    .await;
    drop(span);
    match published {
        Ok(()) => {
            outcome("accepted");
            (StatusCode::OK, "ok")
        }
        Err(e) => {
            outcome("publish_failed");
            tracing::error!(error = %e, "publishing webhook events failed; the provider will retry");
            (StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    }
}

/// Parses the notification and the changes Finestra handles; other fields are counted and
/// ignored.
/// A business-account-level change (template reviews, health): it names the WABA, not a number.
struct AccountChange {
    waba_id: String,
    time: i64,
    field: String,
    value: Box<serde_json::value::RawValue>,
}

fn parse(body: &[u8]) -> Result<(Vec<ParsedChange>, Vec<AccountChange>), serde_json::Error> {
    let note: Notification = serde_json::from_slice(body)?;
    if note.object != "whatsapp_business_account" {
        return Err(serde::de::Error::custom(format!(
            "unexpected object {:?}",
            note.object
        )));
    }
    let mut out = Vec::new();
    let mut account = Vec::new();
    for entry in note.entry {
        for change in entry.changes {
            let field = match change.field.as_str() {
                "messages" => Field::Messages,
                "user_preferences" => Field::UserPreferences,
                "message_template_status_update"
                | "template_category_update"
                | "phone_number_quality_update"
                | "account_update"
                | "message_template_quality_update"
                | "business_capability_update" => {
                    account.push(AccountChange {
                        waba_id: entry.id.clone(),
                        time: entry.time,
                        field: change.field,
                        value: change.value,
                    });
                    continue;
                }
                _ => {
                    metrics::counter!("finestra_ingest_ignored_changes_total").increment(1);
                    tracing::debug!(field = %change.field, "change field not handled");
                    continue;
                }
            };
            // A change without a readable value names no number: it cannot be attributed or
            // verified, so it is skipped (counted), and the rest of the POST still counts.
            match serde_json::from_str::<Value>(change.value.get()) {
                Ok(value) => out.push(ParsedChange { field, value }),
                Err(e) => {
                    metrics::counter!("finestra_ingest_items_skipped_total", "reason" => "malformed_change")
                        .increment(1);
                    tracing::warn!(error = %e, field = %change.field, "unreadable change skipped");
                }
            }
        }
    }
    Ok((out, account))
}
