#!/usr/bin/env bash
# Runs every test: unit and integration tests (real sockets on loopback), the benches
# in test mode, lints, and the load-test harness smoke run. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
ensure_packages redis-server:redis-server wrk:wrk nginx:nginx haproxy:haproxy
# promtool checks /metrics (tests/it/observability.rs); headless Chromium loads the status page.
ensure_packages promtool:prometheus chromium:chromium
export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "==> cargo test"
cargo test --all-targets
echo "==> load-test harness smoke run"
loadtest/run.sh --quick
