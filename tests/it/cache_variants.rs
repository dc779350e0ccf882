//! Response cache: variants (`Vary`, route `vary`), conditional requests, revalidation,
//! `HEAD`, `Range` and the request's own directives, through the real gateway against a
//! scripted origin that counts its requests.

use crate::common;

use common::origin::{advance, cache_gateway, cache_status, send, Origin, Reply};
use common::{assert_problem, client, Resp};

const ROUTE: &str = "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }";

async fn get(gw: &common::Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(&client(), "GET", &gw.url(path), headers).await
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_one_entry_per_variant_and_vary_star_is_never_served_from_cache() {
    let o = Origin::start().await;
    o.script("/greet", |seen, n| {
        let lang = seen.header("accept-language").unwrap_or_default();
        Reply::ok("max-age=60", format!("{lang}#{n}")).header("vary", "Accept-Language")
    });
    o.set("/star", Reply::ok("max-age=60", "star").header("vary", "*"));
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&gw, "/greet", &en).await.text(), "en#1");
    let r = get(&gw, "/greet", &fr).await;
    assert_eq!(r.text(), "fr#2");
    assert!(
        cache_status(&r).contains("fwd=vary-miss"),
        "the URL was stored for another variant: {}",
        cache_status(&r)
    );
    for _ in 0..2 {
        let r = get(&gw, "/greet", &en).await;
        assert_eq!(r.text(), "en#1");
        assert!(cache_status(&r).contains("; hit"));
        let r = get(&gw, "/greet", &fr).await;
        assert_eq!(r.text(), "fr#2");
        assert!(cache_status(&r).contains("; hit"));
    }
    assert_eq!(o.hits("/greet"), 2);
    // A request without the header is a third variant.
    assert_eq!(get(&gw, "/greet", &[]).await.text(), "#3");
    for _ in 0..3 {
        let r = get(&gw, "/star", &[]).await;
        assert!(
            cache_status(&r).contains("detail=vary-star"),
            "{}",
            cache_status(&r)
        );
    }
    assert_eq!(o.hits("/star"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_vary_headers_select_variants_too() {
    let o = Origin::start().await;
    o.script("/t", |seen, n| {
        Reply::ok(
            "max-age=60",
            format!("{}#{n}", seen.header("x-tenant").unwrap_or_default()),
        )
    });
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: { vary: [X-Tenant] } }",
    )
    .await;
    assert_eq!(get(&gw, "/t", &[("x-tenant", "a")]).await.text(), "a#1");
    assert_eq!(get(&gw, "/t", &[("x-tenant", "b")]).await.text(), "b#2");
    assert_eq!(get(&gw, "/t", &[("x-tenant", "a")]).await.text(), "a#1");
    assert_eq!(get(&gw, "/t", &[("x-tenant", "b")]).await.text(), "b#2");
    assert_eq!(o.hits("/t"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_entry_answers_if_none_match_and_if_modified_since_with_304() {
    let o = Origin::start().await;
    let lm = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    o.set(
        "/doc",
        Reply::ok("max-age=60", "document")
            .header("etag", "\"abc\"")
            .header("last-modified", &lm),
    );
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    assert_eq!(get(&gw, "/doc", &[]).await.status, 200);
    let r = get(&gw, "/doc", &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(r.status, 304, "If-None-Match matching the stored ETag");
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"abc\""));
    assert!(cache_status(&r).contains("; hit"));
    let r = get(&gw, "/doc", &[("if-none-match", "W/\"other\"")]).await;
    assert_eq!(r.status, 200, "a different ETag gets the full response");
    assert_eq!(r.text(), "document#1");
    let r = get(&gw, "/doc", &[("if-modified-since", &lm)]).await;
    assert_eq!(r.status, 304, "If-Modified-Since at Last-Modified");
    let earlier = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(7200),
    );
    assert_eq!(
        get(&gw, "/doc", &[("if-modified-since", &earlier)])
            .await
            .status,
        200
    );
    assert_eq!(
        o.hits("/doc"),
        1,
        "conditional requests were answered from cache"
    );
    // A conditional request on a miss is answered from the full upstream response.
    o.set(
        "/other",
        Reply::ok("max-age=60", "o").header("etag", "\"o\""),
    );
    let r = get(&gw, "/other", &[("if-none-match", "\"o\"")]).await;
    assert_eq!(r.status, 304);
    assert!(
        o.seen("/other")[0].header("if-none-match").is_none(),
        "the origin is asked for the full response"
    );
    assert_eq!(get(&gw, "/other", &[]).await.text(), "o#1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_entry_is_revalidated_with_its_validators_and_refreshed_by_a_304() {
    let o = Origin::start().await;
    o.script("/r", |seen, n| {
        if seen.header("if-none-match").as_deref() == Some("\"v1\"") {
            Reply::new(304, "")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=100")
                .header("x-version", &format!("{n}"))
        } else {
            Reply::ok("max-age=10", format!("body#{n}"))
                .header("etag", "\"v1\"")
                .header("x-version", &format!("{n}"))
                .header("x-kept", "yes")
        }
    });
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    assert_eq!(get(&gw, "/r", &[]).await.text(), "body#1");
    advance(&gw, &o, 11).await;
    let r = get(&gw, "/r", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body#1", "the stored body is served after a 304");
    assert_eq!(o.hits("/r"), 2);
    assert_eq!(
        o.seen("/r")[1].header("if-none-match").as_deref(),
        Some("\"v1\"")
    );
    let cs = cache_status(&r);
    assert!(cs.contains("fwd=stale; fwd-status=304"), "{cs}");
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "the 304's fields update the stored ones"
    );
    assert_eq!(r.header("x-kept"), Some("yes"));
    // The 304 refreshed the entry: max-age=100 from now on.
    advance(&gw, &o, 50).await;
    let r = get(&gw, "/r", &[]).await;
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(o.hits("/r"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_range_requests_are_served_from_the_get_entry() {
    let o = Origin::start().await;
    o.set("/file", Reply::ok("max-age=60", "0123456789abcdef"));
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    let http = client();
    // A HEAD miss fetches (GET) and stores the full response.
    let r = send(&http, "HEAD", &gw.url("/file"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(o.seen("/file")[0].method, "GET");
    let r = send(&http, "HEAD", &gw.url("/file"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("18"));
    assert!(cache_status(&r).contains("; hit"));
    let r = get(&gw, "/file", &[("range", "bytes=2-5")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "2345");
    assert_eq!(r.header("content-range"), Some("bytes 2-5/18"));
    let r = get(&gw, "/file", &[("range", "bytes=-3")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "f#1");
    let r = get(&gw, "/file", &[("range", "bytes=100-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(get(&gw, "/file", &[]).await.text(), "0123456789abcdef#1");
    assert_eq!(o.hits("/file"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_directives_force_revalidation_or_accept_stale() {
    let o = Origin::start().await;
    o.set("/d", Reply::ok("max-age=30", "d"));
    let gw = cache_gateway(&o, "{ memory: 4MiB }", ROUTE).await;
    assert_eq!(get(&gw, "/d", &[]).await.text(), "d#1");
    let r = get(&gw, "/d", &[("cache-control", "no-cache")]).await;
    assert_eq!(r.text(), "d#2", "request no-cache goes to the origin");
    assert!(
        cache_status(&r).contains("fwd=request"),
        "{}",
        cache_status(&r)
    );
    advance(&gw, &o, 10).await;
    assert_eq!(
        get(&gw, "/d", &[("cache-control", "max-age=5")])
            .await
            .text(),
        "d#3"
    );
    assert_eq!(
        get(&gw, "/d", &[("cache-control", "max-age=5")])
            .await
            .text(),
        "d#3"
    );
    assert_eq!(
        get(&gw, "/d", &[("cache-control", "min-fresh=40")])
            .await
            .text(),
        "d#4"
    );
    advance(&gw, &o, 40).await;
    let r = get(&gw, "/d", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(r.text(), "d#4", "max-stale accepts the stale entry");
    let age: u64 = r.header("age").unwrap_or("0").parse().unwrap_or(0);
    assert!(age >= 40, "Age {age}");
    // no-store in the request: answered, not stored.
    o.set("/ns", Reply::ok("max-age=30", "ns"));
    get(&gw, "/ns", &[("cache-control", "no-store")]).await;
    assert_eq!(get(&gw, "/ns", &[]).await.text(), "ns#2");
    // only-if-cached with nothing stored: 504, and the origin is not asked.
    let r = get(&gw, "/nothing", &[("cache-control", "only-if-cached")]).await;
    assert_problem(&r, 504);
    assert_eq!(o.hits("/nothing"), 0);
    let r = get(&gw, "/ns", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.text(), "ns#2");
}
