//! Canary and traffic split (`routes[].split`): 10,000 requests of 1,000 consumers at
//! 90/10 land within ±2% of the weights with every consumer on one side, a reload to
//! 80/20 moves only about 10% of them (and only towards the canary), `force_header`
//! and the consumer override force a side, an anonymous caller is placed by address,
//! and the cache keys on the side.

use crate::common;

use common::origin::send;
use common::{client, config, Gateway, Upstream};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

const CONSUMERS: usize = 1_000;

fn key_of(i: usize) -> String {
    format!("key-{i:04}-split")
}

/// Consumers `c0000`.. with API keys, plus `tester`; a split route `/s` (API key
/// required) and an anonymous one `/anon`, both over `stable` and `canary`.
fn split_config(stable: &Upstream, canary: &Upstream, weights: (u32, u32), extra: &str) -> String {
    let mut consumers = String::new();
    for i in 0..CONSUMERS {
        let digest = hex::encode(Sha256::digest(key_of(i).as_bytes()));
        consumers.push_str(&format!(
            "  - {{ id: c{i:04}, api_keys: [\"sha256:{digest}\"] }}\n"
        ));
    }
    let tester = hex::encode(Sha256::digest(b"tester-key"));
    consumers.push_str(&format!(
        "  - {{ id: tester, api_keys: [\"sha256:{tester}\"] }}\n"
    ));
    let (s, c) = weights;
    config(&format!(
        "{extra}auth:\n  api_key: {{ header: X-API-Key }}\nconsumers:\n{consumers}\
         upstreams:\n  stable: {{ targets: [ {{ address: \"{}\" }} ] }}\n  canary: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: s, match: {{ path_prefix: /s }}, auth: [api_key], split: {{ key: consumer, weights: {{ stable: {s}, canary: {c} }}, force_header: X-Canary, consumers: {{ tester: canary }} }} }}\n\
         \x20 - {{ name: anon, match: {{ path_prefix: /anon }}, split: {{ weights: {{ stable: 50, canary: 50 }} }} }}\n",
        stable.address(),
        canary.address()
    ))
}

