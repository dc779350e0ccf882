//! A route's edge policies, compiled together (`runtime::Snapshot::compile` builds one
//! per route): CORS (`cors`), client address rules (`ip`), response compression
//! (`compression`) and the request shape limits `max_headers` (431) and `max_url` (414),
//! checked in admission right after routing (`shape`). `docs/REQUEST_PATH.md` says where
//! each runs.

use super::compression::Compression;
use super::cors::Cors;
use super::ip::IpRules;
use crate::config::model::Route as Config;
use crate::config::ConfigError;
use crate::error::Reject;
use pingora::http::RequestHeader;

#[derive(Default)]
pub struct Edge {
    pub cors: Option<Cors>,
    pub ip: Option<IpRules>,
    pub compression: Option<Compression>,
    pub max_headers: Option<usize>,
    pub max_url: Option<usize>,
}

impl Edge {
    /// The edge policies of `routes[index]`; a `~regex` origin that does not compile is
    /// an error with its path.
    pub fn compile(index: usize, r: &Config) -> Result<Edge, Vec<ConfigError>> {
        let cors = r
            .cors
            .as_ref()
            .map(|c| Cors::compile(index, c))
            .transpose()?;
        Ok(Edge {
            cors,
            ip: r
                .ip
                .as_ref()
                .map(|ip| IpRules::compile("route", &r.name, ip)),
            compression: r.compression.as_ref().map(Compression::compile),
            max_headers: r.max_headers.map(|n| n as usize),
            max_url: r
                .max_url
                .map(|s| usize::try_from(s.0).unwrap_or(usize::MAX)),
        })
    }

    /// `max_url` then `max_headers`: 414 `uri-too-long`, 431 `headers-too-large`.
    pub fn shape(&self, req: &RequestHeader) -> Result<(), Reject> {
        if let Some(max) = self.max_url {
            if url_len(req) > max {
                return Err(Reject::UriTooLong(max));
            }
        }
        if let Some(max) = self.max_headers {
            // Every field line counts, repeated names included.
            if req.headers.len() > max {
                return Err(Reject::TooManyHeaders(max));
            }
        }
        Ok(())
    }
}

/// The length of the request target as sent: path and query, plus scheme and authority
/// for an absolute-form (or HTTP/2) target.
fn url_len(req: &RequestHeader) -> usize {
    let pq = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let authority = req.uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = req.uri.scheme_str().map_or(0, |s| s.len() + 3);
    pq + authority + scheme
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(max_headers: Option<usize>, max_url: Option<usize>) -> Edge {
        Edge {
            max_headers,
            max_url,
            ..Edge::default()
        }
    }

    #[test]
    fn url_and_header_count_limits() {
        let mut req = RequestHeader::build("GET", b"/abc?d=1", None).unwrap();
        req.append_header("a", "1").unwrap();
        req.append_header("a", "2").unwrap();
        req.append_header("b", "3").unwrap();
        assert!(edge(Some(3), Some(8)).shape(&req).is_ok());
        assert!(matches!(
            edge(Some(2), None).shape(&req),
            Err(Reject::TooManyHeaders(2))
        ));
        assert!(matches!(
            edge(None, Some(7)).shape(&req),
            Err(Reject::UriTooLong(7))
        ));
        let mut abs = RequestHeader::build("GET", b"/abc", None).unwrap();
        abs.set_uri("http://h.test/abc".parse().unwrap());
        assert_eq!(url_len(&abs), "http://h.test/abc".len());
    }
}
