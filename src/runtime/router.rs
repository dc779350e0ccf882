//! Route choice. Host first (exact, then the longest `*.` wildcard, then routes without
//! hosts), then path: an exact `path` beats the longest `path_prefix`, which beats
//! `path_regex` (file order). Within that order the first route whose methods and
//! headers also match wins. Prefixes match whole segments: `/api` matches `/api` and
//! `/api/x`, never `/apix`. Lookups cost O(path segments), not O(routes).

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use std::collections::HashMap;

/// What a route needs to match beyond host and path.
#[derive(Debug, Default)]
pub struct Conditions {
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, String)>,
}

impl Conditions {
    fn matches(&self, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(ms) = &self.methods {
            if !ms.iter().any(|m| m == method) {
                return false;
            }
        }
        self.headers.iter().all(|(name, want)| {
            headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == want.as_bytes())
        })
    }
}

/// The path part of a route's match.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Compiled once, when the config compiles (which reports a bad one with its path).
    Regex(Regex),
}

#[derive(Default)]
struct PathTable {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    regex: Vec<(Regex, usize)>,
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, idx: usize) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(idx),
            PathMatch::Prefix(p) => self.prefix.entry(p.clone()).or_default().push(idx),
            PathMatch::Regex(re) => self.regex.push((re.clone(), idx)),
        }
    }

    fn find(&self, path: &str, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let pick = |ids: Option<&Vec<usize>>| ids.and_then(|v| v.iter().copied().find(|&i| ok(i)));
        if let Some(i) = pick(self.exact.get(path)) {
            return Some(i);
        }
        if !self.prefix.is_empty() {
            if let Some(i) = pick(self.prefix.get(path)) {
                return Some(i);
            }
            // Every segment boundary, longest first: "/a/b/c" → "/a/b/", "/a/b", "/a/", "/a", "/".
            let bytes = path.as_bytes();
            for pos in (0..bytes.len()).rev() {
                if bytes[pos] != b'/' {
                    continue;
                }
                if pos + 1 < bytes.len() {
                    if let Some(i) = pick(self.prefix.get(&path[..=pos])) {
                        return Some(i);
                    }
                }
                if pos > 0 {
                    if let Some(i) = pick(self.prefix.get(&path[..pos])) {
                        return Some(i);
                    }
                }
            }
        }
        self.regex
            .iter()
            .find(|(re, i)| re.is_match(path) && ok(*i))
            .map(|(_, i)| *i)
    }
}

/// One route as the router sees it; `T` is whatever the caller wants back.
pub struct Entry<T> {
    pub hosts: Vec<String>,
    pub path: PathMatch,
    pub conditions: Conditions,
    pub value: T,
}

pub struct Router<T> {
    entries: Vec<(Conditions, T)>,
    exact_hosts: HashMap<String, PathTable>,
    /// (".example.com", table), longest suffix first.
    wildcard_hosts: Vec<(String, PathTable)>,
    any_host: PathTable,
}

impl<T> Router<T> {
    /// Builds the router from routes in file order.
    pub fn new(entries: Vec<Entry<T>>) -> Self {
        let mut exact_hosts: HashMap<String, PathTable> = HashMap::new();
        let mut wildcard: HashMap<String, PathTable> = HashMap::new();
        let mut any_host = PathTable::default();
        let mut out = Vec::with_capacity(entries.len());
        for (idx, e) in entries.into_iter().enumerate() {
            if e.hosts.is_empty() {
                any_host.insert(&e.path, idx);
            }
            for h in &e.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => wildcard
                        .entry(suffix.to_string())
                        .or_default()
                        .insert(&e.path, idx),
                    None => exact_hosts.entry(h).or_default().insert(&e.path, idx),
                }
            }
            out.push((e.conditions, e.value));
        }
        let mut wildcard_hosts: Vec<_> = wildcard.into_iter().collect();
        wildcard_hosts.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Router {
            entries: out,
            exact_hosts,
            wildcard_hosts,
            any_host,
        }
    }

    /// `host` must be lower-case without port; `path` normalised.
    pub fn find(&self, host: &str, path: &str, method: &Method, headers: &HeaderMap) -> Option<&T> {
        let ok = |i: usize| self.entries[i].0.matches(method, headers);
        let found = self
            .exact_hosts
            .get(host)
            .and_then(|t| t.find(path, &ok))
            .or_else(|| {
                self.wildcard_hosts
                    .iter()
                    .filter(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .find_map(|(_, t)| t.find(path, &ok))
            })
            .or_else(|| self.any_host.find(path, &ok))?;
        Some(&self.entries[found].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Lower-cases a Host header value and drops the port and a trailing dot.
pub fn host_of(raw: &str) -> std::borrow::Cow<'_, str> {
    let h = if raw.starts_with('[') {
        raw.split_once(']')
            .map(|(a, _)| &raw[..a.len() + 1])
            .unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw)
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(
        hosts: &[&str],
        path: PathMatch,
        methods: Option<&[&str]>,
        v: &'static str,
    ) -> Entry<&'static str> {
        Entry {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path,
            conditions: Conditions {
                methods: methods.map(|m| m.iter().map(|s| s.parse().unwrap()).collect()),
                headers: vec![],
            },
            value: v,
        }
    }

    fn find<'a>(r: &'a Router<&'static str>, host: &str, path: &str, m: &str) -> Option<&'a str> {
        r.find(host, path, &m.parse().unwrap(), &HeaderMap::new())
            .copied()
    }

    #[test]
    fn precedence() {
        let r = Router::new(vec![
            e(
                &[],
                PathMatch::Regex(Regex::new("^/a/.*$").unwrap()),
                None,
                "regex",
            ),
            e(&[], PathMatch::Prefix("/a".into()), None, "short"),
            e(&[], PathMatch::Prefix("/a/b".into()), None, "long"),
            e(&[], PathMatch::Exact("/a/b/c".into()), None, "exact"),
        ]);
        assert_eq!(find(&r, "x", "/a/b/c", "GET"), Some("exact"));
        assert_eq!(find(&r, "x", "/a/b/d", "GET"), Some("long"));
        assert_eq!(find(&r, "x", "/a/bz", "GET"), Some("short"));
        assert_eq!(find(&r, "x", "/a", "GET"), Some("short"));
        assert_eq!(find(&r, "x", "/ab", "GET"), None);
    }

    #[test]
    fn hosts_and_methods() {
        let r = Router::new(vec![
            e(
                &["api.example.com"],
                PathMatch::Prefix("/".into()),
                Some(&["GET"]),
                "exact-host",
            ),
            e(
                &["*.example.com"],
                PathMatch::Prefix("/".into()),
                None,
                "wild",
            ),
            e(&[], PathMatch::Exact("/only".into()), None, "any"),
        ]);
        assert_eq!(find(&r, "api.example.com", "/x", "GET"), Some("exact-host"));
        assert_eq!(find(&r, "api.example.com", "/x", "POST"), Some("wild"));
        assert_eq!(find(&r, "a.b.example.com", "/x", "GET"), Some("wild"));
        assert_eq!(find(&r, "example.com", "/x", "GET"), None);
        assert_eq!(find(&r, "other", "/only", "GET"), Some("any"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("example.com."), "example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }
}
