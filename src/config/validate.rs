//! Shape checks on a parsed config: names are unique, values are in range and well
//! formed, settings that need each other are both there. Every problem is collected
//! with its YAML path; nothing stops at the first one.
//!
//! Checks that need a built object (TLS pairs, JWT keys, resolved addresses, compiled
//! regexes, references to upstreams and auth methods) are not here: they happen once,
//! in `runtime::Snapshot::compile`, which builds those objects anyway.

use super::model::*;
use super::values::{parse_digest, Alg, LimitKey, ALL_ALGS, LIMIT_KEY_SYNTAX};
use super::ConfigError;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

struct V {
    errs: Vec<ConfigError>,
}

impl V {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(ConfigError::new(path, msg));
    }
}

pub fn validate(cfg: &Config) -> Vec<ConfigError> {
    let mut v = V { errs: Vec::new() };
    server(&mut v, cfg);
    listeners(&mut v, cfg);
    if let Some(a) = &cfg.admin {
        if a.address.parse::<SocketAddr>().is_err() {
            v.err(
                "admin.address",
                format!("{:?} is not an IP:port address", a.address),
            );
        }
    }
    let names: HashSet<&str> = cfg.upstreams.keys().map(String::as_str).collect();
    for (name, u) in &cfg.upstreams {
        upstream(&mut v, name, u, &names);
    }
    auth(&mut v, cfg);
    limits(&mut v, cfg);
    routes(&mut v, cfg);
    v.errs.extend(super::edge::check(cfg));
    v.errs.extend(super::tracing::validate(cfg));
    v.errs.extend(super::demo::exposed(cfg));
    v.errs
}

fn server(v: &mut V, cfg: &Config) {
    let s = &cfg.server;
    if s.threads == 0 || s.threads > 1024 {
        v.err("server.threads", "must be between 1 and 1024");
    }
    if s.max_header_size.0 < 1024 || s.max_header_size.0 > 1_048_000 {
        v.err("server.max_header_size", "must be between 1KiB and 1000KiB");
    }
    // Pingora takes these two in whole seconds (`grace_period_seconds`,
    // `graceful_shutdown_timeout_seconds`, at least 1): a fraction would be cut without a
    // word, so it is refused instead.
    for (path, d) in [
        ("server.grace_period", s.grace_period.0),
        ("server.shutdown_timeout", s.shutdown_timeout.0),
    ] {
        if d.subsec_nanos() != 0 || d.as_secs() == 0 {
            v.err(
                path,
                format!(
                    "must be a whole number of seconds, at least 1s (the server counts \
                     whole seconds); got {d:?}"
                ),
            );
        }
    }
    let ht = s.header_timeout.0;
    if ht < std::time::Duration::from_millis(100) || ht > std::time::Duration::from_secs(600) {
        v.err("server.header_timeout", "must be between 100ms and 10m");
    }
    let bt = s.body_timeout.0;
    if bt < std::time::Duration::from_millis(100) || bt > std::time::Duration::from_secs(3600) {
        v.err("server.body_timeout", "must be between 100ms and 1h");
    }
    let st = s.send_timeout.0;
    if st < std::time::Duration::from_millis(100) || st > std::time::Duration::from_secs(3600) {
        v.err("server.send_timeout", "must be between 100ms and 1h");
    }
    if !s.server_header.is_empty()
        && (s.server_header.len() > 256
            || !s.server_header.bytes().all(|b| (0x20..0x7f).contains(&b))
            || s.server_header.trim() != s.server_header)
    {
        v.err(
            "server.server_header",
            "must be at most 256 printable ASCII characters without leading or trailing spaces",
        );
    }
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        if c.parse::<ipnet::IpNet>().is_err() && c.parse::<std::net::IpAddr>().is_err() {
            v.err(
                format!("server.trusted_proxies[{i}]"),
                format!("{c:?} is not a CIDR"),
            );
        }
    }
}

