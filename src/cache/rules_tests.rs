//! Unit tests of the RFC 9111 rules, on fixed instants (no clock involved).

use super::*;
use std::time::UNIX_EPOCH;

const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn date(secs: u64) -> String {
    httpdate::fmt_http_date(at(secs))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn input(h: &HeaderMap) -> StoreInput<'_> {
    StoreInput {
        status: 200,
        headers: h,
        request_time: at(T0),
        response_time: at(T0),
        authorization: false,
        request_no_store: false,
        route_ttl: None,
        store_set_cookie: false,
    }
}

fn stored(d: StoreDecision) -> Freshness {
    match d {
        StoreDecision::Store(f) => f,
        StoreDecision::Refuse(why) => panic!("refused: {why}"),
    }
}

fn lifetime(f: &Freshness) -> u64 {
    f.fresh_until.duration_since(f.epoch).unwrap().as_secs()
}

#[test]
fn parses_directives_with_quotes_case_and_duplicates() {
    let h = headers(&[
        (
            "cache-control",
            r#"Max-Age=60, private="set-cookie, x-a", no-cache"#,
        ),
        ("cache-control", "max-age=5, s-maxage=\"30\", foo=\"a,b\""),
    ]);
    let d = Directives::from_headers(&h);
    assert_eq!(
        d.seconds("max-age"),
        Some(Seconds::Valid(60)),
        "first occurrence wins"
    );
    assert_eq!(d.seconds("s-maxage"), Some(Seconds::Valid(30)));
    assert!(d.bare("no-cache"));
    assert!(!d.bare("private"));
    assert_eq!(d.field_names("private"), vec!["set-cookie", "x-a"]);
    let bad = Directives::from_headers(&headers(&[("cache-control", "max-age=1.5, s-maxage=-1")]));
    assert_eq!(bad.seconds("max-age"), Some(Seconds::Invalid));
    assert_eq!(bad.seconds("s-maxage"), Some(Seconds::Invalid));
    let huge = Directives::from_headers(&headers(&[(
        "cache-control",
        "max-age=99999999999999999999",
    )]));
    assert_eq!(huge.seconds("max-age"), Some(Seconds::Valid(DELTA_MAX)));
}

#[test]
fn freshness_prefers_s_maxage_then_max_age_then_expires() {
    let h = headers(&[("cache-control", "max-age=60, s-maxage=120")]);
    assert_eq!(lifetime(&stored(decide(&input(&h)))), 120);
    let h = headers(&[
        ("cache-control", "max-age=60"),
        ("expires", &date(T0 + 600)),
        ("date", &date(T0)),
    ]);
    assert_eq!(lifetime(&stored(decide(&input(&h)))), 60);
    // The lifetime is Expires - Date; a Date in the past also counts as age (§4.2.3).
    let h = headers(&[
        ("expires", &date(T0 - 1000 + 300)),
        ("date", &date(T0 - 1000)),
        ("etag", "\"x\""),
    ]);
    let f = stored(decide(&input(&h)));
    assert_eq!(lifetime(&f), 300);
    assert_eq!(f.fresh_until, at(T0 - 700));
    let h = headers(&[("expires", "0"), ("etag", "\"x\"")]);
    assert_eq!(
        lifetime(&stored(decide(&input(&h)))),
        0,
        "invalid Expires is stale"
    );
}

#[test]
fn age_from_the_origin_and_from_date_is_accounted() {
    let h = headers(&[("cache-control", "max-age=60"), ("age", "50")]);
    let f = stored(decide(&input(&h)));
    assert_eq!(f.epoch, at(T0 - 50));
    assert_eq!(f.fresh_until, at(T0 + 10));
    // apparent age (Date 30s ago) beats a smaller Age
    let h = headers(&[
        ("cache-control", "max-age=60"),
        ("age", "5"),
        ("date", &date(T0 - 30)),
    ]);
    assert_eq!(stored(decide(&input(&h))).fresh_until, at(T0 + 30));
    // the time the request spent upstream counts too
    let h = headers(&[("cache-control", "max-age=60"), ("age", "10")]);
    let mut i = input(&h);
    i.request_time = at(T0 - 2);
    assert_eq!(stored(decide(&i)).epoch, at(T0 - 12));
}

