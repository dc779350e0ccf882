//! An issuer's keys and where they come from: `hmac_secret` and `jwks_file` (read with
//! the config) plus `jwks_url`, fetched at startup and then refreshed in the background.
//!
//! - The refresh interval honours the response's `Cache-Control: max-age`, clamped to
//!   [1 min, 24 h] (5 min when there is none; 1 min after a failure).
//! - A token whose `kid` is unknown triggers a fetch at once, at most once per 10 s per
//!   issuer; concurrent requests wait for that fetch instead of failing beside it.
//! - A failed or malformed fetch (not a JWKS, or no usable key in it) never replaces
//!   the keys already loaded: they go on serving.
//! - Fetches have a timeout and a size limit, and are counted in
//!   `gatehouse_jwks_refreshes_total{issuer,result}` (`ok`, `error`, `malformed`).
//!
//! The background task holds a weak reference, so it ends when a reload drops the
//! issuer; an unchanged issuer is reused across reloads with its keys and its task.

use super::keys::{parse_jwks, Alg, KeySet, VerifyKey};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
pub const REFETCH_WINDOW: Duration = Duration::from_secs(10);
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

pub struct KeySource {
    /// The issuer's `name`: the metric label and log field.
    pub issuer: String,
    url: Option<String>,
    algs: Vec<Alg>,
    /// Keys from `hmac_secret` and `jwks_file`; every fetched set is added to these.
    fixed: Vec<Arc<VerifyKey>>,
    current: ArcSwap<KeySet>,
    last_refetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
    started: AtomicBool,
}

/// The outcome of one fetch, as the metric labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// New keys are in; `max-age` of the response, if any.
    Ok(Option<Duration>),
    Error(String),
    Malformed(String),
}

impl KeySource {
    pub fn new(
        issuer: &str,
        url: Option<String>,
        fixed: Vec<Arc<VerifyKey>>,
        algs: Vec<Alg>,
    ) -> Self {
        KeySource {
            issuer: issuer.to_string(),
            url,
            algs,
            current: ArcSwap::from_pointee(KeySet {
                keys: fixed.clone(),
            }),
            fixed,
            last_refetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
        }
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn has_url(&self) -> bool {
        self.url.is_some()
    }

    /// Fetches the JWKS once (startup) and starts the background refresh. Idempotent:
    /// a source reused by a reload is already running.
    pub async fn start(self: &Arc<Self>) {
        if self.url.is_none() || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let first = {
            let _g = self.fetch_lock.lock().await;
            self.fetch().await
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(refresh_loop(weak, next_refresh(&first)));
    }

    /// True (and the window restarts) when an unknown-kid fetch may run at `now`.
    pub fn allow_refetch(&self, now: Instant) -> bool {
        let Ok(mut last) = self.last_refetch.lock() else {
            return false;
        };
        match *last {
            Some(t) if now.saturating_duration_since(t) < REFETCH_WINDOW => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// A token named a key we do not have: fetch now if the rate limit allows, else wait
    /// for a fetch already under way. Returns the keys to retry with.
    pub async fn refetch_for_unknown_kid(&self, now: Instant) -> Arc<KeySet> {
        if self.url.is_none() {
            return self.keys();
        }
        let _g = self.fetch_lock.lock().await;
        if self.allow_refetch(now) {
            self.fetch().await;
        }
        self.keys()
    }

    /// One fetch; on success the new keys replace the fetched ones. Callers hold
    /// `fetch_lock`.
    pub async fn fetch(&self) -> Fetched {
        let Some(url) = &self.url else {
            return Fetched::Error("no jwks_url".into());
        };
        let outcome = match get(url).await {
            Err(e) => Fetched::Error(e),
            Ok((body, max_age)) => match parse_jwks(&body, &self.algs, false) {
                Err(e) => Fetched::Malformed(e.to_string()),
                Ok(p) if p.keys.is_empty() => {
                    Fetched::Malformed(format!("no usable key ({})", p.skipped.join("; ")))
                }
                Ok(p) => {
                    let mut keys = self.fixed.clone();
                    keys.extend(p.keys);
                    self.current.store(Arc::new(KeySet { keys }));
                    Fetched::Ok(max_age)
                }
            },
        };
        let label = match &outcome {
            Fetched::Ok(_) => "ok",
            Fetched::Error(e) => {
                tracing::warn!(issuer = %self.issuer, url = %url, error = %e, "JWKS fetch failed; keeping the keys already loaded");
                "error"
            }
            Fetched::Malformed(e) => {
                tracing::warn!(issuer = %self.issuer, url = %url, error = %e, "JWKS is malformed; keeping the keys already loaded");
                "malformed"
            }
        };
        crate::metrics::metrics()
            .jwks_refreshes
            .with_label_values(&[&self.issuer, label])
            .inc();
        outcome
    }
}

async fn refresh_loop(weak: Weak<KeySource>, mut wait: Duration) {
    loop {
        tokio::time::sleep(wait).await;
        let Some(src) = weak.upgrade() else { return };
        let out = {
            let _g = src.fetch_lock.lock().await;
            src.fetch().await
        };
        wait = next_refresh(&out);
    }
}

/// When to refresh next after `out`.
pub fn next_refresh(out: &Fetched) -> Duration {
    match out {
        Fetched::Ok(max_age) => max_age
            .unwrap_or(DEFAULT_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH),
        _ => MIN_REFRESH,
    }
}

/// `max-age` from a Cache-Control value; `no-cache`/`no-store` mean "as soon as allowed".
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut out = None;
    for d in cache_control.split(',') {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        if let Some((k, v)) = d.split_once('=') {
            if k.trim().eq_ignore_ascii_case("max-age") {
                out = v
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    out
}

fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::limited(3))
                .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// GET with the timeout and size limit; the body and the response's max-age.
async fn get(url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
    let mut resp = client()?
        .get(url)
        .header("accept", "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP status {}", resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let max_age = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_clamped() {
        let at = |cc: &str| next_refresh(&Fetched::Ok(max_age(cc)));
        assert_eq!(at("public, max-age=600"), Duration::from_secs(600));
        assert_eq!(at("max-age=5"), MIN_REFRESH);
        assert_eq!(at("no-store"), MIN_REFRESH);
        assert_eq!(at("max-age=999999999"), MAX_REFRESH);
        assert_eq!(at(""), DEFAULT_REFRESH);
        assert_eq!(at("Max-Age=\"120\""), Duration::from_secs(120));
        assert_eq!(next_refresh(&Fetched::Error("x".into())), MIN_REFRESH);
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited_per_issuer() {
        let a = KeySource::new("a", Some("http://127.0.0.1:1/".into()), vec![], vec![]);
        let b = KeySource::new("b", Some("http://127.0.0.1:1/".into()), vec![], vec![]);
        let t0 = Instant::now();
        assert!(a.allow_refetch(t0));
        assert!(!a.allow_refetch(t0 + Duration::from_secs(1)));
        assert!(!a.allow_refetch(t0 + Duration::from_millis(9_999)));
        // Another issuer has its own window.
        assert!(b.allow_refetch(t0 + Duration::from_secs(1)));
        assert!(a.allow_refetch(t0 + Duration::from_secs(10)));
        assert!(!a.allow_refetch(t0 + Duration::from_secs(15)));
    }
}
