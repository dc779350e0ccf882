//! Outlier ejection (`upstreams.X.outlier`): a target whose last `consecutive_failures`
//! attempts all failed (connect error, broken exchange or 5xx), or, with `failure_ratio`,
//! whose failed share of the attempts in the last `window` reaches it (once the window
//! holds `min_requests`), is taken out of the pool for `base_ejection`, doubled on each
//! repeat up to `max_ejection`. An ejection empties the target's window. The doubling is
//! forgotten once the target has stayed in for as long as its last ejection lasted. No
//! ejection happens while it would take more than `max_ejection_percent` of the targets
//! out of service (ejected, passively down or actively unhealthy), so the pool is never
//! emptied by it (below 100%).
//!
//! It extends passive health (`health.passive`), which stays as it was: a fixed
//! `cooldown` after `unhealthy_after` failures, without doubling or a cap. Both may be
//! on; a target is out while either holds it out. Ejection time is the one clock.

use super::window::Window;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    pub rate: Option<RateRule>,
}

/// `failure_ratio` over `window` with at least `min_requests` attempts.
#[derive(Debug, Clone, Copy)]
pub struct RateRule {
    pub failure_ratio: f64,
    pub bucket_ns: u64,
    pub min_requests: u64,
}

impl Settings {
    pub fn of(o: &crate::config::traffic::Outlier) -> Settings {
        Settings {
            consecutive_failures: o.consecutive_failures,
            base_ejection: o.base_ejection.0,
            max_ejection: o.max_ejection.0,
            max_ejection_percent: o.max_ejection_percent,
            rate: o.failure_ratio.map(|r| RateRule {
                failure_ratio: r,
                bucket_ns: super::window::bucket_ns(o.window.0),
                min_requests: u64::from(o.min_requests),
            }),
        }
    }

    /// The length of ejection number `n` (0 for the first).
    pub fn ejection(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base_ejection
            .checked_mul(factor)
            .unwrap_or(self.max_ejection)
            .min(self.max_ejection)
    }
}

/// One target's ejection state (atomics: read on every selection).
#[derive(Default)]
pub struct State {
    window: Window,
    fails: AtomicU32,
    /// Clock nanoseconds until which the target is out (0: never ejected).
    until_ns: AtomicU64,
    /// Ejections in a row (the doubling's exponent).
    times: AtomicU32,
    last_len_ns: AtomicU64,
}

/// What a failure did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    Ejected(Duration),
    /// Over the threshold, but ejecting would take too many targets out.
    Capped,
}

impl State {
    pub fn ejected(&self, now_ns: u64) -> bool {
        self.until_ns.load(Relaxed) > now_ns
    }

    pub fn ejections_in_a_row(&self) -> u32 {
        self.times.load(Relaxed)
    }

    pub fn until_ns(&self) -> u64 {
        self.until_ns.load(Relaxed)
    }

    pub fn record_success(&self, s: &Settings, now_ns: u64) {
        if self.fails.load(Relaxed) != 0 {
            self.fails.store(0, Relaxed);
        }
        if let Some(r) = &s.rate {
            self.window.add(now_ns / r.bucket_ns, true, false);
        }
    }

