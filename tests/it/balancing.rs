//! Load-balancing algorithms, measured on the upstreams' own counters.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, config, one_route, Gateway, Upstream, FAST_HEALTH};

/// One upstream `u` over the given targets (`address`, `weight`), with fast
/// active health checks and `extra` upstream keys (flow style, "" for none),
/// and one catch-all route. Waits until all targets
/// are healthy so that the first requests are not skewed.
async fn gateway(targets: &[(&Upstream, u32)], balance: &str, extra: &str) -> Gateway {
    let list: Vec<String> = targets
        .iter()
        .map(|(u, w)| format!("{{ address: \"{}\", weight: {w} }}", u.address()))
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}, ")
    };
    let gw = Gateway::start(&config(&one_route(&format!(
        "targets: [ {} ], balance: {balance}, {extra}health: {FAST_HEALTH}",
        list.join(", ")
    ))))
    .await;
    let addrs: Vec<String> = targets.iter().map(|(u, _)| u.address()).collect();
    gw.wait_healthy("u", &addrs.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    gw
}

async fn send_sequential(gw: &Gateway, n: usize) {
    let http = client();
    for i in 0..n {
        let r = http
            .get(gw.url(&format!("/item/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let _ = r.bytes().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_splits_evenly() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&[(&a, 1), (&b, 1)], "round_robin", "").await;
    send_sequential(&gw, 1000).await;
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 1000, "every request reached exactly one target");
    for (name, h) in [("a", ha), ("b", hb)] {
        assert!(
            (450..=550).contains(&h),
            "round robin: {name} got {h} of 1000 (a={ha}, b={hb})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_two_to_one() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&[(&a, 2), (&b, 1)], "round_robin", "").await;
    send_sequential(&gw, 1200).await;
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 1200);
    let ratio = ha as f64 / hb.max(1) as f64;
    assert!(
        (1.75..=2.25).contains(&ratio),
        "weights 2:1 gave a={ha} b={hb} (ratio {ratio:.2})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_uses_every_target() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = gateway(&[(&a, 1), (&b, 1)], "random", "").await;
    send_sequential(&gw, 600).await;
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 600);
    for (name, h) in [("a", ha), ("b", hb)] {
        assert!((200..=400).contains(&h), "random: {name} got {h} of 600");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_on_header_is_sticky() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let gw = gateway(
        &[(&a, 1), (&b, 1), (&c, 1)],
        "consistent_hash",
        "hash_on: \"header:X-User\"",
    )
    .await;
    let http = client();
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let mut first = None;
        for i in 0..8 {
            let r = http
                .get(gw.url(&format!("/p/{i}")))
                .header("X-User", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let target = r.headers()["x-upstream"].to_str().unwrap().to_owned();
            match &first {
                None => first = Some(target),
                Some(t) => assert_eq!(t, &target, "user-{user} moved between targets"),
            }
        }
        used.insert(first.unwrap());
    }
    assert!(
        used.len() >= 2,
        "30 users all hashed to one target: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_requests_avoids_a_slow_target() {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    slow.set_delay(Duration::from_millis(300));
    let gw = Arc::new(gateway(&[(&slow, 1), (&fast, 1)], "least_requests", "").await);
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, gw) = (http.clone(), gw.clone());
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = http.get(gw.url("/work")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let (hs, hf) = (slow.hits(), fast.hits());
    let share = hs as f64 / (hs + hf) as f64;
    assert!(hf > 100, "fast target got only {hf} requests");
    assert!(
        share < 0.2,
        "least_requests sent {hs} of {} requests ({:.0}%) to the slow target",
        hs + hf,
        share * 100.0
    );
}
