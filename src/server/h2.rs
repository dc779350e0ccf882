//! HTTP/2 connections' deadlines, on top of Pingora's own h2 loop.
//!
//! Pingora's h2 loop (`ServerApp::process_new` of `HttpProxy`) has no deadline of its
//! own for a client that never sends its connection preface (its handshake waits for
//! it for ever), and it closes an idle connection only when its server options say
//! so. So, as on HTTP/1:
//! - **The preface is due within `server.header_timeout` of accept.** For h2c the
//!   connection loop peeks it before handing over. Over TLS the decrypted bytes cannot
//!   be peeked (Pingora's TLS stream has no peek), so the stream is handed over inside
//!   [`PrefaceDue`], whose reads fail once the deadline passes with the preface still
//!   incomplete: Pingora's handshake then ends and the connection is closed.
//! - **An idle connection is closed after the listener's `keepalive_timeout`**: Pingora's
//!   `h2_idle_timeout` server option, which counts from the moment no stream is open
//!   (a stream waiting on a slow upstream keeps its connection). Pingora's h2 loop reads
//!   it from the app it runs, so each distinct value gets a [`ListenerH2`]: the one
//!   shared proxy (one upstream pool) under that listener's options.

use crate::proxy::Gateway;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client connection preface (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The shared proxy as Pingora's h2 loop sees it on one listener: the proxy's own server
/// options with the listener's idle timeout.
pub(super) struct ListenerH2 {
    proxy: Arc<HttpProxy<Gateway>>,
    options: HttpServerOptions,
}

impl ListenerH2 {
    pub(super) fn new(proxy: Arc<HttpProxy<Gateway>>, idle: Duration) -> ListenerH2 {
        let mut options = proxy.server_options.clone().unwrap_or_default();
        options.h2_idle_timeout = Some(idle);
        ListenerH2 { proxy, options }
    }
}

#[async_trait]
impl HttpServerApp for ListenerH2 {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.proxy.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// A stream whose reads fail with `TimedOut` once `due` passes before the first
/// `PREFACE.len()` bytes have been read. After those bytes it is a plain pass-through
/// (one branch per read).
#[derive(Debug)]
pub(super) struct PrefaceDue {
    inner: Stream,
    /// Preface bytes still to come; 0 once the deadline no longer applies.
    left: usize,
    due: Option<Pin<Box<Sleep>>>,
}

impl PrefaceDue {
    pub(super) fn new(inner: Stream, due: Instant) -> PrefaceDue {
        PrefaceDue {
            inner,
            left: PREFACE.len(),
            due: Some(Box::pin(tokio::time::sleep_until(due))),
        }
    }
}

impl AsyncRead for PrefaceDue {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.left == 0 {
            return r;
        }
        match &r {
            Poll::Ready(Ok(())) => {
                me.left = me.left.saturating_sub(buf.filled().len() - before);
                if me.left == 0 {
                    me.due = None;
                }
            }
            Poll::Pending => {
                if let Some(due) = me.due.as_mut() {
                    if due.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 connection preface within header_timeout",
                        )));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        r
    }
}

impl AsyncWrite for PrefaceDue {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for PrefaceDue {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for PrefaceDue {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefaceDue {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefaceDue {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for PrefaceDue {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for PrefaceDue {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for PrefaceDue {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let server: pingora::protocols::l4::stream::Stream = server.into();
        (Box::new(server), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_preface_fails_the_read_at_the_deadline() {
        let (server, mut client) = pair().await;
        let mut s = PrefaceDue::new(server, Instant::now() + Duration::from_secs(5));
        client.write_all(&PREFACE[..10]).await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(n, 10);
        // The rest never comes: the next read ends at the deadline, not before.
        let started = Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_preface_reads_wait_as_long_as_they_need() {
        let (server, mut client) = pair().await;
        let mut s = PrefaceDue::new(server, Instant::now() + Duration::from_secs(5));
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < PREFACE.len() {
            got += s.read(&mut buf[got..]).await.unwrap();
        }
        assert_eq!(&buf[..got], PREFACE);
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"x").await.unwrap();
            client
        });
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        drop(late.await.unwrap());
    }
}
