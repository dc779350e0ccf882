//! The `redis` store against a real `redis-server` started by the test: two gateway
//! instances sharing one limit (batched every sync_interval, and exact per request),
//! and Redis outages under fail_open and fail_closed, with recovery.

use crate::common;

use common::redis_server::RedisServer;
use common::{assert_problem, client, config, Gateway, Resp, Upstream};
use std::time::{Duration, Instant};

fn redis_config(redis: &RedisServer, up: &Upstream, store: &str, route: &str) -> String {
    config(&format!(
        "store: {{ backend: redis, redis_url: \"{}\", {store} }}\n\
         upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - name: shared\n    match: {{ path_prefix: / }}\n    upstream: app\n    {route}\n",
        redis.url(),
        up.address()
    ))
}

/// Drives `rate` req/s at each gateway for `secs` (paced, one client loop per gateway);
/// returns (admitted, elapsed between the first and last request).
async fn drive(gws: &[&Gateway], rate: u32, secs: f64) -> (u64, f64, Vec<Duration>) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for gw in gws {
        let url = gw.url("/");
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut admitted = 0u64;
            let mut latencies = Vec::new();
            let n = (f64::from(rate) * secs) as u32;
            for i in 0..n {
                let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
                let t = Instant::now();
                let r = http.get(&url).send().await.expect("request");
                latencies.push(t.elapsed());
                match r.status().as_u16() {
                    200 => admitted += 1,
                    429 => {}
                    s => panic!("status {s}"),
                }
                let _ = r.bytes().await;
            }
            (admitted, latencies)
        }));
    }
    let mut admitted = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (a, l) = t.await.expect("driver");
        admitted += a;
        lat.extend(l);
    }
    lat.sort();
    (admitted, start.elapsed().as_secs_f64(), lat)
}

fn p(lat: &[Duration], q: f64) -> Duration {
    lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]
}

/// Two instances, one shared limit at 3x, counts merged every 100 ms. Documented
/// bound: admitted <= limit x T + burst + (instances - 1) x (burst + limit x sync_interval).
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_a_limit_within_the_bound() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let route = "rate_limit: { limit: 100/s, burst: 10, key: route }";
    let yaml_a = redis_config(&redis, &up, "sync_interval: 100ms", route);
    let yaml_b = redis_config(&redis, &up, "sync_interval: 100ms", route);
    let a = Gateway::start(&yaml_a).await;
    let b = Gateway::start(&yaml_b).await;
    let (admitted, elapsed, lat) = drive(&[&a, &b], 150, 5.0).await;
    let ideal = 100.0 * elapsed + 10.0;
    let bound = ideal + (10.0 + 100.0 * 0.1);
    eprintln!(
        "redis batched (2 instances, 100 ms sync): admitted {admitted} in {elapsed:.2} s at 3x; \
         ideal {ideal:.0}, bound {bound:.0} ({:+.1}%); latency p50 {:?} p99 {:?}",
        (admitted as f64 / ideal - 1.0) * 100.0,
        p(&lat, 0.5),
        p(&lat, 0.99)
    );
    assert!((admitted as f64) <= bound, "{admitted} > bound {bound:.0}");
    assert!(
        admitted as f64 >= ideal * 0.95,
        "{admitted} far under {ideal:.0}"
    );
    assert!(admitted as f64 <= ideal * 1.05, "target: within +5%");
    assert_eq!(up.hits() as u64, admitted);
}

/// `sync_interval: 0` on the route: one Redis round trip per request, exact across
/// instances.
#[tokio::test(flavor = "multi_thread")]
async fn sync_interval_zero_is_exact_across_instances() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let route = "rate_limit: { limit: 100/s, burst: 10, key: route, sync_interval: 0s }";
    let a = Gateway::start(&redis_config(&redis, &up, "sync_interval: 100ms", route)).await;
    let b = Gateway::start(&redis_config(&redis, &up, "sync_interval: 100ms", route)).await;
    let (admitted, elapsed, lat) = drive(&[&a, &b], 150, 3.0).await;
    let ideal = 100.0 * elapsed + 10.0;
    eprintln!(
        "redis exact (2 instances, sync_interval 0): admitted {admitted} in {elapsed:.2} s; \
         ideal {ideal:.0} ({:+.1}%); latency p50 {:?} p99 {:?}",
        (admitted as f64 / ideal - 1.0) * 100.0,
        p(&lat, 0.5),
        p(&lat, 0.99)
    );
    // Exact up to when the first and the last request were timed: ±1% and 2 requests.
    assert!(
        (admitted as f64 - ideal).abs() <= ideal * 0.01 + 2.0,
        "{admitted} vs {ideal:.0}"
    );
}

