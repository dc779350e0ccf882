//! JWT bearer tokens: several issuers, each with its own algorithms, keys, audiences
//! and leeway.
//!
//! A token is verified in this order: the verified-token cache (hash of the whole
//! token); a strict parse (`token`); the issuer chosen by the unverified `iss` (exact
//! match); its algorithm checked against that issuer's list; the signature checked with
//! that issuer's keys only, by `kid` (an unknown `kid` refetches the JWKS, rate-limited);
//! then the claims (`claims`) and the consumer (`consumers`).

pub mod cache;
pub mod claims;
pub mod jwks;
pub mod keys;
pub mod token;

use super::auth::Failure;
use super::consumers::Consumers;
use super::Identity;
use crate::config::model::JwtIssuer;
use crate::config::ConfigError;
use keys::{Alg, VerifyKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Entries in the verified-token cache (each some 200 bytes).
pub const CACHE_ENTRIES: usize = 100_000;

pub struct Issuer {
    pub name: String,
    pub algs: Vec<Alg>,
    pub rules: claims::Rules,
    pub keys: Arc<jwks::KeySource>,
    /// The config this issuer was built from: a reload with the same one reuses `keys`.
    source: String,
}

pub struct JwtAuth {
    by_iss: HashMap<String, Arc<Issuer>>,
    consumers: Arc<Consumers>,
    cache: cache::TokenCache,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Issuer {
    /// Builds an issuer from its config at YAML path `path`, reusing the key source of
    /// `previous` when the config is unchanged. The keys that come with the config are
    /// read and checked here, once, on every compile (so a `jwks_file` that broke since
    /// fails a reload even when the config text did not change).
    pub fn build(
        path: &str,
        cfg: &JwtIssuer,
        previous: Option<&Issuer>,
    ) -> Result<Issuer, ConfigError> {
        let source = serde_json::to_string(cfg).unwrap_or_default();
        // Names that are not algorithms were reported by validation.
        let algs: Vec<Alg> = cfg
            .algorithms
            .iter()
            .filter_map(|a| Alg::parse(a))
            .collect();
        let rules = claims::Rules {
            audiences: cfg.audiences.clone(),
            leeway: cfg.leeway.map(|d| d.0.as_secs()).unwrap_or(0),
            consumer_claim: cfg.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
            scope_claim: cfg.scope_claim.clone().unwrap_or_else(|| "scope".into()),
        };
        // Without a usable algorithm no key can be checked; validation said why.
        let fixed = if algs.is_empty() {
            Vec::new()
        } else {
            fixed_keys(path, cfg, &algs)?
        };
        let keys = match previous.filter(|p| p.source == source) {
            Some(p) => p.keys.clone(),
            None => Arc::new(jwks::KeySource::new(
                &cfg.name,
                cfg.jwks_url.clone(),
                fixed,
                algs.clone(),
            )),
        };
        Ok(Issuer {
            name: cfg.name.clone(),
            algs,
            rules,
            keys,
            source,
        })
    }
}

/// The keys that come with the config: `hmac_secret` and `jwks_file`.
fn fixed_keys(
    path: &str,
    cfg: &JwtIssuer,
    algs: &[Alg],
) -> Result<Vec<Arc<VerifyKey>>, ConfigError> {
    let mut fixed = Vec::new();
    if let Some(secret) = cfg.hmac_secret.as_deref().filter(|s| !s.is_empty()) {
        if let Some(k) = VerifyKey::hmac(secret.as_bytes(), algs) {
            fixed.push(Arc::new(k));
        }
    }
    if let Some(file) = &cfg.jwks_file {
        let bytes = std::fs::read(file).map_err(|e| {
            ConfigError::new(
                format!("{path}.jwks_file"),
                format!("cannot read {file:?}: {e}"),
            )
        })?;
        let parsed = keys::parse_jwks(&bytes, algs, true)
            .map_err(|e| ConfigError::new(format!("{path}.jwks_file"), format!("{file:?}: {e}")))?;
        if parsed.keys.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.jwks_file"),
                format!(
                    "{file:?} has no key usable with {:?} ({})",
                    cfg.algorithms,
                    parsed.skipped.join("; ")
                ),
            ));
        }
        fixed.extend(parsed.keys);
    }
    Ok(fixed)
}

impl JwtAuth {
    pub fn build(
        issuers: &[JwtIssuer],
        consumers: Arc<Consumers>,
        previous: Option<&JwtAuth>,
    ) -> Result<JwtAuth, Vec<ConfigError>> {
        let mut by_iss = HashMap::new();
        let mut errs = Vec::new();
        for (i, cfg) in issuers.iter().enumerate() {
            let prev = previous.and_then(|p| p.by_iss.get(&cfg.issuer));
            match Issuer::build(&format!("auth.jwt[{i}]"), cfg, prev.map(|a| &**a)) {
                Ok(iss) => {
                    by_iss.insert(cfg.issuer.clone(), Arc::new(iss));
                }
                Err(e) => errs.push(e),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(JwtAuth {
            by_iss,
            consumers,
            cache: cache::TokenCache::new(CACHE_ENTRIES),
        })
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.by_iss.values()
    }

    /// Fetches every `jwks_url` once and starts the background refreshes.
    pub async fn start(&self) {
        futures::future::join_all(self.by_iss.values().map(|i| i.keys.start())).await;
    }

    /// The identity behind a bearer token, from the cache or by verifying it.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, Failure> {
        let now = unix_now();
        let key = cache::hash(token);
        if let Some(id) = self.cache.get(&key, now) {
            return Ok(id);
        }
        let (identity, until) = self.verify(token, now, Instant::now()).await?;
        self.cache.insert(key, identity.clone(), until, now);
        Ok(identity)
    }

    /// Full verification at `now` (seconds since the epoch; `mono` drives the refetch
    /// rate limit). Returns the identity and the time until which it may be cached.
    pub async fn verify(
        &self,
        token: &str,
        now: u64,
        mono: Instant,
    ) -> Result<(Arc<Identity>, f64), Failure> {
        let parsed = token::Parsed::parse(token)?;
        let claims = token::claims(&parsed.payload)?;
        let issuer = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .and_then(|iss| self.by_iss.get(iss))
            .ok_or(Failure::WrongIssuer)?;
        if !issuer.algs.contains(&parsed.alg) {
            return Err(Failure::BadAlgorithm);
        }
        match parsed.verify(&issuer.keys.keys()) {
            Err(Failure::UnknownKey) if issuer.keys.has_url() => {
                let keys = issuer.keys.refetch_for_unknown_kid(mono).await;
                parsed.verify(&keys)?;
            }
            other => other?,
        }
        let checked = claims::check(&claims, &issuer.rules, now)?;
        let until = checked.exp + issuer.rules.leeway as f64;
        let identity = self.consumers.for_jwt(&issuer.name, checked);
        Ok((Arc::new(identity), until))
    }
}
