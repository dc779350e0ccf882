//! Request-body decompression (`routes[].compression.decompress_requests`): a body sent
//! with `Content-Encoding: gzip`, `br` or `zstd` is decoded as it streams in
//! (`proxy::Gateway::request_body_filter`) and reaches the upstream as identity, chunked,
//! without `Content-Encoding` or `Content-Length`.
//!
//! Bomb limits: the decoders write into `Capped`, which refuses any byte past the cap
//! before it is kept, so one small chunk that would expand to gigabytes stops at the cap
//! instead of allocating them. The cap is `max_size`, and, once the decoded body passes
//! 1 MiB, also `max_ratio` times the encoded bytes read so far. Either refusal is 413
//! `decompressed-body-too-large`; a body that is not valid in its coding is 400.
//! Other codings (several at once, `deflate`, unknown ones) pass through untouched for
//! the upstream to judge; `identity` is no coding.

use crate::config::edge::DecompressRequests;
use crate::error::Reject;
use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use std::io::Write;

/// Below this many decoded bytes only `max_size` applies: small bodies compress far
/// better than 100:1 (a JSON document of zeros) without being a threat.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// The error `Capped` gives when a write would pass its cap.
#[derive(Debug)]
struct OverCap;

impl std::fmt::Display for OverCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decoded body over its bound")
    }
}

impl std::error::Error for OverCap {}

