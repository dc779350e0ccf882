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
//! which has no per-request session to park.
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

use crate::error::Reject;
use crate::proxy::streaming::Tunnel;
use crate::proxy::Gateway;
use crate::runtime::Shared;
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
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
/// Pingora's own limit on header fields (`MAX_HEADERS` in its v1 parser).
const MAX_FIELDS: usize = 256;
/// After a refusal, the rest of what the client sends is read and dropped for this long
/// (and up to `LINGER_BYTES`) before closing, so the answer is not lost to a TCP reset
/// while the client is still writing (a 100 KiB head refused at 32 KiB).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One listener's connection settings, fixed at start (listener changes need an upgrade).
pub struct ListenerRt {
    pub addr: SocketAddr,
    pub h2c: bool,
    pub keepalive: Duration,
    /// Requests per connection (`keepalive_requests`).
    pub max_requests: Option<u32>,
    pub max_connections: Option<usize>,
    open: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
}

impl ListenerRt {
    pub fn new(l: &crate::config::model::Listener) -> Option<ListenerRt> {
        let m = crate::metrics::metrics();
        Some(ListenerRt {
            addr: l.address.parse().ok()?,
            h2c: l.http2 && l.tls.is_none(),
            keepalive: l.keepalive_timeout.0,
            max_requests: l.keepalive_requests,
            max_connections: l
                .max_connections
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
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
        App {
            proxy: Arc::new(proxy),
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
        mut stream: Stream,
        open: Open,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let l = open.listener();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            ServerApp::process_new(&self.proxy, stream, shutdown).await;
            return;
        }
        if l.h2c {
            let (header_timeout, _) = self.head_limits();
            let due = accepted + header_timeout;
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
                if pre == H2_PREFACE {
                    ServerApp::process_new(&self.proxy, stream, shutdown).await;
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

/// Refuses a TLS connection before its handshake when its listener is at
/// `max_connections` (Pingora runs the handshake before the app sees the stream, so
/// `App::process_new` alone would only refuse after paying for it). Connections still
/// handshaking are not counted; `App::process_new` checks again once they are done.
pub struct TlsGate(pub Arc<[ListenerRt]>);

#[async_trait]
impl PreTlsProcess for TlsGate {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        if let Some(l) = listener_of(&self.0, local).map(|i| &self.0[i]) {
            if l.max_connections
                .is_some_and(|max| l.open.load(Ordering::Acquire) >= max)
            {
                l.refused.inc();
                return pingora::Error::e_explain(
                    pingora::ErrorType::AcceptError,
                    "listener at max_connections",
                );
            }
        }
        Ok(())
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

enum HeadRead {
    /// The bytes read (the head and possibly more) and where the head ends.
    Done(BytesMut, usize),
    /// The client closed or the read failed mid-head: nobody to answer.
    Closed,
    /// Too large or too late; the partial head is for the access log.
    Refuse(Reject, BytesMut),
}

/// Reads until the head is complete, at most `limit` bytes, before `due`.
async fn read_head(stream: &mut Stream, first: &[u8], limit: usize, due: Instant) -> HeadRead {
    let mut head = BytesMut::from(first);
    let mut scan = 0;
    loop {
        if let Some(end) = head_end(&head, &mut scan) {
            if end > limit {
                return HeadRead::Refuse(Reject::HeadersTooLarge, head);
            }
            return HeadRead::Done(head, end);
        }
        if head.len() >= limit {
            return HeadRead::Refuse(Reject::HeadersTooLarge, head);
        }
        // Room for the next read grows with what came (2 KiB, then the head's size, up to
        // 16 KiB): a whole small head still arrives in one read, while a client that
        // trickles its head holds a 2–4 KiB buffer until the head deadline, not 16–32 KiB.
        let want = (limit - head.len()).min(head.len().clamp(2 * 1024, 16 * 1024));
        head.reserve(want);
        match timeout_at(due.into(), stream.read_buf(&mut (&mut head).limit(want))).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return HeadRead::Closed,
            Err(_) => return HeadRead::Refuse(Reject::RequestTimeout, head),
        }
    }
}

/// The end of the request head (just past its empty line), searching from `*scan` on.
/// Empty lines before the request line are skipped, as httparse (and RFC 9112 §2.2) do.
fn head_end(buf: &[u8], scan: &mut usize) -> Option<usize> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let from = (*scan).max(start);
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') => match buf.get(nl + 2) {
                Some(b'\n') => return Some(nl + 3),
                Some(_) => {}
                None => {
                    *scan = nl;
                    return None;
                }
            },
            Some(_) => {}
            None => {
                *scan = nl;
                return None;
            }
        }
        i = nl + 1;
    }
    *scan = buf.len();
    None
}

/// What the access log says about a refused head.
#[derive(Default)]
struct HeadInfo {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
}

impl HeadInfo {
    /// The request line of a head that may be incomplete.
    fn from_partial(buf: &[u8]) -> HeadInfo {
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(buf.len());
        let line_end = buf[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |e| start + e);
        let line = String::from_utf8_lossy(&buf[start..line_end]);
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().filter(|m| !m.is_empty()).map(clip);
        let path = parts.next().map(clip);
        HeadInfo {
            method,
            path,
            host: None,
        }
    }

    /// The method as a metric label: a registered method, or `OTHER`, so that invented
    /// methods in refused heads cannot create series.
    fn method_label(&self) -> &'static str {
        self.method
            .as_deref()
            .map_or("OTHER", crate::metrics::method_label)
    }
}

/// Access-log values are the client's bytes: long ones are cut.
fn clip(s: &str) -> String {
    const MAX: usize = 1024;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

enum Check {
    /// Pingora will take this head as it is; `upgrade`: it has an `Upgrade` field.
    Plain { upgrade: bool },
    /// Pingora may refuse it: ask its parser.
    Pingora(HeadInfo),
}

/// One httparse pass over a complete head. Anything Pingora's `read_request` could
/// refuse after httparse accepted it involves a framing field, `Host`, a target that is
/// not plain origin-form, or CONNECT; those heads (and the ones httparse refuses, which
/// Pingora may still accept after escaping the request line) are checked by Pingora.
fn check(head: &[u8]) -> Check {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(head);
    let info = || HeadInfo::from_partial(head);
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Check::Pingora(info()),
    }
    let info_with_host = || {
        let mut i = info();
        i.host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| clip(&String::from_utf8_lossy(h.value)));
        i
    };
    if req.method == Some("CONNECT") {
        return Check::Pingora(info_with_host());
    }
    let plain_target = req.path.is_some_and(|p| {
        p.starts_with('/')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
    });
    if !plain_target {
        return Check::Pingora(info_with_host());
    }
    let (mut hosts, mut lengths, mut upgrade) = (0, 0, false);
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 || h.value.contains(&b'@') {
                return Check::Pingora(info_with_host());
            }
        } else if n.eq_ignore_ascii_case(b"content-length") {
            // One plain decimal length (the usual POST) is what Pingora accepts as is;
            // lists, repeats and anything else go to its reconciliation rules.
            lengths += 1;
            let digits =
                (1..=18).contains(&h.value.len()) && h.value.iter().all(u8::is_ascii_digit);
            if lengths > 1 || !digits {
                return Check::Pingora(info_with_host());
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            return Check::Pingora(info_with_host());
        } else if n.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    Check::Plain { upgrade }
}

