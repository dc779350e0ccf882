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
import ssl
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


def wait_http(port, req, proc, timeout=30.0, host="127.0.0.1", tls=False):
    """Wait until `req` through 127.0.0.1:port answers < 400 (over TLS, with the harness's
    self-signed certificate unchecked, if `tls`). Returns None or an error."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        try:
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                c = http.client.HTTPSConnection(host, port, timeout=2, context=ctx)
            else:
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
             "gatehouse", "gatehouse-base", "nginx", "haproxy", "services", "action", "attack",
             "tls", "_file"}
    unknown = set(sc) - known
    if unknown:
        raise HarnessError(f"{path}: unknown keys {sorted(unknown)}")
    load = sc.setdefault("load", {})
    load.setdefault("mode", "closed")
    if load["mode"] not in LOAD_MODES:
        raise HarnessError(f"{path}: load.mode must be one of {', '.join(LOAD_MODES)}")
    if load["mode"] in ("h2", "handshakes") and not sc.get("tls"):
        raise HarnessError(f"{path}: load.mode {load['mode']} needs `tls: true` (TLS listeners on every target)")
    load.setdefault("connections", 50)
    load.setdefault("duration", "10s")
    load.setdefault("warmup", "2s")
    load.setdefault("rounds", 3)
    load.setdefault("idle_connections", 0)
    load.setdefault("streams", 10)          # h2: concurrent streams per connection (h2load -m)
    load.setdefault("clients", 2)           # handshakes: parallel `openssl s_time` clients
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
    if sc.get("attack") is not None:
        sc["attack"] = parse_attack(sc["attack"], load, path)
        if sc.get("action"):
            raise HarnessError(f"{path}: a scenario has an action or an attack, not both")
    sc["tls"] = bool(sc.get("tls"))
    if sc["tls"] and "direct" in sc["targets"]:
        raise HarnessError(f"{path}: a TLS scenario cannot have the `direct` target (the upstream is plaintext)")
    return sc


# closed: wrk keeps N connections busy | open: oha offers a rate | h2: h2load, HTTP/2 over TLS,
# many streams per connection | handshakes: `openssl s_time`, new TLS connections (full, resumed)
LOAD_MODES = ("closed", "open", "h2", "handshakes")
ATTACKS = ("slowloris",)


def parse_attack(a, load, path):
    """`attack: { run: slowloris, connections: 1000, ... }`: slow clients held open against each
    proxy while the normal closed-loop load runs; every proxy also runs the same rounds without
    it (the control, same process, interleaved)."""
    if not isinstance(a, dict):
        raise HarnessError(f"{path}: attack must be a mapping like {{ run: slowloris, connections: 1000 }}")
    unknown = set(a) - {"run", "connections", "sources", "interval", "body_share", "header_timeout",
                        "quick_connections", "quick_header_timeout"}
    if unknown:
        raise HarnessError(f"{path}: attack: unknown keys {sorted(unknown)}")
    if a.get("run") not in ATTACKS:
        raise HarnessError(f"{path}: attack.run must be one of {', '.join(ATTACKS)}")
    if load["mode"] != "closed":
        raise HarnessError(f"{path}: an attack runs beside a closed-loop (wrk) load")
    out = {"run": a["run"], "connections": int(a.get("connections", 1000)), "sources": int(a.get("sources", 8)),
           "interval": parse_duration(a.get("interval", "1s")), "body_share": float(a.get("body_share", 0.1)),
           "header_timeout": parse_duration(a.get("header_timeout", "5s")),
           "quick_connections": int(a.get("quick_connections", 200)),
           "quick_header_timeout": parse_duration(a.get("quick_header_timeout", "1s"))}
    if not 1 <= out["sources"] <= 250 or not 0 <= out["body_share"] <= 1 or out["connections"] < 1:
        raise HarnessError(f"{path}: attack needs connections >= 1, 1 <= sources <= 250, 0 <= body_share <= 1")
    return out


def make_tls(workdir):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost (TLS scenarios): the
    same certificate and key for every proxy; HAProxy takes both in one PEM file."""
    d = os.path.join(workdir, "tls")
    os.makedirs(d, exist_ok=True)
    cert, key, pem = (os.path.join(d, f) for f in ("cert.pem", "key.pem", "cert-and-key.pem"))
    if not os.path.exists(pem):
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise HarnessError(f"openssl could not make the test certificate: {r.stderr[-500:]}")
        with open(pem, "w") as f:
            f.write(open(cert).read() + open(key).read())
    return {"tls_cert": cert, "tls_key": key, "tls_pem": pem}


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


def h2load_cmd(sc, port, duration, pin, logfile=None):
    """h2load: HTTP/2 over TLS (ALPN h2), `connections` clients with `streams` concurrent
    streams each, one thread; --log-file keeps every request's latency for the percentiles."""
    load, r = sc["load"], sc["requests"][0]
    cmd = pin(0) + ["h2load", "-t1", "-c", str(load["connections"]), "-m", str(load["streams"]),
                    "-D", fmt_secs(duration)]
    for k, v in r["headers"].items():
        cmd += ["-H", f"{k}: {v}"]
    if logfile:
        cmd += ["--log-file", logfile]
    return cmd + [f"https://127.0.0.1:{port}{r['path']}"]


