//! The `dispatch` schema: outbound messages and their progress.

use finestra_domain::delivery::Progress;
use sqlx::{PgPool, QueryBuilder};

pub const SCHEMA: &str = "dispatch";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    finestra_platform::stores::migrate_schema(pool, SCHEMA, &MIGRATOR).await?;
    prepare_partitions(pool).await
}

/// The monthly partitions of messages, tenant events and webhook deliveries around now (and
/// the rows of a table from before partitioning moved in). At migration and at start.
pub async fn prepare_partitions(pool: &PgPool) -> Result<(), sqlx::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    finestra_platform::partitions::prepare(pool, SCHEMA, now, 3).await
}

/// A message as accepted.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub tenant_id: String,
    pub message_id: String,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub phone_number_id: String,
    pub recipient: String,
    pub kind: String,
    pub template_name: String,
    pub category: String,
    pub body: String,
    pub price_micros: i64,
    pub currency: String,
    pub free: bool,
    pub free_reason: String,
    pub business_initiated: bool,
    pub starts_fep: bool,
    pub accepted_at: i64,
}

/// A stored message.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub tenant_id: String,
    pub message_id: String,
    pub idempotency_key: String,
    pub request_hash: Vec<u8>,
    pub phone_number_id: String,
    pub recipient: String,
    pub kind: String,
    pub template_name: String,
    pub category: String,
    pub status: String,
    pub failure_reason: String,
    pub error_code: i32,
    pub error_title: String,
    pub provider_message_id: Option<String>,
    pub price_micros: i64,
    pub currency: String,
    pub free: bool,
    pub free_reason: String,
    pub attempts: i32,
    pub accepted_at: i64,
    pub sent_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub read_at: Option<i64>,
    pub failed_at: Option<i64>,
}

const COLUMNS: &str = "tenant_id, message_id, idempotency_key, request_hash, phone_number_id, \
    recipient, kind, template_name, category, status, failure_reason, error_code, error_title, \
    provider_message_id, price_micros, currency, free, free_reason, attempts, accepted_at, \
    sent_at, delivered_at, read_at, failed_at";

/// Inserts accepted messages (one statement); returns the ids that were new. An id already
/// present (a retried key) is left as it is.
pub async fn insert(pool: &PgPool, rows: &[NewMessage]) -> Result<Vec<String>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<String> = rows.iter().map(|r| r.tenant_id.clone()).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
    let keys: Vec<String> = rows.iter().map(|r| r.idempotency_key.clone()).collect();
    let hashes: Vec<Vec<u8>> = rows.iter().map(|r| r.request_hash.clone()).collect();
    let numbers: Vec<String> = rows.iter().map(|r| r.phone_number_id.clone()).collect();
    let recipients: Vec<String> = rows.iter().map(|r| r.recipient.clone()).collect();
    let kinds: Vec<String> = rows.iter().map(|r| r.kind.clone()).collect();
    let templates: Vec<String> = rows.iter().map(|r| r.template_name.clone()).collect();
    let categories: Vec<String> = rows.iter().map(|r| r.category.clone()).collect();
    let bodies: Vec<String> = rows.iter().map(|r| r.body.clone()).collect();
    let prices: Vec<i64> = rows.iter().map(|r| r.price_micros).collect();
    let currencies: Vec<String> = rows.iter().map(|r| r.currency.clone()).collect();
    let frees: Vec<bool> = rows.iter().map(|r| r.free).collect();
    let free_reasons: Vec<String> = rows.iter().map(|r| r.free_reason.clone()).collect();
    let business: Vec<bool> = rows.iter().map(|r| r.business_initiated).collect();
    let starts: Vec<bool> = rows.iter().map(|r| r.starts_fep).collect();
    let accepted: Vec<i64> = rows.iter().map(|r| r.accepted_at).collect();
    // The key table is the durable uniqueness of a message id (the partitioned table's key
    // includes the month); a repeated id in one batch is inserted once. `updated_at` starts
    // as `accepted_at`.
    sqlx::query_scalar!(
        "WITH input (tenant_id, message_id, idempotency_key, request_hash, phone_number_id,
             recipient, kind, template_name, category, body, price_micros, currency, free,
             free_reason, business_initiated, starts_fep, accepted_at, updated_at) AS (
             SELECT u.*, u.accepted_at
               FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                           $11::bigint[], $12::text[], $13::boolean[], $14::text[],
                           $15::boolean[], $16::boolean[], $17::bigint[])
                    AS u(tenant_id, message_id, idempotency_key, request_hash, phone_number_id,
                         recipient, kind, template_name, category, body, price_micros,
                         currency, free, free_reason, business_initiated, starts_fep,
                         accepted_at)),
         keys AS (
            INSERT INTO dispatch.message_keys (tenant_id, message_id, accepted_at)
            SELECT tenant_id, message_id, accepted_at FROM input
            ON CONFLICT DO NOTHING RETURNING tenant_id, message_id)
         INSERT INTO dispatch.messages (tenant_id, message_id, idempotency_key, request_hash,
             phone_number_id, recipient, kind, template_name, category, body, price_micros,
             currency, free, free_reason, business_initiated, starts_fep, accepted_at, updated_at)
         SELECT DISTINCT ON (i.tenant_id, i.message_id) i.*
           FROM input i JOIN keys k
             ON k.tenant_id = i.tenant_id AND k.message_id = i.message_id COLLATE \"C\"
         RETURNING message_id AS \"message_id!\"",
        &tenants,
        &ids,
        &keys,
        &hashes,
        &numbers,
        &recipients,
        &kinds,
        &templates,
        &categories,
        &bodies,
        &prices,
        &currencies,
        &frees,
        &free_reasons,
        &business,
        &starts,
        &accepted,
    )
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    tenant_id: &str,
    message_id: &str,
) -> Result<Option<MessageRow>, sqlx::Error> {
    sqlx::query_as!(
        MessageRow,
        "SELECT tenant_id, message_id, idempotency_key, request_hash, phone_number_id,
                recipient, kind, template_name, category, status, failure_reason, error_code,
                error_title, provider_message_id, price_micros, currency, free, free_reason,
                attempts, accepted_at, sent_at, delivered_at, read_at, failed_at
           FROM dispatch.messages WHERE tenant_id = $1 AND message_id = $2",
        tenant_id,
        message_id,
    )
    .fetch_optional(pool)
    .await
}

