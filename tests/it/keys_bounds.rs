//! Client-chosen values never grow metric series, memory or the SQLite file without
//! bound (issue 11 §4), and config keys that were accepted and then ignored now work or
//! are refused or warned about with their YAML path (§7). Everything through real
//! sockets on loopback.

use crate::common;
use common::redis_server::RedisServer;
use common::{client, config, config_with_server, Gateway, TestDir, Upstream, FAST_HEALTH};
use sha2::Digest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn upstream_yaml(up: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n",
        up.address()
    )
}

// ---------------------------------------------------------------------------------------
// §4, methods and statuses

/// 200 invented methods through the gateway: one `OTHER` series, not 200.
#[tokio::test(flavor = "multi_thread")]
async fn invented_methods_share_one_series() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(&format!(
        "{}routes:\n  - {{ name: m, match: {{ path_prefix: / }}, upstream: app }}\n",
        upstream_yaml(&up)
    )))
    .await;
    let http = client();
    assert_eq!(http.get(gw.url("/")).send().await.unwrap().status(), 200);
    for i in 0..200 {
        let m = reqwest::Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        let r = http.request(m, gw.url("/")).send().await.expect("request");
        assert_eq!(r.status(), 200, "the upstream answers any method");
    }
    // A request is counted in its logging phase, just after its answer went out: wait
    // for the last one's count before reading the series.
    let sel = [("route", "m"), ("method", "OTHER"), ("status", "200")];
    common::eventually(Duration::from_secs(10), || async {
        gw.metrics()
            .await
            .get("gatehouse_http_requests_total", &sel)
            >= Some(200.0)
    })
    .await;
    let m = gw.metrics().await;
    let series = m.find("gatehouse_http_requests_total", &[("route", "m")]);
    let methods: std::collections::BTreeSet<_> =
        series.iter().map(|s| s.labels["method"].clone()).collect();
    eprintln!(
        "201 requests, 200 invented methods: {} series, methods {methods:?}",
        series.len()
    );
    assert_eq!(
        methods.into_iter().collect::<Vec<_>>(),
        ["GET", "OTHER"],
        "invented methods must collapse to `OTHER`"
    );
    assert_eq!(
        m.get(
            "gatehouse_http_requests_total",
            &[("route", "m"), ("method", "OTHER"), ("status", "200")]
        ),
        Some(200.0)
    );
}

/// An upstream that answers every request with the next status of 600..=999: statuses an
/// HTTP answer cannot have share one `other` label.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_statuses_outside_http_share_one_series() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(600));
    let server = tokio::spawn({
        let next = next.clone();
        async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let next = next.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            let code = next.fetch_add(1, Ordering::SeqCst);
                            let resp =
                                format!("HTTP/1.1 {code} Invented\r\ncontent-length: 2\r\n\r\nok");
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }
    });
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  raw: {{ targets: [ {{ address: \"{addr}\" }} ], retries: 0 }}\n\
         routes:\n  - {{ name: s, match: {{ path_prefix: / }}, upstream: raw }}\n"
    )))
    .await;
    let http = client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let r = http.get(gw.url("/")).send().await.expect("request");
        seen.insert(r.status().as_u16());
    }
    server.abort();
    // Each request is counted in its logging phase, after its answer: wait for all 100.
    common::eventually(Duration::from_secs(10), || async {
        gw.metrics()
            .await
            .sum("gatehouse_http_requests_total", &[("route", "s")])
            >= 100.0
    })
    .await;
    let m = gw.metrics().await;
    let labels = |name: &str, sel: (&str, &str)| -> std::collections::BTreeSet<String> {
        m.find(name, &[sel])
            .iter()
            .map(|s| s.labels["status"].clone())
            .collect()
    };
    let answered = labels("gatehouse_http_requests_total", ("route", "s"));
    let upstream = labels("gatehouse_upstream_requests_total", ("upstream", "raw"));
    eprintln!(
        "100 upstream statuses 600..699: client saw {} distinct statuses; labels {answered:?} \
         (http) and {upstream:?} (upstream)",
        seen.len()
    );
    for l in answered.iter().chain(&upstream) {
        let ok = l == "other" || l.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
        assert!(ok, "status label {l:?} is outside 100..=599");
    }
    assert!(
        answered.len() <= 3 && upstream.len() <= 3,
        "{answered:?} {upstream:?}"
    );
}

