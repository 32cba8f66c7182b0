//! The minimal tenant registry: which tenant owns a `phone_number_id`, and the app secret that
//! signs that number's webhooks. Lives in the `accounts` schema, which the control-plane
//! service takes over.

pub mod contacts;
pub mod directory;
pub mod keys;
pub mod windows;

pub use directory::AccountsDirectory;

/// An authenticator that looks keys and tenants up in the accounts schema.
pub fn authenticator(pool: PgPool) -> finestra_platform::auth::Authenticator {
    finestra_platform::auth::Authenticator::new(std::sync::Arc::new(AccountsDirectory::new(pool)))
}
pub use sqlx::PgPool;

pub const SCHEMA: &str = "accounts";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    finestra_platform::stores::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("tenant {0:?} already belongs to another partner")]
    TenantTaken(String),
    #[error("number {phone_number_id:?} already belongs to another tenant")]
    NumberTaken { phone_number_id: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl finestra_platform::status::StoreFailure for RegistryError {
    fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Db(e) if e.is_transient())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub name: String,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantOwner {
    pub tenant_id: String,
    pub partner_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number {
    pub phone_number_id: String,
    pub tenant_id: String,
    pub display_phone_number: String,
    pub app_secret: String,
    pub status: String,
    /// After a rotation: the previous secret, still valid until `previous_secret_valid_until`.
    pub previous_app_secret: Option<String>,
    pub previous_secret_valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Number {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// The secrets that verify this number's webhooks at `now_micros`: the current one, and
    /// the previous one during a rotation's overlap.
    pub fn webhook_secrets(&self, now_micros: i64) -> impl Iterator<Item = &str> {
        let previous = match (&self.previous_app_secret, self.previous_secret_valid_until) {
            (Some(secret), Some(until)) if now_micros < until.timestamp_micros() => {
                Some(secret.as_str())
            }
            _ => None,
        };
        std::iter::once(self.app_secret.as_str()).chain(previous)
    }
}

#[derive(Clone)]
pub struct Registry {
    pool: PgPool,
}

fn check_violation(e: sqlx::Error, field: &'static str) -> RegistryError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23514") => {
            RegistryError::Invalid {
                field,
                reason: db.message().to_owned(),
            }
        }
        _ => RegistryError::Db(e),
    }
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the tenant under `partner_id`, or renames it if that partner already has it
    /// (so scripts can run twice). A tenant of another partner is refused.
    pub async fn put_tenant(
        &self,
        partner_id: &str,
        tenant_id: &str,
        name: &str,
    ) -> Result<Tenant, RegistryError> {
        sqlx::query_as!(
            Tenant,
            "INSERT INTO accounts.tenants (partner_id, tenant_id, name) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name
               WHERE tenants.partner_id = EXCLUDED.partner_id
             RETURNING tenant_id, name, status",
            partner_id,
            tenant_id,
            name
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| check_violation(e, "tenant"))?
        .ok_or_else(|| RegistryError::TenantTaken(tenant_id.to_owned()))
    }

    /// Creates the partner, or renames it if it exists.
    pub async fn put_partner(&self, partner_id: &str, name: &str) -> Result<(), RegistryError> {
        sqlx::query!(
            "INSERT INTO accounts.partners (partner_id, name) VALUES ($1, $2)
             ON CONFLICT (partner_id) DO UPDATE SET name = EXCLUDED.name",
            partner_id,
            name
        )
        .execute(&self.pool)
        .await
        .map_err(|e| check_violation(e, "partner"))?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<TenantOwner>, RegistryError> {
        Ok(sqlx::query_as!(
            TenantOwner,
            "SELECT tenant_id, partner_id FROM accounts.tenants WHERE tenant_id = $1",
            tenant_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>, RegistryError> {
        Ok(sqlx::query_as!(
            Tenant,
            "SELECT tenant_id, name, status FROM accounts.tenants ORDER BY tenant_id"
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds a number to a tenant, or updates its display number and secret if the tenant
    /// already has it. A number of another tenant is refused.
    pub async fn put_number(
        &self,
        tenant_id: &str,
        phone_number_id: &str,
        display_phone_number: &str,
        app_secret: &str,
    ) -> Result<Number, RegistryError> {
        let exists: Option<bool> = sqlx::query_scalar!(
            r#"SELECT true AS "found!" FROM accounts.tenants WHERE tenant_id = $1"#,
            tenant_id
        )
        .fetch_optional(&self.pool)
        .await?;
        if exists.is_none() {
            return Err(RegistryError::UnknownTenant(tenant_id.to_owned()));
        }
        let row = sqlx::query_as!(
            Number,
            "INSERT INTO accounts.numbers (phone_number_id, tenant_id, display_phone_number, app_secret)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (phone_number_id) DO UPDATE
               SET display_phone_number = EXCLUDED.display_phone_number,
                   app_secret = EXCLUDED.app_secret
               WHERE numbers.tenant_id = EXCLUDED.tenant_id
             RETURNING phone_number_id, tenant_id, display_phone_number, app_secret, status,
                       previous_app_secret, previous_secret_valid_until",
            phone_number_id,
            tenant_id,
            display_phone_number,
            app_secret
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| check_violation(e, "number"))?;
        row.ok_or_else(|| RegistryError::NumberTaken {
            phone_number_id: phone_number_id.to_owned(),
        })
    }

    pub async fn number(&self, phone_number_id: &str) -> Result<Option<Number>, RegistryError> {
        Ok(sqlx::query_as!(
            Number,
            r#"SELECT n.phone_number_id, n.tenant_id, n.display_phone_number, n.app_secret,
                    CASE WHEN t.status = 'active' THEN n.status ELSE t.status END AS "status!",
                    n.previous_app_secret, n.previous_secret_valid_until
             FROM accounts.numbers n JOIN accounts.tenants t USING (tenant_id)
             WHERE n.phone_number_id = $1"#,
            phone_number_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The tenant's business account id (empty when it has none) and the display number of
    /// one of its numbers (empty when the number is not the tenant's): whom a Cloud API
    /// notification about that number says it comes from.
    pub async fn business_account(
        &self,
        tenant_id: &str,
        phone_number_id: &str,
    ) -> Result<(String, String), RegistryError> {
        let row = sqlx::query!(
            r#"SELECT coalesce(t.waba_id, '') AS "waba_id!",
                      coalesce((SELECT n.display_phone_number FROM accounts.numbers n
                                 WHERE n.tenant_id = t.tenant_id AND n.phone_number_id = $2),
                               '') AS "display!"
                 FROM accounts.tenants t WHERE t.tenant_id = $1"#,
            tenant_id,
            phone_number_id
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.waba_id, r.display)).unwrap_or_default())
    }

    /// The tenant of a provider business account, with every number's current webhook
    /// secrets (a WABA-level webhook is signed like the numbers' ones).
    pub async fn tenant_by_waba(
        &self,
        waba_id: &str,
    ) -> Result<Option<(String, Vec<Number>)>, RegistryError> {
        let tenant: Option<String> = sqlx::query_scalar!(
            "SELECT t.tenant_id FROM accounts.tenants t JOIN accounts.partners p USING (partner_id)
                 WHERE t.waba_id = $1 AND t.status = 'active' AND p.status = 'active'",
            waba_id
        )
        .fetch_optional(&self.pool)
        .await?;
        match tenant {
            Some(t) => {
                let numbers = self.numbers(&t).await?;
                Ok(Some((t, numbers)))
            }
            None => Ok(None),
        }
    }

    pub async fn numbers(&self, tenant_id: &str) -> Result<Vec<Number>, RegistryError> {
        Ok(sqlx::query_as!(
            Number,
            "SELECT phone_number_id, tenant_id, display_phone_number, app_secret, status,
                    previous_app_secret, previous_secret_valid_until
             FROM accounts.numbers WHERE tenant_id = $1 ORDER BY phone_number_id",
            tenant_id
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// What a send is decided on of its tenant (the accounts schema's read model for dispatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantSendFacts {
    /// The tenant and its partner are active (a suspended one sends nothing, whoever asks).
    pub active: bool,
    /// Distinct users per rolling 24 h it may message first; `None` is unlimited.
    pub tier: Option<i64>,
    /// As its partner set them (0 fields take the platform's defaults).
    pub limits: finestra_domain::fairness::TenantLimits,
    /// Its marketing frequency cap as its partner set it: templates per days (0: the
    /// platform's default).
    pub marketing_cap: u32,
    pub marketing_cap_days: u32,
}

/// The send facts of a tenant, if it exists.
pub async fn tenant_send_facts(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<Option<TenantSendFacts>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT t.status = 'active' AND p.status = 'active' AS "active!", t.tier,
                t.send_rate_per_second, t.send_burst, t.send_weight, t.marketing_cap,
                t.marketing_cap_days
           FROM accounts.tenants t JOIN accounts.partners p USING (partner_id)
          WHERE t.tenant_id = $1"#,
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    let non_negative = |v: i32| u32::try_from(v).unwrap_or(0);
    Ok(row.map(|r| TenantSendFacts {
        active: r.active,
        tier: r.tier.map(i64::from),
        limits: finestra_domain::fairness::TenantLimits {
            rate_per_second: non_negative(r.send_rate_per_second),
            burst: non_negative(r.send_burst),
            weight: non_negative(r.send_weight),
        },
        marketing_cap: non_negative(r.marketing_cap),
        marketing_cap_days: non_negative(r.marketing_cap_days),
    }))
}

/// A number as a send needs it: its tenant, whether it (and its tenant) is active, and the
/// messages per second the network allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberSendFacts {
    pub tenant_id: String,
    pub status: String,
    pub throughput_per_second: i32,
}

pub async fn number_send_facts(
    pool: &PgPool,
    phone_number_id: &str,
) -> Result<Option<NumberSendFacts>, sqlx::Error> {
    sqlx::query_as!(
        NumberSendFacts,
        "SELECT tenant_id, status, throughput_per_second FROM accounts.numbers
          WHERE phone_number_id = $1",
        phone_number_id
    )
    .fetch_optional(pool)
    .await
}

/// A template as a send needs it: status, category, parameter count, paused until (µs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSendFacts {
    pub status: String,
    pub category: String,
    pub parameter_count: i32,
    pub paused_until_micros: Option<i64>,
}

impl TemplateSendFacts {
    /// The template as the send rules take it (`None` for a status or category no rule
    /// knows). The stored status is kept as stored: the rules decide what a pause means now.
    pub fn facts(&self) -> Option<finestra_domain::send::TemplateFacts> {
        let paused_until = self
            .paused_until_micros
            .map(finestra_domain::Timestamp::from_micros);
        Some(finestra_domain::send::TemplateFacts {
            status: finestra_domain::template::Status::from_stored(&self.status, paused_until)?,
            category: finestra_domain::template::Category::parse(&self.category)?,
            parameter_count: usize::try_from(self.parameter_count).unwrap_or(usize::MAX),
        })
    }
}

/// The tenant's live (not deleted) template `name` in `language`.
pub async fn template_send_facts(
    pool: &PgPool,
    tenant_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<TemplateSendFacts>, sqlx::Error> {
    sqlx::query_as!(
        TemplateSendFacts,
        r#"SELECT status, category, parameter_count,
                (extract(epoch FROM paused_until) * 1000000)::bigint AS "paused_until_micros?"
           FROM accounts.templates
          WHERE tenant_id = $1 AND name = $2 AND language = $3 AND deleted_at IS NULL"#,
        tenant_id,
        name,
        language
    )
    .fetch_optional(pool)
    .await
}

/// A live template's send facts by id, or else by name and language (billing's quotes).
pub async fn template_send_facts_by_id_or_name(
    pool: &PgPool,
    tenant_id: &str,
    template_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<TemplateSendFacts>, sqlx::Error> {
    sqlx::query_as!(
        TemplateSendFacts,
        r#"SELECT status, category, parameter_count,
                (extract(epoch FROM paused_until) * 1000000)::bigint AS "paused_until_micros?"
           FROM accounts.templates
          WHERE tenant_id = $1 AND deleted_at IS NULL
            AND (template_id = $2 OR ($2 = '' AND name = $3 AND language = $4))"#,
        tenant_id,
        template_id,
        name,
        language
    )
    .fetch_optional(pool)
    .await
}

/// What a campaign's circuit breaker reads of the network's word on its number and template
/// (docs/rules.md §12): their quality scores (GREEN, YELLOW, RED, UNKNOWN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignHealth {
    pub number_quality: String,
    pub template_quality: String,
}

pub async fn campaign_health(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    template_name: &str,
    template_language: &str,
) -> Result<CampaignHealth, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT
             (SELECT quality_rating FROM accounts.numbers
               WHERE phone_number_id = $2 AND tenant_id = $1) AS "number_quality?",
             (SELECT quality FROM accounts.templates
               WHERE tenant_id = $1 AND name = $3 AND language = $4 AND deleted_at IS NULL)
               AS "template_quality?""#,
        tenant_id,
        phone_number_id,
        template_name,
        template_language
    )
    .fetch_one(pool)
    .await?;
    Ok(CampaignHealth {
        number_quality: row.number_quality.unwrap_or_else(|| "UNKNOWN".to_owned()),
        template_quality: row.template_quality.unwrap_or_else(|| "UNKNOWN".to_owned()),
    })
}

/// A tenant's opt-out keywords as ingest applies them (its own lists, or the defaults).
pub async fn opt_out_keywords(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<finestra_domain::opt_out::Keywords, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT stop_keywords, start_keywords FROM accounts.tenants WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map_or_else(finestra_domain::opt_out::Keywords::default, |r| {
            finestra_domain::opt_out::Keywords::of_tenant(&r.stop_keywords, &r.start_keywords)
        }),
    )
}

/// What a tenant answers a user who stopped (`stop`) or resumed marketing with a keyword;
/// empty for no answer.
pub async fn opt_out_reply(
    pool: &PgPool,
    tenant_id: &str,
    stop: bool,
) -> Result<String, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT stop_reply, start_reply FROM accounts.tenants WHERE tenant_id = $1",
        tenant_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row
        .map(|r| if stop { r.stop_reply } else { r.start_reply })
        .unwrap_or_default())
}

/// The ids of a partner's tenants (billing's partner roll-up).
pub async fn partner_tenant_ids(
    pool: &PgPool,
    partner_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT tenant_id FROM accounts.tenants WHERE partner_id = $1",
        partner_id
    )
    .fetch_all(pool)
    .await
}

/// A small pool for tools (the CLI).
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
}
