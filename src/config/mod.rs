//! The configuration: file format (`model`), loading with interpolation (`load`),
//! semantic validation (`validate`) and value types (`units`). The output is a
//! validated `Config`; `runtime::Snapshot::compile` turns it into what requests read.

pub mod load;
pub mod model;
pub mod units;
pub mod validate;

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

/// A loaded, validated config plus what identifies it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// sha256 of the file's bytes, hex.
    pub version_hash: String,
    pub path: String,
}

/// Reads, parses and validates a config file. Every error is returned at once.
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
    if !errs.is_empty() {
        return Err(errs);
    }
    finish(config, &bytes, path)
}

fn finish(config: Config, bytes: &[u8], path: &str) -> Result<Loaded, Vec<ConfigError>> {
    use sha2::Digest;
    Ok(Loaded {
        config,
        version_hash: hex::encode(sha2::Sha256::digest(bytes)),
        path: path.to_string(),
    })
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
