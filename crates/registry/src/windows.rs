//! The window service's read model, for services that decide on a pair's window without a
//! call (billing's quotes, dispatch's sends): its Redis value (layout documented in
//! `proto/finestra/v1/window.proto`), else its Postgres record `windows.pair_state`. A missing
//! key means "not cached", never "closed".

use finestra_domain::window::CSW_HOURS;
use finestra_domain::{Flag, LastInbound, Timestamp, WindowState};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum WindowReadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("postgres: {0}")]
    Store(#[from] sqlx::Error),
}

impl finestra_platform::status::StoreFailure for WindowReadError {
    fn is_transient(&self) -> bool {
        match self {
            WindowReadError::Redis(e) => e.is_transient(),
            WindowReadError::Store(e) => e.is_transient(),
        }
    }
}

/// The Redis key of a pair: short, since a million open windows are a million keys, and with
/// the tenant as hash tag (a tenant's keys share a Redis Cluster slot).
pub fn key(prefix: &str, tenant_id: &str, phone_number_id: &str, user: &str) -> String {
    format!("{prefix}:{{{tenant_id}}}w:{phone_number_id}:{user}")
}

/// The state a pair's Redis value holds: `csw:ref:fep:mo_at:mo:bl_at:bl` (µs since the epoch,
/// flags 0/1, unset fields empty, trailing ones left out; the empty string is the empty
/// state). The last inbound message is the one that opened the window (`csw` − 24 h); its id
/// is kept in Postgres only.
pub fn decode(value: &str) -> WindowState {
    let mut fields = value.split(':');
    let mut next = || fields.next().and_then(|v| v.parse::<i64>().ok());
    let (csw, referral, fep) = (next(), next(), next());
    let (mo_at, mo, bl_at, bl) = (next(), next(), next(), next());
    let ts = |v: Option<i64>| v.map(Timestamp::from_micros);
    let flag = |at: Option<i64>, on: Option<i64>| {
        at.map(|at| Flag {
            at: Timestamp::from_micros(at),
            on: on == Some(1),
        })
    };
    WindowState {
        csw_until: ts(csw),
        last_inbound: ts(csw).map(|until| LastInbound {
            at: until.plus_hours(-CSW_HOURS),
            message_id: String::new(),
        }),
        referral_at: ts(referral),
        fep_until: ts(fep),
        marketing_opt_out: flag(mo_at, mo),
        blocked: flag(bl_at, bl),
    }
}

/// The pair's window state: the hot hash, else the durable record, else the empty state.
pub async fn read(
    redis: &ConnectionManager,
    pool: &PgPool,
    prefix: &str,
    tenant_id: &str,
    phone_number_id: &str,
    user: &str,
) -> Result<WindowState, WindowReadError> {
    let mut conn = redis.clone();
    let value: Option<String> = redis::cmd("GET")
        .arg(key(prefix, tenant_id, phone_number_id, user))
        .query_async(&mut conn)
        .await?;
    if let Some(value) = value {
        return Ok(decode(&value));
    }
    read_durable(pool, tenant_id, phone_number_id, user).await
}

/// The pair's window from its durable record (Redis holds none), else the empty state.
pub async fn read_durable(
    pool: &PgPool,
    tenant_id: &str,
    phone_number_id: &str,
    user: &str,
) -> Result<WindowState, WindowReadError> {
    let row = sqlx::query!(
        "SELECT csw_until, last_inbound_at, last_inbound_id, referral_at, fep_until,
                opt_out_at, opt_out, blocked_at, blocked
           FROM windows.pair_state
          WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = $3",
        tenant_id,
        phone_number_id,
        user
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map_or_else(WindowState::default, |r| {
        state_of_row(
            r.csw_until,
            r.last_inbound_at,
            r.last_inbound_id,
            r.referral_at,
            r.fep_until,
            (r.opt_out_at, r.opt_out),
            (r.blocked_at, r.blocked),
        )
    }))
}

