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
            Reject::RequestTimeout => 408,
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
            Reject::RequestTimeout => "request-timeout",
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
            Reject::RequestTimeout => "Request Timeout",
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

impl Reject {
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
            | Reject::GatewayTimeout(u) => write!(f, " (upstream {u:?})"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `slug` there is: the problem types, and the `reason` label values of
    /// `gatehouse_rejected_requests_total` (`proxy::respond` counts each rejection it sends).
    const REASONS: [&str; 22] = [
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
            Reject::UnknownVersion(std::sync::Arc::from(vec!["1".to_string()])),
        ];
        let slugs: Vec<&str> = all.iter().map(|r| r.slug()).collect();
        assert_eq!(slugs, REASONS);
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
        ] {
            let body = r.body("rid");
            assert!(!body.contains(name), "{body}");
            assert!(r.to_string().contains(name), "logs keep the name: {r}");
        }
    }
}
