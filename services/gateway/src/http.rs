//! The routes: each reads the Cloud API request, authenticates the key, routes by the path's
//! object to its tenant and calls Finestra under the caller's key; every refusal, including
//! bad JSON, oversize bodies and unknown paths, answers in the Cloud API's error shape.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use finestra_platform::auth::{Owner, Principal};
use finestra_proto::v1::{
    GetMediaRequest, GetNumberHealthRequest, GetNumberRequest, ListTemplatesRequest,
    MarkReadRequest, MediaChunk, UploadMediaRequest,
};
use futures::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::errors::CloudError;
use crate::messages::{self, Asked};
use crate::{App, media, numbers, templates};

type Shared = State<Arc<App>>;
type Answer = Result<Response, CloudError>;

pub fn router(app: Arc<App>) -> Router {
    let upload_limit = app.max_upload_bytes + 64 * 1024;
    Router::new()
        .route("/{version}/{id}/messages", post(send))
        .route(
            "/{version}/{id}/media",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/{version}/{id}/message_templates",
            get(list_templates).post(create_template),
        )
        .route("/{version}/{id}", get(describe))
        .route("/media/{tenant}/{media_id}", get(download))
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .with_state(app)
}

/// The call's key, checked before anything else (`(#190)` without a valid one), and the header
/// that carries it on to Finestra.
struct Caller {
    principal: Arc<Principal>,
    authorization: HeaderValue,
}

async fn caller(app: &App, headers: &HeaderMap) -> Result<Caller, CloudError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .cloned()
        .ok_or_else(CloudError::bad_token)?;
    let principal = app
        .auth
        .authenticate(authorization.to_str().ok())
        .await
        .map_err(|s| CloudError::from_status(&s))?;
    Ok(Caller {
        principal,
        authorization,
    })
}

impl Caller {
    /// `message` as a gRPC request carrying the caller's key and the trace.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(v) = self.authorization.to_str().unwrap_or_default().parse() {
            request.metadata_mut().insert("authorization", v);
        }
        finestra_platform::trace::inject_metadata(request.metadata_mut());
        request
    }

    /// The tenant the key belongs to, for paths that name no tenant's object.
    fn own_tenant(&self) -> Option<&str> {
        match &self.principal.owner {
            Owner::Tenant { tenant_id, .. } => Some(tenant_id),
            _ => None,
        }
    }
}

/// A version segment as the Cloud API writes it: `v21.0`.
fn check_version(version: &str) -> Result<(), CloudError> {
    let plausible = version
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if plausible {
        Ok(())
    } else {
        Err(CloudError::unknown_path(&format!("/{version}")))
    }
}

/// A JSON body of at most `limit` bytes.
async fn json_body(body: Body, limit: usize) -> Result<Value, CloudError> {
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| CloudError::too_large(limit))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CloudError::invalid(format!("The request body is not valid JSON: {e}")))
}

