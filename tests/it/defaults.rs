//! Shipped defaults and what the admin listener and problem bodies give away (issue 11,
//! item 8). Each test plays the attacker against the real binary on loopback sockets,
//! then shows the legitimate use still working:
//! - the production default (`conf/gatehouse.yaml`): admin on loopback, no built-in
//!   token, the demo's token refused;
//! - the demo (`conf/demo.yaml`) refused, by `check` and by `run`, off loopback;
//! - `/admin/config` redacting every secret while the secrets still work;
//! - admin request bodies capped;
//! - 502/503/504 problem bodies naming no upstream, target or address.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{check, BIN};
use common::jwks::JwksServer;
use common::tokens::{claims, jwks, sign, sign_hmac};
use common::{assert_problem, client, free_port, get, Gateway, Resp, Upstream, FAST_HEALTH};
use jsonwebtoken::Algorithm;

fn shipped(name: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("conf").join(name)).expect("read the shipped config")
}

/// The `${VAR:-default}` default of `var` in a shipped file.
fn default_of(text: &str, var: &str) -> String {
    let start = text
        .find(&format!("${{{var}:-"))
        .unwrap_or_else(|| panic!("no ${{{var}:-...}} in the file"));
    let rest = &text[start + var.len() + 4..];
    rest[..rest.find('}').expect("closing brace")].to_string()
}

