//! The limit stage of a route: its consumer's tier limits (rate, quota) and the route's
//! own `rate_limit` and `quota`, in that order. Each admits and counts the request or
//! refuses it; when a later limit refuses, the earlier ones get their count back, so a
//! refused request costs nothing and never reaches the upstream.
//!
//! Every response of a limited route carries the RateLimit fields of the limits applied
//! (`ratelimit_headers`); a refusal is a 429 naming the limit, with `Retry-After`, counted
//! in `gatehouse_ratelimit_rejections_total{route,limit}`.

use super::client_ip::{self, TrustedProxies};
use super::consumer_stats::ConsumerStats;
use super::quota::{Quota, Taken};
use super::rate_limit::{RateLimit, Step};
use super::ratelimit_headers::{self, Applied};
use super::{Policy, PolicyCtx};
use crate::config::model;
use crate::error::{Limited, Reject};
use crate::store::{Registry, Store};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use prometheus::IntCounter;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// What a route limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFrom {
    Consumer,
    Ip,
    Route,
    Header(HeaderName),
}

impl KeyFrom {
    /// `consumer | ip | route | header:NAME` (validated). Omitted: `consumer` on a route
    /// with auth, `ip` on a public one.
    pub fn parse(key: Option<&str>, route_has_auth: bool) -> Result<KeyFrom, &'static str> {
        use crate::config::values::LimitKey;
        Ok(match key.map(LimitKey::parse).transpose()? {
            None if route_has_auth => KeyFrom::Consumer,
            None => KeyFrom::Ip,
            Some(LimitKey::Consumer) => KeyFrom::Consumer,
            Some(LimitKey::Ip) => KeyFrom::Ip,
            Some(LimitKey::Route) => KeyFrom::Route,
            Some(LimitKey::Header(name)) => KeyFrom::Header(name),
        })
    }

    /// The key of one request. A missing value (no consumer, no header) is the empty
    /// key: it is counted like any other, never "not limited". A key longer than
    /// `MAX_RAW_KEY` is replaced by its digest (`stored_key`).
    fn of<'a>(&self, cx: &'a PolicyCtx<'_>, proxies: &TrustedProxies) -> Cow<'a, [u8]> {
        stored_key(self.raw(cx, proxies))
    }

    fn raw<'a>(&self, cx: &'a PolicyCtx<'_>, proxies: &TrustedProxies) -> Cow<'a, [u8]> {
        match self {
            KeyFrom::Consumer => match cx.identity.as_ref() {
                Some(id) => Cow::Borrowed(id.consumer_id.as_bytes()),
                None => Cow::Borrowed(b""),
            },
            KeyFrom::Ip => Cow::Owned(client_ip::key_bytes(
                proxies.client_ip(cx.client_ip, &cx.req.headers),
            )),
            KeyFrom::Route => Cow::Borrowed(b""),
            KeyFrom::Header(name) => match cx.req.headers.get(name) {
                Some(v) => Cow::Borrowed(v.as_bytes()),
                None => Cow::Borrowed(b""),
            },
        }
    }
}

/// Keys up to this many bytes are stored as sent; longer ones as their digest.
pub const MAX_RAW_KEY: usize = 64;

/// What the limit tables, SQLite and Redis hold for a key: the key itself up to
/// `MAX_RAW_KEY` bytes, else `sha256:` and the 64 hex digits of its SHA-256 (71 bytes).
/// A client value (a header can be kilobytes) then costs at most 71 bytes per entry in
/// memory and per row on disk. The digest form is longer than any key kept as sent, so a
/// short key can never equal a long key's digest: two keys share a count only when they
/// are equal (or their SHA-256 collides).
pub fn stored_key(key: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    if key.len() <= MAX_RAW_KEY {
        return key;
    }
    Cow::Owned(crate::config::values::hash_key(&*key).into_bytes())
}

/// A tier's limits, shared by every route.
#[derive(Default)]
pub struct TierLimits {
    pub rate: Option<RateLimit>,
    pub quota: Option<Quota>,
}

/// Tier limits, the store and the trusted proxies: built once per config.
pub struct LimitsShared {
    pub store: Arc<Store>,
    pub tiers: HashMap<String, TierLimits>,
    pub proxies: TrustedProxies,
    /// Requests and refusals per consumer, for the status page (bounded; no labels).
    pub consumers: Arc<ConsumerStats>,
}

