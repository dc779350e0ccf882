//! The proxy's part of a request's trace (`telemetry::trace`): which phase marks what.
//! Every function is a no-op when the request has no trace (`tracing:` absent).

use crate::context::Ctx;
use crate::error::Reject;
use crate::telemetry::trace::{AttemptEnd, Finish, RequestTrace};
use pingora::http::RequestHeader;
use pingora::proxy::Session;

/// A stage (admission, a policy) finished, refused with `reject` or passed.
pub fn stage(trace: &mut Option<Box<RequestTrace>>, name: &'static str, reject: Option<&Reject>) {
    if let Some(t) = trace.as_mut() {
        t.event(name, reject.map(|r| r.slug()));
    }
}

/// `upstream_peer` chose a target: a client span starts.
pub fn attempt_start(ctx: &mut Ctx) {
    let Some(t) = ctx.trace.as_mut() else {
        return;
    };
    // `Ctx::upstream`, by field (the trace is borrowed mutably): the attempt's upstream
    // (a breaker's fallback), else the request's.
    let up = ctx
        .attempt
        .upstream
        .as_ref()
        .or(ctx.routing.upstream.as_ref());
    if let (Some(up), Some(target)) = (up, ctx.attempt.target()) {
        t.attempt_start(&up.name, &target.address);
    }
}

fn attempt_end(ctx: &mut Ctx, end: AttemptEnd) {
    if let Some(t) = ctx.trace.as_mut() {
        t.attempt_end(end);
    }
}

/// The attempt ended without a response: `what` failed (`connect_error`, an error
/// type's name).
pub fn attempt_failed(ctx: &mut Ctx, what: &'static str) {
    attempt_end(ctx, AttemptEnd::Error(what));
}

/// The attempt's response header came, with `status`.
pub fn attempt_answered(ctx: &mut Ctx, status: u16) {
    attempt_end(ctx, AttemptEnd::Status(status));
}

/// The attempt's request carries the trace context, the attempt's client span as parent;
/// the client's own `traceparent`/`tracestate` are replaced.
pub fn inject(ctx: &Ctx, req: &mut RequestHeader) -> pingora::Result<()> {
    let Some(t) = ctx.trace.as_ref() else {
        return Ok(());
    };
    let out = t.outgoing();
    req.insert_header("traceparent", out.traceparent)?;
    match out.tracestate {
        Some(s) => {
            req.insert_header("tracestate", s)?;
        }
        None => {
            req.remove_header("tracestate");
        }
    }
    Ok(())
}

/// The cache's answer, from the `Cache-Status` field the cache phases wrote.
fn cache_result(session: &Session) -> Option<&'static str> {
    let v = session
        .response_written()?
        .headers
        .get("cache-status")?
        .to_str()
        .ok()?;
    Some(if v.contains("fwd=stale") {
        "stale"
    } else if v.contains("fwd=bypass") {
        "bypass"
    } else if v.contains("fwd=") {
        "miss"
    } else if v.contains("hit") {
        "hit"
    } else {
        "bypass"
    })
}

/// The end of the request: the server span's attributes, then the trace's decision.
/// Gives back the trace and span ids for the access log.
pub fn finish(
    session: &Session,
    ctx: &mut Ctx,
    status: u16,
    e: Option<&pingora::Error>,
) -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    let t = ctx.trace.take()?;
    let ids = t.ids();
    let req = session.req_header();
    let flavor = match req.version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_09 => "0.9",
        _ => "1.1",
    };
    let error = ctx
        .response
        .reject
        .as_ref()
        .map(|r| r.slug())
        .or_else(|| e.map(|e| e.etype().as_str()));
    t.finish(Finish {
        method: req.method.as_str(),
        path: req.uri.path(),
        scheme: if ctx.request.https { "https" } else { "http" },
        host: (!ctx.request.authority.is_empty()).then_some(ctx.request.authority.as_str()),
        flavor,
        route: ctx.route().map(|r| r.name.as_str()),
        consumer: ctx.consumer_id(),
        status,
        cache: cache_result(session),
        client: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        user_agent: req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        error,
    });
    Some(ids)
}
