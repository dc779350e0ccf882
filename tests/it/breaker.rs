//! Circuit breakers and outlier ejection through real sockets, on the gateway's test
//! clock (`POST /admin/clock` moves the breaker's `open_for` and the ejection times):
//! the breaker opens after its threshold and then fails fast without calling the
//! upstream (503 `circuit-open` with `Retry-After`), half-opens, closes after its probes
//! or reopens on a failed one, and sends traffic to a fallback upstream while open;
//! ejected targets stay out for a doubling time, and `max_ejection_percent` keeps the
//! pool from emptying.

use crate::common;

use common::gateway::check;
use common::{assert_problem, client, config, get, targets, test_clock, Gateway, Upstream};

const BREAKER: &str =
    "breaker: { failure_ratio: 0.5, window: 10s, min_requests: 4, open_for: 5s, half_open_probes: 2 }";

/// Upstream `u` (the `addresses`, no retries, then its `settings`: a breaker or outlier
/// ejection), the `more` upstreams, and one route to `u` for every path.
fn upstream_u(addresses: &[&str], settings: &str, more: &str) -> String {
    format!(
        "upstreams:\n  u: {{ {}, retries: 0, {settings} }}\n{more}\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        targets(addresses)
    )
}

/// A gateway on its test clock (the breaker's and the ejections' time).
async fn on_test_clock(body: &str) -> Gateway {
    Gateway::start_with_env(&config(body), &[test_clock("now")]).await
}

async fn state(gw: &Gateway, upstream: &str) -> Option<f64> {
    gw.metrics()
        .await
        .get("gatehouse_circuit_state", &[("upstream", upstream)])
}

