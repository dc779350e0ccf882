//! API versions (`routes[].versions`): each form a request may name its version in
//! reaches that version's upstream with the path as routed, deprecated versions carry
//! `Deprecation`/`Sunset`/`Link`, an unknown version is a 404 listing the versions,
//! requests are counted per configured version, and the cache never answers one
//! version with another's response.

use crate::common;

use common::origin::{send, Origin, Reply};
use common::{assert_problem, client, config, Gateway, Resp, Upstream};

/// Version 1 on `one`, version 2 (the default) on `two`; version 1 deprecated.
async fn versioned(one: &Upstream, two: &Upstream, route_extra: &str, top: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "{top}upstreams:\n  v1: {{ targets: [ {{ address: \"{}\" }} ] }}\n  v2: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    versions:\n      from: [path, \"header:Accept-Version\", \"header:X-API-Version\", media_type]\n      default: \"2\"\n      upstreams: {{ \"1\": v1, \"2\": v2 }}\n      deprecated: {{ \"1\": {{ sunset: \"2027-06-30T00:00:00Z\", link: \"/v2/orders\", since: \"2026-01-01T00:00:00Z\" }} }}\n{route_extra}",
        one.address(),
        two.address()
    )))
    .await
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(&client(), "GET", &gw.url(path), headers).await
}

