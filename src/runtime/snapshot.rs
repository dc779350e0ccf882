//! Compilation of a loaded config into runtime types: routes with pre-parsed header
//! operations and metric handles, upstreams with their balancers and peers. Every check
//! that needs a built object (certificates, keys, addresses, regexes, references) is
//! made here, once; `config::validate` checks only the shape of values.

use super::destination::Destination;
use super::router::{Conditions, Entry, PathMatch, Router};
use super::Resources;
use crate::config::model::RouteMatch;
use crate::config::{ConfigError, Loaded};
use crate::policy::headers::HeaderOps;
use crate::policy::{Auth, Policy, PolicySet};
use crate::upstream::{Plan, Upstream};
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
    /// Where requests go: an upstream, the request's version's, or a side of a split.
    pub destination: Destination,
    /// `mirror:` of the route: a copy of sampled requests to another upstream.
    pub mirror: Option<Arc<crate::upstream::mirror::Mirror>>,
    pub strip_prefix: Option<String>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub max_body: Option<u64>,
    /// `routes[].timeouts`: each one set replaces its upstream's for this route.
    pub timeouts: RouteTimeouts,
    /// `routes[].deadline`: the total time of the attempts at the upstream.
    pub deadline: Option<Duration>,
    pub server_timing: bool,
    /// `path_policy:` of the route, merged over the listener's per request.
    pub path_policy: Option<crate::path::Override>,
    /// `trust_forwarded_headers`: keep (and key on) the client's URL-building fields when
    /// the peer is in `server.trusted_proxies`.
    pub trust_forwarded_headers: bool,
    pub duration: Histogram,
    pub requests: crate::metrics::RequestCounters,
    /// Authenticate, authorize and limit, in that order.
    pub policies: Vec<Arc<dyn Policy>>,
    /// `request_body:` (JSON operations on what the upstream gets).
    pub request_transform: Option<Arc<crate::policy::transform::RequestTransform>>,
    /// `response_body:` (JSON operations, XML to JSON on what the client gets).
    pub response_transform: Option<Arc<crate::policy::transform::ResponseTransform>>,
    /// `aggregate:`: the route answers from these calls and never proxies; `destination`
    /// is then its first call's upstream (never contacted as the route's own).
    pub aggregate: Option<Arc<crate::policy::aggregate::AggregatePlan>>,
    /// `websocket:`: upgrades are accepted, within these limits.
    pub websocket: Option<WebSocketLimits>,
    /// `grpc.web`: gRPC-web clients are bridged to the gRPC upstream.
    pub grpc_web: bool,
    /// CORS, `ip` rules, compression and the shape limits (`policy::edge`).
    pub edge: crate::policy::edge::Edge,
}

/// A WebSocket route's limits and its open-connection gauge.
#[derive(Debug, Clone)]
pub struct WebSocketLimits {
    pub idle: Duration,
    pub max: Duration,
    pub open: prometheus::IntGauge,
}

/// A route's own `timeouts`, laid over the upstream's peer options per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

impl RouteTimeouts {
    pub fn compile(t: Option<&crate::config::model::Timeouts>) -> RouteTimeouts {
        let get = |f: fn(&crate::config::model::Timeouts) -> Option<crate::config::units::Dur>| {
            t.and_then(f).map(|d| d.0)
        };
        RouteTimeouts {
            connect: get(|t| t.connect),
            read: get(|t| t.read),
            write: get(|t| t.write),
            idle: get(|t| t.idle),
        }
    }

    /// `connect` bounds the TCP connect, `read` and `write` each read and
    /// write of the exchange, `idle` how long the connection may wait in the pool after
    /// this request before it is closed.
    pub fn apply(&self, o: &mut pingora::upstreams::peer::PeerOptions) {
        if let Some(d) = self.connect {
            o.connection_timeout = Some(d);
        }
        if let Some(d) = self.read {
            o.read_timeout = Some(d);
        }
        if let Some(d) = self.write {
            o.write_timeout = Some(d);
        }
        if let Some(d) = self.idle {
            o.idle_timeout = Some(d);
        }
    }
}

pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub loaded: Loaded,
    pub loaded_at: SystemTime,
    pub max_header_size: usize,
    /// `server.trusted_proxies`: peers whose forwarded fields a route may believe.
    pub trusted_proxies: crate::policy::client_ip::TrustedProxies,
    /// Listener addresses with `server_timing: true`.
    pub server_timing_listeners: HashSet<SocketAddr>,
    /// Each listener's `path_policy` (listeners without one have the default).
    pub path_policies: Vec<(SocketAddr, crate::path::Policy)>,
    /// The `ip` rules of the listeners that have them.
    pub listener_ip: Vec<(SocketAddr, crate::policy::ip::IpRules)>,
    pub unmatched_duration: Histogram,
    pub unmatched_requests: crate::metrics::RequestCounters,
    pub policies: Arc<PolicySet>,
    /// The top-level `cache:` section with the storage it binds, when present.
    pub cache: Option<crate::cache::Cache>,
    /// Certificates of the TLS listeners, by listener name, loaded when this config
    /// compiled. `run` builds the listeners from them; a reload checks them but cannot
    /// change listeners (that takes an upgrade).
    pub tls: BTreeMap<String, Arc<crate::tls::SniResolver>>,
    /// Some route is versioned by path: only then does routing look at a `/vN` segment.
    pub path_versioned: bool,
    /// `tracing:`, when present; its exporter is reused across reloads that keep the
    /// export settings.
    pub tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
}

impl Snapshot {
    /// The path policy of the listener at `local` (the address a connection came in on;
    /// a listener bound to `0.0.0.0` or `[::]` is found by its port).
    pub fn path_policy(&self, local: Option<SocketAddr>) -> crate::path::Policy {
        let Some(local) = local else {
            return crate::path::Policy::default();
        };
        self.path_policies
            .iter()
            .find(|(a, _)| *a == local || (a.ip().is_unspecified() && a.port() == local.port()))
            .map(|(_, p)| *p)
            .unwrap_or_default()
    }

    /// The `ip` rules of the listener at `local`, found as `path_policy` finds its policy.
    pub fn listener_ip(&self, local: Option<SocketAddr>) -> Option<&crate::policy::ip::IpRules> {
        let local = local?;
        self.listener_ip
            .iter()
            .find(|(a, _)| *a == local || (a.ip().is_unspecified() && a.port() == local.port()))
            .map(|(_, r)| r)
    }

