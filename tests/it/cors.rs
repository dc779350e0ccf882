//! CORS at the edge (`routes[].cors`): preflights answered by the gateway before auth and
//! limits and never forwarded; actual requests get the response fields (on rejections
//! too); disallowed origins get none; `Vary: Origin`; one cache variant per allowed origin.

use crate::common::origin::{cache_gateway, send, Origin, Reply};
use crate::common::{self, assert_problem, client, config, Gateway, Upstream};

const KEY: &str = "cors-test-key-1";
const APP: &str = "https://app.example.com";

async fn gateway(up: &Upstream) -> Gateway {
    let hash = gatehouse::hash_key(KEY);
    Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        auth:
          api_key: {{ header: X-API-Key }}
        consumers:
          - {{ id: acme, api_keys: ["{hash}"] }}
        routes:
          - name: private
            match: {{ path_prefix: /private, methods: [GET, PUT] }}
            upstream: u
            auth: [api_key]
            rate_limit: {{ limit: 1/min, burst: 1, key: ip }}
            cors:
              origins: ["{APP}", "*.partner.test", "~https://[a-z]+\\.tenant\\.test"]
              methods: [GET, PUT]
              headers: [Authorization, Content-Type, X-API-Key]
              expose: [RateLimit, RateLimit-Policy]
              credentials: true
              max_age: 10m
          - name: public
            match: {{ path_prefix: /public }}
            upstream: u
            cors: {{ origins: ["*"] }}
          - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: u }}
        "#,
        up.address()
    )))
    .await
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        h.push(("access-control-request-headers", headers));
    }
    h
}

fn cors_fields(r: &common::Resp) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect()
}

