//! Upstreams at run time: their targets, how one is chosen, how a peer is built for it,
//! and (in `health`) the active checks that decide which targets get traffic.
//!
//! Selection uses pingora-load-balancing for `round_robin`, `random` and
//! `consistent_hash` (weighted, Ketama), with our own health and retry exclusions fed
//! through `select_with`. Pingora has no least-connections balancer, so
//! `least_requests` is ours: power-of-two-choices over in-flight counts per weight.
//!
//! Traffic management lives beside it: the upstream's circuit `breaker`, per-target
//! `outlier` ejection, and the `retry` policy with its budget (each file says how).

pub mod breaker;
pub mod health;
pub mod mirror;
pub mod outlier;
pub mod retry;
pub mod split;
pub mod target;
mod window;

use crate::config::model::{self, Balance};
use crate::config::values::resolve;
use crate::config::ConfigError;
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use prometheus::{Histogram, IntCounter};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
pub use target::Target;

pub use crate::config::values::HashOn;

/// What compiling an upstream needs from outside the file: each target's address,
/// resolved once, and the parsed `hash_on`. Built before anything with side effects
/// (metric series, health state), so an invalid config never creates either.
pub struct Plan {
    pub addrs: Vec<SocketAddr>,
    pub hash_on: Option<HashOn>,
    /// The one clock (breaker windows, ejections, passive cooldowns, the retry budget):
    /// the process's (`runtime::Resources::clock`), handed over by the compiler.
    pub clock: Arc<crate::clock::Clock>,
}

impl Plan {
    /// Resolves the targets and parses `hash_on`; every problem under its YAML path.
    pub fn compile(
        name: &str,
        cfg: &model::Upstream,
        clock: Arc<crate::clock::Clock>,
    ) -> Result<Plan, Vec<ConfigError>> {
        let p = format!("upstreams.{name}");
        let mut errs = Vec::new();
        let mut addrs = Vec::with_capacity(cfg.targets.len());
        for (i, t) in cfg.targets.iter().enumerate() {
            match resolve(&t.address) {
                Ok(a) => addrs.push(a),
                Err(e) => errs.push(ConfigError::new(
                    format!("{p}.targets[{i}].address"),
                    e.to_string(),
                )),
            }
        }
        let hash_on = match cfg.hash_on.as_deref().map(HashOn::parse).transpose() {
            Ok(h) => h,
            Err(e) => {
                errs.push(ConfigError::new(format!("{p}.hash_on"), e.to_string()));
                None
            }
        };
        if errs.is_empty() {
            Ok(Plan {
                addrs,
                hash_on,
                clock,
            })
        } else {
            Err(errs)
        }
    }
}

/// One target of one upstream: what `Upstream::select` returns and what a request's
/// attempts remember. Only `Upstream` makes them, so an id always names a target of the
/// upstream that chose it (the request keeps that upstream, through its route, across a
/// reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetId(usize);

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
    LeastRequests,
}

#[derive(Debug, Clone)]
pub struct ActiveCheck {
    pub http_path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// `upstreams.*.verify`: a TLS check checks the certificate only when true.
    pub verify: bool,
    /// `http2: true` without TLS: the target speaks h2c only, so the HTTP check does too.
    pub h2c: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct PassiveCheck {
    pub unhealthy_after: u32,
    pub cooldown: Duration,
}

pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub targets: Vec<Arc<Target>>,
    selector: Selector,
    pub hash_on: Option<HashOn>,
    pub retries: usize,
    pub max_inflight: usize,
    pub inflight: AtomicUsize,
    pub active: Option<ActiveCheck>,
    pub passive: Option<PassiveCheck>,
    pub tls: bool,
    pub sni: String,
    /// One ready-made peer per target, cloned per request.
    peers: Vec<HttpPeer>,
    /// `breaker:`: the circuit of this upstream.
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// `outlier:`: per-target ejection settings (the state is in each `Target`).
    pub outlier: Option<outlier::Settings>,
    /// `retry:`: which failures are retried, the budget and the backoff.
    pub retry: Option<retry::Policy>,
    pub clock: Arc<crate::clock::Clock>,
    pub duration: Histogram,
    pub conn_reused: IntCounter,
    pub conn_new: IntCounter,
    /// The config this was built from, to reuse the pool (and its health) on reload.
    pub source: String,
}

fn lb<S>(targets: &[Arc<Target>]) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    use futures::FutureExt;
    let set: BTreeSet<Backend> = targets
        .iter()
        .map(|t| Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(t.addr),
            weight: t.weight,
            ext: Default::default(),
        })
        .collect();
    let lb = LoadBalancer::from_backends(Backends::new(discovery::Static::new(set)));
    // Static discovery never waits: the future is ready at once.
    if let Some(Err(e)) = lb.update().now_or_never() {
        tracing::error!("static backend update failed: {e}");
    }
    lb
}

