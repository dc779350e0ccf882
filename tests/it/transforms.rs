//! Body transforms (`request_body`, `response_body`) through real sockets: what the
//! upstream receives and what the client gets, for each operation, values filled from
//! the request, invalid bodies, size limits, XML to JSON, and the cache's copy.

use crate::common::origin::{cache_status, route_lines, send, Origin, Reply};
use crate::common::{assert_problem, client, config, raw, Gateway, Resp};
use serde_json::json;

const KEY: &str = "acme-key-0123456789";
const BETA: &str = "beta-key-0123456789";

/// A gateway on `origin` (upstream `o`) with API-key consumers `acme` and `beta`, a
/// cache, and `routes` (flow-style route lines).
async fn gateway(origin: &Origin, routes: &str) -> Gateway {
    let yaml = config(&format!(
        "cache: {{ memory: 8MiB }}\n\
         upstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         auth:\n  api_key: {{ header: X-API-Key }}\n\
         consumers:\n  - {{ id: acme, api_keys: [\"{}\"] }}\n  - {{ id: beta, api_keys: [\"{}\"] }}\n\
         routes:\n{}",
        origin.address(),
        gatehouse::hash_key(KEY),
        gatehouse::hash_key(BETA),
        route_lines(routes)
    ));
    Gateway::start(&yaml).await
}

/// `path` always answers `reply` as it is (`Origin::set` marks bodies with `#n`).
fn fixed(origin: &Origin, path: &str, reply: Reply) {
    origin.script(path, move |_, _| reply.clone());
}

async fn post(url: &str, ct: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = client()
        .post(url)
        .header("content-type", ct)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Resp::from_reqwest(req.send().await.expect("POST")).await
}

