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
//! rebuilt from Postgres; a pair Postgres does not know is cached as an empty state (field `v`
//! only), so repeated reads of users who never wrote do not reach Postgres.

use std::collections::HashMap;

use finestra_domain::{Flag, Timestamp, WindowState};
use redis::aio::ConnectionManager;

use crate::state::PairKey;

/// How long a hash outlives the end of its window (and the minimum life of a hash that only
/// holds preferences). A miss afterwards is answered from Postgres.
pub const GRACE_MICROS: i64 = 24 * Timestamp::HOUR;

const MERGE_LUA: &str = r#"
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'csw', 'li_at', 'li_id', 'ref', 'fep', 'mo_at', 'mo', 'bl_at', 'bl')
local function num(v) if v == false or v == nil or v == '' then return nil end return tonumber(v) end
-- Byte order, as Rust and Postgres ("C") compare: independent of Redis's locale.
local function bytes_gt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local out = {}
local function max_field(f, i, v)
  local new = num(v)
  if new == nil then return num(cur[i]) end
  local old = num(cur[i])
  if old == nil or new > old then table.insert(out, f); table.insert(out, v); return new end
  return old
end
-- (at, value) pairs: the newer `at` wins; at the same `at` the greater value wins.
local function pair_field(fat, fval, i, at, val, numeric)
  local new_at = num(at)
  if new_at == nil then return end
  local old_at = num(cur[i])
  local newer = old_at == nil or new_at > old_at
  if not newer and new_at == old_at then
    if numeric then newer = tonumber(val) > (num(cur[i + 1]) or -1)
    else newer = bytes_gt(val, cur[i + 1] or '') end
  end
  if newer then table.insert(out, fat); table.insert(out, at); table.insert(out, fval); table.insert(out, val) end
end
local csw = max_field('csw', 1, ARGV[1]) or 0
pair_field('li_at', 'li_id', 2, ARGV[2], ARGV[3], false)
max_field('ref', 4, ARGV[4])
local fep = max_field('fep', 5, ARGV[5]) or 0
pair_field('mo_at', 'mo', 6, ARGV[6], ARGV[7], true)
pair_field('bl_at', 'bl', 8, ARGV[8], ARGV[9], true)
-- `v` marks the hash as holding a complete state even when it has no field yet (a pair whose
-- user never wrote), so such reads are answered from Redis too.
table.insert(out, 'v'); table.insert(out, '1')
redis.call('HSET', key, unpack(out))
local expire_us = math.max(csw, fep, tonumber(ARGV[10])) + tonumber(ARGV[11])
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
        Ok(Some(finestra_registry::windows::from_hash(&fields)))
    }
}
