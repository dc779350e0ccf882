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
        // The limit store's sync thread, started here (after a daemon fork: threads
        // started before it would not exist in this process).
        self.shared.snapshot.load().policies.start();
        let admin = self.admin.lock().ok().and_then(|mut a| a.take());
        if let Some(l) = admin {
            tokio::spawn(crate::admin::serve(l, self.shared.clone()));
        }
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
            crate::store::flush_all();
            accesslog::flush();
            std::process::exit(0);
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining for up to {:?}", self.grace);
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
                    let _ = self.shared.reload().await;
                }
            }
        }
    }
}
