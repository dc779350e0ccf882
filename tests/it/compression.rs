//! Response compression (`routes[].compression`) through real sockets: each coding
//! decoded with its own crate and compared, q-values (`q=0` excludes), nothing encoded
//! twice, size and type rules, the cache's one identity copy served encoded or not per
//! request, `Range` served from the identity bytes, weakened `ETag`, and a streamed body
//! whose first chunk reaches the client before the upstream has sent the rest.

use crate::common::origin::{cache_gateway, send, Origin, Reply};
use crate::common::{client, Resp};
use std::io::{Read, Write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A JSON document of about `n` bytes, compressible.
fn doc(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{{\"id\":{i},\"name\":\"item number {i}\"}},"));
        i += 1;
    }
    s.push_str("{}]}");
    s.into_bytes()
}

fn decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("brotli");
        }
        "zstd" => out = zstd::stream::decode_all(body).expect("zstd"),
        other => panic!("unexpected coding {other}"),
    }
    out
}

fn varies_on(r: &Resp, token: &str) -> bool {
    r.headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

const ROUTES: &str = r#"
- { name: z, match: { path_prefix: /z }, upstream: o, compression: { algorithms: [br, zstd, gzip], min_size: 1KiB, types: [application/json, "text/*"] } }
- { name: c, match: { path_prefix: /c }, upstream: o, cache: { ttl: 60s }, compression: { min_size: 100 } }
- { name: g, match: { path_prefix: /g }, upstream: o, compression: { algorithms: [gzip], levels: { gzip: 9 } } }
"#;

async fn setup() -> (Origin, crate::common::Gateway) {
    let origin = Origin::start().await;
    let gw = cache_gateway(&origin, "{ memory: 4MiB }", ROUTES).await;
    (origin, gw)
}

#[tokio::test]
async fn each_coding_round_trips_and_q_values_decide() {
    let (origin, gw) = setup().await;
    let body = doc(20_000);
    let b = body.clone();
    origin.script("/z/doc", move |_, _| {
        Reply::ok("", b.clone())
            .header("content-type", "application/json; charset=utf-8")
            .header("etag", "\"v7\"")
    });
    let http = client();
    let url = gw.url("/z/doc");
    for (ae, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "br"),
        ("gzip;q=1.0, br;q=0.5, zstd;q=0.8", "gzip"),
        ("br;q=0, zstd;q=0, gzip", "gzip"),
        ("*;q=0.3, br;q=0", "zstd"),
    ] {
        let r = send(&http, "GET", &url, &[("accept-encoding", ae)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(want), "{ae}");
        assert!(
            r.header("content-length").is_none(),
            "{ae}: {:?}",
            r.headers
        );
        assert!(varies_on(&r, "accept-encoding"), "{ae}");
        assert_eq!(r.header("etag"), Some("W/\"v7\""), "{ae}: weakened");
        assert!(
            r.body.len() < body.len() / 3,
            "{ae}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(want, &r.body), body, "{ae}");
    }
    // q=0 excludes; with nothing acceptable left the identity bytes are sent.
    for ae in [
        "gzip;q=0, br;q=0, zstd;q=0",
        "identity",
        "",
        "deflate",
        "*;q=0",
    ] {
        let r = send(&http, "GET", &url, &[("accept-encoding", ae)]).await;
        assert!(
            r.header("content-encoding").is_none(),
            "{ae:?}: {:?}",
            r.headers
        );
        assert_eq!(r.body, body, "{ae:?}");
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(
            r.header("etag"),
            Some("\"v7\""),
            "identity keeps the strong tag"
        );
        assert!(varies_on(&r, "accept-encoding"), "{ae:?}");
    }
    let r = send(&http, "GET", &url, &[]).await;
    assert!(r.header("content-encoding").is_none() && r.body == body);
}

#[tokio::test]
async fn nothing_encoded_twice_and_size_type_and_transform_rules() {
    let (origin, gw) = setup().await;
    let plain = doc(8_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let g = gz.clone();
    origin.script("/z/already", move |_, _| {
        Reply::ok("", g.clone())
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
    });
    let small = doc(500);
    let s = small.clone();
    origin.script("/z/small", move |_, _| {
        Reply::ok("", s.clone()).header("content-type", "application/json")
    });
    let p = plain.clone();
    origin.script("/z/png", move |_, _| {
        Reply::ok("", p.clone()).header("content-type", "image/png")
    });
    let p = plain.clone();
    origin.script("/z/csv", move |_, _| {
        Reply::ok("", p.clone()).header("content-type", "text/csv")
    });
    let p = plain.clone();
    origin.script("/z/nt", move |_, _| {
        Reply::ok("no-transform", p.clone()).header("content-type", "text/plain")
    });
    let http = client();
    let ae = [("accept-encoding", "br, gzip")];
    // Already encoded by the upstream: passed as it is, even to a client preferring br.
    let r = send(&http, "GET", &gw.url("/z/already"), &ae).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, gz, "the upstream's bytes, not re-encoded");
    assert_eq!(decode("gzip", &r.body), plain);
    for path in ["/z/small", "/z/png", "/z/nt"] {
        let r = send(&http, "GET", &gw.url(path), &ae).await;
        assert!(
            r.header("content-encoding").is_none(),
            "{path}: {:?}",
            r.headers
        );
        assert!(
            !varies_on(&r, "accept-encoding"),
            "{path}: could never be encoded"
        );
    }
    // `text/*` covers text/csv.
    let r = send(&http, "GET", &gw.url("/z/csv"), &ae).await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(decode("br", &r.body), plain);
    // HEAD: the headers say it depends on Accept-Encoding, nothing is encoded.
    let r = send(&http, "HEAD", &gw.url("/z/csv"), &ae).await;
    assert!(r.header("content-encoding").is_none() && r.body.is_empty());
    assert!(varies_on(&r, "accept-encoding"));
    // The route's own settings: only gzip offered, at its level.
    let p = plain.clone();
    origin.script("/g/x", move |_, _| {
        Reply::ok("", p.clone()).header("content-type", "text/html")
    });
    let r = send(
        &http,
        "GET",
        &gw.url("/g/x"),
        &[("accept-encoding", "br, zstd")],
    )
    .await;
    assert!(r.header("content-encoding").is_none());
    let r = send(
        &http,
        "GET",
        &gw.url("/g/x"),
        &[("accept-encoding", "br, gzip;q=0.1")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), plain);
}

#[tokio::test]
async fn the_cache_stores_one_identity_copy_and_serves_each_coding_and_ranges_from_it() {
    let (origin, gw) = setup().await;
    let body = doc(5_000);
    let b = body.clone();
    // The upstream says its answer varies on Accept-Encoding (as nginx's `gzip_vary`
    // does): asked for identity, it cannot, so the one copy is not split per coding.
    origin.script("/c/doc", move |_, _| {
        Reply::ok("max-age=60", b.clone())
            .header("content-type", "application/json")
            .header("vary", "Accept-Encoding")
    });
    let http = client();
    let url = gw.url("/c/doc");
    let first = send(&http, "GET", &url, &[("accept-encoding", "gzip")]).await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &first.body), body);
    for (ae, want) in [
        ("br", Some("br")),
        ("zstd", Some("zstd")),
        ("identity", None),
        ("gzip", Some("gzip")),
    ] {
        let r = send(&http, "GET", &url, &[("accept-encoding", ae)]).await;
        let status = r.header("cache-status").unwrap_or("");
        assert!(status.contains("hit"), "{ae}: {status}");
        assert_eq!(r.header("content-encoding"), want, "{ae}");
        match want {
            Some(enc) => assert_eq!(decode(enc, &r.body), body, "{ae}"),
            None => {
                assert_eq!(r.body, body);
                assert_eq!(
                    r.header("content-length"),
                    Some(body.len().to_string().as_str())
                );
            }
        }
    }
    assert_eq!(
        origin.hits("/c/doc"),
        1,
        "one stored copy served every coding"
    );
    assert_eq!(
        origin.seen("/c/doc")[0]
            .header("accept-encoding")
            .as_deref(),
        Some("identity"),
        "the upstream is asked for the identity bytes"
    );
    // A range of an encodable response is served from the identity bytes, never encoded.
    let r = send(
        &http,
        "GET",
        &url,
        &[("accept-encoding", "gzip, br"), ("range", "bytes=2-11")],
    )
    .await;
    assert_eq!(r.status, 206, "{:?}", r.headers);
    assert!(r.header("content-encoding").is_none(), "{:?}", r.headers);
    assert_eq!(r.body, &body[2..12]);
    assert_eq!(origin.hits("/c/doc"), 1);
}

