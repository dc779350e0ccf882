//! Per-consumer counts for the status page: requests and rate-limit refusals of the
//! consumers that use the gateway most, with their quota use read from the limit store.
//!
//! Consumers are not a bounded set (a valid JWT whose subject is listed nowhere is the
//! consumer `<issuer>:<subject>`), so what is kept is bounded by construction:
//!
//! - **Listed consumers** (`consumers:` in the config): one set of atomic counters each,
//!   made when the config is compiled and carried over a reload by id. The request path
//!   finds them in a map that is never written after it is built (no lock) and bumps an
//!   atomic.
//! - **Unlisted consumers**: their requests and refusals are counted together (atomics);
//!   their refusals also go through a space-saving sketch of `UNLISTED_SLOTS` entries
//!   (Metwally et al.): the most refused of them, each with an over-estimate bound. The
//!   sketch takes a lock, but only on a refusal of an unlisted consumer, never on an
//!   admitted request.
//!
//! None of it is a metric label: the Prometheus series stay per route and limit.

use super::limits::{stored_key, KeyFrom, LimitsShared};
use super::Identity;
use crate::config::units::RateUnit;
use crate::config::Config;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// How many consumers `GET /admin/status` shows.
pub const TOP: usize = 10;
/// Unlisted consumers the refusal sketch holds.
pub const UNLISTED_SLOTS: usize = 32;

/// The `limit` kinds of `gatehouse_ratelimit_rejections_total`, in index order.
pub const LIMIT_KINDS: [&str; 3] = ["tier", "rate", "quota"];

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    refused: [AtomicU64; 3],
}

struct Listed {
    counters: Arc<Counters>,
    tier: Option<String>,
}

/// One unlisted consumer in the sketch. `refused` over-counts by at most `error` (the
/// count of the entry it replaced); `by_limit` counts only since it entered.
struct Slot {
    id: Box<str>,
    tier: Option<Box<str>>,
    refused: u64,
    error: u64,
    by_limit: [u64; 3],
}

#[derive(Default)]
struct Unlisted {
    requests: AtomicU64,
    refused: [AtomicU64; 3],
    sketch: Mutex<Vec<Slot>>,
}

impl Unlisted {
    fn refused(&self, id: &str, tier: Option<&str>, kind: usize) {
        self.refused[kind].fetch_add(1, Relaxed);
        let mut slots = self.sketch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.iter_mut().find(|s| &*s.id == id) {
            s.refused += 1;
            s.by_limit[kind] += 1;
            return;
        }
        let mut by_limit = [0; 3];
        by_limit[kind] = 1;
        let fresh = |floor: u64| Slot {
            id: id.into(),
            tier: tier.map(Into::into),
            refused: floor + 1,
            error: floor,
            by_limit,
        };
        if slots.len() < UNLISTED_SLOTS {
            slots.push(fresh(0));
            return;
        }
        // Full: the least refused entry makes room, and its count becomes the newcomer's
        // error bound (a consumer refused often enough always climbs back in).
        if let Some(min) = slots.iter_mut().min_by_key(|s| s.refused) {
            *min = fresh(min.refused);
        }
    }
}

/// The per-consumer counts of one config (carried over reloads).
pub struct ConsumerStats {
    listed: HashMap<String, Listed>,
    unlisted: Arc<Unlisted>,
}

impl ConsumerStats {
    /// Counters for the consumers `cfg` lists; those of `previous` are kept by id, so a
    /// reload does not reset what the status page turns into rates.
    pub fn build(cfg: &Config, previous: Option<&ConsumerStats>) -> Arc<ConsumerStats> {
        let listed = cfg
            .consumers
            .iter()
            .map(|c| {
                let counters = previous
                    .and_then(|p| p.listed.get(&c.id))
                    .map(|l| l.counters.clone())
                    .unwrap_or_default();
                let tier = c.tier.clone();
                (c.id.clone(), Listed { counters, tier })
            })
            .collect();
        let unlisted = previous.map(|p| p.unlisted.clone()).unwrap_or_default();
        Arc::new(ConsumerStats { listed, unlisted })
    }

