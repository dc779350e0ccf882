//! API versions of a route (`routes[].versions`): which version a request names (the
//! first source of `from` that names one wins), the upstream that serves it, and the
//! deprecation fields its responses carry (RFC 9745 `Deprecation`, RFC 8594 `Sunset`,
//! `Link; rel="successor-version"`).
//!
//! A request naming a version that is not configured gets a 404 listing the versions;
//! one naming none gets `default` (or the same 404 without a default). Only configured
//! versions become metric labels: what a client names is never one.

use crate::config::route_traffic::{self as traffic, valid_version, VersionSource};
use crate::config::ConfigError;
use crate::error::Reject;
use crate::upstream::Upstream;
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
enum Source {
    Path,
    Header(HeaderName),
    MediaType,
}

/// One configured version.
pub struct Version {
    pub name: String,
    pub upstream: Arc<Upstream>,
    /// `gatehouse_version_requests_total{route, version}`.
    pub requests: IntCounter,
    /// `Deprecation`, `Sunset`, `Link` when the version is deprecated.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the cache keys on for this version (`cache::key::VaryOn::destination`).
    pub variant: Arc<str>,
}

pub struct Versions {
    sources: Vec<Source>,
    /// `from` lists `path`: the router tries a request's path without a leading `/vN`.
    pub from_path: bool,
    default: Option<usize>,
    versions: Vec<Version>,
    /// The configured names, for the 404.
    available: Arc<[String]>,
    /// `Vary` for the request fields a version may be named in: a cache in front of the
    /// gateway must not answer one version with another's response either.
    pub vary: Option<super::headers::VaryFields>,
}

/// The version a path names in its first segment (`/v2/orders/7` → `("2", "/orders/7")`,
/// `/v2` → `("2", "/")`), when that segment is `v` or `V` and a version name.
pub fn path_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (seg, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name = seg.strip_prefix(['v', 'V'])?;
    valid_version(name).then_some((name, tail))
}

/// Checks `versions` of the route at YAML path `p` against what only the checking pass
/// knows: the upstream names and the dates. Shapes are `config::traffic`'s.
pub fn check(
    p: &str,
    v: &traffic::Versions,
    upstreams: &dyn Fn(&str) -> bool,
    errs: &mut Vec<ConfigError>,
) {
    for (ver, up) in &v.upstreams {
        if !up.is_empty() && !upstreams(up) {
            errs.push(ConfigError::new(
                format!("{p}.upstreams.{ver}"),
                format!("unknown upstream {up:?}"),
            ));
        }
    }
    for (ver, d) in &v.deprecated {
        for (key, value) in [("since", &d.since), ("sunset", &d.sunset)] {
            if let Some(s) = value {
                if crate::clock::parse_instant(s).is_none() {
                    errs.push(ConfigError::new(
                        format!("{p}.deprecated.{ver}.{key}"),
                        format!("{s:?}: {}", crate::clock::instant_syntax()),
                    ));
                }
            }
        }
    }
}

impl Versions {
    /// The runtime form of a checked `versions` (`check` found every upstream and date);
    /// `loaded_unix` stands for a missing `since`.
    pub fn compile(
        route: &str,
        v: &traffic::Versions,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        loaded_unix: u64,
    ) -> Option<Versions> {
        let sources: Vec<Source> = v
            .from
            .iter()
            .filter_map(|s| {
                Some(match VersionSource::parse(s)? {
                    VersionSource::Path => Source::Path,
                    VersionSource::MediaType => Source::MediaType,
                    VersionSource::Header(h) => {
                        Source::Header(HeaderName::from_bytes(h.as_bytes()).ok()?)
                    }
                })
            })
            .collect();
        let m = crate::metrics::metrics();
        let mut versions = Vec::with_capacity(v.upstreams.len());
        for (name, up) in &v.upstreams {
            let upstream = upstreams.get(up)?.clone();
            let headers = v
                .deprecated
                .get(name)
                .map(|d| deprecation_headers(d, loaded_unix))
                .unwrap_or_default();
            versions.push(Version {
                name: name.clone(),
                upstream,
                requests: m.version_requests.with_label_values(&[route, name]),
                headers,
                variant: Arc::from(format!("version:{name}")),
            });
        }
        let default = v
            .default
            .as_ref()
            .and_then(|d| versions.iter().position(|x| &x.name == d));
        let vary = super::headers::VaryFields::new(sources.iter().filter_map(|s| match s {
            Source::Path => None,
            Source::Header(h) => Some(h.clone()),
            Source::MediaType => Some(http::header::ACCEPT),
        }));
        Some(Versions {
            vary,
            from_path: sources.iter().any(|s| matches!(s, Source::Path)),
            sources,
            default,
            available: versions.iter().map(|x| x.name.clone()).collect(),
            versions,
        })
    }

    /// The version of a request: `path` is what its first path segment named (when the
    /// router took it off), `headers` its fields.
    pub fn choose(&self, path: Option<&str>, headers: &HeaderMap) -> Result<&Version, Reject> {
        let named = self.sources.iter().find_map(|s| match s {
            Source::Path => path.map(Named::Valid),
            Source::Header(h) => header_version(headers, h),
            Source::MediaType => media_type_version(headers),
        });
        let found = match named {
            Some(Named::Valid(n)) => self.versions.iter().find(|v| v.name == n),
            Some(Named::Invalid) => None,
            None => self.default.map(|i| &self.versions[i]),
        };
        found.ok_or_else(|| Reject::UnknownVersion(self.available.clone()))
    }

    /// The upstream of every version, for whoever lists what a route reaches.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.versions.iter().map(|v| &v.upstream)
    }
}

/// What a source found: a version name, or a value that names no valid version (which
/// is a 404, not a fall-through to the next source).
enum Named<'a> {
    Valid(&'a str),
    Invalid,
}

