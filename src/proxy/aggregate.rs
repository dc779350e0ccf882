//! Response aggregation: a route with `aggregate` answers in `request_filter`, after its
//! policies ran once for the client's request, from parallel calls to its upstreams,
//! merged into one JSON object keyed by call name.
//!
//! Each call goes through the gateway's own upstream machinery, not a side HTTP client:
//! the target is chosen by the upstream's balancer among the targets its health allows,
//! the peer is the upstream's ready-made one (TLS, HTTP/2, its timeouts), connections come
//! from and go back to a Pingora connector pool, the upstream's `max_inflight` and the
//! target's in-flight count are held for the call, and the outcome is counted in
//! `gatehouse_upstream_requests_total` and against passive health like a proxied attempt.
//! A call is one attempt (no retry): its `timeout` bounds the whole exchange. It is a
//! `GET` of the call's path carrying `X-Request-ID`, the forwarding fields, the identity
//! fields and the route's `request_headers`; none of the client's own fields.
//!
//! Every call is counted (`gatehouse_aggregate_calls_total{route,call,result}`) and
//! logged (one access-log line each, with the request id). A call fails on no usable
//! target, a broken exchange, its timeout, a status other than 2xx, a body over
//! `max_size` or one that is not JSON; `on_error: fail` answers 502 problem+json naming
//! the first failed call (by name order), `omit` puts `{"error": "..."}` under its key.

use super::Gateway;
use crate::config::transform::AggregateOnError;
use crate::context::{Ctx, UpstreamSlot};
use crate::error::Reject;
use crate::policy::aggregate::{CallPlan, CallResult};
use crate::policy::headers;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// The connection pool the calls share (one per gateway, like the proxy's own).
pub struct Calls {
    connector: Connector,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            connector: Connector::new(None),
        }
    }
}

/// What a call came back with.
struct Outcome {
    result: CallResult,
    /// The merged document's value (on success) or the failure, said for the client.
    value: Result<serde_json::Value, String>,
    status: Option<u16>,
    target: Option<String>,
    took: std::time::Duration,
}

/// Holds a target's in-flight count for the call (`least_requests` reads it).
struct TargetInflight(std::sync::Arc<crate::upstream::Target>);

impl Drop for TargetInflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

impl Calls {
    async fn call(
        &self,
        plan: &CallPlan,
        template: &RequestHeader,
        path: &str,
        key: &[u8],
        max: u64,
    ) -> Outcome {
        let started = Instant::now();
        let up = &plan.upstream;
        let fail = |result, why: String, target: Option<String>, status| Outcome {
            result,
            value: Err(why),
            status,
            target,
            took: started.elapsed(),
        };
        let (_slot, before) = UpstreamSlot::take(up);
        if up.max_inflight > 0 && before >= up.max_inflight {
            return fail(
                CallResult::NoTarget,
                "the upstream is at its in-flight limit".into(),
                None,
                None,
            );
        }
        // The upstream's breaker decides for a call as for a proxied request: open, the
        // call fails at once without touching the upstream; half-open, it may be a probe.
        let probe = match up.breaker.as_ref().map(|b| b.admit()) {
            Some(crate::upstream::breaker::Admit::Refuse { .. }) => {
                return fail(
                    CallResult::NoTarget,
                    "the upstream's circuit is open".into(),
                    None,
                    None,
                );
            }
            Some(crate::upstream::breaker::Admit::Probe(p)) => Some(p),
            _ => None,
        };
        let probe = probe.as_ref();
        let Some(id) = up.select(key, &[]) else {
            return fail(
                CallResult::NoTarget,
                "no healthy upstream target".into(),
                None,
                None,
            );
        };
        let target = up.target(id).clone();
        target.inflight.fetch_add(1, Relaxed);
        let _inflight = TargetInflight(target.clone());
        let address = Some(target.address.clone());
        let peer = up.peer(id);
        let mut req = template.clone();
        let Ok(uri) = path.parse::<http::Uri>() else {
            return fail(
                CallResult::Error,
                "the call's path is not a valid URI".into(),
                address,
                None,
            );
        };
        req.set_uri(uri);
        let exchange = async {
            let (mut s, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| (true, e.to_string()))?;
            if reused {
                up.conn_reused.inc();
            } else {
                up.conn_new.inc();
            }
            s.write_request_header(Box::new(req))
                .await
                .map_err(|e| (true, e.to_string()))?;
            s.finish_request_body()
                .await
                .map_err(|e| (true, e.to_string()))?;
            s.read_response_header()
                .await
                .map_err(|e| (true, e.to_string()))?;
            let status = s.response_header().map_or(0, |h| h.status.as_u16());
            up.duration.observe(started.elapsed().as_secs_f64());
            let json = s
                .response_header()
                .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok())
                .is_some_and(crate::policy::transform::is_json);
            let mut body = Vec::new();
            let mut too_large = false;
            while let Some(chunk) = s
                .read_response_body()
                .await
                .map_err(|e| (true, e.to_string()))?
            {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > max {
                    too_large = true;
                    break;
                }
            }
            if !too_large && s.response_done() {
                self.connector
                    .release_http_session(s, &peer, peer.options.idle_timeout)
                    .await;
            }
            Ok::<_, (bool, String)>((status, json, too_large, body))
        };
        match tokio::time::timeout(plan.timeout, exchange).await {
            Err(_) => {
                super::attempts::attempt_failed(up, &target, "timeout", probe);
                fail(
                    CallResult::Timeout,
                    format!("no answer within {:?}", plan.timeout),
                    address,
                    None,
                )
            }
            Ok(Err((_, why))) => {
                super::attempts::attempt_failed(up, &target, "error", probe);
                tracing::debug!("aggregate call {:?} failed: {why}", plan.name);
                fail(
                    CallResult::Error,
                    "the upstream call failed".into(),
                    address,
                    None,
                )
            }
            Ok(Ok((status, json, too_large, body))) => {
                let code =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                if status >= 500 {
                    let mut buf = itoa::Buffer::new();
                    super::attempts::attempt_failed(
                        up,
                        &target,
                        crate::metrics::status_label(status, &mut buf),
                        probe,
                    );
                } else {
                    super::attempts::attempt_answered(up, &target, code, probe);
                }
                if !(200..300).contains(&status) {
                    return fail(
                        CallResult::Status,
                        format!("the upstream answered {status}"),
                        address,
                        Some(status),
                    );
                }
                if too_large {
                    return fail(
                        CallResult::TooLarge,
                        format!("the answer is over {max} bytes"),
                        address,
                        Some(status),
                    );
                }
                let parsed = if json {
                    serde_json::from_slice(&body).ok()
                } else {
                    None
                };
                match parsed {
                    Some(v) => Outcome {
                        result: CallResult::Ok,
                        value: Ok(v),
                        status: Some(status),
                        target: address,
                        took: started.elapsed(),
                    },
                    None => fail(
                        CallResult::Invalid,
                        "the answer is not JSON".into(),
                        address,
                        Some(status),
                    ),
                }
            }
        }
    }
}

