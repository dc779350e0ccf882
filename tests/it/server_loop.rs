//! The connection loop (src/server): parked keep-alive connections, the keep-alive
//! timeout and request limit, the request-head deadline and size bound, max_connections,
//! Pingora's parser refusals as problem+json, the Server field, h2c beside HTTP/1.1 on a
//! plaintext listener, and shutdown closing parked connections. Real sockets on loopback.

use crate::common;

use common::{free_port, Gateway, Upstream, TOKEN};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One listener named `public` with `listener` extra keys, `server` extra keys, the
/// access log in the test directory (`access.log`), and one route to `up`.
fn config(server: &str, listener: &str, up: &Upstream) -> String {
    format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s{server} }}\n\
         listeners:\n  - {{ name: public, address: \"127.0.0.1:{}\"{listener} }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: access.log }}\n\
         upstreams:\n  u: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        free_port(),
        free_port(),
        up.address()
    )
}

/// The test process and the gateway it starts hold one descriptor per connection.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A response read off a kept-alive connection: status, fields (lowercase names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` body (what the gateway sends here).
async fn read_answer(s: &mut TcpStream) -> Result<Answer, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed before a response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed inside the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn ask(s: &mut TcpStream, path: &str) -> Result<Answer, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(20), read_answer(s))
        .await
        .map_err(|_| format!("no answer to {path} within 20 s"))?
}

/// True once the peer has closed: a read returns EOF or a reset.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.metrics().await.get(name, labels).unwrap_or(0.0)
}

/// Polls a metric until it equals `want` (the gateway updates gauges when it notices a
/// close, which follows the client's close by a moment).
async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = 0.0;
    for _ in 0..200 {
        last = metric(gw, name, labels).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}{labels:?}: wanted {want}, still {last}");
}

fn access_log(gw: &Gateway) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the access log has a line matching `pred` (the writer flushes every 10 ms).
async fn wait_log_line(gw: &Gateway, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..200 {
        if access_log(gw).iter().any(&pred) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access-log line for {what}: {:?}", access_log(gw));
}

fn assert_problem(a: &Answer, status: u16, slug: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{a:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&a.body).expect("problem body is JSON");
    assert_eq!(
        v["type"],
        format!("https://gatehouse.dev/problems/{slug}"),
        "{v}"
    );
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(
        v["request_id"].as_str(),
        a.header("x-request-id"),
        "request_id matches X-Request-ID"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_parked_connections_stay_usable() {
    raise_fd_limit();
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config("", "", &up)).await;
    let addr = gw.addr();
    const N: usize = 1000;
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let a = ask(&mut s, &format!("/first/{i}"))
            .await
            .expect("first answer");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), Some("keep-alive"));
        conns.push(s);
    }
    // All of them are open and idle (parked) at once.
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "public")],
        N as f64,
    )
    .await;
    let hits = up.hits();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let a = ask(&mut s, &format!("/second/{i}")).await?;
                Ok::<u16, String>(a.status)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("second answer"), 200);
    }
    assert_eq!(
        up.hits(),
        hits + N,
        "every parked connection was served again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_timeout_closes_idle_connections() {
    let up = Upstream::start("u").await;
    // Two listeners: a 1 s keep-alive timeout and the 60 s default.
    let short = free_port();
    let long = free_port();
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s }}\n\
         listeners:\n\
         \x20 - {{ name: short, address: \"127.0.0.1:{short}\", keepalive_timeout: 1s }}\n\
         \x20 - {{ name: long, address: \"127.0.0.1:{long}\" }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: \"off\" }}\n\
         upstreams:\n  u: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        free_port(),
        up.address()
    );
    let gw = Gateway::start(&yaml).await;
    let mut s = TcpStream::connect(("127.0.0.1", short)).await.unwrap();
    let mut l = TcpStream::connect(("127.0.0.1", long)).await.unwrap();
    assert_eq!(ask(&mut s, "/a").await.unwrap().status, 200);
    assert_eq!(ask(&mut l, "/a").await.unwrap().status, 200);
    // The short listener's idle connection is closed by the gateway...
    assert!(
        closed_within(&mut s, Duration::from_secs(15)).await,
        "idle connection on the 1 s listener was not closed"
    );
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "short")],
        0.0,
    )
    .await;
    // ...while the one on the default listener, idle as long, still serves.
    assert_eq!(ask(&mut l, "/b").await.unwrap().status, 200);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_downstream_connections",
            &[("listener", "long")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_requests_limits_requests_per_connection() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config("", ", keepalive_requests: 3", &up)).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    for i in 1..=3 {
        let a = ask(&mut s, &format!("/{i}")).await.unwrap();
        assert_eq!(a.status, 200);
        let want = if i < 3 { "keep-alive" } else { "close" };
        assert_eq!(a.header("connection"), Some(want), "answer {i}");
    }
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    // The limit counts per connection: a new one gets three more.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let a = ask(&mut s, "/again").await.unwrap();
    assert_eq!(a.header("connection"), Some("keep-alive"));
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_head_is_cut_after_header_timeout() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(", header_timeout: 1s", "", &up)).await;
    let mut slow = TcpStream::connect(gw.addr()).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Trickle one header byte at a time, forever; a normal request on another
    // connection is served meanwhile.
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..600 {
            if wr.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut ok = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(ask(&mut ok, "/normal").await.unwrap().status, 200);
    let mut buf = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    trickle.abort();
    assert!(got.is_ok(), "the trickling connection was never cut");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("/problems/request-timeout"), "{text}");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_rejected_requests_total",
            &[("reason", "request-timeout")]
        )
        .await,
        1.0
    );
    wait_log_line(&gw, "the 408", |l| {
        l["status"] == 408 && l["reject"] == "request-timeout" && l["path"] == "/slow"
    })
    .await;
    // The normal connection is still usable.
    assert_eq!(ask(&mut ok, "/normal-again").await.unwrap().status, 200);
    assert!(
        up.requests().iter().all(|r| r.path != "/slow"),
        "the cut request reached the upstream"
    );
}

