#!/usr/bin/env bash
# certgate vs nginx vs HAProxy with the same mTLS setup, side by side on this machine.
#
#   benches/compare.sh            # full run (about 15 minutes), writes benches/RESULTS.md
#   benches/compare.sh --quick    # short smoke run, writes nothing into the repository
#
# What it does:
#   1. installs nginx and HAProxy from Debian when missing, and tries to install perf
#      (linux-perf; optional: without it, or without permission to use it, system calls are
#      not counted and the report says why);
#   2. builds certgate (release), the benchmark-only certgate that skips the per-request
#      revocation/reset check (feature bench-skip-state-check, used for nothing else), and
#      the load generator (benches/loadgen, a `cargo bench` target);
#   3. makes one test PKI with certgate's own code (ECDSA P-256 server and CAs; client
#      certificates with ECDSA P-256 and RSA-2048 keys) and starts one fast HTTP/1.1
#      upstream on loopback;
#   4. configures the three gateways equivalently (client certificate required and
#      verified, identity headers forwarded, keep-alive to the upstream), each twice: with
#      the full identity header set and with a small one (account, serial, fingerprint);
#      pins the gateway under test to one core and the load generator (with the upstream)
#      to the other;
#   5. measures keep-alive c=50 in two topologies (the gateway alone on its core; the
#      gateway and the upstream sharing it) with both header sets, keep-alive c=1, a full
#      handshake per request and a resumed session per request, in TLS 1.3 and 1.2, with
#      the proxy's and the upstream's CPU per request, HTTP/2 from the client (50 streams
#      over a few connections; HTTP/1.1 keep-alive to the upstream), a 1 GiB download and
#      upload through each gateway and straight to the upstream (MiB/s, and the gateway's
#      resident memory sampled during the transfer), plus 10,000 idle connections, what
#      certgate's signed identity assertion and access log cost (each on vs off), the cost of
#      the state check, the per-request decision (criterion) and the crypto ceiling
#      (openssl speed, aws-lc); in every load run the server's CPU time is read from
#      /proc/<pid>/stat as user and kernel time, and, when perf works here (checked once),
#      its system calls are counted over the same window (`perf stat -e
#      raw_syscalls:sys_enter`, which adds a few tens of ns to each of its system calls);
#   6. prints the tables (side by side, targets, where the CPU goes: user and kernel µs and
#      system calls per request with what the targets leave for user space, crypto ceiling,
#      state check cost, load generator check) and writes them, with machine, versions,
#      load average and the exact configurations, to benches/RESULTS.md.
#
# Everything runs on 127.0.0.1, every run is bounded in time, and all generated files live
# in a temporary folder that is removed at the end (KEEP_TMP=1 keeps it).
#
# Environment knobs: PREBUILT (a folder with the executables certgate, certgate-skip,
# loadgen and hot_path, e.g. $TMP/bin of a run kept with KEEP_TMP=1: used instead of
# building), DURATION (measured seconds per run, 8), WARMUP (2), ROUNDS (1; the
# median round is reported), STATE_ROUNDS (3), IDLE_CONNS (10000), SERVER_CORE (0),
# CLIENT_CORE (1), RESULTS (output file), SERVERS ("certgate nginx haproxy"),
# COUNT_SYSCALLS (1; 0 leaves perf out), FEATURE_ROUNDS (3), H2_CONNS (connections the
# 50 HTTP/2 streams share, 5), TRANSFER_BYTES (1 GiB; --quick 256 MiB), PARTS (which
# blocks run: "load h2 transfer idle features state checks", all by default; a partial
# run is for trying things out).

set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h | --help)
      sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "compare.sh: unknown argument $a (try --help)" >&2
      exit 2
      ;;
  esac
done

if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-2}
  WARMUP=${WARMUP:-0.5}
  STATE_ROUNDS=${STATE_ROUNDS:-1}
  FEATURE_ROUNDS=${FEATURE_ROUNDS:-1}
  TRANSFER_BYTES=${TRANSFER_BYTES:-$((256 << 20))}
  IDLE_CONNS=${IDLE_CONNS:-1000}
  OPENSSL_SECONDS=1
else
  OPENSSL_SECONDS=2
