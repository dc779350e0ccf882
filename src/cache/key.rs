//! Cache keys. The primary key names a URL: scheme, the authority the upstream is sent
//! (host and port, as `Host`), normalised path and query. Everything else that selects a
//! stored response is the variance: the route, the response's own `Vary` fields, the
//! route's extra `vary` headers, the URL-building fields a trusted proxy forwarded (on a
//! route with `trust_forwarded_headers`), and — on an authenticated route, for a
//! response that is not explicitly shareable (`public` or `s-maxage`) — every identity
//! fact the upstream is told: consumer, subject and scopes.
//!
//! The rule behind each part: whatever the upstream receives and may answer
//! differently for is either in the key or not forwarded. Several end users can be one
//! consumer (`jwt_subjects`, `consumer_claim`); the upstream sees their subject and
//! scopes and may personalise on them, so they select the variant too.
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

/// What selects a variant besides the response's own `Vary`: facts about the request
/// the gateway decided, not fields to read from it.
#[derive(Debug, Default, Clone, Copy)]
pub struct VaryOn<'a> {
    pub route: &'a str,
    /// The route's `cache.vary` field names.
    pub route_vary: &'a [String],
    /// Request fields forwarded as the client (a trusted proxy) sent them, keyed on
    /// their exact values: the route trusts forwarded fields and the peer is trusted.
    pub forwarded: &'a [&'a str],
    /// The identity fields sent to the upstream (`policy::headers::identity_fields`);
    /// empty for an anonymous request.
    pub identity: &'a [(&'a str, http::HeaderValue)],
    /// On a route with `cors`: the request's origin when the route allows it, empty
    /// otherwise (`policy::cors::Cors::cache_variant`), so each allowed origin has its
    /// own variant and every other origin shares one.
    pub cors_origin: Option<&'a [u8]>,
    /// The route compresses for each client (`compression`) and asks the upstream for
    /// identity: the stored response cannot depend on the client's `Accept-Encoding`,
    /// so a `Vary: Accept-Encoding` from the upstream does not split the one copy.
    pub identity_coding: bool,
    /// The API version or split side chosen for the request (`version:2`,
    /// `split:orders-canary`); empty for a route with one upstream. A response of one
    /// never answers a request for another.
    pub destination: &'a str,
}

