//! The configuration: file format (`model`), loading with interpolation (`load`),
//! shape checks (`validate`), value types (`units`) and the value parsers the runtime
//! reuses (`values`). `config` depends on nothing else in the crate. `load_file` gives
//! a parsed config with the problems found so far; `runtime::Snapshot::compile` adds
//! the checks that need built objects and turns it into what requests read.

pub mod demo;
pub mod edge;
pub mod load;
pub mod model;
pub mod route_traffic;
pub mod streaming;
pub mod tracing;
pub mod traffic;
pub mod transform;
pub mod units;
pub mod validate;
pub mod values;

#[cfg(test)]
mod props;

pub use model::Config;
use std::fmt;

/// One problem in a config file, with the YAML path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A loaded config plus what identifies it. Not valid yet: `problems` holds what
/// parsing and `validate` found, and only `runtime::Snapshot::compile`, which reports
/// them with its own checks, turns it into something that serves (a snapshot's
/// `loaded` has no problems).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// sha256 of the file's bytes, hex.
    pub version_hash: String,
    pub path: String,
    /// Unknown keys and shape errors, with their YAML paths.
    pub problems: Vec<ConfigError>,
}

/// Reads, parses and validates a config file. `Err` when the file cannot be read or
/// parsed far enough to check further; otherwise the problems found so far ride in
/// `Loaded::problems`, so that compile reports them together with its own.
pub fn load_file(path: &str) -> Result<Loaded, Vec<ConfigError>> {
    let bytes = std::fs::read(path).map_err(|e| {
        vec![ConfigError::new(
            "(file)",
            format!("cannot read {path:?}: {e}"),
        )]
    })?;
    let text = String::from_utf8(bytes.clone())
        .map_err(|_| vec![ConfigError::new("(file)", "the file is not UTF-8")])?;
    let env = |name: &str| std::env::var(name).ok();
    let (config, mut errs) = load::parse_partial(&text, &env);
    let Some(config) = config else {
        return Err(errs);
    };
    errs.extend(validate::validate(&config));
    Ok(loaded(config, &bytes, path, errs))
}

/// A `Loaded` for `config`, identified by the bytes it was parsed from.
pub fn loaded(config: Config, bytes: &[u8], path: &str, problems: Vec<ConfigError>) -> Loaded {
    use sha2::Digest;
    Loaded {
        config,
        version_hash: hex::encode(sha2::Sha256::digest(bytes)),
        path: path.to_string(),
        problems,
    }
}

const REDACTED: &str = "[redacted]";

/// The config as `/admin/config` shows it: every secret replaced. Secrets are the admin
/// token, HMAC secrets, API keys (even hashed: a hash of a short key can be guessed),
/// the user info and query of `store.redis_url` and of `jwks_url` (credentials ride
/// there), and header values that came from `${VAR}` (an upstream's API key, say).
pub fn redacted_json(cfg: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    if let Some(t) = v.pointer_mut("/admin/token") {
        if !t.is_null() {
            *t = REDACTED.into();
        }
    }
    if let Some(u) = v.pointer_mut("/store/redis_url") {
        if let Some(s) = u.as_str() {
            *u = redact_url(s).into();
        }
    }
    if let Some(jwts) = v.pointer_mut("/auth/jwt").and_then(|j| j.as_array_mut()) {
        for j in jwts {
            if let Some(s) = j.get_mut("hmac_secret") {
                if !s.is_null() {
                    *s = REDACTED.into();
                }
            }
            if let Some(u) = j.get_mut("jwks_url") {
                if let Some(s) = u.as_str() {
                    *u = redact_url(s).into();
                }
            }
        }
    }
    if let Some(cs) = v.pointer_mut("/consumers").and_then(|c| c.as_array_mut()) {
        for c in cs {
            if let Some(keys) = c.get_mut("api_keys").and_then(|k| k.as_array_mut()) {
                for k in keys {
                    *k = REDACTED.into();
                }
            }
        }
    }
    if let Some(routes) = v.pointer_mut("/routes").and_then(|r| r.as_array_mut()) {
        for (i, r) in routes.iter_mut().enumerate() {
            for (json, yaml) in [
                ("/request_headers/set", "request_headers.set"),
                ("/response_headers/set", "response_headers.set"),
                ("/match/headers", "match.headers"),
            ] {
                let Some(m) = r.pointer_mut(json).and_then(|m| m.as_object_mut()) else {
                    continue;
                };
                for (name, value) in m.iter_mut() {
                    if credential_header(name)
                        || cfg
                            .env_filled
                            .contains(&format!("routes[{i}].{yaml}.{name}"))
                    {
                        *value = REDACTED.into();
                    }
                }
            }
        }
    }
    v
}

