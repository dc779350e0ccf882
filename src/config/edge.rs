//! Edge policies as operators write them: `routes[].cors`, `routes[].ip` and
//! `listeners[].ip`, `routes[].compression`, `routes[].max_headers` and
//! `routes[].max_url` (contract: "Edge policies and transformation"), and their shape
//! checks with YAML paths. Regexes (`~` origins) are compiled once, with their errors,
//! when the snapshot compiles (`policy::cors::Cors::compile`).

use super::units::{Dur, Size};
use super::ConfigError;
use serde::{Deserialize, Serialize};

/// `routes[].cors`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`), `*.example.com` wildcards (any
    /// subdomain, any scheme unless written `https://*.example.com`), `~regex` (matched
    /// against the whole origin) or `*` (any origin; never with `credentials`).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Methods a preflight may announce; default GET, HEAD, POST.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a preflight may announce (beyond the CORS-safelisted ones); `*`
    /// allows any.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the browser lets scripts read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may reuse a preflight answer (`Access-Control-Max-Age`).
    #[serde(default)]
    pub max_age: Option<Dur>,
}

/// `routes[].ip` and `listeners[].ip`: CIDRs (or bare addresses) of the client address
/// as resolved through `server.trusted_proxies`. `deny` wins over `allow`; an empty
/// `allow` allows every address `deny` does not list.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub enum Algorithm {
    #[serde(rename = "br")]
    Brotli,
    #[serde(rename = "zstd")]
    Zstd,
    #[serde(rename = "gzip")]
    Gzip,
}

impl Algorithm {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
            Algorithm::Gzip => "gzip",
        }
    }
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Brotli, Algorithm::Zstd, Algorithm::Gzip]
}

/// `routes[].compression`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// The codings offered, in the gateway's order of preference (used when the client
    /// gives several the same q-value).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Responses declaring a smaller `Content-Length` are sent as they are. Default 1KiB.
    #[serde(default)]
    pub min_size: Option<Size>,
    /// Media types compressed (`text/*` covers a whole type); parameters are ignored.
    /// Default: text/html, text/plain, text/css, text/javascript, application/javascript,
    /// application/json, application/problem+json, application/xml, image/svg+xml.
    #[serde(default)]
    pub types: Vec<String>,
    /// Extension: compression level per coding (gzip 1-9, default 6; br 0-11, default 4;
    /// zstd 1-19, default 3).
    #[serde(default, skip_serializing_if = "Levels::is_default")]
    pub levels: Levels,
    /// Extension: request bodies sent with `Content-Encoding: gzip | br | zstd` are
    /// decoded before they go upstream, within these bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decompress_requests: Option<DecompressRequests>,
}

fn default_max_expanded() -> Size {
    Size(8 * 1024 * 1024)
}

fn default_max_ratio() -> u32 {
    100
}

/// `routes[].compression.decompress_requests`: the bounds that stop a decompression
/// bomb while it expands (checked on every chunk, before the expanded bytes are kept).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecompressRequests {
    /// The most a decoded body may grow to. Default 8MiB.
    #[serde(default = "default_max_expanded")]
    pub max_size: Size,
    /// Decoded bytes per encoded byte allowed once the decoded body passes 1 MiB
    /// (smaller bodies are bounded by `max_size` only). Default 100.
    #[serde(default = "default_max_ratio")]
    pub max_ratio: u32,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub br: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<u32>,
}

impl Levels {
    fn is_default(&self) -> bool {
        *self == Levels::default()
    }
}

/// Smallest `max_url` accepted: `/` plus a little; smaller refuses every real request.
pub const MIN_MAX_URL: u64 = 16;

/// The shape checks of every edge policy in `cfg`, each error with its YAML path.
pub fn check(cfg: &super::Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(ip) = &l.ip {
            ip_rules(&mut errs, &format!("listeners[{i}].ip"), ip);
        }
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if let Some(c) = &r.cors {
            cors(&mut errs, &format!("{p}.cors"), c);
        }
        if let Some(ip) = &r.ip {
            ip_rules(&mut errs, &format!("{p}.ip"), ip);
        }
        if let Some(c) = &r.compression {
            compression(&mut errs, &format!("{p}.compression"), c);
        }
        if r.max_headers == Some(0) {
            errs.push(ConfigError::new(
                format!("{p}.max_headers"),
                "must be at least 1",
            ));
        }
        if r.max_url.is_some_and(|s| s.0 < MIN_MAX_URL) {
            errs.push(ConfigError::new(
                format!("{p}.max_url"),
                format!("must be at least {MIN_MAX_URL} bytes"),
            ));
        }
    }
    errs
}

