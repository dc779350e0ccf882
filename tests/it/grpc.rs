//! gRPC through the gateway: a real tonic server (HTTP/2, h2c) behind an `http2: true`
//! upstream, and a real tonic client on the gateway's h2c and TLS (ALPN h2) listeners.
//! Unary and server-streaming calls, a status from the upstream's trailers reaching the
//! client, the gateway's own refusals as gRPC statuses (missing API key ->
//! UNAUTHENTICATED, a slow upstream past the route's read timeout ->
//! DEADLINE_EXCEEDED), and the gRPC-web bridge (`grpc: {web: true}`) in binary and
//! base64 text mode over HTTP/1.1 (and binary over HTTP/2). The messages are hand-written prost structs and the
//! service a hand-written tower service (no protoc).

use crate::common;

use base64::Engine;
use common::{certs_dir, free_port, Gateway, TOKEN};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::codec::ProstCodec;
use tonic::codegen::{http, BoxFuture, Service};

const KEY: &str = "grpc-test-key";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Server streaming: how many replies.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// The server waits this long before answering.
    #[prost(uint64, tag = "3")]
    pub delay_ms: u64,
    /// Server streaming: after `count` replies, end with this status code (0: OK).
    #[prost(int32, tag = "4")]
    pub end_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The upstream's view of the request's `x-consumer-id` and `te` fields.
    #[prost(string, tag = "2")]
    pub consumer: String,
    #[prost(string, tag = "3")]
    pub te: String,
}

fn reply(req: &tonic::Request<EchoRequest>, message: String) -> EchoReply {
    let md = |k: &str| {
        req.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    EchoReply {
        message,
        consumer: md("x-consumer-id"),
        te: md("te"),
    }
}

struct Unary;

// tonic's own method traits (what its generated code implements): no `poll_ready`.
impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let m = req.get_ref().clone();
            tokio::time::sleep(Duration::from_millis(m.delay_ms)).await;
            if m.message == "not-found" {
                return Err(tonic::Status::not_found("no such thing"));
            }
            Ok(tonic::Response::new(reply(
                &req,
                format!("echo: {}", m.message),
            )))
        })
    }
}

type ReplyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

struct Streaming;

impl tonic::server::ServerStreamingService<EchoRequest> for Streaming {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<tonic::Response<ReplyStream>, tonic::Status>;

    // `Result<_, tonic::Status>` is tonic's stream item type: its size is not ours to change.
    #[allow(clippy::result_large_err)]
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let m = req.get_ref().clone();
            let mut items: Vec<Result<EchoReply, tonic::Status>> = (0..m.count)
                .map(|i| Ok(reply(&req, format!("{} #{i}", m.message))))
                .collect();
            if m.end_code != 0 {
                items.push(Err(tonic::Status::new(
                    tonic::Code::from(m.end_code),
                    "stream ended by the server",
                )));
            }
            let s: ReplyStream = Box::pin(futures::stream::iter(items));
            Ok(tonic::Response::new(s))
        })
    }
}

/// The service `test.Echo` with methods `Unary` and `Stream`.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl<B> Service<http::Request<B>> for Echo
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/Stream" => grpc.server_streaming(Streaming, req).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(Echo)
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

struct Setup {
    gw: Gateway,
    /// A plain HTTP upstream (h2c) that answers after 3 s, behind the route `slow`.
    slow: common::Upstream,
    h2c: SocketAddr,
    tls: SocketAddr,
}

async fn setup() -> Setup {
    let up = start_upstream().await;
    let slow = common::Upstream::start("slow").await;
    slow.set_delay(Duration::from_secs(3));
    let hash = gatehouse::hash_key(KEY);
    let (h2c, tls) = (free_port(), free_port());
    let yaml = format!(
        r#"version: 1
server: {{ threads: 1, grace_period: 5s }}
listeners:
  - {{ name: public, address: "127.0.0.1:{h2c}", http2: true }}
  - name: public-tls
    address: "127.0.0.1:{tls}"
    tls:
      certificates: [ {{ cert: "{}", key: "{}" }} ]
      http2: true
admin: {{ address: "127.0.0.1:{}", token: {TOKEN} }}
access_log: {{ path: "off" }}
upstreams:
  g: {{ targets: [ {{ address: "{up}" }} ], http2: true }}
  slow: {{ targets: [ {{ address: "{slow}" }} ], http2: true }}
auth:
  api_key: {{ header: X-API-Key }}
consumers:
  - {{ id: acme, api_keys: ["{hash}"] }}
routes:
  - {{ name: slow, match: {{ path_prefix: /test.Echo/, headers: {{ x-slow: "1" }} }}, upstream: slow }}
  - name: keyed
    match: {{ path_prefix: /test.Echo/, headers: {{ x-keyed: "1" }} }}
    upstream: g
    auth: [api_key]
  - name: echo
    match: {{ path_prefix: /test.Echo/ }}
    upstream: g
    timeouts: {{ read: 500ms }}
    grpc: {{ web: true }}
"#,
        cert("a.test.pem"),
        cert("a.test.key"),
        free_port(),
        slow = slow.address(),
    );
    let gw = Gateway::start(&yaml).await;
    Setup {
        gw,
        slow,
        h2c: format!("127.0.0.1:{h2c}").parse().unwrap(),
        tls: format!("127.0.0.1:{tls}").parse().unwrap(),
    }
}

