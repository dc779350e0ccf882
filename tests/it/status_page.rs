//! The status page (`admin.ui: true`): served from the binary on the admin listener,
//! self-contained, fed by the token-protected `/admin/status`, and driven by a real
//! browser (headless Chromium over the DevTools protocol, installed by scripts/test.sh)
//! against a live gateway: the token is typed into the page's form.

use crate::common;

use common::{client, config, tokens, Gateway, Upstream, FAST_HEALTH, TOKEN};
use serde_json::{json, Value};

/// Limits never refill while a test runs.
const CLOCK: (&str, &str) = common::test_clock("2030-01-01T00:00:00Z");
const ISS: &str = "https://corp.test/";
const AUD: &str = "api.test";
const HMAC: &str = "status-page-test-secret-0123456789abcdef";

/// A public route `orders` over two targets, and `api` behind API keys or JWTs, with
/// tier limits (free: 2 at once then 1/min; metered: a 3/day quota; default, for JWT
/// subjects listed nowhere: 1 at once) and a 100/day quota per consumer.
fn yaml(a: &Upstream, b: &Upstream, ui: bool) -> String {
    let h = gatehouse::hash_key;
    config(&format!(
        r#"
        upstreams:
          orders-svc:
            targets: [ {{ address: "{}" }}, {{ address: "{}" }} ]
            health: {FAST_HEALTH}
        auth:
          api_key: {{ header: X-API-Key }}
          jwt:
            - {{ name: corp, issuer: "{ISS}", audiences: [{AUD}], algorithms: [HS256], hmac_secret: "{HMAC}" }}
        tiers:
          free: {{ rate: 1/min, burst: 2 }}
          metered: {{ rate: 1000/s, burst: 1000, quota: 3/day }}
          default: {{ rate: 1/min, burst: 1 }}
        consumers:
          - {{ id: acme, tier: free, api_keys: ["{}"] }}
          - {{ id: globex, tier: metered, api_keys: ["{}"] }}
          - {{ id: initech, tier: free, api_keys: ["{}"] }}
          - {{ id: idle, tier: free, api_keys: ["{}"] }}
        routes:
          - {{ name: orders, match: {{ path_prefix: /orders }}, upstream: orders-svc }}
          - name: api
            match: {{ path_prefix: /api }}
            upstream: orders-svc
            auth: [api_key, jwt]
            quota: {{ limit: 100/day }}
        "#,
        a.address(),
        b.address(),
        h("key-acme"),
        h("key-globex"),
        h("key-initech"),
        h("key-idle"),
    ))
    .replace(
        &format!("token: {TOKEN} }}"),
        &format!("token: {TOKEN}, ui: {ui} }}"),
    )
}

fn jwt(sub: &str) -> String {
    tokens::sign_hmac(
        HMAC.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
        &tokens::claims(ISS, AUD, sub, ""),
    )
}

/// Sends `n` requests to `/api` with `header: value`; returns how many were refused
/// with 429 (every other answer must be 200).
async fn api_calls(gw: &Gateway, header: &str, value: &str, n: usize) -> usize {
    let c = client();
    let mut refused = 0;
    for _ in 0..n {
        let r = c
            .get(gw.url("/api/x"))
            .header(header, value)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => {}
            429 => refused += 1,
            s => panic!("{header}: unexpected {s}: {}", r.text().await.unwrap()),
        }
    }
    refused
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_self_contained_and_its_data_needs_the_token() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&yaml(&a, &b, true)).await;
    let c = client();
    let page = c.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/status"));
    assert!(!html.contains(TOKEN), "the page carries no secret");
    for external in [
        "<script src",
        "<link",
        "@import",
        "http://",
        "https://",
        "url(",
    ] {
        assert!(
            !html.contains(external),
            "no external resource: found {external:?}"
        );
    }
    let r = c.get(gw.admin_url("/admin/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let s: serde_json::Value = gw.admin_get("/admin/status").await.json().await.unwrap();
    assert_eq!(s["routes"][0]["name"], "orders");
    assert_eq!(s["upstreams"][0]["name"], "orders-svc");
    assert_eq!(s["config"]["history"][0]["result"], "start");
    assert!(s["listeners"][0]["open_connections"].is_number());

    // Off by default (and here, off explicitly): no page.
    let gw2 = Gateway::start(&yaml(&a, &b, false)).await;
    assert_eq!(
        c.get(gw2.admin_url("/")).send().await.unwrap().status(),
        404
    );
}

/// A route whose destination is not one upstream (versions, split, aggregate) shows
/// every upstream it may send to.
#[tokio::test]
async fn status_names_every_upstream_of_a_route() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&format!(
        r#"
        upstreams:
          blue: {{ targets: [ {{ address: "{}" }} ] }}
          green: {{ targets: [ {{ address: "{}" }} ] }}
        routes:
          - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: blue }}
          - name: canary
            match: {{ path_prefix: /c }}
            split: {{ weights: {{ blue: 90, green: 10 }}, key: ip }}
          - name: api
            match: {{ path_prefix: /api }}
            versions: {{ upstreams: {{ "1": blue, "2": green }} }}
        "#,
        a.address(),
        b.address(),
    )))
    .await;
    let s: Value = gw.admin_get("/admin/status").await.json().await.unwrap();
    let upstream_of = |name: &str| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["upstream"].clone())
    };
    assert_eq!(upstream_of("plain"), Some(json!("blue")));
    assert_eq!(upstream_of("canary"), Some(json!("blue, green")));
    assert_eq!(upstream_of("api"), Some(json!("blue, green")));
}

