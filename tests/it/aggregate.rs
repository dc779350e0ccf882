//! Response aggregation through real sockets: parallel calls merged under their names,
//! regex captures in the call paths, identity on every call, auth and limits once, and
//! each partial-failure mode (timeout, bad status, not JSON) with `fail` and `omit`.

use crate::common::origin::{send, Gate, Origin, Reply};
use crate::common::{assert_problem, client, config, eventually, Gateway};
use serde_json::json;
use std::time::Duration;

const KEY: &str = "acme-key-0123456789";

fn json_reply(body: &str) -> Reply {
    Reply::new(200, body.to_string()).header("content-type", "application/json")
}

/// Three origins (`orders`, `customers`, `payments`) and a gateway whose route
/// `order-view` aggregates calls `calls` (flow-style mapping body) with `on_error`.
async fn gateway(origins: &[&Origin; 3], on_error: &str, calls: &str) -> Gateway {
    Gateway::start(&yaml(origins, on_error, calls)).await
}

fn yaml(origins: &[&Origin; 3], on_error: &str, calls: &str) -> String {
    config(&format!(
        "upstreams:\n  orders: {{ targets: [ {{ address: \"{}\" }} ] }}\n  customers: {{ targets: [ {{ address: \"{}\" }} ] }}\n  payments: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         auth:\n  api_key: {{ header: X-API-Key }}\n\
         consumers:\n  - {{ id: acme, api_keys: [\"{}\"] }}\n\
         routes:\n  - {{ name: order-view, match: {{ path_regex: \"^/composite/orders/(?P<id>[0-9]+)$\" }}, auth: [api_key], rate_limit: {{ limit: 100/min, key: consumer }}, request_headers: {{ set: {{ X-Via: gatehouse }} }}, aggregate: {{ on_error: {on_error}, calls: {{ {calls} }} }} }}\n",
        origins[0].address(),
        origins[1].address(),
        origins[2].address(),
        gatehouse::hash_key(KEY),
    ))
}

const TWO: &str = "order: { upstream: orders, path: \"/orders/{id}\", timeout: 5s }, customer: { upstream: customers, path: \"/customers/by-order/{id}\", timeout: 5s }";

async fn start3() -> [Origin; 3] {
    [
        Origin::start().await,
        Origin::start().await,
        Origin::start().await,
    ]
}

fn aggregate_metric(text: &str, call: &str, result: &str) -> f64 {
    crate::common::metrics::parse(text)
        .expect("metrics")
        .get(
            "gatehouse_aggregate_calls_total",
            &[("route", "order-view"), ("call", call), ("result", result)],
        )
        .unwrap_or(0.0)
}

#[tokio::test]
async fn calls_are_merged_by_name_with_captures_and_identity() {
    let [o, c, p] = start3().await;
    o.script("/orders/12", |_, _| {
        json_reply(r#"{"id": 12, "total": 30}"#)
    });
    c.script("/customers/by-order/12", |_, _| {
        json_reply(r#"{"name": "Ada"}"#)
    });
    let dir = crate::common::TestDir::new();
    let log = dir.join("access.log");
    let config = yaml(&[&o, &c, &p], "fail", TWO)
        .replace("path: \"off\"", &format!("path: \"{}\"", log.display()));
    let gw = Gateway::start(&config).await;
    let http = client();
    let r = send(
        &http,
        "GET",
        &gw.url("/composite/orders/12"),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"order": {"id": 12, "total": 30}, "customer": {"name": "Ada"}})
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let rid = r.header("x-request-id").expect("request id").to_string();
    for seen in [
        &o.seen("/orders/12")[0],
        &c.seen("/customers/by-order/12")[0],
    ] {
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.header("x-request-id").as_deref(), Some(rid.as_str()));
        assert_eq!(seen.header("x-consumer-id").as_deref(), Some("acme"));
        assert_eq!(seen.header("x-via").as_deref(), Some("gatehouse"));
        assert_eq!(
            seen.header("x-api-key"),
            None,
            "the credential stays at the edge"
        );
    }
    // Limits count the client's request once, not once per call.
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("99"),
        "{:?}",
        r.headers
    );
    // Auth runs for the composite request: without a key, no call is made.
    let r = send(&http, "GET", &gw.url("/composite/orders/12"), &[]).await;
    assert_problem(&r, 401);
    assert_eq!(o.hits("/orders/12"), 1);
    let text = gw.metrics_text().await;
    assert_eq!(aggregate_metric(&text, "order", "ok"), 1.0);
    assert_eq!(aggregate_metric(&text, "customer", "ok"), 1.0);
    // One access-log line per call, tied to the client request by its id.
    let calls = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["aggregate_call"].is_string())
            .collect::<Vec<_>>()
    };
    let logged = eventually(Duration::from_secs(10), || async { calls().len() == 2 }).await;
    assert!(logged.is_some(), "{:?}", calls());
    for v in calls() {
        assert_eq!(v["request_id"], rid.as_str());
        assert_eq!(v["result"], "ok");
    }
}