/// An upstream written by hand: a chunked response whose second chunk is sent only when
/// `go` is released, so the test can see what reached the client before it.
async fn held_upstream(
    first: Vec<u8>,
    second: Vec<u8>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let chunk = |b: &[u8]| {
            let mut out = format!("{:x}\r\n", b.len()).into_bytes();
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
            out
        };
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        out.extend(chunk(&first));
        let _ = s.write_all(&out).await;
        let _ = wait.await;
        let mut out = chunk(&second);
        out.extend_from_slice(b"0\r\n\r\n");
        let _ = s.write_all(&out).await;
        let _ = s.shutdown().await;
    });
    (addr, go)
}

#[tokio::test]
async fn a_streamed_body_is_encoded_chunk_by_chunk_not_buffered_whole() {
    let first = b"data: first event\n\n".repeat(40);
    let second = b"data: second event\n\n".repeat(40);
    let (addr, go) = held_upstream(first.clone(), second.clone()).await;
    let gw = crate::common::Gateway::start(&crate::common::config(&format!(
        "upstreams:\n  s: {{ targets: [ {{ address: \"{addr}\" }} ] }}\nroutes:\n  - {{ name: s, upstream: s, compression: {{ algorithms: [gzip], types: [\"text/*\"] }} }}\n"
    )))
    .await;
    let mut c = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    c.write_all(
        b"GET /events HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // Read until the decoded stream holds the whole first chunk; the upstream has not
    // sent the second one yet.
    let mut raw = Vec::new();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut fed = 0;
    let mut body_start = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, c.read(&mut buf))
            .await
            .expect("the first chunk arrives before the upstream sends the rest")
            .unwrap();
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&buf[..n]);
        if body_start.is_none() {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
                assert!(head.contains("content-encoding: gzip"), "{head}");
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                body_start = Some(i + 4);
            }
        }
        if let Some(start) = body_start {
            // De-chunk what is complete so far and feed the decoder.
            let body = dechunk(&raw[start..]);
            decoder.write_all(&body[fed..]).unwrap();
            decoder.flush().unwrap();
            fed = body.len();
            if decoder.get_ref().len() >= first.len() {
                break;
            }
        }
    }
    assert_eq!(decoder.get_ref().as_slice(), first.as_slice());
    go.send(()).unwrap();
    c.read_to_end(&mut raw).await.unwrap();
    let body = dechunk(&raw[body_start.unwrap()..]);
    let mut all = first.clone();
    all.extend_from_slice(&second);
    assert_eq!(decode("gzip", &body), all);
}