    /// Checks and builds the runtime form: the one function `gatehouse check`, start-up
    /// and reload all use. It reports what `load_file` found (unknown keys, shapes)
    /// together with every check that needs a built object, each made here once: TLS
    /// pairs, target addresses and `hash_on`, JWT keys and the API key header, route
    /// references (upstream, auth methods) and regexes. Only a config without any error
    /// is then assembled, which creates metric series and opens the limit store.
    /// Upstreams whose config is unchanged from `previous` are reused as they are, so
    /// their health state and in-flight counts carry over; the limit store and the cache
    /// storage come from `resources`. Nothing running changes unless the whole config
    /// compiles: the cache bounds are applied last.
    pub fn compile(
        mut loaded: Loaded,
        previous: Option<&Snapshot>,
        resources: &Resources,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errs = std::mem::take(&mut loaded.problems);
        let cfg = &loaded.config;

        // Checking pass: no side effects, every error collected.
        let tls = crate::tls::compile(cfg, &mut errs);
        let mut plans = Vec::with_capacity(cfg.upstreams.len());
        for (name, u) in &cfg.upstreams {
            match Plan::compile(name, u, resources.clock.clone()) {
                Ok(p) => plans.push((name, u, p)),
                Err(e) => errs.extend(e),
            }
        }
        let auth = Auth::build(cfg, previous.map(|p| &*p.policies), &mut errs);
        let mut checked = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            super::destination::check(i, r, cfg, &mut errs);
            let path = route_path(i, &r.matches, &mut errs);
            let methods = auth.route_methods(cfg, i, r, &mut errs);
            let edge = crate::policy::edge::Edge::compile(i, r)
                .map_err(|e| errs.extend(e))
                .ok();
            if let (Some(path), Some(methods), Some(edge)) = (path, methods, edge) {
                checked.push((i, r, path, methods, edge));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }

        // Assembly of a valid config.
        let mut upstreams = BTreeMap::new();
        for (name, u, plan) in plans {
            let source = serde_json::to_string(u).unwrap_or_default();
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|prev| prev.source == source);
            let up = match reused {
                Some(prev) => prev.clone(),
                None => Arc::new(Upstream::build(name, u, plan)),
            };
            upstreams.insert(name.clone(), up);
        }
        let previous_policies = previous.map(|p| &*p.policies);
        let policies = Arc::new(PolicySet::assemble(
            auth,
            cfg,
            previous_policies,
            &resources.stores,
        )?);
        let m = crate::metrics::metrics();
        let loaded_unix = resources
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut entries = Vec::with_capacity(checked.len());
        for (i, r, path, methods, edge) in checked {
            let aggregate = r.aggregate.as_ref().and_then(|a| {
                crate::policy::aggregate::AggregatePlan::compile(
                    &r.name,
                    a,
                    r.matches.path_regex.as_deref(),
                    &upstreams,
                )
                .map(Arc::new)
            });
            // An aggregate route's destination is its first call's upstream, never
            // contacted as the route's own (the calls go through `proxy::aggregate`).
            let first_call = aggregate.as_ref().and_then(|a| a.first_upstream().cloned());
            let Some((destination, mirror)) =
                Destination::compile(r, &upstreams, loaded_unix, first_call)
            else {
                // The checking pass found every name and built every upstream.
                errs.push(ConfigError::new(
                    format!("routes[{i}]"),
                    "internal error: an upstream of the route was not built",
                ));
                continue;
            };
            let mt = &r.matches;
            let methods_match = if mt.methods.is_empty() {
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
            let route_policies = match policies.for_route(i, r, methods) {
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
                destination,
                mirror,
                strip_prefix: r.strip_prefix.clone().filter(|s| s != "/"),
                request_headers: HeaderOps::compile(&r.request_headers),
                response_headers: HeaderOps::compile(&r.response_headers),
                max_body: r.max_body.map(|s| s.0),
                timeouts: RouteTimeouts::compile(r.timeouts.as_ref()),
                deadline: r.deadline.map(|d| d.0),
                server_timing: r.server_timing,
                path_policy: r.path_policy.map(path_override),
                trust_forwarded_headers: r.trust_forwarded_headers,
                duration: m.http_duration.with_label_values(&[&r.name]),
                requests: crate::metrics::RequestCounters::new(&r.name),
                policies: route_policies,
                request_transform: r
                    .request_body
                    .as_ref()
                    .and_then(crate::policy::transform::RequestTransform::compile)
                    .map(Arc::new),
                response_transform: r
                    .response_body
                    .as_ref()
                    .and_then(crate::policy::transform::ResponseTransform::compile)
                    .map(Arc::new),
                aggregate,
                websocket: r.websocket.as_ref().map(|w| WebSocketLimits {
                    idle: w.idle(),
                    max: w.max(),
                    open: m.websocket_connections.with_label_values(&[&r.name]),
                }),
                grpc_web: r.grpc.as_ref().is_some_and(|g| g.web),
                edge,
            };
            entries.push(Entry {
                hosts: mt.hosts.clone(),
                path,
                conditions: Conditions {
                    methods: methods_match,
                    headers,
                },
                value: Arc::new(route),
            });
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let path_versioned = entries
            .iter()
            .any(|e| e.value.destination.versioned_by_path());
        let router = Router::new(entries);
        let server_timing_listeners = cfg
            .listeners
            .iter()
            .filter(|l| l.server_timing)
            .filter_map(|l| l.address.parse().ok())
            .collect();
        let path_policies = cfg
            .listeners
            .iter()
            .filter_map(|l| {
                let policy = path_override(l.path_policy?).over(crate::path::Policy::default());
                Some((l.address.parse().ok()?, policy))
            })
            .collect();
        let listener_ip = cfg
            .listeners
            .iter()
            .filter_map(|l| {
                let rules =
                    crate::policy::ip::IpRules::compile("listener", &l.name, l.ip.as_ref()?);
                Some((l.address.parse().ok()?, rules))
            })
            .collect();
        Ok(Snapshot {
            listener_ip,
            path_versioned,
            path_policies,
            router,
            upstreams,
            max_header_size: cfg.server.max_header_size.0 as usize,
            trusted_proxies: crate::policy::client_ip::TrustedProxies::parse(
                &cfg.server.trusted_proxies,
            ),
            server_timing_listeners,
            loaded_at: SystemTime::now(),
            unmatched_duration: m.http_duration.with_label_values(&["unmatched"]),
            unmatched_requests: crate::metrics::RequestCounters::new("unmatched"),
            policies,
            tls,
            tracing: cfg.tracing.as_ref().map(|t| {
                crate::telemetry::trace::Tracing::compile(
                    t,
                    previous.and_then(|p| p.tracing.as_deref()),
                )
            }),
            // Last: everything above can still fail; this applies the new bounds to the
            // running storage (a shrink evicts at once, no section empties it).
            cache: resources.cache.bind(cfg.cache.as_ref(), &resources.clock),
            loaded,
        })
    }
}

/// The runtime form of a `path_policy:` section.
fn path_override(p: crate::config::model::PathPolicy) -> crate::path::Override {
    use crate::config::model::{EscapedSlashAction as E, PathAction as P};
    use crate::path::Action;
    let action = |a: P| match a {
        P::Reject => Action::Reject,
        P::Keep => Action::Keep,
    };
    crate::path::Override {
        escaped_slash: p.escaped_slash.map(|a| match a {
            E::Reject => Action::Reject,
            E::Decode => Action::Decode,
            E::Keep => Action::Keep,
        }),
        backslash: p.backslash.map(action),
        matrix_params: p.matrix_params.map(action),
    }
}

/// The path part of `routes[index].match`; a `path_regex` is compiled here, once.
/// `None` (with the error in `errs`) when the regex does not compile.
fn route_path(index: usize, m: &RouteMatch, errs: &mut Vec<ConfigError>) -> Option<PathMatch> {
    Some(match (&m.path, &m.path_prefix, &m.path_regex) {
        (Some(p), _, _) => PathMatch::Exact(p.clone()),
        (_, Some(p), _) => PathMatch::Prefix(p.clone()),
        (_, _, Some(re)) => match regex::Regex::new(re) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                // The last line of regex's message says what is wrong; the others
                // repeat the pattern.
                errs.push(ConfigError::new(
                    format!("routes[{index}].match.path_regex"),
                    format!(
                        "invalid regex: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ),
                ));
                return None;
            }
        },
        _ => PathMatch::Prefix("/".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;

    #[test]
    fn every_route_timeout_reaches_the_peer_options() {
        let t: crate::config::model::Timeouts =
            serde_yaml::from_str("{ connect: 1s, write: 3s, idle: 4s }").unwrap();
        let rt = RouteTimeouts::compile(Some(&t));
        let mut o = pingora::upstreams::peer::PeerOptions::new();
        o.read_timeout = Some(Duration::from_secs(60));
        rt.apply(&mut o);
        assert_eq!(o.connection_timeout, Some(Duration::from_secs(1)));
        assert_eq!(
            o.read_timeout,
            Some(Duration::from_secs(60)),
            "unset: upstream's"
        );
        assert_eq!(o.write_timeout, Some(Duration::from_secs(3)));
        assert_eq!(o.idle_timeout, Some(Duration::from_secs(4)));
    }

    fn dir(sub: &str) -> String {
        format!("{}/tests/{sub}", env!("CARGO_MANIFEST_DIR"))
    }

    const LISTENERS: &str = "listeners: [ { name: public, address: \"127.0.0.1:18080\" } ]\n";
    const UPSTREAMS: &str = "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n";

    /// What `load_file` then `compile` make of `rest` (plus a listener and upstream `u`
    /// unless it has its own): the same path as `gatehouse check` and reload.
    fn compile(rest: &str) -> Result<Snapshot, Vec<ConfigError>> {
        let has = |key: &str| rest.starts_with(key) || rest.contains(&format!("\n{key}"));
        let mut yaml = String::new();
        if !has("listeners:") {
            yaml.push_str(LISTENERS);
        }
        if !has("upstreams:") {
            yaml.push_str(UPSTREAMS);
        }
        yaml.push_str(rest);
        let (cfg, mut problems) = load::parse_partial(&yaml, &|_| None);
        let Some(cfg) = cfg else {
            return Err(problems);
        };
        problems.extend(crate::config::validate::validate(&cfg));
        let loaded = crate::config::loaded(cfg, yaml.as_bytes(), "test.yaml", problems);
        Snapshot::compile(
            loaded,
            None,
            &crate::runtime::Resources::new(crate::clock::Clock::system()),
        )
    }

    fn errors(rest: &str) -> Vec<(String, String)> {
        match compile(rest) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn path_policies_compile_per_listener_and_route() {
        use crate::path::{Action, Policy};
        let s = compile(
            "listeners:\n  - { name: a, address: \"127.0.0.1:18080\" }\n  - { name: b, address: \"0.0.0.0:18081\", path_policy: { escaped_slash: decode, matrix_params: keep } }\n\
             routes:\n  - { name: r0, upstream: u, path_policy: { backslash: keep } }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let at = |a: &str| s.path_policy(Some(a.parse().unwrap()));
        assert_eq!(at("127.0.0.1:18080"), Policy::default());
        let b = at("127.0.0.1:18081");
        assert_eq!(
            (b.escaped_slash, b.backslash, b.matrix_params),
            (Action::Decode, Action::Reject, Action::Keep),
            "a 0.0.0.0 listener is found by its port; unset keys are reject"
        );
        assert_eq!(s.path_policy(None), Policy::default());
        let route = s
            .router
            .find("x", "/", &http::Method::GET, &http::HeaderMap::new())
            .unwrap();
        let o = route.path_policy.unwrap();
        assert_eq!((o.backslash, o.escaped_slash), (Some(Action::Keep), None));
    }

    #[test]
    fn bad_path_policies_are_refused_with_their_path() {
        let e = errors(
            "listeners: [ { name: a, address: \"127.0.0.1:18080\", path_policy: { backslash: decode } } ]\nroutes: [ { name: r0, upstream: u } ]\n",
        );
        assert!(
            e.iter()
                .any(|(p, m)| p == "listeners[0].path_policy.backslash" && m.contains("decode")),
            "{e:?}"
        );
        let e = errors(
            "routes: [ { name: r0, upstream: u, path_policy: { escaped_slashes: keep } } ]\n",
        );
        assert!(
            e.iter()
                .any(|(p, _)| p == "routes[0].path_policy.escaped_slashes"),
            "{e:?}"
        );
    }

    #[test]
    fn valid_configs_compile() {
        let hmac = "0123456789abcdef0123456789abcdef";
        let jwks = dir("keys/ec256.jwk.json");
        let jwks_doc = format!(
            "{{\"keys\": [{}]}}",
            std::fs::read_to_string(&jwks).expect("test key")
        );
        let jwks_file = std::env::temp_dir().join(format!(
            "gatehouse-compile-{}.jwks.json",
            std::process::id()
        ));
        std::fs::write(&jwks_file, jwks_doc).expect("write jwks");
        let cases = [
            "routes: [ { name: r0, upstream: u } ]\n".to_string(),
            format!(
                "listeners: [ {{ name: t, address: \"127.0.0.1:18443\", tls: {{ certificates: [ {{ cert: \"{0}/a.test.pem\", key: \"{0}/a.test.key\" }}, {{ cert: \"{0}/b.test.pem\", key: \"{0}/b.test.key\" }} ] }} }} ]\nroutes: [ {{ name: r0, upstream: u }} ]\n",
                dir("certs")
            ),
            format!(
                "upstreams:\n  u: {{ targets: [ {{ address: \"localhost:9001\" }} ], balance: consistent_hash, hash_on: \"header:X-User\" }}\nauth:\n  api_key: {{ header: X-API-Key }}\n  jwt:\n    - {{ name: h, issuer: \"https://h.test/\", audiences: [api], algorithms: [HS256], hmac_secret: \"{hmac}\" }}\n    - {{ name: f, issuer: \"https://f.test/\", audiences: [api], algorithms: [ES256], jwks_file: \"{}\" }}\nroutes:\n  - {{ name: r0, upstream: u, match: {{ path_regex: \"^/v[0-9]+/\" }}, auth: [jwt, api_key] }}\n",
                jwks_file.display()
            ),
        ];
        for rest in &cases {
            if let Err(e) = compile(rest) {
                panic!("refused: {e:?}\n{rest}");
            }
        }
        let s = compile(&cases[1]).unwrap();
        assert_eq!(s.tls.keys().collect::<Vec<_>>(), ["t"]);
        let s = compile(&cases[2]).unwrap();
        let route = s
            .router
            .find("x", "/v2/a", &http::Method::GET, &http::HeaderMap::new())
            .expect("regex route");
        assert_eq!(route.policies.len(), 1, "authenticate");
        assert_eq!(
            route.destination.fixed().expect("an upstream").hash_on,
            Some(crate::upstream::HashOn::Header(
                http::HeaderName::from_static("x-user")
            ))
        );
        assert!(s.policies.jwt.is_some() && s.policies.api_key.is_some());
        let _ = std::fs::remove_file(jwks_file);
    }

    /// Each check that needs a built object, made once here: YAML, then the (path,
    /// message) errors it must give, in order.
    #[test]
    fn forwarded_field_trust_reaches_the_route_and_the_snapshot() {
        let s = compile(
            "server: { trusted_proxies: [10.0.0.0/8, \"192.0.2.7\"] }\nroutes:\n  - { name: t, upstream: u, match: { path_prefix: /t }, trust_forwarded_headers: true }\n  - { name: p, upstream: u }\n",
        )
        .unwrap();
        let find = |path| {
            s.router
                .find("x", path, &http::Method::GET, &http::HeaderMap::new())
                .expect("route")
        };
        assert!(find("/t/a").trust_forwarded_headers);
        assert!(!find("/p").trust_forwarded_headers, "off by default");
        let peer = |ip: &str| s.trusted_proxies.trusts_peer(Some(ip.parse().unwrap()));
        assert!(peer("10.1.2.3") && peer("192.0.2.7") && peer("::ffff:10.0.0.1"));
        assert!(!peer("127.0.0.1"));
        assert!(!s.trusted_proxies.trusts_peer(None));
    }

    #[test]
    fn each_compile_error_with_its_path() {
        let certs = dir("certs");
        let cases: Vec<(String, Vec<(String, String)>)> = vec![
            (
                "routes: [ { name: r0, upstream: nope } ]\n".into(),
                vec![("routes[0].upstream".into(), "unknown upstream \"nope\"".into())],
            ),
            (
                "routes: [ { name: r0, upstream: u, match: { path_regex: \"([a-z\" } } ]\n".into(),
                vec![(
                    "routes[0].match.path_regex".into(),
                    "invalid regex: error: unclosed character class".into(),
                )],
            ),
            (
                "auth:\n  api_key: { header: X-Key }\nroutes:\n  - { name: r0, upstream: u, auth: [saml, jwt, api_key] }\n".into(),
                vec![
                    ("routes[0].auth[0]".into(), "unknown auth method \"saml\" (jwt | api_key)".into()),
                    ("routes[0].auth[1]".into(), "auth method \"jwt\" is not configured under auth:".into()),
                ],
            ),
            (
                "routes: [ { name: r0, upstream: u, auth: [api_key] } ]\n".into(),
                vec![("routes[0].auth[0]".into(), "auth method \"api_key\" is not configured under auth:".into())],
            ),
            (
                "auth:\n  api_key: { header: \"bad header\" }\nroutes: [ { name: r0, upstream: u, auth: [api_key] } ]\n".into(),
                // The route names a configured method: only the header is wrong.
                vec![("auth.api_key.header".into(), "invalid header name".into())],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\" }, { address: nohost } ], balance: consistent_hash, hash_on: cookie }\n".into(),
                vec![
                    ("upstreams.u.targets[1].address".into(), "\"nohost\" needs a port (host:port)".into()),
                    ("upstreams.u.hash_on".into(), "\"cookie\" must be consumer | ip | path | header:NAME".into()),
                ],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\" } ], hash_on: \"header:a b\" }\n".into(),
                vec![("upstreams.u.hash_on".into(), "invalid header name \"a b\"".into())],
            ),
            (
                format!("listeners: [ {{ name: t, address: \"127.0.0.1:18443\", tls: {{ certificates: [ {{ cert: \"{certs}/a.test.pem\", key: \"{certs}/a.test.key\" }}, {{ cert: \"{certs}/mismatch.pem\", key: \"{certs}/mismatch.key\" }}, {{ cert: \"{certs}/missing.pem\", key: \"{certs}/a.test.key\" }} ] }} }} ]\n"),
                vec![
                    (
                        "listeners[0].tls.certificates[1]".into(),
                        format!("key \"{certs}/mismatch.key\" does not match certificate \"{certs}/mismatch.pem\": "),
                    ),
                    (
                        "listeners[0].tls.certificates[2]".into(),
                        format!("cannot read certificate \"{certs}/missing.pem\": "),
                    ),
                ],
            ),
            (
                "auth:\n  jwt:\n    - { name: a, issuer: \"https://a.test/\", audiences: [api], algorithms: [ES256], jwks_file: /nonexistent/jwks.json }\nroutes: [ { name: r0, upstream: u, auth: [jwt] } ]\n".into(),
                // The route names a configured method: only its keys are wrong.
                vec![("auth.jwt[0].jwks_file".into(), "cannot read \"/nonexistent/jwks.json\": ".into())],
            ),
        ];
        for (rest, want) in &cases {
            let got = errors(rest);
            assert_eq!(got.len(), want.len(), "{got:?}\nfor:\n{rest}");
            for ((gp, gm), (wp, wm)) in got.iter().zip(want) {
                // Messages that quote an OS or TLS library error are compared up to it.
                let ok = if wm.ends_with(": ") {
                    gm.starts_with(wm.as_str())
                } else {
                    gm == wm
                };
                assert!(
                    gp == wp && ok,
                    "got {gp}: {gm}\nwant {wp}: {wm}\nfor:\n{rest}"
                );
            }
        }
    }

    #[test]
    fn jwks_file_contents_are_checked_once() {
        let tmp = std::env::temp_dir();
        let empty = tmp.join(format!(
            "gatehouse-compile-{}-empty.json",
            std::process::id()
        ));
        let bad = tmp.join(format!("gatehouse-compile-{}-bad.json", std::process::id()));
        std::fs::write(&empty, r#"{"keys": []}"#).unwrap();
        std::fs::write(&bad, "[1, 2]").unwrap();
        let got = errors(&format!(
            "auth:\n  jwt:\n    - {{ name: a, issuer: \"https://a.test/\", audiences: [api], algorithms: [ES256], jwks_file: \"{}\" }}\n    - {{ name: b, issuer: \"https://b.test/\", audiences: [api], algorithms: [ES256], jwks_file: \"{}\" }}\n    - {{ name: c, issuer: \"https://c.test/\", audiences: [api], algorithms: [XS1], jwks_file: \"{}\" }}\n",
            empty.display(),
            bad.display(),
            bad.display(),
        ));
        let _ = std::fs::remove_file(&empty);
        let _ = std::fs::remove_file(&bad);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        // Validation's own error for the unknown algorithm, then one per broken file;
        // an issuer without a usable algorithm has no keys to check.
        assert_eq!(
            paths,
            [
                "auth.jwt[2].algorithms[0]",
                "auth.jwt[0].jwks_file",
                "auth.jwt[1].jwks_file"
            ],
            "{got:?}"
        );
        assert!(
            got[1].1.contains("has no key usable with [\"ES256\"]"),
            "{got:?}"
        );
        assert!(got[2].1.contains("not a JWKS"), "{got:?}");
    }

    /// Every reference of `versions`, `split` and `mirror` resolves and the deprecation
    /// dates parse; a valid one compiles into its destination.
    #[test]
    fn traffic_references_are_checked_with_their_paths() {
        let got = errors(
            "consumers: [ { id: acme } ]
routes:
  - { name: v, match: { path_prefix: /v }, versions: { upstreams: { \"1\": u, \"2\": nope }, deprecated: { \"1\": { sunset: \"next year\", since: \"2026-01-01T00:00:00Z\" } } } }
  - { name: s, match: { path_prefix: /s }, split: { weights: { u: 9, gone: 1 }, consumers: { acme: u, ghost: u } }, mirror: { upstream: shadow } }
",
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].versions.upstreams.2",
                "routes[0].versions.deprecated.1.sunset",
                "routes[1].split.weights.gone",
                "routes[1].split.consumers.ghost",
                "routes[1].mirror.upstream",
            ],
            "{got:?}"
        );
        assert_eq!(got[0].1, "unknown upstream \"nope\"");
        let s = compile(
            "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n  w: { targets: [ { address: \"127.0.0.1:9002\" } ] }\nroutes:\n  - { name: v, match: { path_prefix: /v }, versions: { from: [path], upstreams: { \"1\": u, \"2\": w } }, mirror: { upstream: w } }\n  - { name: s, match: { path_prefix: /s }, split: { weights: { u: 1, w: 1 } } }\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(s.path_versioned);
        let find = |p| {
            s.router
                .find("x", p, &http::Method::GET, &http::HeaderMap::new())
                .expect("route")
        };
        let v = find("/v");
        assert!(v.destination.versioned_by_path());
        assert_eq!(v.destination.upstreams().len(), 2);
        assert_eq!(
            v.mirror.as_ref().map(|m| m.upstream.name.as_str()),
            Some("w")
        );
        assert!(find("/s").destination.fixed().is_none());
    }

    /// Shape problems and compile errors come back together, shape first.
    #[test]
    fn every_error_at_once() {
        let got = errors(
            "routes:\n  - { name: r0, upstrem: u, upstream: u }\n  - { name: r1, upstream: nope, match: { path_regex: \"(\" } }\n  - { name: r2, upstream: u, auth: [jwt], scopes: [a] }\n",
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].upstrem",
                "routes[1].upstream",
                "routes[1].match.path_regex",
                "routes[2].auth[0]",
            ],
            "{got:?}"
        );
        assert!(got[0].1.starts_with("unknown field"), "{got:?}");
    }
}
