//! The end of a request: metrics, the JSON access-log line and `Server-Timing`.

use super::Ctx;
use pingora::proxy::Session;
use std::fmt::Write;
use std::time::Instant;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `gw` is the gateway's own time before contacting the upstream, `connect` the time to
/// get an upstream connection (near 0 when reused), `upstream` the wait for its response
/// header. Durations are milliseconds (W3C Server Timing).
pub fn server_timing(ctx: &Ctx) -> String {
    let now = Instant::now();
    let mut s = String::with_capacity(64);
    match ctx.upstream_start {
        Some(us) => {
            let connected = ctx.connected_at.unwrap_or(us);
            let header = ctx.upstream_header_at.unwrap_or(now);
            let _ = write!(
                s,
                "gw;dur={:.3}, connect;dur={:.3}, upstream;dur={:.3}",
                ms(us.duration_since(ctx.start)),
                ms(connected.duration_since(us)),
                ms(header.duration_since(connected))
            );
        }
        None => {
            let _ = write!(s, "gw;dur={:.3}", ms(now.duration_since(ctx.start)));
        }
    }
    s
}

pub fn finish(session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
    let elapsed = ctx.start.elapsed();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| ctx.reject.as_ref().map(|r| r.status()))
        .unwrap_or(0);
    let m = crate::metrics::metrics();
    let route = ctx.route_name().to_string();
    let req = session.req_header();
    let method = req.method.as_str();
    let mut status_buf = itoa_buf(status);
    m.http_requests
        .with_label_values(&[&route, method, status_str(&mut status_buf)])
        .inc();
    match &ctx.route {
        Some(r) => r.duration.observe(elapsed.as_secs_f64()),
        None => {
            if let Some(s) = &ctx.snapshot {
                s.unmatched_duration.observe(elapsed.as_secs_f64());
            }
        }
    }
    if crate::accesslog::enabled() {
        let target = match (&ctx.route, ctx.target) {
            (Some(r), Some(i)) => Some(r.upstream.targets[i].address.as_str()),
            _ => None,
        };
        let upstream_ms = ctx.upstream_start.map(|s| {
            ms(ctx
                .upstream_header_at
                .unwrap_or_else(Instant::now)
                .duration_since(s))
        });
        let line = serde_json::json!({
            "timestamp": crate::accesslog::rfc3339(std::time::SystemTime::now()),
            "request_id": ctx.request_id,
            "route": route,
            "method": method,
            "host": req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()),
            "path": req.uri.path(),
            "status": status,
            "upstream": ctx.route.as_ref().map(|r| r.upstream.name.as_str()),
            "upstream_target": target,
            "upstream_status": ctx.upstream_status,
            "upstream_ms": upstream_ms,
            "total_ms": ms(elapsed),
            "attempts": ctx.tried.len(),
            "bytes_in": ctx.body_bytes,
            "bytes_out": session.body_bytes_sent(),
            "client": session.client_addr().map(|a| a.to_string()),
            "error": e.map(|e| e.etype().as_str()),
            "reject": ctx.reject.as_ref().map(|r| r.slug()),
        });
        let mut l = line.to_string();
        l.push('\n');
        crate::accesslog::write(l);
    }
    // Release the in-flight slots now rather than when the context is dropped.
    ctx.target_slot = None;
    ctx.upstream_slot = None;
}

fn itoa_buf(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

fn status_str(b: &mut [u8; 3]) -> &str {
    std::str::from_utf8(b).unwrap_or("000")
}
