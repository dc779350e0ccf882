//! Verification keys: JWK and JWKS parsing into ready-to-use verifiers, one per
//! (key, algorithm) pair the issuer accepts.
//!
//! `jsonwebtoken` does the cryptography and reads the key material of a JWK. On top of
//! it, this file adds what it leaves to the caller:
//! - the key type must match the algorithm (an RSA key is never an HMAC secret), and a
//!   JWK's own `alg`, `use` and `key_ops` restrict it further (RFC 7517 §4.2–4.4);
//! - one bad key in a JWKS skips that key, not the whole set;
//! - ES512 (P-521), which `jsonwebtoken` does not implement, is verified with aws-lc
//!   directly (the library `jsonwebtoken`'s backend uses);
//! - verifiers are built once per key, when the JWKS is loaded, not per request.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use std::fmt;
use std::sync::Arc;

pub use crate::config::values::Alg;

/// The `jsonwebtoken` algorithm of `alg`; `None` for ES512, which it lacks.
fn to_jwt(alg: Alg) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match alg {
        Alg::HS256 => A::HS256,
        Alg::HS384 => A::HS384,
        Alg::HS512 => A::HS512,
        Alg::RS256 => A::RS256,
        Alg::RS384 => A::RS384,
        Alg::RS512 => A::RS512,
        Alg::PS256 => A::PS256,
        Alg::PS384 => A::PS384,
        Alg::PS512 => A::PS512,
        Alg::ES256 => A::ES256,
        Alg::ES384 => A::ES384,
        Alg::EdDSA => A::EdDSA,
        Alg::ES512 => return None,
    })
}

/// Why one JWK cannot be used; a JWKS skips that key with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRejected {
    UnknownType,
    NotForSigning,
    NoVerifyOp,
    UnsupportedAlg(String),
    EcOnEd25519,
    OkpNotEd25519,
    /// An `oct` key where secrets must not come from (a published JWKS).
    Symmetric,
    NoAcceptedAlgorithm,
    BadBase64,
    EcCoordinateSize,
    InvalidPoint,
    RsaTooSmall(usize),
    BadMaterial(Option<String>),
}

impl fmt::Display for KeyRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRejected::UnknownType => f.write_str("unknown key type"),
            KeyRejected::NotForSigning => f.write_str("its `use` is not \"sig\""),
            KeyRejected::NoVerifyOp => f.write_str("its `key_ops` do not include \"verify\""),
            KeyRejected::UnsupportedAlg(a) => write!(f, "unsupported alg {a}"),
            KeyRejected::EcOnEd25519 => f.write_str("an EC key on Ed25519"),
            KeyRejected::OkpNotEd25519 => f.write_str("an OKP key that is not Ed25519"),
            KeyRejected::Symmetric => f.write_str("a symmetric (oct) key in a published JWKS"),
            KeyRejected::NoAcceptedAlgorithm => f.write_str("no accepted algorithm fits this key"),
            KeyRejected::BadBase64 => f.write_str("bad base64url in the key"),
            KeyRejected::EcCoordinateSize => f.write_str("EC coordinates of the wrong size"),
            KeyRejected::InvalidPoint => f.write_str("the public key is not a valid point"),
            KeyRejected::RsaTooSmall(bits) => {
                write!(f, "an RSA key of {bits} bits (2048 or more needed)")
            }
            KeyRejected::BadMaterial(None) => f.write_str("bad key material"),
            KeyRejected::BadMaterial(Some(e)) => write!(f, "bad key material: {e}"),
        }
    }
}

impl std::error::Error for KeyRejected {}

/// Why a JWKS document as a whole cannot be read.
#[derive(Debug)]
pub enum JwksError {
    NotJson(serde_json::Error),
    NotJwks,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson(e) => write!(f, "not JSON: {e}"),
            JwksError::NotJwks => f.write_str("not a JWKS (a JSON object with a \"keys\" array)"),
        }
    }
}

impl std::error::Error for JwksError {}

