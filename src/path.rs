//! Path normalisation, applied before routing so that a path cannot reach a route that
//! its canonical form would not (`/public/../admin` is `/admin`). Steps, in order:
//! percent-decode unreserved characters (RFC 3986 §2.3) and upper-case the other escapes,
//! collapse duplicate slashes, remove `.` and `..` segments (RFC 3986 §5.2.4).
//! `%2F` stays encoded, so it never becomes a separator (unless a path policy says
//! `decode`, see `Reading`).
//!
//! Then the path policy (`listeners[].path_policy`, `routes[].path_policy`): what the
//! router sees and what the backend may read differently. `inspect` finds the three
//! things backends disagree on (an escaped slash or backslash, a raw backslash, a segment
//! that is a dot-segment once its `;` parameter is removed); `route_form` is the path the
//! router matches when `;` parameters are read the way Tomcat and Spring read them.
//!
//! A leaf module (it depends on nothing in the crate): the proxy normalises before
//! routing, and the cache names purge and invalidation targets the same way.

use std::borrow::Cow;

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Not an origin-form path (must start with `/`).
    NotAbsolute,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How a path is read before routing, under a path policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// `escaped_slash: decode`: `%2F` becomes `/` (a separator) and `%5C` becomes `\`,
    /// before dot-segments are resolved, so what is routed is what is forwarded.
    pub decode_escaped_slashes: bool,
    /// `matrix_params: reject`: the router matches each segment without its `;`
    /// parameter, as Tomcat and Spring resolve it (`/admin;x` is `/admin`).
    pub ignore_params: bool,
}

/// What a normalised path holds that backends read differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Findings {
    /// `%2F` or `%5C` (still encoded).
    pub escaped_slash: bool,
    /// A raw `\` (IIS and some Windows stacks read it as `/`).
    pub backslash: bool,
    /// A segment that is `.` or `..` once its `;` parameter is removed (`..;`, `.;x`).
    pub matrix_dot_segment: bool,
}

/// The findings of a path as `normalize_with` returned it.
pub fn inspect(normalized: &str) -> Findings {
    let b = normalized.as_bytes();
    let mut f = Findings {
        backslash: b.contains(&b'\\'),
        ..Findings::default()
    };
    // normalize upper-cases every escape it keeps, so two spellings suffice.
    f.escaped_slash = normalized.contains("%2F") || normalized.contains("%5C");
    if b.contains(&b';') {
        f.matrix_dot_segment = normalized
            .split('/')
            .any(|seg| seg.contains(';') && matches!(strip_param(seg), "." | ".."));
    }
    f
}

fn strip_param(seg: &str) -> &str {
    seg.split_once(';').map_or(seg, |(name, _)| name)
}

/// One key of a path policy. `Decode` is only offered for `escaped_slash` (the config
/// types say so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Reject,
    Decode,
    Keep,
}

/// A listener's path policy, or a route's merged over it. The default refuses all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub escaped_slash: Action,
    pub backslash: Action,
    pub matrix_params: Action,
}

/// A route's `path_policy`: each key it sets replaces the listener's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    pub escaped_slash: Option<Action>,
    pub backslash: Option<Action>,
    pub matrix_params: Option<Action>,
}

impl Override {
    pub fn over(&self, base: Policy) -> Policy {
        Policy {
            escaped_slash: self.escaped_slash.unwrap_or(base.escaped_slash),
            backslash: self.backslash.unwrap_or(base.backslash),
            matrix_params: self.matrix_params.unwrap_or(base.matrix_params),
        }
    }
}

/// Why a path policy refused a path: the problem type and the metric reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    EscapedSlash,
    Backslash,
    MatrixDotSegment,
    /// The route's own policy reads the path differently from the listener's, and that
    /// reading routes elsewhere.
    RouteMismatch,
}

impl Refusal {
    pub fn slug(self) -> &'static str {
        match self {
            Refusal::EscapedSlash => "escaped-slash",
            Refusal::Backslash => "backslash",
            Refusal::MatrixDotSegment => "matrix-dot-segment",
            Refusal::RouteMismatch => "path-route-mismatch",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::EscapedSlash => "the path has an encoded slash or backslash (%2F, %5C)",
            Refusal::Backslash => "the path has a backslash",
            Refusal::MatrixDotSegment => {
                "the path has a dot-segment with a ; parameter (such as ..;)"
            }
            Refusal::RouteMismatch => "the path routes differently under the route's path policy",
        }
    }
}

