//! The Pingora `ProxyHttp` implementation: one method per phase, in the order Pingora
//! calls them (`docs/REQUEST_PATH.md` charts it). The rules live elsewhere and are called
//! from here: routing is `runtime::router`, header work is `policy::headers`, the route's
//! policies are `policy` (run in one loop, `run_policies`), target choice and health are
//! `upstream`, the cache's part of each phase is `cache::phases`, answers are
//! `error::Reject`. What is decided here is the request path's own: the admission checks
//! (`admit`), what a stale-while-revalidate refresh takes over from the request that
//! started it (`refresh`), when an attempt may be retried (`fail_to_connect`, `error_while_proxy`),
//! how an attempt's outcome counts against its target (`attempt_failed`), and how an
//! error becomes a rejection (`to_reject`). The breaker, the deadline and the `retry`
//! policy's decisions are `attempts`.

mod admit;
mod aggregate;
mod attempts;
mod body;
mod log;
mod refresh;
pub mod streaming;
mod trace;
mod traffic;

use crate::cache::phases;
use crate::context::Ctx;
use crate::error::Reject;
use crate::policy::{headers, Identity};
use crate::runtime::Shared;
use crate::telemetry::trace::AttemptEnd;
use crate::upstream::breaker::Probe;
use crate::upstream::{HashOn, Target, Upstream};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::RespCacheable;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    pub shared: Arc<Shared>,
    /// Identities and requests handed from a stale request to its background refresh.
    refreshes: refresh::Refreshes,
    /// The connection pool of aggregate routes' calls.
    calls: aggregate::Calls,
    /// Mirror copies go out through their own connector (and its pools): never one of
    /// the client requests' connections (`upstream::mirror`).
    mirror_connector: Arc<pingora::connectors::http::Connector>,
}

