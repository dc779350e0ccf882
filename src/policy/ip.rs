//! Client address rules (`listeners[].ip`, `routes[].ip`): CIDR allow and deny lists on
//! the client address as `client_ip::TrustedProxies` resolves it (the socket peer,
//! unless that peer is a trusted proxy; then the rightmost untrusted `X-Forwarded-For`
//! hop), the same address `key: ip` limits count. A listener's rules and a route's rules
//! must both pass; within one list pair, `deny` wins. The lists live in the snapshot, so
//! a reload swaps them all at once.

use crate::config::edge::{parse_net, IpRules as Config};
use crate::error::Reject;
use ipnet::IpNet;
use prometheus::IntCounter;
use std::net::IpAddr;

/// Which list refused an address: the `rule` label of `gatehouse_ip_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The address is in `deny`.
    Deny,
    /// `allow` is not empty and the address is not in it.
    Allow,
}

/// The compiled rules of one listener or route, with their counters resolved once.
pub struct IpRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    denied_by_deny: IntCounter,
    denied_by_allow: IntCounter,
}

impl IpRules {
    /// `scope` is `listener` or `route`, `name` the configured name: the metric's labels,
    /// from the config only. Entries were checked by `config::edge::check`.
    pub fn compile(scope: &str, name: &str, c: &Config) -> IpRules {
        let nets = |l: &[String]| l.iter().filter_map(|s| parse_net(s)).collect::<Vec<_>>();
        let m = &crate::metrics::metrics().ip_rejected;
        IpRules {
            allow: nets(&c.allow),
            deny: nets(&c.deny),
            denied_by_deny: m.with_label_values(&[scope, name, "deny"]),
            denied_by_allow: m.with_label_values(&[scope, name, "allow"]),
        }
    }

    /// The list that refuses `ip`, if any. An unknown address (not an IP socket) is
    /// refused whenever `allow` is set: it cannot be shown to be in it.
    pub fn refusal(&self, ip: Option<IpAddr>) -> Option<Rule> {
        let Some(ip) = ip else {
            return (!self.allow.is_empty()).then_some(Rule::Allow);
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Some(Rule::Deny);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Some(Rule::Allow);
        }
        None
    }

    /// `refusal`, counted, as the rejection to send (403 `ip-denied`).
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Reject> {
        match self.refusal(ip) {
            None => Ok(()),
            Some(rule) => {
                match rule {
                    Rule::Deny => self.denied_by_deny.inc(),
                    Rule::Allow => self.denied_by_allow.inc(),
                }
                Err(Reject::IpDenied)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        let c = Config {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        IpRules::compile("route", "unit-test", &c)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn deny_wins_over_allow_for_v4_and_v6() {
        let r = rules(
            &["10.0.0.0/8", "2001:db8::/32"],
            &["10.9.0.0/16", "2001:db8:bad::/48"],
        );
        assert_eq!(r.refusal(ip("10.1.2.3")), None);
        assert_eq!(r.refusal(ip("10.9.1.1")), Some(Rule::Deny));
        assert_eq!(r.refusal(ip("192.0.2.1")), Some(Rule::Allow));
        assert_eq!(r.refusal(ip("2001:db8::1")), None);
        assert_eq!(r.refusal(ip("2001:db8:bad::1")), Some(Rule::Deny));
        assert_eq!(r.refusal(ip("2001:db9::1")), Some(Rule::Allow));
        assert_eq!(
            r.refusal(None),
            Some(Rule::Allow),
            "unknown address, allow set"
        );
    }

    #[test]
    fn a_deny_list_alone_admits_everyone_else() {
        let r = rules(&[], &["192.0.2.7"]);
        assert_eq!(r.refusal(ip("192.0.2.7")), Some(Rule::Deny));
        assert_eq!(r.refusal(ip("192.0.2.8")), None);
        assert_eq!(r.refusal(None), None);
        assert!(matches!(r.check(ip("192.0.2.7")), Err(Reject::IpDenied)));
        assert_eq!(r.denied_by_deny.get(), 1);
    }
}
