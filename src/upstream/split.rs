//! Canary and traffic split (`routes[].split`): weights over upstreams, sticky by key.
//!
//! A request's key (its consumer, client address, a field or a cookie) is hashed, with
//! the route's name as salt, to a point of `[0, total weight)`; the upstreams own
//! consecutive ranges of that line in name order, each as wide as its weight. A key
//! always lands on the same point, so a client stays on one side while the weights stay,
//! and a weight change moves only the keys whose point changes owner: 90/10 → 80/20
//! moves the keys of `[80, 90)`, 10% of them, and nobody else.
//!
//! A request without the key (an anonymous caller on `key: consumer`, a missing field
//! or cookie) is placed by its client address. `force_header` naming an upstream of the
//! split, or a consumer listed in `consumers`, overrides the placement (for testers).

use super::Upstream;
use crate::config::route_traffic::{self as traffic, SplitKey};
use crate::config::ConfigError;
use http::{HeaderMap, HeaderName};
use prometheus::IntCounter;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One side of a split.
pub struct Arm {
    pub upstream: Arc<Upstream>,
    /// The end (exclusive) of its range on the line of points.
    end: u64,
    /// `gatehouse_split_requests_total{route, upstream}`.
    pub requests: IntCounter,
    /// What the cache keys on for this side (`cache::key::VaryOn::destination`).
    pub variant: Arc<str>,
}

enum Key {
    Consumer,
    Ip,
    Header(HeaderName),
    Cookie(String),
}

pub struct Split {
    key: Key,
    salt: Vec<u8>,
    arms: Vec<Arm>,
    total: u64,
    force_header: Option<HeaderName>,
    /// Consumer id → index of `arms`.
    consumers: HashMap<String, usize>,
}

/// What a request offers for its placement.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub consumer: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
}

/// Checks `split` of the route at YAML path `p` against the upstream and consumer
/// names (shapes are `config::traffic`'s).
pub fn check(
    p: &str,
    s: &traffic::Split,
    upstreams: &dyn Fn(&str) -> bool,
    consumers: &dyn Fn(&str) -> bool,
    errs: &mut Vec<ConfigError>,
) {
    for up in s.weights.keys() {
        if !upstreams(up) {
            errs.push(ConfigError::new(
                format!("{p}.weights.{up}"),
                format!("unknown upstream {up:?}"),
            ));
        }
    }
    for id in s.consumers.keys() {
        if !consumers(id) {
            errs.push(ConfigError::new(
                format!("{p}.consumers.{id}"),
                format!("unknown consumer {id:?}"),
            ));
        }
    }
}

