//! Zero-downtime operations under continuous load (>= 1,000 req/s for >= 10 s, over
//! keep-alive connections plus new connections opening throughout), counting every
//! failure: binary upgrade, upgrade that changes listeners, reload, invalid reload,
//! reload keeping health, SIGTERM drain.

use crate::common;

use common::gateway::BIN;
use common::load::Load;
use common::{free_port, Gateway, TestDir, Upstream, FAST_HEALTH, TOKEN};
use std::time::{Duration, Instant};

// These tests drive real load; run them one at a time (and apart from every other test)
// so they do not starve each other on a 2-core machine.
use super::SERIAL;

const RATE: u32 = 1500;

struct Ports {
    _dir: TestDir,
    pid_file: String,
    sock: String,
}

impl Ports {
    fn new() -> Ports {
        let dir = TestDir::new();
        let pid_file = dir.join("gatehouse.pid").display().to_string();
        let sock = dir.join("upgrade.sock").display().to_string();
        Ports {
            _dir: dir,
            pid_file,
            sock,
        }
    }

    fn config(&self, listeners: &[(&str, u16)], admin: u16, body: &str) -> String {
        let mut s = format!(
            "version: 1\nserver: {{ threads: 1, grace_period: 5s, pid_file: \"{}\", upgrade_sock: \"{}\" }}\nlisteners:\n",
            self.pid_file, self.sock
        );
        for (name, port) in listeners {
            s.push_str(&format!(
                "  - {{ name: {name}, address: \"127.0.0.1:{port}\" }}\n"
            ));
        }
        s.push_str(&format!(
            "admin: {{ address: \"127.0.0.1:{admin}\", token: {TOKEN} }}\naccess_log: {{ path: \"off\" }}\n{}",
            common::dedent(body)
        ));
        s
    }
}

/// Kills the process named by a pid file when the test ends (the upgraded process is not
/// a child of the test).
struct KillPid(String);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.trim())
                .status();
        }
    }
}

fn upgrade(config: &str, dir: &TestDir) -> std::process::Output {
    let path = dir.write("new.yaml", config);
    std::process::Command::new(BIN)
        .args(["upgrade", "--log"])
        .arg(dir.join("new-process.log"))
        .arg("-c")
        .arg(&path)
        .current_dir(&dir.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run gatehouse upgrade")
}

fn routes(up: &Upstream) -> String {
    format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ], health: {FAST_HEALTH} }}
        routes:
          - {{ name: r1, match: {{ path_prefix: / }}, upstream: u }}
        "#,
        up.address()
    )
}

