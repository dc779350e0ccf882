//! What the cache keys on against what reaches the upstream (issue 11, items 1, 2 and 9),
//! through the real gateway:
//!
//! - every identity fact forwarded to the upstream (`X-Consumer-ID`, `X-Auth-Subject`,
//!   `X-Auth-Scopes`) selects the variant of a personalised response, so end users that
//!   share one consumer never get each other's entry, while `public` and `s-maxage`
//!   responses stay shared;
//! - the `Host` the upstream receives is the one the key names (its port included), and
//!   client copies of the URL-building fields (`X-Forwarded-Host`, `Forwarded`,
//!   `X-Original-URL`, `X-Rewrite-URL`, ...) are removed unless the route trusts them
//!   from a trusted proxy, and then they select the variant;
//! - a stale-while-revalidate refresh carries the identity of the request that started
//!   it and is not counted again (authentication, limits), over HTTP/1.1 and HTTP/2.

use crate::common;

use common::origin::{advance, cache_status, send, Origin, Reply, Seen};
use common::ratelimit::Fields;
use common::tokens::{claims, sign_hmac};
use common::{certs_dir, client, config, dedent, eventually, free_port, raw, Gateway, Resp};
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

const HMAC: &str = "an-hmac-secret-of-at-least-32-bytes!";
const CORP: &str = "https://id.test/";
const APPS: &str = "https://apps.test/";
const AUD: &str = "api.test";

/// Two issuers: `corp` names the consumer by `sub` (alice and bob are both consumer
/// `partner` through `jwt_subjects`), `apps` by `client_id` (every user of client
/// `app-1` is consumer `app`).
async fn jwt_gateway(o: &Origin) -> Gateway {
    Gateway::start(&config(&format!(
        r#"
        cache: {{ memory: 4MiB }}
        upstreams:
          o: {{ targets: [ {{ address: "{}" }} ] }}
        auth:
          jwt:
            - {{ name: corp, issuer: "{CORP}", audiences: [{AUD}], algorithms: [HS256], hmac_secret: "{HMAC}" }}
            - {{ name: apps, issuer: "{APPS}", audiences: [{AUD}], algorithms: [HS256], hmac_secret: "{HMAC}", consumer_claim: client_id }}
        consumers:
          - {{ id: partner, jwt_subjects: [alice, bob] }}
          - {{ id: app, jwt_subjects: [app-1] }}
        routes:
          - {{ name: me, match: {{ path_prefix: / }}, upstream: o, auth: [jwt], cache: {{}} }}
        "#,
        o.address()
    )))
    .await
}

fn token(iss: &str, sub: &str, scope: &str, extra: &[(&str, &str)]) -> String {
    let mut c = claims(iss, AUD, sub, scope);
    for (k, v) in extra {
        c[*k] = json!(v);
    }
    sign_hmac(HMAC.as_bytes(), Algorithm::HS256, &c)
}

async fn get_as(gw: &Gateway, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(&client(), "GET", &gw.url(path), &[("authorization", &auth)]).await
}

