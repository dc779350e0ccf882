//! Consumers: who a verified credential belongs to, with its tier and scopes.
//!
//! An API key resolves through the SHA-256 of the presented key. The map is keyed by
//! that digest, so the lookup's timing depends only on the digest of what the caller
//! sent, never on how much of a real key it got right: learning that a digest shares a
//! prefix with a stored digest says nothing about the key behind it (finding an input
//! that extends the match is a preimage search). The plain keys are never held in
//! memory at all, only their digests.
//!
//! A JWT resolves by its `consumer_claim` (default `sub`) through `jwt_subjects`. A
//! valid token whose subject is listed nowhere is still authenticated: its consumer id
//! is `<issuer name>:<subject>`, with the tier named `default` when that tier exists.

use super::jwt::claims::Checked;
use super::Identity;
use crate::config::Config;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::config::values::{parse_digest, KeyDigest};

struct Known {
    id: String,
    tier: Option<String>,
}

#[derive(Default)]
pub struct Consumers {
    by_key: HashMap<KeyDigest, Arc<Identity>>,
    by_subject: HashMap<String, Known>,
    default_tier: Option<String>,
}

impl Consumers {
    pub fn build(cfg: &Config) -> Self {
        let mut out = Consumers {
            default_tier: cfg.tiers.contains_key("default").then(|| "default".into()),
            ..Default::default()
        };
        for c in &cfg.consumers {
            let identity = Arc::new(Identity {
                consumer_id: c.id.clone(),
                tier: c.tier.clone(),
                subject: None,
                scopes: c.scopes.clone(),
                method: "api_key",
            });
            for k in &c.api_keys {
                if let Some(d) = parse_digest(k) {
                    out.by_key.insert(d, identity.clone());
                }
            }
            for s in &c.jwt_subjects {
                out.by_subject.insert(
                    s.clone(),
                    Known {
                        id: c.id.clone(),
                        tier: c.tier.clone(),
                    },
                );
            }
        }
        out
    }

    /// The consumer that owns this presented API key.
    pub fn by_api_key(&self, presented: &[u8]) -> Option<Arc<Identity>> {
        let digest: KeyDigest = Sha256::digest(presented).into();
        self.by_key.get(&digest).cloned()
    }

    /// The identity of a verified token from issuer `issuer_name`. Scopes come from the
    /// token, not from the consumer.
    pub fn for_jwt(&self, issuer_name: &str, claims: Checked) -> Identity {
        let (consumer_id, tier) = match self.by_subject.get(&claims.consumer) {
            Some(k) => (k.id.clone(), k.tier.clone()),
            None => (
                format!("{issuer_name}:{}", claims.consumer),
                self.default_tier.clone(),
            ),
        };
        Identity {
            consumer_id,
            tier,
            subject: claims.subject.or(Some(claims.consumer)),
            scopes: claims.scopes,
            method: "jwt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model;
    use crate::config::values::hash_key;

    fn cfg(with_default_tier: bool) -> Config {
        let mut c = Config::default();
        if with_default_tier {
            c.tiers.insert(
                "default".into(),
                model::Tier {
                    rate: None,
                    burst: None,
                    quota: None,
                },
            );
        }
        c.consumers.push(model::Consumer {
            id: "acme".into(),
            tier: Some("pro".into()),
            api_keys: vec![hash_key("k-acme")],
            scopes: vec!["orders:read".into()],
            jwt_subjects: vec!["acme-svc".into()],
        });
        c
    }

    fn checked(sub: &str) -> Checked {
        Checked {
            exp: 0.0,
            subject: Some(sub.into()),
            consumer: sub.into(),
            scopes: vec!["a".into()],
        }
    }

    #[test]
    fn api_keys_resolve_by_digest() {
        let c = Consumers::build(&cfg(false));
        let id = c.by_api_key(b"k-acme").unwrap();
        assert_eq!(id.consumer_id, "acme");
        assert_eq!(id.scopes, ["orders:read"]);
        assert_eq!(id.tier.as_deref(), Some("pro"));
        assert!(c.by_api_key(b"k-acm").is_none());
        assert_eq!(
            hash_key("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn jwt_subjects_and_unknown_subjects() {
        let c = Consumers::build(&cfg(true));
        let known = c.for_jwt("corp", checked("acme-svc"));
        assert_eq!(known.consumer_id, "acme");
        assert_eq!(known.tier.as_deref(), Some("pro"));
        assert_eq!(known.scopes, ["a"], "JWT scopes come from the token");
        let unknown = c.for_jwt("corp", checked("someone"));
        assert_eq!(unknown.consumer_id, "corp:someone");
        assert_eq!(unknown.tier.as_deref(), Some("default"));
        let no_default = Consumers::build(&cfg(false)).for_jwt("corp", checked("someone"));
        assert_eq!(no_default.tier, None);
    }
}
