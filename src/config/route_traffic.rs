//! The traffic-management keys of a route (contract: "Traffic management" in
//! docs/CONFIG.md): `versions`, `split` and `mirror`, and the shape checks on them.
//! References (upstream names, consumer ids) and dates are checked where the runtime
//! objects are built (`runtime::destination`).

use super::units::{Dur, Size};
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `routes[].versions`: the API versions of a route, each with its upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// Where a request names its version, in order of precedence: `path`,
    /// `header:NAME`, `media_type`.
    #[serde(default = "default_from")]
    pub from: Vec<String>,
    /// The version of a request that names none. Without it, such a request is a 404
    /// that lists the versions.
    #[serde(default)]
    pub default: Option<String>,
    /// Version name → upstream.
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
    #[serde(default)]
    pub deprecated: BTreeMap<String, Deprecated>,
}

fn default_from() -> Vec<String> {
    vec![
        "path".into(),
        "header:Accept-Version".into(),
        "media_type".into(),
    ]
}

/// `routes[].versions.deprecated.<version>`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecated {
    /// RFC 3339 UTC time after which the version may stop answering (`Sunset`).
    #[serde(default)]
    pub sunset: Option<String>,
    /// The successor's URI (`Link: <...>; rel="successor-version"`).
    #[serde(default)]
    pub link: Option<String>,
    /// Extension: RFC 3339 UTC time the version was deprecated (`Deprecation: @<unix>`).
    /// Without it, the time the config that marked it was loaded.
    #[serde(default)]
    pub since: Option<String>,
}

/// `routes[].split`: weights over upstreams, sticky by key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// `consumer` | `ip` | `header:NAME` | `cookie:NAME`; a request without the key is
    /// placed by its client address.
    #[serde(default = "default_split_key")]
    pub key: String,
    /// Upstream → weight. The upstreams are placed in name order.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// A request whose value of this field names an upstream of `weights` goes there.
    #[serde(default)]
    pub force_header: Option<String>,
    /// Extension: consumer id → upstream of `weights`, for testers.
    #[serde(default)]
    pub consumers: BTreeMap<String, String>,
}

fn default_split_key() -> String {
    "consumer".into()
}

/// `routes[].mirror`: a fire-and-forget copy of sampled requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub upstream: String,
    /// Share of requests copied, 0 to 100 (decimals allowed).
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// Requests with a larger body are not mirrored (counted as `too_large`).
    #[serde(default = "default_mirror_body")]
    pub max_body: Size,
    /// Copies in flight at once; one more is dropped and counted.
    #[serde(default = "default_mirror_inflight")]
    pub max_inflight: usize,
    /// Extension: a copy that has not been answered after this is abandoned (`failed`).
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Dur,
}

fn default_percent() -> f64 {
    100.0
}
fn default_mirror_body() -> Size {
    Size(64 * 1024)
}
fn default_mirror_inflight() -> usize {
    100
}
fn default_mirror_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// A version source of `versions.from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The first path segment: `/v2/...`.
    Path,
    /// A request field (`Accept-Version`, `X-API-Version`, ...).
    Header(String),
    /// A media-type parameter of `Accept`: `application/vnd.acme.v2+json`, `;version=2`.
    MediaType,
}

pub const VERSION_SOURCE_SYNTAX: &str = "path | header:NAME | media_type";

impl VersionSource {
    pub fn parse(s: &str) -> Option<VersionSource> {
        match s {
            "path" => Some(VersionSource::Path),
            "media_type" => Some(VersionSource::MediaType),
            _ => {
                let name = s.strip_prefix("header:")?;
                valid_field_name(name).then(|| VersionSource::Header(name.to_string()))
            }
        }
    }
}

/// The longest version name; what a request names is compared only when it fits.
pub const MAX_VERSION_LEN: usize = 32;

/// A version name: a digit, then letters, digits, `.`, `-` or `_` (`1`, `2.1`,
/// `2024-06-01`, `3beta`), at most `MAX_VERSION_LEN` bytes. The leading digit is what
/// tells a version path segment (`v2`) from an ordinary one (`videos`).
pub fn valid_version(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_VERSION_LEN
        && b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// A split key of `split.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitKey {
    Consumer,
    Ip,
    Header(String),
    Cookie(String),
}

pub const SPLIT_KEY_SYNTAX: &str = "consumer | ip | header:NAME | cookie:NAME";

impl SplitKey {
    pub fn parse(s: &str) -> Option<SplitKey> {
        match s {
            "consumer" => Some(SplitKey::Consumer),
            "ip" => Some(SplitKey::Ip),
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    return valid_field_name(name).then(|| SplitKey::Header(name.into()));
                }
                let name = s.strip_prefix("cookie:")?;
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                ok.then(|| SplitKey::Cookie(name.into()))
            }
        }
    }
}

/// A valid field name (an RFC 9110 token), as `hash_on` and the limit keys check it.
fn valid_field_name(s: &str) -> bool {
    http::HeaderName::from_bytes(s.as_bytes()).is_ok()
}

