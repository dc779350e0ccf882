#!/usr/bin/env python3
"""The cost of tracing: proxy-small's job (GET, 19-byte body, 50 keep-alive connections,
wrk closed loop) through three Gatehouse processes that differ only in `tracing:`:
off, `sample_ratio: 0.01` and `sample_ratio: 1.0`, both exporting to a live loopback OTLP
receiver. Rounds are interleaved (off, 1%, 100%, off, ...); the proxies run on CPU 1, the
upstream, wrk and the receiver on CPU 0 (as in lib/harness.py). Writes
results/tracing-cost.json and results/tracing-cost.md; `loadtest/run.sh` (and
`--report-only`) puts the same section, with results/tracing-cost-reading.md (the
hand-written reading of the run, if any), into loadtest/RESULTS.md.

    loadtest/tracing-cost.py [--rounds 3] [--duration 8] [--warmup 2] [--results-dir DIR] [--bin-dir DIR]

A quick check that it works, away from the published results (a debug build will do for
that, never for figures):

    loadtest/tracing-cost.py --rounds 1 --duration 2 --warmup 1 --results-dir "$(mktemp -d)" \
        --bin-dir target/debug

Needs target/release/gatehouse and gatehouse-echo (cargo build --release), wrk, taskset.
Every process it starts is stopped when it ends; every load run is bounded by wrk's -d.
"""
import argparse, http.server, json, os, re, shutil, socket, socketserver, statistics, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
RESULTS = os.path.join(ROOT, "loadtest", "results")
sys.path.insert(0, os.path.join(ROOT, "loadtest", "lib"))
import report  # noqa: E402  (the RESULTS.md section, so both say the same)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Receiver(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    requests = 0
    bytes = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        self.server.requests += 1
        self.server.bytes += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


def wait_http(url, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"not answering: {url}")


def wrk(port, duration):
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=duration + 30)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out.stdout)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    return {
        "rps": float(m.group(1)) if m else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
        "non2xx": int(errors.group(1)) if errors else 0,
    }


def metric(admin, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--results-dir", default=RESULTS,
                    help="where tracing-cost.json/.md go (default loadtest/results, which RESULTS.md reads)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the configs and logs (printed at the end)")
    ap.add_argument("--bin-dir", default=BIN,
                    help="where gatehouse and gatehouse-echo are (default target/release; figures need a release build)")
    args = ap.parse_args()
    results = os.path.abspath(args.results_dir)
    bin_dir = os.path.abspath(args.bin_dir)
    # The receiver (this process) shares CPU 0 with the upstream and wrk, as the harness does.
    os.sched_setaffinity(0, {0})
    for exe in ("gatehouse", "gatehouse-echo"):
        if not os.access(os.path.join(bin_dir, exe), os.X_OK):
            raise SystemExit(f"build first: cargo build --release --bin gatehouse --bin gatehouse-echo ({exe})")
    procs = []
    work = tempfile.mkdtemp(prefix="gh-tracing-cost-")
    try:
        rx = Receiver(("127.0.0.1", 0), Handler)
        otlp_port = rx.server_address[1]
        threading.Thread(target=rx.serve_forever, daemon=True).start()
        up_port = free_port()
        procs.append(subprocess.Popen(["taskset", "-c", "0", os.path.join(bin_dir, "gatehouse-echo"), "--listen",
                                       f"127.0.0.1:{up_port}", "--threads", "1", "--body-size", "19"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        variants = {"off": None, "1%": 0.01, "100%": 1.0}
        ports = {}
        for name, ratio in variants.items():
            port, admin = free_port(), free_port()
            log = os.path.join(work, f"{name.strip('%')}-access.log")
            cfg = (f"version: 1\nserver: {{ threads: 1, pid_file: {work}/{name.strip('%')}.pid, "
                   f"upgrade_sock: {work}/{name.strip('%')}.sock }}\n"
                   f"listeners: [{{ name: public, address: \"127.0.0.1:{port}\" }}]\n"
                   f"admin: {{ address: \"127.0.0.1:{admin}\" }}\n"
                   f"access_log: {{ path: {log} }}\n"
                   f"upstreams: {{ backend: {{ targets: [{{ address: \"127.0.0.1:{up_port}\" }}] }} }}\n"
                   f"routes: [{{ name: all, match: {{ path_prefix: / }}, upstream: backend }}]\n")
            if ratio is not None:
                cfg += (f"tracing: {{ otlp_endpoint: \"http://127.0.0.1:{otlp_port}/v1/traces\", "
                        f"sample_ratio: {ratio}, queue: 65536 }}\n")
            path = os.path.join(work, f"{name.strip('%')}.yaml")
            with open(path, "w") as f:
                f.write(cfg)
            procs.append(subprocess.Popen(["taskset", "-c", "1", os.path.join(bin_dir, "gatehouse"), "run", "-c", path],
                                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name.strip('%')}.err"), "w")))
            ports[name] = (port, admin)
        for name, (port, admin) in ports.items():
            wait_http(f"http://127.0.0.1:{admin}/readyz")
            wait_http(f"http://127.0.0.1:{port}/")
        rounds = {n: [] for n in variants}
        for r in range(args.rounds):
            for name, (port, admin) in ports.items():
                wrk(port, args.warmup)
                res = wrk(port, args.duration)
                res["dropped_total"] = metric(admin, "gatehouse_trace_spans_dropped_total")
                res["exported_total"] = metric(admin, "gatehouse_trace_spans_exported_total")
                rounds[name].append(res)
                print(f"round {r + 1} {name:>4}: {res['rps']:9.0f} req/s  p99 {res['p99_ms']} ms", flush=True)
        med = {n: statistics.median(x["rps"] for x in v) for n, v in rounds.items()}
        doc = {
            "scenario": "proxy-small, tracing off / 1% / 100% (live loopback OTLP receiver)",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rounds": rounds, "median_rps": med,
            "ratio_vs_off": {n: med[n] / med["off"] for n in med},
            "receiver": {"requests": rx.requests, "bytes": rx.bytes},
            "binaries": os.path.relpath(bin_dir, ROOT),
            "load": {"tool": "wrk -t1 -c50", "duration_s": args.duration, "warmup_s": args.warmup,
                     "rounds": args.rounds, "pinning": "proxies CPU 1; upstream, wrk, receiver CPU 0"},
        }
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, "tracing-cost.json"), "w") as f:
            json.dump(doc, f, indent=2)
        reading = None
        reading_path = os.path.join(results, "tracing-cost-reading.md")
        if os.path.exists(reading_path):
            with open(reading_path) as f:
                reading = f.read()
        section = report.tracing_section(doc, reading)
        # The file stands alone: a top-level title instead of the report's section heading.
        # The file stands beside the data, so its link is relative to results/.
        section = section.replace("](results/tracing-cost.json)", "](tracing-cost.json)")
        lines = ["# Tracing cost (proxy-small)"] + section.splitlines()[1:]
        with open(os.path.join(results, "tracing-cost.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        # Configs, pid files and access logs (large at 100%): kept only with --keep-workdir.
        if args.keep_workdir:
            print(f"workdir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