/// Sends a request to the admin listener with an optional bearer token.
async fn admin(gw: &Gateway, method: reqwest::Method, path: &str, token: Option<&str>) -> Resp {
    let mut req = client().request(method, gw.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Resp::from_reqwest(req.send().await.expect("admin request")).await
}

fn assert_admin_problem(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/problem+json"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["status"], status);
}

/// The production default as shipped: the admin address's default is loopback, the token
/// has no default (a start without it fails, naming the variable), and with a token from
/// the environment the proxy serves while the admin API takes that token and no other.
#[tokio::test(flavor = "multi_thread")]
async fn the_production_default_has_no_public_admin_and_no_built_in_token() {
    let text = shipped("gatehouse.yaml");
    let admin_default: SocketAddr = default_of(&text, "GATEHOUSE_ADMIN_LISTEN").parse().unwrap();
    assert!(admin_default.ip().is_loopback(), "{admin_default}");
    assert!(
        text.contains("token: ${GATEHOUSE_ADMIN_TOKEN}\n"),
        "token from the environment only"
    );
    for demo in ["demo-admin-token", "demo-hmac-secret", "sha256:"] {
        assert!(!text.contains(demo), "{demo} in the production default");
    }
    assert!(!text.contains("hmac_secret:"), "no secret in the file");

    let up = Upstream::start("app").await;
    let (proxy, admin_port) = (free_port(), free_port());
    let yaml = text
        .replace(
            "${GATEHOUSE_LISTEN:-127.0.0.1:8080}",
            &format!("127.0.0.1:{proxy}"),
        )
        .replace(
            "${GATEHOUSE_ADMIN_LISTEN:-127.0.0.1:9901}",
            &format!("127.0.0.1:{admin_port}"),
        )
        .replace("${GATEHOUSE_UPSTREAM:-127.0.0.1:3000}", &up.address())
        .replace("path: stdout", "path: \"off\"");

    // Attack: start it without choosing a token. It refuses, and says what is missing.
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("admin.token") && out.contains("GATEHOUSE_ADMIN_TOKEN"),
        "{out}"
    );

    let token = "an-operator-chosen-token-9f2c4e";
    let mut gw = Gateway::start_with_env(&yaml, &[("GATEHOUSE_ADMIN_TOKEN", token)]).await;
    gw.token = Some(token.to_string());

    // Attack: the demo's public token, and no token at all.
    for t in [
        Some("demo-admin-token"),
        None,
        Some("${GATEHOUSE_ADMIN_TOKEN}"),
    ] {
        let r = admin(&gw, reqwest::Method::GET, "/admin/config", t).await;
        assert_admin_problem(&r, 401);
    }
    let r = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/reload",
        Some("demo-admin-token"),
    )
    .await;
    assert_admin_problem(&r, 401);

    // Attack: the admin port from another interface of this machine (when it has one).
    if let Some(ip) = non_loopback_ip() {
        assert!(
            std::net::TcpStream::connect_timeout(&(ip, admin_port).into(), Duration::from_secs(1))
                .is_err(),
            "the admin listener answers on {ip}"
        );
    }

    // Legitimate: probes without a token, the API with the operator's, traffic proxied.
    assert_eq!(
        admin(&gw, reqwest::Method::GET, "/healthz", None)
            .await
            .status,
        200
    );
    let r = admin(&gw, reqwest::Method::GET, "/admin/config", Some(token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.text().contains(token),
        "the token is redacted: {}",
        r.text()
    );
    assert_eq!(r.json()["config"]["admin"]["token"], "[redacted]");
    let r = get(&client(), &gw.url("/anything")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
}

/// The demo with its public credentials, exposed: refused by `check` (exit 1, one error
/// per credential with its YAML path) and by `run` (exits, never listens). On loopback it
/// runs and takes its demo token.
#[tokio::test(flavor = "multi_thread")]
async fn the_demo_credentials_are_refused_off_loopback() {
    let text = shipped("demo.yaml");
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let demo = text
        .replace("127.0.0.1:9001", &a.address())
        .replace("127.0.0.1:9002", &b.address())
        .replace("path: stdout", "path: \"off\"");
    let (proxy, admin_port) = (free_port(), free_port());
    let proxy_env = format!("127.0.0.1:{proxy}");

    // Attack 1: the admin listener on every interface, with the demo token.
    let public_admin = format!("0.0.0.0:{admin_port}");
    let env = [
        ("GATEHOUSE_LISTEN", proxy_env.as_str()),
        ("GATEHOUSE_ADMIN_LISTEN", public_admin.as_str()),
    ];
    let (code, out) = check(&demo, &env);
    assert_eq!(code, Some(1), "{out}");
    for path in [
        "admin.token:",
        "auth.jwt[0].hmac_secret:",
        "consumers[0].api_keys[0]:",
    ] {
        assert!(out.contains(path), "{path} missing in:\n{out}");
    }
    let dir = common::TestDir::new();
    let file = dir.write("demo.yaml", &demo);
    let stderr = dir.join("stderr.log");
    let mut run = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&file)
        .current_dir(&dir.path)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("run gatehouse");
    let mut status = None;
    for _ in 0..200 {
        status = run.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        let _ = run.kill();
        panic!("the demo kept running with its admin listener on {public_admin}");
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(!status.success(), "{err}");
    assert!(err.contains("admin.token"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err(),
        "something listens on the refused admin port"
    );

    // Attack 2: a public proxy listener exposes the JWT secret and the demo key, even
    // with an operator's own admin token.
    let public_proxy = format!("0.0.0.0:{proxy}");
    let (code, out) = check(
        &demo,
        &[
            ("GATEHOUSE_LISTEN", public_proxy.as_str()),
            ("GATEHOUSE_ADMIN_TOKEN", "an-operator-chosen-token"),
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("auth.jwt[0].hmac_secret:"), "{out}");
    assert!(out.contains("consumers[0].api_keys[0]:"), "{out}");
    assert!(!out.contains("admin.token:"), "{out}");

    // Legitimate: the production default may expose its admin listener with a real token.
    let (code, out) = check(
        &shipped("gatehouse.yaml"),
        &[
            ("GATEHOUSE_ADMIN_LISTEN", public_admin.as_str()),
            ("GATEHOUSE_ADMIN_TOKEN", "an-operator-chosen-token"),
        ],
    );
    assert_eq!(code, Some(0), "{out}");

    // Legitimate: the demo as ./scripts/demo.sh runs it (loopback) with its demo token.
    let local = demo
        .replace("${GATEHOUSE_LISTEN:-127.0.0.1:8080}", &proxy_env)
        .replace(
            "${GATEHOUSE_ADMIN_LISTEN:-127.0.0.1:9901}",
            &format!("127.0.0.1:{admin_port}"),
        );
    let gw = Gateway::start(&local).await;
    let r = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/upstreams",
        Some("demo-admin-token"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `/admin/config` with every kind of secret in the config: none of them appears in the
/// answer, each is `[redacted]` where it was, and every one of them still does its job.
#[tokio::test(flavor = "multi_thread")]
async fn admin_config_redacts_every_secret() {
    const ADMIN_TOKEN: &str = "admin-token-5e1f0a";
    const HMAC: &str = "hmac-secret-7d3b9c-0123456789abcdef0123";
    const JWKS_SECRET: &str = "jwks-query-secret-4a8e21";
    const REDIS_PASS: &str = "redis-pass-c0ffee";
    const UP_KEY: &str = "upstream-key-b16b00b5";
    const SIG: &str = "response-sig-feedface";
    const APP_KEY: &str = "app-api-key-deadbeef";
    let up = Upstream::start("u").await;
    let jwks_server = JwksServer::start(&jwks(&["ec256"])).await;
    let jwks_url = format!("{}?access_token={JWKS_SECRET}", jwks_server.url());
    let redis_port = free_port(); // nothing listens: the store fails open
    let yaml = format!(
        r#"version: 1
server: {{ threads: 1, grace_period: 1s }}
listeners: [ {{ name: public, address: "127.0.0.1:{proxy}" }} ]
admin: {{ address: "127.0.0.1:{admin}", token: "{ADMIN_TOKEN}" }}
access_log: {{ path: "off" }}
store: {{ backend: redis, redis_url: "redis://gatehouse:{REDIS_PASS}@127.0.0.1:{redis_port}/0" }}
upstreams:
  u: {{ targets: [ {{ address: "{up}" }} ] }}
auth:
  api_key: {{ header: X-API-Key }}
  jwt:
    - {{ name: corp, issuer: "https://id.test/", audiences: [api], algorithms: [ES256], jwks_url: "{jwks_url}" }}
    - {{ name: hs, issuer: "https://hs.test/", audiences: [api], algorithms: [HS256], hmac_secret: "{HMAC}" }}
consumers:
  - {{ id: app, api_keys: ["${{APP_KEY}}"], jwt_subjects: [alice] }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: u
    auth: [jwt, api_key]
    request_headers: {{ set: {{ X-Upstream-Key: "Bearer ${{UP_KEY}}", X-Plain: visible }} }}
    response_headers: {{ set: {{ X-Sig: "${{SIG}}" }} }}
"#,
        proxy = free_port(),
        admin = free_port(),
        up = up.address(),
    );
    let gw = Gateway::start_with_env(
        &yaml,
        &[("APP_KEY", APP_KEY), ("UP_KEY", UP_KEY), ("SIG", SIG)],
    )
    .await;

    let r = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/config",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    for secret in [
        ADMIN_TOKEN,
        HMAC,
        JWKS_SECRET,
        REDIS_PASS,
        UP_KEY,
        SIG,
        APP_KEY,
    ] {
        assert!(
            !body.contains(secret),
            "{secret} shown by /admin/config: {body}"
        );
    }
    // Nor the hash of the API key (short keys can be guessed from it).
    assert!(!body.contains("sha256:"), "{body}");
    let c = &r.json()["config"];
    assert_eq!(c["admin"]["token"], "[redacted]");
    assert_eq!(c["auth"]["jwt"][1]["hmac_secret"], "[redacted]");
    assert_eq!(
        c["auth"]["jwt"][0]["jwks_url"],
        format!("{}?[redacted]", jwks_server.url())
    );
    assert_eq!(
        c["store"]["redis_url"],
        format!("redis://gatehouse:[redacted]@127.0.0.1:{redis_port}/0")
    );
    assert_eq!(c["consumers"][0]["api_keys"][0], "[redacted]");
    let route = &c["routes"][0];
    assert_eq!(
        route["request_headers"]["set"]["X-Upstream-Key"],
        "[redacted]"
    );
    assert_eq!(
        route["request_headers"]["set"]["X-Plain"], "visible",
        "not a secret"
    );
    assert_eq!(route["response_headers"]["set"]["X-Sig"], "[redacted]");

    // The secrets still work: the API key, both issuers, the headers.
    let http = client();
    let call = |auth: (&'static str, String)| {
        let http = http.clone();
        let url = gw.url("/api/x");
        async move {
            let r = http
                .get(url)
                .header(auth.0, auth.1)
                .send()
                .await
                .expect("GET");
            Resp::from_reqwest(r).await
        }
    };
    let r = call(("x-api-key", APP_KEY.to_string())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sig"), Some(SIG));
    let seen = up.last_request().expect("proxied");
    assert_eq!(
        seen.header("x-upstream-key").as_deref(),
        Some(&*format!("Bearer {UP_KEY}"))
    );
    let es = sign(
        "ec256",
        Algorithm::ES256,
        &claims("https://id.test/", "api", "alice", ""),
    );
    let r = call(("authorization", format!("Bearer {es}"))).await;
    assert_eq!(r.status, 200, "JWKS fetched with its query: {}", r.text());
    let hs = sign_hmac(
        HMAC.as_bytes(),
        Algorithm::HS256,
        &claims("https://hs.test/", "api", "alice", ""),
    );
    let r = call(("authorization", format!("Bearer {hs}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Attack: without the token, nothing of the config at all.
    let r = admin(&gw, reqwest::Method::GET, "/admin/config", None).await;
    assert_admin_problem(&r, 401);
    assert!(!r.text().contains("redis"), "{}", r.text());
}

/// Admin bodies over 64 KiB: 413 problem+json, whether the size is declared or the body
/// is streamed; the listener stays usable, and a normal purge works.
#[tokio::test(flavor = "multi_thread")]
async fn admin_request_bodies_are_capped() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&common::config(&format!(
        r#"
        cache: {{ memory: 1MiB }}
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: r, match: {{ path_prefix: / }}, upstream: u, cache: {{ ttl: 10s }} }}
        "#,
        up.address()
    )))
    .await;
    let url = gw.admin_url("/admin/cache/purge");
    let token = common::TOKEN;
    // A valid JSON object, padded past the cap.
    let big = format!(r#"{{"prefix": "/", "pad": "{}"}}"#, "x".repeat(1 << 20));

    // Attack 1: a declared 1 MiB body.
    let r = client()
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("POST");
    let r = Resp::from_reqwest(r).await;
    assert_admin_problem(&r, 413);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("65536"),
        "{}",
        r.text()
    );

    // Attack 2: the same body chunked, with no Content-Length to refuse up front.
    let mut raw = format!(
        "POST /admin/cache/purge HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(16 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = common::raw::request(gw.admin, &raw)
        .await
        .expect("a response");
    assert_admin_problem(&r, 413);

    // Attack 3: without the token, the body is not even read.
    let r = client().post(&url).body(big).send().await.expect("POST");
    assert_eq!(r.status(), 401);

    // Legitimate: a cached response, a small purge, then a miss again.
    assert_eq!(get(&client(), &gw.url("/p")).await.status, 200);
    assert_eq!(get(&client(), &gw.url("/p")).await.status, 200);
    assert_eq!(up.hits(), 1, "the second GET was a hit");
    let r = gw
        .admin_post("/admin/cache/purge", &serde_json::json!({ "prefix": "/" }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["purged"], 1);
    assert_eq!(get(&client(), &gw.url("/p")).await.status, 200);
    assert_eq!(up.hits(), 2, "purged: fetched again");
}

/// 502, 503 (no healthy target, in-flight limit) and 504: problem+json bodies that name
/// no upstream, target address or port. The healthy route answers normally.
#[tokio::test(flavor = "multi_thread")]
async fn problem_bodies_do_not_name_upstreams_or_addresses() {
    let ok = Upstream::start("ok").await;
    let slow = Upstream::start("slow").await;
    slow.set_delay(Duration::from_millis(1500));
    let dead_port = free_port(); // nothing listens
    let unhealthy = Upstream::start("unhealthy").await;
    unhealthy.set_health_status(500);
    let gw = Arc::new(
        Gateway::start(&common::config(&format!(
            r#"
            upstreams:
              billing-internal-svc: {{ targets: [ {{ address: "127.0.0.1:{dead_port}" }} ], retries: 0 }}
              ledger-internal-svc:
                targets: [ {{ address: "{slow}" }} ]
                max_inflight: 1
              payroll-internal-svc:
                targets: [ {{ address: "{unhealthy}" }} ]
                health: {FAST_HEALTH}
              ok: {{ targets: [ {{ address: "{ok}" }} ] }}
            routes:
              - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: billing-internal-svc }}
              - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: ledger-internal-svc, timeouts: {{ read: 300ms }} }}
              - {{ name: busy, match: {{ path_prefix: /busy }}, upstream: ledger-internal-svc }}
              - {{ name: sick, match: {{ path_prefix: /sick }}, upstream: payroll-internal-svc }}
              - {{ name: ok, match: {{ path_prefix: /ok }}, upstream: ok }}
            "#,
            slow = slow.address(),
            unhealthy = unhealthy.address(),
            ok = ok.address(),
        )))
        .await,
    );
    gw.wait_target_health(
        "payroll-internal-svc",
        &unhealthy.address(),
        "unhealthy",
        Duration::from_secs(5),
    )
    .await
    .expect("the failing target is taken out");

    // A fresh client (connection) per request: after an upstream failure the gateway
    // closes the connection (issue 11, item 6 is about saying so), which is not what
    // this test is about.
    let http = client();
    let mut answers = Vec::new();
    answers.push(("502", get(&client(), &gw.url("/dead")).await));
    answers.push(("504", get(&client(), &gw.url("/slow")).await));
    answers.push((
        "503 no healthy target",
        get(&client(), &gw.url("/sick")).await,
    ));
    // One request in flight to the ledger; the next is over its limit.
    let held = {
        let (http, gw) = (http.clone(), gw.clone());
        tokio::spawn(async move { get(&http, &gw.url("/busy/held")).await.status })
    };
    let one = common::eventually(Duration::from_secs(5), || async { slow.inflight() >= 1 }).await;
    assert!(one.is_some(), "the held request never reached the upstream");
    answers.push((
        "503 in-flight limit",
        get(&client(), &gw.url("/busy/over")).await,
    ));
    assert_eq!(held.await.unwrap(), 200);

    let statuses: Vec<u16> = answers.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, [502, 504, 503, 503], "{answers:?}");
    let internal = [
        "billing-internal-svc".to_string(),
        "ledger-internal-svc".to_string(),
        "payroll-internal-svc".to_string(),
        "127.0.0.1".to_string(),
        dead_port.to_string(),
        slow.addr().port().to_string(),
        unhealthy.addr().port().to_string(),
    ];
    for (what, r) in &answers {
        assert_problem(r, r.status);
        let body = r.text();
        eprintln!("{what}: {body}");
        for name in &internal {
            assert!(!body.contains(name.as_str()), "{what}: {name} in {body}");
        }
        assert!(
            r.json()["detail"].as_str().unwrap().contains("upstream"),
            "{what}: the detail still says what failed: {body}"
        );
    }
    let r = get(&client(), &gw.url("/ok")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The machine's first non-loopback IPv4 address, if it has one (no packet is sent:
/// connecting a UDP socket only picks the route).
fn non_loopback_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
