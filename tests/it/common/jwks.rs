//! A JWKS server on loopback whose document, status and `Cache-Control` a test sets,
//! which counts its fetches, and which can go down and come back on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::server::Server;

struct State {
    status: u16,
    body: String,
    cache_control: String,
}

pub struct JwksServer {
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicUsize>,
    pub addr: SocketAddr,
    server: Server,
}

impl JwksServer {
    pub async fn start(body: &str) -> JwksServer {
        let state = Arc::new(Mutex::new(State {
            status: 200,
            body: body.to_string(),
            cache_control: "max-age=3600".into(),
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        let server = Server::start("JWKS server", 0, move |req| {
            handle(s.clone(), h.clone(), req)
        })
        .await;
        JwksServer {
            state,
            hits,
            addr: SocketAddr::from(([127, 0, 0, 1], server.port)),
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn set_body(&self, body: &str) {
        self.state.lock().unwrap().body = body.to_string();
    }

    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    /// Fetches served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: the port refuses connections.
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}

/// Every request gets the document, whatever its path, with `Connection: close`: each
/// fetch opens its own connection, so the first fetch after `stop` meets a refused port.
async fn handle(
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicUsize>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    hits.fetch_add(1, Ordering::SeqCst);
    let s = state.lock().unwrap();
    let mut r = Response::new(Full::new(Bytes::from(s.body.clone())));
    *r.status_mut() = hyper::StatusCode::from_u16(s.status).expect("a test status code");
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("cache-control", s.cache_control.parse().unwrap());
    h.insert("connection", "close".parse().unwrap());
    Ok(r)
}
