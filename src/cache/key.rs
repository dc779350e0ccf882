//! Cache keys. The primary key names a URL: scheme, host, normalised path and query.
//! Everything else that selects a stored response is the variance: the route, the
//! response's own `Vary` fields, the route's extra `vary` headers, and — on an
//! authenticated route, for a response that is not explicitly shareable (`public` or
//! `s-maxage`) — the consumer.
//!
//! Keeping route and consumer out of the primary key gives one URL one primary slot,
//! which is what unsafe-method invalidation (RFC 9111 §4.4) and the purge API remove:
//! Pingora refuses any variant older than the primary slot's provenance, so deleting
//! the primary retires every variant of the URL at once.

use super::rules::{normalized_request_value, vary_names, Directives};
use super::storage::EntryTag;
use http::HeaderMap;
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{CacheKey, VarianceBuilder};
use std::sync::Arc;

/// Unambiguous encoding of the URL parts: each part is length-prefixed.
pub fn primary(https: bool, host: &str, path: &str, query: Option<&str>) -> Vec<u8> {
    let q = query.unwrap_or("");
    let mut out = Vec::with_capacity(host.len() + path.len() + q.len() + 24);
    out.extend_from_slice(if https { b"https" } else { b"http" });
    for part in [host, path, q] {
        out.push(b'|');
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(part.as_bytes());
    }
    // A URL without `?` and one with an empty query are different resources.
    out.push(if query.is_some() { b'?' } else { b'.' });
    out
}

/// The cache key of a request, tagged with its route and path for the purge API.
pub fn cache_key(
    https: bool,
    host: &str,
    path: &str,
    query: Option<&str>,
    route: &Arc<str>,
) -> CacheKey {
    let mut key = CacheKey::new(primary(https, host, path, query), "");
    key.extensions.insert(EntryTag {
        route: route.clone(),
        path: path.into(),
    });
    key
}

/// Hash of the primary slot of a URL (what invalidation removes).
pub fn primary_hash(https: bool, host: &str, path: &str, query: Option<&str>) -> HashBinary {
    CacheKey::new(primary(https, host, path, query), "").primary_bin()
}

/// Marks a `Vary` header that the request does not carry (distinct from an empty one;
/// header values cannot contain NUL).
const ABSENT: &[u8] = b"\0";

/// The variance of a request against a stored (or about to be stored) response.
pub fn variance(
    route: &str,
    response: &HeaderMap,
    route_vary: &[String],
    request: &HeaderMap,
    consumer: Option<&str>,
) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    vb.add_value("\0route", route);
    let mut names = vary_names(response);
    names.extend(route_vary.iter().cloned());
    for name in names {
        if name == "*" {
            continue; // never stored (rules::decide)
        }
        let value = normalized_request_value(request, &name)
            .map(String::into_bytes)
            .unwrap_or_else(|| ABSENT.to_vec());
        vb.add_owned_name_value(name, value);
    }
    if let Some(c) = consumer {
        let cc = Directives::from_headers(response);
        if !(cc.has("public") || cc.has("s-maxage")) {
            vb.add_value("\0consumer", c);
        }
    }
    vb.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn primary_parts_cannot_run_into_each_other() {
        assert_ne!(
            primary(false, "a", "/b", Some("c")),
            primary(false, "a/", "b", Some("c"))
        );
        assert_ne!(
            primary(false, "a", "/b", None),
            primary(false, "a", "/b", Some(""))
        );
        assert_ne!(
            primary(true, "a", "/b", None),
            primary(false, "a", "/b", None)
        );
    }

    #[test]
    fn vary_selects_on_request_values_and_absence() {
        let resp = headers(&[("vary", "Accept-Language, accept")]);
        let en = headers(&[("accept-language", "en"), ("accept", "*/*")]);
        let en_again = headers(&[("Accept-Language", " en "), ("accept", "*/*")]);
        let fr = headers(&[("accept-language", "fr"), ("accept", "*/*")]);
        let none = headers(&[("accept", "*/*")]);
        let empty = headers(&[("accept-language", ""), ("accept", "*/*")]);
        let v = |req: &HeaderMap| variance("r", &resp, &[], req, None);
        assert_eq!(v(&en), v(&en_again));
        assert_ne!(v(&en), v(&fr));
        assert_ne!(v(&none), v(&empty));
        assert_ne!(v(&en), v(&none));
    }

    #[test]
    fn consumer_is_part_of_the_variance_unless_shareable() {
        let req = headers(&[]);
        let private = headers(&[("cache-control", "max-age=60")]);
        let public = headers(&[("cache-control", "public, max-age=60")]);
        let shared = headers(&[("cache-control", "s-maxage=60")]);
        let v = |resp: &HeaderMap, c| variance("r", resp, &[], &req, c);
        assert_ne!(v(&private, Some("acme")), v(&private, Some("other")));
        assert_eq!(v(&public, Some("acme")), v(&public, Some("other")));
        assert_eq!(v(&shared, Some("acme")), v(&shared, Some("other")));
        assert_ne!(v(&private, Some("acme")), v(&private, None));
    }

    #[test]
    fn route_and_route_vary_headers_select_variants() {
        let resp = headers(&[]);
        let a = headers(&[("x-tenant", "a")]);
        let b = headers(&[("x-tenant", "b")]);
        let extra = vec!["x-tenant".to_string()];
        assert_ne!(
            variance("r1", &resp, &[], &a, None),
            variance("r2", &resp, &[], &a, None)
        );
        assert_ne!(
            variance("r", &resp, &extra, &a, None),
            variance("r", &resp, &extra, &b, None)
        );
        assert_eq!(
            variance("r", &resp, &[], &a, None),
            variance("r", &resp, &[], &b, None)
        );
    }
}