fn listeners(v: &mut V, cfg: &Config) {
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    if cfg.listeners.is_empty() {
        v.err("listeners", "at least one listener is required");
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.is_empty() {
            v.err(format!("{p}.name"), "missing: every listener needs a name");
        } else if !names.insert(l.name.as_str()) {
            v.err(
                format!("{p}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        match l.address.parse::<SocketAddr>() {
            Ok(a) => {
                if !addrs.insert(a) {
                    v.err(format!("{p}.address"), format!("address {a} is used twice"));
                }
                if cfg
                    .admin
                    .as_ref()
                    .and_then(|ad| ad.address.parse::<SocketAddr>().ok())
                    == Some(a)
                {
                    v.err(
                        format!("{p}.address"),
                        format!("address {a} is also the admin address"),
                    );
                }
            }
            Err(_) => v.err(
                format!("{p}.address"),
                format!("{:?} is not an IP:port address", l.address),
            ),
        }
        if l.http2 && l.tls.is_some() {
            v.err(
                format!("{p}.http2"),
                "is for plaintext listeners (h2c); a TLS listener offers HTTP/2 with tls.http2",
            );
        }
        if l.max_connections == Some(0) {
            v.err(format!("{p}.max_connections"), "must be at least 1");
        }
        let ka = l.keepalive_timeout.0;
        if ka < std::time::Duration::from_millis(100) || ka > std::time::Duration::from_secs(3600) {
            v.err(
                format!("{p}.keepalive_timeout"),
                "must be between 100ms and 1h",
            );
        }
        if l.keepalive_requests == Some(0) {
            v.err(format!("{p}.keepalive_requests"), "must be at least 1");
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                v.err(
                    format!("{p}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
        }
    }
}

fn upstream(v: &mut V, name: &str, u: &Upstream, cfg_upstreams: &HashSet<&str>) {
    let p = format!("upstreams.{name}");
    if u.targets.is_empty() {
        v.err(format!("{p}.targets"), "at least one target is required");
    }
    let mut seen = HashSet::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tp = format!("{p}.targets[{i}]");
        if !seen.insert(t.address.as_str()) {
            v.err(
                format!("{tp}.address"),
                format!("target {:?} is listed twice", t.address),
            );
        }
        if t.weight == 0 || t.weight > 1000 {
            v.err(format!("{tp}.weight"), "must be between 1 and 1000");
        }
    }
    if u.hash_on.is_none() && u.balance == Balance::ConsistentHash {
        v.err(
            format!("{p}.hash_on"),
            "required with balance: consistent_hash (consumer | ip | path | header:NAME)",
        );
    }
    if u.retries > 10 {
        v.err(format!("{p}.retries"), "must be at most 10");
    }
    super::traffic::validate_upstream(
        &p,
        name,
        u.breaker.as_ref(),
        u.outlier.as_ref(),
        u.retry.as_ref(),
        &|n| cfg_upstreams.contains(n),
        &mut v.errs,
    );
    if let Some(a) = &u.health.active {
        let hp = format!("{p}.health.active");
        match (&a.http_path, a.tcp) {
            (Some(_), true) => v.err(&hp, "set either http_path or tcp: true, not both"),
            (None, false) => v.err(
                &hp,
                "set http_path (HTTP check) or tcp: true (connect check)",
            ),
            (Some(path), false) if !path.starts_with('/') => {
                v.err(format!("{hp}.http_path"), "must start with /")
            }
            _ => {}
        }
        if a.interval.0.as_millis() < 10 {
            v.err(format!("{hp}.interval"), "must be at least 10ms");
        }
        if a.timeout.0.is_zero() {
            v.err(format!("{hp}.timeout"), "must be more than 0");
        }
        if a.healthy_after == 0 {
            v.err(format!("{hp}.healthy_after"), "must be at least 1");
        }
        if a.unhealthy_after == 0 {
            v.err(format!("{hp}.unhealthy_after"), "must be at least 1");
        }
    }
    if let Some(ps) = &u.health.passive {
        if ps.unhealthy_after == 0 {
            v.err(
                format!("{p}.health.passive.unhealthy_after"),
                "must be at least 1",
            );
        }
    }
}

fn auth(v: &mut V, cfg: &Config) {
    let mut tier_refs = Vec::new();
    if let Some(a) = &cfg.auth {
        let mut names = HashSet::new();
        let mut issuers = HashSet::new();
        for (i, j) in a.jwt.iter().enumerate() {
            let p = format!("auth.jwt[{i}]");
            if j.name.is_empty() || !names.insert(j.name.as_str()) {
                v.err(
                    format!("{p}.name"),
                    format!("issuer names must be unique and non-empty ({:?})", j.name),
                );
            }
            if j.issuer.is_empty() {
                v.err(format!("{p}.issuer"), "the exact `iss` value is required");
            } else if !issuers.insert(j.issuer.as_str()) {
                v.err(
                    format!("{p}.issuer"),
                    format!("issuer {:?} is configured twice", j.issuer),
                );
            }
            jwt_issuer(v, &p, j);
        }
        if let Some(k) = &a.api_key {
            if k.query.as_deref() == Some("") {
                v.err("auth.api_key.query", "must not be empty (omit it instead)");
            }
        }
    }
    let mut ids = HashSet::new();
    let mut keys: HashMap<&str, String> = HashMap::new();
    let mut subjects: HashMap<&str, String> = HashMap::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        let p = format!("consumers[{i}]");
        if c.id.is_empty() || http::HeaderValue::from_str(&c.id).is_err() {
            v.err(
                format!("{p}.id"),
                "a consumer id is required (printable, it becomes X-Consumer-ID)",
            );
        } else if !ids.insert(c.id.as_str()) {
            v.err(
                format!("{p}.id"),
                format!("duplicate consumer id {:?}", c.id),
            );
        }
        if let Some(t) = &c.tier {
            tier_refs.push((format!("{p}.tier"), t.clone()));
        }
        for (k, key) in c.api_keys.iter().enumerate() {
            let kp = format!("{p}.api_keys[{k}]");
            if parse_digest(key).is_none() {
                v.err(
                    kp,
                    "must be sha256:<64 hex digits> (use `gatehouse hash-key KEY`), or ${VAR} naming an environment variable that holds the key",
                );
            } else if let Some(first) = keys.insert(key, kp.clone()) {
                v.err(kp, format!("the same key is also {first}"));
            }
        }
        for (k, sub) in c.jwt_subjects.iter().enumerate() {
            let sp = format!("{p}.jwt_subjects[{k}]");
            if let Some(first) = subjects.insert(sub, sp.clone()) {
                v.err(sp, format!("subject {sub:?} is also {first}"));
            }
        }
        scope_list(v, &format!("{p}.scopes"), &c.scopes);
    }
    for (path, t) in tier_refs {
        if !cfg.tiers.contains_key(&t) {
            v.err(path, format!("unknown tier {t:?}"));
        }
    }
    if let Some(c) = &cfg.cache {
        if c.memory.0 < 64 * 1024 {
            v.err("cache.memory", "must be at least 64KiB");
        }
        if c.lock_timeout.is_some_and(|t| t.0.is_zero()) {
            v.err("cache.lock_timeout", "must be more than 0");
        }
        if c.max_object_size.is_some_and(|m| m.0 == 0) {
            v.err("cache.max_object_size", "must be more than 0");
        }
        if let Some(m) = c.max_object_size {
            if m.0 > c.memory.0 {
                v.err("cache.max_object_size", "is larger than cache.memory");
            }
        }
    }
}

/// One `auth.jwt[]` entry: algorithms, keys and claim settings.
fn jwt_issuer(v: &mut V, p: &str, j: &JwtIssuer) {
    if j.algorithms.is_empty() {
        v.err(format!("{p}.algorithms"), "list at least one algorithm");
    }
    let mut algs = Vec::new();
    for (k, alg) in j.algorithms.iter().enumerate() {
        match Alg::parse(alg) {
            Some(a) => algs.push(a),
            None if alg.eq_ignore_ascii_case("none") => v.err(
                format!("{p}.algorithms[{k}]"),
                "`none` is never accepted: tokens must be signed",
            ),
            None => v.err(
                format!("{p}.algorithms[{k}]"),
                format!(
                    "unknown algorithm {alg:?} (one of {})",
                    ALL_ALGS.map(|a| a.name()).join(", ")
                ),
            ),
        }
    }
    if j.audiences.is_empty() {
        v.err(
            format!("{p}.audiences"),
            "list at least one audience: a token must be meant for this API",
        );
    }
    let hmac = j.hmac_secret.as_deref().filter(|s| !s.is_empty());
    if j.jwks_url.is_none() && j.jwks_file.is_none() && hmac.is_none() {
        v.err(
            p,
            "an issuer needs keys: jwks_url, jwks_file or hmac_secret",
        );
    }
    let wants_hmac = algs.iter().any(|a| a.is_hmac());
    match hmac {
        Some(_) if !wants_hmac => v.err(
            format!("{p}.hmac_secret"),
            "set, but no HS256/HS384/HS512 is listed in algorithms",
        ),
        Some(s) if algs.iter().any(|a| a.is_hmac() && s.len() < a.min_secret_len()) => v.err(
            format!("{p}.hmac_secret"),
            "too short: at least as long as the hash (32 bytes for HS256, 48 for HS384, 64 for HS512; RFC 7518 §3.2)",
        ),
        None if wants_hmac && j.jwks_file.is_none() => v.err(
            format!("{p}.hmac_secret"),
            "HS256/HS384/HS512 need hmac_secret (or oct keys in jwks_file; a jwks_url never supplies secrets)",
        ),
        _ => {}
    }
    if let Some(u) = &j.jwks_url {
        let ok = reqwest::Url::parse(u)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            v.err(
                format!("{p}.jwks_url"),
                format!("{u:?} is not an http(s) URL"),
            );
        }
    }
    for (key, val) in [
        ("consumer_claim", &j.consumer_claim),
        ("scope_claim", &j.scope_claim),
    ] {
        if val.as_deref() == Some("") {
            v.err(
                format!("{p}.{key}"),
                "must not be empty (omit it for the default)",
            );
        }
    }
    if j.leeway.is_some_and(|l| l.0.as_secs() > 600) {
        v.err(format!("{p}.leeway"), "at most 10m");
    }
}

/// Scope names as RFC 6749 §3.3 allows them (they go into a quoted challenge).
fn scope_list(v: &mut V, p: &str, scopes: &[String]) {
    for (k, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !ok {
            v.err(
                format!("{p}[{k}]"),
                format!("{s:?} is not a scope (printable ASCII, no space, quote or backslash)"),
            );
        }
    }
}

fn routes(v: &mut V, cfg: &Config) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.is_empty() || r.name == "unmatched" {
            v.err(
                format!("{p}.name"),
                "a route needs a name (and `unmatched` is reserved)",
            );
        }
        if let Some(first) = names.insert(r.name.as_str(), i) {
            v.err(
                format!("{p}.name"),
                format!("duplicate route name {:?} (also routes[{first}])", r.name),
            );
        }
        super::route_traffic::validate_route(&p, r, &mut v.errs);
        super::traffic::validate_deadline(&p, r.deadline, &mut v.errs);
        v.errs.extend(super::transform::validate_route(cfg, &p, r));
        let m = &r.matches;
        let kinds = [
            m.path.is_some(),
            m.path_prefix.is_some(),
            m.path_regex.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            v.err(
                format!("{p}.match"),
                "use only one of path, path_prefix and path_regex",
            );
        }
        for (key, val) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(s) = val {
                if !s.starts_with('/') {
                    v.err(format!("{p}.match.{key}"), "must start with /");
                }
            }
        }
        for (k, h) in m.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let ok = !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !bare.contains("..");
            if !ok {
                v.err(
                    format!("{p}.match.hosts[{k}]"),
                    format!("{h:?} is not a host name or *.wildcard"),
                );
            }
        }
        for (k, meth) in m.methods.iter().enumerate() {
            if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_uppercase()) {
                v.err(
                    format!("{p}.match.methods[{k}]"),
                    format!("{meth:?} is not a method (GET, POST, ...)"),
                );
            }
        }
        for name in m.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                v.err(format!("{p}.match.headers.{name}"), "invalid header name");
            }
        }
        if let Some(sp) = &r.strip_prefix {
            if !sp.starts_with('/') {
                v.err(format!("{p}.strip_prefix"), "must start with /");
            }
        }
        header_ops(v, &format!("{p}.request_headers"), &r.request_headers);
        header_ops(v, &format!("{p}.response_headers"), &r.response_headers);
        scope_list(v, &format!("{p}.scopes"), &r.scopes);
        if !r.scopes.is_empty() && r.auth.as_ref().is_none_or(|a| a.is_empty()) {
            v.err(
                format!("{p}.scopes"),
                "scopes need authentication: set auth on this route",
            );
        }
        route_limits(v, cfg, &p, r);
        v.errs.extend(super::streaming::validate(cfg, &p, r));
        if r.trust_forwarded_headers && cfg.server.trusted_proxies.is_empty() {
            // It would do nothing: the fields are believed only from a trusted proxy.
            v.err(
                format!("{p}.trust_forwarded_headers"),
                "needs server.trusted_proxies: forwarded fields are believed only from a trusted proxy",
            );
        }
        if let Some(c) = &r.cache {
            if cfg.cache.is_none() {
                v.err(format!("{p}.cache"), "needs the top-level cache: section");
            }
            for (k, name) in c.vary.iter().enumerate() {
                if name == "*" || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    v.err(format!("{p}.cache.vary[{k}]"), "must be a header name");
                }
            }
        }
    }
}