async fn timed_get(http: &reqwest::Client, url: &str) -> (Resp, Duration) {
    let t = Instant::now();
    let r = http.get(url).send().await.expect("request");
    let r = Resp::from_reqwest(r).await;
    (r, t.elapsed())
}

/// Failed Redis calls made on the request path (rates and quotas asked per request,
/// refunds, a quota key's first load); the sync thread's calls are `sync` and `connect`.
fn request_path_store_errors(m: &common::metrics::Metrics) -> f64 {
    ["check", "load"]
        .iter()
        .map(|op| {
            m.sum(
                "gatehouse_limit_store_errors_total",
                &[("backend", "redis"), ("op", op)],
            )
        })
        .sum()
}

/// Requests per route per round of the outage. Both routes allow a burst of 1000, and
/// the outage sends 2 rounds: 600 requests stay inside the burst however fast they come.
/// (fail_open still counts locally: an unpaced loop that sent more than the limit
/// allows, 1000/s plus the burst, would be refused by its own limit, correctly; a
/// loop bounded by time rather than by count did that on a fast run.)
const OUTAGE_ROUND: usize = 300;

/// fail_open: Redis is killed mid-test; requests keep flowing across failed probes, no
/// request waits on the dead store after the first failure, the failure is counted; when
/// Redis is back, shared counting resumes by itself.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fail_open_keeps_serving_and_recovers() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    // A batched rate, an exact rate (route 2) and a shared quota: all three paths.
    let yaml = config(&format!(
        "store: {{ backend: redis, redis_url: \"{}\", sync_interval: 100ms, on_error: fail_open }}\n\
         upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - name: batched\n    match: {{ path_prefix: /b }}\n    upstream: app\n    \
         rate_limit: {{ limit: 1000/s, key: route }}\n    quota: {{ limit: 100000/day, key: route }}\n  \
         - name: exact\n    match: {{ path_prefix: /e }}\n    upstream: app\n    \
         rate_limit: {{ limit: 1000/s, key: route, sync_interval: 0s }}\n",
        redis.url(),
        up.address()
    ));
    let gw = Gateway::start(&yaml).await;
    let http = client();
    for path in ["/b", "/e"] {
        assert_eq!(timed_get(&http, &gw.url(path)).await.0.status, 200);
    }
    let before = gw.metrics().await;
    let waited_before = request_path_store_errors(&before);
    let connect = [("backend", "redis"), ("op", "connect")];
    let probes_before = before.sum("gatehouse_limit_store_errors_total", &connect);
    redis.kill();
    let mut served = 0;
    for round in 0..2 {
        if round == 1 {
            // The second round comes after two more failed probes: serving goes on
            // while the sync thread keeps finding the store away.
            let probed = common::eventually(Duration::from_secs(5), || async {
                gw.metrics()
                    .await
                    .sum("gatehouse_limit_store_errors_total", &connect)
                    >= probes_before + 2.0
            })
            .await;
            assert!(
                probed.is_some(),
                "the sync thread did not probe Redis again"
            );
        }
        for _ in 0..OUTAGE_ROUND {
            for path in ["/b", "/e"] {
                let (r, _) = timed_get(&http, &gw.url(path)).await;
                assert_eq!(
                    r.status,
                    200,
                    "fail_open keeps serving {path}: {}",
                    r.text()
                );
                served += 1;
            }
        }
    }
    let m = gw.metrics().await;
    // "No request waited on the dead store" as a count, not a wall-clock bound (which a
    // busy machine breaks): a request calls Redis only while the store is marked up, each
    // call is cut at the Redis deadline (`store::redis::OP_TIMEOUT`), and the first
    // failure marks the store down until a probe succeeds, which cannot happen while
    // Redis is dead. So at most two request-path calls fail: the first after the kill,
    // and one more when a probe that got its PONG just before the kill marks the store up
    // again after that failure. Every other request was decided locally.
    let waited = request_path_store_errors(&m) - waited_before;
    eprintln!("fail_open outage: {served} requests served, {waited} waited on Redis");
    assert!(
        waited <= 2.0,
        "{waited} of {served} requests waited on the dead store"
    );
    assert!(
        m.sum(
            "gatehouse_limit_store_errors_total",
            &[("backend", "redis")]
        ) >= 1.0
    );
    assert_eq!(
        m.get("gatehouse_limit_store_up", &[("backend", "redis")]),
        Some(0.0)
    );

    redis.restart().await;
    let back = common::eventually(Duration::from_secs(5), || async {
        gw.metrics()
            .await
            .get("gatehouse_limit_store_up", &[("backend", "redis")])
            == Some(1.0)
    })
    .await;
    assert!(back.is_some(), "the store did not come back");
    // Shared counting resumed: this instance's quota admissions reach Redis.
    for _ in 0..7 {
        assert_eq!(timed_get(&http, &gw.url("/b")).await.0.status, 200);
    }
    let counted = common::eventually(Duration::from_secs(3), || async {
        redis.sum_keys("gatehouse:route:batched:quota:*") >= 7
    })
    .await;
    assert!(
        counted.is_some(),
        "quota counts did not reach the restarted Redis"
    );
    assert_eq!(timed_get(&http, &gw.url("/e")).await.0.status, 200);
    let exact_keys = redis.sum_keys("gatehouse:route:exact:rate:*");
    assert!(exact_keys > 0, "the exact rate is in Redis again");
}

