//! The cache's part of each Pingora proxy phase. `proxy::Gateway`'s cache hooks are
//! one-line calls into these functions.
//!
//! They take the cache's own per-request state (`CacheCtx`), the route's compiled
//! `cache:` section (`RouteCache`) and the few facts about the request they need as
//! arguments, never the proxy's whole context: the cache does not depend on `proxy` or on
//! `runtime`.
//!
//! What Pingora does for us once caching is enabled: the lookup, the cache lock
//! (coalescing), `HEAD` from a `GET` entry, `Range` from a full entry, conditional
//! requests against a stored response (304), revalidation requests with the stored
//! validators, serving stale while a background subrequest refreshes, and stale on
//! upstream error. What it does not, and is done here: the key and variants (it ignores
//! `Vary`), every storing and freshness rule (its own ignore `Age`, `Date` and the
//! request's directives), the full header update after a 304, `Cache-Status`, `Age` on
//! every response served from cache, and unsafe-method invalidation.
//!
//! **The clock.** Every decision here reads the snapshot's `Cache::clock`, the process's
//! one `Clock`: the system clock in production, or a test clock that stands still at an
//! instant that may be before or after the wall clock. Stored metadata (`fresh_until`,
//! the epoch) is on that clock. Pingora also reads `SystemTime::now()` on its own, in
//! three places, and each is made to follow our clock:
//!
//! - at lookup it computes `is_fresh` on the wall clock and passes it to
//!   `cache_hit_filter`: `hit_freshness` re-decides on our clock and forces the answer
//!   either way (`ForceFresh` when Pingora's wall clock is past a deadline ours is not,
//!   `ForceExpiredServeStale` in the other direction);
//! - before serving stale it checks the stale-while-revalidate and stale-if-error windows
//!   on the wall clock, then asks `should_serve_stale`: the storage hands those windows
//!   over as unbounded (`storage::StaleWindows`), so Pingora's gate only says whether a
//!   window exists, and `serve_stale` decides with the real windows on our clock;
//! - it writes `Age` from the wall clock on a hit: `on_response` overwrites it from ours.
//!
//! With the system clock these agree with what Pingora would decide alone.

use super::rules::{self, Reuse, StoreDecision, StoreInput};
use super::status::{report, CacheCtx, Found, Outcome};
use super::storage::StaleWindows;
use super::{key, Cache, RouteCache};
use http::{header, Method};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, NoCacheReason,
    RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn secs_between(later: SystemTime, earlier: SystemTime) -> i64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - i64::from(e.duration().subsec_nanos() > 0),
    }
}

/// Now, on the process clock (the snapshot's cache carries it).
fn now(cache: Option<&Cache>) -> SystemTime {
    cache.map_or_else(SystemTime::now, |c| c.clock.now())
}

/// `request_cache_filter`, on a caching route: enables the cache for a cacheable
/// request. `cache` is the snapshot's bound cache (storage, settings, lock, clock).
pub fn enable(session: &mut Session, cx: &mut CacheCtx, cache: Option<&Cache>) {
    let Some(Cache {
        storage,
        settings,
        lock,
        ..
    }) = cache
    else {
        return;
    };
    let req = session.req_header();
    if !matches!(req.method, Method::GET | Method::HEAD) {
        cx.bypass = Some("method");
        return;
    }
    cx.directives = rules::RequestDirectives::from_headers(&req.headers);
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(settings.lock_timeout);
    session.cache.enable(
        *storage,
        None, // the storage evicts by itself (storage.rs)
        None,
        Some(*lock),
        Some(overrides),
    );
    session
        .cache
        .set_max_file_size_bytes(settings.max_object as usize);
    cx.active = true;
}

/// `cache_key_callback`. `route` is the route's name, which tags the entry.
pub fn cache_key(session: &Session, cx: &CacheCtx, route: &Arc<str>, https: bool) -> CacheKey {
    key::cache_key(
        https,
        &cx.host,
        &cx.path,
        session.req_header().uri.query(),
        route,
    )
}

