#!/usr/bin/env bash
# Mints an HS256 JWT that the demo config (conf/demo.yaml, issuer `demo`) accepts.
# usage: scripts/demo-token.sh [SUB] [SCOPES] [TTL_SECONDS]
#   SUB defaults to partner-x (a consumer listed under jwt_subjects), SCOPES to
#   "orders:read", TTL to 3600. The secret is DEMO_JWT_SECRET, as in the config.
# Needs only bash and openssl. For the demo only: real issuers sign with their own keys.
set -euo pipefail
secret=${DEMO_JWT_SECRET:-demo-hmac-secret-change-me-0123456789}
sub=${1:-partner-x}
scope=${2:-orders:read}
ttl=${3:-3600}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
payload=$(printf '{"iss":"https://demo.gatehouse.local/","aud":"gatehouse-demo","sub":"%s","scope":"%s","iat":%d,"exp":%d}' \
  "$sub" "$scope" "$now" "$((now + ttl))" | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -hmac "$secret" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"