/// fail_closed: with Redis gone the answer is a 503 problem, decided without waiting on
/// the dead store; it serves again
/// once Redis is back.
#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fail_closed_answers_503_then_recovers() {
    let mut redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let yaml = redis_config(
        &redis,
        &up,
        "sync_interval: 100ms, on_error: fail_closed",
        "rate_limit: { limit: 1000/s, key: route }",
    );
    let gw = Gateway::start(&yaml).await;
    let http = client();
    let ok = common::eventually(Duration::from_secs(5), || async {
        timed_get(&http, &gw.url("/")).await.0.status == 200
    })
    .await;
    assert!(ok.is_some(), "never served while Redis was up");
    redis.kill();
    let refused = common::eventually(Duration::from_secs(5), || async {
        timed_get(&http, &gw.url("/")).await.0.status == 503
    })
    .await;
    assert!(refused.is_some(), "fail_closed never refused");
    // "Quickly" as a count, as in the fail_open test: once the store is marked down, a
    // refusal is decided locally and no request calls the dead Redis (at most one more,
    // if a probe that got its PONG just before the kill marked the store up again).
    let waited_before = request_path_store_errors(&gw.metrics().await);
    for _ in 0..50 {
        let (r, _) = timed_get(&http, &gw.url("/")).await;
        assert_problem(&r, 503);
        assert_eq!(
            r.json()["type"],
            "https://gatehouse.dev/problems/limit-store-unavailable"
        );
        assert!(r.header("retry-after").is_some());
    }
    let waited = request_path_store_errors(&gw.metrics().await) - waited_before;
    assert!(
        waited <= 1.0,
        "{waited} of 50 refusals waited on the dead store"
    );
    let hits = up.hits();
    redis.restart().await;
    let back = common::eventually(Duration::from_secs(5), || async {
        timed_get(&http, &gw.url("/")).await.0.status == 200
    })
    .await;
    assert!(back.is_some(), "did not recover when Redis came back");
    assert!(up.hits() > hits);
}

/// A quota shared by two instances through Redis: merged every 50 ms, within the same
/// bound as two processes on one data_dir (`limit` + what the other admitted within
/// 2 x sync_interval); with `store.sync_interval: 0`, exact.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_a_quota() {
    let redis = RedisServer::start().await;
    let up = Upstream::start("app").await;
    let route = "quota: { limit: 100/day, key: route }";
    for (store, exact) in [("sync_interval: 50ms", false), ("sync_interval: 0s", true)] {
        let a = Gateway::start(&redis_config(&redis, &up, store, route)).await;
        let b = Gateway::start(&redis_config(&redis, &up, store, route)).await;
        // Both instances share the Redis entry of today's window: start from a clean one.
        let mut c = redis.connection().expect("redis");
        let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("flush");
        let http = client();
        let start = Instant::now();
        let mut admitted: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for i in 0..300 {
            let (gw, side) = if i % 2 == 0 { (&a, 0) } else { (&b, 1) };
            let (r, _) = timed_get(&http, &gw.url("/")).await;
            match r.status {
                200 => admitted[side].push(start.elapsed()),
                429 => assert_eq!(r.json()["limit"], "quota"),
                s => panic!("status {s}: {}", r.text()),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let total = admitted[0].len() + admitted[1].len();
        let window = Duration::from_millis(2 * 50 + 20);
        let most = |v: &[Duration]| {
            (0..v.len())
                .map(|i| v[i..].iter().take_while(|t| **t - v[i] <= window).count())
                .max()
                .unwrap_or(0)
        };
        let slack = if exact {
            0
        } else {
            most(&admitted[0]).max(most(&admitted[1]))
        };
        eprintln!(
            "redis quota ({store}): admitted {total} of 300 for 100/day; bound 100 + {slack}"
        );
        assert!(total >= 100, "undercount {total}");
        assert!(total <= 100 + slack, "{total} > 100 + {slack}");
    }
}
