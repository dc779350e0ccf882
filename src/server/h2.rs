//! HTTP/2 connections' deadlines, on top of Pingora's own h2 loop.
//!
//! Pingora's h2 loop (`ServerApp::process_new` of `HttpProxy`) has no deadline of its
//! own for a client that never sends its connection preface (its handshake waits for
//! it for ever), and it closes an idle connection only when its server options say
//! so. So, as on HTTP/1:
//! - **The preface is due within `server.header_timeout` of accept.** For h2c the
//!   connection loop peeks it before handing over. Over TLS the decrypted bytes cannot
//!   be peeked (Pingora's TLS stream has no peek), so the loop reads the preface itself
//!   under the deadline and hands the stream over inside [`Rewound`], which gives those
//!   bytes back to Pingora's h2 handshake first. A connection without one is closed
//!   quietly, as a silent HTTP/1 one is (had Pingora's handshake waited for it and
//!   failed, it would log an error line per attack connection).
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
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// A stream whose first reads return the connection preface already read off it, then
/// read from the stream.
#[derive(Debug)]
pub(super) struct Rewound {
    inner: Stream,
    /// Preface bytes given back so far.
    at: usize,
}

impl Rewound {
    /// `inner` has had exactly `PREFACE` read off it.
    pub(super) fn new(inner: Stream) -> Rewound {
        Rewound { inner, at: 0 }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.at < PREFACE.len() {
            let n = buf.remaining().min(PREFACE.len() - me.at);
            buf.put_slice(&PREFACE[me.at..me.at + n]);
            me.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
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
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewound {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewound {
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

impl GetTimingDigest for Rewound {
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

impl GetProxyDigest for Rewound {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Rewound {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Rewound {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_preface_comes_first_then_the_stream() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let server: pingora::protocols::l4::stream::Stream = server.into();
        let mut s = Rewound::new(Box::new(server));
        client.write_all(b"after").await.unwrap();
        // In pieces smaller than the preface, as a reader with a small buffer asks.
        let mut got = Vec::new();
        let mut buf = [0u8; 10];
        while got.len() < PREFACE.len() + 5 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        assert_eq!(&got[PREFACE.len()..], b"after");
    }
}
