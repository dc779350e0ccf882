//! The file format of body transforms (`routes[].request_body`, `routes[].response_body`)
//! and response aggregation (`routes[].aggregate`), with their shape checks. The runtime
//! forms are `policy::transform` and `proxy::aggregate`; `runtime::Snapshot::compile`
//! builds them from these.

use super::model::{Config, Route};
use super::units::{Dur, Size};
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default bound of a body the gateway holds to transform it. A request body must fit in
/// the proxy's replay buffer (`REQUEST_BODY_LIMIT`), so requests have a smaller one.
pub const DEFAULT_RESPONSE_MAX_SIZE: u64 = 1024 * 1024;
/// A request body is read whole before anything is sent upstream, into the buffer Pingora
/// keeps to replay a body on a retry (64 KiB in Pingora 0.9): that is what lets a
/// transformed body go out with its own `Content-Length`, and an invalid one be refused
/// before any upstream sees a byte. So this is both the default and the most allowed.
pub const REQUEST_BODY_LIMIT: u64 = 64 * 1024;
/// Calls one aggregate route may make (each one is a request to an upstream per client
/// request: the bound keeps a config from multiplying traffic without limit).
pub const MAX_CALLS: usize = 16;
pub const DEFAULT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// JSON operations, applied in this order: `remove`, `rename`, `set`, `add`. Keys are
/// JSON Pointers (RFC 6901, `~0` for `~`, `~1` for `/`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonOps {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// `from: to`: the value moves (a missing `from` does nothing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// `pointer: value`, replacing what is there, creating missing parent objects.
    /// Strings may hold `${consumer}`, `${subject}` and `${header:NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, serde_json::Value>,
    /// Like `set`, only where nothing is there yet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    #[serde(default)]
    pub json: Option<JsonOps>,
    /// Larger bodies are refused with 413 (default and most: 64KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Size>,
}

/// What a response that cannot be transformed (not valid JSON or XML, or over
/// `max_size`) becomes.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// 502 problem+json (the client never gets a body the route meant to change).
    #[default]
    Fail,
    /// The upstream's body as it came.
    Pass,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseBody {
    #[serde(default)]
    pub json: Option<JsonOps>,
    /// An XML response (`application/xml`, `text/xml`, `+xml`) becomes JSON.
    #[serde(default)]
    pub xml_to_json: bool,
    /// Larger bodies are not held (default 1MiB, at most 64MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Size>,
    #[serde(default)]
    pub on_invalid: OnInvalid,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AggregateOnError {
    /// 502 problem+json naming the call that failed.
    #[default]
    Fail,
    /// The call's key carries `{"error": "..."}`.
    Omit,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    #[serde(default)]
    pub on_error: AggregateOnError,
    #[serde(default)]
    pub calls: BTreeMap<String, Call>,
    /// Bound of each call's response body (default 1MiB, at most 64MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Size>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Call {
    #[serde(default)]
    pub upstream: String,
    /// The call's path; `{name}` is the route's `path_regex` group of that name.
    #[serde(default)]
    pub path: String,
    /// Whole call: connect, send, response (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// The three runtime forms a transform value may hold. Config loading leaves them in
/// place (`load::interpolate_value`); every other `${...}` is the environment.
pub fn is_runtime_reference(expr: &str) -> bool {
    expr == "consumer"
        || expr == "subject"
        || expr
            .strip_prefix("header:")
            .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok())
}

/// True when the YAML path is inside a transform's `set` or `add` values, where the
/// runtime forms are kept for the request to fill.
pub fn is_transform_value_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("routes[") else {
        return false;
    };
    let Some((_, rest)) = rest.split_once("].") else {
        return false;
    };
    [
        "request_body.json.set.",
        "request_body.json.add.",
        "response_body.json.set.",
        "response_body.json.add.",
    ]
    .iter()
    .any(|p| rest.starts_with(p))
}

/// Why `s` is not a JSON Pointer usable as an operation's target.
pub fn pointer_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some(
            "the empty pointer names the whole document; name a member (\"/field\")".into(),
        );
    }
    if !s.starts_with('/') {
        return Some(format!(
            "{s:?} is not a JSON Pointer (it must start with /)"
        ));
    }
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'~' && !matches!(b.get(i + 1), Some(b'0') | Some(b'1')) {
            return Some(format!(
                "{s:?}: `~` must be followed by 0 (for ~) or 1 (for /)"
            ));
        }
    }
    None
}

