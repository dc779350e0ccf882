//! CORS (`routes[].cors`, the Fetch standard's CORS protocol) answered at the edge.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on a
//!   route with `cors` is answered by the gateway, 204, before authentication and
//!   limits (a browser never sends credentials on a preflight), and never reaches the
//!   upstream. It is routed as the request it announces (`preflight_method`), so a
//!   route matching only `GET` still gets its preflight.
//! - When the origin, the announced method and every announced header are allowed, the
//!   answer carries `Access-Control-Allow-Origin`/`-Methods`/`-Headers`/`-Max-Age`/
//!   `-Credentials`; otherwise it carries no CORS field at all, and the browser refuses
//!   the actual request. Either way it is not an error and nothing is forwarded.
//! - An actual request from an allowed origin gets `Access-Control-Allow-Origin` (the
//!   origin itself whenever `credentials` is on, `*` only for an `origins: ["*"]` route
//!   without credentials), `-Credentials` and `-Expose-Headers`, on the upstream's
//!   answer, a cached one, and the gateway's own rejections (so a script can read a 401
//!   or a 429). A disallowed origin gets no CORS field. The upstream's own
//!   `Access-Control-*` fields are removed on such a route: the gateway owns CORS there.
//! - `Vary: Origin` is on every answer of the route, and the cache keeps one variant per
//!   allowed origin (`cache_variant`; disallowed origins share one).

use crate::config::edge::Cors as Config;
use crate::config::ConfigError;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};

/// One entry of `origins`.
#[derive(Debug)]
enum OriginRule {
    /// `*`: any origin.
    Any,
    /// An exact origin, lower-cased (origins are compared ASCII case-insensitively).
    Exact(String),
    /// `[scheme://]*.suffix[:port]`: one or more labels before `.suffix`.
    Wildcard {
        scheme: Option<String>,
        /// `.suffix`, lower-cased, with the leading dot.
        suffix: String,
        port: Option<String>,
    },
    /// `~regex`, matched against the whole origin.
    Regex(regex::Regex),
}

impl OriginRule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginRule::Regex(re) => re.is_match(origin),
            OriginRule::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, authority)) = origin.split_once("://") else {
                    return false;
                };
                if scheme
                    .as_deref()
                    .is_some_and(|want| !want.eq_ignore_ascii_case(s))
                {
                    return false;
                }
                let (host, p) = match authority.rsplit_once(':') {
                    Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
                    _ => (authority, None),
                };
                if port.as_deref() != p {
                    return false;
                }
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host.starts_with('.')
            }
        }
    }
}

/// The compiled `cors` of one route: the answers' field values built once.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginRule>,
    /// `origins: ["*"]` without credentials: `Access-Control-Allow-Origin: *`.
    star: bool,
    credentials: bool,
    methods: Vec<http::Method>,
    allow_methods: HeaderValue,
    /// Lower-cased; `None` is `*` (any header).
    headers: Option<Vec<String>>,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

