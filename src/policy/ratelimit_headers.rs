//! The response fields of limited routes.
//!
//! IETF `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11),
//! Structured Field Lists with one item per applied limit:
//!
//! ```text
//! RateLimit-Policy: "route.orders.rate";q=50;w=1;gatehouse-burst=100, "route.orders.quota";q=10000;w=86400
//! RateLimit: "route.orders.rate";r=99;t=1, "route.orders.quota";r=9950;t=5130
//! ```
//!
//! `q` per `w` seconds is the limit; for a rate, `gatehouse-burst` is how many requests
//! may come at once. `r` is what can be sent right now and `t` the seconds until more
//! is available (the next token of a rate, the end of a quota's window). The legacy
//! `X-RateLimit-Limit`/`-Remaining`/`-Reset` (delta seconds) repeat the most
//! restrictive item: the smallest `r`, then the longest `t`.

use http::{HeaderName, HeaderValue};
use std::fmt::Write;

/// One applied limit as the fields report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Already a Structured Field String (quoted, escaped).
    pub name: std::sync::Arc<str>,
    pub quota: u64,
    pub window_secs: u64,
    pub burst: Option<u64>,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// `s` as a Structured Field String: printable ASCII, with `"` and `\` escaped.
pub fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// The largest Structured Field Integer (RFC 8941 §3.3.1: at most 15 digits).
pub const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// `n` as a Structured Field Integer: larger values are capped, since a 16th digit would
/// make the whole field invalid and a client would drop every item of it. (A quota can
/// be configured that large; the cap still reads as "practically unlimited".)
fn sf_integer(n: u64) -> u64 {
    n.min(SF_INTEGER_MAX)
}

pub fn policy_field(applied: &[Applied]) -> String {
    let mut out = String::with_capacity(64 * applied.len());
    for (i, a) in applied.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{};q={};w={}",
            a.name,
            sf_integer(a.quota),
            sf_integer(a.window_secs)
        );
        if let Some(b) = a.burst {
            let _ = write!(out, ";gatehouse-burst={}", sf_integer(b));
        }
    }
    out
}

pub fn limit_field(applied: &[Applied]) -> String {
    let mut out = String::with_capacity(48 * applied.len());
    for (i, a) in applied.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{};r={};t={}",
            a.name,
            sf_integer(a.remaining),
            sf_integer(a.reset_secs)
        );
    }
    out
}

/// The most restrictive of the applied limits.
pub fn most_restrictive(applied: &[Applied]) -> Option<&Applied> {
    applied
        .iter()
        .min_by(|a, b| (a.remaining, b.reset_secs).cmp(&(b.remaining, a.reset_secs)))
}

/// Appends all five fields to `out` (`PolicyCtx::response_headers`). `policy` is the
/// `RateLimit-Policy` value when the caller has it already (it is the same on every
/// response that applied the same limits).
pub fn fields(
    applied: &[Applied],
    policy: Option<&HeaderValue>,
    out: &mut Vec<(HeaderName, HeaderValue)>,
) {
    let Some(m) = most_restrictive(applied) else {
        return;
    };
    let policy = match policy {
        Some(v) => Some(v.clone()),
        None => HeaderValue::try_from(policy_field(applied)).ok(),
    };
    if let Some(v) = policy {
        out.push((HeaderName::from_static("ratelimit-policy"), v));
    }
    if let Ok(v) = HeaderValue::try_from(limit_field(applied)) {
        out.push((HeaderName::from_static("ratelimit"), v));
    }
    out.push((HeaderName::from_static("x-ratelimit-limit"), m.quota.into()));
    out.push((
        HeaderName::from_static("x-ratelimit-remaining"),
        m.remaining.into(),
    ));
    out.push((
        HeaderName::from_static("x-ratelimit-reset"),
        m.reset_secs.into(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str, q: u64, r: u64, t: u64, burst: Option<u64>) -> Applied {
        Applied {
            name: sf_string(name).into(),
            quota: q,
            window_secs: 60,
            burst,
            remaining: r,
            reset_secs: t,
        }
    }

    #[test]
    fn structured_fields() {
        let v = [
            a("tier.free.rate", 10, 4, 6, Some(20)),
            a("q\"x", 100, 4, 30, None),
        ];
        assert_eq!(
            policy_field(&v),
            r#""tier.free.rate";q=10;w=60;gatehouse-burst=20, "q\"x";q=100;w=60"#
        );
        assert_eq!(
            limit_field(&v),
            r#""tier.free.rate";r=4;t=6, "q\"x";r=4;t=30"#
        );
        assert_eq!(
            most_restrictive(&v).unwrap().quota,
            100,
            "tie on r: longer t"
        );
        let mut f = Vec::new();
        fields(&v, None, &mut f);
        assert_eq!(f.len(), 5);
        assert_eq!(f[4].1, "30");
        let cached = HeaderValue::from_static("cached");
        let mut f = Vec::new();
        fields(&v, Some(&cached), &mut f);
        assert_eq!(f[0].1, "cached");
        assert_eq!(sf_string("é\\"), r#""_\\""#);
    }
}

#[cfg(test)]
#[path = "ratelimit_headers_props.rs"]
mod props;
