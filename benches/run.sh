#!/usr/bin/env bash
# Proxy benchmark: direct, nginx, HAProxy and switchctl side by side, in one
# run, interleaved, at 1 and 2 worker threads each (and switchctl with its
# default `workers`), against one upstream (nginx answering a 13-byte body),
# plain HTTP and TLS (one ECDSA P-256 certificate made at run time). Prints
# req/s, p50, p99 and errors, the ratios to HAProxy and nginx at the same
# thread count, the flip-back latency (alone, and visible under load next to
# HAProxy's runtime API and nginx's reload), ready-to-flip of a deploy,
# idle memory (TLS on) and memory per idle keep-alive connection, and the
# latency of new TLS connections at fixed rates from an open-loop client
# (proxy/examples/tlsrate.rs), and where a new TLS connection's time goes on
# the wire (benches/tlsphases.py, with tcpdump when it is installed).
# Everything listens on 127.0.0.1 only and is stopped at the end.
# docs/benchmarks.md describes each measure.
#
#   benches/run.sh                 # 2 rounds of 10 s per target
#   ROUNDS=3 DURATION=15 benches/run.sh
#   SWITCHCTL_BIN=/tmp/switchctl-before benches/run.sh   # a given build
#   TLS_RATES="500 1000" benches/run.sh                  # new TLS connections/s of the open-loop runs
#   ROUNDS=1 DURATION=2 FLIPS=5 READY_DEPLOYS=2 HOLD_CONNS=2000 TLS_RATES=300 benches/run.sh   # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
FLIPS=${FLIPS:-20}
READY_DEPLOYS=${READY_DEPLOYS:-5}
HOLD_CONNS=${HOLD_CONNS:-10000}
TLS_RATES=${TLS_RATES:-500 1000 2000}
export CONNS

# 10k idle connections need 10k descriptors in the client and in each proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < HOLD_CONNS + 2000 )); then
    echo "ulimit -n is $(ulimit -n): HOLD_CONNS=$HOLD_CONNS needs $((HOLD_CONNS + 2000)); raise the hard limit or lower HOLD_CONNS" >&2
    exit 2
fi

need=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy openssl:openssl python3:python3 tcpdump:tcpdump; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need[@]}"
fi
# SWITCHCTL_BIN: measure that binary instead of building this tree (e.g.
# two builds side by side, run after run, to compare a change).
if [[ -n ${SWITCHCTL_BIN:-} ]]; then
    BIN=$SWITCHCTL_BIN
else
    # The binary the .deb ships (packaging/build-deb.sh): static, so a CLI
    # start pays no dynamic loading; it is what an operator's `flip back`
    # runs.
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
        cargo build --release -q --locked --target x86_64-unknown-linux-gnu -p switchctl
    BIN=$PWD/target/x86_64-unknown-linux-gnu/release/switchctl
fi
# The open-loop TLS client, always from this tree (it measures the peers
# alike, whichever switchctl binary is measured).
cargo build --release -q -p switchctl-proxy --example tlsrate
TLSRATE=$PWD/target/release/examples/tlsrate

WORK=$(mktemp -d /tmp/switchctl-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$WORK"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
    # upstreams started by switchctl (process groups, see state.json)
    for s in "$WORK"/sc*/state/state.json; do
        [[ -f $s ]] && grep -o '"pid": [0-9]*' "$s" | awk '{print $2}' | while read -r pid; do kill -- "-$pid" 2>/dev/null || true; done
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream: nginx, one worker, a 13-byte body. switchctl starts it
# through its process driver (so `deploy` and `flip back` are real), and
# every proxy points at the same port.
cat > "$WORK/upstream.tmpl" <<NGX
worker_processes 1;
daemon off;
pid $WORK/upstream-PORT.pid;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:PORT reuseport;
        location / { add_header X-Color COLOR always; return 200 "hello, world\n"; }
    }
}
NGX

start_switchctl() { # name workers -> prints proxy port
    local name=$1 workers=$2 port dir
    port=$(free_port); dir=$WORK/$name; mkdir -p "$dir"
    cat > "$dir/switchctl.toml" <<TOML
driver = "process"
state_dir = "$dir/state"
[proxy]
listen = ["127.0.0.1:$port"]
admin_socket = "$dir/admin.sock"
workers = $workers
drain_timeout = "5s"
[deploy]
health_check_interval = "100ms"
[[service]]
name = "web"
command = ["sh", "-c", "sed -e s/PORT/{port}/g -e s/COLOR/{color}/g $WORK/upstream.tmpl > $dir/up-{port}.conf && exec nginx -e /dev/null -c $dir/up-{port}.conf"]
health = { path = "/" }
TOML
    "$BIN" --config "$dir/switchctl.toml" proxy >"$dir/daemon.log" 2>&1 &
    echo $! > "$WORK/$name.pid"
    for _ in $(seq 1 100); do [[ -S $dir/admin.sock ]] && break; sleep 0.05; done
    echo "$port"
}