/// `cache_miss`: records whether the URL had another variant stored.
pub fn on_miss(session: &mut Session, cx: &mut CacheCtx) {
    if session
        .cache
        .maybe_cache_key()
        .is_some_and(|k| k.variance_bin().is_some())
    {
        cx.vary_miss = true;
    }
    session.cache.cache_miss();
}

/// `cache_hit_filter`: re-decides freshness on our clock and applies the request's
/// directives (no-cache, max-age, min-fresh, max-stale).
pub fn hit_freshness(
    session: &mut Session,
    meta: &CacheMeta,
    pingora_fresh: bool,
    cx: &mut CacheCtx,
    cache: Option<&Cache>,
) -> Option<ForcedFreshness> {
    let now = now(cache);
    let fresh = rules::is_fresh(meta.fresh_until(), now);
    cx.found = if fresh { Found::Fresh } else { Found::Stale };
    match rules::reuse(
        &cx.directives,
        meta.headers(),
        now,
        meta.epoch(),
        meta.fresh_until(),
    ) {
        Reuse::Revalidate => {
            cx.forced = fresh;
            // Each such request must reach the origin itself: waiting on another one's
            // revalidation would add latency and save no origin request.
            session.cache.set_cache_lock(None, None);
            Some(ForcedFreshness::ForceExpired)
        }
        Reuse::ServeStale => Some(ForcedFreshness::ForceFresh),
        // Pingora judged on the wall clock, ours is the judge (module doc). Stale: the
        // stored deadline is kept, Pingora's window gates are open (`StaleWindows`) and
        // `serve_stale` decides on our clock. Fresh: served as a hit.
        Reuse::AsStored if pingora_fresh && !fresh => {
            Some(ForcedFreshness::ForceExpiredServeStale { expired_at: None })
        }
        Reuse::AsStored if !pingora_fresh && fresh => Some(ForcedFreshness::ForceFresh),
        Reuse::AsStored => None,
    }
}

/// `cache_vary_filter`: the variance of this request against `meta`; `on` holds what
/// the gateway decided about the request (route, forwarded fields, identity).
pub fn variance(meta: &CacheMeta, req: &RequestHeader, on: &key::VaryOn<'_>) -> Option<HashBinary> {
    key::variance(on, meta.headers(), &req.headers)
}

/// `response_cache_filter`, on a route caching as `rc`: RFC 9111 §3 and §4.2 on the
/// response (or, after a 304, on the stored response updated with the 304's fields).
/// `identified`: an authentication policy identified the caller (its `Authorization` is
/// then the gateway's business, not a shared cache's reason to refuse).
pub fn response_cacheable(
    session: &Session,
    resp: &ResponseHeader,
    cx: &mut CacheCtx,
    rc: &RouteCache,
    identified: bool,
    cache: Option<&Cache>,
) -> RespCacheable {
    let merged;
    let header = match (cx.not_modified.take(), session.cache.maybe_cache_meta()) {
        (Some(nm), Some(stored)) => {
            merged = rules::merge_not_modified(stored.response_header(), &nm);
            &merged
        }
        _ => resp,
    };
    let response_time = now(cache);
    let req = session.req_header();
    let input = StoreInput {
        status: header.status.as_u16(),
        headers: &header.headers,
        request_time: cx.request_time.unwrap_or(response_time),
        response_time,
        authorization: !identified && req.headers.contains_key(header::AUTHORIZATION),
        request_no_store: cx.directives.no_store,
        route_ttl: rc.ttl,
        store_set_cookie: rc.store_set_cookie,
    };
    match rules::decide(&input) {
        StoreDecision::Store(f) => {
            let stored = rules::storable_header(header);
            let mut meta = CacheMeta::new(
                f.fresh_until,
                response_time,
                f.stale_while_revalidate,
                f.stale_if_error,
                stored,
            );
            meta.set_epoch_override(f.epoch);
            cx.stored_ttl = Some(secs_between(f.fresh_until, response_time));
            cx.not_stored = None;
            RespCacheable::Cacheable(meta)
        }
        StoreDecision::Refuse(why) => {
            cx.not_stored = Some(why);
            cx.stored_ttl = None;
            RespCacheable::Uncacheable(NoCacheReason::Custom(why))
        }
    }
}

