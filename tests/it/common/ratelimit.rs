//! Reading the rate-limit fields back: a strict parser for the Structured Field Lists
//! of `RateLimit-Policy` and `RateLimit` (RFC 9651: items are Strings, parameters are
//! Integers or Strings), and the legacy `X-RateLimit-*` and `Retry-After` values.

use super::Resp;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub name: String,
    pub params: BTreeMap<String, i64>,
}

impl Item {
    pub fn get(&self, k: &str) -> i64 {
        *self
            .params
            .get(k)
            .unwrap_or_else(|| panic!("item {:?} has no parameter {k:?}", self.name))
    }
}

/// Parses `"a";q=1;w=2, "b";r=3`. Panics (the test fails) on anything malformed.
pub fn parse_list(s: &str) -> Vec<Item> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_sp = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_sp(&mut i);
        assert_eq!(
            b.get(i),
            Some(&b'"'),
            "item must be a String in {s:?} at {i}"
        );
        i += 1;
        let mut name = String::new();
        loop {
            match b.get(i) {
                Some(b'\\') => {
                    let c = b[i + 1];
                    assert!(c == b'"' || c == b'\\', "bad escape in {s:?}");
                    name.push(c as char);
                    i += 2;
                }
                Some(b'"') => {
                    i += 1;
                    break;
                }
                Some(&c) if (0x20..0x7f).contains(&c) => {
                    name.push(c as char);
                    i += 1;
                }
                other => panic!("bad String in {s:?}: {other:?}"),
            }
        }
        let mut params = BTreeMap::new();
        while b.get(i) == Some(&b';') {
            i += 1;
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b"_-.*".contains(&b[i]))
            {
                i += 1;
            }
            let key = &s[start..i];
            assert!(!key.is_empty(), "empty parameter key in {s:?}");
            assert_eq!(
                b.get(i),
                Some(&b'='),
                "parameter {key} needs a value in {s:?}"
            );
            i += 1;
            let vs = i;
            if b.get(i) == Some(&b'-') {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let v: i64 = s[vs..i]
                .parse()
                .unwrap_or_else(|_| panic!("integer parameter {key} in {s:?}"));
            params.insert(key.to_string(), v);
        }
        out.push(Item { name, params });
        skip_sp(&mut i);
        match b.get(i) {
            None => return out,
            Some(b',') => i += 1,
            Some(c) => panic!("unexpected {:?} in {s:?}", *c as char),
        }
    }
}

/// Every rate-limit field of a response.
#[derive(Debug, Clone)]
pub struct Fields {
    pub policy: Vec<Item>,
    pub limit: Vec<Item>,
    pub x_limit: u64,
    pub x_remaining: u64,
    pub x_reset: u64,
    pub retry_after: Option<u64>,
}

impl Fields {
    /// Parses the fields; panics when one is missing or malformed.
    pub fn of(r: &Resp) -> Fields {
        let num = |h: &str| -> u64 {
            r.header(h)
                .unwrap_or_else(|| {
                    panic!("{h} missing; status {} headers {:?}", r.status, r.headers)
                })
                .parse()
                .unwrap_or_else(|_| panic!("{h} is not a number"))
        };
        let policy = parse_list(
            r.header("ratelimit-policy")
                .expect("RateLimit-Policy missing"),
        );
        let limit = parse_list(r.header("ratelimit").expect("RateLimit missing"));
        let names = |v: &[Item]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&policy),
            names(&limit),
            "one RateLimit item per policy"
        );
        Fields {
            policy,
            limit,
            x_limit: num("x-ratelimit-limit"),
            x_remaining: num("x-ratelimit-remaining"),
            x_reset: num("x-ratelimit-reset"),
            retry_after: r
                .header("retry-after")
                .map(|v| v.parse().expect("Retry-After seconds")),
        }
    }

    pub fn policy(&self, name: &str) -> &Item {
        self.policy
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no policy {name:?} in {:?}", self.policy))
    }

    pub fn limit(&self, name: &str) -> &Item {
        self.limit
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no RateLimit item {name:?} in {:?}", self.limit))
    }

    /// `r` of one policy.
    pub fn remaining(&self, name: &str) -> i64 {
        self.limit(name).get("r")
    }
}