/// A `Vec` that refuses to grow past `cap` total bytes.
struct Capped {
    out: Vec<u8>,
    total: u64,
    cap: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.total + buf.len() as u64 > self.cap {
            return Err(std::io::Error::other(OverCap));
        }
        self.total += buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Kind {
    Gzip(flate2::write::GzDecoder<Capped>),
    Brotli(Option<Box<brotli::DecompressorWriter<Capped>>>),
    // A `Mutex` only because the zstd decoder is not `Sync` and the context must be.
    Zstd(std::sync::Mutex<zstd::stream::write::Decoder<'static, Capped>>),
}

/// The decoder of one request body.
pub struct RequestDecoder {
    kind: Kind,
    coding: &'static str,
    max_size: u64,
    max_ratio: u64,
    encoded: u64,
}

impl RequestDecoder {
    /// A decoder when the request's `Content-Encoding` is one coding we decode.
    pub fn for_request(req: &RequestHeader, limits: &DecompressRequests) -> Option<RequestDecoder> {
        let mut values = req.headers.get_all(header::CONTENT_ENCODING).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        let coding = value.to_str().ok()?.trim();
        let capped = || Capped {
            out: Vec::new(),
            total: 0,
            cap: limits.max_size.0,
        };
        let (kind, name) =
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                (Kind::Gzip(flate2::write::GzDecoder::new(capped())), "gzip")
            } else if coding.eq_ignore_ascii_case("br") {
                (
                    Kind::Brotli(Some(Box::new(brotli::DecompressorWriter::new(
                        capped(),
                        4096,
                    )))),
                    "br",
                )
            } else if coding.eq_ignore_ascii_case("zstd") {
                let d = zstd::stream::write::Decoder::new(capped()).ok()?;
                (Kind::Zstd(std::sync::Mutex::new(d)), "zstd")
            } else {
                return None;
            };
        Some(RequestDecoder {
            kind,
            coding: name,
            max_size: limits.max_size.0,
            max_ratio: u64::from(limits.max_ratio),
            encoded: 0,
        })
    }

    /// The cap for the next write: `max_size`, and the ratio bound past the floor.
    fn cap(&self) -> u64 {
        let by_ratio = self.encoded.saturating_mul(self.max_ratio).max(RATIO_FLOOR);
        self.max_size.min(by_ratio)
    }

    /// Decodes one chunk (`end`: the last), returning the decoded bytes ready.
    pub fn decode(&mut self, input: &[u8], end: bool) -> Result<Bytes, Reject> {
        self.encoded += input.len() as u64;
        let cap = self.cap();
        let coding = self.coding;
        let max = self.max_size;
        let refuse = |e: std::io::Error| {
            if e.get_ref().is_some_and(|inner| inner.is::<OverCap>()) {
                Reject::DecompressedTooLarge(max)
            } else {
                Reject::BadRequest(format!("the request body is not valid {coding}"))
            }
        };
        let out = match &mut self.kind {
            Kind::Gzip(d) => {
                d.get_mut().cap = cap;
                d.write_all(input).map_err(refuse)?;
                if end {
                    d.try_finish().map_err(refuse)?;
                }
                std::mem::take(&mut d.get_mut().out)
            }
            Kind::Brotli(slot) => {
                let Some(d) = slot.as_mut() else {
                    return Ok(Bytes::new());
                };
                d.get_mut().cap = cap;
                d.write_all(input).map_err(refuse)?;
                if end {
                    return match slot.take().map(|d| d.into_inner()) {
                        Some(Ok(w)) => Ok(w.out.into()),
                        _ => Err(Reject::BadRequest(
                            "the request body is not valid br".into(),
                        )),
                    };
                }
                std::mem::take(&mut d.get_mut().out)
            }
            Kind::Zstd(m) => {
                let d = m.get_mut().unwrap_or_else(|p| p.into_inner());
                d.get_mut().cap = cap;
                d.write_all(input).map_err(refuse)?;
                if end {
                    d.flush().map_err(refuse)?;
                }
                std::mem::take(&mut d.get_mut().out)
            }
        };
        Ok(out.into())
    }
}

/// The request as it goes upstream once its body is decoded: identity, and framed by
/// chunks since its decoded length is not known yet (HTTP/2 frames it by itself).
pub fn decoded_request_header(req: &mut RequestHeader) -> pingora::Result<()> {
    req.remove_header(&header::CONTENT_ENCODING);
    req.remove_header(&header::CONTENT_LENGTH);
    if req.version != http::Version::HTTP_2 {
        req.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Size;

    fn limits(max: u64, ratio: u32) -> DecompressRequests {
        DecompressRequests {
            max_size: Size(max),
            max_ratio: ratio,
        }
    }

    fn req(coding: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.insert_header("content-encoding", coding).unwrap();
        r
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_coding_decodes_in_chunks() {
        let plain: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let encoded = [
            ("gzip", gzip(&plain)),
            ("br", {
                let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
                w.write_all(&plain).unwrap();
                w.into_inner()
            }),
            ("zstd", zstd::stream::encode_all(&plain[..], 3).unwrap()),
        ];
        for (coding, body) in encoded {
            let mut d = RequestDecoder::for_request(&req(coding), &limits(1 << 24, 100)).unwrap();
            let mut out = Vec::new();
            let chunks: Vec<&[u8]> = body.chunks(1000).collect();
            for (i, c) in chunks.iter().enumerate() {
                out.extend_from_slice(&d.decode(c, i + 1 == chunks.len()).unwrap());
            }
            assert_eq!(out, plain, "{coding}");
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap_without_expanding() {
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        // By size: 8 MiB allowed, the bomb is 64 MiB.
        let mut d = RequestDecoder::for_request(&req("gzip"), &limits(8 << 20, 100_000)).unwrap();
        let r = d.decode(&bomb, true);
        assert!(matches!(r, Err(Reject::DecompressedTooLarge(_))), "{r:?}");
        assert!(d.encoded as usize == bomb.len());
        // By ratio: 1 GiB allowed, 100:1 is far exceeded past the first MiB.
        let mut d = RequestDecoder::for_request(&req("gzip"), &limits(1 << 30, 100)).unwrap();
        let r = d.decode(&bomb, true);
        assert!(matches!(r, Err(Reject::DecompressedTooLarge(_))), "{r:?}");
        // A small highly compressible body is fine.
        let small = gzip(&vec![b'a'; 500_000]);
        let mut d = RequestDecoder::for_request(&req("gzip"), &limits(8 << 20, 100)).unwrap();
        assert_eq!(d.decode(&small, true).unwrap().len(), 500_000);
    }

    #[test]
    fn other_codings_pass_and_garbage_is_refused() {
        let l = limits(1 << 20, 100);
        assert!(RequestDecoder::for_request(&req("deflate"), &l).is_none());
        assert!(RequestDecoder::for_request(&req("gzip, br"), &l).is_none());
        assert!(RequestDecoder::for_request(&req("identity"), &l).is_none());
        let mut d = RequestDecoder::for_request(&req("gzip"), &l).unwrap();
        assert!(matches!(
            d.decode(b"not gzip at all", true),
            Err(Reject::BadRequest(_))
        ));
    }
}
