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

/// The last config loads and refused reloads, newest last (the status page's history).
static HISTORY: Mutex<std::collections::VecDeque<Load>> =
    Mutex::new(std::collections::VecDeque::new());
/// Loads kept in `HISTORY`, and errors kept per refused reload.
const HISTORY_LEN: usize = 16;
const ERRORS_KEPT: usize = 20;

/// One config load: applied (at start or by a reload) or refused.
#[derive(Clone, serde::Serialize)]
pub struct Load {
    pub unix_ms: u64,
    /// `start`, `reload` or `refused`.
    pub result: &'static str,
    /// The applied config's hash (none for a refused one).
    pub hash: Option<String>,
    /// A refused reload's errors, `path: message`, the first `ERRORS_KEPT`.
    pub errors: Vec<String>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn remember(load: Load) {
    let mut h = HISTORY.lock().unwrap_or_else(|e| e.into_inner());
    if h.len() == HISTORY_LEN {
        h.pop_front();
    }
    h.push_back(load);
}

/// A reload was refused with `errors` (the running config stays).
pub fn config_refused(errors: &[crate::config::ConfigError]) {
    remember(Load {
        unix_ms: unix_ms(SystemTime::now()),
        result: "refused",
        hash: None,
        errors: errors
            .iter()
            .take(ERRORS_KEPT)
            .map(|e| e.to_string())
            .collect(),
    });
}

/// The recent loads, oldest first.
pub fn load_history() -> Vec<Load> {
    HISTORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

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
    remember(Load {
        unix_ms: unix_ms(at),
        result: if current.is_none() { "start" } else { "reload" },
        hash: Some(hash.to_string()),
        errors: Vec::new(),
    });
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
