//! A rate limit: a tier's `rate` with `burst`, or a route's `rate_limit`. GCRA per key
//! (`store::gcra`), counted where `store:` says. A missing `burst` is one period's worth
//! (`50/s` admits 50 at once).

use super::ratelimit_headers::{sf_string, Applied};
use crate::config::units::Rate;
use crate::store::gcra::Gcra;
use crate::store::window::unit_nanos;
use crate::store::{RateLimiter, Store, StoreDown};
use std::sync::Arc;

/// One limit's answer for one request.
#[derive(Debug, Clone)]
pub struct Step {
    pub allowed: bool,
    pub applied: Applied,
    /// When refused: seconds until the request would be admitted (at least 1).
    pub retry_secs: u64,
}

pub struct RateLimit {
    /// The `RateLimit-Policy` item name (a Structured Field String).
    pub name: Arc<str>,
    /// The same name, plain (for the problem body's `violated-policies`).
    pub policy: String,
    /// For problem details: `route "orders" rate limit (50/s, burst 100)`.
    pub label: String,
    pub limiter: Arc<RateLimiter>,
    pub count: u64,
    pub window_secs: u64,
    pub burst: u64,
}

pub fn secs_ceil(ns: u64) -> u64 {
    ns.div_ceil(crate::clock::NANOS_PER_SEC)
}

impl RateLimit {
    /// `id` names the counts in the store; `name` is what clients see.
    pub fn compile(
        store: &Arc<Store>,
        id: &str,
        name: &str,
        what: &str,
        rate: Rate,
        burst: Option<u64>,
        sync: std::time::Duration,
    ) -> RateLimit {
        let period = unit_nanos(rate.unit);
        let burst = burst.unwrap_or(rate.count).max(1);
        let gcra = Gcra::new(rate.count, period, burst);
        RateLimit {
            name: sf_string(name).into(),
            policy: name.to_string(),
            label: format!("{what} rate limit ({rate}, burst {burst})"),
            limiter: store.rate(id, gcra, sync),
            count: rate.count,
            window_secs: period / crate::clock::NANOS_PER_SEC,
            burst,
        }
    }

    pub async fn check(&self, key: &[u8], now: u64) -> Result<Step, StoreDown> {
        let h = self.limiter.hash(key);
        let v = self.limiter.check(h, key, now).await?;
        let retry_secs = if v.allowed {
            0
        } else {
            secs_ceil(v.retry_ns).max(1)
        };
        Ok(Step {
            allowed: v.allowed,
            applied: Applied {
                name: self.name.clone(),
                quota: self.count,
                window_secs: self.window_secs,
                burst: Some(self.burst),
                remaining: v.remaining,
                reset_secs: if v.allowed {
                    secs_ceil(v.next_ns)
                } else {
                    retry_secs
                },
            },
            retry_secs,
        })
    }

    /// Gives the admission back; the reported state gains the token again.
    pub fn refund(&self, key: &[u8], applied: &mut Applied) {
        self.limiter.refund(self.limiter.hash(key), key);
        applied.remaining = (applied.remaining + 1).min(self.burst);
        if applied.remaining == self.burst {
            applied.reset_secs = 0;
        }
    }
}
