//! Route choice, path normalisation, request/response rewriting and the
//! identity headers, through the real gateway.

use crate::common;

use common::{
    assert_problem, client, config, get, one_route_gateway, raw, Gateway, Resp, Upstream,
};

/// Which test upstream answered (its `X-Upstream` header).
fn served_by(r: &Resp) -> &str {
    r.header("x-upstream").unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_beats_longest_prefix_beats_regex_in_file_order() {
    let ups = [
        Upstream::start("exact").await,
        Upstream::start("long").await,
        Upstream::start("short").await,
        Upstream::start("re_num").await,
        Upstream::start("re_any").await,
    ];
    let [exact, long, short, re_num, re_any] = ups.each_ref().map(|u| u.address());
    // Regex routes come first in the file: they must still lose to prefixes.
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          exact: {{ targets: [ {{ address: "{exact}" }} ] }}
          long: {{ targets: [ {{ address: "{long}" }} ] }}
          short: {{ targets: [ {{ address: "{short}" }} ] }}
          re_num: {{ targets: [ {{ address: "{re_num}" }} ] }}
          re_any: {{ targets: [ {{ address: "{re_any}" }} ] }}
        routes:
          - name: re-a
            match: {{ path_regex: "^/a/.*" }}
            upstream: re_any
          - name: re-num
            match: {{ path_regex: "^/r/[0-9]+$" }}
            upstream: re_num
          - name: re-r
            match: {{ path_regex: "^/r/" }}
            upstream: re_any
          - name: short
            match: {{ path_prefix: /a }}
            upstream: short
          - name: long
            match: {{ path_prefix: /a/long }}
            upstream: long
          - name: exact
            match: {{ path: /a/long/exact }}
            upstream: exact
        "#
    )))
    .await;
    let http = client();
    let cases = [
        ("/a/long/exact", "exact"),
        ("/a/long/exact/more", "long"),
        ("/a/long/x", "long"),
        ("/a/long", "long"),
        ("/a/other", "short"),
        ("/r/42", "re_num"),
        ("/r/abc", "re_any"),
    ];
    for (path, want) in cases {
        let r = get(&http, &gw.url(path)).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(
            served_by(&r),
            want,
            "GET {path} routed to the wrong upstream"
        );
    }
    let r = get(&http, &gw.url("/nothing/here")).await;
    assert_problem(&r, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_exact_and_wildcard() {
    let exact = Upstream::start("exact_host").await;
    let wild = Upstream::start("wild").await;
    let any = Upstream::start("any").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          exact_host: {{ targets: [ {{ address: "{}" }} ] }}
          wild: {{ targets: [ {{ address: "{}" }} ] }}
          any: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - name: exact-host
            match: {{ hosts: [api.example.com], path_prefix: / }}
            upstream: exact_host
          - name: wildcard
            match: {{ hosts: ["*.example.com"], path_prefix: / }}
            upstream: wild
          - name: any-host
            match: {{ path_prefix: / }}
            upstream: any
        "#,
        exact.address(),
        wild.address(),
        any.address()
    )))
    .await;
    let port = gw.addr().port();
    let with_port = format!("api.example.com:{port}");
    let cases = [
        ("api.example.com", "exact_host"),
        (with_port.as_str(), "exact_host"),
        ("API.Example.COM", "exact_host"),
        ("a.example.com", "wild"),
        ("other.example.com", "wild"),
        ("example.com", "any"),
        ("example.org", "any"),
    ];
    for (host, want) in cases {
        let r = raw::get_with(gw.addr(), "/x", host, &[]).await;
        assert_eq!(r.status, 200, "Host {host}: {}", r.text());
        assert_eq!(
            served_by(&r),
            want,
            "Host {host} routed to the wrong upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn method_and_header_mismatch_give_404_problem() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - name: read-only
            match: {{ path_prefix: /m, methods: [GET, HEAD] }}
            upstream: u
          - name: versioned
            match: {{ path_prefix: /v, headers: {{ X-Api-Version: "1" }} }}
            upstream: u
        "#,
        up.address()
    )))
    .await;
    let http = client();
    assert_eq!(get(&http, &gw.url("/m/x")).await.status, 200);
    for method in [reqwest::Method::POST, reqwest::Method::DELETE] {
        let r = http
            .request(method.clone(), gw.url("/m/x"))
            .send()
            .await
            .unwrap();
        let r = Resp::from_reqwest(r).await;
        assert_problem(&r, 404);
    }
    let r = http
        .get(gw.url("/v/x"))
        .header("X-Api-Version", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(gw.url("/v/x"))
        .header("X-Api-Version", "2")
        .send()
        .await
        .unwrap();
    assert_problem(&Resp::from_reqwest(r).await, 404);
    let r = get(&http, &gw.url("/v/x")).await;
    assert_problem(&r, 404);
    assert_eq!(
        up.hits(),
        2,
        "only the two matching requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_prefix_and_header_set_remove() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - name: api
            match: {{ path_prefix: /api }}
            upstream: u
            strip_prefix: /api
            request_headers: {{ set: {{ X-Gateway: gatehouse }}, remove: [X-Debug] }}
            response_headers: {{ set: {{ X-Served-By: gatehouse }}, remove: [X-Internal] }}
        "#,
        up.address()
    )))
    .await;
    let http = client();
    let r = http
        .get(gw.url("/api/v1/orders?x=1&y=2"))
        .header("X-Debug", "1")
        .header("X-Gateway", "client-value")
        .header("X-Keep", "yes")
        .send()
        .await
        .unwrap();
    let r = Resp::from_reqwest(r).await;
    assert_eq!(r.status, 200);
    let seen = up.last_request().expect("upstream saw the request");
    assert_eq!(seen.uri(), "/v1/orders?x=1&y=2", "strip_prefix");
    assert_eq!(
        seen.header("x-gateway").as_deref(),
        Some("gatehouse"),
        "request set replaces"
    );
    assert_eq!(seen.header_count("x-gateway"), 1);
    assert_eq!(seen.header("x-debug"), None, "request remove");
    assert_eq!(
        seen.header("x-keep").as_deref(),
        Some("yes"),
        "other headers untouched"
    );
    assert_eq!(r.header("x-served-by"), Some("gatehouse"), "response set");
    assert_eq!(r.header("x-internal"), None, "response remove");
    assert_eq!(
        r.header("x-upstream"),
        Some("u"),
        "other response headers untouched"
    );

    let r = get(&http, &gw.url("/api")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last_request().unwrap().path,
        "/",
        "/api with strip_prefix /api"
    );
}

