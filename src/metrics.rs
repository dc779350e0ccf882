//! Every metric, registered once in the process-wide Prometheus registry (the one that
//! `pingora-prometheus` also serves). Names and labels are the contract in CONFIG.md.
//! Hot-path users keep pre-resolved handles (see `runtime::Route` and `upstream`).
//!
//! **Label audit: what a client (or an upstream) can choose.** A Prometheus series lives
//! as long as the process, so every label value must come from a bounded set:
//!
//! | label | source | bound |
//! |---|---|---|
//! | `route`, `upstream`, `target`, `issuer`, `limit` | the config (names, addresses, limit ids) | the config's size |
//! | `method` | the client's request line | the registered methods (`method_label`); any other is `OTHER` |
//! | `status` (`http_requests`, `upstream_requests`) | our answer, or the upstream's status line (any 3 digits) | `status_label`: 100..=599, `000` for no response, else `other` |
//! | `status` (`upstream_requests`, failures) | fixed outcome names (`connect_error`, ...) | the names in `proxy` |
//! | `reason` (`auth_failures`) | `policy::auth::Failure::reason` | an enum |
//! | `reason` (`rejected`) | `proxy::Reject::slug` | an enum |
//! | `result`, `reused`, `backend`, `op`, `state`, `direction` | fixed strings | constants |
//! | `reason` (`upstream_retries`) | `connect` or a status of `retry.on` | the config |
//! | `call` (`aggregate_calls`) | the config (`aggregate.calls` names) | the config's size |
//! | `result`, `reused`, `backend`, `op` | fixed strings | constants |
//! | `scope`, `name`, `rule` (`ip_rejected`) | `listener`/`route`, the configured name, `allow`/`deny` | the config's size |
//! | `version` (`version_requests`) | the configured version names (never what a request names) | the config's size |
//! | `version`, `commit` (`build_info`) | the build | one series |
//! | `hash` (`config_info`) | the config file's SHA-256 | one series: a reload removes the old one |
//!
//! No label is taken from a header, a path, a query or a token claim.

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::OnceLock;

