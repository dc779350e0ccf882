//! OpenTelemetry traces through real sockets: a loopback OTLP/HTTP receiver decodes what
//! the gateway exports with the OpenTelemetry protobuf definitions (`opentelemetry-proto`)
//! and the tests check span names, parent links across a retry, attributes, sampling and
//! what a collector that is down costs.

use crate::common;

use common::server::Server;
use common::{client, config, free_port, Gateway, Upstream};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost_otlp::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a test waits for exports to arrive (or fail).
const RECEIVE_WAIT: Duration = Duration::from_secs(15);

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect()
    }

    /// Waits (bounded) until `trace_id` has at least `n` spans.
    async fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Span> {
        common::eventually(RECEIVE_WAIT, || async {
            self.of_trace(trace_id).len() >= n
        })
        .await;
        self.of_trace(trace_id)
    }
}

/// A collector: every POST body is decoded as an OTLP `ExportTraceServiceRequest`.
async fn receiver() -> (Server, Received) {
    let got = Received::default();
    let store = got.clone();
    let server = Server::start(
        "otlp",
        0,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let store = store.clone();
            async move {
                use http_body_util::BodyExt;
                let ct = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let path = req.uri().path().to_string();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(path, "/v1/traces");
                assert_eq!(ct, "application/x-protobuf");
                let export =
                    ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut out = store.0.lock().unwrap();
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .as_ref()
                        .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                        .and_then(|a| a.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push((service.clone(), s));
                        }
                    }
                }
                Ok::<_, std::convert::Infallible>(
                    hyper::Response::builder()
                        .header("content-type", "application/x-protobuf")
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
            }
        },
    )
    .await;
    (server, got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    let v = s
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .clone()?;
    Some(match v {
        AnyValue::StringValue(s) => s,
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn tracing_section(endpoint: &str, ratio: f64, queue: usize) -> String {
    format!(
        "tracing: {{ otlp_endpoint: \"{endpoint}\", sample_ratio: {ratio}, service_name: edge-gw, queue: {queue} }}\n"
    )
}

/// The config with an access log in `log` and the `tracing:` section.
fn traced(body: &str, tracing: &str, log: &std::path::Path) -> String {
    config(body).replace(
        "access_log: { path: \"off\" }",
        &format!("access_log: {{ path: \"{}\" }}\n{tracing}", log.display()),
    )
}

/// A gateway with `body`, exporting every request's spans to `otlp` at `ratio`, and its
/// access log (in a directory that lives as long as the returned `TestDir`).
async fn traced_gateway(
    body: &str,
    otlp: &Server,
    ratio: f64,
) -> (Gateway, common::TestDir, std::path::PathBuf) {
    let dir = common::TestDir::new();
    let log = dir.join("access.log");
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", otlp.port);
    let yaml = traced(body, &tracing_section(&endpoint, ratio, 1024), &log);
    (Gateway::start(&yaml).await, dir, log)
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `traceparent` as the upstream received it: (trace id, parent span id, flags).
fn received_parent(up: &Upstream) -> (String, String, String) {
    let tp = up
        .last_request()
        .and_then(|r| r.header("traceparent"))
        .expect("the upstream got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_show_as_client_spans_under_one_server_span() {
    let (otlp, got) = receiver().await;
    let up = Upstream::start("good").await;
    // A port nobody listens on: connects are refused.
    let refused = format!("127.0.0.1:{}", free_port());
    let body = format!(
        r#"
            upstreams:
              u:
                retries: 1
                targets: [ {{ address: "{refused}" }}, {{ address: "{}" }} ]
            routes:
              - {{ name: api, match: {{ path_prefix: /api }}, upstream: u }}
            "#,
        up.address()
    );
    let (gw, _dir, log) = traced_gateway(&body, &otlp, 1.0).await;
    let c = client();
    // Round robin: of two requests, one tries the refused target first.
    let incoming = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut retried = None;
    for i in 0..2 {
        let tid = format!("{}{i:02x}", &incoming[..30]);
        let r = c
            .get(gw.url("/api/x"))
            .header("traceparent", format!("00-{tid}-00f067aa0ba902b7-01"))
            .header("tracestate", "vendor=abc")
            .header("user-agent", "trace-test/1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let (t, parent, flags) = received_parent(&up);
        assert_eq!(t, tid, "the upstream continues the client's trace");
        assert_eq!(flags, "01");
        assert_eq!(
            up.last_request().unwrap().header("tracestate").as_deref(),
            Some("vendor=abc")
        );
        let spans = got.wait_for(&tid, 2).await;
        if spans.len() == 3 {
            retried = Some((tid, parent, spans));
        }
    }
    let (tid, upstream_parent, spans) = retried.expect("one request was retried (3 spans)");
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(server.len(), 1);
    let server = server[0];
    assert_eq!(server.name, "GET api");
    assert_eq!(
        hex(&server.parent_span_id),
        "00f067aa0ba902b7",
        "the client's span is the parent"
    );
    assert_eq!(server.trace_state, "vendor=abc");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "url.path").as_deref(), Some("/api/x"));
    assert_eq!(attr(server, "gatehouse.route").as_deref(), Some("api"));
    assert_eq!(
        attr(server, "user_agent.original").as_deref(),
        Some("trace-test/1")
    );
    assert!(
        server.events.iter().any(|e| e.name == "admit"),
        "{:?}",
        server.events
    );
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2);
    for c in &clients {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "each attempt is a child of the server span"
        );
        assert_eq!(attr(c, "gatehouse.upstream").as_deref(), Some("u"));
    }
    assert_eq!(attr(clients[0], "gatehouse.target"), Some(refused.clone()));
    assert_eq!(
        attr(clients[0], "error.type").as_deref(),
        Some("connect_error")
    );
    assert_eq!(attr(clients[1], "gatehouse.target"), Some(up.address()));
    assert_eq!(
        attr(clients[1], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(clients[1], "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        upstream_parent,
        hex(&clients[1].span_id),
        "the upstream's parent is the attempt that reached it"
    );
    assert_eq!(got.0.lock().unwrap()[0].0, "edge-gw", "service.name");
    // The access log names the trace and the server span.
    let lines = log_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["trace_id"] == tid.as_str() && l["span_id"] == hex(&server.span_id)),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ratio_zero_keeps_sampled_parents_and_errors_only() {
    let (otlp, got) = receiver().await;
    let up = Upstream::start("u").await;
    let failing = Upstream::start("bad").await;
    failing.set_status(503);
    let body = format!(
        r#"
            upstreams:
              u: {{ targets: [ {{ address: "{}" }} ] }}
              bad: {{ targets: [ {{ address: "{}" }} ] }}
            routes:
              - {{ name: ok, match: {{ path_prefix: /ok }}, upstream: u }}
              - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: bad }}
            "#,
        up.address(),
        failing.address()
    );
    let (gw, _dir, log) = traced_gateway(&body, &otlp, 0.0).await;
    let c = client();
    // No parent, ratio 0: not sampled, and told so upstream.
    assert_eq!(
        c.get(gw.url("/ok/plain")).send().await.unwrap().status(),
        200
    );
    let (plain_trace, _, flags) = received_parent(&up);
    assert_eq!(flags, "00");
    // An unsampled parent stays unsampled.
    let unsampled = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let r = c
        .get(gw.url("/ok/unsampled"))
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(received_parent(&up).2, "00");
    // A sampled parent: kept.
    let sampled = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let r = c
        .get(gw.url("/ok/sampled"))
        .header("traceparent", format!("00-{sampled}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(received_parent(&up).2, "01");
    // An error: kept whatever the head decision.
    assert_eq!(
        c.get(gw.url("/broken/x")).send().await.unwrap().status(),
        503
    );
    let (error_trace, _, flags) = received_parent(&failing);
    assert_eq!(flags, "00", "the head decision went upstream");

    let kept = got.wait_for(sampled, 2).await;
    assert_eq!(
        kept.len(),
        2,
        "server and client span of the sampled parent"
    );
    let errs = got.wait_for(&error_trace, 2).await;
    assert_eq!(errs.len(), 2, "server and client span of the error");
    let server = errs
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(server.name, "GET broken");
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("503")
    );
    assert_eq!(attr(server, "error.type").as_deref(), Some("503"));
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
    assert!(
        server.parent_span_id.is_empty(),
        "a new trace: the server span is the root"
    );
    // Both kept traces are in; the unsampled ones were never sent (they would have been
    // queued before the later ones).
    assert!(
        got.of_trace(&plain_trace).is_empty(),
        "no parent, ratio 0: not exported"
    );
    assert!(
        got.of_trace(unsampled).is_empty(),
        "unsampled parent: not exported"
    );
    // The access log carries ids for every request, exported or not.
    let lines = log_lines(&log);
    assert!(lines.iter().any(|l| l["trace_id"] == plain_trace.as_str()));
    let m = gw.metrics().await;
    assert_eq!(m.get("gatehouse_trace_spans_dropped_total", &[]), Some(0.0));
    assert!(
        m.get("gatehouse_trace_spans_exported_total", &[("result", "ok")])
            .unwrap()
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_only_drops() {
    let up = Upstream::start("u").await;
    let dead = free_port();
    let dir = common::TestDir::new();
    let log = dir.join("access.log");
    let yaml = traced(
        &common::one_route(&common::targets(&[&up.address()])),
        &tracing_section(&format!("http://127.0.0.1:{dead}/v1/traces"), 1.0, 4),
        &log,
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for _ in 0..40 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    // 40 requests of 2 spans each against a queue of 4 with no collector: most are dropped
    // at once, and what was queued fails to export.
    let counts = || async {
        let m = gw.metrics().await;
        let dropped = m
            .get("gatehouse_trace_spans_dropped_total", &[])
            .unwrap_or(0.0);
        let failed = m
            .get(
                "gatehouse_trace_spans_exported_total",
                &[("result", "error")],
            )
            .unwrap_or(0.0);
        (dropped, failed)
    };
    common::eventually(RECEIVE_WAIT, || async {
        let (dropped, failed) = counts().await;
        dropped + failed >= 80.0
    })
    .await;
    // Every span is counted once, so the counts stand still once they reach 80.
    let (dropped, failed) = counts().await;
    assert!(dropped >= 40.0, "dropped {dropped}");
    assert!(failed > 0.0, "failed exports {failed}");
    assert_eq!(
        dropped + failed,
        80.0,
        "every span is dropped or failed, none lost silently"
    );
}