    /// An authenticated request (one map lookup and an atomic add).
    pub fn request(&self, id: &Identity) {
        match self.listed.get(&id.consumer_id) {
            Some(l) => l.counters.requests.fetch_add(1, Relaxed),
            None => self.unlisted.requests.fetch_add(1, Relaxed),
        };
    }

    /// A refusal by a limit of kind `LIMIT_KINDS[kind]`.
    pub fn refused(&self, id: &Identity, kind: usize) {
        let kind = kind.min(2);
        match self.listed.get(&id.consumer_id) {
            Some(l) => {
                l.counters.refused[kind].fetch_add(1, Relaxed);
            }
            None => self
                .unlisted
                .refused(&id.consumer_id, id.tier.as_deref(), kind),
        }
    }

    /// The `consumers` section of `GET /admin/status`: the `TOP` consumers by refusals
    /// then requests (those with neither are left out), each with its refusals by limit
    /// kind and its use of the quotas counted by consumer (its tier's, and the routes'
    /// whose `quota.key` is the consumer), plus the unlisted consumers' totals.
    pub async fn status(&self, limits: &LimitsShared, cfg: &Config) -> Value {
        struct Row {
            id: String,
            tier: Option<String>,
            listed: bool,
            requests: Option<u64>,
            refused: [u64; 3],
            total: u64,
            error: u64,
        }
        let mut rows: Vec<Row> = self
            .listed
            .iter()
            .map(|(id, l)| {
                let refused = l.counters.refused.each_ref().map(|a| a.load(Relaxed));
                Row {
                    id: id.clone(),
                    tier: l.tier.clone(),
                    listed: true,
                    requests: Some(l.counters.requests.load(Relaxed)),
                    total: refused.iter().sum(),
                    refused,
                    error: 0,
                }
            })
            .filter(|r| r.total > 0 || r.requests.unwrap_or(0) > 0)
            .collect();
        let tracked = {
            let slots = self
                .unlisted
                .sketch
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            rows.extend(slots.iter().map(|s| Row {
                id: s.id.to_string(),
                tier: s.tier.as_deref().map(str::to_string),
                listed: false,
                requests: None,
                refused: s.by_limit,
                total: s.refused,
                error: s.error,
            }));
            slots.len()
        };
        rows.sort_by(|a, b| {
            (b.total, b.requests.unwrap_or(0))
                .cmp(&(a.total, a.requests.unwrap_or(0)))
                .then_with(|| a.id.cmp(&b.id))
        });
        rows.truncate(TOP);

        let now = limits.store.clock().now_ns();
        let quota_routes = consumer_quota_routes(cfg);
        let mut top = Vec::with_capacity(rows.len());
        for r in rows {
            let key = stored_key(Cow::Borrowed(r.id.as_bytes()));
            let mut quotas = Vec::new();
            if let Some(q) = r
                .tier
                .as_deref()
                .and_then(|t| limits.tiers.get(t))
                .and_then(|t| t.quota.as_ref())
            {
                let used = q.limiter.usage(&key, now).await;
                quotas.push(quota_json(
                    &q.policy,
                    used,
                    q.limit,
                    q.limiter.table.unit,
                    now,
                ));
            }
            for (name, id) in &quota_routes {
                let Some(limiter) = limits.store.quota_by_id(id) else {
                    continue;
                };
                let used = limiter.usage(&key, now).await;
                // A route quota the consumer has not used this window is left out: the
                // list stays short with many routes.
                if used != Some(0) {
                    let t = &limiter.table;
                    quotas.push(quota_json(name, used, t.limit, t.unit, now));
                }
            }
            let by_limit: serde_json::Map<String, Value> = LIMIT_KINDS
                .iter()
                .zip(r.refused)
                .map(|(k, n)| (k.to_string(), json!(n)))
                .collect();
            top.push(json!({
                "id": r.id,
                "tier": r.tier,
                "listed": r.listed,
                "requests": r.requests,
                "refused": r.total,
                "refused_error": r.error,
                "refused_by_limit": by_limit,
                "quotas": quotas,
            }));
        }
        let u = &self.unlisted;
        json!({
            "top": top,
            "top_max": TOP,
            "listed": self.listed.len(),
            "unlisted": {
                "requests": u.requests.load(Relaxed),
                "refused": u.refused.iter().map(|a| a.load(Relaxed)).sum::<u64>(),
                "tracked": tracked,
                "tracked_max": UNLISTED_SLOTS,
            },
        })
    }
}

