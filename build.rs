//! Stamps the binary with the commit it was built from, for
//! `gatehouse_build_info{version,commit}`. `GATEHOUSE_COMMIT` set in the build
//! environment wins (a container build has no `.git`); otherwise `git rev-parse`, and
//! `unknown` when there is no git or no repository.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=GATEHOUSE_COMMIT");
    let commit = std::env::var("GATEHOUSE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the ref it points at
    // (a commit on the branch). A worktree's git dir is not `.git/`, so ask git.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
                println!("cargo:rerun-if-changed={common}/{r}");
            }
        }
    }
    // Only characters a label value and a log line need no escaping for.
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(40)
        .collect();
    println!("cargo:rustc-env=GATEHOUSE_COMMIT={commit}");
}
