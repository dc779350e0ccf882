//! JWT minting for tests, with the keys in tests/keys/ (see generate.sh there): each
//! key's kid is its file name.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;

pub fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(format!("{name}.pem"))).expect("test key")
}

/// The private key `name` for `alg`.
pub fn encoding_key(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = pem(name);
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => panic!("use sign_hmac for {alg:?}"),
    }
    .expect("PEM key")
}

/// A token signed by key `name` (kid = name unless `kid` overrides; "" = no kid).
pub fn sign_with(name: &str, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = match kid {
        Some("") => None,
        Some(k) => Some(k.to_string()),
        None => Some(name.to_string()),
    };
    encode(&h, claims, &encoding_key(name, alg)).expect("sign")
}

pub fn sign(name: &str, alg: Algorithm, claims: &Value) -> String {
    sign_with(name, alg, None, claims)
}

pub fn sign_hmac(secret: &[u8], alg: Algorithm, claims: &Value) -> String {
    encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).expect("sign")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour: `iss`, `aud`, `sub`, `scope`.
pub fn claims(iss: &str, aud: &str, sub: &str, scope: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": aud, "sub": sub, "scope": scope, "iat": now, "exp": now + 3600})
}

/// A JWKS document with the public keys `names`.
pub fn jwks(names: &[&str]) -> String {
    let keys: Vec<Value> = names
        .iter()
        .map(|n| {
            let p = keys_dir().join(format!("{n}.jwk.json"));
            serde_json::from_slice(&std::fs::read(p).expect("jwk")).expect("jwk json")
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
