//! Active health checks. One task per upstream, started at boot (not on the first
//! request), checking every target concurrently each `interval`: a TCP connect, or an
//! HTTP `GET http_path` expecting 2xx. The check talks to a target as requests do: over
//! TLS when `tls`, checking the certificate only when `verify`, and in h2c (prior
//! knowledge) when the upstream is `http2` without TLS, since such a target may speak
//! nothing else. The task holds only a weak reference, so it ends when a reload drops its
//! upstream.
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
        let clock_ns = up.clock.now_ns();
        async move {
            let res =
                tokio::time::timeout(check.timeout, probe(&t.address, t.addr, &check, tls, &sni))
                    .await;
            let (ok, err) = match res {
                Ok(Ok(())) => (true, None),
                Ok(Err(e)) => (false, Some(e)),
                Err(_) => (false, Some(format!("timed out after {:?}", check.timeout))),
            };
            if t.record_check(ok, err.clone(), check.healthy_after, check.unhealthy_after) {
                let state = t.health_label(clock_ns);
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
    check: &ActiveCheck,
    tls: bool,
    sni: &str,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(path) = check.http_path.as_deref() else {
        return Ok(());
    };
    let host_header = if sni.is_empty() { host } else { sni };
    if check.h2c {
        return exchange_h2c(stream, host_header, path).await;
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: gatehouse-health-check\r\nConnection: close\r\n\r\n"
    );
    if tls {
        let connector = tls_connector(check.verify);
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

/// One HTTP/2 GET with prior knowledge; the connection is dropped (closed) on return.
async fn exchange_h2c(stream: TcpStream, authority: &str, path: &str) -> Result<(), String> {
    let (client, conn) = h2::client::handshake(stream)
        .await
        .map_err(|e| format!("h2c handshake: {e}"))?;
    let req = http::Request::get(format!("http://{authority}{path}"))
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(())
        .map_err(|e| format!("bad health request: {e}"))?;
    let ask = async move {
        let mut client = client.ready().await?;
        let (resp, _) = client.send_request(req, true)?;
        resp.await
    };
    // The connection future does the I/O; it runs beside the request and goes with it.
    tokio::pin!(conn);
    let resp = tokio::select! {
        r = ask => r.map_err(|e| format!("h2c: {e}"))?,
        r = &mut conn => return Err(match r {
            Ok(()) => "h2c: connection closed before the response".into(),
            Err(e) => format!("h2c: {e}"),
        }),
    };
    match resp.status().as_u16() {
        code if (200..300).contains(&code) => Ok(()),
        code => Err(format!("status {code}")),
    }
}

/// Accepts any certificate (`verify: false`), as the proxy's own connections then do;
/// the handshake's signatures are still checked, so the session is with the key holder.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector(verify: bool) -> tokio_rustls::TlsConnector {
    use std::sync::OnceLock;
    static ANY: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    if !verify {
        return ANY
            .get_or_init(|| {
                let provider = crate::tls::provider();
                let verifier = Arc::new(AnyCertificate(provider.clone()));
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.dangerous()
                            .with_custom_certificate_verifier(verifier)
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    });
                tokio_rustls::TlsConnector::from(Arc::new(cfg))
            })
            .clone();
    }
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
