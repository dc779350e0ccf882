//! Where a route's body transforms meet Pingora's phases (the operations themselves are
//! `policy::transform`):
//!
//! - **Request** (`request_body`): after the policies (the values may name the
//!   consumer), a JSON body is read whole in `request_filter`, at most `max_size` (413
//!   beyond), and transformed; a body that is not JSON is refused with 400
//!   `invalid-body`. Nothing has gone upstream yet. The body read is held in Pingora's
//!   replay buffer (which is why `max_size` is at most 64 KiB): Pingora hands that buffer
//!   to `request_body_filter` for each attempt, which sends the transformed body in its
//!   place, with its own `Content-Length` set in `upstream_request_filter`.
//! - **Response** (`response_body`): the cache stores the upstream's body as it came, and
//!   the transform runs after it on every response (miss or hit), so what is stored is
//!   one copy and values filled from the request are each client's own. `response_filter`
//!   decides from the header: a body declared over `max_size`, or with a
//!   `Content-Encoding`, is refused at once (502 problem+json) or passed untouched, as
//!   `on_invalid` says; otherwise its `Content-Length`, `ETag` and `Accept-Ranges` are
//!   removed (it is sent chunked) and `response_body_filter` holds it to its end. A body
//!   found invalid or too large only then cannot change a status line that has gone: with
//!   `on_invalid: fail` the response is cut (the client sees an incomplete message, never
//!   an untransformed one as if complete); with `pass` what was held goes out as it came.

use super::Gateway;
use crate::config::transform::OnInvalid;
use crate::context::Ctx;
use crate::error::Reject;
use crate::policy::transform::{BodyKind, Fill, ResponseBody};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

fn count(route: &str, direction: &str, result: &str) {
    crate::metrics::metrics()
        .body_transforms
        .with_label_values(&[route, direction, result])
        .inc();
}

impl Gateway {
    /// `request_filter`'s last step: reads and transforms the request body of a route
    /// with `request_body`, or says why the request is refused. Also prepares what the
    /// response transform needs of the request.
    pub(super) async fn transform_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Option<Reject> {
        // Most routes have no transform: no reference to the route is taken for them.
        let route = ctx
            .route()
            .filter(|r| r.response_transform.is_some() || r.request_transform.is_some())?
            .clone();
        if route.response_transform.is_some() {
            // The transform reads whole bodies: a range of one is no document.
            session.req_header_mut().remove_header(&http::header::RANGE);
        }
        let rt = route.request_transform.as_ref()?;
        if !crate::policy::transform::is_json(super::streaming::content_type(
            &session.req_header().headers,
        )) || session.as_mut().is_body_empty()
        {
            return None;
        }
        let max = route.max_body.map_or(rt.max_size, |m| m.min(rt.max_size));
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            count(&route.name, "request", "too_large");
            return Some(Reject::PayloadTooLarge(max));
        }
        // Kept by Pingora and handed to `request_body_filter` for every attempt.
        session.as_mut().enable_retry_buffering();
        super::admit::start_body_deadline(session, ctx);
        let mut body = Vec::new();
        loop {
            // The time left bounds each read: as Pingora's client read timeout (HTTP/1)
            // and as a timeout of its own, since on HTTP/2 Pingora has none and no
            // upstream is connected yet to time a stalled stream out.
            let left = match &ctx.request.body_deadline {
                None => None,
                Some(d) => match d.left(body.len() as u64, std::time::Instant::now()) {
                    None => return Some(Reject::BodyTimeout),
                    left => left,
                },
            };
            let read = match left {
                None => session.read_request_body().await,
                Some(left) => {
                    session.set_read_timeout(Some(left));
                    match tokio::time::timeout(left, session.read_request_body()).await {
                        Ok(r) => r,
                        Err(_) => return Some(Reject::BodyTimeout),
                    }
                }
            };
            match read {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 > max {
                        count(&route.name, "request", "too_large");
                        return Some(Reject::PayloadTooLarge(max));
                    }
                }
                Ok(None) => break,
                // The deadline's read timeout (`admit::BodyDeadline`).
                Err(e) if e.etype() == &ErrorType::ReadTimedout => {
                    return Some(Reject::BodyTimeout)
                }
                Err(_) => {
                    return Some(Reject::BadRequest(
                        "the request body could not be read".into(),
                    ))
                }
            }
        }
        // All of it came: what Pingora replays for each attempt is no client read.
        ctx.request.body_deadline = None;
        ctx.request.body_bytes = body.len() as u64;
        let fill = Fill {
            consumer: ctx.identity.as_ref().map(|i| i.consumer_id.as_str()),
            subject: ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
            headers: &session.req_header().headers,
        };
        match rt.apply(&body, &fill) {
            Ok(out) => {
                count(&route.name, "request", "ok");
                ctx.body.request = Some(Bytes::from(out));
                None
            }
            Err(why) => {
                count(&route.name, "request", "invalid");
                Some(Reject::InvalidBody(why))
            }
        }
    }
}

/// `upstream_request_filter`: the transformed body's framing, and an identity body
/// from the upstream when the route transforms responses.
pub(super) fn upstream_request(req: &mut pingora::http::RequestHeader, ctx: &Ctx) -> Result<()> {
    if let Some(b) = &ctx.body.request {
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.insert_header(http::header::CONTENT_LENGTH, b.len().to_string())?;
    }
    if ctx.route().is_some_and(|r| r.response_transform.is_some()) {
        // An encoded body cannot be read; ask for identity.
        req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    }
    Ok(())
}

/// `request_body_filter`: the transformed body replaces what Pingora replays. True when
/// it did (the body is accounted for already).
pub(super) fn request_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &Ctx) -> bool {
    let Some(b) = &ctx.body.request else {
        return false;
    };
    *body = end_of_stream.then(|| b.clone());
    true
}

