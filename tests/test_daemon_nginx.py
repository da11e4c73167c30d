"""Daemon mode in nginx: locations in a `wsgi_daemon` process group are proxied, on the
event loop, to the group's app processes (real nginx, real `rwsgi-daemon supervise` and
`rwsgi-daemon app`, started by the module from nginx's master).

Documented difference between embedded and daemon environ: none beyond what the process
layout says, `wsgi.multiprocess` / `wsgi.multithread` (the group's processes= and
threads= in daemon mode, nginx's workers and wsgi_threads embedded)."""
import http.client
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

from harness import http as h
from harness.common import HOST, Mount, free_port, system_user, wait_until

pytestmark = pytest.mark.server_side

USERS = ("rwsgi-t1", "rwsgi-t2")


@pytest.fixture(scope="session")
def tenants():
    """System users the groups run as."""
    return {name: system_user(name) for name in USERS}


def group_mount(prefix, group, script="daemon_app.py", **kw):
    return Mount(prefix, script, extra=[f"wsgi_process_group {group};"] + kw.pop("extra", []),
                 validate=False, **kw)


def get_json(port, path):
    r = h.get(port, path)
    assert r.status == 200, r
    return json.loads(r.body)


# ---- configuration ----------------------------------------------------------------------

def test_config_test_starts_no_process(nginx, tenants):
    s = nginx()
    ok, out = s.check_config([group_mount("/a", "g1")], daemons={"g1": "user=rwsgi-t1 processes=2"})
    assert ok, out
    # Nothing ran: no supervisor for this directory, not even its directory.
    time.sleep(0.5)
    assert s.supervisor_pids() == []
    assert not s.daemon_dir.exists()


@pytest.mark.parametrize("daemons, mounts, needle, words", [
    ({"g1": "frobnicate=1"}, [], "wsgi_daemon g1", r'unknown option "frobnicate"'),
    ({"g1": "user=root"}, [], "wsgi_daemon g1", r"user=root is refused"),
    # The accounts are looked up while the config is read, as apache2 -t does.
    ({"g1": "user=rwsgi-t-nosuchuser"}, [], "wsgi_daemon g1",
     r'no user named "rwsgi-t-nosuchuser" exists \(user=\)'),
    ({"g1": "user=nobody group=rwsgi-t-nosuchgroup"}, [], "wsgi_daemon g1",
     r'no group named "rwsgi-t-nosuchgroup" exists \(group=\)'),
    ({"g1": "user=nobody group=root"}, [], "wsgi_daemon g1", r'group="root" is root\'s group \(gid 0\)'),
    ({"g1": "stack-size=524288"}, [], "wsgi_daemon g1", r'"stack-size" is not supported'),
    ({"g1": "threads=0"}, [], "wsgi_daemon g1", r'"threads" must be'),
    ({"g1": ""}, [group_mount("/a", "nope")], "wsgi_process_group nope",
     r'no wsgi_daemon "nope" is defined'),
    ({"g1": ""}, [group_mount("/a", "../x")], "wsgi_process_group ../x",
     r"use letters, digits"),
])
def test_config_refusals_name_what_is_wrong(nginx, daemons, mounts, needle, words):
    s = nginx()
    ok, out = s.check_config(mounts, daemons=daemons)
    assert not ok, out
    assert re.search(words, out), out
    assert str(s.conf_path) in out, out


def test_group_defined_twice_is_refused(nginx):
    s = nginx()
    ok, out = s.check_config([], daemons={"g1": ""}, http_extra=["wsgi_daemon g1 threads=2;"])
    assert not ok and 'wsgi_daemon "g1" is defined twice' in out, out


# ---- requests -----------------------------------------------------------------------------

