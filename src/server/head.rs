//! Reading and checking a request head before Pingora gets it (steps 2 and 3 of the
//! connection loop in `server`): `read_head` bounds it by size and deadline, `check`
//! tells the heads Pingora takes as they are from the ones its own parser must judge
//! (`pingora_refusal`), and `HeadInfo` is what the access log says of a refused one.

use crate::error::Reject;
use bytes::{BufMut, BytesMut};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::time::timeout_at;

/// Pingora's own limit on header fields (`MAX_HEADERS` in its v1 parser).
const MAX_FIELDS: usize = 256;

pub(super) enum HeadRead {
    /// The bytes read (the head and possibly more) and where the head ends.
    Done(BytesMut, usize),
    /// The client closed or the read failed mid-head: nobody to answer.
    Closed,
    /// Too large or too late; the partial head is for the access log.
    Refuse(Reject, BytesMut),
}

/// Reads until the head is complete, at most `limit` bytes, before `due`.
pub(super) async fn read_head(
    stream: &mut Stream,
    first: &[u8],
    limit: usize,
    due: Instant,
) -> HeadRead {
    let mut head = BytesMut::from(first);
    let mut scan = 0;
    loop {
        if let Some(end) = head_end(&head, &mut scan) {
            if end > limit {
                return HeadRead::Refuse(Reject::HeadersTooLarge, head);
            }
            return HeadRead::Done(head, end);
        }
        if head.len() >= limit {
            return HeadRead::Refuse(Reject::HeadersTooLarge, head);
        }
        // Room for the next read grows with what came (2 KiB, then the head's size, up to
        // 16 KiB): a whole small head still arrives in one read, while a client that
        // trickles its head holds a 2–4 KiB buffer until the head deadline, not 16–32 KiB.
        let want = (limit - head.len()).min(head.len().clamp(2 * 1024, 16 * 1024));
        head.reserve(want);
        match timeout_at(due.into(), stream.read_buf(&mut (&mut head).limit(want))).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return HeadRead::Closed,
            Err(_) => return HeadRead::Refuse(Reject::RequestTimeout, head),
        }
    }
}

/// The end of the request head (just past its empty line), searching from `*scan` on.
/// Empty lines before the request line are skipped, as httparse (and RFC 9112 §2.2) do.
fn head_end(buf: &[u8], scan: &mut usize) -> Option<usize> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let from = (*scan).max(start);
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') => match buf.get(nl + 2) {
                Some(b'\n') => return Some(nl + 3),
                Some(_) => {}
                None => {
                    *scan = nl;
                    return None;
                }
            },
            Some(_) => {}
            None => {
                *scan = nl;
                return None;
            }
        }
        i = nl + 1;
    }
    *scan = buf.len();
    None
}

/// What the access log says about a refused head.
#[derive(Default)]
pub(super) struct HeadInfo {
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
}

impl HeadInfo {
    /// The request line of a head that may be incomplete.
    pub(super) fn from_partial(buf: &[u8]) -> HeadInfo {
        let start = buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(buf.len());
        let line_end = buf[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |e| start + e);
        let line = String::from_utf8_lossy(&buf[start..line_end]);
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().filter(|m| !m.is_empty()).map(clip);
        let path = parts.next().map(clip);
        HeadInfo {
            method,
            path,
            host: None,
        }
    }

    /// The method as a metric label: a registered method, or `OTHER`, so that invented
    /// methods in refused heads cannot create series.
    pub(super) fn method_label(&self) -> &'static str {
        self.method
            .as_deref()
            .map_or("OTHER", crate::metrics::method_label)
    }
}