fi
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
STATE_ROUNDS=${STATE_ROUNDS:-3}
IDLE_CONNS=${IDLE_CONNS:-10000}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
SERVERS=${SERVERS:-certgate nginx haproxy}
COUNT_SYSCALLS=${COUNT_SYSCALLS:-1}
FEATURE_ROUNDS=${FEATURE_ROUNDS:-3}
H2_CONNS=${H2_CONNS:-5}
TRANSFER_BYTES=${TRANSFER_BYTES:-$((1 << 30))}
PARTS=${PARTS:-load h2 transfer idle features state checks}
part() { [[ " $PARTS " == *" $1 "* ]]; }
if [ "$QUICK" = 1 ]; then
  RESULTS=${RESULTS:-}
else
  RESULTS=${RESULTS:-$ROOT/benches/RESULTS.md}
fi

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  echo "compare.sh: $*" >&2
  exit 1
}

[ "$(uname -s)" = Linux ] || die "Linux only (taskset, /proc)"
[ "$(nproc --all)" -ge 2 ] || die "needs at least 2 cores (one for the server, one for the load)"

# --- 1. tools ---------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
UPDATED=0
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]} from Debian"
  $SUDO apt-get update -qq
  UPDATED=1
  # policy-rc.d keeps the packages from starting their own daemons on ports 80/443.
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
PATH=$PATH:/usr/sbin
# perf is optional: a failed install (no apt, no password-less sudo, no package) only means
# that system calls are not counted.
if [ "$COUNT_SYSCALLS" = 1 ] && ! command -v perf >/dev/null 2>&1; then
  say "installing linux-perf from Debian (optional, to count system calls)"
  SUDO_N=""
  [ -z "$SUDO" ] || SUDO_N="sudo -n"
  if { [ "$UPDATED" = 1 ] || $SUDO_N apt-get update -qq; } >/dev/null 2>&1 &&
    $SUDO_N apt-get install -y -qq --no-install-recommends linux-perf >/dev/null 2>&1; then
    :
  else
    echo "    could not install linux-perf: system calls will not be counted" >&2
  fi
fi
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((IDLE_CONNS + 2000)) ] ||
  die "open-file limit $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS"
# HAProxy needs two descriptors per connection it allows (maxconn) and refuses to start
# when they do not fit the open-file limit.
HAPROXY_MAXCONN=$(( ($(ulimit -n) - 100) / 2 ))
[ "$HAPROXY_MAXCONN" -le 40000 ] || HAPROXY_MAXCONN=40000