@pytest.fixture
def daemon_server(nginx, tenants):
    """nginx with group g1 (rwsgi-t1) and g2 (rwsgi-t2), the same app embedded at /emb."""
    s = nginx()
    mounts = [
        group_mount("/g1", "g1"),
        group_mount("/g2", "g2"),
        Mount("/emb", "daemon_app.py", validate=False),
        group_mount("/fw", "g1", script="file_wrapper_app.py"),
        group_mount("/env", "g1", script="environ_app.py"),
    ]
    # The same app embedded, at the same URL, in a second server on a port of its own.
    s.embedded_port = free_port()
    embedded = (f"server {{ listen {HOST}:{s.embedded_port}; server_name localhost; "
                f"location /env {{ wsgi_app {{apps}}/environ_app.py; }} }}")
    s.start(mounts, daemons={"g1": "user=rwsgi-t1 processes=2 threads=4",
                             "g2": "user=rwsgi-t2 threads=4"}, workers=2,
            http_extra=[embedded])
    assert wait_until(lambda: len(s.app_pids()) >= 3, 30), s.log_tail()
    return s


def test_hello_runs_in_its_group_as_its_user(daemon_server, tenants):
    s = daemon_server
    for prefix, user in (("/g1", "rwsgi-t1"), ("/g2", "rwsgi-t2")):
        who = get_json(s.port, f"{prefix}/whoami")
        assert who["uid"] == tenants[user].pw_uid
        assert who["euid"] == tenants[user].pw_uid
        assert who["pid"] in s.app_pids(user)
        assert get_json(s.port, f"{prefix}/")["hello"] == "world"
    # The embedded location runs in an nginx worker.
    assert get_json(s.port, "/emb/whoami")["pid"] in s.worker_pids()


def test_environ_matches_embedded_key_by_key(daemon_server):
    s = daemon_server
    url = "/env/x%20y?a=1&b=%20"
    hs = {"X-Custom": "v1", "Cookie": "a=b", "Accept-Encoding": "gzip"}
    d = json.loads(h.get(s.port, url, headers=hs).body)
    e = json.loads(h.get(s.embedded_port, url, headers=hs).body)
    # The port and connection, and who ran it, may differ; nothing else.
    differ = {"HTTP_HOST", "SERVER_PORT", "REMOTE_PORT", "_pid", "_thread",
              "wsgi.multiprocess", "wsgi.multithread"}
    assert sorted(d) == sorted(e)
    assert {k: d[k] for k in d if k not in differ} == {k: e[k] for k in e if k not in differ}
    assert d["REQUEST_URI"] == url and d["SCRIPT_NAME"] == "/env" and d["PATH_INFO"] == "/x y"
    assert d["HTTP_X_CUSTOM"] == "v1"
    assert d["_pid"] in s.app_pids("rwsgi-t1") and e["_pid"] in s.worker_pids()
    # Daemon mode: the group's 2 processes of 4 threads.
    assert d["wsgi.multiprocess"] is True and d["wsgi.multithread"] is True


def test_post_echo_large_and_chunked(daemon_server):
    s = daemon_server
    body = os.urandom(3 * 1024 * 1024 + 17)   # spilled to a temp file by nginx
    r = h.request(s.port, "POST", "/g1/echo", body)
    assert r.status == 200 and r.body == body
    r = h.request(s.port, "POST", "/g1/echo", body[:200_000], chunked=True)
    assert r.status == 200 and r.body == body[:200_000]
    r = h.request(s.port, "POST", "/g1/echo", b"")
    assert r.status == 200 and r.body == b""


def test_streamed_response_to_a_slow_client(daemon_server):
    s = daemon_server
    n = 100   # 100 chunks of 64 KiB
    with h.Conn(s.port, rcvbuf=16384) as c:
        c.send(h.build_request("GET", f"/g2/stream?n={n}&delay=0", None,
                               [("Connection", "close")], host=f"{HOST}:{s.port}"))
        got = b""
        while True:
            data = c.recv_some()
            if not data:
                break
            got += data
            if len(got) < 2_000_000:
                time.sleep(0.01)   # slow at first: the app must wait, not pile up in nginx
    head, _, body = got.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    # chunked framing: decode and count
    data, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data += rest[:size]
        rest = rest[size + 2:]
    assert data == b"x" * 65536 * n