pub struct Metrics {
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub target_healthy: IntGaugeVec,
    pub upstream_connections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub ratelimit_rejections: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    /// Bytes the cache storage holds (bodies, headers and per-entry overhead).
    pub cache_stored_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub cache_memory_limit: IntGauge,
    pub cache_evictions: IntCounter,
    pub cache_evicted_bytes: IntCounter,
    pub config_reloads: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    /// Rejections the gateway answered itself, by reason: the problem type's slug
    /// (`error::Reject::slug`; a test in `error` keeps this list
    /// exact): bad-request, escaped-slash, backslash, matrix-dot-segment,
    /// path-route-mismatch, bad-host, unauthorized, insufficient-scope, no-route,
    /// body-too-large, headers-too-large, no-healthy-target, upstream-overloaded,
    /// bad-gateway, gateway-timeout, not-cached, internal-error, rate-limited,
    /// quota-exceeded, limit-store-unavailable, request-timeout, circuit-open,
    /// invalid-body, bad-upstream-body, aggregate-call-failed.
    /// quota-exceeded, limit-store-unavailable, request-timeout, ip-denied, uri-too-long,
    /// decompressed-body-too-large.
    /// quota-exceeded, limit-store-unavailable, request-timeout, unknown-version.
    pub rejected: IntCounterVec,
    /// Calls to the limit store (Redis, SQLite) that failed or timed out, by operation.
    pub store_errors: IntCounterVec,
    /// 1 while the limit store answers, 0 while `on_error` applies.
    pub store_up: IntGaugeVec,
    /// Keys each limit holds in memory (refreshed when /metrics is read).
    pub limit_keys: IntGaugeVec,
    /// Client connections open, by listener (parked keep-alive ones included).
    pub downstream_connections: IntGaugeVec,
    /// Client connections closed at accept because the listener was at `max_connections`.
    pub downstream_refused: IntCounterVec,
    /// Traffic management (`upstream::breaker`, `outlier`, `retry`): the circuit state
    /// per upstream (0 closed, 1 open, 2 half-open) and its changes by the state entered.
    pub circuit_state: IntGaugeVec,
    pub circuit_transitions: IntCounterVec,
    /// Requests sent to the breaker's fallback upstream while the circuit was open.
    pub circuit_fallbacks: IntCounterVec,
    /// Retries sent, by what was retried (`connect` or the status, from `retry.on`).
    pub upstream_retries: IntCounterVec,
    /// Retries `retry.on` asked for that the budget refused.
    pub retry_budget_exhausted: IntCounterVec,
    /// Outlier ejections (`ejected`), and ejections `max_ejection_percent` prevented (`capped`).
    pub outlier_ejections: IntCounterVec,
    /// Requests whose route `deadline` ended their attempts (answered 504).
    pub deadline_exceeded: IntCounterVec,
    /// Bodies a route's `request_body`/`response_body` handled, by route, direction
    /// (`request`, `response`) and result (`ok`, `invalid`, `too_large`, `passed`).
    pub body_transforms: IntCounterVec,
    /// Calls of aggregate routes, by route, call (both names from the config) and result
    /// (`ok`, `error`, `timeout`, `status`, `invalid`, `too_large`, `no_target`).
    pub aggregate_calls: IntCounterVec,
    /// Open WebSocket tunnels, by route (`proxy::streaming`).
    pub websocket_connections: IntGaugeVec,
    /// Requests refused by `ip` rules: `scope` listener | route, `name` the configured
    /// listener or route name, `rule` allow | deny (which list refused).
    pub ip_rejected: IntCounterVec,
    /// Requests of a versioned route, by configured version (`policy::versions`).
    pub version_requests: IntCounterVec,
    /// Requests of a split route, by the upstream they were placed on (`upstream::split`).
    pub split_requests: IntCounterVec,
    /// Mirrored copies by result: sent, failed, dropped, too_large (`upstream::mirror`).
    pub mirror_requests: IntCounterVec,
    /// Always 1; the labels say which build this is (`telemetry`).
    pub build_info: IntGaugeVec,
    /// Always 1, for the config in force only: a reload removes the old hash's series.
    pub config_info: IntGaugeVec,
    /// Unix time of the last config load that was applied (start or reload).
    pub config_last_reload: IntGauge,
    /// Established connections to each configured upstream's targets, pooled idle ones
    /// included (read from the kernel's socket table at scrape time: `telemetry::process`).
    pub upstream_open_connections: IntGaugeVec,
    pub process_resident_memory: IntGauge,
    pub process_open_fds: IntGauge,
    pub process_max_fds: IntGauge,
    /// Finished spans not exported because the export queue was full (`telemetry::trace`).
    pub trace_spans_dropped: IntCounter,
    /// Spans handed to the collector, by result (`ok`, `error`: the batch was refused or
    /// the collector unreachable, so its spans are lost too).
    pub trace_spans_exported: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    Ok(Metrics {
        http_requests: register_int_counter_vec!(
            "gatehouse_http_requests_total",
            "HTTP requests answered, by route, method and status",
            &["route", "method", "status"]
        )?,
        http_duration: register_histogram_vec!(
            "gatehouse_http_request_duration_seconds",
            "Time from request start to response end, by route",
            &["route"],
            LATENCY_BUCKETS.to_vec()
        )?,
        upstream_requests: register_int_counter_vec!(
            "gatehouse_upstream_requests_total",
            "Requests sent to upstream targets, by upstream status (or error)",
            &["upstream", "target", "status"]
        )?,
        upstream_duration: register_histogram_vec!(
            "gatehouse_upstream_duration_seconds",
            "Time from sending to an upstream until its response header arrived",
            &["upstream"],
            LATENCY_BUCKETS.to_vec()
        )?,
        target_healthy: register_int_gauge_vec!(
            "gatehouse_upstream_target_healthy",
            "1 when the target receives traffic, 0 when it is out",
            &["upstream", "target"]
        )?,
        upstream_connections: register_int_counter_vec!(
            "gatehouse_upstream_connections_total",
            "Upstream connections used, by whether they were reused from the pool",
            &["upstream", "reused"]
        )?,
        auth_failures: register_int_counter_vec!(
            "gatehouse_auth_failures_total",
            "Requests refused by authentication or authorization",
            &["route", "reason"]
        )?,
        ratelimit_rejections: register_int_counter_vec!(
            "gatehouse_ratelimit_rejections_total",
            "Requests refused by a rate limit or quota",
            &["route", "limit"]
        )?,
        cache_lookups: register_int_counter_vec!(
            "gatehouse_cache_lookups_total",
            "Cache lookups by result",
            &["route", "result"]
        )?,
        cache_stored_bytes: register_int_gauge!(
            "gatehouse_cache_stored_bytes",
            "Bytes held by the response cache, overhead included (bounded by cache.memory)"
        )?,
        cache_entries: register_int_gauge!(
            "gatehouse_cache_entries",
            "Responses held by the response cache"
        )?,
        cache_memory_limit: register_int_gauge!(
            "gatehouse_cache_memory_limit_bytes",
            "The cache.memory bound in force"
        )?,
        cache_evictions: register_int_counter!(
            "gatehouse_cache_evictions_total",
            "Cached responses evicted to stay within cache.memory"
        )?,
        cache_evicted_bytes: register_int_counter!(
            "gatehouse_cache_evicted_bytes_total",
            "Bytes freed by evictions"
        )?,
        config_reloads: register_int_counter_vec!(
            "gatehouse_config_reloads_total",
            "Config reloads by result",
            &["result"]
        )?,
        jwks_refreshes: register_int_counter_vec!(
            "gatehouse_jwks_refreshes_total",
            "JWKS fetches by issuer and result",
            &["issuer", "result"]
        )?,
        rejected: register_int_counter_vec!(
            "gatehouse_rejected_requests_total",
            "Rejections the gateway answered itself (problem+json), by reason",
            &["reason"]
        )?,
        store_errors: register_int_counter_vec!(
            "gatehouse_limit_store_errors_total",
            "Limit store calls that failed or timed out, by backend and operation",
            &["backend", "op"]
        )?,
        store_up: register_int_gauge_vec!(
            "gatehouse_limit_store_up",
            "1 while the limit store answers, 0 while on_error applies",
            &["backend"]
        )?,
        limit_keys: register_int_gauge_vec!(
            "gatehouse_limit_keys",
            "Keys a rate limit or quota holds in memory (bounded by store.max_keys)",
            &["limit"]
        )?,
        downstream_connections: register_int_gauge_vec!(
            "gatehouse_downstream_connections",
            "Client connections open, by listener",
            &["listener"]
        )?,
        downstream_refused: register_int_counter_vec!(
            "gatehouse_downstream_connections_refused_total",
            "Client connections refused at accept because the listener was at max_connections",
            &["listener"]
        )?,
        circuit_state: register_int_gauge_vec!(
            "gatehouse_circuit_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open",
            &["upstream"]
        )?,
        circuit_transitions: register_int_counter_vec!(
            "gatehouse_circuit_transitions_total",
            "Circuit breaker state changes, by the state entered (open, half_open, closed)",
            &["upstream", "state"]
        )?,
        circuit_fallbacks: register_int_counter_vec!(
            "gatehouse_circuit_fallback_requests_total",
            "Requests sent to the breaker's fallback upstream while the circuit was open",
            &["upstream"]
        )?,
        upstream_retries: register_int_counter_vec!(
            "gatehouse_upstream_retries_total",
            "Retries sent to an upstream, by what was retried (connect or a status)",
            &["upstream", "reason"]
        )?,
        retry_budget_exhausted: register_int_counter_vec!(
            "gatehouse_upstream_retry_budget_exhausted_total",
            "Retries the upstream's retry budget refused",
            &["upstream"]
        )?,
        outlier_ejections: register_int_counter_vec!(
            "gatehouse_outlier_ejections_total",
            "Outlier ejections (ejected) and ejections max_ejection_percent prevented (capped)",
            &["upstream", "result"]
        )?,
        deadline_exceeded: register_int_counter_vec!(
            "gatehouse_route_deadline_exceeded_total",
            "Requests whose route deadline ended their upstream attempts (504)",
            &["route"]
        )?,
        body_transforms: register_int_counter_vec!(
            "gatehouse_body_transforms_total",
            "Bodies transformed by a route (request_body, response_body), by result",
            &["route", "direction", "result"]
        )?,
        aggregate_calls: register_int_counter_vec!(
            "gatehouse_aggregate_calls_total",
            "Upstream calls made by aggregate routes, by call and result",
            &["route", "call", "result"]
        )?,
        websocket_connections: register_int_gauge_vec!(
            "gatehouse_websocket_connections",
            "Open WebSocket connections (upgraded tunnels), by route",
            &["route"]
        )?,
        ip_rejected: register_int_counter_vec!(
            "gatehouse_ip_rejected_total",
            "Requests refused by a listener's or route's ip rules, by scope, name and rule",
            &["scope", "name", "rule"]
        )?,
        version_requests: register_int_counter_vec!(
            "gatehouse_version_requests_total",
            "Requests of a versioned route, by the configured version they reached",
            &["route", "version"]
        )?,
        split_requests: register_int_counter_vec!(
            "gatehouse_split_requests_total",
            "Requests of a split route, by the upstream they were placed on",
            &["route", "upstream"]
        )?,
        mirror_requests: register_int_counter_vec!(
            "gatehouse_mirror_requests_total",
            "Mirrored copies of requests, by result (sent, failed, dropped, too_large)",
            &["route", "result"]
        )?,
        build_info: register_int_gauge_vec!(
            "gatehouse_build_info",
            "Always 1: the gateway's version and the commit it was built from",
            &["version", "commit"]
        )?,
        config_info: register_int_gauge_vec!(
            "gatehouse_config_info",
            "Always 1: the SHA-256 of the config file in force",
            &["hash"]
        )?,
        config_last_reload: register_int_gauge!(
            "gatehouse_config_last_reload_timestamp_seconds",
            "Unix time at which the config in force was loaded (start or reload)"
        )?,
        upstream_open_connections: register_int_gauge_vec!(
            "gatehouse_upstream_open_connections",
            "Established connections to the upstream's targets, pooled idle ones included",
            &["upstream"]
        )?,
        process_resident_memory: register_int_gauge!(
            "process_resident_memory_bytes",
            "Resident memory size in bytes"
        )?,
        process_open_fds: register_int_gauge!(
            "process_open_fds",
            "Number of open file descriptors"
        )?,
        process_max_fds: register_int_gauge!(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)"
        )?,
        trace_spans_dropped: register_int_counter!(
            "gatehouse_trace_spans_dropped_total",
            "Finished spans dropped because the export queue (tracing.queue) was full"
        )?,
        trace_spans_exported: register_int_counter_vec!(
            "gatehouse_trace_spans_exported_total",
            "Spans sent to the OTLP collector, by result (error: the batch was lost)",
            &["result"]
        )?,
    })
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics. Registration cannot fail for these fixed, distinct names; if it
/// ever did, that is a programming error caught by the first test that runs.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let m = build().expect("metric registration");
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GATEHOUSE_COMMIT")])
            .set(1);
        m
    })
}

