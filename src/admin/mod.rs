//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the bearer-protected
//! `/admin/*` API. It is our own small hyper server rather than a Pingora service so that
//! it keeps answering (`/readyz` = 503) while the proxy listeners drain. It is bound with
//! SO_REUSEPORT so an upgraded process can listen beside the old one. It only exists when
//! `admin:` is configured (closed by default).

mod status;

use crate::runtime::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

type Resp = Response<Full<Bytes>>;

/// Binds the admin address now, so a failure is reported before serving starts.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(128)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

pub async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let done = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .without_shutdown()
                .await;
            if let Ok(parts) = done {
                linger(parts.io.into_inner()).await;
            }
        });
    }
}

/// Lingering close. A refusal (401 before the body is read, 413 on a declared size) ends
/// the connection with the client's body still arriving; closing a socket with unread
/// data makes the kernel send RST, which can destroy the response before the client
/// reads it. So, like nginx's `lingering_close`, the write half is shut first and what
/// the client still sends is read and discarded, bounded in bytes and in time, and never
/// buffered.
async fn linger(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_BYTES: usize = 4 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);
    const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 16 * 1024];
        let mut seen = 0usize;
        while seen < MAX_BYTES {
            match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => seen += n,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn problem(status: StatusCode, detail: &str) -> Resp {
    let body = serde_json::json!({
        "type": "https://gatehouse.dev/problems/admin",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = text(status, body.to_string(), "application/problem+json");
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
        );
    }
    r
}

fn deny(status: StatusCode, detail: &str) -> Box<Resp> {
    Box::new(problem(status, detail))
}

/// `GET /admin/clock` shows the test clock; `POST /admin/clock` moves it, with
/// `{"advance": "30s"}` (a duration, as in the config) or `{"set": T}` (`now`, an RFC 3339
/// UTC time or Unix seconds, as `GATEHOUSE_TEST_CLOCK` takes). Both answer
/// `{"now": RFC 3339, "unix_ms": N}`. Absent (404) unless the process started with
/// `GATEHOUSE_TEST_CLOCK` (see `crate::clock`).
async fn clock(req: Request<Incoming>, clock: &crate::clock::Clock) -> Resp {
    use crate::clock::{format_instant, instant_syntax, parse_setting};
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Move {
        #[serde(default)]
        advance: Option<String>,
        #[serde(default)]
        set: Option<String>,
    }
    if !clock.is_test() {
        return problem(
            StatusCode::NOT_FOUND,
            &crate::clock::NotATestClock.to_string(),
        );
    }
    let show = |ns: u64| {
        json(serde_json::json!({
            "now": format_instant(ns),
            "unix_ms": ns / 1_000_000,
        }))
    };
    if req.method() == Method::GET {
        return show(clock.now_ns());
    }
    let body: Move = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let moved = match (body.advance, body.set) {
        (Some(a), None) => crate::config::units::parse_duration(&a)
            .map_err(|e| format!("advance: {e}"))
            .map(|d| clock.advance(d)),
        (None, Some(at)) => parse_setting(&at)
            .ok_or_else(|| format!("set: {at:?}: {}", instant_syntax()))
            .map(|ns| clock.set(ns)),
        _ => {
            Err("give either {\"advance\": \"30s\"} or {\"set\": \"2030-01-02T00:00:00Z\"}".into())
        }
    };
    match moved {
        Ok(Ok(ns)) => show(ns),
        Ok(Err(e)) => problem(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => problem(StatusCode::BAD_REQUEST, &e),
    }
}

/// `admin.ui: true` in the config in force.
fn ui_enabled(shared: &Shared) -> bool {
    shared
        .snapshot
        .load()
        .loaded
        .config
        .admin
        .as_ref()
        .is_some_and(|a| a.ui)
}

fn json(v: serde_json::Value) -> Resp {
    text(StatusCode::OK, v.to_string(), "application/json")
}

/// Compares in time that depends only on the lengths, never on where bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, shared: &Shared) -> Result<(), Box<Resp>> {
    let snap = shared.snapshot.load();
    let token = snap
        .loaded
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: set admin.token",
        ));
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Hash both so the comparison length never depends on the secret.
    use sha2::Digest;
    let a = sha2::Sha256::digest(presented.as_bytes());
    let b = sha2::Sha256::digest(token.as_bytes());
    if presented.is_empty() || !constant_time_eq(&a, &b) {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required",
        ));
    }
    Ok(())
}