TMP=$(mktemp -d /tmp/certgate-compare.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  if [ "${KEEP_TMP:-0}" = 1 ]; then
    echo "kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
mkdir -p "$TMP/bin" "$TMP/nginx" "$TMP/out"

# --- 2. build ---------------------------------------------------------------------------
if [ -n "${PREBUILT:-}" ]; then
  say "reusing the binaries in $PREBUILT"
  for b in certgate certgate-skip loadgen hot_path; do
    [ -x "$PREBUILT/$b" ] || die "PREBUILT=$PREBUILT has no executable $b"
    cp "$PREBUILT/$b" "$TMP/bin/$b"
  done
else
  say "building certgate, the state-check-skipping benchmark build, and the load generator"
  cargo build --release --locked --bin certgate --features bench-skip-state-check
  cp target/release/certgate "$TMP/bin/certgate-skip"
  cargo build --release --locked --bin certgate
  cp target/release/certgate "$TMP/bin/certgate"
  # Both bench targets in one cargo call (one build of the library with its dev features).
  bench_exes=$(cargo build --release --locked --bench loadgen --bench hot_path --message-format=json 2>/dev/null |
    grep '"kind":\["bench"\]' | sed -n 's/.*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p')
  for b in loadgen hot_path; do
    e=$(awk -v b="$b" '$1 == b {print $2}' <<<"$bench_exes" | tail -1)
    [ -x "$e" ] || die "could not build the bench binary $b"
    cp "$e" "$TMP/bin/$b"
  done
fi
HP_EXE=$TMP/bin/hot_path
LG=$TMP/bin/loadgen

# Foreground commands only: a backgrounded function would put a subshell between $! and
# the process, so servers are started with taskset directly.
on_server() { taskset -c "$SERVER_CORE" "$@"; }
on_client() { taskset -c "$CLIENT_CORE" "$@"; }

# --- 3. PKI and upstream ----------------------------------------------------------------
say "test PKI and upstream"
"$LG" pki --out "$TMP"
C=$TMP/certs
taskset -c "$CLIENT_CORE" "$LG" upstream --listen 127.0.0.1:0 --port-file "$TMP/upstream.port" --lifetime 7200 \
  >"$TMP/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
for _ in $(seq 100); do [ -s "$TMP/upstream.port" ] && break || sleep 0.1; done
UP_PORT=$(cat "$TMP/upstream.port")

# System calls per request: perf is checked once, on the upstream's process; when it does
# not work here the load runs go without it and the report says why.
PERF_ARGS=()
SYSCALLS_NOTE=""
if [ "$COUNT_SYSCALLS" != 1 ]; then
  SYSCALLS_NOTE="COUNT_SYSCALLS=$COUNT_SYSCALLS"
elif ! PERF=$(command -v perf 2>/dev/null); then
  SYSCALLS_NOTE="perf is not installed (Debian package linux-perf)"
elif perf_err=$("$LG" syscalls --perf "$PERF" --pid "$UP_PID" --seconds 0.1 2>&1 >/dev/null |
  tr -s '\n\t' '  ' | sed 's/ *$//' | cut -c1-240); then
  PERF_ARGS=(--perf "$PERF")
else
  SYSCALLS_NOTE="\`perf stat -e raw_syscalls:sys_enter -p <pid>\` does not work here (${perf_err#loadgen: })"
fi
if [ -n "$SYSCALLS_NOTE" ]; then
  echo "    system calls will not be counted: $SYSCALLS_NOTE" >&2
fi

# Every gateway instance has its own port (certgate also an admin and a metrics port);
# all run at once.
mapfile -t PORTS < <("$LG" ports 32)
NEXT_PORT=0
port() { # name: assigns the next free port to P_<name>
  printf -v "P_$1" '%s' "${PORTS[$NEXT_PORT]}"
  NEXT_PORT=$((NEXT_PORT + 1))
}

# --- 4. configurations ------------------------------------------------------------------
# The headers of the small set: account, serial and fingerprint only.
CG_SMALL_HEADERS='headers:
  identity:
    subject: false
    not_after: false
    client_cert: false'
CG_LOG='log:
  level: warn'
# The access log on: one line per request (target certgate::access, level info) to stderr,
# which is a file here.
CG_ACCESS_LOG='log:
  level: "warn,certgate::access=info"
  access: true'
CG_ASSERTION="headers:
  assertion:
    audience: \"https://app.example.com\"
    key_file: $TMP/secrets/assertion-key.pem"
certgate_config() { # instance [extra YAML] [log YAML]
  local name=$1 extra=${2:-} log=${3:-$CG_LOG}
  local safe=${name//-/_}
  port "$safe"
  port "${safe}_admin"
  port "${safe}_metrics"
  local p="P_$safe" a="P_${safe}_admin" m="P_${safe}_metrics"
  set -- "$TMP/$name.yaml" "${!p}" "${!a}" "${!m}" "$TMP/state-$name.db"
  cp "$TMP/state.db" "$5"
  cat >"$1" <<EOF
listen: "127.0.0.1:$2"
tls:
  cert: $C/server.pem
  key: $C/server.key
  min_version: "1.2"
  session_resumption: true
client_auth:
  mode: required
identity:
  account_from: [san_uri, san_email, subject_cn]
upstream:
  url: "http://127.0.0.1:$UP_PORT"
state:
  backend: embedded
  path: $5
enrollment:
  enabled: true
  ca_cert: $C/enroll-ca.pem
  ca_key: $C/enroll-ca.key
  public_url: "https://localhost:$2"
admin:
  listen: "127.0.0.1:$3"
  token_file: $TMP/secrets/admin-token
metrics:
  listen: "127.0.0.1:$4"
limits:
  max_connections: 30000
  idle_timeout: 120s
$log
EOF
  [ -z "$extra" ] || echo "$extra" >>"$1"
}
certgate_config certgate
certgate_config certgate-small "$CG_SMALL_HEADERS"
certgate_config certgate-skip
certgate_config certgate-assertion "$CG_ASSERTION"
certgate_config certgate-access-log "" "$CG_ACCESS_LOG"

nginx_config() { # instance full|small
  local name=$1 set=$2 safe=${1//-/_}
  port "$safe"
  local p="P_$safe"
  local d=$TMP/nginx/$name
  mkdir -p "$d"
  local identity
  if [ "$set" = full ]; then
    identity="proxy_set_header X-Client-Cert-Subject \$ssl_client_s_dn;
            proxy_set_header X-Client-Cert-Not-After \$ssl_client_v_end;
            proxy_set_header Client-Cert \$ssl_client_escaped_cert;"
  else
    identity="proxy_set_header X-Client-Cert-Subject \"\";
            proxy_set_header X-Client-Cert-Not-After \"\";
            proxy_set_header Client-Cert \"\";"
  fi
  cat >"$TMP/$name.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $d/nginx.pid;
error_log $d/error.log warn;
daemon off;
events {
    worker_connections 32768;
}
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
    }
    # The account from the subject CN (nginx has no SAN variables).
    map \$ssl_client_s_dn \$client_account {
        default "";
        "~(^|,)CN=(?<cn>[^,]+)" \$cn;
    }
    server {
        listen 127.0.0.1:${!p} ssl http2;
        server_name localhost;
        ssl_certificate $C/server.pem;
        ssl_certificate_key $C/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate $C/enroll-ca.pem;
        ssl_verify_client on;
        ssl_verify_depth 1;
        ssl_session_cache shared:SSL:64m;
        ssl_session_timeout 1h;
        ssl_session_tickets on;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            # Identity headers: set, or cleared when a client sends them.
            proxy_set_header X-Client-Account \$client_account;
            proxy_set_header X-Client-Cert-Serial \$ssl_client_serial;
            proxy_set_header X-Client-Cert-Fingerprint \$ssl_client_fingerprint;
            $identity
            proxy_set_header Client-Cert-Chain "";
            proxy_set_header X-Forwarded-Client-Cert "";
            proxy_set_header Forwarded "";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host \$host;
            # The transfer cases stream both ways, as certgate and HAProxy do, instead of
            # buffering the body (to memory and temporary files) first.
            location /stream/ {
                proxy_pass http://app;
                proxy_buffering off;
            }
            location = /sink {
                proxy_pass http://app;
                proxy_request_buffering off;
                client_max_body_size 0;
            }
        }
    }
}
EOF
}
nginx_config nginx full
nginx_config nginx-small small