/// Routes whose quota is counted per consumer: (the quota's policy name, its store id).
fn consumer_quota_routes(cfg: &Config) -> Vec<(String, String)> {
    cfg.routes
        .iter()
        .filter_map(|r| {
            let q = r.quota.as_ref()?;
            let has_auth = r.auth.as_ref().is_some_and(|a| !a.is_empty());
            let key = KeyFrom::parse(q.key.as_deref(), has_auth).ok()?;
            (key == KeyFrom::Consumer).then(|| {
                (
                    format!("route.{}.quota", r.name),
                    format!("route:{}:quota", r.name),
                )
            })
        })
        .collect()
}

fn unit_name(u: RateUnit) -> &'static str {
    match u {
        RateUnit::Second => "s",
        RateUnit::Minute => "min",
        RateUnit::Hour => "h",
        RateUnit::Day => "day",
        RateUnit::Month => "month",
    }
}

fn quota_json(name: &str, used: Option<u64>, limit: u64, unit: RateUnit, now: u64) -> Value {
    let w = crate::store::window::window_at(unit, now);
    json!({
        "name": name,
        // null: the store could not be read.
        "used": used,
        "limit": limit,
        "window": unit_name(unit),
        "resets_in_secs": w.secs_left(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str) -> Identity {
        Identity {
            consumer_id: id.into(),
            tier: None,
            subject: None,
            scopes: vec![],
            method: "jwt",
        }
    }

    fn stats(listed: &[&str]) -> Arc<ConsumerStats> {
        let mut cfg = Config::default();
        for id in listed {
            cfg.consumers.push(crate::config::model::Consumer {
                id: id.to_string(),
                tier: None,
                api_keys: vec![],
                scopes: vec![],
                jwt_subjects: vec![],
            });
        }
        ConsumerStats::build(&cfg, None)
    }

    #[test]
    fn unlisted_consumers_stay_within_the_sketch_and_heavy_ones_stay_in_it() {
        let s = stats(&[]);
        for _ in 0..500 {
            s.refused(&identity("corp:heavy"), 1);
        }
        for i in 0..10_000 {
            let id = identity(&format!("corp:flood-{i}"));
            s.request(&id);
            s.refused(&id, 2);
        }
        let slots = s.unlisted.sketch.lock().unwrap();
        assert_eq!(slots.len(), UNLISTED_SLOTS, "bounded whatever the subjects");
        let heavy = slots.iter().find(|x| &*x.id == "corp:heavy").expect("kept");
        assert!(heavy.refused >= 500 && heavy.refused - heavy.error <= 500);
        assert_eq!(heavy.by_limit, [0, 500, 0]);
        assert_eq!(s.unlisted.requests.load(Relaxed), 10_000);
        assert_eq!(s.unlisted.refused[2].load(Relaxed), 10_000);
    }

    #[test]
    fn listed_consumers_keep_their_counts_over_a_reload() {
        let s = stats(&["acme", "globex"]);
        s.request(&identity("acme"));
        s.refused(&identity("acme"), 0);
        let mut cfg = Config::default();
        cfg.consumers.push(crate::config::model::Consumer {
            id: "acme".into(),
            tier: Some("pro".into()),
            api_keys: vec![],
            scopes: vec![],
            jwt_subjects: vec![],
        });
        let next = ConsumerStats::build(&cfg, Some(&s));
        let acme = &next.listed["acme"];
        assert_eq!(acme.counters.requests.load(Relaxed), 1);
        assert_eq!(acme.counters.refused[0].load(Relaxed), 1);
        assert_eq!(acme.tier.as_deref(), Some("pro"), "the new config's tier");
        assert!(
            !next.listed.contains_key("globex"),
            "removed with its config"
        );
        assert!(
            s.unlisted.sketch.lock().unwrap().is_empty(),
            "listed: no sketch"
        );
    }
}
