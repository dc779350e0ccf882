//! TLS listener with several certificates chosen by SNI, HTTP/2 over TLS
//! through ALPN, and HTTP/2 (h2c) to upstreams.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{
    certs_dir, client, config, dedent, free_port, get, one_route, targets, Gateway, Upstream,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

fn cert_path(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

fn cert_der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(certs_dir().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// A TLS listener with the a.test and b.test certificates, HTTP/2 on, plus
/// the admin listener; `body` holds upstreams and routes.
fn tls_config(body: &str) -> String {
    format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s }}\n\
         listeners:\n\
         \x20 - name: public-tls\n\
         \x20   address: \"127.0.0.1:{}\"\n\
         \x20   tls:\n\
         \x20     certificates:\n\
         \x20       - {{ cert: \"{}\", key: \"{}\" }}\n\
         \x20       - {{ cert: \"{}\", key: \"{}\" }}\n\
         \x20     http2: true\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {} }}\n\
         access_log: {{ path: \"off\" }}\n{}",
        free_port(),
        cert_path("a.test.pem"),
        cert_path("a.test.key"),
        cert_path("b.test.pem"),
        cert_path("b.test.key"),
        free_port(),
        common::TOKEN,
        dedent(body)
    )
}

/// A rustls client trusting only the test CA, offering h2 and http/1.1.
fn rustls_client() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert_der("ca.pem")).expect("test CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Handshakes with `sni`; returns the leaf certificate and the ALPN result.
async fn handshake(addr: SocketAddr, sni: &str) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect TLS listener");
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(rustls_client()).connect(name, tcp),
    )
    .await
    .expect("handshake timed out")
    .unwrap_or_else(|e| panic!("TLS handshake for SNI {sni}: {e}"));
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server sent a certificate")
        .clone()
        .into_owned();
    (leaf, session.alpn_protocol().map(<[u8]>::to_vec))
}

/// reqwest trusting the test CA, resolving a.test and b.test to the gateway.
fn https_client(addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let ca = std::fs::read(certs_dir().join("ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("a.test", addr)
        .resolve("b.test", addr);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sni_name_gets_its_own_certificate() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&tls_config(&one_route(&targets(&[&up.address()])))).await;
    for (sni, file) in [
        ("a.test", "a.test.pem"),
        ("b.test", "b.test.pem"),
        ("a.test", "a.test.pem"),
    ] {
        let (leaf, alpn) = handshake(gw.addr(), sni).await;
        assert!(leaf == cert_der(file), "SNI {sni} was not served {file}");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN with http2: true");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_over_tls_end_to_end() {
    let up = Upstream::start("u").await;
    let h2c = Upstream::start("h2c").await;
    let gw = Gateway::start(&tls_config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
          h2c: {{ targets: [ {{ address: "{}" }} ], http2: true }}
        routes:
          - {{ name: h2c, match: {{ path_prefix: /h2c }}, upstream: h2c }}
          - {{ name: all, match: {{ path_prefix: / }}, upstream: u }}
        "#,
        up.address(),
        h2c.address()
    )))
    .await;
    let port = gw.addr().port();

    let h2 = https_client(gw.addr(), false);
    for host in ["a.test", "b.test"] {
        let r = h2
            .get(format!("https://{host}:{port}/hello?x=1"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("https://{host}: {e:?}"));
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "ALPN should select h2 for {host}"
        );
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["path"], "/hello");
    }
    let seen = up.last_request().unwrap();
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    let r = h2
        .post(format!("https://a.test:{port}/upload"))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last_request().unwrap().body_len,
        100_000,
        "request body over h2"
    );

    // h2 from the client all the way to an h2c upstream.
    let r = h2
        .get(format!("https://a.test:{port}/h2c/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    assert_eq!(h2c.last_request().unwrap().version, hyper::Version::HTTP_2);

    // HTTP/1.1 clients still work on the same listener.
    let h1 = https_client(gw.addr(), true);
    let r = h1
        .get(format!("https://b.test:{port}/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_to_h2c_upstream_multiplexes() {
    let up = Upstream::start("h2c").await;
    let gw = Arc::new(
        Gateway::start(&config(&one_route(&format!(
            "{}, http2: true",
            targets(&[&up.address()])
        ))))
        .await,
    );
    let http = client();
    let r = get(&http, &gw.url("/first")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last_request().unwrap();
    assert_eq!(
        seen.version,
        hyper::Version::HTTP_2,
        "upstream must see HTTP/2.0"
    );
    assert_eq!(r.json()["version"], "HTTP/2.0");

    // Concurrent slow requests share the h2 connection(s) instead of one
    // connection per request (max_h2_streams above 1).
    up.set_delay(Duration::from_millis(300));
    let before = up.connections();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (http, gw) = (http.clone(), gw.clone());
            tokio::spawn(async move {
                http.get(gw.url(&format!("/c/{i}")))
                    .send()
                    .await
                    .map(|r| r.status())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert!(up
        .requests()
        .iter()
        .all(|r| r.version == hyper::Version::HTTP_2));
    let opened = up.connections() - before;
    assert!(
        opened <= 2,
        "10 concurrent requests opened {opened} new h2 connections"
    );
}
