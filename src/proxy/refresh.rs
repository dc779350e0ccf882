//! Stale-while-revalidate refreshes carry the request that started them.
//!
//! A request served a stale entry while it holds the entry's write lock makes Pingora
//! spawn a background subrequest (`Session::subrequest_ctx` is set in it) that runs every
//! phase again from `new_ctx`, on a copy of the request made from its head bytes
//! (`HttpSession::to_h1_raw`): for HTTP/1 the bytes received, credential included; for
//! HTTP/2 bytes rebuilt from the header as the policies left it, credential removed.
//! Running the policies on that copy authenticates a second time (HTTP/2: a spurious 401
//! and `gatehouse_auth_failures_total`, and no refresh) and counts the limits twice
//! (HTTP/1). Pingora gives no way to hand the parent's context to the subrequest, so:
//!
//! - the parent, in `should_serve_stale` just before Pingora spawns, records its
//!   identity and its request as the policies left it (`Refreshes::record`), under the
//!   head bytes the copy will be made from;
//! - the refresh, in `request_filter`, takes them back by its own head bytes
//!   (`Refreshes::take`), puts the parent's request in place of the copy, and runs no
//!   policy: it was authenticated, authorized and counted as the parent.
//!
//! Head bytes name one request: an HTTP/2 head is rebuilt from the header, where two
//! users' requests could be equal once their credentials are gone, so the parent first
//! adds a random `REFRESH_MARK` field (removed before anything goes upstream). An
//! HTTP/1 head is the bytes received: equal heads carry equal credentials, so whichever
//! of two equal records a refresh takes, it is the same identity.
//!
//! Pingora parses the copy as HTTP/1, which refuses the `HTTP/2` version an HTTP/2 head
//! is rebuilt with: without help, an HTTP/2 request's refresh never starts (and its
//! write lock is dropped unreleased). So the parent's header is lent `HTTP/1.1` for the
//! copy and given its version back in its next phase (`give_back`, from
//! `response_filter` or `logging`); the refresh itself runs on the recorded request,
//! with the parent's own version.

use super::Gateway;
use crate::context::Ctx;
use crate::error::Reject;
use crate::policy::{headers, Identity};
use bytes::Bytes;
use http::Version;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Added by a parent to its HTTP/2 header so that its refresh's head bytes are its own.
pub const REFRESH_MARK: &str = "x-gatehouse-refresh";

/// Records a refresh may wait for at once. Past this a stale request revalidates itself
/// (in the foreground) rather than start a refresh that could not be given its identity.
const MAX_PENDING: usize = 1024;

/// A record whose refresh never started (Pingora could not parse the copy) is dropped
/// after this; a refresh starts within microseconds of its record.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// What a refresh takes over from the request that started it.
pub struct Started {
    pub identity: Option<Arc<Identity>>,
    /// The parent's request as the policies left it (credential removed, query
    /// parameter taken out, forwarded fields as decided), without the mark.
    pub request: RequestHeader,
    at: Instant,
}

/// The refreshes Pingora is about to spawn, by the head bytes of their copy.
#[derive(Default)]
pub struct Refreshes {
    pending: Mutex<HashMap<Bytes, Vec<Started>>>,
}

impl Refreshes {
    /// Called by a request that is about to be served stale while Pingora spawns its
    /// refresh. `false` when the record cannot be kept (too many waiting): the request
    /// must then not be served stale, so that no refresh starts without it.
    /// `lent` keeps the parent's own version while its header is lent `HTTP/1.1`.
    pub fn record(
        &self,
        session: &mut Session,
        identity: Option<Arc<Identity>>,
        lent: &mut Option<Version>,
    ) -> bool {
        let mut request = session.req_header().clone();
        request.remove_header(REFRESH_MARK);
        let req = session.req_header_mut();
        let _ = req.insert_header(REFRESH_MARK, headers::new_request_id());
        let version = req.version;
        if version != Version::HTTP_11 && version != Version::HTTP_10 {
            req.set_version(Version::HTTP_11);
            *lent = Some(version);
        }
        let head = session.as_downstream().to_h1_raw();
        let started = Started {
            identity,
            request,
            at: Instant::now(),
        };
        let kept = self.insert(head, started);
        if !kept {
            give_back(session, lent);
        }
        kept
    }

