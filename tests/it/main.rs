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

mod aggregate;
mod architecture;
mod auth;
mod bad_input;
mod balancing;
mod breaker;
mod cache_auth;
mod cache_concurrency;
mod cache_forwarded;
mod cache_freshness;
mod cache_ops;
mod cache_variants;
mod compression;
mod config_check;
mod cors;
mod defaults;
mod echo;
mod failures;
mod grafana;
mod grpc;
mod ip_rules;
mod jose_vectors;
mod jwks;
mod keys_bounds;
mod limits;
mod limits_durable;
mod limits_redis;
mod mirror;
mod observability;
mod operations;
mod path_protocol;
mod retries;
mod routing;
mod server_loop;
mod shape_limits;
mod split;
mod status_page;
mod streaming;
mod tls_h2;
mod traces;
mod transforms;
mod versions;
mod websocket;

/// With `autotests = false` (Cargo.toml), a test file cargo does not know of is never
/// built: a new `tests/<name>.rs` or a file here without its `mod` line would pass
/// silently. Every file must be a module of one of the two binaries.
#[test]
fn every_test_file_is_a_module_of_a_test_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let rs_files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".rs").map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    let outside = rs_files(&tests);
    assert!(
        outside.is_empty(),
        "never built (autotests = false): tests/{}.rs; move into tests/it/ and add its `mod`",
        outside.join(".rs, tests/")
    );
    for bin in ["it", "serial"] {
        let main = std::fs::read_to_string(tests.join(bin).join("main.rs")).expect("main.rs");
        for module in rs_files(&tests.join(bin)) {
            if module != "main" {
                assert!(
                    main.lines().any(|l| l == format!("mod {module};")),
                    "tests/{bin}/{module}.rs has no `mod {module};` in tests/{bin}/main.rs"
                );
            }
        }
    }
}
