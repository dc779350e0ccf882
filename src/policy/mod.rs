//! Request policies, one file each. Each owns its config form, compiled form and tests.
//!
//! A route holds its compiled policies in stage order — authenticate, authorize, limit —
//! and the proxy runs them in one loop (`proxy::Gateway::request_filter`). A policy
//! either lets the request continue or rejects it with an `error::Reject`; one place
//! (`proxy::respond`) turns the rejection into a response. Adding a policy means its own
//! file plus one line in `for_route`.
//!
//! Header transforms (`headers`) run on every request and are not in the list.

pub mod headers;

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
#[derive(Default)]
pub struct PolicySet {}

impl PolicySet {
    pub fn build(_cfg: &Config) -> Result<Self, Vec<ConfigError>> {
        Ok(PolicySet {})
    }

    /// The compiled policies of one route, in stage order.
    pub fn for_route(
        &self,
        _index: usize,
        _route: &model::Route,
    ) -> Result<Vec<Arc<dyn Policy>>, ConfigError> {
        Ok(Vec::new())
    }
}
