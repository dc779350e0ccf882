//! The circuit breaker of one upstream (`upstreams.X.breaker`): closed → open →
//! half-open → closed.
//!
//! - **Closed:** every attempt's outcome goes into a sliding window of `window` (ten
//!   buckets); once it holds `min_requests` attempts and the failed share reaches
//!   `failure_ratio`, the circuit opens.
//! - **Open:** requests are not sent (the proxy answers 503 `circuit-open` with
//!   `Retry-After`, or uses the fallback upstream) until `open_for` has passed.
//! - **Half-open:** the next `half_open_probes` requests go through as probes, the rest
//!   are refused as while open. Every probe succeeding closes the circuit (with an empty
//!   window); one failing opens it again for `open_for`. A probe that ends without an
//!   outcome (the client left) gives its place back.
//!
//! Time is the one clock (`crate::clock`), so tests move it with `POST /admin/clock`.
//! The closed state is read without a lock (one atomic load per request); outcomes and
//! transitions take a short mutex. Its memory is fixed: ten buckets.

use crate::clock::Clock;
use parking_lot::Mutex;
use prometheus::IntGauge;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

const BUCKETS: usize = 10;

/// The `state` label of `gatehouse_circuit_transitions_total`, and the log's.
pub fn state_name(s: u8) -> &'static str {
    match s {
        OPEN => "open",
        HALF_OPEN => "half_open",
        _ => "closed",
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub failure_ratio: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
    pub fallback: Option<String>,
}

impl Settings {
    pub fn of(b: &crate::config::traffic::Breaker) -> Settings {
        Settings {
            failure_ratio: b.failure_ratio,
            window: b.window.0,
            min_requests: b.min_requests,
            open_for: b.open_for.0,
            half_open_probes: b.half_open_probes,
            fallback: b.fallback.clone(),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    total: u32,
    failed: u32,
}

/// A sliding window of outcomes in `BUCKETS` buckets of `window / BUCKETS` each.
struct Window {
    bucket_ns: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            bucket_ns: (window.as_nanos() as u64 / BUCKETS as u64).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn add(&mut self, now_ns: u64, ok: bool) {
        let slot = now_ns / self.bucket_ns;
        let b = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                total: 0,
                failed: 0,
            };
        }
        b.total = b.total.saturating_add(1);
        if !ok {
            b.failed = b.failed.saturating_add(1);
        }
    }