    /// Called by a refresh: what its parent recorded, if anything.
    pub fn take(&self, session: &Session) -> Option<Started> {
        self.remove(&session.as_downstream().to_h1_raw())
    }

    fn insert(&self, head: Bytes, started: Started) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        let now = started.at;
        pending.retain(|_, v| {
            v.retain(|s| now.saturating_duration_since(s.at) < MAX_WAIT);
            !v.is_empty()
        });
        if pending.values().map(Vec::len).sum::<usize>() >= MAX_PENDING {
            return false;
        }
        pending.entry(head).or_default().push(started);
        true
    }

    fn remove(&self, head: &Bytes) -> Option<Started> {
        let mut pending = self.pending.lock().ok()?;
        let list = pending.get_mut(head)?;
        let started = list.remove(0);
        if list.is_empty() {
            pending.remove(head);
        }
        Some(started)
    }
}

/// The parent's header as it was before `record`: its own version, no mark. Does nothing
/// when nothing was lent.
pub fn give_back(session: &mut Session, lent: &mut Option<Version>) {
    if let Some(version) = lent.take() {
        let req = session.req_header_mut();
        req.set_version(version);
        req.remove_header(REFRESH_MARK);
    }
}

impl Gateway {
    /// `request_filter` for a stale-while-revalidate refresh (a Pingora subrequest): the
    /// request and identity its parent recorded replace the copy Pingora made, then
    /// admission runs as for any request, and no policy runs (the parent was
    /// authenticated, authorized and counted). A refresh on a route with policies whose
    /// record is missing is refused rather than sent upstream without its identity.
    pub(super) async fn refresh_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<bool> {
        ctx.request.refresh = true;
        let started = self.refreshes.take(session);
        let recorded = started.is_some();
        if let Some(s) = started {
            *session.req_header_mut() = s.request;
            ctx.identity = s.identity;
        }
        let reject = self.admit(session, ctx).or_else(|| {
            let policies = ctx.route().is_some_and(|r| !r.policies.is_empty());
            (policies && !recorded).then_some(Reject::Internal)
        });
        if let Some(reject) = reject {
            tracing::debug!("background refresh refused: {}", reject.slug());
            // Hand the entry's write lock back now, so the next request revalidates.
            if let Some(sub) = session.subrequest_ctx.as_mut() {
                sub.release_write_lock();
            }
            super::respond(session, ctx, reject).await?;
            return Ok(true);
        }
        // The recorded request had these removed already; a copy without a record (a
        // route without policies) is the client's own bytes.
        headers::strip_client_fields(session.req_header_mut(), ctx.request.forwarded_trusted);
        super::traffic::choose_split(session, ctx);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(n: usize, at: Instant) -> Started {
        Started {
            identity: None,
            request: RequestHeader::build("GET", format!("/{n}").as_bytes(), None).unwrap(),
            at,
        }
    }

    fn head(n: usize) -> Bytes {
        Bytes::from(format!("GET /{n} HTTP/1.1\r\n\r\n"))
    }

    #[test]
    fn equal_heads_are_taken_in_order_and_once() {
        let r = Refreshes::default();
        let now = Instant::now();
        assert!(r.insert(head(0), started(1, now)));
        assert!(r.insert(head(0), started(2, now)));
        assert!(r.insert(head(1), started(3, now)));
        assert_eq!(r.remove(&head(0)).unwrap().request.uri.path(), "/1");
        assert_eq!(r.remove(&head(0)).unwrap().request.uri.path(), "/2");
        assert!(r.remove(&head(0)).is_none());
        assert_eq!(r.remove(&head(1)).unwrap().request.uri.path(), "/3");
        assert!(r.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn records_are_bounded_in_number_and_in_age() {
        let r = Refreshes::default();
        let now = Instant::now();
        for n in 0..MAX_PENDING {
            assert!(r.insert(head(n), started(n, now)));
        }
        assert!(
            !r.insert(head(MAX_PENDING), started(0, now)),
            "over the cap"
        );
        // Records older than MAX_WAIT make room when the next one comes.
        let later = now + MAX_WAIT;
        assert!(r.insert(head(0), started(0, later)));
        assert_eq!(r.pending.lock().unwrap().len(), 1);
    }
}
