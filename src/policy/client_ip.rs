//! The client IP that `key: ip` limits count: the socket's peer address, unless that
//! peer is one of `server.trusted_proxies`; then `X-Forwarded-For` is believed, read
//! from the right (the hop closest to us) and skipping trusted proxies, so a client can
//! prepend whatever it likes without choosing its own key.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Entries were validated with the config (a CIDR or a bare address).
    pub fn parse(list: &[String]) -> TrustedProxies {
        TrustedProxies(
            list.iter()
                .filter_map(|s| {
                    s.parse::<IpNet>()
                        .ok()
                        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
                })
                .collect(),
        )
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether the socket peer is one of the trusted proxies (none is when unknown).
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusts(canonical(ip)))
    }

    /// The address a request is counted under.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.map(canonical)?;
        if self.0.is_empty() || !self.trusts(peer) {
            return Some(peer);
        }
        let mut last = peer;
        // Several X-Forwarded-For fields are one list, in order.
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_hop(hop) else {
                // A malformed hop was written by someone we do not trust: stop at the
                // last address a trusted proxy vouched for.
                return Some(last);
            };
            if !self.trusts(ip) {
                return Some(ip);
            }
            last = ip;
        }
        Some(last)
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443` or `1.2.3.4:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// The bytes an address is keyed by (4 or 16).
pub fn key_bytes(ip: Option<IpAddr>) -> Vec<u8> {
    match ip {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append("x-forwarded-for", v.parse().unwrap());
        }
        m
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let t = TrustedProxies::parse(&[]);
        assert_eq!(
            t.client_ip(ip("10.0.0.9"), &h(&["1.1.1.1"])),
            ip("10.0.0.9")
        );
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]);
        assert_eq!(
            t.client_ip(ip("192.0.2.1"), &h(&["1.1.1.1"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn trusted_peers_forward_the_rightmost_untrusted_hop() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "127.0.0.1".into()]);
        let spoofed = h(&["6.6.6.6, 203.0.113.7, 10.1.1.1"]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &spoofed), ip("203.0.113.7"));
        let split = h(&["6.6.6.6", "203.0.113.8", "10.1.1.1"]);
        assert_eq!(t.client_ip(ip("10.2.2.2"), &split), ip("203.0.113.8"));
        assert_eq!(t.client_ip(ip("10.2.2.2"), &h(&[])), ip("10.2.2.2"));
        assert_eq!(
            t.client_ip(ip("10.2.2.2"), &h(&["garbage, 10.3.3.3"])),
            ip("10.3.3.3")
        );
        assert_eq!(
            t.client_ip(ip("::ffff:127.0.0.1"), &h(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
    }
}
