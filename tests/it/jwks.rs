//! JWKS over HTTP: key rotation picked up on the first token with the new `kid` (no
//! restart), old keys kept when the JWKS server is down or serves garbage, and the
//! `gatehouse_jwks_refreshes_total` metric.
//!
//! The unknown-kid refetch is rate-limited to once per 10 s per issuer; each test uses
//! its own gateway and at most one limited refetch, so no test waits for the window
//! (the limiter itself is unit-tested with a driven clock in policy/jwt/jwks.rs).

use crate::common;

use common::jwks::JwksServer;
use common::tokens::{self, claims, sign};
use common::{client, config, Gateway, Resp, Upstream};
use jsonwebtoken::Algorithm;

const ISS: &str = "https://id.test/";
const AUD: &str = "api.test";

async fn start(jwks_url: &str, up: &Upstream) -> Gateway {
    Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{up}" }} ] }}
        auth:
          jwt:
            - name: corp
              issuer: "{ISS}"
              audiences: [{AUD}]
              algorithms: [ES256]
              jwks_url: "{jwks_url}"
        routes:
          - {{ name: api, match: {{ path_prefix: / }}, upstream: u, auth: [jwt] }}
        "#,
        up = up.address(),
    )))
    .await
}

async fn call(gw: &Gateway, token: &str) -> Resp {
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    Resp::from_reqwest(r).await
}

async fn refreshes(gw: &Gateway, result: &str) -> f64 {
    gw.metrics().await.sum(
        "gatehouse_jwks_refreshes_total",
        &[("issuer", "corp"), ("result", result)],
    )
}

fn token(key: &str) -> String {
    sign(key, Algorithm::ES256, &claims(ISS, AUD, "partner-x", ""))
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_is_picked_up_on_the_first_token_with_the_new_kid() {
    let up = Upstream::start("u").await;
    let jwks = JwksServer::start(&tokens::jwks(&["ec256"])).await;
    let gw = start(&jwks.url(), &up).await;
    // Fetched once at startup, before the gateway reported ready.
    assert_eq!(jwks.hits(), 1);
    assert_eq!(refreshes(&gw, "ok").await, 1.0);
    assert_eq!(call(&gw, &token("ec256")).await.status, 200);

    // The identity provider rotates: new key, new kid; the old one is still listed.
    jwks.set_body(&tokens::jwks(&["ec256b", "ec256"]));
    let r = call(&gw, &token("ec256b")).await;
    assert_eq!(r.status, 200, "new kid not picked up: {}", r.text());
    assert_eq!(jwks.hits(), 2, "exactly one refetch");
    assert_eq!(refreshes(&gw, "ok").await, 2.0);
    assert_eq!(call(&gw, &token("ec256")).await.status, 200);

    // Within the 10 s window, another unknown kid does not refetch.
    let unknown = common::tokens::sign_with(
        "ec256",
        Algorithm::ES256,
        Some("never-published"),
        &claims(ISS, AUD, "x", ""),
    );
    assert_eq!(call(&gw, &unknown).await.status, 401);
    assert_eq!(jwks.hits(), 2, "refetch not rate-limited");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_server_that_goes_down_or_breaks_leaves_the_old_keys_working() {
    let up = Upstream::start("u").await;
    let jwks = JwksServer::start(&tokens::jwks(&["ec256"])).await;
    let gw = start(&jwks.url(), &up).await;
    assert_eq!(call(&gw, &token("ec256")).await.status, 200);

    // Garbage: the unknown kid refetches, gets a malformed document, keeps the keys.
    jwks.set_body("{\"keys\": 42}");
    assert_eq!(call(&gw, &token("ec256b")).await.status, 401);
    assert_eq!(refreshes(&gw, "malformed").await, 1.0);
    assert_eq!(call(&gw, &token("ec256")).await.status, 200);

    // Down: the background refresh or any refetch fails; the old keys keep serving.
    jwks.stop().await;
    for _ in 0..3 {
        assert_eq!(call(&gw, &token("ec256")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_server_down_at_the_time_of_the_refetch_counts_an_error() {
    let up = Upstream::start("u").await;
    let jwks = JwksServer::start(&tokens::jwks(&["ec256"])).await;
    let gw = start(&jwks.url(), &up).await;
    jwks.stop().await;
    let r = call(&gw, &token("ec256b")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metrics().await.sum(
            "gatehouse_auth_failures_total",
            &[("route", "api"), ("reason", "unknown_key")]
        ),
        1.0
    );
    assert_eq!(refreshes(&gw, "error").await, 1.0);
    assert_eq!(call(&gw, &token("ec256")).await.status, 200);
}