haproxy_config() { # instance full|small
  local name=$1 set=$2 safe=${1//-/_}
  port "$safe"
  local p="P_$safe"
  local identity=""
  if [ "$set" = full ]; then
    identity="http-request set-header X-Client-Cert-Subject %[ssl_c_s_dn(,0,rfc2253)]
    http-request set-header X-Client-Cert-Not-After %[ssl_c_notafter]
    http-request set-header Client-Cert :%[ssl_c_der,base64]:"
  fi
  cat >"$TMP/$name.cfg" <<EOF
global
    nbthread 1
    # Two descriptors per allowed connection must fit the open-file limit.
    maxconn $HAPROXY_MAXCONN
    tune.ssl.cachesize 200000
    # Room to add the identity headers to a request whose buffer is already full of body
    # (the default 1024 bytes is less than the full set; a failed rewrite answers 500).
    tune.maxrewrite 4096
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn $HAPROXY_MAXCONN
    timeout connect 5s
    timeout client 120s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 120s

frontend gate
    bind 127.0.0.1:${!p} ssl crt $C/server-bundle.pem ca-file $C/enroll-ca.pem verify required alpn h2,http/1.1
    # Client-sent identity headers never reach the app.
    http-request del-header ^x-client- -m reg
    http-request del-header ^x-forwarded- -m reg
    http-request del-header client-cert
    http-request del-header client-cert-chain
    http-request del-header forwarded
    http-request set-header X-Client-Account %[ssl_c_s_dn(CN)]
    http-request set-header X-Client-Cert-Serial %[ssl_c_serial,hex,lower]
    http-request set-header X-Client-Cert-Fingerprint %[ssl_c_der,sha2(256),hex,lower]
    $identity
    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend app

backend app
    http-reuse always
    server app 127.0.0.1:$UP_PORT
EOF
}
haproxy_config haproxy full
haproxy_config haproxy-small small

for f in certgate certgate-small certgate-assertion certgate-access-log; do
  "$TMP/bin/certgate" check-config --config "$TMP/$f.yaml" >/dev/null
done
for f in nginx nginx-small; do
  "$NGINX" -t -q -c "$TMP/$f.conf" -e "$TMP/nginx/$f/error.log"
done
for f in haproxy haproxy-small; do
  "$HAPROXY" -c -q -f "$TMP/$f.cfg"
done

# --- 5. measurements --------------------------------------------------------------------
OUT=$TMP/out
JSONL=$OUT/results.jsonl
: >"$JSONL"
: >"$OUT/loadavg.txt"
: >"$OUT/commands.txt"

wait_port() {
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

# Per gateway instance (certgate, certgate-small, nginx, nginx-small, …): its process,
# the processes whose CPU is counted (nginx: master and worker), and its port.
declare -A S_PID S_PIDS S_PORT
start_server() { # instance
  local pid port=P_${1//-/_}
  port=${!port}
  case "$1" in
    certgate-skip)
      taskset -c "$SERVER_CORE" "$TMP/bin/certgate-skip" run --config "$TMP/$1.yaml" >>"$OUT/$1.log" 2>&1 &
      pid=$!
      ;;
    certgate*)
      taskset -c "$SERVER_CORE" "$TMP/bin/certgate" run --config "$TMP/$1.yaml" >>"$OUT/$1.log" 2>&1 &
      pid=$!
      ;;
    nginx*)
      taskset -c "$SERVER_CORE" "$NGINX" -c "$TMP/$1.conf" -e "$TMP/nginx/$1/error.log" >>"$OUT/$1.log" 2>&1 &
      pid=$!
      ;;
    haproxy*)
      taskset -c "$SERVER_CORE" "$HAPROXY" -db -f "$TMP/$1.cfg" >>"$OUT/$1.log" 2>&1 &
      pid=$!
      ;;
  esac
  PIDS+=("$pid")
  wait_port "$port" || die "$1 did not start (see $OUT/$1.log)"
  sleep 0.3
  S_PID[$1]=$pid
  S_PORT[$1]=$port
  S_PIDS[$1]=$(
    {
      echo "$pid"
      pgrep -P "$pid" || true
    } | paste -sd, -
  )
}

