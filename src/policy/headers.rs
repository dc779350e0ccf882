//! Header work on every request: route `set`/`remove` operations, `X-Request-ID`,
//! `X-Forwarded-For`/`-Proto`, stripping identity headers a client may try to spoof, and
//! stripping the URL-building fields a client may use to poison the cache.

use crate::config::model;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Identity headers that only the gateway may set; client copies are always removed.
pub const IDENTITY_HEADERS: [&str; 3] = ["x-consumer-id", "x-auth-subject", "x-auth-scopes"];

pub const X_REQUEST_ID: &str = "x-request-id";

/// Request fields from which frameworks build absolute URLs (host, port, scheme, prefix)
/// or choose the path they serve. The gateway neither routes nor keys on them, so a
/// client copy would let one client make the upstream answer for another URL and have
/// that answer stored for everyone (cache poisoning). Removed from every request unless
/// the route has `trust_forwarded_headers` and the peer is one of
/// `server.trusted_proxies`; then they are kept and the cache keys on them.
/// `X-Forwarded-For` is appended to and `X-Forwarded-Proto` always set by the gateway
/// (`set_forwarded`), so neither is here.
pub const FORWARDED_FIELDS: [&str; 8] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
];

#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Names and values were validated with the config; invalid ones cannot reach here.
    pub fn compile(ops: &model::HeaderOps) -> Self {
        HeaderOps {
            set: ops
                .set
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            remove: ops
                .remove
                .iter()
                .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply_request(&self, h: &mut RequestHeader) {
        for name in &self.remove {
            h.remove_header(name);
        }
        for (name, value) in &self.set {
            let _ = h.insert_header(name.clone(), value.clone());
        }
    }

    pub fn apply_response(&self, h: &mut ResponseHeader) {
        for name in &self.remove {
            h.remove_header(name);
        }
        for (name, value) in &self.set {
            let _ = h.insert_header(name.clone(), value.clone());
        }
    }
}

/// A client's request id is kept when it is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn well_formed_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 128 random bits as 32 hex characters.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut s = String::with_capacity(32);
    for i in (0..32).rev() {
        s.push(char::from(HEX[((n >> (i * 4)) & 0xf) as usize]));
    }
    s
}

fn remove_all(h: &mut RequestHeader, names: &[&str]) {
    for name in names {
        h.remove_header(*name);
    }
}

pub fn strip_identity(h: &mut RequestHeader) {
    remove_all(h, &IDENTITY_HEADERS);
}

/// Removes every client copy of `FORWARDED_FIELDS`.
pub fn strip_forwarded(h: &mut RequestHeader) {
    remove_all(h, &FORWARDED_FIELDS);
}

/// Fields with which frameworks (Rails, Laravel, Express's method-override, ASP.NET,
/// Symfony) let a request name another method than its own.
pub const METHOD_OVERRIDE_FIELDS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether any field of the request is named in `names`.
fn any_named(h: &RequestHeader, names: &[&str]) -> bool {
    h.headers.keys().any(|k| names.contains(&k.as_str()))
}

/// What a client may not tell the upstream: the identity fields always, the URL-building
/// forwarded fields unless the route trusts them from this peer (`forwarded_trusted`),
/// and a method override on a GET or HEAD. The gateway routes, limits and caches a GET
/// as a GET; a backend that honoured `X-HTTP-Method-Override: DELETE` on it would act on
/// a request the cache then stores for everyone (and that no method rule saw). On other
/// methods the override is the client's business, as it is not cached.
/// This runs on every request, and almost no request carries any of these fields: one
/// pass over the request's own names (a handful, compared as strings) decides whether
/// there is anything to remove, instead of removals that each look the name up in both
/// of Pingora's header maps.
pub fn strip_client_fields(h: &mut RequestHeader, forwarded_trusted: bool) {
    if any_named(h, &IDENTITY_HEADERS) {
        strip_identity(h);
    }
    if !forwarded_trusted && any_named(h, &FORWARDED_FIELDS) {
        strip_forwarded(h);
    }
    if (h.method == http::Method::GET || h.method == http::Method::HEAD)
        && any_named(h, &METHOD_OVERRIDE_FIELDS)
    {
        remove_all(h, &METHOD_OVERRIDE_FIELDS);
    }
}

/// The identity facts the upstream is told, as the fields that carry them: `X-Consumer-ID`,
/// then `X-Auth-Subject` when there is a subject and `X-Auth-Scopes` for a JWT. The one
/// definition both `set_identity` (what is sent) and the cache's variant (what selects a
/// personalised entry) use, so the two cannot drift apart. A value that cannot be a
/// field value (a control character in a token's `sub`) is neither sent nor keyed.
pub fn identity_fields(id: &super::Identity) -> Vec<(&'static str, HeaderValue)> {
    let mut out = Vec::with_capacity(3);
    let mut add = |name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((name, v));
        }
    };
    add("x-consumer-id", &id.consumer_id);
    if let Some(sub) = &id.subject {
        add("x-auth-subject", sub);
    }
    if id.method == "jwt" {
        add("x-auth-scopes", &id.scopes.join(" "));
    }
    out
}

