//! Templates: storage of the domain lifecycle (`finestra_domain::template`).

use finestra_domain::Timestamp;
use finestra_domain::template::{
    self, Applied, Category, Lifecycle, Review, ReviewError, Status as TStatus,
};
use finestra_proto::v1;
use sqlx::PgPool;

use crate::convert::ts;

/// Why a template could not be stored, found or reviewed. The gRPC edge maps it to a status
/// (`api::template_calls`); the review consumer decides by it what to retry.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{field}: {rule}")]
    Invalid {
        field: &'static str,
        rule: &'static str,
    },
    #[error("template {name}: {why}")]
    InvalidTemplate { name: String, why: String },
    #[error("the tenant has a template {name} in {language}")]
    Duplicate { name: String, language: String },
    #[error("no such template")]
    NotFound { template_id: String },
    #[error("template {template_id}: {why}")]
    Transition {
        template_id: String,
        why: ReviewError,
    },
    #[error("a {status} template cannot be edited (only an approved, rejected or paused one)")]
    NotEditable {
        template_id: String,
        status: &'static str,
    },
    #[error("the tenant has no business account id (set it with UpdateTenant)")]
    NoBusinessAccount,
    #[error("the network refused the template: {message}")]
    ProviderRefused { code: i32, message: String },
    #[error("the network could not be reached: {0}")]
    ProviderUnavailable(String),
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

pub struct TemplateRow {
    pub template_id: String,
    pub tenant_id: String,
    pub name: String,
    pub language: String,
    pub category: String,
    pub body: String,
    pub header: String,
    pub footer: String,
    pub buttons: Option<String>,
    pub parameter_count: i32,
    pub status: String,
    pub paused_until: Option<chrono::DateTime<chrono::Utc>>,
    pub pauses: i32,
    pub last_review_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub provider_template_id: Option<String>,
    pub submitted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status_reason: String,
    pub quality: String,
}

fn micros(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from_micros(t.timestamp_micros())
}

impl TemplateRow {
    pub fn lifecycle(&self) -> Lifecycle {
        // The schema allows only the lifecycle's statuses.
        let status = TStatus::from_stored(&self.status, self.paused_until.map(micros))
            .unwrap_or(TStatus::Pending);
        Lifecycle {
            status,
            category: Category::parse(&self.category).unwrap_or(Category::Marketing),
            pauses: u8::try_from(self.pauses).unwrap_or(u8::MAX),
            last_review_at: self.last_review_at.map(micros),
        }
    }

    pub fn wire(self, now: Timestamp) -> v1::Template {
        let lifecycle = self.lifecycle();
        let status = lifecycle.status_at(now);
        v1::Template {
            template_id: self.template_id,
            tenant_id: self.tenant_id,
            name: self.name,
            language: self.language,
            category: self.category,
            body: self.body,
            header: self.header,
            footer: self.footer,
            buttons_json: self.buttons.unwrap_or_default(),
            parameter_count: u32::try_from(self.parameter_count).unwrap_or(0),
            status: status.name().to_owned(),
            paused_until: match status {
                TStatus::Paused { until } => {
                    Some(finestra_proto::time::from_micros(until.micros()))
                }
                _ => None,
            },
            pauses: u32::try_from(self.pauses).unwrap_or(0),
            created_at: Some(ts(self.created_at)),
            provider_template_id: self.provider_template_id.unwrap_or_default(),
            status_reason: self.status_reason,
            submitted: self.submitted_at.is_some(),
            quality: self.quality,
        }
    }
}

pub fn parse_review(event: &str, new_category: &str) -> Result<Review, TemplateError> {
    Ok(match event.to_ascii_uppercase().as_str() {
        "APPROVED" => Review::Approve,
        "REJECTED" => Review::Reject,
        "PAUSED" => Review::Pause,
        "UNPAUSED" | "REINSTATED" => Review::Unpause,
        "DISABLED" => Review::Disable,
        "RECATEGORISED" | "RECATEGORIZED" => {
            Review::Recategorise(Category::parse(new_category).ok_or(TemplateError::Invalid {
                field: "new_category",
                rule: "MARKETING, UTILITY or AUTHENTICATION",
            })?)
        }
        _ => {
            return Err(TemplateError::Invalid {
                field: "event",
                rule: "APPROVED, REJECTED, PAUSED, UNPAUSED, DISABLED or RECATEGORISED",
            });
        }
    })
}

