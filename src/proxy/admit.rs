//! Admission: what `request_filter` checks before a route's policies run, one step per
//! function, in the order they run. A step either fills in its part of the context or
//! returns the rejection to send; the first rejection ends admission. The order is part
//! of the behaviour (which problem a bad request gets told about first), and
//! `docs/REQUEST_PATH.md` lists it.

use super::Gateway;
use crate::cache::status::CacheCtx;
use crate::context::{Attempt, BodyDeadline, Ctx, UpstreamSlot};
use crate::error::Reject;
use crate::path;
use crate::policy::headers;
use crate::runtime::{router::host_of, Route, Snapshot};
use crate::upstream::Upstream;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::sync::Arc;

impl Gateway {
    /// Everything before the policies: returns the rejection to send, if any. The
    /// request keeps the snapshot loaded here to its end, whatever the outcome (the
    /// metrics of an unrouted request are the snapshot's).
    pub(super) fn admit(&self, session: &Session, ctx: &mut Ctx) -> Option<Reject> {
        let snap = self.shared.snapshot.load_full();
        // A background refresh answers no client and continues no trace.
        if session.subrequest_ctx.is_none() {
            ctx.trace = snap
                .tracing
                .as_ref()
                .map(|t| Box::new(t.begin(&session.req_header().headers)));
        }
        let verdict = admit_on(&snap, session, ctx);
        ctx.routing.snapshot = Some(snap);
        verdict.err()
    }
}

/// The steps of `admit`, against one snapshot.
fn admit_on(snap: &Snapshot, session: &Session, ctx: &mut Ctx) -> Result<(), Reject> {
    let req = session.req_header();
    ctx.request.id = assign_request_id(req);
    check_header_size(snap, req)?;
    reject_bad_framing(session)?;
    check_host(req)?;
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    let client_ip = || {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        snap.trusted_proxies.client_ip(peer, &req.headers)
    };
    // Before routing: a refused network learns nothing about which paths exist.
    if let Some(rules) = snap.listener_ip(local) {
        rules.check(client_ip())?;
    }
    let raw_path = req.uri.path();
    let authority = request_authority(req);
    let host = host_of(&authority);
    let listener_policy = snap.path_policy(local);
    let (route, path, path_version) = route_by_path(snap, &host, raw_path, listener_policy, req)?;
    // From here on a rejection names the route (its metrics, its access-log field).
    let route = ctx.routing.route.insert(route).clone();
    if let Some(rules) = &route.edge.ip {
        rules.check(client_ip())?;
    }
    route.edge.shape(req)?;
    remember_url_for_cache(snap, &mut ctx.cache, &authority, &path.forwarded);
    ctx.request.authority = authority;
    // What is routed is what is forwarded: without the version segment it was routed by.
    let forwarded = match &path_version {
        Some(_) => Cow::Owned(super::traffic::without_version_segment(&path.forwarded)),
        None => path.forwarded,
    };
    ctx.routing.upstream_path = rewrite_path(
        route.strip_prefix.as_deref(),
        forwarded,
        path.ignore_params,
        raw_path,
    );
    super::traffic::choose_in_admission(&route, path_version.as_deref(), req, ctx)?;
    check_declared_body(route.max_body, req)?;
    ctx.request.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    ctx.request.forwarded_trusted = trusts_forwarded(snap, session, &route);
    ctx.timing.server_timing = wants_server_timing(snap, session, &route);
    Ok(())
}

/// The client's `X-Request-ID` when it is well formed, else a new one. First, so that
/// every answer, a rejection included, carries one.
fn assign_request_id(req: &RequestHeader) -> String {
    match req.headers.get(headers::X_REQUEST_ID) {
        Some(v) if headers::well_formed_request_id(v.as_bytes()) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => headers::new_request_id(),
    }
}

