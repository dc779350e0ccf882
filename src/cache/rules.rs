//! RFC 9111 rules as pure functions of header fields and a point in time: parsing
//! `Cache-Control`, deciding whether a shared cache may store a response (§3), its
//! freshness lifetime and age (§4.2), whether a stored response may answer a request
//! given the request's directives (§5.2.1), and the header update after a 304 (§3.2).
//! Nothing here reads a clock; callers pass `now` (the process clock, see `cache::phases`).

use http::{header, HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// RFC 9111 §1.2.2: delta-seconds that overflow are taken as 2^31.
const DELTA_MAX: u64 = 2_147_483_648;
/// Status codes a cache may store with a heuristic lifetime (RFC 9110 §15.1), less 206,
/// which we never store (ranges are served from full entries).
const HEURISTIC: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// Heuristic lifetime from Last-Modified: this fraction of the response's age, capped.
const LM_FRACTION: u32 = 10;
const LM_CAP: Duration = Duration::from_secs(86_400);

/// One delta-seconds argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    Valid(u64),
    /// Present but not a non-negative integer: the response is treated as stale (§4.2.1).
    Invalid,
}

/// Parsed `Cache-Control` directives, in order, names lowercased, values unquoted.
#[derive(Debug, Default, Clone)]
pub struct Directives {
    list: Vec<(String, Option<String>)>,
}

impl Directives {
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut list = Vec::new();
        for v in values {
            let s = String::from_utf8_lossy(v.as_bytes());
            for item in split_outside_quotes(&s) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                    None => (item.trim(), None),
                };
                if !name.is_empty() {
                    list.push((name.to_ascii_lowercase(), value));
                }
            }
        }
        Directives { list }
    }

    pub fn from_headers(h: &HeaderMap) -> Self {
        Self::parse(h.get_all(header::CACHE_CONTROL))
    }

    fn first(&self, name: &str) -> Option<&Option<String>> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    /// Present without an argument (`private`, not `private="x"`).
    pub fn bare(&self, name: &str) -> bool {
        self.list.iter().any(|(n, v)| n == name && v.is_none())
    }

    /// The first occurrence's delta-seconds (RFC 9111 §4.2.1 allows using the first).
    pub fn seconds(&self, name: &str) -> Option<Seconds> {
        let v = self.first(name)?;
        let Some(v) = v else {
            return Some(Seconds::Invalid);
        };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Seconds::Invalid);
        }
        Some(Seconds::Valid(
            v.parse::<u64>().unwrap_or(DELTA_MAX).min(DELTA_MAX),
        ))
    }

    /// Field names listed by a qualified `private="a, b"` or `no-cache="a"`.
    pub fn field_names(&self, name: &str) -> Vec<String> {
        self.list
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .flat_map(|v| v.split(','))
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .collect()
    }
}

fn split_outside_quotes(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_string(),
    }
}

pub fn http_date(h: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    let mut values = h.get_all(name).iter();
    let v = values.next()?;
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// What the storing decision needs to know about the exchange.
pub struct StoreInput<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// When the request went upstream, and when the response header arrived.
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The request carried `Authorization` that the gateway did not itself verify.
    pub authorization: bool,
    pub request_no_store: bool,
    /// The route's `ttl`: freshness used when the response gives none.
    pub route_ttl: Option<Duration>,
    pub store_set_cookie: bool,
}

