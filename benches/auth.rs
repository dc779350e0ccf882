//! The auth hot paths: JWT verification cold (full parse, signature and claims) vs
//! cached (the verified-token cache), per algorithm family, and the API-key lookup.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::internals::config::load;
use gatehouse::internals::policy::PolicySet;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::path::PathBuf;

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

const HMAC: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn policies() -> PolicySet {
    let jwks: Vec<serde_json::Value> = ["rsa", "ec256", "ed25519"]
        .iter()
        .map(|n| {
            serde_json::from_slice(
                &std::fs::read(keys_dir().join(format!("{n}.jwk.json"))).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let file =
        std::env::temp_dir().join(format!("gatehouse-bench-{}.jwks.json", std::process::id()));
    std::fs::write(&file, serde_json::json!({ "keys": jwks }).to_string()).unwrap();
    let consumers: String = (0..1000)
        .map(|i| {
            format!(
                "  - {{ id: c{i}, api_keys: [\"{}\"], scopes: [orders:read] }}\n",
                gatehouse::hash_key(format!("key-{i}"))
            )
        })
        .collect();
    let yaml = format!(
        "listeners: [ {{ name: a, address: \"127.0.0.1:1\" }} ]\n\
         auth:\n  api_key: {{ header: X-API-Key }}\n  jwt:\n\
         \x20   - {{ name: corp, issuer: \"https://id.test/\", audiences: [api], algorithms: [RS256, ES256, EdDSA, HS256], jwks_file: \"{}\", hmac_secret: \"{HMAC}\" }}\n\
         consumers:\n{consumers}",
        file.display()
    );
    let cfg = load::parse(&yaml, &|_| None).expect("bench config");
    let stores = gatehouse::internals::store::Registry::new(std::sync::Arc::new(
        gatehouse::internals::clock::Clock::system(),
    ));
    let set = PolicySet::build(&cfg, None, &stores).unwrap_or_else(|e| panic!("{e:?}"));
    let _ = std::fs::remove_file(file);
    set
}

fn token(alg: Algorithm) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://id.test/", "aud": "api", "sub": "user-42",
        "scope": "orders:read orders:write", "iat": now, "exp": now + 3600,
    });
    let pem = |n: &str| std::fs::read(keys_dir().join(format!("{n}.pem"))).unwrap();
    let (key, kid) = match alg {
        Algorithm::RS256 => (EncodingKey::from_rsa_pem(&pem("rsa")).unwrap(), Some("rsa")),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&pem("ec256")).unwrap(),
            Some("ec256"),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&pem("ed25519")).unwrap(),
            Some("ed25519"),
        ),
        _ => (EncodingKey::from_secret(HMAC.as_bytes()), None),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &claims, &key).unwrap()
}

fn bench_jwt(c: &mut Criterion) {
    let set = policies();
    let jwt = set.jwt.clone().expect("jwt configured");
    let mut g = c.benchmark_group("jwt_verify");
    for (name, alg) in [
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
        ("EdDSA", Algorithm::EdDSA),
        ("HS256", Algorithm::HS256),
    ] {
        let t = token(alg);
        let now = gatehouse::internals::policy::jwt::unix_now();
        let mono = std::time::Instant::now();
        g.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| {
                futures::executor::block_on(jwt.verify(black_box(&t), now, mono))
                    .expect("valid token")
            })
        });
        futures::executor::block_on(jwt.authenticate(&t)).expect("valid token");
        g.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| futures::executor::block_on(jwt.authenticate(black_box(&t))).expect("hit"))
        });
    }
    g.finish();
}

fn bench_api_key(c: &mut Criterion) {
    let set = policies();
    let keys = set.api_key.clone().expect("api_key configured");
    let mut req = pingora::http::RequestHeader::build("GET", b"/api/v1/orders", None).unwrap();
    req.insert_header("x-api-key", "key-777").unwrap();
    c.bench_function("api_key_lookup/1000_consumers", |b| {
        b.iter(|| {
            let k = keys.credential(black_box(&req)).expect("present");
            keys.lookup(&k).expect("known key")
        })
    });
}

criterion_group!(benches, bench_jwt, bench_api_key);
criterion_main!(benches);
