//! Where rate-limit and quota counts live (`store:` in the config).
//!
//! - `local` (default): rates in memory (`gcra`), quota counts in memory (`counts`) and
//!   merged every `sync_interval` into SQLite under `server.data_dir` (`sqlite`), which
//!   survives restarts and is shared by the two processes of an upgrade.
//! - `redis`: both shared through one Redis server (`redis`). Each instance decides
//!   locally and merges its admissions every `sync_interval`, reading back the shared
//!   state; a rate limit with `sync_interval: 0` asks Redis on every request instead.
//!
//! A `Store` outlives config reloads: the process's `Registry` (owned by
//! `runtime::Resources`, reached through `Shared`) hands the running store to a config
//! whose store settings are unchanged, and limiters are kept by limit id and reused
//! while their parameters are unchanged, so counts carry over. One thread per store runs
//! the syncs; `Registry::flush_all` runs a last one before the process exits. Every store
//! reads the process clock (`crate::clock`).

pub mod counts;
pub mod gcra;
mod limiter;
pub mod redis;
pub mod sqlite;
pub mod window;

pub use limiter::{QuotaLimiter, RateLimiter};

use crate::clock::Clock;
use crate::config::model::{OnError, StoreBackend};
use crate::config::units::RateUnit;
use crate::config::Config;
use counts::QuotaTable;
use gcra::{Gcra, RateTable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Live keys per limit before the fullest buckets are dropped (about 36 MB per limit).
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;
/// How often a store that is down, or only used per request, is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Quota entries idle this many sync intervals are dropped from memory.
const IDLE_SYNCS: u32 = 50;

/// The store could not be reached and `on_error: fail_closed` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub redis_url: Option<String>,
    pub on_error: OnError,
    pub sync_interval: Duration,
    pub data_dir: String,
    pub max_keys: usize,
}

impl StoreConfig {
    pub fn from_config(cfg: &Config) -> StoreConfig {
        let s = cfg.store.as_ref();
        StoreConfig {
            backend: s.map(|s| s.backend).unwrap_or_default(),
            redis_url: s.and_then(|s| s.redis_url.clone()),
            on_error: s.map(|s| s.on_error).unwrap_or_default(),
            sync_interval: s
                .and_then(|s| s.sync_interval)
                .map_or(DEFAULT_SYNC_INTERVAL, |d| d.0),
            data_dir: cfg.server.data_dir.clone(),
            max_keys: s
                .and_then(|s| s.max_keys)
                .map_or(DEFAULT_MAX_KEYS, |n| n as usize),
        }
    }
}

enum Backend {
    Local(OnceLock<Result<Arc<sqlite::Sqlite>, String>>),
    Redis(Box<redis::Redis>),
}

pub struct Store {
    pub config: StoreConfig,
    /// The process clock: windows, expiry and sync rounds are on it.
    clock: Arc<Clock>,
    backend: Backend,
    rates: Mutex<HashMap<String, Weak<RateLimiter>>>,
    quotas: Mutex<HashMap<String, Weak<QuotaLimiter>>>,
    started: AtomicBool,
    sync: tokio::sync::Mutex<SyncState>,
}

#[derive(Default)]
struct SyncState {
    /// Limit clock at the last round (quota keys used since then are re-read).
    last_sync: u64,
    last_purge: u64,
    /// Real time of the last quota merge (rates keep their own, see `RateLimiter`).
    last_quota_sync: Option<std::time::Instant>,
    /// Per quota id, an upper bound of its SQLite rows (rows counted at the last trim,
    /// plus the rows created since): the file is trimmed to `max_keys` when it passes.
    sqlite_rows: HashMap<String, usize>,
}

