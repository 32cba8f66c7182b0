//! The network's own state in its `sim` schema (migrations in `services/simulator/migrations`):
//! the numbers its control API registered and the templates submitted through its Cloud API.
//! Every query names the simulator's `network`, so simulators sharing a database stay apart.

use sqlx::PgPool;

pub const SCHEMA: &str = "sim";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    finestra_platform::stores::migrate_schema(pool, SCHEMA, &MIGRATOR).await
}

/// A number as a partner registered it with the network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimNumber {
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: String,
    pub app_secret: String,
    pub access_token: String,
    pub throughput_per_second: i32,
}

/// A template as the network holds it.
#[derive(Clone, Debug)]
pub struct SimTemplate {
    pub template_id: String,
    pub waba_id: String,
    pub name: String,
    pub language: String,
    pub category: String,
    pub components: String,
    pub parameter_count: i32,
    pub status: String,
    pub reason: String,
    pub quality: String,
}

impl SimTemplate {
    /// The template as a listing shows it.
    pub fn listed(&self) -> finestra_cloudapi::templates::Listed {
        finestra_cloudapi::templates::Listed {
            id: self.template_id.clone(),
            name: self.name.clone(),
            language: self.language.clone(),
            status: self.status.clone(),
            category: self.category.clone(),
            components: serde_json::from_str(&self.components).unwrap_or_default(),
            rejected_reason: Some(if self.status == "REJECTED" {
                self.reason.clone()
            } else {
                "NONE".into()
            }),
            quality_score: Some(serde_json::json!({ "score": self.quality })),
        }
    }
}

/// Why a template could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the business account has a template {name} in {language}")]
    Duplicate { name: String, language: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub async fn register_number(
    pool: &PgPool,
    network: &str,
    n: &SimNumber,
) -> Result<SimNumber, sqlx::Error> {
    sqlx::query_as!(
        SimNumber,
        "INSERT INTO sim.numbers (network, phone_number_id, waba_id, display_phone_number,
                                  app_secret, access_token, throughput_per_second)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (network, phone_number_id) DO UPDATE SET
           waba_id = EXCLUDED.waba_id, display_phone_number = EXCLUDED.display_phone_number,
           app_secret = EXCLUDED.app_secret, access_token = EXCLUDED.access_token,
           throughput_per_second = EXCLUDED.throughput_per_second
         RETURNING phone_number_id, waba_id, display_phone_number, app_secret, access_token,
                   throughput_per_second",
        network,
        &n.phone_number_id,
        &n.waba_id,
        &n.display_phone_number,
        &n.app_secret,
        &n.access_token,
        n.throughput_per_second
    )
    .fetch_one(pool)
    .await
}

pub async fn number(
    pool: &PgPool,
    network: &str,
    phone_number_id: &str,
) -> Result<Option<SimNumber>, sqlx::Error> {
    sqlx::query_as!(
        SimNumber,
        "SELECT phone_number_id, waba_id, display_phone_number, app_secret, access_token,
                throughput_per_second
           FROM sim.numbers WHERE network = $1 AND phone_number_id = $2",
        network,
        phone_number_id
    )
    .fetch_optional(pool)
    .await
}

pub async fn numbers(pool: &PgPool, network: &str) -> Result<Vec<SimNumber>, sqlx::Error> {
    sqlx::query_as!(
        SimNumber,
        "SELECT phone_number_id, waba_id, display_phone_number, app_secret, access_token,
                throughput_per_second
           FROM sim.numbers WHERE network = $1 ORDER BY phone_number_id",
        network
    )
    .fetch_all(pool)
    .await
}

/// The numbers of business account `waba_id` (its webhooks are signed with their app secret;
/// their tokens may manage its templates).
pub async fn waba_numbers(
    pool: &PgPool,
    network: &str,
    waba_id: &str,
) -> Result<Vec<SimNumber>, sqlx::Error> {
    sqlx::query_as!(
        SimNumber,
        "SELECT phone_number_id, waba_id, display_phone_number, app_secret, access_token,
                throughput_per_second
           FROM sim.numbers WHERE network = $1 AND waba_id = $2 ORDER BY phone_number_id",
        network,
        waba_id
    )
    .fetch_all(pool)
    .await
}

/// What a template submission carries.
pub struct NewTemplate<'a> {
    pub waba_id: &'a str,
    pub name: &'a str,
    pub language: &'a str,
    pub category: &'a str,
    pub components: &'a str,
    pub parameter_count: i32,
}

