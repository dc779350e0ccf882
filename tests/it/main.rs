//! The black-box integration tests, one module per area, in one test binary.
//!
//! One binary links Pingora and the gateway library once instead of once per file, which
//! is what filled the CI disk and spent most of the build on linking. Sharing one process
//! is safe here because:
//! - every gateway is its own `gatehouse` process (`common::gateway` spawns the binary),
//!   so its clock (`GATEHOUSE_TEST_CLOCK`), statics and environment are per test; the
//!   tests never set environment variables of this process;
//! - every port is ephemeral (`common::free_port`, upstreams bound to port 0), and every
//!   test writes into its own `common::TestDir`;
//! - the library code called in process (`hash_key`, the JWT verifier) is pure.
//!
//! The tests that measure this process's memory, and the zero-downtime tests that need the
//! machine to themselves, run alone in the `serial` binary (tests/serial/main.rs).

mod common;

mod architecture;
mod auth;
mod bad_input;
mod balancing;
mod cache_auth;
mod cache_concurrency;
mod cache_freshness;
mod cache_ops;
mod cache_variants;
mod config_check;
mod defaults;
mod echo;
mod failures;
mod jose_vectors;
mod jwks;
mod limits;
mod limits_durable;
mod limits_redis;
mod operations;
mod routing;
mod tls_h2;
