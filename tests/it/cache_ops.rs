//! Response cache operations: invalidation by unsafe requests (RFC 9111 §4.4), the purge
//! API, the memory bound under a flood of distinct keys, and `max_object_size`, through
//! the real gateway against a scripted origin.

use crate::common;

use common::origin::{cache_gateway, cache_status, send, Origin, Reply};
use common::{client, Resp};
use serde_json::json;

async fn get(gw: &common::Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(&client(), "GET", &gw.url(path), headers).await
}

fn gets(o: &Origin, path: &str) -> usize {
    o.seen(path).iter().filter(|s| s.method == "GET").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn successful_unsafe_requests_invalidate_the_url_and_its_variants() {
    let o = Origin::start().await;
    o.script("/items/1", |seen, n| match seen.method.as_str() {
        "GET" => Reply::ok(
            "max-age=600",
            format!("{}#{n}", seen.header("accept-language").unwrap_or_default()),
        )
        .header("vary", "Accept-Language"),
        "PUT" => Reply::new(500, "failed"),
        _ => Reply::new(204, ""),
    });
    o.script("/items", |_, _| {
        Reply::new(201, "").header("location", "/items/2")
    });
    o.set("/items/2", Reply::ok("max-age=600", "two"));
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: read, match: { path_prefix: /items, methods: [GET, HEAD] }, upstream: o, cache: {} }
         - { name: write, match: { path_prefix: /items }, upstream: o }",
    )
    .await;
    let http = client();
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    let warm = || async {
        get(&gw, "/items/1", &en).await;
        get(&gw, "/items/1", &fr).await;
        assert!(cache_status(&get(&gw, "/items/1", &en).await).contains("; hit"));
        assert!(cache_status(&get(&gw, "/items/1", &fr).await).contains("; hit"));
    };
    warm().await;
    assert_eq!(gets(&o, "/items/1"), 2);
    // A failed unsafe request changes nothing.
    assert_eq!(
        send(&http, "PUT", &gw.url("/items/1"), &[]).await.status,
        500
    );
    assert!(cache_status(&get(&gw, "/items/1", &en).await).contains("; hit"));
    for method in ["POST", "DELETE", "PATCH"] {
        let before = gets(&o, "/items/1");
        let r = send(&http, method, &gw.url("/items/1"), &[]).await;
        assert_eq!(r.status, 204, "{method}");
        // Both variants are gone (a different route handled the unsafe request).
        let r = get(&gw, "/items/1", &en).await;
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{method}: {}",
            cache_status(&r)
        );
        let r = get(&gw, "/items/1", &fr).await;
        assert!(
            !cache_status(&r).contains("; hit"),
            "{method}: {}",
            cache_status(&r)
        );
        assert_eq!(gets(&o, "/items/1"), before + 2, "{method}");
        warm().await;
    }
    // Location of a successful POST is invalidated too.
    get(&gw, "/items/2", &[]).await;
    assert!(cache_status(&get(&gw, "/items/2", &[]).await).contains("; hit"));
    assert_eq!(
        send(&http, "POST", &gw.url("/items"), &[]).await.status,
        201
    );
    assert_eq!(get(&gw, "/items/2", &[]).await.text(), "two#2");
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_by_exact_path_prefix_and_route() {
    let o = Origin::start().await;
    for p in ["/a/1", "/a/2", "/a/x/3", "/b/1"] {
        o.set(p, Reply::ok("max-age=600", p));
    }
    o.script("/a/v", |seen, n| {
        Reply::ok("max-age=600", format!("v#{n}"))
            .header("vary", "x-v")
            .header("x-seen", &seen.header("x-v").unwrap_or_default())
    });
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: ra, match: { path_prefix: /a }, upstream: o, cache: {} }
         - { name: rb, match: { path_prefix: /b }, upstream: o, cache: {} }",
    )
    .await;
    let fill = || async {
        for p in ["/a/1", "/a/2", "/a/x/3", "/b/1"] {
            get(&gw, p, &[]).await;
        }
        get(&gw, "/a/v", &[("x-v", "1")]).await;
        get(&gw, "/a/v", &[("x-v", "2")]).await;
    };
    let is_hit = |p: &'static str, h: &'static [(&'static str, &'static str)]| {
        let gw = &gw;
        async move { cache_status(&get(gw, p, h).await).contains("; hit") }
    };
    fill().await;
    let purge = |body: serde_json::Value| {
        let gw = &gw;
        async move {
            let r = gw.admin_post("/admin/cache/purge", &body).await;
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (st, v) = purge(json!({"route": "ra", "path": "/a/1"})).await;
    assert_eq!((st, v["purged"].as_u64()), (200, Some(1)), "{v}");
    assert!(!is_hit("/a/1", &[]).await);
    assert!(is_hit("/a/2", &[]).await);
    // An exact path takes every variant with it.
    let (_, v) = purge(json!({"path": "/a/v"})).await;
    assert_eq!(v["purged"].as_u64(), Some(2), "{v}");
    assert!(!is_hit("/a/v", &[("x-v", "1")]).await);
    let (_, v) = purge(json!({"prefix": "/a/x"})).await;
    assert_eq!(v["purged"].as_u64(), Some(1), "{v}");
    assert!(!is_hit("/a/x/3", &[]).await);
    assert!(is_hit("/a/2", &[]).await && is_hit("/b/1", &[]).await);
    fill().await;
    let (_, v) = purge(json!({"route": "ra"})).await;
    assert_eq!(v["purged"].as_u64(), Some(5), "{v}");
    assert!(is_hit("/b/1", &[]).await, "another route's entries stay");
    assert!(v["bytes"].as_u64().unwrap_or(0) > 0);
    // Bad requests are precise problems.
    for (body, want) in [
        (json!({}), 400),
        (json!({"route": "nope"}), 404),
        (json!({"path": "/a", "prefix": "/a"}), 400),
        (json!({"path": "relative"}), 400),
        (json!({"paths": "/a"}), 400),
    ] {
        let r = gw.admin_post("/admin/cache/purge", &body).await;
        assert_eq!(r.status().as_u16(), want, "{body}");
        let ct = r.headers().get("content-type").cloned();
        assert_eq!(
            ct.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/problem+json")
        );
    }
    let r = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .body("{not json")
        .bearer_auth(common::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .json(&json!({"route": "ra"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "purge needs the admin token");
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_keeps_stored_bytes_within_memory_while_ten_times_that_is_written() {
    const MEMORY: u64 = 8 * 1024 * 1024;
    const OBJECT: usize = 64 * 1024;
    let o = Origin::start().await;
    o.set("/obj", Reply::ok("max-age=600", vec![b'x'; OBJECT]));
    o.set("/warm", Reply::ok("no-store", vec![b'w'; OBJECT]));
    let gw = cache_gateway(
        &o,
        "{ memory: 8MiB, max_object_size: 256KiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
    )
    .await;
    let http = client();
    // Warm the process up (allocator arenas, connection pools) before the baseline.
    for _ in 0..64 {
        send(&http, "GET", &gw.url("/warm"), &[]).await;
    }
    let baseline = rss_bytes(gw.pid());
    let total = 10 * MEMORY as usize / OBJECT;
    for i in 0..total {
        let r = send(&http, "GET", &gw.url(&format!("/obj?k={i}")), &[]).await;
        assert_eq!(r.body.len(), OBJECT + format!("#{}", i + 1).len());
        if i % 160 == 159 {
            let m = gw.metrics().await;
            let stored = m.get("gatehouse_cache_stored_bytes", &[]).unwrap_or(-1.0);
            assert!(
                stored <= MEMORY as f64,
                "stored {stored} > memory after {i} keys"
            );
            assert!(
                stored > MEMORY as f64 * 0.75,
                "stored {stored}: the cache should be nearly full"
            );
        }
    }
    let m = gw.metrics().await;
    let evictions = m.get("gatehouse_cache_evictions_total", &[]).unwrap_or(0.0);
    let entries = m.get("gatehouse_cache_entries", &[]).unwrap_or(0.0);
    assert!(evictions as usize >= total - 128, "evictions {evictions}");
    assert!(
        entries <= (MEMORY as usize / OBJECT) as f64,
        "entries {entries}"
    );
    assert!(
        m.get("gatehouse_cache_evicted_bytes_total", &[])
            .unwrap_or(0.0)
            > 9.0 * MEMORY as f64
    );
    // Least recently used went first: the newest keys are hits, the oldest are gone.
    let newest = get(&gw, &format!("/obj?k={}", total - 1), &[]).await;
    assert!(
        cache_status(&newest).contains("; hit"),
        "{}",
        cache_status(&newest)
    );
    let oldest = get(&gw, "/obj?k=0", &[]).await;
    assert!(cache_status(&oldest).contains("fwd=uri-miss"));
    // RSS stays near the bound: the cache's memory plus the stated slack (README).
    let grown = rss_bytes(gw.pid()).saturating_sub(baseline);
    eprintln!("rss baseline {baseline} grown {grown}");
    assert!(
        grown <= MEMORY + MEMORY / 2 + 8 * 1024 * 1024,
        "RSS grew by {grown} bytes for a {MEMORY}-byte cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_over_max_object_size_pass_through_intact_and_are_not_stored() {
    let o = Origin::start().await;
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    o.set("/big", Reply::ok("max-age=600", big.clone()));
    o.set(
        "/big-chunked",
        Reply::ok("max-age=600", big.clone()).chunked(),
    );
    o.set(
        "/small-chunked",
        Reply::ok("max-age=600", vec![b's'; 1000]).chunked(),
    );
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB, max_object_size: 256KiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
    )
    .await;
    for path in ["/big", "/big-chunked"] {
        for i in 1..=2 {
            let r = get(&gw, path, &[]).await;
            assert_eq!(r.status, 200);
            let mut want = big.clone();
            want.extend_from_slice(format!("#{i}").as_bytes());
            assert!(
                r.body == want,
                "{path}: body altered ({} bytes)",
                r.body.len()
            );
            assert!(!cache_status(&r).contains("; hit"));
        }
        assert_eq!(o.hits(path), 2, "{path} was stored");
    }
    let cs = cache_status(&get(&gw, "/big", &[]).await);
    assert!(
        cs.contains("detail=too-large") && !cs.contains("stored"),
        "{cs}"
    );
    get(&gw, "/small-chunked", &[]).await;
    let r = get(&gw, "/small-chunked", &[]).await;
    assert!(cache_status(&r).contains("; hit"));
    assert_eq!(r.body.len(), 1002);
    let m = gw.metrics().await;
    assert_eq!(m.get("gatehouse_cache_entries", &[]), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_the_new_bound_at_once_and_removing_the_cache_frees_it() {
    let o = Origin::start().await;
    o.set("/obj", Reply::ok("max-age=600", vec![b'x'; 32 * 1024]));
    let gw = cache_gateway(
        &o,
        "{ memory: 4MiB }",
        "- { name: c, match: { path_prefix: / }, upstream: o, cache: {} }",
    )
    .await;
    for i in 0..20 {
        get(&gw, &format!("/obj?k={i}"), &[]).await;
    }
    let stored = |m: &common::metrics::Metrics| m.get("gatehouse_cache_stored_bytes", &[]);
    assert!(stored(&gw.metrics().await).unwrap_or(0.0) > 600_000.0);
    let yaml = std::fs::read_to_string(&gw.config_path).expect("config");
    let reload = |yaml: String| {
        let gw = &gw;
        async move {
            std::fs::write(&gw.config_path, yaml).expect("write config");
            let r = gw.admin_post("/admin/reload", &json!({})).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        }
    };
    // A reload that keeps the cache section keeps what is stored.
    reload(yaml.clone()).await;
    assert!(cache_status(&get(&gw, "/obj?k=0", &[]).await).contains("; hit"));
    // A refused reload touches nothing, not even the bound its config asked for.
    let refused = yaml
        .replace("memory: 4MiB", "memory: 64KiB")
        .replace("upstream: o, cache", "upstream: nowhere, cache");
    std::fs::write(&gw.config_path, refused).expect("write config");
    let r = gw.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status(), 422);
    let m = gw.metrics().await;
    assert_eq!(
        m.get("gatehouse_cache_memory_limit_bytes", &[]),
        Some(4_194_304.0)
    );
    assert!(stored(&m).unwrap_or(0.0) > 600_000.0);
    assert!(cache_status(&get(&gw, "/obj?k=0", &[]).await).contains("; hit"));
    reload(yaml.replace("memory: 4MiB", "memory: 128KiB")).await;
    let m = gw.metrics().await;
    assert!(
        stored(&m).unwrap_or(f64::MAX) <= 131_072.0,
        "{:?}",
        stored(&m)
    );
    assert_eq!(
        m.get("gatehouse_cache_memory_limit_bytes", &[]),
        Some(131_072.0)
    );
    // What fits the new bound is kept across the reload.
    assert!(stored(&m).unwrap_or(0.0) > 0.0);
    assert!(m.get("gatehouse_cache_entries", &[]).unwrap_or(0.0) >= 1.0);
    // Without the cache section the route serves uncached and the memory is freed.
    let no_cache = yaml
        .lines()
        .filter(|l| !l.starts_with("cache:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(", cache: {}", "");
    reload(no_cache).await;
    assert_eq!(stored(&gw.metrics().await), Some(0.0));
    let r = get(&gw, "/obj?k=19", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("cache-status").is_none());
}