#[test]
fn route_ttl_applies_only_without_explicit_freshness() {
    let h = headers(&[]);
    let mut i = input(&h);
    i.route_ttl = Some(Duration::from_secs(30));
    assert_eq!(lifetime(&stored(decide(&i))), 30);
    let h = headers(&[("cache-control", "max-age=5")]);
    let mut i = input(&h);
    i.route_ttl = Some(Duration::from_secs(30));
    assert_eq!(lifetime(&stored(decide(&i))), 5);
    // not for a status that is not heuristically cacheable
    let h = headers(&[]);
    let mut i = input(&h);
    i.status = 500;
    i.route_ttl = Some(Duration::from_secs(30));
    assert_eq!(decide(&i), StoreDecision::Refuse("no-freshness"));
    // ...unless the response is public
    let h = headers(&[("cache-control", "public")]);
    let mut i = input(&h);
    i.status = 302;
    i.route_ttl = Some(Duration::from_secs(30));
    assert_eq!(lifetime(&stored(decide(&i))), 30);
}

#[test]
fn last_modified_heuristic() {
    let h = headers(&[("last-modified", &date(T0 - 1000)), ("date", &date(T0))]);
    assert_eq!(lifetime(&stored(decide(&input(&h)))), 100);
}

#[test]
fn refusals() {
    let refuse = |pairs: &[(&str, &str)]| match decide(&input(&headers(pairs))) {
        StoreDecision::Refuse(w) => w,
        StoreDecision::Store(_) => "stored",
    };
    assert_eq!(
        refuse(&[("cache-control", "no-store, max-age=60")]),
        "no-store"
    );
    assert_eq!(
        refuse(&[("cache-control", "private, max-age=60")]),
        "private"
    );
    assert_eq!(
        refuse(&[("cache-control", "private=\"x-a\", max-age=60")]),
        "stored"
    );
    assert_eq!(
        refuse(&[("cache-control", "max-age=60"), ("vary", "*")]),
        "vary-star"
    );
    assert_eq!(
        refuse(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]),
        "set-cookie"
    );
    assert_eq!(refuse(&[]), "stale-without-validator");
    let h = headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
    let mut i = input(&h);
    i.store_set_cookie = true;
    assert!(matches!(decide(&i), StoreDecision::Store(_)));
    let h = headers(&[("cache-control", "max-age=60")]);
    let mut i = input(&h);
    i.authorization = true;
    assert_eq!(decide(&i), StoreDecision::Refuse("authorization"));
    let h = headers(&[("cache-control", "max-age=60, public")]);
    let mut i = input(&h);
    i.authorization = true;
    assert!(matches!(decide(&i), StoreDecision::Store(_)));
    let h = headers(&[("cache-control", "max-age=60")]);
    let mut i = input(&h);
    i.request_no_store = true;
    assert_eq!(decide(&i), StoreDecision::Refuse("request-no-store"));
    let h = headers(&[("cache-control", "max-age=60")]);
    let mut i = input(&h);
    i.status = 206;
    assert_eq!(decide(&i), StoreDecision::Refuse("status"));
}

#[test]
fn no_cache_is_stored_stale_without_stale_windows() {
    let h = headers(&[
        (
            "cache-control",
            "no-cache, max-age=60, stale-while-revalidate=30",
        ),
        ("etag", "\"v1\""),
    ]);
    let f = stored(decide(&input(&h)));
    assert_eq!(lifetime(&f), 0);
    assert_eq!(f.stale_while_revalidate, 0);
    let h = headers(&[(
        "cache-control",
        "max-age=1, stale-while-revalidate=30, stale-if-error=60",
    )]);
    let f = stored(decide(&input(&h)));
    assert_eq!((f.stale_while_revalidate, f.stale_if_error), (30, 60));
    let h = headers(&[("cache-control", "s-maxage=1, stale-if-error=60")]);
    assert_eq!(
        stored(decide(&input(&h))).stale_if_error,
        0,
        "s-maxage implies proxy-revalidate"
    );
}

