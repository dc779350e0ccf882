//! Compilation of a validated config into runtime types: routes with pre-parsed header
//! operations and metric handles, upstreams with their balancers and peers, policies
//! with their limit store, and the cache.

use super::router::{Conditions, Entry, PathMatch, Router};
use super::Resources;
use crate::config::{ConfigError, Loaded};
use crate::policy::headers::HeaderOps;
use crate::policy::{Policy, PolicySet};
use crate::upstream::Upstream;
use prometheus::Histogram;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Route {
    pub name: String,
    /// The name again, shared with the cache entries it tags.
    pub name_arc: Arc<str>,
    /// `cache:` of the route, when it caches.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    pub upstream: Arc<Upstream>,
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub max_body: Option<u64>,
    pub read_timeout: Option<Duration>,
    pub server_timing: bool,
    pub duration: Histogram,
    pub requests: crate::metrics::RequestCounters,
    /// Authenticate, authorize and limit, in that order.
    pub policies: Vec<Arc<dyn Policy>>,
}

pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub loaded: Loaded,
    pub loaded_at: SystemTime,
    pub max_header_size: usize,
    /// Listener addresses with `server_timing: true`.
    pub server_timing_listeners: HashSet<SocketAddr>,
    pub unmatched_duration: Histogram,
    pub unmatched_requests: crate::metrics::RequestCounters,
    pub policies: Arc<PolicySet>,
    /// The top-level `cache:` section with the storage it binds, when present.
    pub cache: Option<crate::cache::Cache>,
}

impl Snapshot {
    /// Builds the runtime form. Upstreams whose config is unchanged from `previous` are
    /// reused as they are, so their health state and in-flight counts carry over; the
    /// limit store and the cache storage come from `resources`. Nothing running changes
    /// unless the whole config compiles: the cache bounds are applied last.
    pub fn compile(
        loaded: Loaded,
        previous: Option<&Snapshot>,
        resources: &Resources,
    ) -> Result<Self, Vec<ConfigError>> {
        let cfg = &loaded.config;
        let mut errs = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            let source = serde_json::to_string(u).unwrap_or_default();
            if let Some(prev) = previous.and_then(|p| p.upstreams.get(name)) {
                if prev.source == source {
                    upstreams.insert(name.clone(), prev.clone());
                    continue;
                }
            }
            match Upstream::build(name, u) {
                Ok(up) => {
                    upstreams.insert(name.clone(), Arc::new(up));
                }
                Err(e) => errs.push(ConfigError::new(format!("upstreams.{name}"), e)),
            }
        }
        let policies =
            match PolicySet::build(cfg, previous.map(|p| &*p.policies), &resources.stores) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    errs.extend(e);
                    return Err(errs);
                }
            };
        let m = crate::metrics::metrics();
        let mut entries = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            let Some(upstream) = upstreams.get(&r.upstream).cloned() else {
                errs.push(ConfigError::new(
                    format!("routes[{i}].upstream"),
                    format!("unknown upstream {:?}", r.upstream),
                ));
                continue;
            };
            let mt = &r.matches;
            let path = match (&mt.path, &mt.path_prefix, &mt.path_regex) {
                (Some(p), _, _) => PathMatch::Exact(p.clone()),
                (_, Some(p), _) => PathMatch::Prefix(p.clone()),
                (_, _, Some(re)) => PathMatch::Regex(re.clone()),
                _ => PathMatch::Prefix("/".into()),
            };
            let methods = if mt.methods.is_empty() {
                None
            } else {
                Some(
                    mt.methods
                        .iter()
                        .filter_map(|m| m.parse::<http::Method>().ok())
                        .collect(),
                )
            };
            let headers = mt
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((http::HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone()))
                })
                .collect();
            let route_policies = match policies.for_route(i, r) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(e);
                    continue;
                }
            };
            let route = Route {
                name: r.name.clone(),
                name_arc: Arc::from(r.name.as_str()),
                cache: r
                    .cache
                    .as_ref()
                    .map(|c| Arc::new(crate::cache::RouteCache::compile(&r.name, c))),
                upstream,
                strip_prefix: r.strip_prefix.clone().filter(|s| s != "/"),
                request_headers: HeaderOps::compile(&r.request_headers),
                response_headers: HeaderOps::compile(&r.response_headers),
                max_body: r.max_body.map(|s| s.0),
                read_timeout: r.timeouts.as_ref().and_then(|t| t.read).map(|d| d.0),
                server_timing: r.server_timing,
                duration: m.http_duration.with_label_values(&[&r.name]),
                requests: crate::metrics::RequestCounters::new(&r.name),
                policies: route_policies,
            };
            entries.push(Entry {
                hosts: mt.hosts.clone(),
                path,
                conditions: Conditions { methods, headers },
                value: Arc::new(route),
            });
        }
        let router = match Router::new(entries) {
            Ok(r) => r,
            Err(e) => {
                errs.push(ConfigError::new("routes", e));
                return Err(errs);
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let server_timing_listeners = cfg
            .listeners
            .iter()
            .filter(|l| l.server_timing)
            .filter_map(|l| l.address.parse().ok())
            .collect();
        Ok(Snapshot {
            router,
            upstreams,
            max_header_size: cfg.server.max_header_size.0 as usize,
            server_timing_listeners,
            loaded_at: SystemTime::now(),
            unmatched_duration: m.http_duration.with_label_values(&["unmatched"]),
            unmatched_requests: crate::metrics::RequestCounters::new("unmatched"),
            policies,
            // Last: everything above can still fail; this applies the new bounds to the
            // running storage (a shrink evicts at once, no section empties it).
            cache: resources.cache.bind(cfg.cache.as_ref(), &resources.clock),
            loaded,
        })
    }
}