// ---------------------------------------------------------------------------------------
// §4, quota keys

fn quota_config(dir: &TestDir, limit: &str, store: &str) -> String {
    format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s, data_dir: \"{}\" }}\n\
         listeners:\n  - {{ name: public, address: \"127.0.0.1:{}\" }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {} }}\n\
         access_log: {{ path: \"off\" }}\n\
         store: {store}\n",
        dir.path.display(),
        common::free_port(),
        common::free_port(),
        common::TOKEN,
    ) + &format!(
        "routes:\n  - name: flood\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
         quota: {{ limit: {limit}, key: \"header:X-Key\" }}\n"
    )
}

fn db_rows(dir: &TestDir) -> (u64, u64) {
    let db = rusqlite::Connection::open(dir.join("gatehouse-limits.db")).expect("open db");
    db.query_row(
        "SELECT count(*), coalesce(max(length(key)), 0) FROM quota_counts",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .unwrap_or((0, 0))
}

fn db_count(dir: &TestDir, key: &[u8]) -> u64 {
    let Ok(db) = rusqlite::Connection::open(dir.join("gatehouse-limits.db")) else {
        return 0;
    };
    db.query_row(
        "SELECT coalesce(sum(count), 0) FROM quota_counts WHERE key = ?1",
        [key],
        |r| r.get::<_, i64>(0),
    )
    .map_or(0, |n| n as u64)
}

/// Polls the database until `key` holds `want` (the sync thread writes every 100 ms).
async fn wait_db_count(dir: &TestDir, key: &[u8], want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = db_count(dir, key);
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "key holds {n} in SQLite, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(http: &reqwest::Client, url: &str, key: &str) -> u16 {
    http.get(url)
        .header("x-key", key)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Distinct keys from 16 tasks at once.
async fn flood(http: &reqwest::Client, url: &str, prefix: &str, n: usize) {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, url, prefix) = (http.clone(), url.to_string(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                assert_eq!(send(&http, &url, &format!("{prefix}-{i}")).await, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("flood task");
    }
}

const MAX_KEYS: f64 = 1024.0;

async fn limit_keys(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .get("gatehouse_limit_keys", &[("limit", "route:flood:quota")])
        .expect("gatehouse_limit_keys")
}

/// 5,000 distinct `header:` quota keys against `max_keys: 1024`: memory and the SQLite
/// file stay under the cap, and a key that used its quota before the flood is still held
/// to it after.
#[tokio::test(flavor = "multi_thread")]
async fn quota_keys_are_bounded_in_memory_and_in_sqlite() {
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let yaml = quota_config(&dir, "20/day", "{ max_keys: 1024, sync_interval: 100ms }")
        + &upstream_yaml(&up);
    let gw = Gateway::start_env(&yaml, &[common::test_clock("2030-01-01T10:00:00Z")]).await;
    let http = client();
    let url = gw.url("/");
    for _ in 0..15 {
        assert_eq!(send(&http, &url, "heavy").await, 200);
    }
    flood(&http, &url, "flood", 5000).await;
    for _ in 0..5 {
        assert_eq!(send(&http, &url, "heavy").await, 200);
    }
    assert_eq!(send(&http, &url, "heavy").await, 429, "heavy used its 20");
    // The heavy key was admitted last: once SQLite holds its 20, every flood key synced.
    wait_db_count(&dir, b"heavy", 20).await;
    let keys = limit_keys(&gw).await;
    let (rows, _) = db_rows(&dir);
    eprintln!("5,000 distinct quota keys, max_keys 1024: {keys} in memory, {rows} SQLite rows");
    assert!(keys <= MAX_KEYS, "{keys} keys in memory");
    assert!(rows as f64 <= MAX_KEYS, "{rows} rows in SQLite");
    assert_eq!(
        send(&http, &url, "heavy").await,
        429,
        "still held to its quota"
    );
    assert_eq!(send(&http, &url, "newcomer").await, 200);
}

/// Keys over 64 bytes are stored as `sha256:<hex>`: two 3,000-byte keys that differ
/// only in their last byte are counted apart, and no stored key is longer than 71 bytes.
#[tokio::test(flavor = "multi_thread")]
async fn long_quota_keys_are_stored_as_hashes() {
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let yaml = quota_config(&dir, "2/day", "{ sync_interval: 100ms }") + &upstream_yaml(&up);
    let gw = Gateway::start_env(&yaml, &[common::test_clock("2030-01-01T10:00:00Z")]).await;
    let http = client();
    let url = gw.url("/");
    let long1 = "x".repeat(3000) + "1";
    let long2 = "x".repeat(3000) + "2";
    let answers = [
        send(&http, &url, &long1).await,
        send(&http, &url, &long1).await,
        send(&http, &url, &long1).await,
        send(&http, &url, &long2).await,
    ];
    eprintln!("long1 ×3, long2 ×1 at 2/day: {answers:?}");
    assert_eq!(answers, [200, 200, 429, 200]);
    let name = |k: &str| format!("sha256:{}", hex::encode(sha2::Sha256::digest(k)));
    wait_db_count(&dir, name(&long2).as_bytes(), 1).await;
    assert_eq!(db_count(&dir, name(&long1).as_bytes()), 2);
    let (rows, longest) = db_rows(&dir);
    eprintln!("SQLite: {rows} rows, longest key {longest} bytes");
    assert_eq!(rows, 2);
    assert_eq!(longest, 71, "sha256: + 64 hex digits");
    assert_eq!(
        send(&http, &url, "short").await,
        200,
        "short keys unchanged"
    );
    wait_db_count(&dir, b"short", 1).await;
}

/// During a Redis outage quota admissions are counted locally until Redis is back; a flood
/// of distinct keys in that time stays under `max_keys`, and the heavy key's admissions
/// made during the outage (the most used, so kept) still reach Redis when it returns.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_keeps_pending_quota_deltas_bounded() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let store = format!(
        "{{ backend: redis, redis_url: \"{}\", on_error: fail_open, max_keys: 1024, \
         sync_interval: 100ms }}",
        redis.url()
    );
    let yaml = quota_config(&dir, "1000/day", &store) + &upstream_yaml(&up);
    let gw = Gateway::start_env(&yaml, &[common::test_clock("2030-01-01T10:00:00Z")]).await;
    let http = client();
    let url = gw.url("/");
    let heavy_hex = hex::encode(&sha2::Sha256::digest(b"heavy")[..16]);
    let pattern = format!("gatehouse:route:flood:quota:{heavy_hex}:*");
    let wait_heavy = |want: u64, redis: &RedisServer| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = redis.sum_keys(&pattern);
            if n == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "heavy holds {n} in Redis, want {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for _ in 0..10 {
        assert_eq!(send(&http, &url, "heavy").await, 200);
    }
    wait_heavy(10, &redis);
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .metrics()
        .await
        .get("gatehouse_limit_store_up", &[("backend", "redis")])
        != Some(0.0)
    {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flood(&http, &url, "outage", 5000).await;
    for _ in 0..5 {
        assert_eq!(send(&http, &url, "heavy").await, 200);
    }
    let keys = limit_keys(&gw).await;
    eprintln!("Redis down, 5,000 distinct quota keys, max_keys 1024: {keys} held in memory");
    assert!(keys <= MAX_KEYS, "{keys} keys pending in memory");
    // The restarted Redis has no persistence: it starts empty, and gets exactly the 5
    // admissions the heavy key made during the outage.
    redis.restart().await;
    wait_heavy(5, &redis);
}

// ---------------------------------------------------------------------------------------
// §7, route timeouts

/// `routes[].timeouts.idle` reaches the pool: with `idle: 100ms` a connection idle for a
/// second is gone and the next request opens a new one; the route without it (upstream
/// default, 60 s) reuses its connection.
#[tokio::test(flavor = "multi_thread")]
async fn route_idle_timeout_reaches_the_connection_pool() {
    let short = Upstream::start("short").await;
    let long = Upstream::start("long").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  short: {{ targets: [ {{ address: \"{}\" }} ] }}\n  \
         long: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: short, match: {{ path_prefix: /short }}, upstream: short, \
         timeouts: {{ idle: 100ms }} }}\n  \
         - {{ name: long, match: {{ path_prefix: /long }}, upstream: long }}\n",
        short.address(),
        long.address()
    )))
    .await;
    let http = client();
    for p in ["/short", "/long"] {
        assert_eq!(http.get(gw.url(p)).send().await.unwrap().status(), 200);
    }
    // Ten times the short idle timeout, a sixtieth of the default.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in ["/short", "/long"] {
        assert_eq!(http.get(gw.url(p)).send().await.unwrap().status(), 200);
    }
    eprintln!(
        "two requests 1 s apart: idle 100ms → {} upstream connections, default → {}",
        short.connections(),
        long.connections()
    );
    assert_eq!(
        short.connections(),
        2,
        "idle: 100ms closed the pooled connection"
    );
    assert_eq!(long.connections(), 1, "the default keeps it");
}

/// `routes[].timeouts.connect` reaches the connector: a target whose accept queue is full
/// never completes a handshake; the route's 200 ms gives up long before the upstream's 5 s.
#[tokio::test(flavor = "multi_thread")]
async fn route_connect_timeout_reaches_the_connector() {
    // Backlog 0 and two unaccepted connections: the queue is full and further SYNs are
    // dropped, so a connect hangs until its timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  full: {{ targets: [ {{ address: \"{addr}\" }} ], retries: 0, \
         timeouts: {{ connect: 60s }} }}\n\
         routes:\n  - {{ name: c, match: {{ path_prefix: / }}, upstream: full, \
         timeouts: {{ connect: 200ms }} }}\n"
    )))
    .await;
    let start = Instant::now();
    let r = client().get(gw.url("/")).send().await.expect("answer");
    let took = start.elapsed();
    eprintln!(
        "connect to a full accept queue ({} fillers): {} after {took:?}",
        fillers.len(),
        r.status()
    );
    assert!(r.status().is_server_error());
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: the route's 200ms was not used (the upstream's is 60s)"
    );
    drop((sock, fillers));
}

