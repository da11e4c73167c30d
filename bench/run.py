#!/usr/bin/python3
"""rwsgi benchmark: rwsgi in nginx and Apache against the usual ways to serve WSGI.

`make bench` runs this. It installs what is missing (Debian packages with apt, the Python
peers into target/bench-venv), starts every server at once, idle, on 127.0.0.1, then loads
each in turn with wrk: per workload, a short warm-up, then several rounds in which every
server gets one run (the order rotates between rounds). It prints one table (req/s median
of the rounds, p50/p99 latency, worker RSS after the last round, ratio to rwsgi-nginx) and
writes bench/RESULTS.md (machine, versions, table, the goals of issue 6 as PASS/FAIL) and
bench/results.png. Every server started is stopped at the end, also on Ctrl-C or error.

    /usr/bin/python3 bench/run.py                 # full run: 5 rounds x 3 s per cell (~13 min)
    /usr/bin/python3 bench/run.py --quick         # 1 round x 2 s
    /usr/bin/python3 bench/run.py --only rwsgi-nginx,granian --workloads hello,sleep

--only / --workloads runs print the table but leave bench/RESULTS.md and results.png alone
unless --write is given (so a partial run never replaces a full one by accident).
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import pathlib
import platform
import resource
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TARGET = ROOT / "target"
MODULES = TARGET / "modules"
VENV = TARGET / "bench-venv"
RUN_BASE = TARGET / "bench-run"
HOST = "127.0.0.1"
PROCS = 2             # worker processes everywhere (the machine has 2 cores)
THREADS = 8           # threads per process wherever threads apply
SLEEP_THREADS = 64    # ... for the sleep workload (2 x 64 = its 128 connections)
WRK_THREADS = [1]     # --wrk-threads
BASE = [None]         # --base: the directory of the baseline modules

APT_PACKAGES = ["wrk", "nginx", "apache2", "libapache2-mod-wsgi-py3", "uwsgi-core",
                "uwsgi-plugin-python3", "util-linux"]
MOD_WSGI_SO = pathlib.Path("/usr/lib/apache2/modules/mod_wsgi.so")
NGINX_MODULE = MODULES / "ngx_http_rwsgi_module.so"
APACHE_MODULE = MODULES / "mod_rwsgi.so"
MiB = 1 << 20


class Workload:
    def __init__(self, name, path, label, conns=32, post=0, many_threads=False, static=True):
        self.name, self.path, self.label, self.conns = name, path, label, conns
        self.post = post                  # request body bytes (POST), 0 = GET
        self.many_threads = many_threads  # served by the SLEEP_THREADS instances
        self.static = static              # the static-file ceilings take part


WORKLOADS = [
    Workload("hello", "/hello", "hello world"),
    Workload("json", "/json", "small JSON"),
    Workload("sleep", "/sleep", "sleep 10 ms, c=128", conns=128, many_threads=True, static=False),
    Workload("upload", "/echo", "POST 1 MiB, echoed", post=MiB, static=False),
    Workload("file", "/file", "1 MiB wsgi.file_wrapper"),
    Workload("stream", "/stream", "10 MiB stream, 64 KiB chunks"),
]
WL = {w.name: w for w in WORKLOADS}

# name -> description (for RESULTS.md); order = table order
SERVERS = {
    "nginx-static": "nginx `return 200` (hello, json) and static files (file, stream): the ceiling",
    "apache-static": "Apache event MPM serving the same bodies as static files",
    "mod_wsgi": "Apache event MPM + mod_wsgi 4.9 embedded mode (WSGIApplicationGroup %{GLOBAL}, WSGIEnableSendfile On)",
    "nginx-uwsgi": "nginx `uwsgi_pass` to a uWSGI unix socket (--master, processes x threads)",
    "gunicorn": "gunicorn -k gthread, workers x threads",
    "granian": "granian --interface wsgi --http 1, workers x blocking threads",
    "rwsgi-nginx": "nginx + ngx_http_rwsgi_module.so, worker_processes x wsgi_threads",
    "rwsgi-apache": "Apache event MPM + mod_rwsgi.so, processes x ThreadsPerChild",
    "mod_wsgi-daemon": "Apache event MPM + mod_wsgi daemon mode (WSGIDaemonProcess processes x threads, %{GLOBAL})",
    "rwsgi-nginx-daemon": "nginx + rwsgi daemon mode (wsgi_daemon processes x threads)",
    "rwsgi-apache-daemon": "Apache event MPM + mod_rwsgi daemon mode (WSGIDaemonProcess processes x threads)",
}
STATIC_SERVERS = {"nginx-static", "apache-static"}
REFERENCE = "rwsgi-nginx"

# (description, server, peer, workload, minimum ratio)
RATIO_GOALS = [
    ("nginx module, hello >= 1.25x granian", "rwsgi-nginx", "granian", "hello", 1.25),
    ("nginx module, hello >= 0.6x nginx `return 200`", "rwsgi-nginx", "nginx-static", "hello", 0.6),
    ("nginx module, hello >= 4x nginx+uWSGI", "rwsgi-nginx", "nginx-uwsgi", "hello", 4.0),
    ("Apache module, hello >= 1.5x mod_wsgi embedded", "rwsgi-apache", "mod_wsgi", "hello", 1.5),
    ("Apache module, hello >= 0.8x Apache static file", "rwsgi-apache", "apache-static", "hello", 0.8),
    ("nginx module, sleep 10 ms >= granian", "rwsgi-nginx", "granian", "sleep", 1.0),
    ("Apache module, sleep 10 ms >= granian", "rwsgi-apache", "granian", "sleep", 1.0),
    ("nginx module, POST 1 MiB >= mod_wsgi embedded", "rwsgi-nginx", "mod_wsgi", "upload", 1.0),
    ("Apache module, POST 1 MiB >= mod_wsgi embedded", "rwsgi-apache", "mod_wsgi", "upload", 1.0),
    ("nginx module, 1 MiB file_wrapper >= mod_wsgi embedded", "rwsgi-nginx", "mod_wsgi", "file", 1.0),
    ("Apache module, 1 MiB file_wrapper >= mod_wsgi embedded", "rwsgi-apache", "mod_wsgi", "file", 1.0),
    ("nginx daemon mode, hello >= 1.5x mod_wsgi daemon mode", "rwsgi-nginx-daemon", "mod_wsgi-daemon", "hello", 1.5),
    ("Apache daemon mode, hello >= 1.5x mod_wsgi daemon mode", "rwsgi-apache-daemon", "mod_wsgi-daemon", "hello", 1.5),
]
RSS_SETTLE_S = 0.5   # pause between a run's end and its RSS reading (workers idle by then)
RSS_FLAT = 1.10   # "RSS stays flat": last round's RSS <= 1.10 x first round's (+1 MiB slack)


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------
# dependencies
# ---------------------------------------------------------------------------------------

def ensure_deps():
    missing = [p for p in APT_PACKAGES if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout.strip() != "install ok installed"]
    if missing:
        log(f"installing Debian packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL, timeout=1200)
        # packages may enable their system services; the benchmark starts its own
        subprocess.run(["systemctl", "disable", "--now", "nginx", "apache2", "uwsgi"],
                       capture_output=True)
    py = VENV / "bin" / "python"
    probe = "import gunicorn, granian, matplotlib"
    if not py.exists() or subprocess.run([py, "-c", probe], capture_output=True).returncode:
        log(f"installing the Python peers into {VENV}")
        if not py.exists():
            subprocess.run(["/usr/bin/python3", "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-r", BENCH / "requirements.txt"],
                       check=True, timeout=1200)


# ---------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------

def proc_table():
    """pid -> (ppid, rss KiB) for every process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            rss = 0
            for line in open(f"/proc/{d}/status"):
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
            table[int(d)] = (ppid, rss)
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(pid, table):
    children = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def free_port(used):
    for port in range(28100, 29000):
        if port in used:
            continue
        s = socket.socket()
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        used.add(port)
        return port
    raise RuntimeError("no free port in 28100-28999")


