//! Our own Pingora `ServerApp`: the connection loop around `pingora_proxy::http_proxy`.
//!
//! Pingora's blanket `ServerApp for T: HttpServerApp` reads the next request of a
//! keep-alive connection inside `HttpProxy::process_new_http`, so an idle connection
//! holds the proxy's boxed future, an HTTP/1 session and its buffers while it waits, and
//! it reads a request head with only a per-read timeout into a buffer of up to 1 MiB.
//! This loop replaces it for HTTP/1:
//!
//! 1. **Park.** Between two requests only the stream, the persistent settings and this
//!    future exist. It waits for the first bytes of the next request, the listener's
//!    `keepalive_timeout`, or shutdown (then the connection is closed quietly).
//! 2. **Read the head ourselves**, bounded by `server.max_header_size` and due within
//!    `server.header_timeout` (from accept for the first request, from its first byte
//!    for later ones). Over the bound: 431; late: 408; both problem+json, counted in
//!    `gatehouse_rejected_requests_total` and access-logged, then a lingering close.
//! 3. **Check it as Pingora's parser would.** Pingora answers its own parser refusals
//!    with an empty 400 and `Server: Pingora`, before any `ProxyHttp` phase runs. The
//!    head is parsed once with httparse (as Pingora does); only heads that parser
//!    refuses, or that carry what Pingora's `validate_request` looks at (framing fields
//!    other than one plain `Content-Length`, `Host` repeated or with userinfo, a target
//!    that is not plain origin-form, CONNECT), are run through Pingora's own
//!    `read_request` on a throwaway in-memory session, and refused by us if it refuses.
//! 4. **Hand over.** A fresh `ServerSession` gets the head as its pipelined prefix, so
//!    Pingora parses it without another read, and the proxy runs as before.
//!
//! HTTP/2 (ALPN h2 on TLS, prior-knowledge h2c on plaintext listeners with `http2:
//! true`) goes to Pingora's own loop: its per-connection state is the h2 connection,
//! which has no per-request session to park. Its preface is due within
//! `header_timeout`, and it is closed after `keepalive_timeout` with no open stream
//! (`h2.rs`).
//!
//! Each connection runs in a task of its own: Pingora's accept task (whose future is
//! sized for its whole accept path, TLS handshake state included) ends as soon as the
//! connection is handed over, instead of living as long as the connection.
//!
//! Measured (release build, one thread, 10,000 idle keep-alive connections): 82 MiB RSS
//! against 444 MiB with Pingora's own loop; 186 MiB with this loop inside Pingora's
//! accept task.
//!
//! What Pingora keeps while a connection is parked: the l4 `Stream` with its write
//! buffer (1460 bytes here) and, on TLS, the rustls connection's buffers. Pingora sizes
//! l4 buffers once at accept (`set_buffer` is crate-private) and cannot resize them in
//! place, so they cannot be released while idle. The l4 *read* buffer is set to zero
//! (`client_buffers` in lib.rs) because this loop reads heads into its own buffer and
//! Pingora reads bodies in 64 KiB chunks that bypass a small read buffer anyway.

mod h2;
mod head;

use crate::error::Reject;
use crate::proxy::streaming::Tunnel;
use crate::proxy::Gateway;
use crate::runtime::Shared;
use async_trait::async_trait;
use head::{check, pingora_refusal, read_head, Check, HeadInfo, HeadRead};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

/// The first read of every request head lands here, inside the connection's future,
/// so a parked connection owns no head buffer; most API request heads fit in one read.
const FIRST_READ: usize = 512;
/// After a refusal, the rest of what the client sends is read and dropped for this long
/// (and up to `LINGER_BYTES`) before closing, so the answer is not lost to a TCP reset
/// while the client is still writing (a 100 KiB head refused at 32 KiB).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One listener's connection settings, fixed at start (listener changes need an upgrade).
pub struct ListenerRt {
    pub addr: SocketAddr,
    pub h2c: bool,
    pub keepalive: Duration,
    /// Requests per connection (`keepalive_requests`).
    pub max_requests: Option<u32>,
    pub max_connections: Option<usize>,
    /// The TLS listener's acceptor: this loop runs the handshake (`tls_handshake`).
    tls: Option<Arc<Acceptor>>,
    open: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
}

