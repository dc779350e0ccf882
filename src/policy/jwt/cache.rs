//! The verified-token cache: a repeat caller's token costs one SHA-256 and a map lookup
//! instead of a signature check (tens of microseconds for ES256 or RS256).
//!
//! Keyed by the SHA-256 of the whole token, so a hit means the very same bytes were
//! verified before. An entry holds the resolved identity until the token's `exp` (plus
//! the issuer's leeway, as verification allows). Only successes are stored. Bounded in
//! entries: when a shard is full, expired entries go first, then an arbitrary one.

use crate::policy::Identity;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    identity: Arc<Identity>,
    /// Seconds since the epoch after which the entry is dead.
    until: f64,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<TokenHash, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    /// `capacity` entries in all (0 turns the cache off).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &TokenHash) -> &Mutex<HashMap<TokenHash, Entry>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    pub fn get(&self, key: &TokenHash, now: u64) -> Option<Arc<Identity>> {
        let mut map = self.shard(key).lock().ok()?;
        let e = map.get(key)?;
        if (now as f64) < e.until {
            return Some(e.identity.clone());
        }
        map.remove(key);
        None
    }

    pub fn insert(&self, key: TokenHash, identity: Arc<Identity>, until: f64, now: u64) {
        if self.per_shard == 0 {
            return;
        }
        let Ok(mut map) = self.shard(&key).lock() else {
            return;
        };
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            map.retain(|_, e| (now as f64) < e.until);
            if map.len() >= self.per_shard {
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, Entry { identity, until });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: &str) -> Arc<Identity> {
        Arc::new(Identity {
            consumer_id: n.into(),
            tier: None,
            subject: None,
            scopes: vec![],
            method: "jwt",
        })
    }

    #[test]
    fn entries_die_at_exp() {
        let c = TokenCache::new(100);
        let k = hash("a.b.c");
        c.insert(k, id("x"), 1000.0, 900);
        assert_eq!(c.get(&k, 999).unwrap().consumer_id, "x");
        assert!(c.get(&k, 1000).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_in_entries() {
        let c = TokenCache::new(32);
        for i in 0..1000 {
            c.insert(hash(&format!("t{i}")), id("x"), 1e12, 0);
        }
        assert!(c.len() <= 32, "{}", c.len());
        // Expired entries are the first to go.
        // One entry per shard; two keys of the same shard.
        let c = TokenCache::new(16);
        let (mut old, mut new) = ([0u8; 32], [0u8; 32]);
        old[1] = 1;
        new[1] = 2;
        c.insert(old, id("old"), 10.0, 0);
        c.insert(new, id("new"), 1e12, 20);
        assert_eq!(c.get(&new, 20).unwrap().consumer_id, "new");
        assert_eq!(c.len(), 1);
    }
}