fn well_formed_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_traceparent_and_forwarded_headers() {
    let up = Upstream::start("u").await;
    let gw = one_route_gateway(&up).await;
    let http = client();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    // A well-formed client ID is kept end to end.
    let r = http
        .get(gw.url("/x"))
        .header("X-Request-ID", "abc-123.x:y_Z")
        .header("traceparent", tp)
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123.x:y_Z");
    let seen = up.last_request().unwrap();
    assert_eq!(
        seen.header("x-request-id").as_deref(),
        Some("abc-123.x:y_Z")
    );
    assert_eq!(seen.header_count("x-request-id"), 1);
    assert_eq!(seen.header("traceparent").as_deref(), Some(tp));
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));

    // Malformed or missing IDs are replaced by a generated one.
    let long = "a".repeat(129);
    let mut generated = Vec::new();
    for sent in [
        Some("bad id!"),
        Some(long.as_str()),
        Some("semi;colon"),
        None,
        None,
    ] {
        let mut req = http.get(gw.url("/y"));
        if let Some(id) = sent {
            req = req.header("X-Request-ID", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            well_formed_request_id(&id),
            "generated id {id:?} is not well formed"
        );
        assert_ne!(Some(id.as_str()), sent, "malformed id {sent:?} was kept");
        let seen = up.last_request().unwrap();
        assert_eq!(
            seen.header("x-request-id"),
            Some(id.clone()),
            "upstream gets the same id"
        );
        assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        generated.push(id);
    }
    generated.sort();
    generated.dedup();
    assert_eq!(generated.len(), 5, "generated ids must be unique");
}