pub async fn create_template(
    pool: &PgPool,
    network: &str,
    t: &NewTemplate<'_>,
) -> Result<SimTemplate, StoreError> {
    // Meta's template ids are decimal numbers.
    let id = (rand::random::<u64>() >> 12).to_string();
    sqlx::query_as!(
        SimTemplate,
        "INSERT INTO sim.templates (network, template_id, waba_id, name, language, category,
                                    components, parameter_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8)
         RETURNING template_id, waba_id, name, language, category,
                   components::text AS \"components!\", parameter_count, status, reason, quality",
        network,
        &id,
        t.waba_id,
        t.name,
        t.language,
        t.category,
        t.components,
        t.parameter_count
    )
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            StoreError::Duplicate {
                name: t.name.to_owned(),
                language: t.language.to_owned(),
            }
        }
        _ => StoreError::Db(e),
    })
}

/// A page of the business account's templates (by id, after `after`), optionally one name's.
pub async fn list_templates(
    pool: &PgPool,
    network: &str,
    waba_id: &str,
    name: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "SELECT template_id, waba_id, name, language, category,
                components::text AS \"components!\", parameter_count, status, reason, quality
           FROM sim.templates
          WHERE network = $1 AND waba_id = $2 AND deleted_at IS NULL
            AND ($3::text IS NULL OR name = $3) AND template_id > $4
          ORDER BY template_id LIMIT $5",
        network,
        waba_id,
        name,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Deletes the named template (every language, or only `template_id`); how many were deleted.
pub async fn delete_templates(
    pool: &PgPool,
    network: &str,
    waba_id: &str,
    name: &str,
    template_id: Option<&str>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE sim.templates SET deleted_at = now()
          WHERE network = $1 AND waba_id = $2 AND name = $3 AND deleted_at IS NULL
            AND ($4::text IS NULL OR template_id = $4)",
        network,
        waba_id,
        name,
        template_id
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// New content for a template: it goes back to review.
pub async fn edit_template(
    pool: &PgPool,
    network: &str,
    template_id: &str,
    category: Option<&str>,
    components: &str,
    parameter_count: i32,
) -> Result<Option<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "UPDATE sim.templates SET components = $3::text::jsonb, parameter_count = $4,
                category = coalesce($5, category), status = 'PENDING', reason = '',
                submitted_at = now()
          WHERE network = $1 AND template_id = $2 AND deleted_at IS NULL
         RETURNING template_id, waba_id, name, language, category,
                   components::text AS \"components!\", parameter_count, status, reason, quality",
        network,
        template_id,
        components,
        parameter_count,
        category
    )
    .fetch_optional(pool)
    .await
}

pub async fn template(
    pool: &PgPool,
    network: &str,
    template_id: &str,
) -> Result<Option<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "SELECT template_id, waba_id, name, language, category,
                components::text AS \"components!\", parameter_count, status, reason, quality
           FROM sim.templates WHERE network = $1 AND template_id = $2 AND deleted_at IS NULL",
        network,
        template_id
    )
    .fetch_optional(pool)
    .await
}

/// The business account's template of that name and language, if it has one.
pub async fn template_named(
    pool: &PgPool,
    network: &str,
    waba_id: &str,
    name: &str,
    language: &str,
) -> Result<Option<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "SELECT template_id, waba_id, name, language, category,
                components::text AS \"components!\", parameter_count, status, reason, quality
           FROM sim.templates
          WHERE network = $1 AND waba_id = $2 AND name = $3 AND language = $4
            AND deleted_at IS NULL",
        network,
        waba_id,
        name,
        language
    )
    .fetch_optional(pool)
    .await
}

/// Templates submitted (or edited) at least `delay_ms` ago and not yet reviewed.
pub async fn pending_templates(
    pool: &PgPool,
    network: &str,
    delay_ms: i64,
) -> Result<Vec<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "SELECT template_id, waba_id, name, language, category,
                components::text AS \"components!\", parameter_count, status, reason, quality
           FROM sim.templates
          WHERE network = $1 AND status = 'PENDING' AND deleted_at IS NULL
            AND submitted_at <= now() - $2::bigint * interval '1 millisecond'
          ORDER BY submitted_at LIMIT 100",
        network,
        delay_ms
    )
    .fetch_all(pool)
    .await
}

