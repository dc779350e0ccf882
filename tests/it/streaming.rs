//! Streaming responses through the gateway: server-sent events and chunked bodies pass
//! without buffering (on a plain route and on a caching route with a cacheable stream),
//! a stalled stream is cut by the route's read timeout, and a client that goes away
//! cancels the upstream request. The upstream holds its second event until the test
//! releases it (a semaphore, not a sleep), so "the first event arrived before the
//! second was sent" is an order, never a duration.

use crate::common;

use bytes::Bytes;
use common::server::Server;
use common::Gateway;
use http_body_util::StreamBody;
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// What the test and the upstream share: `release` lets a held stream go on, `closed`
/// gets a permit each time the upstream finds its response body gone (the connection to
/// it was closed).
struct Ctl {
    release: Semaphore,
    closed: Semaphore,
}

impl Default for Ctl {
    fn default() -> Ctl {
        Ctl {
            release: Semaphore::new(0),
            closed: Semaphore::new(0),
        }
    }
}

type Chunk = Result<Frame<Bytes>, Infallible>;

fn event(s: &str) -> Chunk {
    Ok(Frame::data(Bytes::from(format!("data: {s}\n\n"))))
}

/// `/…/held`: event one, then event two once released, then the end. `/…/stall`: event
/// one, then nothing, forever. `/…/ticker`: an event every 50 ms until the body is
/// gone. `cacheable` in the query adds `Cache-Control: public, max-age=60`.
async fn upstream(ctl: Arc<Ctl>) -> Server {
    Server::start("stream upstream", 0, move |req: hyper::Request<_>| {
        let ctl = ctl.clone();
        async move {
            let path = req.uri().path().to_string();
            let cacheable = req.uri().query().is_some_and(|q| q.contains("cacheable"));
            let json = path.contains("json");
            let (tx, rx) = mpsc::channel::<Chunk>(4);
            tokio::spawn(async move {
                if tx.send(event("one")).await.is_err() {
                    return;
                }
                if path.ends_with("/held") {
                    if let Ok(p) = ctl.release.acquire().await {
                        p.forget();
                    }
                    let _ = tx.send(event("two")).await;
                } else if path.ends_with("/stall") {
                    // Holds the body open without a byte more.
                    tx.closed().await;
                } else if path.ends_with("/ticker") {
                    for i in 0u64.. {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if tx.send(event(&format!("tick {i}"))).await.is_err() {
                            ctl.closed.add_permits(1);
                            return;
                        }
                    }
                }
            });
            let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|c| (c, rx))
            }));
            let mut resp = hyper::Response::builder().header(
                "content-type",
                if json {
                    "application/json"
                } else {
                    "text/event-stream"
                },
            );
            resp = resp.header(
                "cache-control",
                if cacheable {
                    "public, max-age=60"
                } else {
                    "no-cache"
                },
            );
            Ok::<_, Infallible>(resp.body(body).unwrap())
        }
    })
    .await
}

async fn gateway(up: &Server) -> Gateway {
    Gateway::start(&common::config(&format!(
        r#"
        cache: {{ memory: 16MiB, max_object_size: 1MiB }}
        upstreams:
          s: {{ targets: [ {{ address: "127.0.0.1:{}" }} ] }}
        routes:
          - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: s }}
          - {{ name: cached, match: {{ path_prefix: /cached }}, upstream: s, cache: {{}} }}
          - name: stall
            match: {{ path_prefix: /stall }}
            upstream: s
            timeouts: {{ read: 1s }}
        "#,
        up.port
    )))
    .await
}

/// Reads chunks until the body so far contains `want`; the body read so far.
async fn read_until(resp: &mut reqwest::Response, got: &mut Vec<u8>, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(got).contains(want) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{want:?} did not arrive; got {:?}",
                    String::from_utf8_lossy(got)
                )
            })
            .expect("body chunk")
            .unwrap_or_else(|| panic!("the body ended before {want:?}"));
        got.extend_from_slice(&chunk);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stream_through_without_buffering() {
    let ctl = Arc::new(Ctl::default());
    let up = upstream(ctl.clone()).await;
    let gw = gateway(&up).await;
    let http = common::client();
    for path in [
        "/plain/sse/held",
        "/plain/json/held",
        "/cached/sse/held?cacheable=1",
    ] {
        let mut resp = http.get(gw.url(path)).send().await.expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let mut got = Vec::new();
        // Event one arrives while the upstream still holds event two.
        read_until(&mut resp, &mut got, "data: one").await;
        assert!(
            !String::from_utf8_lossy(&got).contains("two"),
            "{path}: two was never released"
        );
        ctl.release.add_permits(1);
        read_until(&mut resp, &mut got, "data: two").await;
        assert_eq!(resp.chunk().await.expect("end of body"), None, "{path}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "data: one\n\ndata: two\n\n",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_is_cut_by_the_read_timeout() {
    let ctl = Arc::new(Ctl::default());
    let up = upstream(ctl.clone()).await;
    let gw = gateway(&up).await;
    let mut resp = common::client()
        .get(gw.url("/stall/sse/stall"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    read_until(&mut resp, &mut got, "data: one").await;
    // Nothing more comes: past `timeouts.read` the gateway gives up on the upstream and
    // ends the client's response unfinished (no last chunk), so the client knows it was
    // cut rather than complete.
    let end = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the stalled stream was cut within 10 s");
    assert!(end.is_err(), "a cut stream must not look complete: {end:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    let ctl = Arc::new(Ctl::default());
    let up = upstream(ctl.clone()).await;
    let gw = gateway(&up).await;
    let mut resp = common::client()
        .get(gw.url("/plain/sse/ticker"))
        .send()
        .await
        .expect("request");
    let mut got = Vec::new();
    read_until(&mut resp, &mut got, "tick 1").await;
    assert_eq!(ctl.closed.available_permits(), 0);
    drop(resp);
    // The upstream's next writes fail: the gateway closed its connection to it.
    let closed = tokio::time::timeout(Duration::from_secs(10), ctl.closed.acquire()).await;
    assert!(
        closed.is_ok(),
        "the upstream kept streaming to a client that was gone"
    );
}
