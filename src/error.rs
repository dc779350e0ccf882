//! The answers the gateway gives itself: each rejection knows its status, its problem
//! type and whether it carries `Retry-After`. One place (`proxy::respond`) turns a
//! `Reject` into an `application/problem+json` response (RFC 9457).

use std::fmt;

/// An authentication method, as a challenge names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
}

/// What a 401 asks for: one `WWW-Authenticate` challenge per method of the route, the
/// refused method's with an `error` parameter (RFC 6750 §3 for bearer tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub bearer: bool,
    pub api_key: bool,
    /// The method whose credential was presented and refused (none: nothing presented).
    pub refused: Option<AuthMethod>,
}

impl Challenge {
    pub fn header_value(&self) -> String {
        let mut parts = Vec::with_capacity(2);
        if self.bearer {
            parts.push(match self.refused {
                Some(AuthMethod::Jwt) => r#"Bearer realm="gatehouse", error="invalid_token""#,
                _ => r#"Bearer realm="gatehouse""#,
            });
        }
        if self.api_key {
            parts.push(match self.refused {
                Some(AuthMethod::ApiKey) => r#"ApiKey realm="gatehouse", error="invalid_key""#,
                _ => r#"ApiKey realm="gatehouse""#,
            });
        }
        parts.join(", ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    BadRequest(String),
    /// 400: the listener's or route's `path_policy` refuses the path.
    BadPath(crate::path::Refusal),
    /// 400: an HTTP/1.1 request without `Host`, or with more than one (RFC 9112 §3.2).
    BadHost,
    /// 401: no credential, or one that was refused.
    Unauthorized(Challenge),
    /// 403: a valid credential without the route's scopes (space-separated).
    Forbidden(String),
    NotFound,
    PayloadTooLarge(u64),
    HeadersTooLarge,
    NoHealthyTarget(String),
    Overloaded(String),
    BadGateway(String),
    GatewayTimeout(String),
    /// The request said `only-if-cached` and the cache had nothing usable (RFC 9111 §5.2.1.7).
    NotCached,
    Internal,
    /// 429 from a tier limit, a route's rate limit or its quota.
    Limited(Box<Limited>),
    /// 503: the limit store is unreachable and `on_error: fail_closed`.
    LimitStoreUnavailable,
    /// 408: the request head did not arrive within `server.header_timeout`.
    RequestTimeout,
    /// 408: a request body stalled or trickled past `server.body_timeout` (the
    /// same problem type as a late head).
    BodyTimeout,
    /// 503: the upstream's circuit breaker is open (name, seconds until it half-opens).
    CircuitOpen(String, u32),
    /// 400: a body the route transforms is not valid JSON (the parser's message).
    InvalidBody(String),
    /// 502: the upstream's response could not be transformed (`on_invalid: fail`); holds
    /// the upstream's name, for logs only.
    BadUpstreamBody(String),
    /// 502: a call of an aggregate route failed (`on_error: fail`): the call's name from
    /// the config and what happened, never the upstream's address.
    AggregateFailed(String, String),
    /// 400: a WebSocket upgrade on a route without `websocket:`.
    WebSocketNotEnabled,
    /// 403: the client address is refused by a listener's or route's `ip` rules.
    IpDenied,
    /// 414: the request target is longer than the route's `max_url` (bytes).
    UriTooLong(usize),
    /// 431: more header fields than the route's `max_headers`.
    TooManyHeaders(usize),
    /// 413: a request body decoded under `compression.decompress_requests` grew past its
    /// bounds (size, or ratio to the encoded bytes): a decompression bomb.
    DecompressedTooLarge(u64),
    /// 404: the route is versioned and the request names a version it does not have
    /// (or none, without a default); the configured versions, listed in the body.
    UnknownVersion(std::sync::Arc<[String]>),
}

/// Which limit refused a request, for the problem body and the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The metric's `limit` label: `tier`, `rate` or `quota`.
    pub limit: &'static str,
    /// A quota (rather than a rate) refused.
    pub quota: bool,
    /// The `RateLimit-Policy` item name, unquoted.
    pub policy: String,
    /// e.g. `route "orders" rate limit (50/s, burst 100)`.
    pub label: String,
    pub retry_after: u64,
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) | Reject::BadPath(_) | Reject::BadHost => 400,
            Reject::Unauthorized(_) => 401,
            Reject::Forbidden(_) => 403,
            Reject::NotFound | Reject::UnknownVersion(_) => 404,
            Reject::PayloadTooLarge(_) => 413,
            Reject::HeadersTooLarge => 431,
            Reject::NoHealthyTarget(_) | Reject::Overloaded(_) => 503,
            Reject::BadGateway(_) => 502,
            Reject::GatewayTimeout(_) | Reject::NotCached => 504,
            Reject::Internal => 500,
            Reject::Limited(_) => 429,
            Reject::LimitStoreUnavailable => 503,
            Reject::RequestTimeout | Reject::BodyTimeout => 408,
            Reject::CircuitOpen(..) => 503,
            Reject::InvalidBody(_) => 400,
            Reject::BadUpstreamBody(_) | Reject::AggregateFailed(..) => 502,
            Reject::WebSocketNotEnabled => 400,
            Reject::IpDenied => 403,
            Reject::UriTooLong(_) => 414,
            Reject::TooManyHeaders(_) => 431,
            Reject::DecompressedTooLarge(_) => 413,
        }
    }

    /// Stable slug: the problem `type` suffix and the metric reason.
    pub fn slug(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad-request",
            Reject::BadPath(r) => r.slug(),
            Reject::BadHost => "bad-host",
            Reject::Unauthorized(_) => "unauthorized",
            Reject::Forbidden(_) => "insufficient-scope",
            Reject::NotFound => "no-route",
            Reject::PayloadTooLarge(_) => "body-too-large",
            Reject::HeadersTooLarge => "headers-too-large",
            Reject::NoHealthyTarget(_) => "no-healthy-target",
            Reject::Overloaded(_) => "upstream-overloaded",
            Reject::BadGateway(_) => "bad-gateway",
            Reject::GatewayTimeout(_) => "gateway-timeout",
            Reject::NotCached => "not-cached",
            Reject::Internal => "internal-error",
            Reject::Limited(l) if l.quota => "quota-exceeded",
            Reject::Limited(_) => "rate-limited",
            Reject::LimitStoreUnavailable => "limit-store-unavailable",
            Reject::RequestTimeout | Reject::BodyTimeout => "request-timeout",
            Reject::CircuitOpen(..) => "circuit-open",
            Reject::InvalidBody(_) => "invalid-body",
            Reject::BadUpstreamBody(_) => "bad-upstream-body",
            Reject::AggregateFailed(..) => "aggregate-call-failed",
            Reject::WebSocketNotEnabled => "websocket-not-enabled",
            Reject::IpDenied => "ip-denied",
            Reject::UriTooLong(_) => "uri-too-long",
            // The same problem as a header block over `max_header_size`.
            Reject::TooManyHeaders(_) => "headers-too-large",
            Reject::DecompressedTooLarge(_) => "decompressed-body-too-large",
            Reject::UnknownVersion(_) => "unknown-version",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) | Reject::BadPath(_) | Reject::BadHost => "Bad Request",
            Reject::Unauthorized(_) => "Unauthorized",
            Reject::Forbidden(_) => "Forbidden",
            Reject::NotFound | Reject::UnknownVersion(_) => "Not Found",
            Reject::PayloadTooLarge(_) => "Content Too Large",
            Reject::HeadersTooLarge => "Request Header Fields Too Large",
            Reject::NoHealthyTarget(_) => "Service Unavailable",
            Reject::Overloaded(_) => "Service Unavailable",
            Reject::BadGateway(_) => "Bad Gateway",
            Reject::GatewayTimeout(_) | Reject::NotCached => "Gateway Timeout",
            Reject::Internal => "Internal Server Error",
            Reject::Limited(_) => "Too Many Requests",
            Reject::LimitStoreUnavailable => "Service Unavailable",
            Reject::RequestTimeout | Reject::BodyTimeout => "Request Timeout",
            Reject::CircuitOpen(..) => "Service Unavailable",
            Reject::InvalidBody(_) => "Bad Request",
            Reject::BadUpstreamBody(_) | Reject::AggregateFailed(..) => "Bad Gateway",
            Reject::WebSocketNotEnabled => "Bad Request",
            Reject::IpDenied => "Forbidden",
            Reject::UriTooLong(_) => "URI Too Long",
            Reject::TooManyHeaders(_) => "Request Header Fields Too Large",
            Reject::DecompressedTooLarge(_) => "Content Too Large",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Reject::BadRequest(d) => d.clone(),
            Reject::BadPath(r) => r.detail().into(),
            Reject::BadHost => "an HTTP/1.1 request must carry exactly one Host field".into(),
            // Generic on purpose: never the credential, never which check failed.
            Reject::Unauthorized(c) if c.refused.is_some() => {
                "the credential was not accepted".into()
            }
            Reject::Unauthorized(_) => "this route requires a credential".into(),
            Reject::Forbidden(scopes) => {
                format!("the credential lacks a scope this route requires ({scopes})")
            }
            Reject::NotFound => "no route matches this request".into(),
            Reject::PayloadTooLarge(max) => {
                format!("the request body exceeds the limit of {max} bytes")
            }
            Reject::HeadersTooLarge => "the request headers are too large".into(),
            // The upstream's name stays in the variant (and in `Display`, for logs): the
            // client learns what went wrong, never which internal service or address.
            Reject::NoHealthyTarget(_) => "no healthy upstream target for this route".into(),
            Reject::Overloaded(_) => {
                "the upstream of this route is at its in-flight limit; retry later".into()
            }
            Reject::BadGateway(_) => "the upstream of this route failed".into(),
            Reject::GatewayTimeout(_) => "the upstream of this route did not answer in time".into(),
            Reject::NotCached => {
                "only-if-cached was requested and no stored response can be used".into()
            }
            Reject::Internal => "internal error".into(),
            Reject::Limited(l) => format!("{} exceeded; retry in {} s", l.label, l.retry_after),
            Reject::LimitStoreUnavailable => {
                "the rate-limit store is unreachable and this gateway fails closed".into()
            }
            Reject::RequestTimeout => "the request head did not arrive in time".into(),
            Reject::BodyTimeout => "the request body did not arrive in time".into(),
            Reject::CircuitOpen(..) => {
                "the upstream of this route is failing and is not being called; retry later".into()
            }
            Reject::InvalidBody(why) => format!("the request body is not valid JSON: {why}"),
            Reject::BadUpstreamBody(_) => {
                "the upstream's response could not be transformed for this route".into()
            }
            Reject::AggregateFailed(call, why) => format!("call {call:?} failed: {why}"),
            Reject::WebSocketNotEnabled => "this route does not accept WebSocket upgrades".into(),
            // Never which list or which address: that is for the operator's metrics.
            Reject::IpDenied => "requests from this address are not accepted here".into(),
            Reject::UriTooLong(max) => {
                format!("the request target exceeds the limit of {max} bytes")
            }
            Reject::TooManyHeaders(max) => {
                format!("the request has more than {max} header fields")
            }
            Reject::DecompressedTooLarge(max) => format!(
                "the decoded request body exceeds its bounds (at most {max} bytes, and a bounded expansion ratio)"
            ),
            Reject::UnknownVersion(v) => format!(
                "this API has no such version; available versions: {}",
                v.join(", ")
            ),
        }
    }

    /// Seconds for `Retry-After`, where the rejection is about load.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Reject::Overloaded(_) | Reject::LimitStoreUnavailable => Some(1),
            Reject::NoHealthyTarget(_) => Some(5),
            Reject::CircuitOpen(_, secs) => Some(*secs),
            Reject::Limited(l) => Some(u32::try_from(l.retry_after).unwrap_or(u32::MAX)),
            _ => None,
        }
    }

    pub fn body(&self, request_id: &str) -> String {
        let mut body = serde_json::json!({
            "type": format!("https://gatehouse.dev/problems/{}", self.slug()),
            "title": self.title(),
            "status": self.status(),
            "detail": self.detail(),
            "request_id": request_id,
        });
        if let Reject::Limited(l) = self {
            // `violated-policies` as in the ratelimit-headers draft's problem types.
            body["limit"] = l.limit.into();
            body["violated-policies"] = serde_json::json!([l.policy]);
            body["retry_after"] = l.retry_after.into();
        }
        if let Reject::UnknownVersion(v) = self {
            body["available_versions"] = serde_json::json!(&v[..]);
        }
        body.to_string()
    }
}