/// Filters of ListMessages; empty strings and `None` match everything.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub phone_number_id: String,
    pub recipient: String,
    pub status: String,
    pub from: Option<i64>,
    pub until: Option<i64>,
    /// Continue after this (accepted_at, message_id), newest first.
    pub after: Option<(i64, String)>,
}

pub async fn list(
    pool: &PgPool,
    tenant_id: &str,
    f: &ListFilter,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let mut q = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM dispatch.messages WHERE tenant_id = "
    ));
    q.push_bind(tenant_id);
    if !f.phone_number_id.is_empty() {
        q.push(" AND phone_number_id = ")
            .push_bind(&f.phone_number_id);
    }
    if !f.recipient.is_empty() {
        q.push(" AND recipient = ").push_bind(&f.recipient);
    }
    if !f.status.is_empty() {
        q.push(" AND status = ").push_bind(&f.status);
    }
    if let Some(from) = f.from {
        q.push(" AND accepted_at >= ").push_bind(from);
    }
    if let Some(until) = f.until {
        q.push(" AND accepted_at < ").push_bind(until);
    }
    if let Some((at, id)) = &f.after {
        q.push(" AND (accepted_at, message_id) < (")
            .push_bind(*at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY accepted_at DESC, message_id DESC LIMIT ")
        .push_bind(limit);
    q.build_query_as().fetch_all(pool).await
}

/// The users a tenant messaged first (templates outside the window) since `since`, with the
/// newest such send: the tier counter's durable source.
pub async fn business_initiated_users(
    pool: &PgPool,
    tenant_id: &str,
    since: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT recipient, max(accepted_at) AS \"newest!\" FROM dispatch.messages
          WHERE tenant_id = $1 AND business_initiated AND accepted_at >= $2
            AND status <> 'FAILED'
          GROUP BY recipient",
        tenant_id,
        since,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.recipient, r.newest)).collect())
}

/// A user's marketing templates accepted after `since` that did not fail: (message, accepted
/// µs), for the frequency cap's rebuild.
pub async fn marketing_sends(
    pool: &PgPool,
    tenant_id: &str,
    user: &str,
    since: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT message_id, accepted_at FROM dispatch.messages
          WHERE tenant_id = $1 AND recipient = $2 AND category = 'MARKETING'
            AND accepted_at > $3 AND status <> 'FAILED'",
        tenant_id,
        user,
        since,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.message_id, r.accepted_at))
        .collect())
}

