//! The traffic-management side of a request's attempts at its upstream, called from the
//! proxy phases: which upstream it goes to (the circuit breaker and its fallback), the
//! route's `deadline` over every attempt, and whether the `retry` policy sends a failed
//! attempt again (what, under the budget, after which wait). The state machines are in
//! `upstream::{breaker, outlier, retry}`; what is decided here is what a request does
//! with them.
//!
//! Also each attempt's own steps, as the phases of `proxy::mod` take them: which target
//! it goes to and with which peer (`upstream_peer`), how its outcome counts against
//! its target (`attempt_failed`, `attempt_answered`), and when a failed one is sent
//! again (`connect_failed`, `exchange_failed`, `retry_response`).

use crate::context::Ctx;
use crate::error::Reject;
use crate::policy::Identity;
use crate::runtime::Route;
use crate::upstream::breaker::{Admit, Probe};
use crate::upstream::{HashOn, Target, TargetId, Upstream};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use pingora::{Error, ErrorSource, ErrorType};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `proxy_upstream_filter`: the upstream this request's attempts go to. The route's,
/// unless its circuit is open: then the breaker's `fallback` (whose own circuit is
/// asked; there is no fallback of a fallback), or a 503 `circuit-open` with
/// `Retry-After`. Also starts the deadline and counts the request in the retry budget.
pub fn choose_upstream(ctx: &mut Ctx) -> Result<Arc<Upstream>, Reject> {
    let Some(deadline) = ctx.route().map(|r| r.deadline) else {
        return Err(Reject::Internal);
    };
    if let Some(d) = deadline {
        ctx.attempt.deadline = Some(ctx.timing.start + d);
    }
    // The request's upstream: the route's, or its version's or split side's.
    let Some(up) = ctx.routing.upstream.clone() else {
        return Err(Reject::Internal);
    };
    let chosen = match admit(&up, ctx) {
        Ok(()) => up,
        Err(retry_after) => {
            let fallback = up
                .breaker
                .as_ref()
                .and_then(|b| b.settings.fallback.as_deref())
                .and_then(|name| {
                    ctx.routing
                        .snapshot
                        .as_ref()
                        .and_then(|s| s.upstreams.get(name).cloned())
                });
            let Some(fb) = fallback else {
                return Err(Reject::CircuitOpen(up.name.clone(), retry_after));
            };
            admit(&fb, ctx).map_err(|secs| Reject::CircuitOpen(fb.name.clone(), secs))?;
            crate::metrics::metrics()
                .circuit_fallbacks
                .with_label_values(&[&up.name])
                .inc();
            fb
        }
    };
    if let Some(p) = &chosen.retry {
        p.budget.note_request();
    }
    ctx.attempt.upstream = Some(chosen.clone());
    Ok(chosen)
}

/// Asks `up`'s breaker; `Err(retry_after_secs)` when the circuit refuses.
fn admit(up: &Arc<Upstream>, ctx: &mut Ctx) -> Result<(), u32> {
    let Some(b) = &up.breaker else {
        return Ok(());
    };
    match b.admit() {
        Admit::Pass => Ok(()),
        Admit::Probe(p) => {
            ctx.attempt.probe = Some(p);
            Ok(())
        }
        Admit::Refuse { retry_after_secs } => Err(retry_after_secs),
    }
}

/// The time left before the deadline (`None`: the route has none).
pub fn remaining(ctx: &Ctx) -> Option<Duration> {
    ctx.attempt
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
}

/// `upstream_peer`: caps the attempt's timeouts at the time left, so the deadline ends
/// a connect or a read that would outlast it (each read of the attempt, the response
/// body's included, gets at most the time left when the attempt started).
pub fn bound_by_deadline(o: &mut PeerOptions, left: Duration) {
    let cap = |t: &mut Option<Duration>| *t = Some(t.map_or(left, |d| d.min(left)));
    cap(&mut o.connection_timeout);
    cap(&mut o.total_connection_timeout);
    cap(&mut o.read_timeout);
    cap(&mut o.write_timeout);
}