#[tokio::test(flavor = "multi_thread")]
async fn path_normalisation_before_matching() {
    let admin = Upstream::start("admin").await;
    let public = Upstream::start("public").await;
    let exact = Upstream::start("exact").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          admin: {{ targets: [ {{ address: "{}" }} ] }}
          public: {{ targets: [ {{ address: "{}" }} ] }}
          exact: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: admin, match: {{ path_prefix: /admin }}, upstream: admin }}
          - {{ name: public, match: {{ path_prefix: /public }}, upstream: public }}
          - {{ name: exact, match: {{ path: /A-b }}, upstream: exact }}
        "#,
        admin.address(),
        public.address(),
        exact.address()
    )))
    .await;
    // (sent byte for byte, upstream that must answer, path it must receive)
    let cases = [
        ("/public/../admin", "admin", "/admin"),
        ("/public/../admin/x", "admin", "/admin/x"),
        ("/public/%2e%2e/admin", "admin", "/admin"),
        ("/public/%2E%2E/admin", "admin", "/admin"),
        ("/public/./x", "public", "/public/x"),
        ("//public///x", "public", "/public/x"),
        ("/../public/x", "public", "/public/x"),
        ("/admin/../public/x", "public", "/public/x"),
        ("/%70ublic/x", "public", "/public/x"),
        ("/%41%2Db", "exact", "/A-b"),
        ("/%41%2db", "exact", "/A-b"),
    ];
    for (path, want, upstream_path) in cases {
        let r = raw::get(gw.addr(), path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(
            served_by(&r),
            want,
            "GET {path} routed to the wrong upstream"
        );
        let u = [&admin, &public, &exact]
            .into_iter()
            .find(|u| u.name() == want)
            .unwrap();
        assert_eq!(
            u.last_request().unwrap().path,
            upstream_path,
            "path sent upstream for {path}"
        );
    }

    // Reserved characters stay encoded; the query is not touched.
    let r = raw::get(gw.addr(), "/public/a%2Fb?q=a/../b").await;
    assert_eq!(served_by(&r), "public");
    let seen = public.last_request().unwrap();
    assert!(
        seen.path.eq_ignore_ascii_case("/public/a%2Fb"),
        "%2F must not be decoded: {}",
        seen.path
    );
    assert_eq!(seen.query.as_deref(), Some("q=a/../b"));

    // Normalises to `/`, which no route serves.
    let r = raw::get(gw.addr(), "/public/..").await;
    assert_problem(&r, 404);

    for p in public.requests() {
        assert!(!p.path.starts_with("/admin"), "public route saw {}", p.path);
    }
    for u in [&admin, &public, &exact] {
        for p in u.requests() {
            assert!(
                !p.path.contains(".."),
                "{} received a dot segment: {}",
                u.name(),
                p.path
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_max_body_is_413_problem_and_not_forwarded() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: upload, match: {{ path_prefix: / }}, upstream: u, max_body: 1KiB }}
        "#,
        up.address()
    )))
    .await;
    let http = client();
    let r = http
        .post(gw.url("/up"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last_request().unwrap().body_len, 1000);
    assert_eq!(up.hits(), 1);

    let r = http
        .post(gw.url("/up"))
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();
    assert_problem(&Resp::from_reqwest(r).await, 413);
    assert_eq!(
        up.hits(),
        1,
        "an over-size body with Content-Length must not be forwarded"
    );

    // The same limit applies to a chunked body.
    let mut req = b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'b'; 1024]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw::request(gw.addr(), &req)
        .await
        .expect("response to chunked upload");
    assert_problem(&r, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_problem_with_request_id() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          u: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: only, match: {{ path: /only }}, upstream: u }}
        "#,
        up.address()
    )))
    .await;
    let http = client();
    let r = get(&http, &gw.url("/nope")).await;
    assert_problem(&r, 404);
    let r = http
        .get(gw.url("/nope"))
        .header("X-Request-ID", "client-id-7")
        .send()
        .await
        .unwrap();
    let r = Resp::from_reqwest(r).await;
    assert_problem(&r, 404);
    assert_eq!(r.json()["request_id"], "client-id-7");
    assert_eq!(up.hits(), 0);
}