/// The body names what the upstream was told: consumer, subject, scopes, and the count.
fn personalised(cc: &'static str) -> impl Fn(&Seen, usize) -> Reply {
    move |s, n| {
        let h = |name| s.header(name).unwrap_or_default();
        Reply::ok(
            cc,
            format!(
                "{}/{}/{}#{n}",
                h("x-consumer-id"),
                h("x-auth-subject"),
                h("x-auth-scopes")
            ),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn end_users_of_one_consumer_never_get_each_others_personalised_entry() {
    let o = Origin::start().await;
    o.script("/me", personalised("max-age=60"));
    let gw = jwt_gateway(&o).await;
    let alice = token(CORP, "alice", "read", &[]);
    let r = get_as(&gw, "/me", &alice).await;
    assert_eq!(r.text(), "partner/alice/read#1");

    // Leak attempt 1: bob, same consumer (jwt_subjects), same scopes.
    let bob = token(CORP, "bob", "read", &[]);
    let r = get_as(&gw, "/me", &bob).await;
    assert_eq!(
        r.text(),
        "partner/bob/read#2",
        "bob was served alice's entry"
    );
    assert!(!cache_status(&r).contains("; hit"), "{}", cache_status(&r));

    // Leak attempt 2: alice again with other scopes (the upstream is told other scopes).
    let alice_rw = token(CORP, "alice", "read write", &[]);
    let r = get_as(&gw, "/me", &alice_rw).await;
    assert_eq!(r.text(), "partner/alice/read write#3");

    // Leak attempt 3: two users of one client (consumer_claim: client_id).
    let carol = token(APPS, "carol", "read", &[("client_id", "app-1")]);
    let dave = token(APPS, "dave", "read", &[("client_id", "app-1")]);
    assert_eq!(get_as(&gw, "/me", &carol).await.text(), "app/carol/read#4");
    let r = get_as(&gw, "/me", &dave).await;
    assert_eq!(r.text(), "app/dave/read#5", "dave was served carol's entry");

    // Legitimate shared hits: the same identity facts, even with a new token.
    let alice_again = token(CORP, "alice", "read", &[("jti", "another-token")]);
    for (t, want) in [
        (&alice_again, "partner/alice/read#1"),
        (&bob, "partner/bob/read#2"),
        (&alice_rw, "partner/alice/read write#3"),
        (&dave, "app/dave/read#5"),
    ] {
        let r = get_as(&gw, "/me", t).await;
        assert_eq!(r.text(), want);
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    }
    assert_eq!(o.hits("/me"), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_and_s_maxage_responses_stay_shared_between_end_users() {
    let o = Origin::start().await;
    o.script("/public", personalised("public, max-age=60"));
    o.script("/smax", personalised("s-maxage=60"));
    let gw = jwt_gateway(&o).await;
    let alice = token(CORP, "alice", "read", &[]);
    let dave = token(APPS, "dave", "write", &[("client_id", "app-1")]);
    for p in ["/public", "/smax"] {
        assert_eq!(get_as(&gw, p, &alice).await.text(), "partner/alice/read#1");
        let r = get_as(&gw, p, &dave).await;
        assert_eq!(r.text(), "partner/alice/read#1", "{p} is one shared entry");
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        assert_eq!(o.hits(p), 1);
    }
}

/// A caching route on any host whose origin answers with the request fields that
/// frameworks build absolute URLs and routes from.
fn echo_forwarded(s: &Seen, n: usize) -> Reply {
    let mut body = String::new();
    for name in [
        "host",
        "x-forwarded-host",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ] {
        if let Some(v) = s.header(name) {
            body.push_str(&format!("{name}={v};"));
        }
    }
    Reply::ok("max-age=60", format!("{body}#{n}"))
}

async fn forwarded_gateway(o: &Origin, trusted_proxies: &str) -> Gateway {
    Gateway::start(&common::config_with_server(
        &format!("trusted_proxies: {trusted_proxies}"),
        &format!(
            r#"
            cache: {{ memory: 4MiB }}
            upstreams:
              o: {{ targets: [ {{ address: "{}" }} ] }}
            routes:
              - {{ name: trusted, match: {{ path_prefix: /trusted }}, upstream: o, cache: {{}}, trust_forwarded_headers: true }}
              - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: o }}
              - {{ name: c, match: {{ path_prefix: / }}, upstream: o, cache: {{}} }}
            "#,
            o.address()
        ),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_made_for_another_host_port_is_never_served_for_the_host() {
    let o = Origin::start().await;
    o.script("/page", echo_forwarded);
    let gw = forwarded_gateway(&o, "[10.0.0.0/8]").await;
    // Poisoning attempt: the upstream builds its links from `site:31337`.
    let r = raw::get_with(gw.addr(), "/page", "site:31337", &[]).await;
    assert_eq!(r.text(), "host=site:31337;#1");
    let r = raw::get_with(gw.addr(), "/page", "site", &[]).await;
    assert_eq!(
        r.text(),
        "host=site;#2",
        "served the entry made for site:31337"
    );
    // Legitimate hits: the same authority (host names compare case-insensitively, and
    // the upstream is sent the form the key names).
    for host in ["site", "SITE", "site:31337"] {
        let r = raw::get_with(gw.addr(), "/page", host, &[]).await;
        let want = if host == "site:31337" {
            "host=site:31337;#1"
        } else {
            "host=site;#2"
        };
        assert_eq!(r.text(), want, "Host {host}");
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    }
    assert_eq!(o.hits("/page"), 2);
    // An absolute-form target whose Host field names another authority is refused
    // before routing (Pingora's parser), so it cannot make the upstream see one
    // authority while the key names another.
    let req = "GET http://site/page?abs HTTP/1.1\r\nHost: evil:31337\r\nConnection: close\r\n\r\n";
    let r = raw::request(gw.addr(), req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(o.hits("/page"), 2);
    // One that agrees is keyed and forwarded on that authority.
    let req =
        "GET http://site:31337/page HTTP/1.1\r\nHost: site:31337\r\nConnection: close\r\n\r\n";
    let r = raw::request(gw.addr(), req.as_bytes()).await.unwrap();
    assert_eq!(r.text(), "host=site:31337;#1");
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
}

const FORWARDED_FIELDS: [(&str, &str); 6] = [
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "host=evil.example;proto=https"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-forwarded-port", "31337"),
    ("x-forwarded-prefix", "/evil"),
];

#[tokio::test(flavor = "multi_thread")]
async fn client_copies_of_url_building_fields_are_removed_and_cannot_poison() {
    let o = Origin::start().await;
    o.script("/page", echo_forwarded);
    o.script("/plain", echo_forwarded);
    // 127.0.0.1 is not trusted here, so even the trusting route removes them.
    let gw = forwarded_gateway(&o, "[10.0.0.0/8]").await;
    for (i, (name, value)) in FORWARDED_FIELDS.iter().enumerate() {
        let path = format!("/page?f={i}");
        // Poisoning attempt: the field reaches neither the upstream nor the entry.
        let r = raw::get_with(gw.addr(), &path, "site", &[(name, value)]).await;
        assert_eq!(r.status, 200);
        assert!(
            !r.text().contains("evil")
                && !r.text().contains("admin")
                && !r.text().contains("31337"),
            "{name} reached the upstream: {}",
            r.text()
        );
        assert!(o.seen("/page").last().unwrap().header(name).is_none());
        // The legitimate request is a hit on that clean entry.
        let r = raw::get_with(gw.addr(), &path, "site", &[]).await;
        assert_eq!(r.text(), format!("host=site;#{}", i + 1));
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        // Routes without cache, and the trusting route from an untrusted peer, too.
        raw::get_with(gw.addr(), "/plain", "site", &[(name, value)]).await;
        assert!(
            o.seen("/plain").last().unwrap().header(name).is_none(),
            "{name} on /plain"
        );
        raw::get_with(gw.addr(), "/trusted", "site", &[(name, value)]).await;
    }
    assert!(o.seen("/trusted").iter().all(|s| FORWARDED_FIELDS
        .iter()
        .all(|(name, _)| s.header(name).is_none())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_that_trusts_forwarded_fields_from_a_trusted_proxy_keys_on_them() {
    let o = Origin::start().await;
    o.script("/trusted", echo_forwarded);
    let gw = forwarded_gateway(&o, "[127.0.0.1/32]").await;
    for (i, (name, value)) in FORWARDED_FIELDS.iter().enumerate() {
        let path = format!("/trusted?f={i}");
        let with = raw::get_with(gw.addr(), &path, "site", &[(name, value)]).await;
        assert!(
            with.text().contains(&format!("{name}={value};")),
            "{}",
            with.text()
        );
        // Poisoning attempt: the entry made with the field is not served without it...
        let without = raw::get_with(gw.addr(), &path, "site", &[]).await;
        assert_eq!(without.text(), format!("host=site;#{}", 3 * i + 2));
        // ... nor with another value ...
        let other = raw::get_with(gw.addr(), &path, "site", &[(name, "other")]).await;
        assert!(!other.text().contains(value), "{}", other.text());
        // ... and the same value is a legitimate hit.
        let again = raw::get_with(gw.addr(), &path, "site", &[(name, value)]).await;
        assert_eq!(again.text(), with.text());
        assert!(
            cache_status(&again).contains("; hit"),
            "{}",
            cache_status(&again)
        );
    }
}

// --- Item 9: background refreshes on authenticated, limited routes ---

const ACME: &str = "acme-key-1";
/// 2030-01-01T12:00:00Z: both clocks stand there, far from a day boundary, so the daily
/// quota's window never turns during a test.
const AT: u64 = 1_893_499_200;

fn cert(name: &str) -> String {
    certs_dir().join(name).display().to_string()
}

/// A TLS listener (HTTP/2 by ALPN, HTTP/1.1 beside it) in front of `o`, on the test clock
/// frozen at `AT`; route `me` authenticates by API key, has a daily quota per consumer
/// and caches with stale-while-revalidate.
async fn refresh_gateway(o: &Origin) -> Gateway {
    let hash = gatehouse::hash_key(ACME);
    let yaml = format!(
        "version: 1\n\
         server: {{ threads: 1, grace_period: 5s }}\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   address: \"127.0.0.1:{}\"\n\
         \x20   tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ], http2: true }}\n\
         admin: {{ address: \"127.0.0.1:{}\", token: {} }}\n\
         access_log: {{ path: \"off\" }}\n{}",
        free_port(),
        cert("a.test.pem"),
        cert("a.test.key"),
        free_port(),
        common::TOKEN,
        dedent(&format!(
            r#"
            cache: {{ memory: 4MiB }}
            upstreams:
              o: {{ targets: [ {{ address: "{}" }} ] }}
            auth:
              api_key: {{ header: X-API-Key }}
            consumers:
              - {{ id: acme, api_keys: ["{hash}"] }}
            routes:
              - {{ name: me, match: {{ path_prefix: / }}, upstream: o, auth: [api_key], quota: {{ limit: 1000/day }}, cache: {{}} }}
            "#,
            o.address()
        ))
    );
    let at = o.freeze_date(Some(AT)).to_string();
    Gateway::start_with_env(&yaml, &[common::test_clock(&at)]).await
}

fn https_client(gw: &Gateway, http1_only: bool) -> reqwest::Client {
    let ca = std::fs::read(certs_dir().join("ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("a.test", gw.addr());
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// One client request for `url` with acme's key; checks the protocol and that the quota
/// counted exactly one more request (`used` counts them).
async fn client_get(
    http: &reqwest::Client,
    url: &str,
    used: &AtomicI64,
    version: reqwest::Version,
) -> Resp {
    let n = used.fetch_add(1, Ordering::SeqCst) + 1;
    let r = http
        .get(url)
        .header("x-api-key", ACME)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    assert_eq!(r.version(), version);
    let r = Resp::from_reqwest(r).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let remaining = Fields::of(&r).remaining("route.me.quota");
    assert_eq!(remaining, 1000 - n, "after {n} client requests");
    r
}

async fn refresh_is_one_request_with_its_identity(http1_only: bool) {
    let o = Origin::start().await;
    o.script("/swr", |s, n| {
        Reply::ok(
            "max-age=10, stale-while-revalidate=60",
            format!("{}#{n}", s.header("x-consumer-id").unwrap_or_default()),
        )
    });
    let gw = refresh_gateway(&o).await;
    let http = https_client(&gw, http1_only);
    let url = format!("https://a.test:{}/swr", gw.addr().port());
    let want_version = if http1_only {
        reqwest::Version::HTTP_11
    } else {
        reqwest::Version::HTTP_2
    };
    let used = AtomicI64::new(0);
    let get = || client_get(&http, &url, &used, want_version);
    assert_eq!(get().await.text(), "acme#1");
    assert!(cache_status(&get().await).contains("; hit"));
    advance(&gw, &o, 15).await;
    let r = get().await;
    assert_eq!(r.text(), "acme#1", "the stale entry is served at once");
    assert!(
        cache_status(&r).contains("detail=stale-while-revalidate"),
        "{}",
        cache_status(&r)
    );
    // The refresh reaches the origin once, as the consumer who started it, and
    // replaces the entry.
    let refreshed = eventually(Duration::from_secs(5), || async { o.hits("/swr") == 2 }).await;
    assert!(refreshed.is_some(), "no refresh reached the origin");
    let seen = o.seen("/swr");
    assert_eq!(seen[1].header("x-consumer-id").as_deref(), Some("acme"));
    assert!(
        seen[1].header("x-api-key").is_none(),
        "the credential went upstream"
    );
    let served = eventually(Duration::from_secs(5), || async {
        let r = get().await;
        r.text() == "acme#2" && cache_status(&r).contains("; hit")
    })
    .await;
    assert!(served.is_some(), "the refreshed entry is not served");
    assert_eq!(o.hits("/swr"), 2);
    let m = gw.metrics().await;
    assert_eq!(m.sum("gatehouse_auth_failures_total", &[]), 0.0);
    assert_eq!(m.sum("gatehouse_ratelimit_rejections_total", &[]), 0.0);
    // The refresh is no client request: the request counter comes to the client's
    // requests (each is counted once its response is written, hence the wait).
    let clients = used.load(Ordering::SeqCst) as f64;
    let counted = eventually(Duration::from_secs(5), || async {
        let m = gw.metrics().await;
        m.sum("gatehouse_http_requests_total", &[("route", "me")]) == clients
    })
    .await;
    assert!(
        counted.is_some(),
        "requests counted: {} for {clients} client requests",
        gw.metrics()
            .await
            .sum("gatehouse_http_requests_total", &[("route", "me")])
    );
    // A refresh that never started used to drop its write lock unreleased (Pingora's
    // "Dangling cache lock" assertion, a panic in debug builds).
    assert!(!gw.stderr().contains("panicked"), "{}", gw.logs_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_refresh_over_http1_carries_its_identity_and_is_not_counted_again() {
    refresh_is_one_request_with_its_identity(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_refresh_over_http2_carries_its_identity_and_is_not_counted_again() {
    refresh_is_one_request_with_its_identity(false).await;
}

/// A method override on a GET never reaches the upstream (a backend that honoured it
/// would act as DELETE on a request cached as a GET), so the cached entry is the GET's;
/// on a POST it is the client's business and passes.
#[tokio::test(flavor = "multi_thread")]
async fn method_overrides_on_a_get_are_removed_and_kept_on_a_post() {
    let o = Origin::start().await;
    o.script("/m", |s, n| {
        let over = [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .iter()
        .filter_map(|name| s.header(name).map(|v| format!("{name}={v};")))
        .collect::<String>();
        Reply::ok("max-age=60", format!("{} {over}#{n}", s.method))
    });
    let gw = forwarded_gateway(&o, "[10.0.0.0/8]").await;
    for (i, name) in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/m?i={i}");
        let r = raw::get_with(gw.addr(), &path, "site", &[(name, "DELETE")]).await;
        assert_eq!(
            r.text(),
            format!("GET #{}", i + 1),
            "{name} reached the upstream"
        );
        let r = raw::get_with(gw.addr(), &path, "site", &[]).await;
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    }
    let r = common::client()
        .post(gw.url("/m"))
        .header("x-http-method-override", "PATCH")
        .body("x")
        .send()
        .await
        .expect("POST");
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("POST x-http-method-override=PATCH;"),
        "the override on a POST is kept"
    );
}
