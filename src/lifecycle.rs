//! The process lifecycle around Pingora's server: readiness, the pid file, signals,
//! draining and exit.

use crate::accesslog;
use crate::runtime::Shared;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Background work that lives as long as the process: active health checks (started
/// at boot), the admin listener, and the readiness probe of our own listeners.
pub struct Control {
    shared: Arc<Shared>,
    admin: std::sync::Mutex<Option<std::net::TcpListener>>,
    listeners: Vec<SocketAddr>,
    pid_file: String,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        admin: Option<std::net::TcpListener>,
        listeners: Vec<SocketAddr>,
        pid_file: String,
    ) -> Self {
        Control {
            shared,
            admin: std::sync::Mutex::new(admin),
            listeners,
            pid_file,
        }
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, _shutdown: ShutdownWatch) {
        for up in self.shared.snapshot.load().upstreams.values() {
            crate::upstream::health::spawn(up);
        }
        let admin = self.admin.lock().ok().and_then(|mut a| a.take());
        if let Some(l) = admin {
            tokio::spawn(crate::admin::serve(l, self.shared.clone()));
        }
        // JWKS from jwks_url are fetched once before the process reports ready, with the
        // admin listener already up (each fetch has a 5 s timeout; a failure leaves the
        // issuer with its other keys). This also starts the limit store's sync thread
        // (here, after a daemon fork: threads started before it would not exist).
        let policies = self.shared.snapshot.load().policies.clone();
        policies.start().await;
        // Ready once every listener accepts connections.
        let deadline = Instant::now() + Duration::from_secs(40);
        for addr in &self.listeners {
            loop {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::error!("listener {addr} never started accepting connections; exiting");
                    eprintln!("gatehouse: listener {addr} could not be bound; exiting");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.shared.ready.store(true, Ordering::Relaxed);
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        // The pid file names the serving process; `gatehouse upgrade` reads it, and waits
        // for the new process to write its own here once it is ready.
        if !self.pid_file.is_empty() {
            if let Err(e) = std::fs::write(&self.pid_file, format!("{}\n", std::process::id())) {
                tracing::warn!("cannot write pid file {}: {e}", self.pid_file);
            }
        }
        tracing::info!("ready: {} listener(s) accepting", self.listeners.len());
        std::future::pending::<()>().await;
    }
}

/// Our signal handling on top of Pingora's: SIGTERM and SIGQUIT mark the process as
/// draining (`/readyz` 503) and, once no request is in flight, exit without waiting out
/// the whole grace period (Pingora would sleep all of it); SIGHUP reloads the config.
pub struct Signals {
    shared: Arc<Shared>,
    grace: Duration,
}

impl Signals {
    pub fn new(shared: Arc<Shared>, grace: Duration) -> Self {
        Signals { shared, grace }
    }

    /// SIGUSR2: start the successor ourselves (same binary path and config file), so it
    /// is our child and stays in our service's cgroup under systemd, then hand the
    /// sockets over as for SIGQUIT. If the successor fails to start, nothing changes.
    async fn upgrade_self(&self) -> bool {
        let config_path = self.shared.config_path.clone();
        let sock = self
            .shared
            .snapshot
            .load()
            .loaded
            .config
            .server
            .upgrade_sock
            .clone();
        tracing::info!("SIGUSR2: starting a successor with {config_path}");
        let started = tokio::task::spawn_blocking(move || {
            if let Err(errs) = crate::runtime::check(&config_path) {
                let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                return Err(format!("the config is invalid: {}", msgs.join("; ")));
            }
            crate::upgrade::spawn_successor(
                &config_path,
                &sock,
                std::process::Stdio::inherit(),
                std::process::Stdio::inherit(),
            )
        })
        .await;
        match started {
            Ok(Ok(child)) => {
                tracing::info!(
                    "successor {} is waiting for the sockets; handing over",
                    child.id()
                );
                true
            }
            Ok(Err(e)) => {
                tracing::error!("upgrade refused, this process keeps serving: {e}");
                false
            }
            Err(e) => {
                tracing::error!("upgrade task failed: {e}");
                false
            }
        }
    }

    fn start_drain(&self, min_wait: Duration) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let shared = self.shared.clone();
        let grace = self.grace;
        std::thread::spawn(move || {
            let start = Instant::now();
            std::thread::sleep(min_wait);
            let mut idle_since: Option<Instant> = None;
            while start.elapsed() < grace + min_wait {
                if shared.active_requests.load(Ordering::Relaxed) == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(300) {
                        break;
                    }
                } else {
                    idle_since = None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::info!("drained after {:?}; exiting", start.elapsed());
            // The last quota counts reach the store before the process goes (during an
            // upgrade the new process reads them from there).
            shared.resources.stores.flush_all();
            accesslog::flush();
            std::process::exit(0);
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining for up to {:?}", self.grace);
                    notify("STOPPING=1");
                    self.start_drain(Duration::from_millis(100));
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT: handing listeners over, then draining");
                    // Pingora keeps accepting for 5 s after sending the sockets.
                    self.start_drain(Duration::from_secs(6));
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    accesslog::flush();
                    return ShutdownSignal::FastShutdown;
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.shared.config_path);
                    notify("RELOADING=1");
                    let _ = self.shared.reload().await;
                    notify("READY=1");
                }
                _ = usr2.recv() => {
                    if self.upgrade_self().await {
                        self.start_drain(Duration::from_secs(6));
                        return ShutdownSignal::GracefulUpgrade;
                    }
                }
            }
        }
    }
}

/// sd_notify(3) without libsystemd: one datagram to `$NOTIFY_SOCKET` (path or abstract
/// `@name`). With `Type=notify` and `NotifyAccess=all`, a successor started by an upgrade
/// announces itself as the new main process. A no-op outside systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let sent = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify to {path} failed: {e}");
    }
}
