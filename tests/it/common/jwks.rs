//! A JWKS server on loopback whose document, status and `Cache-Control` a test sets,
//! which counts its fetches, and which can go down and come back on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

struct State {
    status: u16,
    body: String,
    cache_control: String,
}

pub struct JwksServer {
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicUsize>,
    pub addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl JwksServer {
    pub async fn start(body: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let server = JwksServer {
            state: Arc::new(Mutex::new(State {
                status: 200,
                body: body.to_string(),
                cache_control: "max-age=3600".into(),
            })),
            hits: Arc::new(AtomicUsize::new(0)),
            addr,
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let hits = self.hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let state = state.clone();
                let hits = hits.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let resp = {
                        let s = state.lock().unwrap();
                        format!(
                            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nCache-Control: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                            s.status,
                            s.cache_control,
                            s.body.len(),
                            s.body
                        )
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn set_body(&self, body: &str) {
        self.state.lock().unwrap().body = body.to_string();
    }

    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    /// Fetches served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: the port refuses connections.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}
