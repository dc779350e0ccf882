//! Property tests of routing under the path policies (issue 11 §3): for any request
//! path and any listener policy, the route chosen and the path forwarded agree.
//!
//! - Forwarding is a fixed point: the forwarded path, admitted again, reaches the same
//!   route and is forwarded unchanged (what is routed is what is forwarded).
//! - Under the default policy (all three `reject`), nothing a backend could read
//!   differently is left in the forwarded path, and a backend that strips `;`
//!   parameters and percent-decodes each segment once (Tomcat's and Spring's order)
//!   resolves it to a path that routes to the same route.
//!
//! Runs `choose_route`, the steps `admit` runs, over a router of named routes with and
//! without overrides; the seeds in `fuzz/corpus/path/` are replayed too.

use super::*;
use crate::path::{Action, Override, Policy};
use crate::proptest_support::{config, corpus, text};
use crate::runtime::router::{Conditions, Entry, PathMatch, Router};
use http::{HeaderMap, Method};
use proptest::prelude::*;

/// A route of the test router: its name and its `path_policy` override.
type R = (&'static str, Option<Override>);

fn router() -> Router<R> {
    let keep_slash = Override {
        escaped_slash: Some(Action::Keep),
        ..Override::default()
    };
    let raw = Override {
        backslash: Some(Action::Keep),
        matrix_params: Some(Action::Keep),
        ..Override::default()
    };
    let decode = Override {
        escaped_slash: Some(Action::Decode),
        ..Override::default()
    };
    let routes: [(PathMatch, R); 7] = [
        (PathMatch::Exact("/health".into()), ("health", None)),
        (PathMatch::Prefix("/admin".into()), ("admin", None)),
        (PathMatch::Prefix("/public".into()), ("public", None)),
        (
            PathMatch::Prefix("/files".into()),
            ("files", Some(keep_slash)),
        ),
        (PathMatch::Prefix("/raw".into()), ("raw", Some(raw))),
        (PathMatch::Prefix("/dec".into()), ("dec", Some(decode))),
        (PathMatch::Prefix("/".into()), ("catch-all", None)),
    ];
    Router::new(
        routes
            .into_iter()
            .map(|(path, value)| Entry {
                hosts: vec![],
                path,
                conditions: Conditions::default(),
                value,
            })
            .collect(),
    )
}

/// Every listener policy there is (3 × 2 × 2).
fn policies() -> Vec<Policy> {
    let mut out = Vec::new();
    for escaped_slash in [Action::Reject, Action::Decode, Action::Keep] {
        for backslash in [Action::Reject, Action::Keep] {
            for matrix_params in [Action::Reject, Action::Keep] {
                out.push(Policy {
                    escaped_slash,
                    backslash,
                    matrix_params,
                });
            }
        }
    }
    out
}

fn admit_path(r: &Router<R>, raw: &str, listener: Policy) -> Result<(R, String), Reject> {
    let find = |p: &str| r.find("", p, &Method::GET, &HeaderMap::new()).copied();
    choose_route(raw, listener, find, |r: &R| r.1, |a: &R, b: &R| a.0 == b.0)
        .map(|(route, read)| (route, read.forwarded.into_owned()))
}

fn unhex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// How a Tomcat- or Spring-like backend reads a path: `;` parameters removed from each
/// segment, then each segment percent-decoded once, then a decoded `/` or `\` taken as
/// a separator (the lenient stacks), then dot-segments resolved.
fn backend_view(forwarded: &str) -> String {
    let mut decoded = Vec::new();
    for seg in forwarded.split('/').skip(1) {
        let name = seg.split_once(';').map_or(seg, |(n, _)| n).as_bytes();
        decoded.push(b'/');
        let mut i = 0;
        while i < name.len() {
            match (
                name[i],
                name.get(i + 1).and_then(|&c| unhex(c)),
                name.get(i + 2).and_then(|&c| unhex(c)),
            ) {
                (b'%', Some(h), Some(l)) => {
                    decoded.push(h * 16 + l);
                    i += 3;
                }
                (b, _, _) => {
                    decoded.push(b);
                    i += 1;
                }
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = String::from("/");
    p.push_str(&out.join("/"));
    if decoded.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

fn check(r: &Router<R>, raw: &str) -> Result<(), TestCaseError> {
    for listener in policies() {
        let Ok((route, forwarded)) = admit_path(r, raw, listener) else {
            continue;
        };
        // A fixed point: admitted again, the same route and the same path.
        let again = admit_path(r, &forwarded, listener);
        prop_assert!(
            matches!(&again, Ok((r2, f2)) if r2.0 == route.0 && *f2 == forwarded),
            "{raw:?} under {listener:?}: routed to {} and forwarded {forwarded:?}, which \
             admitted again gives {again:?}",
            route.0
        );
        let effective = route.1.map_or(listener, |o| o.over(listener));
        if effective == Policy::default() {
            prop_assert_eq!(
                path::inspect(&forwarded),
                path::Findings::default(),
                "{:?} forwarded as {:?} under the default policy",
                raw,
                forwarded
            );
            let backend = backend_view(&forwarded);
            let backend_route = r
                .find("", &backend, &Method::GET, &HeaderMap::new())
                .map(|r| r.0);
            prop_assert_eq!(
                backend_route,
                Some(route.0),
                "{:?}: the gateway routed it to {}, a backend reads {:?}",
                raw,
                route.0,
                backend
            );
        }
    }
    Ok(())
}

/// Paths built from the pieces backends disagree on.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "admin", "public", "files", "raw", "dec", "health", "a", "..", ".", "..;", "..;x", ".;",
        "%2e%2e", "%2E", "%2F", "%2f", "%5C", "%5c", "\\", ";x", ";", ";v=1", "%61dmin", "adm%69n",
        "%25", "%252F", "%3B", "", "%",
    ]);
    prop::collection::vec((piece, any::<bool>()), 1..7).prop_map(|pieces| {
        let mut p = String::from("/");
        for (piece, slash) in pieces {
            p.push_str(piece);
            if slash {
                p.push('/');
            }
        }
        p
    })
}

#[test]
fn the_corpus_holds() {
    let r = router();
    for (name, bytes) in corpus("path") {
        check(&r, &text(&bytes)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn known_attacks_get_the_answers_the_issue_asks_for() {
    let r = router();
    let d = Policy::default();
    let refusal = |raw| match admit_path(&r, raw, d) {
        Err(Reject::BadPath(x)) => Some(x),
        _ => None,
    };
    assert_eq!(
        refusal("/public/..;/admin"),
        Some(path::Refusal::MatrixDotSegment)
    );
    assert_eq!(
        refusal("/public%2F..%2Fadmin"),
        Some(path::Refusal::EscapedSlash)
    );
    assert_eq!(
        refusal("/public\\..\\admin"),
        Some(path::Refusal::Backslash)
    );
    assert_eq!(
        refusal("/dec/x%2F..%2F..%2Fadmin"),
        Some(path::Refusal::RouteMismatch)
    );
    assert_eq!(admit_path(&r, "/admin;x", d).unwrap().0 .0, "admin");
    assert_eq!(admit_path(&r, "/;x/admin", d).unwrap().0 .0, "admin");
    let (route, fwd) = admit_path(&r, "/files/a%2Fb", d).unwrap();
    assert_eq!((route.0, fwd.as_str()), ("files", "/files/a%2Fb"));
    let (route, fwd) = admit_path(&r, "/dec/a%2Fb", d).unwrap();
    assert_eq!((route.0, fwd.as_str()), ("dec", "/dec/a/b"));
    // Without a route, the listener's policy still answers 400 rather than 404.
    let empty: Router<R> = Router::new(vec![]);
    assert!(matches!(
        admit_path(&empty, "/x%2Fy", d),
        Err(Reject::BadPath(path::Refusal::EscapedSlash))
    ));
    assert!(matches!(admit_path(&empty, "/x", d), Err(Reject::NotFound)));
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn route_and_forwarded_path_agree(raw in tricky_path()) {
        check(&router(), &raw)?;
    }

    #[test]
    fn any_text_is_admitted_or_refused_without_panic(s in any::<String>()) {
        let raw = format!("/{s}");
        check(&router(), &raw)?;
    }
}
