#!/usr/bin/env python3
"""A fixed load for benches/hopcount.sh.

  hopload.py PORT N C

Sends N keep-alive GETs to 127.0.0.1:PORT over C connections (N/C each,
one at a time per connection), checks each answer is a 200 and reads its
body. Fixed work, so that an instruction count divided by N means something.
"""
import asyncio, sys
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: load\r\nAccept: */*\r\n\r\n"
async def one(k):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(k):
        w.write(REQ)
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        await r.readexactly(length)
    w.close()
async def main():
    await asyncio.gather(*(one(n // c) for _ in range(c)))
asyncio.run(main())