def tail(path, n=15):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Instance:
    """One running server: a name, a thread count variant, a port and its process groups."""

    def __init__(self, ctx, server, threads, port):
        self.ctx, self.server, self.threads, self.port = ctx, server, threads, port
        self.tag = f"{server}-t{threads}"
        self.procs = []      # Popen objects, each a process-group leader (start_new_session)
        self.logs = []
        self.error = None

    def spawn(self, cmd, name, env=None):
        logf = self.ctx.run / f"{self.tag}-{name}.out"
        self.logs.append(logf)
        with open(logf, "wb") as f:
            p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def worker_pids(self, table):
        """Every process below the started masters (the workers; for nginx-uwsgi both tiers)."""
        return [d for p in self.procs for d in descendants(p.pid, table)]

    def rss_kib(self):
        table = proc_table()
        return sum(table[p][1] for p in self.worker_pids(table) if p in table)

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def request(self, method, path, body=None, timeout=30):
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_ready(self, timeout=40):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"exited with {[p.poll() for p in self.procs]}; "
                                   + self.log_tails())
            try:
                status, _ = self.request("GET", "/hello", timeout=5)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.2)
        raise RuntimeError(f"not ready after {timeout}s ({last}); " + self.log_tails())

    def log_tails(self):
        parts = []
        for f in self.logs + sorted(self.ctx.run.glob(f"{self.tag}*error.log")):
            t = tail(f, 8)
            if t:
                parts.append(f"[{f.name}] {t}")
        return " | ".join(parts) or "no log output"

    def signal_all(self, sig, group=False):
        for p in self.procs:
            if p.poll() is None or group:
                try:
                    (os.killpg if group else os.kill)(p.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def group_alive(self):
        alive = False
        for p in self.procs:
            p.poll()
            try:
                os.killpg(p.pid, 0)
                alive = True
            except ProcessLookupError:
                pass
        return alive


def stop_all(instances):
    """TERM every master, wait (bounded), then KILL whatever is left of each process group."""
    for inst in instances:
        inst.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(i.group_alive() for i in instances):
        time.sleep(0.1)
    for inst in instances:
        if inst.group_alive():
            inst.signal_all(signal.SIGKILL, group=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(i.group_alive() for i in instances):
        time.sleep(0.1)
    for inst in instances:
        for p in inst.procs:
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------------------------
# server configurations
# ---------------------------------------------------------------------------------------

NGINX_CONF = """\
{load_module}
daemon off;
master_process on;
worker_processes {procs};
user nobody nogroup;
error_log {run}/{tag}-error.log warn;
pid {run}/{tag}.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_max_body_size 16m;
    client_body_buffer_size 2m;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http_extra}
    server {{
        listen {host}:{port} backlog=4096;
{locations}
    }}
}}
"""

APACHE_CONF = """\
ServerRoot /etc/apache2
DefaultRuntimeDir {rt}
PidFile {rt}/httpd.pid
ErrorLog {run}/{tag}-error.log
LogLevel warn
Listen {host}:{port}
ServerName {host}
User www-data
Group www-data
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
{modules}
StartServers {procs}
ServerLimit {procs}
ThreadLimit {threads}
ThreadsPerChild {threads}
MaxRequestWorkers {workers}
MinSpareThreads 1
MaxSpareThreads {workers}
MaxConnectionsPerChild 0
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
EnableSendfile On
{body}
"""


def start_nginx(inst, locations, http_extra="", load_module=False, module=NGINX_MODULE):
    ctx = inst.ctx
    tmp = ctx.run / f"{inst.tag}-tmp"
    tmp.mkdir(exist_ok=True)
    conf = ctx.run / f"{inst.tag}.nginx.conf"
    conf.write_text(NGINX_CONF.format(
        load_module=f"load_module {module};" if load_module else "",
        procs=PROCS, run=ctx.run, tag=inst.tag, tmp=tmp, http_extra=http_extra,
        host=HOST, port=inst.port, locations=locations))
    inst.spawn(["/usr/sbin/nginx", "-p", ctx.run, "-c", conf, "-e", ctx.run / f"{inst.tag}-error.log"],
               "nginx")


def start_apache(inst, modules, body):
    ctx = inst.ctx
    rt = ctx.run / f"{inst.tag}-rt"
    rt.mkdir(exist_ok=True)
    conf = ctx.run / f"{inst.tag}.apache.conf"
    conf.write_text(APACHE_CONF.format(
        rt=rt, run=ctx.run, tag=inst.tag, host=HOST, port=inst.port, modules=modules,
        procs=PROCS, threads=inst.threads, workers=PROCS * inst.threads, body=body))
    env = dict(os.environ, APACHE_RUN_DIR=str(rt), APACHE_LOCK_DIR=str(rt), APACHE_PID_FILE=str(rt / "httpd.pid"))
    # output to a file, never a pipe: Apache keeps inherited pipes open
    inst.spawn(["/usr/sbin/apache2", "-f", conf, "-DFOREGROUND"], "apache2", env=env)


def start_server(inst):
    ctx, s, t = inst.ctx, inst.server, inst.threads
    app, appdir, docroot = ctx.app, ctx.appdir, ctx.docroot
    directory = f"<Directory {appdir}>\n    Require all granted\n</Directory>"
    if s == "nginx-static":
        start_nginx(inst, f"""\
        location = /hello {{ return 200 "Hello, world!\\n"; }}
        location = /json {{ default_type application/json; return 200 '{ctx.json_body.decode()}'; }}
        location / {{ root {docroot}; }}""")
    elif s in ("rwsgi-nginx", "rwsgi-nginx-base"):
        module = NGINX_MODULE if s == "rwsgi-nginx" else BASE[0] / NGINX_MODULE.name
        start_nginx(inst, f"        location / {{ wsgi_app {app}; }}",
                    http_extra=f"    wsgi_threads {t};", load_module=True, module=module)
    elif s == "nginx-uwsgi":
        sockdir = ctx.run / f"{inst.tag}-sock"    # uWSGI binds after dropping to www-data
        sockdir.mkdir(exist_ok=True)
        shutil.chown(sockdir, "www-data", "www-data")
        os.chmod(sockdir, 0o755)
        sock = sockdir / "uwsgi.sock"
        somaxconn = int(pathlib.Path("/proc/sys/net/core/somaxconn").read_text())
        inst.spawn(["/usr/bin/uwsgi", "--plugin", "python3", "--master", "--processes", PROCS,
                    "--threads", t, "--wsgi-file", app, "--uwsgi-socket", sock,
                    "--chmod-socket=666", "--uid", "www-data", "--gid", "www-data",
                    "--listen", min(1024, somaxconn), "--disable-logging", "--die-on-term",
                    "--need-app", "--vacuum"], "uwsgi")
        start_nginx(inst, f"""\
        location / {{
            include /etc/nginx/uwsgi_params;
            uwsgi_pass unix:{sock};
        }}""")
    elif s == "apache-static":
        start_apache(inst, "", f"DocumentRoot {docroot}\n<Directory {docroot}>\n    Require all granted\n</Directory>")
    elif s == "mod_wsgi":
        start_apache(inst, f"LoadModule wsgi_module {MOD_WSGI_SO}",
                     f"WSGIApplicationGroup %{{GLOBAL}}\nWSGIEnableSendfile On\n"
                     f"WSGIScriptAlias / {app}\n{directory}")
    elif s == "mod_wsgi-daemon":
        start_apache(inst, f"LoadModule wsgi_module {MOD_WSGI_SO}",
                     f"WSGISocketPrefix {ctx.run}/{inst.tag}-wsgi\n"
                     f"WSGIDaemonProcess bench processes={PROCS} threads={t}\n"
                     f"WSGIProcessGroup bench\nWSGIApplicationGroup %{{GLOBAL}}\n"
                     f"WSGIEnableSendfile On\nWSGIScriptAlias / {app}\n{directory}")
    elif s == "rwsgi-nginx-daemon":
        start_nginx(inst, f"        location / {{ wsgi_process_group bench; wsgi_app {app}; }}",
                    http_extra=f"    wsgi_socket_prefix {ctx.run}/{inst.tag}-rwsgi;\n"
                               f"    wsgi_daemon bench processes={PROCS} threads={t};",
                    load_module=True)
    elif s == "rwsgi-apache-daemon":
        start_apache(inst, f"LoadModule rwsgi_module {APACHE_MODULE}",
                     f"WSGISocketPrefix {ctx.run}/{inst.tag}-wsgi\n"
                     f"WSGIDaemonProcess bench processes={PROCS} threads={t}\n"
                     f"WSGIProcessGroup bench\nWSGIScriptAlias / {app}\n{directory}")
    elif s in ("rwsgi-apache", "rwsgi-apache-base"):
        module = APACHE_MODULE if s == "rwsgi-apache" else BASE[0] / APACHE_MODULE.name
        start_apache(inst, f"LoadModule rwsgi_module {module}",
                     f"WSGIScriptAlias / {app}\n{directory}")
    elif s == "gunicorn":
        inst.spawn(["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups",
                    VENV / "bin" / "gunicorn", "-k", "gthread", "-w", PROCS, "--threads", t,
                    "-b", f"{HOST}:{inst.port}", "--chdir", appdir, "--backlog", 4096,
                    "--worker-connections", 4096, "--keep-alive", 30, "--log-level", "warning",
                    "app:application"], "gunicorn", env=ctx.user_env)
    elif s == "granian":
        inst.spawn(["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups",
                    VENV / "bin" / "granian", "--interface", "wsgi", "--http", "1", "--no-ws",
                    "--workers", PROCS, "--blocking-threads", t, "--host", HOST,
                    "--port", inst.port, "--backlog", 4096, "--working-dir", appdir,
                    "--log-level", "warning", "app:application"], "granian", env=ctx.user_env)
    else:
        raise ValueError(s)


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------

def expected_body(ctx, wl):
    return {"hello": b"Hello, world!\n", "sleep": b"Hello, world!\n", "json": ctx.json_body,
            "upload": ctx.post_body, "file": ctx.data_1m, "stream": b"x" * (10 * MiB)}[wl.name]


def check(inst, wl):
    """One request by hand: status 200 and the exact body, else the cell is not measured."""
    ctx = inst.ctx
    if wl.post:
        status, body = inst.request("POST", wl.path, body=ctx.post_body)
    else:
        status, body = inst.request("GET", wl.path)
    if status != 200:
        return f"HTTP {status}"
    want = expected_body(ctx, wl)
    if wl.name == "json":
        try:
            json.loads(body)
        except ValueError:
            return f"bad JSON body ({len(body)} bytes)"
        return None
    if body != want:
        return f"body mismatch ({len(body)} bytes, want {len(want)})"
    return None


def cpu_busy_ticks():
    """CPU time the machine's processes used (user + nice + system, all CPUs) plus steal, in
    clock ticks. irq/softirq time is left out: it is the servers' loopback traffic, and the
    kernel does not charge it to any process."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return f[0] + f[1] + f[2] + f[7]


def tree_ticks(inst):
    """utime + stime of the instance's masters and workers, in clock ticks."""
    total = 0
    for pid in [p.pid for p in inst.procs] + inst.worker_pids(proc_table()):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_wrk(inst, wl, seconds):
    """One wrk run; also estimates how much CPU went to processes other than this server
    and wrk during it (other_cpu_pct, % of all CPUs): a high value means a noisy measure."""
    env = dict(os.environ, WRK_POST_BYTES=str(wl.post))
    hz = os.sysconf("SC_CLK_TCK")
    ru0, busy0, own0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_busy_ticks(), tree_ticks(inst), time.monotonic()
    cmd = ["wrk", f"-t{WRK_THREADS[0]}", f"-c{wl.conns}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(BENCH / "wrk.lua"), f"http://{HOST}:{inst.port}{wl.path}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    ru1, busy1, own1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_busy_ticks(), tree_ticks(inst), time.monotonic()
    wrk_ticks = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * hz
    other = (busy1 - busy0) - (own1 - own0) - wrk_ticks
    other_pct = max(0.0, 100.0 * other / (hz * (t1 - t0) * os.cpu_count()))
    for line in p.stdout.splitlines():
        if line.startswith("RWSGI_BENCH "):
            r = json.loads(line.split(" ", 1)[1])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            r["other_cpu_pct"] = other_pct
            r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            # wrk counts a non-2xx response as a request too: count only good ones as throughput
            r["good_rps"] = max(0, r["requests"] - r["status"]) / (r["duration_us"] / 1e6) \
                if r["duration_us"] else 0.0
            return r
    raise RuntimeError(f"wrk failed (rc {p.returncode}): {p.stderr.strip() or p.stdout.strip()}")


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(cell):
    rounds = cell["rounds"]
    if not rounds:
        return None
    return {
        "rps": median([r["good_rps"] for r in rounds]),
        "rps_rounds": [r["good_rps"] for r in rounds],
        "p50_ms": median([r["p50_us"] / 1000 for r in rounds]),
        "p99_ms": median([r["p99_us"] / 1000 for r in rounds]),
        "rss_mib": rounds[-1]["rss_kib"] / 1024,
        "rss_rounds": [r["rss_kib"] / 1024 for r in rounds],
        "errors": sum(r["errors"] for r in rounds),
        "error_kinds": {k: sum(r[k] for r in rounds) for k in ("connect", "read", "write", "status", "timeout")
                        if sum(r[k] for r in rounds)},
        "requests": sum(r["requests"] for r in rounds),
        "other_cpu_pct": max(r["other_cpu_pct"] for r in rounds),
    }


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------

def fmt_errors(sm):
    """wrk's error counts: connect/read/write/timeout are socket errors, status = non-2xx."""
    if not sm["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {n}" for k, n in sm["error_kinds"].items())
    return f"{kinds} ({100 * sm['errors'] / max(1, sm['requests']):.1f}%)"


def fmt_rps(x):
    return "—" if x is None else f"{x:,.0f}"


def ratio(results, wl, a, b):
    ca, cb = results.get((wl, a)), results.get((wl, b))
    sa, sb = (ca or {}).get("summary"), (cb or {}).get("summary")
    if not sa or not sb or not sb["rps"]:
        return None
    return sa["rps"] / sb["rps"]


def table_rows(results, servers, workloads):
    rows = []
    for wl in workloads:
        for s in servers:
            cell = results.get((wl.name, s))
            if cell is None:
                continue
            sm = cell.get("summary")
            if sm is None:
                rows.append([wl.name, s, "—", cell.get("note", "not measured"), "", "", "", "", "", ""])
                continue
            r = ratio(results, wl.name, s, REFERENCE)
            rows.append([
                wl.name, s, fmt_rps(sm["rps"]), " / ".join(f"{x:,.0f}" for x in sm["rps_rounds"]),
                f"{sm['p50_ms']:.2f}", f"{sm['p99_ms']:.2f}", f"{sm['rss_mib']:.1f}",
                "—" if r is None else f"{r:.2f}",
                fmt_errors(sm), f"{sm['other_cpu_pct']:.0f}",
            ])
    return rows


HEADERS = ["workload", "server", "req/s (median)", "req/s per round", "p50 ms", "p99 ms",
           "worker RSS MiB", f"x {REFERENCE}", "errors", "other CPU %"]


def text_table(rows):
    widths = [max(len(str(x)) for x in col) for col in zip(HEADERS, *rows)]
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths))]
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            out.append("")
        last = r[0]
        out.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    return "\n".join(out)