impl Policy {
    pub fn reading(&self) -> Reading {
        Reading {
            decode_escaped_slashes: self.escaped_slash == Action::Decode,
            ignore_params: self.matrix_params == Action::Reject,
        }
    }

    /// The first finding this policy refuses, in the order escaped slash, backslash,
    /// matrix dot-segment.
    pub fn refusal(&self, f: Findings) -> Option<Refusal> {
        if f.escaped_slash && self.escaped_slash == Action::Reject {
            Some(Refusal::EscapedSlash)
        } else if f.backslash && self.backslash == Action::Reject {
            Some(Refusal::Backslash)
        } else if f.matrix_dot_segment && self.matrix_params == Action::Reject {
            Some(Refusal::MatrixDotSegment)
        } else {
            None
        }
    }
}

/// `strip_prefix` on the path the router matched: with `ignore_params`, the prefix is
/// compared with the segments as routed (without `;` parameters), and the forwarded
/// path loses the segments that matched it, parameters included. `None` when the path
/// does not start with the prefix at a segment boundary.
pub fn strip_route_prefix<'a>(
    normalized: &'a str,
    prefix: &str,
    ignore_params: bool,
) -> Option<&'a str> {
    if !ignore_params || !normalized.contains(';') {
        let rest = normalized.strip_prefix(prefix)?;
        return (rest.is_empty() || rest.starts_with('/')).then_some(rest);
    }
    let mut routed = String::with_capacity(prefix.len());
    let mut start = 0;
    while start < normalized.len() {
        // `start` is at a '/'.
        let end = normalized[start + 1..]
            .find('/')
            .map_or(normalized.len(), |i| start + 1 + i);
        let name = strip_param(&normalized[start + 1..end]);
        if !name.is_empty() {
            routed.push('/');
            routed.push_str(name);
        }
        if routed == prefix {
            return Some(&normalized[end..]);
        }
        if routed.len() > prefix.len() {
            return None;
        }
        start = end;
    }
    None
}

