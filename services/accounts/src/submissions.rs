//! Templates at the network (docs/architecture.md, "The network"): a tenant's template is
//! submitted to its business account, deleted there when the tenant deletes it, and read back to
//! resynchronise. What the network decides arrives later as review webhooks (`reviews`); what
//! could not be said to the network now is said later by the background submitter (`run`).

use std::sync::Arc;
use std::time::Duration;

use finestra_domain::Timestamp;
use finestra_domain::template::{Category, Review};
use finestra_platform::Shutdown;
use finestra_provider::{Content, Listed, Provider, ProviderError, Submission};
use sqlx::PgPool;

use crate::templates::{self, TemplateError, TemplateRow};

/// A template left unsubmitted (the network was unreachable) is tried again after this long.
const RETRY_AFTER_SECS: i64 = 5;

fn now() -> Timestamp {
    finestra_domain::Clock::now(&finestra_platform::SystemClock)
}

/// The tenant's business account id, which its templates belong to at the network.
pub async fn waba_of(pool: &PgPool, tenant_id: &str) -> Result<String, TemplateError> {
    sqlx::query_scalar!(
        "SELECT waba_id FROM accounts.tenants WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_optional(pool)
    .await?
    .flatten()
    .ok_or(TemplateError::NoBusinessAccount)
}

fn content_of(row: &TemplateRow) -> Content {
    Content {
        body: row.body.clone(),
        header: row.header.clone(),
        footer: row.footer.clone(),
        buttons: row
            .buttons
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok()),
    }
}

/// A refusal becomes the tenant's error; a transient failure says the network is unreachable.
fn refusal(e: ProviderError) -> TemplateError {
    if e.retryable {
        TemplateError::ProviderUnavailable(e.to_string())
    } else {
        TemplateError::ProviderRefused {
            code: e.code,
            message: e.title,
        }
    }
}

/// What becomes of a template whose submission the network refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Not kept: the tenant who just made it is answered the network's reason (CreateTemplate).
    Discard,
    /// Kept REJECTED with the network's reason, for the tenant to see later.
    Reject,
}

/// Submits a stored template the network has not received. Answers the template as now
/// stored; a template submitted already is answered as is. A refused submission is
/// `ProviderRefused` (the template discarded or rejected, as `on_refusal` says); an
/// unreachable network leaves it to be submitted later (`ProviderUnavailable`).
pub async fn submit(
    pool: &PgPool,
    provider: &dyn Provider,
    tenant_id: &str,
    template_id: &str,
    on_refusal: OnRefusal,
) -> Result<TemplateRow, TemplateError> {
    let waba_id = waba_of(pool, tenant_id).await?;
    let Some(row) = claim(pool, tenant_id, template_id).await? else {
        // Submitted already, or being submitted by another call right now.
        return templates::get(pool, tenant_id, template_id).await;
    };
    let content = content_of(&row);
    let submitted = provider
        .submit_template(
            &waba_id,
            Submission {
                name: &row.name,
                language: &row.language,
                category: &row.category,
                content: &content,
            },
        )
        .await;
    match submitted {
        Ok(created) => {
            metrics::counter!("finestra_accounts_templates_submitted_total").increment(1);
            record_and_catch_up(pool, tenant_id, template_id, &created.id, &created.status).await
        }
        Err(e) if e.retryable => {
            release(pool, template_id).await?;
            Err(refusal(e))
        }
        Err(e) => {
            // A refusal may be the network answering a repeat of a submission whose answer
            // was lost: it holds this very template already. Then that one is this template.
            if let Some(theirs) = already_there(provider, &waba_id, &row, &content).await {
                tracing::info!(tenant_id, template = %row.name, code = e.code, "the network holds this template already; its id is kept");
                return record_and_catch_up(
                    pool,
                    tenant_id,
                    template_id,
                    &theirs.id,
                    &theirs.status,
                )
                .await;
            }
            tracing::info!(tenant_id, template = %row.name, code = e.code, "the network refused a template");
            match on_refusal {
                OnRefusal::Discard => {
                    sqlx::query!(
                        "DELETE FROM accounts.templates
                          WHERE template_id = $1 AND submitted_at IS NULL",
                        template_id
                    )
                    .execute(pool)
                    .await?;
                }
                OnRefusal::Reject => {
                    release(pool, template_id).await?;
                    let reason = format!("refused by the network: {}", e.title);
                    templates::review(pool, tenant_id, template_id, Review::Reject, &reason, now())
                        .await?;
                }
            }
            Err(refusal(e))
        }
    }
}

