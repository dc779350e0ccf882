//! `gatehouse upgrade -c FILE`: a zero-downtime hand-over to a new process (a new binary,
//! a new config, added or removed listeners).
//!
//! 1. Validate the new config with this binary.
//! 2. Start `gatehouse run -c FILE -u`: it waits on `server.upgrade_sock` for the sockets.
//! 3. Once it is waiting, send SIGQUIT to the old process (named by `server.pid_file`):
//!    Pingora passes every listening socket over and keeps accepting for 5 s.
//! 4. Wait until the new process is ready (it writes its pid into the pid file).
//! 5. Watch the old process drain and exit.
//!
//! If the new process dies before step 3, the old one was never signalled and keeps
//! serving untouched.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub struct Report {
    pub log: String,
    pub old_pid: i32,
    pub new_pid: u32,
    pub ready_after: Duration,
    pub old_exited_after: Option<Duration>,
}

fn alive(pid: i32) -> bool {
    // kill(pid, 0) checks existence and permission without sending anything.
    sys::kill(pid, 0)
}

/// The one FFI call of this module: std has no way to signal an arbitrary pid.
mod sys {
    #[allow(unsafe_code)]
    pub fn kill(pid: i32, sig: i32) -> bool {
        // SAFETY: kill(2) takes plain integers and has no memory effects on this process.
        unsafe { libc::kill(pid, sig) == 0 }
    }
}

fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn modified_after(path: &str, t: SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m >= t)
}

fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("the new process exited early ({status})")),
        _ => None,
    }
}

/// Where the new process writes its stdout and stderr. It outlives this command, so it
/// must not inherit a pipe that a caller is reading to EOF: by default it appends to
/// `<server.data_dir>/gatehouse.log`; `-` keeps this command's stdout and stderr.
fn log_target(log: Option<&str>, data_dir: &str) -> Result<(Stdio, Stdio, String), String> {
    match log {
        Some("-") => Ok((Stdio::inherit(), Stdio::inherit(), "this terminal".into())),
        other => {
            let path = match other {
                Some(p) => p.to_string(),
                None => {
                    std::fs::create_dir_all(data_dir)
                        .map_err(|e| format!("cannot create {data_dir}: {e}"))?;
                    format!("{}/gatehouse.log", data_dir.trim_end_matches('/'))
                }
            };
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open log {path}: {e}"))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            Ok((Stdio::from(f), Stdio::from(f2), path))
        }
    }
}

/// This binary, also after it was replaced on disk (then /proc/self/exe reads
/// "… (deleted)", and the new file at the same path is what an upgrade wants).
fn this_binary() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => p.into(),
        None => exe,
    })
}

/// Starts `gatehouse run -c CONFIG -u` and returns once it waits for the sockets on
/// `upgrade_sock`. Nothing has been signalled yet: on error the old process is untouched.
pub fn spawn_successor(
    config_path: &str,
    upgrade_sock: &str,
    out: Stdio,
    err: Stdio,
) -> Result<Child, String> {
    let exe = this_binary()?;
    let started = SystemTime::now();
    let mut child = Command::new(exe)
        .args(["run", "-c", config_path, "-u"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: stopping the caller must not stop the new server.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !modified_after(upgrade_sock, started) {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("the new process never opened {upgrade_sock}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(e) = exited(&mut child) {
        return Err(e);
    }
    Ok(child)
}

pub fn run(config_path: &str, log: Option<&str>) -> Result<Report, String> {
    let snap = crate::runtime::check(config_path).map_err(|errs| {
        let mut s = String::from("the new config is invalid; nothing was changed:\n");
        for e in errs {
            s.push_str(&format!("  {e}\n"));
        }
        s
    })?;
    let server = &snap.loaded.config.server;
    let old_pid = read_pid(&server.pid_file).ok_or_else(|| {
        format!(
            "no running instance: cannot read a pid from {}",
            server.pid_file
        )
    })?;
    if !alive(old_pid) {
        return Err(format!(
            "the process {old_pid} named by {} is not running",
            server.pid_file
        ));
    }
    let (out, err, log_path) = log_target(log, &server.data_dir)?;
    let t0 = Instant::now();
    let mut child = spawn_successor(config_path, &server.upgrade_sock, out, err)
        .map_err(|e| format!("{e}; the old process {old_pid} keeps serving"))?;
    let new_pid = child.id();
    if !sys::kill(old_pid, libc::SIGQUIT) {
        let _ = child.kill();
        return Err(format!("cannot signal the old process {old_pid}"));
    }

    // Ready = the new process wrote its pid into the pid file.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if read_pid(&server.pid_file) == Some(new_pid as i32) {
            break;
        }
        if let Some(e) = exited(&mut child) {
            return Err(format!("{e} after taking the sockets over"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the new process {new_pid} did not become ready within 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_after = t0.elapsed();

    let wait_old = server.grace_period.0 + Duration::from_secs(10);
    let deadline = Instant::now() + wait_old;
    let mut old_exited_after = None;
    while Instant::now() < deadline {
        if !alive(old_pid) || zombie(old_pid) {
            old_exited_after = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Report {
        log: log_path,
        old_pid,
        new_pid,
        ready_after,
        old_exited_after,
    })
}

/// An exited child of someone else that was not reaped yet still answers kill(pid, 0).
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}
