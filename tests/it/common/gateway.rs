//! The `gatehouse` process under test: spawn, wait for readiness, admin
//! helpers, signals, logs, and kill on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::metrics::{self, Metrics};
use super::{client, TestDir};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub struct Gateway {
    child: Child,
    exit: Option<ExitStatus>,
    pub dir: TestDir,
    pub config_path: PathBuf,
    /// Every `listeners[].address`, in file order.
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub token: Option<String>,
    http: reqwest::Client,
}

fn addr_of(v: &serde_yaml::Value) -> Option<SocketAddr> {
    v.get("address")?.as_str()?.parse().ok()
}

impl Gateway {
    /// Starts `gatehouse run -c FILE` and waits (up to 20 s) until the
    /// admin `/readyz` answers 200. Panics with the process output otherwise.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, &[]).await
    }

    /// Same as `start_with_env` (the name the limits tests use).
    pub async fn start_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_env(yaml, env).await
    }

    /// Same as `spawn_with_env`.
    pub fn spawn_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn_with_env(yaml, env)
    }

    /// `start` with extra environment variables for the process.
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let mut gw = Gateway::spawn_with_env(yaml, env);
        if let Err(e) = gw.wait_ready(Duration::from_secs(20)).await {
            panic!("gateway did not become ready: {e}\n{}", gw.logs_tail());
        }
        gw
    }

    /// Spawns the process without waiting for anything.
    pub fn spawn(yaml: &str) -> Gateway {
        Gateway::spawn_with_env(yaml, &[])
    }

    /// `spawn` with extra environment variables for the process.
    pub fn spawn_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test config is YAML");
        let listeners = doc
            .get("listeners")
            .and_then(|l| l.as_sequence())
            .map(|s| s.iter().filter_map(addr_of).collect())
            .unwrap_or_default();
        let admin = doc
            .get("admin")
            .and_then(addr_of)
            .expect("every test config has an admin listener");
        let token = doc
            .get("admin")
            .and_then(|a| a.get("token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        let dir = TestDir::new();
        let config_path = dir.write("gatehouse.yaml", yaml);
        let stdout = std::fs::File::create(dir.join("stdout.log")).expect("stdout log");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let child = Command::new(BIN)
            .envs(env.iter().copied())
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(&dir.path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn gatehouse");
        Gateway {
            child,
            exit: None,
            dir,
            config_path,
            listeners,
            admin,
            token,
            http: client(),
        }
    }

    /// Polls `/readyz` until 200; fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = self.admin_url("/readyz");
        loop {
            if let Some(st) = self.try_exit() {
                return Err(format!("gatehouse exited early with {st}"));
            }
            if let Ok(r) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/readyz not 200 after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0]
    }

    /// `http://<first listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listeners[0])
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET on the admin listener with the bearer token.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let mut req = self.http.get(self.admin_url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// POST a JSON body on the admin listener with the bearer token.
    pub async fn admin_post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        let mut req = self.http.post(self.admin_url(path)).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("admin POST {path}: {e}"))
    }

    /// `GET /admin/upstreams` as JSON.
    pub async fn upstreams(&self) -> serde_json::Value {
        let r = self.admin_get("/admin/upstreams").await;
        assert_eq!(r.status(), 200, "/admin/upstreams status");
        r.json().await.expect("/admin/upstreams is JSON")
    }

    /// The JSON object of one target in `/admin/upstreams`.
    pub async fn target(&self, upstream: &str, address: &str) -> Option<serde_json::Value> {
        let v = self.upstreams().await;
        v["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == upstream)?["targets"]
            .as_array()?
            .iter()
            .find(|t| t["address"] == address)
            .cloned()
    }

    pub async fn target_health(&self, upstream: &str, address: &str) -> Option<String> {
        let t = self.target(upstream, address).await?;
        t["health"].as_str().map(str::to_owned)
    }

    /// Waits until the admin API reports `want` for the target; returns how
    /// long that took.
    pub async fn wait_target_health(
        &self,
        upstream: &str,
        address: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = None;
        loop {
            last = self.target_health(upstream, address).await.or(last);
            if last.as_deref() == Some(want) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{upstream}/{address}: health {last:?}, want {want:?} within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (10 s max) until all the given targets are healthy.
    pub async fn wait_healthy(&self, upstream: &str, addresses: &[&str]) {
        for a in addresses {
            if let Err(e) = self
                .wait_target_health(upstream, a, "healthy", Duration::from_secs(10))
                .await
            {
                panic!("{e}\n{}", self.logs_tail());
            }
        }
    }

    /// Raw `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200, "/metrics status");
        r.text().await.expect("metrics body")
    }

    /// `/metrics`, parsed; panics on a malformed exposition.
    pub async fn metrics(&self) -> Metrics {
        let text = self.metrics_text().await;
        metrics::parse(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
    }

    /// Moves the gateway's one clock (limits, quotas, cache) forward by `by` (`"61s"`,
    /// `"10ms"`); the process must run with `GATEHOUSE_TEST_CLOCK` (`super::test_clock`).
    pub async fn advance_clock(&self, by: &str) {
        let r = self
            .admin_post("/admin/clock", &serde_json::json!({ "advance": by }))
            .await;
        assert_eq!(r.status(), 200, "POST /admin/clock advance {by}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The last 60 lines of stdout and stderr, for failure messages.
    pub fn logs_tail(&self) -> String {
        fn tail(s: &str) -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        }
        format!(
            "--- gatehouse stdout (tail) ---\n{}\n--- gatehouse stderr (tail) ---\n{}\n---",
            tail(&self.stdout()),
            tail(&self.stderr())
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
    }
}

/// Runs `gatehouse check -c FILE` on `yaml` with extra environment
/// variables; returns the exit code and stdout+stderr.
pub fn check(yaml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = TestDir::new();
    let path = dir.write("gatehouse.yaml", yaml);
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("-c").arg(&path).current_dir(&dir.path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gatehouse check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