/// Sets the identity headers the upstream may trust (client copies were removed first).
pub fn set_identity(h: &mut RequestHeader, id: &super::Identity) {
    for (name, value) in identity_fields(id) {
        let _ = h.insert_header(name, value);
    }
}

/// Appends the client address to `X-Forwarded-For` and sets `X-Forwarded-Proto`.
pub fn set_forwarded(h: &mut RequestHeader, client_ip: Option<std::net::IpAddr>, https: bool) {
    if let Some(ip) = client_ip {
        use std::fmt::Write;
        let prev = h
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .filter(|p| !p.trim().is_empty());
        let value = match prev {
            Some(prev) => {
                let mut v = String::with_capacity(prev.len() + 48);
                v.push_str(prev);
                v.push_str(", ");
                let _ = write!(v, "{ip}");
                HeaderValue::from_str(&v)
            }
            // The address alone is formatted on the stack and copied once into the value.
            None => {
                let mut buf = StackStr::<48>::new();
                match write!(buf, "{ip}") {
                    Ok(()) => HeaderValue::from_str(buf.as_str()),
                    Err(_) => HeaderValue::from_str(&ip.to_string()),
                }
            }
        };
        if let Ok(value) = value {
            let _ = h.insert_header("x-forwarded-for", value);
        }
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    let _ = h.insert_header("x-forwarded-proto", proto);
}

/// Sets `name: value` on a request going upstream, unless it is there already as one
/// field with exactly those bytes (the client's own `Host`, or its `X-Request-Id` kept as
/// the id): replacing a field with a copy of itself copies the value and may grow both of
/// Pingora's header maps.
pub fn set_request_field<N>(h: &mut RequestHeader, name: N, value: &str) -> pingora::Result<()>
where
    N: pingora::http::IntoCaseHeaderName + http::header::AsHeaderName + Clone,
{
    let mut sent = h.headers.get_all(name.clone()).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        if v.as_bytes() == value.as_bytes() {
            return Ok(());
        }
    }
    h.insert_header(name, value)
}

/// A small `fmt::Write` buffer on the stack (a formatted address needs at most 47 bytes).
struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> std::fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Sets the `Server` field of a response the gateway sends (`server.server_header`): the
/// configured value, or none at all (an upstream's own `Server` is replaced either way).
pub fn apply_server_header(resp: &mut pingora::http::ResponseHeader, value: &str) {
    if value.is_empty() {
        resp.remove_header(&http::header::SERVER);
    } else {
        let _ = resp.insert_header(http::header::SERVER, value);
    }
}

/// Hop-by-hop fields of a response (RFC 9110 §7.6.1) besides `Connection` itself and the
/// names it lists. `Transfer-Encoding` is not here: Pingora's framing layer reads and
/// rewrites it on each hop.
const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Never removed because `Connection` names them: they frame or address the message, and
/// a peer listing them would desynchronise the next hop (the classic hop-by-hop abuse).
/// `Host` is there for symmetry with Pingora's request-side rule.
const FRAMING: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// The names a `Connection` field lists, lower-cased (every `Connection` line), less the
/// framing fields.
fn connection_tokens(h: &http::HeaderMap) -> Vec<String> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && !FRAMING.contains(&t.as_str()))
        .collect()
}

/// The upstream's response loses its hop-by-hop fields (RFC 9110 §7.6.1): every name
/// its `Connection` lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, and
/// `Upgrade` unless the response is a real switch (101). Pingora writes the client's own
/// `Connection` on HTTP/1 and drops it on HTTP/2. (The request side needs nothing here:
/// Pingora's default `HttpUpstreamRequestPolicy` strips the client's hop-by-hop fields
/// and the names its `Connection` lists before `upstream_request_filter`, and refuses a
/// request that names `Host` or an `X-Forwarded-*` field.)
pub fn strip_hop_by_hop_response(h: &mut ResponseHeader) {
    // Most responses carry none of these fields: one pass over the response's own names
    // settles that without a lookup per name.
    if !h
        .headers
        .keys()
        .any(|k| *k == http::header::CONNECTION || HOP_BY_HOP.contains(&k.as_str()))
    {
        return;
    }
    let switching = h.status == http::StatusCode::SWITCHING_PROTOCOLS;
    let tokens = connection_tokens(&h.headers);
    for name in tokens.iter().map(String::as_str).chain(HOP_BY_HOP) {
        if switching && name == "upgrade" {
            continue;
        }
        if h.headers.contains_key(name) {
            h.remove_header(name);
        }
    }
    if !switching && h.headers.contains_key(http::header::CONNECTION) {
        h.remove_header(&http::header::CONNECTION);
    }
}

