//! The authenticate and authorize stages of a route.
//!
//! `Authenticate` tries the route's methods (`auth: [jwt, api_key]`) in order: a method
//! whose credential is absent is skipped, the first credential that verifies wins, and
//! when none does the answer is 401 with a `WWW-Authenticate` challenge per method
//! (RFC 6750 for bearer tokens; `error="invalid_token"` when a token was refused).
//! The credential is then removed from the request (header and query parameter) unless
//! the route sets `auth_forward_credential: true`.
//!
//! `Authorize` requires every scope of the route: 403 with
//! `Bearer error="insufficient_scope", scope="…"` otherwise.
//!
//! Every refusal is counted in `gatehouse_auth_failures_total{route,reason}`. The
//! problem body never echoes the credential or says which key almost matched.

use super::api_key::ApiKeyAuth;
use super::jwt::JwtAuth;
use super::{Policy, PolicyCtx};
use crate::error::{AuthMethod, Challenge, Reject};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use std::sync::Arc;

/// Why a credential was refused: the `reason` label of the failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    BadAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    UnknownKey,
    MissingClaim,
    InvalidApiKey,
    InsufficientScope,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::BadAlgorithm => "bad_algorithm",
            Failure::BadSignature => "bad_signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::WrongIssuer => "wrong_issuer",
            Failure::WrongAudience => "wrong_audience",
            Failure::UnknownKey => "unknown_key",
            Failure::MissingClaim => "missing_claim",
            Failure::InvalidApiKey => "invalid_api_key",
            Failure::InsufficientScope => "insufficient_scope",
        }
    }
}

fn count(route: &str, f: Failure) {
    crate::metrics::metrics()
        .auth_failures
        .with_label_values(&[route, f.reason()])
        .inc();
}

pub enum Method {
    Jwt(Arc<JwtAuth>),
    ApiKey(Arc<ApiKeyAuth>),
}

impl Method {
    fn kind(&self) -> AuthMethod {
        match self {
            Method::Jwt(_) => AuthMethod::Jwt,
            Method::ApiKey(_) => AuthMethod::ApiKey,
        }
    }

    /// Verifies this method's credential if the request carries one.
    async fn try_request(
        &self,
        req: &RequestHeader,
    ) -> Option<Result<Arc<super::Identity>, Failure>> {
        match self {
            Method::Jwt(jwt) => {
                let token = match bearer(req)? {
                    Ok(t) => t,
                    Err(f) => return Some(Err(f)),
                };
                Some(jwt.authenticate(token).await)
            }
            Method::ApiKey(keys) => {
                let key = keys.credential(req)?;
                Some(keys.lookup(&key).ok_or(Failure::InvalidApiKey))
            }
        }
    }

    fn strip(&self, req: &mut RequestHeader) {
        match self {
            Method::Jwt(_) => {
                if matches!(bearer(req), Some(Ok(_))) {
                    req.remove_header(&http::header::AUTHORIZATION);
                }
            }
            Method::ApiKey(keys) => keys.strip(req),
        }
    }
}

/// The bearer token of `Authorization: Bearer <token>` (RFC 6750 §2.1); `None` when
/// there is no bearer credential at all.
pub fn bearer(req: &RequestHeader) -> Option<Result<&str, Failure>> {
    let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let v = values.next()?;
    let (scheme, rest) = v.as_bytes().split_at(v.as_bytes().len().min(7));
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    if values.next().is_some() {
        return Some(Err(Failure::Malformed));
    }
    match std::str::from_utf8(rest).map(str::trim) {
        Ok(t) if !t.is_empty() => Some(Ok(t)),
        _ => Some(Err(Failure::Malformed)),
    }
}

pub struct Authenticate {
    pub methods: Vec<Method>,
    pub forward_credential: bool,
    /// Counts the request for its consumer (status page).
    pub consumers: Arc<super::consumer_stats::ConsumerStats>,
}

impl Authenticate {
    fn challenge(&self, refused: Option<AuthMethod>) -> Challenge {
        Challenge {
            bearer: self.methods.iter().any(|m| m.kind() == AuthMethod::Jwt),
            api_key: self.methods.iter().any(|m| m.kind() == AuthMethod::ApiKey),
            refused,
        }
    }
}

#[async_trait]
impl Policy for Authenticate {
    fn stage(&self) -> &'static str {
        "authenticate"
    }

    async fn apply(&self, cx: &mut PolicyCtx<'_>) -> Result<(), Reject> {
        let mut first_failure: Option<(Failure, AuthMethod)> = None;
        for m in &self.methods {
            match m.try_request(cx.req).await {
                None => continue,
                Some(Ok(identity)) => {
                    self.consumers.request(&identity);
                    *cx.identity = Some(identity);
                    if !self.forward_credential {
                        for m in &self.methods {
                            m.strip(cx.req);
                        }
                    }
                    return Ok(());
                }
                Some(Err(f)) => {
                    first_failure.get_or_insert((f, m.kind()));
                }
            }
        }
        let (failure, refused) = match first_failure {
            Some((f, m)) => (f, Some(m)),
            None => (Failure::Missing, None),
        };
        count(cx.route, failure);
        Err(Reject::Unauthorized(self.challenge(refused)))
    }
}

pub struct Authorize {
    pub scopes: Vec<String>,
    /// The scopes as the challenge's `scope` parameter (space-separated).
    pub scope_param: String,
}

impl Authorize {
    pub fn new(scopes: Vec<String>) -> Self {
        Authorize {
            scope_param: scopes.join(" "),
            scopes,
        }
    }
}

#[async_trait]
impl Policy for Authorize {
    fn stage(&self) -> &'static str {
        "authorize"
    }

    async fn apply(&self, cx: &mut PolicyCtx<'_>) -> Result<(), Reject> {
        let granted = cx.identity.as_ref().is_some_and(|id| {
            self.scopes
                .iter()
                .all(|want| id.scopes.iter().any(|have| have == want))
        });
        if granted {
            return Ok(());
        }
        count(cx.route, Failure::InsufficientScope);
        Err(Reject::Forbidden(self.scope_param.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(bearer(&r).is_none());
        r.insert_header("authorization", "Basic abc").unwrap();
        assert!(bearer(&r).is_none());
        r.insert_header("authorization", "bearer a.b.c").unwrap();
        assert_eq!(bearer(&r).unwrap().unwrap(), "a.b.c");
        r.insert_header("authorization", "Bearer ").unwrap();
        assert_eq!(bearer(&r).unwrap().unwrap_err(), Failure::Malformed);
        r.insert_header("authorization", "Bearer x").unwrap();
        r.append_header("authorization", "Bearer y").unwrap();
        assert_eq!(bearer(&r).unwrap().unwrap_err(), Failure::Malformed);
    }
}
