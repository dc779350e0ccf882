//! Durable quotas of the `local` store (SQLite under `server.data_dir`): a quota stays
//! exhausted across a graceful restart and a crash (losing at most one sync interval),
//! resets at 00:00 UTC, and two processes on one data_dir (an upgrade's overlap) share
//! the count within the documented bound.

use crate::common;

use common::ratelimit::Fields;
use common::{client, config_with_server, Gateway, Resp, TestDir, Upstream};
use std::time::{Duration, Instant};

const BEFORE_MIDNIGHT: (&str, &str) = common::test_clock("2030-01-01T23:59:00Z");

async fn get_user(http: &reqwest::Client, gw: &Gateway, user: &str) -> Resp {
    let r = http
        .get(gw.url("/q"))
        .header("x-user", user)
        .send()
        .await
        .expect("GET /q");
    Resp::from_reqwest(r).await
}

fn quota_config(data_dir: &str, up: &Upstream, limit: u32, sync: &str) -> String {
    config_with_server(
        &format!("data_dir: \"{data_dir}\""),
        &format!(
            "store: {{ backend: local, sync_interval: {sync} }}\n\
             upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
             routes:\n  - name: daily\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
             quota: {{ limit: {limit}/day, key: \"header:X-User\" }}\n",
            up.address()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_survives_restart_and_crash_and_resets_at_midnight() {
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let data = dir.join("data");
    let yaml = quota_config(data.to_str().unwrap(), &up, 5, "50ms");
    let http = client();

    // 1. Exhaust alice's daily quota.
    let mut gw = Gateway::start_env(&yaml, &[BEFORE_MIDNIGHT]).await;
    for i in 1..=5 {
        let r = get_user(&http, &gw, "alice").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(Fields::of(&r).remaining("route.daily.quota"), 5 - i);
    }
    let r = get_user(&http, &gw, "alice").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"), "60 s to 00:00 UTC");
    assert_eq!(r.json()["limit"], "quota");
    assert_eq!(
        get_user(&http, &gw, "bob").await.status,
        200,
        "bob has his own count"
    );

    // 2. Graceful restart: the last counts are flushed on the way out.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).await.is_some(),
        "did not stop"
    );
    drop(gw);
    let mut gw = Gateway::start_env(&yaml, &[BEFORE_MIDNIGHT]).await;
    let r = get_user(&http, &gw, "alice").await;
    assert_eq!(r.status, 429, "still exhausted after a restart");
    assert_eq!(Fields::of(&r).remaining("route.daily.quota"), 0);
    let r = get_user(&http, &gw, "bob").await;
    assert_eq!(
        Fields::of(&r).remaining("route.daily.quota"),
        3,
        "bob: 2 used"
    );

    // 3. Crash (SIGKILL) more than a sync interval after the last request: nothing lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).await;
    drop(gw);
    let gw = Gateway::start_env(&yaml, &[BEFORE_MIDNIGHT]).await;
    assert_eq!(
        get_user(&http, &gw, "alice").await.status,
        429,
        "exhausted after a crash"
    );
    let r = get_user(&http, &gw, "bob").await;
    assert_eq!(
        Fields::of(&r).remaining("route.daily.quota"),
        2,
        "bob: 3 used"
    );

    // 4. Past 00:00 UTC the day's quota is new.
    gw.advance_clock("61s").await;
    let r = get_user(&http, &gw, "alice").await;
    assert_eq!(r.status, 200, "a new day: {}", r.text());
    let f = Fields::of(&r);
    assert_eq!(f.remaining("route.daily.quota"), 4);
    assert_eq!(f.limit("route.daily.quota").get("t"), 86_400 - 1);
    assert_eq!(
        up.hits(),
        5 + 1 + 1 + 1 + 1,
        "refused requests never reached it"
    );
}

/// The upgrade overlap: an old and a new process serve at once on one data_dir.
/// Documented bound: at most `limit + the admissions of the other process within
/// 2 x sync_interval` (its unsynced delta plus what this one has not re-read yet).
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_one_data_dir_share_the_quota() {
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let data = dir.join("data");
    let limit = 200u32;
    let sync = Duration::from_millis(50);
    let a = Gateway::start_env(
        &quota_config(data.to_str().unwrap(), &up, limit, "50ms"),
        &[],
    )
    .await;
    let b = Gateway::start_env(
        &quota_config(data.to_str().unwrap(), &up, limit, "50ms"),
        &[],
    )
    .await;
    let http = client();
    let start = Instant::now();
    // Alternate between the processes, paced, and note when each admission happened.
    let mut admitted: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..600 {
        let (gw, side) = if i % 2 == 0 { (&a, 0) } else { (&b, 1) };
        let r = get_user(&http, gw, "shared").await;
        match r.status {
            200 => admitted[side].push(start.elapsed()),
            429 => {}
            s => panic!("status {s}: {}", r.text()),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = admitted[0].len() + admitted[1].len();
    // The most either process admitted within any 2 x sync_interval (plus 20 ms of
    // scheduling slack), which is what the other one may not have seen yet.
    let window = 2 * sync + Duration::from_millis(20);
    let most_in_window = |v: &[Duration]| {
        (0..v.len())
            .map(|i| v[i..].iter().take_while(|t| **t - v[i] <= window).count())
            .max()
            .unwrap_or(0)
    };
    let slack = most_in_window(&admitted[0]).max(most_in_window(&admitted[1]));
    eprintln!(
        "upgrade overlap: admitted {total} (A {}, B {}) for a quota of {limit}; bound {limit} + {slack}",
        admitted[0].len(),
        admitted[1].len()
    );
    assert!(total >= limit as usize, "undercount: {total}");
    assert!(
        total <= limit as usize + slack,
        "{total} > {limit} + {slack}"
    );
    assert_eq!(up.hits(), total);
    // Once both have synced, both refuse.
    tokio::time::sleep(4 * sync).await;
    assert_eq!(get_user(&http, &a, "shared").await.status, 429);
    assert_eq!(get_user(&http, &b, "shared").await.status, 429);
}

/// A real graceful upgrade (`gatehouse upgrade`: the new process takes the sockets, the
/// old one keeps serving for a few seconds, then drains) in the middle of using up a
/// quota: the count carries over, and the overlap stays within the documented bound.
#[tokio::test(flavor = "multi_thread")]
async fn quota_survives_a_graceful_upgrade() {
    let up = Upstream::start("app").await;
    let dir = TestDir::new();
    let data = dir.join("data");
    let (pid_file, sock) = (dir.join("gh.pid"), dir.join("upgrade.sock"));
    let port = common::free_port();
    let yaml = format!(
        "version: 1\nserver: {{ threads: 1, grace_period: 5s, data_dir: \"{}\", pid_file: \"{}\", \
         upgrade_sock: \"{}\" }}\nlisteners:\n  - {{ name: public, address: \"127.0.0.1:{port}\" }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {} }}\naccess_log: {{ path: \"off\" }}\n\
         store: {{ sync_interval: 50ms }}\n\
         upstreams:\n  app: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - name: daily\n    match: {{ path_prefix: / }}\n    upstream: app\n    \
         quota: {{ limit: 300/day, key: route }}\n",
        data.display(),
        pid_file.display(),
        sock.display(),
        common::free_port(),
        common::TOKEN,
        up.address()
    );
    let mut old = Gateway::start_env(&yaml, &[BEFORE_MIDNIGHT]).await;
    let old_pid = old.pid();
    // The new process is not our child: kill it by its pid file at the end.
    struct KillPid(std::path::PathBuf);
    impl Drop for KillPid {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status();
            }
        }
    }
    let _cleanup = KillPid(pid_file.clone());
    let url = format!("http://127.0.0.1:{port}/");
    let http = client();
    // ~100 req/s on fresh connections (so both processes take some) for 8 s; the
    // upgrade starts after 1 s and the quota runs out during the overlap.
    let upgrade = {
        let cfg = dir.write("new.yaml", &yaml);
        let cwd = dir.path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(common::gateway::BIN)
                    .args(["upgrade", "-c"])
                    .arg(&cfg)
                    .env(BEFORE_MIDNIGHT.0, BEFORE_MIDNIGHT.1)
                    .current_dir(cwd)
                    .output()
                    .expect("gatehouse upgrade")
            })
            .await
            .expect("upgrade task")
        })
    };
    let start = Instant::now();
    let (mut admitted, mut sent) = (0usize, 0usize);
    while start.elapsed() < Duration::from_secs(8) {
        // This test is about the quota count, not about dropped connections (those are
        // tests/serial/zero_downtime.rs): a connection the old process accepted just as it
        // stopped is retried, as a client would.
        let r = match http.get(&url).header("connection", "close").send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_request() => continue,
            Err(e) => panic!("request during the upgrade: {e}"),
        };
        sent += 1;
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => {}
            s => panic!("status {s} during the upgrade"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = upgrade.await.expect("upgrade");
    assert!(
        out.status.success(),
        "upgrade failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    // What the other process can have admitted unseen: 2 sync intervals (+20 ms) of traffic.
    let slack = (rate * 0.12).ceil() as usize + 1;
    eprintln!("graceful upgrade: {admitted} admitted of {sent} ({rate:.0} req/s) for 300/day; bound 300 + {slack}");
    assert!(admitted >= 300, "undercount: {admitted}");
    assert!(admitted <= 300 + slack, "{admitted} > 300 + {slack}");
    assert!(
        old.wait_exit(Duration::from_secs(15)).await.is_some(),
        "the old process did not exit"
    );
    let new_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, old_pid);
    let r = http.get(&url).send().await.expect("after the upgrade");
    assert_eq!(r.status(), 429, "the new process holds the whole count");
    assert_eq!(up.hits(), admitted);
}
