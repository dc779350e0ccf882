//! Response cache: coalescing of concurrent misses, stale-while-revalidate and
//! stale-if-error (RFC 5861), through the real gateway against a scripted origin.

use crate::common;

use common::origin::{advance, cache_gateway, cache_status, send, Gate, Origin, Reply};
use common::{assert_problem, client, eventually, Resp};
use std::time::{Duration, Instant};

const ROUTE: &str = "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }";

async fn get(gw: &common::Gateway, path: &str) -> Resp {
    send(&client(), "GET", &gw.url(path), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_misses_make_one_origin_request() {
    let o = Origin::start().await;
    // The fill is held at the origin until all 50 clients are connected to the gateway.
    let fill = Gate::new();
    o.set("/slow", Reply::ok("max-age=60", "payload").gated(&fill));
    let gw = cache_gateway(&o, "{ memory: 4MiB, lock_timeout: 60s }", ROUTE).await;
    let url = gw.url("/slow");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        // One client each: 50 separate connections, really concurrent.
        tasks.push(tokio::spawn(async move {
            send(&client(), "GET", &url, &[]).await
        }));
    }
    let connected = eventually(Duration::from_secs(20), || async {
        gw.metrics()
            .await
            .sum("gatehouse_downstream_connections", &[])
            >= 50.0
    })
    .await;
    fill.open();
    assert!(connected.is_some(), "the 50 clients did not all connect");
    let mut collapsed = 0;
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "payload#1");
        if cache_status(&r).contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(o.hits("/slow"), 1, "concurrent misses were not coalesced");
    assert!(
        collapsed >= 40,
        "only {collapsed} responses say they waited for the fill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_give_up_after_lock_timeout_and_go_to_the_origin() {
    let o = Origin::start().await;
    o.set(
        "/stuck",
        Reply::ok("max-age=60", "late").delay(Duration::from_millis(1500)),
    );
    let gw = cache_gateway(&o, "{ memory: 4MiB, lock_timeout: 200ms }", ROUTE).await;
    let url = gw.url("/stuck");
    let first = tokio::spawn({
        let url = url.clone();
        async move { send(&client(), "GET", &url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let second = send(&client(), "GET", &url, &[]).await;
    assert_eq!(second.status, 200);
    // It waited ~200ms for the lock, then made its own (1.5s) origin request.
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(first.await.expect("first").status, 200);
    assert_eq!(o.hits("/stuck"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_serves_stale_at_once_and_refreshes_in_the_background() {
    let o = Origin::start().await;
    // The refresh (the second origin request) is held at the origin until the test has
    // been served: if the gateway waited for it, the stale answer could not arrive.
    let refresh = Gate::new();
    o.script("/swr", {
        let refresh = refresh.clone();
        move |_, n| {
            let r = Reply::ok("max-age=10, stale-while-revalidate=60", format!("v{n}"));
            if n == 2 {
                r.gated(&refresh)
            } else {
                r
            }
        }
    });
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    assert_eq!(get(&gw, "/swr").await.text(), "v1");
    advance(&gw, &o, 15).await;
    let r = tokio::time::timeout(Duration::from_secs(20), get(&gw, "/swr"))
        .await
        .expect("the stale response was not served while the refresh is held at the origin");
    assert_eq!(r.text(), "v1", "the stale response is served");
    assert!(
        eventually(Duration::from_secs(10), || async { o.hits("/swr") == 2 })
            .await
            .is_some(),
        "the background refresh did not reach the origin"
    );
    refresh.open();
    let cs = cache_status(&r);
    assert!(
        cs.contains("; hit") && cs.contains("detail=stale-while-revalidate"),
        "{cs}"
    );
    let age: u64 = r.header("age").unwrap_or("0").parse().unwrap_or(0);
    assert!(age >= 15, "Age {age}");
    // The background refresh reaches the origin and replaces the entry.
    let refreshed = eventually(Duration::from_secs(5), || async {
        o.hits("/swr") == 2 && get(&gw, "/swr").await.text() == "v2"
    })
    .await;
    assert!(
        refreshed.is_some(),
        "the entry was not refreshed; origin hits {}",
        o.hits("/swr")
    );
    let r = get(&gw, "/swr").await;
    assert!(
        cache_status(&r).contains("; hit; ttl="),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.hits("/swr"), 2);
    // Past the window, the stale entry is not served: the client waits for the origin.
    advance(&gw, &o, 100).await;
    let r = get(&gw, "/swr").await;
    assert_eq!(r.text(), "v3");
    assert!(cache_status(&r).contains("fwd=stale"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_serves_stale_while_the_origin_is_down_within_the_window_only() {
    let o = Origin::start().await;
    o.set("/sie", Reply::ok("max-age=10, stale-if-error=60", "v"));
    o.script("/err", |_, n| {
        if n == 1 {
            Reply::ok("max-age=10, stale-if-error=60", "good")
        } else {
            Reply::new(503, "origin trouble")
        }
    });
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    assert_eq!(get(&gw, "/sie").await.text(), "v#1");
    assert_eq!(get(&gw, "/err").await.text(), "good");
    advance(&gw, &o, 20).await;
    // A 5xx from the origin: the stale response instead.
    let r = get(&gw, "/err").await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    let cs = cache_status(&r);
    assert!(
        cs.contains("fwd=stale; fwd-status=503") && cs.contains("detail=stale-if-error"),
        "{cs}"
    );
    // The origin is killed: still the stale response.
    o.stop().await;
    let r = get(&gw, "/sie").await;
    assert_eq!((r.status, r.text().as_str()), (200, "v#1"));
    assert!(
        cache_status(&r).contains("detail=stale-if-error"),
        "{}",
        cache_status(&r)
    );
    // Past the window (10s fresh + 60s): the error reaches the client.
    advance(&gw, &o, 60).await;
    let r = get(&gw, "/sie").await;
    assert_problem(&r, 502);
    o.restart().await;
    let r = get(&gw, "/err").await;
    assert_eq!(
        r.status, 503,
        "past the window the origin's 5xx is passed on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_must_revalidate_do_not_queue_behind_each_other() {
    let o = Origin::start().await;
    // Every revalidation is held at the origin: all five can be there at once only if
    // none waits for another.
    let held = Gate::new();
    o.script("/nc", {
        let held = held.clone();
        move |_, n| {
            let r = Reply::ok("max-age=60", format!("v{n}"));
            if n > 1 {
                r.gated(&held)
            } else {
                r
            }
        }
    });
    let gw = cache_gateway(&o, "{ memory: 4MiB, lock_timeout: 5s }", ROUTE).await;
    assert_eq!(get(&gw, "/nc").await.text(), "v1");
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let url = gw.url("/nc");
            tokio::spawn(async move {
                send(&client(), "GET", &url, &[("cache-control", "no-cache")]).await
            })
        })
        .collect();
    let all_there = eventually(Duration::from_secs(20), || async { o.hits("/nc") == 6 }).await;
    let at_origin = o.hits("/nc");
    held.open();
    for t in tasks {
        assert_eq!(t.await.expect("task").status, 200);
    }
    assert!(
        all_there.is_some(),
        "no-cache requests were serialised: only {} of 5 reached the origin together",
        at_origin - 1
    );
    assert_eq!(o.hits("/nc"), 6, "each no-cache request reaches the origin");
}
