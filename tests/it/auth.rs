//! Authentication and authorization through the real gateway: JWT (every algorithm
//! family, every rejection with its status, challenge, metric reason and problem body),
//! API keys (header and query), scopes, identity headers, WebSocket upgrades.

use crate::common;

use common::tokens::{self, claims, sign, sign_hmac, sign_with};
use common::{assert_problem, client, config, raw, Gateway, Resp, TestDir, Upstream};
use jsonwebtoken::Algorithm;
use serde_json::json;

const ISS: &str = "https://id.test/";
const AUD: &str = "api.test";
const HMAC: &str = "an-hmac-secret-of-at-least-32-bytes!";
const ACME_KEY: &str = "acme-key-1";

struct Setup {
    gw: Gateway,
    up: Upstream,
    _dir: TestDir,
}

/// One gateway with two issuers (`corp`: every family, keys from a file plus an HMAC
/// secret; `rsa-only`: RS256 only), API keys in header and query, and routes for each
/// method combination.
async fn setup() -> Setup {
    let up = Upstream::start("u").await;
    let dir = TestDir::new();
    let corp = dir.write(
        "corp.jwks.json",
        &tokens::jwks(&["rsa", "ec256", "ec384", "ed25519"]),
    );
    let rsa = dir.write("rsa.jwks.json", &tokens::jwks(&["rsa"]));
    let acme_hash = gatehouse::hash_key(ACME_KEY);
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{up}" }} ] }}
        auth:
          api_key: {{ header: X-API-Key, query: api_key }}
          jwt:
            - name: corp
              issuer: "{ISS}"
              audiences: [{AUD}, other.test]
              algorithms: [RS256, PS256, ES256, ES384, EdDSA, HS256]
              jwks_file: "{corp}"
              hmac_secret: "{HMAC}"
              leeway: 5s
            - name: rsa-only
              issuer: https://rsa.test/
              audiences: [{AUD}]
              algorithms: [RS256]
              jwks_file: "{rsa}"
        consumers:
          - id: acme
            api_keys: ["{acme_hash}"]
            scopes: [orders:read]
          - id: partner-x
            jwt_subjects: [partner-x]
        routes:
          - {{ name: jwt, match: {{ path_prefix: /jwt }}, upstream: u, auth: [jwt] }}
          - {{ name: keyed, match: {{ path_prefix: /keyed }}, upstream: u, auth: [api_key] }}
          - name: orders
            match: {{ path_prefix: /orders }}
            upstream: u
            auth: [jwt, api_key]
            scopes: [orders:read]
          - name: admin
            match: {{ path_prefix: /admin-api }}
            upstream: u
            auth: [jwt, api_key]
            scopes: [orders:read, orders:admin]
          - name: forward
            match: {{ path_prefix: /forward }}
            upstream: u
            auth: [jwt, api_key]
            auth_forward_credential: true
          - {{ name: public, match: {{ path_prefix: /public }}, upstream: u }}
        "#,
        up = up.address(),
        corp = corp.display(),
        rsa = rsa.display(),
    )))
    .await;
    Setup { gw, up, _dir: dir }
}

async fn get_h(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Resp::from_reqwest(req.send().await.expect("request")).await
}

