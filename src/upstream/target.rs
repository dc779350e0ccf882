//! One target of an upstream and its health: active state (unknown until the first
//! check, then healthy/unhealthy by consecutive results), passive state (consecutive
//! real-traffic failures take it out for a cooldown, on the one clock: `crate::clock`)
//! and its in-flight count.

use prometheus::{IntCounter, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const UNKNOWN: u8 = 0;
pub const HEALTHY: u8 = 1;
pub const UNHEALTHY: u8 = 2;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Target {
    pub address: String,
    pub addr: SocketAddr,
    pub weight: usize,
    pub inflight: AtomicUsize,
    active: AtomicU8,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    passive_fails: AtomicU32,
    /// The end of a passive cooldown, on the one clock (ns since the Unix epoch).
    down_until_ns: AtomicU64,
    last_check_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Outlier ejection (`upstream::outlier`), on the one clock.
    pub outlier: super::outlier::State,
    pub healthy_gauge: IntGauge,
    /// Pre-resolved `gatehouse_upstream_requests_total{status="200"}`, the common case.
    pub requests_200: IntCounter,
}

impl Target {
    pub fn new(
        upstream: &str,
        address: &str,
        addr: SocketAddr,
        weight: usize,
        has_active: bool,
    ) -> Self {
        let m = crate::metrics::metrics();
        let healthy_gauge = m.target_healthy.with_label_values(&[upstream, address]);
        healthy_gauge.set(if has_active { 0 } else { 1 });
        Target {
            address: address.to_string(),
            addr,
            weight,
            inflight: AtomicUsize::new(0),
            active: AtomicU8::new(if has_active { UNKNOWN } else { HEALTHY }),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            passive_fails: AtomicU32::new(0),
            down_until_ns: AtomicU64::new(0),
            last_check_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            outlier: Default::default(),
            healthy_gauge,
            requests_200: m
                .upstream_requests
                .with_label_values(&[upstream, address, "200"]),
        }
    }

    pub fn active_state(&self) -> u8 {
        self.active.load(Relaxed)
    }

    pub fn passive_down(&self, clock_ns: u64) -> bool {
        self.down_until_ns.load(Relaxed) > clock_ns
    }

    /// Eligible for traffic. `unknown_ok` is true while every target is still unknown;
    /// `clock_ns` is the one clock's now (passive cooldowns, outlier ejections).
    pub fn usable(&self, clock_ns: u64, unknown_ok: bool) -> bool {
        let a = self.active_state();
        (a == HEALTHY || (a == UNKNOWN && unknown_ok))
            && !self.passive_down(clock_ns)
            && !self.outlier.ejected(clock_ns)
    }

    /// Out of service for any reason: actively unhealthy, passively down or ejected
    /// (what `max_ejection_percent` counts).
    pub fn out_of_service(&self, clock_ns: u64) -> bool {
        self.active_state() == UNHEALTHY
            || self.passive_down(clock_ns)
            || self.outlier.ejected(clock_ns)
    }

    /// Records an active check; returns true when the state changed.
    pub fn record_check(
        &self,
        ok: bool,
        error: Option<String>,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> bool {
        self.last_check_ms.store(now_ms(), Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
        let before = self.active_state();
        let after = if ok {
            self.fail_streak.store(0, Relaxed);
            let n = self.ok_streak.fetch_add(1, Relaxed) + 1;
            // The first success of a fresh target is enough: "unknown" means no evidence yet.
            if before == UNHEALTHY && n < healthy_after {
                before
            } else {
                HEALTHY
            }
        } else {
            self.ok_streak.store(0, Relaxed);
            let n = self.fail_streak.fetch_add(1, Relaxed) + 1;
            if n >= unhealthy_after {
                UNHEALTHY
            } else {
                before
            }
        };
        self.active.store(after, Relaxed);
        before != after
    }

    /// A request to this target failed (connect error or 5xx) at `clock_ns`.
    pub fn record_failure(&self, unhealthy_after: u32, cooldown: Duration, clock_ns: u64) {
        let n = self.passive_fails.fetch_add(1, Relaxed) + 1;
        if n >= unhealthy_after {
            self.passive_fails.store(0, Relaxed);
            let cooldown_ns = u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX);
            self.down_until_ns
                .store(clock_ns.saturating_add(cooldown_ns), Relaxed);
            tracing::warn!(target = %self.address, "target taken out for {:?} after {n} consecutive failures", cooldown);
        }
    }

    pub fn record_success(&self) {
        if self.passive_fails.load(Relaxed) != 0 {
            self.passive_fails.store(0, Relaxed);
        }
    }

    pub fn last_check_ms(&self) -> Option<u64> {
        match self.last_check_ms.load(Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn health_label(&self, clock_ns: u64) -> &'static str {
        if self.passive_down(clock_ns) {
            return "unhealthy";
        }
        if self.outlier.ejected(clock_ns) {
            return "ejected";
        }
        match self.active_state() {
            HEALTHY => "healthy",
            UNHEALTHY => "unhealthy",
            _ => "unknown",
        }
    }
}