/// Runs Pingora's own request parser and validation over a complete head, on a
/// throwaway session over an empty in-memory stream (the head is its pipelined prefix,
/// so nothing is read). `Some(detail)` when Pingora refuses it.
async fn pingora_refusal(head: &[u8]) -> Option<String> {
    let io: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
    let mut probe = ServerSession::new_http1(io);
    probe.set_pipelined_prefix(BytesMut::from(head));
    match probe.read_request().await {
        Ok(true) => {
            if probe.req_header().method == http::Method::CONNECT {
                Some("CONNECT is not supported".into())
            } else {
                None
            }
        }
        Ok(false) => Some("the request head is incomplete".into()),
        // Pingora's context names the rule (never the client's bytes: the "buf:" part of
        // a parse error is dropped).
        Err(e) => Some(match e.context.as_ref().map(|c| c.as_str().to_string()) {
            Some(c) if !c.starts_with("buf:") && !c.is_empty() => {
                format!("the request head is malformed: {}", clip(&c))
            }
            _ => "the request head is malformed".into(),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn end(s: &[u8]) -> Option<usize> {
        let mut scan = 0;
        head_end(s, &mut scan)
    }

    #[test]
    fn head_ends() {
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(end(b"\r\n"), None);
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let full = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        for split in 1..full.len() {
            let mut scan = 0;
            let mut got = head_end(&full[..split], &mut scan);
            if got.is_none() {
                got = head_end(full, &mut scan);
            }
            assert_eq!(got, Some(full.len()), "split at {split}");
        }
    }

    #[test]
    fn only_unusual_heads_go_to_pingora() {
        for h in [
            &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 120\r\n\r\n",
        ] {
            assert!(
                matches!(check(h), Check::Plain { upgrade: false }),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
        for h in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"THIS IS NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(check(h), Check::Pingora(_)),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn upgrade_requests_are_told_apart() {
        let ws =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n";
        assert!(matches!(check(ws), Check::Plain { upgrade: true }));
        let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        assert!(matches!(check(plain), Check::Plain { upgrade: false }));
    }

    #[tokio::test]
    async fn pingora_verdicts() {
        assert_eq!(
            pingora_refusal(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n").await,
            None
        );
        assert!(pingora_refusal(b"THIS IS NOT HTTP\r\n\r\n").await.is_some());
        assert!(pingora_refusal(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
        )
        .await
        .is_some());
        assert!(
            pingora_refusal(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n")
                .await
                .is_some()
        );
    }
}
