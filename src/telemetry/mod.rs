//! What the gateway tells about itself beyond per-request metrics: build and config
//! identity, process resources (`process`), and OpenTelemetry traces (`trace`).
//!
//! It sits with the building blocks (below the policies and the proxy): the request
//! context holds a request's trace (`trace::RequestTrace`) and the proxy phases fill it.

pub mod process;
pub mod trace;

use std::sync::Mutex;
use std::time::SystemTime;

/// The hash `gatehouse_config_info` shows now, so a reload can remove its series.
static CONFIG_HASH: Mutex<Option<String>> = Mutex::new(None);

/// A config was applied (at start, or by a reload): `gatehouse_config_info{hash}` names
/// it alone, and the reload time moves to `at`.
pub fn config_loaded(hash: &str, at: SystemTime) {
    let m = crate::metrics::metrics();
    let mut current = CONFIG_HASH.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(old) = current.as_deref() {
        if old != hash {
            let _ = m.config_info.remove_label_values(&[old]);
        }
    }
    m.config_info.with_label_values(&[hash]).set(1);
    *current = Some(hash.to_string());
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    m.config_last_reload.set(secs as i64);
}

/// Refreshes the process gauges (resident memory, descriptors) for a scrape, and gives
/// back this process's established connections by remote address, from which the caller
/// sets the per-upstream gauge.
pub fn refresh_process() -> std::collections::HashMap<std::net::SocketAddr, u64> {
    let m = crate::metrics::metrics();
    if let Some(rss) = process::resident_bytes() {
        m.process_resident_memory.set(rss as i64);
    }
    if let Some(max) = process::max_fds() {
        m.process_max_fds.set(max as i64);
    }
    match process::fds() {
        Some(fds) => {
            m.process_open_fds.set(fds.open as i64);
            process::established_by_remote(&fds)
        }
        None => Default::default(),
    }
}
