//! Request policies, one file each. Each owns its config form, compiled form and tests.
//!
//! A route holds its compiled policies in stage order — authenticate, authorize, limit —
//! and the proxy runs them in one loop (`proxy::Gateway::request_filter`). A policy
//! either lets the request continue or rejects it with an `error::Reject`; one place
//! (`proxy::respond`) turns the rejection into a response. Adding a policy means its own
//! file plus one line in `for_route`.
//!
//! Header transforms (`headers`) run on every request and are not in the list.

pub mod client_ip;
pub mod headers;
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
    /// Tier limits, the limit store and the trusted proxies.
    pub limits: Arc<limits::LimitsShared>,
}

impl PolicySet {
    pub fn build(cfg: &Config) -> Result<Self, Vec<ConfigError>> {
        let limits =
            limits::LimitsShared::build(cfg).map_err(|e| vec![ConfigError::new("store", e)])?;
        Ok(PolicySet { limits })
    }

    /// The compiled policies of one route, in stage order.
    pub fn for_route(
        &self,
        index: usize,
        route: &model::Route,
    ) -> Result<Vec<Arc<dyn Policy>>, ConfigError> {
        let mut policies: Vec<Arc<dyn Policy>> = Vec::new();
        // Limit stage: after authentication and authorization.
        if let Some(l) = limits::Limits::build(&self.limits, index, route)? {
            policies.push(Arc::new(l));
        }
        Ok(policies)
    }

    /// Starts background work (the limit store's sync thread). Idempotent.
    pub fn start(&self) {
        self.limits.store.start();
    }
}
