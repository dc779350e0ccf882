//! The limiters the policies hold: one per rate limit or quota, deciding locally (GCRA
//! table, quota counts) or in Redis per request (`sync_interval: 0`), and applying
//! `on_error` when the store is away. Their admissions reach the store through
//! `Store::sync_once`.

use super::counts::{Check, QuotaTable, QuotaVerdict};
use super::gcra::{RateTable, Verdict};
use super::{due, redis, sqlite_error, window, Backend, Store, StoreDown};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One rate limit's counts: local GCRA, shared through the store's backend.
pub struct RateLimiter {
    pub id: String,
    pub table: RateTable,
    /// Redis on every request (`sync_interval: 0`).
    pub exact: bool,
    /// How often its admissions are merged with the shared store.
    pub sync_every: Duration,
    pub(super) last_sync: Mutex<Option<std::time::Instant>>,
    pub(super) store: Arc<Store>,
}

impl RateLimiter {
    pub(super) fn is_due(&self) -> bool {
        let mut last = self.last_sync.lock().unwrap_or_else(|e| e.into_inner());
        due(&mut last, self.sync_every)
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.table.hash(key)
    }

    /// Decides for one request. `Err` only when the store is down and fail_closed.
    pub async fn check(&self, h: u64, key: &[u8], now: u64) -> Result<Verdict, StoreDown> {
        let Backend::Redis(r) = &self.store.backend else {
            return Ok(self.table.check(h, key, now));
        };
        if !r.is_up() {
            return self.fallback(h, key, now);
        }
        if !self.exact {
            return Ok(self.table.check(h, key, now));
        }
        let g = self.table.gcra;
        let name = redis::entry_name(&self.id, key, None);
        match r.rate_check(&name, now, g.interval, g.tolerance).await {
            Ok((true, tat)) => Ok(g.state(tat, now, true)),
            Ok((false, tat)) => {
                let mut v = g.state(tat, now, false);
                v.retry_ns = (tat.max(now) + g.interval).saturating_sub(now + g.tolerance);
                Ok(v)
            }
            Err(_) => self.fallback(h, key, now),
        }
    }

    fn fallback(&self, h: u64, key: &[u8], now: u64) -> Result<Verdict, StoreDown> {
        if self.store.fail_closed() {
            Err(StoreDown)
        } else {
            Ok(self.table.check(h, key, now))
        }
    }

    /// Gives back an admission (a later limit refused the request).
    pub fn refund(&self, h: u64, key: &[u8]) {
        match &self.store.backend {
            Backend::Redis(r) if self.exact && r.is_up() => {
                let store = self.store.clone();
                let name = redis::entry_name(&self.id, key, None);
                let interval = self.table.gcra.interval;
                tokio::spawn(async move {
                    if let Backend::Redis(r) = &store.backend {
                        let _ = r.rate_refund(&name, interval).await;
                    }
                });
            }
            _ => self.table.refund(h),
        }
    }
}

/// One quota's counts: in memory, merged into the store every sync.
pub struct QuotaLimiter {
    pub id: String,
    pub table: QuotaTable,
    /// Redis on every request (`store.sync_interval: 0`).
    pub exact: bool,
    pub(super) store: Arc<Store>,
}

impl QuotaLimiter {
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.table.hash(key)
    }

    /// Redis entries live until their window ends, plus an hour of slack.
    pub(super) fn ttl_ms(&self, now: u64) -> u64 {
        let w = window::window_at(self.table.unit, now);
        (w.end - now) / 1_000_000 + 3_600_000
    }

    /// Decides for one request. `Err` only when the store is down and fail_closed.
    pub async fn check(&self, h: u64, key: &[u8], now: u64) -> Result<QuotaVerdict, StoreDown> {
        if self.exact {
            if let Some(v) = self.check_exact(key, now).await {
                return Ok(v);
            }
        }
        loop {
            match self.table.check(h, now) {
                Check::Done(v) => return Ok(v),
                Check::Unknown(w) => {
                    let count = self.load(key, w.id).await?;
                    self.table.insert(h, key, w.id, count, now);
                }
            }
        }
    }

    /// Redis per request; None when Redis is away and fail_open (count locally).
    async fn check_exact(&self, key: &[u8], now: u64) -> Option<QuotaVerdict> {
        let Backend::Redis(r) = &self.store.backend else {
            return None;
        };
        if !r.is_up() {
            return None;
        }
        let w = window::window_at(self.table.unit, now);
        let name = redis::entry_name(&self.id, key, Some(w.id));
        let limit = self.table.limit;
        match r.quota_check(&name, limit, self.ttl_ms(now)).await {
            Ok((allowed, n)) => Some(QuotaVerdict {
                allowed,
                remaining: limit.saturating_sub(n),
                window: w,
            }),
            Err(_) => None,
        }
    }

    /// A key's count from the store, the first time this process sees it.
    async fn load(&self, key: &[u8], window: u64) -> Result<u64, StoreDown> {
        let loaded = match &self.store.backend {
            Backend::Local(_) => self
                .store
                .sqlite()
                .and_then(|db| db.load(&self.id, key, window).map_err(|e| e.to_string()))
                .map_err(|e| sqlite_error("load", &e)),
            Backend::Redis(r) if r.is_up() => r
                .quota_load(&redis::entry_name(&self.id, key, Some(window)))
                .await
                .map_err(drop),
            Backend::Redis(_) => Err(()),
        };
        match loaded {
            Ok(n) => Ok(n),
            Err(()) if self.store.fail_closed() => Err(StoreDown),
            Err(()) => Ok(0),
        }
    }

    /// How much of the current window `key` has used, counting nothing: the count in
    /// memory, else the store's (read, not kept, so asking costs no memory). `None` when
    /// the store cannot be read. For the status page, off the request path.
    pub async fn usage(&self, key: &[u8], now: u64) -> Option<u64> {
        let w = window::window_at(self.table.unit, now);
        if !self.exact {
            if let Some(n) = self.table.peek(self.hash(key), now) {
                return Some(n);
            }
        }
        match &self.store.backend {
            Backend::Local(_) => self
                .store
                .sqlite()
                .ok()
                .and_then(|db| db.load(&self.id, key, w.id).ok()),
            Backend::Redis(r) if r.is_up() => r
                .quota_load(&redis::entry_name(&self.id, key, Some(w.id)))
                .await
                .ok(),
            // Away: what this process counted while it was (fail_open counts locally).
            Backend::Redis(_) => self.table.peek(self.hash(key), now),
        }
    }

    /// Gives back an admission (a later limit refused the request).
    pub fn refund(&self, h: u64, key: &[u8], v: &QuotaVerdict) {
        match &self.store.backend {
            Backend::Redis(r) if self.exact && r.is_up() => {
                let store = self.store.clone();
                let name = redis::entry_name(&self.id, key, Some(v.window.id));
                tokio::spawn(async move {
                    if let Backend::Redis(r) = &store.backend {
                        let _ = r.quota_refund(&name).await;
                    }
                });
            }
            _ => self.table.refund(h, v.window.id),
        }
    }
}