/// `should_serve_stale`: the stale windows, on our clock (the real windows: Pingora was
/// handed unbounded ones, see the module doc). `error` is `None` for
/// stale-while-revalidate.
pub fn serve_stale(
    session: &Session,
    cx: &mut CacheCtx,
    error: Option<&Error>,
    cache: Option<&Cache>,
) -> bool {
    let Some(meta) = session.cache.maybe_cache_meta() else {
        return false;
    };
    let now = now(cache);
    let windows = StaleWindows::of(meta);
    let within =
        |secs: u32| secs > 0 && meta.fresh_until() + Duration::from_secs(secs.into()) >= now;
    match error {
        None => !cx.forced && within(windows.while_revalidate),
        Some(e) => {
            if let ErrorType::HTTPStatus(s) = e.etype() {
                cx.fwd_status = Some(*s);
            }
            let upstream_failed = e.esource() == &ErrorSource::Upstream
                || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500);
            let ok = upstream_failed && within(windows.if_error);
            cx.stale_on_error = ok;
            ok
        }
    }
}

/// `response_filter`, on a route caching as `rc`: `Cache-Status`, `Age` on responses
/// served from cache, and the lookup metric. `upstream_status` is the status of the
/// upstream's response header, when one came.
pub fn on_response(
    session: &Session,
    resp: &mut ResponseHeader,
    cx: &CacheCtx,
    rc: &RouteCache,
    upstream_status: Option<u16>,
    cache: Option<&Cache>,
) -> Result<()> {
    let phase = session.cache.phase();
    let now = now(cache);
    let meta = session.cache.maybe_cache_meta();
    let ttl = match (meta, cx.found) {
        (Some(m), _) if !matches!(phase, CachePhase::Miss | CachePhase::Expired) => {
            Some(secs_between(m.fresh_until(), now))
        }
        _ => cx.stored_ttl,
    };
    let collapsed = cx.active && session.cache.lock_duration().is_some();
    let fwd_status = upstream_status.or(cx.fwd_status);
    let r = report(cx, phase, ttl, fwd_status, collapsed);
    if r.from_cache {
        if let Some(m) = meta {
            let age = now.duration_since(m.epoch()).unwrap_or_default().as_secs();
            resp.insert_header(header::AGE, age.to_string())?;
        }
    }
    resp.insert_header("cache-status", r.value)?;
    if session.subrequest_ctx.is_none() {
        match r.outcome {
            Outcome::Hit => rc.lookups.hit.inc(),
            Outcome::Miss => rc.lookups.miss.inc(),
            Outcome::Stale => rc.lookups.stale.inc(),
            Outcome::Bypass => rc.lookups.bypass.inc(),
        }
    }
    Ok(())
}

/// `upstream_request_filter`: the request time of RFC 9111 §4.2.3's age calculation.
pub fn on_upstream_request(cx: &mut CacheCtx, cache: Option<&Cache>) {
    if cx.active {
        cx.request_time = Some(now(cache));
    }
}

/// `upstream_response_filter`: keeps a revalidation's 304 for `response_cacheable`, and
/// invalidates the URL after a successful unsafe request (RFC 9111 §4.4).
pub fn on_upstream_response(
    session: &Session,
    resp: &ResponseHeader,
    cx: &mut CacheCtx,
    cache: Option<&Cache>,
) {
    let status = resp.status.as_u16();
    if status == 304 && cx.active && session.cache.phase() == CachePhase::Stale {
        cx.not_modified = Some(Box::new(resp.clone()));
    }
    let method = &session.req_header().method;
    if method.is_safe() || !(200..400).contains(&status) {
        return;
    }
    let Some(storage) = cache.map(|c| c.storage) else {
        return;
    };
    let host = cx.host.as_str();
    let query = session.req_header().uri.query();
    super::purge::invalidate_url(storage, host, &cx.path, query);
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) {
            super::purge::invalidate_reference(storage, host, v);
        }
    }
}
