//! Request mirroring (`routes[].mirror`): copies carry the request as the upstream gets
//! it (body included, up to `max_body`), `percent` samples, `max_inflight` bounds the
//! copies in flight and counts what it drops, `timeout` abandons an unanswered copy,
//! and a mirror that is slow or down changes nothing for the client: its answers come
//! while the mirror's copy is still unanswered.

use crate::common;

use common::origin::send;
use common::{client, config, eventually, free_port, Gateway, Resp, Upstream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// A mirror that takes each request and answers nothing until released.
struct Stuck {
    port: u16,
    /// The request line of each request received.
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    release: watch::Sender<bool>,
    answered: Arc<AtomicUsize>,
}

impl Stuck {
    async fn start() -> Stuck {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                let mut released = released.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&buf)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let _ = tx.send(line);
                    let _ = released.wait_for(|r| *r).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Stuck {
            port,
            received: tokio::sync::Mutex::new(rx),
            release,
            answered,
        }
    }

    /// The next request line received (within 10 s).
    async fn next(&self) -> String {
        let mut rx = self.received.lock().await;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the mirror got a copy")
            .expect("mirror running")
    }
}

/// Route `m` (`/m`) on upstream `main`, mirrored with `mirror` (flow keys) to the
/// upstream at `shadow`; route `plain` (`/plain`) without a mirror.
async fn mirrored(main: &Upstream, shadow: &str, mirror: &str, routes: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n  main: {{ targets: [ {{ address: \"{}\" }} ] }}\n  shadow: {{ targets: [ {{ address: \"{shadow}\" }} ] }}\n\
         routes:\n  - {{ name: m, match: {{ path_prefix: /m }}, upstream: main, request_headers: {{ set: {{ X-Gw: yes }} }}, mirror: {{ upstream: shadow, {mirror} }} }}\n\
         \x20 - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: main }}\n{routes}",
        main.address()
    )))
    .await
}

async fn mirror_count(gw: &Gateway, route: &str, result: &str) -> f64 {
    gw.metrics()
        .await
        .get(
            "gatehouse_mirror_requests_total",
            &[("route", route), ("result", result)],
        )
        .unwrap_or(-1.0)
}

async fn wait_count(gw: &Gateway, route: &str, result: &str, want: f64) {
    let ok = eventually(Duration::from_secs(10), || async {
        mirror_count(gw, route, result).await == want
    })
    .await;
    assert!(
        ok.is_some(),
        "mirror {route}/{result}: {} (want {want})",
        mirror_count(gw, route, result).await
    );
}

fn assert_main(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("main"));
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_carry_the_request_as_sent_upstream_and_bodies_up_to_max_body() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    let gw = mirrored(&main, &shadow.address(), "percent: 100, max_body: 64", "").await;
    let http = client();
    assert_main(
        &send(
            &http,
            "GET",
            &gw.url("/m/a?q=1"),
            &[("x-request-id", "mirror-1")],
        )
        .await,
    );
    let r = http
        .post(gw.url("/m/b"))
        .header("x-request-id", "mirror-2")
        .body(vec![b'x'; 10])
        .send()
        .await
        .expect("post");
    assert_main(&Resp::from_reqwest(r).await);
    assert!(
        eventually(Duration::from_secs(10), || async { shadow.hits() == 2 })
            .await
            .is_some()
    );
    let mut copies = shadow.requests();
    copies.sort_by_key(|c| c.path.clone());
    let (get, post) = (&copies[0], &copies[1]);
    assert_eq!(
        (get.method.as_str(), get.uri().as_str()),
        ("GET", "/m/a?q=1")
    );
    assert_eq!(get.header("x-request-id").as_deref(), Some("mirror-1"));
    assert_eq!(
        get.header("x-gw").as_deref(),
        Some("yes"),
        "the route's header operations"
    );
    assert_eq!((post.method.as_str(), post.body_len), ("POST", 10));
    assert_eq!(post.header("x-request-id").as_deref(), Some("mirror-2"));
    wait_count(&gw, "m", "sent", 2.0).await;

    // Over max_body: the client's request goes through whole, no copy is made.
    let r = http
        .post(gw.url("/m/big"))
        .body(vec![b'y'; 100])
        .send()
        .await
        .expect("post");
    let r = Resp::from_reqwest(r).await;
    assert_main(&r);
    assert_eq!(r.json()["body_len"], 100);
    assert_eq!(mirror_count(&gw, "m", "too_large").await, 1.0);
    // The next copy arrives; the big one never did.
    assert_main(&send(&http, "GET", &gw.url("/m/after"), &[]).await);
    assert!(
        eventually(Duration::from_secs(10), || async { shadow.hits() == 3 })
            .await
            .is_some()
    );
    assert!(shadow.requests().iter().all(|c| c.path != "/m/big"));
    // A route without a mirror sends nothing there.
    assert_main(&send(&http, "GET", &gw.url("/plain/x"), &[]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_zero_copies_nothing_and_percent_100_everything() {
    let main = Upstream::start("main").await;
    let shadow = Upstream::start("shadow").await;
    let gw = mirrored(
        &main,
        &shadow.address(),
        "percent: 100",
        "  - { name: none, match: { path_prefix: /none }, upstream: main, mirror: { upstream: shadow, percent: 0 } }\n",
    )
    .await;
    let http = client();
    for i in 0..20 {
        assert_main(&send(&http, "GET", &gw.url(&format!("/none/{i}")), &[]).await);
    }
    for i in 0..20 {
        assert_main(&send(&http, "GET", &gw.url(&format!("/m/{i}")), &[]).await);
    }
    wait_count(&gw, "m", "sent", 20.0).await;
    assert!(
        eventually(Duration::from_secs(10), || async { shadow.hits() == 20 })
            .await
            .is_some()
    );
    assert!(shadow.requests().iter().all(|c| c.path.starts_with("/m/")));
    for result in ["sent", "failed", "dropped", "too_large"] {
        assert_eq!(mirror_count(&gw, "none", result).await, 0.0, "{result}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_mirror_changes_nothing_for_the_client_and_excess_copies_are_dropped() {
    let main = Upstream::start("main").await;
    let stuck = Stuck::start().await;
    let gw = mirrored(
        &main,
        &format!("127.0.0.1:{}", stuck.port),
        "percent: 100, max_inflight: 1, timeout: 1h",
        "",
    )
    .await;
    let http = client();
    let first = send(&http, "GET", &gw.url("/m/slow"), &[]).await;
    assert_main(&first);
    // The copy reached the mirror and is still unanswered: the client had its answer
    // without waiting for it.
    assert_eq!(stuck.next().await, "GET /m/slow HTTP/1.1");
    assert_eq!(stuck.answered.load(Ordering::SeqCst), 0);
    // The one slot is held: the next copies are dropped, the clients still answered.
    for i in 0..3 {
        let r = send(&http, "GET", &gw.url(&format!("/m/next-{i}")), &[]).await;
        assert_main(&r);
        assert_eq!(r.json()["path"], format!("/m/next-{i}"));
    }
    assert_eq!(mirror_count(&gw, "m", "dropped").await, 3.0);
    assert_eq!(stuck.answered.load(Ordering::SeqCst), 0);
    stuck.release.send(true).expect("release");
    wait_count(&gw, "m", "sent", 1.0).await;
    // The slot is free again.
    assert_main(&send(&http, "GET", &gw.url("/m/later"), &[]).await);
    assert_eq!(stuck.next().await, "GET /m/later HTTP/1.1");
    wait_count(&gw, "m", "sent", 2.0).await;
    assert_eq!(main.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_copy_is_abandoned_at_the_timeout() {
    let main = Upstream::start("main").await;
    let stuck = Stuck::start().await;
    let gw = mirrored(
        &main,
        &format!("127.0.0.1:{}", stuck.port),
        "max_inflight: 1, timeout: 200ms",
        "",
    )
    .await;
    let http = client();
    assert_main(&send(&http, "GET", &gw.url("/m/1"), &[]).await);
    assert_eq!(stuck.next().await, "GET /m/1 HTTP/1.1");
    wait_count(&gw, "m", "failed", 1.0).await;
    // Its slot was given back: the next copy goes out.
    assert_main(&send(&http, "GET", &gw.url("/m/2"), &[]).await);
    assert_eq!(stuck.next().await, "GET /m/2 HTTP/1.1");
    assert_eq!(mirror_count(&gw, "m", "dropped").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_mirror_changes_nothing_for_the_client() {
    let main = Upstream::start("main").await;
    let gw = mirrored(
        &main,
        &format!("127.0.0.1:{}", free_port()),
        "percent: 100",
        "",
    )
    .await;
    let http = client();
    for i in 0..10 {
        let r = send(&http, "GET", &gw.url(&format!("/m/{i}")), &[]).await;
        assert_main(&r);
        assert_eq!(r.json()["path"], format!("/m/{i}"));
    }
    wait_count(&gw, "m", "failed", 10.0).await;
    assert_eq!(mirror_count(&gw, "m", "sent").await, 0.0);
    assert_eq!(main.hits(), 10);
}
