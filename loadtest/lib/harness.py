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
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
PROXIES = ["nginx", "haproxy", "gatehouse"]
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


class Procs:
    """Every child runs in its own process group, dies with the harness (PDEATHSIG), and
    is listed in $GH_LOADTEST_PIDS so run.sh's trap can kill it even after a SIGKILL."""

    def __init__(self):
        self.live = []
        self.pidfile = os.environ.get("GH_LOADTEST_PIDS")

    def start(self, cmd, stdout=None, stderr=None, stdin=None, cwd=None):
        p = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=stdin, cwd=cwd,
                             preexec_fn=_child_setup, text=True)
        self.live.append(p)
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{p.pid}\n")
        return p

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
             "gatehouse", "nginx", "haproxy", "services", "_file"}
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
        if t != "direct" and not sc.get(t):
            raise HarnessError(f"{path}: target {t} listed but no `{t}:` config template")
    return sc


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


def oha_cmd(sc, port, duration, bodyfile, pin):
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


# ----------------------------------------------------------------------------- upstreams

def echo_bin():
    return os.environ.get("GATEHOUSE_ECHO_BIN") or os.path.join(REPO, "target/release/gatehouse-echo")


def gatehouse_bin():
    return os.environ.get("GATEHOUSE_BIN") or os.path.join(REPO, "target/release/gatehouse")


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

    def __init__(self, name, sc, upstream, workdir, pin):
        self.name, self.sc = name, sc
        self.error, self.proc, self.config_text, self.cmd = None, None, None, None
        self.admin_port = None
        if name == "direct":
            self.port, self.proc, self.cmd = upstream.port, upstream.proc, upstream.cmd
            return
        self.port = free_port()
        self.admin_port = free_port()
        access_log = sc["access_log"]
        log_path = os.path.join(workdir, f"{name}-access.log")
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
        self.config_text = render(sc[name], values, f"{sc['name']}: {name} template")
        ext = {"gatehouse": "yaml", "nginx": "conf", "haproxy": "cfg"}[name]
        conf = os.path.join(workdir, f"{name}.{ext}")
        with open(conf, "w") as f:
            f.write(self.config_text)
        self.log = os.path.join(workdir, f"{name}.out")
        stdout_path = self.log
        if name == "nginx":
            os.makedirs(os.path.join(workdir, "nginx-tmp"), exist_ok=True)
            self.cmd = pin(1) + [nginx_bin(), "-p", workdir, "-e", os.path.join(workdir, "nginx.error.log"),
                                 "-c", conf]
        elif name == "haproxy":
            # HAProxy logs to stdout ("log stdout"), which goes to the access log file.
            if access_log == "file":
                stdout_path = log_path
            self.cmd = pin(1) + [haproxy_bin(), "-db", "-f", conf]
        else:
            b = gatehouse_bin()
            if not os.access(b, os.X_OK):
                self.error = f"gatehouse not built: {b}"
                return
            self.cmd = pin(1) + [b, "run", "-c", conf]
        with open(stdout_path, "a") as out, open(self.log, "a") as err:
            self.proc = PROCS.start(self.cmd, stdout=out, stderr=err, cwd=workdir)
        e = wait_http(self.port, sc["requests"][0], self.proc, timeout=30)
        if e:
            self.error = f"did not start: {e}\n{tail(self.log)}" + (
                tail(os.path.join(workdir, "nginx.error.log")) if name == "nginx" else "")
            PROCS.stop(self.proc)
            self.proc = None
            return
        if name == "gatehouse" and self.metrics() is None:
            log(f"  gatehouse: admin /metrics on :{self.admin_port} not reachable; reuse ratio unavailable")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def metrics(self):
        """gatehouse_upstream_connections_total by reused=true/false (None if unavailable)."""
        if self.name != "gatehouse" or not self.admin_port:
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

    def gen(secs):
        if open_loop:
            cmd = oha_cmd(sc, t.port, secs, bodyfile, pin)
        else:
            cmd = wrk_cmd(sc, t.port, secs, script, pin)
        rc, out, err = PROCS.run(cmd, timeout=secs + 60)
        if rc != 0:
            raise HarnessError(f"{cmd[0] if not pin(0) else cmd[3]} exited {rc}: {err[-1500:]}")
        return cmd, (parse_oha(out) if open_loop else parse_wrk(out))

    res = {"target": t.name}
    if quiet_wait > 0:
        res["quiet_waited_s"], res["busy_before"] = wait_quiet(quiet_wait)
        if res["busy_before"] > 0.15:
            log(f"  (machine still busy before {t.name}: {res['busy_before'] * 100:.0f}% of a CPU after "
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
        m0, c0, up0 = t.metrics(), cpu_seconds(t.pid), cpu_seconds(upstream.proc.pid)
        res["hwm_reset"] = reset_hwm(t.pid)
        (lg0, me0), st0 = children_cpu(), cpu_times()
        cmd, r = gen(duration)
        st1, (lg1, me1) = cpu_times(), children_cpu()
        m1, c1, up1 = t.metrics(), cpu_seconds(t.pid), cpu_seconds(upstream.proc.pid)
        status = read_status(t.pid)
        res.update(r)
        res["loadgen_cmd"] = cmd
        res["rss_peak_kib"] = status.get("VmHWM")
        res["rss_end_kib"] = status.get("VmRSS")
        res["threads"] = status.get("Threads")
        res["cpu_s"] = (c1 - c0) if c0 is not None and c1 is not None else None
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
    if args.quick:
        duration, warmup, rounds = 3.0, 1.0, 1
    wd = os.path.join(workdir, name)
    os.makedirs(wd, exist_ok=True)
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
        f"targets {', '.join(targets)}, upstream {kind}")
    doc = {"scenario": name, "file": sc["_file"], "description": sc.get("description", ""),
           "run_id": run_meta["run_id"], "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "quick": args.quick, "pinned": args.pin, "load": dict(load, duration=duration, warmup=warmup, rounds=rounds),
           "requests": sc["requests"], "access_log": sc["access_log"],
           "load_generator": "oha" if load["mode"] == "open" else "wrk",
           "order": targets, "targets": {}}
    upstream = Upstream(kind, sc["upstream"]["body_size"], wd, pin)
    doc["upstream"] = {"kind": kind, "body_size": upstream.body_size, "cmd": upstream.cmd}
    tobjs = {}
    services = []
    try:
        if "redis" in sc["services"]:
            services.append(RedisService(wd, pin))
            sc["_service_values"] = {"redis_port": services[-1].port}
            doc["services"] = {"redis": {"cmd": services[-1].cmd}}
        for tn in targets:
            t = Target(tn, sc, upstream, wd, pin)
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
            for tn in targets:
                t = tobjs[tn]
                if t.error:
                    continue
                if not t.alive():
                    t.error = f"process exited (code {t.proc.returncode}) before round {i + 1}\n{tail(t.log)}"
                    doc["targets"][tn]["status"] = "failed"
                    doc["targets"][tn]["error"] = t.error
                    log(f"  {tn}: DIED before round {i + 1}")
                    continue
                attempts = []
                for attempt in range(1 + (0 if args.quick else args.noisy_retries)):
                    try:
                        r = run_round(sc, t, upstream, wd, pin, duration, warmup, bodyfile, script,
                                      quiet_wait=0 if args.quick else args.quiet_wait)
                    except HarnessError as e:
                        r = {"target": tn, "error": str(e)}
                        log(f"  {tn} round {i + 1}: ERROR {e}")
                        break
                    attempts.append(r)
                    if r.get("noise", 0) <= args.noise_limit or not t.alive():
                        break
                    log(f"  {tn} round {i + 1}: noisy ({r['noise'] * 100:.0f}% of a CPU went to other "
                        f"processes; {r['rps']:.0f} req/s) - discarded, retrying")
                if attempts:
                    r = min(attempts, key=lambda a: a.get("noise", 0))
                    r["attempts"] = len(attempts)
                    r["discarded"] = [{k: a.get(k) for k in ("rps", "p99_ms", "noise", "started")}
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
        for tn in targets:
            t = tobjs[tn]
            if t.alive() and tn != "direct" and t.name == "gatehouse":
                doc["targets"][tn]["access_log_bytes"] = os.path.getsize(os.path.join(wd, "gatehouse-access.log")) \
                    if os.path.exists(os.path.join(wd, "gatehouse-access.log")) else None
            doc["targets"][tn]["summary"] = summarize(doc["targets"][tn]["rounds"])
            if t.error and doc["targets"][tn]["status"] == "ok":
                doc["targets"][tn]["status"] = "failed"
    finally:
        for t in tobjs.values():
            if t.name != "direct" and t.proc:
                PROCS.stop(t.proc)
        for svc in services:
            svc.stop()
        upstream.stop()
    doc["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    return doc


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
    args = ap.parse_args()
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    for p in args.proxies:
        if p not in PROXIES:
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
        if args.keep_workdir:
            log(f"workdir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