/// Many users' windows on one number (a campaign's quote): the hot values in `MGET`s of a
/// thousand keys, the users Redis does not hold from Postgres in one query, in `users`' order.
pub async fn read_many(
    redis: &ConnectionManager,
    pool: &PgPool,
    prefix: &str,
    tenant_id: &str,
    phone_number_id: &str,
    users: &[String],
) -> Result<Vec<WindowState>, WindowReadError> {
    let mut conn = redis.clone();
    let mut states = Vec::with_capacity(users.len());
    let mut missing: Vec<(usize, String)> = Vec::new();
    for chunk in users.chunks(1_000) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|u| key(prefix, tenant_id, phone_number_id, u))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (user, value) in chunk.iter().zip(values) {
            match value {
                Some(v) => states.push(decode(&v)),
                None => {
                    missing.push((states.len(), user.clone()));
                    states.push(WindowState::default());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(states);
    }
    let keys: Vec<String> = missing.iter().map(|(_, u)| u.clone()).collect();
    let rows = sqlx::query!(
        "SELECT user_key, csw_until, last_inbound_at, last_inbound_id, referral_at, fep_until,
                opt_out_at, opt_out, blocked_at, blocked
           FROM windows.pair_state
          WHERE tenant_id = $1 AND phone_number_id = $2 AND user_key = ANY($3)",
        tenant_id,
        phone_number_id,
        &keys
    )
    .fetch_all(pool)
    .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        found.insert(
            r.user_key.clone(),
            state_of_row(
                r.csw_until,
                r.last_inbound_at,
                r.last_inbound_id,
                r.referral_at,
                r.fep_until,
                (r.opt_out_at, r.opt_out),
                (r.blocked_at, r.blocked),
            ),
        );
    }
    for (at, user) in missing {
        if let Some(state) = found.remove(&user) {
            states[at] = state;
        }
    }
    Ok(states)
}

/// A durable record's columns as a state.
fn state_of_row(
    csw_until: Option<i64>,
    last_inbound_at: Option<i64>,
    last_inbound_id: Option<String>,
    referral_at: Option<i64>,
    fep_until: Option<i64>,
    opt_out: (Option<i64>, Option<bool>),
    blocked: (Option<i64>, Option<bool>),
) -> WindowState {
    let flag = |(at, on): (Option<i64>, Option<bool>)| {
        at.map(|at| Flag {
            at: Timestamp::from_micros(at),
            on: on.unwrap_or(false),
        })
    };
    WindowState {
        csw_until: csw_until.map(Timestamp::from_micros),
        last_inbound: last_inbound_at.map(|at| LastInbound {
            at: Timestamp::from_micros(at),
            message_id: last_inbound_id.unwrap_or_default(),
        }),
        referral_at: referral_at.map(Timestamp::from_micros),
        fep_until: fep_until.map(Timestamp::from_micros),
        marketing_opt_out: flag(opt_out),
        blocked: flag(blocked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_layout_reads_into_a_state() {
        let s = decode("90000000000:800:5000:700:1:600:0");
        assert_eq!(s.csw_until, Some(Timestamp::from_micros(90_000_000_000)));
        assert_eq!(
            s.last_inbound.as_ref().map(|l| l.at),
            Some(Timestamp::from_micros(90_000_000_000).plus_hours(-24))
        );
        assert_eq!(s.referral_at, Some(Timestamp::from_micros(800)));
        assert_eq!(s.fep_until, Some(Timestamp::from_micros(5000)));
        assert!(s.is_marketing_opted_out());
        assert!(!s.is_blocked());
        assert_eq!(s.blocked.map(|b| b.at), Some(Timestamp::from_micros(600)));
        assert_eq!(key("fin", "t1", "pn", "39"), "fin:{t1}w:pn:39");
    }

    #[test]
    fn unset_and_left_out_fields_are_absent() {
        assert_eq!(decode(""), WindowState::default());
        let blocked_only = decode(":::::600:1");
        assert!(blocked_only.is_blocked());
        assert_eq!(blocked_only.csw_until, None);
        assert_eq!(blocked_only.last_inbound, None);
        assert_eq!(blocked_only.marketing_opt_out, None);
        let csw_only = decode("1000");
        assert_eq!(csw_only.csw_until, Some(Timestamp::from_micros(1000)));
        assert_eq!(csw_only.fep_until, None);
    }
}