fn join(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl Cors {
    /// Compiles `routes[index].cors` (shape checked by `config::edge::check`); the
    /// `~regex` origins are compiled here, each error with its YAML path.
    pub fn compile(index: usize, c: &Config) -> Result<Cors, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut origins = Vec::with_capacity(c.origins.len());
        for (k, o) in c.origins.iter().enumerate() {
            let rule = if o == "*" {
                OriginRule::Any
            } else if let Some(re) = o.strip_prefix('~') {
                // Anchored: a pattern for `https://app.example.com` must not also
                // admit `https://app.example.com.evil.test`.
                match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(re) => OriginRule::Regex(re),
                    Err(e) => {
                        errs.push(ConfigError::new(
                            format!("routes[{index}].cors.origins[{k}]"),
                            format!(
                                "invalid regex: {}",
                                e.to_string().lines().last().unwrap_or("")
                            ),
                        ));
                        continue;
                    }
                }
            } else if o.contains("*.") {
                let (scheme, rest) = match o.split_once("://") {
                    Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
                    None => (None, o.as_str()),
                };
                let rest = rest.strip_prefix('*').unwrap_or(rest);
                let (suffix, port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p.to_string())),
                    None => (rest, None),
                };
                OriginRule::Wildcard {
                    scheme,
                    suffix: suffix.to_ascii_lowercase(),
                    port,
                }
            } else {
                OriginRule::Exact(o.to_ascii_lowercase())
            };
            origins.push(rule);
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let methods: Vec<String> = if c.methods.is_empty() {
            DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()
        } else {
            c.methods.clone()
        };
        let any_header = c.headers.iter().any(|h| h == "*");
        Ok(Cors {
            star: !c.credentials && matches!(origins.as_slice(), [OriginRule::Any]),
            origins,
            credentials: c.credentials,
            allow_methods: join(&methods).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            methods: methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            headers: (!any_header)
                .then(|| c.headers.iter().map(|h| h.to_ascii_lowercase()).collect()),
            allow_headers: if any_header { None } else { join(&c.headers) },
            expose: join(&c.expose),
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
        })
    }

    /// The request's `Origin` when this route allows it.
    fn allowed_origin<'r>(&self, req: &'r HeaderMap) -> Option<&'r HeaderValue> {
        let origin = req.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        self.origins.iter().any(|r| r.matches(s)).then_some(origin)
    }

    /// What `Access-Control-Allow-Origin` says to an allowed `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.star {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight: 204, with the CORS fields when everything it announces
    /// is allowed, without any otherwise. Never forwarded.
    pub fn preflight(&self, req: &RequestHeader) -> pingora::Result<Box<ResponseHeader>> {
        let mut resp = ResponseHeader::build(204, Some(8))?;
        let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        resp.insert_header(header::VARY, vary)?;
        resp.insert_header(header::CONTENT_LENGTH, "0")?;
        if let Some(fields) = self.preflight_fields(&req.headers) {
            for (name, value) in fields {
                resp.insert_header(name, value)?;
            }
        }
        Ok(Box::new(resp))
    }

    fn preflight_fields(&self, req: &HeaderMap) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let origin = self.allowed_origin(req)?;
        let method = req.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        if !self.methods.contains(&method) {
            return None;
        }
        let requested: Vec<&str> = req
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(allowed) = &self.headers {
            if !requested
                .iter()
                .all(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)))
            {
                return None;
            }
        }
        let mut out = vec![
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            ),
        ];
        let allow_headers = match &self.headers {
            Some(_) => self.allow_headers.clone(),
            // `headers: ["*"]`: the announced ones, echoed (a literal `*` means nothing
            // to a browser on a credentialed request).
            None if !requested.is_empty() => HeaderValue::from_str(&requested.join(", ")).ok(),
            None => None,
        };
        if let Some(h) = allow_headers {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if let Some(age) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        Some(out)
    }

    /// Appends to `out` the fields an actual request from an allowed origin gets on
    /// whatever answers it; none for a disallowed or absent origin.
    pub fn actual_fields(&self, req: &HeaderMap, out: &mut Vec<(HeaderName, HeaderValue)>) {
        let Some(origin) = self.allowed_origin(req) else {
            return;
        };
        out.push((
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        ));
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(e) = &self.expose {
            out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
        }
    }

    /// On every response of the route, before the gateway's own fields are added: the
    /// upstream's (or the stored) `Access-Control-*` fields removed, `Vary: Origin`
    /// added to whatever `Vary` it has.
    pub fn on_response(&self, resp: &mut ResponseHeader) {
        // Almost no response carries one: one pass over its names decides, instead of six
        // removals that each look the name up in both of Pingora's header maps.
        if resp
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-"))
        {
            for name in [
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::ACCESS_CONTROL_ALLOW_METHODS,
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                header::ACCESS_CONTROL_MAX_AGE,
            ] {
                resp.remove_header(&name);
            }
        }
        super::headers::add_vary(resp, "Origin");
    }

    /// What selects the cache variant of a request on this route: the allowed origin
    /// (lower-cased), or empty for a disallowed or absent one, so that a flood of made-up
    /// origins shares one variant.
    pub fn cache_variant(&self, req: &HeaderMap) -> Vec<u8> {
        self.allowed_origin(req)
            .map(|o| o.as_bytes().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// Whether `req` is a CORS preflight.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The method a request is routed by: a preflight's announced method (a preflight is
/// about that request, and a route that matches only `GET` must still answer it),
/// otherwise its own.
pub fn preflight_method(req: &RequestHeader) -> Option<http::Method> {
    if !is_preflight(req) {
        return None;
    }
    req.headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Cors {
        let c: Config = serde_yaml::from_str(yaml).unwrap();
        Cors::compile(0, &c).unwrap()
    }

    fn req(pairs: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("OPTIONS", b"/", None).unwrap();
        for (k, v) in pairs {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn origins_match_exactly_by_wildcard_and_by_anchored_regex() {
        let c = cors(
            "{ origins: [\"https://App.example.com\", \"*.example.org\", \"https://*.example.net:8443\", \"~https://[a-z]+\\\\.example\\\\.io\"] }",
        );
        let ok = |o: &str| c.origins.iter().any(|r| r.matches(o));
        assert!(ok("https://app.example.com"));
        assert!(!ok("https://app.example.com.evil.test"));
        assert!(!ok("http://app.example.com"));
        assert!(ok("https://a.example.org") && ok("http://a.b.example.org"));
        assert!(
            !ok("https://example.org"),
            "the bare domain is not a subdomain"
        );
        assert!(!ok("https://evilexample.org"));
        assert!(ok("https://x.example.net:8443"));
        assert!(!ok("http://x.example.net:8443") && !ok("https://x.example.net"));
        assert!(ok("https://abc.example.io"));
        assert!(!ok("https://abc.example.io.evil.test"), "anchored");
    }

    #[test]
    fn a_preflight_gets_fields_only_when_everything_announced_is_allowed() {
        let c = cors(
            "{ origins: [\"https://a.test\"], methods: [GET, PUT], headers: [Authorization, Content-Type], credentials: true, max_age: 10m }",
        );
        let good = req(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ]);
        let r = c.preflight(&good).unwrap();
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(r.status, 204);
        assert_eq!(
            h("access-control-allow-origin").as_deref(),
            Some("https://a.test")
        );
        assert_eq!(
            h("access-control-allow-methods").as_deref(),
            Some("GET, PUT")
        );
        assert_eq!(
            h("access-control-allow-headers").as_deref(),
            Some("Authorization, Content-Type")
        );
        assert_eq!(h("access-control-max-age").as_deref(), Some("600"));
        assert_eq!(
            h("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        for bad in [
            req(&[
                ("origin", "https://b.test"),
                ("access-control-request-method", "GET"),
            ]),
            req(&[
                ("origin", "https://a.test"),
                ("access-control-request-method", "DELETE"),
            ]),
            req(&[
                ("origin", "https://a.test"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-secret"),
            ]),
        ] {
            let r = c.preflight(&bad).unwrap();
            assert_eq!(r.status, 204);
            assert!(
                r.headers
                    .keys()
                    .all(|k| !k.as_str().starts_with("access-control-")),
                "{:?}",
                r.headers
            );
            assert!(r.headers.get("vary").is_some());
        }
    }

    #[test]
    fn star_is_sent_only_without_credentials_and_any_header_is_echoed() {
        let c = cors("{ origins: [\"*\"], headers: [\"*\"] }");
        let r = req(&[
            ("origin", "https://z.test"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "X-One,x-two"),
        ]);
        let resp = c.preflight(&r).unwrap();
        assert_eq!(resp.headers["access-control-allow-origin"], "*");
        assert_eq!(resp.headers["access-control-allow-headers"], "X-One, x-two");
        let fields = |c: &Cors, r: &RequestHeader| {
            let mut out = Vec::new();
            c.actual_fields(&r.headers, &mut out);
            out
        };
        let f = fields(&c, &r);
        assert_eq!(f[0].1, "*");
        let c = cors("{ origins: [\"https://z.test\"], credentials: true, expose: [RateLimit] }");
        let f = fields(&c, &r);
        assert_eq!(f[0].1, "https://z.test", "the origin itself, never *");
        assert_eq!(f.len(), 3);
        assert!(fields(&c, &req(&[("origin", "https://y.test")])).is_empty());
    }

    #[test]
    fn variants_key_on_allowed_origins_only() {
        let c = cors("{ origins: [\"*.a.test\"] }");
        let v = |o: &str| c.cache_variant(&req(&[("origin", o)]).headers);
        assert_eq!(v("https://x.a.test"), b"https://x.a.test");
        assert_eq!(v("https://evil.test"), Vec::<u8>::new());
        assert_eq!(v("https://other.test"), v("https://evil.test"));
        assert_eq!(c.cache_variant(&req(&[]).headers), Vec::<u8>::new());
    }

    #[test]
    fn a_bad_regex_is_named_by_its_path() {
        let c: Config = serde_yaml::from_str("{ origins: [\"https://a.test\", \"~(\"] }").unwrap();
        let e = Cors::compile(3, &c).unwrap_err();
        assert_eq!(e[0].path, "routes[3].cors.origins[1]");
        assert!(e[0].message.starts_with("invalid regex"), "{e:?}");
    }

    #[test]
    fn vary_is_added_once() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("vary", "accept-encoding, ORIGIN").unwrap();
        super::super::headers::add_vary(&mut r, "Origin");
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
        super::super::headers::add_vary(&mut r, "Accept-Language");
        assert_eq!(r.headers.get_all("vary").iter().count(), 2);
    }
}
