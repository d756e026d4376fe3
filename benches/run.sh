#!/usr/bin/env bash
# Proxy benchmark: direct, nginx, HAProxy and switchctl side by side, in one
# run, interleaved, at 1 and 2 worker threads each, against one upstream
# (nginx answering a 13-byte body). Prints req/s, p50, p99 and errors, the
# ratios to HAProxy at the same thread count, the flip-back latency and idle
# memory. Everything listens on 127.0.0.1 only and is stopped at the end.
#
#   benches/run.sh                 # 2 rounds of 10 s per target
#   ROUNDS=3 DURATION=15 benches/run.sh
#   SWITCHCTL_BIN=/tmp/switchctl-before benches/run.sh   # a given build
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
FLIPS=${FLIPS:-20}

need=()
for tool in wrk:wrk nginx:nginx-light haproxy:haproxy; do
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
    cargo build --release -q
    BIN=$PWD/target/release/switchctl
fi

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
        location / { return 200 "hello, world\n"; }
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
command = ["sh", "-c", "sed s/PORT/{port}/g $WORK/upstream.tmpl > $dir/up-{port}.conf && exec nginx -e /dev/null -c $dir/up-{port}.conf"]
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

# switchctl with 2 workers routes to the same upstream: copy the state.
SC2_PORT=$(free_port); mkdir -p "$WORK/sc2/state"
sed -e "s#$WORK/sc1#$WORK/sc2#g" -e "s/127.0.0.1:$SC1/127.0.0.1:$SC2_PORT/" -e 's/workers = 1/workers = 2/' \
    "$WORK/sc1/switchctl.toml" > "$WORK/sc2/switchctl.toml"
cp "$WORK/sc1/state/state.json" "$WORK/sc2/state/state.json"
"$BIN" --config "$WORK/sc2/switchctl.toml" proxy >"$WORK/sc2/daemon.log" 2>&1 &
echo $! > "$WORK/sc2.pid"
for _ in $(seq 1 100); do [[ -S $WORK/sc2/admin.sock ]] && break; sleep 0.05; done
SC2=$SC2_PORT

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
sleep 1

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_sc=$(rss_kib "$(cat "$WORK/sc1.pid")")
ng_master=$(cat "$WORK/nginx1.pid"); ng_kids=$(pgrep -P "$ng_master" | head -1)
idle_ng=$(( $(rss_kib "$ng_master") + $(rss_kib "$ng_kids") ))
idle_ha=$(rss_kib "$(cat "$WORK/haproxy1.pid")")

# Warm every path once.
for p in "$UP" "$NG1" "$NG2" "$HA1" "$HA2" "$SC1" "$SC2"; do wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$p/" >/dev/null; done

RESULTS=$WORK/results.tsv
: > "$RESULTS"
measure() { # label threads port
    local out; out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$3/")
    python3 - "$1" "$2" "$out" >> "$RESULTS" <<'PY'
import re, sys
label, threads, out = sys.argv[1], sys.argv[2], sys.argv[3]
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
print(f"{label}\t{threads}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errs}")
PY
}
for round in $(seq 1 "$ROUNDS"); do
    for t in 1 2; do
        ng=NG$t; ha=HA$t; sc=SC$t
        measure direct "$t" "$UP"
        measure nginx "$t" "${!ng}"
        measure haproxy "$t" "${!ha}"
        measure switchctl "$t" "${!sc}"
    done
    echo "round $round done" >&2
done

# Flip back end to end (CLI start to exit), under no load.
FLIP=$WORK/flips.txt; : > "$FLIP"
for _ in $(seq 1 "$FLIPS"); do
    s=$(date +%s%N); "$BIN" --config "$WORK/sc1/switchctl.toml" flip back >/dev/null; e=$(date +%s%N)
    echo $(( (e - s) / 1000 )) >> "$FLIP"
done

python3 - "$RESULTS" "$FLIP" "$idle_sc" "$idle_ng" "$idle_ha" "$ROUNDS" "$DURATION" "$CONNS" <<'PY'
import sys, statistics, collections, subprocess
res, flips, idle_sc, idle_ng, idle_ha, rounds, dur, conns = sys.argv[1:]
rows = collections.defaultdict(list)
for line in open(res):
    label, t, rps, p50, p99, errs = line.split("\t")
    rows[(label, int(t))].append((float(rps), float(p50), float(p99), int(errs)))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"wrk -t1 -c{conns}, {dur}s per run, {rounds} interleaved round(s); {cpu}, {subprocess.getoutput('nproc')} cores\n")
print("| target | threads | req/s | p50 ms | p99 ms | errors | req/s vs HAProxy | p99 vs HAProxy | req/s vs nginx |")
print("|---|---|---|---|---|---|---|---|---|")
for t in (1, 2):
    mean = lambda label, i: statistics.mean(r[i] for r in rows[(label, t)])
    for label in ("direct", "nginx", "haproxy", "switchctl"):
        rps, p50, p99 = mean(label, 0), mean(label, 1), mean(label, 2)
        errs = sum(r[3] for r in rows[(label, t)])
        print(f"| {label} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {errs} | "
              f"{rps / mean('haproxy', 0):.2f} | {p99 / mean('haproxy', 2):.2f} | {rps / mean('nginx', 0):.2f} |")
f = sorted(int(x) / 1000 for x in open(flips))
print(f"\n`switchctl flip back`, end to end (CLI start to exit), {len(f)} flips: "
      f"median {statistics.median(f):.1f} ms, max {max(f):.1f} ms")
print(f"idle RSS: switchctl daemon {int(idle_sc)/1024:.1f} MiB, nginx (master + 1 worker) {int(idle_ng)/1024:.1f} MiB, "
      f"HAProxy {int(idle_ha)/1024:.1f} MiB")
PY
