//! Response compression (`routes[].compression`): gzip, brotli or zstd, chosen from the
//! request's `Accept-Encoding` with its q-values, for responses of the listed media
//! types and at least `min_size`.
//!
//! Where it runs: on the way out, after the cache (`proxy::Gateway::response_filter`
//! decides, the `CompressModule` below encodes the body chunks), so the cache stores one
//! identity copy and each hit is encoded (or not) for the request in hand.
//!
//! Why not Pingora's own `ResponseCompressionCtx` (pingora-core 0.9.1,
//! `protocols::http::compression`): it takes the first coding the client lists, ignores
//! q-values (`q=0` would *select* a coding), has no size or type settings of ours, and
//! its encoders flush only at the end of the body, so a slow stream (server-sent events,
//! long polls) would sit in the encoder. Ours keeps its shape (a header decision, then a
//! per-chunk encoder registered as a downstream `HttpModule` so Pingora's `Done` task
//! finishes the stream) and flushes after every chunk: memory stays bounded by one chunk
//! and the encoder's window, and nothing waits for the end of the body.
//!
//! What is never encoded: a response that has a `Content-Encoding` already (whatever it
//! says), `Cache-Control: no-transform` (RFC 9110 §7.7), a `Content-Range` or 206, a
//! status other than 200-203 and 4xx/5xx, a type not listed, a declared length under
//! `min_size`; a request that is `HEAD`, carries `Range` (ranges are served from the
//! identity copy, so their offsets stay those of the stored bytes) or is HTTP/1.0
//! (like nginx's `gzip_http_version 1.1`: no chunked framing there). Identity is always
//! acceptable: `identity;q=0` or `*;q=0` still gets the identity bytes rather than 406.
//!
//! An encoded answer gets `Content-Encoding`, loses `Content-Length` (HTTP/1.1 gets
//! chunked framing) and `Accept-Ranges`, and its strong `ETag` becomes weak (RFC 9110
//! §8.8.1: the encoded bytes differ, the representation is equivalent).
//! `Vary: Accept-Encoding` is added to every answer that could have been encoded,
//! encoded or not.

use crate::config::edge::{Algorithm, Compression as Config};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder};
use std::io::Write;

const DEFAULT_MIN_SIZE: u64 = 1024;
const DEFAULT_TYPES: [&str; 9] = [
    "text/html",
    "text/plain",
    "text/css",
    "text/javascript",
    "application/javascript",
    "application/json",
    "application/problem+json",
    "application/xml",
    "image/svg+xml",
];

/// A media range of `types`.
#[derive(Debug, PartialEq, Eq)]
enum MediaRange {
    /// `type/subtype`, lower-cased.
    Exact(String),
    /// `type/*`: the type with its slash (`text/`).
    Type(String),
}

/// The compiled `compression` of one route.
#[derive(Debug)]
pub struct Compression {
    /// In the gateway's order of preference.
    algorithms: Vec<Algorithm>,
    min_size: u64,
    types: Vec<MediaRange>,
    gzip_level: u32,
    br_level: u32,
    zstd_level: i32,
    decompress_requests: Option<crate::config::edge::DecompressRequests>,
}

impl Compression {
    /// From `routes[].compression` (checked by `config::edge::check`).
    pub fn compile(c: &Config) -> Compression {
        let types: Vec<String> = if c.types.is_empty() {
            DEFAULT_TYPES.iter().map(|t| t.to_string()).collect()
        } else {
            c.types.clone()
        };
        Compression {
            algorithms: c.algorithms.clone(),
            min_size: c.min_size.map_or(DEFAULT_MIN_SIZE, |s| s.0),
            types: types
                .iter()
                .map(|t| {
                    let t = t.to_ascii_lowercase();
                    match t.strip_suffix('*') {
                        Some(ty) => MediaRange::Type(ty.to_string()),
                        None => MediaRange::Exact(t),
                    }
                })
                .collect(),
            gzip_level: c.levels.gzip.unwrap_or(6),
            br_level: c.levels.br.unwrap_or(4),
            zstd_level: c.levels.zstd.map_or(3, |l| l as i32),
            decompress_requests: c.decompress_requests,
        }
    }

    /// The bounds of request-body decoding, when the route decodes request bodies.
    pub fn decompress_requests(&self) -> Option<crate::config::edge::DecompressRequests> {
        self.decompress_requests
    }