/// `server.body_timeout` with `body_min_rate`: a body that stalls, or trickles slower than
/// the rate, is answered 408 `request-timeout` (counted and logged) and the connection
/// closed; one that keeps coming faster than the rate is never cut, however long it takes.
#[tokio::test(flavor = "multi_thread")]
async fn slow_bodies_are_cut_after_body_timeout() {
    let up = Upstream::start("u").await;
    // A second route reads its body whole in `request_filter` (a JSON transform).
    let yaml = config(", body_timeout: 1s, body_min_rate: 100", "", &up).replace(
        "routes:\n",
        "routes:\n  - { name: json, match: { path_prefix: /json }, upstream: u, \
         request_body: { json: { set: { /x: 1 } } } }\n",
    );
    let gw = Gateway::start(&yaml).await;
    let post = |path: &str, len: usize| {
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    // Sends `chunk` every `every`, `times` times, then reads the answer (and waits for
    // the close) for up to 20 s.
    async fn send(
        gw: &Gateway,
        head: String,
        chunk: &'static [u8],
        every: Duration,
        times: usize,
    ) -> String {
        let s = TcpStream::connect(gw.addr()).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..times {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            // Held open (not half-closed) until the answer is read.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(wr);
        });
        let mut buf = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
        writer.abort();
        assert!(got.is_ok(), "the connection was never closed");
        String::from_utf8_lossy(&buf).into_owned()
    }
    // Ten bytes of a hundred, then nothing.
    let stalled = send(&gw, post("/stall", 100), b"0123456789", Duration::ZERO, 1).await;
    // One byte every 200 ms: 5 bytes/s against a floor of 100 (a space: the JSON route
    // reads it as whitespace).
    let trickle = |head: String| send(&gw, head, b" ", Duration::from_millis(200), 100);
    let trickled = trickle(post("/trickle", 1000)).await;
    // An `Upgrade` field does not take a body out of the deadline (no 101 came).
    let upgrade =
        trickle(post("/upgrade", 1000).replace("\r\n\r\n", "\r\nUpgrade: x\r\n\r\n")).await;
    // A transformed body, read whole before anything goes upstream.
    let json_type = "\r\nContent-Type: application/json\r\n\r\n";
    let json = trickle(post("/json", 1000).replace("\r\n\r\n", json_type)).await;
    for (what, text) in [
        ("stalled", &stalled),
        ("trickled", &trickled),
        ("upgrade", &upgrade),
        ("json", &json),
    ] {
        assert!(text.starts_with("HTTP/1.1 408 "), "{what}: {text}");
        assert!(text.contains("application/problem+json"), "{what}: {text}");
        assert!(text.contains("/problems/request-timeout"), "{what}: {text}");
        assert!(text.contains("request body"), "{what}: {text}");
    }
    // 40 bytes every 100 ms (400 bytes/s) for 2 s: twice body_timeout, always ahead of
    // its deadline (one second more per 100 bytes).
    let steady = send(
        &gw,
        post("/steady", 800),
        &[b'y'; 40],
        Duration::from_millis(100),
        20,
    )
    .await;
    assert!(steady.starts_with("HTTP/1.1 200 "), "{steady}");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_rejected_requests_total",
            &[("reason", "request-timeout")]
        )
        .await,
        4.0
    );
    for path in ["/stall", "/trickle", "/upgrade", "/json"] {
        wait_log_line(&gw, "the 408", |l| {
            l["status"] == 408 && l["reject"] == "request-timeout" && l["path"] == path
        })
        .await;
    }
    // The body streams upstream as it comes, so the cut ones reached it begun: never
    // whole.
    let whole: Vec<_> = up
        .requests()
        .iter()
        .filter(|r| {
            matches!(
                (r.path.as_str(), r.body_len),
                ("/stall", 100) | ("/trickle", 1000) | ("/steady", 800)
            )
        })
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        whole,
        ["/steady"],
        "only the steady body went through whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_head_is_refused_at_the_bound() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(", max_header_size: 4KiB", "", &up)).await;
    // Under the bound: served.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /small HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(3000)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut s).await.unwrap().status, 200);
    // Over it: the head is never finished, yet 431 comes as soon as the bound is
    // passed (the gateway does not wait for, or buffer, the rest).
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /big HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}",
        "a".repeat(5000)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
        .await
        .expect("no 431 before the head ended")
        .unwrap();
    assert_problem(&a, 431, "headers-too-large");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_rejected_requests_total",
            &[("reason", "headers-too-large")]
        )
        .await,
        1.0
    );
    wait_log_line(&gw, "the 431", |l| {
        l["status"] == 431 && l["path"] == "/big"
    })
    .await;
    assert!(up.requests().iter().all(|r| r.path != "/big"));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_refuses_at_accept_and_counts() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config("", ", max_connections: 2", &up)).await;
    let mut a = TcpStream::connect(gw.addr()).await.unwrap();
    let mut b = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(ask(&mut a, "/a").await.unwrap().status, 200);
    assert_eq!(ask(&mut b, "/b").await.unwrap().status, 200);
    // The third is closed unanswered.
    let mut c = TcpStream::connect(gw.addr()).await.unwrap();
    let _ = c
        .write_all(b"GET /c HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(closed_within(&mut c, Duration::from_secs(10)).await);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_downstream_connections_refused_total",
            &[("listener", "public")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_downstream_connections",
            &[("listener", "public")]
        )
        .await,
        2.0
    );
    // The two admitted ones still work; once one closes, a new connection is admitted.
    assert_eq!(ask(&mut a, "/a2").await.unwrap().status, 200);
    drop(b);
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "public")],
        1.0,
    )
    .await;
    let mut d = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(ask(&mut d, "/d").await.unwrap().status, 200);
    assert!(up.requests().iter().all(|r| r.path != "/c"));
}