async fn bearer(gw: &Gateway, path: &str, token: &str) -> Resp {
    get_h(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

async fn failures(gw: &Gateway, route: &str, reason: &str) -> f64 {
    gw.metrics().await.sum(
        "gatehouse_auth_failures_total",
        &[("route", route), ("reason", reason)],
    )
}

/// A 401 as RFC 6750 and RFC 9457 want it, with a body that does not echo `secret`.
fn assert_401(r: &Resp, challenge: &str, secret: &str) {
    assert_problem(r, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(challenge),
        "{}",
        r.text()
    );
    if !secret.is_empty() {
        assert!(!r.text().contains(secret), "the body echoes the credential");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_family_is_accepted_and_identity_reaches_the_upstream() {
    let s = setup().await;
    let c = claims(ISS, AUD, "partner-x", "orders:read extra");
    let cases = [
        ("RS256", sign("rsa", Algorithm::RS256, &c)),
        ("PS256", sign("rsa", Algorithm::PS256, &c)),
        ("ES256", sign("ec256", Algorithm::ES256, &c)),
        ("ES384", sign("ec384", Algorithm::ES384, &c)),
        ("EdDSA", sign("ed25519", Algorithm::EdDSA, &c)),
        ("HS256", sign_hmac(HMAC.as_bytes(), Algorithm::HS256, &c)),
        // No kid: every key of a matching type is tried.
        (
            "ES256 without kid",
            sign_with("ec256", Algorithm::ES256, Some(""), &c),
        ),
    ];
    for (name, token) in cases {
        let r = get_h(
            &s.gw,
            "/jwt/x",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-consumer-id", "spoofed"),
                ("x-auth-scopes", "admin"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let got = s.up.last_request().unwrap();
        assert_eq!(
            got.header("x-consumer-id").as_deref(),
            Some("partner-x"),
            "{name}"
        );
        assert_eq!(got.header_count("x-consumer-id"), 1);
        assert_eq!(got.header("x-auth-subject").as_deref(), Some("partner-x"));
        assert_eq!(
            got.header("x-auth-scopes").as_deref(),
            Some("orders:read extra")
        );
        assert!(
            got.header("authorization").is_none(),
            "{name}: the token reached the upstream"
        );
    }
    // An unknown subject is still authenticated, as <issuer name>:<sub>.
    let t = sign(
        "ec256",
        Algorithm::ES256,
        &claims(ISS, "other.test", "bob", ""),
    );
    assert_eq!(bearer(&s.gw, "/jwt", &t).await.status, 200);
    let got = s.up.last_request().unwrap();
    assert_eq!(got.header("x-consumer-id").as_deref(), Some("corp:bob"));
    assert_eq!(got.header("x-auth-scopes").as_deref(), Some(""));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_refused_with_its_reason() {
    let s = setup().await;
    let now = tokens::now();
    let good = claims(ISS, AUD, "partner-x", "");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let es = |c: &serde_json::Value| sign("ec256", Algorithm::ES256, c);
    let rsa_pub_pem = std::fs::read(tokens::keys_dir().join("rsa.pub.pem")).unwrap();
    let rsa_claims = claims("https://rsa.test/", AUD, "partner-x", "");
    let tampered = {
        let t = es(&good);
        let parts: Vec<&str> = t.split('.').collect();
        let evil = tokens::b64(with("sub", json!("admin")).to_string().as_bytes());
        format!("{}.{evil}.{}", parts[0], parts[2])
    };
    let none = format!(
        "{}.{}.",
        tokens::b64(br#"{"alg":"none","typ":"JWT"}"#),
        tokens::b64(good.to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", none, "bad_algorithm"),
        (
            "alg none with a signature",
            format!(
                "{}.{}.c2ln",
                tokens::b64(br#"{"alg":"none"}"#),
                tokens::b64(good.to_string().as_bytes())
            ),
            "bad_algorithm",
        ),
        (
            "HS256 keyed with the RSA public key, RS256-only issuer",
            sign_hmac(&rsa_pub_pem, Algorithm::HS256, &rsa_claims),
            "bad_algorithm",
        ),
        (
            "HS256 keyed with the RSA public key, issuer that also takes HS256",
            sign_hmac(&rsa_pub_pem, Algorithm::HS256, &good),
            "bad_signature",
        ),
        ("expired", es(&with("exp", json!(now - 60))), "expired"),
        (
            "nbf beyond the leeway",
            es(&with("nbf", json!(now + 60))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            es(&with("iss", json!("https://evil.test/"))),
            "wrong_issuer",
        ),
        (
            "wrong aud",
            es(&with("aud", json!("evil.test"))),
            "wrong_audience",
        ),
        ("tampered payload", tampered, "bad_signature"),
        (
            "kid not in the JWKS",
            sign_with("ec256b", Algorithm::ES256, Some("ec256b"), &good),
            "unknown_key",
        ),
        (
            "signed by another key under a known kid",
            sign_with("ec256b", Algorithm::ES256, Some("ec256"), &good),
            "bad_signature",
        ),
        (
            "malformed base64",
            {
                let t = es(&good);
                format!("{}!", &t[..t.len() - 1])
            },
            "malformed",
        ),
        ("garbage", "not-a-token".into(), "malformed"),
        (
            "no exp",
            es(&{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            "missing_claim",
        ),
    ];
    for (name, token, reason) in cases {
        let before = failures(&s.gw, "jwt", reason).await;
        let r = bearer(&s.gw, "/jwt", &token).await;
        assert_401(
            &r,
            r#"Bearer realm="gatehouse", error="invalid_token""#,
            &token,
        );
        assert_eq!(
            r.json()["detail"],
            "the credential was not accepted",
            "{name}: the detail must stay generic"
        );
        let after = failures(&s.gw, "jwt", reason).await;
        assert_eq!(after, before + 1.0, "{name}: metric reason {reason}");
    }
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
    // No credential at all: a plain challenge, reason `missing`.
    let r = get_h(&s.gw, "/jwt", &[]).await;
    assert_401(&r, r#"Bearer realm="gatehouse""#, "");
    assert_eq!(failures(&s.gw, "jwt", "missing").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_in_header_and_query() {
    let s = setup().await;
    // Header.
    let r = get_h(&s.gw, "/keyed/a", &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = s.up.last_request().unwrap();
    assert_eq!(got.header("x-consumer-id").as_deref(), Some("acme"));
    assert!(
        got.header("x-api-key").is_none(),
        "the key reached the upstream"
    );
    assert!(got.header("x-auth-subject").is_none());
    // Query: the parameter is gone upstream, the rest of the query stays.
    let r = get_h(&s.gw, &format!("/keyed/b?x=1&api_key={ACME_KEY}&y=2"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = s.up.last_request().unwrap();
    assert_eq!(got.uri(), "/keyed/b?x=1&y=2");
    assert_eq!(got.header("x-consumer-id").as_deref(), Some("acme"));
    // Wrong key, in either place: 401 with the API-key challenge.
    for r in [
        get_h(&s.gw, "/keyed", &[("x-api-key", "acme-key-2")]).await,
        get_h(&s.gw, "/keyed?api_key=nope", &[]).await,
    ] {
        assert_401(
            &r,
            r#"ApiKey realm="gatehouse", error="invalid_key""#,
            "acme-key-2",
        );
    }
    assert_eq!(failures(&s.gw, "keyed", "invalid_api_key").await, 2.0);
    let r = get_h(&s.gw, "/keyed", &[]).await;
    assert_401(&r, r#"ApiKey realm="gatehouse""#, "");
    // A route taking both: both challenges.
    let r = get_h(&s.gw, "/orders", &[]).await;
    assert_401(
        &r,
        r#"Bearer realm="gatehouse", ApiKey realm="gatehouse""#,
        "",
    );
    // A route that forwards the credential.
    let r = get_h(&s.gw, &format!("/forward?api_key={ACME_KEY}"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.up.last_request().unwrap().uri(),
        format!("/forward?api_key={ACME_KEY}")
    );
    let t = sign("ec256", Algorithm::ES256, &claims(ISS, AUD, "x", ""));
    assert_eq!(bearer(&s.gw, "/forward", &t).await.status, 200);
    assert_eq!(
        s.up.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {t}"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_decide_403_or_200_for_jwt_and_api_key_consumers() {
    let s = setup().await;
    let with_scope = sign(
        "ec256",
        Algorithm::ES256,
        &claims(ISS, AUD, "someone", "orders:read"),
    );
    let without = sign(
        "ec256",
        Algorithm::ES256,
        &claims(ISS, AUD, "someone", "orders:write"),
    );
    assert_eq!(bearer(&s.gw, "/orders", &with_scope).await.status, 200);
    let r = bearer(&s.gw, "/orders", &without).await;
    assert_problem(&r, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="gatehouse", error="insufficient_scope", scope="orders:read""#)
    );
    // API-key consumers get their scopes from the config.
    assert_eq!(
        get_h(&s.gw, "/orders", &[("x-api-key", ACME_KEY)])
            .await
            .status,
        200
    );
    let r = get_h(&s.gw, "/admin-api", &[("x-api-key", ACME_KEY)]).await;
    assert_problem(&r, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="gatehouse", error="insufficient_scope", scope="orders:read orders:admin""#
        )
    );
    assert_eq!(failures(&s.gw, "orders", "insufficient_scope").await, 1.0);
    assert_eq!(failures(&s.gw, "admin", "insufficient_scope").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let s = setup().await;
    let spoof = [
        ("x-consumer-id", "admin"),
        ("x-auth-subject", "root"),
        ("x-auth-scopes", "orders:admin"),
    ];
    let r = get_h(&s.gw, "/public/x", &spoof).await;
    assert_eq!(r.status, 200);
    let got = s.up.last_request().unwrap();
    for (h, _) in spoof {
        assert!(
            got.header(h).is_none(),
            "{h} reached the upstream of a public route"
        );
    }
    let mut with_key = spoof.to_vec();
    with_key.push(("x-api-key", ACME_KEY));
    assert_eq!(get_h(&s.gw, "/keyed", &with_key).await.status, 200);
    let got = s.up.last_request().unwrap();
    assert_eq!(got.header("x-consumer-id").as_deref(), Some("acme"));
    assert!(got.header("x-auth-subject").is_none());
    assert!(got.header("x-auth-scopes").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_to_a_protected_route_needs_credentials() {
    let s = setup().await;
    let req = "GET /jwt/socket HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
               Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw::request(s.gw.addr(), req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="gatehouse""#)
    );
    assert_eq!(s.up.hits(), 0, "the upgrade reached the upstream");
}

/// The README's example: the demo config with `scripts/demo-token.sh` and the demo key.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_config_accepts_the_demo_token_and_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = Gateway::start(&common::demo_config(&a, &b)).await;
    let out = std::process::Command::new(root.join("scripts/demo-token.sh"))
        .output()
        .expect("run scripts/demo-token.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(get_h(&gw, "/account", &[]).await.status, 401);
    let r = bearer(&gw, "/account", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_h(&gw, "/account?api_key=demo-key-123", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_h(&gw, "/account", &[("x-api-key", "demo-key-123")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Prints the `requests:` of loadtest/scenarios/auth-jwt-es256.yaml: 100 distinct ES256
/// tokens (key tests/keys/ec256.pem), valid until 2100. Run with
/// `cargo test --test it -- --ignored auth::loadtest_tokens --nocapture`.
#[test]
#[ignore]
fn loadtest_tokens() {
    for i in 0..100 {
        let c = json!({
            "iss": "https://id.loadtest/", "aud": "api.loadtest", "sub": format!("user-{i}"),
            "scope": "orders:read", "iat": 1_790_000_000u64, "exp": 4_102_444_800u64,
        });
        let t = sign("ec256", Algorithm::ES256, &c);
        println!("  - {{ method: GET, path: /, headers: {{ Authorization: \"Bearer {t}\" }} }}");
    }
}
