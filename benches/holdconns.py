#!/usr/bin/env python3
"""Memory per idle keep-alive connection, for benches/run.sh.

  holdconns.py PORT N PID...

Reads the summed RSS of PIDs, opens N connections to 127.0.0.1:PORT, sends
one keep-alive GET on each and reads its answer (so each connection has
served a request and sits idle, as a browser's would), waits five seconds,
reads the RSS again, closes everything. Five seconds, because switchctl parks
a keep-alive connection once it has been quiet for 250-500 ms (dropping
hyper's buffers, proxy/src/park.rs) and hands the freed pages back to the
kernel within about a second (src/memory.rs); nginx and HAProxy free their buffers
as soon as a response is sent. A connection quiet for five seconds is idle
by any measure. Prints one line of JSON with
(RSS_with - RSS_idle) / N. A target that dies on the way is reported in the
JSON ("error"), never by an exit that would end benches/run.sh.
"""
import asyncio, json, resource, sys, time

# N connections need N descriptors here too.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

port, n, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def rss_kib():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    return total

async def one(sem, held):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        await r.readexactly(length)
        held.append(w)

async def main():
    try:
        before = rss_kib()
    except OSError as e:
        print(json.dumps({"error": f"target not running before the test: {e!r}"}))
        return
    held, sem = [], asyncio.Semaphore(200)
    t = time.monotonic()
    results = await asyncio.gather(*(one(sem, held) for _ in range(n)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    await asyncio.sleep(5)
    try:
        after = rss_kib()
    except OSError as e:
        print(json.dumps({"error": f"the target died while holding {len(held)} connections "
                                   f"({len(failed)} failed, first {failed[0] if failed else None!r}): {e!r}"}))
        return
    open_ = len(held)
    for w in held:
        w.close()
    print(json.dumps({"connections": open_, "failed": len(failed),
                      "first_error": repr(failed[0]) if failed else None,
                      "open_s": round(time.monotonic() - t - 1, 1),
                      "rss_idle_kib": before, "rss_with_kib": after,
                      "kib_per_conn": round((after - before) / max(open_, 1), 2)}))

asyncio.run(main())