/// One access-log line per call, tied to the client request by its id.
fn log_call(ctx: &Ctx, route: &str, plan: &CallPlan, o: &Outcome) {
    if !crate::accesslog::enabled() {
        return;
    }
    let line = serde_json::json!({
        "timestamp": crate::accesslog::rfc3339(std::time::SystemTime::now()),
        "request_id": ctx.request.id,
        "route": route,
        "aggregate_call": plan.name,
        "upstream": plan.upstream.name,
        "upstream_target": o.target,
        "upstream_status": o.status,
        "result": o.result.label(),
        "upstream_ms": o.took.as_secs_f64() * 1000.0,
    });
    let mut line = line.to_string();
    line.push('\n');
    crate::accesslog::write(&line);
}

impl Gateway {
    /// Answers an aggregate route's request from its calls; the answer (or the
    /// rejection) is written here.
    pub(super) async fn aggregate(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(route) = ctx.route().cloned() else {
            return Ok(());
        };
        let Some(plan) = route.aggregate.clone() else {
            return Ok(());
        };
        let routed = ctx
            .routing
            .upstream_path
            .clone()
            .unwrap_or_else(|| session.req_header().uri.path().to_string());
        let captures = plan.regex.as_ref().and_then(|re| re.captures(&routed));
        let mut template = RequestHeader::build("GET", b"/", None)?;
        if ctx.request.authority.is_empty() {
            template.remove_header(&http::header::HOST);
        } else {
            template.insert_header(http::header::HOST, ctx.request.authority.as_str())?;
        }
        template.insert_header(headers::X_REQUEST_ID, ctx.request.id.as_str())?;
        template.insert_header(http::header::ACCEPT, "application/json")?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        headers::set_forwarded(&mut template, client_ip, ctx.request.https);
        if let Some(id) = &ctx.identity {
            headers::set_identity(&mut template, id);
        }
        route.request_headers.apply_request(&mut template);
        ctx.timing.upstream_start = Some(Instant::now());
        let max = plan.max_size;
        let template = &template;
        let outcomes = futures::future::join_all(plan.calls.iter().map(|c| {
            let path = c.path(captures.as_ref());
            // `consistent_hash` keys on what the proxy would (consumer, header, ...).
            let key = match &c.upstream.hash_on {
                Some(on) => {
                    super::attempts::hash_key(session, on, ctx.identity.as_deref()).into_owned()
                }
                None => Vec::new(),
            };
            async move { self.calls.call(c, template, &path, &key, max).await }
        }))
        .await;
        ctx.timing.upstream_header_at = Some(Instant::now());
        let mut doc = serde_json::Map::new();
        let mut failed = None;
        for (c, o) in plan.calls.iter().zip(outcomes) {
            c.count(o.result);
            log_call(ctx, &route.name, c, &o);
            match o.value {
                Ok(v) => {
                    doc.insert(c.name.clone(), v);
                }
                Err(why) => {
                    if failed.is_none() {
                        failed = Some((c.name.clone(), why.clone()));
                    }
                    doc.insert(c.name.clone(), serde_json::json!({ "error": why }));
                }
            }
        }
        if let (AggregateOnError::Fail, Some((call, why))) = (plan.on_error, failed) {
            return super::respond(session, ctx, Reject::AggregateFailed(call, why)).await;
        }
        let body = Bytes::from(serde_json::Value::Object(doc).to_string());
        let mut resp = ResponseHeader::build(200, Some(6))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        // Made per request from per-consumer calls: never stored by a shared cache.
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        self.response_filter(session, &mut resp, ctx).await?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}