    /// A failed attempt. `out` is how many of the `total` targets are out of service now
    /// (for the cap).
    pub fn record_failure(&self, s: &Settings, now_ns: u64, out: usize, total: usize) -> Outcome {
        if self.ejected(now_ns) {
            // An attempt that started before the ejection: it is out already.
            return Outcome::Counted;
        }
        let n = self.fails.fetch_add(1, Relaxed) + 1;
        let over_rate = s.rate.is_some_and(|r| {
            let slot = now_ns / r.bucket_ns;
            self.window.add(slot, true, true);
            let (total, failed) = self.window.sums(slot);
            total >= r.min_requests && failed as f64 >= r.failure_ratio * total as f64
        });
        if n < s.consecutive_failures && !over_rate {
            return Outcome::Counted;
        }
        self.fails.store(0, Relaxed);
        self.window.clear();
        if (out + 1) * 100 > s.max_ejection_percent as usize * total {
            return Outcome::Capped;
        }
        let until = self.until_ns.load(Relaxed);
        let back_for = now_ns.saturating_sub(until);
        let times = if until == 0 || back_for > self.last_len_ns.load(Relaxed) {
            0
        } else {
            self.times.load(Relaxed)
        };
        let len = s.ejection(times);
        let len_ns = u64::try_from(len.as_nanos()).unwrap_or(u64::MAX);
        self.times.store(times.saturating_add(1), Relaxed);
        self.last_len_ns.store(len_ns, Relaxed);
        self.until_ns.store(now_ns.saturating_add(len_ns), Relaxed);
        Outcome::Ejected(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = crate::clock::NANOS_PER_SEC;

    fn settings() -> Settings {
        Settings {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejection_percent: 50,
            rate: None,
        }
    }

    #[test]
    fn ejection_doubles_on_repeats_up_to_the_max() {
        let s = settings();
        let t = State::default();
        let mut now = 100 * S;
        assert_eq!(t.record_failure(&s, now, 0, 2), Outcome::Counted);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Ejected(Duration::from_secs(10))
        );
        assert!(t.ejected(now));
        assert!(t.ejected(now + 10 * S - 1));
        now += 10 * S;
        assert!(!t.ejected(now), "back after base_ejection");
        t.record_failure(&s, now, 0, 2);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Ejected(Duration::from_secs(20)),
            "a repeat doubles"
        );
        now += 20 * S;
        t.record_failure(&s, now, 0, 2);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Ejected(Duration::from_secs(35)),
            "capped by max_ejection"
        );
        assert_eq!(t.ejections_in_a_row(), 3);
        // In for longer than the last ejection: the doubling is forgotten.
        now += 35 * S + 36 * S;
        t.record_failure(&s, now, 0, 2);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Ejected(Duration::from_secs(10))
        );
    }

    #[test]
    fn a_success_resets_the_run_and_the_cap_keeps_the_pool() {
        let s = settings();
        let t = State::default();
        t.record_failure(&s, S, 0, 2);
        t.record_success(&s, S);
        assert_eq!(t.record_failure(&s, S, 0, 2), Outcome::Counted);
        assert_eq!(
            t.record_failure(&s, S, 1, 2),
            Outcome::Capped,
            "one of two is out already: 50% is the cap"
        );
        assert!(!t.ejected(S));
        let one = State::default();
        one.record_failure(&s, S, 0, 1);
        assert_eq!(
            one.record_failure(&s, S, 0, 1),
            Outcome::Capped,
            "a single target is never ejected under 100%"
        );
        assert_eq!(s.ejection(40), Duration::from_secs(35));
    }

    #[test]
    fn a_failure_ratio_over_the_window_ejects_too() {
        let s = Settings {
            consecutive_failures: 100,
            rate: Some(RateRule {
                failure_ratio: 0.4,
                bucket_ns: S,
                min_requests: 6,
            }),
            ..settings()
        };
        let t = State::default();
        let now = 50 * S;
        for _ in 0..2 {
            assert_eq!(t.record_failure(&s, now, 0, 2), Outcome::Counted);
            t.record_success(&s, now);
        }
        t.record_success(&s, now);
        assert_eq!(
            t.record_failure(&s, now, 1, 2),
            Outcome::Capped,
            "3 of 6 reaches the ratio, but one of two targets is out already"
        );
        t.record_success(&s, now);
        t.record_failure(&s, now, 0, 2);
        t.record_success(&s, now);
        t.record_success(&s, now);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Counted,
            "2 of 5 since the capped check emptied the window"
        );
        t.record_success(&s, now);
        assert_eq!(
            t.record_failure(&s, now, 0, 2),
            Outcome::Ejected(Duration::from_secs(10)),
            "3 of 7"
        );
        // The window emptied with the ejection, and old attempts slide out of it.
        let later = now + 10 * S;
        t.record_failure(&s, later, 0, 2);
        for _ in 0..4 {
            t.record_success(&s, later);
        }
        assert_eq!(
            t.record_failure(&s, later, 0, 2),
            Outcome::Counted,
            "2 of 6"
        );
        let much_later = later + 20 * S;
        for _ in 0..5 {
            t.record_success(&s, much_later);
        }
        t.record_failure(&s, much_later, 0, 2);
        assert_eq!(
            t.record_failure(&s, much_later, 0, 2),
            Outcome::Counted,
            "2 of 7 in the new window: the earlier ones are out of it"
        );
    }
}