def test_file_wrapper_passes_the_file(daemon_server):
    s = daemon_server
    blob = (s.data_dir / "blob.bin").read_bytes()
    r = h.get(s.port, "/fw/real?token=t1")
    assert r.status == 200 and r.body == blob and r.complete
    r = h.get(s.port, "/fw/offset?token=t2")
    assert r.status == 200 and r.body == blob[1000:]
    assert s.wait_marker("t1.closed") == "real"
    r = h.get(s.port, "/fw/real_nolength?token=t3")
    assert r.status == 200 and r.body == blob


def test_client_abort_runs_the_apps_close(daemon_server):
    s = daemon_server
    marker = s.marker("abort")
    with h.Conn(s.port) as c:
        c.send(h.build_request("GET", f"/g1/stream?n=100000&delay=0.02&marker={marker}", None,
                               [("Connection", "close")], host=f"{HOST}:{s.port}"))
        assert c.recv_some()
    sent = s.wait_marker("abort", timeout=10)
    assert sent is not None, s.log_tail()
    assert int(sent) < 100000


def test_wsgi_errors_reach_the_error_log_with_the_request(daemon_server):
    s = daemon_server
    mark, _ = s.log_mark()
    assert get_json(s.port, "/g1/errors?tag=abc123")["logged"] is True
    # Behind the request's label, as an embedded request's line (tests/test_logs.py).
    assert s.wait_error_log(r"rwsgi\[app=/g1 req=[0-9a-f]{32}\]: a line for the error log: "
                            r"abc123.*request: \"GET /g1/errors\?tag=abc123", mark), s.error_log(mark)


def test_missing_group_socket_is_503_at_once(daemon_server):
    s = daemon_server
    sock = s.daemon_dir / "g2.sock"
    hidden = s.daemon_dir / "g2.sock.hidden"
    os.rename(sock, hidden)
    try:
        mark, _ = s.log_mark()
        t0 = time.monotonic()
        r = h.get(s.port, "/g2/")
        assert r.status == 503 and time.monotonic() - t0 < 1
        assert s.wait_error_log(r"process group g2: cannot connect to .*g2\.sock", mark)
    finally:
        os.rename(hidden, sock)
    assert h.get(s.port, "/g2/").status == 200


# ---- reloads -------------------------------------------------------------------------------

class Load:
    """Keep-alive clients sending requests in a loop until stopped; counts failures."""

    def __init__(self, port, paths, clients=8):
        self.port, self.paths = port, paths
        self.stop_flag = threading.Event()
        self.ok = 0
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, i):
        conn = None
        used = 0          # requests answered on the current connection
        n = 0
        while not self.stop_flag.is_set():
            path = self.paths[(i + n) % len(self.paths)]
            n += 1
            answered = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                    used = 0
                conn.request("GET", path)
                resp = conn.getresponse()
                answered = True
                body = resp.read()
                if resp.status != 200 or b"world" not in body:
                    raise AssertionError(f"{path}: {resp.status} {body[:200]!r}")
                used += 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                with self.lock:
                    self.ok += 1
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # nginx closes the idle keep-alive connections of a retiring worker; a
                # request written to one at that moment is never read (a clean close or, with
                # the request unread, a reset), and HTTP clients send it again on a new
                # connection (RFC 9112 9.3.1). Anything else -- a first request, or a
                # connection that breaks after the answer began -- is a lost request.
                if conn is not None:
                    conn.close()
                conn = None
                if answered or used == 0:
                    with self.lock:
                        self.errors.append(f"{path}: {e!r}")
            except Exception as e:   # noqa: BLE001 - every failure is counted
                with self.lock:
                    self.errors.append(f"{path}: {e!r}")
                if conn is not None:
                    conn.close()
                conn = None

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)


