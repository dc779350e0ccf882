//! The `redis` backend: counts shared by several gateway instances in one Redis server.
//!
//! Every update is a Lua script, so it is atomic in Redis. Times cross as microseconds
//! since the epoch (Lua numbers are doubles: exact up to 2^53 µs, year 2255). Keys are
//! `gatehouse:<limit id>:<sha256 of the client key>` (plus `:<window>` for quotas), so
//! instances with the same config name the same entries, and they expire on their own.
//!
//! Each call waits at most `OP_TIMEOUT`; a failure marks the store down, counts
//! `gatehouse_limit_store_errors_total`, and the request path stops calling Redis until
//! the sync thread's probe succeeds again (see `store::Store::sync_once`).

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// The longest a request waits for Redis.
pub const OP_TIMEOUT: Duration = Duration::from_millis(50);
/// Background syncs may take longer: nobody waits for them.
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(1000);

const RATE_CHECK: &str = r"
local now, t, tol = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + t
if new - now <= tol then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
  return {1, new}
end
return {0, tat}
";

const RATE_REFUND: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > 0 then redis.call('SET', KEYS[1], string.format('%d', tat - tonumber(ARGV[1])), 'KEEPTTL') end
return 1
";

/// ARGV: now, interval, then (count, first) per key. Charges each key's admissions from
/// the first of them (exact when they came at the limit's pace, never undercharging).
const RATE_SYNC: &str = r"
local now, t = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i, k in ipairs(KEYS) do
  local n, first = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', k) or '0')
  if tat < first then tat = first end
  tat = tat + n * t
  if tat > now then
    redis.call('SET', k, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  out[i] = tat
end
return out
";

const QUOTA_CHECK: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then
  c = redis.call('INCR', KEYS[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, c}
end
return {0, c}
";

const QUOTA_REFUND: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c > 0 then redis.call('DECR', KEYS[1]) end
return 1
";

/// ARGV: (delta, ttl ms) per key; returns the totals.
const QUOTA_ADD: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  local n = redis.call('INCRBY', k, ARGV[2 * i - 1])
  if n < 0 then redis.call('SET', k, '0') n = 0 end
  redis.call('PEXPIRE', k, ARGV[2 * i])
  out[i] = n
end
return out
";

pub struct Redis {
    client: Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    rate_check: Script,
    rate_refund: Script,
    rate_sync: Script,
    quota_check: Script,
    quota_refund: Script,
    quota_add: Script,
}

/// A Redis call gave no answer (why is logged and counted where it happened, `mark_down`).
#[derive(Debug)]
pub struct Unavailable;

/// The Redis name of a client key under a limit.
pub fn entry_name(limit_id: &str, key: &[u8], window: Option<u64>) -> String {
    let digest = sha2::Sha256::digest(key);
    let hex = hex::encode(&digest[..16]);
    match window {
        Some(w) => format!("gatehouse:{limit_id}:{hex}:{w}"),
        None => format!("gatehouse:{limit_id}:{hex}"),
    }
}

pub fn us(ns: u64) -> u64 {
    ns / 1_000
}

impl Redis {
    /// Parses the URL; connects later (`connect`), from the sync thread.
    pub fn new(url: &str) -> Result<Redis, String> {
        let client = Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(Redis {
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            rate_check: Script::new(RATE_CHECK),
            rate_refund: Script::new(RATE_REFUND),
            rate_sync: Script::new(RATE_SYNC),
            quota_check: Script::new(QUOTA_CHECK),
            quota_refund: Script::new(QUOTA_REFUND),
            quota_add: Script::new(QUOTA_ADD),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    fn conn(&self) -> Result<MultiplexedConnection, Unavailable> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Unavailable)
    }

    fn mark_down(&self, why: &str, op: &str) {
        crate::metrics::metrics()
            .store_errors
            .with_label_values(&["redis", op])
            .inc();
        crate::metrics::metrics()
            .store_up
            .with_label_values(&["redis"])
            .set(0);
        if self.up.swap(false, Relaxed) {
            tracing::warn!(
                "limit store (redis) unavailable: {why}; on_error applies until it is back"
            );
        }
    }

    fn set_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!("limit store (redis) available");
        }
        crate::metrics::metrics()
            .store_up
            .with_label_values(&["redis"])
            .set(1);
    }

    /// (Re)connects and pings: how the store comes back after an outage.
    pub async fn probe(&self) -> bool {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(OP_TIMEOUT * 4)
            .set_response_timeout(OP_TIMEOUT * 4);
        let mut conn = match self.conn() {
            Ok(c) if self.is_up() => c,
            _ => {
                let fut = self
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg);
                match tokio::time::timeout(OP_TIMEOUT * 4, fut).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        self.mark_down(&e.to_string(), "connect");
                        return false;
                    }
                    Err(_) => {
                        self.mark_down("connect timed out", "connect");
                        return false;
                    }
                }
            }
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(OP_TIMEOUT * 4, ping).await {
            Ok(Ok(_)) => {
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                self.set_up();
                true
            }
            Ok(Err(e)) => {
                self.mark_down(&e.to_string(), "connect");
                false
            }
            Err(_) => {
                self.mark_down("ping timed out", "connect");
                false
            }
        }
    }

    /// Runs one call with a deadline; failures mark the store down.
    async fn call<T, F>(&self, op: &str, limit: Duration, f: F) -> Result<T, Unavailable>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.mark_down(&e.to_string(), op);
                Err(Unavailable)
            }
            Err(_) => {
                self.mark_down("timed out", op);
                Err(Unavailable)
            }
        }
    }

    /// Exact GCRA in Redis; returns (admitted, tat in ns).
    pub async fn rate_check(
        &self,
        name: &str,
        now: u64,
        interval: u64,
        tolerance: u64,
    ) -> Result<(bool, u64), Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.rate_check.prepare_invoke();
        inv.key(name)
            .arg(us(now))
            .arg(us(interval).max(1))
            .arg(us(tolerance));
        let (ok, tat): (u8, u64) = self
            .call("check", OP_TIMEOUT, inv.invoke_async(&mut c))
            .await?;
        Ok((ok == 1, tat * 1_000))
    }

    pub async fn rate_refund(&self, name: &str, interval: u64) -> Result<(), Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.rate_refund.prepare_invoke();
        inv.key(name).arg(us(interval).max(1));
        self.call::<u8, _>("check", OP_TIMEOUT, inv.invoke_async(&mut c))
            .await
            .map(drop)
    }

    /// Merges (name, count, first) admissions of one limit; returns the shared tats (ns).
    pub async fn rate_sync(
        &self,
        entries: &[(String, u32, u64)],
        now: u64,
        interval: u64,
    ) -> Result<Vec<u64>, Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.rate_sync.prepare_invoke();
        inv.arg(us(now)).arg(us(interval).max(1));
        for (name, count, first) in entries {
            inv.key(name.as_str()).arg(*count).arg(us(*first));
        }
        let tats: Vec<u64> = self
            .call("sync", SYNC_TIMEOUT, inv.invoke_async(&mut c))
            .await?;
        Ok(tats.into_iter().map(|t| t * 1_000).collect())
    }

    /// Exact quota in Redis; returns (admitted, count after).
    pub async fn quota_check(
        &self,
        name: &str,
        limit: u64,
        ttl_ms: u64,
    ) -> Result<(bool, u64), Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.quota_check.prepare_invoke();
        inv.key(name).arg(limit).arg(ttl_ms.max(1));
        let (ok, n): (u8, u64) = self
            .call("check", OP_TIMEOUT, inv.invoke_async(&mut c))
            .await?;
        Ok((ok == 1, n))
    }

    pub async fn quota_refund(&self, name: &str) -> Result<(), Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.quota_refund.prepare_invoke();
        inv.key(name);
        self.call::<u8, _>("check", OP_TIMEOUT, inv.invoke_async(&mut c))
            .await
            .map(drop)
    }

    /// The count of one quota entry (0 when absent).
    pub async fn quota_load(&self, name: &str) -> Result<u64, Unavailable> {
        let mut c = self.conn()?;
        let mut cmd = redis::cmd("GET");
        cmd.arg(name);
        let get = cmd.query_async::<Option<u64>>(&mut c);
        Ok(self.call("load", OP_TIMEOUT, get).await?.unwrap_or(0))
    }

    /// Adds (name, delta, ttl ms) to quota entries; returns the totals.
    pub async fn quota_add(&self, entries: &[(String, i64, u64)]) -> Result<Vec<u64>, Unavailable> {
        let mut c = self.conn()?;
        let mut inv = self.quota_add.prepare_invoke();
        for (name, delta, ttl) in entries {
            inv.key(name.as_str()).arg(*delta).arg((*ttl).max(1));
        }
        self.call("sync", SYNC_TIMEOUT, inv.invoke_async(&mut c))
            .await
    }

    /// Reads several quota entries at once.
    pub async fn quota_read(&self, names: &[String]) -> Result<Vec<u64>, Unavailable> {
        let mut c = self.conn()?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(names);
        let mget = cmd.query_async::<Vec<Option<u64>>>(&mut c);
        let v = self.call("sync", SYNC_TIMEOUT, mget).await?;
        Ok(v.into_iter().map(|n| n.unwrap_or(0)).collect())
    }
}
