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
