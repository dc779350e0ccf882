//! What requests read: an immutable `Snapshot` compiled from a validated config, held
//! in an `ArcSwap` so a reload swaps it atomically. A request keeps the snapshot it
//! started with.
//!
//! State that outlives snapshots (the clock, the cache engine, the limit stores) lives
//! in `Resources`, owned by `Shared`; compile draws on it and every snapshot reaches it
//! through what compile put in it. There is no free-standing static for any of it.

pub mod destination;
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
    /// What the process took at start and a reload cannot change.
    start_only: StartOnly,
}

/// Config values used once, at start: the access log file is opened, the admin
/// listener and the listeners bound, and the server (threads, pid file, upgrade socket,
/// grace period, shutdown timeout) set up before serving. A reload that changes them
/// applies everything else and says, with their YAML paths, that these keep their running
/// values.
struct StartOnly {
    access_log_path: String,
    admin_address: Option<String>,
    /// The server's own settings, as YAML paths and their values.
    process: Vec<(&'static str, serde_json::Value)>,
}

impl StartOnly {
    fn of(cfg: &crate::config::Config) -> StartOnly {
        StartOnly {
            access_log_path: cfg.access_log.path.clone(),
            admin_address: cfg.admin.as_ref().map(|a| a.address.clone()),
            process: Self::process(cfg),
        }
    }

    fn process(cfg: &crate::config::Config) -> Vec<(&'static str, serde_json::Value)> {
        let v = |x: serde_json::Result<serde_json::Value>| x.unwrap_or_default();
        let s = &cfg.server;
        vec![
            ("listeners", v(serde_json::to_value(&cfg.listeners))),
            ("server.threads", v(serde_json::to_value(s.threads))),
            ("server.pid_file", v(serde_json::to_value(&s.pid_file))),
            (
                "server.upgrade_sock",
                v(serde_json::to_value(&s.upgrade_sock)),
            ),
            (
                "server.grace_period",
                v(serde_json::to_value(s.grace_period)),
            ),
            (
                "server.shutdown_timeout",
                v(serde_json::to_value(s.shutdown_timeout)),
            ),
        ]
    }

    /// One warning per start-only key that `next` sets differently.
    fn changes(&self, next: &crate::config::Config) -> Vec<crate::config::ConfigError> {
        use crate::config::ConfigError;
        let mut out = Vec::new();
        if next.access_log.path != self.access_log_path {
            out.push(ConfigError::new(
                "access_log.path",
                format!(
                    "changed to {:?}, but the access log is opened at start: it stays {:?} \
                     until a restart or `gatehouse upgrade`",
                    next.access_log.path, self.access_log_path
                ),
            ));
        }
        let next_admin = next.admin.as_ref().map(|a| a.address.clone());
        if next_admin != self.admin_address {
            let shown = |a: &Option<String>| a.as_deref().unwrap_or("off").to_string();
            out.push(ConfigError::new(
                "admin.address",
                format!(
                    "changed to {:?}, but the admin listener is bound at start: it stays on \
                     {:?} until a restart or `gatehouse upgrade`",
                    shown(&next_admin),
                    shown(&self.admin_address)
                ),
            ));
        }
        for ((path, was), (_, now)) in self.process.iter().zip(Self::process(next)) {
            if *was != now {
                out.push(ConfigError::new(
                    *path,
                    "changed, but it is taken when the server starts: the running value \
                     stays until a restart or `gatehouse upgrade`",
                ));
            }
        }
        out
    }
}

/// A reload that was applied, and what it could not apply.
pub struct Reloaded {
    pub version_hash: String,
    pub warnings: Vec<crate::config::ConfigError>,
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
        let start_only = StartOnly::of(&snapshot.loaded.config);
        crate::telemetry::config_loaded(&snapshot.loaded.version_hash, snapshot.loaded_at);
        Arc::new(Shared {
            start_only,
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
    /// Listener changes need an upgrade (`gatehouse upgrade`), not a reload; so do
    /// `access_log.path` and `admin.address`, which the answer warns about (`StartOnly`).
    pub async fn reload(&self) -> Result<Reloaded, Vec<crate::config::ConfigError>> {
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
                let warnings = self.start_only.changes(&next.loaded.config);
                crate::telemetry::config_loaded(&hash, next.loaded_at);
                self.snapshot.store(Arc::new(next));
                m.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(version = %hash, "config reloaded");
                for w in &warnings {
                    tracing::warn!("reload: not applied: {w}");
                }
                Ok(Reloaded {
                    version_hash: hash,
                    warnings,
                })
            }
            Err(errs) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                crate::telemetry::config_refused(&errs);
                for e in &errs {
                    tracing::error!("reload refused: {e}");
                }
                Err(errs)
            }
        }
    }
}