/// The failed marketing templates among `keys`: (tenant, recipient, message), for the
/// frequency cap (a message that failed reached nobody).
pub async fn failed_marketing(
    pool: &PgPool,
    keys: &[(String, String)],
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        "SELECT m.tenant_id, m.recipient, m.message_id FROM dispatch.messages m
           JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
             ON m.tenant_id = k.tenant_id AND m.message_id = k.message_id
          WHERE m.category = 'MARKETING' AND m.status = 'FAILED'",
        &tenants,
        &ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.tenant_id, r.recipient, r.message_id))
        .collect())
}

/// For failed business-initiated messages among `keys`: (tenant, recipient, when the failed
/// one was accepted, the newest other business-initiated message to that user since `since`
/// that has not failed). A message that failed reached nobody, so the tier counts the user
/// only for the others (docs/rules.md §5: the network counts users actually reached).
pub async fn failed_tier_entries(
    pool: &PgPool,
    keys: &[(String, String)],
    since: i64,
) -> Result<Vec<(String, String, i64, Option<i64>)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        "SELECT f.tenant_id, f.recipient, f.accepted_at,
                (SELECT max(o.accepted_at) FROM dispatch.messages o
                  WHERE o.tenant_id = f.tenant_id AND o.business_initiated
                    AND o.accepted_at >= $3 AND o.recipient = f.recipient
                    AND o.status <> 'FAILED') AS \"newest_other?\"
           FROM dispatch.messages f
           JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
             ON f.tenant_id = k.tenant_id AND f.message_id = k.message_id
          WHERE f.status = 'FAILED' AND f.business_initiated",
        &tenants,
        &ids,
        since,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.tenant_id, r.recipient, r.accepted_at, r.newest_other))
        .collect())
}

/// The current status of messages (for the worker: only ACCEPTED ones are sent).
pub async fn statuses(
    pool: &PgPool,
    keys: &[(String, String)],
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query!(
        "SELECT m.tenant_id, m.message_id, m.status FROM dispatch.messages m
           JOIN unnest($1::text[], $2::text[]) AS k(tenant_id, message_id)
             ON m.tenant_id = k.tenant_id AND m.message_id = k.message_id",
        &tenants,
        &ids,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.tenant_id, r.message_id, r.status))
        .collect())
}

/// A status change to apply: the message moves to `progress` unless it is already there or
/// beyond (Progress::advance, in SQL).
#[derive(Clone, Debug)]
pub struct StatusChange {
    pub tenant_id: String,
    pub message_id: String,
    pub progress: Progress,
    pub at: i64,
    pub provider_message_id: String,
    pub failure_reason: String,
    pub error_code: i32,
    pub error_title: String,
    /// Send attempts so far (the worker's count; 0 leaves it as it is).
    pub attempts: i32,
}

