//! Value parsers of the file format that the runtime types reuse: what
//! `consistent_hash` hashes, JWS algorithm names, API key digests and target addresses.
//! They live here, below every runtime module, so `config` depends on nothing else in
//! the crate; `upstream`, `policy` and the compile step call them from here.

use sha2::{Digest, Sha256};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// What `consistent_hash` hashes (`upstreams.NAME.hash_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Consumer,
    Ip,
    Path,
    Header(http::HeaderName),
}

/// Why a `hash_on` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOnError {
    BadHeaderName(String),
    Unknown(String),
}

impl fmt::Display for HashOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOnError::BadHeaderName(n) => write!(f, "invalid header name {n:?}"),
            HashOnError::Unknown(s) => {
                write!(f, "{s:?} must be consumer | ip | path | header:NAME")
            }
        }
    }
}

impl std::error::Error for HashOnError {}

impl HashOn {
    pub fn parse(s: &str) -> Result<Self, HashOnError> {
        match s {
            "consumer" => Ok(HashOn::Consumer),
            "ip" => Ok(HashOn::Ip),
            "path" => Ok(HashOn::Path),
            _ => match s.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.as_bytes())
                    .map(HashOn::Header)
                    .map_err(|_| HashOnError::BadHeaderName(name.to_string())),
                None => Err(HashOnError::Unknown(s.to_string())),
            },
        }
    }
}

/// A JWS algorithm we can verify (`auth.jwt[].algorithms`). `none` is not one of them,
/// by construction. The verifiers for each live in `policy::jwt::keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// An extension: `jsonwebtoken` has no P-521; see `policy::jwt::keys`.
    ES512,
    EdDSA,
}

pub const ALL_ALGS: [Alg; 13] = [
    Alg::HS256,
    Alg::HS384,
    Alg::HS512,
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::ES512,
    Alg::EdDSA,
];

impl Alg {
    /// The exact, case-sensitive JWA name (RFC 7518 §3.1); anything else is refused.
    pub fn parse(name: &str) -> Option<Alg> {
        ALL_ALGS.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
    pub fn min_secret_len(self) -> usize {
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a route's `rate_limit.key` / `quota.key` counts by: `consumer | ip | route |
/// header:NAME`. One parser for validation and for the limit stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    Consumer,
    Ip,
    Route,
    Header(http::HeaderName),
}

pub const LIMIT_KEY_SYNTAX: &str = "must be consumer | ip | route | header:NAME";

impl LimitKey {
    pub fn parse(s: &str) -> Result<LimitKey, &'static str> {
        match s {
            "consumer" => Ok(LimitKey::Consumer),
            "ip" => Ok(LimitKey::Ip),
            "route" => Ok(LimitKey::Route),
            other => other
                .strip_prefix("header:")
                .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .map(LimitKey::Header)
                .ok_or(LIMIT_KEY_SYNTAX),
        }
    }
}

/// The SHA-256 of an API key: what `consumers[].api_keys` stores.
pub type KeyDigest = [u8; 32];

/// `sha256:<64 hex>` → the digest; `None` for anything else.
pub fn parse_digest(s: &str) -> Option<KeyDigest> {
    let hex_part = s.strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_part).ok()?;
    bytes.try_into().ok()
}

/// The form `consumers[].api_keys` stores (and `gatehouse hash-key` prints); limit keys
/// too long to keep as sent are stored in this form as well.
pub fn hash_key(key: impl AsRef<[u8]>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_ref())))
}

/// Why a target address does not resolve.
#[derive(Debug)]
pub enum ResolveError {
    NoPort(String),
    Lookup(String, std::io::Error),
    NoAddress(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::NoPort(a) => write!(f, "{a:?} needs a port (host:port)"),
            ResolveError::Lookup(a, e) => write!(f, "cannot resolve {a:?}: {e}"),
            ResolveError::NoAddress(a) => write!(f, "{a:?} resolves to no address"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Resolves a target address (`IP:port` or `host:port`) once, when a config compiles.
pub fn resolve(addr: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(ResolveError::NoPort(addr.to_string()));
    }
    addr.to_socket_addrs()
        .map_err(|e| ResolveError::Lookup(addr.to_string(), e))?
        .next()
        .ok_or_else(|| ResolveError::NoAddress(addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_on_values() {
        assert_eq!(HashOn::parse("ip").unwrap(), HashOn::Ip);
        assert_eq!(
            HashOn::parse("header:x-user").unwrap(),
            HashOn::Header(http::HeaderName::from_static("x-user"))
        );
        assert_eq!(
            HashOn::parse("header:bad name").unwrap_err().to_string(),
            "invalid header name \"bad name\""
        );
        assert_eq!(
            HashOn::parse("cookie").unwrap_err().to_string(),
            "\"cookie\" must be consumer | ip | path | header:NAME"
        );
    }

    #[test]
    fn digests() {
        let d = hash_key("test");
        assert_eq!(
            d,
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(parse_digest(&d).is_some());
        assert!(parse_digest("sha256:1234").is_none());
        assert!(parse_digest("plain").is_none());
    }

    #[test]
    fn addresses() {
        assert_eq!(resolve("127.0.0.1:80").unwrap().port(), 80);
        assert!(matches!(resolve("localhost"), Err(ResolveError::NoPort(_))));
        assert_eq!(
            resolve("example").unwrap_err().to_string(),
            "\"example\" needs a port (host:port)"
        );
    }
}
