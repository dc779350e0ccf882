#!/usr/bin/env bash
# Gatehouse load-test harness: one command reproduces one, several or all scenarios.
#
#   loadtest/run.sh                      # all scenarios, writes loadtest/RESULTS.md
#   loadtest/run.sh proxy-small          # one scenario (others already in results/ stay in the report)
#   loadtest/run.sh path/to/mine.yaml    # your own scenario file
#   loadtest/run.sh --quick              # CI smoke: proxy-small + slowloris, wrk only, ~30 s,
#                                        # writes loadtest/results/smoke.md, exit != 0 on failure
#   loadtest/run.sh --help               # every option
#
# Installs what is missing (apt-get: wrk nginx haproxy python3-yaml util-linux curl openssl redis-server,
# nghttp2-client for h2-small;
# oha via `cargo install oha --locked`, cached in loadtest/.bin), builds the gateway
# and the echo backend, then hands over to loadtest/lib/harness.py.
set -euo pipefail

LOADTEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LOADTEST/.." && pwd)"
OHA_ROOT="$LOADTEST/.bin"
OHA_VERSION="${OHA_VERSION:-1.16.0}"

NO_BUILD=0; REPORT_ONLY=0
for a in "$@"; do
  case "$a" in
    --no-build) NO_BUILD=1 ;;
    --report-only|--list) REPORT_ONLY=1 ;;
    -h|--help) exec python3 "$LOADTEST/lib/harness.py" --help ;;
  esac
done

log() { printf '[run.sh] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- dependencies
install_deps() {
  local missing=()
  command -v wrk >/dev/null     || missing+=(wrk)
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v python3 >/dev/null || missing+=(python3)
  command -v curl >/dev/null    || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)       # TLS scenarios: test certificate, s_time
  command -v redis-server >/dev/null || missing+=(redis-server)   # services: [redis]
  if ! python3 -c 'import yaml' 2>/dev/null && ! /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
    missing+=(python3-yaml)
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing: ${missing[*]}"
    local SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    # the Debian packages start system services; the harness runs its own instances
    for svc in nginx haproxy redis-server; do
      if [[ " ${missing[*]} " == *" $svc"* ]] && command -v systemctl >/dev/null; then
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
      fi
    done
  fi
}

install_oha() {
  # cached: loadtest/.bin/bin/oha (OHA_ROOT), else oha on PATH or in ~/.cargo/bin
  local c
  for c in "${OHA:-}" "$OHA_ROOT/bin/oha" "$(command -v oha || true)" "$HOME/.cargo/bin/oha"; do
    if [[ -n "$c" && -x "$c" ]]; then export OHA="$c"; return; fi
  done
  if ! command -v cargo >/dev/null; then
    log "oha missing and cargo not found (install Rust from rustup.rs)"; exit 1
  fi
  log "building oha $OHA_VERSION (cargo install --locked, one job; cached in $OHA_ROOT; ~9 minutes)"
  CARGO_BUILD_JOBS=1 cargo install oha --version "$OHA_VERSION" --locked --root "$OHA_ROOT" \
      >"$OHA_ROOT/oha-install.log" 2>&1 || { tail -30 "$OHA_ROOT/oha-install.log"; exit 1; }
  export OHA="$OHA_ROOT/bin/oha"
}

build_gatehouse() {
  local bins=(--bin gatehouse-echo)
  [[ " $NEEDS " == *" gatehouse "* ]] && bins+=(--bin gatehouse)
  [[ " $NEEDS " == *" pingora "* ]] && bins+=(--example bare_pingora)
  log "cargo build --release ${bins[*]}"
  (cd "$REPO" && cargo build --release "${bins[@]}") || { log "cargo build failed"; exit 1; }
}

mkdir -p "$OHA_ROOT" "$LOADTEST/results"
export PATH="$PATH:/usr/sbin:/sbin"
[[ $REPORT_ONLY == 1 ]] || install_deps
PY=python3
python3 -c 'import yaml' 2>/dev/null || PY=/usr/bin/python3
if [[ $REPORT_ONLY == 0 ]]; then
  # What this command line needs (oha for open-loop scenarios, the gateway if it is a target).
  NEEDS=" $("$PY" "$LOADTEST/lib/harness.py" --print-needs "$@") "
  [[ "$NEEDS" == *" oha "* ]] && install_oha
  if [[ "$NEEDS" == *" h2load "* ]] && ! command -v h2load >/dev/null; then   # h2-small
    log "installing: nghttp2-client (h2load)"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nghttp2-client
  fi
  [[ $NO_BUILD == 1 ]] || build_gatehouse
fi

# 10,000 idle client connections + the proxies' own sockets need more than 1024 fds. (The
# harness tries to raise the hard limit too, for proxy-idle-max; that needs CAP_SYS_RESOURCE.)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --------------------------------------------------------------- run + cleanup
# harness.py starts every child in its own process group (with PDEATHSIG) and lists
# the groups in $GH_LOADTEST_PIDS; the trap kills whatever is still alive, even if
# the harness itself was killed.
export GH_LOADTEST_PIDS="$(mktemp /tmp/gh-loadtest-pids.XXXXXX)"
HPID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$HPID" ]] && kill -0 "$HPID" 2>/dev/null; then
    kill -TERM "$HPID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$HPID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HPID" 2>/dev/null || true
  fi
  if [[ -s "$GH_LOADTEST_PIDS" ]]; then
    while read -r pg; do [[ -n "$pg" ]] && kill -KILL -- "-$pg" 2>/dev/null || true; done <"$GH_LOADTEST_PIDS"
  fi
  rm -f "$GH_LOADTEST_PIDS"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PIN=(); if [[ $(nproc) -ge 2 ]]; then PIN=(taskset -c 0); fi   # harness + load generators on CPU 0
"${PIN[@]}" "$PY" "$LOADTEST/lib/harness.py" "$@" &
HPID=$!
wait "$HPID"
