//! Operations: bind failure, graceful shutdown on SIGTERM, the admin
//! listener, metrics names and labels, and the access log.

use crate::common;

use std::time::Duration;

use common::{client, config, free_port, get, Gateway, Resp, Upstream, FAST_HEALTH, TOKEN};

fn simple(up: &Upstream) -> String {
    config(&format!(
        r#"
        upstreams:
          u:
            targets: [ {{ address: "{}" }} ]
            health: {FAST_HEALTH}
        routes:
          - {{ name: r1, match: {{ path_prefix: /r1 }}, upstream: u }}
        "#,
        up.address()
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_failure_exits_nonzero_naming_the_address() {
    let up = Upstream::start("u").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for which in ["listener", "admin"] {
        let mut yaml = simple(&up);
        let line = yaml
            .lines()
            .find(|l| {
                l.contains(if which == "admin" {
                    "admin:"
                } else {
                    "name: public"
                })
            })
            .unwrap()
            .to_owned();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        yaml = yaml.replace(
            &line,
            &line.replace(&format!("127.0.0.1:{port}"), &taken_addr),
        );
        let mut gw = Gateway::spawn(&yaml);
        let st = gw.wait_exit(Duration::from_secs(10)).await;
        assert!(
            st.is_some(),
            "{which} address in use: gatehouse kept running\n{}",
            gw.logs_tail()
        );
        assert!(
            !st.unwrap().success(),
            "{which} address in use: exit status {:?}",
            st
        );
        let out = format!("{}{}", gw.stdout(), gw.stderr());
        assert!(
            out.contains(&taken_addr),
            "{which} bind failure message does not name {taken_addr}:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_inflight_request_then_exits_0() {
    let up = Upstream::start("u").await;
    up.set_delay(Duration::from_secs(6));
    let yaml = simple(&up).replace("grace_period: 5s", "grace_period: 30s");
    let mut gw = Gateway::start(&yaml).await;
    let http = client();
    let url = gw.url("/r1/slow");
    let slow = tokio::spawn({
        let http = http.clone();
        async move { http.get(&url).send().await.map(|r| r.status().as_u16()) }
    });
    let arrived = common::eventually(Duration::from_secs(3), || async { up.inflight() == 1 }).await;
    assert!(arrived.is_some(), "slow request never reached the upstream");

    gw.signal("TERM");
    // kill(1) returns before the process has handled the signal: poll until it has.
    let turned = common::eventually(Duration::from_secs(5), || {
        let (http, url) = (http.clone(), gw.admin_url("/readyz"));
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 503)
        }
    })
    .await;
    assert!(turned.is_some(), "/readyz did not turn 503 after SIGTERM");
    // An order, not a duration: readiness went while the request was still in flight.
    assert!(
        !slow.is_finished(),
        "/readyz turned 503 only after the in-flight request ended"
    );

    let status = slow.await.unwrap();
    assert_eq!(status.ok(), Some(200), "in-flight request during drain");
    // The process leaves once nothing is in flight, not at the end of the grace period.
    let st = gw.wait_exit(Duration::from_secs(20)).await;
    assert!(
        st.is_some(),
        "still running 20 s after the last request ended (grace_period 30s)"
    );
    assert_eq!(st.unwrap().code(), Some(0), "exit status after SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_and_token() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&simple(&up)).await;
    gw.wait_healthy("u", &[&up.address()]).await;
    let http = client();

    assert_eq!(get(&http, &gw.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&http, &gw.admin_url("/readyz")).await.status, 200);
    for path in ["/admin/upstreams", "/admin/config"] {
        let r = get(&http, &gw.admin_url(path)).await;
        assert_eq!(r.status, 401, "{path} without a token");
        let r = http
            .get(gw.admin_url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
    }

    let v = gw.upstreams().await;
    let u = &v["upstreams"][0];
    assert_eq!(u["name"], "u", "{v}");
    assert_eq!(u["balance"], "round_robin", "default balance: {v}");
    let t = &u["targets"][0];
    assert_eq!(t["address"], up.address().as_str());
    assert_eq!(t["weight"], 1);
    assert_eq!(t["health"], "healthy");
    assert_eq!(t["inflight"], 0);
    assert!(t["last_check_unix_ms"].is_u64(), "{t}");
    assert!(
        t.get("last_check_error").is_some_and(|e| e.is_null()),
        "{t}"
    );

    let r = gw.admin_get("/admin/config").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).expect("/admin/config is JSON");
    assert!(cfg["version_hash"].is_string(), "version_hash: {cfg}");
    assert!(!cfg["loaded_at"].is_null(), "loaded_at: {cfg}");
    assert!(
        !text.contains(&format!("\"{TOKEN}\"")),
        "admin token not redacted in /admin/config: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_refused_without_configured_token() {
    let up = Upstream::start("u").await;
    let yaml = simple(&up).replace(&format!(", token: {TOKEN}"), "");
    let gw = Gateway::start(&yaml).await;
    let http = client();
    for auth in [None, Some(""), Some("secret")] {
        let mut req = http.get(gw.admin_url("/admin/upstreams"));
        if let Some(t) = auth {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let st = req.send().await.unwrap().status().as_u16();
        assert!(
            st == 401 || st == 403,
            "/admin/* with no token configured (auth {auth:?}): {st}"
        );
    }
    assert_eq!(get(&http, &gw.admin_url("/healthz")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_the_contract_names_and_labels() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&simple(&up)).await;
    let ua = up.address();
    gw.wait_healthy("u", &[&ua]).await;
    let http = client();
    for i in 0..20 {
        assert_eq!(get(&http, &gw.url(&format!("/r1/{i}"))).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&http, &gw.url("/no/such/route")).await.status, 404);
    }
    let r = http.post(gw.url("/r1/p")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A request is counted in the logging phase, just after its response went out.
    let counted = common::eventually(Duration::from_secs(3), || {
        let gw = &gw;
        async move {
            gw.metrics()
                .await
                .get(
                    "gatehouse_http_requests_total",
                    &[("route", "r1"), ("method", "POST"), ("status", "200")],
                )
                .is_some()
        }
    })
    .await;
    assert!(counted.is_some(), "the POST was never counted");

    let m = gw.metrics().await;
    let req = |route: &str, method: &str, status: &str| {
        m.get(
            "gatehouse_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert!(
        req("r1", "GET", "200").is_some_and(|v| v >= 20.0),
        "r1 GET 200: {:?}",
        req("r1", "GET", "200")
    );
    assert!(req("r1", "POST", "200").is_some_and(|v| v >= 1.0));
    assert!(
        req("unmatched", "GET", "404").is_some_and(|v| v >= 3.0),
        "unmatched 404 missing"
    );
    for s in m.find("gatehouse_http_requests_total", &[]) {
        let route = s.labels.get("route").map(String::as_str).unwrap_or("");
        assert!(
            route == "r1" || route == "unmatched",
            "route label must be a route name: {s:?}"
        );
    }

    let hist = "gatehouse_http_request_duration_seconds";
    assert_eq!(m.types.get(hist).map(String::as_str), Some("histogram"));
    assert!(m
        .get(&format!("{hist}_count"), &[("route", "r1")])
        .is_some_and(|v| v >= 21.0));
    assert!(m.get(&format!("{hist}_sum"), &[("route", "r1")]).is_some());
    assert_eq!(
        m.get(
            &format!("{hist}_bucket"),
            &[("route", "r1"), ("le", "+Inf")]
        ),
        m.get(&format!("{hist}_count"), &[("route", "r1")])
    );

    // The contract names the `status` label but not its form: the exact
    // code or its class are both accepted.
    let up_req: f64 = ["200", "2xx"]
        .iter()
        .map(|st| {
            m.sum(
                "gatehouse_upstream_requests_total",
                &[("upstream", "u"), ("target", &ua), ("status", st)],
            )
        })
        .sum();
    assert!(
        up_req >= 21.0,
        "gatehouse_upstream_requests_total for {ua}: {up_req}; samples: {:?}",
        m.find("gatehouse_upstream_requests_total", &[])
    );
    let up_hist = "gatehouse_upstream_duration_seconds";
    assert_eq!(m.types.get(up_hist).map(String::as_str), Some("histogram"));
    assert!(m
        .get(&format!("{up_hist}_count"), &[("upstream", "u")])
        .is_some_and(|v| v >= 21.0));

    assert_eq!(
        m.get(
            "gatehouse_upstream_target_healthy",
            &[("upstream", "u"), ("target", &ua)]
        ),
        Some(1.0)
    );

    let fresh = m.get(
        "gatehouse_upstream_connections_total",
        &[("upstream", "u"), ("reused", "false")],
    );
    let reused = m.get(
        "gatehouse_upstream_connections_total",
        &[("upstream", "u"), ("reused", "true")],
    );
    assert!(
        fresh.is_some_and(|v| v >= 1.0),
        "new connections: {fresh:?}"
    );
    assert!(
        reused.is_some_and(|v| v >= 10.0),
        "21 sequential requests should mostly reuse: {reused:?}"
    );

    for (name, ty) in [
        ("gatehouse_http_requests_total", "counter"),
        ("gatehouse_upstream_requests_total", "counter"),
        ("gatehouse_upstream_target_healthy", "gauge"),
        ("gatehouse_upstream_connections_total", "counter"),
    ] {
        // prometheus 0.14 declares counters under their full name.
        let declared = m
            .types
            .get(name)
            .or_else(|| m.types.get(name.trim_end_matches("_total")));
        assert_eq!(declared.map(String::as_str), Some(ty), "# TYPE of {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_writes_one_json_line_per_request() {
    let up = Upstream::start("u").await;
    let log = std::env::temp_dir().join(format!(
        "gatehouse-access-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    let yaml = simple(&up).replace("path: \"off\"", &format!("path: \"{}\"", log.display()));
    let gw = Gateway::start(&yaml).await;
    let http = client();
    let r = http
        .get(gw.url("/r1/logged?q=1"))
        .header("X-Request-ID", "log-test-1")
        .send()
        .await
        .unwrap();
    let r = Resp::from_reqwest(r).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(&http, &gw.url("/missing")).await.status, 404);

    let found = common::eventually(Duration::from_secs(5), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| t.lines().filter(|l| !l.trim().is_empty()).count() >= 2)
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        found.is_some(),
        "access log {} has fewer than 2 lines:\n{text}\n{}",
        log.display(),
        gw.logs_tail()
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
        })
        .collect();
    let ok = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .unwrap_or_else(|| panic!("no line for request log-test-1:\n{text}"));
    for field in [
        "timestamp",
        "request_id",
        "route",
        "method",
        "path",
        "status",
    ] {
        assert!(
            ok.get(field).is_some(),
            "access log line lacks `{field}`: {ok}"
        );
    }
    assert_eq!(ok["route"], "r1");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["status"], 200);
    assert!(
        ok["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/r1/logged")),
        "{ok}"
    );
    let missing = lines.iter().find(|l| l["status"] == 404).expect("404 line");
    assert_eq!(missing["route"], "unmatched");
}

/// The one test clock through the admin API: `GATEHOUSE_TEST_CLOCK=now` starts it at the
/// real time, `set` and `advance` move it, bad bodies are 400s, the old cache-only
/// endpoint is gone, an unreadable variable refuses to start, and without the variable
/// nothing can move the clock.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_clock_is_the_one_test_clock() {
    let up = Upstream::start("u").await;
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = wall_ms();
    let gw = Gateway::start_env(&simple(&up), &[common::test_clock("now")]).await;
    let shown = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("clock JSON");
        (
            v["now"].as_str().unwrap_or("").to_owned(),
            v["unix_ms"].as_u64().unwrap_or(0),
        )
    };
    let (_, at) = shown(gw.admin_get("/admin/clock").await).await;
    assert!(
        at >= before && at <= wall_ms(),
        "`now` starts at the real time: {at}"
    );
    let (_, still) = shown(gw.admin_get("/admin/clock").await).await;
    assert_eq!(still, at, "and stands still");
    let set = |v: serde_json::Value| {
        let gw = &gw;
        async move { gw.admin_post("/admin/clock", &v).await }
    };
    let (now, ms) = shown(set(serde_json::json!({ "set": "2030-01-01T23:59:59Z" })).await).await;
    assert_eq!(
        (now.as_str(), ms),
        ("2030-01-01T23:59:59.000Z", 1_893_542_399_000)
    );
    let (now, _) = shown(set(serde_json::json!({ "advance": "1500ms" })).await).await;
    assert_eq!(now, "2030-01-02T00:00:00.500Z");
    let (_, ms) = shown(set(serde_json::json!({ "set": "1700000000" })).await).await;
    assert_eq!(ms, 1_700_000_000_000, "Unix seconds, and back in time");
    for bad in [
        serde_json::json!({}),
        serde_json::json!({ "advance": "soon" }),
        serde_json::json!({ "set": "yesterday" }),
        serde_json::json!({ "advance": "1s", "set": "now" }),
        serde_json::json!({ "offset": "1s" }),
    ] {
        let r = set(bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = gw
        .admin_post("/admin/test/clock", &serde_json::json!({ "advance": "1s" }))
        .await;
    assert_eq!(r.status(), 404, "the cache's own clock endpoint is gone");

    let mut refused = Gateway::spawn_env(&simple(&up), &[common::test_clock("1")]);
    // `1` is a valid instant (Unix second 1); a word is not.
    refused
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("GATEHOUSE_TEST_CLOCK=1");
    drop(refused);
    let mut refused = Gateway::spawn_env(&simple(&up), &[common::test_clock("tomorrow")]);
    let st = refused.wait_exit(Duration::from_secs(10)).await;
    assert!(st.is_some_and(|s| !s.success()), "{st:?}");
    assert!(
        refused
            .stderr()
            .contains("GATEHOUSE_TEST_CLOCK=\"tomorrow\""),
        "{}",
        refused.logs_tail()
    );

    let system = Gateway::start(&simple(&up)).await;
    assert_eq!(system.admin_get("/admin/clock").await.status(), 404);
    let r = system
        .admin_post("/admin/clock", &serde_json::json!({ "advance": "1s" }))
        .await;
    assert_eq!(r.status(), 404, "the system clock cannot be moved");
}