async fn transitions(gw: &Gateway, to: &str) -> f64 {
    gw.metrics().await.sum(
        "gatehouse_circuit_transitions_total",
        &[("upstream", "u"), ("state", to)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_opens_fails_fast_half_opens_and_closes_or_reopens() {
    let a = Upstream::start("a").await;
    let gw = on_test_clock(&upstream_u(&[&a.address()], BREAKER, "")).await;
    let http = client();
    assert_eq!(state(&gw, "u").await, Some(0.0), "closed at start");

    // Four failed attempts of four: the ratio is met once min_requests are in.
    a.set_status(503);
    for i in 0..4 {
        let r = get(&http, &gw.url(&format!("/f{i}"))).await;
        assert_eq!(r.status, 503, "the upstream's own 503 passes through");
        assert_eq!(r.json()["upstream"], "a");
    }
    assert_eq!(a.hits(), 4);
    assert_eq!(state(&gw, "u").await, Some(1.0), "open");

    // Open: refused at once, the upstream is not called.
    for i in 0..3 {
        let r = get(&http, &gw.url(&format!("/open{i}"))).await;
        assert_problem(&r, 503);
        assert_eq!(
            r.json()["type"],
            "https://gatehouse.dev/problems/circuit-open"
        );
        assert_eq!(r.header("retry-after"), Some("5"), "open_for left");
    }
    assert_eq!(a.hits(), 4, "no request reached the upstream while open");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "circuit-open")]
        ),
        Some(3.0)
    );

    gw.advance_clock("3s").await;
    let r = get(&http, &gw.url("/still-open")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(a.hits(), 4);

    // Half-open after open_for: two probes go through and close the circuit.
    gw.advance_clock("2s").await;
    assert_eq!(state(&gw, "u").await, Some(2.0), "half-open");
    a.set_status(200);
    for i in 0..2 {
        let r = get(&http, &gw.url(&format!("/probe{i}"))).await;
        assert_eq!(r.status, 200, "probe {i}");
    }
    assert_eq!(a.hits(), 6);
    assert_eq!(state(&gw, "u").await, Some(0.0), "closed after the probes");
    for i in 0..5 {
        assert_eq!(get(&http, &gw.url(&format!("/ok{i}"))).await.status, 200);
    }
    assert_eq!(a.hits(), 11);

    // Open again (five failures against the five successes in the window: the ratio);
    // this time the first probe fails, which reopens it at once.
    a.set_status(503);
    for i in 0..4 {
        get(&http, &gw.url(&format!("/g{i}"))).await;
    }
    assert_eq!(state(&gw, "u").await, Some(0.0), "4 failures of 9");
    for i in 4..5 {
        get(&http, &gw.url(&format!("/g{i}"))).await;
    }
    assert_eq!(state(&gw, "u").await, Some(1.0));
    gw.advance_clock("5s").await;
    let r = get(&http, &gw.url("/bad-probe")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["upstream"], "a", "the probe reached the upstream");
    assert_eq!(a.hits(), 17);
    assert_eq!(state(&gw, "u").await, Some(1.0), "reopened");
    let r = get(&http, &gw.url("/after-bad-probe")).await;
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/circuit-open"
    );
    assert_eq!(r.header("retry-after"), Some("5"), "a full open_for again");
    assert_eq!(a.hits(), 17);

    assert_eq!(transitions(&gw, "open").await, 3.0);
    assert_eq!(transitions(&gw, "half_open").await, 2.0);
    assert_eq!(transitions(&gw, "closed").await, 1.0);
    let up = gw.upstreams().await;
    let text = up.to_string();
    assert!(text.contains("\"state\":\"open\""), "{text}");
    assert!(
        gw.logs_tail().contains("circuit opened"),
        "state changes are logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_circuit_sends_traffic_to_its_fallback() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let body = upstream_u(
        &[&a.address()],
        "breaker: { min_requests: 2, failure_ratio: 1, open_for: 5s, half_open_probes: 1, fallback: s }",
        &format!("  s: {{ {} }}\n", targets(&[&b.address()])),
    );
    let gw = on_test_clock(&body).await;
    let http = client();
    a.set_status(502);
    for _ in 0..2 {
        assert_eq!(get(&http, &gw.url("/x")).await.status, 502);
    }
    for i in 0..5 {
        let r = get(&http, &gw.url(&format!("/fb{i}"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["upstream"], "b", "served by the fallback");
    }
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 5);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_circuit_fallback_requests_total",
            &[("upstream", "u")]
        ),
        Some(5.0)
    );
    // Closed again after a good probe: back to the route's own upstream.
    a.set_status(200);
    gw.advance_clock("5s").await;
    for _ in 0..3 {
        assert_eq!(get(&http, &gw.url("/back")).await.json()["upstream"], "a");
    }
    assert_eq!(b.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_fallback_that_is_unknown_or_itself() {
    for (fallback, message) in [
        (
            "nowhere",
            "upstreams.u.breaker.fallback: unknown upstream \"nowhere\"",
        ),
        (
            "u",
            "upstreams.u.breaker.fallback: must name another upstream",
        ),
    ] {
        let body = format!(
            "upstreams:\n  u: {{ targets: [ {{ address: \"127.0.0.1:9\" }} ], breaker: {{ fallback: {fallback} }} }}\n\
             routes:\n  - {{ name: all, upstream: u }}\n"
        );
        let (code, out) = check(&config(&body), &[]);
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains(message), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ejected_targets_stay_out_for_a_doubling_time_and_the_pool_never_empties() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let body = upstream_u(
        &[&a.address(), &b.address(), &c.address()],
        "outlier: { consecutive_failures: 2, base_ejection: 10s, max_ejection_percent: 50 }",
        "",
    );
    let gw = on_test_clock(&body).await;
    let http = client();
    let send = |n: usize| {
        let http = http.clone();
        let url = gw.url("/o");
        async move {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(get(&http, &url).await.status);
            }
            statuses
        }
    };

    c.set_status(503);
    send(9).await;
    assert_eq!(c.hits(), 2, "two failures in a row, then ejected");
    let before = (a.hits(), b.hits());
    let statuses = send(10).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(c.hits(), 2, "ejected: no traffic");
    assert_eq!(a.hits() + b.hits(), before.0 + before.1 + 10);
    assert_eq!(
        gw.target_health("u", &c.address()).await.as_deref(),
        Some("ejected")
    );

    // Back after base_ejection; failing again doubles the ejection (20s).
    gw.advance_clock("10s").await;
    send(9).await;
    assert_eq!(c.hits(), 4, "back, and out again after two more failures");
    gw.advance_clock("10s").await;
    send(9).await;
    assert_eq!(c.hits(), 4, "10s into a 20s ejection: still out");
    gw.advance_clock("10s").await;
    c.set_status(200);
    send(9).await;
    assert!(c.hits() > 4, "back after 20s");

    // With c out, b failing too is not ejected: 2 of 3 would exceed 50%.
    c.set_status(503);
    send(9).await;
    let c_out = c.hits();
    b.set_status(503);
    let b_before = b.hits();
    send(12).await;
    assert_eq!(c.hits(), c_out, "c is ejected");
    assert!(
        b.hits() >= b_before + 5,
        "b keeps its traffic: {} then {}",
        b_before,
        b.hits()
    );
    let m = gw.metrics().await;
    assert!(
        m.sum(
            "gatehouse_outlier_ejections_total",
            &[("upstream", "u"), ("result", "capped")]
        ) >= 1.0
    );
    assert!(
        m.sum(
            "gatehouse_outlier_ejections_total",
            &[("upstream", "u"), ("result", "ejected")]
        ) >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_circuit_of_an_unchanged_upstream_and_resets_a_changed_one() {
    let a = Upstream::start("a").await;
    let gw = on_test_clock(&upstream_u(&[&a.address()], BREAKER, "")).await;
    let http = client();
    a.set_status(503);
    for _ in 0..4 {
        get(&http, &gw.url("/f")).await;
    }
    assert_eq!(state(&gw, "u").await, Some(1.0));
    let yaml = std::fs::read_to_string(&gw.config_path).expect("config");
    let reload = |yaml: String| {
        let gw = &gw;
        async move {
            std::fs::write(&gw.config_path, yaml).expect("write config");
            let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        }
    };
    // Only the route changed: the upstream (and its open circuit) is kept.
    reload(yaml.replace("path_prefix: / }", "path_prefix: / }, server_timing: true")).await;
    let r = get(&http, &gw.url("/kept")).await;
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/circuit-open"
    );
    assert_eq!(a.hits(), 4);
    // The breaker's own config changed: the upstream starts afresh, closed.
    reload(yaml.replace("open_for: 5s", "open_for: 6s")).await;
    assert_eq!(state(&gw, "u").await, Some(0.0));
    a.set_status(200);
    assert_eq!(get(&http, &gw.url("/fresh")).await.status, 200);
    assert_eq!(a.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_failing_half_its_requests_is_ejected_by_its_failure_ratio() {
    let a = Upstream::start("a").await;
    let c = common::origin::Origin::start().await;
    // Never two failures in a row: only the ratio can eject it.
    c.script("/r", |_, n| {
        common::origin::Reply::new(if n % 2 == 1 { 503 } else { 200 }, "{}")
    });
    let body = upstream_u(
        &[&a.address(), &c.address()],
        "outlier: { consecutive_failures: 2, failure_ratio: 0.4, window: 10s, min_requests: 6, base_ejection: 10s, max_ejection_percent: 50 }",
        "",
    );
    let gw = on_test_clock(&body).await;
    let http = client();
    for _ in 0..30 {
        get(&http, &gw.url("/r")).await;
    }
    assert_eq!(
        c.hits("/r"),
        7,
        "out once 4 of its 7 attempts failed (min_requests 6, ratio 0.4)"
    );
    assert_eq!(a.hits(), 23);
    assert_eq!(
        gw.target_health("u", &c.address()).await.as_deref(),
        Some("ejected")
    );
}