/// New content for a template (and a new category, when given): the network reviews it again
/// and it is PENDING until then. A template the network has not received yet is only changed
/// here (its submission carries the new content).
pub async fn edit(
    pool: &PgPool,
    provider: &dyn Provider,
    req: &finestra_proto::v1::EditTemplateRequest,
) -> Result<TemplateRow, TemplateError> {
    let row = templates::get(pool, &req.tenant_id, &req.template_id).await?;
    let status = row.lifecycle().status_at(now());
    if !status.editable() {
        return Err(TemplateError::NotEditable {
            template_id: row.template_id,
            status: status.name(),
        });
    }
    let category = if req.category.trim().is_empty() {
        None
    } else {
        Some(
            Category::parse(&req.category).ok_or(TemplateError::Invalid {
                field: "category",
                rule: "MARKETING, UTILITY or AUTHENTICATION",
            })?,
        )
    };
    let params = finestra_domain::template::validate(
        &row.name,
        &row.language,
        &req.body,
        &req.header,
        &req.footer,
    )
    .map_err(|e| TemplateError::InvalidTemplate {
        name: row.name.clone(),
        why: e.to_string(),
    })?;
    let buttons = templates::buttons(&req.buttons_json)?;
    let content = Content {
        body: req.body.clone(),
        header: req.header.clone(),
        footer: req.footer.clone(),
        buttons: buttons.and_then(|b| serde_json::from_str(b).ok()),
    };
    if let Some(provider_id) = &row.provider_template_id {
        provider
            .edit_template(provider_id, category.map(Category::as_str), &content)
            .await
            .map_err(refusal)?;
    }
    sqlx::query_as!(
        TemplateRow,
        "UPDATE accounts.templates
            SET body = $3, header = $4, footer = $5, buttons = $6::text::jsonb,
                parameter_count = $7, category = coalesce($8, category), status = 'PENDING',
                paused_until = NULL, status_reason = ''
          WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        &req.tenant_id,
        &req.template_id,
        &req.body,
        &req.header,
        &req.footer,
        buttons,
        i32::try_from(params).unwrap_or(i32::MAX),
        category.map(Category::as_str)
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| TemplateError::NotFound {
        template_id: req.template_id.clone(),
    })
}

/// Keeps the network's id for a submitted template, and its status when the network decided at
/// once (its webhook says it too).
async fn record_and_catch_up(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
    provider_template_id: &str,
    status: &str,
) -> Result<TemplateRow, TemplateError> {
    let stored = record_submission(pool, template_id, provider_template_id).await?;
    match catch_up(stored.lifecycle().status_at(now()).name(), status) {
        Some(review) => {
            let at = inferred_at(&stored);
            templates::review(pool, tenant_id, template_id, review, "", at).await
        }
        None => Ok(stored),
    }
}

/// The network's template of the same name, language, category and content, if it holds one.
async fn already_there(
    provider: &dyn Provider,
    waba_id: &str,
    row: &TemplateRow,
    content: &Content,
) -> Option<Listed> {
    let listed = provider.list_templates(waba_id).await.ok()?;
    listed.into_iter().find(|l| {
        l.name == row.name
            && l.language == row.language
            && l.category.eq_ignore_ascii_case(&row.category)
            && Content::from_components(&l.components) == *content
    })
}

/// Takes an unsubmitted template for one submission (a lease of 30 s).
async fn claim(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
) -> Result<Option<TemplateRow>, sqlx::Error> {
    sqlx::query_as!(
        TemplateRow,
        "UPDATE accounts.templates SET submit_lease_until = now() + interval '30 seconds'
          WHERE tenant_id = $1 AND template_id = $2 AND submitted_at IS NULL
            AND deleted_at IS NULL
            AND (submit_lease_until IS NULL OR submit_lease_until < now())
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        tenant_id,
        template_id
    )
    .fetch_optional(pool)
    .await
}

