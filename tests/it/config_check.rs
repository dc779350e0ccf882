//! `gatehouse check -c FILE`: exit codes and error messages with YAML paths.

use crate::common;

use common::gateway::check;
use common::{certs_dir, dedent};

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

const AUTH_OK: &str = r#"
auth:
  api_key: { header: X-API-Key, query: api_key }
  jwt:
    - { name: corp, issuer: "https://id.test/", audiences: [api], algorithms: [HS256], hmac_secret: "0123456789abcdef0123456789abcdef" }
consumers:
  - { id: acme, api_keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"], scopes: [orders:read] }
  - { id: env, api_keys: ["${GH_TEST_API_KEY}"] }
routes:
  - { name: r0, match: { path_prefix: / }, upstream: u, auth: [jwt, api_key], scopes: [orders:read] }
"#;

#[test]
fn auth_config_is_accepted() {
    let (code, out) = check(&cfg(AUTH_OK), &[("GH_TEST_API_KEY", "plain-from-env")]);
    assert_eq!(code, Some(0), "valid auth config refused:\n{out}");
}

#[test]
fn auth_config_errors_name_their_paths_all_at_once() {
    let bad = cfg(r#"
        auth:
          jwt:
            - { name: nokeys, issuer: "https://a.test/", audiences: [api], algorithms: [RS256] }
            - { name: badalg, issuer: "https://b.test/", audiences: [api], algorithms: [RS256, XS999, none], jwks_url: "http://127.0.0.1:1/jwks" }
        consumers:
          - { id: acme, api_keys: ["sha256:1234", "plain-key-in-the-file"] }
        routes:
          - { name: r0, match: { path_prefix: / }, upstream: u, auth: [jwt, api_key] }
          - { name: r1, match: { path_prefix: /x }, upstream: u, auth: [saml] }
          - { name: r2, match: { path_prefix: /y }, upstream: u, scopes: [a] }
        "#);
    assert_refused(
        &bad,
        &[],
        &[
            "auth.jwt[0]: an issuer needs keys",
            "auth.jwt[1].algorithms[1]: unknown algorithm \"XS999\"",
            "auth.jwt[1].algorithms[2]: `none` is never accepted",
            "routes[0].auth[1]: auth method \"api_key\" is not configured",
            "routes[1].auth[0]: unknown auth method \"saml\"",
            "routes[2].scopes: scopes need authentication",
            "consumers[0].api_keys[0]: must be sha256:<64 hex digits>",
            "consumers[0].api_keys[1]: must be sha256:<64 hex digits>",
        ],
    );
}

#[test]
fn jwks_files_and_secrets_are_checked() {
    let dir = common::TestDir::new();
    let empty = dir.write("empty.json", r#"{"keys": []}"#);
    let not_jwks = dir.write("bad.json", "[1, 2]");
    let yaml = cfg(&format!(
        r#"
        auth:
          jwt:
            - {{ name: a, issuer: "https://a.test/", audiences: [api], algorithms: [ES256], jwks_file: "{}" }}
            - {{ name: b, issuer: "https://b.test/", audiences: [api], algorithms: [ES256], jwks_file: "{}" }}
            - {{ name: c, issuer: "https://c.test/", audiences: [], algorithms: [HS256], hmac_secret: short }}
        routes:
          - {{ name: r0, match: {{ path_prefix: / }}, upstream: u, auth: [jwt] }}
        "#,
        empty.display(),
        not_jwks.display()
    ));
    assert_refused(
        &yaml,
        &[],
        &[
            "auth.jwt[0].jwks_file",
            "no key usable",
            "auth.jwt[1].jwks_file",
            "not a JWKS",
            "auth.jwt[2].hmac_secret: too short",
            "auth.jwt[2].audiences",
        ],
    );
}

#[test]
fn cache_sections_are_checked() {
    // A route cache needs the top-level section; bad values name their path.
    assert_refused(
        &cfg("routes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { ttl: 30s } }\n"),
        &[],
        &["routes[0].cache", "needs the top-level cache: section"],
    );
    assert_refused(
        &cfg("cache: { memory: 1KiB, max_object_size: 2KiB, lock_timeout: 0s }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { vary: [\"bad header\"] } }\n"),
        &[],
        &[
            "cache.memory",
            "cache.max_object_size",
            "cache.lock_timeout",
            "routes[0].cache.vary[0]",
        ],
    );
    assert_refused(
        &cfg("cache: { memory: 1MiB }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { ttl: soon } }\n"),
        &[],
        &["routes[0].cache.ttl"],
    );
    assert_refused(
        &cfg("cache: { memory: 1MiB }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { stor_set_cookie: true } }\n"),
        &[],
        &["routes[0].cache.stor_set_cookie"],
    );
    let (code, out) = common::gateway::check(
        &cfg("cache: { memory: 1MiB, max_object_size: 64KiB, lock_timeout: 1s }\nroutes:\n  - { name: r0, match: { path_prefix: / }, upstream: u, cache: { ttl: 30s, vary: [Accept-Language], store_set_cookie: true } }\n"),
        &[],
    );
    assert_eq!(code, Some(0), "a valid cache config was refused:\n{out}");
}
