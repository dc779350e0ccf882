//! Property tests of the RFC 9111 parsers: `Cache-Control` (response and request),
//! `Age`, `Expires`, `Date` and `Last-Modified`, and the decisions built on them. No
//! field value an upstream or a client can send makes them panic, and their answers keep
//! the invariants the cache relies on (an entry's epoch is never after the response
//! arrived, it is never fresh before its epoch, an `Age` is never ignored downwards).
//! Inputs: arbitrary field bytes, directive soup, arbitrary instants up to year 9999, and
//! the seeds in `fuzz/corpus/cache_control/` (one response head per file: `Name: value`
//! lines, replayed through every property).

use super::*;
use crate::proptest_support::{config, corpus, text};
use proptest::prelude::*;
use std::time::UNIX_EPOCH;

/// The last second `httpdate` can write (9999-12-31T23:59:59Z).
const MAX_SECS: u64 = 253_402_300_799;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Bytes a field value may hold (RFC 9110 §5.5: VCHAR, SP, HTAB, obs-text).
fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => 0x20u8..=0x7e, 1 => Just(b'\t'), 1 => 0x80u8..=0xff],
        0..48,
    )
}

fn directive_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "max-age",
            "s-maxage",
            "no-cache",
            "no-store",
            "private",
            "public",
            "must-revalidate",
            "proxy-revalidate",
            "stale-while-revalidate",
            "stale-if-error",
            "max-stale",
            "min-fresh",
            "only-if-cached",
            "immutable",
            "MAX-AGE",
            "=",
            "=\"",
            "\"",
            "\\",
            ",",
            ", ",
            ";",
            " ",
            "\t",
            "-1",
            "0",
            "1.5",
            "2147483648",
            "99999999999999999999999999",
            "\"set-cookie, x-a\"",
            "\"\\\"\"",
            "é",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[0-9]{1,30}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(token, 0..16).prop_map(|t| t.concat())
}

fn date_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..=MAX_SECS).prop_map(|s| httpdate::fmt_http_date(at(s)).into_bytes()),
        prop::sample::select(vec![
            "0",
            "-1",
            "",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Sat, 01 Jan 10000 00:00:00 GMT",
            "Mon, 32 Feb 2026 25:61:61 GMT",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        field_bytes(),
    ]
}

fn age_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        "[0-9]{1,40}".prop_map(String::into_bytes),
        prop::sample::select(vec!["-1", "1.5", " 7 ", "", "0x10", "2147483648"])
            .prop_map(|s| s.as_bytes().to_vec()),
        field_bytes(),
    ]
}

/// A response (or request) head: each field absent, once, or twice.
fn head() -> impl Strategy<Value = HeaderMap> {
    let field = |name: &'static str, v: BoxedStrategy<Vec<u8>>| {
        prop::collection::vec(v, 0..3).prop_map(move |vs| (name, vs))
    };
    let cc = prop_oneof![3 => directive_soup(), 1 => field_bytes()].boxed();
    (
        field("cache-control", cc),
        field("age", age_value().boxed()),
        field("expires", date_value().boxed()),
        field("date", date_value().boxed()),
        field("last-modified", date_value().boxed()),
        field(
            "vary",
            prop_oneof![Just(b"*".to_vec()), field_bytes()].boxed(),
        ),
        field("etag", field_bytes().boxed()),
        field(
            "pragma",
            prop_oneof![Just(b"no-cache".to_vec()), field_bytes()].boxed(),
        ),
        field("connection", field_bytes().boxed()),
        field("set-cookie", field_bytes().boxed()),
    )
        .prop_map(|fields| {
            let (a, b, c, d, e, f, g, h, i, j) = fields;
            let mut map = HeaderMap::new();
            for (name, values) in [a, b, c, d, e, f, g, h, i, j] {
                for v in values {
                    if let Ok(v) = HeaderValue::from_bytes(&v) {
                        map.append(HeaderName::from_static(name), v);
                    }
                }
            }
            map
        })
}

/// A head from a corpus seed: `Name: value` lines (an unparsable line is skipped).
fn seed_head(bytes: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

#[derive(Debug)]
struct Exchange {
    status: u16,
    request_time: u64,
    response_time: u64,
    authorization: bool,
    route_ttl: Option<u64>,
    store_set_cookie: bool,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        prop_oneof![
            100u16..=599,
            prop::sample::select(vec![200u16, 206, 304, 404, 501])
        ],
        0..=MAX_SECS,
        0..=MAX_SECS,
        any::<bool>(),
        // `routes[].cache.ttl` is at most 1e10 s (the duration parser's range).
        prop::option::of(0u64..=10_000_000_000),
        any::<bool>(),
    )
        .prop_map(
            |(status, t1, t2, authorization, route_ttl, store_set_cookie)| Exchange {
                status,
                request_time: t1.min(t2),
                response_time: t1.max(t2),
                authorization,
                route_ttl,
                store_set_cookie,
            },
        )
}

