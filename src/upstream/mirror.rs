//! Request mirroring (`routes[].mirror`): a fire-and-forget copy of a sampled share of a
//! route's upstream requests, sent to another upstream.
//!
//! The copy is the request as the route's upstream gets it (rewritten path, request id,
//! identity and forwarding fields, the route's header operations), taken when it is
//! sent (`start`), with its body collected as it streams by (`on_body`). It goes out on
//! a task of its own, through Pingora's connector and the mirror upstream's own
//! balancing and timeouts; the client's request never waits for it, and whatever the
//! mirror answers (or not) is only counted. Cache hits and refusals reach no upstream,
//! so they are not mirrored.
//!
//! Sampling is deterministic per request id (the same id is mirrored or not, whichever
//! gateway sees it). A body over `max_body` is not mirrored at all (a copy without its
//! body would be a different request): `too_large`. At `max_inflight` copies in flight,
//! a new one is `dropped`, as is one whose client body never finished. A copy that
//! got an answer, whatever its status, is `sent`; one that could not be delivered or
//! was not answered within `timeout` is `failed`.

use super::Upstream;
use crate::config::route_traffic as traffic;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub struct Mirror {
    pub upstream: Arc<Upstream>,
    /// Sampled requests per million.
    per_million: u32,
    max_body: u64,
    max_inflight: usize,
    inflight: Arc<AtomicUsize>,
    timeout: Duration,
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    too_large: IntCounter,
}

/// A request's part in mirroring.
#[derive(Default)]
pub enum MirrorCtx {
    /// Not (yet) looked at: the request has not gone upstream.
    #[default]
    Undecided,
    /// Sent, refused, or not sampled: nothing more to do.
    Done,
    /// Sampled; its body is being collected.
    Collecting(Box<Pending>),
}

pub struct Pending {
    mirror: Arc<Mirror>,
    req: RequestHeader,
    body: Vec<u8>,
}

/// One slot of `max_inflight`, given back when the copy is done.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Fields that belong to one connection or exchange, not to the request (`Expect`: the
/// copy's body is sent at once, never after a `100 Continue`).
const HOP_BY_HOP: [&str; 8] = [
    "expect",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

impl Mirror {
    pub fn compile(route: &str, m: &traffic::Mirror, upstream: Arc<Upstream>) -> Mirror {
        let c = crate::metrics::metrics();
        let count = |result: &str| c.mirror_requests.with_label_values(&[route, result]);
        Mirror {
            upstream,
            per_million: (m.percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
            max_body: m.max_body.0,
            max_inflight: m.max_inflight,
            inflight: Arc::new(AtomicUsize::new(0)),
            timeout: m.timeout.0,
            sent: count("sent"),
            failed: count("failed"),
            dropped: count("dropped"),
            too_large: count("too_large"),
        }
    }

    /// Whether the request with this id is copied: the same id always gets the same
    /// answer.
    fn sampled(&self, request_id: &str) -> bool {
        if self.per_million >= 1_000_000 {
            return true;
        }
        if self.per_million == 0 {
            return false;
        }
        let mut h = super::split::fnv1a(request_id.bytes());
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        (h % 1_000_000) < u64::from(self.per_million)
    }

    /// The request is being sent upstream as `req`: decides whether it is copied, and
    /// sends the copy now when it has no body. Called once per request.
    pub fn start(
        self: &Arc<Self>,
        req: &RequestHeader,
        request_id: &str,
        connector: &Arc<Connector>,
    ) -> MirrorCtx {
        if !self.sampled(request_id) {
            return MirrorCtx::Done;
        }
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            self.too_large.inc();
            return MirrorCtx::Done;
        }
        let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
        let mut copy = req.clone();
        for name in HOP_BY_HOP {
            copy.remove_header(name);
        }
        if declared.unwrap_or(0) == 0 && !chunked {
            self.launch(copy, Bytes::new(), connector);
            return MirrorCtx::Done;
        }
        MirrorCtx::Collecting(Box::new(Pending {
            mirror: self.clone(),
            req: copy,
            body: Vec::new(),
        }))
    }

    /// Takes a `max_inflight` slot and sends the copy on a task of its own.
    fn launch(self: &Arc<Self>, mut req: RequestHeader, body: Bytes, connector: &Arc<Connector>) {
        let before = self.inflight.fetch_add(1, Relaxed);
        let slot = Slot(self.inflight.clone());
        if before >= self.max_inflight {
            self.dropped.inc();
            return;
        }
        if body.is_empty() {
            req.remove_header(&http::header::CONTENT_LENGTH);
        } else if req
            .insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            .is_err()
        {
            self.failed.inc();
            return;
        }
        let me = self.clone();
        let connector = connector.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(me.timeout, me.send(&connector, req, body)).await {
                Ok(Ok(())) => me.sent.inc(),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %me.upstream.name, "mirror copy failed: {e}");
                    me.failed.inc();
                }
                Err(_) => {
                    tracing::debug!(upstream = %me.upstream.name, "mirror copy timed out");
                    me.failed.inc();
                }
            }
        });
    }

    /// One exchange with a target of the mirror upstream; the answer's body is read
    /// (and thrown away) so that the connection can go back to the pool.
    async fn send(
        &self,
        connector: &Connector,
        mut req: RequestHeader,
        body: Bytes,
    ) -> pingora::Result<()> {
        let Some(id) = self.upstream.select(b"", &[]) else {
            return pingora::Error::e_explain(
                pingora::ErrorType::ConnectNoRoute,
                "no usable target in the mirror upstream",
            );
        };
        let peer = self.upstream.peer(id);
        let (mut session, _reused) = connector.get_http_session(&peer).await?;
        if matches!(session, HttpSession::H1(_)) {
            req.set_version(http::Version::HTTP_11);
        }
        session.write_request_header(Box::new(req)).await?;
        if !body.is_empty() {
            session.write_request_body(body, true).await?;
        }
        session.finish_request_body().await?;
        session.read_response_header().await?;
        while session.read_response_body().await?.is_some() {}
        connector
            .release_http_session(session, &peer, peer.options.idle_timeout)
            .await;
        Ok(())
    }
}