/// The data of the complete chunks at the start of `b`.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let Ok(n) = usize::from_str_radix(&String::from_utf8_lossy(&b[..i]), 16) else {
            break;
        };
        if n == 0 || b.len() < i + 2 + n + 2 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 4 + n..];
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn request_bodies_are_decoded_for_the_upstream_and_a_bomb_is_refused() {
    use crate::common::{assert_problem, config, Gateway, Upstream};
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [ {{ address: \"{}\" }} ] }}\nroutes:\n  - {{ name: d, upstream: u, max_body: 1MiB, compression: {{ algorithms: [gzip], decompress_requests: {{ max_size: 4MiB, max_ratio: 50 }} }} }}\n",
        up.address()
    )))
    .await;
    let http = client();
    let plain = doc(300_000);
    let post = |coding: &'static str, body: Vec<u8>| {
        let http = http.clone();
        let url = gw.url("/upload");
        async move {
            let r = http
                .post(&url)
                .header("content-encoding", coding)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST");
            Resp::from_reqwest(r).await
        }
    };
    let br = {
        let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        w.write_all(&plain).unwrap();
        w.into_inner()
    };
    let zs = zstd::stream::encode_all(&plain[..], 3).unwrap();
    for (coding, body) in [("gzip", gzip(&plain)), ("br", br), ("zstd", zs)] {
        let r = post(coding, body).await;
        assert_eq!(r.status, 200, "{coding}: {}", r.text());
        let seen = up.last_request().expect("forwarded");
        assert_eq!(
            seen.body_len,
            plain.len(),
            "{coding}: the upstream got identity"
        );
        assert!(seen.header("content-encoding").is_none(), "{coding}");
        assert!(seen.header("content-length").is_none(), "{coding}");
    }
    // An unknown coding is the upstream's business: passed untouched.
    let r = post("deflate", b"xyz".to_vec()).await;
    assert_eq!(r.status, 200);
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("content-encoding").as_deref(), Some("deflate"));
    assert_eq!(seen.body_len, 3);
    let hits = up.hits();
    // 256 MiB of zeros in about 250 KiB of gzip: within max_body, refused as it expands.
    let bomb = gzip(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let r = post("gzip", bomb).await;
    assert_problem(&r, 413);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/decompressed-body-too-large"
    );
    // Not valid gzip: 400.
    let r = post("gzip", b"definitely not gzip".to_vec()).await;
    assert_problem(&r, 400);
    let m = gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "decompressed-body-too-large")]
        ),
        Some(1.0)
    );
    // Whatever reached the upstream of the refused bodies never completed as a request
    // bigger than the bound.
    assert!(up.requests().iter().all(|q| q.body_len <= 4 << 20));
    assert!(up.hits() <= hits + 2);
}

/// Over h2c: encoded without HTTP/1 framing fields, decoded intact, the cache copy too.
#[tokio::test]
async fn h2c_clients_get_encoded_answers() {
    let origin = Origin::start().await;
    let body = doc(12_000);
    let b = body.clone();
    origin.script("/c/h2", move |_, _| {
        Reply::ok("max-age=60", b.clone()).header("content-type", "application/json")
    });
    let yaml = crate::common::config(&format!(
        "cache: {{ memory: 1MiB }}\nupstreams:\n  o: {{ targets: [ {{ address: \"{}\" }} ] }}\nroutes:\n  - {{ name: c, upstream: o, cache: {{ ttl: 60s }}, compression: {{}} }}\n",
        origin.address()
    ))
    .replace("name: public, address", "name: public, http2: true, address");
    let gw = crate::common::Gateway::start(&yaml).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for ae in ["zstd", "gzip", "br"] {
        let r = h2
            .get(gw.url("/c/h2"))
            .header("accept-encoding", ae)
            .send()
            .await
            .expect("h2c GET");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let r = Resp::from_reqwest(r).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(ae));
        assert!(r.header("transfer-encoding").is_none());
        assert_eq!(decode(ae, &r.body), body, "{ae}");
    }
    assert_eq!(origin.hits("/c/h2"), 1);
}