/// Freshness of a response being stored, on the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// `response_time - corrected_initial_age`: the age reference (age = now - epoch).
    pub epoch: SystemTime,
    pub fresh_until: SystemTime,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDecision {
    Store(Freshness),
    /// Why not, for logs and `Cache-Status` `detail`.
    Refuse(&'static str),
}

pub fn decide(input: &StoreInput) -> StoreDecision {
    use StoreDecision::Refuse;
    let h = input.headers;
    let cc = Directives::from_headers(h);
    if input.request_no_store {
        return Refuse("request-no-store");
    }
    if cc.has("no-store") {
        return Refuse("no-store");
    }
    if cc.bare("private") {
        return Refuse("private");
    }
    if matches!(input.status, 100..=199 | 206 | 304) {
        return Refuse("status");
    }
    let explicitly_shared = cc.has("public") || cc.has("s-maxage");
    if input.authorization && !(explicitly_shared || cc.has("must-revalidate")) {
        return Refuse("authorization");
    }
    if vary_names(h).iter().any(|n| n == "*") {
        return Refuse("vary-star");
    }
    if h.contains_key(header::SET_COOKIE) && !input.store_set_cookie {
        return Refuse("set-cookie");
    }
    let heuristic_ok = cc.has("public") || HEURISTIC.contains(&input.status);
    let lifetime = match explicit_lifetime(&cc, h, input.response_time) {
        Some(l) => l,
        None if !heuristic_ok => return Refuse("no-freshness"),
        None => heuristic_lifetime(input, h).unwrap_or(Duration::ZERO),
    };
    let no_cache = cc.bare("no-cache");
    let lifetime = if no_cache { Duration::ZERO } else { lifetime };
    let age = initial_age(h, input.request_time, input.response_time);
    let epoch = input
        .response_time
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let no_stale =
        no_cache || cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage");
    let window = |name| match (no_stale, cc.seconds(name)) {
        (false, Some(Seconds::Valid(s))) => u32::try_from(s).unwrap_or(u32::MAX),
        _ => 0,
    };
    let f = Freshness {
        epoch,
        fresh_until: epoch + lifetime,
        stale_while_revalidate: window("stale-while-revalidate"),
        stale_if_error: window("stale-if-error"),
    };
    let has_validator = h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED);
    let useful = f.fresh_until > input.response_time
        || has_validator
        || f.stale_while_revalidate > 0
        || f.stale_if_error > 0;
    if !useful {
        // Stale on arrival and nothing to revalidate with: storing would only cost memory.
        return Refuse("stale-without-validator");
    }
    StoreDecision::Store(f)
}

/// s-maxage (shared caches), then max-age, then Expires - Date. Invalid values and
/// duplicate Expires give a zero lifetime (stored as stale).
fn explicit_lifetime(
    cc: &Directives,
    h: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    for name in ["s-maxage", "max-age"] {
        match cc.seconds(name) {
            Some(Seconds::Valid(s)) => return Some(Duration::from_secs(s)),
            Some(Seconds::Invalid) => return Some(Duration::ZERO),
            None => {}
        }
    }
    let mut expires = h.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        return Some(Duration::ZERO);
    }
    let Some(exp) = first
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    else {
        // §5.3: an invalid Expires (e.g. "0") means already expired.
        return Some(Duration::ZERO);
    };
    let date = http_date(h, &header::DATE).unwrap_or(response_time);
    Some(exp.duration_since(date).unwrap_or(Duration::ZERO))
}

fn heuristic_lifetime(input: &StoreInput, h: &HeaderMap) -> Option<Duration> {
    if let Some(ttl) = input.route_ttl {
        return Some(ttl);
    }
    let lm = http_date(h, &header::LAST_MODIFIED)?;
    let date = http_date(h, &header::DATE).unwrap_or(input.response_time);
    let since = date.duration_since(lm).ok()?;
    Some((since / LM_FRACTION).min(LM_CAP))
}

/// RFC 9111 §4.2.3 `corrected_initial_age`.
pub fn initial_age(h: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let age_value = h
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(DELTA_MAX)))
        .unwrap_or_default();
    let apparent = http_date(h, &header::DATE)
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent.max(age_value + delay)
}

/// The response's `Vary` field names, lowercased.
pub fn vary_names(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::VARY)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A request header's value as `Vary` compares it: lines joined, whitespace around
/// commas and at the ends dropped. `None` when absent (distinct from empty).
pub fn normalized_request_value(h: &HeaderMap, name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for v in h.get_all(name) {
        for p in String::from_utf8_lossy(v.as_bytes()).split(',') {
            parts.push(p.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Request directives that change how a stored response may be used (§5.2.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `Some(None)`: any staleness accepted.
    pub max_stale: Option<Option<u64>>,
}

impl RequestDirectives {
    pub fn from_headers(h: &HeaderMap) -> Self {
        let cc = Directives::from_headers(h);
        let valid = |name| match cc.seconds(name) {
            Some(Seconds::Valid(s)) => Some(s),
            _ => None,
        };
        // §5.4: Pragma: no-cache counts only when Cache-Control is absent.
        let pragma_no_cache = !h.contains_key(header::CACHE_CONTROL)
            && h.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                })
            });
        RequestDirectives {
            no_cache: cc.has("no-cache") || pragma_no_cache,
            no_store: cc.has("no-store"),
            only_if_cached: cc.has("only-if-cached"),
            max_age: match cc.seconds("max-age") {
                Some(Seconds::Valid(s)) => Some(s),
                Some(Seconds::Invalid) => Some(0),
                None => None,
            },
            min_fresh: valid("min-fresh"),
            max_stale: cc.has("max-stale").then(|| valid("max-stale")),
        }
    }
}