    /// The coding to send for this `Accept-Encoding` (every field of it), if any: the
    /// configured coding with the highest q-value above 0, ties broken by the configured
    /// order. A coding the client does not list is acceptable only through `*`; no field
    /// at all means identity (what clients that send none expect, RFC 9110 §12.5.3
    /// allows either).
    pub fn negotiate<'a>(
        &self,
        accept: impl Iterator<Item = &'a HeaderValue>,
    ) -> Option<Algorithm> {
        let mut q_of = [None::<u16>; 3];
        let mut star = None::<u16>;
        for value in accept {
            let Ok(s) = value.to_str() else { continue };
            for item in s.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                if coding.is_empty() {
                    continue;
                }
                let q = parts
                    .find_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("q")
                            .then(|| parse_q(v.trim()))
                    })
                    .unwrap_or(1000);
                let slot = if coding == "*" {
                    &mut star
                } else if coding.eq_ignore_ascii_case("gzip")
                    || coding.eq_ignore_ascii_case("x-gzip")
                {
                    &mut q_of[0]
                } else if coding.eq_ignore_ascii_case("br") {
                    &mut q_of[1]
                } else if coding.eq_ignore_ascii_case("zstd") {
                    &mut q_of[2]
                } else {
                    continue;
                };
                // A coding listed twice keeps its highest q.
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
        let mut best: Option<(Algorithm, u16)> = None;
        for &alg in &self.algorithms {
            let idx = match alg {
                Algorithm::Gzip => 0,
                Algorithm::Brotli => 1,
                Algorithm::Zstd => 2,
            };
            let q = q_of[idx].or(star).unwrap_or(0);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((alg, q));
            }
        }
        best.map(|(a, _)| a)
    }

    /// Whether this response could be encoded at all (whatever the request accepts).
    fn eligible(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if !matches!(status, 200..=203 | 400..=599) {
            return false;
        }
        let h = &resp.headers;
        if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
            return false;
        }
        let no_transform = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
        if no_transform {
            return false;
        }
        let declared = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // An empty body stays empty (an encoded empty body is not empty).
        if declared.is_some_and(|n| n == 0 || n < self.min_size) {
            return false;
        }
        let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| match t {
            MediaRange::Exact(e) => *e == ct,
            MediaRange::Type(prefix) => ct.starts_with(prefix.as_str()) && ct.len() > prefix.len(),
        })
    }

    /// Decides for one response on its way to the client, adjusting its header: the
    /// encoder for its body, or `None` when it goes as it is.
    pub fn on_response(&self, req: &RequestHeader, resp: &mut ResponseHeader) -> Option<Encoder> {
        if !self.eligible(resp) {
            return None;
        }
        super::headers::add_vary(resp, "Accept-Encoding");
        if req.method == http::Method::HEAD
            || req.headers.contains_key(header::RANGE)
            || req.version < http::Version::HTTP_11
        {
            return None;
        }
        let alg = self.negotiate(req.headers.get_all(header::ACCEPT_ENCODING).iter())?;
        let encoder = Encoder::new(alg, self);
        let _ = resp.insert_header(header::CONTENT_ENCODING, alg.token());
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::ACCEPT_RANGES);
        if req.version == http::Version::HTTP_11 {
            // Without a length, HTTP/1.1 needs chunked framing to keep the connection.
            resp.set_version(http::Version::HTTP_11);
            let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
        }
        if let Some(etag) = resp.headers.get(header::ETAG) {
            if !etag.as_bytes().starts_with(b"W/") {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(etag.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&weak) {
                    let _ = resp.insert_header(header::ETAG, v);
                }
            }
        }
        Some(encoder)
    }
}