def test_reload_under_load_loses_nothing(nginx, tenants):
    s = nginx()
    mounts = [group_mount("/g1", "g1"), group_mount("/g2", "g2")]
    daemons = {"g1": "user=rwsgi-t1 threads=4", "g2": "user=rwsgi-t2 threads=4"}
    s.start(mounts, daemons=daemons, workers=2)
    assert wait_until(lambda: len(s.app_pids()) == 2, 30), s.log_tail()
    g1, g2 = s.app_pids("rwsgi-t1"), s.app_pids("rwsgi-t2")
    with Load(s.port, ["/g1/", "/g2/"]) as load:
        wait_until(lambda: load.ok > 100, 20)
        s.reload()                                   # unchanged config
        wait_until(lambda: load.ok > 300, 20)
        s.reload(mounts, daemons={**daemons, "g2": "user=rwsgi-t2 threads=5"}, workers=2)
        start = load.ok
        wait_until(lambda: load.ok > start + 200, 20)
    assert load.errors == [], load.errors[:10]
    assert load.ok > 300
    assert s.app_pids("rwsgi-t1") == g1, "an unchanged group keeps its processes"
    assert wait_until(lambda: (p := s.app_pids("rwsgi-t2")) and not set(p) & set(g2), 30), \
        "a changed group gets new processes"


def test_binary_upgrade_loses_nothing(nginx, tenants):
    s = nginx()
    mounts = [group_mount("/g1", "g1")]
    s.start(mounts, daemons={"g1": "user=rwsgi-t1 threads=4"}, workers=1)
    assert wait_until(lambda: len(s.app_pids()) == 1, 30), s.log_tail()
    apps = s.app_pids()
    old_master = s.master_pid
    with Load(s.port, ["/g1/"]) as load:
        wait_until(lambda: load.ok > 100, 20)
        os.kill(old_master, signal.SIGUSR2)
        assert wait_until(lambda: (s.master_pid or old_master) != old_master, 10), s.log_tail()
        new_master = s.master_pid
        assert wait_until(lambda: len(s.worker_pids()) >= 1, 10)
        os.kill(old_master, signal.SIGWINCH)
        time.sleep(0.5)
        start = load.ok
        wait_until(lambda: load.ok > start + 100, 20)
        os.kill(old_master, signal.SIGQUIT)
        assert wait_until(lambda: not os.path.exists(f"/proc/{old_master}"), 20)
        start = load.ok
        wait_until(lambda: load.ok > start + 100, 20)
    assert load.errors == [], load.errors[:10]
    assert s.master_pid == new_master
    assert s.app_pids() == apps, "the group keeps its processes across the upgrade"


# ---- isolation --------------------------------------------------------------------------------