async fn h2c_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("h2c connect")
}

async fn tls_channel(addr: SocketAddr) -> tonic::transport::Channel {
    let ca = std::fs::read(certs_dir().join("ca.pem")).expect("ca.pem");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("a.test");
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("tls connect")
}

fn request(m: EchoRequest, meta: &[(&'static str, &str)]) -> tonic::Request<EchoRequest> {
    let mut r = tonic::Request::new(m);
    for (k, v) in meta {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// A ready client on `ch`, and the path of `test.Echo`'s `method`.
async fn call_setup(
    ch: &tonic::transport::Channel,
    method: &str,
) -> (
    tonic::client::Grpc<tonic::transport::Channel>,
    http::uri::PathAndQuery,
) {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.expect("ready");
    let path = format!("/test.Echo/{method}").parse().expect("path");
    (g, path)
}

async fn unary(
    ch: &tonic::transport::Channel,
    m: EchoRequest,
    meta: &[(&'static str, &str)],
) -> Result<EchoReply, tonic::Status> {
    let (mut g, path) = call_setup(ch, "Unary").await;
    g.unary(request(m, meta), path, ProstCodec::default())
        .await
        .map(|r| r.into_inner())
}

async fn stream(
    ch: &tonic::transport::Channel,
    m: EchoRequest,
) -> (Vec<EchoReply>, Result<(), tonic::Status>) {
    let (mut g, path) = call_setup(ch, "Stream").await;
    let mut s = match g
        .server_streaming(request(m, &[]), path, ProstCodec::default())
        .await
    {
        Ok(r) => r.into_inner(),
        Err(st) => return (Vec::new(), Err(st)),
    };
    let mut got = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return (got, Ok(())),
            Err(st) => return (got, Err(st)),
        }
    }
}

fn msg(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn unary_and_server_streaming_over_h2c_and_tls() {
    let s = setup().await;
    for (name, ch) in [
        ("h2c", h2c_channel(s.h2c).await),
        ("tls", tls_channel(s.tls).await),
    ] {
        let r = unary(&ch, msg("hi"), &[])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.message, "echo: hi", "{name}");
        assert_eq!(
            r.te, "trailers",
            "{name}: te: trailers reaches the gRPC server"
        );

        let (got, end) = stream(
            &ch,
            EchoRequest {
                message: "s".into(),
                count: 3,
                ..Default::default()
            },
        )
        .await;
        end.unwrap_or_else(|e| panic!("{name}: {e}"));
        let texts: Vec<&str> = got.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(texts, ["s #0", "s #1", "s #2"], "{name}");

        // A status in the upstream's trailers (after two messages) reaches the client.
        let (got, end) = stream(
            &ch,
            EchoRequest {
                message: "t".into(),
                count: 2,
                end_code: tonic::Code::Aborted as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(got.len(), 2, "{name}");
        let st = end.expect_err("the stream ends with the upstream's status");
        assert_eq!(st.code(), tonic::Code::Aborted, "{name}");
        assert_eq!(st.message(), "stream ended by the server", "{name}");

        // A trailers-only error from the upstream.
        let st = unary(&ch, msg("not-found"), &[]).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::NotFound, "{name}");
        assert_eq!(st.message(), "no such thing", "{name}");
    }
}

#[tokio::test]
async fn refusals_become_grpc_statuses() {
    let s = setup().await;
    let ch = h2c_channel(s.h2c).await;
    let st = unary(&ch, msg("x"), &[("x-keyed", "1")]).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert_eq!(st.message(), "this route requires a credential");
    let st = unary(&ch, msg("x"), &[("x-keyed", "1"), ("x-api-key", "wrong")])
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated);
    let r = unary(&ch, msg("x"), &[("x-keyed", "1"), ("x-api-key", KEY)])
        .await
        .expect("keyed call");
    assert_eq!(r.consumer, "acme");

    // Past the route's read timeout (500 ms): the gateway's 504 is DEADLINE_EXCEEDED.
    let slow = EchoRequest {
        message: "slow".into(),
        delay_ms: 3_000,
        ..Default::default()
    };
    let st = unary(&ch, slow, &[]).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::DeadlineExceeded, "{st:?}");

    // The client's own deadline (`grpc-timeout`) bounds the wait on an upstream that has
    // no route timeout of its own: DEADLINE_EXCEEDED from the gateway. (Sent by a plain
    // HTTP client: tonic's would give up at the deadline itself, before the gateway.)
    let r = grpc_web(
        s.h2c,
        "Unary",
        "application/grpc-web+proto",
        frame(&msg("late")),
        &[("x-slow", "1"), ("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("4"), "{:?}", r.headers);
    assert_eq!(s.slow.hits(), 1, "the call reached the upstream");

    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "unauthorized")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "gateway-timeout")]
        ),
        Some(2.0)
    );
}

/// One gRPC message frame: flag 0, 4-byte length, the message.
fn frame(m: &EchoRequest) -> Vec<u8> {
    use prost::Message;
    let body = m.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The frames of a gRPC-web body: (flag, payload) each.
fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert!(b.len() >= 5 + len, "truncated frame");
        out.push((b[0], b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    assert!(b.is_empty(), "bytes after the last frame");
    out
}

/// Concatenated padded base64 strings (as a gRPC-web text response is), decoded.
fn decode_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, q) in text.chunks(4).enumerate() {
        if q.contains(&b'=') || (i + 1) * 4 >= text.len() {
            let end = ((i + 1) * 4).min(text.len());
            base64::engine::general_purpose::STANDARD
                .decode_vec(&text[start..end], &mut out)
                .expect("base64");
            start = end;
        }
    }
    out
}

fn replies(fs: &[(u8, Vec<u8>)]) -> (Vec<String>, String) {
    use prost::Message;
    let mut msgs = Vec::new();
    let mut trailer = String::new();
    for (flag, payload) in fs {
        if flag & 0x80 != 0 {
            trailer = String::from_utf8_lossy(payload).into_owned();
        } else {
            msgs.push(EchoReply::decode(&payload[..]).expect("reply").message);
        }
    }
    (msgs, trailer)
}

async fn grpc_web(
    addr: SocketAddr,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> common::Resp {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client
        .post(format!("http://{addr}/test.Echo/{method}"))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    common::Resp::from_reqwest(req.send().await.expect("grpc-web call")).await
}

#[tokio::test]
async fn grpc_web_binary_and_text_over_http1_and_http2() {
    let s = setup().await;
    // Binary, unary.
    let r = grpc_web(
        s.h2c,
        "Unary",
        "application/grpc-web+proto",
        frame(&msg("web")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    // tonic answers `application/grpc` whatever the request's subtype: the bridge keeps
    // the upstream's subtype, in the gRPC-web family.
    assert_eq!(r.header("content-type"), Some("application/grpc-web"));
    let (msgs, trailer) = replies(&frames(&r.body));
    assert_eq!(msgs, ["echo: web"]);
    assert!(trailer.contains("grpc-status:0"), "{trailer:?}");

    // Binary, server streaming, ending with a status in the trailer frame.
    let req = EchoRequest {
        message: "w".into(),
        count: 3,
        end_code: tonic::Code::Aborted as i32,
        ..Default::default()
    };
    let r = grpc_web(s.h2c, "Stream", "application/grpc-web", frame(&req), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc-web"));
    let (msgs, trailer) = replies(&frames(&r.body));
    assert_eq!(msgs, ["w #0", "w #1", "w #2"]);
    assert!(trailer.contains("grpc-status:10"), "{trailer:?}");
    assert!(
        trailer.contains("grpc-message:stream%20ended%20by%20the%20server"),
        "{trailer:?}"
    );

    // Text (base64 both ways), server streaming.
    let req = EchoRequest {
        message: "t".into(),
        count: 2,
        ..Default::default()
    };
    let body = base64::engine::general_purpose::STANDARD.encode(frame(&req));
    let r = grpc_web(
        s.h2c,
        "Stream",
        "application/grpc-web-text+proto",
        body.into_bytes(),
        &[("accept", "application/grpc-web-text")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc-web-text"));
    assert!(
        r.body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)),
        "a text response is base64: {}",
        r.text()
    );
    let (msgs, trailer) = replies(&frames(&decode_text(&r.body)));
    assert_eq!(msgs, ["t #0", "t #1"]);
    assert!(trailer.contains("grpc-status:0"), "{trailer:?}");

    // Text that is not base64: the gateway's refusal, as a gRPC status.
    let r = grpc_web(
        s.h2c,
        "Unary",
        "application/grpc-web-text",
        b"***!".to_vec(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("3"), "{:?}", r.headers);

    // The gateway's refusal of a gRPC-web call: HTTP 200, the status in the header.
    let r = grpc_web(
        s.h2c,
        "Unary",
        "application/grpc-web+proto",
        frame(&msg("k")),
        &[("x-keyed", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("16"));
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    assert!(r.body.is_empty());

    // gRPC-web over HTTP/2 (prior knowledge, the h2c listener) is bridged the same way.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = h2
        .post(format!("http://{}/test.Echo/Unary", s.h2c))
        .header("content-type", "application/grpc-web+proto")
        .body(frame(&msg("over h2")))
        .send()
        .await
        .expect("grpc-web over h2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let r = common::Resp::from_reqwest(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc-web"));
    let (msgs, trailer) = replies(&frames(&r.body));
    assert_eq!(msgs, ["echo: over h2"]);
    assert!(trailer.contains("grpc-status:0"), "{trailer:?}");
}