enum Verifier {
    /// `jsonwebtoken`'s verifier objects are not `Send`, so the key is kept and the
    /// (cheap) verifier is made per check; building one at load time proved the key usable.
    Jwt(jsonwebtoken::Algorithm, DecodingKey),
    Es512(aws_lc_rs::signature::ParsedPublicKey),
}

/// One key, able to verify the algorithms listed in `verifiers`.
pub struct VerifyKey {
    pub kid: Option<String>,
    verifiers: Vec<(Alg, Verifier)>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<Alg> = self.verifiers.iter().map(|(a, _)| *a).collect();
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &algs)
            .finish()
    }
}

impl VerifyKey {
    pub fn supports(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Checks `signature` (already base64url-decoded) over `message` (the ASCII
    /// `header.payload` exactly as received).
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let Some((_, v)) = self.verifiers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match v {
            Verifier::Jwt(alg, key) => (PROVIDER.verifier_factory)(alg, key)
                .is_ok_and(|v| v.verify(message, &signature.to_vec()).is_ok()),
            // ECDSA_P521_SHA512_FIXED: JWS signatures are the fixed-size R || S
            // (RFC 7518 §3.4), not DER.
            Verifier::Es512(key) => key.verify_sig(message, signature).is_ok(),
        }
    }

    /// An HMAC key from a configured secret (`hmac_secret`), for the HS algorithms in `algs`.
    pub fn hmac(secret: &[u8], algs: &[Alg]) -> Option<VerifyKey> {
        let key = DecodingKey::from_secret(secret);
        let verifiers = build(
            &key,
            algs.iter()
                .copied()
                .filter(|a| a.is_hmac() && secret.len() >= a.min_secret_len()),
        );
        (!verifiers.is_empty()).then_some(VerifyKey {
            kid: None,
            verifiers,
        })
    }

    /// A key from one JWK (JSON), for the algorithms in `algs` that its type, curve and
    /// own `alg` allow. `Err` says why the key is not usable.
    pub fn from_jwk(
        v: &serde_json::Value,
        algs: &[Alg],
        allow_symmetric: bool,
    ) -> Result<VerifyKey, KeyRejected> {
        let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|_| KeyRejected::UnknownType)?;
        if let Some(u) = &jwk.common.public_key_use {
            if *u != PublicKeyUse::Signature {
                return Err(KeyRejected::NotForSigning);
            }
        }
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.contains(&KeyOperations::Verify) {
                return Err(KeyRejected::NoVerifyOp);
            }
        }
        // Read from the JSON: jsonwebtoken's `KeyAlgorithm` has no ES512.
        let own_alg = match v.get("alg") {
            None => None,
            Some(a) => Some(
                a.as_str()
                    .and_then(Alg::parse)
                    .ok_or_else(|| KeyRejected::UnsupportedAlg(a.to_string()))?,
            ),
        };
        let secret_len = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(p) => b64url(&p.value)?.len(),
            _ => usize::MAX,
        };
        let wanted: Vec<Alg> = algs_of_type(&jwk.algorithm, allow_symmetric)?
            .iter()
            .copied()
            .filter(|a| algs.contains(a) && own_alg.is_none_or(|o| o == *a))
            .filter(|a| !a.is_hmac() || secret_len >= a.min_secret_len())
            .collect();
        let Some(&first) = wanted.first() else {
            return Err(KeyRejected::NoAcceptedAlgorithm);
        };
        let verifiers = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) if first == Alg::ES512 => {
                let point = ec_point(&p.x, &p.y, first)?;
                let key = aws_lc_rs::signature::ParsedPublicKey::new(
                    &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED,
                    &point,
                )
                .map_err(|_| KeyRejected::InvalidPoint)?;
                vec![(Alg::ES512, Verifier::Es512(key))]
            }
            other => {
                match other {
                    AlgorithmParameters::RSA(p) => check_rsa_size(&p.n)?,
                    AlgorithmParameters::EllipticCurve(p) => {
                        check_point(first, &ec_point(&p.x, &p.y, first)?)?
                    }
                    AlgorithmParameters::OctetKeyPair(p) => check_point(first, &b64url(&p.x)?)?,
                    AlgorithmParameters::OctetKey(_) => {}
                }
                let key = DecodingKey::from_jwk(&jwk)
                    .map_err(|e| KeyRejected::BadMaterial(Some(e.to_string())))?;
                build(&key, wanted.into_iter())
            }
        };
        if verifiers.is_empty() {
            return Err(KeyRejected::BadMaterial(None));
        }
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            verifiers,
        })
    }
}

