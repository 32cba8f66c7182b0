//! The tenant-delivery side of the API: StreamEvents and webhook endpoints, dead letters and
//! redrive. (The trait impl in `api` calls into these.)

use std::sync::Arc;
use std::time::Duration;

use finestra_platform::Shutdown;
use finestra_platform::paging;
use finestra_platform::status::RequestError;
use finestra_proto::v1::{
    CreateWebhookRequest, Envelope, ListDeadLettersRequest, ListDeadLettersResponse,
    RedriveRequest, RedriveResponse, RotateWebhookSecretRequest, StreamEventsRequest, TenantEvent,
    Webhook, WebhookDeadLetter, WebhookFormat,
};
use prost::Message as _;
use rand::Rng as _;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use crate::error::DispatchError;

const STREAM_PAGE: i64 = 500;
const DEFAULT_OVERLAP_SECONDS: u32 = 24 * 3_600;
/// How long a Cloud API endpoint has to answer the verification handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn parse_cursor(cursor: &str) -> Result<i64, RequestError> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor
        .parse::<i64>()
        .ok()
        .filter(|c| *c >= 0)
        .ok_or_else(|| RequestError::invalid("cursor", "cursor is not one this service issued"))
}

/// Where a stream starts: after `cursor`, or after the newest event (`from_now`).
pub async fn stream_start(pool: &PgPool, req: &StreamEventsRequest) -> Result<i64, DispatchError> {
    if !req.from_now {
        return Ok(parse_cursor(&req.cursor)?);
    }
    let max: Option<i64> = sqlx::query_scalar!(
        "SELECT max(seq) AS seq FROM dispatch.tenant_events WHERE tenant_id = $1",
        &req.tenant_id,
    )
    .fetch_one(pool)
    .await
    .map_err(DispatchError::store("reading the event log"))?;
    Ok(max.unwrap_or(0))
}

