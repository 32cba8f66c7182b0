//! The hot wallet in Redis: one hash per tenant, `<prefix>:{<tenant>}:wallet` (the tenant in a
//! hash tag), so a reservation is one atomic script on one key.
//!
//! Fields: `b` balance, `c` credit limit, `r` reserved, and `m:<message_id>` → amount for every
//! open reservation. Postgres is the system of record: a missing hash is loaded from it, and
//! the hash expires a while after loading so any drift (a crash between a Postgres commit and
//! the Redis update) heals by itself. Top-ups and credit changes drop the hash (the next
//! reservation reloads it). A reservation written to Postgres after a reload's snapshot is
//! confirmed into the hash afterwards (`confirm`, idempotent), so a reload never forgets one.

use redis::aio::ConnectionManager;

use finestra_domain::pricing::Micros;

const RESERVE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2, 0} end
local f = 'm:' .. ARGV[1]
local cur = redis.call('HGET', KEYS[1], f)
if cur then return {0, tonumber(cur)} end
local v = redis.call('HMGET', KEYS[1], 'b', 'c', 'r')
local avail = tonumber(v[1]) + tonumber(v[2]) - tonumber(v[3])
if avail < tonumber(ARGV[2]) then return {-1, avail} end
redis.call('HINCRBY', KEYS[1], 'r', ARGV[2])
redis.call('HSET', KEYS[1], f, ARGV[2])
return {1, avail - tonumber(ARGV[2])}
"#;

const LOAD_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'b', ARGV[1], 'c', ARGV[2], 'r', ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

const CONFIRM_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'm:' .. ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'r', ARGV[2])
  return 1
end
return 0
"#;

// Amounts stay strings: Lua 5.1 prints large numbers in exponent form.
const END_LUA: &str = r#"
local f = 'm:' .. ARGV[1]
local a = redis.call('HGET', KEYS[1], f)
if not a then return 0 end
redis.call('HDEL', KEYS[1], f)
redis.call('HINCRBY', KEYS[1], 'r', '-' .. a)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'b', '-' .. a) end
return 1
"#;

/// What the reserve script answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotReserve {
    /// Reserved; `available` is what is left.
    Reserved {
        available: Micros,
    },
    /// Already reserved (a retry), with this amount.
    Existing {
        amount: Micros,
    },
    Insufficient {
        available: Micros,
    },
    /// The wallet is not cached: load it from Postgres and try again.
    NotLoaded,
}

/// A snapshot of a wallet in Postgres, to load.
pub struct Snapshot {
    pub balance: Micros,
    pub credit_limit: Micros,
    pub reserved: Micros,
    pub open: Vec<(String, Micros)>,
}

/// A wallet as the hash holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cached {
    pub balance: Micros,
    pub credit_limit: Micros,
    pub reserved: Micros,
    pub open: std::collections::BTreeMap<String, Micros>,
}

#[derive(Clone)]
pub struct HotWallets {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    reserve: redis::Script,
    load: redis::Script,
    confirm: redis::Script,
    end: redis::Script,
}

impl HotWallets {
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: std::time::Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            ttl_ms: ttl.as_millis().max(1) as u64,
            reserve: redis::Script::new(RESERVE_LUA),
            load: redis::Script::new(LOAD_LUA),
            confirm: redis::Script::new(CONFIRM_LUA),
            end: redis::Script::new(END_LUA),
        }
    }

    pub fn key(&self, tenant_id: &str) -> String {
        format!("{}:{{{tenant_id}}}:wallet", self.prefix)
    }

    pub async fn reserve(
        &self,
        tenant_id: &str,
        message_id: &str,
        amount: Micros,
    ) -> redis::RedisResult<HotReserve> {
        let mut conn = self.conn.clone();
        let (code, value): (i64, i64) = self
            .reserve
            .key(self.key(tenant_id))
            .arg(message_id)
            .arg(amount)
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            1 => HotReserve::Reserved { available: value },
            0 => HotReserve::Existing { amount: value },
            -1 => HotReserve::Insufficient { available: value },
            _ => HotReserve::NotLoaded,
        })
    }

    /// Loads a snapshot unless the hash exists already (another loader won).
    pub async fn load(&self, tenant_id: &str, s: &Snapshot) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut inv = self.load.key(self.key(tenant_id));
        inv.arg(s.balance)
            .arg(s.credit_limit)
            .arg(s.reserved)
            .arg(self.ttl_ms);
        for (message_id, amount) in &s.open {
            inv.arg(message_id).arg(*amount);
        }
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Makes sure durable open reservations are in the hash (no-op when they are, or when the
    /// hash is not loaded: the next load reads them from Postgres).
    pub async fn confirm(&self, items: &[(&str, &str, Micros)]) -> redis::RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (tenant_id, message_id, amount) in items {
            pipe.invoke_script(
                self.confirm
                    .key(self.key(tenant_id))
                    .arg(*message_id)
                    .arg(*amount),
            )
            .ignore();
        }
        self.run_pipeline(&pipe, &self.confirm).await
    }

    /// Runs a pipeline of `script` invocations (EVALSHA), loading the script into Redis first
    /// when Redis does not know it (a restart, SCRIPT FLUSH): pipelines do not fall back to
    /// EVAL by themselves.
    async fn run_pipeline(
        &self,
        pipe: &redis::Pipeline,
        script: &redis::Script,
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                script.prepare_invoke().load_async(&mut conn).await?;
                pipe.query_async::<()>(&mut conn).await
            }
            other => other,
        }
    }

    /// Ends reservations in the hash (`captured`: the balance is charged too). Idempotent: a
    /// reservation the hash does not hold is left alone.
    pub async fn end(&self, items: &[(&str, &str, bool)]) -> redis::RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (tenant_id, message_id, captured) in items {
            pipe.invoke_script(
                self.end
                    .key(self.key(tenant_id))
                    .arg(*message_id)
                    .arg(if *captured { "1" } else { "0" }),
            )
            .ignore();
        }
        self.run_pipeline(&pipe, &self.end).await
    }

    /// Drops the hash: the next reservation loads the wallet afresh (after a top-up or a
    /// credit-limit change).
    pub async fn forget(&self, tenant_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(tenant_id))
            .query_async::<()>(&mut conn)
            .await
    }

    /// The cached wallet, if loaded (for reconciliation).
    pub async fn cached(&self, tenant_id: &str) -> redis::RedisResult<Option<Cached>> {
        let mut conn = self.conn.clone();
        let fields: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.key(tenant_id))
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut c = Cached::default();
        for (field, value) in fields {
            match field.as_str() {
                "b" => c.balance = value,
                "c" => c.credit_limit = value,
                "r" => c.reserved = value,
                other => {
                    if let Some(id) = other.strip_prefix("m:") {
                        c.open.insert(id.to_owned(), value);
                    }
                }
            }
        }
        Ok(Some(c))
    }
}