stop_server() { # name
  kill "${S_PID[$1]}" 2>/dev/null || true
  wait "${S_PID[$1]}" 2>/dev/null || true
  # nginx needs its port free before a restart.
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${S_PORT[$1]}") 2>/dev/null || break
    sleep 0.05
  done
}

TLS_ARGS=(--sni localhost --server-cert "$C/server.pem")
loadavg() { echo "$(date -u +%H:%M:%S) $1: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"; }

# The server tag of an instance: the header set is part of the case name, not the server's.
tag_of() { # instance
  case "$1" in
    *-small) echo "${1%-small}" ;;
    *) echo "$1" ;;
  esac
}

run_case() { # instance case mode tls conns key [more loadgen args]
  local server=$1 case=$2 mode=$3 tls=$4 conns=$5 key=$6
  shift 6
  local cmd=(run --addr "127.0.0.1:${S_PORT[$server]}" "${TLS_ARGS[@]}" --cert "$C/client-$key.pem"
    --key "$C/client-$key.key" --tls "$tls" --mode "$mode" --conns "$conns"
    --duration "$DURATION" --warmup "$WARMUP" --server-pid "${S_PIDS[$server]}"
    --upstream-pid "$UP_PID" "${PERF_ARGS[@]}" --tag "server=$(tag_of "$server")" --tag "case=$case" "$@")
  echo "taskset -c $CLIENT_CORE loadgen ${cmd[*]}" >>"$OUT/commands.txt"
  on_client "$LG" "${cmd[@]}" >>"$JSONL" || die "load generator failed ($server $case)"
}

idle_case() { # server
  local n=$IDLE_CONNS
  if [ "$1" = haproxy ] && [ "$n" -gt $((HAPROXY_MAXCONN - 50)) ]; then
    n=$((HAPROXY_MAXCONN - 50))
    echo "    haproxy: holding $n idle connections (open-file limit $(ulimit -n))" >&2
  fi
  local cmd=(idle --addr "127.0.0.1:${S_PORT[$1]}" "${TLS_ARGS[@]}" --cert "$C/client-ec.pem"
    --key "$C/client-ec.key" --tls 1.3 --conns "$n" --hold 3
    --server-pid "${S_PIDS[$1]}" --tag "server=$1" --tag case=idle)
  echo "taskset -c $CLIENT_CORE loadgen ${cmd[*]}" >>"$OUT/commands.txt"
  on_client "$LG" "${cmd[@]}" >>"$JSONL" || die "idle run failed ($1)"
}