impl LimitsShared {
    /// `stores` hands over the running store when the store settings are unchanged;
    /// `previous` (the config in force) its per-consumer counts.
    pub fn build(
        cfg: &crate::config::Config,
        stores: &Registry,
        previous: Option<&LimitsShared>,
    ) -> Result<Arc<LimitsShared>, String> {
        let store = stores.store_for(cfg)?;
        let sync = store.config.sync_interval;
        let tiers = cfg
            .tiers
            .iter()
            .map(|(name, t)| {
                let what = format!("tier {name:?}");
                let limits = TierLimits {
                    rate: t.rate.map(|r| {
                        let id = format!("tier:{name}:rate");
                        let shown = format!("tier.{name}.rate");
                        RateLimit::compile(&store, &id, &shown, &what, r, t.burst, sync)
                    }),
                    quota: t.quota.map(|q| {
                        let id = format!("tier:{name}:quota");
                        Quota::compile(&store, &id, &format!("tier.{name}.quota"), &what, q)
                    }),
                };
                (name.clone(), limits)
            })
            .collect();
        Ok(Arc::new(LimitsShared {
            store,
            tiers,
            proxies: TrustedProxies::parse(&cfg.server.trusted_proxies),
            consumers: ConsumerStats::build(cfg, previous.map(|p| &*p.consumers)),
        }))
    }
}

/// One route's limit stage.
pub struct Limits {
    shared: Arc<LimitsShared>,
    rate: Option<(RateLimit, KeyFrom)>,
    quota: Option<(Quota, KeyFrom)>,
    /// `gatehouse_ratelimit_rejections_total{route, limit=tier|rate|quota}`.
    rejected: [IntCounter; 3],
    /// The `RateLimit-Policy` value when every limit applied, per tier ("" = no tier);
    /// absent when a month quota makes it change over time.
    policy_values: HashMap<String, HeaderValue>,
}

impl Limits {
    /// None when nothing can limit this route (no route limits and no tiers).
    pub fn build(
        shared: &Arc<LimitsShared>,
        index: usize,
        route: &model::Route,
    ) -> Result<Option<Limits>, crate::config::ConfigError> {
        use crate::config::ConfigError;
        if route.rate_limit.is_none() && route.quota.is_none() && shared.tiers.is_empty() {
            return Ok(None);
        }
        let store = &shared.store;
        let has_auth = route.auth.as_ref().is_some_and(|a| !a.is_empty());
        let what = format!("route {:?}", route.name);
        let rate = match &route.rate_limit {
            Some(rl) => {
                let key = KeyFrom::parse(rl.key.as_deref(), has_auth)
                    .map_err(|e| ConfigError::new(format!("routes[{index}].rate_limit.key"), e))?;
                let sync = rl.sync_interval.map_or(store.config.sync_interval, |d| d.0);
                let id = format!("route:{}:rate", route.name);
                let shown = format!("route.{}.rate", route.name);
                let r = RateLimit::compile(store, &id, &shown, &what, rl.limit, rl.burst, sync);
                Some((r, key))
            }
            None => None,
        };
        let quota = match &route.quota {
            Some(q) => {
                let key = KeyFrom::parse(q.key.as_deref(), has_auth)
                    .map_err(|e| ConfigError::new(format!("routes[{index}].quota.key"), e))?;
                let id = format!("route:{}:quota", route.name);
                let shown = format!("route.{}.quota", route.name);
                Some((Quota::compile(store, &id, &shown, &what, q.limit), key))
            }
            None => None,
        };
        let m = &crate::metrics::metrics().ratelimit_rejections;
        let rejected = ["tier", "rate", "quota"].map(|l| m.with_label_values(&[&route.name, l]));
        let mut limits = Limits {
            shared: shared.clone(),
            rate,
            quota,
            rejected,
            policy_values: HashMap::new(),
        };
        limits.policy_values = limits.fixed_policy_values();
        Ok(Some(limits))
    }

