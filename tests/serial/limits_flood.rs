//! Key floods: memory stays bounded and a well-behaved key is never refused.
//!
//! - 1,000,000 distinct keys through the rate table the gateway uses (in process, so a
//!   million keys take seconds, not minutes): the table stays under its cap and the
//!   process RSS grows by less than the documented bound.
//! - A flood of distinct `header:` keys through the real gateway with a small
//!   `store.max_keys`: its RSS stays flat and the well-behaved client always gets 200.

use crate::common;

use common::{client, config, Gateway, Upstream};
use gatehouse::store::gcra::{Gcra, RateTable};
use gatehouse::store::DEFAULT_MAX_KEYS;
use std::time::Instant;

const S: u64 = 1_000_000_000;

// The tests measure RSS: one at a time (with cache_storage's too), so the other's
// allocations do not count.
use super::SERIAL;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Documented bound: a limit's table holds at most `max_keys` (default 1,048,576) live
/// keys, at most ~36 MB; idle keys cost nothing.
#[test]
fn a_million_distinct_keys_stay_bounded_and_the_good_key_passes() {
    let _serial = SERIAL.blocking_lock();
    for (label, count, period, cap) in [
        // 10/s: a key is idle 100 ms after its request, so only recent keys are live.
        ("10/s", 10, S, DEFAULT_MAX_KEYS),
        // 1/min: every key stays live for a minute, so only the cap bounds the table.
        ("1/min", 1, 60 * S, DEFAULT_MAX_KEYS / 2),
    ] {
        let table = RateTable::new(Gcra::new(count, period, 10), cap, false);
        let before = rss_kib(std::process::id());
        let good = b"well-behaved";
        let gh = table.hash(good);
        let interval = period / count;
        // A million keys over one second of driven time.
        let mut now = 1_000 * S;
        let mut next_good = now;
        let start = Instant::now();
        for i in 0..1_000_000u64 {
            now += 1_000;
            let k = i.to_le_bytes();
            table.check(table.hash(&k), &k, now);
            // The well-behaved client: one request per emission interval, never refused.
            if now >= next_good {
                assert!(
                    table.check(gh, good, now).allowed,
                    "good key refused at {i}"
                );
                next_good += interval;
            }
        }
        let grew_mib = rss_kib(std::process::id()).saturating_sub(before) / 1024;
        eprintln!(
            "flood {label}: 1,000,000 keys in {:?}; live entries {}, RSS +{grew_mib} MiB",
            start.elapsed(),
            table.len()
        );
        assert!(table.len() <= cap, "over the cap: {}", table.len());
        assert!(grew_mib <= 64, "RSS grew by {grew_mib} MiB");
    }
}

/// Distinct `header:` keys through the real gateway, with the driven clock moving 100 ms
/// per batch. A key stays live for 1 s (10 batches, 10,000 keys: over the 1,024 cap), so
/// the cap is what bounds memory. The well-behaved key (one request per second, its
/// exact rate) is never refused, and RSS stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_header_keys_through_the_gateway() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("app").await;
    let gw = Gateway::start_env(
        &config(&format!(
            "store: {{ max_keys: 1024 }}\n\
             upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
             routes:\n  - name: flood\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             rate_limit: {{ limit: 1/s, burst: 10, key: \"header:X-Key\" }}\n",
            up.address()
        )),
        &[common::test_clock("2030-01-01T00:00:00Z")],
    )
    .await;
    let http = client();
    let url = gw.url("/");
    let batches = 50u64;
    let per_batch = 1000u64;
    let mut rss_after_warmup = 0;
    let start = Instant::now();
    for b in 0..batches {
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                for i in (w..per_batch).step_by(16) {
                    let key = format!("flood-{b}-{i}");
                    let r = http
                        .get(&url)
                        .header("x-key", key)
                        .send()
                        .await
                        .expect("flood");
                    assert_eq!(r.status(), 200, "a new key is always admitted once");
                }
            }));
        }
        for t in tasks {
            t.await.expect("flood task");
        }
        if b % 10 == 0 {
            // One request per driven second: exactly its rate.
            let r = http.get(&url).header("x-key", "well-behaved").send().await;
            let r = r.expect("good");
            assert_eq!(
                r.status(),
                200,
                "the well-behaved key was refused in batch {b}"
            );
        }
        gw.advance_clock("100ms").await;
        if b == 20 {
            rss_after_warmup = rss_kib(gw.pid());
        }
    }
    let rss_end = rss_kib(gw.pid());
    let keys = gw
        .metrics()
        .await
        .get("gatehouse_limit_keys", &[("limit", "route:flood:rate")])
        .expect("gatehouse_limit_keys");
    assert!(keys <= 1024.0, "{keys} keys held, over max_keys 1024");
    eprintln!(
        "gateway flood: {} distinct keys in {:?}; {keys} keys held; RSS {} KiB after warm-up, \
         {} KiB at the end",
        batches * per_batch,
        start.elapsed(),
        rss_after_warmup,
        rss_end
    );
    assert!(
        rss_end <= rss_after_warmup + 16 * 1024,
        "RSS grew {rss_after_warmup} -> {rss_end} KiB"
    );
}
