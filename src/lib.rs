//! Gatehouse: an edge API gateway on Pingora. `run` builds the Pingora server from a
//! compiled config; `main.rs` is only the command line around it.

pub(crate) mod accesslog;
pub(crate) mod admin;
pub(crate) mod cache;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub(crate) mod path;
pub(crate) mod policy;
#[cfg(test)]
pub(crate) mod proptest_support;
pub(crate) mod proxy;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod store;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod upgrade;
pub(crate) mod upstream;

#[doc(hidden)]
pub mod internals;

/// `gatehouse hash-key`: the `sha256:<hex>` form of an API key.
pub use config::values::hash_key;
/// `gatehouse upgrade`: the hand-over to a new process.
pub use upgrade::run as upgrade;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use runtime::{Resources, Shared, Snapshot};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// Per-client-connection socket buffers, allocated at accept for the connection's whole
/// life (Pingora cannot resize or release them while it is idle). Pingora's default read
/// buffer is 64 KiB per connection, 640 MiB for 10,000 idle keep-alive clients. None is
/// kept: our connection loop (`server`) reads request heads into its own buffer, and
/// Pingora reads bodies in 64 KiB chunks, which would bypass a small buffer anyway. The
/// write buffer stays: it joins a small response's header and body into one write.
fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::new(0, 1460)
}

/// Loads, checks and compiles a config file: `gatehouse check`, and what `run` and
/// `Shared::reload` do too (`load_file`, then `Snapshot::compile`).
pub fn check(path: &str) -> Result<Snapshot, Vec<config::ConfigError>> {
    runtime::check(path)
}

/// Pingora keeps running when a listener cannot bind (it retries, then panics inside a
/// task: upstream issue #667). We try every address first and refuse to start instead.
/// During an upgrade an address the old process serves is inherited, not bound: only
/// addresses nobody answers on are tried.
fn precheck_binds(cfg: &config::Config, upgrade: bool) -> Result<(), StartError> {
    for l in &cfg.listeners {
        let addr: SocketAddr = l.address.parse().map_err(|_| {
            StartError::Bind(format!(
                "listener {:?}: invalid address {}",
                l.name, l.address
            ))
        })?;
        if upgrade
            && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            continue;
        }
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
    let clock = clock::Clock::from_env().map_err(StartError::Other)?;
    if clock.is_test() {
        tracing::warn!(
            "{} is set: limits, quotas and the cache read a test clock that stands at {} \
             and moves only through POST /admin/clock; never set it in production",
            clock::TEST_CLOCK_ENV,
            clock::format_instant(clock.now_ns())
        );
    }
    let resources = Resources::new(clock);
    let loaded = config::load_file(&opts.config_path).map_err(StartError::Config)?;
    let snapshot = Snapshot::compile(loaded, None, &resources).map_err(StartError::Config)?;
    let cfg = snapshot.loaded.config.clone();
    let tls_certs = snapshot.tls.clone();
    precheck_binds(&cfg, opts.upgrade)?;
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
    let shared = Shared::new(snapshot, resources, opts.config_path.clone());

    let grace = cfg.server.grace_period.0;
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        pid_file: cfg.server.pid_file.clone(),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        // Whole seconds, at least 1 (validated): nothing is cut here.
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.0.as_secs()),
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
    // Bootstrap as a service (not `server.bootstrap()`): Pingora then knows every listen
    // address before it takes sockets over from an old process (`-u`), so it closes the
    // inherited ones this config no longer has, binds the new ones, and the proxy waits
    // for the sockets before it listens.
    let bootstrap = server.bootstrap_as_a_service();
    let server_conf = server.configuration.clone();

    let mut http = pingora::proxy::http_proxy(&server_conf, proxy::Gateway::new(shared.clone()));
    // Pingora's own h2 loop (which `server::App` hands h2c connections to) peeks for the
    // preface again; it only sees connections that carry one. `server::App` adds each
    // listener's h2 idle timeout.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = cfg.listeners.iter().any(|l| l.http2 && l.tls.is_none());
    http.server_options = Some(options);
    // TLS listeners are plain TCP ones to Pingora: the connection loop runs the handshake
    // itself, due within `server.header_timeout` and counted in `max_connections`
    // (Pingora's own allows it 60 s, before anything of ours sees the connection).
    let mut rts = Vec::with_capacity(cfg.listeners.len());
    for l in &cfg.listeners {
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                // Loaded and checked when the config compiled (`tls::compile`), which
                // refuses a TLS listener without certificates.
                let resolver = tls_certs.get(&l.name).cloned().ok_or_else(|| {
                    StartError::Other(format!("listener {:?}: no certificate", l.name))
                })?;
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
                    .map_err(|e| StartError::Other(e.to_string()))?;
                settings.set_cert_resolver(resolver);
                if t.http2 {
                    settings.enable_h2();
                }
                Some(Arc::new(settings.build()))
            }
        };
        rts.extend(server::ListenerRt::new(l, tls));
    }
    let listeners: Arc<[server::ListenerRt]> = rts.into();
    let mut proxy = pingora::services::listening::Service::new(
        "gatehouse".to_string(),
        server::App::new(http, shared.clone(), listeners),
    );
    for l in &cfg.listeners {
        proxy
            .endpoints()
            .add_listener(ListenerConfig::tcp(&l.address).l4_buffer(client_buffers()));
    }
    let proxy_handle = server.add_service(proxy);
    proxy_handle.add_dependency(&bootstrap);
    let addrs: Vec<SocketAddr> = cfg
        .listeners
        .iter()
        .filter_map(|l| l.address.parse().ok())
        .collect();
    server
        .add_service(background_service(
            "gatehouse-control",
            lifecycle::Control::new(
                shared.clone(),
                admin_listener,
                addrs,
                cfg.server.pid_file.clone(),
            ),
        ))
        .add_dependency(&proxy_handle);
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals::new(shared.clone(), grace)),
    });
    shared.resources.stores.flush_all();
    accesslog::flush();
    Ok(())
}