#[test]
fn the_deadline_itself_is_stale_so_a_zero_lifetime_never_hits() {
    assert!(is_fresh(at(T0 + 30), at(T0 + 29)));
    assert!(
        !is_fresh(at(T0 + 30), at(T0 + 30)),
        "age 30 is not below 30"
    );
    // A no-cache response (lifetime 0) read at the very instant it was stored, as on a
    // test clock that stands still: stale, so the normal stale path revalidates it.
    let h = headers(&[("cache-control", "no-cache"), ("etag", "\"v1\"")]);
    let f = stored(decide(&input(&h)));
    assert!(!is_fresh(f.fresh_until, at(T0)));
    let plain = RequestDirectives::default();
    assert_eq!(
        reuse(&plain, &h, at(T0), f.epoch, f.fresh_until),
        Reuse::Revalidate
    );
}

#[test]
fn request_directives_decide_reuse() {
    let stored = headers(&[("cache-control", "max-age=100")]);
    let epoch = at(T0);
    let fresh_until = at(T0 + 100);
    let r = |cc: &str, now: u64| {
        let req = RequestDirectives::from_headers(&headers(&[("cache-control", cc)]));
        reuse(&req, &stored, at(now), epoch, fresh_until)
    };
    assert_eq!(r("", T0 + 10), Reuse::AsStored);
    assert_eq!(r("no-cache", T0 + 10), Reuse::Revalidate);
    assert_eq!(r("max-age=5", T0 + 10), Reuse::Revalidate);
    assert_eq!(r("max-age=50", T0 + 10), Reuse::AsStored);
    assert_eq!(r("min-fresh=95", T0 + 10), Reuse::Revalidate);
    assert_eq!(r("max-stale", T0 + 500), Reuse::ServeStale);
    assert_eq!(r("max-stale=10", T0 + 105), Reuse::ServeStale);
    assert_eq!(r("max-stale=10", T0 + 120), Reuse::AsStored);
    let must = headers(&[("cache-control", "max-age=100, must-revalidate")]);
    let req = RequestDirectives::from_headers(&headers(&[("cache-control", "max-stale")]));
    assert_eq!(
        reuse(&req, &must, at(T0 + 500), epoch, fresh_until),
        Reuse::AsStored
    );
    let pragma = RequestDirectives::from_headers(&headers(&[("pragma", "no-cache")]));
    assert!(pragma.no_cache);
}

#[test]
fn a_304_updates_the_stored_fields_except_framing() {
    let mut stored = ResponseHeader::build(200, None).unwrap();
    stored.insert_header("content-length", "10").unwrap();
    stored.insert_header("etag", "\"v1\"").unwrap();
    stored.insert_header("x-kept", "1").unwrap();
    stored.insert_header("x-updated", "old").unwrap();
    let mut nm = ResponseHeader::build(304, None).unwrap();
    nm.insert_header("content-length", "0").unwrap();
    nm.insert_header("x-updated", "new").unwrap();
    nm.insert_header("cache-control", "max-age=30").unwrap();
    nm.insert_header("connection", "close").unwrap();
    let m = merge_not_modified(&stored, &nm);
    assert_eq!(m.status.as_u16(), 200);
    assert_eq!(m.headers["content-length"], "10");
    assert_eq!(m.headers["x-kept"], "1");
    assert_eq!(m.headers["x-updated"], "new");
    assert_eq!(m.headers["cache-control"], "max-age=30");
    assert!(!m.headers.contains_key("connection"));
}

#[test]
fn stored_header_drops_hop_by_hop_age_and_private_fields() {
    let mut r = ResponseHeader::build(200, None).unwrap();
    r.insert_header("cache-control", "max-age=60, private=\"x-secret\"")
        .unwrap();
    r.insert_header("connection", "x-hop").unwrap();
    r.insert_header("x-hop", "1").unwrap();
    r.insert_header("x-secret", "1").unwrap();
    r.insert_header("age", "3").unwrap();
    r.insert_header("x-ok", "1").unwrap();
    let s = storable_header(&r);
    for gone in ["connection", "x-hop", "x-secret", "age"] {
        assert!(!s.headers.contains_key(gone), "{gone} was stored");
    }
    assert!(s.headers.contains_key("x-ok"));
}
