//! The configuration: file format (`model`), loading with interpolation (`load`),
//! shape checks (`validate`), value types (`units`) and the value parsers the runtime
//! reuses (`values`). `config` depends on nothing else in the crate. `load_file` gives
//! a parsed config with the problems found so far; `runtime::Snapshot::compile` adds
//! the checks that need built objects and turns it into what requests read.

pub mod load;
pub mod model;
pub mod units;
pub mod validate;
pub mod values;

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

/// The config as `/admin/config` shows it: every secret replaced.
pub fn redacted_json(cfg: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    const REDACTED: &str = "[redacted]";
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
    v
}

/// `redis://user:pass@host` → `redis://user:[redacted]@host`.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &s[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:[redacted]{}", &s[..scheme + 3], user, &s[at..])
        }
        _ => s.to_string(),
    }
}
