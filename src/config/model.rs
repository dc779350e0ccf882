//! The file format, exactly as operators write it (contract: docs/CONFIG.md, the repo's copy
//! of the project's configuration contract).
//! Every struct denies unknown keys. These types are parsed and validated, then compiled
//! into runtime types (`runtime::Snapshot`); nothing reads them on the request path.
//! Required keys of list items (route `name`/`upstream`, listener `name`/`address`,
//! target `address`) default to empty and are checked by validation, so a misspelt
//! required key gives "unknown field" plus "missing", and the rest of the file is still
//! checked.

use super::units::{Dur, Rate, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Config {
    pub version: u32,
    pub server: Server,
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub store: Option<Store>,
    pub cache: Option<Cache>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub auth: Option<Auth>,
    pub tiers: BTreeMap<String, Tier>,
    pub consumers: Vec<Consumer>,
    pub routes: Vec<Route>,
    pub access_log: AccessLog,
    /// OpenTelemetry traces (`config::tracing`); absent: none.
    pub tracing: Option<super::tracing::Tracing>,
    /// YAML paths (`routes[0].request_headers.set.X-Key`) of the strings that referenced
    /// `${VAR}`: such values may be secrets, and `/admin/config` redacts them.
    #[serde(skip)]
    pub env_filled: std::collections::BTreeSet<String>,
}

fn default_grace() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn default_shutdown_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_data_dir() -> String {
    "./data".into()
}
fn default_pid_file() -> String {
    "/tmp/gatehouse.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/gatehouse-upgrade.sock".into()
}
fn default_max_header_size() -> Size {
    Size(32 * 1024)
}
fn default_threads() -> usize {
    1
}
fn default_header_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_body_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(20))
}
fn default_body_min_rate() -> u64 {
    500
}
fn default_send_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_keepalive_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    #[serde(default = "default_grace")]
    pub grace_period: Dur,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// Extension: total size of request headers above which the answer is 431.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: Size,
    /// Extension: CIDRs whose `X-Forwarded-For` is believed (used by limits by IP).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The whole request head must arrive within this (from accept, or from the first
    /// byte of a later request on a keep-alive connection), or the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// A request body (HTTP/1, or HTTP/2 but gRPC) must arrive within this from when its
    /// reading starts, plus one second per `body_min_rate` bytes received (Apache
    /// `mod_reqtimeout`'s body rule): a body that stalls or trickles is answered 408 (and
    /// an HTTP/1 connection closed).
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Dur,
    /// Bytes per second of body that extend `body_timeout` by one second; 0 = the
    /// deadline is `body_timeout` from the head, whatever arrives.
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate: u64,
    /// Extension (nginx's `send_timeout`): a write of the response to the client that
    /// makes no progress for this long ends the request and closes the connection.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// Value of the `Server` response field; empty = no `Server` field at all.
    #[serde(default)]
    pub server_header: String,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: default_threads(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            grace_period: default_grace(),
            shutdown_timeout: default_shutdown_timeout(),
            data_dir: default_data_dir(),
            max_header_size: default_max_header_size(),
            trusted_proxies: Vec::new(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            body_min_rate: default_body_min_rate(),
            send_timeout: default_send_timeout(),
            server_header: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Extension: add `Server-Timing` to every response of this listener.
    #[serde(default)]
    pub server_timing: bool,
    /// On a plaintext listener: HTTP/2 with prior knowledge (h2c) beside HTTP/1.1. A TLS
    /// listener offers HTTP/2 through `tls.http2` (ALPN) instead.
    #[serde(default)]
    pub http2: bool,
    /// Open connections above which new ones are refused at accept (and counted).
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// An idle HTTP/1 keep-alive connection is closed after this, and an HTTP/2 one with
    /// no open stream.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Extension: requests served on one HTTP/1 connection; the last answer says
    /// `Connection: close` (nginx's `keepalive_requests`). Unset = no limit.
    #[serde(default)]
    pub keepalive_requests: Option<u32>,
    /// What to do with paths that backends may read differently (every key: `reject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_policy: Option<PathPolicy>,
    /// Client addresses admitted on this listener (`config::edge`); a route's `ip` must
    /// pass too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<super::edge::IpRules>,
}

/// `path_policy:` of a listener (an unset key is `reject`) or of a route (an unset key is
/// the listener's).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// `%2F` and `%5C`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slash: Option<EscapedSlashAction>,
    /// A raw `\`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backslash: Option<PathAction>,
    /// A segment that is a dot-segment once its `;` parameter is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_params: Option<PathAction>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashAction {
    Reject,
    Decode,
    Keep,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathAction {
    Reject,
    Keep,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub certificates: Vec<CertificatePair>,
    #[serde(default)]
    pub http2: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: String,
    #[serde(default)]
    pub token: Option<String>,
    /// `GET /` serves the status page (`admin::status`).
    #[serde(default)]
    pub ui: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    FailOpen,
    FailClosed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    #[serde(default)]
    pub backend: StoreBackend,
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub sync_interval: Option<Dur>,
    /// Extension: live keys kept per limit (default 1048576); past it the buckets
    /// closest to full are dropped first.
    #[serde(default)]
    pub max_keys: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub memory: Size,
    #[serde(default)]
    pub max_object_size: Option<Size>,
    #[serde(default)]
    pub lock_timeout: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastRequests,
    ConsistentHash,
}

fn default_weight() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: usize,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default)]
    pub connect: Option<Dur>,
    #[serde(default)]
    pub read: Option<Dur>,
    #[serde(default)]
    pub write: Option<Dur>,
    #[serde(default)]
    pub idle: Option<Dur>,
}