async fn handle(req: Request<Incoming>, shared: &Arc<Shared>) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n", "text/plain")
            } else if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n", "text/plain")
            }
        }
        (&Method::GET, "/metrics") => {
            status::refresh_gauges(shared);
            text(
                StatusCode::OK,
                crate::metrics::render(),
                "text/plain; version=0.0.4",
            )
        }
        (&Method::GET, "/") | (&Method::GET, "/ui") if ui_enabled(shared) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/html; charset=utf-8")
            .header("cache-control", "no-store")
            // Everything the page needs is inline; it may only talk back to this origin.
            .header(
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            )
            .header("x-content-type-options", "nosniff")
            .header("referrer-policy", "no-referrer")
            .body(Full::new(Bytes::from_static(status::PAGE.as_bytes())))
            .unwrap_or_default(),
        (_, p) if p.starts_with("/admin/") => {
            if let Err(r) = authorized(&req, shared) {
                return *r;
            }
            admin(req, shared).await
        }
        _ => problem(StatusCode::NOT_FOUND, "unknown admin path"),
    }
}

async fn admin(req: Request<Incoming>, shared: &Arc<Shared>) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/admin/upstreams") => {
            let snap = shared.snapshot.load();
            json(serde_json::json!({
                "upstreams": snap.upstreams.values().map(|u| u.status_json()).collect::<Vec<_>>(),
            }))
        }
        (Method::GET, "/admin/status") => json(status::status_json(shared).await),
        (Method::GET, "/admin/config") => {
            let snap = shared.snapshot.load();
            json(serde_json::json!({
                "version_hash": snap.loaded.version_hash,
                "loaded_at": crate::accesslog::rfc3339(snap.loaded_at),
                "path": snap.loaded.path,
                "config": crate::config::redacted_json(&snap.loaded.config),
            }))
        }
        (Method::POST, "/admin/reload") => match shared.reload().await {
            Ok(r) => json(serde_json::json!({
                "result": "ok",
                "version_hash": r.version_hash,
                // Keys the new config changes but only a restart or upgrade applies.
                "warnings": r.warnings.iter().map(|e| serde_json::json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
            })),
            Err(errs) => {
                let body = serde_json::json!({
                    "type": "https://gatehouse.dev/problems/invalid-config",
                    "title": "Invalid config",
                    "status": 422,
                    "detail": "the new config was refused; the running config is unchanged",
                    "errors": errs.iter().map(|e| serde_json::json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
                });
                text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    body.to_string(),
                    "application/problem+json",
                )
            }
        },
        (Method::POST, "/admin/cache/purge") => purge(req, shared).await,
        (Method::GET, "/admin/clock") | (Method::POST, "/admin/clock") => {
            clock(req, &shared.resources.clock).await
        }
        _ => problem(StatusCode::NOT_FOUND, "unknown admin path"),
    }
}

/// The largest admin request body. Every admin body is a small JSON object; without a
/// cap, anyone who can reach the listener (the token is checked first, but a holder of
/// it may still be a compromised script) could make the process buffer without bound.
pub const MAX_BODY: usize = 64 * 1024;

/// The request body, refused with 413 when it is (or says it is) over `MAX_BODY`. A
/// declared `Content-Length` over the cap is refused before reading a byte; a chunked
/// body is cut off as soon as it passes the cap.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    let too_large = || {
        let mut r = problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("admin request bodies are limited to {MAX_BODY} bytes"),
        );
        // The unread rest of the body makes the connection unusable.
        r.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(problem(
            StatusCode::BAD_REQUEST,
            "the body could not be read",
        )),
    }
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

/// `POST /admin/cache/purge`: `{"route": R}`, `{"route": R, "path": P}`, `{"path": P}`
/// or `{"prefix": P}` (optionally with a route).
async fn purge(req: Request<Incoming>, shared: &Arc<Shared>) -> Resp {
    let body: crate::cache::purge::PurgeRequest = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let snap = shared.snapshot.load();
    let known = |name: &str| snap.loaded.config.routes.iter().any(|r| r.name == name);
    let selector = match body.check(known) {
        Ok(s) => s,
        Err((code, detail)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
            return problem(status, &detail);
        }
    };
    let Some(storage) = snap.cache.as_ref().map(|c| c.storage) else {
        return problem(
            StatusCode::CONFLICT,
            "no cache is configured (cache: section)",
        );
    };
    let (entries, bytes) = selector.run(storage);
    json(serde_json::json!({ "purged": entries, "bytes": bytes }))
}