/// The upstreams a route may send to, by name and without repeats, whichever
/// destination it has (`upstream`, `versions`, `split` or `aggregate`).
pub fn destination_upstreams(r: &super::model::Route) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let named = std::iter::once(r.upstream.as_str())
        .chain(
            r.versions
                .iter()
                .flat_map(|v| v.upstreams.values().map(String::as_str)),
        )
        .chain(
            r.split
                .iter()
                .flat_map(|s| s.weights.keys().map(String::as_str)),
        )
        .chain(
            r.aggregate
                .iter()
                .flat_map(|a| a.calls.values().map(|c| c.upstream.as_str())),
        );
    for name in named {
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The destination keys a route sets, by YAML key: a route names exactly one.
pub fn destinations(r: &super::model::Route) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !r.upstream.is_empty() {
        out.push("upstream");
    }
    if r.versions.is_some() {
        out.push("versions.upstreams");
    }
    if r.split.is_some() {
        out.push("split.weights");
    }
    if r.aggregate.is_some() {
        out.push("aggregate");
    }
    out
}

/// Shape checks of `versions`, `split` and `mirror` of the route at YAML path `p`, and
/// that it names exactly one destination.
pub fn validate_route(p: &str, r: &super::model::Route, errs: &mut Vec<ConfigError>) {
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));
    let dests = destinations(r);
    match dests.as_slice() {
        [] => err(
            format!("{p}.upstream"),
            "missing: every route needs an upstream (or versions.upstreams, split.weights, aggregate)".into(),
        ),
        [_] => {}
        [first, rest @ ..] => {
            for other in rest {
                err(
                    format!("{p}.{other}"),
                    format!(
                        "a route names one destination (upstream, versions.upstreams, \
                         split.weights or aggregate): this one also has `{first}`"
                    ),
                );
            }
        }
    }
    if let Some(v) = &r.versions {
        versions(&format!("{p}.versions"), v, &mut err);
    }
    if let Some(s) = &r.split {
        split(&format!("{p}.split"), s, &mut err);
    }
    if let Some(m) = &r.mirror {
        let p = format!("{p}.mirror");
        if m.upstream.is_empty() {
            err(
                format!("{p}.upstream"),
                "missing: the upstream to copy requests to".into(),
            );
        }
        if !(0.0..=100.0).contains(&m.percent) {
            err(
                format!("{p}.percent"),
                format!("{} is not between 0 and 100", m.percent),
            );
        }
        if m.max_inflight == 0 {
            err(
                format!("{p}.max_inflight"),
                "must be at least 1 (to stop mirroring, remove `mirror` or set percent: 0)".into(),
            );
        }
        if m.timeout.0.is_zero() {
            err(format!("{p}.timeout"), "must be more than 0".into());
        }
    }
}

fn versions(p: &str, v: &Versions, err: &mut impl FnMut(String, String)) {
    if v.from.is_empty() {
        err(
            format!("{p}.from"),
            format!("empty: list where a request names its version ({VERSION_SOURCE_SYNTAX})"),
        );
    }
    let mut seen = Vec::new();
    for (i, s) in v.from.iter().enumerate() {
        if VersionSource::parse(s).is_none() {
            err(
                format!("{p}.from[{i}]"),
                format!("{s:?} must be {VERSION_SOURCE_SYNTAX}"),
            );
            continue;
        }
        // Field names are case-insensitive: `header:Accept-Version` twice, whatever case.
        let folded = s.to_ascii_lowercase();
        if seen.contains(&folded) {
            err(format!("{p}.from[{i}]"), format!("{s:?} is listed twice"));
        }
        seen.push(folded);
    }
    if v.upstreams.is_empty() {
        err(
            format!("{p}.upstreams"),
            "empty: a versioned route needs at least one version".into(),
        );
    }
    for (ver, up) in &v.upstreams {
        if !valid_version(ver) {
            err(
                format!("{p}.upstreams.{ver}"),
                format!(
                    "{ver:?} is not a version name (a digit, then letters, digits, . - _; at most {MAX_VERSION_LEN})"
                ),
            );
        }
        if up.is_empty() {
            err(
                format!("{p}.upstreams.{ver}"),
                "missing: the version's upstream".into(),
            );
        }
    }
    if let Some(d) = &v.default {
        if !v.upstreams.contains_key(d) {
            err(
                format!("{p}.default"),
                format!("{d:?} is not one of versions.upstreams"),
            );
        }
    }
    for (ver, d) in &v.deprecated {
        let dp = format!("{p}.deprecated.{ver}");
        if !v.upstreams.contains_key(ver) {
            err(
                dp.clone(),
                format!("{ver:?} is not one of versions.upstreams"),
            );
        }
        if let Some(link) = &d.link {
            let ok = !link.is_empty()
                && link
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'>' && b != b'<');
            if !ok {
                err(
                    format!("{dp}.link"),
                    "must be a URI reference (visible ASCII, no < or >)".into(),
                );
            }
        }
    }
}

