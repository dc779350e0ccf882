//! Per-request state carried through Pingora's phases.

use crate::error::Reject;
use crate::runtime::{Route, Shared, Snapshot};
use crate::upstream::{Target, Upstream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Counts the request in `Shared::active_requests` for as long as it lives.
pub struct ActiveGuard(pub Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Relaxed);
    }
}

/// Holds one slot of an upstream's `max_inflight`.
pub struct UpstreamSlot(pub Arc<Upstream>);

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// Counts the request against one target (least_requests reads this).
pub struct TargetSlot(pub Arc<Target>);

impl Drop for TargetSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

pub struct Ctx {
    pub start: Instant,
    pub _active: ActiveGuard,
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    pub request_id: String,
    /// Path to send upstream when it differs from the client's. The query is taken from
    /// the request as the policies left it (an API key parameter may be removed).
    pub upstream_path: Option<String>,
    pub tried: Vec<usize>,
    pub target: Option<usize>,
    pub upstream_slot: Option<UpstreamSlot>,
    pub target_slot: Option<TargetSlot>,
    pub body_bytes: u64,
    pub upstream_start: Option<Instant>,
    pub connected_at: Option<Instant>,
    pub upstream_header_at: Option<Instant>,
    pub upstream_status: Option<u16>,
    pub reject: Option<Reject>,
    pub https: bool,
    pub server_timing: bool,
    /// Set by an authentication policy.
    pub identity: Option<Arc<crate::policy::Identity>>,
    /// Added to the response, whatever it is (see `policy::PolicyCtx::response_headers`).
    pub extra_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// What the response cache did for this request.
    pub cache: crate::cache::status::CacheCtx,
}

impl Ctx {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.active_requests.fetch_add(1, Relaxed);
        Ctx {
            start: Instant::now(),
            _active: ActiveGuard(shared.clone()),
            snapshot: None,
            route: None,
            request_id: String::new(),
            upstream_path: None,
            tried: Vec::new(),
            target: None,
            upstream_slot: None,
            target_slot: None,
            body_bytes: 0,
            upstream_start: None,
            connected_at: None,
            upstream_header_at: None,
            upstream_status: None,
            reject: None,
            https: false,
            server_timing: false,
            identity: None,
            extra_response_headers: Vec::new(),
            cache: Default::default(),
        }
    }

    pub fn route_name(&self) -> &str {
        self.route
            .as_ref()
            .map(|r| r.name.as_str())
            .unwrap_or("unmatched")
    }
}
