//! WebSocket through the gateway (`routes[].websocket`): a real tokio-tungstenite client
//! and server. Frames both ways (text and binary), the close handshake, authentication
//! and limits at the upgrade request (a refused upgrade is problem+json, never a 101),
//! the idle and total limits cutting the tunnel, `gatehouse_websocket_connections`
//! going up and down, the refusal on a route without `websocket:`, and a reload. The listener
//! allows one request per connection (`keepalive_requests: 1`), which must not break an
//! upgraded connection.

use crate::common;

use common::{free_port, Gateway, TOKEN};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{self, Message};

const KEY: &str = "ws-test-key";

/// An echo WebSocket server: every text or binary frame comes back as it was, and a
/// close is answered. It records the upgrade request's fields of each connection.
struct EchoServer {
    addr: SocketAddr,
    upgrades: Arc<Mutex<Vec<Fields>>>,
}

/// The fields of one upgrade request, as the server saw them.
type Fields = Vec<(String, String)>;

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let seen = upgrades.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    // tungstenite's callback type: its error variant is not ours to shrink.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, resp: Response| {
                        let fields = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect();
                        seen.lock().unwrap().push(fields);
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        // tungstenite answers a close itself; then the stream ends.
                        let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                        if echo && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer { addr, upgrades }
    }

    fn last_upgrade(&self) -> Fields {
        self.upgrades
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn config(up: SocketAddr) -> String {
    let hash = gatehouse::hash_key(KEY);
    format!(
        r#"version: 1
server: {{ threads: 1, grace_period: 5s }}
listeners:
  - {{ name: public, address: "127.0.0.1:{}", keepalive_requests: 1 }}
admin: {{ address: "127.0.0.1:{}", token: {TOKEN} }}
access_log: {{ path: "off" }}
upstreams:
  ws: {{ targets: [ {{ address: "{up}" }} ] }}
auth:
  api_key: {{ header: X-API-Key }}
consumers:
  - {{ id: acme, api_keys: ["{hash}"] }}
routes:
  - name: ws
    match: {{ path_prefix: /ws }}
    upstream: ws
    websocket: {{ idle_timeout: 4s, max_duration: 1h }}
  - name: keyed
    match: {{ path_prefix: /keyed }}
    upstream: ws
    auth: [api_key]
    rate_limit: {{ limit: 1/min, burst: 2, key: consumer }}
    websocket: {{}}
  - name: short
    match: {{ path_prefix: /short }}
    upstream: ws
    websocket: {{ idle_timeout: 1h, max_duration: 2s }}
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: ws }}
"#,
        free_port(),
        free_port(),
    )
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    gw: &Gateway,
    path: &str,
    key: Option<&str>,
) -> Result<Client, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", gw.addr())
        .into_client_request()
        .expect("request");
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake in time")?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

async fn next(ws: &mut Client) -> Option<Result<Message, tungstenite::Error>> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame or the end within 10 s")
}

async fn open_tunnels(gw: &Gateway, route: &str) -> f64 {
    gw.metrics()
        .await
        .get("gatehouse_websocket_connections", &[("route", route)])
        .unwrap_or(0.0)
}

/// Polls the gauge until it reads `want` (it is updated when the tunnel's request ends).
async fn wait_open(gw: &Gateway, route: &str, want: f64) {
    for _ in 0..100 {
        if open_tunnels(gw, route).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "gatehouse_websocket_connections{{route={route}}} stayed at {}, not {want}",
        open_tunnels(gw, route).await
    );
}