/// The `{name}` placeholders of a call's path, in order; `Err` for an unclosed `{`.
pub fn placeholders(path: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{path:?} has a `{{` without its `}}`"))?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{{{name}}} in {path:?} is not a capture name"));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

fn json_ops(errs: &mut Vec<ConfigError>, p: &str, ops: &JsonOps) {
    for (k, ptr) in ops.remove.iter().enumerate() {
        if let Some(e) = pointer_error(ptr) {
            errs.push(ConfigError::new(format!("{p}.remove[{k}]"), e));
        }
    }
    for (from, to) in &ops.rename {
        for ptr in [from, to] {
            if let Some(e) = pointer_error(ptr) {
                errs.push(ConfigError::new(format!("{p}.rename.{from}"), e));
            }
        }
        if to.starts_with(&format!("{from}/")) || to == from {
            errs.push(ConfigError::new(
                format!("{p}.rename.{from}"),
                format!("cannot move {from:?} into itself ({to:?})"),
            ));
        }
    }
    for (key, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (ptr, value) in map {
            if let Some(e) = pointer_error(ptr) {
                errs.push(ConfigError::new(format!("{p}.{key}.{ptr}"), e));
            }
            if let Some(s) = value.as_str() {
                if let Some(e) = template_error(s) {
                    errs.push(ConfigError::new(format!("{p}.{key}.{ptr}"), e));
                }
            }
        }
    }
}

/// A `${header:...}` whose name is not a header name (left in place by loading as an
/// unknown form, it would otherwise be sent literally).
fn template_error(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let body = &rest[i + 2..];
        let end = body.find('}')?;
        let expr = &body[..end];
        if let Some(h) = expr.strip_prefix("header:") {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Some(format!("${{header:{h}}}: {h:?} is not a header name"));
            }
        }
        rest = &body[end + 1..];
    }
    None
}

fn size_at_most(errs: &mut Vec<ConfigError>, p: &str, s: Option<Size>, max: u64) {
    if let Some(Size(n)) = s {
        if n == 0 || n > max {
            errs.push(ConfigError::new(
                p,
                format!("must be between 1 byte and {max} bytes"),
            ));
        }
    }
}

/// The checks of one route's `request_body`, `response_body` and `aggregate`.
pub fn validate_route(cfg: &Config, p: &str, r: &Route) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    if let Some(rb) = &r.request_body {
        match &rb.json {
            Some(ops) => json_ops(&mut errs, &format!("{p}.request_body.json"), ops),
            None => errs.push(ConfigError::new(
                format!("{p}.request_body.json"),
                "missing: request_body transforms JSON (json: { remove, rename, set, add })",
            )),
        }
        size_at_most(
            &mut errs,
            &format!("{p}.request_body.max_size"),
            rb.max_size,
            REQUEST_BODY_LIMIT,
        );
    }
    if let Some(rb) = &r.response_body {
        if let Some(ops) = &rb.json {
            json_ops(&mut errs, &format!("{p}.response_body.json"), ops);
        } else if !rb.xml_to_json {
            errs.push(ConfigError::new(
                format!("{p}.response_body"),
                "does nothing without json: or xml_to_json: true",
            ));
        }
        size_at_most(
            &mut errs,
            &format!("{p}.response_body.max_size"),
            rb.max_size,
            64 * 1024 * 1024,
        );
    }
    if let Some(a) = &r.aggregate {
        aggregate(cfg, &mut errs, p, r, a);
    }
    errs
}

