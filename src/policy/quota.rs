//! A quota: a tier's `quota`, or a route's `quota`. A count per key over a UTC calendar
//! window (`store::window`), durable and shared through the store.

use super::rate_limit::Step;
use super::ratelimit_headers::{sf_string, Applied};
use crate::config::units::Rate;
use crate::store::counts::QuotaVerdict;
use crate::store::{QuotaLimiter, Store, StoreDown};
use std::sync::Arc;

pub struct Quota {
    pub name: Arc<str>,
    /// The same name, plain (for the problem body's `violated-policies`).
    pub policy: String,
    /// For problem details: `tier "free" quota (1000/day)`.
    pub label: String,
    pub limiter: Arc<QuotaLimiter>,
    pub limit: u64,
}

/// What a refund needs to find the count again.
pub struct Taken(QuotaVerdict);

impl Quota {
    pub fn compile(store: &Arc<Store>, id: &str, name: &str, what: &str, rate: Rate) -> Quota {
        Quota {
            name: sf_string(name).into(),
            policy: name.to_string(),
            label: format!("{what} quota ({rate})"),
            limiter: store.quota(id, rate.count, rate.unit),
            limit: rate.count,
        }
    }

    pub async fn check(&self, key: &[u8], now: u64) -> Result<(Step, Taken), StoreDown> {
        let v = self.limiter.check(self.limiter.hash(key), key, now).await?;
        let left = v.window.secs_left(now).max(1);
        let step = Step {
            allowed: v.allowed,
            applied: Applied {
                name: self.name.clone(),
                quota: self.limit,
                window_secs: v.window.len_secs(),
                burst: None,
                remaining: v.remaining,
                reset_secs: left,
            },
            retry_secs: if v.allowed { 0 } else { left },
        };
        Ok((step, Taken(v)))
    }

    pub fn refund(&self, key: &[u8], taken: &Taken, applied: &mut Applied) {
        self.limiter.refund(self.limiter.hash(key), key, &taken.0);
        applied.remaining = (applied.remaining + 1).min(self.limit);
    }
}