/// The deadline ended the request: counted, and answered 504 `gateway-timeout`.
pub fn deadline_exceeded(ctx: &mut Ctx) {
    let upstream = ctx.upstream().map(|u| u.name.clone()).unwrap_or_default();
    crate::metrics::metrics()
        .deadline_exceeded
        .with_label_values(&[ctx.route_name()])
        .inc();
    ctx.response.reject = Some(Reject::GatewayTimeout(upstream));
}

/// What failed, for `retry.on`.
#[derive(Debug, Clone, Copy)]
pub enum Cause {
    Connect,
    Status(u16),
}

/// Whether the upstream's `retry` policy sends this failed attempt again, and if so
/// after which wait (kept for the next `upstream_peer`). `replayable`: the method is one
/// the policy retries and the request body is still buffered (always true for a failed
/// connect, which sent nothing). In order: `on`, `retries` (attempts left), a closed
/// circuit, the upstream's `Retry-After` within `max_retry_after`, the deadline, then
/// the budget (taken last, so a retry refused for another reason does not spend it).
pub fn policy_retry(
    ctx: &mut Ctx,
    replayable: bool,
    cause: Cause,
    retry_after: Option<Duration>,
) -> bool {
    let Some(up) = ctx.upstream().cloned() else {
        return false;
    };
    let Some(p) = &up.retry else {
        return false;
    };
    let listed = match cause {
        Cause::Connect => p.on_connect,
        Cause::Status(s) => p.retries_status(s),
    };
    if !listed || !replayable || !ctx.attempt.may_retry(&up) {
        return false;
    }
    if up.breaker.as_ref().is_some_and(|b| !b.allows_retry()) {
        return false;
    }
    let n = ctx.attempt.retries + 1;
    let wait = match retry_after {
        Some(ra) if ra > p.max_retry_after => return false,
        Some(ra) => ra.max(p.backoff(n)),
        None => p.backoff(n),
    };
    if remaining(ctx).is_some_and(|left| left <= wait) {
        return false;
    }
    let m = crate::metrics::metrics();
    if !p.budget.try_take() {
        m.retry_budget_exhausted
            .with_label_values(&[&up.name])
            .inc();
        return false;
    }
    ctx.attempt.retries = n;
    ctx.attempt.wait = Some(wait);
    let mut buf = itoa::Buffer::new();
    let reason = match cause {
        Cause::Connect => "connect",
        Cause::Status(s) => crate::metrics::status_label(s, &mut buf),
    };
    m.upstream_retries
        .with_label_values(&[&up.name, reason])
        .inc();
    true
}

/// `upstream_peer`'s first step: the retry policy's wait, never past the deadline (it
/// was checked when decided). Then the time the deadline leaves (`None`: the route has
/// none), or the error that ends the request once it has passed.
pub async fn wait_turn(ctx: &mut Ctx) -> pingora::Result<Option<Duration>> {
    if let Some(wait) = ctx.attempt.wait.take() {
        let wait = remaining(ctx).map_or(wait, |left| wait.min(left));
        tokio::time::sleep(wait).await;
    }
    let left = remaining(ctx);
    if left.is_some_and(|l| l.is_zero()) {
        deadline_exceeded(ctx);
        return Error::e_explain(ErrorType::HTTPStatus(504), "route deadline exceeded");
    }
    Ok(left)
}

/// Group keys for fresh connections of a stale-connection retry: each is new, so the
/// connector's pool has nothing under it (0 is every ordinary peer's).
static FRESH_GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A group key no pooled connection has: the connector opens a fresh one.
pub fn fresh_group() -> u64 {
    FRESH_GROUP.fetch_add(1, Relaxed)
}

