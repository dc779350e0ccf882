//! Rate limits and quotas on one instance, through the real gateway: accuracy against a
//! driven clock, Retry-After, the RateLimit fields read back against the state, keys
//! (route, header, ip with trusted proxies), the metric, and config errors.

use crate::common;

use common::gateway::check;
use common::ratelimit::Fields;
use common::{assert_problem, client, config, Gateway, Resp, Upstream};

const CLOCK: (&str, &str) = common::test_clock("2030-01-01T00:00:00Z");

async fn get_h(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Resp::from_reqwest(
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}")),
    )
    .await
}

fn upstream_cfg(up: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n",
        up.address()
    )
}

/// 10 s of driven time at 3x the limit: GCRA admits `limit x 10 s + burst`, every 429
/// carries a Retry-After after which the request is admitted, and no refused request
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn rate_is_exact_over_10s_at_3x_the_limit() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_env(
        &config(&format!(
            "{}routes:\n  - name: limited\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             rate_limit: {{ limit: 100/s, burst: 20, key: route }}\n",
            upstream_cfg(&up)
        )),
        &[CLOCK],
    )
    .await;
    let http = client();
    let (mut admitted, mut refused) = (0u64, 0u64);
    // Time of each refusal (ms) and the Retry-After it carried, checked below against
    // the next admission.
    let mut open_refusal: Option<(u64, u64)> = None;
    for step in 0..1000u64 {
        let now_ms = step * 10;
        for _ in 0..3 {
            let r = get_h(&http, &gw.url("/x"), &[]).await;
            let f = Fields::of(&r);
            match r.status {
                200 => {
                    admitted += 1;
                    if let Some((at, retry)) = open_refusal.take() {
                        assert!(
                            now_ms - at <= retry * 1000,
                            "admitted {} ms after a 429 that said Retry-After {retry}",
                            now_ms - at
                        );
                    }
                }
                429 => {
                    refused += 1;
                    assert_problem(&r, 429);
                    let retry = f.retry_after.expect("429 without Retry-After");
                    assert_eq!(retry, 1, "the next token is 10 ms away: rounds up to 1 s");
                    assert_eq!(f.remaining("route.limited.rate"), 0);
                    assert_eq!(f.limit("route.limited.rate").get("t") as u64, retry);
                    open_refusal.get_or_insert((now_ms, retry));
                }
                s => panic!("unexpected status {s}: {}", r.text()),
            }
        }
        gw.advance_clock("10ms").await;
    }
    let expected = 100 * 10 + 20;
    let err = (admitted as f64 - expected as f64).abs() / expected as f64;
    eprintln!(
        "rate accuracy: admitted {admitted} of 3000, expected {expected} (error {:.3}%)",
        err * 100.0
    );
    assert!(err <= 0.01, "admitted {admitted}, expected {expected} ±1%");
    assert_eq!(
        up.hits() as u64,
        admitted,
        "a refused request never reaches the upstream"
    );
    let m = gw.metrics().await;
    let counted = m.get(
        "gatehouse_ratelimit_rejections_total",
        &[("route", "limited"), ("limit", "rate")],
    );
    assert_eq!(counted, Some(refused as f64), "every 429 is counted");
}