/// Names the gateway adds to responses itself (CORS, `RateLimit`, versions), as static text.
const ADDED_RESPONSE_FIELDS: [&str; 13] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "vary",
    "deprecation",
    "sunset",
    "link",
];

/// Sets `name: value` on a response without the copy Pingora's `insert_header` makes of a
/// `HeaderName`'s text: it copies every name but the twelve it writes in title case (such
/// as `Content-Type`) into a new buffer, per insert. The names the gateway adds on most
/// responses go in as static text instead; any other goes the usual way.
pub fn insert_field(
    resp: &mut ResponseHeader,
    name: HeaderName,
    value: HeaderValue,
) -> pingora::Result<()> {
    match ADDED_RESPONSE_FIELDS.iter().find(|k| **k == name.as_str()) {
        Some(text) => resp.insert_header(*text, value),
        None => resp.insert_header(name, value),
    }
}

/// Adds `token` to the response's `Vary` unless it is there (or `Vary: *`).
pub fn add_vary(resp: &mut ResponseHeader, token: &'static str) {
    if !vary_lists(resp, token) {
        // A static name: no copy of "vary" per response (see `insert_field`).
        let _ = resp.append_header("vary", HeaderValue::from_static(token));
    }
}

/// The response's `Vary` lists `field` already, or is `*` (which covers every field).
fn vary_lists(resp: &ResponseHeader, field: &str) -> bool {
    resp.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.eq_ignore_ascii_case(field))
}

/// Several `Vary` fields known when the config is compiled (a versioned route's
/// version fields): each listed once, and their joined value ready for a response
/// that has no `Vary` of its own (the common case: nothing to join per response).
pub struct VaryFields {
    fields: Vec<HeaderName>,
    joined: HeaderValue,
}

impl VaryFields {
    /// `None` when there is no field. A field named twice is kept once.
    pub fn new(fields: impl IntoIterator<Item = HeaderName>) -> Option<VaryFields> {
        let mut unique: Vec<HeaderName> = Vec::new();
        for f in fields {
            if !unique.contains(&f) {
                unique.push(f);
            }
        }
        let joined = join_fields(unique.iter())?;
        Some(VaryFields {
            fields: unique,
            joined,
        })
    }
}

/// `a, b, c`; `None` for no field.
fn join_fields<'a>(fields: impl Iterator<Item = &'a HeaderName>) -> Option<HeaderValue> {
    let joined = fields
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    // Header names are valid field values.
    (!joined.is_empty())
        .then(|| HeaderValue::from_str(&joined).ok())
        .flatten()
}

