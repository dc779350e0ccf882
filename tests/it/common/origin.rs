//! A scriptable origin for cache tests: each path answers what the test scripted
//! (status, header fields, body, delay, chunked framing), as a function of the request
//! and of how many times that path was asked. It counts requests per path, records
//! them, can be killed and restarted on its port (the same `server::Server` as the
//! upstreams), and stamps `Date` from a clock the test moves together with the gateway's
//! test clock (`cache_gateway` starts both at the same frozen instant, `advance` moves
//! both).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response};

use super::server::Server;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Sent without Content-Length, in two chunks.
    pub chunked: bool,
    /// Held until the test opens this gate: "the origin is still answering" as a state
    /// the test controls, instead of a delay it would have to out-wait.
    pub gate: Option<Gate>,
}

/// A latch the test opens once; replies that carry it wait for it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(tokio::sync::Notify, std::sync::atomic::AtomicBool)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        self.0 .1.store(true, Ordering::SeqCst);
        self.0 .0.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.0 .0.notified();
            if self.0 .1.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            chunked: false,
            gate: None,
        }
    }

    /// 200 with `Cache-Control: cc` (none when empty).
    pub fn ok(cc: &str, body: impl Into<Vec<u8>>) -> Reply {
        let r = Reply::new(200, body);
        if cc.is_empty() {
            r
        } else {
            r.header("cache-control", cc)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// Answers only once `gate` is opened.
    pub fn gated(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }
}

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The origin's `Date` clock when the request arrived.
    pub now: SystemTime,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The request body as received.
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// `(request, n)` → reply, where `n` counts this path's requests from 1.
pub type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

struct State {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    /// Where the `Date` clock stands still, in Unix ms (0: it follows the wall clock).
    date_frozen_ms: AtomicU64,
    date_offset_ms: AtomicU64,
}

impl State {
    fn now(&self) -> SystemTime {
        let base = match self.date_frozen_ms.load(Ordering::SeqCst) {
            0 => SystemTime::now(),
            ms => UNIX_EPOCH + Duration::from_millis(ms),
        };
        base + Duration::from_millis(self.date_offset_ms.load(Ordering::SeqCst))
    }
}

pub struct Origin {
    state: Arc<State>,
    pub port: u16,
    server: Server,
}

impl Origin {
    pub async fn start() -> Origin {
        let state = Arc::new(State {
            scripts: Mutex::new(HashMap::new()),
            hits: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            date_frozen_ms: AtomicU64::new(0),
            date_offset_ms: AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let server =
            Server::start("origin", 0, move |req| handle(handler_state.clone(), req)).await;
        Origin {
            state,
            port: server.port,
            server,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Scripts a path (exact path, query ignored).
    pub fn script(&self, path: &str, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), Arc::new(f));
    }

    /// Scripts a path with a fixed reply; the body gets `#n` appended so tests can tell
    /// which origin response they were served.
    pub fn set(&self, path: &str, reply: Reply) {
        self.script(path, move |_, n| {
            let mut r = reply.clone();
            r.body.extend_from_slice(format!("#{n}").as_bytes());
            r
        });
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn seen(&self, path: &str) -> Vec<Seen> {
        let all = self.state.seen.lock().unwrap();
        all.iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Moves the origin's `Date` clock, as the gateway's test clock is moved.
    pub fn advance_date(&self, by: Duration) {
        self.state
            .date_offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn now(&self) -> SystemTime {
        self.state.now()
    }

    /// Stops the `Date` clock at `at` (Unix seconds), or at its current time rounded down
    /// to the second; returns that instant (for the gateway's `GATEHOUSE_TEST_CLOCK`).
    /// From then on only `advance_date` moves it.
    pub fn freeze_date(&self, at: Option<u64>) -> u64 {
        let secs = at.unwrap_or_else(|| {
            self.now()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs()
        });
        self.state.date_offset_ms.store(0, Ordering::SeqCst);
        self.state
            .date_frozen_ms
            .store(secs * 1000, Ordering::SeqCst);
        secs
    }

    /// Kills the listener and every connection; the port then refuses connections.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Listens again on the same port, keeping scripts, counts and the `Date` clock.
    pub async fn restart(&self) {
        self.server.restart().await;
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let seen = Seen {
        now: state.now(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let n = {
        let mut hits = state.hits.lock().unwrap();
        let n = hits.entry(seen.path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    state.seen.lock().unwrap().push(seen.clone());
    let script = state.scripts.lock().unwrap().get(&seen.path).cloned();
    let reply = match script {
        Some(f) => f(&seen, n),
        None => Reply::new(404, "no script for this path"),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if let Some(gate) = &reply.gate {
        gate.wait().await;
    }
    let body: Body = if reply.chunked {
        let half = reply.body.len() / 2;
        let (a, b) = reply.body.split_at(half);
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::copy_from_slice(a))),
            Ok(Frame::data(Bytes::copy_from_slice(b))),
        ];
        StreamBody::new(futures::stream::iter(frames)).boxed()
    } else {
        Full::new(Bytes::from(reply.body.clone())).boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    let now = state.now();
    let h = r.headers_mut();
    h.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
    for (k, v) in &reply.headers {
        let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
        if name == hyper::header::DATE {
            h.insert(name, v.parse().unwrap());
        } else {
            h.append(name, v.parse().unwrap());
        }
    }
    Ok(r)
}

/// Flow-style route lines (one a line, any indentation, blank lines ignored) as the
/// items of a `routes:` list.
pub fn route_lines(routes: &str) -> String {
    routes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// A gateway with `cache:` (memory `memory`, the rest given) in front of `origin`, on a
/// test clock frozen at the instant the origin's `Date` clock is frozen at: both stand
/// still until `advance` moves them together. `routes` is the `routes:` list, one
/// flow-style route per line, each on upstream `o`.
pub async fn cache_gateway(origin: &Origin, cache: &str, routes: &str) -> super::Gateway {
    cache_gateway_with(origin, None, cache, routes, "").await
}

/// `cache_gateway` with both clocks frozen at `at` (Unix seconds; `None`: the current
/// second) and more top-level config (`tiers:`, `store:`, ...) before `routes:`.
pub async fn cache_gateway_with(
    origin: &Origin,
    at: Option<u64>,
    cache: &str,
    routes: &str,
    extra: &str,
) -> super::Gateway {
    let yaml = super::config(&format!(
        "cache: {cache}\nupstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\n{extra}routes:\n{}",
        origin.address(),
        route_lines(routes)
    ));
    let at = origin.freeze_date(at).to_string();
    super::Gateway::start_with_env(&yaml, &[super::test_clock(&at)]).await
}

/// Moves the gateway's clock and the origin's `Date` clock forward together.
pub async fn advance(gw: &super::Gateway, origin: &Origin, secs: u64) {
    gw.advance_clock(&format!("{secs}s")).await;
    origin.advance_date(Duration::from_secs(secs));
}

/// Sends `method url` with extra request headers, reduced to a `Resp`.
pub async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> super::Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = http.request(m, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    super::Resp::from_reqwest(r).await
}

/// The `Cache-Status` of a response ("" when absent).
pub fn cache_status(r: &super::Resp) -> String {
    r.header("cache-status").unwrap_or("").to_owned()
}