impl Upstream {
    /// The runtime upstream of a valid config; `plan` is what `Plan::compile` made of it.
    pub fn build(name: &str, cfg: &model::Upstream, plan: Plan) -> Self {
        let has_active = cfg.health.active.is_some();
        let targets: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .zip(plan.addrs)
            .map(|(t, addr)| Arc::new(Target::new(name, &t.address, addr, t.weight, has_active)))
            .collect();
        let selector = match cfg.balance {
            Balance::RoundRobin => Selector::RoundRobin(lb(&targets)),
            Balance::Random => Selector::Random(lb(&targets)),
            Balance::ConsistentHash => Selector::Consistent(lb(&targets)),
            Balance::LeastRequests => Selector::LeastRequests,
        };
        let default_sni = cfg.targets.first().map(|t| {
            let host = t
                .address
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(&t.address);
            if host.parse::<std::net::IpAddr>().is_ok() {
                String::new()
            } else {
                host.to_string()
            }
        });
        let sni = cfg.sni.clone().or(default_sni).unwrap_or_default();
        let to = &cfg.timeouts;
        let peers = targets
            .iter()
            .map(|t| {
                let mut p = HttpPeer::new(t.addr, cfg.tls, sni.clone());
                let o = &mut p.options;
                o.connection_timeout =
                    Some(to.connect.map(|d| d.0).unwrap_or(Duration::from_secs(5)));
                o.read_timeout = Some(to.read.map(|d| d.0).unwrap_or(Duration::from_secs(60)));
                o.write_timeout = Some(to.write.map(|d| d.0).unwrap_or(Duration::from_secs(60)));
                o.idle_timeout = Some(to.idle.map(|d| d.0).unwrap_or(Duration::from_secs(60)));
                o.verify_cert = cfg.verify;
                o.verify_hostname = cfg.verify;
                if cfg.http2 {
                    if cfg.tls {
                        o.set_http_version(2, 1);
                    } else {
                        o.set_http_version(2, 2);
                    }
                    // Pingora's default of 1 stream per h2 connection defeats multiplexing.
                    o.max_h2_streams = 100;
                }
                p
            })
            .collect();
        let m = crate::metrics::metrics();
        if cfg.breaker.is_none() {
            // A reload that removed the breaker leaves no stale state series behind.
            let _ = m.circuit_state.remove_label_values(&[name]);
        }
        Upstream {
            name: name.to_string(),
            balance: cfg.balance,
            targets,
            selector,
            hash_on: plan.hash_on,
            retries: cfg.retries,
            max_inflight: cfg.max_inflight,
            inflight: AtomicUsize::new(0),
            active: cfg.health.active.as_ref().map(|a| ActiveCheck {
                http_path: if a.tcp { None } else { a.http_path.clone() },
                interval: a.interval.0,
                timeout: a.timeout.0,
                healthy_after: a.healthy_after,
                unhealthy_after: a.unhealthy_after,
                verify: cfg.verify,
                h2c: cfg.http2 && !cfg.tls,
            }),
            passive: cfg.health.passive.as_ref().map(|p| PassiveCheck {
                unhealthy_after: p.unhealthy_after,
                cooldown: p.cooldown.0,
            }),
            tls: cfg.tls,
            sni,
            peers,
            breaker: cfg.breaker.as_ref().map(|b| {
                Arc::new(breaker::Breaker::new(
                    name,
                    breaker::Settings::of(b),
                    plan.clock.clone(),
                ))
            }),
            outlier: cfg.outlier.as_ref().map(outlier::Settings::of),
            retry: cfg
                .retry
                .as_ref()
                .map(|r| retry::Policy::of(r, plan.clock.clone())),
            clock: plan.clock,
            duration: m.upstream_duration.with_label_values(&[name]),
            conn_reused: m.upstream_connections.with_label_values(&[name, "true"]),
            conn_new: m.upstream_connections.with_label_values(&[name, "false"]),
            source: serde_json::to_string(cfg).unwrap_or_default(),
        }
    }

    fn index_of(&self, b: &Backend) -> Option<usize> {
        let a = b.addr.as_inet()?;
        self.targets.iter().position(|t| t.addr == *a)
    }

    /// Chooses a target, skipping `tried` ones and those out of service.
    /// `key` feeds `consistent_hash`.
    pub fn select(&self, key: &[u8], tried: &[TargetId]) -> Option<TargetId> {
        self.select_index(key, tried).map(TargetId)
    }

    fn select_index(&self, key: &[u8], tried: &[TargetId]) -> Option<usize> {
        let clock_ns = self.clock.now_ns();
        let unknown_ok = self.unknown_ok();
        let ok = |i: usize| {
            !tried.contains(&TargetId(i)) && self.targets[i].usable(clock_ns, unknown_ok)
        };
        let n = self.targets.len();
        // One target: every policy chooses it when it is eligible. Pingora's selection
        // would reach the same answer through a fresh iterator and a set of the backends
        // seen, per request.
        if n == 1 {
            return ok(0).then_some(0);
        }
        let accept = |b: &Backend, _: bool| self.index_of(b).is_some_and(ok);
        match &self.selector {
            Selector::RoundRobin(lb) => lb
                .select_with(key, n * 4, accept)
                .and_then(|b| self.index_of(&b)),
            Selector::Random(lb) => lb
                .select_with(key, n * 4, accept)
                .and_then(|b| self.index_of(&b)),
            Selector::Consistent(lb) => lb
                .select_with(key, n * 4, accept)
                .and_then(|b| self.index_of(&b)),
            Selector::LeastRequests => self.least_requests(ok),
        }
    }