/// The path the router matches: the normalised path itself, or, when `ignore_params`,
/// each segment without its `;` parameter and the segments left empty dropped (Tomcat
/// reads `/;x/admin` as `/admin`). Call it only on a path without matrix dot-segments
/// (they are refused first), so no dot-segment appears here.
pub fn route_form(normalized: &str, ignore_params: bool) -> Cow<'_, str> {
    if !ignore_params || !normalized.contains(';') {
        return Cow::Borrowed(normalized);
    }
    let mut out = String::with_capacity(normalized.len());
    for seg in normalized.split('/').skip(1) {
        let name = strip_param(seg);
        if !name.is_empty() {
            out.push('/');
            out.push_str(name);
        }
    }
    // A last segment that was only a parameter (`/a/;x`) leaves the directory `/a/`.
    let last_empty = normalized
        .rsplit('/')
        .next()
        .is_some_and(|last| strip_param(last).is_empty());
    if out.is_empty() || last_empty {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Fast check: most paths need no work, and then nothing is allocated.
fn needs_work(p: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'%' => return true,
            b'/' if prev == b'/' => return true,
            b'.' if prev == b'/' => {
                // "/." followed by end, "/" or "." (dot segments)
                match p.get(i + 1) {
                    None | Some(b'/') | Some(b'.') => return true,
                    _ => {}
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    normalize_with(path, Reading::default())
}

/// `normalize`, with the escaped-slash reading of a path policy.
pub fn normalize_with(path: &str, reading: Reading) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. escapes
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let c = h * 16 + l;
            if is_unreserved(c) || (reading.decode_escaped_slashes && matches!(c, b'/' | b'\\')) {
                decoded.push(c);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // 2 + 3. segments: drop empty ones (duplicate slashes) and resolve dot segments.
    let trailing_slash = decoded.ends_with(b"/");
    let mut out: Vec<&[u8]> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        last_was_dot = false;
        match seg {
            b"" => {}
            b"." => last_was_dot = true,
            b".." => {
                out.pop();
                last_was_dot = true;
            }
            s => out.push(s),
        }
    }
    let mut s = Vec::with_capacity(decoded.len());
    for seg in &out {
        s.push(b'/');
        s.extend_from_slice(seg);
    }
    if s.is_empty() || trailing_slash || last_was_dot {
        s.push(b'/');
    }
    // Only ASCII escapes were decoded into unreserved ASCII, so this stays valid UTF-8.
    Ok(Cow::Owned(
        String::from_utf8(s).map_err(|_| PathError::BadEscape)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn untouched_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/v1/orders").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            normalize("/a/.well-known/x").unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments() {
        assert_eq!(n("/public/../admin"), "/admin");
        assert_eq!(n("/api/v1/../../admin"), "/admin");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/..b"), "/a/..b");
    }

    #[test]
    fn slashes_and_escapes() {
        assert_eq!(n("//a///b/"), "/a/b/");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E%2E/admin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%7e"), "/a~");
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn decode_reading_turns_escaped_slashes_into_separators() {
        let decode = Reading {
            decode_escaped_slashes: true,
            ignore_params: true,
        };
        let d = |p| normalize_with(p, decode).unwrap().into_owned();
        assert_eq!(d("/public%2F..%2Fadmin"), "/admin");
        assert_eq!(d("/a%2fb"), "/a/b");
        assert_eq!(d("/a%5Cb"), "/a\\b");
        assert_eq!(n("/a%5cb"), "/a%5Cb");
    }

    #[test]
    fn findings() {
        let f = |p| inspect(&normalize(p).unwrap());
        assert!(f("/a%2fb").escaped_slash);
        assert!(f("/a%5Cb").escaped_slash);
        assert!(f("/a\\b").backslash);
        assert!(f("/public/..;/admin").matrix_dot_segment);
        assert!(f("/public/%2e%2e;x/admin").matrix_dot_segment);
        assert!(f("/a/.;x").matrix_dot_segment);
        assert!(!f("/a/..x;y").matrix_dot_segment);
        assert!(!f("/admin;x").matrix_dot_segment);
        assert_eq!(f("/plain/path"), Findings::default());
    }

    #[test]
    fn the_default_policy_refuses_all_three() {
        let p = Policy::default();
        let r = |path| p.refusal(inspect(&normalize(path).unwrap()));
        assert_eq!(r("/a%2Fb"), Some(Refusal::EscapedSlash));
        assert_eq!(r("/a\\b"), Some(Refusal::Backslash));
        assert_eq!(r("/a/..;/b"), Some(Refusal::MatrixDotSegment));
        assert_eq!(r("/a;v=1/b"), None);
        let keep = Policy {
            escaped_slash: Action::Keep,
            backslash: Action::Keep,
            matrix_params: Action::Keep,
        };
        assert_eq!(keep.refusal(inspect("/a%2F..;\\")), None);
        assert!(!keep.reading().ignore_params);
        let o = Override {
            escaped_slash: Some(Action::Decode),
            ..Override::default()
        };
        assert_eq!(o.over(keep).escaped_slash, Action::Decode);
        assert_eq!(o.over(keep).backslash, Action::Keep);
    }

    #[test]
    fn route_form_reads_segments_without_parameters() {
        assert_eq!(route_form("/admin;x", true), "/admin");
        assert_eq!(route_form("/;x/admin", true), "/admin");
        assert_eq!(route_form("/a;v=1/b;c", true), "/a/b");
        assert_eq!(route_form("/a/;x", true), "/a/");
        assert_eq!(route_form("/;x", true), "/");
        assert_eq!(route_form("/admin;x", false), "/admin;x");
        assert!(matches!(route_form("/plain", true), Cow::Borrowed(_)));
    }

    #[test]
    fn strip_route_prefix_counts_segments_as_routed() {
        assert_eq!(
            strip_route_prefix("/api/users", "/api", true),
            Some("/users")
        );
        assert_eq!(strip_route_prefix("/api", "/api", true), Some(""));
        assert_eq!(strip_route_prefix("/apix", "/api", true), None);
        assert_eq!(
            strip_route_prefix("/api;v=1/users", "/api", true),
            Some("/users")
        );
        assert_eq!(strip_route_prefix("/;x/api/u", "/api", true), Some("/u"));
        assert_eq!(strip_route_prefix("/api;v=1/users", "/api", false), None);
        assert_eq!(strip_route_prefix("/a;x/b/c", "/a/b", true), Some("/c"));
    }
}
