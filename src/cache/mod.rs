//! Response caching: the storage engine, keys and variants, the RFC 9111 rules, the
//! `Cache-Status` field, purge and invalidation. The caching rules are all here: the
//! proxy's cache phases (`proxy::Gateway`) are one-line calls into `phases`. Outside this
//! module the cache is only wired in: `runtime` compiles each route's `RouteCache` and
//! binds the engine's `Cache` into the snapshot (`Engine::bind`), `context::Ctx` carries
//! the per-request `status::CacheCtx`, `proxy::admit` records the URL the client asked
//! for (for keys and invalidation), `Gateway::proxy_upstream_filter` answers
//! `only-if-cached`, and `admin` purges and refreshes the gauges.
//!
//! State: an `Engine` per process, owned by `runtime::Resources` (so reached through
//! `Shared`), holds the storage and the cache locks. Pingora's `session.cache.enable`
//! wants `&'static` references, so the engine leaks them, once each, in `leak_for_pingora`
//! (the storage on first use, a lock per distinct `lock_timeout`); a reload that keeps
//! the cache reuses them, so stored responses survive reloads. Each snapshot carries a
//! `Cache` (storage, bounds, lock and the process clock) made by `Engine::bind` as the
//! last step of compiling it; routes carry their compiled `RouteCache`.
//!
//! Layering: the cache depends on `config`, `clock`, `metrics` and `path`, never on
//! `runtime` (which builds it) or above.

pub mod key;
pub mod phases;
pub mod purge;
pub mod rules;
pub mod status;
pub mod storage;

use crate::clock::Clock;
use crate::config::model;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use prometheus::IntCounter;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
pub use storage::MemoryStorage;

/// `cache.max_object_size` when not set (and never above `cache.memory`).
pub const DEFAULT_MAX_OBJECT: u64 = 8 * 1024 * 1024;
/// `cache.lock_timeout` when not set.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The top-level `cache:` section, compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub memory: u64,
    pub max_object: u64,
    pub lock_timeout: Duration,
}

impl Settings {
    pub fn from_config(c: &model::Cache) -> Settings {
        let max_object = c
            .max_object_size
            .map(|s| s.0)
            .unwrap_or(DEFAULT_MAX_OBJECT)
            .min(c.memory.0);
        Settings {
            memory: c.memory.0,
            max_object,
            lock_timeout: c.lock_timeout.map(|d| d.0).unwrap_or(DEFAULT_LOCK_TIMEOUT),
        }
    }
}

/// The cache as one snapshot sees it: what the proxy's cache phases need.
pub struct Cache {
    pub storage: &'static MemoryStorage,
    pub settings: Settings,
    pub lock: &'static CacheKeyLockImpl,
    /// The process clock: every freshness, age and stale-window decision reads it.
    pub clock: Arc<Clock>,
}

/// The process's cache state: the storage and the cache locks, created on first use and
/// kept for the life of the process (see the module doc).
#[derive(Default)]
pub struct Engine {
    storage: OnceLock<&'static MemoryStorage>,
    /// Cache locks by timeout: a reload that keeps the timeout keeps the lock.
    locks: Mutex<Vec<(Duration, &'static CacheKeyLockImpl)>>,
    /// `/metrics` scrapes copy counters one at a time (see `refresh_gauges`).
    gauges: Mutex<()>,
}

/// The one place cache state is leaked: Pingora's `session.cache.enable` takes
/// `&'static` storage and lock. An `Engine` calls it at most once for its storage and
/// once per distinct lock timeout, and lives as long as the process.
fn leak_for_pingora<T: ?Sized>(value: Box<T>) -> &'static T {
    Box::leak(value)
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// The storage, once a config with `cache:` was compiled (gauges, tests).
    pub fn storage(&self) -> Option<&'static MemoryStorage> {
        self.storage.get().copied()
    }

    fn lock_for(&self, timeout: Duration) -> &'static CacheKeyLockImpl {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, l)) = locks.iter().find(|(t, _)| *t == timeout) {
            return *l;
        }
        // A writer holding the lock longer than the readers wait is given up on as well.
        let l: &'static CacheKeyLockImpl = leak_for_pingora(CacheLock::new_boxed(timeout));
        locks.push((timeout, l));
        l
    }

    /// The cache of a config being compiled, and its bounds applied to the storage: a
    /// shrink evicts at once, and without a `cache:` section every stored response is
    /// dropped. Compile calls this last, after every step that can fail, so a refused
    /// config never touches the running cache.
    pub fn bind(&self, section: Option<&model::Cache>, clock: &Arc<Clock>) -> Option<Cache> {
        let Some(section) = section else {
            if let Some(s) = self.storage() {
                s.clear();
            }
            return None;
        };
        let settings = Settings::from_config(section);
        let storage = *self.storage.get_or_init(|| {
            leak_for_pingora(Box::new(MemoryStorage::new(
                settings.memory as usize,
                settings.max_object as usize,
            )))
        });
        storage.set_limits(settings.memory as usize, settings.max_object as usize);
        Some(Cache {
            storage,
            settings,
            lock: self.lock_for(settings.lock_timeout),
            clock: clock.clone(),
        })
    }

    /// Copies the storage counters into the metrics (called when `/metrics` is scraped).
    pub fn refresh_gauges(&self) {
        let Some(s) = self.storage() else {
            return;
        };
        // Counters only move forward: add what happened since the last scrape.
        let _one_at_a_time = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> model::Cache {
        serde_yaml::from_str(yaml).expect("cache section")
    }

    #[test]
    fn bind_keeps_one_storage_and_follows_the_bounds() {
        let engine = Engine::new();
        let clock = Arc::new(Clock::test_at(0));
        assert!(engine.storage().is_none(), "nothing before a cache section");
        assert!(engine.bind(None, &clock).is_none());
        assert!(engine.storage().is_none(), "no section creates no storage");
        let a = engine
            .bind(Some(&section("{ memory: 4MiB, lock_timeout: 1s }")), &clock)
            .expect("cache");
        assert_eq!(a.storage.limit(), 4 << 20);
        assert_eq!(a.settings.max_object, 4 << 20, "never above memory");
        let b = engine
            .bind(Some(&section("{ memory: 1MiB, lock_timeout: 1s }")), &clock)
            .expect("cache");
        assert!(
            std::ptr::eq(a.storage, b.storage),
            "a reload keeps the storage"
        );
        assert!(
            std::ptr::eq(a.lock, b.lock),
            "and the lock of an unchanged timeout"
        );
        assert_eq!(
            a.storage.limit(),
            1 << 20,
            "the new bound applies to the storage"
        );
        assert!(Arc::ptr_eq(&b.clock, &clock));
        let c = engine
            .bind(Some(&section("{ memory: 1MiB, lock_timeout: 3s }")), &clock)
            .expect("cache");
        assert!(!std::ptr::eq(a.lock, c.lock), "a new timeout is a new lock");
        assert!(engine.bind(None, &clock).is_none());
        assert!(
            std::ptr::eq(engine.storage().expect("kept"), a.storage),
            "removing the section empties the storage but keeps it for a later one"
        );
    }

    #[test]
    fn engines_do_not_share_state() {
        let clock = Arc::new(Clock::system());
        let s = section("{ memory: 1MiB }");
        let (one, two) = (Engine::new(), Engine::new());
        let a = one.bind(Some(&s), &clock).expect("cache");
        let b = two.bind(Some(&s), &clock).expect("cache");
        assert!(!std::ptr::eq(a.storage, b.storage));
    }
}