/// Access-log values are the client's bytes: long ones are cut.
fn clip(s: &str) -> String {
    const MAX: usize = 1024;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

pub(super) enum Check {
    /// Pingora will take this head as it is; `upgrade`: it has an `Upgrade` field.
    Plain { upgrade: bool },
    /// Pingora may refuse it: ask its parser.
    Pingora(HeadInfo),
}

/// One httparse pass over a complete head. Anything Pingora's `read_request` could
/// refuse after httparse accepted it involves a framing field, `Host`, a target that is
/// not plain origin-form, or CONNECT; those heads (and the ones httparse refuses, which
/// Pingora may still accept after escaping the request line) are checked by Pingora.
pub(super) fn check(head: &[u8]) -> Check {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(head);
    let info = || HeadInfo::from_partial(head);
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Check::Pingora(info()),
    }
    let info_with_host = || {
        let mut i = info();
        i.host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| clip(&String::from_utf8_lossy(h.value)));
        i
    };
    if req.method == Some("CONNECT") {
        return Check::Pingora(info_with_host());
    }
    let plain_target = req.path.is_some_and(|p| {
        p.starts_with('/')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
    });
    if !plain_target {
        return Check::Pingora(info_with_host());
    }
    let (mut hosts, mut lengths, mut upgrade) = (0, 0, false);
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 || h.value.contains(&b'@') {
                return Check::Pingora(info_with_host());
            }
        } else if n.eq_ignore_ascii_case(b"content-length") {
            // One plain decimal length (the usual POST) is what Pingora accepts as is;
            // lists, repeats and anything else go to its reconciliation rules.
            lengths += 1;
            let digits =
                (1..=18).contains(&h.value.len()) && h.value.iter().all(u8::is_ascii_digit);
            if lengths > 1 || !digits {
                return Check::Pingora(info_with_host());
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            return Check::Pingora(info_with_host());
        } else if n.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    Check::Plain { upgrade }
}

/// Runs Pingora's own request parser and validation over a complete head, on a
/// throwaway session over an empty in-memory stream (the head is its pipelined prefix,
/// so nothing is read). `Some(detail)` when Pingora refuses it.
pub(super) async fn pingora_refusal(head: &[u8]) -> Option<String> {
    let io: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
    let mut probe = ServerSession::new_http1(io);
    probe.set_pipelined_prefix(BytesMut::from(head));
    match probe.read_request().await {
        Ok(true) => {
            if probe.req_header().method == http::Method::CONNECT {
                Some("CONNECT is not supported".into())
            } else {
                None
            }
        }
        Ok(false) => Some("the request head is incomplete".into()),
        // Pingora's context names the rule (never the client's bytes: the "buf:" part of
        // a parse error is dropped).
        Err(e) => Some(match e.context.as_ref().map(|c| c.as_str().to_string()) {
            Some(c) if !c.starts_with("buf:") && !c.is_empty() => {
                format!("the request head is malformed: {}", clip(&c))
            }
            _ => "the request head is malformed".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(s: &[u8]) -> Option<usize> {
        let mut scan = 0;
        head_end(s, &mut scan)
    }

    #[test]
    fn head_ends() {
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
        assert_eq!(end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(end(b"\r\n"), None);
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let full = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        for split in 1..full.len() {
            let mut scan = 0;
            let mut got = head_end(&full[..split], &mut scan);
            if got.is_none() {
                got = head_end(full, &mut scan);
            }
            assert_eq!(got, Some(full.len()), "split at {split}");
        }
    }

    #[test]
    fn only_unusual_heads_go_to_pingora() {
        for h in [
            &b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 120\r\n\r\n",
        ] {
            assert!(
                matches!(check(h), Check::Plain { upgrade: false }),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
        for h in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"THIS IS NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(check(h), Check::Pingora(_)),
                "{}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn upgrade_requests_are_told_apart() {
        let ws =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUPGRADE: websocket\r\n\r\n";
        assert!(matches!(check(ws), Check::Plain { upgrade: true }));
        let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        assert!(matches!(check(plain), Check::Plain { upgrade: false }));
    }

    #[tokio::test]
    async fn pingora_verdicts() {
        assert_eq!(
            pingora_refusal(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n").await,
            None
        );
        assert!(pingora_refusal(b"THIS IS NOT HTTP\r\n\r\n").await.is_some());
        assert!(pingora_refusal(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
        )
        .await
        .is_some());
        assert!(
            pingora_refusal(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n")
                .await
                .is_some()
        );
    }
}