def md_table(rows):
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for r in rows:
        out.append("| " + " | ".join(str(x) for x in r) + " |")
    return "\n".join(out)


def evaluate_goals(results, servers, args):
    goals = []
    for desc, a, b, wl, minimum in RATIO_GOALS:
        if a not in servers or b not in servers or wl not in args.workloads:
            continue
        r = ratio(results, wl, a, b)
        if r is None:
            why = (args.skip_reason.get(a) or args.skip_reason.get(b)
                   or (results.get((wl, a)) or {}).get("note") or (results.get((wl, b)) or {}).get("note")
                   or "not measured")
            goals.append((desc, "SKIP", why))
        else:
            goals.append((desc, "PASS" if r >= minimum else "FAIL", f"{r:.2f}x"))
    for s in ("rwsgi-nginx", "rwsgi-apache"):
        if s not in servers:
            continue
        # p99 < 2x p50 at 32 connections: judged on hello, the other c=32 workloads shown
        label = "nginx" if s == "rwsgi-nginx" else "Apache"
        desc = f"{label} module, p99 < 2x p50 at 32 connections (hello; other c=32 workloads for information)"
        qs = {}
        for wl in args.workloads:
            sm = (results.get((wl, s)) or {}).get("summary")
            if WL[wl].conns == 32 and sm:
                qs[wl] = sm["p99_ms"] / sm["p50_ms"] if sm["p50_ms"] else float("inf")
        if "hello" not in qs:
            goals.append((desc, "SKIP", args.skip_reason.get(s) or "hello not measured"))
        else:
            goals.append((desc, "PASS" if qs["hello"] < 2 else "FAIL",
                          "p99/p50: " + ", ".join(f"{wl} {q:.1f}" for wl, q in qs.items())))
        # RSS flat across rounds
        desc = f"{label} module, worker RSS flat across rounds (last <= {RSS_FLAT}x first + 1 MiB, every workload)"
        worst, measured = None, 0
        for wl in args.workloads:
            sm = (results.get((wl, s)) or {}).get("summary")
            if not sm or len(sm["rss_rounds"]) < 2:
                continue
            measured += 1
            first, last = sm["rss_rounds"][0], sm["rss_rounds"][-1]
            q = (last - 1) / first if first else float("inf")
            if worst is None or q > worst[0]:
                worst = (q, wl, first, last)
        if not measured:
            goals.append((desc, "SKIP", args.skip_reason.get(s) or
                          ("needs >= 2 rounds" if args.rounds < 2 else "not measured")))
        else:
            goals.append((desc, "PASS" if worst[0] <= RSS_FLAT else "FAIL",
                          f"worst {worst[1]}: {worst[2]:.1f} -> {worst[3]:.1f} MiB"))
    return goals


