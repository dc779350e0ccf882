//! Retries and deadlines through real sockets: a listed 5xx is retried for idempotent
//! methods and not for POST, the budget caps retries during a total outage (upstream
//! hits against requests), the upstream's `Retry-After` is honoured within
//! `max_retry_after` (a longer one ends the retries), and a route's `deadline` bounds
//! every attempt together (504). Counts and orders, never durations: the backoffs are
//! real but a few milliseconds.

use crate::common;

use common::origin::{Origin, Reply};
use common::{assert_problem, client, config, targets, test_clock, Gateway, Resp, Upstream};
use std::time::Duration;

/// One upstream `u` with `keys`, one route `all` with `route_keys`.
fn body(target: &str, keys: &str, route_keys: &str) -> String {
    format!(
        "upstreams:\n  u: {{ {}, {keys} }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u{route_keys} }}\n",
        targets(&[target])
    )
}

async fn send(http: &reqwest::Client, method: &str, url: &str) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = http
        .request(m, url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Resp::from_reqwest(r).await
}

fn retries(m: &common::metrics::Metrics, reason: &str) -> f64 {
    m.sum(
        "gatehouse_upstream_retries_total",
        &[("upstream", "u"), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_is_retried_for_get_and_put_but_not_post() {
    let o = Origin::start().await;
    // Odd hits fail, even ones succeed.
    o.script("/flaky", |_, n| {
        if n % 2 == 1 {
            Reply::new(503, "down")
        } else {
            Reply::new(200, format!("ok#{n}"))
        }
    });
    let keys = "retries: 2, retry: { on: [503], backoff: { base: 1ms, max: 5ms } }";
    let gw = Gateway::start(&config(&body(&o.address(), keys, ""))).await;
    let http = client();
    let url = gw.url("/flaky");

    let r = send(&http, "GET", &url).await;
    assert_eq!((r.status, r.text()), (200, "ok#2".to_string()), "retried");
    assert_eq!(o.hits("/flaky"), 2);

    let r = send(&http, "POST", &url).await;
    assert_eq!(r.status, 503, "POST is not retried: the upstream's answer");
    assert_eq!(r.text(), "down");
    assert_eq!(o.hits("/flaky"), 3);
    assert_eq!(send(&http, "POST", &url).await.status, 200);
    assert_eq!(o.hits("/flaky"), 4);

    let r = send(&http, "PUT", &url).await;
    assert_eq!(
        (r.status, r.text()),
        (200, "ok#6".to_string()),
        "PUT is idempotent"
    );
    let m = gw.metrics().await;
    assert_eq!(retries(&m, "503"), 2.0);
    let methods: Vec<String> = o.seen("/flaky").iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET", "GET", "POST", "POST", "PUT", "PUT"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_listed_failures_are_retried() {
    let o = Origin::start().await;
    o.script("/500", |_, n| {
        if n == 1 {
            Reply::new(500, "boom")
        } else {
            Reply::new(200, "ok")
        }
    });
    let keys =
        "retries: 2, retry: { on: [503], methods: [GET, POST], backoff: { base: 1ms, max: 2ms } }";
    let gw = Gateway::start(&config(&body(&o.address(), keys, ""))).await;
    let http = client();
    assert_eq!(send(&http, "GET", &gw.url("/500")).await.status, 500);
    assert_eq!(o.hits("/500"), 1, "500 is not in retry.on");
    // `methods` may add POST.
    o.script("/post", |_, n| {
        Reply::new(if n == 1 { 503 } else { 201 }, "")
    });
    assert_eq!(send(&http, "POST", &gw.url("/post")).await.status, 201);
    assert_eq!(o.hits("/post"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_caps_retries_during_a_total_outage() {
    let a = Upstream::start("a").await;
    a.set_status(503);
    let keys = "retries: 3, retry: { on: [503], budget: 20%, min_retries: 2, backoff: { base: 1ms, max: 2ms } }";
    // The test clock stands still: every request is in one budget window.
    let gw =
        Gateway::start_with_env(&config(&body(&a.address(), keys, "")), &[test_clock("now")]).await;
    let http = client();
    let requests = 50;
    for i in 0..requests {
        let r = send(&http, "GET", &gw.url(&format!("/out{i}"))).await;
        assert_eq!(r.status, 503);
    }
    let m = gw.metrics().await;
    let retried = retries(&m, "503") as usize;
    assert_eq!(a.hits(), requests + retried, "every attempt is counted");
    // Without the budget: 4 attempts each (200 hits). With it: 20% of 50, at least 2.
    assert!(
        (10..=12).contains(&retried),
        "retries {retried} of {requests} requests"
    );
    assert!(
        m.sum(
            "gatehouse_upstream_retry_budget_exhausted_total",
            &[("upstream", "u")]
        ) >= 40.0,
        "the budget refused the rest (once per request that wanted more)"
    );
    // The window slides: after it, the minimum is there again.
    gw.advance_clock("11s").await;
    a.clear();
    send(&http, "GET", &gw.url("/later")).await;
    assert_eq!(a.hits(), 3, "min_retries: 2 retries for the first request");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_retry_after_is_honoured_within_max_retry_after() {
    let o = Origin::start().await;
    o.script("/soon", |_, n| {
        if n == 1 {
            Reply::new(503, "wait").header("retry-after", "0")
        } else {
            Reply::new(200, "ok")
        }
    });
    o.script("/later", |_, _| {
        Reply::new(503, "much later").header("retry-after", "30")
    });
    o.script("/date", |_, _| {
        let at = std::time::SystemTime::now() + Duration::from_secs(3600);
        Reply::new(503, "tomorrow").header("retry-after", &httpdate::fmt_http_date(at))
    });
    let keys =
        "retries: 2, retry: { on: [503], max_retry_after: 1s, backoff: { base: 1ms, max: 2ms } }";
    let gw = Gateway::start(&config(&body(&o.address(), keys, ""))).await;
    let http = client();

    let r = send(&http, "GET", &gw.url("/soon")).await;
    assert_eq!(r.status, 200);
    assert_eq!(o.hits("/soon"), 2, "Retry-After: 0 is retried");

    let r = send(&http, "GET", &gw.url("/later")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("retry-after"),
        Some("30"),
        "passed on to the client"
    );
    assert_eq!(o.hits("/later"), 1, "30s is over max_retry_after: no retry");

    let r = send(&http, "GET", &gw.url("/date")).await;
    assert_eq!(r.status, 503);
    assert_eq!(o.hits("/date"), 1, "an HTTP date an hour away: no retry");

    // One second is within max_retry_after: waited for, then retried.
    o.script("/one", |_, n| {
        if n == 1 {
            Reply::new(503, "a second").header("retry-after", "1")
        } else {
            Reply::new(200, "ok")
        }
    });
    assert_eq!(send(&http, "GET", &gw.url("/one")).await.status, 200);
    assert_eq!(o.hits("/one"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_connect_is_retried_only_when_on_lists_connect() {
    let live = Upstream::start("live").await;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let pair = format!(
        "upstreams:\n  u: {{ {}, retries: 2, retry: {{ on: ON, min_retries: 10, backoff: {{ base: 1ms, max: 2ms }} }} }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        targets(&[&live.address(), &dead])
    );
    let http = client();
    let statuses = |gw: &Gateway| {
        let (http, url) = (http.clone(), gw.url("/c"));
        async move {
            let mut out = Vec::new();
            for _ in 0..4 {
                out.push(send(&http, "POST", &url).await.status);
            }
            out.sort();
            out
        }
    };
    let gw = Gateway::start(&config(&pair.replace("ON", "[503]"))).await;
    assert_eq!(
        statuses(&gw).await,
        [200, 200, 502, 502],
        "round robin sends half to the dead target, and connect is not listed"
    );
    drop(gw);
    let gw = Gateway::start(&config(&pair.replace("ON", "[connect]"))).await;
    assert_eq!(
        statuses(&gw).await,
        [200; 4],
        "a failed connect is retried, even for POST"
    );
    // Round robin's turn moves on with each retry, so three or four of the requests meet
    // the dead target first (which depends on the targets' order); every one is answered
    // by the live target. (The default min_retries, 3, could leave the fourth over budget.)
    let m = gw.metrics().await;
    let retried = retries(&m, "connect");
    assert!((3.0..=4.0).contains(&retried), "{retried}");
    assert_eq!(live.hits(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_route_deadline_bounds_every_attempt_together() {
    let o = Origin::start().await;
    // The first attempt fails fast and is retried; the retry would answer after 5s.
    o.script("/slow", |_, n| {
        if n == 1 {
            Reply::new(503, "busy")
        } else {
            Reply::new(200, "late").delay(Duration::from_secs(5))
        }
    });
    let keys = "retries: 2, timeouts: { read: 30s }, retry: { on: [503], backoff: { base: 1ms, max: 2ms } }";
    let gw = Gateway::start(&config(&body(&o.address(), keys, ", deadline: 1s"))).await;
    let http = client();
    let r = send(&http, "GET", &gw.url("/slow")).await;
    assert_problem(&r, 504);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/gateway-timeout"
    );
    assert_eq!(o.hits("/slow"), 2, "both attempts were made");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_route_deadline_exceeded_total",
            &[("route", "all")]
        ),
        Some(1.0)
    );
    assert_eq!(retries(&m, "503"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_503_from_an_h2c_upstream_is_retried_too() {
    let o = Origin::start().await;
    o.script("/h2", |s, n| {
        let v = format!("{:?}", s.headers.get("x-request-id").is_some());
        Reply::new(if n == 1 { 503 } else { 200 }, v)
    });
    let keys = "http2: true, retries: 1, retry: { on: [503], backoff: { base: 1ms, max: 2ms } }";
    let gw = Gateway::start(&config(&body(&o.address(), keys, ""))).await;
    let r = send(&client(), "GET", &gw.url("/h2")).await;
    assert_eq!((r.status, r.text()), (200, "true".to_string()));
    assert_eq!(
        o.hits("/h2"),
        2,
        "Pingora's h2 response path retries the same way"
    );
    assert_eq!(retries(&gw.metrics().await, "503"), 1.0);
}