fn default_retries() -> usize {
    1
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub sni: Option<String>,
    /// Extension: verify the targets' certificates (on by default; turn off only in tests).
    #[serde(default = "default_true")]
    pub verify: bool,
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_retries")]
    pub retries: usize,
    #[serde(default)]
    pub max_inflight: usize,
    #[serde(default)]
    pub health: Health,
    /// Traffic management (`config::traffic`): the upstream's circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<super::traffic::Breaker>,
    /// Per-target ejection on consecutive failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<super::traffic::Outlier>,
    /// Which failures `retries` applies to, its budget and backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<super::traffic::Retry>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub active: Option<ActiveHealth>,
    #[serde(default)]
    pub passive: Option<PassiveHealth>,
}

fn default_interval() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn default_check_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}
fn default_two() -> u32 {
    2
}
fn default_five() -> u32 {
    5
}
fn default_cooldown() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    #[serde(default)]
    pub http_path: Option<String>,
    #[serde(default)]
    pub tcp: bool,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_two")]
    pub healthy_after: u32,
    #[serde(default = "default_two")]
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default = "default_five")]
    pub unhealthy_after: u32,
    #[serde(default = "default_cooldown")]
    pub cooldown: Dur,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub api_key: Option<ApiKeyAuth>,
    #[serde(default)]
    pub jwt: Vec<JwtIssuer>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    #[serde(default)]
    pub query: Option<String>,
}

fn default_api_key_header() -> String {
    "X-API-Key".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuer {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
    #[serde(default)]
    pub scope_claim: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub quota: Option<Rate>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub id: String,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    pub limit: Rate,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub sync_interval: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteQuota {
    pub limit: Rate,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    #[serde(default)]
    pub ttl: Option<Dur>,
    #[serde(default)]
    pub vary: Vec<String>,
    /// Extension: store responses that carry `Set-Cookie` (refused by default, since the
    /// cookie would be handed to every client the entry is served to).
    #[serde(default)]
    pub store_set_cookie: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    #[serde(default)]
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extension: pass the credential (API key header or query parameter, bearer token)
    /// on to the upstream instead of removing it.
    #[serde(default)]
    pub auth_forward_credential: bool,
    #[serde(default)]
    pub rate_limit: Option<RouteRateLimit>,
    #[serde(default)]
    pub quota: Option<RouteQuota>,
    #[serde(default)]
    pub cache: Option<RouteCache>,
    #[serde(default)]
    pub request_headers: HeaderOps,
    #[serde(default)]
    pub response_headers: HeaderOps,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Extension: add `Server-Timing` to this route's responses.
    #[serde(default)]
    pub server_timing: bool,
    /// Overrides the listener's `path_policy`, key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_policy: Option<PathPolicy>,
    /// Extension: keep the client's `X-Forwarded-Host`, `Forwarded`, `X-Original-URL`,
    /// `X-Rewrite-URL` (and the other URL-building fields) when the peer is one of
    /// `server.trusted_proxies`; the cache then keys on them. Otherwise they are removed.
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    /// Traffic management: the total time of all attempts at the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Dur>,
    /// JSON operations on the request body (config/transform.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<super::transform::RequestBody>,
    /// JSON operations and XML to JSON on the response body (config/transform.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<super::transform::ResponseBody>,
    /// The route answers from parallel upstream calls instead of proxying (no `upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<super::transform::Aggregate>,
    /// `websocket:` the route accepts WebSocket upgrades, within these limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<super::streaming::WebSocket>,
    /// `grpc:` gRPC options (the gRPC-web bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<super::streaming::Grpc>,
    /// Edge policies (`config::edge`): CORS, client address rules, response compression,
    /// header count and URL length limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<super::edge::Cors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<super::edge::IpRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<super::edge::Compression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_url: Option<Size>,
    /// API versions, each with its upstream (a destination: `config::traffic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<super::route_traffic::Versions>,
    /// Weights over upstreams, sticky by key (a destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<super::route_traffic::Split>,
    /// A fire-and-forget copy of sampled requests to another upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<super::route_traffic::Mirror>,
}

/// Extension: where the JSON access log goes. `stdout` (default), `stderr`, `off`, or a file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default = "default_log_path")]
    pub path: String,
}

fn default_log_path() -> String {
    "stdout".into()
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            path: default_log_path(),
        }
    }
}