fn cors(errs: &mut Vec<ConfigError>, p: &str, c: &Cors) {
    if c.origins.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.origins"),
            "list at least one origin (exact, *.wildcard, ~regex or *)",
        ));
    }
    for (k, o) in c.origins.iter().enumerate() {
        let op = format!("{p}.origins[{k}]");
        if o == "*" {
            if c.credentials {
                // Browsers refuse `Access-Control-Allow-Origin: *` on a credentialed
                // request, and echoing any origin with credentials hands every site the
                // user's session: refused rather than silently turned into either.
                errs.push(ConfigError::new(
                    op,
                    "`*` cannot be used with credentials: true (browsers reject it); list the origins",
                ));
            }
        } else if o.starts_with('~') {
            // Compiled (and its errors reported) with the snapshot.
        } else if let Err(why) = origin_pattern_ok(o) {
            errs.push(ConfigError::new(op, format!("{o:?} {why}")));
        }
    }
    for (k, m) in c.methods.iter().enumerate() {
        if m.is_empty() || http::Method::from_bytes(m.as_bytes()).is_err() || m == "*" {
            errs.push(ConfigError::new(
                format!("{p}.methods[{k}]"),
                format!("{m:?} is not a method (GET, POST, ...)"),
            ));
        }
    }
    for (key, list) in [("headers", &c.headers), ("expose", &c.expose)] {
        for (k, h) in list.iter().enumerate() {
            let star_ok = key == "headers" && h == "*";
            if !star_ok && http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    format!("{p}.{key}[{k}]"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
    }
    if c.max_age
        .is_some_and(|d| d.0.as_secs() > 86_400 || d.0.subsec_nanos() != 0)
    {
        errs.push(ConfigError::new(
            format!("{p}.max_age"),
            "must be whole seconds, at most 1d (browsers cap it lower still)",
        ));
    }
}

/// An exact origin or a `*.` wildcard: `scheme://host[:port]` or, for a wildcard,
/// optionally without the scheme; nothing after the authority.
fn origin_pattern_ok(o: &str) -> Result<(), &'static str> {
    if o == "null" {
        return Ok(());
    }
    let (scheme, rest) = match o.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, o),
    };
    if let Some(s) = scheme {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err("has an invalid scheme");
        }
    } else if !rest.starts_with("*.") {
        return Err("is not an origin: scheme://host[:port], *.domain, ~regex or *");
    }
    if rest.contains('/') || rest.is_empty() {
        return Err("is not an origin: no path, not even a trailing /");
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    // `[v6]` or `[v6]:port`, else `host` or `host:port`.
    let (host, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or("x"))),
            None => return Err("has an invalid host"),
        },
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("has an invalid port");
    }
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        && !host.contains("..")
        && !host.contains('*');
    if ok {
        Ok(())
    } else {
        Err("has an invalid host")
    }
}

/// Parses one `allow`/`deny` entry: a CIDR or a bare address.
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn ip_rules(errs: &mut Vec<ConfigError>, p: &str, ip: &IpRules) {
    for (key, list) in [("allow", &ip.allow), ("deny", &ip.deny)] {
        for (k, c) in list.iter().enumerate() {
            if parse_net(c).is_none() {
                errs.push(ConfigError::new(
                    format!("{p}.{key}[{k}]"),
                    format!("{c:?} is not a CIDR or an IP address"),
                ));
            }
        }
    }
}

fn compression(errs: &mut Vec<ConfigError>, p: &str, c: &Compression) {
    if c.algorithms.is_empty() {
        errs.push(ConfigError::new(
            format!("{p}.algorithms"),
            "list at least one of br, zstd, gzip",
        ));
    }
    let mut seen = Vec::new();
    for (k, a) in c.algorithms.iter().enumerate() {
        if seen.contains(a) {
            errs.push(ConfigError::new(
                format!("{p}.algorithms[{k}]"),
                format!("{} is listed twice", a.token()),
            ));
        }
        seen.push(*a);
    }
    for (k, t) in c.types.iter().enumerate() {
        if !media_range_ok(t) {
            errs.push(ConfigError::new(
                format!("{p}.types[{k}]"),
                format!("{t:?} is not a media type (type/subtype or type/*)"),
            ));
        }
    }
    for (key, level, range) in [
        ("gzip", c.levels.gzip, 1..=9),
        ("br", c.levels.br, 0..=11),
        ("zstd", c.levels.zstd, 1..=19),
    ] {
        if level.is_some_and(|l| !range.contains(&l)) {
            errs.push(ConfigError::new(
                format!("{p}.levels.{key}"),
                format!("must be between {} and {}", range.start(), range.end()),
            ));
        }
    }
    if let Some(d) = &c.decompress_requests {
        if d.max_size.0 < 1024 {
            errs.push(ConfigError::new(
                format!("{p}.decompress_requests.max_size"),
                "must be at least 1KiB",
            ));
        }
        if d.max_ratio < 2 {
            errs.push(ConfigError::new(
                format!("{p}.decompress_requests.max_ratio"),
                "must be at least 2",
            ));
        }
    }
}