/// Feeds a stream from the log until the client goes away or the service stops.
pub async fn feed(
    pool: PgPool,
    tenant_id: String,
    mut after: i64,
    recorded: Arc<Notify>,
    shutdown: Shutdown,
    tx: mpsc::Sender<Result<TenantEvent, Status>>,
) {
    loop {
        // Registered (enabled) before the read, so an event recorded meanwhile still wakes us.
        let wake = recorded.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let rows = sqlx::query!(
            "SELECT seq, kind, envelope FROM dispatch.tenant_events
              WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &tenant_id,
            after,
            STREAM_PAGE,
        )
        .fetch_all(&pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let failure = DispatchError::Store {
                    context: "reading the event log",
                    source: e,
                };
                let _ = tx.send(Err(failure.into())).await;
                return;
            }
        };
        let full = rows.len() as i64 == STREAM_PAGE;
        for row in rows {
            let event = TenantEvent {
                cursor: row.seq.to_string(),
                kind: row.kind,
                event: Envelope::decode(row.envelope.as_slice()).ok(),
            };
            if tx.send(Ok(event)).await.is_err() {
                return; // the client went away
            }
            after = row.seq;
        }
        if full {
            continue;
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tx.closed() => return,
            () = wake => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}

/// A new endpoint secret: `whsec_` and the base64 of 24 random bytes, the shape Standard
/// Webhooks libraries take (docs/webhooks.md).
fn new_secret() -> String {
    use base64::Engine as _;
    let mut key = [0u8; 24];
    rand::rng().fill(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The stored format's name (the `format` column).
fn format_name(format: WebhookFormat) -> &'static str {
    match format {
        WebhookFormat::Finestra => "finestra",
        WebhookFormat::CloudApi => "cloud_api",
    }
}

fn format_of(name: &str) -> WebhookFormat {
    if name == "cloud_api" {
        WebhookFormat::CloudApi
    } else {
        WebhookFormat::Finestra
    }
}

struct Stored {
    tenant_id: String,
    endpoint_id: String,
    url: String,
    format: String,
}

fn webhook(endpoint: Stored, secret: String, until: Option<i64>, created_at: i64) -> Webhook {
    Webhook {
        tenant_id: endpoint.tenant_id,
        endpoint_id: endpoint.endpoint_id,
        url: endpoint.url,
        secret,
        previous_secret_valid_until: until.map(finestra_proto::time::from_micros),
        created_at: Some(finestra_proto::time::from_micros(created_at)),
        format: format_of(&endpoint.format).into(),
    }
}

pub async fn create_webhook(
    pool: &PgPool,
    req: CreateWebhookRequest,
    now: i64,
) -> Result<Webhook, DispatchError> {
    let url = RequestError::required("url", &req.url)?;
    let plausible = (url.starts_with("https://") || url.starts_with("http://"))
        && reqwest::Url::parse(url).is_ok_and(|u| u.host().is_some());
    if !plausible {
        return Err(RequestError::invalid("url", "url must be an http(s) URL").into());
    }
    let format = WebhookFormat::try_from(req.format)
        .map_err(|_| RequestError::invalid("format", "unknown webhook format"))?;
    let secret = if req.app_secret.is_empty() {
        new_secret()
    } else if (8..=256).contains(&req.app_secret.chars().count()) {
        req.app_secret.clone()
    } else {
        return Err(RequestError::invalid("app_secret", "8..256 characters").into());
    };
    let verify_token = match format {
        WebhookFormat::Finestra if !req.verify_token.is_empty() || !req.app_secret.is_empty() => {
            return Err(RequestError::invalid(
                "verify_token",
                "a verify token and an app secret are for Cloud API format endpoints only",
            )
            .into());
        }
        WebhookFormat::Finestra => None,
        WebhookFormat::CloudApi => {
            let token = RequestError::required("verify_token", &req.verify_token)?;
            let http = reqwest::Client::builder()
                .timeout(HANDSHAKE_TIMEOUT)
                .build()
                .map_err(|e| DispatchError::NotVerified(e.to_string()))?;
            crate::webhooks::handshake::verify(&http, url, token)
                .await
                .map_err(DispatchError::NotVerified)?;
            Some(token)
        }
    };
    let endpoint_id = format!("wh_{}", random_hex(8));
    sqlx::query!(
        "INSERT INTO dispatch.webhook_endpoints
                (tenant_id, endpoint_id, url, secret, created_at, format, verify_token)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &req.tenant_id,
        &endpoint_id,
        url,
        &secret,
        now,
        format_name(format),
        verify_token,
    )
    .execute(pool)
    .await
    .map_err(DispatchError::store("creating a webhook"))?;
    let endpoint = Stored {
        tenant_id: req.tenant_id,
        endpoint_id,
        url: url.to_owned(),
        format: format_name(format).to_owned(),
    };
    Ok(webhook(endpoint, secret, None, now))
}

pub async fn list_webhooks(pool: &PgPool, tenant_id: &str) -> Result<Vec<Webhook>, DispatchError> {
    let rows = sqlx::query!(
        "SELECT endpoint_id, url, format, previous_valid_until, created_at
           FROM dispatch.webhook_endpoints
          WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY created_at, endpoint_id",
        tenant_id,
    )
    .fetch_all(pool)
    .await
    .map_err(DispatchError::store("listing webhooks"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let endpoint = Stored {
                tenant_id: tenant_id.to_owned(),
                endpoint_id: r.endpoint_id,
                url: r.url,
                format: r.format,
            };
            webhook(
                endpoint,
                String::new(),
                r.previous_valid_until,
                r.created_at,
            )
        })
        .collect())
}

pub async fn rotate_secret(
    pool: &PgPool,
    req: RotateWebhookSecretRequest,
    now: i64,
) -> Result<Webhook, DispatchError> {
    let overlap = if req.overlap_seconds == 0 {
        DEFAULT_OVERLAP_SECONDS
    } else {
        req.overlap_seconds
    };
    let secret = new_secret();
    // A Cloud API endpoint is signed with the business's own app secret, one signature at a
    // time: it changes with the business's handler, by creating the endpoint again.
    let row = sqlx::query!(
        "UPDATE dispatch.webhook_endpoints
            SET previous_secret = secret, previous_valid_until = $3, secret = $4
          WHERE tenant_id = $1 AND endpoint_id = $2 AND deleted_at IS NULL
            AND format = 'finestra'
      RETURNING url, format, previous_valid_until, created_at",
        &req.tenant_id,
        &req.endpoint_id,
        now + i64::from(overlap) * 1_000_000,
        &secret,
    )
    .fetch_optional(pool)
    .await
    .map_err(DispatchError::store("rotating a webhook secret"))?;
    let Some(row) = row else {
        let cloud = sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM dispatch.webhook_endpoints
              WHERE tenant_id = $1 AND endpoint_id = $2 AND deleted_at IS NULL
                AND format = 'cloud_api'",
            &req.tenant_id,
            &req.endpoint_id,
        )
        .fetch_optional(pool)
        .await
        .map_err(DispatchError::store("rotating a webhook secret"))?;
        return Err(match cloud {
            Some(_) => RequestError::invalid(
                "endpoint_id",
                "a Cloud API format endpoint is signed with the business's app secret: \
                 create it again with the new one",
            ),
            None => RequestError::not_found("endpoint_id", &req.endpoint_id),
        }
        .into());
    };
    let endpoint = Stored {
        tenant_id: req.tenant_id,
        endpoint_id: req.endpoint_id,
        url: row.url,
        format: row.format,
    };
    Ok(webhook(
        endpoint,
        secret,
        row.previous_valid_until,
        row.created_at,
    ))
}

