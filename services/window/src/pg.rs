//! The Postgres side: `windows.pair_state` (current state, system of record) and
//! `windows.window_events` (append-only history, idempotent on the event id).

use std::collections::HashSet;

use finestra_domain::{Flag, LastInbound, Timestamp, WindowState};
use sqlx::{PgConnection, PgPool};

use crate::state::{EventKind, PairKey, WindowEvent};

pub const SCHEMA: &str = "windows";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the schema and creates the history partitions around the database's now, so no
/// writer (a service, a test, a tool) ever fills the default partition with this month's rows
/// before the month's partition exists.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::Error> {
    finestra_platform::stores::migrate_schema(pool, SCHEMA, &MIGRATOR).await?;
    sqlx::query!(
        "SELECT windows.ensure_window_events_partition((now() + m * interval '1 month')::date)
         FROM generate_series(-1, 2) AS m"
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Creates the monthly history partitions around `now` (last month to two months ahead).
pub async fn ensure_partitions(pool: &PgPool, now: Timestamp) -> Result<(), sqlx::Error> {
    finestra_platform::partitions::ensure_around(pool, "windows", now.micros(), 2).await
}

#[derive(Debug)]
pub struct PairRow {
    pub tenant_id: String,
    pub phone_number_id: String,
    pub user_key: String,
    pub csw_until: Option<i64>,
    pub last_inbound_at: Option<i64>,
    pub last_inbound_id: Option<String>,
    pub referral_at: Option<i64>,
    pub fep_until: Option<i64>,
    pub opt_out_at: Option<i64>,
    pub opt_out: Option<bool>,
    pub blocked_at: Option<i64>,
    pub blocked: Option<bool>,
}

impl PairRow {
    pub fn key(&self) -> PairKey {
        PairKey {
            tenant_id: self.tenant_id.clone(),
            phone_number_id: self.phone_number_id.clone(),
            user: self.user_key.clone(),
        }
    }

    pub fn state(&self) -> WindowState {
        let flag = |at: Option<i64>, on: Option<bool>| {
            at.map(|at| Flag {
                at: Timestamp::from_micros(at),
                on: on.unwrap_or(false),
            })
        };
        WindowState {
            csw_until: self.csw_until.map(Timestamp::from_micros),
            last_inbound: self.last_inbound_at.map(|at| LastInbound {
                at: Timestamp::from_micros(at),
                message_id: self.last_inbound_id.clone().unwrap_or_default(),
            }),
            referral_at: self.referral_at.map(Timestamp::from_micros),
            fep_until: self.fep_until.map(Timestamp::from_micros),
            marketing_opt_out: flag(self.opt_out_at, self.opt_out),
            blocked: flag(self.blocked_at, self.blocked),
        }
    }
}

fn key_arrays<'a>(
    keys: impl Iterator<Item = &'a PairKey>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut t = Vec::new();
    let mut n = Vec::new();
    let mut u = Vec::new();
    for k in keys {
        t.push(k.tenant_id.clone());
        n.push(k.phone_number_id.clone());
        u.push(k.user.clone());
    }
    (t, n, u)
}

/// Reads the states of `keys` (sorted, so concurrent batches lock in one order), locking them
/// for the rest of the transaction.
pub async fn lock_states(
    conn: &mut PgConnection,
    keys: &[PairKey],
) -> Result<Vec<PairRow>, sqlx::Error> {
    let (t, n, u) = key_arrays(keys.iter());
    sqlx::query_as!(
        PairRow,
        "SELECT p.tenant_id, p.phone_number_id, p.user_key, p.csw_until, p.last_inbound_at,
                p.last_inbound_id, p.referral_at, p.fep_until, p.opt_out_at, p.opt_out,
                p.blocked_at, p.blocked
         FROM windows.pair_state p
         JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(t, n, u)
           ON p.tenant_id = k.t AND p.phone_number_id = k.n AND p.user_key = k.u
         ORDER BY p.tenant_id, p.phone_number_id, p.user_key
         FOR UPDATE OF p",
        &t,
        &n,
        &u
    )
    .fetch_all(conn)
    .await
}

pub async fn read_state(pool: &PgPool, key: &PairKey) -> Result<Option<PairRow>, sqlx::Error> {
    sqlx::query_as!(
        PairRow,
        "SELECT p.tenant_id, p.phone_number_id, p.user_key, p.csw_until, p.last_inbound_at,
                p.last_inbound_id, p.referral_at, p.fep_until, p.opt_out_at, p.opt_out,
                p.blocked_at, p.blocked
         FROM windows.pair_state p
         WHERE p.tenant_id = $1 AND p.phone_number_id = $2 AND p.user_key = $3",
        &key.tenant_id,
        &key.phone_number_id,
        &key.user
    )
    .fetch_optional(pool)
    .await
}