/// The peer of an attempt at `id`: the route's `timeouts` laid over the upstream's,
/// capped at the time the deadline leaves (`left`), lowered by a gRPC call's
/// `grpc-timeout`.
pub fn peer(
    up: &Upstream,
    id: TargetId,
    route: &Route,
    left: Option<Duration>,
    req: &pingora::http::RequestHeader,
) -> HttpPeer {
    let mut peer = up.peer(id);
    route.timeouts.apply(&mut peer.options);
    if let Some(left) = left {
        bound_by_deadline(&mut peer.options, left);
    }
    super::streaming::apply_grpc_timeout(req, &mut peer.options);
    peer
}

/// What `consistent_hash` hashes for this request: borrowed from the request where it
/// can be (a header value, the path, the consumer id), so no copy is made per request.
pub fn hash_key<'a>(
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

/// The attempt's target on `up`, never one already tried: a retry policy may go back
/// to a tried target once every one was tried. `None`: no usable target.
pub fn choose_target(session: &Session, up: &Upstream, ctx: &Ctx) -> Option<TargetId> {
    let key = match &up.hash_on {
        Some(on) => hash_key(session, on, ctx.identity.as_deref()),
        None => std::borrow::Cow::Borrowed(&[][..]),
    };
    up.select(&key, ctx.attempt.tried()).or_else(|| {
        (up.retry.is_some() && !ctx.attempt.tried().is_empty())
            .then(|| up.select(&key, &[]))
            .flatten()
    })
}

/// No usable target: 503 `no-healthy-target` on the first attempt, 502 `bad-gateway`
/// after one.
pub fn no_target(ctx: &mut Ctx, up: &Upstream) -> pingora::Result<Box<HttpPeer>> {
    ctx.response.reject = Some(if ctx.attempt.tried().is_empty() {
        Reject::NoHealthyTarget(up.name.clone())
    } else {
        Reject::BadGateway(up.name.clone())
    });
    Error::e_explain(ErrorType::HTTPStatus(503), "no usable target")
}

/// An attempt at `target` failed: no connection, a broken exchange, or a 5xx. Counted in
/// `gatehouse_upstream_requests_total` under `outcome`, and against the target (passive
/// health, outlier ejection) and the upstream's breaker (`probe`: the request is a
/// half-open probe).
pub fn attempt_failed(up: &Upstream, target: &Target, outcome: &str, probe: Option<&Probe>) {
    up.record_failure(target, probe);
    crate::metrics::metrics()
        .upstream_requests
        .with_label_values(&[&up.name, &target.address, outcome])
        .inc();
}