/// The algorithms a key of this type and curve can serve at all.
fn algs_of_type(
    params: &AlgorithmParameters,
    allow_symmetric: bool,
) -> Result<&'static [Alg], KeyRejected> {
    Ok(match params {
        AlgorithmParameters::RSA(_) => &[
            Alg::RS256,
            Alg::RS384,
            Alg::RS512,
            Alg::PS256,
            Alg::PS384,
            Alg::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Alg::ES256],
            EllipticCurve::P384 => &[Alg::ES384],
            EllipticCurve::P521 => &[Alg::ES512],
            EllipticCurve::Ed25519 => return Err(KeyRejected::EcOnEd25519),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Alg::EdDSA],
            _ => return Err(KeyRejected::OkpNotEd25519),
        },
        AlgorithmParameters::OctetKey(_) if !allow_symmetric => return Err(KeyRejected::Symmetric),
        AlgorithmParameters::OctetKey(_) => &[Alg::HS256, Alg::HS384, Alg::HS512],
    })
}

static PROVIDER: &jsonwebtoken::crypto::CryptoProvider =
    &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;

/// One verifier per algorithm that this key material really supports.
fn build(key: &DecodingKey, algs: impl Iterator<Item = Alg>) -> Vec<(Alg, Verifier)> {
    algs.filter_map(|a| {
        let jwt_alg = to_jwt(a)?;
        (PROVIDER.verifier_factory)(&jwt_alg, key).ok()?;
        Some((a, Verifier::Jwt(jwt_alg, key.clone())))
    })
    .collect()
}

/// RFC 7518 §3.3: RSA keys of 2048 bits or more.
fn check_rsa_size(n_b64: &str) -> Result<(), KeyRejected> {
    let n = b64url(n_b64)?;
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    let bits = (n.len() - first) * 8;
    if bits < 2048 {
        return Err(KeyRejected::RsaTooSmall(bits));
    }
    Ok(())
}

fn b64url(s: &str) -> Result<Vec<u8>, KeyRejected> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeyRejected::BadBase64)
}

/// The uncompressed SEC1 point of an EC JWK, with coordinates of the curve's size.
fn ec_point(x: &str, y: &str, alg: Alg) -> Result<Vec<u8>, KeyRejected> {
    let size = match alg {
        Alg::ES256 => 32,
        Alg::ES384 => 48,
        _ => 66,
    };
    let (x, y) = (b64url(x)?, b64url(y)?);
    if x.len() != size || y.len() != size {
        return Err(KeyRejected::EcCoordinateSize);
    }
    Ok([&[4u8][..], &x, &y].concat())
}

fn aws_lc_alg(alg: Alg) -> Option<&'static aws_lc_rs::signature::EcdsaVerificationAlgorithm> {
    use aws_lc_rs::signature as sig;
    Some(match alg {
        Alg::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Alg::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Alg::ES512 => &sig::ECDSA_P521_SHA512_FIXED,
        _ => return None,
    })
}

/// Refuses a public key that is not a valid point at load time, rather than at each
/// verification (jsonwebtoken's backend only parses it when verifying).
fn check_point(alg: Alg, bytes: &[u8]) -> Result<(), KeyRejected> {
    use aws_lc_rs::signature::{ParsedPublicKey, ED25519};
    let ok = match aws_lc_alg(alg) {
        Some(a) => ParsedPublicKey::new(a, bytes).is_ok(),
        None => ParsedPublicKey::new(&ED25519, bytes).is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(KeyRejected::InvalidPoint)
    }
}

