#!/usr/bin/env python3
"""Open N HTTP/1.1 keep-alive connections, send one request on each, then hold them idle.

Usage: idle_conns.py HOST PORT N [PATH] [SOURCES] [FIRST_SOURCE]

The connections are spread over SOURCES source addresses 127.0.0.FIRST_SOURCE, ... (default
1 address, 127.0.0.1): each has its own ephemeral port range (~28,000 ports), so that more
connections than one range holds can be opened to one port.

Prints one line "READY opened=<n> failed=<n> seconds=<t>" once every connection has
had its response, then waits. Each line read from stdin is a command:
  "count"  -> prints "ALIVE <n>" (connections the server has not closed)
EOF on stdin (or SIGTERM) closes every connection and exits.
Standard library only (asyncio).
"""
import asyncio
import signal
import sys
import time

from sources import addresses, allow_connections, connect_from


async def open_one(host, port, req, state, source):
    try:
        reader, writer = await asyncio.wait_for(
            connect_from(host, port, source), 10)
        writer.write(req)
        await writer.drain()
        # Read the response head and its Content-Length body so the connection is idle.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 2"):
            raise RuntimeError("status " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await asyncio.wait_for(reader.readexactly(length), 10)
    except Exception as e:  # noqa: BLE001 - counted and reported
        state["failed"] += 1
        state["last_error"] = repr(e)
        return None
    state["alive"] += 1
    return reader, writer


async def watch(reader, state):
    try:
        data = await reader.read(1)
    except Exception:  # noqa: BLE001
        data = b""
    if not data:
        state["alive"] -= 1


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    nsrc = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    first_src = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    sources = addresses(nsrc, first_src) if nsrc > 1 or first_src != 1 else [None]
    allow_connections(n)
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gh-idle-conns\r\n"
           f"Connection: keep-alive\r\n\r\n").encode()
    state = {"alive": 0, "failed": 0, "last_error": ""}
    conns = []
    t0 = time.monotonic()
    batch = 250
    for i in range(0, n, batch):
        res = await asyncio.gather(*(open_one(host, port, req, state, sources[(i + j) % len(sources)])
                                     for j in range(min(batch, n - i))))
        conns.extend(c for c in res if c)
    watchers = [asyncio.ensure_future(watch(r, state)) for r, _ in conns]
    print(f"READY opened={len(conns)} failed={state['failed']} seconds={time.monotonic() - t0:.2f}"
          + (f" last_error={state['last_error']}" if state["failed"] else ""), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin_reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin_reader), sys.stdin)

    async def commands():
        while True:
            line = await stdin_reader.readline()
            if not line:
                break
            if line.strip() == b"count":
                await asyncio.sleep(0)  # let watchers observe closes
                print(f"ALIVE {state['alive']}", flush=True)
        stop.set()

    cmd = asyncio.ensure_future(commands())
    await stop.wait()
    cmd.cancel()
    for w in watchers:
        w.cancel()
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
