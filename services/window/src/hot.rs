//! The Redis side: one hash per pair, `<prefix>:{<tenant>}:win:<number>:<user>` (the tenant in
//! a hash tag, so a Redis Cluster keeps a tenant's keys in one slot).
//!
//! Fields (times in microseconds since the epoch): `csw`, `li_at`, `li_id`, `ref`, `fep`,
//! `mo_at`, `mo` (0/1), `bl_at`, `bl` (0/1). Other services may read this layout as a read
//! model; it is documented in `proto/finestra/v1/window.proto`.
//!
//! Only complete states are ever written (the merged Postgres row), through a Lua script that
//! merges field by field like `WindowState::merge`. So a hash is always the join of complete
//! states: never a partial state, never moved backwards by a stale writer. A missing key is
//! rebuilt from Postgres.

use std::collections::HashMap;

use finestra_domain::{Flag, LastInbound, Timestamp, WindowState};
use redis::aio::ConnectionManager;

use crate::state::PairKey;

/// How long a hash outlives the end of its window (and the minimum life of a hash that only
/// holds preferences). A miss afterwards is answered from Postgres.
pub const GRACE_MICROS: i64 = 24 * Timestamp::HOUR;

const MERGE_LUA: &str = r#"
local key = KEYS[1]
local function num(v) if v == false or v == nil or v == '' then return nil end return tonumber(v) end
local function max_field(f, v)
  local new = num(v)
  if new == nil then return end
  local cur = num(redis.call('HGET', key, f))
  if cur == nil or new > cur then redis.call('HSET', key, f, v) end
end
local function pair_field(fat, fval, at, val, numeric_val)
  local new_at = num(at)
  if new_at == nil then return end
  local cur_at = num(redis.call('HGET', key, fat))
  local cur_val = redis.call('HGET', key, fval)
  local newer = cur_at == nil or new_at > cur_at
  if not newer and new_at == cur_at then
    if numeric_val then newer = tonumber(val) > (tonumber(cur_val) or -1)
    else newer = val > (cur_val or '') end
  end
  if newer then redis.call('HSET', key, fat, at, fval, val) end
end
max_field('csw', ARGV[1])
pair_field('li_at', 'li_id', ARGV[2], ARGV[3], false)
max_field('ref', ARGV[4])
max_field('fep', ARGV[5])
pair_field('mo_at', 'mo', ARGV[6], ARGV[7], true)
pair_field('bl_at', 'bl', ARGV[8], ARGV[9], true)
local csw = num(redis.call('HGET', key, 'csw')) or 0
local fep = num(redis.call('HGET', key, 'fep')) or 0
local now = tonumber(ARGV[10])
local grace = tonumber(ARGV[11])
local expire_us = math.max(csw, fep, now) + grace
redis.call('PEXPIREAT', key, math.floor(expire_us / 1000))
return 1
"#;

#[derive(Clone)]
pub struct HotStore {
    conn: ConnectionManager,
    prefix: String,
    merge: redis::Script,
}

fn opt_num(v: Option<i64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

impl HotStore {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            merge: redis::Script::new(MERGE_LUA),
        }
    }

    pub fn key(&self, k: &PairKey) -> String {
        format!(
            "{}:{{{}}}:win:{}:{}",
            self.prefix, k.tenant_id, k.phone_number_id, k.user
        )
    }

    fn invocation<'a>(
        &'a self,
        k: &PairKey,
        s: &WindowState,
        now: Timestamp,
    ) -> redis::ScriptInvocation<'a> {
        let flag = |f: Option<Flag>| {
            (
                opt_num(f.map(|f| f.at.micros())),
                f.map(|f| if f.on { "1" } else { "0" }).unwrap_or(""),
            )
        };
        let (mo_at, mo) = flag(s.marketing_opt_out);
        let (bl_at, bl) = flag(s.blocked);
        let mut inv = self.merge.key(self.key(k));
        inv.arg(opt_num(s.csw_until.map(Timestamp::micros)))
            .arg(opt_num(s.last_inbound.as_ref().map(|l| l.at.micros())))
            .arg(
                s.last_inbound
                    .as_ref()
                    .map(|l| l.message_id.as_str())
                    .unwrap_or(""),
            )
            .arg(opt_num(s.referral_at.map(Timestamp::micros)))
            .arg(opt_num(s.fep_until.map(Timestamp::micros)))
            .arg(mo_at)
            .arg(mo)
            .arg(bl_at)
            .arg(bl)
            .arg(now.micros())
            .arg(GRACE_MICROS);
        inv
    }

    /// Merges complete states into their hashes, pipelined.
    pub async fn merge_all(
        &self,
        states: &[(PairKey, WindowState)],
        now: Timestamp,
    ) -> redis::RedisResult<()> {
        if states.is_empty() {
            return Ok(());
        }
        let build = |preload: bool| {
            let mut pipe = redis::pipe();
            if preload {
                pipe.cmd("SCRIPT").arg("LOAD").arg(MERGE_LUA).ignore();
            }
            for (k, s) in states {
                pipe.invoke_script(&self.invocation(k, s, now)).ignore();
            }
            pipe
        };
        let mut conn = self.conn.clone();
        match build(false).query_async::<()>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                build(true).query_async::<()>(&mut conn).await
            }
            other => other,
        }
    }

    /// The hash of a pair, `None` when Redis does not hold it.
    pub async fn get(&self, k: &PairKey) -> redis::RedisResult<Option<WindowState>> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(k))
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| fields.get(f).and_then(|v| v.parse::<i64>().ok());
        let ts = |f: &str| num(f).map(Timestamp::from_micros);
        let flag = |at: &str, on: &str| {
            ts(at).map(|at| Flag {
                at,
                on: num(on) == Some(1),
            })
        };
        Ok(Some(WindowState {
            csw_until: ts("csw"),
            last_inbound: ts("li_at").map(|at| LastInbound {
                at,
                message_id: fields.get("li_id").cloned().unwrap_or_default(),
            }),
            referral_at: ts("ref"),
            fep_until: ts("fep"),
            marketing_opt_out: flag("mo_at", "mo"),
            blocked: flag("bl_at", "bl"),
        }))
    }
}
