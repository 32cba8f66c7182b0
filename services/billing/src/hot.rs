//! The hot wallet in Redis: one hash per tenant, `<prefix>:{<tenant>}:wallet` (the tenant in a
//! hash tag), so a reservation is one atomic script on one key.
//!
//! Fields: `b` balance, `c` credit limit, `r` reserved, and `m:<message_id>` → amount for every
//! open reservation. Postgres is the system of record: a missing hash is loaded from it, and
//! the hash expires a while after loading so any drift (a crash between a Postgres commit and
//! the Redis update) heals by itself. Top-ups and credit changes drop the hash (the next
//! reservation reloads it). A reservation written to Postgres after a reload's snapshot is
//! confirmed into the hash afterwards (`confirm`, idempotent), so a reload never forgets one.
//!
//! A reservation Postgres has ended (captured or released) leaves a short-lived tombstone in
//! `<prefix>:{<tenant>}:ended:<bucket>` (a hash per 10 s bucket, kept two buckets). It closes
//! two races with a reload: a snapshot read before a capture but loaded after it (the load
//! leaves that reservation out and charges the balance, as Postgres did), and a confirmation
//! that arrives after the capture (it does not put the reservation back). A snapshot read
//! after the capture does not list the reservation, so the tombstone changes nothing there.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

use finestra_domain::pricing::Micros;

// Reserves a batch of one tenant's messages, in order: ARGV = message, amount, message, ...
// Answers a (code, value) pair per message: 1 reserved (value: available after), 0 already
// reserved (value: its amount), -1 insufficient (value: available). {-2} when not loaded.
// Amounts stay strings in HINCRBY: Lua 5.1 prints large numbers in exponent form.
const RESERVE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local v = redis.call('HMGET', KEYS[1], 'b', 'c', 'r')
local avail = tonumber(v[1]) + tonumber(v[2]) - tonumber(v[3])
local out = {}
for i = 1, #ARGV, 2 do
  local f = 'm:' .. ARGV[i]
  local amount = tonumber(ARGV[i + 1])
  local cur = redis.call('HGET', KEYS[1], f)
  if cur then
    out[#out + 1] = 0; out[#out + 1] = tonumber(cur)
  elseif avail < amount then
    out[#out + 1] = -1; out[#out + 1] = avail
  else
    redis.call('HSET', KEYS[1], f, ARGV[i + 1])
    redis.call('HINCRBY', KEYS[1], 'r', ARGV[i + 1])
    avail = avail - amount
    out[#out + 1] = 1; out[#out + 1] = avail
  end
end
return out
"#;

// KEYS = wallet, tombstones of this bucket, of the previous one. ARGV = balance, credit limit,
// reserved, ttl ms, then message, amount, ... (the open reservations of the snapshot). A
// reservation with a tombstone ended after the snapshot was read: it is left out, and a
// capture is charged to the balance.
const LOAD_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'b', ARGV[1], 'c', ARGV[2], 'r', ARGV[3])
for i = 5, #ARGV, 2 do
  local ended = redis.call('HGET', KEYS[2], ARGV[i]) or redis.call('HGET', KEYS[3], ARGV[i])
  if ended then
    redis.call('HINCRBY', KEYS[1], 'r', '-' .. ARGV[i + 1])
    if ended == 'c' then redis.call('HINCRBY', KEYS[1], 'b', '-' .. ARGV[i + 1]) end
  else
    redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

// KEYS as LOAD_LUA's. ARGV = message, amount, ... A reservation already ended is not put back.
const CONFIRM_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = 0
for i = 1, #ARGV, 2 do
  local ended = redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1
    or redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1
  if not ended and redis.call('HSETNX', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'r', ARGV[i + 1])
    n = n + 1
  end
end
return n
"#;

// KEYS = wallet, tombstones of this bucket. ARGV = tombstone ttl ms, then message, how, ...
// where how is c (captured in Postgres), r (released there) or u (undo a hold Redis made that
// Postgres does not have: no tombstone). The tombstone is written even when the wallet is not
// loaded: that is when a reload may be reading an older snapshot.
const END_LUA: &str = r#"
local n = 0
local marked = false
for i = 2, #ARGV, 2 do
  local how = ARGV[i + 1]
  if how ~= 'u' then
    redis.call('HSET', KEYS[2], ARGV[i], how)
    marked = true
  end
  local f = 'm:' .. ARGV[i]
  local a = redis.call('HGET', KEYS[1], f)
  if a then
    redis.call('HDEL', KEYS[1], f)
    redis.call('HINCRBY', KEYS[1], 'r', '-' .. a)
    if how == 'c' then redis.call('HINCRBY', KEYS[1], 'b', '-' .. a) end
    n = n + 1
  end
end
if marked then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return n
"#;

/// Width of a tombstone bucket; a tombstone lives one to two of them, far longer than a
/// reload's snapshot-to-load or a reservation's write-to-confirm.
const TOMBSTONE_BUCKET_MS: u64 = 10_000;

/// How a reservation ends in the hot wallet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotEnd {
    /// Captured in Postgres: the hold goes and the balance is charged.
    Captured,
    /// Released in Postgres: the hold goes.
    Released,
    /// A hold Redis made for a request Postgres did not store as open: the hold goes, and no
    /// tombstone (Postgres's own reservation of that id, if open, stays loadable).
    Undo,
}

impl HotEnd {
    fn code(self) -> &'static str {
        match self {
            HotEnd::Captured => "c",
            HotEnd::Released => "r",
            HotEnd::Undo => "u",
        }
    }
}

