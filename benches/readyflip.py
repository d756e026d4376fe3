#!/usr/bin/env python3
"""Ready-to-flip, for benches/run.sh.

  readyflip.py BIN CONFIG READY_DIR N

The service in CONFIG is `sh -c 'sleep 0.3; date +%s%N > READY_DIR/{color}-{tag}; exec nginx ...'`
with `health_check_interval = "5s"`: it becomes ready about 300 ms after it
starts, and the file holds the wall-clock time just before nginx starts (nginx
listens a few ms later, so "ready" is at or before the true moment and the
figure errs long). Each of N deploys runs `BIN --config CONFIG deploy rN
--json`; the figure is the `ts` of its `flip` success event (sent after the
route swap and the state write that follows it) minus that time. Also
reports the daemon's own history figures for the deploy (`ready_ms`:
deploy start to healthy; `flip_us`: the route swap) and the deploy's whole
duration. Prints one line of JSON.
"""
import calendar, json, os, statistics, subprocess, sys, time

bin_, config, ready_dir, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def epoch_ms(ts):  # "2026-11-26T05:45:39.123Z"
    base, frac = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(frac[:3].ljust(3, "0"))

ready_to_flip, ready_ms, flip_us, total_ms = [], [], [], []
for i in range(n):
    tag = f"ready{i}-{os.getpid()}"
    t0 = time.time()
    r = subprocess.run([bin_, "--config", config, "deploy", tag, "--json"], capture_output=True, text=True)
    total_ms.append((time.time() - t0) * 1000)
    events = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0:
        sys.exit(f"deploy {tag} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    flips = [e for e in events if e.get("phase") == "flip" and e.get("level") == "success"]
    if not flips:
        sys.exit(f"no flip event in deploy {tag}:\n{r.stdout}")
    ready_files = [f for f in os.listdir(ready_dir) if f.endswith("-" + tag)]
    if len(ready_files) != 1:
        sys.exit(f"expected one ready file for {tag} in {ready_dir}, found {ready_files}")
    with open(os.path.join(ready_dir, ready_files[0])) as f:
        ready_at_ms = int(f.read().strip()) / 1e6
    ready_to_flip.append(epoch_ms(flips[-1]["ts"]) - ready_at_ms)
    h = subprocess.run([bin_, "--config", config, "history", "--json"], capture_output=True, text=True, check=True)
    hist = json.loads(h.stdout)
    entries = hist if isinstance(hist, list) else hist.get("entries", hist.get("history", []))
    last = [e for e in entries if e.get("tag") == tag][-1]
    ready_ms.append(last.get("ready_ms"))
    flip_us.append(last.get("flip_us"))

med = lambda xs: round(statistics.median(xs), 1)
print(json.dumps({
    "deploys": n,
    "ready_to_flip_ms": {"median": med(ready_to_flip), "max": round(max(ready_to_flip), 1)},
    "history_ready_ms": {"median": med([x for x in ready_ms if x is not None]), "max": max(x for x in ready_ms if x is not None)},
    "history_flip_us": {"median": med([x for x in flip_us if x is not None]), "max": max(x for x in flip_us if x is not None)},
    "deploy_total_ms": {"median": med(total_ms), "max": round(max(total_ms), 1)},
}))