def cmd_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"


def pkg_version(p):
    return cmd_out(["dpkg-query", "-W", "-f=${Version}", p])


def machine_info():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"nproc": os.cpu_count(), "memory": mem, "kernel": platform.release(), "cpu": cpu,
            "os": cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"])}


def versions():
    first = lambda s: s.splitlines()[0] if s else "?"
    v = VENV / "bin"
    return {
        "nginx": first(cmd_out(["/usr/sbin/nginx", "-v"])).replace("nginx version: ", ""),
        "apache2": first(cmd_out(["/usr/sbin/apache2", "-v"])).replace("Server version: ", ""),
        "python": first(cmd_out(["/usr/bin/python3", "--version"])),
        "mod_wsgi": "libapache2-mod-wsgi-py3 " + pkg_version("libapache2-mod-wsgi-py3"),
        "uwsgi": first(cmd_out(["/usr/bin/uwsgi", "--version"])),
        "gunicorn": first(cmd_out([v / "gunicorn", "--version"])),
        "granian": first(cmd_out([v / "granian", "--version"])),
        "wrk": first(cmd_out(["wrk", "-v"])).split(" [")[0],
        "rwsgi": first(cmd_out(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])) + "; " + "; ".join(
            f"{m.name} built {datetime.datetime.fromtimestamp(m.stat().st_mtime):%Y-%m-%d %H:%M}"
            if m.exists() else f"{m.name} missing" for m in (NGINX_MODULE, APACHE_MODULE)),
    }