/// Applies status changes in one statement; the `WHERE` is `Progress::advance`: forward only,
/// FAILED final and only before delivery. Several changes of one message must be folded by the
/// caller first. `updated_at` becomes `recorded_at` (when Finestra learnt it; the status times
/// are the network's). Returns the (tenant, message, new status) that moved.
pub async fn apply_statuses(
    pool: &PgPool,
    changes: &[StatusChange],
    recorded_at: i64,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut tenants = Vec::with_capacity(changes.len());
    let mut ids = Vec::with_capacity(changes.len());
    let mut statuses = Vec::with_capacity(changes.len());
    let mut ranks = Vec::with_capacity(changes.len());
    let mut ats = Vec::with_capacity(changes.len());
    let mut wamids = Vec::with_capacity(changes.len());
    let mut reasons = Vec::with_capacity(changes.len());
    let mut codes = Vec::with_capacity(changes.len());
    let mut titles = Vec::with_capacity(changes.len());
    let mut attempts = Vec::with_capacity(changes.len());
    // In key order: the worker's outcomes and the status pipeline update the same rows at the
    // same time (a packed sent+delivered arrives while the send is being recorded), and rows
    // locked in one order by both cannot deadlock.
    let mut ordered: Vec<&StatusChange> = changes.iter().collect();
    ordered.sort_unstable_by(|a, b| {
        (a.tenant_id.as_str(), a.message_id.as_str())
            .cmp(&(b.tenant_id.as_str(), b.message_id.as_str()))
    });
    for c in ordered {
        tenants.push(c.tenant_id.clone());
        ids.push(c.message_id.clone());
        statuses.push(c.progress.as_str().to_owned());
        ranks.push(c.progress.rank());
        ats.push(c.at);
        wamids.push(c.provider_message_id.clone());
        reasons.push(c.failure_reason.clone());
        codes.push(c.error_code);
        titles.push(c.error_title.clone());
        attempts.push(c.attempts);
    }
    let rows = sqlx::query!(
        "UPDATE dispatch.messages m SET
            status = u.status,
            rank = u.rank,
            provider_message_id = COALESCE(m.provider_message_id, NULLIF(u.wamid, '')),
            sent_at = CASE WHEN u.status IN ('SENT', 'DELIVERED', 'READ')
                           THEN COALESCE(m.sent_at, u.at) ELSE m.sent_at END,
            delivered_at = CASE WHEN u.status IN ('DELIVERED', 'READ')
                                THEN COALESCE(m.delivered_at, u.at) ELSE m.delivered_at END,
            read_at = CASE WHEN u.status = 'READ' THEN u.at ELSE m.read_at END,
            failed_at = CASE WHEN u.status = 'FAILED' THEN u.at ELSE m.failed_at END,
            failure_reason = CASE WHEN u.status = 'FAILED' THEN u.reason ELSE m.failure_reason END,
            error_code = CASE WHEN u.status = 'FAILED' THEN u.code ELSE m.error_code END,
            error_title = CASE WHEN u.status = 'FAILED' THEN u.title ELSE m.error_title END,
            attempts = GREATEST(m.attempts, u.attempts),
            updated_at = $11
          FROM unnest($1::text[], $2::text[], $3::text[], $4::smallint[], $5::bigint[],
                      $6::text[], $7::text[], $8::int[], $9::text[], $10::int[])
               AS u(tenant_id, message_id, status, rank, at, wamid, reason, code, title, attempts)
         WHERE m.tenant_id = u.tenant_id AND m.message_id = u.message_id
           AND m.status <> 'FAILED'
           AND CASE WHEN u.status = 'FAILED' THEN m.rank < 2 ELSE m.rank < u.rank END
         RETURNING m.tenant_id, m.message_id, m.status",
        &tenants,
        &ids,
        &statuses,
        &ranks,
        &ats,
        &wamids,
        &reasons,
        &codes,
        &titles,
        &attempts,
        recorded_at,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.tenant_id, r.message_id, r.status))
        .collect())
}

/// Messages still ACCEPTED and untouched since `cut` (of tenants starting with `prefix`),
/// oldest first, at most `limit`, marked as queued again at `now`; as their outbound events
/// need them.
pub async fn claim_stale_accepted(
    pool: &PgPool,
    cut: i64,
    now: i64,
    limit: i64,
    prefix: &str,
) -> Result<Vec<NewMessage>, sqlx::Error> {
    let rows = sqlx::query_as!(
        OutboundRow,
        "WITH due AS (
             SELECT tenant_id, message_id, accepted_at FROM dispatch.messages
              WHERE status = 'ACCEPTED' AND COALESCE(requeued_at, updated_at) <= $1
                AND parked_partition IS NULL AND starts_with(tenant_id, $4)
              ORDER BY COALESCE(requeued_at, updated_at) LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE dispatch.messages m SET requeued_at = $2
           FROM due
          WHERE m.tenant_id = due.tenant_id AND m.message_id = due.message_id
            AND m.accepted_at = due.accepted_at
          RETURNING m.tenant_id, m.message_id, m.idempotency_key, m.phone_number_id,
                    m.recipient, m.kind, m.template_name, m.category, m.body,
                    m.business_initiated, m.starts_fep, m.accepted_at",
        cut,
        now,
        limit,
        prefix,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(outbound_message).collect())
}

/// A stored message's columns its outbound event needs.
struct OutboundRow {
    tenant_id: String,
    message_id: String,
    idempotency_key: String,
    phone_number_id: String,
    recipient: String,
    kind: String,
    template_name: String,
    category: String,
    body: String,
    business_initiated: bool,
    starts_fep: bool,
    accepted_at: i64,
}

