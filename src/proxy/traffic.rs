//! The request path's part in traffic management (`runtime::destination`): the
//! request's upstream is chosen here, in two steps. A fixed upstream or the request's
//! API version is chosen in admission (a version is part of routing: an unknown one is
//! a 404 before any policy runs); a split side after the policies, since it may key on
//! the consumer. The mirror's copy is taken as the request goes upstream.

use crate::context::Ctx;
use crate::error::Reject;
use crate::runtime::destination::Destination;
use crate::runtime::Route;
use crate::upstream::split;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Arc;

/// Admission's step: the route's fixed upstream, or its version's (with the
/// deprecation fields of a deprecated one). `path_version` is what the first path
/// segment named, when the router took it off. A split route chooses later
/// (`choose_split`).
pub(super) fn choose_in_admission(
    route: &Route,
    path_version: Option<&str>,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Result<(), Reject> {
    match &route.destination {
        Destination::Upstream(u) => ctx.routing.upstream = Some(u.clone()),
        Destination::Versions(v) => {
            let chosen = v.choose(path_version, &req.headers)?;
            ctx.routing.upstream = Some(chosen.upstream.clone());
            ctx.routing.variant = Some(chosen.variant.clone());
            ctx.response
                .extra_headers
                .extend(chosen.headers.iter().cloned());
            // A background refresh is no request of its own.
            if !ctx.request.refresh {
                chosen.requests.inc();
            }
        }
        Destination::Split(_) => {}
    }
    Ok(())
}

/// After the policies: the side of a split route, by the request's key (the consumer
/// is known now). Nothing for other routes.
pub(super) fn choose_split(session: &Session, ctx: &mut Ctx) {
    let Some(route) = ctx
        .routing
        .route
        .as_ref()
        .filter(|r| matches!(r.destination, Destination::Split(_)))
        .cloned()
    else {
        return;
    };
    let Destination::Split(s) = &route.destination else {
        return;
    };
    let headers = &session.req_header().headers;
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    // The address `key: ip` limits count: behind a trusted proxy, the client's.
    let client_ip = match &ctx.routing.snapshot {
        Some(snap) => snap.trusted_proxies.client_ip(peer, headers),
        None => peer,
    };
    let arm = s.choose(&split::Request {
        headers,
        consumer: ctx.consumer_id(),
        client_ip,
    });
    ctx.routing.upstream = Some(arm.upstream.clone());
    ctx.routing.variant = Some(arm.variant.clone());
    if !ctx.request.refresh {
        arm.requests.inc();
    }
}

/// `response_filter`: a versioned route's responses vary on the fields a version may
/// be named in (added to the upstream's own `Vary`, each field once).
pub(super) fn add_vary(resp: &mut ResponseHeader, ctx: &Ctx) {
    if let Some(Destination::Versions(v)) = ctx.route().map(|r| &r.destination) {
        if let Some(vary) = &v.vary {
            crate::policy::headers::add_vary_fields(resp, vary);
        }
    }
}

/// `upstream_request_filter`: the request goes upstream as `req`; the first time, the
/// route's mirror decides whether to copy it. A background refresh is not mirrored.
pub(super) fn start_mirror(connector: &Arc<Connector>, req: &RequestHeader, ctx: &mut Ctx) {
    if !ctx.mirror.undecided() {
        return;
    }
    ctx.mirror = match ctx.route().and_then(|r| r.mirror.as_ref()) {
        Some(m) if !ctx.request.refresh => m.start(req, &ctx.request.id, connector),
        _ => crate::upstream::mirror::MirrorCtx::Done,
    };
}

/// `request_body_filter`: the copy collects the body as it goes upstream.
pub(super) fn mirror_body(
    connector: &Arc<Connector>,
    body: &Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) {
    ctx.mirror.on_body(body.as_ref(), end, connector);
}

/// The path without its version segment (`/v1/orders/7` → `/orders/7`, `/v1` → `/`).
pub(super) fn without_version_segment(path: &str) -> String {
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_segment_comes_off_whole() {
        use super::without_version_segment as w;
        assert_eq!(w("/v1/orders/7"), "/orders/7");
        assert_eq!(w("/v1;x/orders"), "/orders");
        assert_eq!(w("/v1"), "/");
        assert_eq!(w("/v1/"), "/");
    }
}