def write_results(ctx, results, servers, goals, skipped, args, started, elapsed, rows):
    m, v = machine_info(), ctx.versions
    lines = [
        "# rwsgi benchmark results",
        "",
        f"Generated by `make bench` (`/usr/bin/python3 bench/run.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`) "
        f"on {started:%Y-%m-%d %H:%M UTC}, {elapsed / 60:.1f} min.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs: {m['cpu']}; memory {m['memory']}; kernel {m['kernel']}; {m['os']}",
        "- wrk, the load generator, runs on the same 2 cores as the servers (loopback only).",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {k}: {val}" for k, val in v.items()]
    lines += [
        "",
        "## Method",
        "",
        f"- Every server runs at once, idle, on its own 127.0.0.1 port; each is loaded in turn. Per workload: "
        f"{args.warmup} s warm-up per server, then {args.rounds} round(s) of {args.duration} s; in each round every "
        f"server gets one run and the order rotates between rounds.",
        f"- `wrk -t{WRK_THREADS[0]} -c32` (sleep: `-c128`), `--timeout 10s`, keep-alive. req/s = median of the rounds "
        f"(non-2xx responses not counted); p50/p99 = median of the rounds' wrk percentiles.",
        f"- worker RSS = sum of VmRSS of every process below each server's master(s), read {RSS_SETTLE_S} s after the last round "
        "(nginx-uwsgi: nginx workers + uWSGI workers).",
        "- errors = wrk's counts (read/write/connect: socket errors, e.g. Apache's event MPM closing keep-alive "
        "connections when all its threads are busy; status: non-2xx; timeout: > 10 s).",
        "- other CPU % = the largest share, over the rounds, of the machine's CPU time used by anything other than "
        "the server under test and wrk (user+system+steal from /proc/stat minus both processes' own CPU time): a high value "
        "means that cell was measured on a busy machine.",
        f"- {PROCS} processes everywhere x {THREADS} threads where threads apply (sleep workload: "
        f"{SLEEP_THREADS} threads, on separate instances of every threaded server).",
        "- Same app file for every server (bench/app.py). Access logs off. nginx: `sendfile on`, "
        "`client_body_buffer_size 2m`, `keepalive_requests 1000000`, user nobody; Apache: event MPM, "
        "`EnableSendfile On`, `KeepAlive On`, `MaxKeepAliveRequests 0`, user www-data; gunicorn/granian/uWSGI "
        "run as www-data.",
        "",
        "Servers:",
        "",
    ]
    lines += [f"- **{s}**: {SERVERS[s]}" for s in servers]
    lines += ["", "Workloads:", ""]
    lines += [f"- **{w.name}** (`{'POST' if w.post else 'GET'} {w.path}`, c={w.conns}): {w.label}"
              for w in WORKLOADS if w.name in args.workloads]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {s}" for s in skipped]
    lines += ["", "## Results", "", md_table(rows), "", "![req/s per workload per server](results.png)",
              "", "## Goals", "", "| goal | result | measured |", "|---|---|---|"]
    lines += [f"| {d} | {r} | {x} |" for d, r, x in goals]
    lines.append("")
    (BENCH / "RESULTS.md").write_text("\n".join(lines))


def plot(results, servers, workloads, path):
    data = {"servers": servers, "workloads": [[w.name, w.label] for w in workloads], "cells": {}}
    for (wl, s), cell in results.items():
        sm = cell.get("summary")
        if sm:
            data["cells"][f"{wl}|{s}"] = sm["rps"]
    src = pathlib.Path(tempfile.mkstemp(suffix=".json")[1])
    try:
        src.write_text(json.dumps(data))
        p = subprocess.run([VENV / "bin" / "python", BENCH / "plot.py", src, path],
                           capture_output=True, text=True, timeout=120)
        if p.returncode:
            log(f"plot failed: {p.stderr.strip()}")
    finally:
        src.unlink()


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

class Ctx:
    pass


def prepare_files(ctx):
    """App, data and static files in a world-readable temp dir (workers are unprivileged)."""
    ctx.appdir = pathlib.Path(tempfile.mkdtemp(prefix="rwsgi-bench-"))
    os.chmod(ctx.appdir, 0o755)
    ctx.app = ctx.appdir / "app.py"
    shutil.copy(BENCH / "app.py", ctx.app)
    ctx.data_1m = os.urandom(MiB)
    (ctx.appdir / "data-1m.bin").write_bytes(ctx.data_1m)
    ctx.post_body = b"r" * MiB   # what wrk.lua sends
    # the static ceilings serve the app's own bodies
    mod = runpy.run_path(str(ctx.app))
    captured = []
    ctx.json_body = b"".join(mod["api"]({"PATH_INFO": "/json", "REQUEST_METHOD": "GET"},
                                        lambda *a: captured.append(a)))
    assert b"'" not in ctx.json_body
    ctx.docroot = ctx.appdir / "htdocs"
    ctx.docroot.mkdir()
    (ctx.docroot / "hello").write_bytes(b"Hello, world!\n")
    (ctx.docroot / "json").write_bytes(ctx.json_body)
    (ctx.docroot / "file").write_bytes(ctx.data_1m)
    (ctx.docroot / "stream").write_bytes(b"x" * (10 * MiB))
    for p in [ctx.appdir, ctx.docroot]:
        os.chmod(p, 0o755)
    for p in list(ctx.appdir.iterdir()) + list(ctx.docroot.iterdir()):
        if p.is_file():
            os.chmod(p, 0o644)
    # www-data must reach the venv (gunicorn, granian) and nobody/www-data the modules
    for d in [ROOT, TARGET, MODULES, VENV]:
        if d.exists():
            os.chmod(d, os.stat(d).st_mode | 0o055)
    ctx.user_env = {"PATH": "/usr/bin:/bin", "HOME": str(ctx.appdir), "LANG": "C.UTF-8"}


def ab_table(results, workloads):
    """Current modules against the baseline ones (--base), measured in the same rounds."""
    lines = ["A/B, current / baseline (req/s medians, same rounds):"]
    for wl in workloads:
        cells = []
        for s in ("rwsgi-nginx", "rwsgi-apache"):
            new, old = results.get((wl.name, s), {}), results.get((wl.name, s + "-base"), {})
            if new.get("summary") and old.get("summary"):
                ratio = new["summary"]["rps"] / old["summary"]["rps"]
                cells.append(f"{s.split('-')[1]} {ratio:.3f}")
        lines.append(f"  {wl.name:8} " + "   ".join(cells))
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round x 2 s, 1 s warm-up")
    ap.add_argument("--rounds", type=int, help="rounds per workload (default 5)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 3)")
    ap.add_argument("--warmup", type=int, help="warm-up seconds per server and workload (default 1)")
    ap.add_argument("--only", help=f"comma-separated servers: {','.join(SERVERS)}")
    ap.add_argument("--workloads", help=f"comma-separated workloads: {','.join(WL)}")
    ap.add_argument("--wrk-threads", type=int, default=1,
                    help="wrk threads (default 1: wrk shares the 2 cores with the servers)")
    ap.add_argument("--write", action="store_true",
                    help="write RESULTS.md/results.png even for an --only/--workloads run")
    ap.add_argument("--no-write", action="store_true", help="never write RESULTS.md/results.png")
    ap.add_argument("--no-install", action="store_true", help="do not apt/pip install anything")
    ap.add_argument("--base", type=pathlib.Path,
                    help="A/B: also run rwsgi-nginx-base and rwsgi-apache-base with the modules in "
                         "this directory, interleaved with the current ones (make bench-ab)")
    args = ap.parse_args()
    if args.base:
        BASE[0] = args.base.resolve()
        SERVERS["rwsgi-nginx-base"] = f"rwsgi-nginx with the modules in {BASE[0]}"
        SERVERS["rwsgi-apache-base"] = f"rwsgi-apache with the modules in {BASE[0]}"
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    if not (1 <= args.rounds <= 20 and 1 <= args.duration <= 120 and 0 <= args.warmup <= 60):
        ap.error("rounds 1-20, duration 1-120 s, warm-up 0-60 s")
    args.servers = args.only.split(",") if args.only else list(SERVERS)
    args.workloads = args.workloads.split(",") if args.workloads else list(WL)
    for s in args.servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}; known: {', '.join(SERVERS)}")
    for w in args.workloads:
        if w not in WL:
            ap.error(f"unknown workload {w!r}; known: {', '.join(WL)}")
    args.servers = [s for s in SERVERS if s in args.servers]
    args.workloads = [w for w in WL if w in args.workloads]
    partial = bool(args.only or args.workloads != list(WL))
    args.write_files = not args.no_write and (args.write or not partial)
    return args


