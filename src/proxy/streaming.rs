//! WebSocket tunnels and gRPC on the request path: what the phases in `proxy::mod` call
//! for `routes[].websocket` and `routes[].grpc`.
//!
//! **WebSocket.** Pingora forwards an HTTP/1.1 `Upgrade: websocket` request with its
//! `Connection: Upgrade`/`Upgrade` fields (its default `HttpUpstreamRequestPolicy`
//! keeps exactly the WebSocket upgrade), and once the upstream answers 101 it pumps the
//! bytes both ways until either side closes. Admission, authentication and limits run
//! on the upgrade request like on any other, so a refused upgrade gets the usual
//! problem+json 401/429 and never a 101. A route without `websocket:` refuses the
//! upgrade itself (400 `websocket-not-enabled`): a tunnel lives for hours, and it should
//! never get one without limits by accident. Pingora's loop has no timer of its own for
//! an upgraded connection (only per-read timeouts on each side, which would cut a
//! tunnel that is busy in one direction only), so the limits are a `Tunnel`: the
//! connection loop (`server`) runs each request with one in scope and drops the
//! request (both connections) when it is due: `idle_timeout` after the last frame in
//! either direction, or `max_duration` after the upgrade.
//!
//! **gRPC.** HTTP/2 to an `http2: true` upstream passes through as it is, trailers
//! included; `te: trailers` (a hop-by-hop field Pingora strips) is put back, since gRPC
//! servers may require it. The gateway's own refusals of a gRPC request are gRPC
//! statuses (`grpc_refusal`, written by `proxy::respond`). With `grpc: {web: true}` a
//! gRPC-web request (HTTP/1.1 or HTTP/2; `application/grpc-web[+proto]` binary or
//! `application/grpc-web-text[+proto]` base64) is bridged: its content type becomes `application/grpc[+proto]` upstream,
//! the response's becomes the client's again, and the upstream's trailers become the
//! gRPC-web trailer frame at the end of the body. Pingora's own bridge
//! (`pingora::protocols::http::bridge::grpc_web::GrpcWebCtx`, run as a downstream
//! module) is not used: modules run before `request_filter`, that is before routing,
//! so they cannot be enabled per route, and it has no text mode (it would turn
//! `application/grpc-web-text` into `application/grpc-text`). The framing it writes for
//! trailers is the one written here.

use crate::context::{Ctx, GrpcWeb, StreamState};
use crate::error::Reject;
use crate::runtime::Route;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

const GRPC: &str = "application/grpc";
const GRPC_WEB: &str = "application/grpc-web";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";

tokio::task_local! {
    /// The tunnel of the request the connection loop is running (HTTP/1 only: an h2
    /// stream runs in a task of Pingora's, where this is not set, and has no upgrade).
    static TUNNEL: Arc<Tunnel>;
}

/// The time limits of one connection's WebSocket tunnel, armed by the phases of an
/// accepted upgrade and watched by the connection loop.
#[derive(Default)]
pub struct Tunnel {
    state: parking_lot::Mutex<Option<Limits>>,
    armed: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct Limits {
    idle: Duration,
    last: Instant,
    until: Instant,
}

impl Limits {
    fn due(&self) -> Instant {
        self.until.min(self.last + self.idle)
    }
}

impl Tunnel {
    /// Runs one request of the connection (`fut`) with this tunnel in scope for its
    /// phases. `None` (the connection is closed, both sides) when an armed tunnel runs
    /// past its limits first. Disarmed afterwards, for the connection's next request.
    pub async fn run<T>(self: &Arc<Self>, fut: impl Future<Output = Option<T>>) -> Option<T> {
        let out = TUNNEL
            .scope(self.clone(), async {
                tokio::select! {
                    r = fut => r,
                    _ = self.due() => None,
                }
            })
            .await;
        self.state.lock().take();
        out
    }

    /// Resolves once an armed tunnel is due; pending while nothing is armed.
    async fn due(&self) {
        loop {
            let next = self.state.lock().as_ref().map(Limits::due);
            match next {
                // `notify_one` keeps a permit when nobody waits yet: an arm between the
                // check and this wait is not lost.
                None => self.armed.notified().await,
                Some(at) if Instant::now() >= at => return,
                Some(at) => tokio::time::sleep_until(at.into()).await,
            }
        }
    }

