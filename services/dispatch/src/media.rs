//! Files users send (docs/architecture.md, "The network"): the event pipeline notes each
//! inbound message's file pending (`note`, in the batch it records, before its offsets are
//! committed); the fetcher (`Fetcher::run`) resolves it at the network, downloads it with the
//! token, checks its type, size and SHA-256 against what the webhook announced and keeps it in
//! the media store; `GetMedia` serves it to its tenant. A failure the network may cure is tried
//! again with backoff; one it cannot (a mismatch, a refusal) marks the file failed with why.

use std::sync::Arc;
use std::time::Duration;

use finestra_platform::Shutdown;
use finestra_proto::v1::Envelope;
use finestra_proto::v1::envelope::Payload;
use finestra_provider::Provider;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::media_store::MediaStore;

/// Attempts before a file is failed for good.
const MAX_ATTEMPTS: i32 = 8;
/// Files fetched at once: each is held in memory while it is checked (up to 100 MiB for a
/// document), so few at a time.
const BATCH: i64 = 4;

/// A file to fetch.
#[derive(Clone, Debug)]
pub struct Pending {
    pub tenant_id: String,
    pub media_id: String,
    pub phone_number_id: String,
    pub message_id: String,
    pub content_type: String,
    pub sha256: String,
    pub filename: String,
}

/// The file an inbound message announced, if any.
pub fn pending_of(env: &Envelope) -> Option<Pending> {
    let Some(Payload::InboundMessage(m)) = &env.payload else {
        return None;
    };
    let media = m.media.as_ref()?;
    (!env.tenant_id.is_empty() && !media.media_id.is_empty()).then(|| Pending {
        tenant_id: env.tenant_id.clone(),
        media_id: media.media_id.clone(),
        phone_number_id: m.phone_number_id.clone(),
        message_id: m.message_id.clone(),
        content_type: media.content_type.clone(),
        sha256: media.sha256.to_ascii_lowercase(),
        filename: media.filename.clone(),
    })
}

/// Notes files to fetch (a file noted twice is kept once).
pub async fn note(pool: &PgPool, files: &[Pending]) -> Result<(), sqlx::Error> {
    if files.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&Pending) -> &String| files.iter().map(f).cloned().collect::<Vec<_>>();
    sqlx::query!(
        "INSERT INTO dispatch.media (tenant_id, media_id, phone_number_id, message_id,
                                     content_type, sha256, filename)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[])
         ON CONFLICT DO NOTHING",
        &col(|p| &p.tenant_id),
        &col(|p| &p.media_id),
        &col(|p| &p.phone_number_id),
        &col(|p| &p.message_id),
        &col(|p| &p.content_type),
        &col(|p| &p.sha256),
        &col(|p| &p.filename),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Why a fetch did not keep the file.
