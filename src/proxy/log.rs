//! The end of a request: metrics, the JSON access-log line and `Server-Timing`.

use crate::context::Ctx;
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
    let t = &ctx.timing;
    match t.upstream_start {
        Some(us) => {
            let connected = t.connected_at.unwrap_or(us);
            let header = t.upstream_header_at.unwrap_or(now);
            let _ = write!(
                s,
                "gw;dur={:.3}, connect;dur={:.3}, upstream;dur={:.3}",
                ms(us.duration_since(t.start)),
                ms(connected.duration_since(us)),
                ms(header.duration_since(connected))
            );
        }
        None => {
            let _ = write!(s, "gw;dur={:.3}", ms(now.duration_since(t.start)));
        }
    }
    s
}

pub fn finish(session: &mut Session, e: Option<&pingora::Error>, ctx: &mut Ctx) {
    let elapsed = ctx.timing.start.elapsed();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or_else(|| ctx.response.reject.as_ref().map(|r| r.status()))
        .unwrap_or(0);
    let trace_ids = super::trace::finish(session, ctx, status, e);
    let route = ctx.route_name();
    let req = session.req_header();
    let method = req.method.as_str();
    match (ctx.route(), &ctx.routing.snapshot) {
        // A background refresh is no client request (its upstream attempt is counted
        // under the upstream's metrics).
        _ if ctx.request.refresh => {}
        (Some(r), _) => {
            r.requests.inc(&req.method, status);
            r.duration.observe(elapsed.as_secs_f64());
        }
        (None, Some(s)) => {
            s.unmatched_requests.inc(&req.method, status);
            s.unmatched_duration.observe(elapsed.as_secs_f64());
        }
        (None, None) => {
            crate::metrics::http_requests(route, method, status).inc();
        }
    }
    if crate::accesslog::enabled() {
        let target = ctx.current_target().map(|(_, t)| t.address.as_str());
        let upstream_time = ctx.timing.upstream_start.map(|s| {
            ctx.timing
                .upstream_header_at
                .unwrap_or_else(Instant::now)
                .duration_since(s)
        });
        // Written by hand into the thread's line buffer: this runs for every request, and
        // building a serde_json::Value first costs a dozen allocations.
        crate::accesslog::write_with(|l| {
            let mut j = JsonLine::new(l);
            j.key("timestamp");
            j.out.push('"');
            crate::accesslog::rfc3339_into(j.out, std::time::SystemTime::now());
            j.out.push('"');
            j.str("request_id", &ctx.request.id);
            if let Some((trace_id, span_id)) = &trace_ids {
                // Hex digits: nothing to escape.
                j.key("trace_id");
                let _ = write!(j.out, "\"{trace_id}\"");
                j.key("span_id");
                let _ = write!(j.out, "\"{span_id}\"");
            }
            j.str("route", route);
            j.str("method", method);
            // HTTP/2 carries the host as `:authority` (in the URI), HTTP/1 as `Host`.
            j.opt_str(
                "host",
                req.headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(|a| a.as_str())),
            );
            j.str("path", req.uri.path());
            j.int("status", u64::from(status));
            // An aggregate route has no upstream of its own (each call logs its line).
            j.opt_str(
                "upstream",
                ctx.upstream()
                    .filter(|_| ctx.route().is_none_or(|r| r.aggregate.is_none()))
                    .map(|u| u.name.as_str()),
            );
            j.opt_str("upstream_target", target);
            j.opt_int(
                "upstream_status",
                ctx.attempt.upstream_status.map(u64::from),
            );
            j.opt_ms("upstream_ms", upstream_time);
            j.opt_ms("total_ms", Some(elapsed));
            j.int("attempts", ctx.attempt.tried().len() as u64);
            j.int("bytes_in", ctx.request.body_bytes);
            j.int("bytes_out", session.body_bytes_sent() as u64);
            j.key("client");
            match session.client_addr() {
                // An address prints as digits, dots, colons and brackets: nothing to escape.
                Some(a) => client_into(j.out, a),
                None => j.out.push_str("null"),
            }
            j.opt_str("consumer", ctx.consumer_id());
            j.opt_str("error", e.map(|e| e.etype().as_str()));
            j.opt_str("reject", ctx.response.reject.as_ref().map(|r| r.slug()));
            if ctx.request.refresh {
                j.key("refresh");
                j.out.push_str("true");
            }
            j.finish();
        });
    }
    // Release the in-flight slots now rather than when the context is dropped.
    ctx.attempt.release();
}

