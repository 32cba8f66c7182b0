//! The campaigns' tables (migration 0015): campaigns with their state and lease, and each
//! launched campaign's recipients with their outcome.

use sqlx::{PgPool, Postgres, Transaction};

#[derive(Clone, Debug)]
pub struct CampaignRow {
    pub campaign_id: String,
    pub phone_number_id: String,
    pub template_name: String,
    pub template_language: String,
    pub request: Vec<u8>,
    pub state: String,
    pub state_reason: String,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub created_at: i64,
    pub launched_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A campaign as it is created.
pub struct NewCampaign<'a> {
    pub tenant_id: &'a str,
    pub campaign_id: &'a str,
    pub phone_number_id: &'a str,
    pub template_name: &'a str,
    pub template_language: &'a str,
    pub request: &'a [u8],
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub now: i64,
}

/// Creates the campaign; `false` when the id is taken (the caller compares the requests).
pub async fn create(pool: &PgPool, c: &NewCampaign<'_>) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "INSERT INTO dispatch.campaigns
             (tenant_id, campaign_id, phone_number_id, template_name, template_language,
              request, start_at, end_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
         ON CONFLICT DO NOTHING",
        c.tenant_id,
        c.campaign_id,
        c.phone_number_id,
        c.template_name,
        c.template_language,
        c.request,
        c.start_at,
        c.end_at,
        c.now
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

pub async fn get(
    pool: impl sqlx::PgExecutor<'_>,
    tenant_id: &str,
    campaign_id: &str,
) -> Result<Option<CampaignRow>, sqlx::Error> {
    sqlx::query_as!(
        CampaignRow,
        "SELECT campaign_id, phone_number_id, template_name, template_language, request, state,
                state_reason, start_at, end_at, created_at, launched_at, finished_at
           FROM dispatch.campaigns WHERE tenant_id = $1 AND campaign_id = $2",
        tenant_id,
        campaign_id
    )
    .fetch_optional(pool)
    .await
}

/// Campaigns in id order after `after`.
pub async fn list(
    pool: &PgPool,
    tenant_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<CampaignRow>, sqlx::Error> {
    sqlx::query_as!(
        CampaignRow,
        "SELECT campaign_id, phone_number_id, template_name, template_language, request, state,
                state_reason, start_at, end_at, created_at, launched_at, finished_at
           FROM dispatch.campaigns WHERE tenant_id = $1 AND campaign_id > $2
          ORDER BY campaign_id LIMIT $3",
        tenant_id,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

/// Moves a campaign in one of the states `from` to `to` with `reason`; `false` when it was in
/// none of them. A final state records when it finished and lets the lease go.
pub async fn set_state(
    pool: impl sqlx::PgExecutor<'_>,
    tenant_id: &str,
    campaign_id: &str,
    from: &[&str],
    to: &str,
    reason: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
    Ok(sqlx::query!(
        "UPDATE dispatch.campaigns
            SET state = $3, state_reason = $4, updated_at = $5,
                launched_at = CASE WHEN $3 = 'RUNNING' THEN COALESCE(launched_at, $5)
                                   ELSE launched_at END,
                resumed_at = CASE WHEN $3 = 'RUNNING' THEN $5 ELSE resumed_at END,
                finished_at = CASE WHEN $3 IN ('COMPLETED', 'CANCELLED') THEN $5
                                   ELSE finished_at END,
                lease_until = CASE WHEN $3 = 'RUNNING' THEN lease_until END
          WHERE tenant_id = $1 AND campaign_id = $2 AND state = ANY($6)",
        tenant_id,
        campaign_id,
        to,
        reason,
        now,
        &from
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Fixes a launched campaign's audience: these users.
pub async fn add_recipients(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    campaign_id: &str,
    users: &[String],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "INSERT INTO dispatch.campaign_recipients (tenant_id, campaign_id, user_key)
         SELECT $1, $2, u FROM unnest($3::text[]) AS u
         ON CONFLICT DO NOTHING",
        tenant_id,
        campaign_id,
        users
    )
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// One group of a campaign's recipients: their state and reason, their message's status,
/// how many, and what their messages' prices add up to.
pub struct ProgressRow {
    pub state: String,
    pub reason: String,
    pub status: Option<String>,
    pub recipients: i64,
    pub price_micros: i64,
    pub currency: Option<String>,
}

/// The campaign's recipients in groups. The join with the messages is a hash join over the
/// tenant's messages accepted since the launch (less an hour for clocks), whatever the
/// planner guesses of a freshly fixed audience: a nested loop of index probes per recipient
/// took seconds for 100,000 recipients.
pub async fn progress(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    launched_at: i64,
) -> Result<Vec<ProgressRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET LOCAL enable_nestloop = off")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as!(
        ProgressRow,
        r#"WITH m AS (
               SELECT message_id, status, price_micros, currency FROM dispatch.messages
                WHERE tenant_id = $1 AND accepted_at >= $3)
           SELECT r.state, r.reason, m.status AS "status?",
                  count(*) AS "recipients!", COALESCE(sum(m.price_micros), 0)::int8 AS "price_micros!",
                  max(m.currency) AS "currency?"
             FROM dispatch.campaign_recipients r
             LEFT JOIN m ON m.message_id = r.message_id
            WHERE r.tenant_id = $1 AND r.campaign_id = $2
            GROUP BY r.state, r.reason, m.status"#,
        tenant_id,
        campaign_id,
        launched_at - 3_600_000_000
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

pub struct RecipientRow {
    pub user_key: String,
    pub state: String,
    pub reason: String,
    pub message_id: Option<String>,
    pub status: Option<String>,
    pub price_micros: i64,
    pub free: bool,
    pub failure_reason: Option<String>,
}

/// Recipients in user order after `after`, with their messages' statuses.
pub async fn recipients(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<RecipientRow>, sqlx::Error> {
    sqlx::query_as!(
        RecipientRow,
        r#"SELECT r.user_key AS "user_key!", r.state, r.reason, r.message_id,
                  m.status AS "status?", r.price_micros, r.free,
                  m.failure_reason AS "failure_reason?"
             FROM dispatch.campaign_recipients r
             LEFT JOIN dispatch.messages m
               ON m.tenant_id = r.tenant_id AND m.message_id = r.message_id
            WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.user_key > $3
            ORDER BY r.user_key LIMIT $4"#,
        tenant_id,
        campaign_id,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

/// A running campaign the runner holds.
pub struct Held {
    pub tenant_id: String,
    pub campaign_id: String,
    pub phone_number_id: String,
    pub template_name: String,
    pub template_language: String,
    pub request: Vec<u8>,
    pub end_at: Option<i64>,
    pub resumed_at: Option<i64>,
}

/// Takes (or keeps) the running campaigns whose time has come and whose lease is free or
/// this runner's, until `lease_until`.
pub async fn hold_running(
    pool: &PgPool,
    now: i64,
    lease_until: i64,
    runner: &str,
    tenant_prefix: &str,
) -> Result<Vec<Held>, sqlx::Error> {
    sqlx::query_as!(
        Held,
        "UPDATE dispatch.campaigns c
            SET lease_until = $2, runner = $3
          WHERE (c.tenant_id, c.campaign_id) IN (
                SELECT tenant_id, campaign_id FROM dispatch.campaigns
                 WHERE state = 'RUNNING' AND COALESCE(start_at, 0) <= $1
                   AND starts_with(tenant_id, $4)
                   AND (lease_until IS NULL OR lease_until < $1 OR runner = $3)
                 ORDER BY tenant_id, campaign_id LIMIT 256 FOR UPDATE SKIP LOCKED)
         RETURNING c.tenant_id, c.campaign_id, c.phone_number_id, c.template_name,
                   c.template_language, c.request, c.end_at, c.resumed_at",
        now,
        lease_until,
        runner,
        tenant_prefix
    )
    .fetch_all(pool)
    .await
}

/// A recipient waiting to be sent, with what its parameters and the opt-in rule read.
pub struct QueuedRow {
    pub user_key: String,
    pub name: Option<String>,
    pub attributes: Option<String>,
    pub opt_in_at: Option<i64>,
}

impl QueuedRow {
    pub fn attributes(&self) -> std::collections::BTreeMap<String, String> {
        self.attributes
            .as_deref()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default()
    }
}

/// The next recipients still queued after `after`, in user order. The runner passes the last
/// user it decided: the queued index keeps the entries of decided recipients until a vacuum,
/// and a scan from the start would step over all of them every round.
pub async fn queued(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<QueuedRow>, sqlx::Error> {
    sqlx::query_as!(
        QueuedRow,
        r#"SELECT r.user_key AS "user_key!", c.name AS "name?",
                  c.attributes::text AS "attributes?", c.opt_in_at AS "opt_in_at?"
             FROM dispatch.campaign_recipients r
             LEFT JOIN dispatch.contacts c
               ON c.tenant_id = r.tenant_id AND c.user_key = r.user_key
            WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.state = 'QUEUED'
              AND r.user_key > $4
            ORDER BY r.user_key LIMIT $3"#,
        tenant_id,
        campaign_id,
        limit,
        after
    )
    .fetch_all(pool)
    .await
}

/// What became of one recipient.
pub enum Outcome {
    Accepted {
        message_id: String,
        price_micros: i64,
        free: bool,
    },
    Excluded(String),
}

/// Records the recipients' outcomes (only over a recipient still queued: a replay changes
/// nothing).
pub async fn record(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    outcomes: &[(String, Outcome)],
    now: i64,
) -> Result<(), sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut users = Vec::with_capacity(outcomes.len());
    let mut states = Vec::with_capacity(outcomes.len());
    let mut reasons = Vec::with_capacity(outcomes.len());
    let mut messages = Vec::with_capacity(outcomes.len());
    let mut prices = Vec::with_capacity(outcomes.len());
    let mut frees = Vec::with_capacity(outcomes.len());
    for (user, outcome) in outcomes {
        users.push(user.clone());
        match outcome {
            Outcome::Accepted {
                message_id,
                price_micros,
                free,
            } => {
                states.push("ACCEPTED".to_owned());
                reasons.push(String::new());
                messages.push(Some(message_id.clone()));
                prices.push(*price_micros);
                frees.push(*free);
            }
            Outcome::Excluded(reason) => {
                states.push("EXCLUDED".to_owned());
                reasons.push(reason.clone());
                messages.push(None);
                prices.push(0);
                frees.push(false);
            }
        }
    }
    sqlx::query!(
        "UPDATE dispatch.campaign_recipients r
            SET state = o.state, reason = o.reason, message_id = o.message_id,
                price_micros = o.price, free = o.free, decided_at = $8
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $9::bool[])
                AS o(user_key, state, reason, message_id, price, free)
          WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.user_key = o.user_key
            AND r.state = 'QUEUED'",
        tenant_id,
        campaign_id,
        &users,
        &states,
        &reasons,
        &messages as &[Option<String>],
        &prices,
        now,
        &frees
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Of the campaign's `n` newest messages accepted since `since`: how many have an outcome
/// (anything past ACCEPTED) and how many of those failed.
pub async fn recent_outcomes(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
    since: i64,
    n: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE status <> 'ACCEPTED') AS "finished!",
                  count(*) FILTER (WHERE status = 'FAILED') AS "failed!"
             FROM (SELECT m.status FROM dispatch.campaign_recipients r
                     JOIN dispatch.messages m
                       ON m.tenant_id = r.tenant_id AND m.message_id = r.message_id
                    WHERE r.tenant_id = $1 AND r.campaign_id = $2 AND r.state = 'ACCEPTED'
                      AND r.decided_at >= $4
                    ORDER BY r.decided_at DESC LIMIT $3) recent"#,
        tenant_id,
        campaign_id,
        n,
        since
    )
    .fetch_one(pool)
    .await?;
    Ok((row.finished, row.failed))
}

/// Whether any recipient is still queued.
pub async fn any_queued(
    pool: &PgPool,
    tenant_id: &str,
    campaign_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM dispatch.campaign_recipients
                           WHERE tenant_id = $1 AND campaign_id = $2 AND state = 'QUEUED')
           AS "any!""#,
        tenant_id,
        campaign_id
    )
    .fetch_one(pool)
    .await
}

/// Marketing templates sent to each of `users` since `since` (those that did not fail): the
/// frequency cap's record, for a quote.
pub async fn marketing_sends(
    pool: &PgPool,
    tenant_id: &str,
    users: &[String],
    since: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT recipient, accepted_at FROM dispatch.messages
          WHERE tenant_id = $1 AND recipient = ANY($2) AND category = 'MARKETING'
            AND accepted_at > $3 AND status <> 'FAILED'",
        tenant_id,
        users,
        since
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.recipient, r.accepted_at))
        .collect())
}
