//! OpenTelemetry traces: W3C trace context in and out, one server span per request,
//! one client span per upstream attempt, policy stages as events, and export over
//! OTLP/HTTP (protobuf) from a bounded queue.
//!
//! **How a request is recorded.** `Tracing::begin` reads `traceparent`/`tracestate`
//! (the SDK's `TraceContextPropagator`), takes the parent's trace id or makes a new one,
//! and makes the head decision. The request's spans are not SDK spans: they are a few
//! ids and timestamps kept in its context (`RequestTrace`), since most requests are not
//! exported and an SDK span per request and per attempt would be paid by all of them.
//! At the end (`finish`) the spans are turned into the SDK's `SpanData` and handed to the
//! exporter, or dropped without ever being built.
//!
//! **Sampling.** Head: a request with a parent follows the parent's sampled flag (as the
//! SDK's `ParentBased` sampler does); one without takes the trace-id ratio test of the
//! SDK's `TraceIdRatioBased` (the low 63 bits of the trace id against `sample_ratio`), so
//! every hop that uses the same ratio keeps the same traces. The head decision is the
//! sampled flag sent upstream. Tail: errors (a 5xx or no response, or an attempt that
//! failed even if a retry then succeeded) are decided only when the request ends, which is
//! why the spans are kept in the context until then: the gateway's spans of such a request
//! are exported whatever the head said. The request's spans all end before its server span
//! (the local root), so that one decision covers them all, and no span of a trace leaves
//! without the others. An error kept only by the tail decision went upstream unsampled, so
//! the upstream's own spans of it are not recorded by the upstream.
//!
//! **Export.** A dedicated thread (its own current-thread tokio runtime, started when the
//! first span is queued, so `gatehouse check` starts none) takes the queued spans every
//! `BATCH_DELAY`, or as soon as `MAX_BATCH` are waiting, and posts them with `opentelemetry-otlp`'s HTTP exporter.
//! The queue is bounded in spans (`tracing.queue`): a span counts from the moment it is
//! queued until its batch was sent or failed. A request only ever does a non-blocking
//! push; when the queue is full the request's spans are dropped and counted in
//! `gatehouse_trace_spans_dropped_total`. A collector that is down makes each export fail
//! after at most `EXPORT_TIMEOUT` (a refused connection at once), so the queue fills and
//! further spans are dropped: the requests do not wait and nothing grows.

use crate::config::tracing::Tracing as TracingConfig;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Spans per OTLP request, at most.
const MAX_BATCH: usize = 512;
/// How often the export thread takes what is queued (sooner when a batch is full).
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export (connect, send, answer), at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events kept per request (policy stages are a handful; this only bounds the worst case).
const MAX_EVENTS: usize = 32;

/// What a config's `tracing:` section compiles to; held by the snapshot.
pub struct Tracing {
    /// `sample_ratio` as the SDK's ratio sampler compares it.
    threshold: u64,
    exporter: Arc<Exporter>,
}

impl Tracing {
    /// `previous` is the running snapshot's: its exporter (queue, thread, connection)
    /// is kept when the export settings did not change.
    pub fn compile(cfg: &TracingConfig, previous: Option<&Tracing>) -> Arc<Tracing> {
        let exporter = match previous {
            Some(p) if p.exporter.same_settings(cfg) => p.exporter.clone(),
            _ => Arc::new(Exporter::new(cfg)),
        };
        Arc::new(Tracing {
            threshold: (cfg.sample_ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
            exporter,
        })
    }

    /// The trace of a request that arrived with `headers`.
    pub fn begin(self: &Arc<Self>, headers: &http::HeaderMap) -> RequestTrace {
        // Most requests carry no trace context: skip the propagator (and its Context).
        let parent = if headers.contains_key("traceparent") {
            TraceContextPropagator::new()
                .extract(&HeaderExtractor(headers))
                .span()
                .span_context()
                .clone()
        } else {
            SpanContext::empty_context()
        };
        let (trace_id, parent_span, sampled, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                Some(parent.span_id()),
                parent.is_sampled(),
                parent.trace_state().clone(),
            )
        } else {
            let id = TraceId::from_bytes(rand::random::<[u8; 16]>());
            let sampled = ratio_sampled(id, self.threshold);
            (id, None, sampled, TraceState::default())
        };
        RequestTrace {
            tracing: self.clone(),
            trace_id,
            span_id: new_span_id(),
            parent_span,
            head_sampled: sampled,
            state,
            start: SystemTime::now(),
            events: Vec::new(),
            attempts: Vec::new(),
        }
    }
}