/// `response_filter`: decides what becomes of the body from the header.
pub(super) fn response_header(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
) -> Result<()> {
    let Some(route) = ctx
        .route()
        .filter(|r| r.response_transform.is_some())
        .cloned()
    else {
        return Ok(());
    };
    let Some(rt) = route.response_transform.as_ref() else {
        return Ok(());
    };
    ctx.body.response = ResponseBody::Pass;
    let status = resp.status.as_u16();
    if resp.status.is_informational() || status == 204 || status == 304 {
        return Ok(());
    }
    let Some(kind) = rt.kind_of(super::streaming::content_type(&resp.headers)) else {
        return Ok(());
    };
    let declared = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let encoded = resp
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded || declared.is_some_and(|n| n > rt.max_size) {
        let result = if encoded { "invalid" } else { "too_large" };
        match rt.on_invalid {
            OnInvalid::Pass => count(&route.name, "response", "passed"),
            OnInvalid::Fail => {
                count(&route.name, "response", result);
                return refuse_response(session, resp, ctx);
            }
        }
        return Ok(());
    }
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.remove_header(&http::header::ETAG);
    resp.remove_header(&http::header::ACCEPT_RANGES);
    if kind == BodyKind::Xml {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    if session.req_header().method == http::Method::HEAD {
        return Ok(());
    }
    if session.req_header().version == http::Version::HTTP_11 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    ctx.body.response = ResponseBody::Hold {
        kind,
        buf: Vec::new(),
    };
    Ok(())
}

/// Turns the header into a 502 problem+json whose body replaces the upstream's.
fn refuse_response(session: &Session, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
    let name = ctx.upstream().map(|u| u.name.clone()).unwrap_or_default();
    let reject = Reject::BadUpstreamBody(name);
    let body = Bytes::from(reject.body(&ctx.request.id));
    resp.set_status(reject.status())?;
    for h in [
        http::header::CONTENT_ENCODING,
        http::header::TRANSFER_ENCODING,
        http::header::ETAG,
        http::header::LAST_MODIFIED,
        http::header::ACCEPT_RANGES,
        http::header::CONTENT_RANGE,
    ] {
        resp.remove_header(&h);
    }
    resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    crate::metrics::metrics()
        .rejected
        .with_label_values(&[reject.slug()])
        .inc();
    ctx.response.reject = Some(reject);
    let head = session.req_header().method == http::Method::HEAD;
    ctx.body.response = ResponseBody::Replace((!head).then_some(body));
    Ok(())
}

/// `response_body_filter`: holds, transforms, replaces or passes the body.
pub(super) fn response_body(
    session: &Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    // Every response of every route comes through here, chunk by chunk: nothing is
    // taken from the route unless the body is held for a transform.
    if matches!(ctx.body.response, ResponseBody::Pass) {
        return Ok(());
    }
    let route_name = ctx.route_name().to_string();
    let rt = ctx.route().and_then(|r| r.response_transform.clone());
    match &mut ctx.body.response {
        ResponseBody::Pass => Ok(()),
        ResponseBody::Replace(problem) => {
            // The upstream's body is dropped; the problem goes out once, at its end.
            *body = if end_of_stream { problem.take() } else { None };
            Ok(())
        }
        ResponseBody::Hold { kind, buf } => {
            let kind = *kind;
            if let Some(chunk) = body.take() {
                buf.extend_from_slice(&chunk);
            }
            let Some(rt) = rt else {
                return Ok(());
            };
            if buf.len() as u64 > rt.max_size {
                return give_up(ctx, body, &route_name, "too_large", rt.on_invalid);
            }
            if !end_of_stream {
                return Ok(());
            }
            let fill = Fill {
                consumer: ctx.identity.as_ref().map(|i| i.consumer_id.as_str()),
                subject: ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
                headers: &session.req_header().headers,
            };
            let held = std::mem::take(buf);
            match rt.apply(kind, &held, &fill) {
                Ok(out) => {
                    count(&route_name, "response", "ok");
                    ctx.body.response = ResponseBody::Pass;
                    *body = Some(Bytes::from(out));
                    Ok(())
                }
                Err(why) => {
                    tracing::debug!("response of route {route_name:?} not transformed: {why}");
                    if let ResponseBody::Hold { buf, .. } = &mut ctx.body.response {
                        *buf = held;
                    }
                    give_up(ctx, body, &route_name, "invalid", rt.on_invalid)
                }
            }
        }
    }
}

/// The held body cannot be transformed after its header went out: `pass` sends what
/// was held and lets the rest through; `fail` cuts the response.
fn give_up(
    ctx: &mut Ctx,
    body: &mut Option<Bytes>,
    route: &str,
    result: &str,
    on_invalid: OnInvalid,
) -> Result<()> {
    let held = match std::mem::take(&mut ctx.body.response) {
        ResponseBody::Hold { buf, .. } => buf,
        _ => Vec::new(),
    };
    match on_invalid {
        OnInvalid::Pass => {
            count(route, "response", "passed");
            *body = Some(Bytes::from(held));
            Ok(())
        }
        OnInvalid::Fail => {
            count(route, "response", result);
            // Not sent (the response is cut), but refused all the same.
            crate::metrics::metrics()
                .rejected
                .with_label_values(&["bad-upstream-body"])
                .inc();
            let name = ctx.upstream().map(|u| u.name.clone()).unwrap_or_default();
            ctx.response.reject = Some(Reject::BadUpstreamBody(name));
            Error::e_explain(
                ErrorType::HTTPStatus(502),
                "the upstream's body could not be transformed after its header was sent",
            )
        }
    }
}