/// The buttons a request gives (`None` when it gives none), checked to be a JSON array.
pub fn buttons(buttons_json: &str) -> Result<Option<&str>, TemplateError> {
    let buttons = (!buttons_json.trim().is_empty()).then_some(buttons_json);
    if let Some(b) = buttons
        && !matches!(
            serde_json::from_str::<serde_json::Value>(b),
            Ok(serde_json::Value::Array(_))
        )
    {
        return Err(TemplateError::Invalid {
            field: "buttons_json",
            rule: "buttons must be a JSON array",
        });
    }
    Ok(buttons)
}

/// Validates and stores a new PENDING template.
pub async fn create(
    pool: &PgPool,
    req: &v1::CreateTemplateRequest,
) -> Result<TemplateRow, TemplateError> {
    let category = Category::parse(&req.category).ok_or(TemplateError::Invalid {
        field: "category",
        rule: "MARKETING, UTILITY or AUTHENTICATION",
    })?;
    let params = template::validate(
        &req.name,
        &req.language,
        &req.body,
        &req.header,
        &req.footer,
    )
    .map_err(|e| TemplateError::InvalidTemplate {
        name: req.name.clone(),
        why: e.to_string(),
    })?;
    let buttons = buttons(&req.buttons_json)?;
    let id = format!("tpl_{:016x}", rand::random::<u64>());
    sqlx::query_as!(
        TemplateRow,
        "INSERT INTO accounts.templates (template_id, tenant_id, name, language, category, body, header, footer, buttons, parameter_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb, $10)
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        &id,
        &req.tenant_id,
        &req.name,
        &req.language,
        category.as_str(),
        &req.body,
        &req.header,
        &req.footer,
        buttons,
        i32::try_from(params).unwrap_or(i32::MAX)
    )
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            TemplateError::Duplicate {
                name: req.name.clone(),
                language: req.language.clone(),
            }
        }
        _ => TemplateError::Store(e),
    })
}

pub async fn get(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
) -> Result<TemplateRow, TemplateError> {
    sqlx::query_as!(
        TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL",
        tenant_id,
        template_id
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| TemplateError::NotFound {
        template_id: template_id.to_owned(),
    })
}

/// Applies a provider review under a row lock; stale reviews change nothing.
pub async fn review(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
    review: Review,
    reason: &str,
    at: Timestamp,
) -> Result<TemplateRow, TemplateError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        TemplateRow,
        "SELECT template_id, tenant_id, name, language, category, body, header, footer,
                buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality
           FROM accounts.templates WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL FOR UPDATE",
        tenant_id,
        template_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| TemplateError::NotFound {
        template_id: template_id.to_owned(),
    })?;
    let mut lifecycle = row.lifecycle();
    match lifecycle.apply(review, at) {
        Ok(Applied::Stale) => return Ok(row),
        Ok(Applied::Changed) => {}
        Err(why) => {
            return Err(TemplateError::Transition {
                template_id: template_id.to_owned(),
                why,
            });
        }
    }
    let paused_until = match lifecycle.status {
        TStatus::Paused { until } => Some(until.micros()),
        _ => None,
    };
    let updated = sqlx::query_as!(
        TemplateRow,
        "UPDATE accounts.templates SET status = $3, category = $4, pauses = $5,
                paused_until = timestamptz 'epoch' + $6::bigint * interval '1 microsecond',
                last_review_at = timestamptz 'epoch' + $7::bigint * interval '1 microsecond',
                status_reason = $8
         WHERE tenant_id = $1 AND template_id = $2
         RETURNING template_id, tenant_id, name, language, category, body, header, footer,
                   buttons::text AS buttons, parameter_count, status, paused_until, pauses,
                   last_review_at, created_at, provider_template_id, submitted_at, status_reason, quality",
        tenant_id,
        template_id,
        lifecycle.status.name(),
        lifecycle.category.as_str(),
        i32::from(lifecycle.pauses),
        paused_until,
        at.micros(),
        reason_kept(reason)
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// The network writes `NONE` when there is no reason; nothing is kept then.
fn reason_kept(reason: &str) -> &str {
    if reason.eq_ignore_ascii_case("NONE") {
        ""
    } else {
        reason
    }
}