/// Runs every parser and decision on one head and checks their invariants.
fn check_head(h: &HeaderMap, x: &Exchange, now: u64) -> Result<(), TestCaseError> {
    let cc = Directives::from_headers(h);
    for name in [
        "max-age",
        "s-maxage",
        "stale-while-revalidate",
        "stale-if-error",
    ] {
        if let Some(Seconds::Valid(s)) = cc.seconds(name) {
            prop_assert!(s <= DELTA_MAX, "{name}={s} over 2^31");
        }
        let _ = cc.field_names(name);
    }
    let _ = cc.field_names("private");
    let _ = cc.field_names("no-cache");
    let (req_t, resp_t) = (at(x.request_time), at(x.response_time));
    let age = initial_age(h, req_t, resp_t);
    if let Some(a) = h
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        prop_assert!(age.as_secs() >= a.min(DELTA_MAX), "Age {a} gave {age:?}");
    }
    let input = StoreInput {
        status: x.status,
        headers: h,
        request_time: req_t,
        response_time: resp_t,
        authorization: x.authorization,
        request_no_store: false,
        route_ttl: x.route_ttl.map(Duration::from_secs),
        store_set_cookie: x.store_set_cookie,
    };
    if let StoreDecision::Store(f) = decide(&input) {
        prop_assert!(f.epoch <= resp_t, "epoch after the response arrived");
        prop_assert!(f.fresh_until >= f.epoch, "fresh_until before the epoch");
        prop_assert!(!cc.has("no-store") && !cc.bare("private"));
        prop_assert!(!matches!(x.status, 100..=199 | 206 | 304));
        let req = RequestDirectives::from_headers(h);
        let _ = reuse(&req, h, at(now), f.epoch, f.fresh_until);
    }
    let _ = vary_names(h);
    for name in ["cache-control", "pragma", "vary", "x-absent"] {
        let _ = normalized_request_value(h, name);
    }
    let mut resp =
        ResponseHeader::build(200, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (n, v) in h {
        let _ = resp.append_header(n.clone(), v.clone());
    }
    let stored = storable_header(&resp);
    for hop in HOP_BY_HOP {
        prop_assert!(stored.headers.get(*hop).is_none(), "{hop} stored");
    }
    prop_assert!(stored.headers.get(header::AGE).is_none(), "Age stored");
    let merged = merge_not_modified(&stored, &resp);
    prop_assert!(merged.headers.get("connection").is_none());
    Ok(())
}

#[test]
fn corpus_does_not_panic() {
    let x = Exchange {
        status: 200,
        request_time: 1_700_000_000,
        response_time: 1_700_000_001,
        authorization: false,
        route_ttl: Some(60),
        store_set_cookie: false,
    };
    for (name, bytes) in corpus("cache_control") {
        let h = seed_head(text(&bytes).as_bytes());
        assert!(
            !h.is_empty(),
            "fuzz/corpus/cache_control/{name}: no field parsed"
        );
        for now in [0, 1_700_000_000, MAX_SECS] {
            check_head(&h, &x, now).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_heads_do_not_panic(h in head(), x in exchange(), now in 0..=MAX_SECS) {
        check_head(&h, &x, now)?;
    }

    /// Any run of digits is read as delta-seconds, capped at 2^31 (RFC 9111 §1.2.2).
    #[test]
    fn delta_seconds_saturate(digits in "[0-9]{1,40}", quoted in any::<bool>()) {
        let v = if quoted { format!("max-age=\"{digits}\"") } else { format!("max-age={digits}") };
        let h: HeaderMap = [(header::CACHE_CONTROL, HeaderValue::from_str(&v).unwrap_or_else(|_| unreachable!()))]
            .into_iter()
            .collect();
        let want = digits.parse::<u64>().unwrap_or(DELTA_MAX).min(DELTA_MAX);
        prop_assert_eq!(Directives::from_headers(&h).seconds("max-age"), Some(Seconds::Valid(want)));
    }

    /// Request directives from any request head, judged against any stored entry.
    #[test]
    fn request_directives_do_not_panic(
        req in head(),
        stored in head(),
        now in 0..=MAX_SECS,
        epoch in 0..=MAX_SECS,
        fresh_until in 0..=MAX_SECS,
    ) {
        let d = RequestDirectives::from_headers(&req);
        let _ = reuse(&d, &stored, at(now), at(epoch), at(fresh_until));
    }
}
