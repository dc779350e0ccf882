//! Failure handling: dead targets, retries, active and passive health,
//! no healthy target, max_inflight, upstream errors and timeouts.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_problem, client, config, free_port, get, one_route, targets, test_clock, Gateway, Resp,
    Upstream, FAST_HEALTH,
};

#[tokio::test(flavor = "multi_thread")]
async fn killed_target_is_invisible_to_clients_and_comes_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (aa, ba) = (a.address(), b.address());
    let gw = Arc::new(
        Gateway::start(&config(&one_route(&format!(
            "{}, retries: 2, health: {{ active: {{ http_path: /healthz, interval: 200ms, \
             timeout: 200ms, healthy_after: 2, unhealthy_after: 2 }} }}",
            targets(&[&aa, &ba])
        ))))
        .await,
    );
    gw.wait_healthy("u", &[&aa, &ba]).await;

    // Steady traffic from 4 clients for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let http = client();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (http, gw, stop, sent, errors) = (
            http.clone(),
            gw.clone(),
            stop.clone(),
            sent.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match http.get(gw.url(&format!("/w{w}/{i}"))).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        let st = r.status();
                        let body = r.text().await.unwrap_or_default();
                        errors.lock().unwrap().push(format!("{st}: {body}"));
                    }
                    Err(e) => errors.lock().unwrap().push(format!("transport: {e}")),
                }
                sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.hits() > 0, "b got no traffic before the kill");

    b.stop().await;
    // interval 200ms × unhealthy_after 2, plus check timeout and slack.
    let took = gw
        .wait_target_health("u", &ba, "unhealthy", Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("killed target not taken out: {e}"));
    eprintln!("killed target marked unhealthy after {took:?}");
    let m = gw.metrics().await;
    let healthy = |t: &str| {
        m.get(
            "gatehouse_upstream_target_healthy",
            &[("upstream", "u"), ("target", t)],
        )
    };
    assert_eq!(healthy(&ba), Some(0.0), "metric for the killed target");
    assert_eq!(healthy(&aa), Some(1.0), "metric for the live target");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let checks_before = b.health_hits();
    b.restart().await;
    let hits_before = b.hits();
    let took = gw
        .wait_target_health("u", &ba, "healthy", Duration::from_secs(3))
        .await
        .unwrap_or_else(|e| panic!("restarted target not back: {e}"));
    eprintln!("restarted target healthy again after {took:?}");
    assert!(
        b.health_hits() - checks_before >= 2,
        "healthy_after: 2 needs two passing checks after the restart"
    );
    let back =
        common::eventually(Duration::from_secs(3), || async { b.hits() > hits_before }).await;
    assert!(back.is_some(), "restarted target gets no traffic");
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_upstream_target_healthy",
            &[("upstream", "u"), ("target", &ba)]
        ),
        Some(1.0)
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 200, "too little traffic to mean anything: {total}");
    assert!(
        errors.is_empty(),
        "{} of {total} requests failed while a target died; first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failure_is_retried_for_post() {
    let a = Upstream::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&config(&one_route(&format!(
        "{}, balance: round_robin, retries: 1",
        targets(&[&dead, &a.address()])
    ))))
    .await;
    let http = client();
    for i in 0..20 {
        let r = http
            .post(gw.url(&format!("/orders/{i}")))
            .body("payload-123")
            .send()
            .await
            .unwrap();
        let r = Resp::from_reqwest(r).await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
    }
    assert_eq!(a.hits(), 20);
    assert!(a
        .requests()
        .iter()
        .all(|r| r.method == "POST" && r.body_len == 11));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_targets_down_gives_503_problem() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (aa, ba) = (a.address(), b.address());
    let gw = Gateway::start(&config(&one_route(&format!(
        "{}, retries: 1, health: {FAST_HEALTH}",
        targets(&[&aa, &ba])
    ))))
    .await;
    gw.wait_healthy("u", &[&aa, &ba]).await;
    a.stop().await;
    b.stop().await;
    for t in [&aa, &ba] {
        gw.wait_target_health("u", t, "unhealthy", Duration::from_secs(3))
            .await
            .unwrap();
    }
    let r = get(&client(), &gw.url("/x")).await;
    assert_problem(&r, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_inflight_overflow_gives_503_with_retry_after() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(1500));
    let gw = Arc::new(
        Gateway::start(&config(&one_route(&format!(
            "{}, max_inflight: 2",
            targets(&[&slow.address()])
        ))))
        .await,
    );
    let http = client();
    let inflight: Vec<_> = (0..2)
        .map(|i| {
            let (http, gw) = (http.clone(), gw.clone());
            tokio::spawn(async move {
                http.get(gw.url(&format!("/slow/{i}")))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    let both = common::eventually(Duration::from_secs(3), || async { slow.inflight() == 2 }).await;
    assert!(
        both.is_some(),
        "the two slow requests never reached the upstream"
    );

    let r = get(&http, &gw.url("/third")).await;
    assert_problem(&r, 503);
    let ra = r
        .header("retry-after")
        .expect("503 for max_inflight must carry Retry-After");
    assert!(
        ra.trim().parse::<u64>().is_ok(),
        "Retry-After should be delta-seconds: {ra:?}"
    );
    assert_eq!(
        slow.hits(),
        2,
        "the rejected request must not reach the upstream"
    );

    for h in inflight {
        assert_eq!(h.await.unwrap().expect("slow request"), 200);
    }
    slow.set_delay(Duration::ZERO);
    assert_eq!(
        get(&http, &gw.url("/after")).await.status,
        200,
        "capacity is released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_health_takes_a_failing_target_out_for_the_cooldown() {
    let good = Upstream::start("good").await;
    let bad = Upstream::start("bad").await;
    bad.set_status(500);
    // The cooldown runs on the gateway's test clock: it stands still until moved, so
    // however slow the machine, every request below is within the cooldown.
    let gw = Gateway::start_with_env(
        &config(&one_route(&format!(
            "{}, retries: 0, health: {{ passive: {{ unhealthy_after: 3, cooldown: 2s }} }}",
            targets(&[&good.address(), &bad.address()])
        ))),
        &[test_clock("now")],
    )
    .await;
    let http = client();
    for _ in 0..30 {
        let _ = get(&http, &gw.url("/p")).await;
    }
    assert_eq!(
        bad.hits(),
        3,
        "after 3 consecutive 5xx the target must get no traffic during the cooldown"
    );
    assert_eq!(good.hits(), 27);

    bad.set_status(200);
    gw.advance_clock("1s").await;
    for _ in 0..10 {
        assert_eq!(get(&http, &gw.url("/p")).await.status, 200);
    }
    assert_eq!(bad.hits(), 3, "still out 1s into its 2s cooldown");
    gw.advance_clock("1s").await;
    for _ in 0..20 {
        assert_eq!(get(&http, &gw.url("/p")).await.status, 200);
    }
    assert!(bad.hits() > 3, "target not tried again after the cooldown");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_timeout_is_504_and_broken_upstream_is_502() {
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    // Accepts and closes every connection without answering.
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let closer_task = tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            drop(s);
        }
    });
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          slow:
            targets: [ {{ address: "{}" }} ]
            timeouts: {{ connect: 1s, read: 300ms }}
            retries: 0
          broken:
            targets: [ {{ address: "{closer_addr}" }} ]
            retries: 0
        routes:
          - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}
          - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: broken }}
        "#,
        slow.address()
    )))
    .await;
    let http = client();
    let r = get(&http, &gw.url("/slow")).await;
    // No wall-clock bound (a busy machine can stretch any): the order of events proves
    // the 300 ms read timeout. The request reached the upstream, which answers only after
    // 3 s; had the gateway waited for that answer the status would be its 200, so a 504
    // means the gateway gave up before the answer came.
    assert_problem(&r, 504);
    assert_eq!(slow.hits(), 1, "the request reached the slow upstream");
    // The gateway closes the connection after a failed proxy attempt; the answer must say
    // so, or the client sends the next request on the closing socket ("error sending
    // request" instead of the 502 below).
    assert_eq!(r.header("connection"), Some("close"));

    let r = get(&http, &gw.url("/broken")).await;
    assert_problem(&r, 502);
    closer_task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_start_at_boot_http_and_tcp() {
    let a = Upstream::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let aa = a.address();
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          web:
            targets: [ {{ address: "{aa}" }} ]
            health: {FAST_HEALTH}
          tcp:
            targets: [ {{ address: "{aa}" }}, {{ address: "{dead}" }} ]
            health:
              active: {{ tcp: true, interval: 200ms, timeout: 200ms, healthy_after: 1, unhealthy_after: 1 }}
        routes:
          - {{ name: web, match: {{ path_prefix: /web }}, upstream: web }}
          - {{ name: tcp, match: {{ path_prefix: /tcp }}, upstream: tcp }}
        "#
    )))
    .await;
    // No request is sent: checks must run on their own.
    gw.wait_target_health("web", &aa, "healthy", Duration::from_secs(3))
        .await
        .unwrap();
    gw.wait_target_health("tcp", &aa, "healthy", Duration::from_secs(3))
        .await
        .unwrap();
    gw.wait_target_health("tcp", &dead, "unhealthy", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(a.health_hits() > 0, "HTTP health check never hit /healthz");
    assert_eq!(a.hits(), 0, "health checks must use the health path only");

    let t = gw.target("web", &aa).await.unwrap();
    assert!(
        t["last_check_unix_ms"].is_u64(),
        "last_check_unix_ms after a check: {t}"
    );
    assert!(
        t["last_check_error"].is_null(),
        "no error for a passing check: {t}"
    );
    let t = gw.target("tcp", &dead).await.unwrap();
    assert!(
        t["last_check_error"].is_string(),
        "failing check must say why: {t}"
    );

    let http = client();
    for _ in 0..10 {
        assert_eq!(get(&http, &gw.url("/tcp/x")).await.status, 200);
    }
    assert_eq!(a.hits(), 10);
}