def parse_h2load(out, logfile):
    m = re.search(r"finished in ([0-9.]+)(m?s), ([0-9.]+) req/s", out)
    q = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    c = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not q:
        raise HarnessError("h2load printed no summary:\n" + out[-2000:])
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    lat = []
    if logfile and os.path.exists(logfile):
        with open(logfile) as f:
            for line in f:
                p = line.split("\t")
                if len(p) >= 3 and p[1].strip() != "-1":
                    lat.append(int(p[2]) / 1000)
    lat.sort()
    proto = re.search(r"Application protocol: (\S+)", out)
    if not proto or proto.group(1) != "h2":
        raise HarnessError(f"h2load did not negotiate h2 (ALPN): {proto.group(1) if proto else 'no TLS session'}\n"
                           + out[-1000:])
    done, ok = int(q.group(3)), int(q.group(4))
    non2xx = (int(c.group(2)) + int(c.group(3)) + int(c.group(4))) if c else 0
    return {
        "requests": done, "seconds": secs, "rps": ok / secs if secs else 0.0,
        "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "p999_ms": pct(lat, 99.9),
        "mean_ms": statistics.mean(lat) if lat else None, "max_ms": lat[-1] if lat else None,
        "errors_status": non2xx, "errors_socket": int(q.group(6)) + int(q.group(7)),
        "errors_detail": {"failed": int(q.group(5)), "errored": int(q.group(6)), "timeout": int(q.group(7)),
                          "non_2xx": non2xx},
    }


def s_time_cmd(port, secs, reuse, pin, request=True):
    """`openssl s_time`: one new TLS connection after another, each with a GET / over it (or,
    with request=False, nothing: handshake and close) and a close; `-new` makes every handshake
    a full one, `-reuse` resumes the first session."""
    return pin(0) + ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-reuse" if reuse else "-new",
                     "-time", str(max(1, int(round(secs))))] + (["-www", "/"] if request else [])