    /// Targets not checked yet may take traffic: there are no active checks, or no
    /// target has had its first result yet.
    fn unknown_ok(&self) -> bool {
        self.active.is_none()
            || self
                .targets
                .iter()
                .all(|t| t.active_state() == target::UNKNOWN)
    }

    /// Power of two choices: two random eligible targets, the one with fewer in-flight
    /// requests per unit of weight wins. O(1) and without the herd effect of a global minimum.
    fn least_requests(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        use rand::Rng;
        let eligible: Vec<usize> = (0..self.targets.len()).filter(|&i| ok(i)).collect();
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0]),
            n => {
                let mut rng = rand::thread_rng();
                let a = eligible[rng.gen_range(0..n)];
                let mut b = eligible[rng.gen_range(0..n - 1)];
                if b == a {
                    b = eligible[n - 1];
                }
                let load = |i: usize| {
                    let t = &self.targets[i];
                    (t.inflight.load(Relaxed) as u64 * 1000) / t.weight.max(1) as u64
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// The ready-made peer of `id`.
    pub fn peer(&self, id: TargetId) -> HttpPeer {
        self.peers[id.0].clone()
    }

    /// The target `id` names.
    pub fn target(&self, id: TargetId) -> &Arc<Target> {
        &self.targets[id.0]
    }

    /// Every target's id, in config order.
    pub fn target_ids(&self) -> impl Iterator<Item = TargetId> {
        (0..self.targets.len()).map(TargetId)
    }

    /// Sets `gatehouse_upstream_target_healthy` from the current state (called before
    /// metrics are rendered, so passive cooldowns that ended show up too).
    pub fn refresh_gauges(&self) {
        if let Some(b) = &self.breaker {
            b.refresh();
        }
        let clock_ns = self.clock.now_ns();
        let unknown_ok = self.unknown_ok();
        for t in &self.targets {
            t.healthy_gauge.set(t.usable(clock_ns, unknown_ok) as i64);
        }
    }

    pub fn status_json(&self) -> serde_json::Value {
        let clock_ns = self.clock.now_ns();
        let mut v = serde_json::json!({
            "name": self.name,
            "balance": self.balance,
            "inflight": self.inflight.load(Relaxed),
            "max_inflight": self.max_inflight,
            "targets": self.targets.iter().map(|t| serde_json::json!({
                "address": t.address,
                "weight": t.weight,
                "health": t.health_label(clock_ns),
                "ejections_in_a_row": t.outlier.ejections_in_a_row(),
                "inflight": t.inflight.load(Relaxed),
                "last_check_unix_ms": t.last_check_ms(),
                "last_check_error": t.last_error(),
            })).collect::<Vec<_>>(),
        });
        if let Some(b) = &self.breaker {
            v["circuit"] = b.status_json();
        }
        v
    }

    /// An attempt at `target` failed (connect error, broken exchange, 5xx): counted
    /// against it by passive health and outlier ejection, and by the breaker (with
    /// `probe` when a half-open circuit let the request through).
    pub fn record_failure(&self, target: &Target, probe: Option<&breaker::Probe>) {
        if let Some(p) = self.passive {
            target.record_failure(p.unhealthy_after, p.cooldown, self.clock.now_ns());
        }
        if let Some(s) = &self.outlier {
            let clock_ns = self.clock.now_ns();
            let out = self
                .targets
                .iter()
                .filter(|t| t.out_of_service(clock_ns))
                .count();
            let m = crate::metrics::metrics();
            match target
                .outlier
                .record_failure(s, clock_ns, out, self.targets.len())
            {
                outlier::Outcome::Counted => {}
                outlier::Outcome::Ejected(d) => {
                    m.outlier_ejections
                        .with_label_values(&[&self.name, "ejected"])
                        .inc();
                    target.healthy_gauge.set(0);
                    tracing::warn!(upstream = %self.name, target = %target.address, "target ejected for {d:?} (ejection {} in a row)", target.outlier.ejections_in_a_row());
                }
                outlier::Outcome::Capped => {
                    m.outlier_ejections
                        .with_label_values(&[&self.name, "capped"])
                        .inc();
                    tracing::info!(upstream = %self.name, target = %target.address, "target not ejected: max_ejection_percent reached");
                }
            }
        }
        if let Some(b) = &self.breaker {
            b.record(false, probe);
        }
    }

    /// An attempt at `target` got a response under 500.
    pub fn record_success(&self, target: &Target, probe: Option<&breaker::Probe>) {
        if self.passive.is_some() {
            target.record_success();
        }
        if let Some(s) = &self.outlier {
            target.outlier.record_success(s, self.clock.now_ns());
        }
        if let Some(b) = &self.breaker {
            b.record(true, probe);
        }
    }
}