def test_stuck_group_does_not_slow_others(nginx, tenants):
    s = nginx()
    mounts = [group_mount("/stuck", "stuck"), group_mount("/g2", "g2")]
    s.start(mounts, daemons={"stuck": "user=rwsgi-t1 threads=2 listen-backlog=50",
                             "g2": "user=rwsgi-t2 threads=4"}, workers=1)
    assert wait_until(lambda: len(s.app_pids()) == 2, 30), s.log_tail()
    worker = s.worker_pids()[0]

    def threads_of(pid):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))

    before = threads_of(worker)
    assert before == 1, "a worker whose locations all run in groups starts no Python threads"
    stuck = []
    for _ in range(150):
        c = socket.create_connection((HOST, s.port))
        c.sendall(b"GET /stuck/sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append(c)
    try:
        time.sleep(1)
        times = {"/g2/": [], "/static.txt": []}
        for _ in range(100):
            for path, t in times.items():
                t0 = time.monotonic()
                r = h.get(s.port, path)
                t.append(time.monotonic() - t0)
                assert r.status == 200, r
        for path, t in times.items():
            t.sort()
            assert t[98] < 0.1, f"{path}: p99 {t[98]:.3f} s"
        assert threads_of(worker) == before
    finally:
        for c in stuck:
            c.close()


def test_request_timeout_is_504_with_the_apps_stack(nginx, tenants):
    s = nginx()
    s.start([group_mount("/g1", "g1")], daemons={"g1": "user=rwsgi-t1 request-timeout=2"})
    assert wait_until(lambda: len(s.app_pids()) == 1, 30), s.log_tail()
    mark, _ = s.log_mark()
    t0 = time.monotonic()
    r = h.get(s.port, "/g1/sleep?s=20")
    assert r.status == 504, r
    assert time.monotonic() - t0 < 10
    assert s.wait_error_log(r"stuck_in_view", mark, timeout=10), s.error_log(mark)


# ---- failures ---------------------------------------------------------------------------------

def test_start_with_a_group_that_cannot_run_is_refused(nginx):
    s = nginx()
    with pytest.raises(AssertionError) as e:
        s.start([group_mount("/g1", "g1")], daemons={"g1": "user=rwsgi-t-nosuchuser"})
    assert 'no user named "rwsgi-t-nosuchuser" exists' in str(e.value), str(e.value)
    assert s.master_pid is None or not os.path.exists(f"/proc/{s.master_pid}")
    assert s.supervisor_pids() == []


def test_start_refused_by_the_daemon_setup_names_why(nginx, tenants):
    """What only the master can tell when it sets the groups up (here: a socket path too
    long for a unix socket) stops nginx from starting, with the reason in its log."""
    s = nginx()
    long_dir = s.run / ("d" * 100)
    with pytest.raises(AssertionError) as e:
        s.start([group_mount("/g1", "g1")], daemons={"g1": "user=rwsgi-t1"},
                http_extra=[f"wsgi_socket_prefix {long_dir};"])
    assert "nginx does not start" in s.error_log(), str(e.value)
    assert "set a shorter wsgi_socket_prefix" in s.error_log()
    assert s.master_pid is None or not os.path.exists(f"/proc/{s.master_pid}")
    assert not long_dir.exists()


def test_reload_with_a_group_that_cannot_run_keeps_the_old_config(nginx, tenants):
    s = nginx()
    mounts = [group_mount("/g1", "g1")]
    s.start(mounts, daemons={"g1": "user=rwsgi-t1"})
    assert wait_until(lambda: len(s.app_pids()) == 1, 30), s.log_tail()
    workers, apps = s.worker_pids(), s.app_pids()
    mark, _ = s.log_mark()
    # `nginx -s reload` reads the new config first and refuses it...
    with pytest.raises(AssertionError) as e:
        s.reload(mounts, daemons={"g1": "user=rwsgi-t-nosuchuser"}, wait=False)
    assert 'no user named "rwsgi-t-nosuchuser" exists' in str(e.value), str(e.value)
    # ...and so does the master, sent SIGHUP without it.
    s.signal(signal.SIGHUP)
    assert s.wait_error_log(r'no user named "rwsgi-t-nosuchuser" exists', mark, timeout=10), \
        s.error_log(mark)
    assert s.worker_pids() == workers and s.app_pids() == apps
    assert get_json(s.port, "/g1/whoami")["uid"] == tenants["rwsgi-t1"].pw_uid


def test_app_process_dying_mid_request_is_502(nginx, tenants):
    s = nginx()
    s.start([group_mount("/g1", "g1")], daemons={"g1": "user=rwsgi-t1"})
    assert wait_until(lambda: len(s.app_pids()) == 1, 30), s.log_tail()
    mark, _ = s.log_mark()
    r = h.get(s.port, "/g1/crash")
    assert r.status == 502, r
    assert s.wait_error_log(r"process group g1: the app process closed the connection before "
                            r"the response ended; answering 502", mark), s.error_log(mark)
    # The supervisor starts it again; the group serves.
    assert wait_until(lambda: h.get(s.port, "/g1/").status == 200, 20)


def test_socket_timeout_is_504(nginx, tenants):
    s = nginx()
    s.start([group_mount("/g1", "g1")], daemons={"g1": "user=rwsgi-t1 socket-timeout=1"})
    assert wait_until(lambda: len(s.app_pids()) == 1, 30), s.log_tail()
    mark, _ = s.log_mark()
    t0 = time.monotonic()
    r = h.get(s.port, "/g1/sleep?s=4")
    assert r.status == 504, r
    assert 0.9 < time.monotonic() - t0 < 3.5
    assert s.wait_error_log(r"process group g1: the app process sent nothing for "
                            r"socket-timeout=1 s; answering 504", mark), s.error_log(mark)
