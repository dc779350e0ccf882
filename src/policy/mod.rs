//! Request policies, one file each. Each owns its config form, compiled form and tests.
//!
//! A route holds its compiled policies in stage order — authenticate, authorize, limit —
//! and the proxy runs them in one loop (`proxy::Gateway::request_filter`). A policy
//! either lets the request continue or rejects it with an `error::Reject`; one place
//! (`proxy::respond`) turns the rejection into a response. Adding a policy means its own
//! file plus one line in `for_route`.
//!
//! Header transforms (`headers`) run on every request and are not in the list.

pub mod api_key;
pub mod auth;
pub mod client_ip;
pub mod consumers;
pub mod headers;
pub mod jwt;
pub mod limits;
pub mod quota;
pub mod rate_limit;
pub mod ratelimit_headers;

use crate::config::{model, Config, ConfigError};
use crate::error::Reject;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;

/// Who the caller is, once a credential was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `X-Consumer-ID` to the upstream; the key of per-consumer limits and cache entries.
    pub consumer_id: String,
    pub tier: Option<String>,
    /// JWT subject (`X-Auth-Subject`), absent for API keys.
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    /// `jwt` or `api_key`.
    pub method: &'static str,
}

/// What a policy sees of a request.
pub struct PolicyCtx<'a> {
    pub req: &'a mut RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub route: &'a str,
    pub identity: &'a mut Option<Arc<Identity>>,
    /// Added to whatever response this request gets (2xx or a rejection), e.g. the
    /// RateLimit fields.
    pub response_headers: &'a mut Vec<(HeaderName, HeaderValue)>,
}

#[async_trait]
pub trait Policy: Send + Sync {
    /// Stable name, for logs.
    fn name(&self) -> &'static str;
    async fn apply(&self, cx: &mut PolicyCtx<'_>) -> Result<(), Reject>;
}

/// Process-wide policy state built from a whole config (issuers and their keys,
/// consumers, counters), shared by the routes that use it.
pub struct PolicySet {
    pub jwt: Option<Arc<jwt::JwtAuth>>,
    pub api_key: Option<Arc<api_key::ApiKeyAuth>>,
    /// Tier limits, the limit store and the trusted proxies.
    pub limits: Arc<limits::LimitsShared>,
}

impl PolicySet {
    /// Builds from a validated config. Issuers whose config is unchanged from
    /// `previous` keep their keys (and their JWKS refresh task); the limit store comes
    /// from the process's `stores`.
    pub fn build(
        cfg: &Config,
        previous: Option<&PolicySet>,
        stores: &crate::store::Registry,
    ) -> Result<Self, Vec<ConfigError>> {
        let limits = limits::LimitsShared::build(cfg, stores)
            .map_err(|e| vec![ConfigError::new("store", e)])?;
        let consumers = Arc::new(consumers::Consumers::build(cfg));
        let Some(auth) = &cfg.auth else {
            return Ok(PolicySet {
                jwt: None,
                api_key: None,
                limits,
            });
        };
        let jwt = if auth.jwt.is_empty() {
            None
        } else {
            let prev = previous.and_then(|p| p.jwt.as_deref());
            Some(Arc::new(jwt::JwtAuth::build(
                &auth.jwt,
                consumers.clone(),
                prev,
            )?))
        };
        let api_key = match &auth.api_key {
            None => None,
            Some(a) => Some(Arc::new(
                api_key::ApiKeyAuth::new(a, consumers).ok_or_else(|| {
                    vec![ConfigError::new(
                        "auth.api_key.header",
                        "invalid header name",
                    )]
                })?,
            )),
        };
        Ok(PolicySet {
            jwt,
            api_key,
            limits,
        })
    }

    /// Loads what needs the network (each `jwks_url`) and starts background refreshes.
    /// Called before a snapshot starts serving; idempotent for reused issuers.
    /// Also starts the limit store's sync thread (idempotent).
    pub async fn start(&self) {
        self.limits.store.start();
        if let Some(jwt) = &self.jwt {
            jwt.start().await;
        }
    }

    /// The compiled policies of one route, in stage order.
    pub fn for_route(
        &self,
        index: usize,
        route: &model::Route,
    ) -> Result<Vec<Arc<dyn Policy>>, ConfigError> {
        let mut out: Vec<Arc<dyn Policy>> = Vec::new();
        let names = route.auth.as_deref().unwrap_or(&[]);
        if !names.is_empty() {
            out.extend(self.auth_policies(index, route, names)?);
        }
        // Limit stage: after authentication and authorization.
        if let Some(l) = limits::Limits::build(&self.limits, index, route)? {
            out.push(Arc::new(l));
        }
        Ok(out)
    }

    fn auth_policies(
        &self,
        index: usize,
        route: &model::Route,
        names: &[String],
    ) -> Result<Vec<Arc<dyn Policy>>, ConfigError> {
        let mut out: Vec<Arc<dyn Policy>> = Vec::new();
        let mut methods = Vec::with_capacity(names.len());
        for (k, name) in names.iter().enumerate() {
            let m = match name.as_str() {
                "jwt" => self.jwt.clone().map(auth::Method::Jwt),
                "api_key" => self.api_key.clone().map(auth::Method::ApiKey),
                _ => None,
            };
            methods.push(m.ok_or_else(|| {
                ConfigError::new(
                    format!("routes[{index}].auth[{k}]"),
                    format!("auth method {name:?} is not configured under auth:"),
                )
            })?);
        }
        out.push(Arc::new(auth::Authenticate {
            methods,
            forward_credential: route.auth_forward_credential,
        }));
        if !route.scopes.is_empty() {
            out.push(Arc::new(auth::Authorize::new(route.scopes.clone())));
        }
        Ok(out)
    }
}