/// The top consumers through sockets: requests and refusals per consumer, ranked,
/// their quota use (tier quota and the route's per-consumer quota, used / limit per
/// window), unlisted JWT subjects kept to a bounded sketch, and no consumer id in
/// `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn status_json_ranks_consumers_with_refusals_and_quota_use() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start_env(&yaml(&a, &b, false), &[CLOCK]).await;
    gw.wait_healthy("orders-svc", &[&a.address(), &b.address()])
        .await;
    assert_eq!(api_calls(&gw, "x-api-key", "key-acme", 4).await, 2);
    assert_eq!(api_calls(&gw, "x-api-key", "key-globex", 5).await, 2);
    assert_eq!(api_calls(&gw, "x-api-key", "key-initech", 1).await, 0);
    let bob = format!("Bearer {}", jwt("bob"));
    assert_eq!(api_calls(&gw, "authorization", &bob, 4).await, 3);

    let s: Value = gw.admin_get("/admin/status").await.json().await.unwrap();
    let c = &s["consumers"];
    let ids: Vec<&str> = c["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    // By refusals, then requests; `idle` made none and is left out.
    assert_eq!(ids, ["corp:bob", "globex", "acme", "initech"], "{c:#}");
    let top = |id: &str| {
        c["top"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    let acme = top("acme");
    assert_eq!(acme["tier"], "free");
    assert_eq!(acme["listed"], true);
    assert_eq!(acme["requests"], 4);
    assert_eq!(acme["refused"], 2);
    assert_eq!(
        acme["refused_by_limit"],
        json!({"tier": 2, "rate": 0, "quota": 0})
    );
    assert_eq!(
        acme["quotas"],
        json!([{"name": "route.api.quota", "used": 2, "limit": 100, "window": "day", "resets_in_secs": 86400}]),
        "only admitted requests use the quota"
    );
    let globex = top("globex");
    assert_eq!(
        (globex["requests"].clone(), globex["refused"].clone()),
        (json!(5), json!(2))
    );
    assert_eq!(
        globex["quotas"],
        json!([
            {"name": "tier.metered.quota", "used": 3, "limit": 3, "window": "day", "resets_in_secs": 86400},
            {"name": "route.api.quota", "used": 3, "limit": 100, "window": "day", "resets_in_secs": 86400},
        ])
    );
    let bob = top("corp:bob");
    assert_eq!(bob["listed"], false);
    assert_eq!(bob["tier"], "default");
    assert_eq!(
        bob["requests"],
        Value::Null,
        "unlisted consumers' requests are not kept"
    );
    assert_eq!(
        (bob["refused"].clone(), bob["refused_error"].clone()),
        (json!(3), json!(0))
    );
    assert_eq!(bob["quotas"][0]["used"], 1);
    assert_eq!(top("initech")["refused"], 0);
    assert_eq!(c["listed"], 4);
    assert_eq!(c["unlisted"]["requests"], 4);
    assert_eq!(c["unlisted"]["refused"], 3);

    // Many unlisted subjects: the sketch and the list stay bounded.
    for i in 0..40 {
        let t = format!("Bearer {}", jwt(&format!("flood-{i}")));
        assert_eq!(api_calls(&gw, "authorization", &t, 2).await, 1);
    }
    let s: Value = gw.admin_get("/admin/status").await.json().await.unwrap();
    let c = &s["consumers"];
    assert_eq!(c["unlisted"]["tracked"], 32, "{c:#}");
    assert_eq!(c["unlisted"]["tracked_max"], 32);
    assert_eq!(c["top"].as_array().unwrap().len(), 10);
    assert_eq!(
        c["top"][0]["id"], "corp:bob",
        "the most refused stays on top"
    );
    assert_eq!(c["unlisted"]["refused"], 3 + 40);
    let metrics = gw.metrics_text().await;
    for id in ["acme", "corp:bob", "flood-1"] {
        assert!(!metrics.contains(id), "{id} is no metric label");
    }
}

/// A small DevTools-protocol client: Chromium started with `--remote-debugging-port=0`,
/// one page target driven over its WebSocket (commands by id; events are skipped).
mod cdp {
    use futures::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    pub struct Browser {
        child: Child,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        next_id: u64,
        _profile: crate::common::TestDir,
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Browser {
        /// `None` when Chromium is not installed.
        pub async fn launch() -> Option<Browser> {
            let profile = crate::common::TestDir::new();
            let spawned = Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--hide-scrollbars",
                    "--remote-debugging-port=0",
                    "--window-size=1280,1000",
                ])
                .arg(format!("--user-data-dir={}", profile.path.display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("chromium: {e}"),
            };
            // Chromium writes the port it took into the profile once it listens.
            let port_file = profile.path.join("DevToolsActivePort");
            let mut port = None;
            for _ in 0..600 {
                if let Some(p) = std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
                {
                    port = Some(p);
                    break;
                }
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("chromium exited at start: {st}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let port = port.expect("chromium never wrote DevToolsActivePort");
            let http = crate::common::client();
            let mut page_ws = None;
            for _ in 0..100 {
                let list: Value = match http
                    .get(format!("http://127.0.0.1:{port}/json/list"))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                page_ws = list.as_array().and_then(|l| {
                    l.iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
                });
                if page_ws.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let url = page_ws.expect("chromium shows no page target");
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("DevTools WebSocket");
            Some(Browser {
                child,
                ws,
                next_id: 0,
                _profile: profile,
            })
        }

        /// One command; its `result`.
        pub async fn call(&mut self, method: &str, params: Value) -> Value {
            self.next_id += 1;
            let id = self.next_id;
            let msg = json!({"id": id, "method": method, "params": params}).to_string();
            self.ws
                .send(Message::text(msg))
                .await
                .expect("DevTools send");
            loop {
                let m = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools closed")
                    .expect("DevTools read");
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).expect("DevTools JSON");
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
        }

        /// The value of a JavaScript expression in the page.
        pub async fn eval(&mut self, js: &str) -> Value {
            let r = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
                )
                .await;
            if let Some(ex) = r.get("exceptionDetails") {
                panic!("{js}: {ex}");
            }
            r["result"]["value"].clone()
        }

        /// Polls `js` until it is `true`, at most `tries` times, `every` apart.
        pub async fn wait_for(&mut self, js: &str, tries: usize, every: Duration) -> bool {
            for _ in 0..tries {
                if self.eval(js).await == Value::Bool(true) {
                    return true;
                }
                tokio::time::sleep(every).await;
            }
            false
        }

        /// A left click at the middle of the element `selector`, as a user's mouse.
        pub async fn click(&mut self, selector: &str) {
            let js = format!(
                "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                serde_json::to_string(selector).unwrap()
            );
            let at = self.eval(&js).await;
            let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
            for kind in ["mousePressed", "mouseReleased"] {
                self.call(
                    "Input.dispatchMouseEvent",
                    json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                )
                .await;
            }
        }

        /// Clicks the field and types `text` into it.
        pub async fn type_into(&mut self, selector: &str, text: &str) {
            self.click(selector).await;
            self.call("Input.insertText", json!({"text": text})).await;
        }

        /// The viewport of a screen `width` x `height` (`mobile`: a phone's, which honours
        /// the page's `<meta name=viewport>`).
        pub async fn viewport(&mut self, width: u64, height: u64, mobile: bool) {
            self.call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
            )
            .await;
        }

        /// A PNG of the whole page, `width` px wide.
        pub async fn screenshot(&mut self, width: u64, mobile: bool) -> Vec<u8> {
            use base64::Engine;
            self.viewport(width, 800, mobile).await;
            let h = self.eval("document.documentElement.scrollHeight").await;
            let height = h.as_u64().unwrap_or(1000).max(600);
            self.viewport(width, height, mobile).await;
            let r = self
                .call("Page.captureScreenshot", json!({"format": "png"}))
                .await;
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().expect("screenshot data"))
                .expect("base64 PNG")
        }
    }
}

/// What the test reads of the page's DOM.
const STATE_JS: &str = r##"(() => ({
  login: !document.getElementById("login").hidden,
  app: !document.getElementById("app").hidden,
  banner: document.getElementById("banner").textContent,
  field: document.getElementById("token").value,
  url: location.href,
  routes: [...document.querySelectorAll("td.route-name")].map((e) => e.textContent),
  health: Object.fromEntries([...document.querySelectorAll("[data-target]")].map((e) => [e.dataset.target, e.className])),
  consumers: [...document.querySelectorAll("#consumers tr")].filter((tr) => tr.querySelector(".consumer-id")).map((tr) => ({
    id: tr.querySelector(".consumer-id").textContent,
    refused: tr.querySelector(".consumer-refused").textContent,
    quotas: [...tr.querySelectorAll(".quota-use")].map((e) => e.textContent),
  })),
}))()"##;