/// Prometheus text format of everything registered.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let enc = prometheus::TextEncoder::new();
    let _ = enc.encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// `gatehouse_http_requests_total` handles of one route, resolved once per (method,
/// status) and then reused: `with_label_values` hashes every label string and takes the
/// vector's lock on each call, which is measurable per request (issue 3's profile).
pub struct RequestCounters {
    route: String,
    /// Keyed by label values, so every invented method shares the `OTHER` handle.
    handles: parking_lot::RwLock<std::collections::HashMap<(&'static str, u16), IntCounter>>,
}

impl RequestCounters {
    /// At most this many distinct (method, status) pairs are cached per route; past it
    /// (an upstream answering with many distinct statuses) the vector is asked directly.
    const MAX: usize = 256;

    pub fn new(route: &str) -> Self {
        RequestCounters {
            route: route.to_string(),
            handles: Default::default(),
        }
    }

    pub fn inc(&self, method: &http::Method, status: u16) {
        let m = method_label(method.as_str());
        if let Some(c) = self.handles.read().get(&(m, status)) {
            c.inc();
            return;
        }
        let c = http_requests(&self.route, method.as_str(), status);
        c.inc();
        let mut w = self.handles.write();
        if w.len() < Self::MAX {
            w.insert((m, status), c);
        }
    }
}

/// The `method` label: the methods registered for HTTP (RFC 9110 §9 and PATCH, RFC
/// 5789) keep their name; every other token a client sends is `OTHER`. WebDAV methods are
/// not listed: nothing in the gateway treats them specially, and an API that uses them can
/// still tell them apart in the access log, which records the method as sent.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

/// The `status` label: a status an HTTP answer can have (100..=599) as its three digits,
/// `000` when no response was sent, `other` for anything else an upstream wrote (the
/// parser accepts any three digits).
pub fn status_label(status: u16, buf: &mut itoa::Buffer) -> &str {
    match status {
        0 => "000",
        100..=599 => buf.format(status),
        _ => "other",
    }
}

/// The `gatehouse_http_requests_total` handle of one (route, method, status); a request
/// that got no response at all (status 0) is labelled `000`.
pub fn http_requests(route: &str, method: &str, status: u16) -> IntCounter {
    let mut buf = itoa::Buffer::new();
    let status = status_label(status, &mut buf);
    metrics()
        .http_requests
        .with_label_values(&[route, method_label(method), status])
}

/// Counts one in a gauge for as long as it lives (an open WebSocket tunnel).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn inc(g: IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_and_statuses_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("M1"), "OTHER");
        assert_eq!(method_label("get"), "OTHER", "methods are case-sensitive");
        let mut b = itoa::Buffer::new();
        assert_eq!(status_label(0, &mut b), "000");
        assert_eq!(status_label(100, &mut b), "100");
        assert_eq!(status_label(599, &mut b), "599");
        assert_eq!(status_label(600, &mut b), "other");
        assert_eq!(status_label(999, &mut b), "other");
    }
}