async fn release(pool: &PgPool, template_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE accounts.templates SET submit_lease_until = NULL WHERE template_id = $1",
        template_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn record_submission(
    pool: &PgPool,
    template_id: &str,
    provider_template_id: &str,
) -> Result<TemplateRow, TemplateError> {
    sqlx::query_as!(
        TemplateRow,
        "UPDATE accounts.templates
            SET provider_template_id = $2, submitted_at = coalesce(submitted_at, now()),
                submit_lease_until = NULL
          WHERE template_id = $1
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        template_id,
        provider_template_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| TemplateError::NotFound {
        template_id: template_id.to_owned(),
    })
}

/// Deletes at the network a template the tenant deleted here. A failure leaves it to the
/// background submitter.
pub async fn delete_remote(
    pool: &PgPool,
    provider: &dyn Provider,
    row: &TemplateRow,
) -> Result<(), TemplateError> {
    let Some(provider_id) = &row.provider_template_id else {
        return Ok(());
    };
    let waba_id = waba_of(pool, &row.tenant_id).await?;
    provider
        .delete_template(&waba_id, &row.name, Some(provider_id))
        .await
        .map_err(refusal)?;
    sqlx::query!(
        "UPDATE accounts.templates SET provider_deleted_at = now() WHERE template_id = $1",
        &row.template_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The time to stamp a review Finestra infers (from a submission's answer or a listing) with:
/// just after the last one applied, so that it applies, and so that any later webhook of the
/// network (whole seconds) is newer still and applies after it.
fn inferred_at(row: &TemplateRow) -> Timestamp {
    Timestamp::from_micros(
        row.last_review_at
            .map_or(0, |t| t.timestamp_micros())
            .saturating_add(1),
    )
}

/// The review that brings a template from `current` to the network's `listed` status, if one
/// is needed.
pub fn catch_up(current: &str, listed: &str) -> Option<Review> {
    match (current, listed) {
        (c, l) if c == l => None,
        ("PENDING", "APPROVED") => Some(Review::Approve),
        ("PAUSED", "APPROVED") => Some(Review::Unpause),
        (_, "REJECTED") => Some(Review::Reject),
        (_, "PAUSED") => Some(Review::Pause),
        (_, "DISABLED") => Some(Review::Disable),
        _ => None,
    }
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub updated: u32,
    pub removed: u32,
    pub adopted: u32,
    pub submitted: u32,
}

/// Reads the tenant's business account back from the network and brings its templates in line.
pub async fn sync(
    pool: &PgPool,
    provider: &dyn Provider,
    tenant_id: &str,
) -> Result<SyncReport, TemplateError> {
    let waba_id = waba_of(pool, tenant_id).await?;
    // The rows first, the listing after: a template submitted in between is then in the
    // listing but not among the rows, and is left alone (never taken for deleted there).
    let local = sqlx::query_as!(
        TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates WHERE tenant_id = $1 AND deleted_at IS NULL",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    // Deleted here, not yet at the network (the submitter deletes them there): not adopted.
    let leaving: Vec<String> = sqlx::query_scalar!(
        "SELECT provider_template_id AS \"id!\" FROM accounts.templates
          WHERE tenant_id = $1 AND deleted_at IS NOT NULL AND provider_deleted_at IS NULL
            AND provider_template_id IS NOT NULL",
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    let listed = provider.list_templates(&waba_id).await.map_err(refusal)?;
    let mut report = SyncReport::default();
    let same = |l: &Listed, row: &TemplateRow| match &row.provider_template_id {
        Some(id) => *id == l.id,
        None => l.name == row.name && l.language == row.language,
    };
    for row in &local {
        let Some(remote) = listed.iter().find(|l| same(l, row)) else {
            if row.provider_template_id.is_some() {
                sqlx::query!(
                    "UPDATE accounts.templates
                        SET deleted_at = now(), provider_deleted_at = now(),
                            status_reason = 'deleted at the network'
                      WHERE template_id = $1",
                    &row.template_id
                )
                .execute(pool)
                .await?;
                report.removed += 1;
            } else {
                match submit(
                    pool,
                    provider,
                    tenant_id,
                    &row.template_id,
                    OnRefusal::Reject,
                )
                .await
                {
                    Ok(_) => report.submitted += 1,
                    Err(e) => {
                        tracing::warn!(tenant_id, template = %row.name, error = %e, "a template owed to the network was not submitted")
                    }
                }
            }
            continue;
        };
        if row.provider_template_id.is_none() {
            record_submission(pool, &row.template_id, &remote.id).await?;
        }
        let current = row.lifecycle().status_at(now()).name();
        if let Some(review) = catch_up(current, &remote.status) {
            let reason = remote.rejected_reason.as_deref().unwrap_or_default();
            let at = inferred_at(row);
            match templates::review(pool, tenant_id, &row.template_id, review, reason, at).await {
                Ok(_) => report.updated += 1,
                Err(TemplateError::Transition { why, .. }) => {
                    tracing::warn!(tenant_id, template = %row.name, %why, "the network's status could not be applied")
                }
                Err(e) => return Err(e),
            }
        }
    }
    for remote in listed
        .iter()
        .filter(|l| !local.iter().any(|row| same(l, row)) && !leaving.contains(&l.id))
    {
        match adopt(pool, tenant_id, remote).await {
            Ok(true) => report.adopted += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(tenant_id, template = %remote.name, error = %e, "a template found at the network was not adopted")
            }
        }
    }
    Ok(report)
}

/// Keeps a template made at the network directly, with the network's status; `false` when the
/// tenant has one of that name and language already.
async fn adopt(pool: &PgPool, tenant_id: &str, remote: &Listed) -> Result<bool, TemplateError> {
    let content = Content::from_components(&remote.components);
    let params = finestra_domain::template::validate(
        &remote.name,
        &remote.language,
        &content.body,
        &content.header,
        &content.footer,
    )
    .map_err(|e| TemplateError::InvalidTemplate {
        name: remote.name.clone(),
        why: e.to_string(),
    })?;
    let category = Category::parse(&remote.category).ok_or(TemplateError::Invalid {
        field: "category",
        rule: "MARKETING, UTILITY or AUTHENTICATION",
    })?;
    let status = match remote.status.as_str() {
        s @ ("APPROVED" | "REJECTED" | "DISABLED") => s,
        _ => "PENDING",
    };
    let buttons = content.buttons.as_ref().map(serde_json::Value::to_string);
    let id = format!("tpl_{:016x}", rand::random::<u64>());
    let adopted = sqlx::query!(
        "INSERT INTO accounts.templates (template_id, tenant_id, name, language, category, body,
                header, footer, buttons, parameter_count, status, provider_template_id,
                submitted_at, status_reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10, $11, $12, now(), $13)
         ON CONFLICT DO NOTHING",
        &id,
        tenant_id,
        &remote.name,
        &remote.language,
        category.as_str(),
        &content.body,
        &content.header,
        &content.footer,
        buttons,
        i32::try_from(params).unwrap_or(i32::MAX),
        status,
        &remote.id,
        remote
            .rejected_reason
            .as_deref()
            .filter(|r| *r != "NONE")
            .unwrap_or_default()
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(adopted > 0)
}

/// The background submitter: every `every`, submits the templates the network has not
/// received (the network was unreachable when they were made) and deletes at the network the
/// ones deleted here meanwhile, for tenants whose id starts with `tenant_prefix` (all when
/// empty; tests confine each submitter to their own).
pub async fn run(
    pool: PgPool,
    provider: Arc<dyn Provider>,
    every: Duration,
    tenant_prefix: String,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = catch_up_once(&pool, provider.as_ref(), &tenant_prefix).await {
            tracing::warn!(error = %e, "the template submitter's round failed");
        }
    }
}

/// One round of the background submitter.
pub async fn catch_up_once(
    pool: &PgPool,
    provider: &dyn Provider,
    tenant_prefix: &str,
) -> Result<(), TemplateError> {
    let owed = sqlx::query!(
        "SELECT t.tenant_id, t.template_id FROM accounts.templates t
           JOIN accounts.tenants n USING (tenant_id)
          WHERE t.submitted_at IS NULL AND t.deleted_at IS NULL AND t.status = 'PENDING'
            AND n.waba_id IS NOT NULL AND starts_with(t.tenant_id, $2)
            AND t.created_at < now() - $1::bigint * interval '1 second'
          ORDER BY t.created_at LIMIT 100",
        RETRY_AFTER_SECS,
        tenant_prefix
    )
    .fetch_all(pool)
    .await?;
    for t in owed {
        let submitted = submit(
            pool,
            provider,
            &t.tenant_id,
            &t.template_id,
            OnRefusal::Reject,
        )
        .await;
        if let Err(e) = submitted {
            tracing::warn!(tenant_id = %t.tenant_id, template_id = %t.template_id, error = %e, "a template owed to the network is still not submitted");
        }
    }
    let undeleted = sqlx::query_as!(
        TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates
          WHERE deleted_at IS NOT NULL AND submitted_at IS NOT NULL
            AND provider_deleted_at IS NULL AND starts_with(tenant_id, $1)
          ORDER BY deleted_at LIMIT 100",
        tenant_prefix
    )
    .fetch_all(pool)
    .await?;
    for row in undeleted {
        if let Err(e) = delete_remote(pool, provider, &row).await {
            tracing::warn!(tenant_id = %row.tenant_id, template_id = %row.template_id, error = %e, "a deleted template is still at the network");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_catches_up_only_with_a_different_status() {
        assert_eq!(catch_up("APPROVED", "APPROVED"), None);
        assert_eq!(catch_up("PENDING", "PENDING"), None);
        assert_eq!(catch_up("PENDING", "APPROVED"), Some(Review::Approve));
        assert_eq!(catch_up("PAUSED", "APPROVED"), Some(Review::Unpause));
        assert_eq!(catch_up("PENDING", "REJECTED"), Some(Review::Reject));
        assert_eq!(catch_up("APPROVED", "PAUSED"), Some(Review::Pause));
        assert_eq!(catch_up("APPROVED", "DISABLED"), Some(Review::Disable));
        assert_eq!(
            catch_up("APPROVED", "PENDING"),
            None,
            "a listing never moves a template back to review"
        );
    }
}