fn metric(text: &str, route: &str, direction: &str, result: &str) -> f64 {
    let m = crate::common::metrics::parse(text).expect("metrics");
    m.get(
        "gatehouse_body_transforms_total",
        &[
            ("route", route),
            ("direction", direction),
            ("result", result),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn request_operations_reach_the_upstream_with_their_length() {
    let origin = Origin::start().await;
    fixed(
        &origin,
        "/orders",
        Reply::new(201, "{}").header("content-type", "application/json"),
    );
    let gw = gateway(
        &origin,
        r#"- { name: orders, match: { path_prefix: /orders }, upstream: o, auth: [api_key], request_body: { json: { remove: [/debug, /items/0], rename: { /id: /order_id, "/a~1b": /ab }, set: { /meta/consumer: "${consumer}", /meta/tenant: "${header:X-Tenant}", /meta/who: "c=${consumer}", /meta/subject: "${subject}" }, add: { /source: gw, /order_id: never } } } }"#,
    )
    .await;
    let r = post(
        &gw.url("/orders"),
        "application/json; charset=utf-8",
        r#"{"id": 7, "debug": true, "items": [1, 2], "a/b": 3}"#,
        &[("x-api-key", KEY), ("x-tenant", "t-9")],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let seen = origin.seen("/orders");
    assert_eq!(seen.len(), 1);
    let got: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("JSON upstream");
    assert_eq!(
        got,
        json!({
            "order_id": 7, "items": [2], "ab": 3, "source": "gw",
            "meta": {"consumer": "acme", "tenant": "t-9", "who": "c=acme", "subject": null}
        })
    );
    assert_eq!(
        seen[0].header("content-length"),
        Some(seen[0].body.len().to_string()),
        "the transformed body's own length"
    );
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert!(metric(&gw.metrics_text().await, "orders", "request", "ok") >= 1.0);
}

#[tokio::test]
async fn invalid_and_oversized_request_bodies_never_reach_the_upstream() {
    let origin = Origin::start().await;
    fixed(&origin, "/in", Reply::new(200, "ok"));
    let gw = gateway(
        &origin,
        "- { name: in, match: { path_prefix: /in }, upstream: o, request_body: { json: { set: { /x: 1 } }, max_size: 1KiB } }",
    )
    .await;
    let r = post(&gw.url("/in"), "application/json", "{\"a\": ", &[]).await;
    assert_problem(&r, 400);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/invalid-body"
    );
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2000));
    let r = post(&gw.url("/in"), "application/json", &big, &[]).await;
    assert_problem(&r, 413);
    // Without a declared length (chunked): counted as it is read.
    let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let head = format!(
        "POST /in HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
    );
    let reply = raw::request(gw.addr(), head.as_bytes())
        .await
        .expect("answer");
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(origin.hits("/in"), 0, "nothing went upstream");
    // Another type passes untouched, and so does an empty body.
    let r = post(&gw.url("/in"), "text/plain", "{\"a\": ", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen("/in")[0].body, b"{\"a\": ");
    let text = gw.metrics_text().await;
    assert_eq!(metric(&text, "in", "request", "invalid"), 1.0);
    assert_eq!(metric(&text, "in", "request", "too_large"), 2.0);
}

#[tokio::test]
async fn response_operations_reach_the_client_and_the_cache_keeps_one_copy() {
    let origin = Origin::start().await;
    fixed(
        &origin,
        "/r",
        Reply::ok(
            "max-age=60",
            r#"{"id": 1, "secret": "s", "name": "n", "nested": {"k": 1}}"#,
        )
        .header("content-type", "application/json")
        .header("etag", "\"v1\""),
    );
    let gw = gateway(
        &origin,
        r#"- { name: r, match: { path_prefix: /r }, upstream: o, auth: [api_key], cache: { ttl: 60s }, response_body: { json: { remove: [/secret], rename: { /id: /order_id }, set: { /viewer: "${consumer}", /nested/k: 2 } } } }"#,
    )
    .await;
    let http = client();
    let a = send(&http, "GET", &gw.url("/r"), &[("x-api-key", KEY)]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"order_id": 1, "name": "n", "nested": {"k": 2}, "viewer": "acme"})
    );
    assert_eq!(
        a.header("etag"),
        None,
        "the upstream's validator is not this body's"
    );
    if let Some(cl) = a.header("content-length") {
        assert_eq!(cl, a.body.len().to_string());
    }
    let b = send(&http, "GET", &gw.url("/r"), &[("x-api-key", BETA)]).await;
    assert_eq!(
        b.json()["viewer"],
        "beta",
        "filled per request, after the cache"
    );
    let a2 = send(&http, "GET", &gw.url("/r"), &[("x-api-key", KEY)]).await;
    assert_eq!(a2.json(), a.json());
    assert!(cache_status(&a2).contains("hit"), "{}", cache_status(&a2));
    // One upstream request per cache variant (the consumer is part of the key): acme's
    // second request is a hit transformed again.
    assert_eq!(origin.hits("/r"), 2);
    // A range of a transformed body is no document: the whole is sent.
    let ranged = send(
        &http,
        "GET",
        &gw.url("/r"),
        &[("x-api-key", KEY), ("range", "bytes=0-3")],
    )
    .await;
    assert_eq!(ranged.status, 200);
    assert_eq!(ranged.json(), a.json());
}

#[tokio::test]
async fn xml_becomes_json_with_attributes_arrays_and_text() {
    let origin = Origin::start().await;
    fixed(
        &origin,
        "/legacy",
        Reply::new(
            200,
            r#"<?xml version="1.0"?><order id="7"><item sku="a">Pen &amp; ink</item><item sku="b"/><note>fragile</note><zip>01234</zip></order>"#,
        )
        .header("content-type", "text/xml; charset=utf-8")
        .chunked(),
    );
    let gw = gateway(
        &origin,
        "- { name: legacy, match: { path_prefix: /legacy }, upstream: o, response_body: { xml_to_json: true, json: { rename: { /order/@id: /order/id } } } }",
    )
    .await;
    let r = send(&client(), "GET", &gw.url("/legacy"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"order": {
            "id": "7",
            "item": [{"@sku": "a", "#text": "Pen & ink"}, {"@sku": "b"}],
            "note": "fragile",
            "zip": "01234"
        }})
    );
    let seen = origin.seen("/legacy");
    assert_eq!(
        seen[0].header("accept-encoding").as_deref(),
        Some("identity")
    );
}

