//! The listening half of every in-process test server (`upstream::Upstream`,
//! `origin::Origin`): a hyper server (HTTP/1.1 and h2c on one port) on a loopback port that
//! can be stopped like a killed process and restarted on the same port. What it answers is
//! the owner's handler; this module only accepts, serves and counts connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type ServeConn = Arc<dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct Server {
    pub port: u16,
    /// What the panic says when the port cannot be bound ("upstream", "origin").
    what: &'static str,
    serve: ServeConn,
    connections: Arc<AtomicUsize>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    /// Listens on `port` (0 = ephemeral) and answers every request with `handler`.
    pub async fn start<H, F, B>(what: &'static str, port: u16, handler: H) -> Server
    where
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let handler = Arc::new(handler);
        let serve: ServeConn = Arc::new(move |stream: TcpStream| {
            let handler = handler.clone();
            Box::pin(async move {
                let svc = hyper::service::service_fn(move |req| handler(req));
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            })
        });
        let listener = loop {
            let listener = bind(what, port).await;
            let bound = listener.local_addr().expect("local addr").port();
            // An ephemeral port must not be one another test was handed (`claim_port`);
            // a port the test chose is its own business.
            if port != 0 || super::claim_port(bound) {
                break listener;
            }
        };
        let port = listener.local_addr().expect("local addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(listener, serve.clone(), connections.clone()));
        Server {
            port,
            what,
            serve,
            connections,
            task: Mutex::new(Some(task)),
        }
    }

    /// TCP connections accepted so far, over restarts.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Hard stop: closes the listener and every open connection, like a
    /// killed process. The port then refuses connections.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        // Let the aborted connection tasks be dropped (sockets closed).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Listens again on the same port, with the same handler and its state.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = bind(self.what, self.port).await;
        let task = tokio::spawn(accept_loop(
            listener,
            self.serve.clone(),
            self.connections.clone(),
        ));
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

async fn bind(what: &str, port: u16) -> TcpListener {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // A restart can race the old socket's teardown: retry briefly.
    let mut last_err = None;
    for _ in 0..100 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_reuseaddr(true).expect("SO_REUSEADDR");
        match sock.bind(addr).and_then(|_| sock.listen(1024)) {
            Ok(l) => return l,
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} cannot bind {addr}: {last_err:?}");
}

async fn accept_loop(listener: TcpListener, serve: ServeConn, connections: Arc<AtomicUsize>) {
    // Owned here so that aborting this task drops (closes) every connection.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.fetch_add(1, Ordering::SeqCst);
        conns.spawn(serve(stream));
    }
}