/// The refusal of an upgrade: its status and body, read from tungstenite's error.
fn refused(e: tungstenite::Error) -> (u16, String, String) {
    match e {
        tungstenite::Error::Http(resp) => {
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), ct, body)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_both_ways_and_close_handshake() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let mut ws = connect(&gw, "/ws/chat", None).await.expect("upgrade");
    let fields = up.last_upgrade();
    let field = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    assert_eq!(field("upgrade").as_deref(), Some("websocket"));
    assert!(field("connection").is_some_and(|c| c.contains("upgrade")));
    assert!(field("sec-websocket-key").is_some());
    assert!(field("x-request-id").is_some(), "the gateway's fields too");
    wait_open(&gw, "ws", 1.0).await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::text("hello")
    );
    let bin = vec![0u8, 1, 2, 255, 128];
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::binary(bin));
    // A large frame, several TCP segments on each hop.
    let big = "x".repeat(200_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text(big));

    // The close handshake: our close goes through and the server's answer comes back.
    ws.close(None).await.unwrap();
    let mut got_close = false;
    while let Some(m) = next(&mut ws).await {
        match m {
            Ok(Message::Close(_)) => got_close = true,
            Ok(other) => panic!("unexpected frame after close: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    assert!(got_close, "the server's close frame reached the client");
    wait_open(&gw, "ws", 0.0).await;

    // The listener's one request per connection did not stop the upgrade; a second
    // tunnel works the same.
    let mut ws = connect(&gw, "/ws/again", None)
        .await
        .expect("second upgrade");
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap().unwrap(),
        Message::text("again")
    );
    drop(ws);
    wait_open(&gw, "ws", 0.0).await;
}

#[tokio::test]
async fn auth_and_limits_apply_at_the_upgrade() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let upgrades = || up.upgrades.lock().unwrap().len();

    let (status, ct, body) = refused(connect(&gw, "/keyed", None).await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(ct, "application/problem+json");
    assert!(
        body.contains("https://gatehouse.dev/problems/unauthorized"),
        "{body}"
    );
    let (status, _, _) = refused(connect(&gw, "/keyed", Some("wrong")).await.unwrap_err());
    assert_eq!(status, 401);
    assert_eq!(
        upgrades(),
        0,
        "a refused upgrade never reaches the upstream"
    );

    // The burst of 2 allows two upgrades; the third is limited before it goes anywhere.
    for _ in 0..2 {
        let mut ws = connect(&gw, "/keyed", Some(KEY))
            .await
            .expect("keyed upgrade");
        ws.send(Message::text("k")).await.unwrap();
        assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text("k"));
        let fields = up.last_upgrade();
        assert!(fields
            .iter()
            .any(|(k, v)| k == "x-consumer-id" && v == "acme"));
    }
    let (status, ct, body) = refused(connect(&gw, "/keyed", Some(KEY)).await.unwrap_err());
    assert_eq!(status, 429);
    assert_eq!(ct, "application/problem+json");
    assert!(body.contains("rate-limited"), "{body}");
    assert_eq!(upgrades(), 2);
}

#[tokio::test]
async fn routes_without_websocket_refuse_the_upgrade() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let (status, ct, body) = refused(connect(&gw, "/plain", None).await.unwrap_err());
    assert_eq!(status, 400);
    assert_eq!(ct, "application/problem+json");
    assert!(body.contains("websocket-not-enabled"), "{body}");
    assert!(up.upgrades.lock().unwrap().is_empty());
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "websocket-not-enabled")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn idle_timeout_cuts_a_quiet_tunnel_but_not_a_busy_one() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let mut ws = connect(&gw, "/ws/idle", None).await.expect("upgrade");
    // Busy for longer than idle_timeout (4 s): a frame each way every 100 ms keeps it
    // (each gap is far below the limit, whatever the machine's load).
    for i in 0..50 {
        let m = Message::text(format!("tick {i}"));
        ws.send(m.clone()).await.unwrap();
        assert_eq!(
            next(&mut ws).await.unwrap().unwrap(),
            m,
            "tunnel cut while busy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_open(&gw, "ws", 1.0).await;
    // Then quiet: the gateway cuts it (no frame arrives, the stream ends).
    match next(&mut ws).await {
        None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("expected the tunnel to be cut, got {m:?}"),
    }
    wait_open(&gw, "ws", 0.0).await;
}

#[tokio::test]
async fn max_duration_cuts_a_busy_tunnel() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let mut ws = connect(&gw, "/short", None).await.expect("upgrade");
    let mut echoed = 0;
    let cut = loop {
        if ws.send(Message::text("busy")).await.is_err() {
            break true;
        }
        match next(&mut ws).await {
            Some(Ok(Message::Text(_))) => echoed += 1,
            _ => break true,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if echoed > 600 {
            break false;
        }
    };
    assert!(cut, "max_duration (2 s) never cut the tunnel");
    assert!(echoed >= 1, "frames went through before the cut");
    wait_open(&gw, "short", 0.0).await;
}

#[tokio::test]
async fn a_reload_turns_websocket_on_for_new_upgrades_and_keeps_open_tunnels() {
    let up = EchoServer::start().await;
    let gw = Gateway::start(&config(up.addr)).await;
    let mut open = connect(&gw, "/ws/kept", None).await.expect("upgrade");
    let (status, _, _) = refused(connect(&gw, "/plain", None).await.unwrap_err());
    assert_eq!(status, 400);
    let yaml = std::fs::read_to_string(&gw.config_path).expect("config");
    let on = yaml.replace(
        "  - { name: plain, match: { path_prefix: /plain }, upstream: ws }",
        "  - { name: plain, match: { path_prefix: /plain }, upstream: ws, websocket: {} }",
    );
    assert_ne!(on, yaml);
    std::fs::write(&gw.config_path, on).expect("write config");
    let r = gw.admin_post("/admin/reload", &serde_json::json!({})).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let mut ws = connect(&gw, "/plain", None)
        .await
        .expect("upgrade after reload");
    ws.send(Message::text("new")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap().unwrap(), Message::text("new"));
    wait_open(&gw, "plain", 1.0).await;
    // The tunnel opened before the reload goes on under the snapshot it started with.
    open.send(Message::text("old")).await.unwrap();
    assert_eq!(
        next(&mut open).await.unwrap().unwrap(),
        Message::text("old")
    );
}
