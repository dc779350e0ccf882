//! Response cache, storing and freshness (RFC 9111 §3, §4.2), through the real gateway
//! against a scripted origin that counts its requests. Time is moved with the gateway's
//! test clock, never slept through.

use crate::common;

use common::origin::{advance, cache_gateway, cache_status, send, Origin, Reply};
use common::{client, Resp};

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
