//! A real `redis-server` for the store tests: started on a free loopback port with no
//! persistence, killed on drop, and killable/restartable mid-test (outage tests).
//! `scripts/test.sh` installs redis-server when it is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut r = RedisServer {
            port: super::free_port(),
            child: None,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ping(&self) -> bool {
        self.connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some()
    }

    /// A plain (blocking) connection, for tests that look inside.
    pub fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()
    }

    /// Sum of the integer values of the keys matching `pattern`.
    pub fn sum_keys(&self, pattern: &str) -> u64 {
        let Some(mut c) = self.connection() else {
            return 0;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut c)
            .unwrap_or_default();
        keys.iter()
            .filter_map(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<u64>>(&mut c)
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