/// Sends `per` requests for each consumer (16 at a time) and returns each consumer's
/// sides, as the `X-Upstream` of its responses named them.
async fn place(gw: &Gateway, per: usize) -> HashMap<usize, Vec<String>> {
    let http = client();
    let url = gw.url("/s/item");
    let jobs = (0..CONSUMERS).flat_map(|i| std::iter::repeat_n(i, per));
    let results: Vec<(usize, String)> = futures::stream::iter(jobs)
        .map(|i| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let key = key_of(i);
                let r = send(&http, "GET", &url, &[("x-api-key", &key)]).await;
                assert_eq!(r.status, 200, "{}", r.text());
                (i, r.header("x-upstream").unwrap_or("").to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut sides: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, side) in results {
        sides.entry(i).or_default().push(side);
    }
    sides
}

/// Each consumer's one side (asserting it never changed).
fn sides_of(placed: &HashMap<usize, Vec<String>>) -> HashMap<usize, String> {
    placed
        .iter()
        .map(|(i, sides)| {
            assert!(
                sides.iter().all(|s| s == &sides[0]),
                "consumer {i} saw both sides: {sides:?}"
            );
            (*i, sides[0].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_split_by_weight_stay_on_their_side_and_a_reload_moves_only_the_difference() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = split_config(&stable, &canary, (90, 10), "");
    let gw = Gateway::start(&yaml).await;

    let placed = place(&gw, 10).await;
    assert_eq!(placed.values().map(Vec::len).sum::<usize>(), 10 * CONSUMERS);
    let before = sides_of(&placed);
    let share = canary.hits() as f64 / (10 * CONSUMERS) as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "canary share {share} at 90/10"
    );
    assert_eq!(stable.hits() + canary.hits(), 10 * CONSUMERS);
    let m = gw.metrics().await;
    let counted = |up: &str| {
        m.get(
            "gatehouse_split_requests_total",
            &[("route", "s"), ("upstream", up)],
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(
        (counted("stable"), counted("canary")),
        (stable.hits(), canary.hits())
    );

    // 90/10 → 80/20: only the consumers the change needs move, all towards the canary.
    let reweighted = yaml.replace("stable: 90, canary: 10", "stable: 80, canary: 20");
    assert_ne!(reweighted, yaml);
    std::fs::write(&gw.config_path, reweighted).expect("rewrite config");
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    assert_eq!(r.status(), 200);
    let after = sides_of(&place(&gw, 2).await);
    let moved: Vec<usize> = (0..CONSUMERS).filter(|i| before[i] != after[i]).collect();
    let moved_share = moved.len() as f64 / CONSUMERS as f64;
    assert!(
        (0.07..=0.13).contains(&moved_share),
        "{moved_share} of consumers moved"
    );
    assert!(
        moved
            .iter()
            .all(|i| before[i] == "stable" && after[i] == "canary"),
        "a consumer left the canary"
    );
    let canary_now = after.values().filter(|s| *s == "canary").count() as f64 / CONSUMERS as f64;
    eprintln!("split: canary share {share} at 90/10, {moved_share} moved, {canary_now} at 80/20");
    assert!((0.17..=0.23).contains(&canary_now), "{canary_now} at 80/20");
}

#[tokio::test(flavor = "multi_thread")]
async fn force_header_and_consumer_overrides_choose_the_side() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let gw = Gateway::start(&split_config(&stable, &canary, (100, 0), "")).await;
    let http = client();
    let url = gw.url("/s/x");
    let side = |r: &common::Resp| r.header("x-upstream").unwrap_or("").to_string();
    // Weight 0: nobody reaches the canary unless forced.
    for i in 0..20 {
        let r = send(&http, "GET", &url, &[("x-api-key", &key_of(i))]).await;
        assert_eq!(side(&r), "stable");
        let r = send(
            &http,
            "GET",
            &url,
            &[("x-api-key", &key_of(i)), ("x-canary", "canary")],
        )
        .await;
        assert_eq!(side(&r), "canary", "forced by the header");
        // A value naming no upstream of the split is ignored.
        let r = send(
            &http,
            "GET",
            &url,
            &[("x-api-key", &key_of(i)), ("x-canary", "other")],
        )
        .await;
        assert_eq!(side(&r), "stable");
    }
    let r = send(&http, "GET", &url, &[("x-api-key", "tester-key")]).await;
    assert_eq!(side(&r), "canary", "the consumer override");
    let r = send(
        &http,
        "GET",
        &url,
        &[("x-api-key", "tester-key"), ("x-canary", "stable")],
    )
    .await;
    assert_eq!(side(&r), "stable", "the header beats the consumer override");
    // The route refuses before placing: a refused request is no split request.
    let r = send(&http, "GET", &url, &[]).await;
    assert_eq!(r.status, 401);
    let m = gw.metrics().await;
    let total: f64 = m.sum("gatehouse_split_requests_total", &[("route", "s")]);
    assert_eq!(total, 62.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_caller_is_placed_by_its_address_and_the_cache_keys_on_the_side() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let yaml = split_config(&stable, &canary, (50, 50), "cache: { memory: 4MiB }\n").replace(
        "split: { weights: { stable: 50, canary: 50 } } }",
        "split: { weights: { stable: 50, canary: 50 }, force_header: X-Side }, cache: { ttl: 30s } }",
    );
    let gw = Gateway::start(&yaml).await;
    let http = client();
    let url = gw.url("/anon/x");
    let mut seen = Vec::new();
    for i in 0..10 {
        let r = send(&http, "GET", &gw.url(&format!("/anon/each?n={i}")), &[]).await;
        seen.push(r.header("x-upstream").unwrap_or("").to_string());
    }
    assert!(
        seen.iter().all(|s| s == &seen[0]),
        "one address, one side: {seen:?}"
    );
    // One URL, both sides forced in turn: each side's response is its own entry.
    for round in 0..3 {
        for side in ["stable", "canary"] {
            let r = send(&http, "GET", &url, &[("x-side", side)]).await;
            assert_eq!(r.header("x-upstream"), Some(side), "round {round}");
            if round > 0 {
                assert!(
                    r.header("cache-status").unwrap_or("").contains("hit"),
                    "{:?}",
                    r.headers
                );
            }
        }
    }
    let hits = |u: &Upstream| u.requests().iter().filter(|r| r.path == "/anon/x").count();
    assert_eq!((hits(&stable), hits(&canary)), (1, 1));
}

#[test]
fn check_refuses_a_route_with_two_destinations_naming_the_path() {
    let yaml = config(
        "upstreams:\n  a: { targets: [ { address: \"127.0.0.1:9\" } ] }\n  b: { targets: [ { address: \"127.0.0.1:9\" } ] }\n\
         routes:\n  - { name: r, upstream: a, split: { weights: { a: 1, b: 1 } } }\n  - { name: q, split: { key: user, weights: { a: 1, nope: 1 } } }\n",
    );
    let (code, out) = common::gateway::check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("routes[0].split.weights: a route names one destination"),
        "{out}"
    );
    assert!(out.contains("routes[1].split.key"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_clients_are_placed_by_their_forwarded_address() {
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let gw = Gateway::start(&common::config_with_server(
        "trusted_proxies: [127.0.0.1]",
        &format!(
            "upstreams:\n  stable: {{ targets: [ {{ address: \"{}\" }} ] }}\n  canary: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
             routes:\n  - {{ name: ip, match: {{ path_prefix: / }}, split: {{ key: ip, weights: {{ stable: 1, canary: 1 }} }} }}\n",
            stable.address(),
            canary.address()
        ),
    ))
    .await;
    let http = client();
    let mut sides = HashMap::new();
    for round in 0..2 {
        for i in 0..100 {
            let xff = format!("198.51.100.{i}");
            let r = send(&http, "GET", &gw.url("/x"), &[("x-forwarded-for", &xff)]).await;
            let side = r.header("x-upstream").unwrap_or("").to_string();
            if round == 0 {
                sides.insert(i, side);
            } else {
                assert_eq!(sides[&i], side, "{xff} moved");
            }
        }
    }
    let on_canary = sides.values().filter(|s| *s == "canary").count();
    assert!(
        (25..=75).contains(&on_canary),
        "{on_canary} of 100 on the canary"
    );
}
