//! Removing stored responses: invalidation after a successful unsafe request (RFC 9111
//! §4.4, by URL) and the admin purge API (`POST /admin/cache/purge`, by route, exact path
//! or path prefix).

use super::key;
use super::storage::MemoryStorage;
use crate::path;
use serde::Deserialize;

/// Removes the primary slot of a URL under both schemes; every variant of the URL is
/// retired with it (see `key`). Returns how many slots went.
pub fn invalidate_url(
    storage: &MemoryStorage,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> usize {
    [false, true]
        .into_iter()
        .filter_map(|https| storage.remove_hash(key::primary_hash(https, host, path, query)))
        .count()
}

/// Invalidates the URL a `Location` or `Content-Location` names, when it is on the same
/// authority, `host` (§4.4: a cache must not invalidate other origins on a response's
/// word; the port is part of the origin, and of the key).
pub fn invalidate_reference(storage: &MemoryStorage, host: &str, reference: &str) -> usize {
    let Ok(uri) = reference.parse::<http::Uri>() else {
        return 0;
    };
    if let Some(auth) = uri.authority() {
        if !auth.as_str().eq_ignore_ascii_case(host) {
            return 0;
        }
    } else if !reference.starts_with('/') {
        return 0; // relative references other than absolute paths are not resolved
    }
    let Ok(p) = path::normalize(uri.path()) else {
        return 0;
    };
    invalidate_url(storage, host, &p, uri.query())
}

/// The body of `POST /admin/cache/purge`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// What a purge matches, once checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Selector {
    route: Option<String>,
    path: Option<String>,
    prefix: Option<String>,
}

impl PurgeRequest {
    /// Checks the request; `known_route` says whether a route name exists. Errors are
    /// the `detail` of a 400 (or 404 for an unknown route, flagged by the bool).
    pub fn check(self, known_route: impl Fn(&str) -> bool) -> Result<Selector, (u16, String)> {
        if self.route.is_none() && self.path.is_none() && self.prefix.is_none() {
            return Err((400, "give a route, a path or a prefix".into()));
        }
        if self.path.is_some() && self.prefix.is_some() {
            return Err((400, "give either path or prefix, not both".into()));
        }
        if let Some(r) = &self.route {
            if !known_route(r) {
                return Err((404, format!("no route is named {r:?}")));
            }
        }
        let norm = |field: &str, p: Option<String>| -> Result<Option<String>, (u16, String)> {
            match p {
                None => Ok(None),
                Some(p) if !p.starts_with('/') => Err((400, format!("{field} must start with /"))),
                Some(p) => path::normalize(&p)
                    .map(|n| Some(n.into_owned()))
                    .map_err(|_| (400, format!("{field} is not a valid path"))),
            }
        };
        Ok(Selector {
            path: norm("path", self.path)?,
            prefix: norm("prefix", self.prefix)?,
            route: self.route,
        })
    }
}

impl Selector {
    /// Removes every matching entry; returns (entries, bytes).
    pub fn run(&self, storage: &MemoryStorage) -> (usize, usize) {
        storage.purge_where(|tag| {
            self.route.as_deref().is_none_or(|r| &*tag.route == r)
                && self.path.as_deref().is_none_or(|p| &*tag.path == p)
                && self
                    .prefix
                    .as_deref()
                    .is_none_or(|p| tag.path.starts_with(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(route: Option<&str>, path: Option<&str>, prefix: Option<&str>) -> PurgeRequest {
        PurgeRequest {
            route: route.map(str::to_owned),
            path: path.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
        }
    }

    #[test]
    fn checks_the_request() {
        let known = |r: &str| r == "items";
        assert_eq!(req(None, None, None).check(known).unwrap_err().0, 400);
        assert_eq!(
            req(None, Some("/a"), Some("/b"))
                .check(known)
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(
            req(Some("nope"), None, None).check(known).unwrap_err().0,
            404
        );
        assert_eq!(req(None, Some("a"), None).check(known).unwrap_err().0, 400);
        let s = req(Some("items"), Some("/a//b/../c"), None)
            .check(known)
            .unwrap();
        assert_eq!(s.path.as_deref(), Some("/a/c"));
    }
}
