//! Records what the network says of a business account's health (`HealthChanged` on
//! finestra.provider.v1, from ingest's health webhooks): a number's quality rating and
//! messaging limit, the tenant's tier (the messaging limit is the tier dispatch enforces), the
//! account's status, a template's quality. Each fact keeps the network's time of it; an older
//! event never overwrites a newer one, and the same event twice changes nothing more.

use finestra_domain::Timestamp;
use finestra_domain::health;
use finestra_proto::v1::HealthChanged;
use finestra_proto::v1::health_changed::Kind;
use sqlx::PgPool;

/// Applies one event of tenant `tenant_id` that happened at `at`.
pub async fn apply(
    pool: &PgPool,
    tenant_id: &str,
    h: &HealthChanged,
    at: Timestamp,
) -> Result<(), sqlx::Error> {
    let at = at.micros();
    match Kind::try_from(h.kind).unwrap_or(Kind::Unspecified) {
        Kind::NumberQuality => {
            let quality = Some(h.quality.as_str()).filter(|q| health::is_quality(q));
            let limit =
                Some(h.messaging_limit.as_str()).filter(|l| health::tier_of_limit(l).is_some());
            sqlx::query!(
                "UPDATE accounts.numbers
                    SET quality_rating = coalesce($3, quality_rating),
                        messaging_limit = coalesce($4, messaging_limit),
                        health_event = $5,
                        health_at = timestamptz 'epoch' + $6::bigint * interval '1 microsecond'
                  WHERE tenant_id = $1 AND phone_number_id = $2
                    AND (health_at IS NULL
                         OR health_at <= timestamptz 'epoch' + $6::bigint * interval '1 microsecond')",
                tenant_id,
                &h.phone_number_id,
                quality,
                limit,
                &h.event,
                at
            )
            .execute(pool)
            .await?;
            set_tier(pool, tenant_id, &h.messaging_limit, at).await
        }
        Kind::Capability => set_tier(pool, tenant_id, &h.messaging_limit, at).await,
        Kind::Account => {
            sqlx::query!(
                "UPDATE accounts.tenants
                    SET account_status = $2, account_detail = $3,
                        account_status_at = timestamptz 'epoch' + $4::bigint * interval '1 microsecond'
                  WHERE tenant_id = $1
                    AND (account_status_at IS NULL
                         OR account_status_at <= timestamptz 'epoch' + $4::bigint * interval '1 microsecond')",
                tenant_id,
                &h.event,
                &h.detail,
                at
            )
            .execute(pool)
            .await?;
            Ok(())
        }
        Kind::TemplateQuality => {
            if !health::is_quality(&h.quality) {
                tracing::warn!(tenant_id, quality = %h.quality, "template quality not understood; dropped");
                return Ok(());
            }
            sqlx::query!(
                "UPDATE accounts.templates
                    SET quality = $5,
                        quality_at = timestamptz 'epoch' + $6::bigint * interval '1 microsecond'
                  WHERE tenant_id = $1 AND deleted_at IS NULL
                    AND (provider_template_id = $2 OR (name = $3 AND language = $4))
                    AND (quality_at IS NULL
                         OR quality_at <= timestamptz 'epoch' + $6::bigint * interval '1 microsecond')",
                tenant_id,
                &h.provider_template_id,
                &h.template_name,
                &h.template_language,
                &h.quality,
                at
            )
            .execute(pool)
            .await?;
            Ok(())
        }
        Kind::Unspecified => {
            tracing::warn!(tenant_id, "a health event of no kind; dropped");
            Ok(())
        }
    }
}

/// The network's messaging limit becomes the tenant's tier (dispatch reads it within its facts
/// cache time).
async fn set_tier(pool: &PgPool, tenant_id: &str, limit: &str, at: i64) -> Result<(), sqlx::Error> {
    let Some(tier) = health::tier_of_limit(limit) else {
        if !limit.is_empty() {
            tracing::warn!(
                tenant_id,
                limit,
                "a messaging limit not understood; the tier is kept"
            );
        }
        return Ok(());
    };
    let tier = tier.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
    let changed = sqlx::query!(
        "UPDATE accounts.tenants
            SET tier = $2,
                tier_at = timestamptz 'epoch' + $3::bigint * interval '1 microsecond'
          WHERE tenant_id = $1
            AND (tier_at IS NULL
                 OR tier_at <= timestamptz 'epoch' + $3::bigint * interval '1 microsecond')",
        tenant_id,
        tier,
        at
    )
    .execute(pool)
    .await?
    .rows_affected();
    if changed > 0 {
        tracing::info!(tenant_id, limit, "the network set the tenant's tier");
    }
    Ok(())
}
