//! The traffic-management side of a request's attempts at its upstream, called from the
//! proxy phases: which upstream it goes to (the circuit breaker and its fallback), the
//! route's `deadline` over every attempt, and whether the `retry` policy sends a failed
//! attempt again (what, under the budget, after which wait). The state machines are in
//! `upstream::{breaker, outlier, retry}`; what is decided here is what a request does
//! with them.

use crate::context::Ctx;
use crate::error::Reject;
use crate::upstream::breaker::Admit;
use crate::upstream::Upstream;
use pingora::upstreams::peer::PeerOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `proxy_upstream_filter`: the upstream this request's attempts go to. The route's,
/// unless its circuit is open: then the breaker's `fallback` (whose own circuit is
/// asked; there is no fallback of a fallback), or a 503 `circuit-open` with
/// `Retry-After`. Also starts the deadline and counts the request in the retry budget.
pub fn choose_upstream(ctx: &mut Ctx) -> Result<Arc<Upstream>, Reject> {
    let Some(route) = ctx.route().cloned() else {
        return Err(Reject::Internal);
    };
    if let Some(d) = route.deadline {
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