/// A slow rate makes Retry-After exact to the second: one second early is still
/// refused, on time is admitted.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_the_time_until_admission() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_env(
        &config(&format!(
            "{}routes:\n  - name: slow\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             rate_limit: {{ limit: 1/min, burst: 2, key: route }}\n",
            upstream_cfg(&up)
        )),
        &[CLOCK],
    )
    .await;
    let http = client();
    let url = gw.url("/");
    let a = get_h(&http, &url, &[]).await;
    assert_eq!(a.status, 200);
    let f = Fields::of(&a);
    assert_eq!((f.remaining("route.slow.rate"), f.x_reset), (1, 60));
    assert_eq!(get_h(&http, &url, &[]).await.status, 200);
    let r = get_h(&http, &url, &[]).await;
    assert_problem(&r, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    let body = r.json();
    assert_eq!(body["limit"], "rate");
    assert_eq!(body["violated-policies"][0], "route.slow.rate");
    assert!(
        body["detail"].as_str().unwrap().contains("1/min, burst 2"),
        "{body}"
    );
    gw.advance_clock("59s").await;
    let r = get_h(&http, &url, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    gw.advance_clock("1s").await;
    assert_eq!(get_h(&http, &url, &[]).await.status, 200);
    assert_eq!(up.hits(), 3);
}

/// The five fields against the state: a rate and a quota on one route, the most
/// restrictive in X-RateLimit-*, and a refusal by the quota giving the rate its token
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn headers_report_the_actual_state() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_env(
        &config(&format!(
            "{}routes:\n  - name: both\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             rate_limit: {{ limit: 10/s, burst: 5, key: ip }}\n    quota: {{ limit: 3/day, key: ip }}\n",
            upstream_cfg(&up)
        )),
        &[common::test_clock("2030-06-15T23:00:00Z")],
    )
    .await;
    let http = client();
    let url = gw.url("/");
    for i in 1..=3i64 {
        let r = get_h(&http, &url, &[]).await;
        assert_eq!(r.status, 200);
        let f = Fields::of(&r);
        let rate = f.policy("route.both.rate");
        assert_eq!(
            (rate.get("q"), rate.get("w"), rate.get("gatehouse-burst")),
            (10, 1, 5)
        );
        let quota = f.policy("route.both.quota");
        assert_eq!((quota.get("q"), quota.get("w")), (3, 86_400));
        assert_eq!(f.remaining("route.both.rate"), 5 - i);
        assert_eq!(
            f.limit("route.both.rate").get("t"),
            1,
            "next token in 100 ms"
        );
        assert_eq!(f.remaining("route.both.quota"), 3 - i);
        assert_eq!(
            f.limit("route.both.quota").get("t"),
            3600,
            "an hour to midnight UTC"
        );
        // The quota is the most restrictive from the start (r 2 < 4).
        assert_eq!(
            (f.x_limit, f.x_remaining, f.x_reset),
            (3, (3 - i) as u64, 3600)
        );
        assert!(f.retry_after.is_none());
    }
    let r = get_h(&http, &url, &[]).await;
    assert_problem(&r, 429);
    assert_eq!(r.json()["limit"], "quota");
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/quota-exceeded"
    );
    let f = Fields::of(&r);
    assert_eq!(f.retry_after, Some(3600));
    assert_eq!(f.remaining("route.both.quota"), 0);
    assert_eq!(
        f.remaining("route.both.rate"),
        2,
        "the refused request used no token"
    );
    gw.advance_clock("1s").await;
    let f = Fields::of(&get_h(&http, &url, &[]).await);
    assert_eq!(
        f.remaining("route.both.rate"),
        5,
        "refilled, and the 429 did not count"
    );
    assert_eq!(up.hits(), 3);
    let m = gw.metrics().await;
    let q = [("route", "both"), ("limit", "quota")];
    assert_eq!(m.get("gatehouse_ratelimit_rejections_total", &q), Some(2.0));
}

/// `header:NAME`: each value is its own bucket, and a missing or empty header is one
/// more bucket (limited like any other, never "not limited").
#[tokio::test(flavor = "multi_thread")]
async fn header_keys_and_the_empty_key() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_env(
        &config(&format!(
            "{}routes:\n  - name: per-user\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             rate_limit: {{ limit: 1/min, burst: 2, key: \"header:X-User\" }}\n",
            upstream_cfg(&up)
        )),
        &[CLOCK],
    )
    .await;
    let http = client();
    let url = gw.url("/");
    let status = |r: Resp| r.status;
    for who in ["alice", "bob"] {
        for _ in 0..2 {
            assert_eq!(status(get_h(&http, &url, &[("x-user", who)]).await), 200);
        }
        assert_eq!(
            status(get_h(&http, &url, &[("x-user", who)]).await),
            429,
            "{who}"
        );
    }
    // Missing and empty share one bucket.
    assert_eq!(status(get_h(&http, &url, &[]).await), 200);
    assert_eq!(status(get_h(&http, &url, &[("x-user", "")]).await), 200);
    assert_eq!(status(get_h(&http, &url, &[]).await), 429);
    assert_eq!(status(get_h(&http, &url, &[("x-user", "")]).await), 429);
    assert_eq!(
        status(get_h(&http, &url, &[("x-user", "carol")]).await),
        200
    );
}