/// How a stored response may answer this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh: serve it (or, when stale, follow the normal stale path).
    AsStored,
    /// Must be validated with the origin first, without serving stale meanwhile.
    Revalidate,
    /// Stale, but the client accepts it as is (max-stale).
    ServeStale,
}

/// RFC 9111 §4.2: fresh while the age is below the lifetime, so a zero lifetime
/// (`no-cache`) is stale at once even on a clock that stands still. (Pingora's
/// `CacheMeta::is_fresh` counts the deadline itself as fresh.)
pub fn is_fresh(fresh_until: SystemTime, now: SystemTime) -> bool {
    fresh_until > now
}

pub fn reuse(
    req: &RequestDirectives,
    stored: &HeaderMap,
    now: SystemTime,
    epoch: SystemTime,
    fresh_until: SystemTime,
) -> Reuse {
    let fresh = is_fresh(fresh_until, now);
    if fresh && *req == RequestDirectives::default() {
        // The common hit: nothing to decide (a stored no-cache is never fresh).
        return Reuse::AsStored;
    }
    let cc = Directives::from_headers(stored);
    if req.no_cache || cc.bare("no-cache") {
        return Reuse::Revalidate;
    }
    let age = now.duration_since(epoch).unwrap_or_default().as_secs();
    if req.max_age.is_some_and(|m| age > m) {
        return Reuse::Revalidate;
    }
    let remaining = fresh_until
        .duration_since(now)
        .unwrap_or_default()
        .as_secs();
    if fresh && req.min_fresh.is_some_and(|m| remaining < m) {
        return Reuse::Revalidate;
    }
    if !fresh {
        let must = cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage");
        let staleness = now
            .duration_since(fresh_until)
            .unwrap_or_default()
            .as_secs();
        let accepted = match req.max_stale {
            Some(None) => true,
            Some(Some(n)) => staleness <= n,
            None => false,
        };
        if accepted && !must {
            return Reuse::ServeStale;
        }
    }
    Reuse::AsStored
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The response header as stored (§3.1): no hop-by-hop or connection-nominated fields,
/// no `Age` (recomputed when served), none of the fields a qualified `private` or
/// `no-cache` names.
pub fn storable_header(resp: &ResponseHeader) -> ResponseHeader {
    let mut out = resp.clone();
    let cc = Directives::from_headers(&resp.headers);
    let mut drop: Vec<String> = HOP_BY_HOP.iter().map(|s| s.to_string()).collect();
    drop.push("age".into());
    for v in resp.headers.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            drop.extend(s.split(',').map(|n| n.trim().to_ascii_lowercase()));
        }
    }
    drop.extend(cc.field_names("private"));
    drop.extend(cc.field_names("no-cache"));
    for name in drop {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            out.remove_header(&n);
        }
    }
    out
}

/// Fields a 304 must not change in the stored response (§3.2, §4.3.4).
const NOT_UPDATED: &[&str] = &["content-length", "content-encoding", "content-range", "age"];

/// The stored header updated with the fields of a 304 (§3.2): each field the 304
/// carries replaces the stored one, except framing and hop-by-hop fields.
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> ResponseHeader {
    let mut out = stored.clone();
    let fresh = storable_header(not_modified);
    for name in fresh.headers.keys() {
        if NOT_UPDATED.contains(&name.as_str()) {
            continue;
        }
        out.remove_header(name);
        for v in fresh.headers.get_all(name) {
            let _ = out.append_header(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "rules_props.rs"]
mod props;
