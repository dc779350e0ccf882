//! Response caching: the storage engine, keys and variants, the RFC 9111 rules, the
//! `Cache-Status` field, purge and invalidation. The caching rules are all here: the
//! proxy's cache phases (`proxy::Gateway`) are one-line calls into `phases`. Outside this
//! module the cache is only wired in: `runtime` compiles each route's `RouteCache` and
//! the `Settings` and applies them on reload (`configure`, `clear`), `context::Ctx`
//! carries the per-request `status::CacheCtx`, `proxy::admit` records the URL the client
//! asked for (for keys and invalidation), `Gateway::proxy_upstream_filter` answers
//! `only-if-cached`, and `admin` purges and refreshes the gauges.
//!
//! One engine (storage + cache lock) exists per process, because Pingora's
//! `session.cache.enable` wants `&'static` references; it is created when a config with a
//! `cache:` section is first applied and its bounds follow later reloads
//! (`configure`). Routes carry their compiled `RouteCache` in the snapshot.

pub mod clock;
pub mod key;
pub mod phases;
pub mod purge;
pub mod rules;
pub mod status;
pub mod storage;

use crate::config::model;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use prometheus::IntCounter;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
pub use storage::MemoryStorage;

/// `cache.max_object_size` when not set (and never above `cache.memory`).
pub const DEFAULT_MAX_OBJECT: u64 = 8 * 1024 * 1024;
/// `cache.lock_timeout` when not set.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

static STORAGE: OnceLock<&'static MemoryStorage> = OnceLock::new();
/// Cache locks by timeout: created once per distinct `lock_timeout`, never freed (Pingora
/// needs `&'static`; a reload that keeps the timeout keeps the lock).
static LOCKS: Mutex<Vec<(Duration, &'static CacheKeyLockImpl)>> = Mutex::new(Vec::new());

/// The process's storage, once a config with `cache:` was applied.
pub fn storage() -> Option<&'static MemoryStorage> {
    STORAGE.get().copied()
}

/// Global cache settings of one snapshot.
#[derive(Clone, Copy)]
pub struct Settings {
    pub memory: u64,
    pub max_object: u64,
    pub lock_timeout: Duration,
    pub lock: &'static CacheKeyLockImpl,
}

impl Settings {
    pub fn from_config(c: &model::Cache) -> Settings {
        let max_object = c
            .max_object_size
            .map(|s| s.0)
            .unwrap_or(DEFAULT_MAX_OBJECT)
            .min(c.memory.0);
        let lock_timeout = c.lock_timeout.map(|d| d.0).unwrap_or(DEFAULT_LOCK_TIMEOUT);
        Settings {
            memory: c.memory.0,
            max_object,
            lock_timeout,
            lock: lock_for(lock_timeout),
        }
    }
}

fn lock_for(timeout: Duration) -> &'static CacheKeyLockImpl {
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, l)) = locks.iter().find(|(t, _)| *t == timeout) {
        return *l;
    }
    // A writer holding the lock longer than the readers wait is given up on as well.
    let l: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(timeout));
    locks.push((timeout, l));
    l
}

/// Creates the storage on first use and applies the bounds of `settings` (a reload may
/// shrink or grow the memory bound; shrinking evicts at once).
pub fn configure(settings: &Settings) -> &'static MemoryStorage {
    let s = *STORAGE.get_or_init(|| {
        Box::leak(Box::new(MemoryStorage::new(
            settings.memory as usize,
            settings.max_object as usize,
        )))
    });
    s.set_limits(settings.memory as usize, settings.max_object as usize);
    s
}

/// Drops every stored response (the `cache:` section was removed by a reload).
pub fn clear() {
    if let Some(s) = storage() {
        s.clear();
    }
}

/// A route's compiled `cache:` section with its metric handles.
pub struct RouteCache {
    pub ttl: Option<Duration>,
    /// Extra request headers in the variant key, lowercased.
    pub vary: Vec<String>,
    pub store_set_cookie: bool,
    pub lookups: Lookups,
}

pub struct Lookups {
    pub hit: IntCounter,
    pub miss: IntCounter,
    pub stale: IntCounter,
    pub bypass: IntCounter,
}

impl RouteCache {
    pub fn compile(route: &str, c: &model::RouteCache) -> RouteCache {
        let m = &crate::metrics::metrics().cache_lookups;
        RouteCache {
            ttl: c.ttl.map(|d| d.0),
            vary: c.vary.iter().map(|v| v.to_ascii_lowercase()).collect(),
            store_set_cookie: c.store_set_cookie,
            lookups: Lookups {
                hit: m.with_label_values(&[route, "hit"]),
                miss: m.with_label_values(&[route, "miss"]),
                stale: m.with_label_values(&[route, "stale"]),
                bypass: m.with_label_values(&[route, "bypass"]),
            },
        }
    }
}

/// Copies the storage counters into the metrics (called when `/metrics` is scraped).
pub fn refresh_gauges() {
    static SERIAL: Mutex<()> = Mutex::new(());
    if let Some(s) = storage() {
        // Counters only move forward: add what happened since the last scrape.
        let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let st = s.stats();
        let m = crate::metrics::metrics();
        m.cache_stored_bytes.set(st.stored_bytes as i64);
        m.cache_entries.set(st.entries as i64);
        m.cache_memory_limit.set(s.limit() as i64);
        m.cache_evictions
            .inc_by(st.evictions.saturating_sub(m.cache_evictions.get()));
        m.cache_evicted_bytes
            .inc_by(st.evicted_bytes.saturating_sub(m.cache_evicted_bytes.get()));
    }
}