    /// (attempts, failures) of the buckets inside the window ending now.
    fn sums(&self, now_ns: u64) -> (u32, u32) {
        let slot = now_ns / self.bucket_ns;
        let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.slot >= oldest && b.slot <= slot && b.total > 0)
            .fold((0u32, 0u32), |(t, f), b| {
                (t.saturating_add(b.total), f.saturating_add(b.failed))
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

struct Inner {
    window: Window,
    open_until_ns: u64,
    /// Probes let through in this half-open period, and how many succeeded.
    probes_started: u32,
    probes_ok: u32,
    /// Counts half-open periods, so a probe of an earlier one reports nothing.
    generation: u64,
}

pub struct Breaker {
    pub settings: Settings,
    upstream: String,
    clock: Arc<Clock>,
    state: AtomicU8,
    inner: Mutex<Inner>,
    gauge: IntGauge,
}

/// What `admit` decided for one request.
pub enum Admit {
    Pass,
    /// Let through as a half-open probe: its outcome decides the circuit.
    Probe(Probe),
    /// Open (or half-open with every probe place taken): not to be sent.
    Refuse {
        retry_after_secs: u32,
    },
}

/// A half-open probe's place. Reported once (`Breaker::record` with it); dropped
/// unreported, it gives the place back for another request.
pub struct Probe {
    breaker: Arc<Breaker>,
    generation: u64,
    reported: AtomicBool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.reported.load(Relaxed) {
            let mut g = self.breaker.inner.lock();
            if g.generation == self.generation && self.breaker.state() == HALF_OPEN {
                g.probes_started = g.probes_started.saturating_sub(1);
            }
        }
    }
}

impl Breaker {
    pub fn new(upstream: &str, settings: Settings, clock: Arc<Clock>) -> Breaker {
        let gauge = crate::metrics::metrics()
            .circuit_state
            .with_label_values(&[upstream]);
        gauge.set(CLOSED as i64);
        Breaker {
            inner: Mutex::new(Inner {
                window: Window::new(settings.window),
                open_until_ns: 0,
                probes_started: 0,
                probes_ok: 0,
                generation: 0,
            }),
            settings,
            upstream: upstream.to_string(),
            clock,
            state: AtomicU8::new(CLOSED),
            gauge,
        }
    }

    pub fn state(&self) -> u8 {
        self.state.load(Relaxed)
    }

    /// Whether a retry may be sent now: only while closed (a half-open circuit's probes
    /// are single attempts, an open one sends nothing).
    pub fn allows_retry(&self) -> bool {
        self.state() == CLOSED
    }

    fn set_state(&self, g: &mut Inner, to: u8, why: &str) {
        let from = self.state.swap(to, Relaxed);
        if from == to {
            return;
        }
        if to == HALF_OPEN {
            g.probes_started = 0;
            g.probes_ok = 0;
        }
        // Every change starts a new period: probes of the old one report nothing.
        g.generation += 1;
        self.gauge.set(to as i64);
        crate::metrics::metrics()
            .circuit_transitions
            .with_label_values(&[&self.upstream, state_name(to)])
            .inc();
        if to == OPEN {
            tracing::warn!(upstream = %self.upstream, from = state_name(from), "circuit opened: {why}");
        } else {
            tracing::info!(upstream = %self.upstream, from = state_name(from), to = state_name(to), "circuit state changed: {why}");
        }
    }

    fn open(&self, g: &mut Inner, now: u64, why: &str) {
        g.open_until_ns = now.saturating_add(self.settings.open_for.as_nanos() as u64);
        self.set_state(g, OPEN, why);
    }

    /// Moves an open circuit whose time is up to half-open. Called per request and
    /// before metrics are rendered, so the gauge says what the next request meets.
    pub fn refresh(&self) {
        if self.state() == OPEN {
            let mut g = self.inner.lock();
            self.tick(&mut g, self.clock.now_ns());
        }
    }

    fn tick(&self, g: &mut Inner, now: u64) {
        if self.state() == OPEN && now >= g.open_until_ns {
            self.set_state(g, HALF_OPEN, "open_for elapsed");
        }
    }

    /// Whether a request may go to the upstream now.
    pub fn admit(self: &Arc<Self>) -> Admit {
        if self.state() == CLOSED {
            return Admit::Pass;
        }
        let now = self.clock.now_ns();
        let mut g = self.inner.lock();
        self.tick(&mut g, now);
        match self.state() {
            CLOSED => Admit::Pass,
            HALF_OPEN if g.probes_started < self.settings.half_open_probes => {
                g.probes_started += 1;
                Admit::Probe(Probe {
                    breaker: self.clone(),
                    generation: g.generation,
                    reported: AtomicBool::new(false),
                })
            }
            HALF_OPEN => Admit::Refuse {
                retry_after_secs: 1,
            },
            _ => {
                let left = g.open_until_ns.saturating_sub(now);
                Admit::Refuse {
                    retry_after_secs: left.div_ceil(crate::clock::NANOS_PER_SEC).max(1) as u32,
                }
            }
        }
    }

    /// The outcome of one attempt; `probe` when the request was let through half-open.
    pub fn record(&self, ok: bool, probe: Option<&Probe>) {
        let now = self.clock.now_ns();
        let mut g = self.inner.lock();
        if let Some(p) = probe {
            if p.reported.swap(true, Relaxed) {
                return;
            }
            if p.generation != g.generation || self.state() != HALF_OPEN {
                return;
            }
            if ok {
                g.probes_ok += 1;
                if g.probes_ok >= self.settings.half_open_probes {
                    g.window.clear();
                    self.set_state(&mut g, CLOSED, "every half-open probe succeeded");
                }
            } else {
                self.open(&mut g, now, "a half-open probe failed");
            }
            return;
        }
        // An attempt admitted while closed that ends after the circuit changed says
        // nothing about the new period.
        if self.state() != CLOSED {
            return;
        }
        g.window.add(now, ok);
        if ok {
            return;
        }
        let (total, failed) = g.window.sums(now);
        if total >= self.settings.min_requests
            && f64::from(failed) >= self.settings.failure_ratio * f64::from(total)
        {
            let why = format!(
                "{failed} of {total} attempts failed within {:?}",
                self.settings.window
            );
            self.open(&mut g, now, &why);
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let now = self.clock.now_ns();
        let g = self.inner.lock();
        let (total, failed) = g.window.sums(now);
        serde_json::json!({
            "state": state_name(self.state()),
            "window_attempts": total,
            "window_failures": failed,
            "open_for_ms_left": (self.state() == OPEN)
                .then(|| g.open_until_ns.saturating_sub(now) / 1_000_000),
            "fallback": self.settings.fallback,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = crate::clock::NANOS_PER_SEC;

    fn breaker(clock: &Arc<Clock>) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "unit-breaker",
            Settings {
                failure_ratio: 0.5,
                window: Duration::from_secs(10),
                min_requests: 4,
                open_for: Duration::from_secs(5),
                half_open_probes: 2,
                fallback: None,
            },
            clock.clone(),
        ))
    }

    fn probe(b: &Arc<Breaker>) -> Probe {
        match b.admit() {
            Admit::Probe(p) => p,
            Admit::Pass => panic!("expected a probe, passed"),
            Admit::Refuse { .. } => panic!("expected a probe, refused"),
        }
    }

    fn refused(b: &Arc<Breaker>) -> Option<u32> {
        match b.admit() {
            Admit::Refuse { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        }
    }

    #[test]
    fn opens_on_the_ratio_once_min_requests_are_in() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let b = breaker(&clock);
        for _ in 0..3 {
            b.record(false, None);
        }
        assert_eq!(b.state(), CLOSED, "3 attempts are under min_requests");
        b.record(true, None);
        assert_eq!(b.state(), CLOSED, "a success does not open it");
        b.record(false, None);
        assert_eq!(b.state(), OPEN, "4 failures of 5");
        assert_eq!(refused(&b), Some(5));
        clock.advance(Duration::from_millis(3500)).unwrap();
        assert_eq!(
            refused(&b),
            Some(2),
            "Retry-After is the time left, rounded up"
        );
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let b = breaker(&clock);
        for _ in 0..3 {
            b.record(false, None);
        }
        clock.advance(Duration::from_secs(11)).unwrap();
        b.record(false, None);
        assert_eq!(
            b.state(),
            CLOSED,
            "the first three are out of the 10s window"
        );
        for _ in 0..4 {
            b.record(true, None);
        }
        b.record(false, None);
        b.record(false, None);
        assert_eq!(b.state(), CLOSED, "3 failures of 7");
        b.record(false, None);
        assert_eq!(b.state(), OPEN, "4 of 8 is the ratio");
    }

    #[test]
    fn half_open_probes_close_it_or_a_failure_reopens_it() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let b = breaker(&clock);
        for _ in 0..4 {
            b.record(false, None);
        }
        assert_eq!(b.state(), OPEN);
        clock.advance(Duration::from_secs(5)).unwrap();
        let p1 = probe(&b);
        assert_eq!(b.state(), HALF_OPEN);
        let p2 = probe(&b);
        assert_eq!(refused(&b), Some(1), "both probe places are taken");
        b.record(true, Some(&p1));
        assert_eq!(b.state(), HALF_OPEN, "one of two probes");
        b.record(false, Some(&p2));
        assert_eq!(b.state(), OPEN, "a failed probe reopens");
        assert_eq!(refused(&b), Some(5));

        clock.advance(Duration::from_secs(5)).unwrap();
        let p1 = probe(&b);
        let p2 = probe(&b);
        b.record(true, Some(&p1));
        b.record(true, Some(&p1));
        assert_eq!(b.state(), HALF_OPEN, "a probe reports once");
        b.record(true, Some(&p2));
        assert_eq!(b.state(), CLOSED);
        assert!(matches!(b.admit(), Admit::Pass));
        for _ in 0..3 {
            b.record(false, None);
        }
        assert_eq!(b.state(), CLOSED, "closing empties the window");
    }

    #[test]
    fn an_unreported_probe_gives_its_place_back() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let b = breaker(&clock);
        for _ in 0..4 {
            b.record(false, None);
        }
        clock.advance(Duration::from_secs(5)).unwrap();
        let p1 = probe(&b);
        let p2 = probe(&b);
        assert!(refused(&b).is_some());
        drop(p1);
        let p3 = probe(&b);
        b.record(true, Some(&p2));
        b.record(true, Some(&p3));
        assert_eq!(b.state(), CLOSED);
        // A late outcome of a request admitted while closed, once open, is ignored.
        for _ in 0..4 {
            b.record(false, None);
        }
        assert_eq!(b.state(), OPEN);
        b.record(true, None);
        assert_eq!(b.state(), OPEN);
    }

    #[test]
    fn refresh_half_opens_for_the_gauge() {
        let clock = Arc::new(Clock::test_at(1000 * S));
        let b = breaker(&clock);
        for _ in 0..4 {
            b.record(false, None);
        }
        b.refresh();
        assert_eq!(b.state(), OPEN);
        clock.advance(Duration::from_secs(6)).unwrap();
        b.refresh();
        assert_eq!(b.state(), HALF_OPEN);
        assert_eq!(b.status_json()["state"], "half_open");
    }
}