# Topology: "alone" keeps the upstream on the load generator's core, "shared" moves it
# (every thread, `taskset -a -p`) onto the gateway's core. The gateways stay where they are.
TOPOLOGY=alone
topology() { # alone|shared
  [ "$1" = "$TOPOLOGY" ] && return 0
  local core=$CLIENT_CORE
  [ "$1" = shared ] && core=$SERVER_CORE
  taskset -a -p -c "$core" "$UP_PID" >/dev/null
  TOPOLOGY=$1
  echo "    upstream moved to core $core ($1 topology)" >&2
}

# All gateways run at once (an idle one costs nothing) and every case is measured on each
# of them back to back, so that all three see the same background load.
if part load || part h2 || part transfer; then
  say "starting $SERVERS, each with the full and the small header set (gateways on core $SERVER_CORE, load and upstream on core $CLIENT_CORE)"
  for server in $SERVERS; do
    for inst in "$server" "$server-small"; do
      start_server "$inst"
      on_client "$LG" probe --addr "127.0.0.1:${S_PORT[$inst]}" "${TLS_ARGS[@]}" \
        --cert "$C/client-ec.pem" --key "$C/client-ec.key" --path /headers >"$OUT/headers-$inst.txt"
    done
  done
fi
# case mode tls conns key header-set topology
CASES=(
  "ka50-1.3 keepalive 1.3 50 ec full alone"
  "ka50-1.3-small keepalive 1.3 50 ec small alone"
  "ka1-1.3 keepalive 1.3 1 ec full alone"
  "ka50-1.2 keepalive 1.2 50 ec full alone"
  "ka50-1.2-small keepalive 1.2 50 ec small alone"
  "ka1-1.2 keepalive 1.2 1 ec full alone"
  "full-1.3 full 1.3 32 ec full alone"
  "full-1.2 full 1.2 32 ec full alone"
  "full-1.3-rsa full 1.3 32 rsa full alone"
  "resume-1.3 resume 1.3 32 ec full alone"
  "resume-1.2 resume 1.2 32 ec full alone"
  "ka50-1.3-shared keepalive 1.3 50 ec full shared"
  "ka50-1.3-shared-small keepalive 1.3 50 ec small shared"
  "ka50-1.2-shared keepalive 1.2 50 ec full shared"
  "ka50-1.2-shared-small keepalive 1.2 50 ec small shared"
)
for round in $(seq "$ROUNDS"); do
  part load || break
  for c in "${CASES[@]}"; do
    read -r case mode tls conns key set topo <<<"$c"
    topology "$topo"
    say "round $round/$ROUNDS: $case ($topo topology, $set header set)"
    loadavg "before $case round $round"
    for server in $SERVERS; do
      inst=$server
      [ "$set" = small ] && inst=$server-small
      run_case "$inst" "$case" "$mode" "$tls" "$conns" "$key"
    done
  done
  topology alone
done
if part load; then
  loadavg "after the load cases"
fi

# HTTP/2 from the client (ALPN h2), HTTP/1.1 keep-alive from each gateway to the upstream.
if part h2; then
  say "HTTP/2: 50 concurrent streams over $H2_CONNS connections"
  for round in $(seq "$ROUNDS"); do
    for server in $SERVERS; do
      run_case "$server" h2-1.3 h2 1.3 50 ec --h2-conns "$H2_CONNS"
    done
  done
  loadavg "after HTTP/2"
fi

# One large download and upload each, straight to the upstream (plain HTTP/1.1 on
# loopback, the upstream's memory sampled) and through each gateway (TLS 1.3, its memory
# sampled).
if part transfer; then
  say "$((TRANSFER_BYTES >> 20)) MiB download and upload: straight to the upstream, then through each gateway"
  for dir in download upload; do
    for target in direct $SERVERS; do
      if [ "$target" = direct ]; then
        args=(--plain --addr "127.0.0.1:$UP_PORT" --server-pid "$UP_PID")
      else
        args=(--addr "127.0.0.1:${S_PORT[$target]}" --server-pid "${S_PIDS[$target]}")
      fi
      cmd=(transfer "${args[@]}" "${TLS_ARGS[@]}" --cert "$C/client-ec.pem" --key "$C/client-ec.key"
        --tls 1.3 --direction "$dir" --bytes "$TRANSFER_BYTES" --tag "server=$target" --tag "case=$dir")
      echo "taskset -c $CLIENT_CORE loadgen ${cmd[*]}" >>"$OUT/commands.txt"
      on_client "$LG" "${cmd[@]}" >>"$JSONL" || die "transfer failed ($target $dir)"
    done
  done
  loadavg "after the transfers"
