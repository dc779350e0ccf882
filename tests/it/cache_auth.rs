//! Response cache on authenticated routes: per-consumer entries unless the response is
//! explicitly shareable, and a refused request is never answered from cache.

use crate::common;

use common::origin::{cache_status, send, Origin, Reply};
use common::{assert_problem, client, config, Gateway, Resp};

const ACME: &str = "acme-key-1";
const BETA: &str = "beta-key-1";

async fn gateway(o: &Origin) -> Gateway {
    let acme = gatehouse::policy::consumers::hash_key(ACME);
    let beta = gatehouse::policy::consumers::hash_key(BETA);
    let yaml = config(&format!(
        r#"
        cache: {{ memory: 4MiB }}
        upstreams:
          o: {{ targets: [ {{ address: "{}" }} ] }}
        auth:
          api_key: {{ header: X-API-Key }}
        consumers:
          - {{ id: acme, api_keys: ["{acme}"] }}
          - {{ id: beta, api_keys: ["{beta}"] }}
        routes:
          - {{ name: me, match: {{ path_prefix: / }}, upstream: o, auth: [api_key], cache: {{}} }}
        "#,
        o.address()
    ));
    Gateway::start(&yaml).await
}

async fn get(gw: &Gateway, path: &str, key: Option<&str>) -> Resp {
    let h: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    send(&client(), "GET", &gw.url(path), &h).await
}

fn by_consumer(seen: &common::origin::Seen, n: usize, cc: &str) -> Reply {
    Reply::ok(
        cc,
        format!("{}#{n}", seen.header("x-consumer-id").unwrap_or_default()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_are_per_consumer_unless_the_response_is_public_or_s_maxage() {
    let o = Origin::start().await;
    o.script("/me", |s, n| by_consumer(s, n, "max-age=60"));
    o.script("/public", |s, n| by_consumer(s, n, "public, max-age=60"));
    o.script("/smax", |s, n| by_consumer(s, n, "s-maxage=60"));
    let gw = gateway(&o).await;
    assert_eq!(get(&gw, "/me", Some(ACME)).await.text(), "acme#1");
    let r = get(&gw, "/me", Some(BETA)).await;
    assert_eq!(r.text(), "beta#2", "beta was served acme's entry");
    assert!(
        cache_status(&r).contains("fwd=vary-miss"),
        "{}",
        cache_status(&r)
    );
    for _ in 0..2 {
        let r = get(&gw, "/me", Some(ACME)).await;
        assert_eq!(r.text(), "acme#1");
        assert!(cache_status(&r).contains("; hit"));
        assert_eq!(get(&gw, "/me", Some(BETA)).await.text(), "beta#2");
    }
    assert_eq!(o.hits("/me"), 2);
    for p in ["/public", "/smax"] {
        assert_eq!(get(&gw, p, Some(ACME)).await.text(), "acme#1");
        let r = get(&gw, p, Some(BETA)).await;
        assert_eq!(r.text(), "acme#1", "{p}: a shareable response is one entry");
        assert!(cache_status(&r).contains("; hit"));
        assert_eq!(o.hits(p), 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_auth_refuses_is_never_answered_from_cache() {
    let o = Origin::start().await;
    o.set("/doc", Reply::ok("public, max-age=600", "doc"));
    let gw = gateway(&o).await;
    assert_eq!(get(&gw, "/doc", Some(ACME)).await.text(), "doc#1");
    assert!(cache_status(&get(&gw, "/doc", Some(ACME)).await).contains("; hit"));
    for key in [None, Some("wrong-key")] {
        let r = get(&gw, "/doc", key).await;
        assert_problem(&r, 401);
        assert!(r.text().find("doc#").is_none());
        assert!(r.header("cache-status").is_none());
    }
    let m = gw.metrics().await;
    let lookups = m.sum("gatehouse_cache_lookups_total", &[("route", "me")]);
    assert_eq!(lookups, 2.0, "refused requests reached the cache");
    assert_eq!(o.hits("/doc"), 1);
}
