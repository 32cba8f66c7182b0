//! Dispatch's Redis state, each key in its tenant's hash slot:
//!
//!   fin:{<tenant>}:idem:<message_id>   the request hash of an idempotency key: a 10 s lease
//!                                      while the request is decided, 24 h once stored; the
//!                                      fast path in front of the durable primary key
//!   fin:{<tenant>}:tier                sorted set: user → newest business-initiated send (µs);
//!                                      the tier limit's distinct users of the rolling 24 h
//!   fin:{<tenant>}:tier:v              the set was loaded from Postgres (it may be lost; it is
//!                                      rebuilt on a miss)
//!   fin:{<tenant>}:mcap:<user>         sorted set: the user's marketing templates of the
//!                                      frequency cap's window (message → accepted, µs), and
//!                                      `~` at +inf once loaded from Postgres
//!   fin:{<tenant>}:rate                the tenant's SendMessage bucket (GCRA "theoretical
//!                                      arrival time", µs; `domain::fairness::RateLimit`);
//!                                      shared by every replica, lost only to a fuller bucket

use redis::Script;
use redis::aio::ConnectionManager;

const DAY_MICROS: i64 = 24 * 3_600 * 1_000_000;
const IDEMPOTENCY_SECONDS: u64 = 24 * 3_600;
/// A claim lives this long until its request is decided: a process that dies mid-request
/// leaves the key blocked only briefly (the retry then finds the durable row, or none).
const CLAIM_LEASE_SECONDS: u64 = 10;

/// Counts `user` in the tenant's 24 h set unless the limit is reached. Returns 1 (newly
/// counted), 0 (already counted), -1 (limit reached), -2 (not loaded).
const TIER_ADMIT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[4])
  return 0
end
local limit = tonumber(ARGV[3])
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then return -1 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Loads (user, time) pairs and marks the set loaded.
const TIER_LOAD: &str = r#"
for i = 1, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[#ARGV])
return 1
"#;

/// Counts marketing message ARGV[4] (accepted at ARGV[1], µs) for the user unless the cap
/// (ARGV[3] per window, sends at or before ARGV[2] no longer count) is reached. Returns 1
/// (counted), 0 (that message counted already: a replay), -1 (capped), -2 (not loaded).
const CAP_ADMIT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 0 end
if redis.call('ZCARD', KEYS[1]) - 1 >= tonumber(ARGV[3]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"#;

/// Loads a user's marketing sends of the window (message, accepted µs pairs), marked loaded.
const CAP_LOAD: &str = r#"
redis.call('ZADD', KEYS[1], '+inf', '~')
for i = 1, #ARGV - 1, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV])
return 1
"#;

/// Takes a user out again if the count it got at `at` was its only one (a send refused later).
const TIER_UNDO: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#;

/// A user counted at ARGV[2] (µs) by a message that failed: counted again at ARGV[3] (the
/// newest other send to them that did not fail) or not at all (ARGV[3] empty). A count newer
/// than ARGV[2] is another send's and stays. Idempotent, so a replayed status repeats it.
const TIER_FORGET_FAILED: &str = r#"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
end
return 1
"#;

/// The idempotency claim (KEYS[2]) and the tenant's rate bucket (KEYS[1]) in one round trip.
/// A key already held answers `{2}` (same request) or `{3}` (another) without touching the
/// bucket: a retry of a send is not a new call. Otherwise `{0, wait_micros}` over the rate
/// (nothing claimed), else `{1}` claimed. The time is Redis's own, so replicas with clocks
/// apart share one bucket. ARGV: interval µs, burst, hash, lease s. Numbers stay below 2^53
/// (µs since 1970), so Lua's doubles hold them exactly; `%.0f` writes them back whole.
const ADMIT_AND_CLAIM: &str = r#"
local held = redis.call('GET', KEYS[2])
if held == ARGV[3] then return {2, 0, ''} end
if held then return {3, 0, ''} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ahead = tat - now
local allowance = (burst - 1) * interval
if ahead > allowance then return {0, ahead - allowance, ''} end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
if ARGV[5] == '1' then
  local window = redis.call('GET', KEYS[3])
  if window then return {1, 1, window} end
end
return {1, 0, ''}
"#;

/// What [`Hot::admit_and_claim`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Within the tenant's rate; the key's claim, and for a new claim the pair's window as
    /// Redis holds it.
    Claimed(Claim, HotWindow),
    /// Over the tenant's rate: a call would pass after this many µs.
    RateLimited { wait_micros: i64 },
}

/// A pair's window value read with the claim (one round trip for both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotWindow {
    /// Not read: the claim was not new, or the user is no plausible key.
    NotRead,
    /// Redis holds no value: the durable record decides.
    Absent,
    /// Redis's value (`finestra_registry::windows::decode`).
    Held(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierVerdict {
    Counted,
    AlreadyCounted,
    LimitReached,
    NotLoaded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key.
    New,
    /// Seen before with the same request.
    Same,
    /// Seen before with another request.
    Conflict,
}

#[derive(Clone)]
pub struct Hot {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    load: Script,
    undo: Script,
    admit_and_claim: Script,
    forget_failed: Script,
    cap_admit: Script,
    cap_load: Script,
    /// Keys of stored messages, kept for a day by [`confirm_keys`] in pipelines.
    confirms: tokio::sync::mpsc::Sender<String>,
}

/// Stored messages' keys queued at most for confirming; beyond, a key keeps its short lease
/// (the stored row answers a retry all the same).
const CONFIRMS_QUEUED: usize = 65_536;

/// Keeps the keys of stored messages for a day, a pipeline of `EXPIRE`s for whatever queued
/// while the previous one was out: one round trip for many sends instead of one each.
async fn confirm_keys(mut conn: ConnectionManager, mut keys: tokio::sync::mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(512);
    while keys.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        for key in batch.drain(..) {
            pipe.cmd("EXPIRE")
                .arg(key)
                .arg(IDEMPOTENCY_SECONDS)
                .ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "keeping idempotency keys in Redis failed");
        }
    }
}

