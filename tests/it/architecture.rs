//! The layering test: the crate's modules import each other one way only.
//!
//! The table below *is* the documented order (docs/ARCHITECTURE.md draws the same
//! picture). A top-level module may use a module of a lower layer, or one of the same
//! layer that its row lists explicitly; anything else (an import that points up, or a
//! module missing from the table) fails the test with the file and line. It reads the
//! source as text: `crate::x` paths (grouped `use crate::{x, y}` too) and `super::`
//! paths that climb out of a top-level module. Comments are skipped, so a doc link to
//! a higher layer is allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (layer, module, same-layer modules it may use). Lower layers come first.
const LAYERS: &[(u8, &str, &[&str])] = &[
    // 0: leaves, depend on nothing in the crate.
    (0, "config", &["proptest_support"]),
    (0, "clock", &[]),
    // A rejection can name the path policy's refusal (`Reject::BadPath`).
    (0, "error", &["path"]),
    (0, "metrics", &[]),
    (0, "path", &[]),
    // test support for the property tests (compiled only with cfg(test))
    (0, "proptest_support", &[]),
    (1, "tls", &[]),
    (1, "accesslog", &[]),
    // 2: the building blocks compile themselves from config; none knows the proxy.
    (2, "store", &[]),
    (2, "upstream", &[]),
    (2, "cache", &[]),
    // build and config identity, process readings, traces (the Ctx holds a request's).
    (2, "telemetry", &[]),
    (3, "policy", &[]),
    // 4: the compiled snapshot and the per-request context.
    (4, "runtime", &[]),
    (5, "context", &[]),
    // 6: Pingora's phases.
    (6, "proxy", &[]),
    // 7: what runs around the proxy.
    (7, "admin", &[]),
    // our ServerApp around the proxy: the connection loop.
    (7, "server", &[]),
    (8, "upgrade", &[]),
    (9, "lifecycle", &[]),
    // 10: the re-exports the benches and integration tests use (every other module is
    // private to the crate).
    (10, "internals", &[]),
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to, and its depth below the crate root (how
/// many `super::` hops reach the root): 1 for src/clock.rs and src/cache/mod.rs, 2 for
/// src/cache/phases.rs. `None` for the crate root files and binaries, which may use
/// anything.
fn owner(rel: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [f] if f == "lib.rs" || f == "main.rs" => None,
        [f] => Some((f.trim_end_matches(".rs").to_string(), 1)),
        [d, ..] if d == "bin" => None,
        [d, rest @ ..] => {
            let is_mod = rest.last().is_some_and(|l| l == "mod.rs");
            Some((d.clone(), 1 + rest.len() - usize::from(is_mod)))
        }
        [] => None,
    }
}

/// Code without `//` comments (doc comments included) or string literals.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '\'' && chars.peek() == Some(&'"') {
            // the char literal '"' opens no string
            chars.next();
            continue;
        }
        if c == '"' {
            in_str = true;
            continue;
        }
        if c == '/' && chars.peek() == Some(&'/') {
            break;
        }
        out.push(c);
    }
    out
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Top-level module names used in a file's code, each with the byte offset where its
/// path starts (a grouped `use crate::{...}` may span lines).
fn uses(code: &str, depth: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let at = from + i;
        let after = &code[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // use crate::{a, b::c, d::{e, f}}: the top-level names at brace depth 0.
            let mut level = 0usize;
            let mut start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => level += 1,
                    '}' if level == 0 => break,
                    '}' => level -= 1,
                    ',' if level == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push((at, ident_at(&group[j..])));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((at, ident_at(after)));
        }
        from = at + "crate::".len();
    }
    // A `super::` chain as long as the file's depth reaches the crate root: the next
    // name is a top-level module.
    let mut from = 0;
    while let Some(i) = code[from..].find("super::") {
        let at = from + i;
        let starts_path = !code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let mut hops = 0;
        let mut tail = &code[at..];
        while let Some(t) = tail.strip_prefix("super::") {
            hops += 1;
            tail = t;
        }
        if starts_path && hops >= depth {
            out.push((at, ident_at(tail)));
        }
        from = at + hops * "super::".len();
    }
    out
}

fn names(code: &str, depth: usize) -> Vec<String> {
    uses(code, depth).into_iter().map(|(_, n)| n).collect()
}

/// Every import that breaks the table: (file:line, from, to).
fn violations() -> Vec<String> {
    let table: BTreeMap<&str, (u8, &[&str])> = LAYERS
        .iter()
        .map(|(l, m, same)| (*m, (*l, *same)))
        .collect();
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap_or(&f).to_path_buf();
        let Some((module, depth)) = owner(&rel) else {
            continue;
        };
        let Some(&(layer, same)) = table.get(module.as_str()) else {
            bad.push(format!(
                "src/{}: module `{module}` is not in the layering table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let code: Vec<String> = text.lines().map(code_of).collect();
        let code = code.join("\n");
        // An inline `mod tests {` (in practice at the end of a file) is one level deeper:
        // its code is scanned with that depth, the code before it with the file's.
        let inline = code
            .find("\nmod ")
            .or_else(|| code.find("\npub(crate) mod "))
            .filter(|&i| {
                code[i..].lines().nth(1).is_some()
                    && code[i + 1..]
                        .split('\n')
                        .next()
                        .is_some_and(|l| l.trim_end().ends_with('{'))
            });
        let parts = match inline {
            Some(i) => vec![(0, &code[..i], depth), (i, &code[i..], depth + 1)],
            None => vec![(0, &code[..], depth)],
        };
        let found = parts.into_iter().flat_map(|(base, part, d)| {
            uses(part, d)
                .into_iter()
                .map(move |(at, dep)| (base + at, dep))
        });
        for (at, dep) in found {
            if dep == module || dep.is_empty() || dep == "self" {
                continue;
            }
            let ok = match table.get(dep.as_str()) {
                Some(&(l, _)) => l < layer || same.contains(&dep.as_str()),
                None => false,
            };
            if !ok {
                let line = code[..at].matches('\n').count() + 1;
                bad.push(format!("src/{}:{line}: {module} -> {dep}", rel.display()));
            }
        }
    }
    bad
}

#[test]
fn modules_import_only_lower_layers() {
    let bad = violations();
    assert!(
        bad.is_empty(),
        "imports against the layering table:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn the_scanner_sees_every_import_form() {
    assert_eq!(names("use crate::proxy::Ctx;", 1), vec!["proxy"]);
    assert_eq!(
        names(
            "use crate::{\n    config::X,\n    metrics, store::{a, b}};",
            1
        ),
        vec!["config", "metrics", "store"]
    );
    assert_eq!(
        names("let m = crate::metrics::metrics();", 1),
        vec!["metrics"]
    );
    // From src/cache/phases.rs (depth 2): super:: is cache itself, super::super:: the root.
    assert!(names("use super::rules;", 2).is_empty());
    assert_eq!(names("use super::super::proxy::Ctx;", 2), vec!["proxy"]);
    // From src/clock.rs or src/cache/mod.rs (depth 1): super:: is the root.
    assert_eq!(names("use super::config;", 1), vec!["config"]);
    assert!(code_of("// use crate::proxy::Ctx;").is_empty());
    assert_eq!(code_of(r#"let s = "crate::proxy"; x"#), "let s = ; x");
}