fn ok(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

/// Runs a handler's work, counting its outcome (the Cloud API code, 0 for success) and its
/// time under `endpoint`.
async fn timed(endpoint: &'static str, work: impl Future<Output = Answer>) -> Answer {
    let started = Instant::now();
    let answer = work.await;
    let code = match &answer {
        Ok(_) => "0".to_owned(),
        Err(e) => e.code.to_string(),
    };
    metrics::counter!("finestra_gateway_requests_total", "endpoint" => endpoint, "code" => code)
        .increment(1);
    metrics::histogram!("finestra_gateway_request_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    answer
}

/// The tenant owning a phone number id, or the Cloud API's "no such object".
async fn number_owner(app: &App, phone_number_id: &str) -> Result<String, CloudError> {
    app.owners
        .of_number(phone_number_id)
        .await?
        .map(|t| t.to_string())
        .ok_or_else(|| CloudError::unknown_object(phone_number_id))
}

async fn send(
    State(app): Shared,
    Path((version, phone_number_id)): Path<(String, String)>,
    request: Request,
) -> Answer {
    timed(
        "messages",
        send_inner(&app, &version, &phone_number_id, request),
    )
    .await
}

async fn send_inner(app: &App, version: &str, phone_number_id: &str, request: Request) -> Answer {
    check_version(version)?;
    let (parts, body) = request.into_parts();
    let caller = caller(app, &parts.headers).await?;
    let body = json_body(body, app.max_json_bytes).await?;
    let asked = messages::parse(&body)?;
    let tenant_id = number_owner(app, phone_number_id).await?;
    match asked {
        Asked::MarkRead {
            message_id,
            typing_indicator,
        } => {
            app.dispatch
                .clone()
                .mark_read(caller.request(MarkReadRequest {
                    tenant_id,
                    phone_number_id: phone_number_id.to_owned(),
                    message_id,
                    typing_indicator,
                }))
                .await
                .map_err(|s| CloudError::from_status(&s).about(phone_number_id))?;
            Ok(ok(json!({ "success": true })))
        }
        Asked::Send(mut message) => {
            // The Cloud API has no idempotency: without the header each POST is a new message.
            let key = match parts.headers.get("idempotency-key") {
                Some(v) => v
                    .to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= 128)
                    .ok_or_else(|| {
                        CloudError::invalid("The Idempotency-Key header must be 1..128 characters.")
                    })?
                    .to_owned(),
                None => fresh_key(),
            };
            message.tenant_id = tenant_id;
            message.phone_number_id = phone_number_id.to_owned();
            message.idempotency_key = key;
            let to = message.to.clone();
            let is_template = matches!(
                message.content,
                Some(finestra_proto::v1::send_message_request::Content::Template(
                    _
                ))
            );
            let accepted = app
                .dispatch
                .clone()
                .send_message(caller.request(*message))
                .await
                .map_err(|s| CloudError::from_status(&s).about(phone_number_id))?
                .into_inner();
            Ok(ok(messages::accepted(
                &to,
                &accepted.message_id,
                is_template,
            )))
        }
    }
}

/// A key no other request has: 128 random bits.
fn fresh_key() -> String {
    use rand::Rng as _;
    format!("gw_{:032x}", rand::rng().random::<u128>())
}

async fn upload(
    State(app): Shared,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Answer {
    timed("media_upload", async {
        check_version(&version)?;
        let caller = caller(&app, &headers).await?;
        // The number before the file: nothing is read for a number the caller cannot use.
        let tenant_id = number_owner(&app, &phone_number_id).await?;
        let mut multipart = multipart.map_err(|e| {
            CloudError::invalid(format!("The upload must be multipart/form-data: {e}"))
        })?;
        // Uploads hold their file in memory: a few at a time.
        let _slot =
            app.uploads.acquire().await.map_err(|_| {
                CloudError::from_status(&tonic::Status::unavailable("shutting down"))
            })?;
        let (mut data, mut content_type, mut filename, mut product) = (None, None, None, None);
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| form_error(&e, app.max_upload_bytes))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            match name.as_str() {
                "file" => {
                    filename = field.file_name().map(str::to_owned);
                    if content_type.is_none() {
                        content_type = field.content_type().map(str::to_owned);
                    }
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|e| form_error(&e, app.max_upload_bytes))?;
                    if bytes.len() > app.max_upload_bytes {
                        return Err(CloudError::too_large(app.max_upload_bytes));
                    }
                    data = Some(bytes);
                }
                "type" => content_type = Some(text_field(field).await?),
                "messaging_product" => product = Some(text_field(field).await?),
                other => return Err(CloudError::unexpected_key(other, "media")),
            }
        }
        if product.as_deref() != Some("whatsapp") {
            return Err(CloudError::invalid(
                "The parameter messaging_product is required and must be \"whatsapp\".",
            ));
        }
        let data = data.ok_or_else(|| CloudError::invalid("The parameter file is required."))?;
        let content_type =
            content_type.ok_or_else(|| CloudError::invalid("The parameter type is required."))?;
        let uploaded = app
            .dispatch
            .clone()
            .upload_media(caller.request(UploadMediaRequest {
                tenant_id,
                phone_number_id: phone_number_id.clone(),
                content_type,
                filename: filename.unwrap_or_default(),
                data: data.into(),
            }))
            .await
            .map_err(|s| CloudError::from_status(&s).about(&phone_number_id))?
            .into_inner();
        Ok(ok(json!({ "id": uploaded.media_id })))
    })
    .await
}

/// A form that could not be read: too large when the limit stopped it, else malformed.
fn form_error(e: &axum::extract::multipart::MultipartError, limit: usize) -> CloudError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        CloudError::too_large(limit)
    } else {
        CloudError::invalid(format!("The upload could not be read: {e}"))
    }
}

async fn text_field(field: axum::extract::multipart::Field<'_>) -> Result<String, CloudError> {
    field
        .text()
        .await
        .map_err(|e| CloudError::invalid(format!("A form field could not be read: {e}")))
}

/// The listing's query: what the gateway carries out (filters such as `name` or `status` are
/// refused rather than ignored, so a client never takes an unfiltered page for a filtered one).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplatePaging {
    limit: Option<u32>,
    after: Option<String>,
}

async fn account_owner(app: &App, waba_id: &str) -> Result<String, CloudError> {
    app.owners
        .of_account(waba_id)
        .await?
        .map(|t| t.to_string())
        .ok_or_else(|| CloudError::unknown_object(waba_id))
}

