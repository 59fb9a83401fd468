#!/usr/bin/env bash
# Reruns the hostile-input attacks against a release build of certgate and prints, per
# attack, the gateway's RSS and open file descriptors (before, peak, after), how long until
# every attacking connection was closed, and a legitimate client's successes and failures
# meanwhile. Loopback only; needs python3. Results: benches/HOSTILE.md.
#
#   benches/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

cargo build --release --locked --bin certgate
LG=$(cargo build --release --locked --bench loadgen --message-format=json 2>/dev/null |
  grep '"kind":\["bench"\].*"name":"loadgen"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$LG" ] || { echo "hostile.sh: could not build the load generator" >&2; exit 1; }

"$LG" pki --out "$TMP" >/dev/null
C=$TMP/certs
"$LG" upstream --listen 127.0.0.1:0 --port-file "$TMP/upstream.port" --lifetime 3600 >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$TMP/upstream.port" ] && break || sleep 0.1; done
mapfile -t P < <("$LG" ports 3)
cat >"$TMP/certgate.yaml" <<YAML
listen: "127.0.0.1:${P[0]}"
tls:
  cert: $C/server.pem
  key: $C/server.key
client_auth:
  mode: optional
identity:
  account_from: [san_uri, san_email, subject_cn]
upstream:
  url: "http://127.0.0.1:$(cat "$TMP/upstream.port")"
state:
  backend: embedded
  path: $TMP/state.db
enrollment:
  enabled: true
  ca_cert: $C/enroll-ca.pem
  ca_key: $C/enroll-ca.key
  public_url: "https://localhost:${P[0]}"
admin:
  listen: "127.0.0.1:${P[1]}"
  token_file: $TMP/secrets/admin-token
metrics:
  listen: "127.0.0.1:${P[2]}"
limits:
  header_read_timeout: 5s
  idle_timeout: 10s
  send_timeout: 10s
log:
  level: error
YAML
target/release/certgate run --config "$TMP/certgate.yaml" >"$TMP/certgate.log" 2>&1 &
CG=$!
PIDS+=("$CG")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:${P[2]}/readyz" >/dev/null 2>&1 && break || sleep 0.1; done
echo "certgate $(git rev-parse --short HEAD), limits: header_read_timeout 5s, idle_timeout 10s, send_timeout 10s, h2_control_frames_per_second 1000 (default)"
python3 benches/hostile.py --port "${P[0]}" --pid "$CG" --ca "$C/server-ca.pem" \
  --cert "$C/client-ec.pem" --key "$C/client-ec.key"
curl -s "http://127.0.0.1:${P[2]}/metrics" | grep -E '^certgate_h2_abuse_total' || true
