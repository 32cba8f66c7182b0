//! Media at the network, as the Cloud API serves it: a business uploads a file for a number
//! (`POST /{version}/{phone_number_id}/media`, multipart, within the network's types and sizes)
//! and sends it by its id; a file a user sent is looked up by its id (`GET /{version}/{media_id}`
//! answers a short-lived download URL, its type, hash and size) and downloaded with the
//! number's bearer token.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::Sim;
use crate::cloud_api::{cloud_error, number_of_request, try_again, unknown_version};
use crate::store::{self, SimMedia};

type Answer = (StatusCode, Json<Value>);

fn upload_error(details: &str) -> Answer {
    cloud_error(
        StatusCode::BAD_REQUEST,
        131_053,
        "Media upload error",
        details,
    )
}

/// A new media id (Meta's are decimal numbers).
fn new_id() -> String {
    (rand::rng().random::<u64>() >> 12).to_string()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Keeps a file the network holds for `phone_number_id`; its description.
pub(crate) async fn keep(
    sim: &Sim,
    phone_number_id: &str,
    content_type: &str,
    filename: &str,
    data: &[u8],
    from_user: bool,
) -> Result<SimMedia, sqlx::Error> {
    let m = SimMedia {
        media_id: new_id(),
        phone_number_id: phone_number_id.to_owned(),
        content_type: content_type.to_owned(),
        sha256: sha256_hex(data),
        filename: filename.to_owned(),
        size: i64::try_from(data.len()).unwrap_or(i64::MAX),
    };
    store::put_media(&sim.pool, sim.network(), &m, data, from_user).await?;
    Ok(m)
}

pub(crate) async fn upload(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    if let Err(answer) = number_of_request(&sim, &headers, &phone_number_id).await {
        return answer;
    }
    let (mut product, mut declared, mut file) = (String::new(), String::new(), None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return upload_error(&format!("unreadable form: {e}")),
        };
        match field.name().unwrap_or_default() {
            "messaging_product" => product = field.text().await.unwrap_or_default(),
            "type" => declared = field.text().await.unwrap_or_default(),
            "file" => {
                let name = field.file_name().unwrap_or_default().to_owned();
                let part_type = field.content_type().unwrap_or_default().to_owned();
                match field.bytes().await {
                    Ok(data) => file = Some((name, part_type, data)),
                    Err(e) => return upload_error(&format!("unreadable file: {e}")),
                }
            }
            _ => {}
        }
    }
    let Some((filename, part_type, data)) = file else {
        return upload_error("the form has no file");
    };
    let content_type = if declared.is_empty() {
        part_type
    } else {
        declared
    };
    if product != "whatsapp" {
        return cloud_error(
            StatusCode::BAD_REQUEST,
            100,
            "Invalid parameter",
            "messaging_product must be whatsapp",
        );
    }
    if let Err(why) = finestra_domain::media::check(&content_type, data.len() as u64) {
        return upload_error(&why.to_string());
    }
    match keep(
        &sim,
        &phone_number_id,
        &content_type,
        &filename,
        &data,
        false,
    )
    .await
    {
        Ok(m) => (StatusCode::OK, Json(json!({ "id": m.media_id }))),
        Err(e) => try_again("storing a file", &e),
    }
}

/// `GET /{version}/{media_id}`: where to download it.
pub(crate) async fn info(
    State(sim): State<Arc<Sim>>,
    Path((version, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    if let Some(answer) = unknown_version(&version) {
        return answer;
    }
    let m = match store::media(&sim.pool, sim.network(), &media_id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return cloud_error(
                StatusCode::NOT_FOUND,
                100,
                "Invalid parameter",
                "no such media id",
            );
        }
        Err(e) => return try_again("looking up a file", &e),
    };
    if let Err(answer) = number_of_request(&sim, &headers, &m.phone_number_id).await {
        return answer;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    (
        StatusCode::OK,
        Json(json!({
            "messaging_product": "whatsapp",
            "url": format!("http://{host}/media-download/{}", m.media_id),
            "mime_type": m.content_type,
            "sha256": m.sha256,
            "file_size": m.size,
            "id": m.media_id,
        })),
    )
}

/// The download the lookup's URL leads to (the number's bearer token required).
pub(crate) async fn download(
    State(sim): State<Arc<Sim>>,
    Path(media_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let m = match store::media(&sim.pool, sim.network(), &media_id).await {
        Ok(Some(m)) => m,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => return try_again("looking up a file", &e).into_response(),
    };
    if let Err(answer) = number_of_request(&sim, &headers, &m.phone_number_id).await {
        return answer.into_response();
    }
    match store::media_data(&sim.pool, sim.network(), &media_id).await {
        Ok(Some(data)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, m.content_type)],
            Bytes::from(data),
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => try_again("reading a file", &e).into_response(),
    }
}

/// A media send names a file the network holds for the sending number.
pub(crate) async fn sendable(
    sim: &Sim,
    phone_number_id: &str,
    media_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(store::media(&sim.pool, sim.network(), media_id)
        .await?
        .is_some_and(|m| m.phone_number_id == phone_number_id))
}
