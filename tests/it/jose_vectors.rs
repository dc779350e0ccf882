//! The JWT verifier against external vectors (copied from shared/testdata/jose into
//! tests/jose/): every Wycheproof JWS case, and the RFC 7520 §4 and RFC 8037 examples
//! with a one-byte tamper of each.
//!
//! The verifier is the gateway's own (`policy::jwt::token` + `keys`), configured as an
//! issuer would be: the group's key, and the group's algorithm as the only one accepted.

use gatehouse::policy::jwt::keys::{Alg, KeySet, VerifyKey};
use gatehouse::policy::jwt::token::Parsed;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

fn load(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/jose")
        .join(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The group's algorithm: the key's `alg`, else what its type implies.
fn group_alg(key: &Value) -> Alg {
    match key["alg"].as_str() {
        // The RFC 7520 P-521 groups carry "ES521", a typo for ES512 (RFC 7520 §4.3
        // signs with ES512). Read as the algorithm it names.
        Some("ES521") => Alg::ES512,
        Some(a) => Alg::parse(a).unwrap_or_else(|| panic!("unknown alg {a}")),
        None => match (key["kty"].as_str(), key["crv"].as_str()) {
            (Some("RSA"), _) => Alg::RS256,
            (Some("EC"), Some("P-256")) => Alg::ES256,
            (Some("oct"), _) => Alg::HS256,
            other => panic!("no algorithm for {other:?}"),
        },
    }
}

/// The key as the issuer would hold it; `None` when the key is refused (wrong `use` or
/// `key_ops`, say), in which case every token must be rejected.
fn keyset(key: &Value, alg: Alg) -> KeySet {
    let mut key = key.clone();
    if key["alg"] == "ES521" {
        key["alg"] = "ES512".into();
    }
    KeySet {
        keys: VerifyKey::from_jwk(&key, &[alg], true)
            .map(Arc::new)
            .into_iter()
            .collect(),
    }
}

/// Accepted when: the compact form parses strictly, its alg is the configured one, and
/// a key verifies the signature.
fn accepts(token: &str, keys: &KeySet, alg: Alg) -> bool {
    match Parsed::parse(token) {
        Ok(p) => p.alg == alg && p.verify(keys).is_ok(),
        Err(_) => false,
    }
}

/// The six cases the vector notes call questionable, each decided here.
fn decided(tc: u64) -> Option<(bool, &'static str)> {
    Some(match tc {
        346 | 350 => (
            false,
            "a PS384 token against a key whose JWK says alg PS256: the key's `alg` binds it \
             (RFC 7517 §4.4) and the issuer accepts PS256 only; letting the token pick \
             another algorithm is what algorithm pinning exists to prevent",
        ),
        367 | 370 => (
            true,
            "named 'invalidBase64Padding', but the compact form is byte-for-byte tcId 357 \
             (a valid MAC) with no padding in it: there is nothing invalid left to reject",
        ),
        372 | 373 => (
            false,
            "a '?' inside the base64url header/payload: not in the base64url alphabet, and \
             the signature covers the exact bytes received (RFC 7515 §5.2), so a decoder \
             that skips the character would accept a second spelling of the token",
        ),
        _ => return None,
    })
}

#[test]
fn wycheproof_jws() {
    let doc = load("wycheproof/json_web_signature_test.json");
    let mut counted = 0;
    let mut failures = Vec::new();
    let mut decided_seen = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let key = if group["public"].is_object() {
            &group["public"]
        } else {
            &group["private"]
        };
        let alg = group_alg(key);
        let keys = keyset(key, alg);
        for t in group["tests"].as_array().unwrap() {
            counted += 1;
            let tc = t["tcId"].as_u64().unwrap();
            let result = t["result"].as_str().unwrap();
            // tcId 17 is a JSON serialisation, which a bearer token never is.
            let token = t["jws"].as_str().unwrap_or("");
            let got = accepts(token, &keys, alg);
            let want = match decided(tc) {
                Some((want, _why)) => {
                    decided_seen.push(tc);
                    want
                }
                None => match result {
                    "valid" => true,
                    "invalid" => false,
                    other => panic!("tcId {tc}: unexpected result {other:?}"),
                },
            };
            if got != want {
                failures.push(format!(
                    "tcId {tc} ({}, {result}): accepted={got}",
                    t["comment"]
                ));
            }
        }
    }
    assert_eq!(counted, doc["numberOfTests"].as_u64().unwrap() as usize);
    decided_seen.sort();
    assert_eq!(decided_seen, [346, 350, 367, 370, 372, 373]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rfc7520_and_rfc8037_examples_verify_and_tampers_fail() {
    for file in [
        "rfc7520/jws_4_1.rsa_v15_signature.json",
        "rfc7520/jws_4_2.rsa-pss_signature.json",
        "rfc7520/jws_4_3.ecdsa_signature.json",
        "rfc7520/jws_4_4.hmac-sha2_integrity_protection.json",
        "rfc7520/curve25519_jws.json",
    ] {
        let doc = load(file);
        let alg = Alg::parse(doc["signing"]["protected"]["alg"].as_str().unwrap()).unwrap();
        let keys = keyset(&doc["input"]["key"], alg);
        assert_eq!(keys.keys.len(), 1, "{file}: key refused");
        let compact = doc["output"]["compact"].as_str().unwrap();
        assert!(accepts(compact, &keys, alg), "{file}: example refused");
        // One byte changed in each part: the header, the payload, the signature.
        let dots: Vec<usize> = compact.match_indices('.').map(|(i, _)| i).collect();
        for pos in [5, dots[0] + 5, dots[1] + 5] {
            let mut b = compact.as_bytes().to_vec();
            b[pos] = if b[pos] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(b).unwrap();
            assert!(
                !accepts(&tampered, &keys, alg),
                "{file}: tamper at byte {pos} accepted"
            );
        }
    }
}
