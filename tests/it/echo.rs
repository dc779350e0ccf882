//! The `gatehouse-echo` backend, run as a process.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, free_port, get};

const ECHO: &str = env!("CARGO_BIN_EXE_gatehouse-echo");

struct Echo {
    child: Child,
    ports: Vec<u16>,
}

impl Echo {
    async fn start(n_listeners: usize, extra: &[&str]) -> Echo {
        let ports: Vec<u16> = (0..n_listeners).map(|_| free_port()).collect();
        let mut cmd = Command::new(ECHO);
        for p in &ports {
            cmd.arg("--listen").arg(format!("127.0.0.1:{p}"));
        }
        let child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gatehouse-echo");
        let echo = Echo { child, ports };
        let http = client();
        for p in &echo.ports {
            let url = format!("http://127.0.0.1:{p}/healthz");
            let up = common::eventually(Duration::from_secs(10), || {
                let http = http.clone();
                let url = url.clone();
                async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
            })
            .await;
            assert!(up.is_some(), "echo not answering on port {p}");
        }
        echo
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[0])
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_describes_the_request_as_json() {
    let echo = Echo::start(1, &["--name", "alpha"]).await;
    let r = client()
        .post(echo.url("/a/b?x=1&y=2"))
        .header("X-Multi", "1")
        .header("X-Multi", "2")
        .header("X-Single", "v")
        .body("hello")
        .send()
        .await
        .unwrap();
    let r = common::Resp::from_reqwest(r).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-echo-name"), Some("alpha"));
    let port = echo.ports[0].to_string();
    assert_eq!(r.header("x-echo-port"), Some(port.as_str()));
    let v = r.json();
    assert_eq!(v["name"], "alpha");
    assert_eq!(v["port"], echo.ports[0]);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body_len"], 5);
    assert_eq!(v["headers"]["x-single"], "v");
    assert_eq!(v["headers"]["x-multi"], serde_json::json!(["1", "2"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_serves_h2c_prior_knowledge_and_healthz() {
    let echo = Echo::start(1, &[]).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(echo.url("/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["x-echo-name"], "echo", "default name");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["version"], "HTTP/2.0");

    let r = get(&client(), &echo.url("/healthz")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(r.header("x-echo-port").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_body_size_flag_and_query_overrides() {
    let echo = Echo::start(1, &["--body-size", "19"]).await;
    let http = client();
    let r = get(&http, &echo.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, vec![b'x'; 19]);
    assert_eq!(r.header("content-type"), Some("text/plain"));

    let r = get(&http, &echo.url("/?size=100000&status=418")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.body.len(), 100_000);
    assert!(r.body.iter().all(|&b| b == b'x'));

    let t = Instant::now();
    let r = get(&http, &echo.url("/?delay_ms=300")).await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "delay_ms ignored: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_delay_flag_spares_healthz() {
    let echo = Echo::start(1, &["--delay", "3s", "--threads", "2"]).await;
    let http = client();
    let t = Instant::now();
    let delayed = tokio::spawn({
        let (http, url) = (http.clone(), echo.url("/x"));
        async move { get(&http, &url).await.status }
    });
    // /healthz answers while the delayed request is still being held.
    assert_eq!(get(&http, &echo.url("/healthz")).await.status, 200);
    assert!(!delayed.is_finished(), "/healthz was delayed like /x");
    assert_eq!(delayed.await.expect("task"), 200);
    assert!(t.elapsed() >= Duration::from_secs(3), "--delay ignored");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_reports_each_listener_port() {
    let echo = Echo::start(2, &["--name", "multi"]).await;
    let http = client();
    for p in &echo.ports {
        let r = get(&http, &format!("http://127.0.0.1:{p}/")).await;
        assert_eq!(r.header("x-echo-port"), Some(p.to_string().as_str()));
        assert_eq!(r.json()["port"], *p);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_bind_failure_names_the_address_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(ECHO)
        .args(["--listen", &addr])
        .output()
        .expect("run echo");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr),
        "stderr does not name {addr}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_exits_0_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let mut echo = Echo::start(1, &[]).await;
        echo.signal(sig);
        let st = echo.wait(Duration::from_secs(5));
        assert!(st.is_some(), "no exit after SIG{sig}");
        assert_eq!(st.unwrap().code(), Some(0), "exit status after SIG{sig}");
    }
}
