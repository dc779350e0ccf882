//! The demo's public credentials (`conf/demo.yaml`, `scripts/demo-token.sh`, the README)
//! are known to everyone who has read the README. A config that carries one of them may
//! only run where nobody else can reach it: on loopback. Otherwise it is refused like any
//! other config error, with the YAML path of the credential, so `gatehouse check`,
//! `gatehouse run` and `/admin/reload` all say no before anything listens.

use super::model::Config;
use super::ConfigError;
use std::net::SocketAddr;

/// `admin.token` in `conf/demo.yaml` (its `${GATEHOUSE_ADMIN_TOKEN:-...}` default).
pub const DEMO_ADMIN_TOKEN: &str = "demo-admin-token";
/// `auth.jwt[demo].hmac_secret` in `conf/demo.yaml` and `scripts/demo-token.sh`.
pub const DEMO_HMAC_SECRET: &str = "demo-hmac-secret-change-me-0123456789";
/// The stored form of the demo API key `demo-key-123` (`gatehouse hash-key demo-key-123`).
pub const DEMO_API_KEY_SHA256: &str =
    "sha256:a52782e3a2d4dd2f95f640b9abfb3b2a6b8e722c65f55be830f6e5f619f7f873";

/// `Some(true)` for a loopback address, `None` when the address does not parse (that is
/// reported by validation already).
fn loopback(address: &str) -> Option<bool> {
    let a: SocketAddr = address.parse().ok()?;
    Some(a.ip().to_canonical().is_loopback())
}

/// Errors for every demo credential in a config that is reachable from other hosts.
/// The admin token matters when the admin listener is not on loopback; the JWT secret
/// and the API key (which let anyone mint tokens or call routes as a demo consumer)
/// matter when the admin listener or any proxy listener is not on loopback.
pub fn exposed(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let admin_public = cfg
        .admin
        .as_ref()
        .and_then(|a| loopback(&a.address))
        .is_some_and(|l| !l);
    let public_listener = cfg
        .listeners
        .iter()
        .find(|l| loopback(&l.address) == Some(false));
    let exposed_at = match (admin_public, public_listener) {
        (true, _) => cfg
            .admin
            .as_ref()
            .map(|a| format!("admin.address {}", a.address)),
        (false, Some(l)) => Some(format!("listener {:?} at {}", l.name, l.address)),
        (false, None) => None,
    };
    if let Some(admin) = cfg.admin.as_ref().filter(|_| admin_public) {
        if admin.token.as_deref() == Some(DEMO_ADMIN_TOKEN) {
            errs.push(ConfigError::new(
                "admin.token",
                format!(
                    "this is the public demo token of conf/demo.yaml and admin.address {} is \
                     not loopback: set a secret token (e.g. GATEHOUSE_ADMIN_TOKEN) or keep the \
                     admin listener on 127.0.0.1",
                    admin.address
                ),
            ));
        }
    }
    let Some(at) = exposed_at else {
        return errs;
    };
    if let Some(auth) = &cfg.auth {
        for (i, j) in auth.jwt.iter().enumerate() {
            if j.hmac_secret.as_deref() == Some(DEMO_HMAC_SECRET) {
                errs.push(ConfigError::new(
                    format!("auth.jwt[{i}].hmac_secret"),
                    format!(
                        "this is the public demo secret of conf/demo.yaml (anyone can mint \
                         tokens with it) and {at} is not loopback: set a secret of your own"
                    ),
                ));
            }
        }
    }
    for (i, c) in cfg.consumers.iter().enumerate() {
        for (k, key) in c.api_keys.iter().enumerate() {
            if key.eq_ignore_ascii_case(DEMO_API_KEY_SHA256) {
                errs.push(ConfigError::new(
                    format!("consumers[{i}].api_keys[{k}]"),
                    format!(
                        "this is the public demo API key of conf/demo.yaml and {at} is not \
                         loopback: issue a key of your own"
                    ),
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../../conf/demo.yaml");

    /// The constants are the values the demo really ships, so the check cannot drift.
    #[test]
    fn the_constants_are_the_demo_values() {
        assert!(DEMO.contains(&format!("${{GATEHOUSE_ADMIN_TOKEN:-{DEMO_ADMIN_TOKEN}}}")));
        assert!(DEMO.contains(&format!("${{DEMO_JWT_SECRET:-{DEMO_HMAC_SECRET}}}")));
        assert!(DEMO.contains(DEMO_API_KEY_SHA256));
        assert_eq!(
            super::super::values::hash_key("demo-key-123"),
            DEMO_API_KEY_SHA256
        );
        let script = include_str!("../../scripts/demo-token.sh");
        assert!(script.contains(DEMO_HMAC_SECRET));
    }

    fn demo_with(env: &[(&str, &str)]) -> Vec<ConfigError> {
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let cfg = crate::config::load::parse(DEMO, &lookup).expect("conf/demo.yaml parses");
        exposed(&cfg)
    }

    #[test]
    fn demo_credentials_only_on_loopback() {
        assert_eq!(
            demo_with(&[]),
            vec![],
            "the demo as shipped (loopback) runs"
        );
        let paths = |e: Vec<ConfigError>| e.into_iter().map(|e| e.path).collect::<Vec<_>>();
        assert_eq!(
            paths(demo_with(&[("GATEHOUSE_ADMIN_LISTEN", "0.0.0.0:9901")])),
            [
                "admin.token",
                "auth.jwt[0].hmac_secret",
                "consumers[0].api_keys[0]"
            ]
        );
        assert_eq!(
            paths(demo_with(&[("GATEHOUSE_ADMIN_LISTEN", "[::]:9901")]))[0],
            "admin.token"
        );
        // A public proxy listener exposes the JWT secret and the key, not the admin token.
        assert_eq!(
            paths(demo_with(&[("GATEHOUSE_LISTEN", "0.0.0.0:8080")])),
            ["auth.jwt[0].hmac_secret", "consumers[0].api_keys[0]"]
        );
        // IPv4-mapped loopback is loopback.
        assert_eq!(
            demo_with(&[("GATEHOUSE_ADMIN_LISTEN", "[::ffff:127.0.0.1]:9901")]),
            vec![]
        );
        // Own secrets on a public address: fine as far as this check goes.
        let own = demo_with(&[
            ("GATEHOUSE_ADMIN_LISTEN", "0.0.0.0:9901"),
            ("GATEHOUSE_ADMIN_TOKEN", "an-operator-chosen-token"),
            ("DEMO_JWT_SECRET", "an-operator-chosen-secret-of-32-bytes!!"),
        ]);
        assert_eq!(paths(own), ["consumers[0].api_keys[0]"]);
    }
}
