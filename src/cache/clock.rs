//! The cache's clock: wall time plus an offset that only moves forward.
//!
//! Every freshness, age and stale-window decision of the cache reads `now()`. In
//! production the offset is zero. Tests start the gateway with `GATEHOUSE_TEST_CLOCK=1`
//! and advance it through the admin API (`POST /admin/test/clock`), so they can cross
//! a freshness lifetime or a stale window without sleeping through it.
//!
//! Pingora compares stored metadata with the real wall clock in a few places; because
//! the offset only grows, our clock is never behind it, and the proxy's cache phases
//! re-decide with this clock (`cache::phases::hit_freshness`, `should_serve_stale`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

static OFFSET_MS: AtomicU64 = AtomicU64::new(0);
static DRIVABLE: AtomicBool = AtomicBool::new(false);

/// Reads `GATEHOUSE_TEST_CLOCK` once at startup.
pub fn init_from_env() {
    let on = std::env::var("GATEHOUSE_TEST_CLOCK").is_ok_and(|v| v == "1");
    DRIVABLE.store(on, Relaxed);
    if on {
        tracing::warn!("GATEHOUSE_TEST_CLOCK=1: the cache clock can be advanced by the admin API");
    }
}

pub fn drivable() -> bool {
    DRIVABLE.load(Relaxed)
}

pub fn offset() -> Duration {
    Duration::from_millis(OFFSET_MS.load(Relaxed))
}

pub fn now() -> SystemTime {
    SystemTime::now() + offset()
}

/// Moves the clock forward; returns the new offset. Refused unless the clock is drivable.
pub fn advance(by: Duration) -> Option<Duration> {
    if !drivable() {
        return None;
    }
    let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    OFFSET_MS.fetch_add(ms, Relaxed);
    Some(offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_move_unless_drivable() {
        DRIVABLE.store(false, Relaxed);
        assert_eq!(advance(Duration::from_secs(5)), None);
        let before = offset();
        DRIVABLE.store(true, Relaxed);
        let after = advance(Duration::from_secs(5)).expect("drivable");
        assert_eq!(after, before + Duration::from_secs(5));
        let real = SystemTime::now();
        assert!(now() >= real + Duration::from_secs(5));
        DRIVABLE.store(false, Relaxed);
    }
}
