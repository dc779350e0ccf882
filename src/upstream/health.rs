//! Active health checks. One task per upstream, started at boot (not on the first
//! request), checking every target concurrently each `interval`: a TCP connect, or an
//! HTTP `GET http_path` expecting 2xx. The task holds only a weak reference, so it ends
//! when a reload drops its upstream.
//!
//! Written here rather than with pingora's `HealthCheck` because we need the "unknown
//! until the first check" state, per-target last-check details for `/admin/upstreams`,
//! and metrics on every change.

use super::{ActiveCheck, Upstream};
use std::sync::{Arc, Weak};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn spawn(upstream: &Arc<Upstream>) {
    let Some(check) = upstream.active.clone() else {
        return;
    };
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            run_once(&up, &check).await;
        }
    });
}

async fn run_once(up: &Arc<Upstream>, check: &ActiveCheck) {
    let probes = up.targets.iter().map(|t| {
        let t = t.clone();
        let check = check.clone();
        let tls = up.tls;
        let sni = up.sni.clone();
        let name = up.name.clone();
        async move {
            let res = tokio::time::timeout(check.timeout, probe(&t.address, t.addr, check.http_path.as_deref(), tls, &sni)).await;
            let (ok, err) = match res {
                Ok(Ok(())) => (true, None),
                Ok(Err(e)) => (false, Some(e)),
                Err(_) => (false, Some(format!("timed out after {:?}", check.timeout))),
            };
            if t.record_check(ok, err.clone(), check.healthy_after, check.unhealthy_after) {
                let state = t.health_label(super::target::now_ms());
                tracing::info!(upstream = %name, target = %t.address, state, error = ?err, "target health changed");
            }
        }
    });
    futures::future::join_all(probes).await;
    up.refresh_gauges();
}

async fn probe(
    host: &str,
    addr: std::net::SocketAddr,
    http_path: Option<&str>,
    tls: bool,
    sni: &str,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = http_path else {
        return Ok(());
    };
    let host_header = if sni.is_empty() { host } else { sni };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n"
    );
    if tls {
        let connector = tls_connector();
        let name = rustls::pki_types::ServerName::try_from(if sni.is_empty() {
            addr.ip().to_string()
        } else {
            sni.to_string()
        })
        .map_err(|e| format!("bad SNI: {e}"))?;
        let mut s = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(&mut s, req.as_bytes()).await
    } else {
        let mut s = stream;
        exchange(&mut s, req.as_bytes()).await
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    req: &[u8],
) -> Result<(), String> {
    s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let status = line.get(9..12).and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("status {code}")),
        None => Err("no HTTP status line".into()),
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use std::sync::OnceLock;
    static C: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    C.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(certs) = rustls_native_certs::load_native_certs() {
            for c in certs {
                let _ = roots.add(c);
            }
        }
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    })
    .clone()
}
