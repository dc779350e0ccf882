//! The one clock: the time that rate limits, quotas and cache freshness read, and UTC
//! calendar arithmetic for quota windows.
//!
//! A `Clock` is either the system clock (production) or a test clock: an instant that
//! stands still and moves only when told. The process makes one at start
//! (`Clock::from_env`) and everything reaches it through `runtime::Resources`: the limit
//! stores, the limit policies and the cache hold the same `Arc<Clock>`, so one move
//! drives a rate window, a quota day and a cache freshness lifetime together.
//!
//! The test clock is on only when the process starts with `GATEHOUSE_TEST_CLOCK` set:
//!
//! - `now`: frozen at the real time of start;
//! - an RFC 3339 UTC time such as `2030-01-01T23:59:00Z` (`.fff` fractions and `+00:00`
//!   are accepted);
//! - Unix seconds such as `1893542340`.
//!
//! It then moves only through the admin API (`POST /admin/clock`, bearer token required:
//! `{"advance": "30s"}` or `{"set": "2030-01-02T00:00:00Z"}`), and the process logs a
//! warning at start. Without the variable the admin route answers 404 and nothing can
//! move the clock.
//!
//! The limit and cache rules themselves take `now` as an argument, so unit tests and
//! benches pass any time they like.
//!
//! Pingora's cache reads the wall clock on its own (freshness at lookup, the stale
//! windows, `Age`). A test clock may stand before or after the wall clock, so the cache
//! overrides each of those decisions with one taken on this clock: `cache::phases`
//! explains how, and `cache::storage` orders admissions without relying on time moving.
//!
//! Upstreams read it too (`upstream::Plan::clock`): circuit breaker windows and
//! `open_for`, passive health cooldowns, outlier ejection times and the retry budget's
//! window, so a test opens, half-opens and closes a circuit, or ends a cooldown, by
//! moving it. Retry backoff waits are real sleeps.
//!
//! Not on this clock: JWT `exp`/`nbf` checks and JWKS refreshes (tokens and key servers
//! live in real time), and timeouts, health checks and store sync intervals (monotonic
//! `Instant`s).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that turns the test clock on.
pub const TEST_CLOCK_ENV: &str = "GATEHOUSE_TEST_CLOCK";

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The time source of one gateway process.
#[derive(Debug)]
pub struct Clock {
    /// `None`: the system clock. `Some`: the test instant, in nanoseconds since the
    /// Unix epoch, which only `advance` and `set` move.
    test: Option<AtomicU64>,
}

/// `advance` or `set` on the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotATestClock;

impl std::fmt::Display for NotATestClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the test clock is off (it exists only when {TEST_CLOCK_ENV} is set at start)"
        )
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock { test: None }
    }

    /// A test clock standing at `ns` (nanoseconds since the Unix epoch).
    pub fn test_at(ns: u64) -> Clock {
        Clock {
            test: Some(AtomicU64::new(ns)),
        }
    }

    /// The clock `GATEHOUSE_TEST_CLOCK` asks for: the system clock when it is not set,
    /// an error when it is set but unreadable.
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var(TEST_CLOCK_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Clock::system()),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(format!("{TEST_CLOCK_ENV}={v:?}: {}", instant_syntax()))
            }
            Ok(v) => parse_setting(&v)
                .map(Clock::test_at)
                .ok_or_else(|| format!("{TEST_CLOCK_ENV}={v:?}: {}", instant_syntax())),
        }
    }

    /// Whether this is a test clock (only then can it be moved).
    pub fn is_test(&self) -> bool {
        self.test.is_some()
    }

    /// Nanoseconds since the Unix epoch, UTC.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.test {
            Some(t) => t.load(Relaxed),
            None => system_ns(),
        }
    }

    /// The same instant as a `SystemTime` (what the cache's HTTP dates compare with).
    #[inline]
    pub fn now(&self) -> SystemTime {
        match &self.test {
            Some(t) => UNIX_EPOCH + Duration::from_nanos(t.load(Relaxed)),
            None => SystemTime::now(),
        }
    }

    /// Moves the test clock forward; returns the new instant.
    pub fn advance(&self, by: Duration) -> Result<u64, NotATestClock> {
        let t = self.test.as_ref().ok_or(NotATestClock)?;
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let before = t
            .fetch_update(Relaxed, Relaxed, |ns| Some(ns.saturating_add(by)))
            .unwrap_or_else(|ns| ns);
        Ok(before.saturating_add(by))
    }

    /// Sets the test clock. It may go backwards (a test may replay a day).
    pub fn set(&self, at: u64) -> Result<u64, NotATestClock> {
        let t = self.test.as_ref().ok_or(NotATestClock)?;
        t.store(at, Relaxed);
        Ok(at)
    }
}