fi

if part load || part h2 || part transfer; then
  for server in $SERVERS; do
    stop_server "$server-small"
  done
fi

if part idle; then
  say "$IDLE_CONNS idle connections (each gateway restarted first)"
  for server in $SERVERS; do
    [ -z "${S_PID[$server]:-}" ] || stop_server "$server"
    start_server "$server"
    idle_case "$server"
    stop_server "$server"
  done
  loadavg "after idle"
else
  for server in $SERVERS; do
    [ -z "${S_PID[$server]:-}" ] || stop_server "$server"
  done
fi

if part features; then
  say "certgate features on vs off (alternating, $FEATURE_ROUNDS rounds each)"
  start_server certgate
  for f in assertion access-log; do
    start_server "certgate-$f"
  done
  for round in $(seq "$FEATURE_ROUNDS"); do
    for f in assertion access-log; do
      order=(certgate "certgate-$f")
      [ $((round % 2)) = 0 ] && order=("certgate-$f" certgate)
      for inst in "${order[@]}"; do
        run_case "$inst" "feat-$f" keepalive 1.3 50 ec
      done
      # The access log's file need not grow over the rounds.
      : >"$OUT/certgate-access-log.log"
    done
  done
  grep -qi '^X-Client-Assertion:' <(on_client "$LG" probe --addr "127.0.0.1:${S_PORT[certgate-assertion]}" \
    "${TLS_ARGS[@]}" --cert "$C/client-ec.pem" --key "$C/client-ec.key" --path /headers) >/dev/null ||
    die "certgate-assertion forwarded no X-Client-Assertion"
  for inst in certgate certgate-assertion certgate-access-log; do
    stop_server "$inst"
  done
  loadavg "after the features"
fi

if part state; then
  say "state check on vs skipped (alternating, $STATE_ROUNDS rounds each)"
  start_server certgate
  start_server certgate-skip
  for round in $(seq "$STATE_ROUNDS"); do
    for server in certgate certgate-skip; do
      run_case "$server" state-on keepalive 1.3 50 ec
    done
  done
  stop_server certgate
  stop_server certgate-skip
  loadavg "after state check"
fi

: >"$OUT/criterion.txt"
: >"$OUT/openssl-speed.txt"
echo '{}' >"$OUT/awslc-speed.json"
if part checks; then
  say "per-request decision (criterion) and crypto ceiling"
  on_server "$HP_EXE" --bench decision_cache_hit >"$OUT/criterion.txt" 2>&1 || true
  grep -A1 decision_cache_hit "$OUT/criterion.txt" | grep 'time:' >&2 || true
  on_server openssl speed -seconds "$OPENSSL_SECONDS" ecdsap256 ecdhp256 ecdhx25519 \
    >"$OUT/openssl-speed.txt" 2>/dev/null || true
  on_server "$LG" speed --seconds "$OPENSSL_SECONDS" >"$OUT/awslc-speed.json"
fi
loadavg "end"

# --- 6. report --------------------------------------------------------------------------
REPORT_ARGS=()
[ -z "$SYSCALLS_NOTE" ] || REPORT_ARGS+=(--syscalls-note "$SYSCALLS_NOTE")
"$LG" report --results "$JSONL" --openssl "$OUT/openssl-speed.txt" \
  --awslc "$OUT/awslc-speed.json" --criterion "$OUT/criterion.txt" "${REPORT_ARGS[@]}" >"$OUT/tables.md"
cat "$OUT/tables.md"