impl ListenerRt {
    pub fn new(
        l: &crate::config::model::Listener,
        tls: Option<Arc<Acceptor>>,
    ) -> Option<ListenerRt> {
        let m = crate::metrics::metrics();
        Some(ListenerRt {
            addr: l.address.parse().ok()?,
            h2c: l.http2 && l.tls.is_none(),
            keepalive: l.keepalive_timeout.0,
            max_requests: l.keepalive_requests,
            max_connections: l
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            tls,
            open: AtomicUsize::new(0),
            gauge: m.downstream_connections.with_label_values(&[&l.name]),
            refused: m.downstream_refused.with_label_values(&[&l.name]),
        })
    }
}

/// Counts one open connection of a listener for as long as it lives.
struct Open {
    listeners: Arc<[ListenerRt]>,
    idx: usize,
}

impl Open {
    /// `None` when the listener is at `max_connections`.
    fn take(listeners: &Arc<[ListenerRt]>, idx: usize) -> Option<Open> {
        let l = &listeners[idx];
        let before = l.open.fetch_add(1, Ordering::AcqRel);
        if l.max_connections.is_some_and(|max| before >= max) {
            l.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        l.gauge.inc();
        Some(Open {
            listeners: listeners.clone(),
            idx,
        })
    }

    fn listener(&self) -> &ListenerRt {
        &self.listeners[self.idx]
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let l = self.listener();
        l.open.fetch_sub(1, Ordering::AcqRel);
        l.gauge.dec();
    }
}

pub struct App {
    proxy: Arc<HttpProxy<Gateway>>,
    /// Each listener's view of `proxy` for Pingora's h2 loop, by index (one per distinct
    /// `keepalive_timeout`, the h2 idle timeout: `h2.rs`).
    h2: Box<[Arc<h2::ListenerH2>]>,
    shared: Arc<Shared>,
    listeners: Arc<[ListenerRt]>,
}

impl App {
    /// `proxy` comes from `pingora::proxy::http_proxy`; its `server_options.h2c` must be
    /// on when any listener serves h2c (Pingora's h2 loop peeks for the preface again).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        shared: Arc<Shared>,
        listeners: Arc<[ListenerRt]>,
    ) -> App {
        let proxy = Arc::new(proxy);
        let mut made: Vec<(Duration, Arc<h2::ListenerH2>)> = Vec::new();
        let h2 = listeners
            .iter()
            .map(|l| match made.iter().find(|(k, _)| *k == l.keepalive) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = Arc::new(h2::ListenerH2::new(proxy.clone(), l.keepalive));
                    made.push((l.keepalive, a.clone()));
                    a
                }
            })
            .collect();
        App {
            proxy,
            h2,
            shared,
            listeners,
        }
    }

    fn head_limits(&self) -> (Duration, usize) {
        let snap = self.shared.snapshot.load();
        (
            snap.loaded.config.server.header_timeout.0,
            snap.max_header_size,
        )
    }

    /// One connection, from accept (and TLS handshake) to close.
    async fn serve(
        self: &Arc<Self>,
        stream: Stream,
        open: Open,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let l = open.listener();
        let h2 = &self.h2[open.idx];
        let (header_timeout, _) = self.head_limits();
        let due = accepted + header_timeout;
        let mut stream = match &l.tls {
            None => stream,
            // Boxed, as the h2 hand-offs below: this future lives as long as the
            // connection, and would otherwise be sized for the handshake's state (and
            // Pingora's h2 loop) even while an HTTP/1 connection is parked.
            Some(acceptor) => match Box::pin(tls_handshake(acceptor, stream, due)).await {
                Some(tls) => tls,
                None => return,
            },
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // The preface, read here under the head deadline (`h2.rs`); a connection
            // without it is closed quietly.
            let mut pre = [0u8; 24];
            match timeout_at(due.into(), stream.read_exact(&mut pre)).await {
                Ok(Ok(_)) if pre == h2::PREFACE => {}
                _ => return,
            }
            let stream: Stream = Box::new(h2::Rewound::new(stream));
            Box::pin(ServerApp::process_new(h2, stream, shutdown)).await;
            return;
        }
        if l.h2c {
            // Four bytes tell an h2 preface ("PRI ") from any HTTP/1 request line; only
            // then wait for the whole preface. Peeked bytes are put back for the reader.
            let mut p = [0u8; 4];
            match timeout_at(due.into(), stream.try_peek(&mut p)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            if &p == b"PRI " {
                let mut pre = [0u8; 24];
                match timeout_at(due.into(), stream.try_peek(&mut pre)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                if pre == h2::PREFACE {
                    Box::pin(ServerApp::process_new(h2, stream, shutdown)).await;
                    return;
                }
            }
        }
        self.serve_h1(stream, l, accepted, shutdown).await;
    }

    /// The HTTP/1 loop: park, read the head, check it, hand it to the proxy; repeat while
    /// the proxy gives the stream back.
    async fn serve_h1(
        &self,
        mut stream: Stream,
        l: &ListenerRt,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let mut stopping = shutdown.clone();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // One per connection, made for its first request that may upgrade, disarmed after
        // each request (`Tunnel::run`).
        let mut tunnel: Option<Arc<Tunnel>> = None;
        loop {
            let (header_timeout, limit) = self.head_limits();
            // Park: only `buf`, the stream and the settings live here while idle.
            let mut buf = [0u8; FIRST_READ];
            let idle_until = if first {
                accepted + header_timeout
            } else {
                Instant::now() + l.keepalive
            };
            let n = tokio::select! {
                biased;
                r = timeout_at(idle_until.into(), stream.read(&mut buf)) => match r {
                    Ok(Ok(n)) if n > 0 => n,
                    // Closed by the client, a read error, or idle past the keep-alive
                    // timeout (or, for a new connection, nothing within header_timeout):
                    // there is no request to answer.
                    _ => return,
                },
                // A stopping server closes parked connections (a new connection's first
                // request is still served, with keep-alive off).
                _ = stopped(&mut stopping), if !first => return,
            };
            // The request's start: accept for the first, its first byte for later ones.
            let started = if first { accepted } else { Instant::now() };
            let head_due = started + header_timeout;
            // Whether the request may become a tunnel: it names `Upgrade` (or is an unusual
            // head, checked by Pingora's parser, which is not looked into further).
            let mut may_upgrade = true;
            let head = match read_head(&mut stream, &buf[..n], limit, head_due).await {
                HeadRead::Done(head, end) => match check(&head[..end]) {
                    Check::Plain { upgrade } => {
                        may_upgrade = upgrade;
                        head
                    }
                    Check::Pingora(info) => match Box::pin(pingora_refusal(&head[..end])).await {
                        None => head,
                        Some(detail) => {
                            let reject = Reject::BadRequest(detail);
                            Box::pin(self.refuse(stream, reject, info, started)).await;
                            return;
                        }
                    },
                },
                HeadRead::Closed => return,
                HeadRead::Refuse(reject, partial) => {
                    let info = HeadInfo::from_partial(&partial);
                    Box::pin(self.refuse(stream, reject, info, started)).await;
                    return;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    if *shutdown.borrow() {
                        session.set_keepalive(None);
                    } else {
                        session.set_keepalive(Some(l.keepalive.as_secs().max(1)));
                    }
                    // Pingora counts reuses: N requests are N - 1 reuses.
                    session.set_keepalive_reuses_remaining(
                        l.max_requests.map(|n| n.saturating_sub(1)),
                    );
                }
            }
            session.set_pipelined_prefix(head);
            first = false;
            // A WebSocket tunnel's idle and total limits (`proxy::streaming`): the
            // request is dropped, both connections with it, when they run out. A request
            // that cannot upgrade runs without the tunnel's scope and watch (a task-local,
            // a `Notify` wait and two locks per request).
            let served = if may_upgrade {
                let t = tunnel.get_or_insert_with(Default::default).clone();
                t.run(self.proxy.process_new_http(session, shutdown)).await
            } else {
                self.proxy.process_new_http(session, shutdown).await
            };
            match served {
                Some(reused) => {
                    let (s, p) = reused.consume();
                    stream = s;
                    settings = p;
                }
                None => return,
            }
        }
    }

    /// Answers a refused request head with problem+json, counts and logs it, and closes.
    async fn refuse(&self, mut stream: Stream, reject: Reject, info: HeadInfo, started: Instant) {
        let request_id = crate::policy::headers::new_request_id();
        let snap = self.shared.snapshot.load();
        let server = &snap.loaded.config.server.server_header;
        let status = reject.status();
        let body = reject.body(&request_id);
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let date = pingora::protocols::http::date::get_cached_date();
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\n\
             connection: close\r\ndate: {}\r\n",
            body.len(),
            date.to_str().unwrap_or_default()
        );
        if !server.is_empty() {
            out.push_str("server: ");
            out.push_str(server);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if info.method.as_deref() != Some("HEAD") {
            out.push_str(&body);
        }
        // Counted and logged before the answer leaves, so whoever reads it sees the count.
        let m = crate::metrics::metrics();
        m.rejected.with_label_values(&[reject.slug()]).inc();
        crate::metrics::http_requests("unmatched", info.method_label(), status).inc();
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        log_refusal(&request_id, &info, status, &reject, client, started);
        let wrote = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(out.as_bytes()).await?;
            stream.flush().await
        })
        .await;
        if matches!(wrote, Ok(Ok(()))) {
            linger(stream).await;
        }
    }
}

