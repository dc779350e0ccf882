//! Property tests of the JWS compact parser and the claims checks: no token makes them
//! panic, and what the parser accepts has exactly one spelling (the verified-token cache
//! keys on the token text, so two spellings of one token would be two entries, and a
//! lax decoder would let a token be re-spelt past a deny list). Inputs: arbitrary
//! strings, tokens assembled from arbitrary and JSON-shaped parts, and the seeds in
//! `fuzz/corpus/jwt/` (one token per file; the `claims-*` seeds are payload JSON).

use super::super::claims::{check, Rules};
use super::*;
use crate::proptest_support::{config, corpus, text};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;

/// Parses and, when accepted, checks what the parser promises.
fn parse_checked(token: &str) -> Result<(), TestCaseError> {
    let Ok(p) = Parsed::parse(token) else {
        return Ok(());
    };
    let mut parts = token.split('.');
    let (h, pl, s) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    prop_assert_eq!(parts.next(), None, "four parts accepted");
    prop_assert_eq!(p.signing_input, format!("{h}.{pl}"));
    // One spelling: re-encoding what was decoded gives the token back.
    prop_assert_eq!(&URL_SAFE_NO_PAD.encode(&p.payload), pl);
    prop_assert_eq!(&URL_SAFE_NO_PAD.encode(&p.signature), s);
    prop_assert!(!p.signature.is_empty());
    prop_assert!(token.len() <= MAX_TOKEN_LEN);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap_or_default()).unwrap_or_default();
    prop_assert!(header.is_object() && header.get("crit").is_none());
    prop_assert_eq!(
        header.get("alg").and_then(|a| a.as_str()),
        Some(p.alg.name())
    );
    // The claims of an accepted token can be read and checked without a panic.
    if let Ok(c) = claims(&p.payload) {
        claims_checked(&c, 1_700_000_000);
    }
    Ok(())
}

fn claims_checked(c: &serde_json::Map<String, serde_json::Value>, now: u64) {
    let rules = Rules {
        audiences: vec!["api".into()],
        leeway: 30,
        consumer_claim: "sub".into(),
        scope_claim: "scope".into(),
    };
    let _ = check(c, &rules, now);
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "HS256", "RS256", "ES512", "EdDSA", "none", "NONE", "hs256", "", "api", "b64",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object with the header or claim names the code reads, and arbitrary values.
fn json_object(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(names), json_value()), 0..6).prop_map(|kv| {
        serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .to_string()
    })
}

/// One part of a token: valid base64url of JSON or bytes, or something near it.
fn part(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json_object(names).prop_map(|j| b64(j.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| b64(&b)),
        // Padded, standard-alphabet or damaged spellings.
        1 => prop::collection::vec(any::<u8>(), 1..24)
            .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        1 => "[A-Za-z0-9_=+/. -]{0,24}",
    ]
}

const HEADER_NAMES: &[&str] = &["alg", "kid", "typ", "crit", "jku", "x5u", "b64", "alg "];
const CLAIM_NAMES: &[&str] = &[
    "exp",
    "nbf",
    "iat",
    "aud",
    "iss",
    "sub",
    "scope",
    "client_id",
    "scp",
];

#[test]
fn corpus_does_not_panic() {
    for (name, bytes) in corpus("jwt") {
        let t = text(&bytes);
        if name.starts_with("claims-") {
            match serde_json::from_str::<serde_json::Value>(&t) {
                Ok(serde_json::Value::Object(m)) => claims_checked(&m, 1_700_000_000),
                _ => panic!("fuzz/corpus/jwt/{name}: not a JSON object"),
            }
        } else {
            parse_checked(t.trim_end_matches('\n'))
                .unwrap_or_else(|e| panic!("fuzz/corpus/jwt/{name}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_text_does_not_panic(s in any::<String>()) {
        parse_checked(&s)?;
    }

    #[test]
    fn assembled_tokens_do_not_panic(
        h in part(HEADER_NAMES),
        p in part(CLAIM_NAMES),
        s in part(&["x"]),
        sep in prop::sample::select(vec![".", "..", "", ". "]),
        extra in prop::option::of("[A-Za-z0-9_.]{0,8}"),
    ) {
        let mut token = format!("{h}{sep}{p}.{s}");
        if let Some(e) = extra {
            token.push('.');
            token.push_str(&e);
        }
        parse_checked(&token)?;
    }

    /// Well-formed tokens always parse, whatever their payload bytes.
    #[test]
    fn canonical_tokens_parse(
        alg in prop::sample::select(crate::config::values::ALL_ALGS.to_vec()),
        kid in prop::option::of(".{0,16}"),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        sig in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut header = serde_json::json!({ "alg": alg.name() });
        if let Some(k) = &kid {
            header["kid"] = k.clone().into();
        }
        let token = format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(&payload), b64(&sig));
        let p = Parsed::parse(&token);
        prop_assert!(p.is_ok(), "{token}: {p:?}");
        let p = p.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(p.alg, alg);
        prop_assert_eq!(p.kid, kid);
        prop_assert_eq!(p.payload, payload);
        parse_checked(&token)?;
    }

    #[test]
    fn claims_do_not_panic(payload in json_object(CLAIM_NAMES), now in any::<u64>()) {
        if let Ok(c) = claims(payload.as_bytes()) {
            claims_checked(&c, now);
        }
    }
}
