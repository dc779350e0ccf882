//! The Pingora `ProxyHttp` implementation. It wires the phases to the snapshot and the
//! policies and holds no policy logic of its own: routing is `runtime::router`, header
//! work is `policy::headers`, target choice is `upstream`, answers are `error::Reject`.

mod ctx;
mod log;

use crate::cache;
use crate::error::Reject;
use crate::policy::headers;
use crate::runtime::{path, router::host_of, Shared};
use async_trait::async_trait;
use bytes::Bytes;
pub use ctx::Ctx;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    pub shared: Arc<Shared>,
}

/// Writes a problem+json answer. The one place a `Reject` becomes a response.
pub async fn respond(session: &mut Session, ctx: &mut Ctx, reject: Reject) -> Result<()> {
    let body = Bytes::from(reject.body(&ctx.request_id));
    let mut resp = ResponseHeader::build(reject.status(), Some(5))?;
    resp.insert_header("content-type", "application/problem+json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    crate::server::apply_server_header(&mut resp, server_header(ctx));
    if !ctx.request_id.is_empty() {
        resp.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
    }
    if let Some(secs) = reject.retry_after() {
        resp.insert_header("retry-after", secs.to_string())?;
    }
    for (name, value) in reject
        .headers()
        .into_iter()
        .chain(ctx.extra_response_headers.iter().cloned())
    {
        resp.insert_header(name, value)?;
    }
    if matches!(
        reject,
        Reject::BadRequest(_) | Reject::HeadersTooLarge | Reject::PayloadTooLarge(_)
    ) {
        // The rest of this connection's bytes cannot be trusted (or are a body we refuse).
        session.set_keepalive(None);
        resp.insert_header("connection", "close")?;
    }
    crate::metrics::metrics()
        .rejected
        .with_label_values(&[reject.slug()])
        .inc();
    ctx.reject = Some(reject);
    let head_only = session.req_header().method == http::Method::HEAD;
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
    ctx.snapshot
        .as_ref()
        .map_or("", |s| s.loaded.config.server.server_header.as_str())
}

fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

fn header_bytes(req: &pingora::http::RequestHeader) -> usize {
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

impl Gateway {
    /// Everything before choosing a target: returns the rejection to send, if any.
    fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Reject> {
        let snap = self.shared.snapshot.load_full();
        let req = session.req_header();
        ctx.request_id = match req.headers.get(headers::X_REQUEST_ID) {
            Some(v) if headers::well_formed_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => headers::new_request_id(),
        };
        if header_bytes(req) > snap.max_header_size {
            ctx.snapshot = Some(snap);
            return Some(Reject::HeadersTooLarge);
        }
        // RFC 9112 §6.3: both framings at once is a smuggling vector; refuse, don't guess.
        // Pingora drops Content-Length when Transfer-Encoding is present, so look at the
        // raw header block (only when Transfer-Encoding is there at all: rare).
        if req.headers.contains_key(http::header::TRANSFER_ENCODING)
            && raw_has_content_length(&session.as_downstream().to_h1_raw())
        {
            ctx.snapshot = Some(snap);
            return Some(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding are present".into(),
            ));
        }
        let raw_path = req.uri.path();
        let normalized = match path::normalize(raw_path) {
            Ok(p) => p,
            Err(_) => {
                ctx.snapshot = Some(snap);
                return Some(Reject::BadRequest("the request path is not valid".into()));
            }
        };
        let host_raw = req
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let host = host_of(host_raw);
        let Some(route) = snap
            .router
            .find(&host, &normalized, &req.method, &req.headers)
            .cloned()
        else {
            ctx.snapshot = Some(snap);
            return Some(Reject::NotFound);
        };
        if crate::cache::storage().is_some() {
            // Keys and unsafe-method invalidation name the URL the client asked for.
            ctx.cache.host = host.into_owned();
            ctx.cache.path = normalized.to_string();
        }
        // Path sent upstream: normalised, then strip_prefix; the query is kept as the
        // policies leave it (upstream_request_filter).
        let mut up_path: std::borrow::Cow<str> = normalized;
        if let Some(sp) = &route.strip_prefix {
            if let Some(rest) = up_path.strip_prefix(sp.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    up_path = if rest.is_empty() {
                        "/".to_string().into()
                    } else {
                        rest.to_string().into()
                    };
                }
            }
        }
        if up_path != raw_path {
            ctx.upstream_path = Some(up_path.into_owned());
        }
        if let Some(max) = route.max_body {
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                ctx.route = Some(route);
                ctx.snapshot = Some(snap);
                return Some(Reject::PayloadTooLarge(max));
            }
        }
        let up = route.upstream.clone();
        if up.max_inflight > 0 {
            let n = up.inflight.fetch_add(1, Relaxed);
            ctx.upstream_slot = Some(ctx::UpstreamSlot(up.clone()));
            if n >= up.max_inflight {
                ctx.route = Some(route);
                ctx.snapshot = Some(snap);
                return Some(Reject::Overloaded(up.name.clone()));
            }
        }
        ctx.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.server_timing = route.server_timing
            || (!snap.server_timing_listeners.is_empty()
                && session
                    .server_addr()
                    .and_then(|a| a.as_inet())
                    .is_some_and(|a| snap.server_timing_listeners.contains(a)));
        ctx.route = Some(route);
        ctx.snapshot = Some(snap);
        None
    }

    /// The route's policies in stage order; the first rejection ends the loop.
    async fn run_policies(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Reject> {
        let route = ctx.route.clone()?;
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
            response_headers: &mut ctx.extra_response_headers,
        };
        for p in &route.policies {
            if let Err(reject) = p.apply(&mut cx).await {
                return Some(reject);
            }
        }
        None
    }

    fn hash_key(&self, session: &Session, ctx: &Ctx) -> Vec<u8> {
        use crate::upstream::HashOn;
        let Some(route) = &ctx.route else {
            return Vec::new();
        };
        match &route.upstream.hash_on {
            Some(HashOn::Header(name)) => session
                .req_header()
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
            Some(HashOn::Path) => session.req_header().uri.path().as_bytes().to_vec(),
            Some(HashOn::Consumer) if ctx.identity.is_some() => ctx
                .identity
                .as_ref()
                .map(|id| id.consumer_id.as_bytes().to_vec())
                .unwrap_or_default(),
            // An anonymous caller's "consumer" is its address.
            Some(HashOn::Ip) | Some(HashOn::Consumer) => session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string().into_bytes())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

fn to_reject(e: &Error, ctx: &Ctx) -> Reject {
    if let Some(r) = &ctx.reject {
        return r.clone();
    }
    let upstream = ctx
        .route
        .as_ref()
        .map(|r| r.upstream.name.clone())
        .unwrap_or_default();
    match e.etype() {
        ErrorType::HTTPStatus(413) => {
            Reject::PayloadTooLarge(ctx.route.as_ref().and_then(|r| r.max_body).unwrap_or(0))
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

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(reject) = self.admit(session, ctx) {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        headers::strip_identity(session.req_header_mut());
        if let Some(reject) = self.run_policies(session, ctx).await {
            respond(session, ctx, reject).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if let Some(max) = ctx.route.as_ref().and_then(|r| r.max_body) {
                if ctx.body_bytes > max {
                    ctx.reject = Some(Reject::PayloadTooLarge(max));
                    return Error::e_explain(
                        ErrorType::HTTPStatus(413),
                        "request body over max_body",
                    );
                }
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        cache::phases::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        cache::phases::cache_key(session, ctx)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        cache::phases::on_miss(session, ctx);
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(cache::phases::hit_freshness(session, meta, is_fresh, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &pingora::http::RequestHeader,
    ) -> Option<HashBinary> {
        cache::phases::variance(meta, ctx, req)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(cache::phases::response_cacheable(session, resp, ctx))
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        cache::phases::serve_stale(session, ctx, error)
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.cache.active && ctx.cache.directives.only_if_cached {
            respond(session, ctx, Reject::NotCached).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route in upstream_peer");
        };
        let up = &route.upstream;
        let key = if up.hash_on.is_some() {
            self.hash_key(session, ctx)
        } else {
            Vec::new()
        };
        let Some(idx) = up.select(&key, &ctx.tried) else {
            ctx.reject = Some(if ctx.tried.is_empty() {
                Reject::NoHealthyTarget(up.name.clone())
            } else {
                Reject::BadGateway(up.name.clone())
            });
            return Error::e_explain(ErrorType::HTTPStatus(503), "no usable target");
        };
        ctx.tried.push(idx);
        ctx.target = Some(idx);
        let target = up.targets[idx].clone();
        target.inflight.fetch_add(1, Relaxed);
        ctx.target_slot = Some(ctx::TargetSlot(target));
        ctx.upstream_start = Some(Instant::now());
        let mut peer = up.peer(idx);
        if let Some(rt) = route.read_timeout {
            peer.options.read_timeout = Some(rt);
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(idx)) = (&ctx.route, ctx.target) {
            let up = &route.upstream;
            let t = &up.targets[idx];
            if let Some(p) = up.passive {
                t.record_failure(p.unhealthy_after, p.cooldown);
            }
            crate::metrics::metrics()
                .upstream_requests
                .with_label_values(&[&up.name, &t.address, "connect_error"])
                .inc();
            // Nothing reached the target, so any method may go to another one.
            if ctx.tried.len() <= up.retries && ctx.tried.len() < up.targets.len() {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let (Some(route), Some(idx)) = (&ctx.route, ctx.target) {
            let up = &route.upstream;
            let t = &up.targets[idx];
            if e.esource() == &ErrorSource::Upstream {
                if let Some(p) = up.passive {
                    t.record_failure(p.unhealthy_after, p.cooldown);
                }
                crate::metrics::metrics()
                    .upstream_requests
                    .with_label_values(&[&up.name, &t.address, "error"])
                    .inc();
            }
            let idempotent = session.req_header().method.is_idempotent();
            let can_retry = idempotent
                && !session.as_ref().retry_buffer_truncated()
                && ctx.tried.len() <= up.retries
                && ctx.tried.len() < up.targets.len();
            if can_retry {
                e.set_retry(true);
            } else if !idempotent || session.as_ref().retry_buffer_truncated() {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
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
        ctx.connected_at = Some(Instant::now());
        if let Some(route) = &ctx.route {
            if reused {
                route.upstream.conn_reused.inc();
            } else {
                route.upstream.conn_new.inc();
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut pingora::http::RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = &ctx.upstream_path {
            let uri = match req.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            if let Ok(u) = uri.parse::<http::Uri>() {
                req.set_uri(u);
            }
        }
        req.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        headers::set_forwarded(req, client_ip, ctx.https);
        if let Some(id) = &ctx.identity {
            headers::set_identity(req, id);
        }
        if let Some(route) = &ctx.route {
            route.request_headers.apply_request(req);
        }
        if ctx.cache.active {
            ctx.cache.request_time = Some(cache::clock::now());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        cache::phases::on_upstream_response(session, resp, ctx);
        let now = Instant::now();
        ctx.upstream_header_at = Some(now);
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        if let (Some(route), Some(idx)) = (&ctx.route, ctx.target) {
            let up = &route.upstream;
            let t = &up.targets[idx];
            if let Some(s) = ctx.upstream_start {
                up.duration.observe(now.duration_since(s).as_secs_f64());
            }
            if status == 200 {
                t.requests_200.inc();
            } else {
                crate::metrics::metrics()
                    .upstream_requests
                    .with_label_values(&[&up.name, &t.address, resp.status.as_str()])
                    .inc();
            }
            match (status >= 500, up.passive) {
                (true, Some(p)) => t.record_failure(p.unhealthy_after, p.cooldown),
                (false, Some(_)) => t.record_success(),
                _ => {}
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        cache::phases::on_response(session, resp, ctx)?;
        // While draining (SIGTERM, or an upgrade hand-over), tell HTTP/1 clients to reconnect
        // now, so they move to the new process instead of waiting for the grace period.
        if self.shared.draining.load(Relaxed)
            && session.req_header().version < http::Version::HTTP_2
        {
            session.set_keepalive(None);
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        crate::server::apply_server_header(resp, server_header(ctx));
        if let Some(route) = &ctx.route {
            route.response_headers.apply_response(resp);
        }
        resp.insert_header(headers::X_REQUEST_ID, ctx.request_id.as_str())?;
        if resp.status.is_informational() {
            for (name, value) in &ctx.extra_response_headers {
                resp.insert_header(name.clone(), value.clone())?;
            }
        } else {
            // The final response: taken rather than cloned (they are not needed after it).
            for (name, value) in std::mem::take(&mut ctx.extra_response_headers) {
                resp.insert_header(name, value)?;
            }
        }
        if ctx.server_timing {
            resp.insert_header("server-timing", log::server_timing(ctx))?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = to_reject(e, ctx);
        let code = reject.status();
        // The connection is not reused after this (can_reuse_downstream below), so the
        // answer says `Connection: close` rather than inviting a request that reads EOF.
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if let Err(err) = respond(session, ctx, reject).await {
                tracing::debug!("could not send the error response: {err}");
            }
        } else {
            ctx.reject = Some(reject);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
        log::finish(session, e, ctx);
    }
}