/// `key: ip` believes X-Forwarded-For only from `server.trusted_proxies`.
#[tokio::test(flavor = "multi_thread")]
async fn ip_keys_believe_forwarded_for_only_from_trusted_proxies() {
    let up = Upstream::start("app").await;
    let route = "routes:\n  - name: per-ip\n    match: { path_prefix: / }\n    upstream: app\n    \
                 rate_limit: { limit: 1/min, burst: 1, key: ip }\n";
    let http = client();
    // Not trusted: the socket address (127.0.0.1) is the key, whatever the header says.
    let gw = Gateway::start_env(&config(&format!("{}{route}", upstream_cfg(&up))), &[CLOCK]).await;
    let url = gw.url("/");
    assert_eq!(
        get_h(&http, &url, &[("x-forwarded-for", "203.0.113.1")])
            .await
            .status,
        200
    );
    assert_eq!(
        get_h(&http, &url, &[("x-forwarded-for", "203.0.113.2")])
            .await
            .status,
        429
    );
    drop(gw);
    // Trusted: the rightmost untrusted hop is the client; a spoofed left part is ignored.
    let yaml = common::config_with_server(
        "trusted_proxies: [127.0.0.1/32]",
        &format!("{}{route}", upstream_cfg(&up)),
    );
    let gw = Gateway::start_env(&yaml, &[CLOCK]).await;
    let url = gw.url("/");
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(get_h(&http, &url, &xff("203.0.113.1")).await.status, 200);
    assert_eq!(get_h(&http, &url, &xff("203.0.113.2")).await.status, 200);
    assert_eq!(
        get_h(&http, &url, &xff("6.6.6.6, 203.0.113.1"))
            .await
            .status,
        429
    );
    assert_eq!(
        get_h(&http, &url, &xff("203.0.113.3, 127.0.0.1"))
            .await
            .status,
        200
    );
    assert_eq!(
        get_h(&http, &url, &[]).await.status,
        200,
        "no header: the proxy itself"
    );
}

