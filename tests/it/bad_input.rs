//! Malformed requests sent as raw bytes: each gets a 4xx, none reaches the
//! upstream, and the gateway keeps serving.

use crate::common;

use common::{one_route_gateway, raw, Gateway, Upstream};

async fn setup() -> (Upstream, Gateway) {
    let up = Upstream::start("u").await;
    let gw = one_route_gateway(&up).await;
    (up, gw)
}

/// Sends `request`, expects `status`, checks nothing was forwarded and that
/// a normal request still works (and is forwarded exactly once).
async fn expect_rejected(up: &Upstream, gw: &Gateway, what: &str, request: &[u8], status: u16) {
    let before = up.hits();
    match raw::request(gw.addr(), request).await {
        Ok(r) => assert_eq!(r.status, status, "{what}: status; body {}", r.text()),
        Err(e) => panic!("{what}: expected {status}, got no response: {e}"),
    }
    assert_eq!(
        up.hits(),
        before,
        "{what}: request was forwarded to the upstream"
    );
    let ok = raw::get(gw.addr(), "/after").await;
    assert_eq!(
        ok.status, 200,
        "{what}: gateway stopped serving normal requests"
    );
    assert_eq!(up.hits(), before + 1, "{what}: normal request after it");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_request_line_is_400() {
    let (up, gw) = setup().await;
    expect_rejected(
        &up,
        &gw,
        "garbage request line",
        b"THIS IS NOT HTTP\r\n\r\n",
        400,
    )
    .await;
    expect_rejected(
        &up,
        &gw,
        "request line without target",
        b"GET\r\nHost: x\r\n\r\n",
        400,
    )
    .await;
    expect_rejected(
        &up,
        &gw,
        "bad version",
        b"GET / HTTP/9.x\r\nHost: x\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_are_431() {
    let (up, gw) = setup().await;
    // 100 headers of about 1 KiB each: 100 KiB of headers.
    let mut req = b"GET /big HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..100 {
        req.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(1024)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    expect_rejected(&up, &gw, "100 KiB of headers", &req, 431).await;

    // One single header line of 100 KiB.
    let mut req = b"GET /big HTTP/1.1\r\nHost: localhost\r\nX-Huge: ".to_vec();
    req.extend_from_slice(&vec![b'h'; 100 * 1024]);
    req.extend_from_slice(b"\r\n\r\n");
    expect_rejected(&up, &gw, "one 100 KiB header", &req, 431).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_400() {
    let (up, gw) = setup().await;
    let req = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    expect_rejected(&up, &gw, "Content-Length + Transfer-Encoding", req, 400).await;
    let req = b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    expect_rejected(
        &up,
        &gw,
        "Transfer-Encoding + Content-Length (smuggling)",
        req,
        400,
    )
    .await;
    assert!(
        up.requests().iter().all(|r| r.path != "/smuggled"),
        "a smuggled request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_differing_content_length_is_400() {
    let (up, gw) = setup().await;
    let req = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    expect_rejected(&up, &gw, "two different Content-Length headers", req, 400).await;
    let req = b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5, 6\r\n\r\nhello!";
    expect_rejected(
        &up,
        &gw,
        "Content-Length list with different values",
        req,
        400,
    )
    .await;
}
