#!/usr/bin/env bash
# Starts the demo: two echo backends (127.0.0.1:9001, :9002) and Gatehouse on
# conf/demo.yaml (proxy on :8080, admin on :9901). Ctrl-C stops everything.
# The demo's credentials are public: it only runs on loopback (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
cargo build --release --bin gatehouse --bin gatehouse-echo
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
./target/release/gatehouse-echo --listen 127.0.0.1:9001 --name echo-a & pids+=($!)
./target/release/gatehouse-echo --listen 127.0.0.1:9002 --name echo-b & pids+=($!)
./target/release/gatehouse run -c "${GATEHOUSE_CONFIG:-conf/demo.yaml}" & pids+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9901/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "==> Gatehouse is ready: proxy http://127.0.0.1:8080, admin http://127.0.0.1:9901 (token: demo-admin-token)"
wait -n "${pids[@]}"