/// Sends `raw` on a fresh connection and reads the answer.
async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_answer(&mut s))
        .await
        .expect("an answer")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn parser_refusals_are_problem_json_counted_and_logged() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config("", "", &up)).await;
    let cases: [(&str, &[u8]); 3] = [
        (
            "space before the colon",
            b"POST /te HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n"),
        (
            "two Host fields",
            b"GET /hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let a = send_raw(gw.addr(), raw).await;
        assert_problem(&a, 400, "bad-request");
        assert_eq!(a.header("server"), None, "{what}: no Server field");
        assert_eq!(a.header("connection"), Some("close"), "{what}");
    }
    assert_eq!(
        metric(
            &gw,
            "gatehouse_rejected_requests_total",
            &[("reason", "bad-request")]
        )
        .await,
        3.0
    );
    wait_log_line(&gw, "the Transfer-Encoding refusal", |l| {
        l["status"] == 400 && l["path"] == "/te" && l["reject"] == "bad-request"
    })
    .await;
    wait_log_line(&gw, "the garbage line", |l| {
        l["status"] == 400 && l["method"] == "THIS"
    })
    .await;
    // An ordinary answer has no Server field either (and the upstream was not asked
    // for any of the refused ones).
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let ok = ask(&mut s, "/fine").await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("server"), None);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_header_applies_to_every_answer() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(", server_header: \"edge/1\"", "", &up)).await;
    let refused = send_raw(gw.addr(), b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(refused.header("server"), Some("edge/1"));
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(
        ask(&mut s, "/x").await.unwrap().header("server"),
        Some("edge/1")
    );
    // A refusal written by the proxy phases (both framings at once).
    let framing = send_raw(
        gw.addr(),
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_problem(&framing, 400, "bad-request");
    assert_eq!(framing.header("server"), Some("edge/1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_beside_http1() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config("", ", http2: true", &up)).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = h2.get(gw.url("/h2")).send().await.expect("h2c request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // Several streams on that one connection.
    let many: Vec<_> = (0..10)
        .map(|i| h2.get(gw.url(&format!("/h2/{i}"))).send())
        .collect();
    for r in futures::future::join_all(many).await {
        assert_eq!(r.expect("h2c stream").status(), 200);
    }
    // HTTP/1.1 on the same listener, kept alive across requests.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    for i in 0..3 {
        let a = ask(&mut s, &format!("/h1/{i}")).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), Some("keep-alive"));
    }
    assert_eq!(up.hits(), 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_parked_connections_and_answers_in_flight_with_close() {
    let up = Upstream::start("u").await;
    let mut gw = Gateway::start(&config("", "", &up)).await;
    let mut parked = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(ask(&mut parked, "/a").await.unwrap().status, 200);
    let mut busy = TcpStream::connect(gw.addr()).await.unwrap();
    assert_eq!(ask(&mut busy, "/b").await.unwrap().status, 200);
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "public")],
        2.0,
    )
    .await;
    // A request in flight when SIGTERM arrives.
    up.set_delay(Duration::from_millis(800));
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..100 {
        if up.inflight() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.inflight(), 1, "the slow request reached the upstream");
    gw.signal("TERM");
    let a = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut busy))
        .await
        .expect("the in-flight request was answered")
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"), "drain says close");
    assert!(closed_within(&mut busy, Duration::from_secs(10)).await);
    assert!(
        closed_within(&mut parked, Duration::from_secs(10)).await,
        "a parked connection outlived SIGTERM"
    );
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway did not exit cleanly after SIGTERM: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_before_closing_says_close() {
    // Nothing listens on the upstream's port: the request fails upstream, the
    // connection is not reused, and the answer says so.
    let dead = free_port();
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s }}\n\
         listeners:\n  - {{ name: public, address: \"127.0.0.1:{}\" }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: \"off\" }}\n\
         upstreams:\n  u: {{ targets: [ {{ address: \"127.0.0.1:{dead}\" }} ], retries: 0 }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        free_port(),
        free_port(),
    );
    let gw = Gateway::start(&yaml).await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    let a = ask(&mut s, "/x").await.unwrap();
    assert!(a.status == 502 || a.status == 503, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}

#[test]
fn connection_keys_are_checked_with_their_paths() {
    let yaml = format!(
        "version: 1\n\
         server: {{ header_timeout: 0s, body_timeout: 2h, send_timeout: 50ms, server_header: \"a\\tb\" }}\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   address: \"127.0.0.1:{}\"\n\
         \x20   http2: true\n\
         \x20   max_connections: 0\n\
         \x20   keepalive_timeout: 0s\n\
         \x20   keepalive_requests: 0\n\
         \x20   tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ] }}\n\
         upstreams:\n  u: {{ targets: [ {{ address: \"127.0.0.1:1\" }} ] }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        free_port(),
        common::certs_dir().join("a.test.pem").display(),
        common::certs_dir().join("a.test.key").display(),
    );
    let (code, out) = common::gateway::check(&yaml, &[]);
    assert_eq!(code, Some(1), "{out}");
    for path in [
        "server.header_timeout",
        "server.body_timeout",
        "server.send_timeout",
        "server.server_header",
        "listeners[0].http2",
        "listeners[0].max_connections",
        "listeners[0].keepalive_timeout",
        "listeners[0].keepalive_requests",
    ] {
        assert!(out.contains(path), "no error for {path}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_on_tls_refuses_before_the_handshake() {
    let up = Upstream::start("u").await;
    let certs = common::certs_dir();
    let port = free_port();
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s }}\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   address: \"127.0.0.1:{port}\"\n\
         \x20   max_connections: 1\n\
         \x20   tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ], http2: true }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: \"off\" }}\n\
         upstreams:\n  u: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        certs.join("a.test.pem").display(),
        certs.join("a.test.key").display(),
        free_port(),
        up.address()
    );
    let gw = Gateway::start(&yaml).await;
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let https = |h2: bool| {
        let b = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .resolve("a.test", gw.addr())
            .pool_max_idle_per_host(1);
        if h2 { b } else { b.http1_only() }.build().unwrap()
    };
    let url = format!("https://a.test:{port}/x");
    // The one allowed connection: HTTP/2 through ALPN, several requests on it.
    let first = https(true);
    for _ in 0..3 {
        let r = first.get(&url).send().await.expect("first TLS connection");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
    }
    // A raw TCP connection that sends nothing is closed at once: no ClientHello is
    // awaited (Pingora would wait up to 60 s for one).
    let mut raw = TcpStream::connect(gw.addr()).await.unwrap();
    assert!(
        closed_within(&mut raw, Duration::from_secs(5)).await,
        "refused before the handshake"
    );
    // A second client needs a second connection: refused the same way.
    let second = https(false);
    assert!(
        second.get(&url).send().await.is_err(),
        "second connection admitted"
    );
    assert!(
        metric(
            &gw,
            "gatehouse_downstream_connections_refused_total",
            &[("listener", "tls")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_downstream_connections",
            &[("listener", "tls")]
        )
        .await,
        1.0
    );
    // Once the first goes away, a new one is admitted.
    drop(first);
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "tls")],
        0.0,
    )
    .await;
    let r = https(false).get(&url).send().await.expect("admitted again");
    assert_eq!(r.status(), 200);
}