    /// Starts (or restarts) both limits from now, for the request running in scope.
    /// False outside a connection loop's request (nothing would watch them).
    fn arm(idle: Duration, max: Duration) -> bool {
        TUNNEL
            .try_with(|t| {
                let now = Instant::now();
                *t.state.lock() = Some(Limits {
                    idle,
                    last: now,
                    until: now + max,
                });
                t.armed.notify_one();
            })
            .is_ok()
    }

    /// A frame (some bytes) went through: the idle limit starts again.
    fn touch() {
        let _ = TUNNEL.try_with(|t| {
            if let Some(l) = t.state.lock().as_mut() {
                l.last = Instant::now();
            }
        });
    }
}

/// An HTTP/1.1 request asking to become a WebSocket (`Upgrade: websocket`).
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get_all(http::header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The request's gRPC and WebSocket facts, once it has a route: a WebSocket upgrade on a
/// route without `websocket:` is refused; a gRPC-web request on a `grpc.web` route is
/// marked for the bridge.
pub fn admit(req: &RequestHeader, ctx: &mut Ctx) -> Option<Reject> {
    let (websocket, grpc_web) = {
        let route = ctx.route()?;
        (route.websocket.is_some(), route.grpc_web)
    };
    if is_websocket_upgrade(req) {
        if !websocket {
            return Some(Reject::WebSocketNotEnabled);
        }
        ctx.stream.upgrade = true;
    }
    if grpc_web {
        ctx.stream.grpc_web = grpc_web_mode(req);
    }
    None
}

pub(super) fn content_type(h: &HeaderMap) -> &str {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web-text;...`: a
/// media type of the gRPC family (case-insensitive, as media types are).
fn has_prefix(ct: &str, prefix: &str) -> bool {
    ct.len() >= prefix.len()
        && ct.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn grpc_web_mode(req: &RequestHeader) -> GrpcWeb {
    let ct = content_type(&req.headers);
    if has_prefix(ct, GRPC_WEB_TEXT) {
        GrpcWeb::Text
    } else if has_prefix(ct, GRPC_WEB) {
        GrpcWeb::Binary
    } else {
        GrpcWeb::Off
    }
}

/// The content type a gRPC refusal of this request is sent with: the request's own
/// (parameters dropped), when it is a gRPC one.
pub fn grpc_content_type(req: &RequestHeader) -> Option<String> {
    let ct = content_type(&req.headers);
    if !is_grpc(ct) {
        return None;
    }
    let media = ct.split(';').next().unwrap_or(ct).trim();
    Some(media.to_ascii_lowercase())
}

/// Whether `ct` is of the gRPC family: what callers that only ask ask, without the
/// lower-cased copy `grpc_content_type` makes.
fn is_grpc(ct: &str) -> bool {
    // `application/grpcfoo` is not gRPC; `+proto`, `-web`, `-web-text+json`, `;` are.
    has_prefix(ct, GRPC) && {
        let rest = &ct[GRPC.len()..];
        rest.is_empty() || rest.starts_with(['+', '-', ';'])
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII, and `%` itself (gRPC over
/// HTTP/2, "Responses").
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A refusal of a gRPC request as gRPC has it: HTTP 200, trailers-only (the status in
/// the header block, no body), `grpc-status` from `Reject::grpc_status`, `grpc-message`
/// the problem's detail. `content_type` is the request's (gRPC or gRPC-web).
pub fn grpc_refusal(reject: &Reject, content_type: &str) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header("grpc-status", reject.grpc_status().to_string())?;
    resp.insert_header("grpc-message", grpc_message(&reject.detail()))?;
    resp.insert_header("cache-control", "no-store")?;
    Ok(resp)
}

/// The upstream request of a gRPC or bridged gRPC-web call.
pub fn upstream_request(req: &mut RequestHeader, st: &StreamState) -> pingora::Result<()> {
    let bridged = st.grpc_web != GrpcWeb::Off;
    if bridged {
        // `application/grpc-web-text+proto` -> `application/grpc+proto`.
        let from = if st.grpc_web == GrpcWeb::Text {
            GRPC_WEB_TEXT
        } else {
            GRPC_WEB
        };
        let ct = content_type(&req.headers);
        let upstream_ct = format!("{GRPC}{}", ct.get(from.len()..).unwrap_or(""));
        req.insert_header(http::header::CONTENT_TYPE, upstream_ct)?;
        if st.grpc_web == GrpcWeb::Text {
            // The body shrinks by a quarter as it is decoded.
            req.remove_header(&http::header::CONTENT_LENGTH);
        }
        // The gRPC-web client's protocol marker means nothing to a gRPC server.
        req.remove_header("x-grpc-web");
    }
    if bridged || is_grpc(content_type(&req.headers)) {
        // gRPC sends `te: trailers` (some servers refuse a call without it); Pingora
        // strips TE as hop-by-hop. "trailers" is the one value HTTP/2 allows, and on an
        // HTTP/1.1 hop it only says trailers are welcome.
        req.insert_header(http::header::TE, "trailers")?;
    }
    Ok(())
}

/// The response header of a bridged call: gRPC's content type becomes gRPC-web's (text
/// or binary, as the client asked), and the body is framed by chunks on HTTP/1.1 (its
/// end carries the trailer frame, so no length is known).
pub fn response_header(
    resp: &mut ResponseHeader,
    st: &StreamState,
    downstream_h1: bool,
) -> pingora::Result<()> {
    let mode = st.grpc_web;
    if mode == GrpcWeb::Off || resp.status.is_informational() {
        return Ok(());
    }
    let ct = content_type(&resp.headers);
    if !has_prefix(ct, GRPC) || has_prefix(ct, GRPC_WEB) {
        // Not a gRPC answer (an HTTP error page): it goes as it is.
        return Ok(());
    }
    let to = if mode == GrpcWeb::Text {
        GRPC_WEB_TEXT
    } else {
        GRPC_WEB
    };
    let web_ct = format!("{to}{}", ct.get(GRPC.len()..).unwrap_or(""));
    resp.insert_header(http::header::CONTENT_TYPE, web_ct)?;
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if downstream_h1 {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// A request body chunk: a tunnel's frames keep it alive; a gRPC-web text body is
/// decoded (4 base64 characters at a time; the rest waits for the next chunk).
pub fn request_body(
    body: &mut Option<Bytes>,
    end: bool,
    st: &mut StreamState,
) -> Result<(), Reject> {
    if st.upgrade {
        Tunnel::touch();
        return Ok(());
    }
    if st.grpc_web != GrpcWeb::Text {
        return Ok(());
    }
    let mut text = std::mem::take(&mut st.text_carry);
    if let Some(b) = body.as_ref() {
        text.extend_from_slice(b);
    }
    let whole = text.len() / 4 * 4;
    let decoded = decode_quartets(&text[..whole])
        .ok_or_else(|| Reject::BadRequest("the grpc-web-text body is not base64".into()))?;
    st.text_carry = text[whole..].to_vec();
    if end && !st.text_carry.is_empty() {
        return Err(Reject::BadRequest(
            "the grpc-web-text body ends inside a base64 quartet".into(),
        ));
    }
    *body = Some(Bytes::from(decoded));
    Ok(())
}

/// `request_body_filter`: `request_body` for a request that was not upgraded; a
/// gRPC-web text body that is not base64 fails the exchange, answered 400.
pub fn decode_request_body(
    body: &mut Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    if let Err(reject) = request_body(body, end, &mut ctx.stream) {
        ctx.response.reject = Some(reject);
        return pingora::Error::e_explain(
            pingora::ErrorType::HTTPStatus(400),
            "undecodable grpc-web-text",
        );
    }
    Ok(())
}

/// Decodes whole base64 quartets where padding may end any of them (a client may send
/// each message as its own padded base64 string, concatenated).
fn decode_quartets(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut run_start = 0;
    for (i, q) in text.chunks(4).enumerate() {
        if q.contains(&b'=') {
            let end = (i + 1) * 4;
            base64::engine::general_purpose::STANDARD
                .decode_vec(&text[run_start..end], &mut out)
                .ok()?;
            run_start = end;
        }
    }
    base64::engine::general_purpose::STANDARD
        .decode_vec(&text[run_start..], &mut out)
        .ok()?;
    Some(out)
}

/// A response body chunk: a tunnel's frames keep it alive; a gRPC-web text response is
/// encoded chunk by chunk, each padded, so that every message reaches the client as soon
/// as it came (gRPC-web text decoders take padded base64 strings one after another).
pub fn response_body(body: &mut Option<Bytes>, st: &StreamState) {
    // An upgrade request's answer: the tunnel's frames, or (when the upstream refused
    // the upgrade) an ordinary body, which the idle limit then bounds between chunks.
    if st.upgrade {
        Tunnel::touch();
        return;
    }
    if st.grpc_web != GrpcWeb::Text {
        return;
    }
    if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
        *body = Some(Bytes::from(
            base64::engine::general_purpose::STANDARD.encode(b),
        ));
    }
}

/// The upstream's trailers of a bridged call, as the gRPC-web trailer frame that ends the
/// body: flag 0x80, a 4-byte big-endian length, then `name:value\r\n` lines (base64 in
/// text mode). `None`: not bridged, the trailers go as they are.
pub fn trailers(trailers: &HeaderMap, st: &StreamState) -> Option<Bytes> {
    if st.grpc_web == GrpcWeb::Off {
        return None;
    }
    let mut block = BytesMut::with_capacity(128);
    for (name, value) in trailers {
        block.put_slice(name.as_str().as_bytes());
        block.put_u8(b':');
        block.put_slice(value.as_bytes());
        block.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    // A header block is far below 4 GiB (h2 bounds it); saturate rather than panic.
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    Some(if st.grpc_web == GrpcWeb::Text {
        Bytes::from(base64::engine::general_purpose::STANDARD.encode(&frame))
    } else {
        frame.freeze()
    })
}

/// `grpc-timeout` of a gRPC request (gRPC over HTTP/2, "Requests": 1 to 8 digits and a
/// unit, `H` `M` `S` `m` `u` `n`). `None` when absent or malformed (then ignored, as a
/// gRPC server would refuse it itself).
pub fn grpc_timeout(req: &RequestHeader) -> Option<Duration> {
    if !is_grpc(content_type(&req.headers)) {
        return None;
    }
    let v = req.headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A gRPC call's `grpc-timeout` lowers (never raises) the upstream's connect and
/// per-read and per-write timeouts for this call: a call whose upstream has not
/// answered within its deadline gets DEADLINE_EXCEEDED from the gateway rather than
/// waiting for the route's timeouts. The field is forwarded as it came, so the upstream
/// enforces the whole deadline of a streaming call; the gateway bounds each wait.
pub fn apply_grpc_timeout(req: &RequestHeader, o: &mut pingora::upstreams::peer::PeerOptions) {
    let Some(d) = grpc_timeout(req) else {
        return;
    };
    // Pingora's timers need something to wait for: at least a millisecond.
    let d = d.max(Duration::from_millis(1));
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
        &mut o.write_timeout,
    ] {
        *t = Some(t.map_or(d, |cur| cur.min(d)));
    }
}

/// gRPC bodies are never compressed by a route's `compression`: gRPC compresses its
/// messages itself (`grpc-encoding`), and a `Content-Encoding` over its length-prefixed
/// frames is not gRPC any more. (Event streams may be: the encoder flushes each chunk.)
pub fn never_compressed(resp: &ResponseHeader) -> bool {
    has_prefix(content_type(&resp.headers), GRPC)
}

/// The upstream peer of an accepted upgrade request: no per-read timeout on the
/// upstream side (a quiet upstream is normal in a tunnel busy the other way), the
/// tunnel's limits instead, from now (they bound the wait for the 101 too).
pub fn upgrade_peer(options: &mut pingora::upstreams::peer::PeerOptions, route: &Route) {
    if let Some(ws) = &route.websocket {
        if Tunnel::arm(ws.idle, ws.max) {
            options.read_timeout = None;
        }
    }
}

/// The 101 of an accepted upgrade: counted as an open WebSocket while the request
/// lives, its limits restarted from now, and no per-read timeout on the client side
/// either (Pingora's default of 60 s would cut a tunnel busy the other way).
pub fn upgraded(session: &mut pingora::proxy::Session, resp: &ResponseHeader, ctx: &mut Ctx) {
    if !ctx.stream.upgrade || resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some(ws) = ctx.route().and_then(|r| r.websocket.clone()) else {
        return;
    };
    if Tunnel::arm(ws.idle, ws.max) {
        session.set_read_timeout(None);
    }
    ctx.stream.websocket = Some(crate::metrics::GaugeGuard::inc(ws.open));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/svc/M", None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        r
    }

    #[test]
    fn grpc_content_types() {
        assert_eq!(
            grpc_content_type(&req("application/grpc")).as_deref(),
            Some("application/grpc")
        );
        assert_eq!(
            grpc_content_type(&req("Application/gRPC-Web-Text+proto; x=y")).as_deref(),
            Some("application/grpc-web-text+proto")
        );
        assert_eq!(grpc_content_type(&req("application/grpcx")), None);
        assert_eq!(grpc_content_type(&req("application/json")), None);
        assert_eq!(
            grpc_web_mode(&req("application/grpc-web+proto")),
            GrpcWeb::Binary
        );
        assert_eq!(
            grpc_web_mode(&req("application/grpc-web-text")),
            GrpcWeb::Text
        );
        assert_eq!(grpc_web_mode(&req("application/grpc")), GrpcWeb::Off);
    }

    #[test]
    fn websocket_upgrades() {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        assert!(!is_websocket_upgrade(&r));
        r.insert_header("upgrade", "WebSocket").unwrap();
        assert!(is_websocket_upgrade(&r));
        r.insert_header("upgrade", "h2c").unwrap();
        assert!(!is_websocket_upgrade(&r));
    }

    #[test]
    fn grpc_timeouts() {
        let mut r = req("application/grpc");
        assert_eq!(grpc_timeout(&r), None);
        for (v, want) in [
            ("300m", Some(Duration::from_millis(300))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789S", None),
            ("m", None),
            ("10x", None),
            ("-1S", None),
        ] {
            r.insert_header("grpc-timeout", v).unwrap();
            assert_eq!(grpc_timeout(&r), want, "{v}");
        }
        let mut o = pingora::upstreams::peer::PeerOptions::new();
        o.read_timeout = Some(Duration::from_millis(100));
        r.insert_header("grpc-timeout", "2S").unwrap();
        apply_grpc_timeout(&r, &mut o);
        assert_eq!(
            o.read_timeout,
            Some(Duration::from_millis(100)),
            "never raised"
        );
        assert_eq!(o.write_timeout, Some(Duration::from_secs(2)));
        let mut plain = req("application/json");
        plain.insert_header("grpc-timeout", "1m").unwrap();
        assert_eq!(grpc_timeout(&plain), None, "only gRPC requests");
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(grpc_message("a 100% é"), "a 100%25 %C3%A9");
    }

    #[test]
    fn padded_segments_decode() {
        let e = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!("{}{}{}", e(b"ab"), e(b"cdef"), e(b"g"));
        assert_eq!(decode_quartets(text.as_bytes()).unwrap(), b"abcdefg");
        assert!(decode_quartets(b"a*==").is_none());
    }

    #[test]
    fn text_bodies_decode_across_chunks() {
        let mut st = StreamState {
            grpc_web: GrpcWeb::Text,
            ..StreamState::default()
        };
        let text = base64::engine::general_purpose::STANDARD.encode(b"\x00\x00\x00\x00\x03abc");
        let (a, b) = text.as_bytes().split_at(5);
        let mut out = Vec::new();
        for (chunk, end) in [(a, false), (b, true)] {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            request_body(&mut body, end, &mut st).unwrap();
            out.extend_from_slice(&body.unwrap());
        }
        assert_eq!(out, b"\x00\x00\x00\x00\x03abc");
        let mut body = Some(Bytes::from_static(b"QUJD"));
        st.text_carry = b"Q".to_vec();
        assert!(request_body(&mut body, true, &mut st).is_err());
    }

    #[test]
    fn trailer_frame() {
        let mut st = StreamState::default();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(trailers(&t, &st), None);
        st.grpc_web = GrpcWeb::Binary;
        let f = trailers(&t, &st).unwrap();
        assert_eq!(&f[..], b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n");
    }
}