/// Serializes, until the transaction ends, every batch that carries one of these events, so
/// that of two deliveries of one event only the first is recorded and applied (a provider may
/// re-deliver a message with another timestamp; see docs/rules.md §1). Locks are taken in one
/// order, so two batches cannot deadlock on them.
pub async fn lock_events(
    conn: &mut PgConnection,
    events: &[&WindowEvent],
) -> Result<(), sqlx::Error> {
    let tenants: Vec<String> = events.iter().map(|e| e.key.tenant_id.clone()).collect();
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(h) FROM (
             SELECT DISTINCT hashtextextended(t || chr(31) || e, 0) AS h
             FROM unnest($1::text[], $2::text[]) AS x(t, e)) l
         ORDER BY h",
        &tenants,
        &ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends the events the history has not recorded yet, whatever their timestamp, and returns
/// which ones it recorded: only those may change a state, so that a rebuild from the history
/// gives the state the live path built. Each event id appears at most once in `events`, and
/// the caller holds [`lock_events`] for them.
pub async fn append_history(
    conn: &mut PgConnection,
    events: &[&WindowEvent],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let (t, n, u) = key_arrays(events.iter().map(|e| &e.key));
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let at: Vec<i64> = events.iter().map(|e| e.occurred_at.micros()).collect();
    let kind: Vec<String> = events.iter().map(|e| e.kind.label().to_owned()).collect();
    let mut message_id: Vec<Option<&str>> = Vec::with_capacity(events.len());
    let mut referral: Vec<bool> = Vec::with_capacity(events.len());
    let mut flag: Vec<Option<bool>> = Vec::with_capacity(events.len());
    for e in events {
        match &e.kind {
            EventKind::UserMessage {
                message_id: m,
                referral: r,
            } => {
                message_id.push(Some(m));
                referral.push(*r);
                flag.push(None);
            }
            EventKind::BusinessReply { message_id: m } => {
                message_id.push(Some(m));
                referral.push(false);
                flag.push(None);
            }
            EventKind::MarketingPreference { stop: f } | EventKind::Block { blocked: f } => {
                message_id.push(None);
                referral.push(false);
                flag.push(Some(*f));
            }
        }
    }
    // The primary key holds the partition key (occurred_at), so it alone cannot tell a
    // re-delivery with another timestamp from a new event: NOT EXISTS looks across months.
    let recorded = sqlx::query!(
        "INSERT INTO windows.window_events
            (tenant_id, event_id, occurred_at, phone_number_id, user_key, kind, message_id, referral, flag)
         SELECT t, e, timestamptz 'epoch' + o * interval '1 microsecond', n, u, k, m, r, f
         FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bool[], $9::bool[]) AS x(t, e, o, n, u, k, m, r, f)
         WHERE NOT EXISTS (
             SELECT 1 FROM windows.window_events w WHERE w.tenant_id = x.t AND w.event_id = x.e)
         ON CONFLICT DO NOTHING
         RETURNING tenant_id, event_id",
        &t,
        &ids,
        &at,
        &n,
        &u,
        &kind,
        &message_id as &[Option<&str>],
        &referral,
        &flag as &[Option<bool>]
    )
    .fetch_all(conn)
    .await?;
    Ok(recorded
        .into_iter()
        .map(|r| (r.tenant_id, r.event_id))
        .collect())
}

