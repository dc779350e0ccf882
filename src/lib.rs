//! Gatehouse: an edge API gateway on Pingora. `run` builds the Pingora server from a
//! compiled config; `main.rs` is only the command line around it.

pub mod accesslog;
pub mod admin;
pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod tls;
pub mod upstream;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use runtime::{Shared, Snapshot};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct RunOptions {
    pub config_path: String,
    /// Take the listening sockets over from a running instance.
    pub upgrade: bool,
    pub daemon: bool,
}

/// Why `run` could not serve; `main` prints it and exits 1.
#[derive(Debug)]
pub enum StartError {
    Config(Vec<config::ConfigError>),
    Bind(String),
    Other(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(errs) => {
                writeln!(
                    f,
                    "invalid config ({} error{}):",
                    errs.len(),
                    if errs.len() == 1 { "" } else { "s" }
                )?;
                for e in errs {
                    writeln!(f, "  {e}")?;
                }
                Ok(())
            }
            StartError::Bind(m) | StartError::Other(m) => write!(f, "{m}"),
        }
    }
}

/// Loads and validates a config file and compiles it, as `gatehouse check` does.
pub fn check(path: &str) -> Result<Snapshot, Vec<config::ConfigError>> {
    let loaded = config::load_file(path)?;
    Snapshot::compile(loaded, None)
}

/// Pingora keeps running when a listener cannot bind (it retries, then panics inside a
/// task: upstream issue #667). We try every address first and refuse to start instead.
fn precheck_binds(cfg: &config::Config) -> Result<(), StartError> {
    for l in &cfg.listeners {
        let addr: SocketAddr = l.address.parse().map_err(|_| {
            StartError::Bind(format!(
                "listener {:?}: invalid address {}",
                l.name, l.address
            ))
        })?;
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(StartError::Bind(format!(
                "cannot bind listener {:?} on {addr}: {e}",
                l.name
            )));
        }
    }
    Ok(())
}

/// Serves until shutdown. Returns only after a graceful stop, or with an error before
/// anything was served.
pub fn run(opts: RunOptions) -> Result<(), StartError> {
    if let Some(at) = clock::init_from_env().map_err(StartError::Other)? {
        tracing::warn!(
            "{} is set: limits read a test clock that stands at {} and moves only through \
             POST /admin/clock; never set it in production",
            clock::TEST_CLOCK_ENV,
            clock::format_instant(at)
        );
    }
    let loaded = config::load_file(&opts.config_path).map_err(StartError::Config)?;
    let snapshot = Snapshot::compile(loaded, None).map_err(StartError::Config)?;
    let cfg = snapshot.loaded.config.clone();
    if !opts.upgrade {
        precheck_binds(&cfg)?;
    }
    // Quota counts need server.data_dir: refuse to start rather than count in memory.
    snapshot
        .policies
        .limits
        .store
        .check_open()
        .map_err(StartError::Other)?;
    let admin_listener = match &cfg.admin {
        Some(a) => {
            let addr: SocketAddr = a
                .address
                .parse()
                .map_err(|_| StartError::Bind(format!("admin: invalid address {}", a.address)))?;
            Some(admin::bind(addr).map_err(|e| {
                StartError::Bind(format!("cannot bind admin listener on {addr}: {e}"))
            })?)
        }
        None => None,
    };
    accesslog::init(&cfg.access_log.path).map_err(StartError::Other)?;
    let shared = Shared::new(snapshot, opts.config_path.clone());

    let grace = cfg.server.grace_period.0;
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        pid_file: cfg.server.pid_file.clone(),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.0.as_secs().max(1)),
        daemon: opts.daemon,
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 1024;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let server_conf = server.configuration.clone();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server_conf,
        proxy::Gateway {
            shared: shared.clone(),
        },
        "gatehouse",
    );
    for l in &cfg.listeners {
        match &l.tls {
            None => proxy.add_tcp(&l.address),
            Some(t) => {
                let mut certs = Vec::new();
                for c in &t.certificates {
                    certs.push(tls::load_pair(&c.cert, &c.key).map_err(StartError::Other)?);
                }
                let resolver = tls::SniResolver::new(certs).ok_or_else(|| {
                    StartError::Other(format!("listener {:?}: no certificate", l.name))
                })?;
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
                    .map_err(|e| StartError::Other(e.to_string()))?;
                settings.set_cert_resolver(Arc::new(resolver));
                if t.http2 {
                    settings.enable_h2();
                }
                proxy.add_tls_with_settings(&l.address, None, settings);
            }
        }
    }
    server.add_service(proxy);
    let addrs: Vec<SocketAddr> = cfg
        .listeners
        .iter()
        .filter_map(|l| l.address.parse().ok())
        .collect();
    server.add_service(background_service(
        "gatehouse-control",
        Control {
            shared: shared.clone(),
            admin: std::sync::Mutex::new(admin_listener),
            listeners: addrs,
        },
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            shared: shared.clone(),
            grace,
        }),
    });
    store::flush_all();
    accesslog::flush();
    Ok(())
}

/// Background work that lives as long as the process: active health checks (started
/// at boot), the admin listener, and the readiness probe of our own listeners.
struct Control {
    shared: Arc<Shared>,
    admin: std::sync::Mutex<Option<std::net::TcpListener>>,
    listeners: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, _shutdown: ShutdownWatch) {
        for up in self.shared.snapshot.load().upstreams.values() {
            upstream::health::spawn(up);
        }
        // After a daemon fork: threads started before it would not exist in this process.
        self.shared.snapshot.load().policies.start();
        let admin = self.admin.lock().ok().and_then(|mut a| a.take());
        if let Some(l) = admin {
            tokio::spawn(admin::serve(l, self.shared.clone()));
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
        tracing::info!("ready: {} listener(s) accepting", self.listeners.len());
        std::future::pending::<()>().await;
    }
}

/// Our signal handling on top of Pingora's: SIGTERM and SIGQUIT mark the process as
/// draining (`/readyz` 503) and, once no request is in flight, exit without waiting out
/// the whole grace period (Pingora would sleep all of it); SIGHUP reloads the config.
struct Signals {
    shared: Arc<Shared>,
    grace: Duration,
}

impl Signals {
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
            // The last quota counts reach the store before the process goes.
            store::flush_all();
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