#[derive(Debug)]
enum Miss {
    /// Try again later.
    Retry(String),
    /// Never: the file is failed with this reason.
    Fail(String),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks a downloaded file against the network's description and the webhook's.
pub fn verify(
    announced_type: &str,
    announced_sha256: &str,
    served_type: &str,
    data: &[u8],
) -> Result<(), String> {
    let base = |t: &str| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    if !announced_type.is_empty() && base(announced_type) != base(served_type) {
        return Err(format!(
            "the network serves {served_type}, the webhook announced {announced_type}"
        ));
    }
    finestra_domain::media::check(served_type, data.len() as u64).map_err(|e| e.to_string())?;
    let actual = sha256_hex(data);
    if !announced_sha256.is_empty() && actual != announced_sha256 {
        return Err(format!(
            "the file's SHA-256 is {actual}, the webhook announced {announced_sha256}"
        ));
    }
    Ok(())
}

pub struct Fetcher {
    pub pool: PgPool,
    pub provider: Arc<dyn Provider>,
    pub store: Arc<dyn MediaStore>,
    /// Only tenants whose id starts with this (tests share a database).
    pub tenant_prefix: String,
    pub every: Duration,
}

impl Fetcher {
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            match self.round().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a media fetch round failed"),
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Fetches the files due now; how many it took.
    async fn round(&self) -> Result<usize, sqlx::Error> {
        let due = sqlx::query_as!(
            Pending,
            "UPDATE dispatch.media m
                SET lease_until = now() + interval '2 minutes', attempts = m.attempts + 1
              WHERE (m.tenant_id, m.media_id) IN (
                    SELECT tenant_id, media_id FROM dispatch.media
                     WHERE state = 'pending' AND next_at <= now()
                       AND (lease_until IS NULL OR lease_until < now())
                       AND starts_with(tenant_id, $1)
                     ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING m.tenant_id, m.media_id, m.phone_number_id, m.message_id,
                       m.content_type, m.sha256, m.filename",
            &self.tenant_prefix,
            BATCH
        )
        .fetch_all(&self.pool)
        .await?;
        let n = due.len();
        let fetches = due.into_iter().map(|p| async move {
            let outcome = self.fetch(&p).await;
            if let Err(e) = self.settle(&p, outcome).await {
                tracing::warn!(error = %e, media_id = %p.media_id, "recording a media fetch failed");
            }
        });
        futures::future::join_all(fetches).await;
        Ok(n)
    }

    async fn fetch(&self, p: &Pending) -> Result<(String, u64), Miss> {
        let miss = |e: finestra_provider::ProviderError| {
            if e.retryable {
                Miss::Retry(e.to_string())
            } else {
                Miss::Fail(e.to_string())
            }
        };
        if !finestra_domain::media::valid_media_id(&p.media_id) {
            return Err(Miss::Fail(
                "the media id is not one the network issues".into(),
            ));
        }
        let info = self
            .provider
            .media_info(&p.media_id, &p.phone_number_id)
            .await
            .map_err(miss)?;
        let kind = finestra_domain::media::check(&info.mime_type, info.file_size.max(1))
            .map_err(|e| Miss::Fail(e.to_string()))?;
        let data = self
            .provider
            .download_media(&info.url, kind.max_bytes())
            .await
            .map_err(miss)?;
        verify(&p.content_type, &p.sha256, &info.mime_type, &data).map_err(Miss::Fail)?;
        if !info.sha256.is_empty() && !info.sha256.eq_ignore_ascii_case(&sha256_hex(&data)) {
            return Err(Miss::Fail(
                "the file does not match the network's own SHA-256".into(),
            ));
        }
        let key = self
            .store
            .put(&p.tenant_id, &p.media_id, &data)
            .await
            .map_err(|e| Miss::Retry(format!("the media store: {e}")))?;
        Ok((key, data.len() as u64))
    }

    async fn settle(
        &self,
        p: &Pending,
        outcome: Result<(String, u64), Miss>,
    ) -> Result<(), sqlx::Error> {
        match outcome {
            Ok((key, size)) => {
                sqlx::query!(
                    "UPDATE dispatch.media SET state = 'stored', store_key = $3, size = $4,
                            stored_at = now(), lease_until = NULL
                      WHERE tenant_id = $1 AND media_id = $2",
                    &p.tenant_id,
                    &p.media_id,
                    key,
                    i64::try_from(size).unwrap_or(i64::MAX)
                )
                .execute(&self.pool)
                .await?;
                metrics::counter!("finestra_dispatch_media_stored_total").increment(1);
            }
            Err(Miss::Retry(why)) => {
                tracing::warn!(media_id = %p.media_id, %why, "a media fetch will be tried again");
                sqlx::query!(
                    "UPDATE dispatch.media
                        SET lease_until = NULL,
                            next_at = now() + least(power(2, attempts), 300) * interval '1 second',
                            state = CASE WHEN attempts >= $3 THEN 'failed' ELSE state END,
                            failure = CASE WHEN attempts >= $3 THEN $4 ELSE failure END
                      WHERE tenant_id = $1 AND media_id = $2",
                    &p.tenant_id,
                    &p.media_id,
                    MAX_ATTEMPTS,
                    why
                )
                .execute(&self.pool)
                .await?;
            }
            Err(Miss::Fail(why)) => {
                tracing::warn!(media_id = %p.media_id, %why, "a file a user sent could not be kept");
                metrics::counter!("finestra_dispatch_media_failed_total").increment(1);
                sqlx::query!(
                    "UPDATE dispatch.media SET state = 'failed', failure = $3, lease_until = NULL
                      WHERE tenant_id = $1 AND media_id = $2",
                    &p.tenant_id,
                    &p.media_id,
                    why
                )
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

/// A tenant's file as `GetMedia` finds it.
pub struct Kept {
    pub state: String,
    pub content_type: String,
    pub sha256: String,
    pub filename: String,
    pub size: Option<i64>,
    pub store_key: Option<String>,
    pub failure: String,
}

/// A file the tenant uploaded, kept as it was sent to the network so the tenant can read it
/// back by the network's id (the Cloud API's `GET /{media_id}` describes uploads too).
pub struct Uploaded<'a> {
    pub tenant_id: &'a str,
    pub phone_number_id: &'a str,
    pub media_id: &'a str,
    pub content_type: &'a str,
    pub filename: &'a str,
    pub data: &'a [u8],
}

/// Keeps an uploaded file in the media store and notes it stored (no user message carried it:
/// `message_id` is empty). Keeping it twice changes nothing.
pub async fn keep_uploaded(
    pool: &PgPool,
    store: &dyn crate::media_store::MediaStore,
    file: Uploaded<'_>,
) -> Result<(), String> {
    let key = store
        .put(file.tenant_id, file.media_id, file.data)
        .await
        .map_err(|e| format!("storing: {e}"))?;
    sqlx::query!(
        "INSERT INTO dispatch.media (tenant_id, media_id, phone_number_id, message_id,
                                     content_type, sha256, filename, state, size, store_key,
                                     stored_at)
         VALUES ($1, $2, $3, '', $4, $5, $6, 'stored', $7, $8, now())
         ON CONFLICT (tenant_id, media_id) DO NOTHING",
        file.tenant_id,
        file.media_id,
        file.phone_number_id,
        file.content_type,
        sha256_hex(file.data),
        file.filename,
        file.data.len() as i64,
        key,
    )
    .execute(pool)
    .await
    .map_err(|e| format!("noting it: {e}"))?;
    Ok(())
}

pub async fn kept(
    pool: &PgPool,
    tenant_id: &str,
    media_id: &str,
) -> Result<Option<Kept>, sqlx::Error> {
    sqlx::query_as!(
        Kept,
        "SELECT state, content_type, sha256, filename, size, store_key, failure
           FROM dispatch.media WHERE tenant_id = $1 AND media_id = $2",
        tenant_id,
        media_id
    )
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_must_match_what_was_announced() {
        let data = b"a receipt";
        let sha = sha256_hex(data);
        assert_eq!(verify("image/jpeg", &sha, "image/jpeg", data), Ok(()));
        assert_eq!(
            verify("", "", "image/jpeg", data),
            Ok(()),
            "nothing announced"
        );
        assert!(
            verify("image/png", &sha, "image/jpeg", data).is_err(),
            "another type"
        );
        assert!(verify("image/jpeg", &sha256_hex(b"x"), "image/jpeg", data).is_err());
        assert!(
            verify("", "", "application/x-msdownload", data).is_err(),
            "a type the network does not carry"
        );
        assert!(verify("", "", "image/jpeg", b"").is_err(), "empty");
    }
}
