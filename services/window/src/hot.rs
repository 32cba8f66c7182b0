//! The Redis side: one string per pair, `<prefix>:{<tenant>}w:<number>:<user>` (the tenant in
//! a hash tag, so a Redis Cluster keeps a tenant's keys in one slot), read by dispatch and
//! billing through `finestra_registry::windows` (layout documented in
//! `proto/finestra/v1/window.proto`).
//!
//! The value is the state's times in microseconds since the epoch, `:`-separated in a fixed
//! order, `csw:ref:fep:mo_at:mo:bl_at:bl` (`mo`, `bl` 0/1), a field empty when unset and empty
//! trailing fields left out. It is this small on purpose (docs/architecture.md, "Where state lives"):
//! a pair whose user wrote holds one integer, which Redis stores in the key's object itself,
//! so a million open windows fit in about a hundred megabytes. The last inbound message's id
//! is not kept here: only GetWindow tells it, and it reads it from Postgres.
//!
//! Only complete states are ever written (the merged Postgres row), through a Lua script that
//! merges field by field like `WindowState::merge`. So a value is always the join of complete
//! states: never a partial state, never moved backwards by a stale writer. A missing key is
//! rebuilt from Postgres; a pair Postgres does not know is cached as the empty state (an empty
//! string), so repeated reads of users who never wrote do not reach Postgres.

use finestra_domain::{Flag, Timestamp, WindowState};
use redis::aio::ConnectionManager;

use crate::state::PairKey;

/// How long a value outlives the end of its window (and the minimum life of one that only
/// holds preferences). A miss afterwards is answered from Postgres.
pub const GRACE_MICROS: i64 = 24 * Timestamp::HOUR;

const MERGE_LUA: &str = r#"
local key = KEYS[1]
local raw = redis.call('GET', key)
local cur = {}
if raw then
  local i = 1
  for f in string.gmatch(raw .. ':', '([^:]*):') do cur[i] = f; i = i + 1 end
end
local function num(v) if v == false or v == nil or v == '' then return nil end return tonumber(v) end
-- Fields are kept as the strings given (never reformatted: Lua prints large numbers in
-- exponent form).
local out = {}
local function max_field(i, v)
  local new, old = num(v), num(cur[i])
  if new ~= nil and (old == nil or new > old) then out[i] = v else out[i] = cur[i] or '' end
end
-- (at, value) pairs: the newer `at` wins; at the same `at` the greater value wins.
local function pair_field(i, at, val)
  local new_at, old_at = num(at), num(cur[i])
  local newer = new_at ~= nil and (old_at == nil or new_at > old_at
    or (new_at == old_at and (num(val) or -1) > (num(cur[i + 1]) or -1)))
  if newer then out[i] = at; out[i + 1] = val
  else out[i] = cur[i] or ''; out[i + 1] = cur[i + 1] or '' end
end
max_field(1, ARGV[1])
max_field(2, ARGV[2])
max_field(3, ARGV[3])
pair_field(4, ARGV[4], ARGV[5])
pair_field(6, ARGV[6], ARGV[7])
local n = 7
while n > 1 and out[n] == '' do n = n - 1 end
local value = table.concat(out, ':', 1, n)
local expire_us = math.max(num(out[1]) or 0, num(out[3]) or 0, tonumber(ARGV[8])) + tonumber(ARGV[9])
redis.call('SET', key, value, 'PXAT', math.floor(expire_us / 1000))
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
        finestra_registry::windows::key(&self.prefix, &k.tenant_id, &k.phone_number_id, &k.user)
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

    /// The state Redis holds for a pair, `None` when it holds none. Its last inbound message
    /// has no id (Postgres keeps it).
    pub async fn get(&self, k: &PairKey) -> redis::RedisResult<Option<WindowState>> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(self.key(k))
            .query_async(&mut conn)
            .await?;
        Ok(value.map(|v| finestra_registry::windows::decode(&v)))
    }
}