/// `q=` as thousandths; anything malformed is 0 (excluded), RFC 9110 §12.4.2.
fn parse_q(v: &str) -> u16 {
    let Some((int, frac)) = v.split_once('.').or(Some((v, ""))) else {
        return 0;
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    match int {
        "0" => {
            let mut n = 0u16;
            for (i, b) in frac.bytes().enumerate() {
                n += u16::from(b - b'0') * [100, 10, 1][i];
            }
            n
        }
        "1" if frac.bytes().all(|b| b == b'0') => 1000,
        _ => 0,
    }
}

/// A streaming encoder that flushes after each chunk.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    // A `Mutex` only because the zstd encoder is not `Sync` and modules must be.
    Zstd(std::sync::Mutex<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

impl Encoder {
    fn new(alg: Algorithm, c: &Compression) -> Encoder {
        match alg {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(c.gzip_level),
            )),
            // 4 KiB of internal buffer, a 4 MiB window (lgwin 22, brotli's default).
            Algorithm::Brotli => Encoder::Brotli(Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                c.br_level,
                22,
            )))),
            Algorithm::Zstd => match zstd::stream::write::Encoder::new(Vec::new(), c.zstd_level) {
                Ok(e) => Encoder::Zstd(std::sync::Mutex::new(e)),
                // Only an out-of-memory context fails here; gzip needs nothing of zstd's.
                Err(_) => Encoder::Gzip(flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(c.gzip_level),
                )),
            },
        }
    }

    /// Encodes `input`; with `end`, finishes the stream. Returns what is ready to send.
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => {
                e.write_all(input)?;
                if end {
                    e.try_finish()?;
                } else {
                    e.flush()?;
                }
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Brotli(slot) => {
                let Some(e) = slot.as_mut() else {
                    return Ok(Bytes::new());
                };
                e.write_all(input)?;
                if end {
                    // `into_inner` writes the last meta-block.
                    let done = slot.take().map(|e| e.into_inner()).unwrap_or_default();
                    return Ok(done.into());
                }
                e.flush()?;
                Ok(std::mem::take(e.get_mut()).into())
            }
            Encoder::Zstd(m) => {
                let e = m.get_mut().unwrap_or_else(|p| p.into_inner());
                e.write_all(input)?;
                if end {
                    e.do_finish()?;
                } else {
                    e.flush()?;
                }
                Ok(std::mem::take(e.get_mut()).into())
            }
        }
    }
}

/// The per-request encoder, as a Pingora downstream module: Pingora runs its body
/// filter on every chunk sent to the client, from the upstream or the cache, and its
/// done filter when the response ends without a final chunk.
#[derive(Default)]
pub struct CompressModule {
    encoder: Option<Encoder>,
}

impl CompressModule {
    /// Set by `response_filter` once it has decided.
    pub fn set(&mut self, encoder: Option<Encoder>) {
        self.encoder = encoder;
    }

    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Option<Bytes>> {
        let Some(e) = self.encoder.as_mut() else {
            return Ok(None);
        };
        let out = e.encode(input, end).map_err(|err| {
            pingora::Error::because(
                pingora::ErrorType::InternalError,
                "response compression",
                err,
            )
        });
        if end {
            self.encoder = None;
        }
        out.map(Some)
    }
}

