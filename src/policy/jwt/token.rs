//! The JWS compact serialisation, read strictly (RFC 7515 §7.1), and its signature
//! check against a key set.
//!
//! Parsed here rather than by `jsonwebtoken::decode` because the issuer is chosen by the
//! unverified `iss` before any key is picked, `ES512` is not in `jsonwebtoken`'s
//! `Algorithm`, and one parse per token serves every step. Strict means: exactly three
//! non-empty parts, base64url without padding, no stray characters, no non-zero
//! trailing bits, a JSON object header, and no `crit` extension we do not understand.
//! So one token has exactly one spelling, which the verified-token cache relies on.

use super::keys::{Alg, KeySet};
use crate::policy::auth::Failure;
use base64::Engine;

/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug)]
pub struct Parsed<'t> {
    /// `header.payload` exactly as received: what the signature covers.
    pub signing_input: &'t str,
    pub alg: Alg,
    pub kid: Option<String>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

fn b64(part: &str) -> Result<Vec<u8>, Failure> {
    // URL_SAFE_NO_PAD refuses `=`, `+`, `/`, whitespace and non-canonical trailing bits.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::Malformed)
}

impl<'t> Parsed<'t> {
    pub fn parse(token: &'t str) -> Result<Parsed<'t>, Failure> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Failure::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&b64(h)?).map_err(|_| Failure::Malformed)?;
        let header = header.as_object().ok_or(Failure::Malformed)?;
        // RFC 7515 §4.1.11: extensions marked critical must be understood; we know none.
        if header.contains_key("crit") {
            return Err(Failure::Malformed);
        }
        let alg = match header.get("alg") {
            Some(serde_json::Value::String(a)) => Alg::parse(a).ok_or(Failure::BadAlgorithm)?,
            _ => return Err(Failure::Malformed),
        };
        let kid = match header.get("kid") {
            None => None,
            Some(serde_json::Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Failure::Malformed),
        };
        if s.is_empty() {
            return Err(Failure::Malformed);
        }
        Ok(Parsed {
            signing_input: &token[..h.len() + 1 + p.len()],
            alg,
            kid,
            payload: b64(p)?,
            signature: b64(s)?,
        })
    }

    /// Verifies the signature with the keys that fit the token's `kid` and `alg`. The
    /// caller has checked that `alg` is one the issuer accepts.
    pub fn verify(&self, keys: &KeySet) -> Result<(), Failure> {
        let mut tried = false;
        for key in keys.candidates(self.kid.as_deref(), self.alg) {
            tried = true;
            if key.verify(self.alg, self.signing_input.as_bytes(), &self.signature) {
                return Ok(());
            }
        }
        match (tried, &self.kid) {
            (true, _) => Err(Failure::BadSignature),
            // The kid names a key of another type: the token's alg does not fit it.
            (false, Some(kid)) if keys.has_kid(kid) => Err(Failure::BadAlgorithm),
            (false, _) => Err(Failure::UnknownKey),
        }
    }
}

/// The payload as a JSON object (the JWT claims set).
pub fn claims(payload: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Failure> {
    match serde_json::from_slice(payload) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(Failure::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_strict() {
        // {"alg":"HS256"} . {} . sig
        let ok = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln";
        assert!(Parsed::parse(ok).is_ok());
        for bad in [
            "",
            "eyJhbGciOiJIUzI1NiJ9.e30",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2ln.",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "eyJhbGciOiJIUzI1NiJ9.e30=.c2ln",
            "eyJhbGciOiJIUzI1NiJ9 .e30.c2ln",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2ln?",
            // header is not an object
            "WzFd.e30.c2ln",
            // crit
            "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiYjY0Il19.e30.c2ln",
        ] {
            assert_eq!(Parsed::parse(bad).unwrap_err(), Failure::Malformed, "{bad}");
        }
        // {"alg":"none"} and {"alg":"NONE"}
        for none in [
            "eyJhbGciOiJub25lIn0.e30.c2ln",
            "eyJhbGciOiJOT05FIn0.e30.c2ln",
        ] {
            assert_eq!(Parsed::parse(none).unwrap_err(), Failure::BadAlgorithm);
        }
    }
}

#[cfg(test)]
#[path = "token_props.rs"]
mod props;
