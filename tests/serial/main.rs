//! The integration tests that must run alone, one at a time, in a binary of their own.
//!
//! Cargo runs test binaries one after another, so nothing else runs while this one does,
//! and every test here takes `SERIAL`:
//! - `cache_storage` installs a counting global allocator and compares what it counted
//!   with what the cache storage charged, and `limits_flood` compares this process's RSS
//!   before and after a million keys: any other test allocating in the same process would
//!   be counted too, so they cannot share the `it` binary;
//! - `zero_downtime` drives >= 1,000 req/s for >= 10 s per test and asserts that rate:
//!   next to other tests on a 2-core machine it would starve them (their timing bounds)
//!   and be starved.

#[path = "../it/common/mod.rs"]
mod common;

mod cache_storage;
mod limits_flood;
mod zero_downtime;

/// One test of this binary at a time: the allocation counter and RSS are process-wide,
/// and the load tests need the machine to themselves.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