/// Upserts states, merging with what is stored (the lattice join of
/// `WindowState::merge`), so a concurrent writer can never move a field backwards.
/// One entry per key. Returns the rows as stored, which is what Redis receives.
pub async fn merge_states(
    conn: &mut PgConnection,
    states: &[(PairKey, WindowState)],
) -> Result<Vec<PairRow>, sqlx::Error> {
    let (t, n, u) = key_arrays(states.iter().map(|(k, _)| k));
    let s = states.iter().map(|(_, s)| s);
    let csw: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.csw_until.map(Timestamp::micros))
        .collect();
    let li_at: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.last_inbound.as_ref().map(|l| l.at.micros()))
        .collect();
    let li_id: Vec<Option<&str>> = s
        .clone()
        .map(|s| s.last_inbound.as_ref().map(|l| l.message_id.as_str()))
        .collect();
    let referral: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.referral_at.map(Timestamp::micros))
        .collect();
    let fep: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.fep_until.map(Timestamp::micros))
        .collect();
    let oo_at: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.marketing_opt_out.map(|f| f.at.micros()))
        .collect();
    let oo: Vec<Option<bool>> = s
        .clone()
        .map(|s| s.marketing_opt_out.map(|f| f.on))
        .collect();
    let bl_at: Vec<Option<i64>> = s
        .clone()
        .map(|s| s.blocked.map(|f| f.at.micros()))
        .collect();
    let bl: Vec<Option<bool>> = s.map(|s| s.blocked.map(|f| f.on)).collect();
    sqlx::query_as!(
        PairRow,
        "INSERT INTO windows.pair_state AS p
            (tenant_id, phone_number_id, user_key, csw_until, last_inbound_at, last_inbound_id,
             referral_at, fep_until, opt_out_at, opt_out, blocked_at, blocked)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[],
                              $7::int8[], $8::int8[], $9::int8[], $10::bool[], $11::int8[], $12::bool[])
         ON CONFLICT (tenant_id, phone_number_id, user_key) DO UPDATE SET
           csw_until = GREATEST(p.csw_until, EXCLUDED.csw_until),
           referral_at = GREATEST(p.referral_at, EXCLUDED.referral_at),
           fep_until = GREATEST(p.fep_until, EXCLUDED.fep_until),
           last_inbound_at = CASE WHEN p.last_inbound_at IS NULL
                 OR (EXCLUDED.last_inbound_at, EXCLUDED.last_inbound_id) > (p.last_inbound_at, p.last_inbound_id)
               THEN EXCLUDED.last_inbound_at ELSE p.last_inbound_at END,
           last_inbound_id = CASE WHEN p.last_inbound_at IS NULL
                 OR (EXCLUDED.last_inbound_at, EXCLUDED.last_inbound_id) > (p.last_inbound_at, p.last_inbound_id)
               THEN EXCLUDED.last_inbound_id ELSE p.last_inbound_id END,
           opt_out_at = CASE WHEN p.opt_out_at IS NULL
                 OR (EXCLUDED.opt_out_at, EXCLUDED.opt_out) > (p.opt_out_at, p.opt_out)
               THEN EXCLUDED.opt_out_at ELSE p.opt_out_at END,
           opt_out = CASE WHEN p.opt_out_at IS NULL
                 OR (EXCLUDED.opt_out_at, EXCLUDED.opt_out) > (p.opt_out_at, p.opt_out)
               THEN EXCLUDED.opt_out ELSE p.opt_out END,
           blocked_at = CASE WHEN p.blocked_at IS NULL
                 OR (EXCLUDED.blocked_at, EXCLUDED.blocked) > (p.blocked_at, p.blocked)
               THEN EXCLUDED.blocked_at ELSE p.blocked_at END,
           blocked = CASE WHEN p.blocked_at IS NULL
                 OR (EXCLUDED.blocked_at, EXCLUDED.blocked) > (p.blocked_at, p.blocked)
               THEN EXCLUDED.blocked ELSE p.blocked END,
           updated_at = now()
         RETURNING p.tenant_id, p.phone_number_id, p.user_key, p.csw_until, p.last_inbound_at,
                   p.last_inbound_id, p.referral_at, p.fep_until, p.opt_out_at, p.opt_out,
                   p.blocked_at, p.blocked",
        &t,
        &n,
        &u,
        &csw as &[Option<i64>],
        &li_at as &[Option<i64>],
        &li_id as &[Option<&str>],
        &referral as &[Option<i64>],
        &fep as &[Option<i64>],
        &oo_at as &[Option<i64>],
        &oo as &[Option<bool>],
        &bl_at as &[Option<i64>],
        &bl as &[Option<bool>]
    )
    .fetch_all(conn)
    .await
}

/// Open windows of a number at `now`, ordered by user, after `after` (keyset pagination).
pub async fn list_open(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    now: Timestamp,
    after: &str,
    limit: i64,
) -> Result<Vec<PairRow>, sqlx::Error> {
    sqlx::query_as!(
        PairRow,
        "SELECT p.tenant_id, p.phone_number_id, p.user_key, p.csw_until, p.last_inbound_at,
                p.last_inbound_id, p.referral_at, p.fep_until, p.opt_out_at, p.opt_out,
                p.blocked_at, p.blocked
         FROM windows.pair_state p
         WHERE p.tenant_id = $1 AND p.phone_number_id = $2 AND p.user_key > $3 AND p.csw_until > $4
         ORDER BY p.user_key
         LIMIT $5",
        tenant_id,
        phone_number_id,
        after,
        now.micros(),
        limit
    )
    .fetch_all(pool)
    .await
}