/// Groups `(tenant, rest)` items by tenant, keeping their order within each tenant.
fn by_tenant<'a, T>(items: &'a [(&'a str, T)]) -> BTreeMap<&'a str, Vec<&'a T>> {
    let mut groups: BTreeMap<&str, Vec<&T>> = BTreeMap::new();
    for (tenant, rest) in items {
        groups.entry(tenant).or_default().push(rest);
    }
    groups
}

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

    /// The tombstone hashes of the current bucket and of the previous one.
    fn tombstones(&self, tenant_id: &str) -> [String; 2] {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let bucket = now_ms / TOMBSTONE_BUCKET_MS;
        [bucket, bucket.saturating_sub(1)]
            .map(|b| format!("{}:{{{tenant_id}}}:ended:{b}", self.prefix))
    }

    /// The keys a load or a confirmation reads: the wallet, then both tombstone buckets.
    fn wallet_keys(&self, tenant_id: &str) -> [String; 3] {
        let [current, previous] = self.tombstones(tenant_id);
        [self.key(tenant_id), current, previous]
    }

    /// Reserves one tenant's messages in one script call, in order. `None` when the wallet
    /// is not cached (load it and try again).
    pub async fn reserve(
        &self,
        tenant_id: &str,
        items: &[(&str, Micros)],
    ) -> redis::RedisResult<Option<Vec<HotReserve>>> {
        let mut conn = self.conn.clone();
        let mut inv = self.reserve.key(self.key(tenant_id));
        for (message_id, amount) in items {
            inv.arg(*message_id).arg(*amount);
        }
        let out: Vec<i64> = inv.invoke_async(&mut conn).await?;
        if out.first() == Some(&-2) && out.len() == 1 {
            return Ok(None);
        }
        let answers = out
            .chunks(2)
            .map(|pair| match pair {
                [1, available] => Ok(HotReserve::Reserved {
                    available: *available,
                }),
                [0, amount] => Ok(HotReserve::Existing { amount: *amount }),
                [-1, available] => Ok(HotReserve::Insufficient {
                    available: *available,
                }),
                _ => Err(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected answer of the reserve script",
                ))),
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(Some(answers))
    }

    /// Loads a snapshot unless the hash exists already (another loader won).
    pub async fn load(&self, tenant_id: &str, s: &Snapshot) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut inv = self.load.prepare_invoke();
        for key in self.wallet_keys(tenant_id) {
            inv.key(key);
        }
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
    /// hash is not loaded: the next load reads them from Postgres). One script call per tenant.
    pub async fn confirm(&self, items: &[(&str, &str, Micros)]) -> redis::RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&str, (&str, Micros))> =
            items.iter().map(|(t, m, a)| (*t, (*m, *a))).collect();
        let mut pipe = redis::pipe();
        for (tenant_id, messages) in by_tenant(&pairs) {
            let mut inv = self.confirm.prepare_invoke();
            for key in self.wallet_keys(tenant_id) {
                inv.key(key);
            }
            for (message_id, amount) in messages {
                inv.arg(*message_id).arg(*amount);
            }
            pipe.invoke_script(&inv).ignore();
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

    /// Ends reservations in the hash (a capture charges the balance too) and leaves their
    /// tombstones. Idempotent: a reservation the hash does not hold is left alone. One script
    /// call per tenant.
    pub async fn end(&self, items: &[(&str, &str, HotEnd)]) -> redis::RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let pairs: Vec<(&str, (&str, HotEnd))> =
            items.iter().map(|(t, m, h)| (*t, (*m, *h))).collect();
        let mut pipe = redis::pipe();
        for (tenant_id, messages) in by_tenant(&pairs) {
            let [current, _] = self.tombstones(tenant_id);
            let mut inv = self.end.key(self.key(tenant_id));
            inv.key(current).arg(2 * TOMBSTONE_BUCKET_MS);
            for (message_id, how) in messages {
                inv.arg(*message_id).arg(how.code());
            }
            pipe.invoke_script(&inv).ignore();
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