/// Header names whose values are credentials whatever their source: a secret written
/// into the file itself is still a secret.
fn credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["key", "token", "secret", "password", "auth", "signature"]
        .iter()
        .any(|w| n.contains(w))
}

/// `redis://user:pass@host/0?password=x` → `redis://user:[redacted]@host/0?[redacted]`:
/// the password of the user info and the whole query go (both can carry credentials);
/// a fragment goes too. The user name, host and path stay, so the target is still known.
fn redact_url(s: &str) -> String {
    let (without_fragment, had_fragment) = match s.split_once('#') {
        Some((a, _)) => (a, true),
        None => (s, false),
    };
    let (base, query) = match without_fragment.split_once('?') {
        Some((b, _)) => (b, true),
        None => (without_fragment, false),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = String::with_capacity(s.len());
    match base[authority_start..authority_end].rfind('@') {
        Some(at) => {
            let creds = &base[authority_start..authority_start + at];
            out.push_str(&base[..authority_start]);
            match creds.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(REDACTED),
            }
            out.push_str(&base[authority_start + at..]);
        }
        None => out.push_str(base),
    }
    if query {
        out.push('?');
        out.push_str(REDACTED);
    }
    if had_fragment {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        for (url, shown) in [
            (
                "redis://user:pw@h:6379/0",
                "redis://user:[redacted]@h:6379/0",
            ),
            ("redis://:pw@h:6379", "redis://:[redacted]@h:6379"),
            // No colon: the user info is itself a token.
            ("https://tok@idp/jwks", "https://[redacted]@idp/jwks"),
            (
                "redis://h:6379/0?password=pw",
                "redis://h:6379/0?[redacted]",
            ),
            (
                "https://idp/jwks?key=s#frag",
                "https://idp/jwks?[redacted]#[redacted]",
            ),
            // An `@` in the path or query is not user info.
            ("https://idp/a@b?x=y@z", "https://idp/a@b?[redacted]"),
            ("redis://h:6379", "redis://h:6379"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn env_filled_header_values_are_redacted() {
        let text = "listeners: [ { name: a, address: \"127.0.0.1:1\" } ]\n\
            upstreams: { u: { targets: [ { address: \"127.0.0.1:2\" } ] } }\n\
            routes:\n\
            \x20 - name: r\n\
            \x20   match: { path_prefix: /, headers: { X-Tenant: \"${TENANT}\" } }\n\
            \x20   upstream: u\n\
            \x20   request_headers: { set: { X-Key: \"Bearer ${UP_KEY}\", X-Gw: gatehouse, X-Lit: \"$${NOT}\", Authorization: \"Basic s3cret\", X-Upstream-Token: s3cret } }\n\
            \x20   response_headers: { set: { X-Sig: \"${SIG:-s3cret}\" } }\n";
        let env = |n: &str| match n {
            "UP_KEY" => Some("up-s3cret".to_string()),
            "TENANT" => Some("t-s3cret".to_string()),
            _ => None,
        };
        let cfg = load::parse(text, &env).expect("parses");
        let v = redacted_json(&cfg);
        let shown = v.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        let r = &v["routes"][0];
        assert_eq!(r["request_headers"]["set"]["X-Key"], REDACTED);
        assert_eq!(r["request_headers"]["set"]["X-Gw"], "gatehouse");
        assert_eq!(
            r["request_headers"]["set"]["X-Lit"], "${NOT}",
            "an escaped literal"
        );
        assert_eq!(r["response_headers"]["set"]["X-Sig"], REDACTED);
        // Credentials by name, even when written into the file.
        assert_eq!(r["request_headers"]["set"]["Authorization"], REDACTED);
        assert_eq!(r["request_headers"]["set"]["X-Upstream-Token"], REDACTED);
        assert_eq!(r["match"]["headers"]["X-Tenant"], REDACTED);
    }
}