def parse_s_time(out, reuse):
    """Connections made, and (with -reuse) how many were resumed: s_time prints one character
    per connection, `r` for a resumed session and `*` for a full handshake."""
    m = re.findall(r"(\d+) connections in [0-9.]+s;", out)
    if not m:
        raise HarnessError("openssl s_time printed no result:\n" + out[-1500:])
    n = int(m[-1])
    if not reuse:
        return n, 0
    tail_part = out.split("Now timing with session id reuse.", 1)[-1]
    marks = "".join(re.findall(r"^[r*]+$", tail_part, re.M))
    return n, marks.count("r")


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
    # The body is a file: `return 200 "..."` takes at most 4 KiB of text.
    root {www};
    location / {{
      default_type text/plain;
      try_files /body.txt =404;
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
                www = os.path.join(workdir, f"up-www-{self.port}")
                os.makedirs(www, exist_ok=True)
                with open(os.path.join(www, "body.txt"), "w") as body:
                    body.write("x" * self.body_size)
                f.write(NGINX_UPSTREAM.format(workdir=workdir, port=self.port, www=www))
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
        # TLS scenarios: the harness's self-signed certificate; attacks: the head deadline
        # every proxy gets (server.header_timeout, client_header_timeout, timeout http-request).
        values.update(sc.get("_tls_values", {}))
        values["header_timeout"] = fmt_secs(sc["_header_timeout"]) if sc.get("_header_timeout") else "10s"
        # Connection-table sizes (nginx worker_connections, HAProxy maxconn) that fit the idle
        # clients actually opened (after any fd-limit cap): both preallocate per slot.
        values["max_connections"] = int(sc["load"].get("idle_connections") or 0) + 2000
        kind = "gatehouse" if name == "gatehouse-base" else name
        # A scenario may give gatehouse-base a template of its own: with GATEHOUSE_BASE_BIN
        # the same binary, one interleaved run then compares two configs (proxy-breaker).
        tmpl = name if name == "gatehouse-base" and name in sc else kind
        self.config_text = render(sc[tmpl], values, f"{sc['name']}: {name} template")
        ext = {"gatehouse": "yaml", "nginx": "conf", "haproxy": "cfg"}[kind]
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
        e = wait_http(self.port, sc["requests"][0], None if self.daemon else self.proc, timeout=30, tls=sc["tls"])
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
        if self.name == "pingora" and self.proc and self.proc.poll() is None:
            # SIGINT is Pingora's fast shutdown; SIGTERM would wait out its 5 s grace period.
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc:
            PROCS.stop(self.proc)
        if self.cur_pid:
            stop_pid(self.cur_pid)

    def metric_sum(self, name, match=""):
        """Sum of a Gatehouse metric's series whose labels contain `match` (None if unavailable)."""
        if self.name not in GATEHOUSE_KINDS or not self.admin_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return None
        vals = [float(m.group(2)) for m in re.finditer(rf'^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)', text, re.M)
                if match in (m.group(1) or "")]
        return sum(vals) if vals else 0.0

    def fds(self):
        """Open file descriptors of the serving process(es): sockets to clients and upstreams."""
        n = 0
        for p in self.pids():
            try:
                n += len(os.listdir(f"/proc/{p}/fd"))
            except OSError:
                pass
        return n

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

def tagged_line(p, name, prefix, timeout):
    """The next line starting with `prefix` on the stdout of helper process `p` (the
    idle-connection and slowloris clients report READY/ALIVE/RESULT lines); an error
    naming `name` if it exits first (after what it wrote is read) or says nothing in time."""
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None and not select.select([p.stdout], [], [], 0)[0]:
            raise HarnessError(f"{name} exited: {p.stderr.read()[-1500:]}")
        r, _, _ = select.select([p.stdout], [], [], 1.0)
        if r:
            line = p.stdout.readline()
            if not line:  # end of its output: it exited
                raise HarnessError(f"{name} exited: {p.stderr.read()[-1500:]}")
            if line.startswith(prefix):
                return line.strip()
    raise HarnessError(f"{name}: no {prefix} within {timeout}s")


class IdleConns:
    """N idle keep-alive client connections, opened by idle_conns.py processes on CPU 0. A
    process can hold only as many sockets as its fd limit allows, so large counts are split
    over several processes, each spreading its connections over its own 127.0.0.x source
    addresses (4,000 per address: connect() finds a free ephemeral port slowly once a range fills up)."""

    def __init__(self, port, n, path, pin, timeout=300):
        per_proc = max(1000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 256)
        self.procs = []
        self.opened = self.failed = 0
        self.open_seconds = 0.0
        first_src = 10
        left = n
        while left > 0:
            k = min(left, per_proc)
            nsrc = max(1, math.ceil(k / 4000))   # a source address fills its port range slowly past a few thousand
            self.p = PROCS.start(pin(0) + [sys.executable, os.path.join(HERE, "idle_conns.py"),
                                            "127.0.0.1", str(port), str(k), path, str(nsrc), str(first_src)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.procs.append(self.p)
            first_src += nsrc
            left -= k
        for self.p in self.procs:   # opened one after another (each READY waits for the previous)
            ready = self._line("READY", timeout)
            m = dict(re.findall(r"(\w+)=(\S+)", ready))
            self.opened += int(m.get("opened", 0))
            self.failed += int(m.get("failed", 0))
            self.open_seconds = max(self.open_seconds, float(m.get("seconds", 0)))
            if m.get("last_error"):
                self.last_error = m["last_error"]

    def _line(self, prefix, timeout):
        return tagged_line(self.p, "idle_conns", prefix, timeout)

    def alive(self):
        n = 0
        for self.p in self.procs:
            self.p.stdin.write("count\n")
            self.p.stdin.flush()
            n += int(self._line("ALIVE", 10).split()[1])
        return n

    def close(self):
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass
            PROCS.stop(p)


class Slowloris:
    """The `slowloris` attack (lib/slowloris.py) against one proxy, on CPU 0, for one round."""

    def __init__(self, port, attack, pin, quick, timeout=120):
        n = attack["quick_connections"] if quick else attack["connections"]
        self.cmd = pin(0) + [sys.executable, os.path.join(HERE, "slowloris.py"), "127.0.0.1", str(port), str(n),
                             "--sources", str(attack["sources"]), "--interval", f"{attack['interval']:g}",
                             "--body-share", f"{attack['body_share']:g}"]
        self.p = PROCS.start(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self._line("READY", timeout)
        m = dict(re.findall(r"(\w+)=(\S+)", line))
        self.opened, self.failed = int(m.get("opened", 0)), int(m.get("failed", 0))
        self.open_seconds = float(m.get("seconds", 0))

    def _line(self, prefix, timeout):
        return tagged_line(self.p, "slowloris", prefix, timeout)

    def finish(self):
        """Stop the attack; returns its RESULT (what the server cut, and how)."""
        try:
            self.p.stdin.close()
            res = json.loads(self._line("RESULT", 30)[7:])
        finally:
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            PROCS.stop(self.p)
        return res


class Sampler(threading.Thread):
    """Every 0.5 s during the measured load: the proxy's open fds and RSS (what slow clients
    hold), for the attack scenario's control and attack rounds alike."""

    def __init__(self, t, interval=0.5):
        super().__init__(name="fd-sampler", daemon=True)
        self.t, self.interval, self.fds, self.rss = t, interval, [], []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(self.interval):
            self.fds.append(self.t.fds())
            self.rss.append(read_status(self.t.pid).get("VmRSS") or 0)

    def finish(self):
        self.halt.set()
        self.join(5)
        return {"fds_max": max(self.fds) if self.fds else None,
                "fds_median": statistics.median(self.fds) if self.fds else None,
                "rss_median_kib": statistics.median(self.rss) if self.rss else None}


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


def run_handshakes(t, pin, duration, warmup, clients, handshake_only=True):
    """`handshakes` mode: for full handshakes (`s_time -new`), then resumptions (`-reuse`),
    `clients` parallel s_time processes on CPU 0 for `duration`; the proxy's CPU seconds over
    each part (from /proc/PID/stat) divided by the connections made = CPU per connection.
    Each connection carries one GET / (proxied), and with `handshake_only` the same two parts
    run again without it (handshake and close: the TLS cost alone)."""
    out = {}
    if warmup > 0:
        PROCS.run(s_time_cmd(t.port, warmup, False, pin), timeout=warmup + 60)
    parts = [("full", False, True), ("resumed", True, True)]
    if handshake_only:
        parts += [("full_only", False, False), ("resumed_only", True, False)]
    for kind, reuse, request in parts:
        cmds = [s_time_cmd(t.port, duration, reuse, pin, request) for _ in range(clients)]
        c0, t0 = t.cpu(), time.monotonic()
        ps = [PROCS.start(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
        total = resumed = 0
        for p in ps:
            try:
                so, se = p.communicate(timeout=duration + 60)
            except subprocess.TimeoutExpired:
                PROCS.stop(p)
                raise HarnessError(f"openssl s_time timed out after {duration + 60:g}s")
            PROCS.live.remove(p)
            n, r = parse_s_time(so + se, reuse)
            total += n
            resumed += r
        secs, c1 = time.monotonic() - t0, t.cpu()
        cpu = (c1 - c0) if c0 is not None and c1 is not None else None
        out[kind] = {"connections": total, "seconds": round(secs, 3), "per_s": total / secs if secs else 0.0,
                     "cpu_s": cpu, "cpu_us_per_conn": cpu / total * 1e6 if cpu is not None and total else None,
                     "resumed": resumed, "cmd": cmds[0]}
    f, r = out["full"], out["resumed"]
    extra = {}
    for k in ("full_only", "resumed_only"):
        if k in out:
            extra[f"{k}_per_s"], extra[f"{k}_cpu_us"] = out[k]["per_s"], out[k]["cpu_us_per_conn"]
    # The generic fields (summary, tables): "requests" are full handshakes, rps their rate.
    return {**extra, "requests": f["connections"], "seconds": f["seconds"], "rps": f["per_s"],
            "p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None, "mean_ms": None, "max_ms": None,
            "errors_status": 0, "errors_socket": 0, "handshakes": out,
            "full_per_s": f["per_s"], "full_cpu_us": f["cpu_us_per_conn"],
            "resumed_per_s": r["per_s"], "resumed_cpu_us": r["cpu_us_per_conn"],
            "resumed_share": r["resumed"] / r["connections"] if r["connections"] else None,
            "loadgen_cmd": f["cmd"]}


def run_round(sc, t, upstream, workdir, pin, duration, warmup, bodyfile, script, quiet_wait=0,
              label=None, attack=None, quick=False):
    load = sc["load"]
    open_loop = load["mode"] == "open"
    mode = load["mode"]
    # With an action in the scenario every variant (the control too) keeps oha's per-request
    # data, so that the same windows are cut from both.
    sc_action = sc.get("action")

    def gen(secs, measured=False):
        db, box = None, None
        if mode == "handshakes":
            if not measured:   # warm-up: full handshakes, not measured
                PROCS.run(s_time_cmd(t.port, secs, False, pin), timeout=secs + 60)
                return None, {}
            r = run_handshakes(t, pin, secs, 0, int(load["clients"]), bool(load.get("handshake_only", True)))
            r["seconds"] = sum(h["seconds"] for h in r["handshakes"].values())
            return r.pop("loadgen_cmd"), r
        if open_loop:
            if measured and sc_action:
                db = os.path.join(t.workdir, "oha-requests.db")
                if os.path.exists(db):
                    os.remove(db)
            cmd = oha_cmd(sc, t.port, secs, bodyfile, pin, db=db)
        elif mode == "h2":
            h2log = os.path.join(t.workdir, f"h2load-{t.label}.log") if measured else None
            if h2log and os.path.exists(h2log):
                os.remove(h2log)
            cmd = h2load_cmd(sc, t.port, secs, pin, logfile=h2log)
        else:
            cmd = wrk_cmd(sc, t.port, secs, script, pin)
        if measured and t.action:
            rc, out, err, box = run_with_action(cmd, secs + 120, t, pin, t.action["at"])
        else:
            rc, out, err = PROCS.run(cmd, timeout=secs + 120 if db else secs + 60)
        if rc != 0:
            raise HarnessError(f"{cmd[0] if not pin(0) else cmd[3]} exited {rc}: {err[-1500:]}")
        if mode == "h2":
            r = parse_h2load(out, h2log)
            if h2log and os.path.exists(h2log):
                os.remove(h2log)
        else:
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

    res = {"target": label or t.label}
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
        if getattr(idle, "last_error", None):
            res["idle_last_error"] = idle.last_error
        time.sleep(3)
        res["rss_idle_kib"] = read_status(t.pid).get("VmRSS")
        res["idle_alive_at_rest"] = idle.alive()
    attacker, fdsamp = None, None
    try:
        if attack:
            # The slow clients connect first and keep trickling through warm-up and load; the
            # peak RSS below (reset before the measured part) is with them all open.
            res["rss_before_attack_kib"] = read_status(t.pid).get("VmRSS")
            rej0 = t.metric_sum("gatehouse_rejected_requests_total", 'reason="request-timeout"')
            attacker = Slowloris(t.port, attack, pin, quick)
            res.update(attack_opened=attacker.opened, attack_connect_failed=attacker.failed,
                       attack_open_seconds=attacker.open_seconds)
        if warmup > 0:
            gen(warmup)
        m0, c0, up0 = t.metrics(), t.cpu(), cpu_seconds(upstream.proc.pid)
        res["hwm_reset"] = t.reset_hwm()
        sampler = PidSampler(t) if t.action else None
        if sampler:
            sampler.start()
        if sc.get("attack"):
            fdsamp = Sampler(t)
            fdsamp.start()
        (lg0, me0), st0 = children_cpu(), cpu_times()
        try:
            cmd, r = gen(duration, measured=True)
        finally:
            followed = sampler.finish() if sampler else None
            if fdsamp:
                res.update(fdsamp.finish())
        if attack:
            res["downstream_connections_gauge"] = t.metric_sum("gatehouse_downstream_connections")
            res["attack"] = attacker.finish()
            attacker = None
            rej1 = t.metric_sum("gatehouse_rejected_requests_total", 'reason="request-timeout"')
            if rej0 is not None and rej1 is not None:
                res["attack"]["rejected_request_timeout"] = rej1 - rej0
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
        if mode == "handshakes":
            res["cpu_us_per_req"] = None   # per connection, by kind: full_cpu_us / resumed_cpu_us
    finally:
        if idle:
            idle.close()
        if attacker:
            PROCS.stop(attacker.p)
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
    for k in ("full_per_s", "full_cpu_us", "resumed_per_s", "resumed_cpu_us", "resumed_share", "full_only_per_s",
              "full_only_cpu_us", "resumed_only_per_s", "resumed_only_cpu_us", "fds_max",
              "fds_median", "rss_median_kib", "rss_before_attack_kib", "downstream_connections_gauge"):
        if any(r.get(k) is not None for r in ok):
            s[k] = med(k)
    atk = [r["attack"] for r in ok if r.get("attack")]
    if atk:
        by_status = {}
        for a in atk:
            for k, v in a["cut_by_status"].items():
                by_status[k] = by_status.get(k, 0) + v
        lives = lambda kind: [a["lifetime_s"][kind]["median"] for a in atk if a["lifetime_s"][kind]["median"] is not None]  # noqa: E731
        rej = [a["rejected_request_timeout"] for a in atk if a.get("rejected_request_timeout") is not None]
        s["attack"] = {
            "rounds": len(atk), "connections": atk[0]["connections"], "body_connections": atk[0]["body_connections"],
            "sources": atk[0]["sources"], "interval_s": atk[0]["interval_s"],
            "attack_seconds": sum(a["attack_seconds"] for a in atk),
            "opened_total": sum(a["opened_total"] for a in atk), "connect_failed": sum(a["connect_failed"] for a in atk),
            "cut_head": sum(a["cut_head"] for a in atk), "cut_body": sum(a["cut_body"] for a in atk),
            "cut_by_status": by_status, "rejected_request_timeout": sum(rej) if rej else None,
            "lifetime_head_median_s": statistics.median(lives("head")) if lives("head") else None,
            "lifetime_body_median_s": statistics.median(lives("body")) if lives("body") else None,
            "open_at_end": statistics.median(a["open_at_end"] for a in atk),
        }
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


QUICK_DURATION, QUICK_WARMUP = 1.0, 1.0   # --quick: one round per target of this much load
IDLE_FD_RESERVE = 500   # fds a proxy needs beside its idle clients: listeners, logs, load, upstreams


def idle_cap(requested, run_meta):
    """Idle connections that fit under the fd limit the proxies inherit (one fd each in the proxy),
    and why the count was lowered, if it was."""
    lim = run_meta.get("fd_limit") or {}
    hard = lim.get("hard") or resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = max(0, (hard - IDLE_FD_RESERVE) // 500 * 500)
    if requested <= fit:
        return requested, None
    return fit, (f"{requested:,} requested, {fit:,} measured: the per-process open-file limit is {hard:,} "
                 f"(RLIMIT_NOFILE hard) and raising it failed ({lim.get('raise_error') or 'not permitted'}); "
                 f"each idle client costs the proxy one fd, {IDLE_FD_RESERVE} are kept for its other sockets and files")


class ScenarioRun:
    """One scenario: its upstream and proxies (setup), its rounds (round i runs every variant
    once, in order), and its results (finish). Paired scenarios (`--pair A,B`) are set up
    together and their rounds interleaved: round i of A, round i of B, round i+1 of A, ..."""

    def __init__(self, sc, args, workdir, pin, upstream_kind, run_meta):
        self.sc, self.args, self.workdir, self.pin, self.run_meta = sc, args, workdir, pin, run_meta
        self.upstream_kind = upstream_kind
        self.tobjs, self.services, self.upstream = {}, [], None

    def setup(self):
        sc, args, pin, run_meta = self.sc, self.args, self.pin, self.run_meta
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
            duration, warmup, rounds = QUICK_DURATION, QUICK_WARMUP, 1
        action, attack = sc.get("action"), sc.get("attack")
        if attack:
            # Every proxy gets the same head deadline (placeholder {{header_timeout}}); the smoke
            # run shortens it so that cuts happen within its few seconds of load.
            sc["_header_timeout"] = attack["quick_header_timeout"] if args.quick else attack["header_timeout"]
        if sc["tls"]:
            sc["_tls_values"] = make_tls(self.workdir)
        idle_note = None
        if load.get("idle_connections"):
            req = int(load["idle_connections"])
            load["idle_requested"] = req
            load["idle_connections"], idle_note = idle_cap(req, run_meta)
            if idle_note:
                log(f"  {name}: {idle_note}")
        # Variants: with an action, each proxy runs as `<proxy>` (the control, no action) and as
        # `<proxy>+<action>` (the action in every round), each its own process, interleaved.
        # With an attack, `<proxy>` (control) and `<proxy>+<attack>` are the same process.
        variants = {}
        for tn in targets:
            if action and tn != "direct":
                if action["control"]:
                    variants[tn] = (tn, None, False)
                variants[f"{tn}+{action['run']}"] = (tn, action, False)
            elif attack and tn != "direct":
                variants[tn] = (tn, None, False)
                variants[f"{tn}+{attack['run']}"] = (tn, None, True)
            else:
                variants[tn] = (tn, None, False)
        if action and action["at"] + 2 * action["window"] > duration:
            raise HarnessError(f"{name}: action at {action['at']:g}s + 2 windows of {action['window']:g}s "
                               f"do not fit in {duration:g}s of load")
        wd = os.path.join(self.workdir, name)
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
            kind = self.upstream_kind
        gen = {"open": "oha", "closed": "wrk", "h2": "h2load", "handshakes": "openssl s_time"}[load["mode"]]
        log(f"== {name}: {load['mode']} ({gen}), {rounds} round(s) x {duration:g}s (+{warmup:g}s warm-up), "
            f"targets {', '.join(variants)}, upstream {kind}"
            + (f", {action['run']} at {action['at']:g}s" if action else "")
            + (f", {attack['run']}: {attack['quick_connections'] if args.quick else attack['connections']} "
               f"connections, head deadline {fmt_secs(sc['_header_timeout'])}" if attack else ""))
        doc = {"scenario": name, "file": sc["_file"], "description": sc.get("description", ""),
               "run_id": run_meta["run_id"], "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "quick": args.quick, "pinned": args.pin,
               "load": dict(load, duration=duration, warmup=warmup, rounds=rounds),
               "requests": sc["requests"], "access_log": sc["access_log"], "tls": sc["tls"],
               "load_generator": gen, "order": list(variants), "targets": {}}
        if idle_note:
            doc["idle_cap"] = idle_note
        if action:
            doc["action"] = action
        if attack:
            doc["attack"] = dict(attack, header_timeout_used=sc["_header_timeout"],
                                 connections_used=attack["quick_connections"] if args.quick else attack["connections"])
        self.name, self.doc, self.variants = name, doc, variants
        self.duration, self.warmup, self.rounds = duration, warmup, rounds
        self.script, self.bodyfile, self.wd = script, bodyfile, wd
        self.upstream = Upstream(kind, sc["upstream"]["body_size"], wd, pin)
        doc["upstream"] = {"kind": kind, "body_size": self.upstream.body_size, "cmd": self.upstream.cmd}
        if "redis" in sc["services"]:
            self.services.append(RedisService(wd, pin))
            sc["_service_values"] = {"redis_port": self.services[-1].port}
            doc["services"] = {"redis": {"cmd": self.services[-1].cmd}}
        for tn, (proxy, act, attacked) in variants.items():
            if attacked:
                self.tobjs[tn] = t = self.tobjs[proxy]   # the control's process, under attack
            else:
                twd = wd
                if action and tn != "direct":
                    # own pid file, upgrade socket, data dir and logs per variant
                    twd = os.path.join(wd, tn.replace("+", "-"))
                    os.makedirs(twd, exist_ok=True)
                t = Target(proxy, sc, self.upstream, twd, pin, label=tn, action=act)
                self.tobjs[tn] = t
            doc["targets"][tn] = {"cmd": t.cmd, "config": t.config_text, "status": "ok" if not t.error else "failed",
                                  "error": t.error, "rounds": []}
            if proxy == "pingora":
                # examples/bare_pingora.rs has the gatehouse binary's global allocator since issue 12
                doc["targets"][tn]["allocator"] = "mimalloc"
            if attacked:
                continue
            if t.error:
                log(f"  {tn}: FAILED: {t.error.splitlines()[0]}")
            else:
                st = read_status(t.pid)
                doc["targets"][tn]["rss_start_kib"] = st.get("VmRSS")
                log(f"  {tn}: up on :{t.port} (pid {t.pid}, RSS {st.get('VmRSS', 0) / 1024:.1f} MiB)")

    def round(self, i):
        sc, args, doc = self.sc, self.args, self.doc
        if i >= self.rounds:
            return
        for tn, (_, _, attacked) in self.variants.items():
            t = self.tobjs[tn]
            if t.error:
                doc["targets"][tn]["status"] = "failed"
                doc["targets"][tn]["error"] = t.error
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
                    r = run_round(sc, t, self.upstream, self.wd, self.pin, self.duration, self.warmup,
                                  self.bodyfile, self.script, quiet_wait=0 if args.quick else args.quiet_wait,
                                  label=tn, attack=sc["attack"] if attacked else None, quick=args.quick)
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
                log_round(tn, i + 1, r)

    def finish(self):
        doc = self.doc if hasattr(self, "doc") else None
        try:
            if doc is not None:
                for tn, (_, _, attacked) in self.variants.items():
                    t = self.tobjs.get(tn)
                    if t is None:
                        continue
                    if not attacked and t.alive() and tn != "direct" and t.name in GATEHOUSE_KINDS:
                        p = t.access_log_path
                        doc["targets"][tn]["access_log_bytes"] = os.path.getsize(p) if p and os.path.exists(p) else None
                    doc["targets"][tn]["summary"] = summarize(doc["targets"][tn]["rounds"])
                    if t.error and doc["targets"][tn]["status"] == "ok":
                        doc["targets"][tn]["status"] = "failed"
        finally:
            # In parallel: each may take its graceful-shutdown time (Gatehouse drains for up to 5 s).
            stoppers = [threading.Thread(target=t.stop, name="stop", daemon=True) for t in set(self.tobjs.values())]
            for th in stoppers:
                th.start()
            for th in stoppers:
                th.join(30)
            for svc in self.services:
                svc.stop()
            if self.upstream:
                self.upstream.stop()
        if doc is not None:
            doc["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        return doc


def f2(v, d=2):
    return "–" if v is None else f"{v:.{d}f}"


def log_round(tn, i, r):
    extra = ""
    if r.get("reuse_ratio") is not None:
        extra += f", reuse {r['reuse_ratio'] * 100:.3f}%"
    if "rss_idle_kib" in r:
        extra += (f", idle {r['idle_opened']} conns RSS {r['rss_idle_kib'] / 1024:.1f} MiB"
                  f" (alive after load {r['idle_alive_after_load']})")
    if r.get("handshakes"):
        h = r["handshakes"]
        extra += (f", full {h['full']['per_s']:.0f}/s {f2(h['full']['cpu_us_per_conn'], 0)} µs CPU each, resumed "
                  f"{h['resumed']['per_s']:.0f}/s {f2(h['resumed']['cpu_us_per_conn'], 0)} µs each "
                  f"({h['resumed']['resumed']}/{h['resumed']['connections']} resumed)")
    if r.get("attack"):
        a = r["attack"]
        extra += (f", attack: {a['connections']} conns, cut {a['cut_head']} heads + {a['cut_body']} bodies "
                  f"({a['cut_by_status']}), {a['open_at_end']} open at end"
                  + (f", gatehouse request-timeout {a['rejected_request_timeout']:.0f}"
                     if a.get("rejected_request_timeout") is not None else ""))
    if r.get("fds_max") is not None:
        extra += f", fds max {r['fds_max']}"
    extra += f", noise {r.get('noise', 0) * 100:.0f}%"
    log(f"  {tn} round {i}: {r['rps']:.0f} {'handshakes' if r.get('handshakes') else 'req'}/s, p50 {f2(r['p50_ms'])} "
        f"p99 {f2(r['p99_ms'])} p99.9 {f2(r['p999_ms'])} ms, err {r['errors_status']}+{r['errors_socket']},"
        f" peak RSS {(r['rss_peak_kib'] or 0) / 1024:.1f} MiB, CPU {r['cpu_s'] or 0:.2f}s{extra}")
    if r.get("windows"):
        log_windows(tn, i, r)


def run_scenario(sc, args, workdir, pin, upstream_kind, run_meta):
    return run_paired([sc], args, workdir, pin, upstream_kind, run_meta)[0]


def run_paired(scs, args, workdir, pin, upstream_kind, run_meta):
    """Set up every scenario of the group, then interleave their rounds (round 1 of each, in
    order, then round 2 ...), so that drift over the run hits all of them alike and ratios
    across the scenarios are as fair as ratios within one."""
    runs = [ScenarioRun(sc, args, workdir, pin, upstream_kind, run_meta) for sc in scs]
    try:
        for r in runs:
            r.setup()
        if len(runs) > 1:
            log(f"== paired: {' + '.join(r.name for r in runs)}, rounds interleaved across the scenarios")
        for i in range(max(r.rounds for r in runs)):
            for r in runs:
                r.round(i)
    finally:
        docs = [r.finish() for r in runs]
    if len(runs) > 1:
        pair = pair_ratios(docs)
        for d in docs:
            d["pair"] = pair
    return docs


def pair_ratios(docs):
    """Per target and per round i: scenario k's value / the first scenario's (same round, so
    drift between rounds cancels); median and range over rounds."""
    base = docs[0]
    out = {"scenarios": [d["scenario"] for d in docs], "base": base["scenario"], "ratios": {}}
    for d in docs[1:]:
        per = {}
        for tn in d["targets"]:
            if tn not in base["targets"]:
                continue
            a = {r["round"]: r for r in base["targets"][tn]["rounds"] if "rps" in r}
            b = {r["round"]: r for r in d["targets"][tn]["rounds"] if "rps" in r}
            rs = sorted(set(a) & set(b))
            if not rs:
                continue
            ent = {"rounds": len(rs)}
            for k in ("rps", "p99_ms", "cpu_us_per_req", "rss_peak_kib"):
                v = [b[i][k] / a[i][k] for i in rs if b[i].get(k) and a[i].get(k)]
                if v:
                    ent[k] = {"median": statistics.median(v), "min": min(v), "max": max(v), "per_round": v}
            per[tn] = ent
        out["ratios"][d["scenario"]] = per
    return out


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


def raise_fd_limit(scenarios):
    """Idle-connection scenarios need one fd per client in the proxy (and in the client): raise
    RLIMIT_NOFILE (soft and hard, inherited by every child) as far as the kernel lets us. Raising
    the hard limit needs CAP_SYS_RESOURCE; without it the hard limit stays, and idle counts above
    it are lowered to what fits (see idle_cap), which the report says."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max([int(sc["load"].get("idle_connections") or 0) + 4 * IDLE_FD_RESERVE for sc in scenarios] + [0])
    out = {"soft_before": soft, "hard_before": hard, "wanted": want, "raise_error": None}
    if want > hard:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                want = min(want, int(f.read()))
        except (OSError, ValueError):
            pass
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (OSError, ValueError) as e:
            out["raise_error"] = f"setrlimit({want}): {e.strerror if isinstance(e, OSError) else e}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out["soft"], out["hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)
    return out


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
    ap.add_argument("--quick", action="store_true", help="CI smoke: proxy-small and slowloris, 1 round of 1 s, "
                    "wrk only; writes results/smoke.{json,md}; exits non-zero if a proxy failed")
    ap.add_argument("--pair", action="append", default=[], metavar="A,B[,C]",
                    help="run these scenarios together, their rounds interleaved (round 1 of A, of B, round 2 "
                    "of A, ...), and report B/A per target per round (repeatable)")
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

    pairs = [[n.strip() for n in p.split(",") if n.strip()] for p in args.pair]
    for p in pairs:
        if len(p) < 2 or len(set(p)) != len(p):
            ap.error(f"--pair takes two or more different scenarios: {','.join(p)}")
    if args.quick:
        names = args.scenarios or ["proxy-small", "slowloris"]
    else:
        names = args.scenarios or ([] if pairs else ["all"])
    for p in pairs:
        names += [n for n in p if n not in names]
    if names == ["all"]:
        first = ["proxy-small", "proxy-1k-post", "proxy-fixed-rate", "proxy-idle-conns"]
        names = sorted((f[:-5] for f in os.listdir(SCENARIO_DIR) if f.endswith(".yaml")),
                       key=lambda n: (first.index(n) if n in first else len(first), n))
    scenarios = [load_scenario(n) for n in names]
    if args.quick:
        for sc in scenarios:
            if sc["load"]["mode"] != "closed":
                ap.error("--quick uses wrk only: pick closed-loop scenarios")
            sc["load"]["idle_connections"] = 0
    if args.print_needs:
        # run.sh asks what to install/build for exactly this command line.
        needs = []
        if any(sc["load"]["mode"] == "open" for sc in scenarios):
            needs.append("oha")
        if any(sc["load"]["mode"] == "h2" for sc in scenarios):
            needs.append("h2load")
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
                "machine": machine_info(args), "fd_limit": raise_fd_limit(scenarios)}
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
        by_name = {sc["name"]: sc for sc in scenarios}
        groups, done = [], set()
        for sc in scenarios:
            if sc["name"] in done:
                continue
            grp = next((p for p in pairs if sc["name"] in p), [sc["name"]])
            groups.append([by_name[n] for n in grp])
            done |= set(grp)
        for grp in groups:
            gdocs = run_paired(grp, args, workdir, pin, upstream_kind, run_meta)
            for sc, doc in zip(grp, gdocs):
                doc["meta"] = run_meta
                docs.append(doc)
                out = os.path.join(results_dir, (("smoke.json" if not docs[:-1] else f"smoke-{sc['name']}.json")
                                                 if args.quick else f"{sc['name']}.json"))
                with open(out, "w") as f:
                    json.dump(doc, f, indent=1)
                log(f"raw results: {os.path.relpath(out, REPO)}")
            if len(grp) > 1 and not args.quick:
                out = os.path.join(results_dir, "pair-" + "+".join(sc["name"] for sc in grp) + ".json")
                with open(out, "w") as f:
                    json.dump(dict(gdocs[0]["pair"], run_id=run_meta["run_id"]), f, indent=1)
                log(f"paired ratios: {os.path.relpath(out, REPO)}")
        if args.quick:
            path = args.report or os.path.join(results_dir, "smoke.md")
            report.write_smoke_report(docs, path)
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
                elif args.quick and "+" in tn and d.get("attack") and not (s.get("attack") or {}).get("cut_head"):
                    # the smoke run's point for slowloris: the head deadline cuts slow heads
                    problems.append(f"{d['scenario']}/{tn}: no slow head was cut by the "
                                    f"{d['attack']['header_timeout_used']:g} s head deadline")
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
