//! What a scrape refreshes before `/metrics` is rendered, and (with `admin.ui`) the
//! status page's JSON (`GET /admin/status`).

use crate::runtime::Shared;

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