# switchctl with 1 worker owns the upstream; a second deploy gives it a
# warm standby for the flip-back measurement.
SC1=$(start_switchctl sc1 1)
"$BIN" --config "$WORK/sc1/switchctl.toml" deploy b1 >/dev/null
"$BIN" --config "$WORK/sc1/switchctl.toml" deploy b2 >/dev/null
UP=$("$BIN" --config "$WORK/sc1/switchctl.toml" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); a=s["active"]["color"]; print(s["services"][0][a]["upstream"].split(":")[1])')

# Upstream ports of both colors (the switching measures alternate them).
color_port() { "$BIN" --config "$WORK/sc1/switchctl.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0][sys.argv[1]]["upstream"].split(":")[1])' "$1"; }
BLUE=$(color_port blue); GREEN=$(color_port green)

# Other switchctl daemons route to the same upstream: a copy of sc1's state
# and config, with its `workers = 1` line replaced by $2 and $3 appended.
clone_switchctl() { # name workers-line extra-toml -> prints proxy port
    local name=$1 port; port=$(free_port); mkdir -p "$WORK/$name/state"
    sed -e "s#$WORK/sc1#$WORK/$name#g" -e "s/127.0.0.1:$SC1/127.0.0.1:$port/" -e "s/^workers = 1\$/$2/" \
        "$WORK/sc1/switchctl.toml" > "$WORK/$name/switchctl.toml"
    printf '%s\n' "$3" >> "$WORK/$name/switchctl.toml"
    cp "$WORK/sc1/state/state.json" "$WORK/$name/state/state.json"
    "$BIN" --config "$WORK/$name/switchctl.toml" proxy >"$WORK/$name/daemon.log" 2>&1 &
    echo $! > "$WORK/$name.pid"
    for _ in $(seq 1 100); do [[ -S $WORK/$name/admin.sock ]] && break; sleep 0.05; done
    [[ -S $WORK/$name/admin.sock ]] || { echo "switchctl $name did not start:" >&2; cat "$WORK/$name/daemon.log" >&2; exit 1; }
    echo "$port"
}
SC2=$(clone_switchctl sc2 'workers = 2' '')
# the default worker count (one per core): no `workers` line at all
SC0=$(clone_switchctl sc0 '' '')

# TLS: one ECDSA P-256 certificate for every proxy, made now.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" > "$WORK/tls.pem"
# switchctl with TLS on (1 worker): sct's idle RSS is the "TLS on" figure and
# it serves the TLS throughput runs; sch, the same, untouched until then,
# takes the idle connections on its plain listener (limits raised for them).
start_tls_switchctl() { # name tls-port -> prints plain port
    clone_switchctl "$1" "workers = 1\nmax_connections = $((HOLD_CONNS + 1000))\nmax_connections_per_ip = 0" \
"[proxy.tls]
listen = [\"127.0.0.1:$2\"]
certificates = [{ cert = \"$WORK/tls.crt\", key = \"$WORK/tls.key\" }]"
}
SCT_TLS=$(free_port); SCT=$(start_tls_switchctl sct "$SCT_TLS")
SCH_TLS=$(free_port); SCH=$(start_tls_switchctl sch "$SCH_TLS")

start_nginx() { # workers -> port
    local w=$1 port; port=$(free_port)
    cat > "$WORK/nginx$w.conf" <<NGX
worker_processes $w;
daemon off;
pid $WORK/nginx$w.nginxpid;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$port reuseport;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGX
    nginx -e /dev/null -c "$WORK/nginx$w.conf" >/dev/null 2>&1 & echo $! > "$WORK/nginx$w.pid"
    echo "$port"
}
start_haproxy() { # threads -> port
    local t=$1 port; port=$(free_port)
    cat > "$WORK/haproxy$t.cfg" <<HAP
global
    nbthread $t
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
    option forwardfor
frontend fe
    bind 127.0.0.1:$port
    default_backend be
backend be
    server up 127.0.0.1:$UP
HAP
    haproxy -q -f "$WORK/haproxy$t.cfg" >/dev/null 2>&1 & echo $! > "$WORK/haproxy$t.pid"
    echo "$port"
}
NG1=$(start_nginx 1); NG2=$(start_nginx 2); HA1=$(start_haproxy 1); HA2=$(start_haproxy 2)

# TLS peers, one worker each, same certificate, same upstream.
NGT=$(free_port); HAT=$(free_port)
cat > "$WORK/nginxt.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/nginxt.nginxpid;
error_log /dev/null crit;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server 127.0.0.1:$UP; keepalive 64; }
    server {
        listen 127.0.0.1:$NGT ssl reuseport;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGX
nginx -e /dev/null -c "$WORK/nginxt.conf" >/dev/null 2>&1 & echo $! > "$WORK/nginxt.pid"
sed -e "s#bind 127.0.0.1:$HA1#bind 127.0.0.1:$HAT ssl crt $WORK/tls.pem ssl-min-ver TLSv1.2#" "$WORK/haproxy1.cfg" > "$WORK/haproxyt.cfg"
haproxy -q -f "$WORK/haproxyt.cfg" >/dev/null 2>&1 & echo $! > "$WORK/haproxyt.pid"

# Switching peers (1 worker each), to the same two colored upstreams.
HAS=$(free_port); NGS=$(free_port)
sed -e "s#bind 127.0.0.1:$HA1#bind 127.0.0.1:$HAS#" -e "s#^global\$#global\n    stats socket $WORK/haproxys.sock mode 600 level admin#" \
    "$WORK/haproxy1.cfg" > "$WORK/haproxys.cfg"
haproxy -q -f "$WORK/haproxys.cfg" >/dev/null 2>&1 & echo $! > "$WORK/haproxys.pid"
for c in blue green; do
    p=BLUE; [[ $c == green ]] && p=GREEN
    sed -e "s#127.0.0.1:$NG1 #127.0.0.1:$NGS #" -e "s#server 127.0.0.1:$UP;#server 127.0.0.1:${!p};#" \
        -e "s#$WORK/nginx1.nginxpid#$WORK/nginxs.nginxpid#" "$WORK/nginx1.conf" > "$WORK/nginxs-$c.conf"
done
cp "$WORK/nginxs-blue.conf" "$WORK/nginxs.conf"
nginx -e /dev/null -c "$WORK/nginxs.conf" >/dev/null 2>&1 & echo $! > "$WORK/nginxs.pid"

# HAProxy for the idle connections: enough maxconn for them. HAProxy
# reserves two descriptors per connection (client and server side) and
# refuses to start when `ulimit -n` cannot hold 2 × maxconn, so under a
# lower limit it holds fewer connections (the figure is per connection).
HAH=$(free_port)
HA_HOLD=$(( ($(ulimit -n) - 2000) / 2 - 500 )); (( HA_HOLD < HOLD_CONNS )) || HA_HOLD=$HOLD_CONNS
sed -e "s#bind 127.0.0.1:$HA1#bind 127.0.0.1:$HAH#" -e "s#maxconn 4096#maxconn $((HA_HOLD + 500))#" \
    "$WORK/haproxy1.cfg" > "$WORK/haproxyh.cfg"
haproxy -q -f "$WORK/haproxyh.cfg" >/dev/null 2>&1 & echo $! > "$WORK/haproxyh.pid"
sleep 1

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_sc=$(rss_kib "$(cat "$WORK/sc1.pid")")
ng_master=$(cat "$WORK/nginx1.pid"); ng_kids=$(pgrep -P "$ng_master" | head -1)
idle_ng=$(( $(rss_kib "$ng_master") + $(rss_kib "$ng_kids") ))
idle_ha=$(rss_kib "$(cat "$WORK/haproxy1.pid")")
idle_sct=$(rss_kib "$(cat "$WORK/sct.pid")")

# Warm every path once.
for p in "$UP" "$NG1" "$NG2" "$HA1" "$HA2" "$SC1" "$SC2" "$SC0"; do wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$p/" >/dev/null; done
for p in "$NGT" "$HAT" "$SCT_TLS"; do wrk -t1 -c"$CONNS" -d1s "https://127.0.0.1:$p/" >/dev/null; done

RESULTS=$WORK/results.tsv
: > "$RESULTS"
# CPU time (user + system, clock ticks) of the processes named by pid files
# and of their children (nginx's workers), all threads included.
cpu_ticks() { # pid-file...
    local pids=() f p t=0
    for f in "$@"; do p=$(cat "$f"); pids+=("$p" $(pgrep -P "$p" || true)); done
    for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
# Every load run also records the CPU seconds the proxy (CPU_OF: its pid
# files) and the load client itself used: a proxy's CPU per request is
# steadier from run to run than its req/s, and the client's shows when the
# client, not the proxy, was the limit. `timed CLIENT...` runs the client and
# sets RUN_OUT (its output), RUN_PROXY_S (0 without CPU_OF) and
# RUN_CLIENT_S; the client's stderr, then bash's `time`, are in $CLIENT_ERR.
CLIENT_ERR=$WORK/client-stderr
timed() {
    local before=0 after=0
    [[ -n ${CPU_OF:-} ]] && before=$(cpu_ticks $CPU_OF)
    RUN_OUT=$( { TIMEFORMAT='%U %S'; time "$@"; } 2>"$CLIENT_ERR") || true
    [[ -n ${CPU_OF:-} ]] && after=$(cpu_ticks $CPU_OF)
    RUN_PROXY_S=$(awk -v t=$((after - before)) -v hz="$HZ" 'BEGIN {printf "%.3f", t / hz}')
    RUN_CLIENT_S=$(awk 'END {printf "%.3f", $1 + $2}' "$CLIENT_ERR")
}
measure() { # label threads port-or-url [wrk args...]
    local url=$3; [[ $url == http* ]] || url="http://127.0.0.1:$url/"
    timed wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${@:4}" "$url"
    python3 - "$1" "$2" "$RUN_OUT" "$RUN_PROXY_S" "$RUN_CLIENT_S" >> "$RESULTS" <<'PY'
import re, sys
label, threads, out, proxy_cpu, wrk_cpu = sys.argv[1:6]
if "Requests/sec" not in out or "Latency Distribution" not in out:
    sys.exit(f"wrk against {label} ({threads} threads) failed:\n{out}")
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s*50%[ \t]+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s*99%[ \t]+(\S+)", out, re.M).group(1))
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errs += int(m.group(1)) if m else 0
print(f"{label}\t{threads}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errs}\t{proxy_cpu}\t{wrk_cpu}")
PY
}
# New TLS connections at a fixed rate (proxy/examples/tlsrate.rs, open
# loop, latency from each connection's intended start): its JSON line, plus
# the proxy's CPU seconds (CPU_OF, as for wrk) and the client's, in $RATES.
RATES=$WORK/rates.jsonl
: > "$RATES"
measure_rate() { # label rate port
    timed "$TLSRATE" --addr "127.0.0.1:$3" --rate "$2" --duration "$DURATION"
    python3 - "$1" "$RUN_OUT" "$RUN_PROXY_S" "$RUN_CLIENT_S" "$CLIENT_ERR" >> "$RATES" <<'PY'
import json, sys
label, out, proxy_s, client_s, errfile = sys.argv[1:]
try:
    r = json.loads(out)
except ValueError:
    sys.exit(f"tlsrate against {label} failed:\n{out}\n{open(errfile).read()}")
r.update(target=label, proxy_cpu_s=float(proxy_s), client_cpu_s=float(client_s))
print(json.dumps(r))
PY
}
for round in $(seq 1 "$ROUNDS"); do
    for t in 1 2; do
        ng=NG$t; ha=HA$t; sc=SC$t
        measure direct "$t" "$UP"
        CPU_OF="$WORK/nginx$t.pid" measure nginx "$t" "${!ng}"
        CPU_OF="$WORK/haproxy$t.pid" measure haproxy "$t" "${!ha}"
        CPU_OF="$WORK/sc$t.pid" measure switchctl "$t" "${!sc}"
    done
    CPU_OF="$WORK/sc0.pid" measure switchctl-default 0 "$SC0"
    for tgt in nginx:$NGT:nginxt haproxy:$HAT:haproxyt switchctl:$SCT_TLS:sct; do
        IFS=: read -r name port pidname <<<"$tgt"
        CPU_OF="$WORK/$pidname.pid" measure "tls-$name" 1 "https://127.0.0.1:$port/"
        CPU_OF="$WORK/$pidname.pid" measure "tlsnew-$name" 1 "https://127.0.0.1:$port/" -H 'Connection: close'
    done
    echo "round $round done" >&2
done
# Where a new TLS connection's time goes, read off the wire: one more
# `Connection: close` run per TLS peer, a second of it captured with tcpdump
# (benches/tlsphases.py). wrk counts from its request's write to its read of
# the answer; the split shows how much of that the proxy took and how long
# the answer waited for wrk's own event loop.
PHASES=$WORK/phases.jsonl; : > "$PHASES"
if command -v tcpdump >/dev/null; then
    for tgt in nginx:$NGT haproxy:$HAT switchctl:$SCT_TLS; do
        IFS=: read -r name port <<<"$tgt"
        wrk -t1 -c"$CONNS" -d5s -H 'Connection: close' "https://127.0.0.1:$port/" >/dev/null 2>&1 & WRKP=$!
        sleep 2
        timeout 1 tcpdump -i lo -s 2000 -w "$WORK/tls-$name.pcap" "tcp port $port" 2>/dev/null || true
        wait "$WRKP" || true
        python3 benches/tlsphases.py "$WORK/tls-$name.pcap" "$port" "$name" >> "$PHASES"
        rm -f "$WORK/tls-$name.pcap"
    done
    echo "TLS wire split done" >&2
else
    echo "tcpdump not found: the TLS wire split is left out (apt-get install tcpdump)" >&2
fi
# The open-loop TLS runs get a phase of their own, after the wrk rounds, with
# a pause before each run: right after a saturating wrk run the machine is
# still busy (sockets closing, the kernel catching up), and a fixed-rate
# client, unlike wrk, counts every millisecond of that as latency.
for round in $(seq 1 "$ROUNDS"); do
    for rate in $TLS_RATES; do
        for tgt in nginx:$NGT:nginxt haproxy:$HAT:haproxyt switchctl:$SCT_TLS:sct; do
            IFS=: read -r name port pidname <<<"$tgt"
            sleep 1
            CPU_OF="$WORK/$pidname.pid" measure_rate "$name" "$rate" "$port"
        done
    done
    echo "open-loop TLS round $round done" >&2
done

# Flip back end to end (CLI start to exit), under no load.
FLIP=$WORK/flips.txt; : > "$FLIP"
for _ in $(seq 1 "$FLIPS"); do
    s=$(date +%s%N); "$BIN" --config "$WORK/sc1/switchctl.toml" flip back >/dev/null; e=$(date +%s%N)
    echo $(( (e - s) / 1000 )) >> "$FLIP"
done

# Where a flip back's milliseconds go, idle and under wrk -c$CONNS
# (benches/flipsplit.py reads the swap's time from the daemon's log).
SPLIT=$WORK/split.jsonl; : > "$SPLIT"
python3 benches/flipsplit.py "$BIN" "$WORK/sc1/switchctl.toml" "$WORK/sc1/daemon.log" "$FLIPS" >> "$SPLIT"
wrk -t1 -c"$CONNS" -d600s "http://127.0.0.1:$SC1/" >/dev/null 2>&1 & WRKP=$!
sleep 1
python3 benches/flipsplit.py "$BIN" "$WORK/sc1/switchctl.toml" "$WORK/sc1/daemon.log" "$FLIPS" >> "$SPLIT"
kill "$WRKP"; wait "$WRKP" 2>/dev/null || true

# Switching visible under load: wrk -c$CONNS for the whole measure, $FLIPS
# switches, a prober on fresh connections (benches/switchprobe.py).
SWITCH=$WORK/switch.jsonl; : > "$SWITCH"
# The CLI and the floor of any process start, in turn under one wrk run.
python3 benches/switchprobe.py "$SC1" "$FLIPS" paired "$BIN" "$WORK/sc1/switchctl.toml" "$WORK/sc1/admin.sock" >> "$SWITCH"
echo "switch: switchctl CLI and process-start floor done" >&2
python3 benches/switchprobe.py "$SC1" "$FLIPS" switchctl-api "$WORK/sc1/admin.sock" >> "$SWITCH"
echo "switch: switchctl admin API done" >&2
python3 benches/switchprobe.py "$HAS" "$FLIPS" haproxy "$WORK/haproxys.sock" "$BLUE" "$GREEN" >> "$SWITCH"
echo "switch: haproxy done" >&2
python3 benches/switchprobe.py "$NGS" "$FLIPS" nginx "$WORK/nginxs.conf" "$WORK/nginxs-blue.conf" "$WORK/nginxs-green.conf" >> "$SWITCH"
echo "switch: nginx done" >&2

# Ready-to-flip: an upstream ready ~300 ms after it starts, probed with the
# scripts' default interval of 5 s (benches/readyflip.py).
RPORT=$(free_port); mkdir -p "$WORK/scr/ready"
cat > "$WORK/scr/switchctl.toml" <<TOML
driver = "process"
state_dir = "$WORK/scr/state"
[proxy]
listen = ["127.0.0.1:$RPORT"]
admin_socket = "$WORK/scr/admin.sock"
workers = 1
drain_timeout = "5s"
[deploy]
health_check_interval = "5s"
[[service]]
name = "web"
command = ["sh", "-c", "sleep 0.3; date +%s%N > $WORK/scr/ready/{color}-{tag}; sed -e s/PORT/{port}/g -e s/COLOR/{color}/g $WORK/upstream.tmpl > $WORK/scr/up-{port}.conf && exec nginx -e /dev/null -c $WORK/scr/up-{port}.conf"]
health = { path = "/" }
TOML
"$BIN" --config "$WORK/scr/switchctl.toml" proxy >"$WORK/scr/daemon.log" 2>&1 &
echo $! > "$WORK/scr.pid"
for _ in $(seq 1 100); do [[ -S $WORK/scr/admin.sock ]] && break; sleep 0.05; done
READY=$(python3 benches/readyflip.py "$BIN" "$WORK/scr/switchctl.toml" "$WORK/scr/ready" "$READY_DEPLOYS")
echo "ready-to-flip done" >&2

# Memory per idle keep-alive connection (benches/holdconns.py).
HOLD=$WORK/hold.jsonl; : > "$HOLD"
# A failure here is a row of the table, not the end of the run.
python3 benches/holdconns.py "$SCH" "$HOLD_CONNS" "$(cat "$WORK/sch.pid")" >> "$HOLD" \
    || echo '{"error": "holdconns.py failed against switchctl"}' >> "$HOLD"
python3 benches/holdconns.py "$HAH" "$HA_HOLD" "$(cat "$WORK/haproxyh.pid")" >> "$HOLD" \
    || echo '{"error": "holdconns.py failed against HAProxy"}' >> "$HOLD"
echo "idle connections done" >&2

python3 - "$RESULTS" "$FLIP" "$idle_sc" "$idle_ng" "$idle_ha" "$ROUNDS" "$DURATION" "$CONNS" \
    "$idle_sct" "$SWITCH" "$READY" "$HOLD" "$SPLIT" "$RATES" "$PHASES" <<'PY'
import sys, statistics, collections, subprocess, json
res, flips, idle_sc, idle_ng, idle_ha, rounds, dur, conns, idle_sct, switch, ready, hold, split, rates, phases = sys.argv[1:]
rows = collections.defaultdict(list)
for line in open(res):
    label, t, rps, p50, p99, errs, proxy_cpu, wrk_cpu = line.split("\t")
    rows[(label, int(t))].append((float(rps), float(p50), float(p99), int(errs), float(proxy_cpu), float(wrk_cpu)))
# CPU per request: the proxy's CPU seconds over the requests of the same runs.
def cpu_us(key):
    reqs = sum(r[0] for r in rows[key]) * float(dur)
    return sum(r[4] for r in rows[key]) * 1e6 / reqs if reqs else float("nan")
def wrk_share(key):
    return 100 * statistics.mean(r[5] for r in rows[key]) / float(dur)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"wrk -t1 -c{conns}, {dur}s per run, {rounds} interleaved round(s); {cpu}, {subprocess.getoutput('nproc')} cores\n")
print("| target | threads | req/s | p50 ms | p99 ms | errors | req/s vs HAProxy | p99 vs HAProxy | req/s vs nginx | proxy CPU µs/req | wrk CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for t in (1, 2):
    mean = lambda label, i: statistics.mean(r[i] for r in rows[(label, t)])
    for label in ("direct", "nginx", "haproxy", "switchctl"):
        rps, p50, p99 = mean(label, 0), mean(label, 1), mean(label, 2)
        errs = sum(r[3] for r in rows[(label, t)])
        per_req = "-" if label == "direct" else f"{cpu_us((label, t)):.1f}"
        print(f"| {label} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {errs} | "
              f"{rps / mean('haproxy', 0):.2f} | {p99 / mean('haproxy', 2):.2f} | {rps / mean('nginx', 0):.2f} | "
              f"{per_req} | {wrk_share((label, t)):.0f} |")
f = sorted(int(x) / 1000 for x in open(flips))
print(f"\n`switchctl flip back`, end to end (CLI start to exit), {len(f)} flips: "
      f"median {statistics.median(f):.1f} ms, max {max(f):.1f} ms")
print(f"idle RSS: switchctl daemon {int(idle_sc)/1024:.1f} MiB, nginx (master + 1 worker) {int(idle_ng)/1024:.1f} MiB, "
      f"HAProxy {int(idle_ha)/1024:.1f} MiB")
print(f"idle RSS of the switchctl daemon with TLS on (1 worker, one certificate): {int(idle_sct)/1024:.1f} MiB (target <= 12 MiB)")

mean = lambda label, t, i: statistics.mean(r[i] for r in rows[(label, t)])
d = ("switchctl-default", 0)
ncpu = subprocess.getoutput('nproc')
print(f"\nswitchctl with the default `workers` (one per core, {ncpu} here), against the peers at 2 threads:")
print("| target | req/s | p50 ms | p99 ms | errors | req/s vs HAProxy 2 | p99 vs HAProxy 2 | req/s vs nginx 2 | p99 vs nginx 2 |")
print("|---|---|---|---|---|---|---|---|---|")
print(f"| switchctl default | {mean(*d, 0):,.0f} | {mean(*d, 1):.3f} | {mean(*d, 2):.3f} | {sum(r[3] for r in rows[d])} | "
      f"{mean(*d, 0) / mean('haproxy', 2, 0):.2f} | {mean(*d, 2) / mean('haproxy', 2, 2):.2f} | "
      f"{mean(*d, 0) / mean('nginx', 2, 0):.2f} | {mean(*d, 2) / mean('nginx', 2, 2):.2f} |")

print(f"\nTLS (ECDSA P-256, same certificate), 1 worker each, wrk -t1 -c{conns}:")
print("| target | connections | req/s | p50 ms | p99 ms | errors | req/s vs best peer | p99 vs best peer | proxy CPU µs/req | CPU/req vs best peer | wrk CPU % |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for kind, what in (("tls", "keep-alive"), ("tlsnew", "new per request (Connection: close)")):
    best_rps = max(mean(f"{kind}-{p}", 1, 0) for p in ("nginx", "haproxy"))
    best_p99 = min(mean(f"{kind}-{p}", 1, 2) for p in ("nginx", "haproxy"))
    best_cpu = min(cpu_us((f"{kind}-{p}", 1)) for p in ("nginx", "haproxy"))
    for p in ("nginx", "haproxy", "switchctl"):
        k = (f"{kind}-{p}", 1)
        print(f"| {p} | {what} | {mean(*k, 0):,.0f} | {mean(*k, 1):.3f} | {mean(*k, 2):.3f} | {sum(r[3] for r in rows[k])} | "
              f"{mean(*k, 0) / best_rps:.2f} | {mean(*k, 2) / best_p99:.2f} | {cpu_us(k):.1f} | {cpu_us(k) / best_cpu:.2f} | "
              f"{wrk_share(k):.0f} |")

phase_rows = [json.loads(line) for line in open(phases)]
if phase_rows:
    print(f"\nA new TLS connection's time on the wire (wrk -t1 -c{conns} -H 'Connection: close', one second captured "
          "with tcpdump, benches/tlsphases.py), ms p50 / p99; wrk's latency is about the proxy's answer + wrk's read:")
    print("| target | connections | server's first flight | client's Finished | request written | "
          "**proxy's answer** | **wrk's read of it** |")
    print("|---|---|---|---|---|---|---|")
    for r in phase_rows:
        cell = lambda k: f"{r[k]['p50']:.2f} / {r[k]['p99']:.2f}" if k in r else "-"
        print(f"| {r['target']} | {r['connections']:,} | {cell('server_hello')} | {cell('client_finish')} | "
              f"{cell('client_request')} | {cell('server_response')} | {cell('client_read')} |")

by_rate = collections.defaultdict(list)
for line in open(rates):
    r = json.loads(line)
    by_rate[(r["rate"], r["target"])].append(r)
print(f"\nTLS new connections at a fixed rate (open loop, proxy/examples/tlsrate.rs; latency from each connection's "
      f"intended start to the end of its answer: connect, full handshake, GET, answer), {dur}s per run, 1 worker each; "
      f"medians over {rounds} round(s), and the worst round's p99:")
print("| rate/s | target | achieved/s | p50 ms | p99 ms | p99.9 ms | worst p99 ms | errors | proxy CPU µs/handshake | "
      "client CPU % | client start lag p99 ms | p99 vs best peer |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def med_ms(runs, key):
    v = [r[key] for r in runs if r[key] is not None]
    return statistics.median(v) / 1000 if v else None
fmt = lambda v: "-" if v is None else f"{v:.3f}"
for rate in sorted({k[0] for k in by_rate}):
    peers = [med_ms(by_rate[(rate, p)], "p99_us") for p in ("nginx", "haproxy")]
    best = min((v for v in peers if v is not None), default=None)
    for p in ("nginx", "haproxy", "switchctl"):
        runs = by_rate[(rate, p)]
        if not runs:
            continue
        kinds = collections.Counter()
        for r in runs:
            kinds.update(r["errors"])
        errs = f"{sum(kinds.values())}" + (" (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")" if kinds else "")
        ok = sum(r["ok"] for r in runs)
        per_hs = f"{sum(r['proxy_cpu_s'] for r in runs) * 1e6 / ok:.0f}" if ok else "-"
        p99s = [r["p99_us"] for r in runs if r["p99_us"] is not None]
        worst = max(p99s) / 1000 if p99s else None
        p99 = med_ms(runs, "p99_us")
        ratio = f"{p99 / best:.2f}" if p99 is not None and best else "-"
        print(f"| {rate:g} | {p} | {statistics.median(r['achieved_rate'] for r in runs):,.0f} | {fmt(med_ms(runs, 'p50_us'))} | "
              f"{fmt(p99)} | {fmt(med_ms(runs, 'p999_us'))} | {fmt(worst)} | {errs} | {per_hs} | "
              f"{100 * statistics.mean(r['client_cpu_s'] for r in runs) / float(dur):.0f} | {fmt(med_ms(runs, 'lag_p99_us'))} | {ratio} |")

print(f"\nSwitching visible under load (wrk -t1 -c{conns} for the whole measure; prober on fresh connections; "
      "time from the command's start to the first response from the other color):")
print("| how it switches | switches | visible | median ms | max ms | failed requests | requests |")
print("|---|---|---|---|---|---|---|")
names = {"switchctl": "`switchctl flip back` (CLI process)",
         "spawn-api": "floor of any process: `/bin/true` started and reaped, then the admin API (in turn with the row above)",
         "switchctl-api": "switchctl admin API `POST /v1/flip-back`", "haproxy": "HAProxy runtime API `set server addr`",
         "nginx": "nginx `-s reload`"}
for line in open(switch):
    s = json.loads(line)
    vis = f"{s['visible']}" + (f" ({s['not_visible']} not within {s['not_visible_within_s']:.0f} s)" if s["not_visible"] else "")
    if s.get("unsettled_before_switch"):
        vis += f"; {s['unsettled_before_switch']} started before the previous switch had settled"
    if s.get("strays_before_command"):
        vis += f"; {s['strays_before_command']} answers from the other side before the command (ignored)"
    med = "-" if s["median_ms"] is None else f"{s['median_ms']:.1f}"
    mx = "-" if s["max_ms"] is None else f"{s['max_ms']:.1f}"
    print(f"| {names[s['mode']]} | {s['flips']} | {vis} | {med} | {mx} | {s['failed']} | {s['requests']:,} |")

r = json.loads(ready)
print("\nwhere a flip back's milliseconds go (medians; benches/flipsplit.py):")
print("| load | CLI start only (`--version`) | `status --json` round trip | flip back: start to route swap | route swap to exit |")
print("|---|---|---|---|---|")
for label, line in zip(("idle", f"wrk -t1 -c{conns}"), open(split)):
    s = json.loads(line)
    print(f"| {label} | {s['start_only_ms']:.2f} | {s['status_ms']:.2f} | {s['to_swap_ms']:.2f} | {s['swap_to_exit_ms']:.2f} |")

print(f"\nready-to-flip (upstream ready ~300 ms after start, health_check_interval = 5s), {r['deploys']} deploys: "
      f"median {r['ready_to_flip_ms']['median']:.0f} ms, max {r['ready_to_flip_ms']['max']:.0f} ms (target <= 100 ms); "
      f"history ready_ms median {r['history_ready_ms']['median']:.0f}, route swap (flip_us) median {r['history_flip_us']['median']:.0f} µs; "
      f"whole deploy median {r['deploy_total_ms']['median']:.0f} ms")

print("\nidle keep-alive connections (each served one request), RSS per connection = (RSS_with - RSS_idle) / connections:")
print("| proxy | connections held | failed | RSS idle MiB | RSS with MiB | KiB per connection |")
print("|---|---|---|---|---|---|")
for label, line in zip(("switchctl (1 worker, TLS on)", "HAProxy (1 thread)"), open(hold)):
    h = json.loads(line)
    if "error" in h:
        print(f"| {label} | - | - | - | - | - |\n  error: {h['error']}")
        continue
    print(f"| {label} | {h['connections']:,} | {h['failed']} | {h['rss_idle_kib']/1024:.1f} | {h['rss_with_kib']/1024:.1f} | {h['kib_per_conn']:.2f} |")
    if h["first_error"]:
        print(f"  first error: {h['first_error']}")
PY