/// The listener a connection arrived on, by its local address (a listener on an
/// unspecified address matches any local address with its port).
fn listener_of(listeners: &[ListenerRt], local: Option<SocketAddr>) -> Option<usize> {
    let first = if listeners.is_empty() { None } else { Some(0) };
    let Some(local) = local else {
        return first;
    };
    listeners
        .iter()
        .position(|l| l.addr == local)
        .or_else(|| {
            listeners
                .iter()
                .position(|l| l.addr.ip().is_unspecified() && l.addr.port() == local.port())
        })
        .or(first)
}

/// Runs a TLS listener's handshake, due by `due` (the connection's `header_timeout`);
/// `None` when it fails or is late (closed unanswered, as a silent HTTP/1 connection
/// is). Pingora hands the connection over as the plain l4 stream it accepted.
async fn tls_handshake(acceptor: &Acceptor, stream: Stream, due: Instant) -> Option<Stream> {
    let l4 = match stream.into_any().downcast::<L4Stream>() {
        Ok(l4) => *l4,
        Err(_) => {
            tracing::warn!("a TLS listener's connection is not a TCP stream");
            return None;
        }
    };
    match timeout_at(due.into(), acceptor.tls_handshake(l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done within header_timeout");
            None
        }
    }
}

/// Resolves once the server starts stopping.
async fn stopped(w: &mut ShutdownWatch) {
    while !*w.borrow_and_update() {
        if w.changed().await.is_err() {
            // The sender is gone: no shutdown will be announced this way.
            std::future::pending::<()>().await;
        }
    }
}

