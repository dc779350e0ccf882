//! Tiny in-process upstreams: a test server (`server::Server`: HTTP/1.1 and h2c
//! on one port, stopped and restarted on the same port) that counts and records
//! requests and can answer slowly or with a chosen status.
//!
//! `GET /healthz` answers the health status (200 by default) and is
//! counted apart from real traffic. Any other request is recorded and
//! answered with JSON describing it, plus `X-Upstream: <name>` and
//! `X-Internal: secret` headers. `?delay_ms=N` delays one answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, Version};

use super::server::Server;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: usize,
}

impl Recorded {
    /// Path plus `?query` as received.
    pub fn uri(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// All values of a header, joined with ", ".
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<String> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

struct State {
    name: String,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    delay_ms: AtomicU64,
    status: AtomicU16,
    health_status: AtomicU16,
    requests: Mutex<Vec<Recorded>>,
}

pub struct Upstream {
    state: Arc<State>,
    pub port: u16,
    server: Server,
}

impl Upstream {
    /// Starts on a fresh ephemeral port.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, 0).await
    }

    /// Starts on the given port (0 = ephemeral).
    pub async fn start_on(name: &str, port: u16) -> Upstream {
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            health_status: AtomicU16::new(200),
            requests: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = Server::start("upstream", port, move |req| {
            handle(handler_state.clone(), req)
        })
        .await;
        Upstream {
            state,
            port: server.port,
            server,
        }
    }

    /// `127.0.0.1:PORT`, as written in configs and shown by the admin API.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Hard stop: closes the listener and every open connection, like a
    /// killed process. The port then refuses connections.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Listens again on the same port, keeping counters and settings.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// Requests other than `/healthz` received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (health checks included).
    pub fn connections(&self) -> usize {
        self.server.connections()
    }

    /// Requests currently being answered.
    pub fn inflight(&self) -> usize {
        self.state.inflight.load(Ordering::SeqCst)
    }

    /// Highest number of concurrent requests seen.
    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    /// Delay before answering every non-health request.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Status of every non-health answer.
    pub fn set_status(&self, s: u16) {
        self.state.status.store(s, Ordering::SeqCst);
    }

    /// Status of `/healthz`.
    pub fn set_health_status(&self, s: u16) {
        self.state.health_status.store(s, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> Option<Recorded> {
        self.state.requests.lock().unwrap().last().cloned()
    }

    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
        self.state.hits.store(0, Ordering::SeqCst);
    }
}

struct InflightGuard(Arc<State>);
impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status(state.health_status.load(Ordering::SeqCst));
        return Ok(r);
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let now = state.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_inflight.fetch_max(now, Ordering::SeqCst);
    let _guard = InflightGuard(state.clone());

    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
    };
    state.requests.lock().unwrap().push(rec.clone());

    let delay = rec
        .query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| state.delay_ms.load(Ordering::SeqCst));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let headers: serde_json::Map<String, serde_json::Value> = rec
        .headers
        .keys()
        .map(|k| {
            (
                k.as_str().to_owned(),
                rec.header(k.as_str()).unwrap_or_default().into(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": state.name,
        "method": rec.method,
        "path": rec.path,
        "query": rec.query,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": body_len,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status(state.status.load(Ordering::SeqCst));
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-upstream", state.name.parse().unwrap());
    h.insert("x-internal", "secret".parse().unwrap());
    Ok(r)
}

fn status(code: u16) -> hyper::StatusCode {
    hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR)
}
