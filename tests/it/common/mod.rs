//! Shared harness for the black-box integration tests.
//!
//! Every test starts the real `gatehouse` binary on ephemeral loopback
//! ports against tiny in-process upstreams, and talks to it with reqwest
//! or with raw TCP writes. Submodules:
//! - `gateway`: the gateway process (start, readiness, admin, signals, logs);
//! - `server`: the test servers' listener (HTTP/1.1 and h2c, stop, restart on the port);
//! - `upstream`: hyper upstreams that count, record, slow down, stop and restart;
//! - `raw`: a raw HTTP/1.1 client for requests reqwest would not send;
//! - `metrics`: a Prometheus text-format parser;
//! - `origin`: a scriptable origin (per-path replies, counts, `Date` clock) for cache tests;
//! - `jwks`: a JWKS server that rotates, breaks and goes down on demand;
//! - `tokens`: JWT minting with the keys in tests/keys/.
#![allow(dead_code, unused_imports)]

pub mod gateway;
pub mod jwks;
pub mod load;
pub mod metrics;
pub mod origin;
pub mod ratelimit;
pub mod raw;
pub mod redis_server;
pub mod server;
pub mod tokens;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use gateway::Gateway;
pub use upstream::Upstream;

/// The environment pair that starts a gateway on its test clock, frozen at `at` (`now`,
/// an RFC 3339 UTC time or Unix seconds); `Gateway::advance_clock` then moves it. Limits,
/// quotas and the cache all read that one clock.
pub const fn test_clock(at: &str) -> (&'static str, &str) {
    ("GATEHOUSE_TEST_CLOCK", at)
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read it, drop. Never one this
/// process handed out before (see `claim_port`).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if claim_port(port) {
            return port;
        }
    }
}

/// Records `port` as taken by a test of this process; false when it already was. The
/// tests of a binary run in parallel threads of one process: between `free_port()` and
/// the gateway's bind, or while a test server is stopped before its restart, the kernel
/// may give the same port to another test's `bind(0)`, which would then meet (or become)
/// the wrong server. Claimed ports are never handed out again in this process.
pub fn claim_port(port: u16) -> bool {
    static CLAIMED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    CLAIMED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(port)
}

/// A per-test directory under the system temp dir. Removed on drop unless
/// the test is failing, so its logs stay around for debugging.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // libtest names each test's thread after the test.
        let name: String = std::thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join("gatehouse-tests").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `yaml` (dedented) to `name` in this directory.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes a config file into a fresh per-test directory.
pub fn write_config(yaml: &str) -> (TestDir, PathBuf) {
    let dir = TestDir::new();
    let path = dir.write("gatehouse.yaml", yaml);
    (dir, path)
}

/// Removes the common leading indentation so configs can be written
/// indented inside Rust source.
pub fn dedent(s: &str) -> String {
    let indent = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for l in s.lines() {
        out.push_str(l.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out
}

/// Active health checks fast enough for tests: a dead target is out after
/// about 400 ms.
pub const FAST_HEALTH: &str = "{ active: { http_path: /healthz, interval: 200ms, timeout: 200ms, healthy_after: 1, unhealthy_after: 2 } }";

/// The admin token every generated config uses.
pub const TOKEN: &str = "secret";

/// A complete config: one plain listener and an admin listener on fresh
/// ports, access log off, then `body` (top-level `upstreams:` and
/// `routes:` sections, dedented).
pub fn config(body: &str) -> String {
    config_with_server("", body)
}

/// Like `config`, with more `server:` keys (e.g. `data_dir: /tmp/x`; "" for none).
pub fn config_with_server(server: &str, body: &str) -> String {
    let server = if server.is_empty() {
        String::new()
    } else {
        format!(", {server}")
    };
    format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s{server} }}\n\
         listeners:\n  - {{ name: public, address: \"127.0.0.1:{}\" }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: \"off\" }}\n{}",
        free_port(),
        free_port(),
        dedent(body)
    )
}

/// The config body most tests start from: one upstream `u`, whose keys (flow style,
/// without the braces) are `upstream`, and one route `all` that sends every path to it.
pub fn one_route(upstream: &str) -> String {
    format!(
        "upstreams:\n  u: {{ {upstream} }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n"
    )
}

/// `targets: [ ... ]` of an upstream, one target per address.
pub fn targets(addresses: &[&str]) -> String {
    let list: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!("targets: [ {} ]", list.join(", "))
}

/// A gateway whose one route sends every path to `up`, nothing else configured.
pub async fn one_route_gateway(up: &Upstream) -> Gateway {
    Gateway::start(&config(&one_route(&targets(&[&up.address()])))).await
}

/// A reqwest client that ignores proxy settings and keeps connections alive.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A response reduced to plain data, from reqwest or from the raw client.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub async fn from_reqwest(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// GET through reqwest, reduced to a `Resp`.
pub async fn get(client: &reqwest::Client, url: &str) -> Resp {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    Resp::from_reqwest(r).await
}

/// Asserts an RFC 9457 rejection: status, content type, the five fields,
/// and `request_id` equal to the `X-Request-ID` response header.
pub fn assert_problem(resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "status; body: {}", resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type of a {status} rejection: expected application/problem+json, got {ct:?}"
    );
    let v = resp.json();
    for field in ["type", "title", "detail", "request_id"] {
        assert!(
            v[field].is_string(),
            "problem field `{field}` missing or not a string: {v}"
        );
    }
    assert_eq!(
        v["status"].as_u64(),
        Some(u64::from(status)),
        "problem `status` field: {v}"
    );
    let rid = resp.header("x-request-id");
    assert!(rid.is_some(), "rejection without X-Request-ID header");
    assert_eq!(
        v["request_id"].as_str(),
        rid,
        "problem request_id vs X-Request-ID header"
    );
}

/// The directory with the committed test certificates.
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("certs")
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
/// Returns the time it took, or None on timeout.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `conf/demo.yaml` as a test runs it: free ports for its listener and admin, `first`
/// and `second` for its two upstream targets (`127.0.0.1:9001`, `:9002`), no access log.
pub fn demo_config(first: &Upstream, second: &Upstream) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("conf/demo.yaml"))
        .expect("conf/demo.yaml")
        .replace(
            "${GATEHOUSE_LISTEN:-127.0.0.1:8080}",
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            "${GATEHOUSE_ADMIN_LISTEN:-127.0.0.1:9901}",
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace("127.0.0.1:9001", &first.address())
        .replace("127.0.0.1:9002", &second.address())
        .replace("path: stdout", "path: \"off\"")
}