/// Limits are refused at load with their YAML path when they are wrong.
#[tokio::test(flavor = "multi_thread")]
async fn limit_config_errors_name_their_path() {
    let up = Upstream::start("app").await;
    // Parse errors: each with its path.
    let yaml = config(&format!(
        "{}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
         rate_limit: {{ limit: 5/s, rate: 1 }}\n    quota: {{ limit: 5/week, key: ip }}\n",
        upstream_cfg(&up)
    ));
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "routes[0].rate_limit.rate: unknown field",
        "routes[0].quota.limit: invalid rate \"5/week\"",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Semantic errors: all of them at once.
    let yaml = config(&format!(
        "{}store: {{ backend: redis, sync_interval: 5ms }}\n\
         tiers:\n  free: {{ burst: 0 }}\n  fast: {{ rate: 2000000/s }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
         rate_limit: {{ limit: 5/s, burst: 0, key: \"cookie:x\" }}\n",
        upstream_cfg(&up)
    ));
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "store.redis_url: required with backend: redis",
        "store.sync_interval: must be 0",
        "tiers.free.burst: burst needs a rate",
        "tiers.fast.rate: 2000000/s is too fast",
        "routes[0].rate_limit.burst: must be at least 1",
        "routes[0].rate_limit.key: must be consumer | ip | route | header:NAME",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let ok = config(&format!(
        "{}store: {{ backend: local, sync_interval: 50ms }}\n\
         tiers:\n  free: {{ rate: 10/s, burst: 20, quota: 1000/day }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
         rate_limit: {{ limit: 50/s, burst: 100, key: ip }}\n    quota: {{ limit: 10000/month, key: route }}\n",
        upstream_cfg(&up)
    ));
    let (code, out) = check(&ok, &[]);
    assert_eq!(code, Some(0), "{out}");
}

/// A reload keeps the counts of limits whose parameters did not change, and starts
/// afresh the ones that changed.
#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_counts_of_unchanged_limits() {
    let up = Upstream::start("app").await;
    let route = |rate: &str| {
        format!(
            "routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: app\n    \
             rate_limit: {{ limit: 1/min, burst: 1, key: route }}\n  \
             - name: b\n    match: {{ path_prefix: /b }}\n    upstream: app\n    \
             rate_limit: {{ limit: {rate}, burst: 1, key: route }}\n"
        )
    };
    let yaml = config(&format!("{}{}", upstream_cfg(&up), route("1/min")));
    let gw = Gateway::start_env(&yaml, &[CLOCK]).await;
    let http = client();
    for p in ["/a", "/b"] {
        assert_eq!(get_h(&http, &gw.url(p), &[]).await.status, 200);
        assert_eq!(get_h(&http, &gw.url(p), &[]).await.status, 429);
    }
    // Same file but route b's rate changes.
    let new = yaml.replace(&route("1/min"), &route("2/min"));
    std::fs::write(&gw.config_path, new).expect("rewrite config");
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    assert_eq!(r.status(), 200, "reload");
    assert_eq!(
        get_h(&http, &gw.url("/a"), &[]).await.status,
        429,
        "a kept its count"
    );
    let b = get_h(&http, &gw.url("/b"), &[]).await;
    assert_eq!(b.status, 200, "b is a new limit");
    assert_eq!(Fields::of(&b).policy("route.b.rate").get("q"), 2);
}

/// Per-consumer tiers through the real gateway (API keys from the auth stage): on the
/// same route a free consumer is limited and a pro one is not; each consumer has its own
/// bucket; the refusal names the tier limit and is counted under `limit="tier"`.
#[tokio::test(flavor = "multi_thread")]
async fn tiers_limit_free_consumers_and_not_pro_ones() {
    use sha2::Digest;
    let up = Upstream::start("app").await;
    let hash = |k: &str| format!("sha256:{}", hex::encode(sha2::Sha256::digest(k.as_bytes())));
    let gw = Gateway::start_env(
        &config(&format!(
            "{}auth: {{ api_key: {{ header: X-API-Key }} }}\n\
             tiers:\n  free: {{ rate: 1/min, burst: 2, quota: 100/day }}\n  pro: {{ rate: 1000/s, burst: 1000 }}\n\
             consumers:\n  - {{ id: free-1, tier: free, api_keys: [\"{}\"] }}\n  \
             - {{ id: free-2, tier: free, api_keys: [\"{}\"] }}\n  \
             - {{ id: pro-1, tier: pro, api_keys: [\"{}\"] }}\n\
             routes:\n  - name: api\n    match: {{ path_prefix: / }}\n    upstream: app\n    auth: [api_key]\n",
            upstream_cfg(&up),
            hash("free-key-1"),
            hash("free-key-2"),
            hash("pro-key-1"),
        )),
        &[CLOCK],
    )
    .await;
    let http = client();
    let url = gw.url("/");
    let key = |k: &'static str| [("x-api-key", k)];
    for i in 1..=2 {
        let r = get_h(&http, &url, &key("free-key-1")).await;
        assert_eq!(r.status, 200, "free request {i}: {}", r.text());
        let f = Fields::of(&r);
        assert_eq!(f.remaining("tier.free.rate"), 2 - i);
        assert_eq!(f.remaining("tier.free.quota"), 100 - i);
    }
    let r = get_h(&http, &url, &key("free-key-1")).await;
    assert_problem(&r, 429);
    assert_eq!(r.json()["limit"], "tier");
    assert_eq!(r.json()["violated-policies"][0], "tier.free.rate");
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(
        get_h(&http, &url, &key("free-key-2")).await.status,
        200,
        "another free consumer has its own bucket"
    );
    for _ in 0..50 {
        let r = get_h(&http, &url, &key("pro-key-1")).await;
        assert_eq!(r.status, 200, "pro is not limited here");
        assert!(Fields::of(&r).policy("tier.pro.rate").get("q") == 1000);
    }
    // Unauthenticated requests are refused by auth before any limit counts them.
    assert_eq!(get_h(&http, &url, &[]).await.status, 401);
    assert_eq!(up.hits(), 2 + 1 + 50);
    let m = gw.metrics().await;
    let tier = [("route", "api"), ("limit", "tier")];
    assert_eq!(
        m.get("gatehouse_ratelimit_rejections_total", &tier),
        Some(1.0)
    );
}