fn split(p: &str, s: &Split, err: &mut impl FnMut(String, String)) {
    if SplitKey::parse(&s.key).is_none() {
        err(
            format!("{p}.key"),
            format!("{:?} must be {SPLIT_KEY_SYNTAX}", s.key),
        );
    }
    if s.weights.is_empty() {
        err(
            format!("{p}.weights"),
            "empty: list the upstreams to split between".into(),
        );
    } else if s.weights.values().all(|w| *w == 0) {
        err(
            format!("{p}.weights"),
            "at least one weight must be more than 0".into(),
        );
    }
    if let Some(h) = &s.force_header {
        if !valid_field_name(h) {
            err(
                format!("{p}.force_header"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    for (id, up) in &s.consumers {
        if !s.weights.contains_key(up) {
            err(
                format!("{p}.consumers.{id}"),
                format!("{up:?} is not one of split.weights"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> super::super::model::Route {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
    }

    fn errors(yaml: &str) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        validate_route("routes[0]", &route(yaml), &mut errs);
        errs.into_iter().map(|e| (e.path, e.message)).collect()
    }

    #[test]
    fn a_route_names_exactly_one_destination() {
        assert!(errors("{ name: r, upstream: u }").is_empty());
        assert!(errors("{ name: r, versions: { upstreams: { \"1\": a } } }").is_empty());
        assert!(errors("{ name: r, split: { weights: { a: 1 } } }").is_empty());
        let e = errors("{ name: r }");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "routes[0].upstream");
        assert!(e[0].1.starts_with("missing"), "{e:?}");
        let e = errors("{ name: r, upstream: u, split: { weights: { a: 1 } } }");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "routes[0].split.weights");
        assert!(e[0].1.contains("also has `upstream`"), "{e:?}");
        let e = errors(
            "{ name: r, upstream: u, versions: { upstreams: { \"1\": a } }, split: { weights: { a: 1 } } }",
        );
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["routes[0].versions.upstreams", "routes[0].split.weights"]
        );
    }

    #[test]
    fn version_shapes_are_checked_with_their_paths() {
        let e = errors(
            "{ name: r, versions: { from: [path, \"header:a b\", media, path], default: \"3\", upstreams: { \"1\": a, v2: b, \"2\": \"\" }, deprecated: { \"9\": {}, \"1\": { link: \"<x>\" } } } }",
        );
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].versions.from[1]",
                "routes[0].versions.from[2]",
                "routes[0].versions.from[3]",
                "routes[0].versions.upstreams.2",
                "routes[0].versions.upstreams.v2",
                "routes[0].versions.default",
                "routes[0].versions.deprecated.1.link",
                "routes[0].versions.deprecated.9",
            ],
            "{e:?}"
        );
        assert!(e[2].1.contains("twice"), "{e:?}");
        assert!(e[4].1.contains("not a version name"), "{e:?}");
        let e = errors("{ name: r, versions: { from: [], upstreams: {} } }");
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["routes[0].versions.from", "routes[0].versions.upstreams"]
        );
    }

    #[test]
    fn split_and_mirror_shapes_are_checked_with_their_paths() {
        let e = errors(
            "{ name: r, split: { key: user, weights: { a: 0, b: 0 }, force_header: \"X Canary\", consumers: { t: c } }, mirror: { upstream: \"\", percent: 101, max_inflight: 0, timeout: 0s } }",
        );
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].split.key",
                "routes[0].split.weights",
                "routes[0].split.force_header",
                "routes[0].split.consumers.t",
                "routes[0].mirror.upstream",
                "routes[0].mirror.percent",
                "routes[0].mirror.max_inflight",
                "routes[0].mirror.timeout",
            ],
            "{e:?}"
        );
        let e = errors("{ name: r, split: { weights: {} } }");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "routes[0].split.weights");
    }

    #[test]
    fn defaults_and_parsers() {
        let r = route("{ name: r, upstream: u, mirror: { upstream: m }, split: { weights: { a: 1 } }, versions: { upstreams: { \"1\": a } } }");
        let m = r.mirror.unwrap();
        assert_eq!(
            (m.percent, m.max_body.0, m.max_inflight),
            (100.0, 65536, 100)
        );
        assert_eq!(r.split.unwrap().key, "consumer");
        assert_eq!(
            r.versions.unwrap().from,
            ["path", "header:Accept-Version", "media_type"]
        );
        assert_eq!(
            SplitKey::parse("cookie:sid"),
            Some(SplitKey::Cookie("sid".into()))
        );
        assert_eq!(
            SplitKey::parse("header:X-User"),
            Some(SplitKey::Header("X-User".into()))
        );
        assert_eq!(SplitKey::parse("cookie:a=b"), None);
        assert_eq!(SplitKey::parse("path"), None);
        assert_eq!(
            VersionSource::parse("header:X-API-Version"),
            Some(VersionSource::Header("X-API-Version".into()))
        );
        assert!(
            valid_version("2024-06-01")
                && valid_version("2.1")
                && !valid_version("v2")
                && !valid_version("")
        );
        assert!(!valid_version(&"1".repeat(MAX_VERSION_LEN + 1)));
    }
}