/// Types `token` into the login form, submits it and waits (polling every 100 ms, at most
/// 300 times) until `until` holds; the page's state then.
async fn submit(br: &mut cdp::Browser, token: &str, until: &str) -> serde_json::Value {
    br.type_into("#token", token).await;
    br.click("#login button[type=submit]").await;
    let every = std::time::Duration::from_millis(100);
    assert!(
        br.wait_for(until, 300, every).await,
        "{}",
        br.eval(STATE_JS).await
    );
    br.eval(STATE_JS).await
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_takes_the_token_and_shows_health_refusals_and_quotas() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start_env(&yaml(&a, &b, true), &[CLOCK]).await;
    gw.wait_healthy("orders-svc", &[&a.address(), &b.address()])
        .await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            c.get(gw.url("/orders/1")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(api_calls(&gw, "x-api-key", "key-acme", 5).await, 3);
    assert_eq!(api_calls(&gw, "x-api-key", "key-globex", 4).await, 1);

    let Some(mut br) = cdp::Browser::launch().await else {
        eprintln!("SKIPPED status page browser test: chromium is not installed (Debian package `chromium`)");
        return;
    };
    let every = std::time::Duration::from_millis(100);
    br.call("Page.enable", json!({})).await;
    br.call("Page.navigate", json!({"url": gw.admin_url("/")}))
        .await;
    // Without a token the page asks for one and shows nothing else.
    assert!(
        br.wait_for(
            "document.readyState === 'complete' && document.getElementById('login')?.hidden === false",
            300,
            every
        )
        .await,
        "login form shown: {}",
        br.eval(STATE_JS).await
    );
    assert_eq!(
        br.eval(STATE_JS).await["app"],
        false,
        "status hidden without a token"
    );

    // A wrong token is refused and the form comes back.
    let refused = "document.getElementById('banner').textContent === 'The token was refused.'";
    let st = submit(&mut br, "not-the-token", refused).await;
    assert_eq!(
        (st["login"].clone(), st["app"].clone()),
        (json!(true), json!(false))
    );

    // The right one, typed in.
    let ready = "document.querySelectorAll('td.route-name').length > 0 \
                 && document.querySelectorAll('#consumers .consumer-id').length > 0";
    let st = submit(&mut br, TOKEN, ready).await;
    assert_eq!(
        (st["login"].clone(), st["app"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(st["field"], "", "the field is cleared");
    assert!(
        !st["url"].as_str().unwrap().contains(TOKEN),
        "{}",
        st["url"]
    );
    assert_eq!(st["routes"], json!(["orders", "api"]));
    for t in [a.address(), b.address()] {
        assert_eq!(st["health"][&t], "health health-healthy", "{t}: {st}");
    }
    assert_eq!(
        st["consumers"],
        json!([
            {"id": "acme", "refused": "3", "quotas": ["route.api.quota: 2 / 100 per day"]},
            {"id": "globex", "refused": "1", "quotas": ["tier.metered.quota: 3 / 3 per day", "route.api.quota: 3 / 100 per day"]},
        ]),
        "{st}"
    );

    // A target dies: the page shows it unhealthy, the other still healthy.
    b.stop().await;
    let unhealthy = format!(
        "document.querySelector('[data-target=\"{}\"]')?.className === 'health health-unhealthy'",
        b.address()
    );
    assert!(
        br.wait_for(&unhealthy, 600, every).await,
        "the page never showed {} unhealthy: {}",
        b.address(),
        br.eval(STATE_JS).await
    );
    let st = br.eval(STATE_JS).await;
    assert_eq!(st["health"][&a.address()], "health health-healthy", "{st}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let png = br.screenshot(1280, false).await;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture"
    );
    std::fs::write(target.join("status-page.png"), png).unwrap();

    // On a phone: nothing runs off the side of the page (wide tables scroll in their box).
    br.viewport(390, 844, true).await;
    let fits = "document.documentElement.scrollWidth <= window.innerWidth";
    assert!(
        br.wait_for(fits, 50, every).await,
        "the page is wider than a phone: {} > {}",
        br.eval("document.documentElement.scrollWidth").await,
        br.eval("window.innerWidth").await
    );
    let png = br.screenshot(390, true).await;
    assert!(png.starts_with(b"\x89PNG"), "a real picture");
    std::fs::write(target.join("status-page-phone.png"), png).unwrap();
}
