//! The status page (`admin.ui: true`): served from the binary on the admin listener,
//! self-contained, fed by the token-protected `/admin/status`, and rendered by a real
//! browser (headless Chromium, installed by scripts/test.sh) against a live gateway.

use crate::common;

use common::{client, config, Gateway, Upstream, FAST_HEALTH, TOKEN};
use std::time::{Duration, Instant};

fn yaml(a: &Upstream, b: &Upstream, ui: bool) -> String {
    config(&format!(
        r#"
        upstreams:
          orders-svc:
            targets: [ {{ address: "{}" }}, {{ address: "{}" }} ]
            health: {FAST_HEALTH}
        routes:
          - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: orders-svc }}
        "#,
        a.address(),
        b.address()
    ))
    .replace(
        &format!("token: {TOKEN} }}"),
        &format!("token: {TOKEN}, ui: {ui} }}"),
    )
}

/// Chromium's DOM of `url` after its scripts ran (virtual time lets the page's fetch and
/// timers run to completion); `None` when Chromium is not installed.
fn dump_dom(url: &str, profile: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output();
    match out {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("chromium: {e}"),
    }
}

fn screenshot(url: &str, profile: &std::path::Path, to: &std::path::Path) {
    let st = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
            "--window-size=1280,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", to.display()))
        .arg(url)
        .output()
        .expect("chromium");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_self_contained_and_its_data_needs_the_token() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&yaml(&a, &b, true)).await;
    let c = client();
    let page = c.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/status"));
    assert!(!html.contains(TOKEN), "the page carries no secret");
    for external in [
        "<script src",
        "<link",
        "@import",
        "http://",
        "https://",
        "url(",
    ] {
        assert!(
            !html.contains(external),
            "no external resource: found {external:?}"
        );
    }
    let r = c.get(gw.admin_url("/admin/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let s: serde_json::Value = gw.admin_get("/admin/status").await.json().await.unwrap();
    assert_eq!(s["routes"][0]["name"], "orders");
    assert_eq!(s["upstreams"][0]["name"], "orders-svc");
    assert_eq!(s["config"]["history"][0]["result"], "start");
    assert!(s["listeners"][0]["open_connections"].is_number());

    // Off by default (and here, off explicitly): no page.
    let gw2 = Gateway::start(&yaml(&a, &b, false)).await;
    assert_eq!(
        c.get(gw2.admin_url("/")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_renders_live_routes_and_target_health() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&yaml(&a, &b, true)).await;
    gw.wait_healthy("orders-svc", &[&a.address(), &b.address()])
        .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            c.get(gw.url("/orders/1")).send().await.unwrap().status(),
            200
        );
    }
    let profile = common::TestDir::new();
    // Without a token the page asks for one and shows nothing else.
    let Some(dom) = dump_dom(&gw.admin_url("/"), &profile.path) else {
        eprintln!("SKIPPED status page browser test: chromium is not installed (Debian package `chromium`)");
        return;
    };
    assert!(
        dom.contains("<form id=\"login\">"),
        "login form shown: {dom}"
    );
    assert!(
        dom.contains("<main id=\"app\" hidden=\"\">"),
        "status hidden without a token"
    );
    // With the token (given in the fragment, never sent to the server).
    let with_token = gw.admin_url(&format!("/#token={TOKEN}"));
    let dom = dump_dom(&with_token, &profile.path).unwrap();
    assert!(
        dom.contains("<td class=\"route-name\">orders</td>"),
        "{dom}"
    );
    for t in [a.address(), b.address()] {
        assert!(
            dom.contains(&format!(
                "class=\"health health-healthy\" data-target=\"{t}\""
            )),
            "{t} healthy: {dom}"
        );
    }
    // A target dies: the page shows it unhealthy, with the check's error.
    b.stop().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let unhealthy = format!(
        "class=\"health health-unhealthy\" data-target=\"{}\"",
        b.address()
    );
    loop {
        let dom = dump_dom(&with_token, &profile.path).unwrap();
        if dom.contains(&unhealthy) {
            assert!(dom.contains(&format!(
                "class=\"health health-healthy\" data-target=\"{}\"",
                a.address()
            )));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {} unhealthy: {dom}",
            b.address()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    screenshot(&with_token, &profile.path, &shot);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real picture"
    );
}
