//! Applies the provider's template reviews and health events (`TemplateReviewed` and
//! `HealthChanged` on finestra.provider.v1, from ingest's webhooks; `health` records the
//! latter). Idempotent and order-safe: a review not newer than the last one applied changes
//! nothing; offsets are committed after the batch is applied.

use std::time::Duration;

use finestra_domain::Timestamp;
use finestra_domain::template::{Category, Review};
use finestra_platform::Shutdown;
use finestra_platform::kafka::{self, BatchConsumer};
use finestra_proto::v1::envelope::Payload;
use sqlx::PgPool;

use crate::templates::TemplateError;

/// The lifecycle step a provider event means; `None` for events that are not one.
pub fn review_of(event: &str, new_category: &str) -> Option<Review> {
    match event {
        "APPROVED" => Some(Review::Approve),
        "REJECTED" => Some(Review::Reject),
        "PAUSED" => Some(Review::Pause),
        "REINSTATED" | "UNPAUSED" => Some(Review::Unpause),
        "DISABLED" => Some(Review::Disable),
        "RECATEGORISED" => Category::parse(new_category).map(Review::Recategorise),
        _ => None,
    }
}

pub async fn run(consumer: BatchConsumer, pool: PgPool, shutdown: Shutdown) {
    loop {
        let Some(batch) = consumer.next_batch_until_shutdown(&shutdown).await else {
            break;
        };
        let mut retry = true;
        while retry {
            retry = false;
            for m in &batch {
                let Ok(env) = kafka::decode(m) else {
                    tracing::warn!("undecodable provider event skipped");
                    continue;
                };
                let at = env
                    .occurred_at
                    .as_ref()
                    .map(|t| Timestamp::from_micros(finestra_proto::time::to_micros(t)))
                    .unwrap_or_default();
                let applied = match &env.payload {
                    Some(Payload::TemplateReviewed(r)) => apply(&pool, &env.tenant_id, r, at).await,
                    Some(Payload::HealthChanged(h)) => {
                        crate::health::apply(&pool, &env.tenant_id, h, at)
                            .await
                            .map_err(TemplateError::from)
                    }
                    _ => continue,
                };
                if let Err(e) = applied {
                    tracing::error!(error = %e, "applying a provider event failed; retrying the batch");
                    retry = true;
                    break;
                }
            }
            if retry {
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        if let Err(e) = consumer.commit(&batch).await {
            tracing::warn!(error = %e, "offset commit failed; the batch will be re-applied harmlessly");
        }
    }
}

/// Applies one review. Unknown templates, stale and illegal reviews are logged and dropped;
/// only store failures are errors (the batch is retried).
async fn apply(
    pool: &PgPool,
    tenant_id: &str,
    r: &finestra_proto::v1::TemplateReviewed,
    at: Timestamp,
) -> Result<(), TemplateError> {
    let Some(review) = review_of(&r.event, &r.new_category) else {
        tracing::debug!(event = %r.event, "provider template event without a lifecycle step");
        return Ok(());
    };
    let template_id: Option<String> = sqlx::query_scalar!(
        "SELECT template_id FROM accounts.templates
         WHERE tenant_id = $1 AND name = $2 AND language = $3 AND deleted_at IS NULL",
        tenant_id,
        &r.name,
        &r.language
    )
    .fetch_optional(pool)
    .await?;
    let Some(template_id) = template_id else {
        tracing::warn!(tenant_id, name = %r.name, language = %r.language, "review of an unknown template dropped");
        return Ok(());
    };
    match crate::templates::review(pool, tenant_id, &template_id, review, &r.reason, at).await {
        Ok(_) => Ok(()),
        // Not applicable (deleted meanwhile, or a step the lifecycle refuses): dropped.
        Err(e @ (TemplateError::NotFound { .. } | TemplateError::Transition { .. })) => {
            tracing::warn!(tenant_id, template_id, event = %r.event, reason = %e, "template review not applicable; dropped");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