fn system_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What `GATEHOUSE_TEST_CLOCK` and `{"set": ...}` accept, for error messages.
pub fn instant_syntax() -> &'static str {
    "expected `now`, an RFC 3339 UTC time such as 2030-01-01T23:59:00Z, or Unix seconds"
}

/// `now` (the real current time), or what `parse_instant` reads.
pub fn parse_setting(s: &str) -> Option<u64> {
    if s.trim() == "now" {
        return Some(system_ns());
    }
    parse_instant(s)
}

/// `2030-01-01T23:59:00Z` (optionally with `.fff` fractions), or Unix seconds.
pub fn parse_instant(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return secs.checked_mul(NANOS_PER_SEC);
    }
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let (y, mo, day): (i64, u32, u32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, mi, sec): (u64, u64, u64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&mo) || day == 0 || day > days_in_month(y, mo) || h > 23 || mi > 59 {
        return None;
    }
    if sec > 60 || y < 1970 {
        return None;
    }
    let mut nanos = 0u64;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32);
    }
    let days = days_from_civil(y, mo, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + sec;
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

/// RFC 3339 with milliseconds, for the admin API.
pub fn format_instant(ns: u64) -> String {
    let secs = ns / NANOS_PER_SEC;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % NANOS_PER_SEC / 1_000_000
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_instants() {
        let t = parse_instant("2030-01-01T23:59:00Z").unwrap();
        assert_eq!(t / NANOS_PER_SEC, 1_893_542_340);
        assert_eq!(format_instant(t), "2030-01-01T23:59:00.000Z");
        assert_eq!(
            parse_instant("2024-02-29T12:00:00.5Z").unwrap() % NANOS_PER_SEC,
            500_000_000
        );
        assert_eq!(
            parse_instant("1700000000"),
            Some(1_700_000_000 * NANOS_PER_SEC)
        );
        assert_eq!(parse_instant("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_instant("2030-13-01T00:00:00Z"), None);
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn a_test_clock_stands_still_until_moved() {
        let t0 = parse_instant("2030-01-01T23:59:00Z").unwrap();
        let c = Clock::test_at(t0);
        assert!(c.is_test());
        assert_eq!(c.now_ns(), t0);
        assert_eq!(c.now_ns(), t0, "no real time passes on a test clock");
        assert_eq!(
            c.now(),
            UNIX_EPOCH + Duration::from_nanos(t0),
            "now() and now_ns() are the same instant"
        );
        assert_eq!(
            c.advance(Duration::from_secs(61)),
            Ok(t0 + 61 * NANOS_PER_SEC)
        );
        assert_eq!(
            format_instant(c.now_ns()),
            "2030-01-02T00:00:01.000Z",
            "crossed midnight UTC"
        );
        assert_eq!(c.set(t0), Ok(t0), "it may go back");
        assert_eq!(c.now_ns(), t0);
        assert_eq!(c.advance(Duration::MAX), Ok(u64::MAX), "saturates");
    }

    #[test]
    fn the_system_clock_cannot_be_moved() {
        let c = Clock::system();
        assert!(!c.is_test());
        assert_eq!(c.advance(Duration::from_secs(1)), Err(NotATestClock));
        assert_eq!(c.set(0), Err(NotATestClock));
        let before = system_ns();
        let now = c.now_ns();
        assert!(now >= before && now - before < 60 * NANOS_PER_SEC);
        let st = c.now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(st >= now);
    }

    #[test]
    fn settings_are_now_an_instant_or_unix_seconds() {
        let before = system_ns();
        let now = parse_setting("now").unwrap();
        assert!(now >= before && now - before < 60 * NANOS_PER_SEC);
        assert_eq!(
            parse_setting(" 2030-01-01T00:00:00Z "),
            Some(1_893_456_000 * NANOS_PER_SEC)
        );
        assert_eq!(
            parse_setting("1893456000"),
            Some(1_893_456_000 * NANOS_PER_SEC)
        );
        for bad in ["", "yes", "Now", "2030-01-01", "-5", "30s"] {
            assert_eq!(parse_setting(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for z in [-1, 0, 59, 10_957, 19_782, 47_481, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2000, 2), 29);
    }
}
