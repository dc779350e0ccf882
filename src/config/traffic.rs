//! Traffic management keys of the file format: an upstream's `breaker`, `outlier` and
//! `retry` sections and a route's `deadline` (contract: docs/CONFIG.md, "Traffic
//! management"), with their shape checks. The runtime forms are `upstream::breaker`,
//! `upstream::outlier` and `upstream::retry`.

use super::units::Dur;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}
fn millis(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}

fn d_failure_ratio() -> f64 {
    0.5
}
fn d_window() -> Dur {
    secs(10)
}
fn d_min_requests() -> u32 {
    20
}
fn d_open_for() -> Dur {
    secs(5)
}
fn d_probes() -> u32 {
    3
}

/// `upstreams.X.breaker`: closed → open → half_open → closed, per upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Share of failed attempts over `window` that opens the circuit (0 < r ≤ 1).
    #[serde(default = "d_failure_ratio")]
    pub failure_ratio: f64,
    #[serde(default = "d_window")]
    pub window: Dur,
    /// Attempts the window must hold before the ratio counts.
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
    #[serde(default = "d_open_for")]
    pub open_for: Dur,
    #[serde(default = "d_probes")]
    pub half_open_probes: u32,
    /// Another upstream that takes the traffic while the circuit is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

fn d_consecutive() -> u32 {
    5
}
fn d_base_ejection() -> Dur {
    secs(10)
}
fn d_max_ejection() -> Dur {
    secs(300)
}
fn d_max_ejection_percent() -> u32 {
    50
}

/// `upstreams.X.outlier`: per-target ejection on consecutive failures.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outlier {
    #[serde(default = "d_consecutive")]
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat doubles it.
    #[serde(default = "d_base_ejection")]
    pub base_ejection: Dur,
    /// Extension: the doubling stops here.
    #[serde(default = "d_max_ejection")]
    pub max_ejection: Dur,
    /// No ejection takes the share of targets out of service above this.
    #[serde(default = "d_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Extension: also eject a target whose failed share of the attempts in `window`
    /// reaches this (0 < r <= 1), once the window holds `min_requests` attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(default = "d_window")]
    pub window: Dur,
    #[serde(default = "d_min_requests")]
    pub min_requests: u32,
}

/// One item of `retry.on`: `connect`, or a 5xx status (written `503` or `"503"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u64),
    Name(String),
}

/// What one item of `retry.on` means, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCondition {
    Connect,
    Status(u16),
}

impl RetryOn {
    pub fn condition(&self) -> Result<RetryCondition, String> {
        let status = |n: u64| {
            if (500..=599).contains(&n) {
                Ok(RetryCondition::Status(n as u16))
            } else {
                Err(format!("{n} is not a 5xx status"))
            }
        };
        match self {
            RetryOn::Status(n) => status(*n),
            RetryOn::Name(s) if s == "connect" => Ok(RetryCondition::Connect),
            RetryOn::Name(s) => match s.parse::<u64>() {
                Ok(n) => status(n),
                Err(_) => Err(format!("{s:?} must be connect or a 5xx status")),
            },
        }
    }
}

/// A share written `20%` (or the number 20).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Percent {
    Number(f64),
    Text(String),
}

impl Percent {
    /// The share as a ratio 0..=1.
    pub fn ratio(&self) -> Result<f64, String> {
        let n = match self {
            Percent::Number(n) => *n,
            Percent::Text(s) => s
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("{s:?} is not a percentage such as 20%"))?,
        };
        if n.is_finite() && (0.0..=100.0).contains(&n) {
            Ok(n / 100.0)
        } else {
            Err(format!("{n} is not between 0% and 100%"))
        }
    }
}

fn d_on() -> Vec<RetryOn> {
    vec![
        RetryOn::Name("connect".into()),
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
    ]
}
fn d_budget() -> Percent {
    Percent::Number(20.0)
}
fn d_min_retries() -> u32 {
    3
}
fn d_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .map(String::from)
        .to_vec()
}
fn d_max_retry_after() -> Dur {
    secs(1)
}

/// `retry.backoff`: the wait before retry n is a random time in [d/2, d], with
/// d = min(max, base × 2^(n-1)).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "d_base")]
    pub base: Dur,
    #[serde(default = "d_max")]
    pub max: Dur,
}

fn d_base() -> Dur {
    millis(25)
}
fn d_max() -> Dur {
    millis(250)
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: d_base(),
            max: d_max(),
        }
    }
}

/// `upstreams.X.retry`: which failures `retries` applies to, under what budget, how long
/// between attempts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "d_on")]
    pub on: Vec<RetryOn>,
    /// Retries at most this share of the requests of the budget window.
    #[serde(default = "d_budget")]
    pub budget: Percent,
    /// Extension: the sliding window the budget counts over.
    #[serde(default = "d_window")]
    pub budget_window: Dur,
    /// Extension: retries always allowed per budget window, so a quiet upstream can retry.
    #[serde(default = "d_min_retries")]
    pub min_retries: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Extension: the methods whose requests may be sent again after the upstream saw
    /// them (a failed connect is retried for any method: nothing was sent).
    #[serde(default = "d_methods")]
    pub methods: Vec<String>,
    /// Extension: the longest upstream `Retry-After` waited for before a retry; a longer
    /// one ends the retries and its response goes to the client.
    #[serde(default = "d_max_retry_after")]
    pub max_retry_after: Dur,
}