/// `add_vary` for several fields: those the response's `Vary` does not list yet are
/// appended, in one value.
pub fn add_vary_fields(resp: &mut ResponseHeader, v: &VaryFields) {
    let value = if !resp.headers.contains_key(http::header::VARY) {
        Some(v.joined.clone())
    } else {
        let missing: Vec<&HeaderName> = v
            .fields
            .iter()
            .filter(|f| !vary_lists(resp, f.as_str()))
            .collect();
        if missing.len() == v.fields.len() {
            Some(v.joined.clone())
        } else {
            join_fields(missing.into_iter())
        }
    };
    if let Some(value) = value {
        let _ = resp.append_header("vary", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_of_a_response_are_stripped() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("connection", "x-hop, Content-Length")
            .unwrap();
        resp.append_header("content-length", "0").unwrap();
        resp.append_header("x-hop", "1").unwrap();
        resp.append_header("keep-alive", "timeout=5").unwrap();
        resp.append_header("upgrade", "h2c").unwrap();
        resp.append_header("content-type", "text/plain").unwrap();
        strip_hop_by_hop_response(&mut resp);
        let mut names: Vec<&str> = resp.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "content-type"]);

        let mut switch = ResponseHeader::build(101, None).unwrap();
        switch.append_header("connection", "upgrade").unwrap();
        switch.append_header("upgrade", "websocket").unwrap();
        strip_hop_by_hop_response(&mut switch);
        assert_eq!(switch.headers["upgrade"], "websocket");
        assert_eq!(switch.headers["connection"], "upgrade");
    }

    #[test]
    fn request_ids() {
        assert!(well_formed_request_id(b"abc-123_x.y:z"));
        assert!(!well_formed_request_id(b""));
        assert!(!well_formed_request_id(b"has space"));
        assert!(!well_formed_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(well_formed_request_id(id.as_bytes()));
    }

    #[test]
    fn forwarded_appends() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        h.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        set_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), false);
        assert_eq!(h.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h.headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn forwarded_for_alone_and_v6() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        set_forwarded(&mut h, Some(longest.parse().unwrap()), true);
        assert_eq!(h.headers["x-forwarded-for"], longest);
        assert_eq!(h.headers["x-forwarded-proto"], "https");
        // A blank client value is not kept in front of the address.
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        h.insert_header("x-forwarded-for", " ").unwrap();
        set_forwarded(&mut h, Some("::ffff:10.1.2.3".parse().unwrap()), false);
        assert_eq!(h.headers["x-forwarded-for"], "::ffff:10.1.2.3");
    }

    #[test]
    fn request_id_is_sent_once_with_the_id() {
        let fields = |h: &RequestHeader| {
            h.headers
                .get_all(X_REQUEST_ID)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // None from the client: added.
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        set_request_field(&mut h, X_REQUEST_ID, "abc").unwrap();
        assert_eq!(fields(&h), ["abc"]);
        // The client's own, kept as the id: left as it is.
        set_request_field(&mut h, X_REQUEST_ID, "abc").unwrap();
        assert_eq!(fields(&h), ["abc"]);
        // Another value, or the id repeated: replaced by the one id.
        set_request_field(&mut h, X_REQUEST_ID, "def").unwrap();
        assert_eq!(fields(&h), ["def"]);
        h.append_header(X_REQUEST_ID, "def").unwrap();
        set_request_field(&mut h, X_REQUEST_ID, "def").unwrap();
        assert_eq!(fields(&h), ["def"]);
    }

    fn identity(method: &'static str, subject: Option<&str>) -> super::super::Identity {
        super::super::Identity {
            consumer_id: "partner".into(),
            tier: None,
            subject: subject.map(str::to_string),
            scopes: vec!["read".into(), "write".into()],
            method,
        }
    }

    #[test]
    fn identity_fields_are_what_is_sent() {
        let names = |id| {
            identity_fields(&id)
                .into_iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(identity("jwt", Some("alice"))),
            [
                "x-consumer-id=partner",
                "x-auth-subject=alice",
                "x-auth-scopes=read write"
            ]
        );
        assert_eq!(names(identity("api_key", None)), ["x-consumer-id=partner"]);
        assert_eq!(
            names(identity("jwt", Some("bad\nsub"))),
            ["x-consumer-id=partner", "x-auth-scopes=read write"],
            "a value that cannot be sent is not keyed either"
        );
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        set_identity(&mut h, &identity("jwt", Some("alice")));
        assert_eq!(h.headers["x-auth-subject"], "alice");
        assert_eq!(h.headers["x-auth-scopes"], "read write");
    }

    #[test]
    fn forwarded_fields_are_stripped() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        for name in FORWARDED_FIELDS {
            h.append_header(name, "evil").unwrap();
            h.append_header(name, "evil2").unwrap();
        }
        h.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        strip_forwarded(&mut h);
        for name in FORWARDED_FIELDS {
            assert!(h.headers.get(name).is_none(), "{name}");
        }
        assert_eq!(h.headers["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn identity_is_stripped() {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        h.insert_header("X-Consumer-ID", "admin").unwrap();
        h.insert_header("x-auth-scopes", "all").unwrap();
        strip_identity(&mut h);
        assert!(h.headers.get("x-consumer-id").is_none());
        assert!(h.headers.get("x-auth-scopes").is_none());
    }

    #[test]
    fn several_vary_fields_are_each_listed_once() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let v = VaryFields::new([name("accept-version"), name("accept"), name("accept")])
            .expect("fields");
        let vary = |r: &ResponseHeader| -> Vec<String> {
            r.headers
                .get_all("vary")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        // No `Vary` of its own: the joined value, each field once.
        let mut r = ResponseHeader::build(200, None).unwrap();
        add_vary_fields(&mut r, &v);
        assert_eq!(vary(&r), ["accept-version, accept"]);
        // Again (a second pass over the same response): nothing more.
        add_vary_fields(&mut r, &v);
        assert_eq!(vary(&r), ["accept-version, accept"]);
        // The upstream varies on `Accept` already: only the other field is added.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("vary", "Accept").unwrap();
        add_vary_fields(&mut r, &v);
        assert_eq!(vary(&r), ["Accept", "accept-version"]);
        // An unrelated `Vary`: both are added.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("vary", "Origin").unwrap();
        add_vary_fields(&mut r, &v);
        assert_eq!(vary(&r), ["Origin", "accept-version, accept"]);
        // `Vary: *` covers every field.
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.append_header("vary", "*").unwrap();
        add_vary_fields(&mut r, &v);
        assert_eq!(vary(&r), ["*"]);
        assert!(VaryFields::new(Vec::new()).is_none());
    }
}
