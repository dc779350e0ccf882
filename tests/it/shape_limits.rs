//! `routes[].max_headers` (431 `headers-too-large`) and `routes[].max_url` (414
//! `uri-too-long`): refused with problem+json before anything is forwarded, counted.

use crate::common::{assert_problem, config, raw, Gateway, Upstream};

async fn gateway(up: &Upstream) -> Gateway {
    Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: tight, match: {{ path_prefix: /tight }}, upstream: u, max_headers: 6, max_url: 32 }}
          - {{ name: loose, match: {{ path_prefix: / }}, upstream: u }}
        "#,
        up.address()
    )))
    .await
}

fn h(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

#[tokio::test]
async fn header_count_and_url_length_limits_are_refused_with_their_status() {
    let up = Upstream::start("u").await;
    let gw = gateway(&up).await;
    // Host + Connection + 4 = 6 fields: at the limit.
    let four: Vec<(String, String)> = (0..4).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let r = raw::get_with(gw.addr(), "/tight/a", "localhost", &h(&four)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut five = four.clone();
    // A repeated name is another field line.
    five.push(("x-h0".into(), "again".into()));
    let r = raw::get_with(gw.addr(), "/tight/a", "localhost", &h(&five)).await;
    assert_problem(&r, 431);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/headers-too-large"
    );
    // 32 bytes of path and query pass, 33 do not.
    let ok = format!("/tight/{}", "a".repeat(32 - 7));
    assert_eq!(raw::get(gw.addr(), &ok).await.status, 200);
    let long = format!("/tight/?q={}", "a".repeat(32 - 9));
    let r = raw::get(gw.addr(), &long).await;
    assert_problem(&r, 414);
    assert_eq!(
        r.json()["type"],
        "https://gatehouse.dev/problems/uri-too-long"
    );
    // Other routes are not bound by them.
    let r = raw::get_with(
        gw.addr(),
        &format!("/{}", "b".repeat(200)),
        "localhost",
        &h(&five),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 3);
    let m = gw.metrics().await;
    let reason = |r| m.get("gatehouse_rejected_requests_total", &[("reason", r)]);
    assert_eq!(reason("headers-too-large"), Some(1.0));
    assert_eq!(reason("uri-too-long"), Some(1.0));
    assert_eq!(
        m.get(
            "gatehouse_http_requests_total",
            &[("route", "tight"), ("method", "GET"), ("status", "414")]
        ),
        Some(1.0)
    );
}
