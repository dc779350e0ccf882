//! What requests read: an immutable `Snapshot` compiled from a validated config, held
//! in an `ArcSwap` so a reload swaps it atomically. A request keeps the snapshot it
//! started with.
//!
//! State that outlives snapshots (the clock, the cache engine, the limit stores) lives
//! in `Resources`, owned by `Shared`; compile draws on it and every snapshot reaches it
//! through what compile put in it. There is no free-standing static for any of it.

pub mod router;
pub mod snapshot;

pub use snapshot::{Route, Snapshot};

use crate::clock::Clock;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// What outlives every snapshot, one per process: compile takes what a config needs from
/// here (the running store, the cache storage and lock) and reuses it across reloads.
pub struct Resources {
    /// The one clock (`crate::clock`): limits, quotas and cache freshness read it.
    pub clock: Arc<Clock>,
    /// Cache storage and locks, leaked for Pingora once (`cache::Engine`).
    pub cache: crate::cache::Engine,
    /// The limit stores (`store::Registry`).
    pub stores: crate::store::Registry,
}

impl Resources {
    pub fn new(clock: Clock) -> Resources {
        let clock = Arc::new(clock);
        Resources {
            cache: crate::cache::Engine::new(),
            stores: crate::store::Registry::new(clock.clone()),
            clock,
        }
    }
}

/// Process-wide state shared by the proxy, the admin listener and the signal handler.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub resources: Resources,
    /// Listeners accept connections and the config is compiled.
    pub ready: AtomicBool,
    /// SIGTERM or an upgrade started: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Requests between `new_ctx` and the end of `logging`.
    pub active_requests: AtomicUsize,
    pub config_path: String,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Loads and validates a config file and compiles it, as `gatehouse check` does: the
/// same function start-up, reload and upgrade use. A check serves nothing, so it gets the
/// system clock and resources of its own.
pub fn check(path: &str) -> Result<Snapshot, Vec<crate::config::ConfigError>> {
    let loaded = crate::config::load_file(path)?;
    Snapshot::compile(loaded, None, &Resources::new(Clock::system()))
}

impl Shared {
    /// `snapshot` was compiled with `resources`.
    pub fn new(snapshot: Snapshot, resources: Resources, config_path: String) -> Arc<Self> {
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            resources,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            active_requests: AtomicUsize::new(0),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Reload is all or nothing: parse, validate, compile (reusing unchanged upstreams
    /// with their health, the running store and the cache storage, whose bounds the new
    /// config sets), then swap. Any error leaves the running snapshot in place.
    /// Listener changes need an upgrade (`gatehouse upgrade`), not a reload.
    pub async fn reload(&self) -> Result<String, Vec<crate::config::ConfigError>> {
        let _guard = self.reload_lock.lock().await;
        let m = crate::metrics::metrics();
        let result = crate::config::load_file(&self.config_path).and_then(|loaded| {
            let current = self.snapshot.load_full();
            Snapshot::compile(loaded, Some(&current), &self.resources)
        });
        match result {
            Ok(next) => {
                // New JWKS sources are fetched before the snapshot serves.
                next.policies.start().await;
                let current = self.snapshot.load_full();
                for (name, up) in &next.upstreams {
                    let reused = current
                        .upstreams
                        .get(name)
                        .is_some_and(|u| Arc::ptr_eq(u, up));
                    if !reused {
                        crate::upstream::health::spawn(up);
                    }
                }
                let hash = next.loaded.version_hash.clone();
                self.snapshot.store(Arc::new(next));
                m.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(version = %hash, "config reloaded");
                Ok(hash)
            }
            Err(errs) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                for e in &errs {
                    tracing::error!("reload refused: {e}");
                }
                Err(errs)
            }
        }
    }
}
