#!/usr/bin/env python3
"""Gatehouse load-test harness (started by loadtest/run.sh; standard library + PyYAML).

For each scenario: start the upstream (CPU 0), start every proxy (CPU 1, one worker
each), drive the same load at each in interleaved rounds (A B C A B C) with the load
generator on CPU 0, collect req/s, latency percentiles, errors, peak RSS and CPU
seconds of the proxy process (and Gatehouse's upstream connection reuse ratio), save
raw JSON under loadtest/results/ and write the Markdown report with SVG charts.
"""
import argparse
import ctypes
import datetime
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
LOADTEST = os.path.dirname(HERE)
REPO = os.path.dirname(LOADTEST)
sys.path.insert(0, HERE)
import report  # noqa: E402

SCENARIO_DIR = os.path.join(LOADTEST, "scenarios")
DEFAULT_RESULTS = os.path.join(LOADTEST, "results")
PROXIES = ["nginx", "haproxy", "pingora", "gatehouse"]
# Not in the default set: a second Gatehouse binary (GATEHOUSE_BASE_BIN, e.g. the previous
# commit's release build) run from the same `gatehouse:` template, interleaved with the
# others, so a change is measured against its base in one run (`--proxies gatehouse,gatehouse-base`).
EXTRA_PROXIES = ["gatehouse-base"]
GATEHOUSE_KINDS = ("gatehouse", "gatehouse-base")
# Targets that need no config template: `pingora` is Pingora's bare proxy
# (examples/bare_pingora.rs): one upstream, no routing, policies, metrics or logging.
NO_TEMPLATE = {"pingora"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


# ----------------------------------------------------------------------------- helpers

def parse_duration(v):
    """'10s', '500ms', '2m', 10 -> seconds (float)."""
    if isinstance(v, (int, float)):
        return float(v)
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|min|h)?\s*", str(v))
    if not m:
        raise HarnessError(f"bad duration: {v!r}")
    n, unit = float(m.group(1)), m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600}[unit]


def fmt_secs(s):
    return f"{int(s)}s" if float(s).is_integer() else f"{int(s * 1000)}ms"


_used_ports = set()


def free_port():
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in _used_ports:
            _used_ports.add(p)
            return p
    raise HarnessError("no free port")


def render(template, values, what):
    def sub(m):
        k = m.group(1)
        if k not in values:
            raise HarnessError(f"{what}: unknown placeholder {{{{{k}}}}} "
                               f"(known: {', '.join(sorted(values))})")
        return str(values[k])
    return re.sub(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", sub, template)


def read_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError):
        return None


def reset_hwm(pid):
    """Reset VmHWM (peak RSS) so each round reports its own peak (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_times():
    """Per-CPU (busy, steal) seconds from /proc/stat: detects noise from other processes."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d+ ", line):
                p = line.split()
                v = [int(x) for x in p[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                steal = v[7] if len(v) > 7 else 0
                busy = sum(v[:8]) - idle - steal
                out[p[0]] = (busy / CLK_TCK, steal / CLK_TCK, (v[0] + v[1] + v[2]) / CLK_TCK)
    return out


def children_cpu():
    """CPU seconds of reaped children (the load generators) and of the harness itself."""
    c, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime, me.ru_utime + me.ru_stime


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def sh(cmd):
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e})"


# ----------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    os.setsid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_setup_no_deathsig():
    os.setsid()


class Procs:
    """Every child runs in its own process group, dies with the harness (PDEATHSIG), and
    is listed in $GH_LOADTEST_PIDS so run.sh's trap can kill it even after a SIGKILL."""

    def __init__(self):
        self.live = []
        self.pidfile = os.environ.get("GH_LOADTEST_PIDS")

    def start(self, cmd, stdout=None, stderr=None, stdin=None, cwd=None, deathsig=True):
        # PDEATHSIG fires when the *thread* that started the child ends: a process started from
        # a short-lived thread (an action's new proxy process) must go without it (deathsig=False;
        # it is still listed for run.sh's trap and stopped by the harness).
        p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd,
                             preexec_fn=_child_setup if deathsig else _child_setup_no_deathsig, text=True)
        self.live.append(p)
        self.register(p.pid)
        return p

    def register(self, pgid):
        """A process group that is not our child (e.g. the new proxy process of an upgrade, in
        its own group) but must die with the run: run.sh's trap kills what is listed."""
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{pgid}\n")

    def run(self, cmd, timeout):
        """Run to completion (bounded); returns (rc, stdout, stderr)."""
        p = self.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise HarnessError(f"timed out after {timeout}s: {' '.join(cmd)}")
        self.live.remove(p)
        return p.returncode, out, err

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        else:
            try:  # stray grandchildren in the group
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p, grace=3.0)


