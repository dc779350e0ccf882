//! What the cache did for one request, and how that is told: the `Cache-Status` field
//! (RFC 9211) and the `gatehouse_cache_lookups_total{route,result}` metric.

use super::rules::RequestDirectives;
use pingora::cache::{CachePhase, NoCacheReason};
use pingora::http::ResponseHeader;
use std::fmt::Write;
use std::time::SystemTime;

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "Gatehouse";

/// What a lookup found before any forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Found {
    #[default]
    Nothing,
    Fresh,
    Stale,
}

/// Per-request cache state, in `context::Ctx` (the cache phases are handed only this).
#[derive(Default)]
pub struct CacheCtx {
    /// The route caches and this request was looked up.
    pub active: bool,
    /// The route caches but this request was not looked up (`fwd=` reason).
    pub bypass: Option<&'static str>,
    pub found: Found,
    /// The primary slot matched the URL but not this request's variant.
    pub vary_miss: bool,
    /// The request's directives forced forwarding of a usable response (`fwd=request`).
    pub forced: bool,
    /// A stored response was served because the upstream failed (stale-if-error).
    pub stale_on_error: bool,
    /// Set when the response is being stored: its remaining freshness in seconds.
    pub stored_ttl: Option<i64>,
    /// Why the response was not stored.
    pub not_stored: Option<&'static str>,
    /// The 304 of a revalidation, merged into the stored header by `response_cacheable`.
    pub not_modified: Option<Box<ResponseHeader>>,
    /// The upstream status that made us serve stale (not seen by the upstream filters).
    pub fwd_status: Option<u16>,
    pub request_time: Option<SystemTime>,
    pub directives: RequestDirectives,
    /// Client's host and normalised path, for keys and invalidation.
    pub host: String,
    pub path: String,
}

/// The `result` label of `gatehouse_cache_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

/// Describes what happened, given the final cache phase.
pub struct Report {
    pub outcome: Outcome,
    pub from_cache: bool,
    pub value: String,
}

/// `ttl` is the remaining freshness of the response used (negative when stale), when one
/// was found or stored; `fwd_status` the upstream's status when the request went forward.
pub fn report(
    c: &CacheCtx,
    phase: CachePhase,
    ttl: Option<i64>,
    fwd_status: Option<u16>,
    collapsed: bool,
) -> Report {
    let mut v = String::from(CACHE_NAME);
    let (outcome, from_cache) = classify(c, phase, &mut v);
    if let Some(s) = fwd_status.filter(|_| v.contains("fwd=") && c.bypass.is_none()) {
        let _ = write!(v, "; fwd-status={s}");
    }
    if collapsed {
        v.push_str("; collapsed");
    }
    let too_large = matches!(
        phase,
        CachePhase::Disabled(
            NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge
        )
    );
    let abandoned = matches!(phase, CachePhase::Disabled(_));
    if (c.stored_ttl.is_some() && !from_cache && !abandoned)
        || matches!(phase, CachePhase::Revalidated)
    {
        v.push_str("; stored");
    }
    if let Some(t) = ttl {
        let _ = write!(v, "; ttl={t}");
    }
    match (phase, c.not_stored) {
        (CachePhase::StaleUpdating, _) => v.push_str("; detail=stale-while-revalidate"),
        _ if c.stale_on_error => v.push_str("; detail=stale-if-error"),
        _ if too_large => v.push_str("; detail=too-large"),
        (_, Some(why)) if !from_cache => {
            let _ = write!(v, "; detail={why}");
        }
        _ => {}
    }
    Report {
        outcome,
        from_cache,
        value: v,
    }
}

/// Appends `hit` or `fwd=...` to `v`; returns the metric outcome and whether the
/// response comes from the cache.
fn classify(c: &CacheCtx, phase: CachePhase, v: &mut String) -> (Outcome, bool) {
    if let Some(reason) = c.bypass {
        let _ = write!(v, "; fwd={reason}");
        (Outcome::Bypass, false)
    } else {
        match phase {
            CachePhase::Hit => {
                v.push_str("; hit");
                let o = if c.found == Found::Stale {
                    Outcome::Stale
                } else {
                    Outcome::Hit
                };
                (o, true)
            }
            CachePhase::StaleUpdating => {
                v.push_str("; hit");
                (Outcome::Stale, true)
            }
            _ if c.stale_on_error => {
                v.push_str("; fwd=stale");
                (Outcome::Stale, true)
            }
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                v.push_str(if c.forced {
                    "; fwd=request"
                } else {
                    "; fwd=stale"
                });
                (Outcome::Stale, true)
            }
            _ => match c.found {
                Found::Fresh | Found::Stale => {
                    v.push_str(if c.forced {
                        "; fwd=request"
                    } else {
                        "; fwd=stale"
                    });
                    (Outcome::Stale, false)
                }
                Found::Nothing if c.vary_miss => {
                    v.push_str("; fwd=vary-miss");
                    (Outcome::Miss, false)
                }
                Found::Nothing if c.active => {
                    v.push_str("; fwd=uri-miss");
                    (Outcome::Miss, false)
                }
                Found::Nothing => {
                    v.push_str("; fwd=miss");
                    (Outcome::Miss, false)
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CacheCtx {
        CacheCtx {
            active: true,
            ..Default::default()
        }
    }

    #[test]
    fn fresh_hit() {
        let mut c = ctx();
        c.found = Found::Fresh;
        let r = report(&c, CachePhase::Hit, Some(42), None, false);
        assert_eq!(r.value, "Gatehouse; hit; ttl=42");
        assert_eq!(r.outcome, Outcome::Hit);
        assert!(r.from_cache);
    }

    #[test]
    fn miss_stored_and_collapsed() {
        let mut c = ctx();
        c.stored_ttl = Some(60);
        let r = report(&c, CachePhase::Miss, Some(60), Some(200), true);
        assert_eq!(
            r.value,
            "Gatehouse; fwd=uri-miss; fwd-status=200; collapsed; stored; ttl=60"
        );
        assert_eq!(r.outcome, Outcome::Miss);
    }

    #[test]
    fn not_stored_says_why() {
        let mut c = ctx();
        c.not_stored = Some("private");
        let r = report(
            &c,
            CachePhase::Disabled(pingora::cache::NoCacheReason::OriginNotCache),
            None,
            Some(200),
            false,
        );
        assert_eq!(
            r.value,
            "Gatehouse; fwd=uri-miss; fwd-status=200; detail=private"
        );
    }

    #[test]
    fn revalidated_and_stale_while_revalidate() {
        let mut c = ctx();
        c.found = Found::Stale;
        let r = report(&c, CachePhase::Revalidated, Some(30), Some(304), false);
        assert_eq!(
            r.value,
            "Gatehouse; fwd=stale; fwd-status=304; stored; ttl=30"
        );
        assert_eq!(r.outcome, Outcome::Stale);
        let r = report(&c, CachePhase::StaleUpdating, Some(-3), None, false);
        assert_eq!(
            r.value,
            "Gatehouse; hit; ttl=-3; detail=stale-while-revalidate"
        );
    }

    #[test]
    fn bypass() {
        let c = CacheCtx {
            bypass: Some("method"),
            ..Default::default()
        };
        let r = report(&c, CachePhase::Uninit, None, Some(200), false);
        assert_eq!(r.value, "Gatehouse; fwd=method");
        assert_eq!(r.outcome, Outcome::Bypass);
    }
}