/// 431 when the header block (names, values and the request target) is over the
/// snapshot's `max_header_size`.
fn check_header_size(snap: &Snapshot, req: &RequestHeader) -> Result<(), Reject> {
    if header_bytes(req) > snap.max_header_size {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req
            .uri
            .path_and_query()
            .map(|p| p.as_str().len())
            .unwrap_or(0)
}

/// RFC 9112 §6.3: both framings at once is a smuggling vector; refuse, don't guess.
/// Pingora drops Content-Length when Transfer-Encoding is present, so look at the raw
/// header block (only when Transfer-Encoding is there at all: rare).
fn reject_bad_framing(session: &Session) -> Result<(), Reject> {
    if session
        .req_header()
        .headers
        .contains_key(http::header::TRANSFER_ENCODING)
        && raw_has_content_length(&session.as_downstream().to_h1_raw())
    {
        return Err(Reject::BadRequest(
            "both Content-Length and Transfer-Encoding are present".into(),
        ));
    }
    Ok(())
}

fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host` (even with an
/// absolute-form target); HTTP/1.0 need not, HTTP/2 has `:authority`.
fn check_host(req: &RequestHeader) -> Result<(), Reject> {
    if req.version == http::Version::HTTP_11
        && req.headers.get_all(http::header::HOST).iter().count() != 1
    {
        return Err(Reject::BadHost);
    }
    Ok(())
}

/// The path as a path policy read it: what is forwarded, and whether the router
/// matched it without `;` parameters.
struct ReadPath<'a> {
    forwarded: Cow<'a, str>,
    ignore_params: bool,
}

/// The path under `policy`'s reading (`path::normalize_with`); 400 when it cannot be
/// normalised.
fn read_path(raw: &str, policy: path::Policy) -> Result<ReadPath<'_>, Reject> {
    let forwarded = path::normalize_with(raw, policy.reading())
        .map_err(|_| Reject::BadRequest("the request path is not valid".into()))?;
    Ok(ReadPath {
        forwarded,
        ignore_params: policy.reading().ignore_params,
    })
}

/// Routing under the path policies, and the path to forward. The path is read under
/// the listener's policy and routed; the route found may override the policy. When the
/// override reads the path differently (`decode` or `;` parameters), the path is read
/// and routed again under it, and must reach the same route, or the request is refused
/// (what is routed is what is forwarded). Then the effective policy (the route's merged
/// over the listener's) refuses what it refuses. Without a route, the listener's policy
/// refuses first, so a path it refuses gets 400 rather than 404.
fn route_by_path<'a>(
    snap: &Snapshot,
    host: &str,
    raw: &'a str,
    listener: path::Policy,
    req: &RequestHeader,
) -> Result<(Arc<Route>, ReadPath<'a>, Option<String>), Reject> {
    // A CORS preflight is routed as the request it announces (`policy::cors`).
    let method = crate::policy::cors::preflight_method(req);
    let method = method.as_ref().unwrap_or(&req.method);
    // The version a path-versioned route was found by, for the last path tried.
    let version = std::cell::RefCell::new(None);
    let find = |routed: &str| {
        *version.borrow_mut() = None;
        // A route versioned by path is tried first with the `/vN` segment off.
        if let Some((v, rest)) = snap
            .path_versioned
            .then(|| crate::policy::versions::path_version(routed))
            .flatten()
        {
            let found = snap
                .router
                .find(host, rest, method, &req.headers)
                .filter(|r| r.destination.versioned_by_path());
            if let Some(r) = found {
                *version.borrow_mut() = Some(v.to_string());
                return Some(r.clone());
            }
        }
        snap.router
            .find(host, routed, method, &req.headers)
            .cloned()
    };
    let (route, read) = choose_route(
        raw,
        listener,
        find,
        |r: &Arc<Route>| r.path_policy,
        Arc::ptr_eq,
    )?;
    Ok((route, read, version.into_inner()))
}

/// `route_by_path` over any router (`find` takes the path as routed), so that the
/// property tests run the same steps.
fn choose_route<'a, R>(
    raw: &'a str,
    listener: path::Policy,
    find: impl Fn(&str) -> Option<R>,
    policy_of: impl Fn(&R) -> Option<path::Override>,
    same: impl Fn(&R, &R) -> bool,
) -> Result<(R, ReadPath<'a>), Reject> {
    let routed = |read: &ReadPath<'_>| find(&path::route_form(&read.forwarded, read.ignore_params));
    let read = read_path(raw, listener)?;
    let Some(route) = routed(&read) else {
        refuse(listener, &read)?;
        return Err(Reject::NotFound);
    };
    let effective = policy_of(&route).map_or(listener, |o| o.over(listener));
    if effective.reading() == listener.reading() {
        refuse(effective, &read)?;
        return Ok((route, read));
    }
    let again = read_path(raw, effective)?;
    refuse(effective, &again)?;
    match routed(&again) {
        Some(r) if same(&r, &route) => Ok((route, again)),
        _ => Err(Reject::BadPath(path::Refusal::RouteMismatch)),
    }
}

/// The first thing `policy` refuses in the path, if any.
fn refuse(policy: path::Policy, read: &ReadPath<'_>) -> Result<(), Reject> {
    match policy.refusal(path::inspect(&read.forwarded)) {
        Some(r) => Err(Reject::BadPath(r)),
        None => Ok(()),
    }
}

/// The authority the client asked for, host in lower case (RFC 9110 §4.2.3), port kept
/// as sent. Routing reads its host (`host_of`); the cache key names it whole, and it is
/// exactly what the upstream is sent as `Host` (`upstream_request_filter`), so a response
/// made for `site:31337` can never be stored as one for `site`.
fn request_authority(req: &RequestHeader) -> String {
    request_host(req).to_ascii_lowercase()
}

/// The host the client asked for: the request target's authority (HTTP/2, absolute
/// form), else `Host`, else none (also for a `Host` that is not visible ASCII).
fn request_host(req: &RequestHeader) -> &str {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// Cache keys and unsafe-method invalidation name the URL the client asked for (its
/// authority as forwarded, its normalised path), not the path sent upstream; kept only
/// when a cache exists at all.
fn remember_url_for_cache(snap: &Snapshot, cache: &mut CacheCtx, authority: &str, path: &str) {
    if snap.cache.is_some() {
        cache.host = authority.to_string();
        cache.path = path.to_string();
    }
}

/// The path to send upstream when it differs from the client's: normalised, then the
/// route's `strip_prefix` taken off at a segment boundary (of the path as routed:
/// `path::strip_route_prefix`). The query is added later (`upstream_request_filter`), as
/// the policies leave it.
fn rewrite_path(
    strip_prefix: Option<&str>,
    normalized: Cow<'_, str>,
    ignore_params: bool,
    raw: &str,
) -> Option<String> {
    let mut up_path = normalized;
    if let Some(sp) = strip_prefix {
        if let Some(rest) = path::strip_route_prefix(&up_path, sp, ignore_params) {
            up_path = if rest.is_empty() {
                "/".to_string().into()
            } else {
                rest.to_string().into()
            };
        }
    }
    (up_path != raw).then(|| up_path.into_owned())
}

/// 413 at once when a declared `Content-Length` is over the route's `max_body` (a body
/// without one is counted as it arrives, in `request_body_filter`).
fn check_declared_body(max_body: Option<u64>, req: &RequestHeader) -> Result<(), Reject> {
    let Some(max) = max_body else {
        return Ok(());
    };
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Reject::PayloadTooLarge(max));
    }
    Ok(())
}

/// `request_body_filter`: the body counted against the route's `max_body` as it
/// arrives (encoded bytes, as sent); over it, the exchange fails and the answer is 413.
pub(super) fn count_body(body: &Option<bytes::Bytes>, ctx: &mut Ctx) -> pingora::Result<()> {
    if let Some(b) = body {
        ctx.request.body_bytes += b.len() as u64;
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
            if ctx.request.body_bytes > max {
                ctx.response.reject = Some(Reject::PayloadTooLarge(max));
                return pingora::Error::e_explain(
                    pingora::ErrorType::HTTPStatus(413),
                    "request body over max_body",
                );
            }
        }
    }
    Ok(())
}

/// The body deadline of a request with a body, started just before its body is first
/// read: by a body transform in `request_filter`, else in `upstream_request_filter` of
/// the first attempt (Pingora reads the body once the upstream is connected). The
/// gateway's own time before that (policies, connecting, retries' backoff) is not the
/// client's. A WebSocket upgrade has no body; once upgraded, its bytes are a tunnel's
/// (`request_body_filter` returns before the deadline, `streaming` clears the timeout).
///
/// On HTTP/1 every read of the body waits at most the time left (Pingora's client read
/// timeout). An HTTP/2 stream has no read timeout in Pingora, so its deadline is checked
/// as each piece of the body arrives (a trickle is cut at its first piece past the
/// deadline); a stream that stalls ends at the upstream's read timeout, also as 408
/// (`to_reject`). gRPC over HTTP/2 is not under it: a client-streaming call sends its
/// messages for as long as the call lasts (its own deadlines apply).
pub(super) fn start_body_deadline(session: &mut Session, ctx: &mut Ctx) {
    if ctx.request.body_started || session.is_body_empty() {
        return;
    }
    ctx.request.body_started = true;
    let h2 = session.req_header().version >= http::Version::HTTP_2;
    if h2 && is_grpc(session.req_header()) {
        return;
    }
    let Some(snap) = ctx.routing.snapshot.as_ref() else {
        return;
    };
    let s = &snap.loaded.config.server;
    let deadline = BodyDeadline::new(
        std::time::Instant::now(),
        s.body_timeout.0,
        s.body_min_rate,
        h2,
    );
    session.set_read_timeout(Some(s.body_timeout.0));
    ctx.request.body_deadline = Some(deadline);
}

/// A gRPC request (`application/grpc`, `+proto` and the other suffixes, and gRPC-web).
fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
        })
}

/// `request_body_filter`, for each piece of the body as it comes (`end_of_stream`: the
/// last): past the deadline the exchange fails as the client's 408; else the next read
/// may wait only for the time left. A chunk can come late only if its read started late:
/// Pingora holds reads back while the upstream is slower than the client (four chunks
/// queued). With `body_min_rate` above 0 each such chunk (up to 64 KiB) has earned far
/// more time than that wait; a fixed deadline (`body_min_rate: 0`) is a total that
/// includes it.
pub(super) fn check_body_deadline(
    session: &mut Session,
    body: &Option<bytes::Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    let Some(deadline) = &ctx.request.body_deadline else {
        return Ok(());
    };
    if end_of_stream {
        // All of it came. A retry replays it from Pingora's buffer: no client read.
        ctx.request.body_deadline = None;
        return Ok(());
    }
    let received = ctx.request.body_bytes + body.as_ref().map_or(0, |b| b.len() as u64);
    match deadline.left(received, std::time::Instant::now()) {
        Some(left) => {
            session.set_read_timeout(Some(left));
            Ok(())
        }
        None => {
            ctx.response.reject = Some(Reject::BodyTimeout);
            Err(pingora::Error::create(
                pingora::ErrorType::ReadTimedout,
                pingora::ErrorSource::Downstream,
                Some("the request body came too slowly (server.body_timeout)".into()),
                None,
            ))
        }
    }
}

/// One of the upstream's `max_inflight` slots, held until `logging`; 503 when they are all
/// taken. Taken only when the request is about to go upstream (`proxy_upstream_filter`),
/// so a rejection or a cache hit never holds one. The slot is held even when refused and
/// given back with the context, so the count stays right whatever the outcome.
pub(super) fn take_upstream_slot(up: &Arc<Upstream>, attempt: &mut Attempt) -> Result<(), Reject> {
    if up.max_inflight == 0 || attempt.upstream_slot.is_some() {
        return Ok(());
    }
    let (slot, before) = UpstreamSlot::take(up);
    attempt.upstream_slot = Some(slot);
    if before >= up.max_inflight {
        return Err(Reject::Overloaded(up.name.clone()));
    }
    Ok(())
}

/// The client's copies of `headers::FORWARDED_FIELDS` are believed (kept and keyed)
/// only on a route with `trust_forwarded_headers` and from a peer in
/// `server.trusted_proxies`; otherwise `request_filter` removes them.
fn trusts_forwarded(snap: &Snapshot, session: &Session, route: &Route) -> bool {
    route.trust_forwarded_headers
        && snap.trusted_proxies.trusts_peer(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        )
}

/// `Server-Timing` is added when the route asks for it or the request came in on a
/// listener that does.
fn wants_server_timing(snap: &Snapshot, session: &Session, route: &Route) -> bool {
    route.server_timing
        || (!snap.server_timing_listeners.is_empty()
            && session
                .server_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| snap.server_timing_listeners.contains(a)))
}

#[cfg(test)]
#[path = "path_props.rs"]
mod path_props;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn request_id_is_kept_only_when_well_formed() {
        assert_eq!(
            assign_request_id(&req("/", &[("x-request-id", "abc-1")])),
            "abc-1"
        );
        let fresh = assign_request_id(&req("/", &[("x-request-id", "a b")]));
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, "a b");
        assert_eq!(assign_request_id(&req("/", &[])).len(), 32);
    }

    #[test]
    fn the_authority_keeps_its_port_and_folds_the_host_case() {
        assert_eq!(
            request_authority(&req("/", &[("host", "Site:31337")])),
            "site:31337"
        );
        assert_eq!(request_authority(&req("/", &[("host", "site")])), "site");
        assert_eq!(request_authority(&req("/", &[])), "");
        let mut abs = RequestHeader::build("GET", b"/x", None).unwrap();
        abs.set_uri("http://Site:8080/x".parse().unwrap());
        assert_eq!(
            request_authority(&abs),
            "site:8080",
            "the target's authority"
        );
    }

    #[test]
    fn header_bytes_count_names_values_and_target() {
        // "a" + "bc" + 4, and "/x?y" (4).
        assert_eq!(header_bytes(&req("/x?y", &[("a", "bc")])), 7 + 4);
    }

    #[test]
    fn content_length_is_found_in_the_raw_block_only_after_the_request_line() {
        let raw =
            b"POST /content-length: HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(!raw_has_content_length(raw));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH: 3\r\n\r\n";
        assert!(raw_has_content_length(raw));
    }

    #[test]
    fn strip_prefix_applies_at_a_segment_boundary() {
        let up = |sp, norm: &'static str, raw| rewrite_path(sp, Cow::Borrowed(norm), true, raw);
        assert_eq!(
            up(Some("/api"), "/api/users", "/api/users"),
            Some("/users".into())
        );
        assert_eq!(up(Some("/api"), "/api", "/api"), Some("/".into()));
        assert_eq!(up(Some("/api"), "/apix", "/apix"), None);
        assert_eq!(up(None, "/a", "/a"), None);
        // Normalisation alone changes what is sent.
        assert_eq!(up(None, "/a/b", "/a/./b"), Some("/a/b".into()));
    }

    #[test]
    fn declared_body_over_max_is_refused() {
        let r = req("/", &[("content-length", " 11 ")]);
        assert!(matches!(
            check_declared_body(Some(10), &r),
            Err(Reject::PayloadTooLarge(10))
        ));
        assert!(check_declared_body(Some(11), &r).is_ok());
        assert!(check_declared_body(None, &r).is_ok());
        assert!(check_declared_body(Some(0), &req("/", &[])).is_ok());
    }
}