/// Shape checks of one upstream's traffic sections; `upstreams` are all the names, for
/// the fallback reference.
pub fn validate_upstream(
    p: &str,
    name: &str,
    breaker: Option<&Breaker>,
    outlier: Option<&Outlier>,
    retry: Option<&Retry>,
    is_upstream: &dyn Fn(&str) -> bool,
    errs: &mut Vec<ConfigError>,
) {
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));
    if let Some(b) = breaker {
        let bp = format!("{p}.breaker");
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            err(
                format!("{bp}.failure_ratio"),
                "must be more than 0 and at most 1".into(),
            );
        }
        if b.window.0 < Duration::from_secs(1) {
            err(format!("{bp}.window"), "must be at least 1s".into());
        }
        if b.min_requests == 0 {
            err(format!("{bp}.min_requests"), "must be at least 1".into());
        }
        if b.open_for.0 < Duration::from_millis(100) {
            err(format!("{bp}.open_for"), "must be at least 100ms".into());
        }
        if b.half_open_probes == 0 || b.half_open_probes > 1000 {
            err(
                format!("{bp}.half_open_probes"),
                "must be between 1 and 1000".into(),
            );
        }
        match b.fallback.as_deref() {
            Some(f) if f == name => err(
                format!("{bp}.fallback"),
                "must name another upstream, not this one".into(),
            ),
            Some(f) if !is_upstream(f) => {
                err(format!("{bp}.fallback"), format!("unknown upstream {f:?}"))
            }
            _ => {}
        }
    }
    if let Some(o) = outlier {
        let op = format!("{p}.outlier");
        if o.consecutive_failures == 0 {
            err(
                format!("{op}.consecutive_failures"),
                "must be at least 1".into(),
            );
        }
        if o.base_ejection.0 < Duration::from_millis(100) {
            err(
                format!("{op}.base_ejection"),
                "must be at least 100ms".into(),
            );
        }
        if o.max_ejection.0 < o.base_ejection.0 {
            err(
                format!("{op}.max_ejection"),
                "must be at least base_ejection".into(),
            );
        }
        if let Some(r) = o.failure_ratio {
            if !(r > 0.0 && r <= 1.0) {
                err(
                    format!("{op}.failure_ratio"),
                    "must be more than 0 and at most 1".into(),
                );
            }
        }
        if o.window.0 < Duration::from_secs(1) {
            err(format!("{op}.window"), "must be at least 1s".into());
        }
        if o.min_requests == 0 {
            err(format!("{op}.min_requests"), "must be at least 1".into());
        }
        if o.max_ejection_percent > 100 {
            err(
                format!("{op}.max_ejection_percent"),
                "must be between 0 and 100".into(),
            );
        }
    }
    if let Some(r) = retry {
        let rp = format!("{p}.retry");
        if r.on.is_empty() {
            err(
                format!("{rp}.on"),
                "list at least one of connect, 502, 503, 504 (or leave retry out)".into(),
            );
        }
        for (i, on) in r.on.iter().enumerate() {
            if let Err(e) = on.condition() {
                err(format!("{rp}.on[{i}]"), e);
            }
        }
        if let Err(e) = r.budget.ratio() {
            err(format!("{rp}.budget"), e);
        }
        if r.budget_window.0 < Duration::from_secs(1) {
            err(format!("{rp}.budget_window"), "must be at least 1s".into());
        }
        let bp = format!("{rp}.backoff");
        if r.backoff.base.0.is_zero() {
            err(format!("{bp}.base"), "must be more than 0".into());
        }
        if r.backoff.max.0 < r.backoff.base.0 {
            err(format!("{bp}.max"), "must be at least base".into());
        }
        if r.backoff.max.0 > Duration::from_secs(60) {
            err(format!("{bp}.max"), "must be at most 60s".into());
        }
        if r.max_retry_after.0 > Duration::from_secs(60) {
            err(
                format!("{rp}.max_retry_after"),
                "must be at most 60s".into(),
            );
        }
        for (i, m) in r.methods.iter().enumerate() {
            let token = !m.is_empty()
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
            if !token {
                err(
                    format!("{rp}.methods[{i}]"),
                    format!("{m:?} is not a method name in capitals (GET, PUT, ...)"),
                );
            }
        }
    }
}