/// gRPC status codes (grpc/doc/statuscodes.md) the gateway's own refusals become.
pub mod grpc_code {
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

impl Reject {
    /// The gRPC status a gRPC client gets instead of this refusal (HTTP 200 with
    /// `grpc-status`, `proxy::respond`). By HTTP status: 401 UNAUTHENTICATED, 403
    /// PERMISSION_DENIED, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED
    /// (as issue 13 asks, where gRPC's own HTTP mapping would say UNAVAILABLE for 429 and
    /// 504); 404 (no route) UNIMPLEMENTED, as gRPC maps it; the 400s (path, Host, a body
    /// that could not be read) INVALID_ARGUMENT, since they are about this request;
    /// 413 RESOURCE_EXHAUSTED (gRPC's code for a message over a size limit); 408
    /// DEADLINE_EXCEEDED; 502 UNAVAILABLE (the upstream failed, a retry may succeed);
    /// 500 and anything else INTERNAL.
    pub fn grpc_status(&self) -> u8 {
        use grpc_code::*;
        match self.status() {
            400 => INVALID_ARGUMENT,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            408 | 504 => DEADLINE_EXCEEDED,
            413 | 429 | 431 => RESOURCE_EXHAUSTED,
            502 | 503 => UNAVAILABLE,
            _ => INTERNAL,
        }
    }

