//! Reading a config file: YAML → `${VAR}` interpolation → typed sections.
//! Each section (and each list item) is deserialized on its own, so one typo does not
//! hide the errors in the rest of the file: every error comes back with its YAML path.

use super::model::*;
use super::ConfigError;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::BTreeMap;

/// Why a `${...}` reference cannot be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// `${` without its `}`; holds the whole string.
    Unterminated(String),
    InvalidName(String),
    Unset(String),
}

impl std::fmt::Display for InterpolateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpolateError::Unterminated(s) => write!(f, "unterminated ${{...}} in {s:?}"),
            InterpolateError::InvalidName(n) => write!(f, "invalid variable name {n:?}"),
            InterpolateError::Unset(n) => write!(
                f,
                "environment variable {n} is not set (write ${{{n}:-default}} to allow that)"
            ),
        }
    }
}

impl std::error::Error for InterpolateError {}

/// Replaces `${VAR}` and `${VAR:-default}` in one string. `$${` is a literal `${`.
#[cfg(test)]
pub fn interpolate(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    interpolate_keeping(s, lookup, &|_| false)
}

/// `interpolate`, leaving in place (as written) every `${expr}` for which `keep` is
/// true: the request-time forms of a transform value (`${consumer}`, `${header:X}`).
pub fn interpolate_keeping(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<String, InterpolateError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| InterpolateError::Unterminated(s.to_string()))?;
            let expr = &body[..end];
            if keep(expr) {
                out.push_str(&after[..end + 3]);
                rest = &body[end + 1..];
                continue;
            }
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolateError::InvalidName(name.to_string()));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(InterpolateError::Unset(name.to_string())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// For a secret, the generic hint (`write ${VAR:-default}`) is the wrong advice: a
/// default secret is one everybody can read in the file.
fn secret_hint(path: &str, message: String) -> String {
    let secret =
        path == "admin.token" || path.ends_with(".hmac_secret") || path.contains(".api_keys[");
    match message.find(" (write ${") {
        Some(i) if secret => format!(
            "{}: this is a secret, set it in the environment (it has no default on purpose)",
            &message[..i]
        ),
        _ => message,
    }
}

/// True when `s` has a `${` that is not the escaped `$${` and not a form `keep` leaves in
/// place. Errs towards true (a `$$${` counts), which only ever redacts one value too many.
fn references_env(s: &str, keep: &dyn Fn(&str) -> bool) -> bool {
    s.match_indices("${").any(|(i, _)| {
        let escaped = i > 0 && s.as_bytes()[i - 1] == b'$';
        let expr = s[i + 2..].split('}').next().unwrap_or("");
        !escaped && !keep(expr)
    })
}

fn interpolate_value(
    v: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errs: &mut Vec<ConfigError>,
    filled: &mut std::collections::BTreeSet<String>,
) {
    match v {
        Value::String(s) => {
            // In a transform's values the request-time forms stay for the request to
            // fill; they are no environment reference (nor a secret to redact).
            let runtime: &dyn Fn(&str) -> bool = if super::transform::is_transform_value_path(path)
            {
                &super::transform::is_runtime_reference
            } else {
                &|_| false
            };
            if references_env(s, runtime) {
                filled.insert(path.to_string());
            }
            match interpolate_keeping(s, lookup, runtime) {
                Ok(n) => *s = n,
                Err(e) => errs.push(ConfigError::new(path, secret_hint(path, e.to_string()))),
            }
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), lookup, errs, filled);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = path_key(k);
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(item, &p, lookup, errs, filled);
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, path, lookup, errs, filled),
        _ => {}
    }
}

/// A mapping key as a segment of a YAML path: the empty key is written `""`, so an
/// error about it still has a path to show.
fn path_key(k: &Value) -> String {
    match key_name(k) {
        k if k.is_empty() => "\"\"".to_string(),
        k => k,
    }
}

