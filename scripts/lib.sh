# Shared by scripts/*.sh: install missing Debian packages (we may be root on a fresh machine).
ensure_packages() {
  # usage: ensure_packages command:package ...
  local missing=()
  for pair in "$@"; do
    local cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
      $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"
    }
  fi
}

ensure_build_deps() {
  ensure_packages cmake:cmake cc:build-essential pkg-config:pkg-config curl:curl openssl:openssl python3:python3
  command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
}
