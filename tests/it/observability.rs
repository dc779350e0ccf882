//! Observability: the metrics operators expect (build and config identity, open
//! upstream connections, process resources), checked by `promtool` when it is installed.

use crate::common;

use common::{client, config, Gateway, Upstream};
use serde_json::json;

fn two_upstreams(a: &Upstream, b: &Upstream) -> String {
    config(&format!(
        r#"
        upstreams:
          ua: {{ targets: [ {{ address: "{}" }} ] }}
          ub: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: ra, match: {{ path_prefix: /a }}, upstream: ua }}
          - {{ name: rb, match: {{ path_prefix: /b }}, upstream: ub }}
        "#,
        a.address(),
        b.address()
    ))
}

/// `promtool check metrics` on a scrape, when promtool is installed (scripts/test.sh
/// installs Debian's `prometheus` package, which ships it). Returns false (after saying
/// so) when it is absent.
pub fn promtool_check(text: &str) -> bool {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "SKIPPED promtool check: promtool is not installed (Debian package `prometheus`)"
            );
            return false;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_metrics_name_the_build_the_config_and_the_connections() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&two_upstreams(&a, &b)).await;
    let c = client();
    for path in ["/a/1", "/b/1", "/a/2"] {
        let r = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let hash = gw
        .admin_get("/admin/config")
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["version_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let m = gw.metrics().await;
    let build = m.find(
        "gatehouse_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
    );
    assert_eq!(build.len(), 1, "one build_info series");
    assert_eq!(build[0].value, 1.0);
    let commit = &build[0].labels["commit"];
    assert!(
        commit == "unknown"
            || (!commit.is_empty() && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit label: a git hash or `unknown`, not {commit:?}"
    );
    let config_info = m.find("gatehouse_config_info", &[]);
    assert_eq!(config_info.len(), 1);
    assert_eq!(config_info[0].labels["hash"], hash);
    let loaded_at = m
        .get("gatehouse_config_last_reload_timestamp_seconds", &[])
        .unwrap();
    assert!(loaded_at > 1.6e9, "a Unix time: {loaded_at}");
    // The pooled connections stay open after the responses (keep-alive to upstreams).
    assert!(
        m.get("gatehouse_upstream_open_connections", &[("upstream", "ua")])
            .unwrap()
            >= 1.0
    );
    assert!(
        m.get("gatehouse_upstream_open_connections", &[("upstream", "ub")])
            .unwrap()
            >= 1.0
    );
    assert!(m.get("process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(m.get("process_open_fds", &[]).unwrap() >= 3.0);
    assert!(m.get("process_max_fds", &[]).unwrap() >= m.get("process_open_fds", &[]).unwrap());

    // A reload to a config without `ub`: the old hash and the removed upstream are gone.
    let one = config(&format!(
        r#"
        upstreams:
          ua: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: ra, match: {{ path_prefix: /a }}, upstream: ua }}
        "#,
        a.address()
    ));
    // Same listeners and admin address as before, so the reload applies cleanly.
    let old = std::fs::read_to_string(&gw.config_path).unwrap();
    let head: String = old
        .lines()
        .take_while(|l| !l.starts_with("upstreams:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let body: String = one
        .lines()
        .skip_while(|l| !l.starts_with("upstreams:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&gw.config_path, format!("{head}{body}")).unwrap();
    let r = gw.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status(), 200);
    let new_hash = r.json::<serde_json::Value>().await.unwrap()["version_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_hash, hash);
    let text = gw.metrics_text().await;
    let m = common::metrics::parse(&text).unwrap();
    let config_info = m.find("gatehouse_config_info", &[]);
    assert_eq!(
        config_info.len(),
        1,
        "only the config in force: {config_info:?}"
    );
    assert_eq!(config_info[0].labels["hash"], new_hash);
    assert!(m
        .get("gatehouse_upstream_open_connections", &[("upstream", "ua")])
        .is_some());
    assert!(
        m.get("gatehouse_upstream_open_connections", &[("upstream", "ub")])
            .is_none(),
        "a removed upstream keeps no series"
    );
    promtool_check(&text);
}