/// A rate must leave at least a microsecond between requests (the shared store counts
/// in microseconds); a burst is at least 1.
fn rate_and_burst(v: &mut V, p: &str, rate: &super::units::Rate, burst: Option<u64>) {
    let period_us = rate.unit.nanos() / 1_000;
    if rate.count > period_us {
        v.err(
            p,
            format!("{rate} is too fast: at most one request per microsecond"),
        );
    }
    if burst == Some(0) {
        v.err(
            format!("{}.burst", p.rsplit_once('.').map_or(p, |(a, _)| a)),
            "must be at least 1",
        );
    }
}

fn sync_interval(v: &mut V, p: &str, d: std::time::Duration) {
    if !d.is_zero() && (d.as_millis() < 10 || d.as_secs() > 3600) {
        v.err(
            p,
            "must be 0 (exact: the shared store on every request) or between 10ms and 1h",
        );
    }
}

/// `store:` and `tiers:`.
fn limits(v: &mut V, cfg: &Config) {
    if let Some(s) = &cfg.store {
        match (s.backend, s.redis_url.as_deref().unwrap_or("")) {
            (StoreBackend::Redis, "") => v.err("store.redis_url", "required with backend: redis"),
            (_, "") => {}
            (_, url) => {
                if let Err(e) = redis::Client::open(url) {
                    v.err("store.redis_url", format!("not a Redis URL: {e}"));
                }
            }
        }
        if let Some(d) = s.sync_interval {
            sync_interval(v, "store.sync_interval", d.0);
            if d.0.is_zero() && s.backend != StoreBackend::Redis {
                v.err(
                    "store.sync_interval",
                    "0 (a store call on every request) needs backend: redis",
                );
            }
        }
        if s.max_keys.is_some_and(|n| n < 1024) {
            v.err("store.max_keys", "must be at least 1024");
        }
    }
    for (name, t) in &cfg.tiers {
        let p = format!("tiers.{name}");
        if t.burst.is_some() && t.rate.is_none() {
            v.err(format!("{p}.burst"), "burst needs a rate");
        }
        if let Some(r) = &t.rate {
            rate_and_burst(v, &format!("{p}.rate"), r, t.burst);
        }
    }
}