/// A flat JSON object written straight into a `String`.
struct JsonLine<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonLine<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        JsonLine { out, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        escape_into(self.out, v);
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => {
                self.key(k);
                self.out.push_str("null");
            }
        }
    }

    fn int(&mut self, k: &str, v: u64) {
        self.key(k);
        self.out.push_str(itoa::Buffer::new().format(v));
    }

    fn opt_int(&mut self, k: &str, v: Option<u64>) {
        match v {
            Some(v) => self.int(k, v),
            None => {
                self.key(k);
                self.out.push_str("null");
            }
        }
    }

    /// Milliseconds with three decimals (microsecond precision), from integers: float
    /// formatting was a visible share of the per-request profile.
    fn opt_ms(&mut self, k: &str, v: Option<std::time::Duration>) {
        self.key(k);
        match v {
            Some(d) => {
                let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
                let mut b = itoa::Buffer::new();
                self.out.push_str(b.format(us / 1000));
                let frac = us % 1000;
                self.out.push('.');
                self.out.push(char::from(b'0' + (frac / 100) as u8));
                self.out.push(char::from(b'0' + (frac / 10 % 10) as u8));
                self.out.push(char::from(b'0' + (frac % 10) as u8));
            }
            None => self.out.push_str("null"),
        }
    }

    fn finish(self) {
        self.out.push_str("}\n");
    }
}

/// JSON string escaping (RFC 8259 §7): quotes, backslashes and control characters. Runs
/// of bytes that need none (nearly every value) are copied at once, not char by char.
fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            b if b < 0x20 => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on char boundaries.
        out.push_str(&s[plain..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(esc);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// `"a.b.c.d:port"` for an IPv4 client without `fmt` (this runs for every request);
/// IPv6 and Unix addresses print as `Display` has them.
fn client_into(out: &mut String, a: &pingora::protocols::l4::socket::SocketAddr) {
    out.push('"');
    match a.as_inet() {
        Some(std::net::SocketAddr::V4(v4)) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(b.format(*o));
            }
            out.push(':');
            out.push_str(b.format(v4.port()));
        }
        _ => {
            let _ = write!(out, "{a}");
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_back() {
        let mut l = String::new();
        let mut j = JsonLine::new(&mut l);
        j.str("path", "/a\"b\\c\n\u{1}é");
        j.str("plain", "/api/v1/orders?limit=10");
        j.str("mixed", "é\tend\u{1f}");
        j.int("status", 200);
        j.opt_ms("ms", Some(std::time::Duration::from_nanos(1_234_560)));
        j.opt_ms("whole", Some(std::time::Duration::from_millis(7)));
        j.opt_ms("tiny", Some(std::time::Duration::from_micros(5)));
        j.opt_int("bytes", Some(u64::MAX));
        j.opt_str("none", None);
        j.finish();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n\u{1}é");
        assert_eq!(v["plain"], "/api/v1/orders?limit=10");
        assert_eq!(v["mixed"], "é\tend\u{1f}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 1.234);
        assert_eq!(v["whole"], 7.0);
        assert_eq!(v["tiny"], 0.005);
        assert_eq!(v["bytes"], u64::MAX);
        assert!(v["none"].is_null());
    }

    #[test]
    fn client_addresses_print_as_display_does() {
        use pingora::protocols::l4::socket::SocketAddr;
        for a in [
            "127.0.0.1:8080",
            "10.200.3.4:1",
            "[::1]:443",
            "[2001:db8::1]:65535",
        ] {
            let addr = SocketAddr::Inet(a.parse().unwrap());
            let mut s = String::new();
            client_into(&mut s, &addr);
            assert_eq!(s, format!("\"{addr}\""));
        }
    }
}