impl MirrorCtx {
    /// A piece of the client's body went upstream: collected while it fits, and the
    /// copy sent at its end.
    pub fn on_body(&mut self, chunk: Option<&Bytes>, end: bool, connector: &Arc<Connector>) {
        let MirrorCtx::Collecting(p) = self else {
            return;
        };
        if let Some(b) = chunk {
            if (p.body.len() + b.len()) as u64 > p.mirror.max_body {
                p.mirror.too_large.inc();
                *self = MirrorCtx::Done;
                return;
            }
            p.body.extend_from_slice(b);
        }
        if end {
            if let MirrorCtx::Collecting(p) = std::mem::replace(self, MirrorCtx::Done) {
                let Pending { mirror, req, body } = *p;
                mirror.launch(req, Bytes::from(body), connector);
            }
        }
    }

    /// The request ended: a copy still waiting for its body is dropped.
    pub fn finish(&mut self) {
        if let MirrorCtx::Collecting(p) = std::mem::replace(self, MirrorCtx::Done) {
            p.mirror.dropped.inc();
        }
    }

    pub fn undecided(&self) -> bool {
        matches!(self, MirrorCtx::Undecided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(percent: f64) -> Mirror {
        let up: crate::config::model::Upstream =
            serde_yaml::from_str("targets: [ { address: \"127.0.0.1:1\" } ]").unwrap();
        let plan =
            super::super::Plan::compile("m", &up, Arc::new(crate::clock::Clock::system())).unwrap();
        let m: traffic::Mirror =
            serde_yaml::from_str(&format!("{{ upstream: m, percent: {percent} }}")).unwrap();
        Mirror::compile("r", &m, Arc::new(Upstream::build("m", &up, plan)))
    }

    #[test]
    fn sampling_is_deterministic_per_request_id_and_near_the_percent() {
        let m = mirror(10.0);
        let ids: Vec<String> = (0..20_000).map(|i| format!("req-{i:08x}")).collect();
        let share = ids.iter().filter(|id| m.sampled(id)).count() as f64 / ids.len() as f64;
        assert!((share - 0.10).abs() < 0.01, "{share}");
        assert!(ids.iter().all(|id| m.sampled(id) == m.sampled(id)));
        assert!(ids.iter().all(|id| mirror(100.0).sampled(id)));
        assert!(ids.iter().all(|id| !mirror(0.0).sampled(id)));
    }
}
