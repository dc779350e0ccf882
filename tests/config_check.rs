//! `gatehouse check -c FILE`: exit codes and error messages with YAML paths.

mod common;

use std::time::Duration;

use common::gateway::check;
use common::{certs_dir, dedent, Gateway};

const HEAD: &str = r#"
version: 1
server: { threads: 1, grace_period: 5s }
listeners:
  - { name: public, address: "127.0.0.1:18080" }
admin: { address: "127.0.0.1:19901", token: secret }
"#;

const UPSTREAM_U: &str = "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n";

/// HEAD, upstream `u`, then `rest` (dedented).
fn cfg(rest: &str) -> String {
    format!("{HEAD}{UPSTREAM_U}{}", dedent(rest))
}

const ROUTE_OK: &str = "routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u }\n";

fn assert_refused(yaml: &str, env: &[(&str, &str)], needles: &[&str]) {
    let (code, out) = check(yaml, env);
    assert_eq!(
        code,
        Some(1),
        "check should exit 1; output:\n{out}\nconfig:\n{yaml}"
    );
    for n in needles {
        assert!(out.contains(n), "check output lacks {n:?}:\n{out}");
    }
}

#[test]
fn valid_config_exits_0() {
    let (code, out) = check(&cfg(ROUTE_OK), &[]);
    assert_eq!(code, Some(0), "valid config refused:\n{out}");
}

#[test]
fn unknown_key_dangling_reference_and_bad_regex_are_all_reported() {
    let three = cfg(r#"
        routes:
          - { name: r0, match: { path_prefix: /a }, upstrem: u }
          - { name: r1, match: { path_prefix: /b }, upstream: nope }
          - { name: r2, match: { path_regex: "([a-z" }, upstream: u }
        "#);
    assert_refused(
        &three,
        &[],
        &[
            "routes[0].upstrem",
            "unknown field",
            "routes[1].upstream",
            "\"nope\"",
            "routes[2].match.path_regex",
        ],
    );
}

#[test]
fn each_error_alone_names_its_path() {
    let cases: [(String, &[&str]); 5] = [
        (
            "routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, rate_limt: 1 }\n".into(),
            &["routes[0].rate_limt", "unknown field"],
        ),
        (
            "routes:\n  - { name: r0, match: { path_prefix: /, methodz: [GET] }, upstream: u }\n".into(),
            &["routes[0].match.methodz", "unknown field"],
        ),
        (
            "routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u }\n  - { name: r1, match: { path: /x }, upstream: nope }\n".into(),
            &["routes[1].upstream", "nope"],
        ),
        (
            "routes:\n  - { name: r0, match: { path_regex: \"(\" }, upstream: u }\n".into(),
            &["routes[0].match.path_regex"],
        ),
        (format!("lisseners: []\n{ROUTE_OK}"), &["lisseners", "unknown field"]),
    ];
    for (rest, needles) in cases {
        assert_refused(&cfg(&rest), &[], needles);
    }
}

#[test]
fn duplicate_route_name_and_bad_duration_are_refused() {
    let dup = cfg("routes:\n  - { name: r0, match: { path: /a }, upstream: u }\n  - { name: r0, match: { path: /b }, upstream: u }\n");
    let (code, out) = check(&dup, &[]);
    assert_eq!(code, Some(1), "duplicate route name accepted:\n{out}");
    assert!(
        out.contains("routes[1]"),
        "error should point at routes[1]:\n{out}"
    );
    assert!(
        out.to_lowercase().contains("duplicate"),
        "error should say duplicate:\n{out}"
    );

    let bad_duration = format!(
        "{HEAD}upstreams:\n  u:\n    targets: [ {{ address: \"127.0.0.1:9001\" }} ]\n    health: {{ active: {{ http_path: /healthz, interval: 2 parsecs }} }}\n{ROUTE_OK}"
    );
    assert_refused(&bad_duration, &[], &["upstreams.u.health.active.interval"]);
}

#[test]
fn environment_interpolation() {
    let yaml = cfg(ROUTE_OK).replace("token: secret", "token: \"${GH_TEST_ADMIN_TOKEN}\"");
    assert_refused(&yaml, &[], &["GH_TEST_ADMIN_TOKEN"]);
    let (code, out) = check(&yaml, &[("GH_TEST_ADMIN_TOKEN", "t0k3n")]);
    assert_eq!(code, Some(0), "set variable refused:\n{out}");
    let yaml = yaml.replace(
        "${GH_TEST_ADMIN_TOKEN}",
        "${GH_TEST_UNSET_VARIABLE:-fallback}",
    );
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, Some(0), "${{VAR:-default}} refused:\n{out}");
}

#[test]
fn tls_certificate_key_mismatch_and_missing_file() {
    let c = |f: &str| certs_dir().join(f).display().to_string();
    let tls = |cert: String, key: String| {
        cfg(ROUTE_OK).replace(
            "  - { name: public, address: \"127.0.0.1:18080\" }\n",
            &format!(
                "  - {{ name: public, address: \"127.0.0.1:18080\" }}\n  - name: tls\n    address: \"127.0.0.1:18443\"\n    tls: {{ certificates: [ {{ cert: \"{cert}\", key: \"{key}\" }} ], http2: true }}\n"
            ),
        )
    };
    let (code, out) = check(&tls(c("a.test.pem"), c("a.test.key")), &[]);
    assert_eq!(
        code,
        Some(0),
        "matching certificate and key refused:\n{out}"
    );
    assert_refused(
        &tls(c("mismatch.pem"), c("mismatch.key")),
        &[],
        &["listeners[1].tls.certificates[0]"],
    );
    assert_refused(
        &tls(c("missing.pem"), c("a.test.key")),
        &[],
        &["listeners[1].tls.certificates[0]"],
    );
}

const NOT_SUPPORTED: &str = "not supported yet";

#[test]
fn sections_of_later_features_are_refused() {
    // Limits (tiers, store, rate_limit, quota) are built: see tests/limits.rs.
    let cases: [(&str, &str); 3] = [
        (
            "auth: { api_key: { header: X-API-Key } }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, auth: [api_key] }\n",
            "routes[0].auth",
        ),
        (
            "routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { ttl: 30s } }\n",
            "routes[0].cache",
        ),
        (
            "tiers: { free: { rate: 10/s, burst: 20, quota: 1000/day } }\nconsumers:\n  - { id: acme, tier: free, api_keys: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"] }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u }\n",
            "consumers",
        ),
    ];
    for (rest, path) in cases {
        assert_refused(&cfg(rest), &[], &[NOT_SUPPORTED, path]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_an_unsupported_config() {
    let yaml = cfg(
        "routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { ttl: 30s } }\n",
    )
    .replace("18080", &common::free_port().to_string())
    .replace("19901", &common::free_port().to_string());
    let mut gw = Gateway::spawn(&yaml);
    let st = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(
        st.is_some(),
        "gatehouse run served a config with an unsupported section"
    );
    assert_eq!(st.unwrap().code(), Some(1));
    let out = format!("{}{}", gw.stdout(), gw.stderr());
    assert!(
        out.contains(NOT_SUPPORTED) && out.contains("routes[0].cache"),
        "output:\n{out}"
    );
}