async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_upgrade_under_load_fails_no_request() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("u").await;
    let ports = Ports::new();
    let (port, admin) = (free_port(), free_port());
    let cfg = ports.config(&[("public", port)], admin, &routes(&up));
    let mut gw = Gateway::start(&cfg).await;
    let _cleanup = KillPid(ports.pid_file.clone());
    let old_pid = gw.pid();

    let t0 = Instant::now();
    let load = Load::start(&format!("http://127.0.0.1:{port}/x"), RATE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = tokio::task::spawn_blocking({
        let (cfg, dir) = (cfg.clone(), TestDir::new());
        move || (upgrade(&cfg, &dir), dir)
    })
    .await
    .unwrap();
    let (out, _dir) = out;
    assert!(
        out.status.success(),
        "gatehouse upgrade failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("ready after"), "report: {report}");
    tokio::time::sleep(Duration::from_secs(
        11u64.saturating_sub(t0.elapsed().as_secs()),
    ))
    .await;
    let s = load.finish(t0.elapsed()).await;

    assert_eq!(
        s.failed, 0,
        "failed requests during the upgrade: {:?}",
        s.samples
    );
    assert!(s.rate >= 1000.0, "load was only {:.0} req/s", s.rate);
    assert!(t0.elapsed() >= Duration::from_secs(10));
    // The old process drained and exited 0; the pid file names the new one, which serves.
    let st = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\n{}",
        gw.logs_tail()
    );
    let new_pid: u32 = std::fs::read_to_string(&ports.pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    let r = reqwest::get(format!("http://127.0.0.1:{port}/after"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "only the new process answers now, and it is ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_adds_and_removes_listeners() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("u").await;
    let ports = Ports::new();
    let (kept, removed, added, admin) = (free_port(), free_port(), free_port(), free_port());
    let old = ports.config(&[("kept", kept), ("removed", removed)], admin, &routes(&up));
    let new = ports.config(&[("kept", kept), ("added", added)], admin, &routes(&up));
    let mut gw = Gateway::start(&old).await;
    let _cleanup = KillPid(ports.pid_file.clone());
    assert!(
        refused(added).await,
        "the new listener's port must be free before the upgrade"
    );

    let t0 = Instant::now();
    let load = Load::start(&format!("http://127.0.0.1:{kept}/x"), RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (out, _dir) = tokio::task::spawn_blocking(move || {
        let dir = TestDir::new();
        (upgrade(&new, &dir), dir)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(
        11u64.saturating_sub(t0.elapsed().as_secs()),
    ))
    .await;
    let s = load.finish(t0.elapsed()).await;
    assert_eq!(
        s.failed, 0,
        "failures on the kept listener: {:?}",
        s.samples
    );
    assert!(s.rate >= 1000.0, "load was only {:.0} req/s", s.rate);

    assert!(
        gw.wait_exit(Duration::from_secs(10)).await.is_some(),
        "old process still running"
    );
    let r = reqwest::get(format!("http://127.0.0.1:{added}/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the added listener answers");
    assert!(refused(removed).await, "the removed listener is closed");
}

/// Rewrites the config file in place and asks for a reload through the admin API.
async fn reload(gw: &Gateway, yaml: &str) -> reqwest::Response {
    std::fs::write(&gw.config_path, yaml).unwrap();
    reqwest::Client::new()
        .post(gw.admin_url("/admin/reload"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_adds_a_route_and_changes_a_weight_without_failures() {
    let _serial = SERIAL.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let ports = Ports::new();
    let (port, admin) = (free_port(), free_port());
    let body = |weight: u32, extra: bool| {
        format!(
            r#"
            upstreams:
              u: {{ targets: [ {{ address: "{}", weight: {weight} }}, {{ address: "{}" }} ] }}
            routes:
              - {{ name: main, match: {{ path_prefix: /main }}, upstream: u }}
            {}"#,
            a.address(),
            b.address(),
            if extra {
                "  - { name: added, match: { path_prefix: /added }, upstream: u }\n"
            } else {
                ""
            }
        )
    };
    let gw = Gateway::start(&ports.config(&[("public", port)], admin, &body(1, false))).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(gw.url("/added")).send().await.unwrap().status(),
        404
    );

    let t0 = Instant::now();
    let load = Load::start(&gw.url("/main"), RATE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a0, b0) = (a.hits(), b.hits());
    let r = reload(
        &gw,
        &ports.config(&[("public", port)], admin, &body(3, true)),
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "reload: {}",
        r.text().await.unwrap_or_default()
    );
    let visible = common::eventually(Duration::from_secs(5), || {
        let (c, url) = (client.clone(), gw.url("/added"));
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(
        visible.is_some(),
        "the new route did not answer after the reload"
    );
    tokio::time::sleep(Duration::from_secs(
        11u64.saturating_sub(t0.elapsed().as_secs()),
    ))
    .await;
    let s = load.finish(t0.elapsed()).await;
    assert_eq!(s.failed, 0, "failures during the reload: {:?}", s.samples);
    assert!(s.rate >= 1000.0, "load was only {:.0} req/s", s.rate);
    // After the reload, a gets 3 of every 4 requests.
    let (da, db) = ((a.hits() - a0) as f64, (b.hits() - b0) as f64);
    let share = da / (da + db);
    assert!(
        (0.65..0.85).contains(&share),
        "share of the weight-3 target after reload: {share:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_reload_changes_nothing_and_reports_paths() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("u").await;
    let ports = Ports::new();
    let (port, admin) = (free_port(), free_port());
    let good = ports.config(&[("public", port)], admin, &routes(&up));
    let gw = Gateway::start(&good).await;

    let t0 = Instant::now();
    let load = Load::start(&gw.url("/x"), RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bad = good.replace("upstream: u }", "upstream: nope, max_bdy: 1 }");
    let r = reload(&gw, &bad).await;
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    let paths: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(paths.contains(&"routes[0].max_bdy".to_string()), "{body}");
    assert!(paths.contains(&"routes[0].upstream".to_string()), "{body}");
    // SIGHUP with the same bad file: refused as well, the process keeps serving.
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_secs(
        11u64.saturating_sub(t0.elapsed().as_secs()),
    ))
    .await;
    let s = load.finish(t0.elapsed()).await;
    assert_eq!(
        s.failed, 0,
        "failures around an invalid reload: {:?}",
        s.samples
    );
    assert!(s.rate >= 1000.0, "load was only {:.0} req/s", s.rate);
    let m = gw.metrics().await;
    assert!(
        m.get("gatehouse_config_reloads_total", &[("result", "error")])
            .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        m.get("gatehouse_config_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0),
        0.0
    );
    assert_eq!(reqwest::get(gw.url("/still")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_keeps_the_health_of_untouched_upstreams() {
    let _serial = SERIAL.lock().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let ports = Ports::new();
    let (port, admin) = (free_port(), free_port());
    // A slow check interval: a fresh pool would need 5 s to learn that `b` is down.
    let slow = "{ active: { http_path: /healthz, interval: 5s, timeout: 200ms, healthy_after: 1, unhealthy_after: 1 } }";
    let body = |extra: bool| {
        format!(
            r#"
            upstreams:
              u: {{ targets: [ {{ address: "{}" }}, {{ address: "{}" }} ], health: {slow} }}
              other: {{ targets: [ {{ address: "{}" }} ] }}
            routes:
              - {{ name: main, match: {{ path_prefix: / }}, upstream: u }}
            {}"#,
            a.address(),
            b.address(),
            a.address(),
            if extra {
                "  - { name: added, match: { path_prefix: /added }, upstream: other }\n"
            } else {
                ""
            }
        )
    };
    b.stop().await;
    let gw = Gateway::start(&ports.config(&[("public", port)], admin, &body(false))).await;
    gw.wait_target_health("u", &b.address(), "unhealthy", Duration::from_secs(8))
        .await
        .expect("b marked unhealthy");

    let t0 = Instant::now();
    let load = Load::start(&gw.url("/x"), RATE);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = reload(&gw, &ports.config(&[("public", port)], admin, &body(true))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.target_health("u", &b.address()).await.as_deref(),
        Some("unhealthy"),
        "health was reset by the reload"
    );
    tokio::time::sleep(Duration::from_secs(
        11u64.saturating_sub(t0.elapsed().as_secs()),
    ))
    .await;
    let s = load.finish(t0.elapsed()).await;
    assert_eq!(
        s.failed, 0,
        "requests went to the dead target after the reload: {:?}",
        s.samples
    );
    assert_eq!(
        gw.target_health("u", &b.address()).await.as_deref(),
        Some("unhealthy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_slow_requests_after_readyz_turns_503() {
    let _serial = SERIAL.lock().await;
    let up = Upstream::start("u").await;
    let ports = Ports::new();
    let (port, admin) = (free_port(), free_port());
    let cfg = ports
        .config(&[("public", port)], admin, &routes(&up))
        .replace("grace_period: 5s", "grace_period: 30s");
    let mut gw = Gateway::start(&cfg).await;
    let t0 = Instant::now();
    let load = Load::start(&gw.url("/fast"), RATE);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = load.finish(t0.elapsed()).await;
    up.set_delay(Duration::from_secs(2));
    let slow: Vec<_> = (0..5)
        .map(|i| {
            let url = gw.url(&format!("/slow/{i}"));
            tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let readyz = common::eventually(Duration::from_millis(500), || {
        let url = gw.admin_url("/readyz");
        async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 503) }
    })
    .await;
    assert!(readyz.is_some(), "/readyz did not turn 503 at once");
    for h in slow {
        assert_eq!(
            h.await.unwrap().ok(),
            Some(200),
            "a slow in-flight request was cut"
        );
    }
    let st = gw.wait_exit(Duration::from_secs(5)).await;
    assert!(st.is_some_and(|s| s.success()), "exit after drain: {st:?}");
    assert_eq!(s.failed, 0, "failures before the drain: {:?}", s.samples);
    assert!(s.rate >= 1000.0, "load was only {:.0} req/s", s.rate);
}