[ -n "$RESULTS" ] || exit 0
{
  echo "# certgate vs nginx vs HAProxy: mTLS gateway benchmark"
  echo
  echo "Written by \`benches/compare.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). Every figure below"
  echo "comes from this one run; ratios compare figures of the same run."
  echo
  echo "## Machine and versions"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc --all) cores;" \
    "$(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo); kernel $(uname -r)"
  echo "- certgate $(git describe --always --dirty 2>/dev/null || echo '?') ($(rustc --version)), rustls + aws-lc-rs"
  echo "- $("$NGINX" -v 2>&1), linked with $(ldd "$NGINX" | grep -o 'libssl[^ ]*' | head -1 || true)"
  echo "- $("$HAPROXY" -v | head -1)"
  echo "- $(openssl version)"
  echo "- gateways pinned to core $SERVER_CORE; load generator and upstream pinned to core $CLIENT_CORE" \
    "(\`taskset\`), except in the *shared* keep-alive cases, where the upstream runs on core $SERVER_CORE" \
    "with the gateway; measured ${DURATION}s per run after ${WARMUP}s warm-up; rounds: $ROUNDS;" \
    "each case runs on the three gateways back to back; the idle reading is taken on a freshly started gateway"
  echo
  echo "Load average (1, 5, 15 min) around each block:"
  echo
  echo '```'
  cat "$OUT/loadavg.txt"
  echo '```'
  echo
  cat "$OUT/tables.md"
  echo
  echo "## What each gateway forwards"
  echo
  echo "The upstream answers \`GET /headers\` with the headers it received. nginx 1.22 has no"
  echo "SHA-256 fingerprint and no SAN variables: it forwards the SHA-1 fingerprint, the account"
  echo "from the subject CN, the URL-encoded PEM in \`Client-Cert\` (not RFC 9440), and"
  echo "\`notAfter\` in OpenSSL's text form; it can only clear identity headers it names. HAProxy"
  echo "forwards the same values as certgate but \`notAfter\` as YYMMDDhhmmssZ, and computes"
  echo "the fingerprint and base64 per request. certgate renders its headers once per connection."
  for s in $SERVERS; do
    for inst in "$s" "$s-small"; do
      echo
      if [ "$inst" = "$s" ]; then echo "### $s (full header set)"; else echo "### $s (small header set)"; fi
      echo
      echo '```'
      if [ -f "$OUT/headers-$inst.txt" ]; then
        tr -d '\r' <"$OUT/headers-$inst.txt" | sed -n '/^$/,$p' | sed '1d' | cut -c1-160
      else
        echo "(not fetched: this run left out the load block)"
      fi
      echo '```'
    done
  done
  echo
  echo "## Commands"
  echo
  echo "Servers: \`taskset -c $SERVER_CORE certgate run --config certgate.yaml\`," \
    "\`taskset -c $SERVER_CORE nginx -c nginx.conf\`, \`taskset -c $SERVER_CORE haproxy -db -f haproxy.cfg\`" \
    "(and the same with the \`-small\` configurations);"
  echo "upstream: \`taskset -c $CLIENT_CORE loadgen upstream\`, moved with \`taskset -a -p -c $SERVER_CORE\` for the" \
    "shared cases and back. Load (loadgen = \`cargo bench --bench loadgen --\`):"
  echo
  echo '```'
  sed "s#$TMP#\$TMP#g" "$OUT/commands.txt" | awk '!seen[$0]++' | head -80
  echo "taskset -c $SERVER_CORE target/release/deps/hot_path-* --bench decision_cache_hit"
  echo "taskset -c $SERVER_CORE openssl speed -seconds $OPENSSL_SECONDS ecdsap256 ecdhp256 ecdhx25519"
  echo "taskset -c $SERVER_CORE loadgen speed --seconds $OPENSSL_SECONDS"
  echo '```'
  echo
  echo "## Configurations used"
  for f in certgate.yaml certgate-small.yaml certgate-assertion.yaml certgate-access-log.yaml nginx.conf nginx-small.conf haproxy.cfg haproxy-small.cfg; do
    echo
    echo "<details><summary>$f</summary>"
    echo
    echo '```'
    sed "s#$TMP#\$TMP#g" "$TMP/$f"
    echo '```'
    echo
    echo "</details>"
  done
} >"$RESULTS.tmp"
if [ -f "$RESULTS" ] && grep -q '^## Analysis' "$RESULTS"; then
  # Keep the hand-written analysis below the generated part.
  { echo; sed -n '/^## Analysis/,$p' "$RESULTS"; } >>"$RESULTS.tmp"
fi
mv "$RESULTS.tmp" "$RESULTS"
say "wrote $RESULTS"