PROCS = Procs()
PR_SET_CHILD_SUBREAPER = 36


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    """For a process that is not a Popen child of ours (one that an upgrade started). The
    harness is a child subreaper, so such processes are re-parented to it when their parent
    exits: reap it here if it exited, and count a zombie as gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def tree_pids(pid):
    """pid and its descendants (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def proc_gone(pid):
    """Exited (zombie) or gone, without reaping it: a child reaped during a round would add its
    whole life's CPU time to the harness's children (counted as load-generator CPU)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def stop_pid(pid, grace=5.0):
    """SIGTERM the process group `pid` leads (a gatehouse started by `gatehouse upgrade` is in
    its own group) or, if it leads none (a new nginx master stays in the old one's group), the
    process and its descendants; SIGKILL them after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            for p in (tree_pids(pid) if sig == signal.SIGKILL else [pid]):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def reap_orphans():
    """Reap re-parented descendants (subreaper) once every Popen child has been waited for."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def wait_http(port, req, proc, timeout=30.0, host="127.0.0.1"):
    """Wait until `req` through 127.0.0.1:port answers < 400. Returns None or an error."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            body = request_body(req)
            c.request(req["method"], req["path"], body=body, headers=req.get("headers") or {})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status < 400:
                return None
            last = f"HTTP {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.2)
    return f"not ready after {timeout:.0f}s: {last}"


def request_body(req):
    if req.get("body") is not None:
        return str(req["body"]).encode()
    n = int(req.get("body_size") or 0)
    return b"x" * n if n else None


# ----------------------------------------------------------------------------- scenario

def load_scenario(arg):
    path = arg if os.path.isfile(arg) else os.path.join(SCENARIO_DIR, arg + ".yaml")
    if not os.path.isfile(path):
        raise HarnessError(f"no scenario {arg!r} (looked for {path})")
    with open(path) as f:
        sc = yaml.safe_load(f)
    if not isinstance(sc, dict):
        raise HarnessError(f"{path}: not a mapping")
    sc.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    sc["_file"] = os.path.relpath(path, REPO)
    known = {"name", "description", "upstream", "targets", "access_log", "load", "requests",
             "gatehouse", "gatehouse-base", "nginx", "haproxy", "services", "action", "_file"}
    unknown = set(sc) - known
    if unknown:
        raise HarnessError(f"{path}: unknown keys {sorted(unknown)}")
    load = sc.setdefault("load", {})
    load.setdefault("mode", "closed")
    if load["mode"] not in ("closed", "open"):
        raise HarnessError(f"{path}: load.mode must be closed or open")
    load.setdefault("connections", 50)
    load.setdefault("duration", "10s")
    load.setdefault("warmup", "2s")
    load.setdefault("rounds", 3)
    load.setdefault("idle_connections", 0)
    if load["mode"] == "open" and not load.get("rate"):
        raise HarnessError(f"{path}: open loop needs load.rate")
    up = sc.setdefault("upstream", {})
    up.setdefault("kind", "auto")
    up.setdefault("body_size", 19)
    sc.setdefault("access_log", "file")
    sc.setdefault("targets", ["direct"] + PROXIES)
    reqs = sc.get("requests") or [{"method": "GET", "path": "/"}]
    for r in reqs:
        r.setdefault("method", "GET")
        r.setdefault("path", "/")
        r["headers"] = {str(k): str(v) for k, v in (r.get("headers") or {}).items()}
        r.setdefault("weight", 1)
    sc["requests"] = reqs
    sc.setdefault("services", [])
    for svc in sc["services"]:
        if svc not in SERVICES:
            raise HarnessError(f"{path}: unknown service {svc!r} (known: {', '.join(SERVICES)})")
    for t in sc["targets"]:
        if t != "direct" and t not in PROXIES:
            raise HarnessError(f"{path}: unknown target {t!r}")
        if t != "direct" and t not in NO_TEMPLATE and not sc.get(t):
            raise HarnessError(f"{path}: target {t} listed but no `{t}:` config template")
    if sc.get("action") is not None:
        sc["action"] = parse_action(sc["action"], load, path)
    return sc


ACTIONS = ("upgrade",)


def parse_action(a, load, path):
    """`action: { run: upgrade, at: 10s, window: 1s, control: true }`: something done to each
    proxy in the middle of the measured load (see loadtest/README.md)."""
    if not isinstance(a, dict):
        raise HarnessError(f"{path}: action must be a mapping like {{ run: upgrade, at: 10s }}")
    unknown = set(a) - {"run", "at", "window", "control"}
    if unknown:
        raise HarnessError(f"{path}: action: unknown keys {sorted(unknown)}")
    if a.get("run") not in ACTIONS:
        raise HarnessError(f"{path}: action.run must be one of {', '.join(ACTIONS)}")
    if load["mode"] != "open":
        raise HarnessError(f"{path}: an action needs an open-loop load (the hand-over window is cut "
                           "from oha's per-request timestamps)")
    out = {"run": a["run"], "at": parse_duration(a.get("at", "10s")),
           "window": parse_duration(a.get("window", "1s")), "control": bool(a.get("control", True))}
    if out["window"] <= 0 or out["at"] < out["window"]:
        raise HarnessError(f"{path}: action needs window > 0 and at >= window")
    return out


# ----------------------------------------------------------------------------- load generators

def lua_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


WRK_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%.0f,\"duration_us\":%.0f,\"bytes\":%.0f,\"connect\":%.0f," ..
    "\"read\":%.0f,\"write\":%.0f,\"status\":%.0f,\"timeout\":%.0f,\"mean_us\":%.1f," ..
    "\"stdev_us\":%.1f,\"max_us\":%.0f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f," ..
    "\"p999_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.stdev, latency.max, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
'''


def wrk_script(sc, path):
    """wrk Lua: the request mix plus done() printing p50/p90/p99/p99.9 as JSON."""
    reqs = sc["requests"]
    out = ["-- generated by loadtest/lib/harness.py for scenario " + sc["name"]]
    def body_expr(r):
        if r.get("body") is not None:
            return lua_str(r["body"])
        n = int(r.get("body_size") or 0)
        return f'string.rep("x", {n})' if n else "nil"
    if len(reqs) == 1 and int(reqs[0]["weight"]) == 1:
        r = reqs[0]   # static request: wrk's fast path (no per-request Lua call)
        out.append(f'wrk.method = {lua_str(r["method"])}')
        out.append(f'wrk.path = {lua_str(r["path"])}')
        for k, v in r["headers"].items():
            out.append(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}")
        b = body_expr(r)
        if b != "nil":
            out.append(f"wrk.body = {b}")
    else:
        out.append("local reqs = {}\nlocal i = 0\ninit = function(args)")
        for r in reqs:
            hdrs = "{" + ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in r["headers"].items()) + "}"
            for _ in range(int(r["weight"])):
                out.append(f'  reqs[#reqs + 1] = wrk.format({lua_str(r["method"])}, '
                           f'{lua_str(r["path"])}, {hdrs}, {body_expr(r)})')
        out.append("end\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend")
    out.append(WRK_DONE)
    with open(path, "w") as f:
        f.write("\n".join(out))


def wrk_cmd(sc, port, duration, script, pin):
    load = sc["load"]
    return pin(0) + ["wrk", "-t1", f"-c{load['connections']}", f"-d{fmt_secs(duration)}",
                     "--timeout", "5s", "-s", script, f"http://127.0.0.1:{port}{sc['requests'][0]['path']}"]


def oha_cmd(sc, port, duration, bodyfile, pin, db=None):
    load = sc["load"]
    reqs = sc["requests"]
    if len(reqs) > 1:
        raise HarnessError(f"{sc['name']}: open-loop (oha) scenarios take exactly one request shape")
    r = reqs[0]
    oha = os.environ.get("OHA") or shutil.which("oha")
    if not oha:
        raise HarnessError("oha not found (run.sh installs it; or set OHA=/path/to/oha)")
    cmd = pin(0) + [oha, "-q", str(load["rate"]), "-z", fmt_secs(duration),
                    "-c", str(load["connections"]), "--latency-correction", "-w", "--no-tui",
                    "--output-format", "json", "--worker-threads", "1", "--disable-compression",
                    "-m", r["method"]]
    for k, v in r["headers"].items():
        cmd += ["-H", f"{k}: {v}"]
    if bodyfile:
        cmd += ["-D", bodyfile]
    if db:
        # Every answered request (any status) with its scheduled start, start and end; socket
        # errors are only counted, in the JSON summary's errorDistribution.
        cmd += ["--db-url", db]
    return cmd + [f"http://127.0.0.1:{port}{r['path']}"]


def parse_wrk(out):
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[8:])
            secs = d["duration_us"] / 1e6
            return {
                "requests": int(d["requests"]), "seconds": secs,
                "rps": d["requests"] / secs if secs else 0.0,
                "p50_ms": d["p50_us"] / 1000, "p90_ms": d["p90_us"] / 1000,
                "p99_ms": d["p99_us"] / 1000, "p999_ms": d["p999_us"] / 1000,
                "mean_ms": d["mean_us"] / 1000, "max_ms": d["max_us"] / 1000,
                "errors_status": int(d["status"]),
                "errors_socket": int(d["connect"] + d["read"] + d["write"] + d["timeout"]),
                "errors_detail": {k: int(d[k]) for k in ("connect", "read", "write", "timeout", "status")},
            }
    raise HarnessError("wrk printed no WRKJSON line:\n" + out[-2000:])


def parse_oha(out):
    d = json.loads(out)
    pct = d.get("latencyPercentiles", {})
    codes = {k: int(v) for k, v in d.get("statusCodeDistribution", {}).items()}
    errs = {k: int(v) for k, v in d.get("errorDistribution", {}).items()}
    total = sum(codes.values()) + sum(errs.values())
    secs = float(d["summary"]["total"])
    ms = lambda k: (pct.get(k) * 1000) if pct.get(k) is not None else None  # noqa: E731
    return {
        "requests": total, "seconds": secs, "rps": total / secs if secs else 0.0,
        "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "mean_ms": d["summary"]["average"] * 1000, "max_ms": d["summary"]["slowest"] * 1000,
        "errors_status": sum(v for k, v in codes.items() if not k.startswith("2")),
        "errors_socket": sum(errs.values()),
        "errors_detail": {"status_codes": codes, "errors": errs},
    }


def pct(sorted_vals, p):
    """oha's own percentile rule (result_data.rs): the value at index floor(p/100 * n)."""
    if not sorted_vals:
        return None
    return sorted_vals[min(int(p / 100 * len(sorted_vals)), len(sorted_vals) - 1)]


def lat_stats(lat):
    lat = sorted(lat)
    return {"answered": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "p999_ms": pct(lat, 99.9), "max_ms": lat[-1] if lat else None}


def parse_oha_db(db, duration, at, w):
    """Per-request data from oha's sqlite (--db-url): requests by *scheduled* start (oha's
    latency-corrected start: start_latency_correction), latency = end - scheduled start, like
    the JSON summary. Cuts three windows of `w` seconds (the one before `at`, the one starting
    at `at`, the next) and a per-second timeline. Times are seconds from oha's start; `at` is
    the action's start measured from oha's spawn (oha's clock starts a few ms after that)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT COALESCE(start_latency_correction, start), end, status FROM oha").fetchall()
    finally:
        con.close()
    windows = {"before": (at - w, at), "w0": (at, at + w), "w1": (at + w, at + 2 * w)}
    lat_all, win_lat = [], {k: [] for k in windows}
    win_bad = {k: 0 for k in windows}
    nsec = int(math.ceil(duration))
    sec_lat = [[] for _ in range(nsec)]
    sec_bad = [0] * nsec
    for sched, end, status in rows:
        ms = (end - sched) * 1000
        lat_all.append(ms)
        bad = not 200 <= status < 300
        for k, (a, b) in windows.items():
            if a <= sched < b:
                win_lat[k].append(ms)
                win_bad[k] += bad
        i = int(sched)
        if 0 <= i < nsec:
            sec_lat[i].append(ms)
            sec_bad[i] += bad
    out = {"db_rows": len(rows), "db_whole": lat_stats(lat_all), "windows": {}, "timeline": []}
    for k, (a, b) in windows.items():
        out["windows"][k] = dict(lat_stats(win_lat[k]), start_s=round(a, 3), end_s=round(b, 3), non_2xx=win_bad[k])
    for i in range(nsec):
        st = lat_stats(sec_lat[i])
        out["timeline"].append({"s": i, "answered": st["answered"], "non_2xx": sec_bad[i],
                                "p50_ms": st["p50_ms"], "p99_ms": st["p99_ms"], "p999_ms": st["p999_ms"],
                                "max_ms": st["max_ms"]})
    return out


# ----------------------------------------------------------------------------- upstreams

def echo_bin():
    return os.environ.get("GATEHOUSE_ECHO_BIN") or os.path.join(REPO, "target/release/gatehouse-echo")


def gatehouse_bin():
    return os.environ.get("GATEHOUSE_BIN") or os.path.join(REPO, "target/release/gatehouse")


def gatehouse_base_bin():
    return os.environ.get("GATEHOUSE_BASE_BIN", "")


def pingora_bin():
    return os.environ.get("BARE_PINGORA_BIN") or os.path.join(REPO, "target/release/examples/bare_pingora")


NGINX_UPSTREAM = """# static nginx upstream (generated by the harness)
daemon off;
master_process off;
worker_processes 1;
pid {workdir}/up-nginx.pid;
error_log {workdir}/up-nginx.error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/up-tmp;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      default_type text/plain;
      return 200 "{body}";
    }}
  }}
}}
"""


SERVICES = ("redis",)


class RedisService:
    """A scratch redis-server (no persistence) on CPU 0, for `services: [redis]`; its
    port is the `{{redis_port}}` placeholder."""

    def __init__(self, workdir, pin):
        exe = shutil.which("redis-server")
        if not exe:
            raise HarnessError("services: [redis] needs redis-server (apt-get install redis-server)")
        self.port = free_port()
        self.log = os.path.join(workdir, "redis.out")
        self.cmd = pin(0) + [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                             "--appendonly", "no", "--dir", workdir]
        with open(self.log, "w") as out:
            self.proc = PROCS.start(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                PROCS.stop(self.proc)
                raise HarnessError(f"redis-server did not start\n{tail(self.log)}")
            time.sleep(0.05)

    def stop(self):
        PROCS.stop(self.proc)


class Upstream:
    def __init__(self, kind, body_size, workdir, pin):
        self.kind, self.body_size = kind, int(body_size)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = os.path.join(workdir, f"upstream-{kind}.out")
        if kind == "echo":
            b = echo_bin()
            if not os.access(b, os.X_OK):
                raise HarnessError(f"echo backend not built: {b}")
            self.cmd = pin(0) + [b, "--listen", self.addr, "--body-size", str(self.body_size),
                                 "--threads", "1"]
        elif kind == "nginx":
            conf = os.path.join(workdir, f"up-nginx-{self.port}.conf")
            os.makedirs(os.path.join(workdir, "up-tmp"), exist_ok=True)
            with open(conf, "w") as f:
                f.write(NGINX_UPSTREAM.format(workdir=workdir, port=self.port, body="x" * self.body_size))
            self.cmd = pin(0) + [nginx_bin(), "-p", workdir, "-e", os.path.join(workdir, "up-nginx.error.log"),
                                 "-c", conf]
        else:
            raise HarnessError(f"unknown upstream kind {kind!r}")
        with open(self.log, "w") as out:
            self.proc = PROCS.start(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        err = wait_http(self.port, {"method": "GET", "path": "/"}, self.proc, timeout=20)
        if err:
            PROCS.stop(self.proc)
            raise HarnessError(f"upstream {kind} did not start: {err}\n{tail(self.log)}")

    def stop(self):
        PROCS.stop(self.proc)


def nginx_bin():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def haproxy_bin():
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


# ----------------------------------------------------------------------------- proxies

class Target:
    """One thing under load: `direct` (the upstream itself) or a proxy process."""

    def __init__(self, name, sc, upstream, workdir, pin, label=None, action=None):
        # name: the proxy (its template); label: the key in the results, e.g. gatehouse+upgrade
        # for the variant that gets `action` in every round (own workdir, pid file, ports).
        self.name, self.sc, self.label, self.action = name, sc, label or name, action
        self.error, self.proc, self.config_text, self.cmd = None, None, None, None
        self.admin_port = None
        self.workdir, self.conf = workdir, None
        self.cur_pid = None      # after a hand-over: the process now serving (not our child)
        self.pid_file = None
        self.access_log_path = None
        self.daemon = False      # nginx with `daemon on;` (its binary upgrade needs it)
        if name == "direct":
            self.port, self.proc, self.cmd = upstream.port, upstream.proc, upstream.cmd
            return
        self.port = free_port()
        self.admin_port = free_port()
        if name == "pingora":
            if action:
                self.error = f"action {action['run']} is not implemented for {name}"
                return
            self._start_bare_pingora(sc, upstream, workdir, pin)
            return
        access_log = sc["access_log"]
        log_path = os.path.join(workdir, f"{name}-access.log")
        self.access_log_path = log_path if access_log == "file" else None
        values = {
            "listen_port": self.port, "admin_port": self.admin_port,
            "upstream": upstream.addr, "upstream_host": "127.0.0.1", "upstream_port": upstream.port,
            "workdir": workdir,
            # Files a scenario ships beside its YAML (e.g. the JWKS of auth-jwt-es256).
            "scenario_dir": SCENARIO_DIR,
            "access_log": log_path if access_log == "file" else "off",
            # nginx buffers like Gatehouse's writer thread does (64 KiB); HAProxy can only log
            # to stdout/syslog: one write per line to stdout, redirected to the file.
            "nginx_access_log": f"{log_path} combined buffer=64k flush=1s" if access_log == "file" else "off",
            "haproxy_log": "log stdout format raw local0" if access_log == "file" else "",
        }
        values.update(sc.get("_service_values", {}))
        # gatehouse-base is served from the `gatehouse:` template unless the scenario gives
        # it one of its own (a feature's route against a plain one, on one binary).
        tmpl = name
        if name == "gatehouse-base" and not sc.get("gatehouse-base"):
            tmpl = "gatehouse"
        self.config_text = render(sc[tmpl], values, f"{sc['name']}: {name} template")
        ext = {"gatehouse": "yaml", "gatehouse-base": "yaml", "nginx": "conf", "haproxy": "cfg"}[tmpl]
        conf = os.path.join(workdir, f"{name}.{ext}")
        with open(conf, "w") as f:
            f.write(self.config_text)
        self.conf = conf
        if action:
            e = ACTION_SUPPORT.get((action["run"], name))
            if e is None:
                self.error = f"action {action['run']} is not implemented for {name}"
                return
            if name in GATEHOUSE_KINDS:
                # `gatehouse upgrade` finds the running process through server.pid_file; the
                # default (/tmp/gatehouse.pid) would be shared with anything else on the machine.
                server = (yaml.safe_load(self.config_text) or {}).get("server") or {}
                if not server.get("pid_file") or not server.get("upgrade_sock"):
                    raise HarnessError(f"{sc['name']}: action {action['run']} needs server.pid_file and "
                                       "server.upgrade_sock in the gatehouse template (e.g. under {{workdir}})")
                self.pid_file = server["pid_file"]
        self.log = os.path.join(workdir, f"{name}.out")
        stdout_path = self.log
        if name == "nginx":
            os.makedirs(os.path.join(workdir, "nginx-tmp"), exist_ok=True)
            self.cmd = pin(1) + [nginx_bin(), "-p", workdir, "-e", os.path.join(workdir, "nginx.error.log"),
                                 "-c", conf]
            if re.search(r"^\s*daemon\s+on\s*;", self.config_text, re.M):
                # A daemon (master + worker): found through its pid file. Started from a shell
                # that outlives the fork: nginx ignores USR2 (binary upgrade) while its parent
                # is the process that was its parent at start, and the harness, a subreaper,
                # adopts the daemon.
                self.daemon = True
                m = re.search(r"^\s*pid\s+([^;\s]+)\s*;", self.config_text, re.M)
                if not m:
                    self.error = "nginx with `daemon on` needs a `pid` file in its template"
                    return
                self.pid_file = m.group(1)
                self.cmd = ["sh", "-c", '"$@"; rc=$?; sleep 0.2; exit $rc', "sh"] + self.cmd
        elif name == "haproxy":
            # HAProxy logs to stdout ("log stdout"), which goes to the access log file.
            if access_log == "file":
                stdout_path = log_path
            self.cmd = pin(1) + [haproxy_bin(), "-db", "-f", conf]
        else:
            b = gatehouse_bin() if name == "gatehouse" else gatehouse_base_bin()
            if not b or not os.access(b, os.X_OK):
                self.error = (f"gatehouse not built: {b}" if name == "gatehouse" else
                              f"gatehouse-base needs GATEHOUSE_BASE_BIN (an executable), got {b!r}")
                return
            self.cmd = pin(1) + [b, "run", "-c", conf]
        self.stdout_path = stdout_path
        with open(stdout_path, "a") as out, open(self.log, "a") as err:
            self.proc = PROCS.start(self.cmd, stdout=out, stderr=err, cwd=workdir)
        if self.daemon:
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                rc = "still running after 15 s"
            master = read_pid(self.pid_file)
            if rc != 0 or not master:
                self.error = f"nginx daemon did not start ({rc})\n{tail(os.path.join(workdir, 'nginx.error.log'))}"
                return
            self.cur_pid = master
            PROCS.register(master)   # its own session and group (daemon)
        e = wait_http(self.port, sc["requests"][0], None if self.daemon else self.proc, timeout=30)
        if e:
            self.error = f"did not start: {e}\n{tail(self.log)}" + (
                tail(os.path.join(workdir, "nginx.error.log")) if name == "nginx" else "")
            PROCS.stop(self.proc)
            self.proc = None
            return
        if name in GATEHOUSE_KINDS and self.metrics() is None:
            log(f"  gatehouse: admin /metrics on :{self.admin_port} not reachable; reuse ratio unavailable")

    def _start_bare_pingora(self, sc, upstream, workdir, pin):
        """Pingora's bare proxy, one worker thread: the floor under any Pingora-based gateway."""
        b = pingora_bin()
        if not os.access(b, os.X_OK):
            self.error = f"bare Pingora proxy not built: {b} (cargo build --release --example bare_pingora)"
            return
        self.config_text = "(no config: examples/bare_pingora.rs, 1 thread, plain HTTP/1.1 upstream)"
        self.cmd = pin(1) + [b, f"127.0.0.1:{self.port}", upstream.addr, "1"]
        self.log = os.path.join(workdir, "pingora.out")
        with open(self.log, "a") as out:
            self.proc = PROCS.start(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        e = wait_http(self.port, sc["requests"][0], self.proc, timeout=30)
        if e:
            self.error = f"did not start: {e}\n{tail(self.log)}"
            PROCS.stop(self.proc)
            self.proc = None

    @property
    def pid(self):
        if self.cur_pid:
            return self.cur_pid
        return self.proc.pid if self.proc else None

    def alive(self):
        if self.cur_pid:
            return pid_alive(self.cur_pid)
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        """The process under test, and for a daemon (nginx master) its workers too."""
        return tree_pids(self.pid) if self.daemon else [self.pid]

    def cpu(self):
        v = [cpu_seconds(p) for p in self.pids()]
        return sum(x for x in v if x is not None) if v and v[0] is not None else None

    def status(self):
        """read_status; for a master + workers: the largest process's RSS/HWM (the worker's)."""
        sts = [read_status(p) for p in self.pids()]
        if len(sts) == 1:
            return sts[0]
        out = {k: max(st.get(k, 0) for st in sts) for k in ("VmHWM", "VmRSS")}
        out["Threads"] = sum(st.get("Threads", 0) for st in sts)
        return out

    def reset_hwm(self):
        return all([reset_hwm(p) for p in self.pids()])

    def exit_desc(self):
        if self.cur_pid:
            return f"pid {self.cur_pid} (after a hand-over) exited"
        return f"process exited (code {self.proc.returncode if self.proc else '?'})"

    def stop(self):
        if self.name == "direct":
            return
        if self.proc:
            PROCS.stop(self.proc)
        if self.cur_pid:
            stop_pid(self.cur_pid)

    def metrics(self):
        """gatehouse_upstream_connections_total by reused=true/false (None if unavailable)."""
        if self.name not in GATEHOUSE_KINDS or not self.admin_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {"true": 0.0, "false": 0.0}
        seen = False
        for m in re.finditer(r'^gatehouse_upstream_connections_total\{([^}]*)\}\s+(\S+)', text, re.M):
            lab = re.search(r'reused="(true|false)"', m.group(1))
            if lab:
                out[lab.group(1)] += float(m.group(2))
                seen = True
        return out if seen else None


# ----------------------------------------------------------------------------- actions

def upgrade_gatehouse(t, pin):
    """`gatehouse upgrade -c FILE` with the running config (same binary, same config), pinned to
    the proxy's CPU so that the new process inherits the pinning. The command returns once the
    old process has drained and exited (or after its grace period + 10 s)."""
    server = (yaml.safe_load(t.config_text) or {}).get("server") or {}
    grace = parse_duration(server.get("grace_period", "30s"))
    t.actions_done = getattr(t, "actions_done", 0) + 1
    log_path = os.path.join(t.workdir, f"gatehouse-new-{t.actions_done}.log")
    cmd = pin(1) + [gatehouse_bin() if t.name == "gatehouse" else gatehouse_base_bin(), "upgrade", "-c", t.conf, "--log", log_path]
    out = {"cmd": cmd, "old_pid": t.pid, "log": log_path}
    rc, so, se = PROCS.run(cmd, timeout=grace + 40)
    out["rc"], out["output"] = rc, (so + se).strip()
    new = read_pid(t.pid_file)
    if new and new != out["old_pid"] and pid_alive(new):
        t.cur_pid = new
        PROCS.register(new)   # its own process group (`gatehouse upgrade` starts it so)
    out["new_pid"] = t.cur_pid if t.cur_pid != out["old_pid"] else None
    m = re.search(r"ready after ([0-9.]+)s", so)
    out["ready_after_s"] = float(m.group(1)) if m else None
    m = re.search(r"drained and exited after ([0-9.]+)s", so)
    out["old_exited_after_s"] = float(m.group(1)) if m else None
    if rc != 0 or not out["new_pid"]:
        out["error"] = f"gatehouse upgrade exited {rc}: {out['output'][-800:]}"
    return out


def upgrade_haproxy(t, pin):
    """HAProxy's seamless reload: a new process with the same config takes the listening sockets
    from the old one over its stats socket (`-x`, needs `stats socket … expose-fd listeners`),
    then tells it to finish (`-sf OLDPID`: soft stop, it serves its connections to the end, at
    most `hard-stop-after`). Returns once the old process has exited."""
    m = re.search(r"^\s*stats socket (\S+)[^\n]*expose-fd listeners", t.config_text, re.M)
    m2 = re.search(r"^\s*hard-stop-after (\S+)", t.config_text, re.M)
    old = t.proc
    cmd = pin(1) + [haproxy_bin(), "-db", "-f", t.conf] + (["-x", m.group(1)] if m else []) + ["-sf", str(old.pid)]
    out = {"cmd": cmd, "old_pid": old.pid, "ready_after_s": None}
    t0 = time.monotonic()
    with open(t.stdout_path, "a") as so, open(t.log, "a") as se:
        new = PROCS.start(cmd, stdout=so, stderr=se, cwd=t.workdir, deathsig=False)
    t.proc = new
    out["new_pid"] = new.pid
    limit = (parse_duration(m2.group(1)) if m2 else 30) + 10
    while time.monotonic() - t0 < limit:
        if new.poll() is not None:
            out["error"] = f"the new haproxy exited {new.returncode}: {tail(t.log, 5)}"
            return out
        if proc_gone(old.pid):   # reaped at the end of the run (PROCS.stop_all)
            out["old_exited_after_s"] = round(time.monotonic() - t0, 2)
            break
        time.sleep(0.02)
    else:
        out["old_exited_after_s"] = None
        out["error"] = f"the old haproxy {old.pid} was still running after {limit:g} s"
        PROCS.stop(old)
    return out


def upgrade_nginx(t, pin):
    """nginx's binary upgrade (same binary): USR2 to the master starts a new master (with the
    listening sockets) and its workers; once the new master has written the pid file and has
    a worker, QUIT to the old master: its workers finish their requests, close idle keep-alive
    connections, and exit. The new processes inherit the CPU pinning from the old master."""
    if not t.daemon:
        raise HarnessError("nginx's binary upgrade needs `daemon on; master_process on;` in the template")
    old = t.pid
    out = {"cmd": ["kill", "-USR2", str(old), "&&", "kill", "-QUIT", str(old)], "old_pid": old}
    t0 = time.monotonic()
    os.kill(old, signal.SIGUSR2)
    new = None
    while time.monotonic() - t0 < 10:
        p = read_pid(t.pid_file)
        if p and p != old and pid_alive(p) and len(tree_pids(p)) > 1:
            new = p
            break
        time.sleep(0.01)
    if not new:
        out["error"] = f"no new nginx master with a worker within 10 s: {tail(t.log, 3)}"
        return out
    out["new_pid"], out["ready_after_s"] = new, round(time.monotonic() - t0, 2)
    os.kill(old, signal.SIGQUIT)
    t.cur_pid = new
    PROCS.register(new)
    while time.monotonic() - t0 < 40:
        if proc_gone(old):
            out["old_exited_after_s"] = round(time.monotonic() - t0, 2)
            break
        time.sleep(0.02)
    else:
        out["old_exited_after_s"] = None
        out["error"] = f"the old nginx master {old} was still running after 40 s"
    return out


# (action, proxy) -> function(target, pin) -> dict; what `run: upgrade` means for each proxy.
ACTION_SUPPORT = {
    ("upgrade", "gatehouse"): upgrade_gatehouse,
    ("upgrade", "gatehouse-base"): upgrade_gatehouse,
    ("upgrade", "haproxy"): upgrade_haproxy,
    ("upgrade", "nginx"): upgrade_nginx,
}


def run_with_action(cmd, timeout, t, pin, at):
    """Run the load generator; `at` seconds after starting it, run the target's action in a
    thread. Returns (rc, stdout, stderr, what the action did with its start/end in seconds
    from the load generator's spawn)."""
    p = PROCS.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    box = {"run": t.action["run"]}

    def act():
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        box["started_s"] = round(time.monotonic() - t0, 4)
        try:
            box.update(ACTION_SUPPORT[(t.action["run"], t.name)](t, pin))
        except Exception as e:  # noqa: BLE001 (reported in the round, the load goes on)
            box["error"] = f"{type(e).__name__}: {e}"
        box["ended_s"] = round(time.monotonic() - t0, 4)
    th = threading.Thread(target=act, name="action", daemon=True)
    th.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p)
        raise HarnessError(f"timed out after {timeout}s: {' '.join(cmd)}")
    PROCS.live.remove(p)
    th.join(timeout=120)
    if th.is_alive():
        box["error"] = "the action was still running 120 s after the load ended"
    elif "started_s" not in box:
        box["error"] = "the load ended before the action's time"
    return p.returncode, out, err, box


class PidSampler(threading.Thread):
    """During a round with an action the proxy's PID changes (the new process takes the sockets
    over, the old one drains and exits). Every 100 ms this samples CPU seconds and VmHWM of every
    process that served the target: the first from the start of the measured load, the ones
    found later in the pid file from their birth (all their CPU, start-up included)."""

    def __init__(self, t, interval=0.1):
        super().__init__(name="pid-sampler", daemon=True)
        self.t, self.interval = t, interval
        self.base = {p: cpu_seconds(p) or 0.0 for p in t.pids()}
        self.last, self.hwm = dict(self.base), {}
        self.halt = threading.Event()

    def sample(self):
        pids = set(self.last) | set(self.t.pids())
        if self.t.pid_file:
            p = read_pid(self.t.pid_file)
            if p:
                pids |= set(tree_pids(p))
        for pid in pids:
            c = cpu_seconds(pid)
            if c is None:
                continue
            self.base.setdefault(pid, 0.0)
            self.last[pid] = c
            h = read_status(pid).get("VmHWM")
            if h:
                self.hwm[pid] = max(h, self.hwm.get(pid, 0))

    def run(self):
        while not self.halt.wait(self.interval):
            self.sample()

    def finish(self):
        self.halt.set()
        self.join(5)
        self.sample()
        return {"pids": sorted(self.last), "cpu_s": sum(self.last[p] - self.base[p] for p in self.last),
                "cpu_s_by_pid": {str(p): round(self.last[p] - self.base[p], 3) for p in self.last},
                "rss_peak_kib": max(self.hwm.values()) if self.hwm else None,
                "rss_peak_kib_by_pid": {str(p): v for p, v in self.hwm.items()}}


# ----------------------------------------------------------------------------- one round

class IdleConns:
    def __init__(self, port, n, path, pin, timeout=180):
        self.p = PROCS.start(pin(0) + [sys.executable, os.path.join(HERE, "idle_conns.py"),
                                        "127.0.0.1", str(port), str(n), path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ready = self._line("READY", timeout)
        m = dict(re.findall(r"(\w+)=(\S+)", self.ready))
        self.opened, self.failed = int(m.get("opened", 0)), int(m.get("failed", 0))
        self.open_seconds = float(m.get("seconds", 0))

    def _line(self, prefix, timeout):
        import select
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise HarnessError(f"idle_conns exited: {self.p.stderr.read()[-1500:]}")
            r, _, _ = select.select([self.p.stdout], [], [], 1.0)
            if r:
                line = self.p.stdout.readline()
                if line.startswith(prefix):
                    return line.strip()
        raise HarnessError(f"idle_conns: no {prefix} within {timeout}s")

    def alive(self):
        self.p.stdin.write("count\n")
        self.p.stdin.flush()
        return int(self._line("ALIVE", 10).split()[1])

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        PROCS.stop(self.p)


def wait_quiet(max_wait, threshold=0.15):
    """Before a round, wait (up to max_wait s) until no CPU is more than `threshold` busy with
    anything (our proxies are idle between rounds). Returns (seconds waited, busiest CPU share)."""
    t0 = time.monotonic()
    while True:
        a = cpu_times()
        time.sleep(1.0)
        b = cpu_times()
        busiest = max((b[c][0] - a[c][0]) + (b[c][1] - a[c][1]) for c in b)
        waited = time.monotonic() - t0
        if busiest <= threshold or waited >= max_wait:
            return round(waited, 1), round(busiest, 3)
        time.sleep(2.0)


def run_round(sc, t, upstream, workdir, pin, duration, warmup, bodyfile, script, quiet_wait=0):
    load = sc["load"]
    open_loop = load["mode"] == "open"
    # With an action in the scenario every variant (the control too) keeps oha's per-request
    # data, so that the same windows are cut from both.
    sc_action = sc.get("action")

    def gen(secs, measured=False):
        db, box = None, None
        if open_loop:
            if measured and sc_action:
                db = os.path.join(t.workdir, "oha-requests.db")
                if os.path.exists(db):
                    os.remove(db)
            cmd = oha_cmd(sc, t.port, secs, bodyfile, pin, db=db)
        else:
            cmd = wrk_cmd(sc, t.port, secs, script, pin)
        if measured and t.action:
            rc, out, err, box = run_with_action(cmd, secs + 120, t, pin, t.action["at"])
        else:
            rc, out, err = PROCS.run(cmd, timeout=secs + 120 if db else secs + 60)
        if rc != 0:
            raise HarnessError(f"{cmd[0] if not pin(0) else cmd[3]} exited {rc}: {err[-1500:]}")
        r = parse_oha(out) if open_loop else parse_wrk(out)
        if db:
            # The windows start when the action started (measured), or at the nominal time in
            # the control; both in seconds from oha's spawn.
            at = box["started_s"] if box and "started_s" in box else sc_action["at"]
            r.update(parse_oha_db(db, secs, at, sc_action["window"]))
            if sc.get("_keep_workdir"):   # --keep-workdir: keep every round's per-request data
                os.rename(db, os.path.join(t.workdir, f"oha-requests-{datetime.datetime.now():%H%M%S}.db"))
            else:
                os.remove(db)
            if r["db_rows"] + r["errors_socket"] != r["requests"]:
                log(f"  {t.label}: oha's sqlite has {r['db_rows']} answered requests, its summary "
                    f"{r['requests'] - r['errors_socket']}")
        if box is not None:
            r["action"] = box
        return cmd, r

    res = {"target": t.label}
    if quiet_wait > 0:
        res["quiet_waited_s"], res["busy_before"] = wait_quiet(quiet_wait)
        if res["busy_before"] > 0.15:
            log(f"  (machine still busy before {t.label}: {res['busy_before'] * 100:.0f}% of a CPU after "
                f"{res['quiet_waited_s']:.0f}s; measuring anyway)")
    res["started"] = datetime.datetime.now().isoformat(timespec="seconds")
    idle = None
    if load.get("idle_connections"):
        res["rss_before_idle_kib"] = read_status(t.pid).get("VmRSS")
        idle = IdleConns(t.port, int(load["idle_connections"]), sc["requests"][0]["path"], pin)
        res.update(idle_opened=idle.opened, idle_failed=idle.failed, idle_open_seconds=idle.open_seconds)
        time.sleep(3)
        res["rss_idle_kib"] = read_status(t.pid).get("VmRSS")
        res["idle_alive_at_rest"] = idle.alive()
    try:
        if warmup > 0:
            gen(warmup)
        m0, c0, up0 = t.metrics(), t.cpu(), cpu_seconds(upstream.proc.pid)
        res["hwm_reset"] = t.reset_hwm()
        sampler = PidSampler(t) if t.action else None
        if sampler:
            sampler.start()
        (lg0, me0), st0 = children_cpu(), cpu_times()
        try:
            cmd, r = gen(duration, measured=True)
        finally:
            followed = sampler.finish() if sampler else None
        st1, (lg1, me1) = cpu_times(), children_cpu()
        m1, c1, up1 = t.metrics(), t.cpu(), cpu_seconds(upstream.proc.pid)
        status = t.status()
        res.update(r)
        res["loadgen_cmd"] = cmd
        res["rss_peak_kib"] = status.get("VmHWM")
        res["rss_end_kib"] = status.get("VmRSS")
        res["threads"] = status.get("Threads")
        res["cpu_s"] = (c1 - c0) if c0 is not None and c1 is not None else None
        if followed:
            # The PID changed: CPU = old process until it exited + new process since its birth;
            # peak RSS = the larger of the processes' own peaks (not their sum in the overlap).
            res["cpu_s"], res["rss_peak_kib"] = followed["cpu_s"], followed["rss_peak_kib"]
            res["pids"] = followed
            m0 = m1 = None   # the new process's counters start at 0: no reuse ratio for this round
        res["upstream_cpu_s"] = (up1 - up0) if up0 is not None and up1 is not None else None
        res["cpu_us_per_req"] = (res["cpu_s"] / r["requests"] * 1e6) if res["cpu_s"] is not None and r["requests"] else None
        for cpu in st1:
            res[f"{cpu}_busy_s"] = st1[cpu][0] - st0[cpu][0]
            res[f"{cpu}_steal_s"] = st1[cpu][1] - st0[cpu][1]
        # Noise: busy CPU time on the machine that was none of ours (load generator, upstream,
        # proxy under test, harness), as a share of one CPU over the measured time. (Process
        # times include the softirq work done on their behalf, so compare with all busy time.)
        ours = (lg1 - lg0) + (me1 - me0) + (res["upstream_cpu_s"] or 0) + \
            (0 if t.name == "direct" else (res["cpu_s"] or 0))
        total_busy = sum(st1[c][0] - st0[c][0] for c in st1)
        res["loadgen_cpu_s"] = lg1 - lg0
        res["other_cpu_s"] = total_busy - ours
        res["noise"] = max(0.0, total_busy - ours) / r["seconds"] if r["seconds"] else 0.0
        if m0 is not None and m1 is not None:
            new, reused = m1["false"] - m0["false"], m1["true"] - m0["true"]
            res["upstream_conns_new"], res["upstream_conns_reused"] = new, reused
            res["reuse_ratio"] = reused / (new + reused) if new + reused else None
        if idle:
            res["idle_alive_after_load"] = idle.alive()
    finally:
        if idle:
            idle.close()
    return res


# ----------------------------------------------------------------------------- summaries

def summarize(rounds):
    ok = [r for r in rounds if "rps" in r]
    if not ok:
        return None
    med = lambda k: statistics.median([r[k] for r in ok if r.get(k) is not None]) if any(r.get(k) is not None for r in ok) else None  # noqa: E731
    rps = [r["rps"] for r in ok]
    s = {
        "rounds": len(ok), "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
        "rps_cv": (statistics.pstdev(rps) / statistics.mean(rps)) if len(rps) > 1 and statistics.mean(rps) else 0.0,
        "requests": sum(r["requests"] for r in ok),
        "errors_status": sum(r.get("errors_status", 0) for r in ok),
        "errors_socket": sum(r["errors_socket"] for r in ok),
        "rss_peak_kib": max((r.get("rss_peak_kib") or 0) for r in ok),
        "cpu_s": med("cpu_s"), "cpu_us_per_req": med("cpu_us_per_req"),
    }
    for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms"):
        s[k] = med(k)
    s["p99_ms_max"] = max((r["p99_ms"] or 0) for r in ok)
    new = sum(r.get("upstream_conns_new", 0) for r in ok)
    reused = sum(r.get("upstream_conns_reused", 0) for r in ok)
    if any("reuse_ratio" in r for r in ok) and new + reused:
        s["reuse_ratio"], s["upstream_conns_new"], s["upstream_conns_reused"] = reused / (new + reused), new, reused
    if any("rss_idle_kib" in r for r in ok):
        s["rss_idle_kib"] = med("rss_idle_kib")
        s["rss_before_idle_kib"] = med("rss_before_idle_kib")
        s["idle_opened"] = min(r.get("idle_opened", 0) for r in ok)
        s["idle_failed"] = max(r.get("idle_failed", 0) for r in ok)
        s["idle_alive_after_load"] = min(r.get("idle_alive_after_load", 0) for r in ok)
    cpu1_other = [r["cpu1_busy_s"] - (r["cpu_s"] or 0) for r in ok if "cpu1_busy_s" in r]
    if cpu1_other and any(r["target"] != "direct" for r in ok):
        s["cpu1_other_s"] = statistics.median(cpu1_other)
    steal = [r.get("cpu1_steal_s", 0) + r.get("cpu0_steal_s", 0) for r in ok]
    s["steal_s"] = statistics.median(steal) if steal else 0
    s["discarded_failures"] = sum((a.get("errors_socket") or 0) + (a.get("errors_status") or 0)
                                  for r in ok for a in r.get("discarded", []))
    wins = [r["windows"] for r in ok if r.get("windows")]
    if wins:
        # Per window: median over rounds (and the worst round) of its percentiles.
        s["windows"] = {}
        for k in wins[0]:
            ws = [w[k] for w in wins]
            s["windows"][k] = {"answered": sum(w["answered"] for w in ws), "non_2xx": sum(w["non_2xx"] for w in ws),
                               "start_s": statistics.median(w["start_s"] for w in ws),
                               "end_s": statistics.median(w["end_s"] for w in ws)}
            for m in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
                vals = [w[m] for w in ws if w[m] is not None]
                s["windows"][k][m] = statistics.median(vals) if vals else None
                s["windows"][k][m + "_worst"] = max(vals) if vals else None
    acts = [r["action"] for r in ok if r.get("action")]
    if acts:
        def med_of(k):
            v = [a[k] for a in acts if a.get(k) is not None]
            return statistics.median(v) if v else None
        s["actions"] = {"run": acts[0]["run"], "count": len(acts), "failed": sum(1 for a in acts if a.get("error")),
                        "errors": [a["error"] for a in acts if a.get("error")],
                        "started_s": med_of("started_s"), "ready_after_s": med_of("ready_after_s"),
                        "old_exited_after_s": med_of("old_exited_after_s"),
                        "took_s": statistics.median([a["ended_s"] - a["started_s"] for a in acts
                                                     if "ended_s" in a and "started_s" in a] or [0])}
    return s


# ----------------------------------------------------------------------------- orchestration

def make_pin(enabled):
    return (lambda cpu: ["taskset", "-c", str(cpu)]) if enabled else (lambda cpu: [])


def choose_upstream(args, workdir, pin, results_dir):
    """echo vs static nginx: direct closed-loop load (same placement as the scenarios)."""
    kinds = ["echo", "nginx"]
    if not os.access(echo_bin(), os.X_OK):
        log("upstream: echo backend not built -> static nginx")
        return "nginx", {"chosen": "nginx", "reason": "echo backend not built"}
    sc = {"name": "upstream-choice", "load": {"connections": 50, "mode": "closed"},
          "requests": [{"method": "GET", "path": "/", "headers": {}, "weight": 1}]}
    script = os.path.join(workdir, "wrk-upstream.lua")
    wrk_script(sc, script)
    ups = {k: Upstream(k, 19, workdir, pin) for k in kinds}
    rounds = {k: [] for k in kinds}
    try:
        for i in range(args.calib_rounds):
            for k in kinds:
                u = ups[k]
                if args.quiet_wait > 0:
                    wait_quiet(args.quiet_wait)
                PROCS.run(wrk_cmd(sc, u.port, 1, script, pin), timeout=60)
                c0 = cpu_seconds(u.proc.pid)
                cmd = wrk_cmd(sc, u.port, 5, script, pin)
                rc, out, err = PROCS.run(cmd, timeout=60)
                r = parse_wrk(out)
                r["cpu_s"] = cpu_seconds(u.proc.pid) - c0
                r["cpu_us_per_req"] = r["cpu_s"] / r["requests"] * 1e6 if r["requests"] else None
                r["loadgen_cmd"] = cmd
                rounds[k].append(r)
                log(f"  upstream {k} round {i + 1}: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.2f} ms")
    finally:
        for u in ups.values():
            u.stop()
    summ = {k: summarize([dict(r, target=k) for r in rounds[k]]) for k in kinds}
    a, b = summ["echo"], summ["nginx"]
    if abs(a["rps"] - b["rps"]) / max(a["rps"], b["rps"]) < 0.03:
        chosen = "echo" if a["rps_cv"] <= b["rps_cv"] else "nginx"
        reason = "throughput within 3%; lower round-to-round variation"
    else:
        chosen = "echo" if a["rps"] > b["rps"] else "nginx"
        reason = "higher median req/s"
    doc = {"chosen": chosen, "reason": reason, "summary": summ, "rounds": rounds,
           "commands": {k: ups[k].cmd for k in kinds},
           "measured": datetime.datetime.now().isoformat(timespec="seconds")}
    with open(os.path.join(results_dir, "upstream-choice.json"), "w") as f:
        json.dump(doc, f, indent=1)
    log(f"upstream: {chosen} ({reason})")
    return chosen, doc


def run_scenario(sc, args, workdir, pin, upstream_kind, run_meta):
    name = sc["name"]
    load = sc["load"]
    duration = parse_duration(args.duration or load["duration"])
    warmup = parse_duration(args.warmup if args.warmup is not None else load["warmup"])
    rounds = args.rounds or int(load["rounds"])
    targets = [t for t in sc["targets"] if (t == "direct" and not args.no_direct) or
               (t != "direct" and t in args.proxies)]
    if "gatehouse-base" in args.proxies and "gatehouse" in sc["targets"] and "gatehouse-base" not in targets:
        targets.append("gatehouse-base")
    if args.quick:
        duration, warmup, rounds = 3.0, 1.0, 1
    action = sc.get("action")
    # Variants: with an action, each proxy runs as `<proxy>` (the control, no action) and as
    # `<proxy>+<action>` (the action in every round), each its own process, interleaved.
    variants = {}
    for tn in targets:
        if action and tn != "direct":
            if action["control"]:
                variants[tn] = (tn, None)
            variants[f"{tn}+{action['run']}"] = (tn, action)
        else:
            variants[tn] = (tn, None)
    if action and action["at"] + 2 * action["window"] > duration:
        raise HarnessError(f"{name}: action at {action['at']:g}s + 2 windows of {action['window']:g}s "
                           f"do not fit in {duration:g}s of load")
    wd = os.path.join(workdir, name)
    os.makedirs(wd, exist_ok=True)
    sc["_keep_workdir"] = args.keep_workdir
    script = os.path.join(wd, "wrk.lua")
    wrk_script(sc, script)
    bodyfile = None
    b = request_body(sc["requests"][0])
    if b:
        bodyfile = os.path.join(wd, "body.bin")
        with open(bodyfile, "wb") as f:
            f.write(b)
    kind = sc["upstream"]["kind"]
    if kind == "auto":
        kind = upstream_kind
    log(f"== {name}: {load['mode']} loop, {rounds} round(s) x {duration:g}s (+{warmup:g}s warm-up), "
        f"targets {', '.join(variants)}, upstream {kind}"
        + (f", {action['run']} at {action['at']:g}s" if action else ""))
    doc = {"scenario": name, "file": sc["_file"], "description": sc.get("description", ""),
           "run_id": run_meta["run_id"], "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "quick": args.quick, "pinned": args.pin, "load": dict(load, duration=duration, warmup=warmup, rounds=rounds),
           "requests": sc["requests"], "access_log": sc["access_log"],
           "load_generator": "oha" if load["mode"] == "open" else "wrk",
           "order": list(variants), "targets": {}}
    if action:
        doc["action"] = action
    upstream = Upstream(kind, sc["upstream"]["body_size"], wd, pin)
    doc["upstream"] = {"kind": kind, "body_size": upstream.body_size, "cmd": upstream.cmd}
    tobjs = {}
    services = []
    try:
        if "redis" in sc["services"]:
            services.append(RedisService(wd, pin))
            sc["_service_values"] = {"redis_port": services[-1].port}
            doc["services"] = {"redis": {"cmd": services[-1].cmd}}
        for tn, (proxy, act) in variants.items():
            twd = wd
            if action and tn != "direct":
                # own pid file, upgrade socket, data dir and logs per variant
                twd = os.path.join(wd, tn.replace("+", "-"))
                os.makedirs(twd, exist_ok=True)
            t = Target(proxy, sc, upstream, twd, pin, label=tn, action=act)
            tobjs[tn] = t
            doc["targets"][tn] = {"cmd": t.cmd, "config": t.config_text, "status": "ok" if not t.error else "failed",
                                  "error": t.error, "rounds": []}
            if t.error:
                log(f"  {tn}: FAILED: {t.error.splitlines()[0]}")
            else:
                st = read_status(t.pid)
                doc["targets"][tn]["rss_start_kib"] = st.get("VmRSS")
                log(f"  {tn}: up on :{t.port} (pid {t.pid}, RSS {st.get('VmRSS', 0) / 1024:.1f} MiB)")
        for i in range(rounds):
            for tn in variants:
                t = tobjs[tn]
                if t.error:
                    continue
                if not t.alive():
                    t.error = f"{t.exit_desc()} before round {i + 1}\n{tail(t.log)}"
                    doc["targets"][tn]["status"] = "failed"
                    doc["targets"][tn]["error"] = t.error
                    log(f"  {tn}: DIED before round {i + 1}")
                    continue
                attempts = []
                max_attempts = 1 + (0 if args.quick else args.noisy_retries)
                for attempt in range(max_attempts):
                    try:
                        r = run_round(sc, t, upstream, wd, pin, duration, warmup, bodyfile, script,
                                      quiet_wait=0 if args.quick else args.quiet_wait)
                    except HarnessError as e:
                        r = {"target": tn, "error": str(e)}
                        log(f"  {tn} round {i + 1}: ERROR {e}")
                        break
                    attempts.append(r)
                    if r.get("noise", 0) <= args.noise_limit or not t.alive() or attempt + 1 == max_attempts:
                        break
                    log(f"  {tn} round {i + 1}: noisy ({r['noise'] * 100:.0f}% of a CPU went to other "
                        f"processes; {r['rps']:.0f} req/s) - discarded, retrying")
                if attempts:
                    r = min(attempts, key=lambda a: a.get("noise", 0))
                    r["attempts"] = len(attempts)
                    # (failures and the action's outcome too: a discarded upgrade still happened)
                    r["discarded"] = [dict({k: a.get(k) for k in ("rps", "p99_ms", "noise", "started",
                                                                   "errors_socket", "errors_status")},
                                           action_error=(a.get("action") or {}).get("error"))
                                      for a in attempts if a is not r]
                r["round"] = i + 1
                doc["targets"][tn]["rounds"].append(r)
                if "rps" in r:
                    extra = ""
                    if r.get("reuse_ratio") is not None:
                        extra += f", reuse {r['reuse_ratio'] * 100:.3f}%"
                    if "rss_idle_kib" in r:
                        extra += (f", idle {r['idle_opened']} conns RSS {r['rss_idle_kib'] / 1024:.1f} MiB"
                                  f" (alive after load {r['idle_alive_after_load']})")
                    extra += f", noise {r.get('noise', 0) * 100:.0f}%"
                    log(f"  {tn} round {i + 1}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f}"
                        f" p99.9 {r['p999_ms']:.2f} ms, err {r['errors_status']}+{r['errors_socket']},"
                        f" peak RSS {(r['rss_peak_kib'] or 0) / 1024:.1f} MiB, CPU {r['cpu_s'] or 0:.2f}s{extra}")
                    if r.get("windows"):
                        log_windows(tn, i + 1, r)
        for tn in variants:
            t = tobjs[tn]
            if t.alive() and tn != "direct" and t.name in GATEHOUSE_KINDS:
                p = t.access_log_path
                doc["targets"][tn]["access_log_bytes"] = os.path.getsize(p) if p and os.path.exists(p) else None
            doc["targets"][tn]["summary"] = summarize(doc["targets"][tn]["rounds"])
            if t.error and doc["targets"][tn]["status"] == "ok":
                doc["targets"][tn]["status"] = "failed"
    finally:
        for t in tobjs.values():
            t.stop()
        for svc in services:
            svc.stop()
        upstream.stop()
    doc["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    return doc


def log_windows(tn, i, r):
    w = r["windows"]
    a = r.get("action")
    msg = " | ".join(f"{k} [{v['start_s']:g},{v['end_s']:g})s: {v['answered']} answered, p99 {report.f_ms(v['p99_ms'])}"
                     f" p99.9 {report.f_ms(v['p999_ms'])} ms" for k, v in w.items())
    log(f"  {tn} round {i} windows: {msg}")
    if a:
        log(f"  {tn} round {i} {a['run']}: started {a.get('started_s', 0):.3f}s, took "
            f"{(a.get('ended_s') or 0) - (a.get('started_s') or 0):.2f}s, pid {a.get('old_pid')} -> {a.get('new_pid')}, "
            f"ready after {a.get('ready_after_s') if a.get('ready_after_s') is not None else '–'} s, "
        f"old exited after {a.get('old_exited_after_s')} s"
            + (f"; ERROR {a['error']}" if a.get("error") else ""))


def machine_info(args):
    git = lambda c: sh(f"git -C {REPO} {c}")  # noqa: E731
    rev = git("rev-parse --short HEAD")
    if "fatal" in rev or "unknown" in rev:
        rev = "(no commit yet)"
    dirty = sh(f"git -C {REPO} status --porcelain -- src Cargo.toml Cargo.lock | head -1")
    gh = gatehouse_bin()
    return {
        "cpu_model": sh("lscpu | sed -n 's/^Model name:[ \\t]*//p' | head -1"),
        "lscpu": sh("lscpu | grep -E '^(Architecture|CPU\\(s\\)|Model name|Thread|Core|Socket|Hypervisor|L2|L3)'"),
        "nproc": sh("nproc --all"), "kernel": sh("uname -r"),
        "os": sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "memory": sh("awk '/MemTotal/ {printf \"%.1f GiB RAM\", $2/1048576}' /proc/meminfo"),
        "versions": {
            "nginx": sh(f"{nginx_bin()} -v"),
            "haproxy": sh(f"{haproxy_bin()} -v | head -1"),
            "wrk": sh("wrk -v 2>&1 | head -1"),
            "oha": sh(f"{os.environ.get('OHA') or shutil.which('oha') or 'oha'} --version"),
            "gatehouse": f"git {rev}{' + uncommitted changes in src/' if dirty else ''}"
                         + (f" ({sh(gh + ' --version')})" if os.access(gh, os.X_OK) else " (not built)"),
            "rustc": sh("rustc --version"),
            "python": sys.version.split()[0],
        },
    }


def main():
    ap = argparse.ArgumentParser(prog="loadtest/run.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="scenario names (loadtest/scenarios/NAME.yaml), "
                    "paths to scenario files, or `all` (default)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: proxy-small, 1 round of 3 s, wrk only; "
                    "writes results/smoke.{json,md}; exits non-zero if a proxy failed")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="comma list (default: %(default)s)")
    ap.add_argument("--no-direct", action="store_true", help="skip the direct-to-upstream reference")
    ap.add_argument("--upstream", choices=["auto", "echo", "nginx"], default=None,
                    help="override the scenarios' upstream kind (auto = measure echo vs static nginx)")
    ap.add_argument("--rounds", type=int, help="override rounds per target")
    ap.add_argument("--duration", help="override measured duration per round, e.g. 5s")
    ap.add_argument("--warmup", help="override warm-up per round, e.g. 1s")
    ap.add_argument("--calib-rounds", type=int, default=3, help="rounds of the echo-vs-nginx upstream choice")
    ap.add_argument("--quiet-wait", type=float, default=60, help="before each round, wait up to this many "
                    "seconds for the machine to be quiet (no CPU > 15%% busy); 0 = don't (default %(default)s)")
    ap.add_argument("--noise-limit", type=float, default=0.08, help="a round in which other processes used more "
                    "than this share of a CPU is noisy (default %(default)s)")
    ap.add_argument("--noisy-retries", type=int, default=2, help="repeat a noisy round up to N times, keeping "
                    "the least noisy attempt (default %(default)s)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin with taskset")
    ap.add_argument("--results-dir", default=DEFAULT_RESULTS)
    ap.add_argument("--report", help="report path (default loadtest/RESULTS.md; --quick: results/smoke.md)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from results/*.json")
    ap.add_argument("--no-build", action="store_true", help="(run.sh) skip cargo build")
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs and logs in /tmp for debugging")
    ap.add_argument("--max-minutes", type=float, default=None, help="hard time limit (default 120, quick 10)")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--print-needs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for p in args.proxies:
        if p not in PROXIES + EXTRA_PROXIES:
            ap.error(f"unknown proxy {p!r}")
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)

    if args.list:
        for f in sorted(os.listdir(SCENARIO_DIR)):
            if f.endswith(".yaml"):
                sc = load_scenario(f[:-5])
                print(f"{sc['name']:<20} {sc.get('description', '').strip().splitlines()[0] if sc.get('description') else ''}")
        return 0
    if args.report_only:
        path = args.report or os.path.join(LOADTEST, "RESULTS.md")
        report.write_full_report(results_dir, path)
        log(f"report: {path}")
        return 0

    if args.quick:
        names = args.scenarios or ["proxy-small"]
        if len(names) != 1:
            ap.error("--quick runs one scenario")
    else:
        names = args.scenarios or ["all"]
    if names == ["all"]:
        first = ["proxy-small", "proxy-1k-post", "proxy-fixed-rate", "proxy-idle-conns"]
        names = sorted((f[:-5] for f in os.listdir(SCENARIO_DIR) if f.endswith(".yaml")),
                       key=lambda n: (first.index(n) if n in first else len(first), n))
    scenarios = [load_scenario(n) for n in names]
    if args.quick:
        for sc in scenarios:
            if sc["load"]["mode"] != "closed":
                ap.error("--quick uses wrk only: pick a closed-loop scenario")
            sc["load"]["idle_connections"] = 0
    if args.print_needs:
        # run.sh asks what to install/build for exactly this command line.
        needs = []
        if any(sc["load"]["mode"] == "open" for sc in scenarios):
            needs.append("oha")
        if "gatehouse" in args.proxies and any("gatehouse" in sc["targets"] for sc in scenarios):
            needs.append("gatehouse")
        if "pingora" in args.proxies and any("pingora" in sc["targets"] for sc in scenarios):
            needs.append("pingora")
        print(" ".join(needs))
        return 0
    args.pin = args.pin and os.cpu_count() >= 2 and shutil.which("taskset") is not None
    pin = make_pin(args.pin)

    max_minutes = args.max_minutes or (10 if args.quick else 120)

    def on_alarm(*_):
        raise HarnessError(f"hard time limit of {max_minutes:g} minutes reached")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(max_minutes * 60))

    def on_term(signum, _):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    # A process that an upgrade starts outlives its starter: as a child subreaper the harness
    # adopts it (and can reap it) instead of init.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    workdir = tempfile.mkdtemp(prefix="gh-loadtest-")
    run_meta = {"run_id": datetime.datetime.now().strftime("%Y%m%dT%H%M%S"),
                "argv": ["loadtest/run.sh"] + sys.argv[1:], "pinned": args.pin,
                "machine": machine_info(args)}
    docs, rc = [], 0
    try:
        need_auto = any((args.upstream or sc["upstream"]["kind"]) == "auto" for sc in scenarios)
        upstream_kind, choice = args.upstream or "auto", None
        if need_auto:
            if args.quick:
                upstream_kind = "echo" if os.access(echo_bin(), os.X_OK) else "nginx"
            else:
                log("== upstream choice: echo backend vs static nginx (direct load, interleaved)")
                upstream_kind, choice = choose_upstream(args, workdir, pin, results_dir)
        if args.upstream:
            for sc in scenarios:
                sc["upstream"]["kind"] = args.upstream
        run_meta["upstream_choice"] = choice
        for sc in scenarios:
            doc = run_scenario(sc, args, workdir, pin, upstream_kind, run_meta)
            doc["meta"] = run_meta
            docs.append(doc)
            out = os.path.join(results_dir, "smoke.json" if args.quick else f"{sc['name']}.json")
            with open(out, "w") as f:
                json.dump(doc, f, indent=1)
            log(f"raw results: {os.path.relpath(out, REPO)}")
        if args.quick:
            path = args.report or os.path.join(results_dir, "smoke.md")
            report.write_smoke_report(docs[0], path)
        else:
            path = args.report or os.path.join(LOADTEST, "RESULTS.md")
            with open(os.path.join(results_dir, "run-meta.json"), "w") as f:
                json.dump(run_meta, f, indent=1)
            report.write_full_report(results_dir, path)
        log(f"report: {os.path.relpath(path, REPO) if path.startswith(REPO) else path}")
        # Completion checks (not speed): every target started and answered, report written.
        problems = []
        for d in docs:
            for tn, t in d["targets"].items():
                s = t.get("summary")
                if t["status"] != "ok":
                    problems.append(f"{d['scenario']}/{tn}: {t['status']}: {(t.get('error') or '').splitlines()[0] if t.get('error') else ''}")
                elif not s or not s["requests"]:
                    problems.append(f"{d['scenario']}/{tn}: no completed round")
                elif args.quick and (s["errors_status"] + s["errors_socket"]) > 0.01 * s["requests"]:
                    problems.append(f"{d['scenario']}/{tn}: {s['errors_status'] + s['errors_socket']} errors "
                                    f"in {s['requests']} requests")
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            problems.append(f"report {path} missing")
        for p in problems:
            log("PROBLEM: " + p)
        rc = 1 if problems else 0
        if args.quick:
            log("smoke: " + ("FAILED" if rc else "OK"))
    except HarnessError as e:
        log(f"ERROR: {e}")
        rc = 1
    except SystemExit as e:
        log(f"interrupted (signal {int(e.code) - 128 if isinstance(e.code, int) else e.code}); cleaning up")
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)   # finish the cleanup even if signalled again
        PROCS.stop_all()
        reap_orphans()
        if args.keep_workdir:
            log(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