    /// `RateLimit-Policy` depends only on which limits apply, except for month quotas
    /// (a month's length varies): computed once per tier here.
    fn fixed_policy_values(&self) -> HashMap<String, HeaderValue> {
        let tiers = self.shared.tiers.iter().map(|(n, t)| (n.as_str(), Some(t)));
        let mut out = HashMap::new();
        for (name, tier) in std::iter::once(("", None)).chain(tiers) {
            let mut applied = Vec::new();
            for (item, _) in self.plan(tier) {
                use crate::config::units::RateUnit;
                let (name, quota, burst, window_secs) = match item {
                    Item::Rate(r, _) => (&r.name, r.count, Some(r.burst), Some(r.window_secs)),
                    Item::Quota(q, _) => match q.limiter.table.unit {
                        RateUnit::Month => (&q.name, q.limit, None, None),
                        u => {
                            let secs = crate::store::window::unit_nanos(u) / 1_000_000_000;
                            (&q.name, q.limit, None, Some(secs))
                        }
                    },
                };
                let Some(window_secs) = window_secs else {
                    applied.clear();
                    break;
                };
                applied.push(Applied {
                    name: name.clone(),
                    quota,
                    window_secs,
                    burst,
                    remaining: 0,
                    reset_secs: 0,
                });
            }
            if applied.is_empty() {
                continue;
            }
            // Cloning a stored value is then a reference count, not a copy.
            let bytes = bytes::Bytes::from(ratelimit_headers::policy_field(&applied));
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes) {
                out.insert(name.to_string(), v);
            }
        }
        out
    }
}

/// One limit of this request, in stage order.
enum Item<'a> {
    Rate(&'a RateLimit, &'static str),
    Quota(&'a Quota, &'static str),
}

/// An admission already counted, to give back if a later limit refuses.
enum Counted<'a> {
    Rate(&'a RateLimit),
    Quota(&'a Quota, Taken),
}

impl Limits {
    fn plan<'a>(&'a self, tier: Option<&'a TierLimits>) -> Vec<(Item<'a>, Option<&'a KeyFrom>)> {
        let mut plan = Vec::with_capacity(4);
        if let Some(t) = tier {
            if let Some(r) = &t.rate {
                plan.push((Item::Rate(r, "tier"), None));
            }
            if let Some(q) = &t.quota {
                plan.push((Item::Quota(q, "tier"), None));
            }
        }
        if let Some((r, k)) = &self.rate {
            plan.push((Item::Rate(r, "rate"), Some(k)));
        }
        if let Some((q, k)) = &self.quota {
            plan.push((Item::Quota(q, "quota"), Some(k)));
        }
        plan
    }

    fn refused(&self, item: &Item<'_>, step: &Step, who: Option<&super::Identity>) -> Reject {
        let (limit, label, policy, quota) = match item {
            Item::Rate(r, l) => (*l, &r.label, &r.policy, false),
            Item::Quota(q, l) => (*l, &q.label, &q.policy, true),
        };
        let idx = match limit {
            "tier" => 0,
            "rate" => 1,
            _ => 2,
        };
        self.rejected[idx].inc();
        if let Some(id) = who {
            self.shared.consumers.refused(id, idx);
        }
        Reject::Limited(Box::new(Limited {
            limit,
            quota,
            policy: policy.clone(),
            label: label.clone(),
            retry_after: step.retry_secs,
        }))
    }
}

fn give_back(counted: Vec<(Counted<'_>, Cow<'_, [u8]>)>, applied: &mut [Applied]) {
    for ((c, key), a) in counted.into_iter().zip(applied.iter_mut()) {
        match c {
            Counted::Rate(r) => r.refund(&key, a),
            Counted::Quota(q, taken) => q.refund(&key, &taken, a),
        }
    }
}

