//! Request policies, one file each. Each owns its config form, compiled form and tests.
//!
//! A route holds its compiled policies in stage order — authenticate, authorize, limit —
//! and the proxy runs them in one loop (`proxy::Gateway::request_filter`). A policy
//! either lets the request continue or rejects it with an `error::Reject`; one place
//! (`proxy::respond`) turns the rejection into a response. Adding a policy means its own
//! file plus one line in `for_route`.
//!
//! Header transforms (`headers`) run on every request and are not in the list.

pub mod aggregate;
pub mod api_key;
pub mod auth;
pub mod client_ip;
pub mod compression;
pub mod consumer_stats;
pub mod consumers;
pub mod cors;
pub mod decompression;
pub mod edge;
pub mod headers;
pub mod ip;
pub mod jwt;
pub mod limits;
pub mod quota;
pub mod rate_limit;
pub mod ratelimit_headers;
pub mod transform;
pub mod versions;
pub mod xml;

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
    async fn apply(&self, cx: &mut PolicyCtx<'_>) -> Result<(), Reject>;

    /// The stage's name, as the request's trace shows it (an event per policy run).
    fn stage(&self) -> &'static str {
        "policy"
    }
}

/// The authentication methods of a config: issuers with their keys, API keys, and the
/// consumers both resolve to. Building them only reads files (a `jwks_file`) and has no
/// side effects, so `Snapshot::compile` builds them in its checking pass, even for a
/// config with other errors, and reports every problem at once.
pub struct Auth {
    pub jwt: Option<Arc<jwt::JwtAuth>>,
    pub api_key: Option<Arc<api_key::ApiKeyAuth>>,
}

impl Auth {
    /// Builds what `auth:` configures; issuers whose config is unchanged from
    /// `previous` keep their keys (and their JWKS refresh task). A method that cannot be
    /// built is left out and its errors go to `errs`.
    pub fn build(cfg: &Config, previous: Option<&PolicySet>, errs: &mut Vec<ConfigError>) -> Auth {
        let mut out = Auth {
            jwt: None,
            api_key: None,
        };
        let Some(auth) = &cfg.auth else {
            return out;
        };
        let consumers = Arc::new(consumers::Consumers::build(cfg));
        if !auth.jwt.is_empty() {
            let prev = previous.and_then(|p| p.jwt.as_deref());
            match jwt::JwtAuth::build(&auth.jwt, consumers.clone(), prev) {
                Ok(j) => out.jwt = Some(Arc::new(j)),
                Err(e) => errs.extend(e),
            }
        }
        if let Some(a) = &auth.api_key {
            match api_key::ApiKeyAuth::new(a, consumers) {
                Ok(k) => out.api_key = Some(Arc::new(k)),
                Err(e) => errs.push(e),
            }
        }
        out
    }

    /// The authentication methods `routes[index].auth` names, in its order. The one
    /// check of those names: each must be `jwt` or `api_key`, configured under `auth:`.
    /// `None` when a name is refused (its error goes to `errs`) or its method could not
    /// be built (`build` reported why).
    pub fn route_methods(
        &self,
        cfg: &Config,
        index: usize,
        route: &model::Route,
        errs: &mut Vec<ConfigError>,
    ) -> Option<Vec<auth::Method>> {
        let names = route.auth.as_deref().unwrap_or(&[]);
        let mut methods = Vec::with_capacity(names.len());
        let mut complete = true;
        for (k, name) in names.iter().enumerate() {
            let path = format!("routes[{index}].auth[{k}]");
            let (configured, built) = match name.as_str() {
                "jwt" => (
                    cfg.auth.as_ref().is_some_and(|a| !a.jwt.is_empty()),
                    self.jwt.clone().map(auth::Method::Jwt),
                ),
                "api_key" => (
                    cfg.auth.as_ref().is_some_and(|a| a.api_key.is_some()),
                    self.api_key.clone().map(auth::Method::ApiKey),
                ),
                _ => {
                    errs.push(ConfigError::new(
                        path,
                        format!("unknown auth method {name:?} (jwt | api_key)"),
                    ));
                    complete = false;
                    continue;
                }
            };
            match built {
                Some(m) => methods.push(m),
                None if !configured => {
                    errs.push(ConfigError::new(
                        path,
                        format!("auth method {name:?} is not configured under auth:"),
                    ));
                    complete = false;
                }
                None => complete = false,
            }
        }
        complete.then_some(methods)
    }
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
    /// Builds from a config: `Auth::build`, then `assemble`. The limit store comes from
    /// the process's `stores`.
    pub fn build(
        cfg: &Config,
        previous: Option<&PolicySet>,
        stores: &crate::store::Registry,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let auth = Auth::build(cfg, previous, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        PolicySet::assemble(auth, cfg, previous, stores)
    }

    /// Adds the limits (tiers and the limit store) to the built `auth`. Opening the
    /// store has side effects, so this runs only for a config without errors.
    /// `previous` (the set in force) hands over the per-consumer counts.
    pub fn assemble(
        auth: Auth,
        cfg: &Config,
        previous: Option<&PolicySet>,
        stores: &crate::store::Registry,
    ) -> Result<Self, Vec<ConfigError>> {
        let limits = limits::LimitsShared::build(cfg, stores, previous.map(|p| &*p.limits))
            .map_err(|e| vec![ConfigError::new("store", e)])?;
        Ok(PolicySet {
            jwt: auth.jwt,
            api_key: auth.api_key,
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

    /// The compiled policies of one route, in stage order; `methods` are its checked
    /// authentication methods (`Auth::route_methods`).
    pub fn for_route(
        &self,
        index: usize,
        route: &model::Route,
        methods: Vec<auth::Method>,
    ) -> Result<Vec<Arc<dyn Policy>>, ConfigError> {
        let mut out: Vec<Arc<dyn Policy>> = Vec::new();
        if !methods.is_empty() {
            out.push(Arc::new(auth::Authenticate {
                methods,
                forward_credential: route.auth_forward_credential,
                consumers: self.limits.consumers.clone(),
            }));
            if !route.scopes.is_empty() {
                out.push(Arc::new(auth::Authorize::new(route.scopes.clone())));
            }
        }
        // Limit stage: after authentication and authorization.
        if let Some(l) = limits::Limits::build(&self.limits, index, route)? {
            out.push(Arc::new(l));
        }
        Ok(out)
    }
}
