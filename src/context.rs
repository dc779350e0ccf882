//! Per-request state carried through Pingora's phases (`proxy::Gateway`'s `CTX`).
//!
//! It lives here, below the proxy, so that whatever works on one part of a request (the
//! cache phases, the policies) can be handed that part without importing `proxy`. It is
//! grouped by who fills it in, in request order: the request itself (`admit`), the
//! routing, the identity (an authentication policy), each attempt at a target, the
//! timings for `Server-Timing`, what is added to or sent as the response, and the cache.

use crate::cache::status::CacheCtx;
use crate::error::Reject;
use crate::policy::Identity;
use crate::runtime::{Route, Shared, Snapshot};
use crate::upstream::breaker::Probe;
use crate::upstream::{Target, TargetId, Upstream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts the request in `Shared::active_requests` for as long as it lives.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Relaxed);
    }
}

/// Holds one slot of an upstream's `max_inflight`.
pub struct UpstreamSlot(Arc<Upstream>);

impl UpstreamSlot {
    /// Takes a slot whatever the count (the caller compares the count returned with the
    /// bound and rejects the request while holding the slot, which it then gives back
    /// when the context is dropped).
    pub fn take(up: &Arc<Upstream>) -> (UpstreamSlot, usize) {
        let before = up.inflight.fetch_add(1, Relaxed);
        (UpstreamSlot(up.clone()), before)
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// Counts the request against one target (least_requests reads this).
struct TargetSlot(Arc<Target>);

impl Drop for TargetSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// `server.body_timeout` and `server.body_min_rate` for one request body: it is
/// due `timeout` after its first read starts, plus one second per `rate` bytes received (Apache
/// `mod_reqtimeout`'s body rule). So a body that stalls is cut after `timeout`, one that
/// trickles slower than `rate` soon after, and a large upload at any reasonable speed
/// never. Without it Pingora waits up to 60 s per read, and a body sent one byte every few
/// seconds holds a session, its 64 KiB body buffer and an upstream connection for as long
/// as the client likes (the `slowloris` scenario), then ends as the upstream's 504.
///
/// Real time, like `header_timeout`: it is a timeout. On HTTP/1 it is enforced by
/// Pingora's read timeout on the client connection, set before each body read to the time
/// left (`proxy::admit::check_body_deadline`); on HTTP/2 see `per_piece`.
pub struct BodyDeadline {
    from: std::time::Instant,
    timeout: std::time::Duration,
    rate: u64,
    /// An HTTP/2 stream's: no client read timeout enforces it (Pingora has none for h2),
    /// only the check as each piece arrives, so a stall ends at the upstream's read
    /// timeout instead (`proxy::body_overdue`).
    pub(crate) per_piece: bool,
}

impl BodyDeadline {
    /// `per_piece`: an HTTP/2 stream's (see the field).
    pub fn new(
        from: std::time::Instant,
        timeout: std::time::Duration,
        rate: u64,
        per_piece: bool,
    ) -> Self {
        BodyDeadline {
            from,
            timeout,
            rate,
            per_piece,
        }
    }

    /// The time left for the rest of the body once `received` bytes came, `None` once it
    /// is past.
    pub fn left(&self, received: u64, now: std::time::Instant) -> Option<std::time::Duration> {
        let earned = match self.rate {
            0 => std::time::Duration::ZERO,
            rate => {
                let ns = u128::from(received) * 1_000_000_000 / u128::from(rate);
                std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
            }
        };
        let Some(due) = self
            .from
            .checked_add(self.timeout)
            .and_then(|d| d.checked_add(earned))
        else {
            // Beyond what an `Instant` holds: not due in this process's life.
            return Some(std::time::Duration::from_secs(u64::from(u32::MAX)));
        };
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

/// The request as the client sent it.
#[derive(Default)]
pub struct RequestState {
    /// `X-Request-ID`: the client's when well formed, else a new one.
    pub(crate) id: String,
    /// The authority asked for, host in lower case (`admit::request_authority`): routed
    /// on, keyed on and sent upstream as `Host`. Empty when the request names none.
    pub(crate) authority: String,
    /// The client connection is TLS (`X-Forwarded-Proto`, cache keys).
    pub(crate) https: bool,
    /// The route trusts forwarded fields and the peer is a trusted proxy: the client's
    /// `policy::headers::FORWARDED_FIELDS` are kept, and the cache keys on them.
    pub(crate) forwarded_trusted: bool,
    /// This is a stale-while-revalidate refresh (a Pingora subrequest), not a client
    /// request: it carries the identity of the request that started it, runs no
    /// policies and is not counted as a request (`proxy::refresh`).
    pub(crate) refresh: bool,
    /// The version of this request's header while it is lent `HTTP/1.1` for Pingora's
    /// copy of it (`proxy::refresh::record`); given back in the next phase.
    pub(crate) lent_version: Option<http::Version>,
    /// Request body bytes read so far (`max_body`, the access log).
    pub(crate) body_bytes: u64,
    /// When the rest of the body is due (`server.body_timeout`), until its end.
    pub(crate) body_deadline: Option<BodyDeadline>,
    /// The body deadline was started (it is not started again for a retry).
    pub(crate) body_started: bool,
    /// Decodes the body on its way upstream (`compression.decompress_requests`).
    pub(crate) decoder: Option<crate::policy::decompression::RequestDecoder>,
}

/// Which snapshot and route serve the request.
#[derive(Default)]
pub struct Routing {
    /// The snapshot the request started with; it keeps it to the end, across reloads.
    pub(crate) snapshot: Option<Arc<Snapshot>>,
    pub(crate) route: Option<Arc<Route>>,
    /// Path to send upstream when it differs from the client's. The query is taken from
    /// the request as the policies left it (an API key parameter may be removed).
    pub(crate) upstream_path: Option<String>,
    /// The upstream this request goes to: the route's, its version's or its split
    /// side's (`runtime::destination`). Chosen in admission, or after the policies for a
    /// split (which may key on the consumer).
    pub(crate) upstream: Option<Arc<Upstream>>,
    /// The version or split side chosen, which the cache keys on (a response from one
    /// must never answer a request for another).
    pub(crate) variant: Option<Arc<str>>,
}

impl Routing {
    /// The snapshot's bound cache (storage, settings, lock, clock), when it has one. On
    /// `Routing` rather than `Ctx`, so it can be borrowed beside `&mut ctx.cache`.
    pub(crate) fn cache(&self) -> Option<&crate::cache::Cache> {
        self.snapshot.as_ref().and_then(|s| s.cache.as_ref())
    }
}

/// The attempts at the route's upstream: one per `upstream_peer` call (retries included).
#[derive(Default)]
pub struct Attempt {
    /// Every target tried so far, in order; never chosen again for this request.
    tried: Vec<TargetId>,
    /// The target being tried now (or last tried), with its in-flight count held.
    current: Option<TargetSlot>,
    /// The upstream's `max_inflight` slot, held from `admit` to `logging`.
    pub(crate) upstream_slot: Option<UpstreamSlot>,
    /// The status of the upstream's response header, when one came.
    pub(crate) upstream_status: Option<u16>,
    /// A reused pooled connection failed before any response byte: the next
    /// `upstream_peer` tries the same target again on a fresh connection.
    fresh_retry: bool,
    /// That retry was spent (once per request).
    stale_retried: bool,
    /// The upstream the attempts go to: the route's, or its breaker's fallback while the
    /// circuit is open (`proxy::attempts::choose_upstream`).
    pub(crate) upstream: Option<Arc<Upstream>>,
    /// A half-open circuit let this request through as a probe: its outcome decides.
    pub(crate) probe: Option<Probe>,
    /// `routes[].deadline`, from the start of the request: bounds every attempt and wait.
    pub(crate) deadline: Option<Instant>,
    /// What the next `upstream_peer` waits first (backoff, or the upstream's Retry-After).
    pub(crate) wait: Option<Duration>,
    /// The last attempt's response header is being retried (`upstream_response_filter`
    /// decided and counted it; `error_while_proxy` only passes the decision on).
    pub(crate) status_retry: bool,
    /// Retries the `retry` policy made for this request.
    pub(crate) retries: u32,
}

impl Attempt {
    /// Targets already tried, the current one included.
    pub fn tried(&self) -> &[TargetId] {
        &self.tried
    }

    /// Records that `id` of `up` is being tried now and counts it as in flight on it.
    pub fn start(&mut self, up: &Upstream, id: TargetId) {
        self.tried.push(id);
        let target = up.target(id).clone();
        target.inflight.fetch_add(1, Relaxed);
        // Replacing the previous attempt's slot gives its in-flight count back.
        self.current = Some(TargetSlot(target));
    }

    /// A reused connection to the current target went stale: allows one more attempt at
    /// the same target, on a fresh connection, once per request. False when it was spent
    /// (or there is no current target).
    pub fn retry_stale(&mut self) -> bool {
        if self.stale_retried || self.current.is_none() {
            return false;
        }
        self.stale_retried = true;
        self.fresh_retry = true;
        true
    }

    /// The target to try again on a fresh connection, when `retry_stale` asked for it
    /// (taken once). It stays in `tried` once and keeps its in-flight count.
    pub fn take_fresh_retry(&mut self) -> Option<TargetId> {
        if !std::mem::take(&mut self.fresh_retry) {
            return None;
        }
        self.tried.last().copied()
    }

    /// The target being tried (or last tried).
    pub fn target(&self) -> Option<&Arc<Target>> {
        self.current.as_ref().map(|s| &s.0)
    }

    /// Whether another attempt is allowed: `retries` more than the first, and never more
    /// than one per target.
    /// With a `retry` policy a target may be tried again once every one was tried (the
    /// policy's backoff spaces the attempts).
    pub fn may_retry(&self, up: &Upstream) -> bool {
        self.tried.len() <= up.retries
            && (up.retry.is_some() || self.tried.len() < up.targets.len())
    }

    /// Gives back the in-flight counts (the target's and the upstream's) now rather than
    /// when the context is dropped. The end of `logging`: nothing reads the attempt after.
    pub fn release(&mut self) {
        self.current = None;
        self.upstream_slot = None;
        self.probe = None;
    }
}

/// Instants for `Server-Timing` and the access log.
pub struct Timing {
    pub(crate) start: Instant,
    /// The last `upstream_peer` call.
    pub(crate) upstream_start: Option<Instant>,
    pub(crate) connected_at: Option<Instant>,
    pub(crate) upstream_header_at: Option<Instant>,
    /// The response gets a `Server-Timing` field (the route or the listener asks for it).
    pub(crate) server_timing: bool,
}

/// What this request adds to its response, or sends instead of one.
#[derive(Default)]
pub struct ResponseState {
    /// The rejection sent (or, once a response was written, the one that would have been).
    pub(crate) reject: Option<Reject>,
    /// Added to the response, whatever it is (see `policy::PolicyCtx::response_headers`).
    pub(crate) extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// How a gRPC-web request is bridged (`proxy::streaming`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum GrpcWeb {
    #[default]
    Off,
    /// `application/grpc-web[+proto]`: the frames pass as they are.
    Binary,
    /// `application/grpc-web-text[+proto]`: base64 both ways.
    Text,
}

/// WebSocket and gRPC facts of the request (`proxy::streaming`).
#[derive(Default)]
pub struct StreamState {
    /// An accepted WebSocket upgrade (a 101 was answered): counted in
    /// `gatehouse_websocket_connections{route}` for as long as the request lives.
    pub(crate) websocket: Option<crate::metrics::GaugeGuard>,
    /// The client asked for a WebSocket upgrade on a route that allows it.
    pub(crate) upgrade: bool,
    pub(crate) grpc_web: GrpcWeb,
    /// gRPC-web text: request body characters not yet decoded (fewer than 4).
    pub(crate) text_carry: Vec<u8>,
}

pub struct Ctx {
    pub(crate) request: RequestState,
    pub(crate) routing: Routing,
    /// Set by an authentication policy.
    pub(crate) identity: Option<Arc<Identity>>,
    pub(crate) attempt: Attempt,
    pub(crate) timing: Timing,
    pub(crate) response: ResponseState,
    /// What the response cache did for this request.
    pub(crate) cache: CacheCtx,
    /// The route's body transforms at work on this request (`proxy::body`).
    pub(crate) body: crate::policy::transform::BodyState,
    pub(crate) stream: StreamState,
    /// Whether (and how far) a copy of this request goes to the route's mirror.
    pub(crate) mirror: crate::upstream::mirror::MirrorCtx,
    /// The request's spans, when `tracing:` is configured (`telemetry::trace`).
    pub(crate) trace: Option<Box<crate::telemetry::trace::RequestTrace>>,
    _active: ActiveGuard,
}

impl Ctx {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.active_requests.fetch_add(1, Relaxed);
        Ctx {
            request: RequestState::default(),
            routing: Routing::default(),
            identity: None,
            attempt: Attempt::default(),
            timing: Timing {
                start: Instant::now(),
                upstream_start: None,
                connected_at: None,
                upstream_header_at: None,
                server_timing: false,
            },
            response: ResponseState::default(),
            cache: CacheCtx::default(),
            body: Default::default(),
            stream: StreamState::default(),
            mirror: Default::default(),
            trace: None,
            _active: ActiveGuard(shared.clone()),
        }
    }

    pub fn route(&self) -> Option<&Arc<Route>> {
        self.routing.route.as_ref()
    }

    pub fn route_name(&self) -> &str {
        self.route().map(|r| r.name.as_str()).unwrap_or("unmatched")
    }

    /// The upstream the request goes to: the one chosen for its attempts (a breaker's
    /// fallback), else the one chosen for the request (`Routing::upstream`: the route's,
    /// its version's or its split side's).
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.attempt
            .upstream
            .as_ref()
            .or(self.routing.upstream.as_ref())
    }

    /// The request's upstream and the target being tried on it, once one was chosen.
    pub fn current_target(&self) -> Option<(&Upstream, &Target)> {
        Some((self.upstream()?, self.attempt.target()?))
    }

    /// The authenticated consumer, if any.
    pub fn consumer_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.consumer_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_deadline_grows_with_what_came() {
        use std::time::{Duration, Instant};
        let from = Instant::now();
        let d = BodyDeadline::new(from, Duration::from_secs(20), 500, false);
        let s = Duration::from_secs;
        assert_eq!(d.left(0, from + s(5)), Some(s(15)));
        assert_eq!(d.left(0, from + s(20)), None);
        // 1,000 bytes earned two seconds more.
        assert_eq!(d.left(1000, from + s(20)), Some(s(2)));
        assert_eq!(d.left(1000, from + s(23)), None);
        // One byte a second: 2 ms more per byte, cut just past 20 s.
        assert_eq!(d.left(21, from + s(21)), None);
        // Rate 0: a fixed deadline whatever came; a huge count never overflows.
        let fixed = BodyDeadline::new(from, Duration::from_secs(20), 0, false);
        assert_eq!(fixed.left(u64::MAX, from + s(21)), None);
        let one = BodyDeadline::new(from, Duration::from_secs(20), 1, false);
        assert!(one.left(u64::MAX, from + s(21)).is_some());
    }
}
