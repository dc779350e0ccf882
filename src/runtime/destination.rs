//! Where a route sends a request: exactly one of a fixed `upstream`, the upstream of
//! the request's API version (`versions`, `policy::versions`), or a side of a weighted
//! split (`split`, `upstream::split`). The choice is made per request, and the chosen
//! upstream is the request's (`context::Routing::upstream`) from then on: balancing,
//! in-flight bounds, health and metrics are that upstream's. A route's `mirror`
//! (`upstream::mirror`) adds to whichever it is.

use crate::config::model::{Config, Route as RouteConfig};
use crate::config::ConfigError;
use crate::policy::versions::{self, Versions};
use crate::upstream::mirror::Mirror;
use crate::upstream::split::{self, Split};
use crate::upstream::Upstream;
use std::collections::BTreeMap;
use std::sync::Arc;

pub enum Destination {
    Upstream(Arc<Upstream>),
    Versions(Versions),
    Split(Split),
}

/// Every reference of route `i`'s destination and mirror resolves (upstreams,
/// consumers) and its dates parse; the shapes were checked by `config::route_traffic`.
pub fn check(i: usize, r: &RouteConfig, cfg: &Config, errs: &mut Vec<ConfigError>) {
    let p = format!("routes[{i}]");
    let upstream = |name: &str| cfg.upstreams.contains_key(name);
    // An empty name is validation's "missing" error.
    if !r.upstream.is_empty() && !upstream(&r.upstream) {
        errs.push(ConfigError::new(
            format!("{p}.upstream"),
            format!("unknown upstream {:?}", r.upstream),
        ));
    }
    if let Some(v) = &r.versions {
        versions::check(&format!("{p}.versions"), v, &upstream, errs);
    }
    if let Some(s) = &r.split {
        let consumer = |id: &str| cfg.consumers.iter().any(|c| c.id == id);
        split::check(&format!("{p}.split"), s, &upstream, &consumer, errs);
    }
    if let Some(m) = &r.mirror {
        if !m.upstream.is_empty() && !upstream(&m.upstream) {
            errs.push(ConfigError::new(
                format!("{p}.mirror.upstream"),
                format!("unknown upstream {:?}", m.upstream),
            ));
        }
    }
}

impl Destination {
    /// The runtime form of a checked route's destination and mirror; `None` only if
    /// `check` let something through (the caller reports it as an internal error).
    /// `loaded_unix` is the `Deprecation` date of versions without `since`. An aggregate
    /// route (no destination of its own) is given `aggregate_first`, its first call's.
    pub fn compile(
        r: &RouteConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        loaded_unix: u64,
        aggregate_first: Option<Arc<Upstream>>,
    ) -> Option<(Destination, Option<Arc<Mirror>>)> {
        let dest = if let Some(first) = aggregate_first {
            Destination::Upstream(first)
        } else if let Some(v) = &r.versions {
            Destination::Versions(Versions::compile(&r.name, v, upstreams, loaded_unix)?)
        } else if let Some(s) = &r.split {
            Destination::Split(Split::compile(&r.name, s, upstreams)?)
        } else {
            Destination::Upstream(upstreams.get(&r.upstream)?.clone())
        };
        let mirror = match &r.mirror {
            Some(m) => Some(Arc::new(Mirror::compile(
                &r.name,
                m,
                upstreams.get(&m.upstream)?.clone(),
            ))),
            None => None,
        };
        Some((dest, mirror))
    }

    /// The upstream of a route that always sends to the same one.
    pub fn fixed(&self) -> Option<&Arc<Upstream>> {
        match self {
            Destination::Upstream(u) => Some(u),
            _ => None,
        }
    }

    /// The route is versioned by path: a request's `/vN` prefix is taken off before
    /// routing, and the path without it is what is forwarded.
    pub fn versioned_by_path(&self) -> bool {
        matches!(self, Destination::Versions(v) if v.from_path)
    }

    /// Every upstream the route may send to.
    pub fn upstreams(&self) -> Vec<&Arc<Upstream>> {
        match self {
            Destination::Upstream(u) => vec![u],
            Destination::Versions(v) => v.upstreams().collect(),
            Destination::Split(s) => s.upstreams().collect(),
        }
    }
}