/// An attempt at `target` got a response under 500: counted under its status (200 has its
/// own pre-resolved counter), and it ends the target's run of failures.
pub fn attempt_answered(
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

/// `upstream_response_filter`: the attempt's response header came at `now`: the
/// upstream's duration, and the outcome counted against the target (`attempt_failed`
/// for a status ≥ 500, `attempt_answered` otherwise).
pub fn count_response(ctx: &Ctx, status: http::StatusCode, now: Instant) {
    if let Some((up, target)) = ctx.current_target() {
        if let Some(s) = ctx.timing.upstream_start {
            up.duration.observe(now.duration_since(s).as_secs_f64());
        }
        if status.as_u16() >= 500 {
            let mut buf = itoa::Buffer::new();
            attempt_failed(
                up,
                target,
                crate::metrics::status_label(status.as_u16(), &mut buf),
                ctx.attempt.probe.as_ref(),
            );
        } else {
            attempt_answered(up, target, status, ctx.attempt.probe.as_ref());
        }
    }
}

/// `upstream_response_filter`, for a 5xx: when the upstream's `retry` policy retries
/// it, counts the attempt as failed and returns the error that makes Pingora try again
/// (the wait is kept for the next `upstream_peer`). The upstream's `Retry-After` is
/// honoured (`policy_retry`).
pub fn retry_response(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut Ctx,
) -> Option<Box<Error>> {
    let policy = ctx.upstream()?.retry.as_ref()?;
    let status = resp.status.as_u16();
    let replayable = policy.retries_method(&session.req_header().method)
        && !session.as_ref().retry_buffer_truncated()
        && session.response_written().is_none();
    let retry_after = resp.headers.get(http::header::RETRY_AFTER).and_then(|v| {
        crate::upstream::retry::retry_after(v.as_bytes(), std::time::SystemTime::now())
    });
    if !policy_retry(ctx, replayable, Cause::Status(status), retry_after) {
        return None;
    }
    // A status >= 500: counted as a failed attempt, as any other 5xx is.
    count_response(ctx, resp.status, Instant::now());
    ctx.attempt.status_retry = true;
    Some(
        Error::explain(
            ErrorType::HTTPStatus(status),
            "retrying the upstream's answer",
        )
        .into_up(),
    )
}

/// `fail_to_connect`: counted against the target; whether another attempt follows.
pub fn connect_failed(ctx: &mut Ctx, e: &mut Error) {
    let (Some(up), Some(target)) = (ctx.upstream().cloned(), ctx.attempt.target().cloned()) else {
        return;
    };
    attempt_failed(&up, &target, "connect_error", ctx.attempt.probe.as_ref());
    if up.retry.is_some() {
        // Nothing reached the target, so any method may be sent again.
        let retry = policy_retry(ctx, true, Cause::Connect, None);
        e.set_retry(retry);
    } else if ctx.attempt.may_retry(&up) {
        // Nothing reached the target, so any method may go to another one.
        e.set_retry(true);
    }
}

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

/// `error_while_proxy`: an exchange with the target broke. A reused pooled connection
/// that failed before any response byte (the target closed it while idle) is tried once
/// more on a fresh connection to the same target, not counted as a failure: any method
/// whose body was not sent yet, idempotent ones otherwise. Beyond that, only idempotent
/// requests whose body is still buffered go to another target.
pub fn exchange_failed(session: &Session, e: &mut Error, ctx: &mut Ctx, client_reused: bool) {
    // `upstream_response_filter` chose to retry this attempt's response (and counted it).
    if std::mem::take(&mut ctx.attempt.status_retry) {
        e.set_retry(true);
        return;
    }
    // The client's side failed (its body stalled past `server.body_timeout`, it went
    // away): never retried. Another target would only get the same incomplete request,
    // with the client charged nothing for the wait.
    // Nor is a target's timeout while it waited for a body that is overdue (an HTTP/2
    // stream that stalled): not the target's failure either.
    if e.esource() == &ErrorSource::Downstream || super::body_overdue(e, ctx) {
        e.set_retry(false);
        return;
    }
    let idempotent = session.req_header().method.is_idempotent();
    let truncated = session.as_ref().retry_buffer_truncated();
    if stale_pooled(e, client_reused, ctx)
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
        return;
    }
    if let Some(up) = ctx.upstream().filter(|u| u.retry.is_some()).cloned() {
        let upstream_error = e.esource() == &ErrorSource::Upstream;
        if let Some(target) = ctx.attempt.target().cloned().filter(|_| upstream_error) {
            attempt_failed(&up, &target, "error", ctx.attempt.probe.as_ref());
        }
        // Retried as the status the gateway would answer with (504 timed out, else
        // 502), only while nothing of a response reached the client.
        let cause = Cause::Status(match e.etype() {
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
            && policy_retry(ctx, replayable, cause, None);
        e.set_retry(retry);
        return;
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
}

/// `fail_to_proxy`: an upstream error once the deadline has passed is the deadline's
/// (the attempt's timeouts were capped at the time left), unless a phase chose the
/// answer already.
pub fn deadline_cut(ctx: &mut Ctx, e: &Error) {
    if ctx.response.reject.is_none()
        && e.esource() == &ErrorSource::Upstream
        && remaining(ctx).is_some_and(|l| l.is_zero())
    {
        deadline_exceeded(ctx);
    }
}
