//! Client address rules (`listeners[].ip`, `routes[].ip`) through real sockets: client
//! sockets bound to 127.0.0.x (and ::1) as their source, `X-Forwarded-For` spoofed from
//! an untrusted peer and forwarded through a trusted proxy chain, 403 problem+json
//! counted by rule, and an atomic reload of the lists.

use crate::common::{self, free_port, Gateway, Resp, Upstream, TOKEN};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET from a socket bound to `source`, `Connection: close`.
async fn get_from(source: &str, to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let source: std::net::IpAddr = source.parse().expect("source address");
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let mut stream = socket.connect(to).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await
    .expect("response in time")
    .expect("read");
    parse(&buf)
}

/// A `Connection: close` response: head, then the body to the end (either framing).
fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(&String::from_utf8_lossy(&rest[..i]), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[i + 4 + n..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}

struct Setup {
    gw: Gateway,
    up: Upstream,
    v4: SocketAddr,
    v6: SocketAddr,
}

fn yaml(up: &Upstream, v4: u16, v6: u16, admin: u16, partner_allow: &str) -> String {
    common::dedent(&format!(
        r#"
        version: 1
        server: {{ threads: 1, grace_period: 5s, trusted_proxies: [127.0.0.3, 10.0.0.0/8] }}
        listeners:
          - {{ name: public, address: "127.0.0.1:{v4}", ip: {{ deny: [127.0.0.4] }} }}
          - {{ name: inner, address: "[::1]:{v6}", ip: {{ allow: ["::1"] }} }}
        admin: {{ address: "127.0.0.1:{admin}", token: {TOKEN} }}
        access_log: {{ path: "off" }}
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - name: partner
            match: {{ path_prefix: /partner }}
            upstream: u
            ip: {{ allow: [{partner_allow}, "2001:db8::/32", "::1"], deny: ["2001:db8:bad::/48"] }}
          - {{ name: open, match: {{ path_prefix: /open }}, upstream: u }}
        "#,
        up.address()
    ))
}

async fn setup() -> Setup {
    let up = Upstream::start("u").await;
    let (p4, p6, admin) = (free_port(), free_port(), free_port());
    let gw = Gateway::start(&yaml(&up, p4, p6, admin, "127.0.0.2/32")).await;
    Setup {
        gw,
        up,
        v4: format!("127.0.0.1:{p4}").parse().unwrap(),
        v6: format!("[::1]:{p6}").parse().unwrap(),
    }
}

fn assert_ip_denied(r: &Resp) {
    common::assert_problem(r, 403);
    let v = r.json();
    assert_eq!(v["type"], "https://gatehouse.dev/problems/ip-denied", "{v}");
    assert!(
        !r.text().contains("127.0.0"),
        "the address is not echoed: {}",
        r.text()
    );
}

#[tokio::test]
async fn route_allow_and_deny_on_v4_and_v6_sockets() {
    let s = setup().await;
    assert_eq!(
        get_from("127.0.0.2", s.v4, "/partner/a", &[]).await.status,
        200
    );
    assert_ip_denied(&get_from("127.0.0.1", s.v4, "/partner/a", &[]).await);
    assert_eq!(get_from("127.0.0.1", s.v4, "/open", &[]).await.status, 200);
    // The IPv6 listener admits only ::1, and the route allows it.
    assert_eq!(get_from("::1", s.v6, "/partner/a", &[]).await.status, 200);
    assert_eq!(s.up.hits(), 3);
    let m = s.gw.metrics().await;
    let by = |scope, name, rule| {
        m.get(
            "gatehouse_ip_rejected_total",
            &[("scope", scope), ("name", name), ("rule", rule)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(by("route", "partner", "allow"), 1.0);
    assert_eq!(by("route", "partner", "deny"), 0.0);
    assert_eq!(
        m.get(
            "gatehouse_rejected_requests_total",
            &[("reason", "ip-denied")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let s = setup().await;
    // 127.0.0.1 is not a trusted proxy: its X-Forwarded-For is not believed.
    for xff in ["127.0.0.2", "2001:db8::1", "127.0.0.3, 127.0.0.2"] {
        let r = get_from("127.0.0.1", s.v4, "/partner/a", &[("x-forwarded-for", xff)]).await;
        assert_ip_denied(&r);
    }
    // Nor can a client that is allowed make itself look denied... or anyone else.
    let r = get_from(
        "127.0.0.2",
        s.v4,
        "/partner/a",
        &[("x-forwarded-for", "2001:db8:bad::1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.up.hits(), 1);
}

#[tokio::test]
async fn a_trusted_proxy_chain_forwards_the_client_address_v4_and_v6() {
    let s = setup().await;
    let to = s.v4;
    let via_proxy = |xff: &'static str| async move {
        get_from("127.0.0.3", to, "/partner/a", &[("x-forwarded-for", xff)]).await
    };
    // The proxy itself is not allowed on the route; the client it names is.
    assert_ip_denied(&get_from("127.0.0.3", s.v4, "/partner/a", &[]).await);
    assert_eq!(via_proxy("127.0.0.2").await.status, 200);
    assert_eq!(via_proxy("2001:db8::7").await.status, 200, "IPv6 client");
    // Through two trusted hops (10.1.1.1, then 127.0.0.3); what the client prepended
    // on its own (6.6.6.6) is not the client.
    assert_eq!(
        via_proxy("6.6.6.6, 2001:db8::9, 10.1.1.1").await.status,
        200
    );
    assert_ip_denied(&via_proxy("2001:db8::9, 6.6.6.6, 10.1.1.1").await);
    // Deny wins inside the allowed /32.
    assert_ip_denied(&via_proxy("2001:db8:bad::1").await);
    let m = s.gw.metrics().await;
    let by = |rule| {
        m.get(
            "gatehouse_ip_rejected_total",
            &[("scope", "route"), ("name", "partner"), ("rule", rule)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((by("allow"), by("deny")), (2.0, 1.0));
    assert_eq!(s.up.hits(), 3);
}

#[tokio::test]
async fn listener_rules_apply_before_routing_and_both_must_pass() {
    let s = setup().await;
    // Denied on the listener: 403 on any path, even one no route takes.
    assert_ip_denied(&get_from("127.0.0.4", s.v4, "/open", &[]).await);
    assert_ip_denied(&get_from("127.0.0.4", s.v4, "/nothing-here", &[]).await);
    assert_eq!(
        get_from("127.0.0.5", s.v4, "/nothing-here", &[])
            .await
            .status,
        404
    );
    // Allowed by the listener, refused by the route.
    assert_ip_denied(&get_from("127.0.0.5", s.v4, "/partner", &[]).await);
    assert_eq!(s.up.hits(), 0);
    let m = s.gw.metrics().await;
    assert_eq!(
        m.get(
            "gatehouse_ip_rejected_total",
            &[("scope", "listener"), ("name", "public"), ("rule", "deny")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_reload_swaps_the_lists_at_once() {
    let s = setup().await;
    assert_ip_denied(&get_from("127.0.0.1", s.v4, "/partner", &[]).await);
    let yaml = std::fs::read_to_string(&s.gw.config_path).expect("config");
    let changed = yaml.replace("127.0.0.2/32", "127.0.0.1/32");
    assert_ne!(yaml, changed);
    std::fs::write(&s.gw.config_path, &changed).expect("write config");
    let r =
        s.gw.admin_post("/admin/reload", &serde_json::json!({}))
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        get_from("127.0.0.1", s.v4, "/partner", &[]).await.status,
        200
    );
    assert_ip_denied(&get_from("127.0.0.2", s.v4, "/partner", &[]).await);
    // A refused reload (a bad CIDR) leaves the running lists as they are.
    std::fs::write(
        &s.gw.config_path,
        changed.replace("127.0.0.1/32", "127.0.0.1/40"),
    )
    .unwrap();
    let r =
        s.gw.admin_post("/admin/reload", &serde_json::json!({}))
            .await;
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("routes[0].ip.allow[0]"), "{body}");
    assert_eq!(
        get_from("127.0.0.1", s.v4, "/partner", &[]).await.status,
        200
    );
}