// ---------------------------------------------------------------------------------------
// §7, active health checks

/// A TLS upstream with a certificate from a private CA: with `verify: false` the active
/// HTTP check succeeds (the target turns healthy and serves); with `verify: true` the
/// same target stays unhealthy.
#[tokio::test(flavor = "multi_thread")]
async fn tls_health_checks_honour_verify_false() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/certs/a.test.pem"
    ))
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key = PrivateKeyDer::from_pem_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/certs/a.test.key"
    ))
    .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let hits = hits.clone();
        async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, hits) = (acceptor.clone(), hits.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        }
    });
    let address = format!("localhost:{}", addr.port());
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  tls: {{ targets: [ {{ address: \"{address}\" }} ], tls: true, \
         verify: false, health: {FAST_HEALTH} }}\n  \
         strict: {{ targets: [ {{ address: \"{address}\" }} ], tls: true, \
         health: {FAST_HEALTH} }}\n\
         routes:\n  - {{ name: t, match: {{ path_prefix: / }}, upstream: tls }}\n  \
         - {{ name: s, match: {{ path_prefix: /strict }}, upstream: strict }}\n"
    )))
    .await;
    // With the default `verify: true` the same certificate is still refused.
    let strict = gw
        .wait_target_health("strict", &address, "unhealthy", Duration::from_secs(5))
        .await;
    let detail = gw.target("strict", &address).await;
    eprintln!("same upstream, verify: true: {strict:?}; target {detail:?}");
    strict.expect("verify: true must keep refusing a certificate from an unknown CA");
    let got = gw
        .wait_target_health("tls", &address, "healthy", Duration::from_secs(5))
        .await;
    let detail = gw.target("tls", &address).await;
    eprintln!("self-signed TLS upstream, verify: false: {got:?}; target {detail:?}");
    got.expect("the active check must accept the certificate when verify is false");
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.abort();
}

/// An h2c-only upstream (`http2: true`, no TLS) answers HTTP/1.1 with a protocol error:
/// the active HTTP check must speak h2c to it.
#[tokio::test(flavor = "multi_thread")]
async fn http_health_checks_speak_h2c_to_http2_upstreams() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let health = health.clone();
        async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let health = health.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        if req.uri().path() == "/healthz" {
                            health.fetch_add(1, Ordering::SeqCst);
                        }
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }
    });
    let address = addr.to_string();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  h2: {{ targets: [ {{ address: \"{address}\" }} ], http2: true, \
         health: {FAST_HEALTH} }}\n\
         routes:\n  - {{ name: h, match: {{ path_prefix: / }}, upstream: h2 }}\n"
    )))
    .await;
    let got = gw
        .wait_target_health("h2", &address, "healthy", Duration::from_secs(5))
        .await;
    let detail = gw.target("h2", &address).await;
    eprintln!(
        "h2c-only upstream: {got:?}; {} health requests answered; target {detail:?}",
        health.load(Ordering::SeqCst)
    );
    got.expect("an h2c-only upstream must pass its HTTP health check");
    assert!(health.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    server.abort();
}

// ---------------------------------------------------------------------------------------
// §7, whole seconds and reload

/// Pingora counts `grace_period` and `shutdown_timeout` in whole seconds: a fraction is
/// refused with its YAML path instead of being cut.
#[test]
fn sub_second_lifecycle_durations_are_refused_with_their_path() {
    let yaml = |server: &str| {
        format!(
            "version: 1\nserver: {{ threads: 1, {server} }}\n\
             listeners:\n  - {{ name: public, address: \"127.0.0.1:18080\" }}\n\
             upstreams:\n  app: {{ targets: [ {{ address: \"127.0.0.1:9\" }} ] }}\n\
             routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app }}\n"
        )
    };
    for (server, path) in [
        ("grace_period: 1500ms", "server.grace_period"),
        ("shutdown_timeout: 500ms", "server.shutdown_timeout"),
        ("grace_period: 2.5s", "server.grace_period"),
    ] {
        let (code, out) = common::gateway::check(&yaml(server), &[]);
        eprintln!("{server}: exit {code:?}: {}", out.trim());
        assert_ne!(code, Some(0), "{server} must be refused");
        assert!(
            out.contains(path),
            "{server}: the error names {path}: {out}"
        );
    }
    let (code, out) = common::gateway::check(&yaml("grace_period: 2s, shutdown_timeout: 1s"), &[]);
    assert_eq!(code, Some(0), "whole seconds are fine: {out}");
}

/// `access_log.path`, `admin.address`, the listeners and the server's own settings are
/// taken at start only: a reload that changes them says so, with their YAML paths, in its
/// answer and in the log, and applies the rest.
#[tokio::test(flavor = "multi_thread")]
async fn reload_warns_about_keys_it_cannot_apply() {
    let up = Upstream::start("app").await;
    let yaml = config_with_server(
        "data_dir: ./data",
        &format!(
            "{}routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: app }}\n",
            upstream_yaml(&up)
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let admin_port = gw.admin.port();
    let changed = yaml
        .replace(
            &format!("127.0.0.1:{admin_port}"),
            &format!("127.0.0.1:{}", common::free_port()),
        )
        .replace("path: \"off\"", "path: \"./access.log\"")
        .replace("path_prefix: / }", "path_prefix: /new }");
    std::fs::write(&gw.config_path, changed).unwrap();
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    eprintln!("reload changing admin.address and access_log.path: {status} {body}");
    assert_eq!(status, 200, "the rest of the config applies");
    let warnings = body["warnings"].as_array().cloned().unwrap_or_default();
    let paths: Vec<_> = warnings.iter().filter_map(|w| w["path"].as_str()).collect();
    assert!(paths.contains(&"admin.address"), "{body}");
    assert!(paths.contains(&"access_log.path"), "{body}");
    // The old admin address still answers; the new route is live.
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);
    let client = client();
    assert_eq!(
        client.get(gw.url("/new")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        client.get(gw.url("/other")).send().await.unwrap().status(),
        404
    );
    let logs = gw.stderr() + &gw.stdout();
    assert!(
        logs.contains("admin.address") && logs.contains("access_log.path"),
        "the log names both keys: {}",
        gw.logs_tail()
    );
    // Back to the values in force: nothing to warn about.
    std::fs::write(&gw.config_path, &yaml).unwrap();
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["warnings"], serde_json::json!([]), "{body}");
    // The other keys only a restart or upgrade applies: listeners and the server's own.
    let listener = gw.addr().to_string();
    let moved = yaml
        .replace(&listener, &format!("127.0.0.1:{}", common::free_port()))
        .replace("threads: 1", "threads: 2")
        .replace("grace_period: 5s", "grace_period: 7s");
    std::fs::write(&gw.config_path, moved).unwrap();
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    let body: serde_json::Value = r.json().await.unwrap();
    eprintln!("reload changing a listener, threads and grace_period: {body}");
    let paths: Vec<_> = body["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|w| w["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        paths,
        ["listeners", "server.threads", "server.grace_period"],
        "{body}"
    );
    assert_eq!(
        client.get(gw.url("/")).send().await.unwrap().status(),
        200,
        "still on the old listener"
    );
}