fn aggregate(cfg: &Config, errs: &mut Vec<ConfigError>, p: &str, r: &Route, a: &Aggregate) {
    let ap = format!("{p}.aggregate");
    size_at_most(
        errs,
        &format!("{ap}.max_size"),
        a.max_size,
        64 * 1024 * 1024,
    );
    let mut err = |path: String, m: String| errs.push(ConfigError::new(path, m));
    // The destinations of a route are exclusive: it proxies or it aggregates.
    if !r.upstream.is_empty() {
        err(
            format!("{p}.upstream"),
            "a route with aggregate has no upstream (each call names its own)".into(),
        );
    }
    for (key, set) in [
        ("cache", r.cache.is_some()),
        ("request_body", r.request_body.is_some()),
        ("response_body", r.response_body.is_some()),
        ("strip_prefix", r.strip_prefix.is_some()),
    ] {
        if set {
            err(
                format!("{p}.{key}"),
                "does not apply to an aggregate route (it answers from its calls, not by proxying)"
                    .into(),
            );
        }
    }
    if a.calls.is_empty() {
        err(
            format!("{ap}.calls"),
            "at least one call is required".into(),
        );
    }
    if a.calls.len() > MAX_CALLS {
        err(
            format!("{ap}.calls"),
            format!("at most {MAX_CALLS} calls ({} given)", a.calls.len()),
        );
    }
    let groups: Vec<String> = match &r.matches.path_regex {
        Some(re) => regex::Regex::new(re)
            .map(|re| re.capture_names().flatten().map(str::to_string).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for (name, c) in &a.calls {
        let cp = format!("{ap}.calls.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            err(
                cp.clone(),
                "a call name is 1 to 64 letters, digits, _ or -".into(),
            );
        }
        if c.upstream.is_empty() {
            err(
                format!("{cp}.upstream"),
                "missing: every call names an upstream".into(),
            );
        } else if !cfg.upstreams.contains_key(&c.upstream) {
            err(
                format!("{cp}.upstream"),
                format!("unknown upstream {:?}", c.upstream),
            );
        }
        if !c.path.starts_with('/') {
            err(format!("{cp}.path"), "must start with /".into());
        }
        match placeholders(&c.path) {
            Err(e) => err(format!("{cp}.path"), e),
            Ok(names) => {
                for n in names {
                    if !groups.iter().any(|g| g == n) {
                        err(
                            format!("{cp}.path"),
                            format!(
                                "{{{n}}} is not a named group of match.path_regex (write (?P<{n}>...))"
                            ),
                        );
                    }
                }
            }
        }
        if let Some(t) = c.timeout {
            if t.0 < std::time::Duration::from_millis(1)
                || t.0 > std::time::Duration::from_secs(300)
            {
                err(format!("{cp}.timeout"), "must be between 1ms and 5m".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load, validate};

    const HEAD: &str = "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\n\
        upstreams:\n  u: { targets: [ { address: \"127.0.0.1:2\" } ] }\n  v: { targets: [ { address: \"127.0.0.1:3\" } ] }\n";

    /// (path, message) of every error for `routes` (the routes: section).
    fn errors(routes: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let yaml = format!("{HEAD}routes:\n{routes}");
        let (cfg, mut errs) = load::parse_partial(&yaml, env);
        if let Some(cfg) = cfg {
            errs.extend(validate::validate(&cfg));
        }
        errs.into_iter().map(|e| (e.path, e.message)).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn transforms_and_aggregates_that_are_well_formed_pass() {
        let got = errors(
            "  - { name: a, upstream: u, request_body: { json: { set: { /m/c: \"${consumer}\", \"/m/h\": \"${header:X-T}\" }, remove: [/x, \"/a~1b\"], rename: { /id: /order_id } }, max_size: 64KiB }, response_body: { xml_to_json: true, on_invalid: pass } }\n\
             \x20 - { name: b, match: { path_regex: \"^/c/(?P<id>[0-9]+)$\" }, aggregate: { on_error: omit, calls: { one: { upstream: u, path: \"/o/{id}\", timeout: 2s }, two: { upstream: v, path: /static } } } }\n",
            &no_env,
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn each_error_with_its_yaml_path() {
        let got = errors(
            "  - { name: a, upstream: u, request_body: { json: { set: { meta: 1 }, remove: [\"/a~2\", \"\"], rename: { /a: /a/b } }, max_size: 1MiB } }\n\
             \x20 - { name: b, upstream: u, match: { path_regex: \"^/c/(?P<id>[0-9]+)$\" }, cache: {}, aggregate: { calls: { \"bad name\": { upstream: nope, path: \"/o/{id}/{other}\", timeout: 10m }, two: { upstream: v, path: \"x{\" } } } }\n\
             \x20 - { name: c, aggregate: { calls: {} } }\n\
             \x20 - { name: d, upstream: u, request_body: { max_size: 1KiB }, response_body: { on_invalid: pass } }\n",
            &no_env,
        );
        let want: &[(&str, &str)] = &[
            (
                "routes[0].request_body.json.remove[0]",
                "`~` must be followed by 0",
            ),
            ("routes[0].request_body.json.remove[1]", "the empty pointer"),
            (
                "routes[0].request_body.json.rename./a",
                "cannot move \"/a\" into itself",
            ),
            (
                "routes[0].request_body.json.set.meta",
                "is not a JSON Pointer",
            ),
            (
                "routes[0].request_body.max_size",
                "between 1 byte and 65536 bytes",
            ),
            (
                "routes[1].upstream",
                "a route with aggregate has no upstream",
            ),
            ("routes[1].cache", "does not apply to an aggregate route"),
            ("routes[1].aggregate.calls.bad name", "a call name is"),
            (
                "routes[1].aggregate.calls.bad name.upstream",
                "unknown upstream \"nope\"",
            ),
            (
                "routes[1].aggregate.calls.bad name.path",
                "{other} is not a named group of match.path_regex",
            ),
            (
                "routes[1].aggregate.calls.bad name.timeout",
                "between 1ms and 5m",
            ),
            ("routes[1].aggregate.calls.two.path", "must start with /"),
            ("routes[1].aggregate.calls.two.path", "without its"),
            ("routes[2].aggregate.calls", "at least one call"),
            ("routes[3].request_body.json", "missing"),
            ("routes[3].response_body", "does nothing"),
        ];
        for (path, msg) in want {
            assert!(
                got.iter().any(|(p, m)| p == path && m.contains(msg)),
                "missing {path}: {msg}\ngot {got:#?}"
            );
        }
        // A `${header:...}` that names no header is no request-time form: loading
        // reports it where it is written.
        let got = errors(
            "  - { name: a, upstream: u, request_body: { json: { set: { /x: \"${header:bad name}\" } } } }\n",
            &no_env,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "routes[0].request_body.json.set./x");
        assert!(got[0].1.contains("header:bad name"), "{got:?}");
    }

    #[test]
    fn request_time_forms_stay_for_the_request_and_the_environment_fills_the_rest() {
        let env = |n: &str| match n {
            "TEAM" => Some("blue".to_string()),
            "consumer" => Some("from-env".to_string()),
            _ => None,
        };
        let yaml = format!(
            "{HEAD}routes:\n  - {{ name: a, upstream: u, request_headers: {{ set: {{ X-C: \"${{consumer}}\" }} }}, request_body: {{ json: {{ set: {{ /c: \"${{consumer}}\", /s: \"${{subject}}\", /h: \"${{header:X-Tenant}}\", /t: \"${{TEAM}}-${{consumer}}\" }}, add: {{ /o: {{ k: \"${{subject}}\" }} }} }} }} }}\n"
        );
        let cfg = load::parse(&yaml, &env).expect("parses");
        let r = &cfg.routes[0];
        let set = &r.request_body.as_ref().unwrap().json.as_ref().unwrap().set;
        assert_eq!(set["/c"], "${consumer}");
        assert_eq!(set["/s"], "${subject}");
        assert_eq!(set["/h"], "${header:X-Tenant}");
        assert_eq!(set["/t"], "blue-${consumer}");
        let add = &r.request_body.as_ref().unwrap().json.as_ref().unwrap().add;
        assert_eq!(add["/o"]["k"], "${subject}");
        // Outside a transform value, `${consumer}` is the environment as before.
        assert_eq!(r.request_headers.set["X-C"], "from-env");
        // Only the value that read the environment is redacted.
        assert!(cfg
            .env_filled
            .contains("routes[0].request_body.json.set./t"));
        assert!(!cfg
            .env_filled
            .contains("routes[0].request_body.json.set./c"));
        // An unknown `${NAME}` in a transform value is still an environment error.
        let bad = format!(
            "{HEAD}routes:\n  - {{ name: a, upstream: u, request_body: {{ json: {{ set: {{ /c: \"${{NOPE}}\" }} }} }} }}\n"
        );
        let errs = load::parse(&bad, &env).unwrap_err();
        assert_eq!(errs[0].path, "routes[0].request_body.json.set./c");
    }
}
