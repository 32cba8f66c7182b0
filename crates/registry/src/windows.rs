//! The window service's read model, for services that decide on a pair's window without a
//! call (billing's quotes, dispatch's sends): its Redis hash (layout documented in
//! `proto/finestra/v1/window.proto`), else its Postgres record `windows.pair_state`. A missing
//! hash means "not cached", never "closed".

use std::collections::HashMap;

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

/// The hash key of a pair.
pub fn key(prefix: &str, tenant_id: &str, phone_number_id: &str, user: &str) -> String {
    format!("{prefix}:{{{tenant_id}}}:win:{phone_number_id}:{user}")
}

/// The state a pair's hash holds (fields as documented in `window.proto`).
pub fn from_hash(fields: &HashMap<String, String>) -> WindowState {
    let num = |f: &str| fields.get(f).and_then(|v| v.parse::<i64>().ok());
    let ts = |f: &str| num(f).map(Timestamp::from_micros);
    let flag = |at: &str, on: &str| {
        ts(at).map(|at| Flag {
            at,
            on: num(on) == Some(1),
        })
    };
    WindowState {
        csw_until: ts("csw"),
        last_inbound: ts("li_at").map(|at| LastInbound {
            at,
            message_id: fields.get("li_id").cloned().unwrap_or_default(),
        }),
        referral_at: ts("ref"),
        fep_until: ts("fep"),
        marketing_opt_out: flag("mo_at", "mo"),
        blocked: flag("bl_at", "bl"),
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
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(key(prefix, tenant_id, phone_number_id, user))
        .query_async(&mut conn)
        .await?;
    if fields.contains_key("v") {
        return Ok(from_hash(&fields));
    }
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
    let Some(r) = row else {
        return Ok(WindowState::default());
    };
    let flag = |at: Option<i64>, on: Option<bool>| {
        at.map(|at| Flag {
            at: Timestamp::from_micros(at),
            on: on.unwrap_or(false),
        })
    };
    Ok(WindowState {
        csw_until: r.csw_until.map(Timestamp::from_micros),
        last_inbound: r.last_inbound_at.map(|at| LastInbound {
            at: Timestamp::from_micros(at),
            message_id: r.last_inbound_id.unwrap_or_default(),
        }),
        referral_at: r.referral_at.map(Timestamp::from_micros),
        fep_until: r.fep_until.map(Timestamp::from_micros),
        marketing_opt_out: flag(r.opt_out_at, r.opt_out),
        blocked: flag(r.blocked_at, r.blocked),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_layout_reads_into_a_state() {
        let fields: HashMap<String, String> = [
            ("v", "1"),
            ("csw", "1000"),
            ("li_at", "900"),
            ("li_id", "wamid.1"),
            ("ref", "800"),
            ("fep", "5000"),
            ("mo_at", "700"),
            ("mo", "1"),
            ("bl_at", "600"),
            ("bl", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = from_hash(&fields);
        assert_eq!(s.csw_until, Some(Timestamp::from_micros(1000)));
        assert_eq!(
            s.last_inbound.as_ref().map(|l| l.message_id.as_str()),
            Some("wamid.1")
        );
        assert_eq!(s.referral_at, Some(Timestamp::from_micros(800)));
        assert!(s.is_marketing_opted_out());
        assert!(!s.is_blocked());
        assert_eq!(s.blocked.map(|b| b.at), Some(Timestamp::from_micros(600)));
        assert_eq!(key("fin", "t1", "pn", "39"), "fin:{t1}:win:pn:39");
    }
}