/// `routes[].deadline`.
pub fn validate_deadline(p: &str, deadline: Option<Dur>, errs: &mut Vec<ConfigError>) {
    if let Some(d) = deadline {
        if d.0 < Duration::from_millis(1) {
            errs.push(ConfigError::new(
                format!("{p}.deadline"),
                "must be at least 1ms",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_items_and_percentages() {
        assert_eq!(
            RetryOn::Name("connect".into()).condition(),
            Ok(RetryCondition::Connect)
        );
        assert_eq!(
            RetryOn::Status(503).condition(),
            Ok(RetryCondition::Status(503))
        );
        assert_eq!(
            RetryOn::Name("504".into()).condition(),
            Ok(RetryCondition::Status(504))
        );
        assert!(RetryOn::Status(404).condition().is_err());
        assert!(RetryOn::Name("reset".into()).condition().is_err());
        assert_eq!(Percent::Text("20%".into()).ratio(), Ok(0.2));
        assert_eq!(Percent::Number(50.0).ratio(), Ok(0.5));
        assert!(Percent::Text("20".into()).ratio().is_err());
        assert!(Percent::Text("120%".into()).ratio().is_err());
    }

    /// What `validate` says about `upstreams` (and a route `r0` with `route_keys`).
    fn problems(upstreams: &str, route_keys: &str) -> Vec<(String, String)> {
        let yaml = format!(
            "listeners: [ {{ name: public, address: \"127.0.0.1:18080\" }} ]\n\
             upstreams:\n{upstreams}\
             routes: [ {{ name: r0, upstream: u{route_keys} }} ]\n"
        );
        crate::config::validate::problems_in(&yaml)
    }

    const T: &str = "targets: [ { address: \"127.0.0.1:9001\" } ]";

    #[test]
    fn the_contract_example_is_valid() {
        let ups = format!(
            "  u:\n    {T}\n    breaker: {{ failure_ratio: 0.5, window: 10s, min_requests: 20, open_for: 5s, half_open_probes: 3, fallback: s }}\n    outlier: {{ consecutive_failures: 5, base_ejection: 10s, max_ejection_percent: 50 }}\n    retry: {{ on: [connect, 502, 503, 504], budget: 20%, backoff: {{ base: 25ms, max: 250ms }} }}\n  s: {{ {T} }}\n"
        );
        assert_eq!(problems(&ups, ", deadline: 10s"), vec![]);
        let defaults = format!("  u: {{ {T}, breaker: {{}}, outlier: {{}}, retry: {{}} }}\n");
        assert_eq!(problems(&defaults, ""), vec![]);
    }

    #[test]
    fn bad_values_are_refused_with_their_yaml_paths() {
        let own = |s: &str| s.to_string();
        let ups = format!(
            "  u:\n    {T}\n    breaker: {{ failure_ratio: 1.5, window: 500ms, min_requests: 0, open_for: 10ms, half_open_probes: 0, fallback: u }}\n    outlier: {{ consecutive_failures: 0, base_ejection: 10s, max_ejection: 5s, max_ejection_percent: 101, failure_ratio: 0, window: 1ms, min_requests: 0 }}\n    retry: {{ on: [connect, 404, reset], budget: 120%, backoff: {{ base: 50ms, max: 10ms }}, methods: [get] }}\n"
        );
        let got = problems(&ups, ", deadline: 0ms");
        let want: Vec<(String, String)> = [
            (
                "upstreams.u.breaker.failure_ratio",
                "must be more than 0 and at most 1",
            ),
            ("upstreams.u.breaker.window", "must be at least 1s"),
            ("upstreams.u.breaker.min_requests", "must be at least 1"),
            ("upstreams.u.breaker.open_for", "must be at least 100ms"),
            (
                "upstreams.u.breaker.half_open_probes",
                "must be between 1 and 1000",
            ),
            (
                "upstreams.u.breaker.fallback",
                "must name another upstream, not this one",
            ),
            (
                "upstreams.u.outlier.consecutive_failures",
                "must be at least 1",
            ),
            (
                "upstreams.u.outlier.max_ejection",
                "must be at least base_ejection",
            ),
            (
                "upstreams.u.outlier.failure_ratio",
                "must be more than 0 and at most 1",
            ),
            ("upstreams.u.outlier.window", "must be at least 1s"),
            ("upstreams.u.outlier.min_requests", "must be at least 1"),
            (
                "upstreams.u.outlier.max_ejection_percent",
                "must be between 0 and 100",
            ),
            ("upstreams.u.retry.on[1]", "404 is not a 5xx status"),
            (
                "upstreams.u.retry.on[2]",
                "\"reset\" must be connect or a 5xx status",
            ),
            ("upstreams.u.retry.budget", "120 is not between 0% and 100%"),
            ("upstreams.u.retry.backoff.max", "must be at least base"),
            (
                "upstreams.u.retry.methods[0]",
                "\"get\" is not a method name in capitals (GET, PUT, ...)",
            ),
            ("routes[0].deadline", "must be at least 1ms"),
        ]
        .iter()
        .map(|(p, m)| (own(p), own(m)))
        .collect();
        assert_eq!(got, want);
        let unknown = format!("  u: {{ {T}, breaker: {{ fallback: nowhere }} }}\n");
        assert_eq!(
            problems(&unknown, ""),
            vec![(
                "upstreams.u.breaker.fallback".to_string(),
                "unknown upstream \"nowhere\"".to_string()
            )]
        );
    }
}