/// A rustls client trusting the test CA, offering only `alpn`, connected to `port` as
/// `a.test`.
async fn tls_connect(port: u16, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(common::certs_dir().join("ca.pem")).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// One HTTP/2 request on a connection whose client keeps its handle (so only the
/// server can end the connection); returns the status and whether the connection then
/// ended within `within`.
async fn h2_then_idle<T>(io: T, uri: &str, within: Duration) -> (u16, bool)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("h2 ready");
    let req = http::Request::get(uri).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).expect("send");
    let resp = resp.await.expect("h2 response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let ended = tokio::time::timeout(within, conn).await.is_ok();
    drop(send);
    (status, ended)
}

/// Sends `req` on an h2 connection with the first bytes of its body, then nothing more;
/// the status of the answer, which must come within `within`.
async fn h2_stalled(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    req: http::Request<()>,
    first: &'static [u8],
    within: Duration,
) -> u16 {
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(first), false)
        .unwrap();
    let resp = tokio::time::timeout(within, resp).await.unwrap().unwrap();
    resp.status().as_u16()
}

/// HTTP/2 and TLS have HTTP/1's deadlines: the TLS handshake and the h2 connection
/// preface are due within `header_timeout` of accept (Pingora's own loop waits 60 s for
/// a ClientHello and for ever for a preface), and an h2 connection with no open stream is
/// closed after the listener's `keepalive_timeout`, while one whose stream waits on a
/// slow upstream for longer is kept. Both on TLS (ALPN h2) and h2c. An h2 body is due
/// as an HTTP/1 one is (`server.body_timeout`).
#[tokio::test(flavor = "multi_thread")]
async fn http2_and_tls_connections_have_head_and_idle_deadlines() {
    let up = Upstream::start("u").await;
    let certs = common::certs_dir();
    let one = Upstream::start("one").await;
    let other = Upstream::start("other").await;
    let tls_port = free_port();
    let h2c_port = free_port();
    let long_port = free_port();
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s, header_timeout: 1s, body_timeout: 1s }}\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   address: \"127.0.0.1:{tls_port}\"\n\
         \x20   keepalive_timeout: 1s\n\
         \x20   tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ], http2: true }}\n\
         \x20 - {{ name: h2c, address: \"127.0.0.1:{h2c_port}\", http2: true, keepalive_timeout: 1s }}\n\
         \x20 - {{ name: long, address: \"127.0.0.1:{long_port}\", http2: true }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: access.log }}\n\
         upstreams:\n\
         \x20 u: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         \x20 two: {{ targets: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], retries: 1, timeouts: {{ read: 2s }} }}\n\
         routes:\n\
         \x20 - {{ name: stall, match: {{ path_prefix: /stall }}, upstream: two }}\n\
         \x20 - {{ name: json, match: {{ path_prefix: /json }}, upstream: u, request_body: {{ json: {{ set: {{ /x: 1 }} }} }} }}\n\
         \x20 - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}\n",
        certs.join("a.test.pem").display(),
        certs.join("a.test.key").display(),
        free_port(),
        up.address(),
        one.address(),
        other.address()
    );
    let gw = Gateway::start(&yaml).await;
    let within = Duration::from_secs(15);
    // An h2c connection on the listener with the 60 s default, idle from here on.
    let tcp = TcpStream::connect(("127.0.0.1", long_port)).await.unwrap();
    let (long, long_conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let long_conn = tokio::spawn(long_conn);
    let mut long = long.ready().await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://a.test{path}"))
            .body(())
            .unwrap()
    };
    let (r, _) = long.send_request(get("/long"), true).unwrap();
    assert_eq!(r.await.unwrap().status(), 200);

    // No ClientHello.
    let mut raw = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    assert!(
        closed_within(&mut raw, within).await,
        "a TLS connection without a ClientHello was kept"
    );
    // Half a ClientHello: a record header announcing more than is sent.
    let mut raw = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0xf0, 0x01])
        .await
        .unwrap();
    assert!(
        closed_within(&mut raw, within).await,
        "a TLS connection with half a ClientHello was kept"
    );
    // TLS done with ALPN h2, then no preface.
    let mut tls = tls_connect(tls_port, b"h2").await;
    let mut b = [0u8; 256];
    let silent = tokio::time::timeout(within, async {
        loop {
            match tls.read(&mut b).await {
                // The server's SETTINGS may come first.
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    })
    .await;
    assert!(
        silent.is_ok(),
        "an h2 connection without a preface was kept"
    );
    // h2c: half a preface.
    let mut raw = TcpStream::connect(("127.0.0.1", h2c_port)).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(
        closed_within(&mut raw, within).await,
        "an h2c connection with half a preface was kept"
    );

    // A stream that waits 3 s on the upstream (three keep-alive timeouts) keeps its
    // connection; once it is answered and the connection idles, the gateway closes it.
    let hits = up.hits();
    let tls = tls_connect(tls_port, b"h2").await;
    let (status, ended) = h2_then_idle(tls, "https://a.test/slow?delay_ms=3000", within).await;
    assert_eq!(status, 200, "the slow stream's connection was cut");
    assert!(ended, "an idle h2 connection (TLS) was kept");
    let tcp = TcpStream::connect(("127.0.0.1", h2c_port)).await.unwrap();
    let (status, ended) = h2_then_idle(tcp, "http://a.test/slow?delay_ms=3000", within).await;
    assert_eq!(status, 200, "the slow stream's connection was cut (h2c)");
    assert!(ended, "an idle h2c connection was kept");
    assert_eq!(up.hits(), hits + 2);
    // The connection on the default listener, idle for longer than both of those, is
    // still open and serves.
    assert!(
        !long_conn.is_finished(),
        "the 60 s listener's h2 connection was closed"
    );
    let (r, _) = long.send_request(get("/long"), true).unwrap();
    assert_eq!(r.await.unwrap().status(), 200);
    // An HTTP/2 body that trickles (10 bytes every 200 ms against the 500 B/s default
    // rate) is cut with the same 408 as an HTTP/1 one.
    let tcp = TcpStream::connect(("127.0.0.1", h2c_port)).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post("http://a.test/upload")
        .header("content-length", "100000")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    let trickle = async {
        loop {
            if body
                .send_data(bytes::Bytes::from_static(&[b'a'; 10]), false)
                .is_err()
            {
                // The stream was ended by the gateway.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let resp = tokio::time::timeout(within, async {
        tokio::select! {
            r = resp => r,
            _ = trickle => unreachable!(),
        }
    })
    .await
    .expect("no answer to a trickled h2 body")
    .expect("h2 response");
    assert_eq!(resp.status(), 408);
    wait_log_line(&gw, "the trickled h2 body", |l| {
        l["path"] == "/upload" && l["reject"] == "request-timeout"
    })
    .await;
    // gRPC is not under it: a client-streaming call trickles its messages for as long as
    // it lasts (here 3 s, three body timeouts).
    let hits = up.hits();
    let req = http::Request::post("http://a.test/grpc.Svc/Stream")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    for _ in 0..15 {
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 1, b'a']), false)
            .expect("the gRPC stream was cut");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    body.send_data(bytes::Bytes::new(), true).unwrap();
    let resp = tokio::time::timeout(within, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "a streaming gRPC request was cut");
    assert_eq!(up.hits(), hits + 1);
    // An h2 body that stops altogether ends when the upstream's read timeout (2 s) runs
    // out, as the client's 408, tried once: the other target is not given it (PUT is
    // idempotent, and the upstream allows a retry).
    let before = one.hits() + other.hits();
    let req = http::Request::put("http://a.test/stall")
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let status = h2_stalled(&mut send, req, b"0123456789", within).await;
    assert_eq!(status, 408, "a stalled h2 body");
    wait_log_line(&gw, "the stalled h2 body", |l| {
        l["path"] == "/stall" && l["reject"] == "request-timeout"
    })
    .await;
    assert_eq!(
        one.hits() + other.hits(),
        before + 1,
        "the stalled body was retried"
    );
    // A route that reads the body whole (a transform) before any upstream is connected:
    // a stall is cut at the body deadline itself.
    let req = http::Request::post("http://a.test/json")
        .header("content-length", "1000")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let status = h2_stalled(&mut send, req, b"{\"a\":", within).await;
    assert_eq!(status, 408, "a stalled h2 body on a transform route");
    // HTTP/2 names the host in `:authority`: the access log has it.
    wait_log_line(&gw, "the h2 request", |l| {
        l["path"] == "/slow" && l["host"] == "a.test"
    })
    .await;
    for name in ["tls", "h2c"] {
        wait_metric(
            &gw,
            "gatehouse_downstream_connections",
            &[("listener", name)],
            0.0,
        )
        .await;
    }
}