/// Whether `every` has passed since `last` (and marks it done when it has).
fn due(last: &mut Option<std::time::Instant>, every: Duration) -> bool {
    let now = std::time::Instant::now();
    // A little early is fine: the loop's own wake-ups drift by a millisecond or two.
    let slack = every / 10;
    match last {
        Some(t) if now.duration_since(*t) + slack < every => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// The process's stores: the live ones, weakly held (a store lives as long as a
/// snapshot uses it), so a reload can find the running one and the process can flush
/// every one before it exits.
pub struct Registry {
    clock: Arc<Clock>,
    stores: Mutex<Vec<Weak<Store>>>,
}

impl Registry {
    pub fn new(clock: Arc<Clock>) -> Registry {
        Registry {
            clock,
            stores: Mutex::default(),
        }
    }

    /// The store for this config: the running one when its settings are unchanged (a
    /// reload keeps the counts), else a new one. Nothing is opened or connected here
    /// (`gatehouse check` builds stores too); see `Store::start`.
    pub fn store_for(&self, cfg: &Config) -> Result<Arc<Store>, String> {
        let config = StoreConfig::from_config(cfg);
        let mut reg = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|w| w.strong_count() > 0);
        if let Some(s) = reg
            .iter()
            .filter_map(Weak::upgrade)
            .find(|s| s.config == config)
        {
            return Ok(s);
        }
        let backend = match config.backend {
            StoreBackend::Local => Backend::Local(OnceLock::new()),
            StoreBackend::Redis => {
                let url = config.redis_url.as_deref().unwrap_or("");
                Backend::Redis(Box::new(redis::Redis::new(url)?))
            }
        };
        let store = Arc::new(Store {
            config,
            clock: self.clock.clone(),
            backend,
            rates: Mutex::default(),
            quotas: Mutex::default(),
            started: AtomicBool::new(false),
            sync: tokio::sync::Mutex::default(),
        });
        reg.push(Arc::downgrade(&store));
        Ok(store)
    }

    fn live(&self) -> Vec<Arc<Store>> {
        self.stores
            .lock()
            .map(|r| r.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Runs a last sync of every store, so that a graceful stop or upgrade loses no
    /// count. Called from a plain thread (never from inside a runtime).
    pub fn flush_all(&self) {
        let stores = self.live();
        if stores.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            for s in stores {
                if tokio::time::timeout(Duration::from_secs(2), s.sync_once(true))
                    .await
                    .is_err()
                {
                    tracing::warn!("limit store: the last sync did not finish in 2 s");
                }
            }
        });
    }

    /// Sets `gatehouse_limit_keys` for every live limit (called when /metrics is read).
    pub fn refresh_gauges(&self) {
        let g = &crate::metrics::metrics().limit_keys;
        for s in self.live() {
            for r in s.live_rates() {
                g.with_label_values(&[&r.id]).set(r.table.len() as i64);
            }
            for q in s.live_quotas() {
                g.with_label_values(&[&q.id]).set(q.table.len() as i64);
            }
        }
    }
}

impl Store {
    /// The clock the limits of this store read.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    fn fail_closed(&self) -> bool {
        self.config.on_error == OnError::FailClosed
    }

    fn sqlite(&self) -> Result<Arc<sqlite::Sqlite>, String> {
        match &self.backend {
            Backend::Local(cell) => cell
                .get_or_init(|| sqlite::Sqlite::open(&self.config.data_dir).map(Arc::new))
                .clone(),
            Backend::Redis(_) => Err("not the local backend".into()),
        }
    }

    /// Checks that the local database can be opened, when a quota needs it (at start,
    /// before serving). The handle is closed again: it is reopened after a daemon fork.
    pub fn check_open(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Local(_) if !self.live_quotas().is_empty() => {
                sqlite::Sqlite::open(&self.config.data_dir).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// A rate limiter for `id`: the existing one when its parameters are unchanged.
    /// `sync` is how often it merges with a shared store (zero: on every request).
    pub fn rate(self: &Arc<Self>, id: &str, gcra: Gcra, sync: Duration) -> Arc<RateLimiter> {
        let redis = matches!(self.backend, Backend::Redis(_));
        let exact = redis && sync.is_zero();
        let mut map = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(id).and_then(Weak::upgrade) {
            if r.table.gcra == gcra && r.exact == exact && r.sync_every == sync {
                return r;
            }
        }
        let r = Arc::new(RateLimiter {
            id: id.to_string(),
            table: RateTable::new(gcra, self.config.max_keys, redis && !exact),
            exact,
            sync_every: sync,
            last_sync: Mutex::new(None),
            store: self.clone(),
        });
        map.insert(id.to_string(), Arc::downgrade(&r));
        r
    }

    /// A quota limiter for `id`: the existing one when its parameters are unchanged.
    pub fn quota(self: &Arc<Self>, id: &str, limit: u64, unit: RateUnit) -> Arc<QuotaLimiter> {
        let exact =
            matches!(self.backend, Backend::Redis(_)) && self.config.sync_interval.is_zero();
        let mut map = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get(id).and_then(Weak::upgrade) {
            if q.table.limit == limit && q.table.unit == unit {
                return q;
            }
        }
        let q = Arc::new(QuotaLimiter {
            id: id.to_string(),
            table: QuotaTable::new(limit, unit, self.config.max_keys),
            exact,
            store: self.clone(),
        });
        map.insert(id.to_string(), Arc::downgrade(&q));
        q
    }

    /// The live quota limiter `id` (`route:NAME:quota`, `tier:NAME:quota`), if any.
    pub fn quota_by_id(&self, id: &str) -> Option<Arc<QuotaLimiter>> {
        let map = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).and_then(Weak::upgrade)
    }

    fn live_rates(&self) -> Vec<Arc<RateLimiter>> {
        let mut map = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    fn live_quotas(&self) -> Vec<Arc<QuotaLimiter>> {
        let mut map = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// Starts the sync thread (once). It ends when the store is no longer used.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("limit store: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(sync_loop(weak));
            });
        if let Err(e) = spawned {
            tracing::error!("limit store: cannot start its sync thread: {e}");
        }
    }

    /// How long the sync thread waits between rounds: the shortest sync interval in
    /// use, or the probe interval while Redis is away or when every call goes to Redis.
    fn tick(&self) -> Duration {
        let mut tick = match self.config.sync_interval {
            d if d.is_zero() => PROBE_INTERVAL,
            d => d,
        };
        for r in self.live_rates() {
            if !r.sync_every.is_zero() {
                tick = tick.min(r.sync_every);
            }
        }
        match &self.backend {
            Backend::Redis(r) if !r.is_up() => tick.min(PROBE_INTERVAL),
            _ => tick,
        }
    }

    /// One sync round: merge the admissions of every limiter whose interval is due (all
    /// of them when `force`) and read back the shared counts.
    pub async fn sync_once(&self, force: bool) {
        let mut st = self.sync.lock().await;
        let now = self.clock.now_ns();
        let since = st.last_sync;
        let quotas_due = due(&mut st.last_quota_sync, self.config.sync_interval) || force;
        match &self.backend {
            Backend::Local(_) if quotas_due => self.sync_local(&mut st, since, now),
            Backend::Local(_) => {}
            Backend::Redis(r) => sync_redis(self, r, since, now, quotas_due, force).await,
        }
        let idle = self.config.sync_interval.max(PROBE_INTERVAL) * IDLE_SYNCS;
        let before = now.saturating_sub(idle.as_nanos() as u64);
        for q in self.live_quotas() {
            q.table.evict(before, now);
        }
        st.last_sync = now;
    }

    fn sync_local(&self, st: &mut SyncState, since: u64, now: u64) {
        let quotas = self.live_quotas();
        if quotas.is_empty() {
            return;
        }
        let db = match self.sqlite() {
            Ok(db) => db,
            Err(e) => {
                sqlite_error("sync", &e);
                return;
            }
        };
        let changed = db.changed_elsewhere().unwrap_or(true);
        for q in &quotas {
            let deltas = q.table.take_deltas();
            if !deltas.is_empty() {
                let rows: Vec<_> = deltas
                    .iter()
                    .map(|d| (q.id.as_str(), &*d.key, d.window, d.count))
                    .collect();
                match db.add(&rows) {
                    Ok(totals) => {
                        // A total equal to its delta is a new row (or one back from zero).
                        let created = deltas
                            .iter()
                            .zip(&totals)
                            .filter(|(d, t)| **t == d.count.max(0) as u64)
                            .count();
                        let rows = st.sqlite_rows.entry(q.id.clone()).or_insert(usize::MAX);
                        *rows = rows.saturating_add(created);
                        deltas
                            .iter()
                            .zip(totals)
                            .for_each(|(d, t)| q.table.synced(d, t));
                    }
                    Err(e) => {
                        sqlite_error("sync", &e.to_string());
                        deltas.iter().for_each(|d| q.table.unsynced(d));
                    }
                }
            }
            // Another process (an upgrade's other half) wrote: read our active keys again.
            if changed {
                let active = q.table.active(since);
                let rows: Vec<_> = active
                    .iter()
                    .map(|(_, k, w)| (q.id.as_str(), &**k, *w))
                    .collect();
                match db.read_many(&rows) {
                    Ok(counts) => active
                        .iter()
                        .zip(counts)
                        .for_each(|((h, _, w), n)| q.table.refreshed(*h, *w, n)),
                    Err(e) => sqlite_error("sync", &e.to_string()),
                }
            }
        }
        // The file holds at most `max_keys` rows per quota after each sync, like memory.
        let cap = self.config.max_keys;
        for q in &quotas {
            let rows = st.sqlite_rows.entry(q.id.clone()).or_insert(usize::MAX);
            if *rows > cap {
                let w = window::window_at(q.table.unit, now).id;
                match db.trim(&q.id, w, cap, cap / 4 * 3) {
                    Ok(left) => *rows = left,
                    Err(e) => sqlite_error("trim", &e.to_string()),
                }
            }
        }
        // Past windows can never matter again; an hour between purges is plenty.
        if now.saturating_sub(st.last_purge) > 3600 * crate::clock::NANOS_PER_SEC {
            st.last_purge = now;
            for q in &quotas {
                let w = window::window_at(q.table.unit, now).id;
                if let Err(e) = db.purge(&q.id, w) {
                    sqlite_error("purge", &e.to_string());
                }
            }
        }
    }
}