/// Records a review: the new status (or the same one) and why, and the time of the review
/// event in whole seconds, strictly after the previous event's (Finestra ignores a review not
/// newer than the last it applied). `None` when the template is gone, or, with
/// `only_pending`, when it is no longer PENDING (a control call decided first).
#[allow(clippy::too_many_arguments)]
pub async fn review_template(
    pool: &PgPool,
    network: &str,
    template_id: &str,
    status: Option<&str>,
    category: Option<&str>,
    reason: &str,
    now_secs: i64,
    only_pending: bool,
) -> Result<Option<(SimTemplate, i64)>, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE sim.templates SET status = coalesce($3, status), category = coalesce($4, category),
                reason = $5, untold = true,
                reviewed_at = greatest(timestamptz 'epoch' + $6::bigint * interval '1 second',
                                       coalesce(reviewed_at, timestamptz 'epoch') + interval '1 second')
          WHERE network = $1 AND template_id = $2 AND deleted_at IS NULL
            AND (NOT $7 OR status = 'PENDING')
         RETURNING template_id, waba_id, name, language, category,
                   components::text AS \"components!\", parameter_count, status, reason, quality,
                   extract(epoch FROM reviewed_at)::bigint AS \"at!\"",
        network,
        template_id,
        status,
        category,
        reason,
        now_secs,
        only_pending
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        (
            SimTemplate {
                template_id: r.template_id,
                waba_id: r.waba_id,
                name: r.name,
                language: r.language,
                category: r.category,
                components: r.components,
                parameter_count: r.parameter_count,
                status: r.status,
                reason: r.reason,
                quality: r.quality,
            },
            r.at,
        )
    }))
}

/// The network rates a template's quality; answers the score before, `None` when it is gone.
pub async fn rate_template(
    pool: &PgPool,
    network: &str,
    template_id: &str,
    quality: &str,
) -> Result<Option<(SimTemplate, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "UPDATE sim.templates t SET quality = $3
           FROM sim.templates before
          WHERE t.network = $1 AND t.template_id = $2 AND t.deleted_at IS NULL
            AND before.network = t.network AND before.template_id = t.template_id
         RETURNING t.template_id, t.waba_id, t.name, t.language, t.category,
                   t.components::text AS \"components!\", t.parameter_count, t.status, t.reason,
                   t.quality, before.quality AS previous",
        network,
        template_id,
        quality
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        (
            SimTemplate {
                template_id: r.template_id,
                waba_id: r.waba_id,
                name: r.name,
                language: r.language,
                category: r.category,
                components: r.components,
                parameter_count: r.parameter_count,
                status: r.status,
                reason: r.reason,
                quality: r.quality,
            },
            r.previous,
        )
    }))
}

/// A file the network holds.
#[derive(Clone, Debug)]
pub struct SimMedia {
    pub media_id: String,
    pub phone_number_id: String,
    pub content_type: String,
    pub sha256: String,
    pub filename: String,
    pub size: i64,
}

/// Stores a file; its id.
pub async fn put_media(
    pool: &PgPool,
    network: &str,
    m: &SimMedia,
    data: &[u8],
    from_user: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO sim.media (network, media_id, phone_number_id, content_type, sha256,
                                filename, data, from_user)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        network,
        &m.media_id,
        &m.phone_number_id,
        &m.content_type,
        &m.sha256,
        &m.filename,
        data,
        from_user
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A file's description, without its bytes.
pub async fn media(
    pool: &PgPool,
    network: &str,
    media_id: &str,
) -> Result<Option<SimMedia>, sqlx::Error> {
    sqlx::query_as!(
        SimMedia,
        "SELECT media_id, phone_number_id, content_type, sha256, filename,
                length(data)::bigint AS \"size!\"
           FROM sim.media WHERE network = $1 AND media_id = $2",
        network,
        media_id
    )
    .fetch_optional(pool)
    .await
}

/// A file's bytes.
pub async fn media_data(
    pool: &PgPool,
    network: &str,
    media_id: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT data FROM sim.media WHERE network = $1 AND media_id = $2",
        network,
        media_id
    )
    .fetch_optional(pool)
    .await
}

/// The review of a template was told to Finestra.
pub async fn told(pool: &PgPool, network: &str, template_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sim.templates SET untold = false WHERE network = $1 AND template_id = $2",
        network,
        template_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Templates whose last review was recorded but not told (their webhook failed).
pub async fn untold_templates(
    pool: &PgPool,
    network: &str,
) -> Result<Vec<SimTemplate>, sqlx::Error> {
    sqlx::query_as!(
        SimTemplate,
        "SELECT template_id, waba_id, name, language, category,
                components::text AS \"components!\", parameter_count, status, reason, quality
           FROM sim.templates
          WHERE network = $1 AND untold AND deleted_at IS NULL AND status <> 'PENDING'
          LIMIT 100",
        network
    )
    .fetch_all(pool)
    .await
}
