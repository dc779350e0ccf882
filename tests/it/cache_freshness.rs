//! Response cache, storing and freshness (RFC 9111 §3, §4.2), through the real gateway
//! against a scripted origin that counts its requests. Time is moved with the gateway's
//! test clock, never slept through.

use crate::common;

use common::origin::{
    advance, cache_gateway, cache_gateway_with, cache_status, send, Origin, Reply,
};
use common::{assert_problem, client, Resp};

/// 2030-01-01T00:00:00Z and 2020-01-01T00:00:00Z: a test clock ahead of the wall clock,
/// and one behind it.
const AHEAD: u64 = 1_893_456_000;
const BEHIND: u64 = 1_577_836_800;

async fn get(gw: &common::Gateway, path: &str) -> Resp {
    send(&client(), "GET", &gw.url(path), &[]).await
}

fn assert_hit(r: &Resp, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(
        cache_status(r).contains("; hit"),
        "{what}: expected a hit, Cache-Status {:?}",
        cache_status(r)
    );
}

fn assert_forwarded(r: &Resp, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(
        cache_status(r).contains("fwd="),
        "{what}: expected a forward, Cache-Status {:?}",
        cache_status(r)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn freshness_comes_from_s_maxage_max_age_expires_then_route_ttl_with_age_accounted() {
    let o = Origin::start().await;
    o.set("/smax", Reply::ok("max-age=1, s-maxage=100", "smax"));
    o.set("/max", Reply::ok("max-age=30", "max"));
    o.script("/expires", |seen, n| {
        let exp = httpdate::fmt_http_date(seen.now + std::time::Duration::from_secs(30));
        Reply::new(200, format!("exp#{n}")).header("expires", &exp)
    });
    o.set("/age", Reply::ok("max-age=60", "age").header("age", "50"));
    o.set("/ttl", Reply::new(200, "ttl"));
    o.set("/explicit", Reply::ok("max-age=5", "explicit"));
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: { ttl: 20s } }",
    )
    .await;
    let paths = ["/smax", "/max", "/expires", "/age", "/ttl", "/explicit"];
    for p in paths {
        let first = get(&gw, p).await;
        assert_forwarded(&first, p);
        let cs = cache_status(&first);
        assert!(
            cs.starts_with("Gatehouse; fwd=uri-miss; fwd-status=200"),
            "{p}: {cs}"
        );
        assert!(cs.contains("; stored"), "{p} was not stored: {cs}");
        let second = get(&gw, p).await;
        assert_hit(&second, p);
        assert_eq!(second.body, first.body, "{p}: a hit serves the stored body");
        assert_eq!(o.hits(p), 1, "{p}: the hit reached the origin");
    }
    // Age from the origin is kept and counted: max-age=60 with Age: 50 leaves 10s.
    let r = get(&gw, "/age").await;
    let age: u64 = r.header("age").unwrap_or("").parse().expect("Age on a hit");
    assert!((50..=52).contains(&age), "Age {age}, want about 50");
    assert!(cache_status(&r).contains("ttl=10") || cache_status(&r).contains("ttl=9"));

    // t=6: max-age=5 beats the route ttl of 20s.
    advance(&gw, &o, 6).await;
    assert_forwarded(&get(&gw, "/explicit").await, "/explicit at 6s");
    assert_eq!(o.hits("/explicit"), 2);
    for p in ["/smax", "/max", "/expires", "/age", "/ttl"] {
        assert_hit(&get(&gw, p).await, &format!("{p} at 6s"));
    }
    // t=11: the Age: 50 response is past its 60s.
    advance(&gw, &o, 5).await;
    let r = get(&gw, "/age").await;
    assert_forwarded(&r, "/age at 11s");
    assert!(
        cache_status(&r).contains("fwd=stale"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.hits("/age"), 2);
    // t=21: the route ttl applies to the response that gave no freshness.
    advance(&gw, &o, 10).await;
    assert_forwarded(&get(&gw, "/ttl").await, "/ttl at 21s");
    assert_hit(&get(&gw, "/max").await, "/max at 21s");
    // t=31: max-age=30 and Expires (Date + 30s) are over; s-maxage=100 beats max-age=1.
    advance(&gw, &o, 10).await;
    assert_forwarded(&get(&gw, "/max").await, "/max at 31s");
    assert_forwarded(&get(&gw, "/expires").await, "/expires at 31s");
    assert_hit(&get(&gw, "/smax").await, "/smax at 31s");
    assert_eq!(o.hits("/smax"), 1);
    assert_eq!(o.hits("/max"), 2);
    assert_eq!(o.hits("/expires"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_store_and_private_are_not_stored_and_no_cache_is_always_revalidated() {
    let o = Origin::start().await;
    o.set("/no-store", Reply::ok("no-store, max-age=60", "ns"));
    o.set("/private", Reply::ok("private, max-age=60", "p"));
    o.script("/no-cache", |seen, n| {
        if seen.header("if-none-match").as_deref() == Some("\"v1\"") {
            Reply::new(304, "").header("etag", "\"v1\"")
        } else {
            Reply::ok("no-cache", format!("body#{n}")).header("etag", "\"v1\"")
        }
    });
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: { ttl: 60s } }",
    )
    .await;
    for (p, body, why) in [
        ("/no-store", "ns", "no-store"),
        ("/private", "p", "private"),
    ] {
        for i in 1..=2 {
            let r = get(&gw, p).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), format!("{body}#{i}"), "{p}: served a stored body");
            assert!(
                cache_status(&r).contains(&format!("detail={why}")),
                "{p}: {}",
                cache_status(&r)
            );
        }
        assert_eq!(o.hits(p), 2, "{p} was answered from cache");
    }
    let first = get(&gw, "/no-cache").await;
    assert_eq!(first.text(), "body#1");
    assert!(cache_status(&first).contains("stored"));
    let second = get(&gw, "/no-cache").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "body#1", "the stored body after a 304");
    assert_eq!(
        o.hits("/no-cache"),
        2,
        "no-cache must be revalidated every time"
    );
    let reval = &o.seen("/no-cache")[1];
    assert_eq!(reval.header("if-none-match").as_deref(), Some("\"v1\""));
    let cs = cache_status(&second);
    assert!(cs.contains("fwd=stale; fwd-status=304"), "{cs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_cookie_responses_are_stored_only_where_the_route_allows() {
    let o = Origin::start().await;
    let cookie = Reply::ok("max-age=60", "c").header("set-cookie", "session=abc");
    o.set("/plain/x", cookie.clone());
    o.set("/cookies/x", cookie);
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: plain, match: { path_prefix: /plain }, upstream: o, cache: {} }
         - { name: cookies, match: { path_prefix: /cookies }, upstream: o, cache: { store_set_cookie: true } }",
    )
    .await;
    for _ in 0..2 {
        let r = get(&gw, "/plain/x").await;
        assert!(
            cache_status(&r).contains("detail=set-cookie"),
            "{}",
            cache_status(&r)
        );
    }
    assert_eq!(o.hits("/plain/x"), 2);
    get(&gw, "/cookies/x").await;
    let r = get(&gw, "/cookies/x").await;
    assert_hit(&r, "/cookies/x");
    assert_eq!(r.header("set-cookie"), Some("session=abc"));
    assert_eq!(o.hits("/cookies/x"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_are_counted_by_route_and_result() {
    let o = Origin::start().await;
    o.set("/a", Reply::ok("max-age=60", "a"));
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
    )
    .await;
    let http = client();
    get(&gw, "/a").await;
    get(&gw, "/a").await;
    get(&gw, "/a").await;
    let m = gw.metrics().await;
    assert!(m.get("gatehouse_cache_stored_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(m.get("gatehouse_cache_entries", &[]), Some(1.0));
    assert_eq!(
        m.get("gatehouse_cache_memory_limit_bytes", &[]),
        Some(4194304.0)
    );
    let r = send(&http, "POST", &gw.url("/a"), &[]).await;
    assert_eq!(cache_status(&r), "Gatehouse; fwd=method");
    let m = gw.metrics().await;
    let n = |result: &str| {
        m.get(
            "gatehouse_cache_lookups_total",
            &[("route", "c"), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((n("miss"), n("hit"), n("bypass")), (1.0, 2.0, 1.0));
    // The successful POST invalidated the stored response.
    assert_eq!(m.get("gatehouse_cache_entries", &[]), Some(0.0));
    assert_eq!(m.get("gatehouse_cache_stored_bytes", &[]), Some(0.0));
}

/// One clock drives a rate window and cache freshness together: each `advance` moves the
/// limiter's refill and the stored response's age by the same amount. The clock stands
/// ahead of the wall clock (2030).
#[tokio::test(flavor = "multi_thread")]
async fn one_clock_drives_a_rate_window_and_cache_freshness() {
    let o = Origin::start().await;
    o.set("/lim", Reply::ok("max-age=30", "lim"));
    o.set("/c", Reply::ok("max-age=30", "c"));
    let gw = cache_gateway_with(
        &o,
        Some(AHEAD),
        "{ memory: 4MiB }",
        "- { name: lim, match: { path_prefix: /lim }, upstream: o, cache: {}, \
           rate_limit: { limit: 1/min, burst: 1, key: route } }
         - { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
        "",
    )
    .await;
    let clock = gw.admin_get("/admin/clock").await;
    assert_eq!(clock.status(), 200);
    let clock: serde_json::Value = clock.json().await.expect("clock JSON");
    assert_eq!(clock["now"], "2030-01-01T00:00:00.000Z");
    assert_eq!(clock["unix_ms"], AHEAD * 1000);

    // t=0: one admission; the response is stored.
    assert_forwarded(&get(&gw, "/lim").await, "/lim at 0s");
    let r = get(&gw, "/lim").await;
    assert_problem(&r, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_forwarded(&get(&gw, "/c").await, "/c at 0s");
    assert_hit(&get(&gw, "/c").await, "/c at 0s");

    // t=29: the last fresh second; the limit still refuses, 31 s to go.
    advance(&gw, &o, 29).await;
    let r = get(&gw, "/c").await;
    assert_hit(&r, "/c at 29s");
    assert!(cache_status(&r).contains("ttl=1"), "{}", cache_status(&r));
    let r = get(&gw, "/lim").await;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (429, Some("31")),
        "{}",
        r.text()
    );

    // t=30: the age reaches max-age (stale, RFC 9111 §4.2); the limit counts down with it.
    advance(&gw, &o, 1).await;
    assert_forwarded(&get(&gw, "/c").await, "/c at 30s");
    assert_eq!(get(&gw, "/lim").await.header("retry-after"), Some("30"));

    // t=60: the next admission, and it finds the stored response stale.
    advance(&gw, &o, 30).await;
    let r = get(&gw, "/lim").await;
    assert_forwarded(&r, "/lim at 60s");
    assert!(
        cache_status(&r).contains("fwd=stale"),
        "{}",
        cache_status(&r)
    );
    assert_problem(&get(&gw, "/lim").await, 429);
    assert_eq!(
        o.hits("/lim"),
        2,
        "refused requests reach neither cache nor origin"
    );
    assert_eq!(o.hits("/c"), 2);
}

/// A test clock behind the wall clock (2020): Pingora's own wall-clock checks would call
/// every entry expired and every stale window closed; the cache decides on its clock.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_behind_the_wall_clock_keeps_freshness_and_stale_windows() {
    let o = Origin::start().await;
    o.set("/fresh", Reply::ok("max-age=30", "f"));
    o.set(
        "/swr",
        Reply::ok("max-age=10, stale-while-revalidate=60", "s"),
    );
    o.set("/sie", Reply::ok("max-age=10, stale-if-error=60", "e"));
    let gw = cache_gateway_with(
        &o,
        Some(BEHIND),
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
        "",
    )
    .await;
    for p in ["/fresh", "/swr", "/sie"] {
        assert_forwarded(&get(&gw, p).await, p);
        let r = get(&gw, p).await;
        assert_hit(&r, p);
        assert_eq!(
            r.header("age"),
            Some("0"),
            "{p}: Age is on the gateway's clock"
        );
    }
    // t=20: /fresh is fresh for 10 s more; /swr is served stale at once while it is
    // refreshed in the background.
    advance(&gw, &o, 20).await;
    let r = get(&gw, "/fresh").await;
    assert_hit(&r, "/fresh at 20s");
    assert!(cache_status(&r).contains("ttl=10"), "{}", cache_status(&r));
    assert_eq!(r.header("age"), Some("20"));
    let r = get(&gw, "/swr").await;
    assert_eq!(r.text(), "s#1", "the stale response is served");
    assert!(
        cache_status(&r).contains("detail=stale-while-revalidate"),
        "{}",
        cache_status(&r)
    );
    let mut refreshed = false;
    for _ in 0..100 {
        if o.hits("/swr") == 2 && get(&gw, "/swr").await.text() == "s#2" {
            refreshed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        refreshed,
        "background refresh; origin hits {}",
        o.hits("/swr")
    );
    // The origin goes away: /sie is within its stale-if-error window (10 s + 60 s).
    o.stop().await;
    let r = get(&gw, "/sie").await;
    assert_eq!((r.status, r.text().as_str()), (200, "e#1"));
    assert!(
        cache_status(&r).contains("detail=stale-if-error"),
        "{}",
        cache_status(&r)
    );
    // t=71: past it, the error reaches the client.
    advance(&gw, &o, 51).await;
    assert_problem(&get(&gw, "/sie").await, 502);
}
