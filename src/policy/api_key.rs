//! API keys: read from the configured header, or from the query parameter when one is
//! configured (the header wins when both are sent), and resolved to a consumer through
//! the key's SHA-256 (`consumers`). Removed before proxying unless the route forwards
//! credentials.

use super::consumers::Consumers;
use super::Identity;
use crate::config::model;
use crate::config::ConfigError;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;

pub struct ApiKeyAuth {
    header: HeaderName,
    query: Option<String>,
    consumers: Arc<Consumers>,
}

impl ApiKeyAuth {
    /// Refuses a `header` that is not a header name (the one check of it).
    pub fn new(cfg: &model::ApiKeyAuth, consumers: Arc<Consumers>) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(cfg.header.as_bytes())
            .map_err(|_| ConfigError::new("auth.api_key.header", "invalid header name"))?;
        Ok(ApiKeyAuth {
            header,
            query: cfg.query.clone().filter(|q| !q.is_empty()),
            consumers,
        })
    }

    /// The presented key, if any: `Some("")` means present but empty.
    pub fn credential<'r>(&self, req: &'r RequestHeader) -> Option<Cow<'r, [u8]>> {
        if let Some(v) = req.headers.get(&self.header) {
            return Some(Cow::Borrowed(v.as_bytes()));
        }
        let name = self.query.as_deref()?;
        query_pairs(req.uri.query()?)
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn lookup(&self, key: &[u8]) -> Option<Arc<Identity>> {
        if key.is_empty() {
            return None;
        }
        self.consumers.by_api_key(key)
    }

    /// Removes the key from the header and the query string.
    pub fn strip(&self, req: &mut RequestHeader) {
        if req.headers.contains_key(&self.header) {
            req.remove_header(&self.header);
        }
        let Some(name) = self.query.as_deref() else {
            return;
        };
        let Some(q) = req.uri.query() else { return };
        if !query_pairs(q).any(|(k, _)| k.as_ref() == name.as_bytes()) {
            return;
        }
        let kept: Vec<&str> = q
            .split('&')
            .filter(|pair| {
                let raw_name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
                percent_decode(raw_name).as_ref() != name.as_bytes()
            })
            .collect();
        set_query(req, &kept.join("&"));
    }
}

/// `name=value` pairs of a query string, percent-decoded (`+` stays `+`).
fn query_pairs(q: &str) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Replaces the query of the request (the path and any authority stay).
fn set_query(req: &mut RequestHeader, query: &str) {
    let path = req.uri.path();
    let pq = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let mut parts = req.uri.clone().into_parts();
    let Ok(pq) = pq.parse() else { return };
    parts.path_and_query = Some(pq);
    if let Ok(uri) = http::Uri::from_parts(parts) {
        req.set_uri(uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ApiKeyAuth {
        ApiKeyAuth::new(
            &model::ApiKeyAuth {
                header: "X-API-Key".into(),
                query: Some("api_key".into()),
            },
            Arc::new(Consumers::default()),
        )
        .unwrap()
    }

    #[test]
    fn header_then_query() {
        let a = auth();
        let mut r = RequestHeader::build("GET", b"/x?a=1&api_key=k%2By+z&b=2", None).unwrap();
        assert_eq!(a.credential(&r).unwrap().as_ref(), b"k+y+z");
        r.insert_header("x-api-key", "from-header").unwrap();
        assert_eq!(a.credential(&r).unwrap().as_ref(), b"from-header");
        a.strip(&mut r);
        assert!(r.headers.get("x-api-key").is_none());
        assert_eq!(r.uri.to_string(), "/x?a=1&b=2");
        let mut only = RequestHeader::build("GET", b"/x?api%5Fkey=k", None).unwrap();
        assert!(a.credential(&only).is_some());
        a.strip(&mut only);
        assert_eq!(only.uri.to_string(), "/x");
        let none = RequestHeader::build("GET", b"/x?api_keys=k", None).unwrap();
        assert!(a.credential(&none).is_none());
    }
}
