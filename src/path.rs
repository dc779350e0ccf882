//! Path normalisation, applied before routing so that a path cannot reach a route that
//! its canonical form would not (`/public/../admin` is `/admin`). Steps, in order:
//! percent-decode unreserved characters (RFC 3986 §2.3) and upper-case the other escapes,
//! collapse duplicate slashes, remove `.` and `..` segments (RFC 3986 §5.2.4).
//! `%2F` stays encoded, so it never becomes a separator.
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
            if is_unreserved(c) {
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
}
