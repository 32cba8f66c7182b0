//! The tenant's side of media (docs/architecture.md, "The network"): `UploadMedia` sends a file
//! to the network for one of the tenant's numbers, to be sent by its id, and keeps it; `GetMedia`
//! streams a file a user sent, as the fetcher kept it (`media`), or one the tenant uploaded, to
//! that business only.

use finestra_platform::status::{self, Reason, not_found, required};
use finestra_proto::v1::{GetMediaRequest, MediaChunk, UploadMediaRequest, UploadMediaResponse};
use finestra_provider::Provider;
use sqlx::PgPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::facts::Facts;
use crate::media_store::MediaStore;
use crate::network_api::{provider_status, tenants_number};

/// The largest request dispatch reads: the largest file the network carries (a 100 MiB
/// document) and the request around it.
pub const MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024 + 64 * 1024;

/// Bytes per streamed chunk.
const CHUNK: usize = 1024 * 1024;

pub async fn upload(
    facts: &Facts,
    provider: &dyn Provider,
    store: &dyn MediaStore,
    req: UploadMediaRequest,
) -> Result<UploadMediaResponse, Status> {
    tenants_number(facts, &req.tenant_id, &req.phone_number_id).await?;
    let content_type = required("content_type", &req.content_type)?;
    let size = req.data.len() as u64;
    let kind = finestra_domain::media::check(content_type, size)
        .map_err(|e| status::invalid_argument("data", e.to_string()))?;
    let media_id = provider
        .upload_media(
            &req.phone_number_id,
            content_type,
            &req.filename,
            req.data.clone(),
        )
        .await
        .map_err(|e| provider_status(&e))?;
    metrics::counter!("finestra_dispatch_media_uploaded_total").increment(1);
    // The network has it, so the send by id works whatever happens here; a file that could not
    // be kept is only not readable back.
    let kept = crate::media::keep_uploaded(
        facts.pool(),
        store,
        crate::media::Uploaded {
            tenant_id: &req.tenant_id,
            phone_number_id: &req.phone_number_id,
            media_id: &media_id,
            content_type,
            filename: &req.filename,
            data: &req.data,
        },
    )
    .await;
    if let Err(e) = kept {
        tracing::warn!(error = %e, %media_id, "an uploaded file was not kept");
    }
    Ok(UploadMediaResponse {
        media_id,
        kind: kind.name().to_owned(),
        size,
    })
}

pub async fn get(
    pool: &PgPool,
    store: std::sync::Arc<dyn MediaStore>,
    req: GetMediaRequest,
) -> Result<ReceiverStream<Result<MediaChunk, Status>>, Status> {
    let media_id = required("media_id", &req.media_id)?;
    let kept = crate::media::kept(pool, &req.tenant_id, media_id)
        .await
        .map_err(|e| status::store("reading a file", &e))?
        .ok_or_else(|| not_found("media_id", media_id))?;
    let key = match (kept.state.as_str(), &kept.store_key) {
        ("stored", Some(key)) => key.clone(),
        ("failed", _) => {
            return Err(status::with_reason(
                Code::FailedPrecondition,
                Reason::ProviderRefused,
                format!(
                    "the file could not be fetched from the network: {}",
                    kept.failure
                ),
                &[("media_id", media_id)],
            ));
        }
        _ => {
            return Err(status::with_reason_and_retry(
                Code::Unavailable,
                Reason::ProviderUnavailable,
                "the file is still being fetched from the network",
                &[("media_id", media_id)],
                std::time::Duration::from_secs(1),
            ));
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The description first, from the row: a reader that wants only it (the Cloud API's
    // `GET /{media_id}`) stops there, and the file is then not read at all.
    let first = MediaChunk {
        content_type: kept.content_type,
        sha256: kept.sha256,
        size: kept.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        filename: kept.filename,
        data: Vec::new(),
    };
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let data = match store.get(&key).await {
            Ok(data) => data,
            Err(e) => {
                let _ = tx
                    .send(Err(status::internal("reading a kept file", &e)))
                    .await;
                return;
            }
        };
        for chunk in data.chunks(CHUNK) {
            let piece = MediaChunk {
                data: chunk.to_vec(),
                ..MediaChunk::default()
            };
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
