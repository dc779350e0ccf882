//! The compiled form of `routes[].aggregate`: each call's upstream (the same runtime
//! upstream the proxy balances over, with its health and in-flight counts), its path
//! with the route's regex captures to fill in, its timeout and its metric handles. The
//! calls are made by `proxy::aggregate`.

use crate::config::transform::{self as cfg, AggregateOnError};
use crate::upstream::Upstream;
use prometheus::IntCounter;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Capture(String),
}

/// One result of a call, the `result` label of `gatehouse_aggregate_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Ok,
    /// No connection, or the exchange broke.
    Error,
    Timeout,
    /// A status other than 2xx.
    Status,
    /// The body is not JSON.
    Invalid,
    TooLarge,
    /// Every target of the upstream is out of service.
    NoTarget,
}

impl CallResult {
    pub const ALL: [CallResult; 7] = [
        CallResult::Ok,
        CallResult::Error,
        CallResult::Timeout,
        CallResult::Status,
        CallResult::Invalid,
        CallResult::TooLarge,
        CallResult::NoTarget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Error => "error",
            CallResult::Timeout => "timeout",
            CallResult::Status => "status",
            CallResult::Invalid => "invalid",
            CallResult::TooLarge => "too_large",
            CallResult::NoTarget => "no_target",
        }
    }
}

pub struct CallPlan {
    /// The call's key in the merged document (a name from the config).
    pub name: String,
    pub upstream: Arc<Upstream>,
    path: Vec<Part>,
    pub timeout: Duration,
    /// One counter per `CallResult`, in `CallResult::ALL` order.
    counters: Vec<IntCounter>,
}

impl CallPlan {
    /// The call's path, each `{name}` replaced by that capture of the route's regex. A
    /// capture is one segment: `/`, `?`, `#` and spaces in it are percent-encoded, so a
    /// client can never steer a call to another path or add a query.
    pub fn path(&self, captures: Option<&regex::Captures<'_>>) -> String {
        let mut out = String::new();
        for part in &self.path {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Capture(name) => {
                    let v = captures
                        .and_then(|c| c.name(name))
                        .map_or("", |m| m.as_str());
                    for ch in v.chars() {
                        match ch {
                            '/' => out.push_str("%2F"),
                            '?' => out.push_str("%3F"),
                            '#' => out.push_str("%23"),
                            ' ' => out.push_str("%20"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out
    }

    pub fn count(&self, r: CallResult) {
        if let Some(i) = CallResult::ALL.iter().position(|x| *x == r) {
            self.counters[i].inc();
        }
    }
}

pub struct AggregatePlan {
    pub on_error: AggregateOnError,
    pub calls: Vec<CallPlan>,
    /// Bound of each call's response body.
    pub max_size: u64,
    /// The route's `path_regex`, for the captures the paths use.
    pub regex: Option<regex::Regex>,
}

impl AggregatePlan {
    /// From a validated `aggregate:`; `upstreams` are the snapshot's built upstreams.
    /// `None` when a call's upstream is missing (validation refused such a config).
    pub fn compile(
        route: &str,
        a: &cfg::Aggregate,
        path_regex: Option<&str>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Option<AggregatePlan> {
        let m = crate::metrics::metrics();
        let mut calls = Vec::with_capacity(a.calls.len());
        for (name, c) in &a.calls {
            let upstream = upstreams.get(&c.upstream)?.clone();
            calls.push(CallPlan {
                name: name.clone(),
                upstream,
                path: parts(&c.path),
                timeout: c.timeout.map_or(cfg::DEFAULT_CALL_TIMEOUT, |t| t.0),
                counters: CallResult::ALL
                    .iter()
                    .map(|r| {
                        m.aggregate_calls
                            .with_label_values(&[route, name, r.label()])
                    })
                    .collect(),
            });
        }
        Some(AggregatePlan {
            on_error: a.on_error,
            calls,
            max_size: a.max_size.map_or(cfg::DEFAULT_RESPONSE_MAX_SIZE, |s| s.0),
            regex: path_regex.and_then(|r| regex::Regex::new(r).ok()),
        })
    }

    /// The upstream the route's common fields name: its first call's.
    pub fn first_upstream(&self) -> Option<&Arc<Upstream>> {
        self.calls.first().map(|c| &c.upstream)
    }
}

fn parts(path: &str) -> Vec<Part> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        let Some(end) = rest[i..].find('}') else {
            break;
        };
        if i > 0 {
            out.push(Part::Literal(rest[..i].to_string()));
        }
        out.push(Part::Capture(rest[i + 1..i + end].to_string()));
        rest = &rest[i + end + 1..];
    }
    if !rest.is_empty() {
        out.push(Part::Literal(rest.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_fill_the_path_as_one_segment() {
        let re = regex::Regex::new("^/c/(?P<id>[^?]+)$").unwrap();
        let plan = CallPlan {
            name: "order".into(),
            upstream: test_upstream(),
            path: parts("/orders/{id}/lines"),
            timeout: Duration::from_secs(1),
            counters: Vec::new(),
        };
        let caps = re.captures("/c/12").unwrap();
        assert_eq!(plan.path(Some(&caps)), "/orders/12/lines");
        let caps = re.captures("/c/1/../admin#x").unwrap();
        assert_eq!(plan.path(Some(&caps)), "/orders/1%2F..%2Fadmin%23x/lines");
        assert_eq!(plan.path(None), "/orders//lines");
    }

    fn test_upstream() -> Arc<Upstream> {
        let u: crate::config::model::Upstream =
            serde_yaml::from_str("{ targets: [ { address: \"127.0.0.1:9\" } ] }").unwrap();
        let plan = crate::upstream::Plan::compile(
            "t",
            &u,
            std::sync::Arc::new(crate::clock::Clock::system()),
        )
        .unwrap();
        Arc::new(Upstream::build("t", &u, plan))
    }
}