fn outbound_message(r: OutboundRow) -> NewMessage {
    NewMessage {
        tenant_id: r.tenant_id,
        message_id: r.message_id,
        idempotency_key: r.idempotency_key,
        request_hash: Vec::new(),
        phone_number_id: r.phone_number_id,
        recipient: r.recipient,
        kind: r.kind,
        template_name: r.template_name,
        category: r.category,
        body: r.body,
        price_micros: 0,
        currency: String::new(),
        free: false,
        free_reason: String::new(),
        business_initiated: r.business_initiated,
        starts_fep: r.starts_fep,
        accepted_at: r.accepted_at,
    }
}

/// An accepted message as its outbound event needs it (to queue it again).
pub async fn outbound_of(
    pool: &PgPool,
    tenant_id: &str,
    message_id: &str,
) -> Result<Option<NewMessage>, sqlx::Error> {
    let row = sqlx::query_as!(
        OutboundRow,
        "SELECT tenant_id, message_id, idempotency_key, phone_number_id, recipient, kind,
                template_name, category, body, business_initiated, starts_fep, accepted_at
           FROM dispatch.messages WHERE tenant_id = $1 AND message_id = $2",
        tenant_id,
        message_id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(outbound_message))
}

/// A waiting message to park: its row's key and the outbound partition its record came from.
#[derive(Clone, Debug)]
pub struct Parking {
    pub tenant_id: String,
    pub message_id: String,
    pub accepted_at: i64,
    pub partition: i32,
}

/// Parks waiting messages: their records are passed and the rows wait to be taken back by
/// [`unpark`]. Returns how many were still waiting.
pub async fn park(pool: &PgPool, rows: &[Parking]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let tenants: Vec<String> = rows.iter().map(|r| r.tenant_id.clone()).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.message_id.clone()).collect();
    let accepted: Vec<i64> = rows.iter().map(|r| r.accepted_at).collect();
    let partitions: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    // With its acceptance time the row is found in its month's partition alone.
    let done = sqlx::query!(
        "UPDATE dispatch.messages m SET parked_partition = k.partition
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[])
                AS k(tenant_id, message_id, accepted_at, partition)
          WHERE m.tenant_id = k.tenant_id AND m.message_id = k.message_id
            AND m.accepted_at = k.accepted_at AND m.status = 'ACCEPTED'",
        &tenants,
        &ids,
        &accepted,
        &partitions,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A parked message taken back: what its delivery needs.
#[derive(Debug)]
pub struct Unparked {
    pub tenant_id: String,
    pub message_id: String,
    pub phone_number_id: String,
    pub recipient: String,
    pub body: String,
    pub accepted_at: i64,
    pub partition: i32,
}

/// Takes back up to `limit` of a tenant's parked messages of `partitions`, oldest first. They
/// leave the park in the same statement (rows locked by another worker are skipped), and
/// count as queued again now: should this process die before sending them, the re-queue
/// sweep finds them.
pub async fn unpark(
    pool: &PgPool,
    tenant_id: &str,
    partitions: &[i32],
    limit: i64,
    now: i64,
) -> Result<Vec<Unparked>, sqlx::Error> {
    let mut rows = sqlx::query_as!(
        Unparked,
        "WITH due AS (
             SELECT tenant_id, message_id, accepted_at, parked_partition FROM dispatch.messages
              WHERE tenant_id = $1 AND parked_partition = ANY($2) AND status = 'ACCEPTED'
              ORDER BY accepted_at, message_id LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE dispatch.messages m SET parked_partition = NULL, requeued_at = $4
           FROM due
          WHERE m.tenant_id = due.tenant_id AND m.message_id = due.message_id
            AND m.accepted_at = due.accepted_at
          RETURNING m.tenant_id, m.message_id, m.phone_number_id, m.recipient, m.body,
                    m.accepted_at, due.parked_partition AS \"partition!\"",
        tenant_id,
        partitions,
        limit,
        now,
    )
    .fetch_all(pool)
    .await?;
    rows.sort_by(|a, b| (a.accepted_at, &a.message_id).cmp(&(b.accepted_at, &b.message_id)));
    Ok(rows)
}

/// Tenants with parked messages in `partitions` (a worker that took over partitions, or
/// restarted, finds the backlog parked before it).
pub async fn parked_tenants(
    pool: &PgPool,
    partitions: &[i32],
    prefix: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT DISTINCT tenant_id FROM dispatch.messages
          WHERE parked_partition = ANY($1) AND status = 'ACCEPTED'
            AND starts_with(tenant_id, $2)",
        partitions,
        prefix,
    )
    .fetch_all(pool)
    .await
}
