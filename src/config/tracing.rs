//! `tracing:` (OpenTelemetry traces, exported over OTLP/HTTP with protobuf bodies): the
//! file format and its checks. Absent means no tracing: no trace context is read or
//! written, nothing is recorded.

use super::model::Config;
use super::ConfigError;
use serde::{Deserialize, Serialize};

fn default_ratio() -> f64 {
    0.01
}
fn default_service_name() -> String {
    "gatehouse".into()
}
fn default_queue() -> usize {
    8192
}

/// The largest `tracing.queue`: spans are a few hundred bytes each, so this bounds the
/// queue's memory to some hundreds of MiB even when the collector is down.
pub const MAX_QUEUE: usize = 1_000_000;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// Head sampling: the share of new traces kept (0 to 1). Requests whose parent was
    /// sampled, and requests that end in an error, are kept whatever the ratio.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Finished spans waiting for export, at most; past it spans are dropped and counted
    /// in `gatehouse_trace_spans_dropped_total`.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

pub fn validate(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let Some(t) = &cfg.tracing else {
        return errs;
    };
    match t.otlp_endpoint.parse::<http::Uri>() {
        Ok(u)
            if matches!(u.scheme_str(), Some("http") | Some("https"))
                && u.authority().is_some() => {}
        _ => errs.push(ConfigError::new(
            "tracing.otlp_endpoint",
            format!(
                "{:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:4318/v1/traces)",
                t.otlp_endpoint
            ),
        )),
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errs.push(ConfigError::new(
            "tracing.sample_ratio",
            format!("{} is not between 0 and 1", t.sample_ratio),
        ));
    }
    if t.service_name.trim().is_empty() || t.service_name.len() > 256 {
        errs.push(ConfigError::new(
            "tracing.service_name",
            "must be a non-empty name of at most 256 bytes",
        ));
    }
    if t.queue == 0 || t.queue > MAX_QUEUE {
        errs.push(ConfigError::new(
            "tracing.queue",
            format!("{} is not between 1 and {MAX_QUEUE} spans", t.queue),
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(t: Tracing) -> Config {
        Config {
            tracing: Some(t),
            ..Config::default()
        }
    }

    #[test]
    fn bad_values_are_named_by_their_path() {
        let ok = Tracing {
            otlp_endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sample_ratio: 0.5,
            service_name: "gw".into(),
            queue: 10,
        };
        assert!(validate(&with(ok.clone())).is_empty());
        let bad = Tracing {
            otlp_endpoint: "127.0.0.1:4318".into(),
            sample_ratio: 1.5,
            service_name: " ".into(),
            queue: 0,
        };
        let paths: Vec<String> = validate(&with(bad)).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "tracing.otlp_endpoint",
                "tracing.sample_ratio",
                "tracing.service_name",
                "tracing.queue"
            ]
        );
    }
}
