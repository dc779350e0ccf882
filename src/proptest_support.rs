//! What the property tests share: their bounded run and the seed corpus.
//!
//! Each target keeps seed inputs in `fuzz/corpus/<target>/`, one input per file, replayed
//! on every `cargo test` before the random cases: interesting shapes found by hand, and
//! every input that once failed (named `regression-*`), so a fixed bug stays fixed.
//! The random pass is bounded to keep `cargo test` within seconds; `PROPTEST_CASES=N`
//! runs N cases per property instead (e.g. 100000 for a longer hunt).

use proptest::test_runner::Config;
use std::path::PathBuf;

/// The corpus directory of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every seed of `target`, as (file name, bytes), sorted by name. Panics when the
/// directory is missing or empty: a corpus that silently vanished tests nothing.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "corpus {} is empty", dir.display());
    out
}

/// A corpus seed as text, for targets whose input is a string (lossy: a seed is meant to
/// be text; invalid UTF-8 becomes U+FFFD).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `cases` random cases (or `PROPTEST_CASES`), no failure files written into the source
/// tree (failures are added to the corpus by hand instead), shrinking bounded.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    }
}
