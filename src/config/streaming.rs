//! The streaming keys of a route: `websocket:` (upgrades allowed, with their idle and
//! total time limits) and `grpc:` (the gRPC-web bridge). Their shape checks live here
//! too, called from `validate::routes`.

use super::model::{Config, Route};
use super::units::Dur;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `routes[].websocket`: the route accepts WebSocket upgrades (RFC 6455 over HTTP/1.1).
/// A route without it refuses them (400 `websocket-not-enabled`), so no route becomes a
/// long-lived tunnel without limits by accident.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    /// The tunnel is cut after this long without a frame in either direction.
    #[serde(default)]
    pub idle_timeout: Option<Dur>,
    /// The tunnel is cut this long after the upgrade, busy or not.
    #[serde(default)]
    pub max_duration: Option<Dur>,
}

pub const DEFAULT_WS_IDLE: Duration = Duration::from_secs(300);
pub const DEFAULT_WS_MAX: Duration = Duration::from_secs(3600);

impl WebSocket {
    pub fn idle(&self) -> Duration {
        self.idle_timeout.map_or(DEFAULT_WS_IDLE, |d| d.0)
    }

    pub fn max(&self) -> Duration {
        self.max_duration.map_or(DEFAULT_WS_MAX, |d| d.0)
    }
}

/// `routes[].grpc`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grpc {
    /// Bridge gRPC-web clients (`application/grpc-web`, `application/grpc-web-text`,
    /// over HTTP/1.1 or HTTP/2) to the route's gRPC (HTTP/2) upstream.
    #[serde(default)]
    pub web: bool,
}

/// The checks of `routes[p].websocket` and `routes[p].grpc`.
pub fn validate(cfg: &Config, p: &str, r: &Route) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    if let Some(ws) = &r.websocket {
        for (key, d) in [
            ("idle_timeout", ws.idle_timeout),
            ("max_duration", ws.max_duration),
        ] {
            if d.is_some_and(|d| d.0.is_zero()) {
                errs.push(ConfigError::new(
                    format!("{p}.websocket.{key}"),
                    "must be more than 0",
                ));
            }
        }
        if r.cache.is_some() {
            // An upgraded connection is a tunnel, never a stored response.
            errs.push(ConfigError::new(
                format!("{p}.websocket"),
                "a WebSocket route cannot also have cache:",
            ));
        }
    }
    if let Some(g) = &r.grpc {
        let h2 = cfg.upstreams.get(&r.upstream).is_none_or(|u| u.http2);
        if g.web && !h2 {
            // gRPC needs HTTP/2 upstream (trailers); an unknown upstream is reported
            // when the snapshot compiles.
            errs.push(ConfigError::new(
                format!("{p}.grpc.web"),
                format!(
                    "the bridge needs a gRPC upstream: set http2: true on upstreams.{}",
                    r.upstream
                ),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    fn problems(yaml: &str) -> Vec<(String, String)> {
        let yaml = format!(
            "listeners: [ {{ name: public, address: \"127.0.0.1:18080\" }} ]\n\
             upstreams:\n  u: {{ targets: [ {{ address: \"127.0.0.1:9001\" }} ] }}\n  \
             g: {{ targets: [ {{ address: \"127.0.0.1:9002\" }} ], http2: true }}\n\
             cache: {{ memory: 1MiB }}\n{yaml}"
        );
        crate::config::validate::problems_in(&yaml)
    }

    #[test]
    fn valid_streaming_keys() {
        for routes in [
            "routes: [ { name: r, upstream: u, websocket: {} } ]",
            "routes: [ { name: r, upstream: u, websocket: { idle_timeout: 5m, max_duration: 1h } } ]",
            "routes: [ { name: r, upstream: g, grpc: { web: true } } ]",
            "routes: [ { name: r, upstream: u, grpc: { web: false } } ]",
        ] {
            assert_eq!(problems(routes), [] as [(String, String); 0], "{routes}");
        }
    }

    #[test]
    fn streaming_shape_errors() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "routes: [ { name: r, upstream: u, websocket: { idle_timeout: 0s } } ]",
                &[("routes[0].websocket.idle_timeout", "must be more than 0")],
            ),
            (
                "routes: [ { name: r, upstream: u, websocket: { max_duration: 0s } } ]",
                &[("routes[0].websocket.max_duration", "must be more than 0")],
            ),
            (
                "routes: [ { name: r, upstream: u, cache: {}, websocket: {} } ]",
                &[(
                    "routes[0].websocket",
                    "a WebSocket route cannot also have cache:",
                )],
            ),
            (
                "routes: [ { name: r, upstream: u, grpc: { web: true } } ]",
                &[(
                    "routes[0].grpc.web",
                    "the bridge needs a gRPC upstream: set http2: true on upstreams.u",
                )],
            ),
        ];
        for (yaml, want) in cases {
            let got = problems(yaml);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(p, m)| (p.to_string(), m.to_string()))
                .collect();
            assert_eq!(got, want, "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let yaml = "listeners: [ { name: public, address: \"127.0.0.1:18080\" } ]\n\
                    upstreams:\n  u: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n\
                    routes: [ { name: r, upstream: u, websocket: { idle: 5m }, grpc: { webb: true } } ]\n";
        let (_, errs) = crate::config::load::parse_partial(yaml, &|_| None);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.iter().any(|p| p.starts_with("routes[0].websocket")),
            "{errs:?}"
        );
    }
}