pub async fn delete_webhook(
    pool: &PgPool,
    tenant_id: &str,
    endpoint_id: &str,
    now: i64,
) -> Result<Webhook, DispatchError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(DispatchError::store("deleting a webhook"))?;
    let row = sqlx::query!(
        "UPDATE dispatch.webhook_endpoints SET deleted_at = $3
          WHERE tenant_id = $1 AND endpoint_id = $2 AND deleted_at IS NULL
      RETURNING url, format, created_at",
        tenant_id,
        endpoint_id,
        now,
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(DispatchError::store("deleting a webhook"))?;
    let row = row.ok_or_else(|| RequestError::not_found("endpoint_id", endpoint_id))?;
    let created = row.created_at;
    let endpoint = Stored {
        tenant_id: tenant_id.to_owned(),
        endpoint_id: endpoint_id.to_owned(),
        url: row.url,
        format: row.format,
    };
    sqlx::query!(
        "UPDATE dispatch.webhook_deliveries SET state = 'dead', last_error = 'endpoint deleted'
          WHERE tenant_id = $1 AND endpoint_id = $2 AND state = 'pending'",
        tenant_id,
        endpoint_id,
    )
    .execute(&mut *tx)
    .await
    .map_err(DispatchError::store("deleting a webhook"))?;
    tx.commit()
        .await
        .map_err(DispatchError::store("deleting a webhook"))?;
    Ok(webhook(endpoint, String::new(), None, created))
}

pub async fn list_dead_letters(
    pool: &PgPool,
    req: &ListDeadLettersRequest,
) -> Result<ListDeadLettersResponse, DispatchError> {
    let size = paging::page_size(req.page_size)?;
    let after = paging::after(&req.page_token)?;
    let (after_endpoint, after_seq) = match after.split_once('/') {
        Some((e, s)) => (
            e.to_owned(),
            s.parse::<i64>().map_err(|_| {
                RequestError::invalid("page_token", "page_token is not one this service issued")
            })?,
        ),
        None => (String::new(), 0),
    };
    type Row = (String, i64, i32, String, i64, String, String);
    let rows = sqlx::query!(
        "SELECT d.endpoint_id, d.seq, d.attempts, d.last_error, d.first_at, e.event_id, e.kind
           FROM dispatch.webhook_deliveries d
           JOIN dispatch.tenant_events e USING (tenant_id, seq)
          WHERE d.tenant_id = $1 AND d.state = 'dead'
            AND ($2 = '' OR d.endpoint_id = $2)
            AND (d.endpoint_id, d.seq) > ($3, $4)
          ORDER BY d.endpoint_id, d.seq LIMIT $5",
        &req.tenant_id,
        &req.endpoint_id,
        &after_endpoint,
        after_seq,
        size + 1,
    )
    .fetch_all(pool)
    .await
    .map_err(DispatchError::store("listing dead letters"))?;
    let keyed: Vec<(String, Row)> = rows
        .into_iter()
        .map(|r| {
            (
                format!("{}/{}", r.endpoint_id, r.seq),
                (
                    r.endpoint_id,
                    r.seq,
                    r.attempts,
                    r.last_error,
                    r.first_at,
                    r.event_id,
                    r.kind,
                ),
            )
        })
        .collect();
    let (page, next_page_token) = paging::paginate(keyed, size, |(k, _)| k);
    Ok(ListDeadLettersResponse {
        dead_letters: page
            .into_iter()
            .map(
                |(_, (endpoint_id, seq, attempts, last_error, first_at, event_id, kind))| {
                    WebhookDeadLetter {
                        endpoint_id,
                        cursor: seq.to_string(),
                        event_id,
                        kind,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                        last_error,
                        first_attempt_at: Some(finestra_proto::time::from_micros(first_at)),
                    }
                },
            )
            .collect(),
        next_page_token,
    })
}

pub async fn redrive(
    pool: &PgPool,
    req: &RedriveRequest,
    now: i64,
) -> Result<RedriveResponse, DispatchError> {
    let endpoint = RequestError::required("endpoint_id", &req.endpoint_id)?;
    let cursors: Vec<i64> = req
        .cursors
        .iter()
        .map(|c| parse_cursor(c))
        .collect::<Result<_, _>>()?;
    let done = sqlx::query!(
        "UPDATE dispatch.webhook_deliveries SET state = 'pending', attempts = 0, first_at = $4,
                next_attempt_at = $4, last_error = ''
          WHERE tenant_id = $1 AND endpoint_id = $2 AND state = 'dead'
            AND (cardinality($3::bigint[]) = 0 OR seq = ANY($3))
            AND EXISTS (SELECT 1 FROM dispatch.webhook_endpoints w
                         WHERE w.tenant_id = $1 AND w.endpoint_id = $2 AND w.deleted_at IS NULL)",
        &req.tenant_id,
        endpoint,
        &cursors,
        now,
    )
    .execute(pool)
    .await
    .map_err(DispatchError::store("redriving dead letters"))?;
    Ok(RedriveResponse {
        redriven: u32::try_from(done.rows_affected()).unwrap_or(u32::MAX),
    })
}