#[async_trait]
impl Policy for Limits {
    fn stage(&self) -> &'static str {
        "limit"
    }

    async fn apply(&self, cx: &mut PolicyCtx<'_>) -> Result<(), Reject> {
        let tier = cx
            .identity
            .as_ref()
            .and_then(|id| id.tier.as_deref())
            .and_then(|t| self.shared.tiers.get(t));
        let plan = self.plan(tier);
        if plan.is_empty() {
            return Ok(());
        }
        let now = self.shared.store.clock().now_ns();
        let mut applied: Vec<Applied> = Vec::with_capacity(plan.len());
        let mut counted = Vec::with_capacity(plan.len());
        let mut outcome = Ok(());
        for (item, key_from) in &plan {
            let key = match key_from {
                Some(k) => k.of(cx, &self.shared.proxies),
                None => KeyFrom::Consumer.of(cx, &self.shared.proxies),
            };
            let checked = match item {
                Item::Rate(r, _) => r.check(&key, now).await.map(|s| (s, Counted::Rate(r))),
                Item::Quota(q, _) => q
                    .check(&key, now)
                    .await
                    .map(|(s, t)| (s, Counted::Quota(q, t))),
            };
            let Ok((step, taken)) = checked else {
                outcome = Err(Reject::LimitStoreUnavailable);
                break;
            };
            if !step.allowed {
                outcome = Err(self.refused(item, &step, cx.identity.as_deref()));
                applied.push(step.applied);
                break;
            }
            applied.push(step.applied);
            counted.push((taken, key));
        }
        let policy = if outcome.is_err() {
            give_back(counted, &mut applied);
            None
        } else {
            drop(counted);
            let tier_name = cx.identity.as_ref().and_then(|id| id.tier.as_deref());
            self.policy_values
                .get(tier_name.filter(|_| tier.is_some()).unwrap_or(""))
        };
        ratelimit_headers::fields(&applied, policy, cx.response_headers);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Identity;
    use pingora::http::RequestHeader;

    #[test]
    fn long_keys_are_stored_as_their_digest() {
        let short = vec![b'k'; MAX_RAW_KEY];
        assert_eq!(&*stored_key(Cow::Borrowed(&short)), &short[..]);
        let long = vec![b'k'; MAX_RAW_KEY + 1];
        let d = stored_key(Cow::Borrowed(&long));
        assert_eq!(d.len(), 71);
        assert!(d.starts_with(b"sha256:"));
        let mut other = long.clone();
        *other.last_mut().unwrap() = b'j';
        assert_ne!(
            d,
            stored_key(Cow::Borrowed(&other)),
            "only equal keys collide"
        );
        assert_eq!(d, stored_key(Cow::Borrowed(&long)));
    }

    fn limits_for(yaml: &str) -> Limits {
        let cfg = crate::config::load::parse(yaml, &|_| None).expect("config");
        // A test clock: the 1/min tier below must not refill while the test runs.
        let stores = Registry::new(Arc::new(crate::clock::Clock::test_at(0)));
        let shared = LimitsShared::build(&cfg, &stores, None).expect("limits");
        Limits::build(&shared, 0, &cfg.routes[0])
            .expect("route")
            .expect("limited")
    }

    async fn call(l: &Limits, tier: Option<&str>, consumer: &str) -> Result<(), Reject> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut identity = tier.map(|t| {
            Arc::new(Identity {
                consumer_id: consumer.into(),
                tier: Some(t.into()),
                subject: None,
                scopes: vec![],
                method: "api_key",
            })
        });
        let mut headers = Vec::new();
        let mut cx = PolicyCtx {
            req: &mut req,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            route: "r",
            identity: &mut identity,
            response_headers: &mut headers,
        };
        l.apply(&mut cx).await
    }

    /// In process, with identities made by hand (the socket-level test needs auth).
    #[tokio::test]
    async fn tiers_limit_per_consumer_across_the_route() {
        let l = limits_for(
            "version: 1\nlisteners: [{ name: p, address: \"127.0.0.1:1\" }]\n\
             upstreams: { app: { targets: [{ address: \"127.0.0.1:2\" }] } }\n\
             tiers:\n  free: { rate: 1/min, burst: 2 }\n  pro: { rate: 1000/s, burst: 1000 }\n\
             routes: [{ name: tiers-unit, match: { path_prefix: / }, upstream: app }]\n",
        );
        for _ in 0..2 {
            assert!(call(&l, Some("free"), "f1").await.is_ok());
        }
        match call(&l, Some("free"), "f1").await {
            Err(Reject::Limited(x)) => {
                assert_eq!((x.limit, x.policy.as_str()), ("tier", "tier.free.rate"))
            }
            other => panic!("free consumer not limited: {other:?}"),
        }
        assert!(call(&l, Some("free"), "f2").await.is_ok(), "per consumer");
        for _ in 0..50 {
            assert!(
                call(&l, Some("pro"), "p1").await.is_ok(),
                "pro is not limited"
            );
        }
        for _ in 0..5 {
            assert!(call(&l, None, "").await.is_ok(), "anonymous: no tier");
        }
    }
}