fn sqlite_error(op: &str, e: &str) {
    crate::metrics::metrics()
        .store_errors
        .with_label_values(&["local", op])
        .inc();
    tracing::warn!("limit store (local): {op} failed: {e}");
}

async fn sync_loop(store: Weak<Store>) {
    loop {
        let wait = {
            let Some(s) = store.upgrade() else {
                return;
            };
            s.sync_once(false).await;
            s.tick()
        };
        tokio::time::sleep(wait).await;
    }
}

/// Redis batches are cut so that one script never holds Redis for long.
const REDIS_BATCH: usize = 500;

async fn sync_redis(
    store: &Store,
    r: &redis::Redis,
    since: u64,
    now: u64,
    quotas_due: bool,
    force: bool,
) {
    if !r.probe().await {
        // Admissions made while Redis is away were counted locally (fail_open) or
        // refused (fail_closed); replaying rate admissions later would block keys for as
        // long as the outage lasted, so they are dropped. Quota deltas are kept.
        for rl in store.live_rates() {
            drop(rl.table.take_pending());
        }
        return;
    }
    for rl in store.live_rates() {
        if rl.exact || !(rl.is_due() || force) {
            continue;
        }
        let pending = rl.table.take_pending();
        for chunk in pending.chunks(REDIS_BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .map(|(_, p)| (redis::entry_name(&rl.id, &p.key, None), p.count, p.first))
                .collect();
            if let Ok(tats) = r.rate_sync(&entries, now, rl.table.gcra.interval).await {
                for ((h, _), tat) in chunk.iter().zip(tats) {
                    rl.table.adopt(*h, tat, now);
                }
            }
        }
    }
    if !quotas_due {
        return;
    }
    for q in store.live_quotas() {
        if !q.exact {
            sync_redis_quota(&q, r, since, now).await;
        }
    }
}

async fn sync_redis_quota(q: &QuotaLimiter, r: &redis::Redis, since: u64, now: u64) {
    let ttl = q.ttl_ms(now);
    let deltas = q.table.take_deltas();
    for chunk in deltas.chunks(REDIS_BATCH) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|d| {
                (
                    redis::entry_name(&q.id, &d.key, Some(d.window)),
                    d.count,
                    ttl,
                )
            })
            .collect();
        match r.quota_add(&entries).await {
            Ok(totals) => chunk
                .iter()
                .zip(totals)
                .for_each(|(d, t)| q.table.synced(d, t)),
            Err(_) => chunk.iter().for_each(|d| q.table.unsynced(d)),
        }
    }
    let active = q.table.active(since);
    for chunk in active.chunks(REDIS_BATCH) {
        let names: Vec<_> = chunk
            .iter()
            .map(|(_, k, w)| redis::entry_name(&q.id, k, Some(*w)))
            .collect();
        if let Ok(counts) = r.quota_read(&names).await {
            for ((h, _, w), n) in chunk.iter().zip(counts) {
                q.table.refreshed(*h, *w, n);
            }
        }
    }
}