/// Writes a problem+json answer. The one place a `Reject` becomes a response. A gRPC
/// request (`content-type: application/grpc*`, gRPC-web included) gets the gRPC form of
/// it instead: HTTP 200, trailers-only, `grpc-status` (`Reject::grpc_status`) and
/// `grpc-message`, since gRPC clients read no HTTP status or body.
pub async fn respond(session: &mut Session, ctx: &mut Ctx, reject: Reject) -> Result<()> {
    let grpc = streaming::grpc_content_type(session.req_header());
    let body = match grpc {
        Some(_) => Bytes::new(),
        None => Bytes::from(reject.body(&ctx.request.id)),
    };
    let mut resp = match &grpc {
        Some(ct) => streaming::grpc_refusal(&reject, ct)?,
        None => {
            let mut resp = ResponseHeader::build(reject.status(), Some(5))?;
            resp.insert_header("content-type", "application/problem+json")?;
            resp.insert_header("cache-control", "no-store")?;
            resp
        }
    };
    if session.req_header().version < http::Version::HTTP_2 || grpc.is_none() {
        // On HTTP/2 a gRPC refusal is one HEADERS frame with END_STREAM: no length.
        resp.insert_header("content-length", body.len().to_string())?;
    }
    headers::apply_server_header(&mut resp, server_header(ctx));
    if !ctx.request.id.is_empty() {
        resp.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
    }
    if let Some(secs) = reject.retry_after() {
        resp.insert_header("retry-after", secs.to_string())?;
    }
    for (name, value) in reject
        .headers()
        .into_iter()
        .chain(ctx.response.extra_headers.iter().cloned())
    {
        headers::insert_field(&mut resp, name, value)?;
    }
    if matches!(
        reject,
        Reject::BadRequest(_) | Reject::HeadersTooLarge | Reject::PayloadTooLarge(_)
    ) {
        // The rest of this connection's bytes cannot be trusted (or are a body we refuse).
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    // A refresh's answer goes to no client: it is no refused request.
    if !ctx.request.refresh {
        crate::metrics::metrics()
            .rejected
            .with_label_values(&[reject.slug()])
            .inc();
    }
    ctx.response.reject = Some(reject);
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Sends a CORS preflight's answer (`policy::cors::Cors::preflight`): never forwarded,
/// not a rejection.
async fn answer_preflight(
    session: &mut Session,
    ctx: &Ctx,
    mut resp: Box<ResponseHeader>,
) -> Result<()> {
    headers::apply_server_header(&mut resp, server_header(ctx));
    resp.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
    session.write_response_header(resp, true).await
}

/// `server.server_header` of the snapshot the request started with.
fn server_header(ctx: &Ctx) -> &str {
    ctx.routing
        .snapshot
        .as_ref()
        .map_or("", |s| s.loaded.config.server.server_header.as_str())
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Gateway {
        Gateway {
            shared,
            refreshes: refresh::Refreshes::default(),
            calls: aggregate::Calls::default(),
            mirror_connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        }
    }

    /// `request_filter` for a stale-while-revalidate refresh (a Pingora subrequest): the
    /// request and identity its parent recorded replace the copy Pingora made, then
    /// admission runs as for any request, and no policy runs (the parent was
    /// authenticated, authorized and counted). A refresh on a route with policies whose
    /// record is missing is refused rather than sent upstream without its identity.
    async fn refresh_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request.refresh = true;
        let started = self.refreshes.take(session);
        let recorded = started.is_some();
        if let Some(s) = started {
            *session.req_header_mut() = s.request;
            ctx.identity = s.identity;
        }
        let reject = self.admit(session, ctx).or_else(|| {
            let policies = ctx.route().is_some_and(|r| !r.policies.is_empty());
            (policies && !recorded).then_some(Reject::Internal)
        });
        if let Some(reject) = reject {
            tracing::debug!("background refresh refused: {}", reject.slug());
            // Hand the entry's write lock back now, so the next request revalidates.
            if let Some(sub) = session.subrequest_ctx.as_mut() {
                sub.release_write_lock();
            }
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        // The recorded request had these removed already; a copy without a record (a
        // route without policies) is the client's own bytes.
        headers::strip_client_fields(session.req_header_mut(), ctx.request.forwarded_trusted);
        traffic::choose_split(session, ctx);
        Ok(false)
    }

    /// The route's policies in stage order (authenticate, authorize, limit: the order
    /// `Snapshot::compile` put them in); the first rejection ends the loop.
    async fn run_policies(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Reject> {
        let route = ctx.routing.route.as_ref()?;
        if route.policies.is_empty() {
            return None;
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let mut cx = crate::policy::PolicyCtx {
            req: session.req_header_mut(),
            client_ip,
            route: &route.name,
            identity: &mut ctx.identity,
            response_headers: &mut ctx.response.extra_headers,
        };
        for p in &route.policies {
            let outcome = p.apply(&mut cx).await;
            trace::stage(&mut ctx.trace, p.stage(), outcome.as_ref().err());
            if let Err(reject) = outcome {
                return Some(reject);
            }
        }
        None
    }
}

/// What `consistent_hash` hashes for this request: borrowed from the request where it
/// can be (a header value, the path, the consumer id), so no copy is made per request.
fn hash_key<'a>(
    session: &'a Session,
    on: &HashOn,
    identity: Option<&'a Identity>,
) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    match on {
        HashOn::Header(name) => Cow::Borrowed(
            session
                .req_header()
                .headers
                .get(name)
                .map(|v| v.as_bytes())
                .unwrap_or_default(),
        ),
        HashOn::Path => Cow::Borrowed(session.req_header().uri.path().as_bytes()),
        HashOn::Consumer if identity.is_some() => Cow::Borrowed(
            identity
                .map(|id| id.consumer_id.as_bytes())
                .unwrap_or_default(),
        ),
        // An anonymous caller's "consumer" is its address.
        HashOn::Ip | HashOn::Consumer => Cow::Owned(
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string().into_bytes())
                .unwrap_or_default(),
        ),
    }
}

/// An attempt at `target` failed: no connection, a broken exchange, or a 5xx. Counted in
/// `gatehouse_upstream_requests_total` under `outcome`, and against the target (passive
/// health, outlier ejection) and the upstream's breaker (`probe`: the request is a
/// half-open probe).
fn attempt_failed(up: &Upstream, target: &Target, outcome: &str, probe: Option<&Probe>) {
    up.record_failure(target, probe);
    crate::metrics::metrics()
        .upstream_requests
        .with_label_values(&[&up.name, &target.address, outcome])
        .inc();
}

/// An attempt at `target` got a response under 500: counted under its status (200 has its
/// own pre-resolved counter), and it ends the target's run of failures.
fn attempt_answered(
    up: &Upstream,
    target: &Target,
    status: http::StatusCode,
    probe: Option<&Probe>,
) {
    if status == http::StatusCode::OK {
        target.requests_200.inc();
    } else {
        crate::metrics::metrics()
            .upstream_requests
            .with_label_values(&[
                &up.name,
                &target.address,
                crate::metrics::status_label(status.as_u16(), &mut itoa::Buffer::new()),
            ])
            .inc();
    }
    up.record_success(target, probe);
}

/// `upstream_response_filter`, for a 5xx: when the upstream's `retry` policy retries
/// it, counts the attempt as failed and returns the error that makes Pingora try again
/// (the wait is kept for the next `upstream_peer`). The upstream's `Retry-After` is
/// honoured (`attempts::policy_retry`).
fn retry_response(session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) -> Option<Box<Error>> {
    let policy = ctx.upstream()?.retry.as_ref()?;
    let status = resp.status.as_u16();
    let replayable = policy.retries_method(&session.req_header().method)
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none();
    let retry_after = resp.headers.get(http::header::RETRY_AFTER).and_then(|v| {
        crate::upstream::retry::retry_after(v.as_bytes(), std::time::SystemTime::now())
    });
    if !attempts::policy_retry(
        ctx,
        replayable,
        attempts::Cause::Status(status),
        retry_after,
    ) {
        return None;
    }
    if let Some((up, target)) = ctx.current_target() {
        if let Some(s) = ctx.timing.upstream_start {
            up.duration.observe(s.elapsed().as_secs_f64());
        }
        let mut buf = itoa::Buffer::new();
        attempt_failed(
            up,
            target,
            crate::metrics::status_label(status, &mut buf),
            ctx.attempt.probe.as_ref(),
        );
    }
    ctx.attempt.status_retry = true;
    Some(
        Error::explain(
            ErrorType::HTTPStatus(status),
            "retrying the upstream's answer",
        )
        .into_up(),
    )
}

/// Group keys for fresh connections of a stale-connection retry: each is new, so the
/// connector's pool has nothing under it (0 is every ordinary peer's).
static FRESH_GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A reused connection failed before the target answered anything: Pingora marks such a
/// read failure `ReusedOnly`; a write that found the connection closed counts too.
fn stale_pooled(e: &Error, client_reused: bool, ctx: &Ctx) -> bool {
    client_reused
        && ctx.attempt.upstream_status.is_none()
        && e.esource() == &ErrorSource::Upstream
        && (matches!(e.retry, pingora::RetryType::ReusedOnly)
            || matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ConnectionClosed
            ))
}

