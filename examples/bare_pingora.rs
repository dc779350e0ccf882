//! Pingora's bare proxy: the smallest `ProxyHttp` that forwards every request to one
//! upstream over a keep-alive pool, with no routing, policies, metrics or logging.
//!
//! It is the load-test harness's `pingora` target (loadtest/README.md): the floor any
//! Pingora-based gateway starts from, measured in the same run as Gatehouse and nginx,
//! so the cost of Pingora itself is separated from the cost of our own code.
//!
//! Usage: `bare_pingora LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]`
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The same global allocator as the `gatehouse` binary (src/main.rs), so that the floor
/// and Gatehouse are compared on equal terms: with glibc malloc the bare proxy was ~5%
/// slower (45.7k vs 48.0k req/s, issue 12), which made our own cost look smaller than it is.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR [THREADS] [steal|nosteal]");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let work_stealing = args.next().as_deref() != Some("nosteal");
    let conf = ServerConf {
        threads,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare { upstream });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