impl Split {
    /// The runtime form of a checked `split` (every upstream exists).
    pub fn compile(
        route: &str,
        s: &traffic::Split,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Option<Split> {
        let key = match SplitKey::parse(&s.key)? {
            SplitKey::Consumer => Key::Consumer,
            SplitKey::Ip => Key::Ip,
            SplitKey::Header(h) => Key::Header(HeaderName::from_bytes(h.as_bytes()).ok()?),
            SplitKey::Cookie(c) => Key::Cookie(c),
        };
        let m = crate::metrics::metrics();
        let mut arms = Vec::with_capacity(s.weights.len());
        let mut end = 0u64;
        // BTreeMap order: by upstream name, the same on every load of the same file.
        for (name, w) in &s.weights {
            end += u64::from(*w);
            arms.push(Arm {
                upstream: upstreams.get(name)?.clone(),
                end,
                requests: m.split_requests.with_label_values(&[route, name]),
                variant: Arc::from(format!("split:{name}")),
            });
        }
        let index = |name: &str| arms.iter().position(|a| a.upstream.name == name);
        let consumers = s
            .consumers
            .iter()
            .filter_map(|(id, up)| Some((id.clone(), index(up)?)))
            .collect();
        Some(Split {
            key,
            salt: route.as_bytes().to_vec(),
            total: end,
            force_header: s
                .force_header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            consumers,
            arms,
        })
    }

    /// The side a request goes to.
    pub fn choose(&self, req: &Request<'_>) -> &Arm {
        if let Some(i) = self.forced(req) {
            return &self.arms[i];
        }
        let key: Option<(u8, &[u8])> = match &self.key {
            Key::Consumer => req.consumer.map(|c| (b'c', c.as_bytes())),
            Key::Ip => None,
            Key::Header(h) => req
                .headers
                .get(h)
                .filter(|v| !v.is_empty())
                .map(|v| (b'h', v.as_bytes())),
            Key::Cookie(name) => cookie(req.headers, name).map(|v| (b'k', v.as_bytes())),
        };
        let mut octets = [0u8; 16];
        let (kind, value) = match key {
            Some(k) => k,
            None => {
                let len = match req.client_ip {
                    Some(IpAddr::V4(a)) => {
                        octets[..4].copy_from_slice(&a.octets());
                        4
                    }
                    Some(IpAddr::V6(a)) => {
                        octets = a.octets();
                        16
                    }
                    None => 0,
                };
                (b'i', &octets[..len])
            }
        };
        &self.arms[self.place(kind, value)]
    }

    /// `force_header` naming one of the split's upstreams, then a consumer override.
    fn forced(&self, req: &Request<'_>) -> Option<usize> {
        if let Some(h) = &self.force_header {
            if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
                let v = v.trim();
                if let Some(i) = self.arms.iter().position(|a| a.upstream.name == v) {
                    return Some(i);
                }
            }
        }
        req.consumer.and_then(|c| self.consumers.get(c).copied())
    }

    /// The arm whose range holds the point of the key (`kind` tells a consumer id
    /// from an address with the same bytes).
    fn place(&self, kind: u8, value: &[u8]) -> usize {
        let point = point(&self.salt, &[kind, b':'], value, self.total);
        self.arms
            .iter()
            .position(|a| point < a.end)
            .unwrap_or(self.arms.len() - 1)
    }

    /// Every upstream of the split.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.arms.iter().map(|a| &a.upstream)
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// FNV-1a (64-bit) over `bytes`: a fixed algorithm, unlike std's hasher, so that what
/// depends on it (split placements, mirror sampling) does not change with the compiler.
/// Callers finish it with a mixer of their own.
pub(super) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A point of `[0, total)` for the key: FNV-1a over salt and key, then the SplitMix64
/// finaliser (FNV alone leaves similar keys close together), scaled by multiplication
/// so every point is equally likely. A fixed algorithm, unlike std's hasher: placements
/// must not change with the compiler.
fn point(salt: &[u8], kind: &[u8], key: &[u8], total: u64) -> u64 {
    let mut h = fnv1a(
        salt.iter()
            .chain([0xffu8].iter())
            .chain(kind)
            .chain(key)
            .copied(),
    );
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((u128::from(h) * u128::from(total)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(total_first: u64, total: u64, key: &[u8]) -> usize {
        usize::from(point(b"r", b"c:", key, total) >= total_first)
    }

    #[test]
    fn points_spread_evenly_and_weight_changes_move_only_the_needed_share() {
        let keys: Vec<Vec<u8>> = (0..20_000)
            .map(|i| format!("consumer-{i}").into_bytes())
            .collect();
        let before: Vec<usize> = keys.iter().map(|k| side(90, 100, k)).collect();
        let canary = before.iter().filter(|s| **s == 1).count() as f64 / keys.len() as f64;
        assert!((canary - 0.10).abs() < 0.01, "{canary}");
        let after: Vec<usize> = keys.iter().map(|k| side(80, 100, k)).collect();
        let moved =
            before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / keys.len() as f64;
        assert!((moved - 0.10).abs() < 0.01, "{moved}");
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(a, b)| !(*a == 1 && *b == 0)),
            "only towards the canary"
        );
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; sid=xyz; sidx=2".parse().unwrap(),
        );
        h.append(http::header::COOKIE, "b=".parse().unwrap());
        assert_eq!(cookie(&h, "sid"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(cookie(&h, "si"), None);
    }
}