/// The SDK's `TraceIdRatioBased` test.
fn ratio_sampled(id: TraceId, threshold: u64) -> bool {
    let b = id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&b[8..16]);
    (u64::from_be_bytes(low) >> 1) < threshold
}

fn new_span_id() -> SpanId {
    loop {
        let id = SpanId::from_bytes(rand::random::<[u8; 8]>());
        if id != SpanId::INVALID {
            return id;
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context headers for one upstream attempt.
#[derive(Default)]
pub struct Outgoing {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Injector for Outgoing {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// How an upstream attempt ended.
#[derive(Clone, Copy, Debug)]
pub enum AttemptEnd {
    /// The target answered with this status.
    Status(u16),
    /// No (complete) answer: the `error.type` recorded.
    Error(&'static str),
}

struct AttemptSpan {
    span_id: SpanId,
    start: SystemTime,
    end: Option<(SystemTime, AttemptEnd)>,
    upstream: String,
    target: String,
}

/// A request's spans while it runs (see the module's doc).
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    trace_id: TraceId,
    span_id: SpanId,
    parent_span: Option<SpanId>,
    head_sampled: bool,
    state: TraceState,
    start: SystemTime,
    /// (stage, when, the rejection's slug when it refused): attributes are built only for
    /// an exported trace.
    events: Vec<(&'static str, SystemTime, Option<&'static str>)>,
    attempts: Vec<AttemptSpan>,
}

/// What the server span says about the request, given when it ends.
pub struct Finish<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub scheme: &'static str,
    pub host: Option<&'a str>,
    pub flavor: &'static str,
    pub route: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub cache: Option<&'static str>,
    /// Written out only for a request whose spans are kept.
    pub client: Option<std::net::IpAddr>,
    pub user_agent: Option<&'a str>,
    /// The rejection or proxy error that ended the request, if any.
    pub error: Option<&'a str>,
}

impl RequestTrace {
    /// The trace id and the server span's id (the access log writes them as hex).
    pub fn ids(&self) -> (TraceId, SpanId) {
        (self.trace_id, self.span_id)
    }

    /// A stage of the request's handling (admission, a policy) as an event: passed, or
    /// refused with the rejection's slug.
    pub fn event(&mut self, name: &'static str, refused: Option<&'static str>) {
        if self.events.len() < MAX_EVENTS {
            self.events.push((name, SystemTime::now(), refused));
        }
    }

    /// An attempt at `target` of `upstream` starts (one client span each).
    pub fn attempt_start(&mut self, upstream: &str, target: &str) {
        self.close_open_attempt(AttemptEnd::Error("superseded"));
        self.attempts.push(AttemptSpan {
            span_id: new_span_id(),
            start: SystemTime::now(),
            end: None,
            upstream: upstream.to_string(),
            target: target.to_string(),
        });
    }

    /// The current attempt ended; later calls for the same attempt are ignored.
    pub fn attempt_end(&mut self, end: AttemptEnd) {
        if let Some(a) = self.attempts.last_mut() {
            if a.end.is_none() {
                a.end = Some((SystemTime::now(), end));
            }
        }
    }

    fn close_open_attempt(&mut self, end: AttemptEnd) {
        self.attempt_end(end);
    }

    /// `traceparent` (and `tracestate`) for the current attempt: its client span is the
    /// upstream's parent, and the head decision is the sampled flag.
    pub fn outgoing(&self) -> Outgoing {
        let span = self
            .attempts
            .last()
            .map(|a| a.span_id)
            .unwrap_or(self.span_id);
        // The propagator's format (version 00), written into one buffer: this runs for
        // every attempt of every traced request, sampled or not.
        use std::fmt::Write;
        let mut traceparent = String::with_capacity(55);
        let _ = write!(
            traceparent,
            "00-{}-{}-{}",
            self.trace_id,
            span,
            if self.head_sampled { "01" } else { "00" }
        );
        let tracestate = if self.state == TraceState::NONE {
            None
        } else {
            Some(self.state.header()).filter(|s| !s.is_empty())
        };
        Outgoing {
            traceparent,
            tracestate,
        }
    }

    /// The request ended: the tail decision, then (when kept) its spans go to the queue.
    pub fn finish(mut self, f: Finish<'_>) {
        self.close_open_attempt(AttemptEnd::Error("unfinished"));
        let server_error = f.status == 0 || f.status >= 500;
        let attempt_failed = self.attempts.iter().any(|a| {
            matches!(a.end, Some((_, AttemptEnd::Error(_))))
                || matches!(a.end, Some((_, AttemptEnd::Status(s))) if s >= 500)
        });
        if !(self.head_sampled || server_error || attempt_failed) {
            return;
        }
        let end = SystemTime::now();
        let flags = TraceFlags::SAMPLED;
        let scope = scope();
        let mut spans = Vec::with_capacity(1 + self.attempts.len());
        let mut attrs = vec![
            KeyValue::new("http.request.method", f.method.to_string()),
            KeyValue::new("url.path", f.path.to_string()),
            KeyValue::new("url.scheme", f.scheme),
            KeyValue::new("network.protocol.version", f.flavor),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
        ];
        if let Some(h) = f.host {
            attrs.push(KeyValue::new("server.address", h.to_string()));
        }
        if let Some(c) = f.client {
            attrs.push(KeyValue::new("client.address", c.to_string()));
        }
        if let Some(ua) = f.user_agent {
            attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
        }
        if let Some(r) = f.route {
            attrs.push(KeyValue::new("gatehouse.route", r.to_string()));
        }
        if let Some(c) = f.consumer {
            attrs.push(KeyValue::new("gatehouse.consumer", c.to_string()));
        }
        if let Some(c) = f.cache {
            attrs.push(KeyValue::new("gatehouse.cache", c));
        }
        if let Some(e) = f.error {
            attrs.push(KeyValue::new("gatehouse.reject", e.to_string()));
        }
        let status = if server_error {
            let t = if f.status == 0 {
                f.error.unwrap_or("no_response").to_string()
            } else {
                f.status.to_string()
            };
            attrs.push(KeyValue::new("error.type", t.clone()));
            Status::error(t)
        } else {
            Status::Unset
        };
        let name = match f.route {
            Some(r) => format!("{} {r}", f.method),
            None => f.method.to_string(),
        };
        for (i, a) in self.attempts.iter().enumerate() {
            let (a_end, outcome) = a.end.unwrap_or((end, AttemptEnd::Error("unfinished")));
            let mut attrs = vec![
                KeyValue::new("http.request.method", f.method.to_string()),
                KeyValue::new("gatehouse.upstream", a.upstream.to_string()),
                KeyValue::new("gatehouse.target", a.target.to_string()),
            ];
            if let Some((host, port)) = a.target.rsplit_once(':') {
                attrs.push(KeyValue::new("server.address", host.to_string()));
                if let Ok(p) = port.parse::<i64>() {
                    attrs.push(KeyValue::new("server.port", p));
                }
            }
            if i > 0 {
                attrs.push(KeyValue::new("http.request.resend_count", i as i64));
            }
            let status = match outcome {
                AttemptEnd::Status(s) => {
                    attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
                    if s >= 500 {
                        attrs.push(KeyValue::new("error.type", s.to_string()));
                        Status::error(s.to_string())
                    } else {
                        Status::Unset
                    }
                }
                AttemptEnd::Error(e) => {
                    attrs.push(KeyValue::new("error.type", e));
                    Status::error(e)
                }
            };
            spans.push(SpanData {
                span_context: SpanContext::new(
                    self.trace_id,
                    a.span_id,
                    flags,
                    false,
                    self.state.clone(),
                ),
                parent_span_id: self.span_id,
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Owned(f.method.to_string()),
                start_time: a.start,
                end_time: a_end,
                attributes: attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            });
        }
        let mut events = SpanEvents::default();
        for (name, at, refused) in std::mem::take(&mut self.events) {
            let attributes = match refused {
                Some(slug) => vec![
                    KeyValue::new("gatehouse.outcome", "refused"),
                    KeyValue::new("gatehouse.reject", slug),
                ],
                None => vec![KeyValue::new("gatehouse.outcome", "passed")],
            };
            events.events.push(Event::new(name, at, attributes, 0));
        }
        spans.push(SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                self.span_id,
                flags,
                false,
                self.state.clone(),
            ),
            parent_span_id: self.parent_span.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: self.parent_span.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: end,
            attributes: attrs,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope,
        });
        self.tracing.exporter.push(spans);
    }
}

fn scope() -> InstrumentationScope {
    static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("gatehouse")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

/// The bounded queue and the thread that empties it.
pub struct Exporter {
    settings: (String, String, usize),
    queued: Arc<AtomicUsize>,
    /// What the requests hand over and the thread takes, batch by batch.
    shared: Arc<Shared>,
    /// Whether the thread runs; settled by the first span (`false`: it could not start).
    started: std::sync::OnceLock<bool>,
}

/// The spans waiting for the export thread. A request appends under a short lock and
/// does not wake the thread: it wakes on its own every `BATCH_DELAY`, or when a push fills
/// a batch. A wake-up per request (what a channel's send does to a waiting receiver) cost
/// a context switch per request on the proxy's CPU, about a third of the cost of tracing
/// every request.
struct Shared {
    spans: Mutex<Vec<SpanData>>,
    wake: tokio::sync::Notify,
    /// The exporter is gone (a reload replaced it): send what is left, then stop.
    closed: std::sync::atomic::AtomicBool,
}

impl Exporter {
    fn new(cfg: &TracingConfig) -> Exporter {
        Exporter {
            settings: (
                cfg.otlp_endpoint.clone(),
                cfg.service_name.clone(),
                cfg.queue,
            ),
            queued: Arc::new(AtomicUsize::new(0)),
            shared: Arc::new(Shared {
                spans: Mutex::new(Vec::new()),
                wake: tokio::sync::Notify::new(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
            started: std::sync::OnceLock::new(),
        }
    }

    fn same_settings(&self, cfg: &TracingConfig) -> bool {
        self.settings
            == (
                cfg.otlp_endpoint.clone(),
                cfg.service_name.clone(),
                cfg.queue,
            )
    }

    /// Never waits (beyond the append's lock): the spans are queued, or dropped and counted.
    fn push(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let cap = self.settings.2;
        let dropped = || {
            crate::metrics::metrics()
                .trace_spans_dropped
                .inc_by(n as u64)
        };
        if self
            .queued
            .fetch_update(Relaxed, Relaxed, |q| (q + n <= cap).then_some(q + n))
            .is_err()
        {
            dropped();
            return;
        }
        if !*self.started.get_or_init(|| self.start()) {
            self.queued.fetch_sub(n, Relaxed);
            dropped();
            return;
        }
        let waiting = {
            let mut q = self.shared.spans.lock().unwrap_or_else(|e| e.into_inner());
            q.extend(spans);
            q.len()
        };
        // Only the push that fills a batch wakes the thread.
        if waiting >= MAX_BATCH && waiting - n < MAX_BATCH {
            self.shared.wake.notify_one();
        }
    }

    fn start(&self) -> bool {
        let (endpoint, service, _) = self.settings.clone();
        let queued = self.queued.clone();
        let shared = self.shared.clone();
        let started = std::thread::Builder::new()
            .name("gatehouse-otlp".into())
            .spawn(move || export_loop(shared, queued, endpoint, service));
        match started {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("tracing: cannot start the export thread: {e}");
                false
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Relaxed);
        self.shared.wake.notify_one();
    }
}

/// The export thread: every `BATCH_DELAY` (or when a batch is full) it takes what is
/// queued and sends it in batches of at most `MAX_BATCH`; once the exporter is gone (a
/// reload replaced it and the last snapshot using it ended) it sends what is left and exits.
fn export_loop(shared: Arc<Shared>, queued: Arc<AtomicUsize>, endpoint: String, service: String) {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("tracing: export runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .unwrap_or_default();
        let built = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build();
        let mut exporter = match built {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!("tracing: OTLP exporter for {endpoint}: {e}");
                None
            }
        };
        if let Some(e) = exporter.as_mut() {
            e.set_resource(
                &opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            );
        }
        let m = crate::metrics::metrics();
        let mut logged_failure = false;
        loop {
            let closed = shared.closed.load(Relaxed);
            if !closed {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(BATCH_DELAY) => {}
                }
            }
            let mut taken =
                std::mem::take(&mut *shared.spans.lock().unwrap_or_else(|e| e.into_inner()));
            if taken.is_empty() && closed {
                return;
            }
            while !taken.is_empty() {
                let rest = taken.split_off(taken.len().min(MAX_BATCH));
                let batch = std::mem::replace(&mut taken, rest);
                let n = batch.len();
                let result = match exporter.as_ref() {
                    Some(e) => e.export(batch).await.map_err(|e| e.to_string()),
                    None => Err("no exporter".to_string()),
                };
                queued.fetch_sub(n, Relaxed);
                match result {
                    Ok(()) => {
                        m.trace_spans_exported
                            .with_label_values(&["ok"])
                            .inc_by(n as u64);
                        logged_failure = false;
                    }
                    Err(e) => {
                        m.trace_spans_exported
                            .with_label_values(&["error"])
                            .inc_by(n as u64);
                        // Once per outage, not once per batch.
                        if !logged_failure {
                            tracing::warn!("tracing: export to {endpoint} failed: {e}");
                            logged_failure = true;
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(ratio: f64, queue: usize) -> Arc<Tracing> {
        Tracing::compile(
            &TracingConfig {
                // Nothing listens there; these tests never export.
                otlp_endpoint: "http://127.0.0.1:9/v1/traces".into(),
                sample_ratio: ratio,
                service_name: "t".into(),
                queue,
            },
            None,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_valid_parent_is_continued_with_its_state() {
        let t = tracing(0.0, 10);
        let rt = t.begin(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
        ]));
        assert!(rt.head_sampled);
        assert_eq!(rt.ids().0.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut rt = rt;
        rt.attempt_start("u", "127.0.0.1:1");
        let out = rt.outgoing();
        let client = rt.attempts[0].span_id.to_string();
        assert_eq!(
            out.traceparent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{client}-01")
        );
        assert_eq!(out.tracestate.as_deref(), Some("vendor=x"));
    }

    #[test]
    fn a_bad_parent_starts_a_new_trace_and_the_ratio_decides() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let rt = tracing(0.0, 10).begin(&headers(&[("traceparent", bad)]));
            assert!(!rt.head_sampled, "{bad}");
            assert!(rt.parent_span.is_none());
            assert!(rt.outgoing().traceparent.ends_with("-00"));
        }
        assert!(tracing(1.0, 10).begin(&http::HeaderMap::new()).head_sampled);
        // The ratio: about half of 2,000 new traces at 0.5.
        let t = tracing(0.5, 10);
        let kept = (0..2000)
            .filter(|_| t.begin(&http::HeaderMap::new()).head_sampled)
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
    }

    #[test]
    fn a_reload_keeps_the_exporter_unless_its_settings_change() {
        let cfg = |endpoint: &str, ratio: f64| TracingConfig {
            otlp_endpoint: endpoint.into(),
            sample_ratio: ratio,
            service_name: "t".into(),
            queue: 10,
        };
        let a = Tracing::compile(&cfg("http://127.0.0.1:9/v1/traces", 0.1), None);
        let b = Tracing::compile(&cfg("http://127.0.0.1:9/v1/traces", 0.5), Some(&a));
        assert!(
            Arc::ptr_eq(&a.exporter, &b.exporter),
            "only the ratio changed"
        );
        let c = Tracing::compile(&cfg("http://127.0.0.1:8/v1/traces", 0.5), Some(&b));
        assert!(
            !Arc::ptr_eq(&b.exporter, &c.exporter),
            "a new endpoint, a new exporter"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let t = tracing(1.0, 1);
        // Fill the one slot without a thread: pretend a span is already queued.
        t.exporter.queued.store(1, Relaxed);
        let before = crate::metrics::metrics().trace_spans_dropped.get();
        let rt = t.begin(&http::HeaderMap::new());
        rt.finish(Finish {
            method: "GET",
            path: "/",
            scheme: "http",
            host: None,
            flavor: "1.1",
            route: Some("r"),
            consumer: None,
            status: 200,
            cache: None,
            client: None,
            user_agent: None,
            error: None,
        });
        assert!(crate::metrics::metrics().trace_spans_dropped.get() > before);
        assert_eq!(t.exporter.queued.load(Relaxed), 1, "nothing was queued");
    }
}