#[tokio::test]
async fn responses_that_cannot_be_transformed_fail_or_pass_as_configured() {
    let origin = Origin::start().await;
    let not_json = "{\"truncated\": ";
    for p in ["/fail/bad", "/pass/bad"] {
        fixed(
            &origin,
            p,
            Reply::new(200, not_json).header("content-type", "application/json"),
        );
    }
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(4000));
    for p in ["/fail/big", "/pass/big"] {
        fixed(
            &origin,
            p,
            Reply::new(200, big.clone()).header("content-type", "application/json"),
        );
    }
    fixed(
        &origin,
        "/fail/big-chunked",
        Reply::new(200, big.clone())
            .header("content-type", "application/json")
            .chunked(),
    );
    fixed(
        &origin,
        "/fail/png",
        Reply::new(200, "\u{1}PNG").header("content-type", "image/png"),
    );
    let gw = gateway(
        &origin,
        "- { name: fail, match: { path_prefix: /fail }, upstream: o, response_body: { json: { set: { /x: 1 } }, max_size: 1KiB } }\n\
         - { name: pass, match: { path_prefix: /pass }, upstream: o, response_body: { json: { set: { /x: 1 } }, max_size: 1KiB, on_invalid: pass } }",
    )
    .await;
    let http = client();
    // Declared over max_size: refused before any byte of it goes out.
    let r = send(&http, "GET", &gw.url("/fail/big"), &[]).await;
    assert_problem(&r, 502);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/bad-upstream-body"
    );
    assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
    // Passed untouched.
    let r = send(&http, "GET", &gw.url("/pass/big"), &[]).await;
    assert_eq!((r.status, r.text()), (200, big.clone()));
    let r = send(&http, "GET", &gw.url("/pass/bad"), &[]).await;
    assert_eq!((r.status, r.text()), (200, not_json.to_string()));
    // Found invalid (or too large) only at its end: the status line has gone, so the
    // response is cut; the client never gets the untransformed body as a whole one.
    // (When the body came in the same read as its header, nothing had gone yet and the
    // answer is still a clean 502.)
    for p in ["/fail/bad", "/fail/big-chunked"] {
        let res = http.get(gw.url(p)).send().await.expect("head");
        match res.status().as_u16() {
            502 => assert_problem(&Resp::from_reqwest(res).await, 502),
            200 => assert!(
                res.bytes().await.is_err(),
                "{p}: the body must not complete"
            ),
            s => panic!("{p}: status {s}"),
        }
    }
    // Other types are not the transform's.
    let r = send(&http, "GET", &gw.url("/fail/png"), &[]).await;
    assert_eq!(r.body, b"\x01PNG");
    let text = gw.metrics_text().await;
    assert_eq!(metric(&text, "fail", "response", "too_large"), 2.0);
    assert_eq!(metric(&text, "fail", "response", "invalid"), 1.0);
    assert_eq!(metric(&text, "pass", "response", "passed"), 2.0);
}

#[tokio::test]
async fn both_transforms_over_http2() {
    let origin = Origin::start().await;
    fixed(
        &origin,
        "/h2",
        Reply::new(200, r#"{"id": 5, "secret": 1}"#).header("content-type", "application/json"),
    );
    let yaml = config(&format!(
        "upstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: h2, match: {{ path_prefix: /h2 }}, upstream: o, request_body: {{ json: {{ set: {{ /via: h2 }} }} }}, response_body: {{ json: {{ remove: [/secret] }} }} }}\n",
        origin.address()
    ))
    .replacen("\" }\n", "\", http2: true }\n", 1);
    assert!(yaml.contains("http2: true"), "{yaml}");
    let gw = Gateway::start(&yaml).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let res = h2
        .post(gw.url("/h2"))
        .header("content-type", "application/json")
        .body(r#"{"a": 1}"#)
        .send()
        .await
        .expect("POST over h2c");
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let r = Resp::from_reqwest(res).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"id": 5}));
    let seen = origin.seen("/h2");
    let got: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("JSON");
    assert_eq!(got, json!({"a": 1, "via": "h2"}));
}
