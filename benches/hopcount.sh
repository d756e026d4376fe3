#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a
# loaded machine, where wall-clock benchmarks are not (docs/benchmarks.md,
# "Upstream hop, session 3").
#
# Runs the data plane alone (proxy/examples/hop.rs, `profiling` profile:
# release with symbols) under callgrind in front of the test app, drives N1
# then N2 keep-alive requests over C connections (benches/hopload.py), and
# prints (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, connection set-up and
# shutdown cancel out.
#
#   benches/hopcount.sh                  # this tree
#   HOP_BIN=/tmp/hop-before benches/hopcount.sh   # a given build, to compare
#   C=50 N1=5000 N2=15000 benches/hopcount.sh
#   KEEP=1 benches/hopcount.sh           # keep the N2 profile for callgrind_annotate
#   PEERS=1 benches/hopcount.sh          # nginx and HAProxy counted the same way
#
# With PEERS=1, nginx (one process: `master_process off`) and HAProxy
# (`nbthread 1`) proxy to the same upstream under the same load, with
# upstream keep-alive and the same X-Forwarded-For/-Proto/-Host set, and
# are counted the same way: a measure of each proxy's user-space work per
# request that a noisy machine does not move.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000} N2=${N2:-12000} C=${C:-10}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
cargo build -q --profile profiling -p switchctl-proxy --example hop -p switchctl-testapp --bin testapp
HOP=${HOP_BIN:-$PWD/target/profiling/examples/hop}
WORK=$(mktemp -d /tmp/switchctl-hopcount.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1)).close()" 2>/dev/null && return
        sleep 0.2
    done
    echo "nothing listens on $1" >&2; exit 1
}

UP=$(free_port)
target/profiling/testapp --bind 127.0.0.1 --port "$UP" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$UP"

# Ir of one proxy process ($1: hop, nginx or haproxy) for $2 requests.
count() {
    local kind=$1 n=$2 port out fifo pid
    port=$(free_port) out=$WORK/callgrind.$kind.$n.out fifo=$WORK/stdin.$kind.$n
    local vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
    case $kind in
    hop)
        mkfifo "$fifo"
        "${vg[@]}" "$HOP" "127.0.0.1:$port" "127.0.0.1:$UP" 1 <"$fifo" 2>"$WORK/valgrind.$kind.$n.log" &
        pid=$!
        exec 9>"$fifo" # the proxy runs until its stdin closes
        ;;
    nginx)
        cat >"$WORK/nginx.conf" <<EOF
worker_processes 1; daemon off; master_process off;
error_log /dev/null; pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
EOF
        "${vg[@]}" nginx -e /dev/null -p "$WORK" -c "$WORK/nginx.conf" 2>"$WORK/valgrind.$kind.$n.log" &
        pid=$!
        ;;
    haproxy)
        cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend f
  bind 127.0.0.1:$port
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend b
backend b
  server up 127.0.0.1:$UP
EOF
        "${vg[@]}" haproxy -db -q -f "$WORK/haproxy.cfg" 2>"$WORK/valgrind.$kind.$n.log" &
        pid=$!
        ;;
    esac
    PIDS+=($pid)
    wait_port "$port"
    python3 benches/hopload.py "$port" "$n" "$C"
    case $kind in
    hop) exec 9>&- ;;
    nginx) kill -QUIT "$pid" ;;
    haproxy) kill -USR1 "$pid" ;; # soft stop: exits once the clients are gone
    esac
    wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

# Instructions per request of one proxy: the difference of two counts.
per_request() {
    local a b
    a=$(count "$1" "$N1")
    b=$(count "$1" "$N2")
    echo $(((b - a) / (N2 - N1)))
}

HOP_IR=$(per_request hop)
echo "$(basename "$HOP"): $HOP_IR instructions per request (C=$C, N=$N1..$N2)"
if [[ -n ${PEERS:-} ]]; then
    for peer in nginx haproxy; do
        command -v "$peer" >/dev/null || { echo "PEERS=1 needs $peer" >&2; exit 2; }
        ir=$(per_request "$peer")
        echo "$peer: $ir instructions per request; $(basename "$HOP") / $peer = $(python3 -c "print(f'{$HOP_IR / $ir:.2f}')")"
    done
fi
[[ -z ${KEEP:-} ]] || echo "profiles kept in $WORK" >&2
