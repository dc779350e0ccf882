//! `gatehouse-echo`: a small, fast echo backend for the demo, the tests and
//! the load tests.
//!
//! One hyper server per `--listen` address; the hyper-util auto builder
//! serves HTTP/1.1 and HTTP/2 prior knowledge (h2c) on the same port.
//! Every response carries `X-Echo-Name` and `X-Echo-Port`. By default the
//! request is described back as JSON; `--body-size N` answers N bytes of
//! `x` instead (a body built once at start, so the load-test hot path
//! allocates nothing big). Query parameters `delay_ms`, `status` and `size`
//! override the behaviour per request. Nothing is logged per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(name = "gatehouse-echo", about = "Fast HTTP/1.1 + h2c echo backend")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9001 (repeatable).
    #[arg(long = "listen", required = true)]
    listen: Vec<String>,
    /// Value of the X-Echo-Name response header and the `name` JSON field.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Delay before every answer except /healthz, e.g. 50ms, 1s.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Answer exactly N bytes of `x` (text/plain) instead of JSON.
    #[arg(long)]
    body_size: Option<usize>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}`: missing unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    }
}

/// Settings shared by every connection, built once.
struct Echo {
    name: String,
    name_header: HeaderValue,
    delay: Option<Duration>,
    /// The `--body-size` body, if any.
    fixed_body: Option<Bytes>,
    /// A pool of `x` bytes that `size=N` answers are sliced from.
    filler: Bytes,
}

const FILLER_LEN: usize = 64 * 1024;
static X_ECHO_NAME: HeaderName = HeaderName::from_static("x-echo-name");
static X_ECHO_PORT: HeaderName = HeaderName::from_static("x-echo-port");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Echo {
    fn x_body(&self, n: usize) -> Bytes {
        if n <= self.filler.len() {
            self.filler.slice(..n)
        } else {
            Bytes::from(vec![b'x'; n])
        }
    }
}

/// Per-request overrides from the query string.
#[derive(Default)]
struct Overrides {
    delay: Option<Duration>,
    status: Option<StatusCode>,
    size: Option<usize>,
}

fn overrides(query: Option<&str>) -> Overrides {
    let mut o = Overrides::default();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "delay_ms" => o.delay = v.parse().ok().map(Duration::from_millis),
            "status" => o.status = v.parse().ok().and_then(|s| StatusCode::from_u16(s).ok()),
            "size" => o.size = v.parse().ok(),
            _ => {}
        }
    }
    o
}

fn headers_json(headers: &hyper::HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value;
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.pop().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        map.insert(name.as_str().to_owned(), value);
    }
    map
}

async fn handle(
    echo: Arc<Echo>,
    port: u16,
    port_header: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = if req.uri().path() == "/healthz" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        r.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN.clone());
        r
    } else {
        answer(&echo, port, req).await
    };
    let h = resp.headers_mut();
    h.insert(X_ECHO_NAME.clone(), echo.name_header.clone());
    h.insert(X_ECHO_PORT.clone(), port_header);
    Ok(resp)
}

async fn answer(echo: &Echo, port: u16, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let o = overrides(req.uri().query());
    let (parts, mut body) = req.into_parts();
    // Read the body fully, counting without keeping it.
    let mut body_len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    if let Some(d) = o.delay.or(echo.delay) {
        tokio::time::sleep(d).await;
    }
    let (body, ctype) = match (o.size, &echo.fixed_body) {
        (Some(n), _) => (echo.x_body(n), &TEXT_PLAIN),
        (None, Some(b)) => (b.clone(), &TEXT_PLAIN),
        (None, None) => (
            Bytes::from(describe(echo, port, &parts, body_len)),
            &APPLICATION_JSON,
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = o.status.unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(CONTENT_TYPE, ctype.clone());
    resp
}

fn describe(echo: &Echo, port: u16, req: &hyper::http::request::Parts, body_len: usize) -> Vec<u8> {
    let v = serde_json::json!({
        "name": echo.name,
        "port": port,
        "method": req.method.as_str(),
        "path": req.uri.path(),
        "query": req.uri.query().unwrap_or(""),
        "version": format!("{:?}", req.version),
        "headers": headers_json(&req.headers),
        "body_len": body_len,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn serve_conn(
    echo: Arc<Echo>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
) {
    let _ = stream.set_nodelay(true);
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let port_header = HeaderValue::from(port);
    let svc =
        hyper::service::service_fn(move |req| handle(echo.clone(), port, port_header.clone(), req));
    // Client resets and protocol errors end the connection; nothing to log.
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

async fn accept_loop(
    listener: TcpListener,
    echo: Arc<Echo>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(echo.clone(), builder.clone(), stream));
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn run(args: Args) -> i32 {
    let echo = Arc::new(Echo {
        name_header: match HeaderValue::from_str(&args.name) {
            Ok(v) => v,
            Err(_) => {
                eprintln!("gatehouse-echo: --name must be a valid header value");
                return 2;
            }
        },
        name: args.name,
        delay: args.delay,
        fixed_body: args.body_size.map(|n| Bytes::from(vec![b'x'; n])),
        filler: Bytes::from(vec![b'x'; FILLER_LEN]),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);

    let mut listeners = Vec::new();
    for addr in &args.listen {
        match TcpListener::bind(addr.as_str()).await {
            Ok(l) => {
                let local: Option<SocketAddr> = l.local_addr().ok();
                eprintln!(
                    "gatehouse-echo: {} listening on {}",
                    echo.name,
                    local.map_or_else(|| addr.clone(), |a| a.to_string())
                );
                listeners.push(l);
            }
            Err(e) => {
                eprintln!("gatehouse-echo: cannot bind {addr}: {e}");
                return 1;
            }
        }
    }
    for l in listeners {
        tokio::spawn(accept_loop(l, echo.clone(), builder.clone()));
    }
    wait_for_signal().await;
    0
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() {
    let args = Args::parse();
    let threads = args.threads.max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse-echo: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(args));
    // Open connections are not drained: an echo server has nothing to save.
    std::process::exit(code);
}
