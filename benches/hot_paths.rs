//! Hot paths of the request: route matching (10, 100, 1,000 routes), the per-request
//! header work, upstream selection per algorithm, and the choice of a split side or an
//! API version (what a split or versioned route adds to a plain one).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::internals::config::model;
use gatehouse::internals::path::normalize;
use gatehouse::internals::policy::headers;
use gatehouse::internals::runtime::router::{host_of, Conditions, Entry, PathMatch, Router};
use gatehouse::internals::upstream::Upstream;
use http::{HeaderMap, Method};

fn router(n: usize) -> Router<usize> {
    let entries = (0..n)
        .map(|i| {
            let path = match i % 4 {
                0 => PathMatch::Exact(format!("/svc{i}/items")),
                1 | 2 => PathMatch::Prefix(format!("/svc{i}/api")),
                _ => PathMatch::Regex(
                    regex::Regex::new(&format!("^/re{i}/[0-9]+$")).expect("valid regex"),
                ),
            };
            Entry {
                hosts: if i % 3 == 0 {
                    vec![format!("h{i}.example.com")]
                } else {
                    vec![]
                },
                path,
                conditions: Conditions {
                    methods: Some(vec![Method::GET, Method::POST]),
                    headers: vec![],
                },
                value: i,
            }
        })
        .collect();
    Router::new(entries)
}

fn bench_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10usize, 100, 1000] {
        let r = router(n);
        // A prefix route near the end of the file, and a miss that falls through to regexes.
        let hit = format!("/svc{}/api/orders/42", n - 3);
        g.bench_with_input(BenchmarkId::new("prefix_hit", n), &n, |b, _| {
            b.iter(|| {
                r.find(
                    black_box("api.example.com"),
                    black_box(&hit),
                    &Method::GET,
                    &headers,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                r.find(
                    black_box("api.example.com"),
                    black_box("/nothing/here"),
                    &Method::GET,
                    &headers,
                )
            })
        });
    }
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    let ops = headers::HeaderOps::compile(&model::HeaderOps {
        set: [("X-Gateway".to_string(), "gatehouse".to_string())]
            .into_iter()
            .collect(),
        remove: vec!["X-Debug".into()],
    });
    let mut base =
        pingora::http::RequestHeader::build("GET", b"/api/v1/orders/42?x=1", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("x-request-id", "abc-123"),
        ("x-consumer-id", "spoofed"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        base.insert_header(k, v).unwrap();
    }
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    c.bench_function("request_header_work", |b| {
        b.iter(|| {
            let mut h = base.clone();
            let path = normalize(h.uri.path()).map(|p| p.len()).unwrap_or(0);
            let host = host_of(
                h.headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
            .len();
            let id_ok = headers::well_formed_request_id(
                h.headers
                    .get("x-request-id")
                    .map(|v| v.as_bytes())
                    .unwrap_or(b""),
            );
            headers::strip_identity(&mut h);
            headers::set_forwarded(&mut h, Some(ip), false);
            ops.apply_request(&mut h);
            black_box((path, host, id_ok, h))
        })
    });
    c.bench_function("path_normalize_dirty", |b| {
        b.iter(|| normalize(black_box("/api//v1/./orders/../orders/%34%32")).map(|p| p.len()))
    });
    c.bench_function("request_id_generate", |b| b.iter(headers::new_request_id));
}

fn upstream(balance: model::Balance) -> Upstream {
    let cfg = model::Upstream {
        targets: (0..4)
            .map(|i| model::Target {
                address: format!("127.0.0.1:{}", 19000 + i),
                weight: 1 + i % 2,
            })
            .collect(),
        balance,
        hash_on: (balance == model::Balance::ConsistentHash).then(|| "header:X-User".to_string()),
        tls: false,
        sni: None,
        verify: true,
        http2: false,
        timeouts: Default::default(),
        retries: 1,
        max_inflight: 0,
        health: Default::default(),
        breaker: None,
        outlier: None,
        retry: None,
    };
    let name = format!("bench-{balance:?}");
    let clock = std::sync::Arc::new(gatehouse::internals::clock::Clock::system());
    let plan =
        gatehouse::internals::upstream::Plan::compile(&name, &cfg, clock).expect("valid upstream");
    Upstream::build(&name, &cfg, plan)
}

fn bench_selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstream_select");
    for balance in [
        model::Balance::RoundRobin,
        model::Balance::Random,
        model::Balance::ConsistentHash,
        model::Balance::LeastRequests,
    ] {
        let up = upstream(balance);
        let first_two: Vec<_> = up.target_ids().take(2).collect();
        g.bench_function(format!("{balance:?}"), |b| {
            b.iter(|| up.select(black_box(b"user-42"), &[]))
        });
        g.bench_function(format!("{balance:?}/retry"), |b| {
            b.iter(|| up.select(black_box(b"user-42"), &first_two))
        });
    }
    g.finish();
}

/// A split side by consumer (and by a forcing header), and a version by header and by
/// media type: the per-request work a split or versioned route adds to a plain one.
fn bench_traffic(c: &mut Criterion) {
    use gatehouse::internals::config::route_traffic as traffic;
    use gatehouse::internals::policy::versions::Versions;
    use gatehouse::internals::upstream::split::{Request, Split};
    use std::sync::Arc;
    let ups: std::collections::BTreeMap<String, Arc<Upstream>> = ["stable", "canary"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Arc::new(upstream(model::Balance::RoundRobin)),
            )
        })
        .collect();
    let split: traffic::Split = serde_yaml::from_str(
        "{ key: consumer, weights: { stable: 95, canary: 5 }, force_header: X-Canary }",
    )
    .expect("split");
    // The sides are found by upstream name; the bench upstreams share one, so only the
    // placement is measured (the forced lookup compares names either way).
    let split = Split::compile("bench", &split, &ups).expect("compiles");
    let plain = HeaderMap::new();
    let mut forced = HeaderMap::new();
    forced.insert("x-canary", "canary".parse().expect("value"));
    let mut g = c.benchmark_group("traffic");
    g.bench_function("split/consumer", |b| {
        b.iter(|| {
            split.choose(black_box(&Request {
                headers: &plain,
                consumer: Some("consumer-0042"),
                client_ip: None,
            }))
        })
    });
    g.bench_function("split/force_header", |b| {
        b.iter(|| {
            split.choose(black_box(&Request {
                headers: &forced,
                consumer: Some("consumer-0042"),
                client_ip: None,
            }))
        })
    });
    let versions: traffic::Versions =
        serde_yaml::from_str("{ default: \"2\", upstreams: { \"1\": stable, \"2\": canary } }")
            .expect("versions");
    let versions = Versions::compile("bench", &versions, &ups, 0).expect("compiles");
    let mut by_header = HeaderMap::new();
    by_header.insert("accept-version", "1".parse().expect("value"));
    let mut by_media = HeaderMap::new();
    by_media.insert(
        "accept",
        "text/html, application/vnd.acme.v1+json"
            .parse()
            .expect("value"),
    );
    g.bench_function("version/path", |b| {
        b.iter(|| versions.choose(black_box(Some("1")), &plain).is_ok())
    });
    g.bench_function("version/header", |b| {
        b.iter(|| versions.choose(None, black_box(&by_header)).is_ok())
    });
    g.bench_function("version/media_type", |b| {
        b.iter(|| versions.choose(None, black_box(&by_media)).is_ok())
    });
    g.bench_function("version/default", |b| {
        b.iter(|| versions.choose(None, black_box(&plain)).is_ok())
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_routing,
    bench_headers,
    bench_selection,
    bench_traffic
);
criterion_main!(benches);
