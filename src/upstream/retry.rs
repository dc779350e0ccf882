//! The retry policy of one upstream (`upstreams.X.retry`), with `retries` as the most
//! retries of one request:
//!
//! - **what is retried** (`on`): `connect` (no connection; any method, nothing was sent),
//!   and the listed 5xx statuses of a response header, for the `methods` listed
//!   (idempotent ones by default). A broken exchange before any response counts as
//!   `504` when it timed out and as `502` otherwise, the statuses the gateway would
//!   answer with;
//! - **the budget**: retries are at most `budget` of the requests sent to the upstream
//!   over the sliding `budget_window`, plus `min_retries` per window so a quiet upstream
//!   can still retry. During a total outage the upstream sees at most
//!   (1 + budget) × requests + min_retries attempts, whatever `retries` says;
//! - **the wait** before retry n: a random time in [d/2, d], d = min(max, base × 2^(n-1));
//!   an upstream `Retry-After` (seconds or an HTTP date) replaces it when it is at most
//!   `max_retry_after`, and a longer one ends the retries (its response goes to the
//!   client). A route's `deadline` bounds the waits too: a retry whose wait would end
//!   past the deadline is not made.
//!
//! Budget counts are atomics in ten buckets on the one clock: fixed memory, no lock.

use crate::clock::Clock;
use crate::config::traffic::{self, RetryCondition};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Policy {
    pub on_connect: bool,
    /// Bit `s - 500` set: status `s` is retried.
    statuses: u128,
    methods: Vec<http::Method>,
    pub base: Duration,
    pub max: Duration,
    pub max_retry_after: Duration,
    pub budget: Budget,
}

impl Policy {
    /// The policy of a valid `retry:` section.
    pub fn of(r: &traffic::Retry, clock: Arc<Clock>) -> Policy {
        let mut on_connect = false;
        let mut statuses = 0u128;
        for on in &r.on {
            match on.condition() {
                Ok(RetryCondition::Connect) => on_connect = true,
                Ok(RetryCondition::Status(s)) => statuses |= 1u128 << (s - 500),
                Err(_) => {}
            }
        }
        Policy {
            on_connect,
            statuses,
            methods: r
                .methods
                .iter()
                .filter_map(|m| m.parse::<http::Method>().ok())
                .collect(),
            base: r.backoff.base.0,
            max: r.backoff.max.0,
            max_retry_after: r.max_retry_after.0,
            budget: Budget::new(
                r.budget.ratio().unwrap_or(0.2),
                r.min_retries,
                r.budget_window.0,
                clock,
            ),
        }
    }

    pub fn retries_status(&self, status: u16) -> bool {
        (500..=599).contains(&status) && self.statuses & (1u128 << (status - 500)) != 0
    }

    pub fn retries_method(&self, m: &http::Method) -> bool {
        self.methods.contains(m)
    }

    /// The wait before retry `n` (1 for the first), jittered in [d/2, d].
    pub fn backoff(&self, n: u32) -> Duration {
        use rand::Rng;
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        let d = self
            .base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max);
        let half = d / 2;
        let jitter = rand::thread_rng().gen_range(0..=(d - half).as_micros() as u64);
        half + Duration::from_micros(jitter)
    }
}

/// `Retry-After` of a response: delay seconds, or an HTTP date (against `now`, the wall
/// clock the upstream's date is written in). `None` when absent or unreadable.
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Requests and retries over a sliding window.
pub struct Budget {
    ratio: f64,
    min_retries: u64,
    bucket_ns: u64,
    clock: Arc<Clock>,
    /// Requests (first count) and retries (second).
    window: super::window::Window,
}

impl Budget {
    pub fn new(ratio: f64, min_retries: u32, window: Duration, clock: Arc<Clock>) -> Budget {
        Budget {
            ratio,
            min_retries: u64::from(min_retries),
            bucket_ns: super::window::bucket_ns(window),
            clock,
            window: Default::default(),
        }
    }

    fn slot(&self) -> u64 {
        self.clock.now_ns() / self.bucket_ns
    }

    /// A request is being sent to the upstream (its first attempt).
    pub fn note_request(&self) {
        self.window.add(self.slot(), true, false);
    }

    /// (requests, retries) within the window.
    pub fn sums(&self) -> (u64, u64) {
        self.window.sums(self.slot())
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_take(&self) -> bool {
        let (requests, retries) = self.sums();
        let allowed = ((requests as f64 * self.ratio) as u64).max(self.min_retries);
        if retries >= allowed {
            return false;
        }
        self.window.add(self.slot(), false, true);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = crate::clock::NANOS_PER_SEC;

    fn policy(clock: Arc<Clock>) -> Policy {
        let r: traffic::Retry = serde_yaml::from_str(
            "{ on: [connect, 503, \"504\"], budget: 20%, min_retries: 2, backoff: { base: 10ms, max: 50ms } }",
        )
        .unwrap();
        Policy::of(&r, clock)
    }

    #[test]
    fn what_is_retried() {
        let p = policy(Arc::new(Clock::test_at(S)));
        assert!(p.on_connect);
        assert!(p.retries_status(503) && p.retries_status(504));
        assert!(!p.retries_status(502) && !p.retries_status(500) && !p.retries_status(200));
        assert!(p.retries_method(&http::Method::GET));
        assert!(p.retries_method(&http::Method::PUT));
        assert!(!p.retries_method(&http::Method::POST));
        assert!(!p.retries_method(&http::Method::PATCH));
    }

    #[test]
    fn backoff_doubles_with_jitter_under_the_max() {
        let p = policy(Arc::new(Clock::test_at(S)));
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(5) && b1 <= Duration::from_millis(10));
            let b2 = p.backoff(2);
            assert!(b2 >= Duration::from_millis(10) && b2 <= Duration::from_millis(20));
            let b9 = p.backoff(9);
            assert!(b9 >= Duration::from_millis(25) && b9 <= Duration::from_millis(50));
            assert!(p.backoff(100) <= Duration::from_millis(50));
        }
    }

    #[test]
    fn the_budget_is_a_share_of_requests_with_a_minimum() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let p = policy(clock.clone());
        let b = &p.budget;
        assert!(b.try_take() && b.try_take(), "min_retries with no requests");
        assert!(!b.try_take());
        for _ in 0..20 {
            b.note_request();
        }
        assert!(b.try_take() && b.try_take(), "20% of 20 is 4");
        assert!(!b.try_take());
        assert_eq!(b.sums(), (20, 4));
        clock.advance(Duration::from_secs(11)).unwrap();
        assert_eq!(b.sums(), (0, 0), "the window slid past them");
        assert!(b.try_take());
        // A total outage: 100 requests, each wanting 3 retries.
        let clock = Arc::new(Clock::test_at(1000 * S));
        let p = policy(clock);
        let mut retries = 0;
        for _ in 0..100 {
            p.budget.note_request();
            for _ in 0..3 {
                if p.budget.try_take() {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 20, "20% of 100");
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(b"3", now), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(b" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            retry_after(later.as_bytes(), now),
            Some(Duration::from_secs(7))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(retry_after(past.as_bytes(), now), Some(Duration::ZERO));
        assert_eq!(retry_after(b"soon", now), None);
        assert_eq!(retry_after(b"-1", now), None);
    }
}