fn assert_deprecated(r: &Resp) {
    assert_eq!(
        r.header("deprecation"),
        Some("@1767225600"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("sunset"), Some("Wed, 30 Jun 2027 00:00:00 GMT"));
    assert_eq!(
        r.header("link"),
        Some("</v2/orders>; rel=\"successor-version\"")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_version_form_reaches_its_upstream_with_the_routed_path() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let gw = versioned(&one, &two, "", "").await;
    let forms: [(&str, &[(&str, &str)]); 5] = [
        ("/v1/orders/7?x=1", &[]),
        ("/orders/7?x=1", &[("accept-version", "1")]),
        ("/orders/7?x=1", &[("x-api-version", "v1")]),
        (
            "/orders/7?x=1",
            &[("accept", "application/vnd.acme.v1+json")],
        ),
        (
            "/orders/7?x=1",
            &[("accept", "application/json; version=1")],
        ),
    ];
    for (i, (path, headers)) in forms.iter().enumerate() {
        let r = get(&gw, path, headers).await;
        assert_eq!(r.status, 200, "{path} {headers:?}: {}", r.text());
        assert_eq!(r.header("x-upstream"), Some("one"), "{path} {headers:?}");
        assert_deprecated(&r);
        assert_eq!(
            r.header("vary"),
            Some("accept-version, x-api-version, accept"),
            "a cache in front must key on the version fields too"
        );
        assert_eq!(one.hits(), i + 1);
        let seen = one.last_request().expect("recorded");
        assert_eq!(
            seen.uri(),
            "/orders/7?x=1",
            "the version segment is not forwarded"
        );
    }
    // No version named: the default, which is not deprecated.
    for (path, headers) in [
        ("/orders/7", &[][..]),
        ("/v2/orders/7", &[][..]),
        ("/orders/7", &[("accept-version", "2")][..]),
        (
            "/orders/7",
            &[("accept", "application/vnd.acme.v2+json")][..],
        ),
    ] {
        let r = get(&gw, path, headers).await;
        assert_eq!(r.header("x-upstream"), Some("two"), "{path} {headers:?}");
        assert_eq!(r.header("deprecation"), None);
        assert_eq!(r.header("sunset"), None);
        assert_eq!(two.last_request().expect("recorded").path, "/orders/7");
    }
    assert_eq!(two.hits(), 4);
    // `from` order is precedence: the path's version beats the field's.
    let r = get(&gw, "/v1/orders/8", &[("accept-version", "2")]).await;
    assert_eq!(r.header("x-upstream"), Some("one"));
    let r = get(
        &gw,
        "/orders/8",
        &[
            ("accept-version", "1"),
            ("accept", "application/vnd.acme.v2+json"),
        ],
    )
    .await;
    assert_eq!(r.header("x-upstream"), Some("one"));
    // A path that only looks like a version elsewhere is an ordinary path.
    let r = get(&gw, "/orders/v1/x", &[]).await;
    assert_eq!(r.header("x-upstream"), Some("two"));
    assert_eq!(two.last_request().unwrap().path, "/orders/v1/x");

    let m = gw.metrics().await;
    let count = |v: &str| {
        m.get(
            "gatehouse_version_requests_total",
            &[("route", "orders"), ("version", v)],
        )
    };
    assert_eq!(count("1"), Some(7.0));
    assert_eq!(count("2"), Some(5.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_version_is_a_404_listing_the_versions_and_never_a_label() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let gw = versioned(&one, &two, "", "").await;
    for (path, headers) in [
        ("/v9/orders/7", &[][..]),
        ("/orders/7", &[("accept-version", "9")][..]),
        ("/orders/7", &[("x-api-version", "latest")][..]),
        (
            "/orders/7",
            &[("accept", "application/vnd.acme.v3+json")][..],
        ),
    ] {
        let r = get(&gw, path, headers).await;
        assert_problem(&r, 404);
        let body = r.json();
        assert_eq!(
            body["type"], "https://gatehouse.dev/problems/unknown-version",
            "{path} {headers:?}: {body}"
        );
        assert_eq!(body["available_versions"], serde_json::json!(["1", "2"]));
        assert!(body["detail"].as_str().unwrap().contains("1, 2"), "{body}");
    }
    assert_eq!(one.hits() + two.hits(), 0);
    let m = gw.metrics().await;
    let labels: Vec<String> = m
        .find("gatehouse_version_requests_total", &[("route", "orders")])
        .iter()
        .map(|s| s.labels.get("version").cloned().unwrap_or_default())
        .collect();
    assert!(labels.iter().all(|v| v == "1" || v == "2"), "{labels:?}");
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "unknown-version")]
        ),
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_response_of_one_version_never_answers_another() {
    let one = Upstream::start("one").await;
    let two = Upstream::start("two").await;
    let gw = versioned(
        &one,
        &two,
        "    cache: { ttl: 30s }\n",
        "cache: { memory: 4MiB }\n",
    )
    .await;
    let v1 = [("accept-version", "1")];
    let v2 = [("accept-version", "2")];
    assert_eq!(
        get(&gw, "/orders/1", &v1).await.header("x-upstream"),
        Some("one")
    );
    let r = get(&gw, "/orders/1", &v2).await;
    assert_eq!(r.header("x-upstream"), Some("two"), "{:?}", r.headers);
    let r = get(&gw, "/orders/1", &[]).await;
    assert_eq!(
        r.header("x-upstream"),
        Some("two"),
        "the default is version 2"
    );
    for _ in 0..2 {
        let r = get(&gw, "/orders/1", &v1).await;
        assert_eq!(r.header("x-upstream"), Some("one"));
        assert!(
            r.header("cache-status").unwrap_or("").contains("hit"),
            "{:?}",
            r.headers
        );
        assert_deprecated(&r);
        let r = get(&gw, "/orders/1", &v2).await;
        assert_eq!(r.header("x-upstream"), Some("two"));
        assert!(r.header("cache-status").unwrap_or("").contains("hit"));
    }
    assert_eq!((one.hits(), two.hits()), (1, 1));
}

/// The fields of every `Vary` line, lower-cased, in order.
fn vary_fields(r: &Resp) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_names_each_field_once_when_the_upstream_varies_already() {
    let origin = Origin::start().await;
    origin.set("/orders/1", Reply::new(200, "v").header("vary", "Accept"));
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    versions:\n      from: [\"header:X-API-Version\", media_type]\n      default: \"1\"\n      upstreams: {{ \"1\": o, \"2\": o }}\n",
        origin.address()
    )))
    .await;
    let asks: [&[(&str, &str)]; 3] = [
        &[],
        &[("accept", "application/vnd.acme.v2+json")],
        &[("x-api-version", "2")],
    ];
    for headers in asks {
        let r = get(&gw, "/orders/1", headers).await;
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        assert_eq!(
            vary_fields(&r),
            ["accept", "x-api-version"],
            "the upstream's `Accept` is not listed again: {:?}",
            r.headers
        );
    }
    assert_eq!(origin.hits("/orders/1"), 3);
}