fn route_limits(v: &mut V, cfg: &Config, p: &str, r: &Route) {
    let key_ok = |k: &Option<String>| k.as_deref().is_none_or(|k| LimitKey::parse(k).is_ok());
    if let Some(rl) = &r.rate_limit {
        if !key_ok(&rl.key) {
            v.err(format!("{p}.rate_limit.key"), LIMIT_KEY_SYNTAX);
        }
        rate_and_burst(v, &format!("{p}.rate_limit.limit"), &rl.limit, rl.burst);
        if let Some(d) = rl.sync_interval {
            let redis = cfg
                .store
                .as_ref()
                .is_some_and(|s| s.backend == StoreBackend::Redis);
            if !redis {
                v.err(
                    format!("{p}.rate_limit.sync_interval"),
                    "only with store.backend: redis (local rates are exact already)",
                );
            }
            sync_interval(v, &format!("{p}.rate_limit.sync_interval"), d.0);
        }
    }
    if let Some(q) = &r.quota {
        if !key_ok(&q.key) {
            v.err(format!("{p}.quota.key"), LIMIT_KEY_SYNTAX);
        }
    }
}

fn header_ops(v: &mut V, p: &str, ops: &HeaderOps) {
    for (name, val) in &ops.set {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.err(format!("{p}.set.{name}"), "invalid header name");
        }
        if http::HeaderValue::from_str(val).is_err() {
            v.err(format!("{p}.set.{name}"), "invalid header value");
        }
    }
    for (k, name) in ops.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.err(format!("{p}.remove[{k}]"), "invalid header name");
        }
    }
}

/// Tests: (path, message) of every error `validate` finds in `yaml`, which must parse.
#[cfg(test)]
pub(crate) fn problems_in(yaml: &str) -> Vec<(String, String)> {
    let (cfg, parse_errs) = crate::config::load::parse_partial(yaml, &|_| None);
    assert!(parse_errs.is_empty(), "{parse_errs:?}\n{yaml}");
    validate(&cfg.expect("parsed"))
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