fn media_range_ok(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, "*")) => token(ty),
        Some((ty, sub)) => token(ty) && token(sub),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> super::super::Config {
        let listeners = if yaml.contains("listeners:") {
            ""
        } else {
            "listeners: [ { name: l, address: \"127.0.0.1:1\" } ]\n"
        };
        let (cfg, problems) = super::super::load::parse_partial(
            &format!(
                "{listeners}upstreams: {{ u: {{ targets: [ {{ address: \"127.0.0.1:2\" }} ] }} }}\n{yaml}"
            ),
            &|_| None,
        );
        assert!(problems.is_empty(), "{problems:?}");
        cfg.expect("parsed")
    }

    fn paths(yaml: &str) -> Vec<(String, String)> {
        check(&cfg(yaml))
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    #[test]
    fn a_credentialed_wildcard_origin_is_refused_with_its_path() {
        let e = paths(
            "routes: [ { name: r, upstream: u, cors: { origins: [\"https://a.test\", \"*\"], credentials: true } } ]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "routes[0].cors.origins[1]");
        assert!(e[0].1.contains("credentials"), "{e:?}");
        // Without credentials `*` is fine.
        assert!(
            paths("routes: [ { name: r, upstream: u, cors: { origins: [\"*\"] } } ]\n").is_empty()
        );
    }

    #[test]
    fn bad_origins_methods_and_headers_are_named() {
        let e = paths(
            "routes: [ { name: r, upstream: u, cors: { origins: [\"https://a.test/\", \"a.test\", \"*.b.test\", \"http://c.test:8080\", \"https://*.d.test\", \"null\", \"http://x:99999\"], methods: [GET, \"B AD\"], headers: [\"*\", \"X Y\"], expose: [\"*\"], max_age: 2d } } ]\n",
        );
        let p: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            p,
            [
                "routes[0].cors.origins[0]",
                "routes[0].cors.origins[1]",
                "routes[0].cors.origins[6]",
                "routes[0].cors.methods[1]",
                "routes[0].cors.headers[1]",
                "routes[0].cors.max_age",
            ],
            "{e:?}"
        );
        let e = paths("routes: [ { name: r, upstream: u, cors: { origins: [] } } ]\n");
        assert_eq!(e[0].0, "routes[0].cors.origins");
    }

    #[test]
    fn invalid_cidrs_are_named_per_listener_and_route() {
        let e = paths(
            "listeners: [ { name: l, address: \"127.0.0.1:1\", ip: { deny: [\"10.0.0.0/33\"] } } ]\nroutes: [ { name: r, upstream: u, ip: { allow: [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\", \"nope\"], deny: [\"::1\"] } } ]\n",
        );
        let p: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            p,
            ["listeners[0].ip.deny[0]", "routes[0].ip.allow[3]"],
            "{e:?}"
        );
    }

    #[test]
    fn compression_settings_are_checked() {
        let e = paths(
            "routes: [ { name: r, upstream: u, compression: { algorithms: [gzip, gzip], types: [\"text/*\", \"json\", \"*/*\"], levels: { gzip: 10, br: 11 }, decompress_requests: { max_size: 10, max_ratio: 1 } }, max_headers: 0, max_url: 8 } ]\n",
        );
        let p: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            p,
            [
                "routes[0].compression.algorithms[1]",
                "routes[0].compression.types[1]",
                "routes[0].compression.types[2]",
                "routes[0].compression.levels.gzip",
                "routes[0].compression.decompress_requests.max_size",
                "routes[0].compression.decompress_requests.max_ratio",
                "routes[0].max_headers",
                "routes[0].max_url",
            ],
            "{e:?}"
        );
    }

    #[test]
    fn an_unknown_algorithm_is_refused_by_the_parser_with_its_path() {
        let (_, problems) = super::super::load::parse_partial(
            "routes: [ { name: r, upstream: u, compression: { algorithms: [gzip, lzma] } } ]\n",
            &|_| None,
        );
        assert!(
            problems
                .iter()
                .any(|e| e.path.starts_with("routes[0].compression.algorithms")
                    && e.message.contains("lzma")),
            "{problems:?}"
        );
    }
}