impl Hot {
    /// Must be called inside the runtime: it starts the task that confirms keys.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        let (confirms, keys) = tokio::sync::mpsc::channel(CONFIRMS_QUEUED);
        tokio::spawn(confirm_keys(conn.clone(), keys));
        Self {
            confirms,
            conn,
            prefix: prefix.to_owned(),
            admit: Script::new(TIER_ADMIT),
            load: Script::new(TIER_LOAD),
            undo: Script::new(TIER_UNDO),
            admit_and_claim: Script::new(ADMIT_AND_CLAIM),
            forget_failed: Script::new(TIER_FORGET_FAILED),
            cap_admit: Script::new(CAP_ADMIT),
            cap_load: Script::new(CAP_LOAD),
        }
    }

    /// A pair's window from what the claim read of it: Redis's value, else the durable
    /// record; not read yet, as [`Hot::window`] reads it.
    pub async fn window_after_claim(
        &self,
        prefetched: HotWindow,
        pool: &sqlx::PgPool,
        tenant_id: &str,
        phone_number_id: &str,
        user: &str,
    ) -> Result<finestra_domain::WindowState, finestra_registry::windows::WindowReadError> {
        match prefetched {
            HotWindow::Held(value) => Ok(finestra_registry::windows::decode(&value)),
            HotWindow::Absent => {
                finestra_registry::windows::read_durable(pool, tenant_id, phone_number_id, user)
                    .await
            }
            HotWindow::NotRead => self.window(pool, tenant_id, phone_number_id, user).await,
        }
    }

    /// A pair's window through the window service's read model (this Redis, else Postgres).
    pub async fn window(
        &self,
        pool: &sqlx::PgPool,
        tenant_id: &str,
        phone_number_id: &str,
        user: &str,
    ) -> Result<finestra_domain::WindowState, finestra_registry::windows::WindowReadError> {
        finestra_registry::windows::read(
            &self.conn,
            pool,
            &self.prefix,
            tenant_id,
            phone_number_id,
            user,
        )
        .await
    }

    /// Many users' windows on one number (a campaign's quote), in `users`' order.
    pub async fn windows(
        &self,
        pool: &sqlx::PgPool,
        tenant_id: &str,
        phone_number_id: &str,
        users: &[String],
    ) -> Result<Vec<finestra_domain::WindowState>, finestra_registry::windows::WindowReadError>
    {
        finestra_registry::windows::read_many(
            &self.conn,
            pool,
            &self.prefix,
            tenant_id,
            phone_number_id,
            users,
        )
        .await
    }

    fn idem_key(&self, tenant_id: &str, message_id: &str) -> String {
        format!("{}:{{{tenant_id}}}:idem:{message_id}", self.prefix)
    }

    fn tier_keys(&self, tenant_id: &str) -> (String, String) {
        let k = format!("{}:{{{tenant_id}}}:tier", self.prefix);
        let v = format!("{k}:v");
        (k, v)
    }

    /// Claims an idempotency key for a request (`SET NX`), or says whose it is.
    pub async fn claim(
        &self,
        tenant_id: &str,
        message_id: &str,
        hash: &[u8],
    ) -> redis::RedisResult<Claim> {
        let mut conn = self.conn.clone();
        let key = self.idem_key(tenant_id, message_id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(hash)
            .arg("NX")
            .arg("EX")
            .arg(CLAIM_LEASE_SECONDS)
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(Claim::New);
        }
        let held: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(match held {
            Some(h) if h == hash => Claim::Same,
            Some(_) => Claim::Conflict,
            // Expired between the two calls: claim again.
            None => Claim::New,
        })
    }

    /// Claims the key and, for a new one, takes a call from the tenant's rate bucket: one
    /// round trip for both (the claim and the bucket share the tenant's hash slot).
    /// `window_of`: the (number, user) whose window a new claim reads in the same script (its
    /// key shares the tenant's slot); `None` reads none.
    pub async fn admit_and_claim(
        &self,
        tenant_id: &str,
        message_id: &str,
        hash: &[u8],
        rate: finestra_domain::fairness::RateLimit,
        window_of: Option<(&str, &str)>,
    ) -> redis::RedisResult<Admitted> {
        let mut conn = self.conn.clone();
        let window_key = window_of.map(|(number, user)| {
            finestra_registry::windows::key(&self.prefix, tenant_id, number, user)
        });
        let rate_key = format!("{}:{{{tenant_id}}}:rate", self.prefix);
        let (code, detail, window): (i64, i64, String) = self
            .admit_and_claim
            .key(&rate_key)
            .key(self.idem_key(tenant_id, message_id))
            // Unread without a pair; a key of the same slot keeps the script cluster-safe.
            .key(window_key.as_deref().unwrap_or(&rate_key))
            .arg(rate.interval_micros)
            .arg(rate.burst)
            .arg(hash)
            .arg(CLAIM_LEASE_SECONDS)
            .arg(if window_key.is_some() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            0 => Admitted::RateLimited {
                wait_micros: detail.max(1),
            },
            2 => Admitted::Claimed(Claim::Same, HotWindow::NotRead),
            3 => Admitted::Claimed(Claim::Conflict, HotWindow::NotRead),
            _ if window_key.is_none() => Admitted::Claimed(Claim::New, HotWindow::NotRead),
            _ if detail == 1 => Admitted::Claimed(Claim::New, HotWindow::Held(window)),
            _ => Admitted::Claimed(Claim::New, HotWindow::Absent),
        })
    }

    /// Keeps a key for 24 h once its message is stored (soon, with others: [`confirm_keys`]).
    pub fn confirm(&self, tenant_id: &str, message_id: &str) {
        if self
            .confirms
            .try_send(self.idem_key(tenant_id, message_id))
            .is_err()
        {
            tracing::debug!("the idempotency key queue is full: the key keeps its lease");
        }
    }

    /// Frees a key whose request was refused (nothing was sent: a retry decides afresh).
    pub async fn unclaim(&self, tenant_id: &str, message_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.idem_key(tenant_id, message_id))
            .query_async::<()>(&mut conn)
            .await
    }

    pub async fn tier_admit(
        &self,
        tenant_id: &str,
        user: &str,
        limit: Option<i64>,
        now_micros: i64,
    ) -> redis::RedisResult<TierVerdict> {
        let (k, v) = self.tier_keys(tenant_id);
        let mut conn = self.conn.clone();
        let answer: i64 = self
            .admit
            .key(&k)
            .key(&v)
            .arg(now_micros)
            .arg(now_micros - DAY_MICROS)
            .arg(limit.unwrap_or(-1))
            .arg(user)
            .arg((DAY_MICROS + 3_600_000_000) / 1_000)
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer {
            1 => TierVerdict::Counted,
            0 => TierVerdict::AlreadyCounted,
            -1 => TierVerdict::LimitReached,
            _ => TierVerdict::NotLoaded,
        })
    }

    /// Loads the tenant's 24 h set from the durable record.
    pub async fn tier_load(
        &self,
        tenant_id: &str,
        users: &[(String, i64)],
    ) -> redis::RedisResult<()> {
        let (k, v) = self.tier_keys(tenant_id);
        let mut conn = self.conn.clone();
        let mut call = self.load.key(&k);
        call.key(&v);
        for (user, at) in users {
            call.arg(user).arg(*at);
        }
        call.arg((DAY_MICROS + 3_600_000_000) / 1_000);
        call.invoke_async::<i64>(&mut conn).await.map(|_| ())
    }

    /// A business-initiated message to `user` accepted at `failed_at` failed: the user counts
    /// only for `still` (the newest other send to them that did not fail), or not at all.
    pub async fn tier_forget_failed(
        &self,
        tenant_id: &str,
        user: &str,
        failed_at: i64,
        still: Option<i64>,
    ) -> redis::RedisResult<()> {
        let (k, _) = self.tier_keys(tenant_id);
        let mut conn = self.conn.clone();
        self.forget_failed
            .key(&k)
            .arg(user)
            .arg(failed_at)
            .arg(still.map(|s| s.to_string()).unwrap_or_default())
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }

    pub async fn tier_undo(
        &self,
        tenant_id: &str,
        user: &str,
        at_micros: i64,
    ) -> redis::RedisResult<()> {
        let (k, _) = self.tier_keys(tenant_id);
        let mut conn = self.conn.clone();
        self.undo
            .key(&k)
            .arg(user)
            .arg(at_micros.to_string())
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }

    fn cap_key(&self, tenant_id: &str, user: &str) -> String {
        format!("{}:{{{tenant_id}}}:mcap:{user}", self.prefix)
    }

    /// Counts marketing message `message_id` to `user` under the tenant's frequency cap (the
    /// same verdicts as the tier's).
    pub async fn cap_admit(
        &self,
        tenant_id: &str,
        user: &str,
        message_id: &str,
        cap: finestra_domain::frequency::FrequencyCap,
        now: finestra_domain::Timestamp,
    ) -> redis::RedisResult<TierVerdict> {
        let mut conn = self.conn.clone();
        let answer: i64 = self
            .cap_admit
            .key(self.cap_key(tenant_id, user))
            .arg(now.micros())
            .arg(cap.cutoff(now))
            .arg(cap.max)
            .arg(message_id)
            .arg(cap.window_micros / 1_000 + 3_600_000)
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer {
            1 => TierVerdict::Counted,
            0 => TierVerdict::AlreadyCounted,
            -1 => TierVerdict::LimitReached,
            _ => TierVerdict::NotLoaded,
        })
    }

    /// Loads a user's marketing sends of the window from the durable record.
    pub async fn cap_load(
        &self,
        tenant_id: &str,
        user: &str,
        sends: &[(String, i64)],
        cap: finestra_domain::frequency::FrequencyCap,
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut call = self.cap_load.key(self.cap_key(tenant_id, user));
        for (message_id, at) in sends {
            call.arg(message_id).arg(*at);
        }
        call.arg(cap.window_micros / 1_000 + 3_600_000);
        call.invoke_async::<i64>(&mut conn).await.map(|_| ())
    }

    /// Takes a marketing message out of its user's count (refused after it was counted, or
    /// failed: it reached nobody). Idempotent.
    pub async fn cap_forget(
        &self,
        tenant_id: &str,
        user: &str,
        message_id: &str,
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.cap_key(tenant_id, user))
            .arg(message_id)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }
}