/// Closes our side, then reads and drops what the client still sends (bounded), so it
/// sees the answer rather than a reset.
async fn linger(mut stream: Stream) {
    let _ = AsyncWriteExt::shutdown(&mut stream).await;
    let until = tokio::time::Instant::now() + LINGER;
    let mut sink = vec![0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

fn log_refusal(
    request_id: &str,
    info: &HeadInfo,
    status: u16,
    reject: &Reject,
    client: Option<SocketAddr>,
    started: Instant,
) {
    if !crate::accesslog::enabled() {
        return;
    }
    let line = serde_json::json!({
        "timestamp": crate::accesslog::rfc3339(std::time::SystemTime::now()),
        "request_id": request_id,
        "route": "unmatched",
        "method": info.method,
        "host": info.host,
        "path": info.path,
        "status": status,
        "upstream": null,
        "upstream_target": null,
        "upstream_status": null,
        "upstream_ms": null,
        "total_ms": (started.elapsed().as_micros() as f64) / 1000.0,
        "attempts": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "client": client.map(|a| a.to_string()),
        "consumer": null,
        "error": null,
        "reject": reject.slug(),
    });
    crate::accesslog::write(&format!("{line}\n"));
}

#[async_trait]
impl ServerApp for App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let idx = listener_of(&self.listeners, local)?;
        let Some(open) = Open::take(&self.listeners, idx) else {
            // At max_connections: closed unanswered, without reading anything.
            self.listeners[idx].refused.inc();
            return None;
        };
        // The connection gets a task of its own, and Pingora's accept task ends here.
        // That task's future is sized for Pingora's whole accept path (the TLS handshake
        // state included), and would otherwise stay allocated for as long as the
        // connection is open, parked or not.
        let app = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.serve(stream, open, accepted, &shutdown).await });
        None
    }

    async fn cleanup(&self) {
        // Wakes Pingora's own waits (h2 connections) on shutdown, as its blanket app does.
        self.proxy.http_cleanup().await;
    }
}