/// The rejection to send for an error that ended the request: the one a phase already
/// chose, else one from the error's type and source.
fn to_reject(e: &Error, ctx: &Ctx) -> Reject {
    if let Some(r) = &ctx.response.reject {
        return r.clone();
    }
    let upstream = ctx.upstream().map(|u| u.name.clone()).unwrap_or_default();
    match e.etype() {
        ErrorType::HTTPStatus(413) => {
            Reject::PayloadTooLarge(ctx.route().and_then(|r| r.max_body).unwrap_or(0))
        }
        ErrorType::HTTPStatus(503) => Reject::NoHealthyTarget(upstream),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            if e.esource() == &ErrorSource::Downstream {
                Reject::BadRequest("the client was too slow".into())
            } else {
                Reject::GatewayTimeout(upstream)
            }
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Reject::BadGateway(upstream),
            ErrorSource::Downstream => Reject::BadRequest("the request could not be read".into()),
            _ => Reject::Internal,
        },
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(&self.shared)
    }

    /// Our response compression (`policy::compression`) instead of Pingora's disabled
    /// default module.
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        modules.add_module(Box::new(crate::policy::compression::ModuleBuilder));
    }

    /// Admission, then the fields a client may not set (identity, and URL-building
    /// fields unless trusted), then the policies. A background refresh has its own
    /// (`refresh_filter`).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session.subrequest_ctx.is_some() {
            return self.refresh_filter(session, ctx).await;
        }
        let admitted = self.admit(session, ctx);
        trace::stage(&mut ctx.trace, "admit", admitted.as_ref());
        if let Some(reject) = admitted {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        headers::strip_client_fields(session.req_header_mut(), ctx.request.forwarded_trusted);
        // CORS before authentication and limits: a preflight carries no credential.
        if let Some(route) = ctx.routing.route.clone() {
            if let Some(cors) = &route.edge.cors {
                if crate::policy::cors::is_preflight(session.req_header()) {
                    let resp = cors.preflight(session.req_header())?;
                    answer_preflight(session, ctx, resp).await?;
                    return Ok(true);
                }
                // On whatever answers it, a rejection included (a script can read its 401).
                cors.actual_fields(
                    &session.req_header().headers,
                    &mut ctx.response.extra_headers,
                );
            }
        }
        if let Some(reject) = self.run_policies(session, ctx).await {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        traffic::choose_split(session, ctx);
        // After the policies: an unauthenticated client learns nothing of the route.
        if let Some(reject) = streaming::admit(session.req_header(), ctx) {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        // After the policies: a refused request's body is never decoded.
        let limits = ctx
            .route()
            .and_then(|r| r.edge.compression.as_ref())
            .and_then(|c| c.decompress_requests());
        if let Some(limits) = limits {
            ctx.request.decoder = crate::policy::decompression::RequestDecoder::for_request(
                session.req_header(),
                &limits,
            );
        }
        if let Some(reject) = self.transform_request(session, ctx).await {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        if ctx.route().is_some_and(|r| r.aggregate.is_some()) {
            self.aggregate(session, ctx).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Counts the body against the route's `max_body` as it arrives (encoded bytes, as
    /// sent; a WebSocket tunnel's frames are no request body), decodes it when
    /// `decompress_requests` applies, then decodes a gRPC-web text body.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.was_upgraded() {
            streaming::request_body(body, end_of_stream, &mut ctx.stream).ok();
            return Ok(());
        }
        if body::request_body(body, end_of_stream, ctx) {
            return Ok(());
        }
        if let Some(b) = body {
            ctx.request.body_bytes += b.len() as u64;
            if let Some(max) = ctx.route().and_then(|r| r.max_body) {
                if ctx.request.body_bytes > max {
                    ctx.response.reject = Some(Reject::PayloadTooLarge(max));
                    return Error::e_explain(
                        ErrorType::HTTPStatus(413),
                        "request body over max_body",
                    );
                }
            }
        }
        if let Some(d) = ctx.request.decoder.as_mut() {
            let input = body.take().unwrap_or_default();
            match d.decode(&input, end_of_stream) {
                // An empty last chunk goes as none (Pingora would write a zero-size chunk
                // and then the terminator again); an empty chunk before it stays empty,
                // which Pingora skips (`None` there would end the upstream body).
                Ok(out) => *body = (!(out.is_empty() && end_of_stream)).then_some(out),
                Err(reject) => {
                    let status = reject.status();
                    ctx.response.reject = Some(reject);
                    return Error::e_explain(
                        ErrorType::HTTPStatus(status),
                        "request body could not be decoded within its bounds",
                    );
                }
            }
        }
        if let Err(reject) = streaming::request_body(body, end_of_stream, &mut ctx.stream) {
            ctx.response.reject = Some(reject);
            return Error::e_explain(ErrorType::HTTPStatus(400), "undecodable grpc-web-text");
        }
        traffic::mirror_body(&self.mirror_connector, body, end_of_stream, ctx);
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if ctx.route().is_some_and(|r| r.cache.is_some()) {
            let cache = ctx.routing.cache();
            phases::enable(session, &mut ctx.cache, cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let Some(route) = ctx.route() else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a route");
        };
        Ok(phases::cache_key(
            session,
            &ctx.cache,
            &route.name_arc,
            ctx.request.https,
        ))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        phases::on_miss(session, &mut ctx.cache);
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let cache = ctx.routing.cache();
        Ok(phases::hit_freshness(
            session,
            meta,
            is_fresh,
            &mut ctx.cache,
            cache,
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let route = ctx.route()?;
        let rc = route.cache.as_ref()?;
        let identity = ctx
            .identity
            .as_deref()
            .map(headers::identity_fields)
            .unwrap_or_default();
        let origin = route
            .edge
            .cors
            .as_ref()
            .map(|c| c.cache_variant(&req.headers));
        let on = crate::cache::key::VaryOn {
            cors_origin: origin.as_deref(),
            identity_coding: route.edge.compression.is_some(),
            route: &route.name,
            route_vary: &rc.vary,
            forwarded: if ctx.request.forwarded_trusted {
                &headers::FORWARDED_FIELDS
            } else {
                &[]
            },
            identity: &identity,
            destination: ctx.routing.variant.as_deref().unwrap_or(""),
        };
        phases::variance(meta, req, &on)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let identified = ctx.identity.is_some();
        // Borrowed field by field: the cache updates its own state while reading the route.
        let Some(rc) = ctx.routing.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let cache = ctx.routing.cache();
        Ok(phases::response_cacheable(
            session,
            resp,
            &mut ctx.cache,
            rc,
            identified,
            cache,
        ))
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        let cache = ctx.routing.cache();
        let serve = phases::serve_stale(session, &mut ctx.cache, error, cache);
        // Served stale while holding the write lock: Pingora spawns the background
        // refresh as soon as this returns, and the refresh needs what this request was.
        if serve
            && error.is_none()
            && session.subrequest_ctx.is_none()
            && session.cache.is_cache_lock_writer()
        {
            return self.refreshes.record(
                session,
                ctx.identity.clone(),
                &mut ctx.request.lent_version,
            );
        }
        serve
    }

    /// The request is about to go upstream (no rejection, no cache hit):
    /// `Cache-Control: only-if-cached` with nothing usable stored is 504, never the
    /// origin; otherwise one of the upstream's `max_inflight` slots is taken here, not in
    /// admission, so 401s, 429s and cache hits never hold one.
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.cache.active && ctx.cache.directives.only_if_cached {
            respond(session, ctx, Reject::NotCached).await?;
            return Ok(false);
        }
        if ctx.upstream().is_none() {
            return Ok(true);
        }
        let up = match attempts::choose_upstream(ctx) {
            Ok(up) => up,
            Err(reject) => {
                respond(session, ctx, reject).await?;
                return Ok(false);
            }
        };
        if let Err(reject) = admit::take_upstream_slot(&up, &mut ctx.attempt) {
            respond(session, ctx, reject).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Chooses the attempt's target (never one already tried) and its peer. Runs again
    /// for each retry.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // The retry policy's wait, never past the deadline (it was checked when decided).
        if let Some(wait) = ctx.attempt.wait.take() {
            let wait = attempts::remaining(ctx).map_or(wait, |left| wait.min(left));
            tokio::time::sleep(wait).await;
        }
        let left = attempts::remaining(ctx);
        if left.is_some_and(|l| l.is_zero()) {
            attempts::deadline_exceeded(ctx);
            return Error::e_explain(ErrorType::HTTPStatus(504), "route deadline exceeded");
        }
        let Some(route) = ctx.routing.route.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no route in upstream_peer");
        };
        // The one chosen in `proxy_upstream_filter` (a fallback while the circuit is open),
        // else the request's (the route's, its version's or its split side's).
        let Some(up) = ctx
            .attempt
            .upstream
            .clone()
            .or_else(|| ctx.routing.upstream.clone())
        else {
            return Error::e_explain(ErrorType::InternalError, "no upstream in upstream_peer");
        };
        let up = &up;
        if let Some(id) = ctx.attempt.take_fresh_retry() {
            // The same target, never from the pool: a group key no pooled connection has.
            ctx.timing.upstream_start = Some(Instant::now());
            let mut peer = up.peer(id);
            peer.group_key = FRESH_GROUP.fetch_add(1, Relaxed);
            route.timeouts.apply(&mut peer.options);
            if let Some(left) = left {
                attempts::bound_by_deadline(&mut peer.options, left);
            }
            streaming::apply_grpc_timeout(session.req_header(), &mut peer.options);
            trace::attempt_start(ctx);
            return Ok(Box::new(peer));
        }
        let key = match &up.hash_on {
            Some(on) => hash_key(session, on, ctx.identity.as_deref()),
            None => std::borrow::Cow::Borrowed(&[][..]),
        };
        // A retry policy may go back to a tried target once every one was tried.
        let chosen = up.select(&key, ctx.attempt.tried()).or_else(|| {
            (up.retry.is_some() && !ctx.attempt.tried().is_empty())
                .then(|| up.select(&key, &[]))
                .flatten()
        });
        let Some(id) = chosen else {
            ctx.response.reject = Some(if ctx.attempt.tried().is_empty() {
                Reject::NoHealthyTarget(up.name.clone())
            } else {
                Reject::BadGateway(up.name.clone())
            });
            return Error::e_explain(ErrorType::HTTPStatus(503), "no usable target");
        };
        ctx.attempt.start(up, id);
        ctx.timing.upstream_start = Some(Instant::now());
        let mut peer = up.peer(id);
        route.timeouts.apply(&mut peer.options);
        if let Some(left) = left {
            attempts::bound_by_deadline(&mut peer.options, left);
        }
        streaming::apply_grpc_timeout(session.req_header(), &mut peer.options);
        if ctx.stream.upgrade {
            streaming::upgrade_peer(&mut peer.options, route);
        }
        trace::attempt_start(ctx);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        trace::attempt_end(ctx, AttemptEnd::Error("connect_error"));
        let (Some(up), Some(target)) = (ctx.upstream().cloned(), ctx.attempt.target().cloned())
        else {
            return e;
        };
        attempt_failed(&up, &target, "connect_error", ctx.attempt.probe.as_ref());
        if up.retry.is_some() {
            // Nothing reached the target, so any method may be sent again.
            let retry = attempts::policy_retry(ctx, true, attempts::Cause::Connect, None);
            e.set_retry(retry);
        } else if ctx.attempt.may_retry(&up) {
            // Nothing reached the target, so any method may go to another one.
            e.set_retry(true);
        }
        e
    }

    /// An exchange with the target broke. A reused pooled connection that failed before
    /// any response byte (the target closed it while idle) is tried once more on a fresh
    /// connection to the same target, not counted as a failure: any method whose body was
    /// not sent yet, idempotent ones otherwise. Beyond that, only idempotent requests whose
    /// body is still buffered go to another target.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        trace::attempt_end(ctx, AttemptEnd::Error(e.etype().as_str()));
        // `upstream_response_filter` chose to retry this attempt's response (and counted it).
        if std::mem::take(&mut ctx.attempt.status_retry) {
            e.set_retry(true);
            return e;
        }
        let idempotent = session.req_header().method.is_idempotent();
        let truncated = session.as_ref().retry_buffer_truncated();
        if stale_pooled(&e, client_reused, ctx)
            && !truncated
            && (idempotent || ctx.request.body_bytes == 0)
            && ctx.attempt.retry_stale()
        {
            // Counted apart from failures: it says nothing about the target's health.
            if let Some((up, target)) = ctx.current_target() {
                crate::metrics::metrics()
                    .upstream_requests
                    .with_label_values(&[&up.name, &target.address, "stale_connection"])
                    .inc();
            }
            e.set_retry(true);
            return e;
        }
        if let Some(up) = ctx.upstream().filter(|u| u.retry.is_some()).cloned() {
            let upstream_error = e.esource() == &ErrorSource::Upstream;
            if let Some(target) = ctx.attempt.target().cloned().filter(|_| upstream_error) {
                attempt_failed(&up, &target, "error", ctx.attempt.probe.as_ref());
            }
            // Retried as the status the gateway would answer with (504 timed out, else
            // 502), only while nothing of a response reached the client.
            let cause = attempts::Cause::Status(match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                _ => 502,
            });
            let replayable = up
                .retry
                .as_ref()
                .is_some_and(|p| p.retries_method(&session.req_header().method))
                && !truncated;
            let retry = upstream_error
                && ctx.attempt.upstream_status.is_none()
                && session.response_written().is_none()
                && attempts::policy_retry(ctx, replayable, cause, None);
            e.set_retry(retry);
            return e;
        }
        if let Some((up, target)) = ctx.current_target() {
            if e.esource() == &ErrorSource::Upstream {
                attempt_failed(up, target, "error", ctx.attempt.probe.as_ref());
            }
            if idempotent && !truncated && ctx.attempt.may_retry(up) {
                e.set_retry(true);
            } else if !idempotent || truncated {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Read only by `Server-Timing`: no clock read for the requests without it.
        if ctx.timing.server_timing {
            ctx.timing.connected_at = Some(Instant::now());
        }
        if let Some(up) = ctx.upstream() {
            if reused {
                up.conn_reused.inc();
            } else {
                up.conn_new.inc();
            }
        }
        Ok(())
    }

    /// The request as the upstream gets it: rewritten path, request id, forwarding and
    /// identity headers, the route's header operations.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = &ctx.routing.upstream_path {
            let uri = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            // Never fall back to the client's target: what was routed is what is sent.
            let u = uri.parse::<http::Uri>().or_err(
                ErrorType::InternalError,
                "the rewritten upstream path is not a valid URI",
            )?;
            req.set_uri(u);
        }
        req.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
        // The authority routed and keyed on is the one the upstream gets, whatever
        // `Host` field came with an absolute-form or HTTP/2 request.
        if ctx.request.authority.is_empty() {
            req.remove_header(&http::header::HOST);
        } else {
            req.insert_header(http::header::HOST, ctx.request.authority.as_str())?;
        }
        req.remove_header(refresh::REFRESH_MARK);
        trace::inject(ctx, req)?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        headers::set_forwarded(req, client_ip, ctx.request.https);
        if let Some(id) = &ctx.identity {
            headers::set_identity(req, id);
        }
        if let Some(route) = ctx.route() {
            route.request_headers.apply_request(req);
        }
        body::upstream_request(req, ctx)?;
        streaming::upstream_request(req, &ctx.stream)?;
        if ctx.request.decoder.is_some() {
            crate::policy::decompression::decoded_request_header(req)?;
        }
        if ctx.route().is_some_and(|r| r.edge.compression.is_some()) {
            // The gateway encodes for each client, after the cache: ask for the identity
            // bytes (no field at all would mean any coding, RFC 9110 §12.5.3).
            req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        let cache = ctx.routing.cache();
        phases::on_upstream_request(&mut ctx.cache, cache);
        traffic::start_mirror(&self.mirror_connector, req, ctx);
        Ok(())
    }

    /// The upstream's response header: timings, the attempt's outcome, and the cache's
    /// 304 and invalidation work.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A status the retry policy retries goes no further: the error hands the attempt
        // back to Pingora's retry loop before anything reaches the cache or the client.
        if resp.status.as_u16() >= 500 {
            if let Some(e) = retry_response(session, resp, ctx) {
                return Err(e);
            }
        }
        // Before the cache sees it: a stored response never carries another hop's fields.
        headers::strip_hop_by_hop_response(resp);
        let h1 = session.req_header().version < http::Version::HTTP_2;
        streaming::response_header(resp, &ctx.stream, h1)?;
        let cache = ctx.routing.cache();
        phases::on_upstream_response(session, resp, &mut ctx.cache, cache);
        let now = Instant::now();
        ctx.timing.upstream_header_at = Some(now);
        ctx.attempt.upstream_status = Some(resp.status.as_u16());
        trace::attempt_end(ctx, AttemptEnd::Status(resp.status.as_u16()));
        if let Some((up, target)) = ctx.current_target() {
            if let Some(s) = ctx.timing.upstream_start {
                up.duration.observe(now.duration_since(s).as_secs_f64());
            }
            if resp.status.as_u16() >= 500 {
                let mut buf = itoa::Buffer::new();
                attempt_failed(
                    up,
                    target,
                    crate::metrics::status_label(resp.status.as_u16(), &mut buf),
                    ctx.attempt.probe.as_ref(),
                );
            } else {
                attempt_answered(up, target, resp.status, ctx.attempt.probe.as_ref());
            }
        }
        Ok(())
    }

    /// Every response, whatever its source (upstream, cache): the cache's fields, drain
    /// handling, the route's header operations, request id, policy headers and
    /// `Server-Timing`.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        refresh::give_back(session, &mut ctx.request.lent_version);
        streaming::upgraded(session, resp, ctx);
        if let Some(rc) = ctx.route().and_then(|r| r.cache.as_ref()) {
            let cache = ctx.routing.cache();
            phases::on_response(
                session,
                resp,
                &ctx.cache,
                rc,
                ctx.attempt.upstream_status,
                cache,
            )?;
        }
        // While draining (SIGTERM, or an upgrade hand-over), tell HTTP/1 clients to reconnect
        // now, so they move to the new process instead of waiting for the grace period.
        if self.shared.draining.load(Relaxed)
            && session.req_header().version < http::Version::HTTP_2
        {
            session.set_keepalive(None);
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        headers::apply_server_header(resp, server_header(ctx));
        traffic::add_vary(resp, ctx)?;
        if let Some(route) = ctx.route() {
            route.response_headers.apply_response(resp);
            if let Some(cors) = &route.edge.cors {
                cors.on_response(resp);
            }
        }
        resp.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
        if resp.status.is_informational() {
            for (name, value) in &ctx.response.extra_headers {
                headers::insert_field(resp, name.clone(), value.clone())?;
            }
        } else {
            // The final response: taken rather than cloned (they are not needed after it).
            for (name, value) in std::mem::take(&mut ctx.response.extra_headers) {
                headers::insert_field(resp, name, value)?;
            }
        }
        if ctx.timing.server_timing {
            resp.insert_header("server-timing", log::server_timing(ctx))?;
        }
        // Last, after the cache (which stores the identity copy): encode for this client.
        // A background refresh has no client to encode for.
        if let Some(c) = ctx.route().and_then(|r| r.edge.compression.as_ref()) {
            if !ctx.request.refresh && !streaming::never_compressed(resp) {
                let encoder = c.on_response(session.req_header(), resp);
                if let Some(m) = session
                    .downstream_modules_ctx
                    .get_mut::<crate::policy::compression::CompressModule>()
                {
                    m.set(encoder);
                }
            }
        }
        body::response_header(session, resp, ctx)
    }

    /// The route's response transform holds, rewrites or replaces the body; a bridged
    /// gRPC-web text response is then base64-encoded chunk by chunk, and a tunnel's
    /// frames keep it from its idle limit.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        body::response_body(session, body, end_of_stream, ctx)?;
        streaming::response_body(body, &ctx.stream);
        Ok(None)
    }

    /// A bridged gRPC-web call's trailers become the trailer frame ending its body.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        Ok(streaming::trailers(trailers, &ctx.stream))
    }

    /// An error ended the request: problem+json when nothing was written yet.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // An attempt cut by the route's deadline (its timeouts were capped at the time left).
        if ctx.response.reject.is_none()
            && e.esource() == &ErrorSource::Upstream
            && attempts::remaining(ctx).is_some_and(|l| l.is_zero())
        {
            attempts::deadline_exceeded(ctx);
        }
        let reject = to_reject(e, ctx);
        let code = reject.status();
        // The connection is closed after this answer (`can_reuse_downstream: false`
        // below): say so. Pingora writes `Connection: keep-alive` while keep-alive is on,
        // and a client that believed it would send its next request on a socket we are
        // closing, and get a reset instead of an answer.
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if let Err(err) = respond(session, ctx, reject).await {
                tracing::debug!("could not send the error response: {err}");
            }
        } else {
            ctx.response.reject = Some(reject);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        refresh::give_back(session, &mut ctx.request.lent_version);
        ctx.mirror.finish();
        log::finish(session, e, ctx);
    }
}
