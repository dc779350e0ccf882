//! The time that rate limits and quotas read, and UTC calendar arithmetic for quota
//! windows.
//!
//! Production reads the system clock. A test clock exists so that integration tests can
//! drive time (cross midnight UTC, refill a bucket) without sleeping through a window:
//! it is on only when the process starts with `GATEHOUSE_TEST_CLOCK` set (an RFC 3339
//! UTC time such as `2030-01-01T23:59:00Z`, or Unix seconds). Then the clock stands
//! still at that instant and moves only through the admin API (`POST /admin/clock`,
//! bearer token required), and the process logs a warning at start. Without the
//! variable the admin route answers 404 and nothing can move the clock.
//!
//! The limit logic itself takes `now` as an argument (nanoseconds since the Unix epoch),
//! so unit tests and benches pass any time they like.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that turns the test clock on.
pub const TEST_CLOCK_ENV: &str = "GATEHOUSE_TEST_CLOCK";

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

static MANUAL_ON: AtomicBool = AtomicBool::new(false);
static MANUAL_NOW: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds since the Unix epoch, UTC.
#[inline]
pub fn now() -> u64 {
    if MANUAL_ON.load(Relaxed) {
        return MANUAL_NOW.load(Relaxed);
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads `GATEHOUSE_TEST_CLOCK` once at start. Returns the start instant when the test
/// clock was turned on, an error when the variable is set but unreadable.
pub fn init_from_env() -> Result<Option<u64>, String> {
    let Ok(v) = std::env::var(TEST_CLOCK_ENV) else {
        return Ok(None);
    };
    let start = parse_instant(&v)
        .ok_or_else(|| format!("{TEST_CLOCK_ENV}={v:?}: expected e.g. 2030-01-01T23:59:00Z"))?;
    MANUAL_NOW.store(start, Relaxed);
    MANUAL_ON.store(true, Relaxed);
    Ok(Some(start))
}

/// Whether the test clock is on (only then can the admin API move it).
pub fn is_manual() -> bool {
    MANUAL_ON.load(Relaxed)
}

/// Moves the test clock forward. Refused when the test clock is off.
pub fn advance(by: Duration) -> Result<u64, &'static str> {
    if !is_manual() {
        return Err("the test clock is off");
    }
    let by = by.as_nanos().min(u64::MAX as u128) as u64;
    Ok(MANUAL_NOW.fetch_add(by, Relaxed).saturating_add(by))
}

/// Sets the test clock. It may go backwards (a test may replay a day).
pub fn set(at: u64) -> Result<u64, &'static str> {
    if !is_manual() {
        return Err("the test clock is off");
    }
    MANUAL_NOW.store(at, Relaxed);
    Ok(at)
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