#[async_trait::async_trait]
impl HttpModule for CompressModule {
    fn response_body_filter(&mut self, body: &mut Option<Bytes>, end: bool) -> pingora::Result<()> {
        if self.encoder.is_none() {
            return Ok(());
        }
        let input = body.take().unwrap_or_default();
        *body = self.encode(&input, end)?;
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        self.encode(&[], true)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Builds a `CompressModule` for each request (`proxy::Gateway::init_downstream_modules`).
pub struct ModuleBuilder;

impl HttpModuleBuilder for ModuleBuilder {
    fn init(&self) -> pingora::modules::http::Module {
        Box::<CompressModule>::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn comp(yaml: &str) -> Compression {
        Compression::compile(&serde_yaml::from_str(yaml).unwrap())
    }

    fn neg(c: &Compression, ae: &[&str]) -> Option<&'static str> {
        let values: Vec<HeaderValue> = ae
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        c.negotiate(values.iter()).map(|a| a.token())
    }

    #[test]
    fn q_values_choose_and_zero_excludes() {
        let c = comp("{ algorithms: [br, zstd, gzip] }");
        assert_eq!(
            neg(&c, &["gzip, deflate, br"]),
            Some("br"),
            "tie: our order"
        );
        assert_eq!(neg(&c, &["gzip;q=1, br;q=0.5"]), Some("gzip"));
        assert_eq!(neg(&c, &["br;q=0, gzip;q=0.1"]), Some("gzip"));
        assert_eq!(neg(&c, &["br;q=0", "gzip;q=0"]), None);
        assert_eq!(neg(&c, &["*;q=0.5, br;q=0"]), Some("zstd"));
        assert_eq!(neg(&c, &["identity"]), None);
        assert_eq!(neg(&c, &[]), None, "no field: identity");
        assert_eq!(neg(&c, &[""]), None);
        assert_eq!(neg(&c, &["gzip;q=2"]), None, "malformed q is 0");
        assert_eq!(neg(&c, &["GZIP ; Q=0.8"]), Some("gzip"));
        assert_eq!(neg(&c, &["x-gzip"]), Some("gzip"));
        let g = comp("{ algorithms: [gzip] }");
        assert_eq!(neg(&g, &["br, zstd"]), None, "not offered");
    }

    #[test]
    fn q_parsing() {
        for (s, q) in [
            ("1", 1000),
            ("1.000", 1000),
            ("0", 0),
            ("0.5", 500),
            ("0.001", 1),
            ("0.0001", 0),
            ("1.5", 0),
            ("x", 0),
            (".5", 0),
        ] {
            assert_eq!(parse_q(s), q, "{s}");
        }
    }

    fn resp(pairs: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in pairs {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn eligibility_follows_type_size_status_and_encoding() {
        let c = comp("{ min_size: 100, types: [application/json, \"text/*\"] }");
        assert!(c.eligible(&resp(&[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "100")
        ])));
        assert!(
            c.eligible(&resp(&[("content-type", "text/csv")])),
            "no length: streamed"
        );
        assert!(!c.eligible(&resp(&[
            ("content-type", "application/json"),
            ("content-length", "99")
        ])));
        assert!(!c.eligible(&resp(&[("content-type", "image/png")])));
        let z = comp("{ min_size: 0 }");
        assert!(!z.eligible(&resp(&[
            ("content-type", "text/html"),
            ("content-length", "0")
        ])));
        assert!(z.eligible(&resp(&[
            ("content-type", "text/html"),
            ("content-length", "1")
        ])));
        assert!(!c.eligible(&resp(&[])));
        assert!(!c.eligible(&resp(&[
            ("content-type", "text/plain"),
            ("content-encoding", "gzip")
        ])));
        assert!(!c.eligible(&resp(&[
            ("content-type", "text/plain"),
            ("cache-control", "public, no-transform")
        ])));
        let mut partial = resp(&[("content-type", "text/plain")]);
        partial.set_status(206).unwrap();
        assert!(!c.eligible(&partial));
    }

    fn roundtrip(alg: &str, decode: fn(&[u8]) -> Vec<u8>) {
        let c = comp(&format!("{{ algorithms: [{alg}], min_size: 1 }}"));
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("accept-encoding", alg).unwrap();
        let mut r = resp(&[
            ("content-type", "text/plain"),
            ("content-length", "9000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
        ]);
        let mut e = c.on_response(&req, &mut r).expect("encoded");
        assert_eq!(r.headers["content-encoding"], alg);
        assert_eq!(r.headers["etag"], "W/\"v1\"");
        assert!(
            r.headers.get("content-length").is_none() && r.headers.get("accept-ranges").is_none()
        );
        assert_eq!(r.headers["vary"], "Accept-Encoding");
        let plain: Vec<u8> = (0..9000u32)
            .map(|i| b"abcdefgh\n"[(i % 9) as usize])
            .collect();
        let mut out = Vec::new();
        for (i, chunk) in plain.chunks(1000).enumerate() {
            let b = e.encode(chunk, false).unwrap();
            // Flushed per chunk: something comes out at once.
            assert!(!b.is_empty(), "chunk {i} of {alg} was held back");
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&e.encode(&[], true).unwrap());
        assert!(out.len() < plain.len());
        assert_eq!(decode(&out), plain, "{alg}");
    }

    #[test]
    fn every_coding_round_trips_chunk_by_chunk() {
        roundtrip("gzip", |b| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(b)
                .read_to_end(&mut out)
                .unwrap();
            out
        });
        roundtrip("br", |b| {
            let mut out = Vec::new();
            brotli::Decompressor::new(b, 4096)
                .read_to_end(&mut out)
                .unwrap();
            out
        });
        roundtrip("zstd", |b| zstd::stream::decode_all(b).unwrap());
    }

    #[test]
    fn head_range_and_http10_get_vary_but_no_encoding() {
        let c = comp("{ min_size: 1 }");
        let mut head = RequestHeader::build("HEAD", b"/", None).unwrap();
        head.insert_header("accept-encoding", "gzip").unwrap();
        let mut range = RequestHeader::build("GET", b"/", None).unwrap();
        range.insert_header("accept-encoding", "gzip").unwrap();
        range.insert_header("range", "bytes=0-9").unwrap();
        let mut old = RequestHeader::build("GET", b"/", None).unwrap();
        old.set_version(http::Version::HTTP_10);
        old.insert_header("accept-encoding", "gzip").unwrap();
        for req in [head, range, old] {
            let mut r = resp(&[("content-type", "text/html"), ("content-length", "5000")]);
            assert!(c.on_response(&req, &mut r).is_none());
            assert_eq!(r.headers["vary"], "Accept-Encoding");
            assert_eq!(r.headers["content-length"], "5000");
        }
    }
}
