//! Cache hot paths: computing a request's cache key (primary hash and variance), a
//! lookup that hits (storage lookup, meta decode, body read), and the storing decision.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::internals::cache::{key, rules, MemoryStorage};
use http::HeaderMap;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::Storage;
use pingora::cache::trace::Span;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn response() -> ResponseHeader {
    let mut h = ResponseHeader::build(200, None).expect("header");
    h.insert_header("content-type", "application/json")
        .expect("h");
    h.insert_header("content-length", "1024").expect("h");
    h.insert_header("cache-control", "public, max-age=60")
        .expect("h");
    h.insert_header("etag", "\"5d41402abc4b2a76\"").expect("h");
    h.insert_header("vary", "Accept-Encoding").expect("h");
    h
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("accept-encoding", "gzip, br".parse().expect("v"));
    h.insert("user-agent", "bench/1.0".parse().expect("v"));
    h
}

fn bench_key(c: &mut Criterion) {
    let route: Arc<str> = Arc::from("orders-read");
    let resp = response();
    let req = request_headers();
    c.bench_function("cache_key/primary_and_hash", |b| {
        b.iter(|| {
            let k = key::cache_key(
                black_box(false),
                black_box("api.example.com"),
                black_box("/api/v1/orders/12345"),
                black_box(Some("limit=10&page=2")),
                &route,
            );
            k.combined_bin()
        })
    });
    // An authenticated JWT request: consumer, subject and scopes select the variant.
    let identity = [
        ("x-consumer-id", http::HeaderValue::from_static("acme")),
        ("x-auth-subject", http::HeaderValue::from_static("alice")),
        (
            "x-auth-scopes",
            http::HeaderValue::from_static("orders:read"),
        ),
    ];
    let on = key::VaryOn {
        route: "orders-read",
        identity: &identity,
        ..key::VaryOn::default()
    };
    c.bench_function("cache_key/variance", |b| {
        b.iter(|| key::variance(black_box(&on), &resp.headers, black_box(&req)))
    });
}

fn bench_lookup(c: &mut Criterion) {
    let storage: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(64 << 20, 1 << 20)));
    let span = Span::inactive().handle();
    let route: Arc<str> = Arc::from("orders-read");
    let k = key::cache_key(false, "api.example.com", "/api/v1/orders/1", None, &route);
    let now = SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, response());
    futures::executor::block_on(async {
        let mut miss = storage
            .get_miss_handler(&k, &meta, &span)
            .await
            .expect("miss handler");
        miss.write_body(Bytes::from(vec![b'x'; 1024]), true)
            .await
            .expect("write");
        miss.finish().await.expect("finish");
    });
    c.bench_function("cache_lookup/hit_1k", |b| {
        b.iter(|| {
            futures::executor::block_on(async {
                let (meta, mut hit) = storage
                    .lookup(black_box(&k), &span)
                    .await
                    .expect("lookup")
                    .expect("hit");
                let mut n = 0;
                while let Some(chunk) = hit.read_body().await.expect("read") {
                    n += chunk.len();
                }
                (meta.fresh_until(), n)
            })
        })
    });
}

fn bench_decide(c: &mut Criterion) {
    let resp = response();
    let now = SystemTime::now();
    c.bench_function("cache_rules/decide", |b| {
        b.iter(|| {
            rules::decide(&rules::StoreInput {
                status: 200,
                headers: black_box(&resp.headers),
                request_time: now,
                response_time: now,
                authorization: false,
                request_no_store: false,
                route_ttl: None,
                store_set_cookie: false,
            })
        })
    });
}

criterion_group!(benches, bench_key, bench_lookup, bench_decide);
criterion_main!(benches);