async fn list_templates(
    State(app): Shared,
    Path((version, waba_id)): Path<(String, String)>,
    paging: Result<Query<TemplatePaging>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    timed("templates_list", async {
        check_version(&version)?;
        let caller = caller(&app, &headers).await?;
        let Query(paging) =
            paging.map_err(|e| CloudError::invalid(format!("Bad query parameters: {e}")))?;
        let tenant_id = account_owner(&app, &waba_id).await?;
        let listed = app
            .accounts
            .clone()
            .list_templates(caller.request(ListTemplatesRequest {
                tenant_id,
                page_size: paging.limit.unwrap_or(25),
                page_token: paging.after.unwrap_or_default(),
            }))
            .await
            .map_err(|s| CloudError::from_status(&s).about(&waba_id))?
            .into_inner();
        let page = templates::page(&listed.templates, &listed.next_page_token);
        Ok(ok(serde_json::to_value(page).unwrap_or_default()))
    })
    .await
}

async fn create_template(
    State(app): Shared,
    Path((version, waba_id)): Path<(String, String)>,
    request: Request,
) -> Answer {
    timed("templates_create", async {
        check_version(&version)?;
        let (parts, body) = request.into_parts();
        let caller = caller(&app, &parts.headers).await?;
        let body = json_body(body, app.max_json_bytes).await?;
        let tenant_id = account_owner(&app, &waba_id).await?;
        let creation = templates::creation(&tenant_id, &body)?;
        let template = app
            .accounts
            .clone()
            .create_template(caller.request(creation))
            .await
            .map_err(|s| CloudError::from_status(&s).about(&waba_id))?
            .into_inner();
        Ok(ok(
            serde_json::to_value(templates::created(&template)).unwrap_or_default()
        ))
    })
    .await
}

#[derive(Deserialize)]
struct MediaOwner {
    phone_number_id: Option<String>,
}

/// `GET /{version}/{id}`: a phone number's description, or else a media file's.
async fn describe(
    State(app): Shared,
    Path((version, id)): Path<(String, String)>,
    owner: Result<Query<MediaOwner>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Answer {
    timed("describe", async {
        check_version(&version)?;
        let caller = caller(&app, &headers).await?;
        if let Some(tenant_id) = app.owners.of_number(&id).await? {
            let tenant_id = tenant_id.to_string();
            let mut accounts = app.accounts.clone();
            let number = accounts
                .get_number(caller.request(GetNumberRequest {
                    tenant_id: tenant_id.clone(),
                    phone_number_id: id.clone(),
                }))
                .await
                .map_err(|s| CloudError::from_status(&s).about(&id))?
                .into_inner();
            let health = accounts
                .get_number_health(caller.request(GetNumberHealthRequest {
                    tenant_id,
                    phone_number_id: id.clone(),
                }))
                .await
                .map_err(|s| CloudError::from_status(&s).about(&id))?
                .into_inner();
            return Ok(ok(numbers::info(&number, &health)));
        }
        let Query(owner) =
            owner.map_err(|e| CloudError::invalid(format!("Bad query parameters: {e}")))?;
        // A media id names no tenant: the number given with it does, else the key's own.
        let tenant_id = match owner.phone_number_id {
            Some(number) => number_owner(&app, &number).await?,
            None => caller
                .own_tenant()
                .map(str::to_owned)
                .ok_or_else(|| CloudError::unknown_object(&id))?,
        };
        let (first, _) = open_media(&app, &caller, &tenant_id, &id).await?;
        let url = media::download_url(&app.public_url, &tenant_id, &id);
        Ok(ok(media::info(&first, &id, &url)))
    })
    .await
}

/// A tenant's media file as dispatch streams it: its first chunk (the description) and the
/// rest. A reader that wants the description only drops the rest, and the file is not read.
async fn open_media(
    app: &App,
    caller: &Caller,
    tenant_id: &str,
    media_id: &str,
) -> Result<(MediaChunk, tonic::Streaming<MediaChunk>), CloudError> {
    let refused = |s: tonic::Status| CloudError::from_status(&s).about(media_id);
    let mut chunks = app
        .dispatch
        .clone()
        .get_media(caller.request(GetMediaRequest {
            tenant_id: tenant_id.to_owned(),
            media_id: media_id.to_owned(),
        }))
        .await
        .map_err(refused)?
        .into_inner();
    let first = chunks
        .message()
        .await
        .map_err(refused)?
        .ok_or_else(|| CloudError::unknown_object(media_id))?;
    Ok((first, chunks))
}

/// The bytes of a media file, streamed as dispatch streams them.
async fn download(
    State(app): Shared,
    Path((tenant_id, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    timed("media_download", async {
        let caller = caller(&app, &headers).await?;
        let (first, chunks) = open_media(&app, &caller, &tenant_id, &media_id).await?;
        let content_type = first.content_type.clone();
        let rest = chunks.map(|chunk| chunk.map(|c| Bytes::from(c.data)));
        let body = futures::stream::once(async move { Ok(Bytes::from(first.data)) }).chain(rest);
        let mut response = Response::new(Body::from_stream(body));
        if let Ok(v) = HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        Ok(response)
    })
    .await
}

/// A path, or a method on a path, that the gateway does not serve.
async fn unknown_path(request: Request) -> CloudError {
    CloudError::unknown_path(&format!("{} {}", request.method(), request.uri().path()))
}
