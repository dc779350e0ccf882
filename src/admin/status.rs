//! What a scrape refreshes before `/metrics` is rendered, and (with `admin.ui`) the
//! status page's JSON (`GET /admin/status`).

use crate::runtime::Shared;

/// The status page: one self-contained file (markup, style and script inline; no
/// external script, font or image), compiled into the binary.
pub const PAGE: &str = include_str!("ui.html");

/// Brings every scrape-time gauge up to date: target health, cache and limit-store
/// figures, process resources, and open connections per configured upstream.
pub fn refresh_gauges(shared: &Shared) {
    let snap = shared.snapshot.load();
    for up in snap.upstreams.values() {
        up.refresh_gauges();
    }
    shared.resources.cache.refresh_gauges();
    shared.resources.stores.refresh_gauges();
    let by_remote = crate::telemetry::refresh_process();
    let gauge = &crate::metrics::metrics().upstream_open_connections;
    // Only the upstreams of the config in force: one removed by a reload loses its
    // series, and nothing outside the config ever becomes a label.
    gauge.reset();
    for up in snap.upstreams.values() {
        let open: u64 = up
            .targets
            .iter()
            .map(|t| by_remote.get(&t.addr).copied().unwrap_or(0))
            .sum();
        gauge.with_label_values(&[&up.name]).set(open as i64);
    }
}

/// Label `name` of one sample.
fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.label
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

fn families(c: &dyn prometheus::core::Collector) -> Vec<prometheus::proto::MetricFamily> {
    c.collect()
}

/// `GET /admin/status`: what the status page shows, from the gateway's own counters
/// (cumulative: the page turns two polls into rates and the histogram buckets between
/// them into p50/p99). Every name in it comes from the config or is fixed, except the
/// consumer ids of `consumers`, at most `policy::consumer_stats::TOP` of them.
pub async fn status_json(shared: &Shared) -> serde_json::Value {
    use serde_json::json;
    use std::collections::BTreeMap;
    refresh_gauges(shared);
    // The snapshot is held across the store reads of `consumers` (a reload meanwhile
    // leaves this one alive until the answer is built).
    let snap = shared.snapshot.load_full();
    let cfg = &snap.loaded.config;
    let m = crate::metrics::metrics();
    let limits = &snap.policies.limits;
    let consumers = limits.consumers.status(limits, cfg).await;

    // Requests by route: total and 5xx; duration buckets by route.
    let mut requests: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in families(&m.http_requests) {
        for s in f.get_metric() {
            let e = requests.entry(label(s, "route").to_string()).or_default();
            let n = s.counter.value() as u64;
            e.0 += n;
            let status = label(s, "status");
            if status.starts_with('5') || status == "000" {
                e.1 += n;
            }
        }
    }
    let mut durations: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for f in families(&m.http_duration) {
        for s in f.get_metric() {
            let h = &s.histogram;
            let buckets: Vec<serde_json::Value> = h
                .get_bucket()
                .iter()
                .map(|b| json!([b.upper_bound(), b.cumulative_count()]))
                .collect();
            durations.insert(
                label(s, "route").to_string(),
                json!({"count": h.sample_count(), "buckets": buckets}),
            );
        }
    }
    let mut refusals: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for f in families(&m.ratelimit_rejections) {
        for s in f.get_metric() {
            refusals
                .entry(label(s, "route").to_string())
                .or_default()
                .push(json!({"limit": label(s, "limit"), "refused": s.counter.value() as u64}));
        }
    }
    let routes: Vec<serde_json::Value> = cfg
        .routes
        .iter()
        .map(|r| {
            let (total, errors) = requests.get(&r.name).copied().unwrap_or_default();
            json!({
                "name": r.name,
                // A versioned, split or aggregate route names several: all of them.
                "upstream": crate::config::route_traffic::destination_upstreams(r).join(", "),
                "requests": total,
                "errors": errors,
                "duration": durations.get(&r.name).cloned().unwrap_or(json!({"count": 0, "buckets": []})),
                "limit_refusals": refusals.get(&r.name).cloned().unwrap_or_default(),
            })
        })
        .collect();

    let mut open: BTreeMap<String, i64> = BTreeMap::new();
    for f in families(&m.downstream_connections) {
        for s in f.get_metric() {
            open.insert(label(s, "listener").to_string(), s.gauge.value() as i64);
        }
    }
    let listeners: Vec<serde_json::Value> = cfg
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "address": l.address,
                "tls": l.tls.is_some(),
                "open_connections": open.get(&l.name).copied().unwrap_or(0),
                "max_connections": l.max_connections,
            })
        })
        .collect();

    let mut upstream_open: BTreeMap<String, i64> = BTreeMap::new();
    for f in families(&m.upstream_open_connections) {
        for s in f.get_metric() {
            upstream_open.insert(label(s, "upstream").to_string(), s.gauge.value() as i64);
        }
    }
    let upstreams: Vec<serde_json::Value> = snap
        .upstreams
        .values()
        .map(|u| {
            let mut v = u.status_json();
            v["open_connections"] = json!(upstream_open.get(&u.name).copied().unwrap_or(0));
            v
        })
        .collect();

    let mut lookups: BTreeMap<String, u64> = BTreeMap::new();
    for f in families(&m.cache_lookups) {
        for s in f.get_metric() {
            *lookups.entry(label(s, "result").to_string()).or_default() += s.counter.value() as u64;
        }
    }
    let mut limit_keys: BTreeMap<String, i64> = BTreeMap::new();
    for f in families(&m.limit_keys) {
        for s in f.get_metric() {
            limit_keys.insert(label(s, "limit").to_string(), s.gauge.value() as i64);
        }
    }

    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("GATEHOUSE_COMMIT"),
        "now_unix_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        "ready": shared.is_ready(),
        // SIGTERM, or an upgrade handing over to a new process.
        "draining": shared.draining.load(std::sync::atomic::Ordering::Relaxed),
        "active_requests": shared.active_requests.load(std::sync::atomic::Ordering::Relaxed),
        "config": {
            "version_hash": snap.loaded.version_hash,
            "loaded_at": crate::accesslog::rfc3339(snap.loaded_at),
            "history": crate::telemetry::load_history(),
        },
        "listeners": listeners,
        "routes": routes,
        "upstreams": upstreams,
        "cache": {
            "configured": snap.cache.is_some(),
            "lookups": lookups,
            "stored_bytes": m.cache_stored_bytes.get(),
            "memory_limit_bytes": m.cache_memory_limit.get(),
            "entries": m.cache_entries.get(),
            "evictions": m.cache_evictions.get(),
        },
        "limits": {
            "keys": limit_keys,
            "rejected": families(&m.rejected).iter().flat_map(|f| f.get_metric().iter().map(|s| (label(s, "reason").to_string(), s.counter.value() as u64)).collect::<Vec<_>>()).collect::<BTreeMap<_, _>>(),
        },
        // The top consumers by refusals, with their quota use (`consumer_stats`).
        "consumers": consumers,
        "process": {
            "resident_memory_bytes": m.process_resident_memory.get(),
            "open_fds": m.process_open_fds.get(),
            "max_fds": m.process_max_fds.get(),
        },
        "tracing": snap.loaded.config.tracing.as_ref().map(|t| json!({
            "sample_ratio": t.sample_ratio,
            "spans_dropped": m.trace_spans_dropped.get(),
        })),
    })
}