fn key_name(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Messages of errors after which parsing can go on (the key is dropped and the rest of
/// the item still parses), so later checks still run and report their errors too.
const RECOVERABLE: &str = "unknown field";

/// Deserializes `v` as `T`, reporting a failure under `path` plus the path inside `v`.
/// An unknown key is reported, removed, and the item parsed again, so one typo neither
/// hides a second one nor the semantic errors of the same item.
fn section<T: DeserializeOwned>(
    path: &str,
    mut v: Value,
    errs: &mut Vec<ConfigError>,
) -> Option<T> {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match (path.is_empty(), inner.as_str()) {
                    (_, ".") => path.to_string(),
                    (true, _) => inner,
                    (false, i) if i.starts_with('[') => format!("{path}{i}"),
                    (false, i) => format!("{path}.{i}"),
                };
                let segments: Vec<_> = e.path().iter().cloned().collect();
                let msg = clean_serde_message(&e.into_inner().to_string());
                let recoverable = msg.starts_with(RECOVERABLE) && remove_at(&mut v, &segments);
                errs.push(ConfigError::new(full, msg));
                if !recoverable {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the key that `segments` points at; false when the path cannot be followed.
fn remove_at(v: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = v;
    for seg in parents {
        cur = match (seg, cur) {
            (Segment::Seq { index }, Value::Sequence(s)) => match s.get_mut(*index) {
                Some(x) => x,
                None => return false,
            },
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Segment::Map { key }, Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

/// True when every error is one after which the whole file was still parsed.
pub fn all_recoverable(errs: &[ConfigError]) -> bool {
    errs.iter().all(|e| e.message.starts_with(RECOVERABLE))
}

/// serde_yaml appends " at line N column M" relative to a detached value, which is
/// misleading here: the YAML path already says where.
fn clean_serde_message(m: &str) -> String {
    match m.find(" at line ") {
        Some(i) => m[..i].to_string(),
        None => m.to_string(),
    }
}

fn list<T: DeserializeOwned>(path: &str, v: Value, errs: &mut Vec<ConfigError>) -> Vec<T> {
    match v {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| section(&format!("{path}[{i}]"), item, errs))
            .collect(),
        _ => {
            errs.push(ConfigError::new(path, "expected a list"));
            Vec::new()
        }
    }
}

fn map<T: DeserializeOwned>(
    path: &str,
    v: Value,
    errs: &mut Vec<ConfigError>,
) -> BTreeMap<String, T> {
    match v {
        Value::Null => BTreeMap::new(),
        Value::Mapping(m) => m
            .into_iter()
            .filter_map(|(k, item)| {
                let name = key_name(&k);
                section(&format!("{path}.{name}"), item, errs).map(|t| (name, t))
            })
            .collect(),
        _ => {
            errs.push(ConfigError::new(path, "expected a mapping"));
            BTreeMap::new()
        }
    }
}

/// `consumers[i].api_keys[k]` entries written as exactly `${VAR}` (or `${VAR:-x}`):
/// the one way a plain API key may enter the config.
fn env_api_keys(root: &Value) -> Vec<(usize, usize)> {
    let Some(Value::Sequence(consumers)) = root.get("consumers") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, c) in consumers.iter().enumerate() {
        if let Some(Value::Sequence(keys)) = c.get("api_keys") {
            for (k, key) in keys.iter().enumerate() {
                let whole_ref = key.as_str().is_some_and(|s| {
                    s.starts_with("${") && s.ends_with('}') && s[2..].find('}') == Some(s.len() - 3)
                });
                if whole_ref {
                    out.push((i, k));
                }
            }
        }
    }
    out
}

/// Replaces the plain keys that came from the environment by their `sha256:` form, so
/// the secret itself is never kept (nor shown by `/admin/config`).
fn hash_env_api_keys(root: &mut Value, at: &[(usize, usize)], errs: &mut Vec<ConfigError>) {
    for &(i, k) in at {
        let Some(Value::String(s)) = root
            .get_mut("consumers")
            .and_then(|c| c.get_mut(i))
            .and_then(|c| c.get_mut("api_keys"))
            .and_then(|keys| keys.get_mut(k))
        else {
            continue;
        };
        if s.is_empty() {
            errs.push(ConfigError::new(
                format!("consumers[{i}].api_keys[{k}]"),
                "the environment variable holding this key is empty",
            ));
        } else if !s.starts_with("sha256:") {
            *s = super::values::hash_key(s.as_str());
        }
    }
}

/// Parses the text of a config file. The environment is read through `lookup`.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    match parse_partial(text, lookup) {
        (Some(cfg), errs) if errs.is_empty() => Ok(cfg),
        (_, errs) => Err(errs),
    }
}

/// Like `parse`, but also returns the config when every error was recoverable (unknown
/// keys), so that validation can report its own errors beside them.
pub fn parse_partial(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Option<Config>, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                None,
                vec![ConfigError::new("(file)", format!("invalid YAML: {e}"))],
            )
        }
    };
    let env_keys = env_api_keys(&root);
    let mut env_filled = std::collections::BTreeSet::new();
    interpolate_value(&mut root, "", lookup, &mut errs, &mut env_filled);
    hash_env_api_keys(&mut root, &env_keys, &mut errs);
    let Value::Mapping(top) = root else {
        return (None, vec![ConfigError::new(
            "(file)",
            "the top level must be a mapping with `version`, `listeners`, `upstreams`, `routes`, ...",
        )]);
    };
    let interpolation_failed = !errs.is_empty();
    let mut cfg = Config {
        version: 1,
        env_filled,
        ..Config::default()
    };
    let mut seen_listeners = false;
    for (k, v) in top {
        let key = key_name(&k);
        match key.as_str() {
            "version" => {
                if let Some(n) = section::<u32>("version", v, &mut errs) {
                    if n != 1 {
                        errs.push(ConfigError::new("version", format!("unsupported version {n}; this gatehouse reads version 1")));
                    }
                    cfg.version = n;
                }
            }
            "server" => {
                if let Some(s) = section("server", v, &mut errs) {
                    cfg.server = s;
                }
            }
            "listeners" => {
                seen_listeners = true;
                cfg.listeners = list("listeners", v, &mut errs);
            }
            "admin" => cfg.admin = section("admin", v, &mut errs),
            "store" => cfg.store = section("store", v, &mut errs),
            "cache" => cfg.cache = section("cache", v, &mut errs),
            "upstreams" => cfg.upstreams = map("upstreams", v, &mut errs),
            "auth" => cfg.auth = section("auth", v, &mut errs),
            "tiers" => cfg.tiers = map("tiers", v, &mut errs),
            "consumers" => cfg.consumers = list("consumers", v, &mut errs),
            "routes" => cfg.routes = list("routes", v, &mut errs),
            "tracing" => cfg.tracing = section("tracing", v, &mut errs),
            "access_log" => {
                if let Some(a) = section("access_log", v, &mut errs) {
                    cfg.access_log = a;
                }
            }
            _ => errs.push(ConfigError::new(
                path_key(&k),
                "unknown field (top level; expected one of version, server, listeners, admin, store, cache, upstreams, auth, tiers, consumers, routes, access_log, tracing)",
            )),
        }
    }
    if !seen_listeners {
        errs.push(ConfigError::new(
            "listeners",
            "missing: at least one listener is required",
        ));
    }
    let usable = !interpolation_failed && all_recoverable(&errs);
    (usable.then_some(cfg), errs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            _ => None,
        }
    }

    #[test]
    fn interpolation() {
        assert_eq!(interpolate("a ${HOST} b", &env).unwrap(), "a example.com b");
        assert_eq!(interpolate("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(interpolate("$${HOST}", &env).unwrap(), "${HOST}");
        assert_eq!(interpolate("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(
            interpolate("${NOPE}", &env).unwrap_err().to_string(),
            "environment variable NOPE is not set (write ${NOPE:-default} to allow that)"
        );
        assert_eq!(
            interpolate("${A-B}", &env).unwrap_err(),
            InterpolateError::InvalidName("A-B".into())
        );
        assert!(interpolate("${HOST", &env).is_err());
    }

    #[test]
    fn every_error_has_its_path() {
        let text = r#"
listeners: [ { name: a, address: "127.0.0.1:1" } ]
upstreams:
  u: { targets: [ { address: "127.0.0.1:2", wieght: 3 } ] }
routes:
  - { name: r0, upstream: u }
  - { name: r1, upstrem: u }
  - { name: r2, upstream: u, rate_limt: {} }
bogus: 1
"#;
        let errs = parse(text, &env).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = msgs.join("\n");
        assert!(all.contains("upstreams.u.targets[0].wieght"), "{all}");
        assert!(all.contains("routes[1].upstrem"), "{all}");
        assert!(all.contains("routes[2].rate_limt"), "{all}");
        assert!(all.contains("bogus: unknown field"), "{all}");
        assert_eq!(errs.len(), 4, "{all}");
    }

    #[test]
    fn plain_api_keys_only_from_the_environment() {
        let lookup = |n: &str| match n {
            "ACME_KEY" => Some("s3cret".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = r#"
listeners: [ { name: a, address: "127.0.0.1:1" } ]
consumers:
  - { id: a, api_keys: ["${ACME_KEY}", "plain-in-file", "x${ACME_KEY}"] }
"#;
        let (cfg, errs) = parse_partial(text, &lookup);
        assert!(errs.is_empty(), "{errs:?}");
        let keys = &cfg.unwrap().consumers[0].api_keys;
        assert_eq!(keys[0], crate::config::values::hash_key("s3cret"));
        // Written in the file (even partly): kept as is, and validation refuses it.
        assert_eq!(keys[1], "plain-in-file");
        assert_eq!(keys[2], "xs3cret");
        let empty = "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\nconsumers: [ { id: b, api_keys: [\"${EMPTY}\"] } ]\n";
        let errs = parse(empty, &lookup).unwrap_err();
        assert_eq!(errs[0].path, "consumers[0].api_keys[0]");
    }

    #[test]
    fn unset_env_is_an_error_with_path() {
        let text = "listeners: [ { name: a, address: \"${ADDR}\" } ]\n";
        let errs = parse(text, &env).unwrap_err();
        assert_eq!(errs[0].path, "listeners[0].address");
        assert!(errs[0].message.contains("${ADDR:-default}"), "{errs:?}");
        // A secret gets no advice to write a default into the file.
        let text = "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\n\
                    admin: { address: \"127.0.0.1:2\", token: \"${TOKEN}\" }\n";
        let errs = parse(text, &env).unwrap_err();
        assert_eq!(errs[0].path, "admin.token");
        assert_eq!(
            errs[0].message,
            "environment variable TOKEN is not set: this is a secret, set it in the \
             environment (it has no default on purpose)"
        );
    }
}
