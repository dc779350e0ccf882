//! The Pingora `ProxyHttp` implementation: one method per phase, in the order Pingora
//! calls them (`docs/REQUEST_PATH.md` charts it). The rules live elsewhere and are called
//! from here: routing is `runtime::router`, header work is `policy::headers`, the route's
//! policies are `policy` (run in one loop, `run_policies`), target choice and health are
//! `upstream`, the cache's part of each phase is `cache::phases`, answers are
//! `error::Reject`. Each phase here is a short list of steps; the request path's own
//! decisions are in the files beside it: the admission checks (`admit`), what a
//! stale-while-revalidate refresh takes over from the request that started it
//! (`refresh`), an attempt's target, outcome and retries with the breaker and the
//! deadline (`attempts`), WebSocket and gRPC (`streaming`), CORS and compression
//! (`edge`), body transforms (`body`), versions, splits and mirrors (`traffic`), the
//! trace (`trace`). Decided here: how an error becomes a rejection (`to_reject`).

mod admit;
mod aggregate;
mod attempts;
mod body;
mod edge;
mod log;
mod refresh;
pub mod streaming;
mod trace;
mod traffic;

use crate::cache::phases;
use crate::context::Ctx;
use crate::error::Reject;
use crate::policy::headers;
use crate::runtime::Shared;
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

/// `upstream_request_filter`: the path routed (rewritten, with the query as the
/// policies left it) is the one sent.
fn upstream_target(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
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
    Ok(())
}

/// `upstream_request_filter`: the authority routed and keyed on is the one the upstream
/// gets, whatever `Host` field came with an absolute-form or HTTP/2 request.
fn upstream_host(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let authority = ctx.request.authority.as_str();
    if authority.is_empty() {
        req.remove_header(&http::header::HOST);
        return Ok(());
    }
    headers::set_request_field(req, http::header::HOST, authority)
}

/// Whether `e`, the upstream's read timing out, came while an HTTP/2 request body was
/// still incomplete past its deadline: the upstream was waiting for the client. (An
/// HTTP/1 body's reads time out on the client's side first; and a body held back by an
/// upstream that stopped taking it has earned at least the time of the buffers it
/// filled, far more than a read timeout, unless `body_min_rate` is 0.)
fn body_overdue(e: &Error, ctx: &Ctx) -> bool {
    e.etype() == &ErrorType::ReadTimedout
        && e.esource() == &ErrorSource::Upstream
        && ctx.request.body_deadline.as_ref().is_some_and(|d| {
            d.per_piece
                && d.left(ctx.request.body_bytes, std::time::Instant::now())
                    .is_none()
        })
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
                if e.etype() == &ErrorType::ReadTimedout && ctx.request.body_deadline.is_some() {
                    // A read of the request body waited longer than its deadline allowed
                    // (`admit::BodyDeadline`).
                    Reject::BodyTimeout
                } else {
                    Reject::BadRequest("the client was too slow".into())
                }
            } else if body_overdue(e, ctx) {
                // The upstream waited for a body the client did not send in time (an
                // HTTP/2 stream that stalled: `admit::start_body_deadline`).
                Reject::BodyTimeout
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
        // Every write to the client from here on, answers of ours included, must make
        // progress within `server.send_timeout` (Pingora's default is to wait for ever
        // on a client that stops reading).
        if let Some(snap) = &ctx.routing.snapshot {
            session.set_write_timeout(Some(snap.loaded.config.server.send_timeout.0));
        }
        trace::stage(&mut ctx.trace, "admit", admitted.as_ref());
        if let Some(reject) = admitted {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        headers::strip_client_fields(session.req_header_mut(), ctx.request.forwarded_trusted);
        // CORS before authentication and limits: a preflight carries no credential.
        if edge::cors_request(session, ctx).await? {
            return Ok(true);
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
        edge::choose_decoder(session, ctx);
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
        admit::check_body_deadline(session, body, end_of_stream, ctx)?;
        if body::request_body(body, end_of_stream, ctx) {
            return Ok(());
        }
        admit::count_body(body, ctx)?;
        edge::decode_body(body, end_of_stream, ctx)?;
        streaming::decode_request_body(body, end_of_stream, ctx)?;
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
        let left = attempts::wait_turn(ctx).await?;
        let Some(route) = ctx.routing.route.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no route in upstream_peer");
        };
        // The one chosen in `proxy_upstream_filter` (a fallback while the circuit is open),
        // else the request's (the route's, its version's or its split side's).
        let Some(up) = ctx.upstream().cloned() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream in upstream_peer");
        };
        let up = &up;
        if let Some(id) = ctx.attempt.take_fresh_retry() {
            // The same target, never from the pool: a group key no pooled connection has.
            ctx.timing.upstream_start = Some(Instant::now());
            let mut peer = attempts::peer(up, id, route, left, session.req_header());
            peer.group_key = attempts::fresh_group();
            // A retried upgrade is still a tunnel: no per-read timeout on this side either.
            if ctx.stream.upgrade {
                streaming::upgrade_peer(&mut peer.options, route);
            }
            trace::attempt_start(ctx);
            return Ok(Box::new(peer));
        }
        let Some(id) = attempts::choose_target(session, up, ctx) else {
            return attempts::no_target(ctx, up);
        };
        ctx.attempt.start(up, id);
        ctx.timing.upstream_start = Some(Instant::now());
        let mut peer = attempts::peer(up, id, route, left, session.req_header());
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
        trace::attempt_failed(ctx, "connect_error");
        attempts::connect_failed(ctx, &mut e);
        e
    }

    /// An exchange with the target broke: whether it is tried again (`attempts`).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        trace::attempt_failed(ctx, e.etype().as_str());
        attempts::exchange_failed(session, &mut e, ctx, client_reused);
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
        admit::start_body_deadline(session, ctx);
        upstream_target(req, ctx)?;
        headers::set_request_field(req, headers::X_REQUEST_ID, &ctx.request.id)?;
        upstream_host(req, ctx)?;
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
        edge::upstream_request(req, ctx)?;
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
            if let Some(e) = attempts::retry_response(session, resp, ctx) {
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
        trace::attempt_answered(ctx, resp.status.as_u16());
        attempts::count_response(ctx, resp.status, now);
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
        traffic::add_vary(resp, ctx);
        if let Some(route) = ctx.route() {
            route.response_headers.apply_response(resp);
        }
        edge::cors_response(resp, ctx);
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
        edge::choose_encoder(session, resp, ctx);
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
        attempts::deadline_cut(ctx, e);
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