def main():
    args = parse_args()
    WRK_THREADS[0] = args.wrk_threads
    if os.geteuid() != 0:
        sys.exit("bench/run.py runs as root: it installs packages and starts servers as nobody/www-data")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    if not args.no_install:
        ensure_deps()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    ctx = Ctx()
    RUN_BASE.mkdir(parents=True, exist_ok=True)
    ctx.run = RUN_BASE / started.strftime("%Y%m%d-%H%M%S")
    ctx.run.mkdir()
    for d in [RUN_BASE, ctx.run]:
        os.chmod(d, 0o755)
    prepare_files(ctx)
    ctx.versions = versions()   # before the servers start: the module build times are the ones loaded

    servers, skipped = [], []
    for s in args.servers:
        if s == "rwsgi-apache" and not APACHE_MODULE.exists():
            skipped.append(f"rwsgi-apache: {APACHE_MODULE} does not exist (the Apache module is not built)")
        elif s == "rwsgi-nginx" and not NGINX_MODULE.exists():
            skipped.append(f"rwsgi-nginx: {NGINX_MODULE} does not exist (run `make build`)")
        elif s == "mod_wsgi" and not MOD_WSGI_SO.exists():
            skipped.append(f"mod_wsgi: {MOD_WSGI_SO} does not exist (libapache2-mod-wsgi-py3)")
        else:
            servers.append(s)
    args.skip_reason = {line.split(":", 1)[0]: line.split(": ", 1)[1] for line in skipped}
    for line in skipped:
        log(f"SKIPPED {line}")
    workloads = [WL[w] for w in args.workloads]
    log(f"run dir {ctx.run}, app {ctx.app}")
    log(f"servers: {', '.join(servers)}; workloads: {', '.join(args.workloads)}; "
        f"{args.rounds} round(s) x {args.duration} s, warm-up {args.warmup} s")

    instances = {}   # (server, threads) -> Instance
    results = {}     # (workload, server) -> {"rounds": [...], "summary": ..., "note": ...}
    used_ports = set()
    interrupted = None
    try:
        # start everything at once (idle)
        for s in servers:
            for wl in workloads:
                if wl.static is False and s in STATIC_SERVERS:
                    continue
                t = SLEEP_THREADS if wl.many_threads else THREADS
                if (s, t) not in instances:
                    inst = Instance(ctx, s, t, free_port(used_ports))
                    instances[(s, t)] = inst
                    try:
                        start_server(inst)
                    except Exception as e:  # noqa: BLE001 - reported in the table
                        inst.error = f"failed to start: {e}"
        for inst in instances.values():
            if inst.error:
                continue
            try:
                inst.wait_ready()
                log(f"  {inst.tag:22} ready on :{inst.port}")
            except RuntimeError as e:
                inst.error = f"not serving: {e}"
                log(f"  {inst.tag:22} FAILED: {inst.error}")

        for wl in workloads:
            log(f"\n== {wl.name}: {wl.label} ({'POST' if wl.post else 'GET'} {wl.path}, c={wl.conns})")
            active = []
            for s in servers:
                if wl.static is False and s in STATIC_SERVERS:
                    continue
                inst = instances[(s, SLEEP_THREADS if wl.many_threads else THREADS)]
                cell = results[(wl.name, s)] = {"rounds": [], "inst": inst}
                if inst.error:
                    cell["note"] = inst.error.split(";")[0][:160]
                    continue
                try:
                    bad = check(inst, wl)
                except OSError as e:
                    bad = repr(e)
                if bad:
                    cell["note"] = f"wrong response: {bad}"
                    log(f"  {s:14} NOT MEASURED: {cell['note']}")
                    continue
                active.append(s)
            if args.warmup:
                for s in active:
                    run_wrk(results[(wl.name, s)]["inst"], wl, args.warmup)
            for rnd in range(args.rounds):
                k = rnd % max(1, len(active))
                for s in active[k:] + active[:k]:
                    cell = results[(wl.name, s)]
                    inst = cell["inst"]
                    if not inst.alive():
                        cell["note"] = "server died: " + inst.log_tails()[:160]
                        continue
                    r = run_wrk(inst, wl, args.duration)
                    # Requests wrk cut off at the end are still finishing: measure what
                    # the idle workers keep, not what those requests hold for a few more ms.
                    time.sleep(RSS_SETTLE_S)
                    r["rss_kib"] = inst.rss_kib()
                    cell["rounds"].append(r)
                    log(f"  round {rnd + 1} {s:14} {r['good_rps']:>10,.0f} req/s  p50 {r['p50_us'] / 1000:7.2f} ms"
                        f"  p99 {r['p99_us'] / 1000:7.2f} ms  RSS {r['rss_kib'] / 1024:7.1f} MiB  other CPU {r['other_cpu_pct']:3.0f}%"
                        + (f"  errors {fmt_errors({'errors': r['errors'], 'requests': r['requests'], 'error_kinds': {k: r[k] for k in ('connect', 'read', 'write', 'status', 'timeout') if r[k]}})}"
                           if r["errors"] else ""))
            for s in active:
                cell = results[(wl.name, s)]
                cell["summary"] = summarize(cell)
    except KeyboardInterrupt as e:
        interrupted = e
    finally:
        # a second Ctrl-C must not cut the clean-up short
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("\nstopping servers")
        stop_all(list(instances.values()))
        shutil.rmtree(ctx.appdir, ignore_errors=True)
        signal.signal(signal.SIGINT, old)
    if interrupted is not None:
        sys.exit(f"interrupted ({interrupted or 'Ctrl-C'}): every server was stopped; nothing written")

    elapsed = time.monotonic() - t0
    rows = table_rows(results, servers, workloads)
    goals = evaluate_goals(results, args.servers, args)
    log("\n" + text_table(rows))
    for line in skipped:
        log(f"SKIPPED {line}")
    if BASE[0]:
        log("\n" + ab_table(results, workloads))
    log("\nGoals:")
    for d, r, x in goals:
        log(f"  {r:4}  {d}: {x}")
    if args.write_files:
        write_results(ctx, results, args.servers, goals, skipped, args, started, elapsed, rows)
        plot(results, servers, workloads, BENCH / "results.png")
        log(f"\nwrote {BENCH / 'RESULTS.md'} and {BENCH / 'results.png'} ({elapsed / 60:.1f} min)")
    else:
        log(f"\n(partial run: RESULTS.md/results.png not written; --write forces it) ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