    /// Headers a rejection carries besides `Retry-After` (e.g. `WWW-Authenticate`).
    pub fn headers(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let www = |v: String| {
            http::HeaderValue::from_str(&v)
                .ok()
                .map(|v| (http::header::WWW_AUTHENTICATE, v))
        };
        match self {
            Reject::Unauthorized(c) => www(c.header_value()).into_iter().collect(),
            Reject::Forbidden(scopes) => www(format!(
                r#"Bearer realm="gatehouse", error="insufficient_scope", scope="{scopes}""#
            ))
            .into_iter()
            .collect(),
            _ => Vec::new(),
        }
    }
}

/// For logs: the client's detail plus the upstream it is about.
impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.title(), self.detail())?;
        match self {
            Reject::NoHealthyTarget(u)
            | Reject::Overloaded(u)
            | Reject::BadGateway(u)
            | Reject::GatewayTimeout(u)
            | Reject::CircuitOpen(u, _)
            | Reject::BadUpstreamBody(u) => write!(f, " (upstream {u:?})"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `slug` there is: the problem types, and the `reason` label values of
    /// `gatehouse_rejected_requests_total` (`proxy::respond` counts each rejection it sends).
    const REASONS: [&str; 31] = [
        "bad-request",
        "escaped-slash",
        "backslash",
        "matrix-dot-segment",
        "path-route-mismatch",
        "bad-host",
        "unauthorized",
        "insufficient-scope",
        "no-route",
        "body-too-large",
        "headers-too-large",
        "no-healthy-target",
        "upstream-overloaded",
        "bad-gateway",
        "gateway-timeout",
        "not-cached",
        "internal-error",
        "rate-limited",
        "quota-exceeded",
        "limit-store-unavailable",
        "request-timeout",
        "circuit-open",
        "invalid-body",
        "bad-upstream-body",
        "aggregate-call-failed",
        "websocket-not-enabled",
        "ip-denied",
        "uri-too-long",
        // Again: a header count over `max_headers` is the same problem as a block too large.
        "headers-too-large",
        "decompressed-body-too-large",
        "unknown-version",
    ];

    /// `REASONS` is exactly the set of slugs (the metric's documented label values).
    #[test]
    fn reasons_are_exactly_the_slugs() {
        use crate::path::Refusal;
        let limited = |quota| {
            Reject::Limited(Box::new(Limited {
                limit: "rate",
                quota,
                policy: String::new(),
                label: String::new(),
                retry_after: 1,
            }))
        };
        let challenge = Challenge {
            bearer: true,
            api_key: false,
            refused: None,
        };
        let all = [
            Reject::BadRequest(String::new()),
            Reject::BadPath(Refusal::EscapedSlash),
            Reject::BadPath(Refusal::Backslash),
            Reject::BadPath(Refusal::MatrixDotSegment),
            Reject::BadPath(Refusal::RouteMismatch),
            Reject::BadHost,
            Reject::Unauthorized(challenge),
            Reject::Forbidden(String::new()),
            Reject::NotFound,
            Reject::PayloadTooLarge(1),
            Reject::HeadersTooLarge,
            Reject::NoHealthyTarget(String::new()),
            Reject::Overloaded(String::new()),
            Reject::BadGateway(String::new()),
            Reject::GatewayTimeout(String::new()),
            Reject::NotCached,
            Reject::Internal,
            limited(false),
            limited(true),
            Reject::LimitStoreUnavailable,
            Reject::RequestTimeout,
            Reject::CircuitOpen(String::new(), 1),
            Reject::InvalidBody(String::new()),
            Reject::BadUpstreamBody(String::new()),
            Reject::AggregateFailed(String::new(), String::new()),
            Reject::WebSocketNotEnabled,
            Reject::IpDenied,
            Reject::UriTooLong(1),
            Reject::TooManyHeaders(1),
            Reject::DecompressedTooLarge(1),
            Reject::UnknownVersion(std::sync::Arc::from(vec!["1".to_string()])),
        ];
        let slugs: Vec<&str> = all.iter().map(|r| r.slug()).collect();
        assert_eq!(slugs, REASONS);
        // A late body is the same problem as a late head.
        assert_eq!(Reject::BodyTimeout.slug(), Reject::RequestTimeout.slug());
    }

    #[test]
    fn grpc_statuses() {
        let challenge = Challenge {
            bearer: false,
            api_key: true,
            refused: None,
        };
        assert_eq!(Reject::Unauthorized(challenge).grpc_status(), 16);
        assert_eq!(Reject::Forbidden(String::new()).grpc_status(), 7);
        let limited = Reject::Limited(Box::new(Limited {
            limit: "rate",
            quota: false,
            policy: String::new(),
            label: String::new(),
            retry_after: 1,
        }));
        assert_eq!(limited.grpc_status(), 8);
        assert_eq!(Reject::NoHealthyTarget(String::new()).grpc_status(), 14);
        assert_eq!(Reject::GatewayTimeout(String::new()).grpc_status(), 4);
        assert_eq!(Reject::NotFound.grpc_status(), 12);
        assert_eq!(Reject::BadHost.grpc_status(), 3);
        assert_eq!(Reject::Internal.grpc_status(), 13);
    }

    /// Problem bodies go to clients: they never carry the upstream's name.
    #[test]
    fn upstream_names_stay_out_of_problem_bodies() {
        let name = "billing-internal";
        for r in [
            Reject::NoHealthyTarget(name.into()),
            Reject::Overloaded(name.into()),
            Reject::BadGateway(name.into()),
            Reject::GatewayTimeout(name.into()),
            Reject::CircuitOpen(name.into(), 1),
            Reject::BadUpstreamBody(name.into()),
        ] {
            let body = r.body("rid");
            assert!(!body.contains(name), "{body}");
            assert!(r.to_string().contains(name), "logs keep the name: {r}");
        }
    }
}