/// `server.send_timeout`: a client that stops reading its response is cut once a write to
/// it makes no progress for that long (Pingora's default is to wait for ever, holding the
/// session and the upstream connection), counted and logged; a client that reads gets
/// all of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_after_send_timeout() {
    use common::origin::{Origin, Reply};
    const BIG: usize = 32 << 20;
    let origin = Origin::start().await;
    origin.script("/big", |_, _| Reply::new(200, vec![b'x'; BIG]));
    origin.set("/small", Reply::new(200, "small"));
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s, send_timeout: 1s }}\n\
         listeners:\n  - {{ name: public, address: \"127.0.0.1:{}\", http2: true }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {TOKEN} }}\n\
         access_log: {{ path: access.log }}\n\
         upstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\n\
         routes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: o }}\n",
        free_port(),
        free_port(),
        origin.address()
    );
    let gw = Gateway::start(&yaml).await;
    // A small receive window, the head read, then nothing.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = s.read(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &buf[..total.min(64)]
    );
    wait_metric(
        &gw,
        "gatehouse_downstream_connections",
        &[("listener", "public")],
        0.0,
    )
    .await;
    // What is left to read ends before the body does.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the cut connection did not end");
    assert!(
        total < BIG,
        "the whole body came to a client that stopped reading"
    );
    wait_log_line(&gw, "the cut response", |l| {
        l["path"] == "/big" && l["error"] == "WriteTimedout"
    })
    .await;
    // A client that reads gets all of it.
    let r = reqwest::get(gw.url("/big")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), BIG);
    // HTTP/2: a stream whose window the client never opens again is reset, and the
    // connection's other streams go on.
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let get = |path: &str| {
        http::Request::get(format!("http://localhost{path}"))
            .body(())
            .unwrap()
    };
    let (resp, _) = send.send_request(get("/big"), true).unwrap();
    let resp = resp.await.expect("h2 response head");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        // Capacity is never released: the window stays shut after 1 KiB.
        while let Some(Ok(chunk)) = body.data().await {
            got += chunk.len();
        }
    })
    .await;
    assert!(ended.is_ok(), "the shut h2 stream was not ended");
    assert!(got < BIG, "the whole body came over a shut window");
    let (resp, _) = send.send_request(get("/small"), true).unwrap();
    assert_eq!(resp.await.expect("a second stream").status(), 200);
}