/// The variance of a request against a stored (or about to be stored) response.
pub fn variance(on: &VaryOn<'_>, response: &HeaderMap, request: &HeaderMap) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    vb.add_value("\0route", on.route);
    if let Some(origin) = on.cors_origin {
        vb.add_value("\0cors-origin", origin);
    }
    if !on.destination.is_empty() {
        vb.add_value("\0destination", on.destination);
    }
    let mut names = vary_names(response);
    names.extend(on.route_vary.iter().cloned());
    for name in names {
        if name == "*" {
            continue; // never stored (rules::decide)
        }
        if on.identity_coding && name.eq_ignore_ascii_case("accept-encoding") {
            continue;
        }
        let value = normalized_request_value(request, &name)
            .map(String::into_bytes)
            .unwrap_or_else(|| ABSENT.to_vec());
        vb.add_owned_name_value(name, value);
    }
    for name in on.forwarded {
        // Exact bytes, every copy in order: the upstream reads them as sent.
        let mut value = Vec::new();
        let mut seen = false;
        for (i, v) in request.get_all(*name).iter().enumerate() {
            if i > 0 {
                value.push(b'\n'); // cannot occur in a field value
            }
            value.extend_from_slice(v.as_bytes());
            seen = true;
        }
        if !seen {
            value = ABSENT.to_vec();
        }
        vb.add_owned_name_value(format!("\0fwd:{name}"), value);
    }
    if !on.identity.is_empty() {
        let cc = Directives::from_headers(response);
        if !(cc.has("public") || cc.has("s-maxage")) {
            for (name, value) in on.identity {
                vb.add_owned_name_value(format!("\0id:{name}"), value.as_bytes().to_vec());
            }
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
        let on = VaryOn {
            route: "r",
            ..VaryOn::default()
        };
        let v = |req: &HeaderMap| variance(&on, &resp, req);
        assert_eq!(v(&en), v(&en_again));
        assert_ne!(v(&en), v(&fr));
        assert_ne!(v(&none), v(&empty));
        assert_ne!(v(&en), v(&none));
    }

    fn fields(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, http::HeaderValue)> {
        pairs
            .iter()
            .map(|(n, v)| (*n, http::HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn every_identity_fact_is_part_of_the_variance_unless_shareable() {
        let req = headers(&[]);
        let private = headers(&[("cache-control", "max-age=60")]);
        let public = headers(&[("cache-control", "public, max-age=60")]);
        let shared = headers(&[("cache-control", "s-maxage=60")]);
        let acme = fields(&[("x-consumer-id", "acme")]);
        let other = fields(&[("x-consumer-id", "other")]);
        let alice = fields(&[
            ("x-consumer-id", "p"),
            ("x-auth-subject", "alice"),
            ("x-auth-scopes", "r"),
        ]);
        let bob = fields(&[
            ("x-consumer-id", "p"),
            ("x-auth-subject", "bob"),
            ("x-auth-scopes", "r"),
        ]);
        let alice_rw = fields(&[
            ("x-consumer-id", "p"),
            ("x-auth-subject", "alice"),
            ("x-auth-scopes", "r w"),
        ]);
        let no_subject = fields(&[("x-consumer-id", "p"), ("x-auth-scopes", "r")]);
        let v = |resp: &HeaderMap, id: &[(&str, http::HeaderValue)]| {
            let on = VaryOn {
                route: "r",
                identity: id,
                ..VaryOn::default()
            };
            variance(&on, resp, &req)
        };
        assert_ne!(v(&private, &acme), v(&private, &other));
        assert_ne!(
            v(&private, &alice),
            v(&private, &bob),
            "one consumer, two subjects"
        );
        assert_ne!(v(&private, &alice), v(&private, &alice_rw), "other scopes");
        assert_ne!(v(&private, &alice), v(&private, &no_subject));
        assert_eq!(v(&private, &alice), v(&private, &alice.clone()));
        assert_eq!(v(&public, &alice), v(&public, &other));
        assert_eq!(v(&shared, &bob), v(&shared, &acme));
        assert_ne!(v(&private, &acme), v(&private, &[]));
    }

    #[test]
    fn trusted_forwarded_fields_select_variants_on_their_exact_values() {
        let resp = headers(&[]);
        let names = ["x-forwarded-host", "forwarded"];
        let trusted = VaryOn {
            route: "r",
            forwarded: &names,
            ..VaryOn::default()
        };
        let v = |on: &VaryOn, req: &[(&str, &str)]| variance(on, &resp, &headers(req));
        let a = [("x-forwarded-host", "a.example")];
        assert_eq!(v(&trusted, &a), v(&trusted, &a));
        assert_ne!(
            v(&trusted, &a),
            v(&trusted, &[("x-forwarded-host", "b.example")])
        );
        assert_ne!(v(&trusted, &a), v(&trusted, &[]));
        assert_ne!(v(&trusted, &[]), v(&trusted, &[("x-forwarded-host", "")]));
        assert_ne!(
            v(
                &trusted,
                &[("forwarded", "host=a"), ("forwarded", "proto=https")]
            ),
            v(&trusted, &[("forwarded", "host=a, proto=https")]),
            "two fields are not one list: keyed as sent"
        );
        // Not trusted: the fields were removed before the lookup, and are not keyed.
        let plain = VaryOn {
            route: "r",
            ..VaryOn::default()
        };
        assert_eq!(v(&plain, &a), v(&plain, &[]));
    }

    #[test]
    fn cors_routes_keep_one_variant_per_allowed_origin() {
        let resp = headers(&[]);
        let req = headers(&[]);
        let on = |origin| VaryOn {
            route: "r",
            cors_origin: origin,
            ..VaryOn::default()
        };
        let a: &[u8] = b"https://a.test";
        let b: &[u8] = b"https://b.test";
        assert_ne!(
            variance(&on(Some(a)), &resp, &req),
            variance(&on(Some(b)), &resp, &req)
        );
        assert_ne!(
            variance(&on(Some(a)), &resp, &req),
            variance(&on(Some(b"")), &resp, &req)
        );
        assert_eq!(
            variance(&on(Some(a)), &resp, &req),
            variance(&on(Some(a)), &resp, &req)
        );
    }

    #[test]
    fn accept_encoding_does_not_split_a_route_that_compresses_itself() {
        let resp = headers(&[("vary", "Accept-Encoding")]);
        let gz = headers(&[("accept-encoding", "gzip")]);
        let br = headers(&[("accept-encoding", "br")]);
        let on = |identity_coding| VaryOn {
            route: "r",
            identity_coding,
            ..VaryOn::default()
        };
        assert_eq!(
            variance(&on(true), &resp, &gz),
            variance(&on(true), &resp, &br)
        );
        assert_ne!(
            variance(&on(false), &resp, &gz),
            variance(&on(false), &resp, &br)
        );
    }

    #[test]
    fn route_and_route_vary_headers_select_variants() {
        let resp = headers(&[]);
        let a = headers(&[("x-tenant", "a")]);
        let b = headers(&[("x-tenant", "b")]);
        let extra = vec!["x-tenant".to_string()];
        let on = |route, route_vary| VaryOn {
            route,
            route_vary,
            ..VaryOn::default()
        };
        assert_ne!(
            variance(&on("r1", &[]), &resp, &a),
            variance(&on("r2", &[]), &resp, &a)
        );
        assert_ne!(
            variance(&on("r", &extra), &resp, &a),
            variance(&on("r", &extra), &resp, &b)
        );
        assert_eq!(
            variance(&on("r", &[]), &resp, &a),
            variance(&on("r", &[]), &resp, &b)
        );
    }

    #[test]
    fn the_chosen_version_or_split_side_selects_variants() {
        let resp = headers(&[]);
        let req = headers(&[]);
        let on = |destination| VaryOn {
            route: "r",
            destination,
            ..VaryOn::default()
        };
        let v = |d| variance(&on(d), &resp, &req);
        assert_ne!(v("version:1"), v("version:2"));
        assert_ne!(v("split:a"), v("split:b"));
        assert_ne!(v("version:1"), v(""));
        assert_eq!(v("split:a"), v("split:a"));
    }
}