/// The keys of one issuer at one moment. Immutable; a refresh builds a new one.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// The keys that may have signed a token with this `kid` and `alg`: the keys with that
    /// kid, plus keys that have no kid at all (an `hmac_secret`, a kid-less JWK). Without
    /// a kid in the token, every key of a matching type.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Arc<VerifyKey>> + 'a {
        self.keys.iter().filter(move |k| {
            k.supports(alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    /// True when some key carries this kid (whatever its type).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// What `parse_jwks` found: the usable keys, and why each other key was skipped.
pub struct Parsed {
    pub keys: Vec<Arc<VerifyKey>>,
    pub skipped: Vec<String>,
}

/// Parses a JWKS document (`{"keys": [...]}`). The document itself must be well formed;
/// a key that cannot be used is skipped with its reason.
pub fn parse_jwks(bytes: &[u8], algs: &[Alg], allow_symmetric: bool) -> Result<Parsed, JwksError> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(JwksError::NotJson)?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(JwksError::NotJwks)?;
    let mut out = Parsed {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, v) in list.iter().enumerate() {
        let label = v
            .get("kid")
            .and_then(|k| k.as_str())
            .map(|k| format!("key {k:?}"))
            .unwrap_or_else(|| format!("key #{i}"));
        match VerifyKey::from_jwk(v, algs, allow_symmetric) {
            Ok(k) => out.keys.push(Arc::new(k)),
            Err(e) => out.skipped.push(format!("{label}: {e}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::ALL_ALGS;

    fn jwk(v: serde_json::Value) -> serde_json::Value {
        v
    }

    const EC: &str = r#"{"kty":"EC","crv":"P-256","x":"9M_iHTaJqbz-LQN5ARRNtLY-b_d-7w-uk-snX7G64CI","y":"UDtD_pQoFyTLbnyuao2Jqdr9rJIO5qIlrTlXXzRv4qY"}"#;

    #[test]
    fn key_type_decides_the_algorithms() {
        let ec = jwk(serde_json::from_str(EC).unwrap());
        let k = VerifyKey::from_jwk(&ec, &ALL_ALGS, false).unwrap();
        assert!(k.supports(Alg::ES256));
        assert!(!k.supports(Alg::HS256) && !k.supports(Alg::ES384));
        // An issuer that only accepts RS256 cannot use an EC key at all.
        assert!(VerifyKey::from_jwk(&ec, &[Alg::RS256], false).is_err());
    }

    #[test]
    fn use_key_ops_and_alg_restrict_a_key() {
        let mut v: serde_json::Value = serde_json::from_str(EC).unwrap();
        v["use"] = "enc".into();
        assert!(VerifyKey::from_jwk(&jwk(v.clone()), &ALL_ALGS, false).is_err());
        v.as_object_mut().unwrap().remove("use");
        v["key_ops"] = serde_json::json!(["encrypt"]);
        assert!(VerifyKey::from_jwk(&jwk(v.clone()), &ALL_ALGS, false).is_err());
        v["key_ops"] = serde_json::json!(["verify"]);
        assert!(VerifyKey::from_jwk(&jwk(v.clone()), &ALL_ALGS, false).is_ok());
        v["alg"] = "ES384".into();
        assert!(VerifyKey::from_jwk(&jwk(v), &ALL_ALGS, false).is_err());
    }

    #[test]
    fn symmetric_keys_only_where_allowed() {
        let oct = jwk(
            serde_json::json!({"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}),
        );
        assert!(VerifyKey::from_jwk(&oct, &ALL_ALGS, false).is_err());
        assert!(VerifyKey::from_jwk(&oct, &ALL_ALGS, true)
            .unwrap()
            .supports(Alg::HS256));
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_set() {
        let doc = format!(
            r#"{{"keys":[{EC},{{"kty":"XYZ"}},{{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}}]}}"#
        );
        let p = parse_jwks(doc.as_bytes(), &ALL_ALGS, false).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.skipped.len(), 2, "{:?}", p.skipped);
        assert!(parse_jwks(b"{\"nokeys\":1}", &ALL_ALGS, false).is_err());
        assert!(parse_jwks(b"garbage", &ALL_ALGS, false).is_err());
    }

    #[test]
    fn alg_names_are_exact() {
        assert_eq!(Alg::parse("ES256"), Some(Alg::ES256));
        assert_eq!(Alg::parse("es256"), None);
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("NONE"), None);
    }
}