/// `2`, `v2` or `V2` in a field; an empty or absent field names nothing.
fn header_version<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Named<'a>> {
    let v = headers.get(name)?;
    let Ok(s) = v.to_str() else {
        return Some(Named::Invalid);
    };
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let bare = match s.strip_prefix(['v', 'V']) {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
        _ => s,
    };
    Some(if valid_version(bare) {
        Named::Valid(bare)
    } else {
        Named::Invalid
    })
}

/// A version in `Accept`: a `version` parameter (`application/json; version=2`), or a
/// last subtype facet `v<N>` before any `+suffix` (`application/vnd.acme.v2+json`).
/// The first media range that names one wins.
fn media_type_version(headers: &HeaderMap) -> Option<Named<'_>> {
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(s) = value.to_str() else { continue };
        for range in s.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("version") {
                        let v = v.trim().trim_matches('"');
                        return Some(if valid_version(v) {
                            Named::Valid(v)
                        } else {
                            Named::Invalid
                        });
                    }
                }
            }
            let Some((_, subtype)) = media.split_once('/') else {
                continue;
            };
            let facets = subtype.split('+').next().unwrap_or("");
            if !facets.starts_with("vnd.") {
                continue;
            }
            let last = facets.rsplit('.').next().unwrap_or("");
            if let Some(n) = last.strip_prefix(['v', 'V']) {
                if n.starts_with(|c: char| c.is_ascii_digit()) {
                    return Some(if valid_version(n) {
                        Named::Valid(n)
                    } else {
                        Named::Invalid
                    });
                }
            }
        }
    }
    None
}

/// RFC 9745 `Deprecation: @<unix>`, RFC 8594 `Sunset: <HTTP-date>`, and the successor
/// `Link`. Values were checked (`check`, `config::traffic`), so none is refused here.
fn deprecation_headers(
    d: &traffic::Deprecated,
    loaded_unix: u64,
) -> Vec<(HeaderName, HeaderValue)> {
    let secs = |s: &Option<String>| {
        s.as_deref()
            .and_then(crate::clock::parse_instant)
            .map(|ns| ns / 1_000_000_000)
    };
    let mut out = Vec::new();
    let since = secs(&d.since).unwrap_or(loaded_unix);
    if let Ok(v) = HeaderValue::from_str(&format!("@{since}")) {
        out.push((HeaderName::from_static("deprecation"), v));
    }
    if let Some(sunset) = secs(&d.sunset) {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(sunset);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            out.push((HeaderName::from_static("sunset"), v));
        }
    }
    if let Some(link) = &d.link {
        if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"successor-version\"")) {
            out.push((http::header::LINK, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn named(n: Option<Named<'_>>) -> Option<Result<String, ()>> {
        n.map(|n| match n {
            Named::Valid(s) => Ok(s.to_string()),
            Named::Invalid => Err(()),
        })
    }

    #[test]
    fn path_versions_are_a_v_and_a_version_name() {
        assert_eq!(path_version("/v1/orders/7"), Some(("1", "/orders/7")));
        assert_eq!(path_version("/V2.1/x"), Some(("2.1", "/x")));
        assert_eq!(path_version("/v3"), Some(("3", "/")));
        assert_eq!(path_version("/v3/"), Some(("3", "/")));
        assert_eq!(path_version("/videos/1"), None);
        assert_eq!(path_version("/v/1"), None);
        assert_eq!(path_version("/1/x"), None);
        assert_eq!(path_version("/"), None);
    }

    #[test]
    fn header_and_media_type_forms() {
        let h = HeaderName::from_static("accept-version");
        assert_eq!(
            named(header_version(&headers(&[("accept-version", " v2 ")]), &h)),
            Some(Ok("2".into()))
        );
        assert_eq!(
            named(header_version(
                &headers(&[("accept-version", "2024-01-01")]),
                &h
            )),
            Some(Ok("2024-01-01".into()))
        );
        assert_eq!(
            named(header_version(
                &headers(&[("accept-version", "latest")]),
                &h
            )),
            Some(Err(()))
        );
        assert_eq!(
            named(header_version(&headers(&[("accept-version", "")]), &h)),
            None
        );
        assert_eq!(named(header_version(&headers(&[]), &h)), None);
        let accept = |v| named(media_type_version(&headers(&[("accept", v)])));
        assert_eq!(accept("application/vnd.acme.v2+json"), Some(Ok("2".into())));
        assert_eq!(
            accept("text/html, application/vnd.acme.v3"),
            Some(Ok("3".into()))
        );
        assert_eq!(accept("application/json; version=4"), Some(Ok("4".into())));
        assert_eq!(
            accept("application/json;q=0.9;Version=\"5\""),
            Some(Ok("5".into()))
        );
        assert_eq!(accept("application/json; version=x"), Some(Err(())));
        assert_eq!(accept("application/json, */*"), None);
        assert_eq!(accept("application/vnd.video+json"), None);
    }

    #[test]
    fn deprecation_fields_are_structured_date_and_http_date() {
        let d = traffic::Deprecated {
            sunset: Some("2027-06-30T00:00:00Z".into()),
            link: Some("/v2/orders".into()),
            since: Some("2026-01-01T00:00:00Z".into()),
        };
        let h = deprecation_headers(&d, 5);
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("deprecation").as_deref(), Some("@1767225600"));
        assert_eq!(
            get("sunset").as_deref(),
            Some("Wed, 30 Jun 2027 00:00:00 GMT")
        );
        assert_eq!(
            get("link").as_deref(),
            Some("</v2/orders>; rel=\"successor-version\"")
        );
        let h = deprecation_headers(&traffic::Deprecated::default(), 1234);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].1, "@1234");
    }
}