fn varies_on(r: &common::Resp, token: &str) -> bool {
    r.headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[tokio::test]
async fn a_credentialed_preflight_is_answered_before_auth_and_limits_and_never_forwarded() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    let http = client();
    // Twice: the route's limit (1/min by ip) and its auth never see a preflight.
    for _ in 0..2 {
        let r = send(
            &http,
            "OPTIONS",
            &gw.url("/private/orders"),
            &preflight(APP, "PUT", "content-type, x-api-key"),
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("Authorization, Content-Type, X-API-Key")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert!(varies_on(&r, "origin"), "{:?}", r.headers);
        assert!(r.header("x-request-id").is_some());
        assert!(r.body.is_empty());
    }
    assert_eq!(up.hits(), 0, "a preflight never reaches the upstream");

    // The actual request still needs its credential; its 401 carries the CORS fields so
    // the page's script can read it.
    let r = send(&http, "PUT", &gw.url("/private/orders"), &[("origin", APP)]).await;
    assert_problem(&r, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(up.hits(), 0);

    let r = send(
        &http,
        "GET",
        &gw.url("/private/orders"),
        &[("origin", APP), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(APP),
        "never *"
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("RateLimit, RateLimit-Policy")
    );
    assert!(varies_on(&r, "origin"), "{:?}", r.headers);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn wildcard_and_regex_origins_and_a_preflight_without_credentials() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    let http = client();
    for origin in ["https://shop.partner.test", "https://acme.tenant.test"] {
        let r = send(
            &http,
            "OPTIONS",
            &gw.url("/private/x"),
            &preflight(origin, "GET", ""),
        )
        .await;
        assert_eq!(r.status, 204);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
    // Anchored regex: a longer host is not the tenant's.
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/private/x"),
        &preflight("https://acme.tenant.test.evil.test", "GET", ""),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(cors_fields(&r).is_empty(), "{:?}", cors_fields(&r));

    // `origins: ["*"]` without credentials: `*`, no Allow-Credentials.
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/public/x"),
        &preflight("https://anyone.test", "POST", ""),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert!(r.header("access-control-allow-credentials").is_none());
    let r = send(
        &http,
        "GET",
        &gw.url("/public/x"),
        &[("origin", "https://anyone.test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(up.hits(), 1, "only the actual request was forwarded");
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_fields_and_is_not_an_error() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    let http = client();
    let evil = "https://evil.test";
    // A preflight from it: 204 without CORS fields, not forwarded.
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/private/x"),
        &preflight(evil, "GET", ""),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(cors_fields(&r).is_empty(), "{:?}", cors_fields(&r));
    // An allowed origin announcing a method or a header `cors` does not allow: same.
    for (path, m, h) in [
        ("/public/x", "DELETE", ""),
        ("/private/x", "GET", "x-secret"),
    ] {
        let r = send(&http, "OPTIONS", &gw.url(path), &preflight(APP, m, h)).await;
        assert_eq!(r.status, 204);
        assert!(cors_fields(&r).is_empty(), "{m} {h}: {:?}", cors_fields(&r));
    }
    // A preflight is routed as the request it announces: no route takes DELETE on
    // /private, so it gets that request's 404.
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/private/x"),
        &preflight(APP, "DELETE", ""),
    )
    .await;
    assert_problem(&r, 404);
    assert_eq!(up.hits(), 0);
    // The actual request is served, without CORS fields.
    let r = send(
        &http,
        "GET",
        &gw.url("/private/x"),
        &[("origin", evil), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(cors_fields(&r).is_empty(), "{:?}", cors_fields(&r));
    assert!(varies_on(&r, "origin"));
    // On a route without `cors`, a preflight is the upstream's business.
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/plain/x"),
        &preflight(APP, "GET", ""),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last_request().map(|q| q.method), Some("OPTIONS".into()));
}

#[tokio::test]
async fn the_upstreams_own_cors_fields_are_replaced_and_the_cache_keeps_a_variant_per_origin() {
    let origin = Origin::start().await;
    origin.script("/c", |_, n| {
        Reply::ok("max-age=60", format!("body {n}"))
            .header("access-control-allow-origin", "*")
            .header("vary", "Accept-Language")
    });
    let gw = cache_gateway(
        &origin,
        "{ memory: 1MiB }",
        r#"- { name: c, match: { path: /c }, upstream: o, cache: { ttl: 60s }, cors: { origins: ["https://a.test", "https://b.test"], credentials: true } }"#,
    )
    .await;
    let http = client();
    let get = |o: &'static str| {
        let http = http.clone();
        let url = gw.url("/c");
        async move { send(&http, "GET", &url, &[("origin", o)]).await }
    };
    let a1 = get("https://a.test").await;
    assert_eq!(a1.text(), "body 1");
    assert_eq!(
        a1.header("access-control-allow-origin"),
        Some("https://a.test")
    );
    assert!(
        varies_on(&a1, "origin") && varies_on(&a1, "accept-language"),
        "{:?}",
        a1.headers
    );
    let b1 = get("https://b.test").await;
    assert_eq!(
        b1.text(),
        "body 2",
        "another allowed origin: its own variant"
    );
    assert_eq!(
        b1.header("access-control-allow-origin"),
        Some("https://b.test")
    );
    let a2 = get("https://a.test").await;
    assert_eq!(a2.text(), "body 1", "a hit of a's variant");
    assert!(
        a2.header("cache-status").unwrap_or("").contains("hit"),
        "{:?}",
        a2.headers
    );
    assert_eq!(
        a2.header("access-control-allow-origin"),
        Some("https://a.test")
    );
    // Disallowed origins share one variant, and never see the upstream's `*`.
    let x = get("https://x.test").await;
    assert_eq!(x.text(), "body 3");
    assert!(cors_fields(&x).is_empty(), "{:?}", cors_fields(&x));
    let y = get("https://y.test").await;
    assert_eq!(y.text(), "body 3");
    assert!(cors_fields(&y).is_empty());
    assert_eq!(origin.hits("/c"), 3);
}

#[test]
fn check_refuses_a_credentialed_wildcard_origin_with_its_path() {
    let yaml = config(
        r#"
        upstreams:
          u: { targets: [ { address: "127.0.0.1:9" } ] }
        routes:
          - name: r
            upstream: u
            cors: { origins: ["*"], credentials: true }
          - name: s
            upstream: u
            match: { path_prefix: /s }
            cors: { origins: ["~(unclosed"] }
        "#,
    );
    let (code, out) = common::gateway::check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("routes[0].cors.origins[0]"), "{out}");
    assert!(out.contains("credentials"), "{out}");
    assert!(
        out.contains("routes[1].cors.origins[0]: invalid regex"),
        "{out}"
    );
}

/// The README's "Edge policies" examples against `conf/demo.yaml`: the preflight on
/// /account, the compressed orders response, the refused /internal.
#[tokio::test]
async fn the_demo_config_answers_the_readme_edge_examples() {
    let up = Upstream::start("echo").await;
    let other = Upstream::start("other").await;
    let gw = Gateway::start(&common::demo_config(&up, &other)).await;
    let http = client();
    let r = send(
        &http,
        "OPTIONS",
        &gw.url("/account"),
        &preflight("http://localhost:3000", "GET", "authorization"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = send(
        &http,
        "GET",
        &gw.url("/api/v1/orders/42"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        r.headers
    );
    let r = send(&http, "GET", &gw.url("/internal/x"), &[]).await;
    assert_problem(&r, 403);
    assert_eq!(up.hits() + other.hits(), 1);
}