#[tokio::test]
async fn the_calls_run_in_parallel() {
    let origins = start3().await;
    let gates = [Gate::new(), Gate::new(), Gate::new()];
    for (origin, (path, gate)) in origins.iter().zip([
        ("/orders/5", &gates[0]),
        ("/customers/by-order/5", &gates[1]),
        ("/payments/5", &gates[2]),
    ]) {
        let gate = gate.clone();
        origin.script(path, move |_, _| json_reply("{}").gated(&gate));
    }
    let [o, c, p] = &origins;
    let gw = gateway(
        &[o, c, p],
        "fail",
        &format!(
            "{TWO}, payment: {{ upstream: payments, path: \"/payments/{{id}}\", timeout: 10s }}"
        ),
    )
    .await;
    let url = gw.url("/composite/orders/5");
    let pending =
        tokio::spawn(async move { send(&client(), "GET", &url, &[("x-api-key", KEY)]).await });
    // Every call is at its upstream while none has answered: the latency is the
    // slowest call's, not the sum (in sequence, the second would wait for the first).
    let all_arrived = eventually(Duration::from_secs(10), move || async move {
        o.hits("/orders/5") == 1
            && c.hits("/customers/by-order/5") == 1
            && p.hits("/payments/5") == 1
    })
    .await;
    assert!(
        all_arrived.is_some(),
        "the three calls were not in flight together"
    );
    for g in &gates {
        g.open();
    }
    let r = pending.await.expect("client");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"order": {}, "customer": {}, "payment": {}})
    );
}

#[tokio::test]
async fn a_failed_call_fails_the_request_naming_the_call() {
    let [o, c, p] = start3().await;
    let never = Gate::new();
    o.script("/orders/1", |_, _| json_reply(r#"{"id": 1}"#));
    let held = never.clone();
    c.script("/customers/by-order/1", move |_, _| {
        json_reply("{}").gated(&held)
    });
    let gw = gateway(
        &[&o, &c, &p],
        "fail",
        "order: { upstream: orders, path: \"/orders/{id}\", timeout: 5s }, customer: { upstream: customers, path: \"/customers/by-order/{id}\", timeout: 200ms }",
    )
    .await;
    let r = send(
        &client(),
        "GET",
        &gw.url("/composite/orders/1"),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_problem(&r, 502);
    let v = r.json();
    assert_eq!(
        v["type"],
        "https://gatehouse.dev/problems/aggregate-call-failed"
    );
    let detail = v["detail"].as_str().unwrap_or("");
    assert!(detail.contains("\"customer\""), "{detail}");
    assert!(
        !r.text().contains("127.0.0.1") && !r.text().contains("customers"),
        "{}",
        r.text()
    );
    never.open();
    let text = gw.metrics_text().await;
    assert_eq!(aggregate_metric(&text, "customer", "timeout"), 1.0);
    assert_eq!(aggregate_metric(&text, "order", "ok"), 1.0);
}

#[tokio::test]
async fn omit_marks_each_failed_call_and_keeps_the_rest() {
    let [o, c, p] = start3().await;
    let never = Gate::new();
    o.script("/orders/3", |_, _| json_reply(r#"{"id": 3}"#));
    let held = never.clone();
    c.script("/customers/by-order/3", move |_, _| {
        json_reply("{}").gated(&held)
    });
    p.script("/payments/3", |_, _| {
        Reply::new(200, "<html>").header("content-type", "text/html")
    });
    let gw = gateway(
        &[&o, &c, &p],
        "omit",
        "order: { upstream: orders, path: \"/orders/{id}\" }, customer: { upstream: customers, path: \"/customers/by-order/{id}\", timeout: 200ms }, payment: { upstream: payments, path: \"/payments/{id}\" }, missing: { upstream: payments, path: \"/none/{id}\" }",
    )
    .await;
    let r = send(
        &client(),
        "GET",
        &gw.url("/composite/orders/3"),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["order"], json!({"id": 3}));
    for (call, needle) in [
        ("customer", "within"),
        ("payment", "not JSON"),
        ("missing", "404"),
    ] {
        let e = v[call]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{call}: {v}"));
        assert!(e.contains(needle), "{call}: {e}");
    }
    never.open();
    let text = gw.metrics_text().await;
    assert_eq!(aggregate_metric(&text, "customer", "timeout"), 1.0);
    assert_eq!(aggregate_metric(&text, "payment", "invalid"), 1.0);
    assert_eq!(aggregate_metric(&text, "missing", "status"), 1.0);
}
