"""Apache daemon mode end to end: mod_rwsgi with WSGIDaemonProcess groups in a real
apache2, which starts the real `rwsgi-daemon supervise` and its app processes (target/
modules). Requests go client -> Apache child -> group socket -> app process and back.

What is checked: the app runs in the group's processes as the group's user while Apache's
children hold no Python; the environ matches embedded mode key by key (the differences
are listed in EXPECTED_DIFFERENCES and docs/directives.md); request bodies (large,
chunked, lazy 100-continue), streaming, wsgi.file_wrapper and client aborts behave as in
embedded mode; `apache2 -t` starts nothing; config mistakes are refused naming the
option or group; mod_wsgi's usual lines load unchanged; a graceful restart under load
loses no request and keeps an unchanged group's processes; a stuck group holds at most
its cap of Apache threads while static files stay fast; request-timeout and
socket-timeout give 504 with the reason (and the stack) in the error log.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
import uuid

import pytest

from harness.apache import ApacheServer
from harness.common import system_user, wait_until
from harness.http import Closed, Conn, build_request, get, request, timed_stream

pytestmark = pytest.mark.server_side

TENANT = "rwsgi-t1"


@pytest.fixture(scope="session")
def tenant():
    """A system user for the group's processes."""
    return system_user(TENANT)


def token() -> str:
    return uuid.uuid4().hex[:12]


def start(s: ApacheServer, lines: list[str], **kw) -> ApacheServer:
    s.start_text(s.config_text(lines, **kw))
    return s


@pytest.fixture(scope="module")
def site(tenant):
    """One Apache, one group of 2 processes x 4 threads as the tenant, several apps."""
    s = ApacheServer()
    try:
        start(s, [
            f"WSGIDaemonProcess site processes=2 threads=4 user={TENANT} display-name=%{{GROUP}}",
            "WSGIScriptAlias /app {apps}/daemon_app.py process-group=site",
            "WSGIScriptAlias /env {apps}/environ_app.py process-group=site",
            "WSGIScriptAlias /body {apps}/body_app.py process-group=site",
            "WSGIScriptAlias /close {apps}/close_app.py process-group=site",
            "WSGIScriptAlias /files {apps}/file_wrapper_app.py process-group=site",
            "WSGIScriptAlias /stream {apps}/stream_app.py process-group=site",
        ])
        yield s
    finally:
        s.stop()
        s.cleanup()


def apache_children_have_python(s: ApacheServer) -> bool:
    """Whether a child started Python (libpython is mapped in every child, as mod_rwsgi
    links it; each child logs whether it started the interpreter)."""
    log = s.error_log()
    return not all(f"Python is not started in process {pid} " in log for pid in s.worker_pids())


# ---- serving ---------------------------------------------------------------------

def test_hello_runs_in_the_group_as_its_user(site, tenant):
    r = get(site.port, "/app/whoami")
    assert r.status == 200, r
    who = json.loads(r.body)
    assert who["pid"] in site.daemon_pids(), (who, site.daemon_pids())
    assert who["pid"] not in site.worker_pids()
    assert (who["uid"], who["euid"], who["gid"]) == (tenant.pw_uid, tenant.pw_uid, tenant.pw_gid)
    # 2 processes x 4 threads, as the group says (not Apache's MPM)
    assert who["multiprocess"] is True and who["multithread"] is True
    assert len(site.daemon_pids()) == 2
    # Apache's children proxy only: no Python in them.
    assert not apache_children_have_python(site)


def test_app_log_lines_reach_the_error_log_with_the_request(site):
    t = token()
    mark, _ = site.log_mark()
    r = get(site.port, f"/app/errors?tag={t}")
    assert r.status == 200
    text = site.wait_error_log(rf"a line for the error log: {t}", mark)
    assert text, site.error_log(mark)
    line = [l for l in text.splitlines() if t in l][0]
    # written by the Apache child in the request's context (client address), behind the
    # request's label (its log id, %L), once: the app process adds none
    assert "[client 127.0.0.1:" in line, line
    assert re.search(rf"rwsgi\[app=/app req=\S+\]: a line for the error log: {t}", line), line
    assert line.count("rwsgi[") == 1, line


def test_post_echo_large_and_chunked(site):
    body = bytes(range(256)) * (5 * 4096)   # 5 MiB
    r = request(site.port, "POST", "/body/echo", body=body, timeout=60)
    assert r.status == 200 and r.body == body
    r = request(site.port, "POST", "/body/echo", body=body, chunked=True, timeout=60)
    assert r.status == 200 and r.body == body
    r = request(site.port, "POST", "/body/sha", body=body[:300_001], chunked=True)
    out = json.loads(r.body)
    assert out["len"] == 300_001


def test_expect_100_continue_stays_lazy(site):
    # An app that never reads the body: no 100 Continue is sent, the answer comes
    # without the client ever sending its body.
    with Conn(site.port) as c:
        c.send(build_request("POST", "/app/", None, [
            ("Content-Length", "100000"), ("Expect", "100-continue"),
            ("Connection", "close")], host="x"))
        first = c.recv_some(timeout=10)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
    # An app that reads: 100 Continue first, then the echo.
    body = b"q" * 50_000
    with Conn(site.port) as c:
        c.send(build_request("POST", "/body/echo", None, [
            ("Content-Length", str(len(body))), ("Expect", "100-continue"),
            ("Connection", "close")], host="x"))
        interim = c.recv_some(timeout=10)
        assert interim.startswith(b"HTTP/1.1 100"), interim[:100]
        c.buf = interim[interim.index(b"\r\n\r\n") + 4:]
        c.send(body)
        r = c.read_response()
    assert r.status == 200 and r.body == body


def test_streaming_goes_out_as_produced(site):
    t0, arrivals = timed_stream(site.port, "/app/stream?n=10&delay=0.2")
    data = b"".join(d for _, d in arrivals)
    assert data.startswith(b"HTTP/1.1 200")
    first, last = arrivals[0][0] - t0, arrivals[-1][0] - t0
    assert first < 1.0, f"the head came after {first:.2f} s"
    assert last > 1.5, f"the whole stream came at once after {last:.2f} s"
    assert data.count(b"x" * 1000) >= 10 * 65


def test_file_wrapper_file_comes_through(site):
    blob = (site.data_dir / "blob.bin").read_bytes()
    t = token()
    r = get(site.port, f"/files/real?token={t}", timeout=30)
    assert r.status == 200 and r.body == blob and r.content_length == len(blob)
    assert site.wait_marker(t + ".closed") == "real"
    t = token()
    r = get(site.port, f"/files/offset?token={t}", timeout=30)
    assert r.status == 200 and r.body == blob[1000:]
    t = token()
    r = get(site.port, f"/files/real_nolength?token={t}", timeout=30)
    assert r.status == 200 and r.body == blob and r.complete


def test_client_abort_runs_close(site):
    t = token()
    c = Conn(site.port)
    c.send(build_request("GET", f"/close/x?token={t}&n=400&delay=0.02",
                         headers=[("Connection", "close")], host="x"))
    got = c.recv_some(timeout=10)
    assert got.startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    c.close()
    closed = site.wait_marker(t + ".closed", timeout=10)
    assert closed is not None, "close() was not called after the client left"
    produced = int(closed.split("=")[1])
    assert produced < 200, f"the app kept being iterated after the client left ({produced}/400)"
    assert get(site.port, "/app/").status == 200


# ---- environ ---------------------------------------------------------------------

# Keys whose value differs between embedded and daemon mode for the same request, and
# why (docs/directives.md repeats this list).
EXPECTED_DIFFERENCES = {
    # the group's name instead of "" (mod_wsgi sets it the same way)
    "mod_wsgi.process_group",
    # the group's processes x threads instead of Apache's MPM
    "wsgi.multiprocess", "wsgi.multithread",
    # per request / per process anyway
    "REMOTE_PORT", "mod_wsgi.request_start", "mod_wsgi.request_id", "_pid", "_thread",
}


def test_environ_matches_embedded_mode(apache):
    emb, dmn = apache(), apache()
    start(emb, ["WSGIScriptAlias /env {apps}/environ_app.py process-group=%{GLOBAL}"])
    start(dmn, ["WSGIDaemonProcess g threads=2",
                "WSGIScriptAlias /env {apps}/environ_app.py process-group=g"])
    path = "/env/sub/path?a=1&b=%20x"
    headers = [("X-Custom", "v1"), ("Cookie", "c=1"), ("Content-Type", "text/plain")]
    a = json.loads(request(emb.port, "POST", path, body=b"abc", headers=headers).body)
    b = json.loads(request(dmn.port, "POST", path, body=b"abc", headers=headers).body)
    # The servers differ by port and run dir only: those values are normalized.
    def norm(env, s):
        return {k: (v.replace(str(s.port), "PORT").replace(str(s.run), "RUN")
                    if isinstance(v, str) else v) for k, v in env.items()}
    a, b = norm(a, emb), norm(b, dmn)
    assert sorted(a) == sorted(b), (set(a) ^ set(b))
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= EXPECTED_DIFFERENCES, {k: (a[k], b[k]) for k in differ - EXPECTED_DIFFERENCES}
    assert (a["mod_wsgi.process_group"], b["mod_wsgi.process_group"]) == ("", "g")


# ---- configuration ---------------------------------------------------------------

def test_config_test_starts_no_process(apache):
    s = apache()
    ok, out = s.check_text(s.config_text([
        "WSGIDaemonProcess site processes=2 threads=4",
        "WSGIScriptAlias /app {apps}/daemon_app.py process-group=site",
    ]))
    assert ok, out
    assert s.supervisor_pid() is None
    assert not s.supervisor_dir.exists()


REFUSED = [
    # (lines, what the message must say)
    (["WSGIDaemonProcess site frobnicate=1"],
     r"WSGIDaemonProcess site: unknown option \"frobnicate\""),
    (["WSGIDaemonProcess site user=root"],
     r"WSGIDaemonProcess site: user=root is refused"),
    (["WSGIDaemonProcess site stack-size=524288"],
     r"WSGIDaemonProcess site: option \"stack-size\" is not supported by rwsgi"),
    (["WSGIDaemonProcess site user=rwsgi-no-such-user"],
     r"no user named \"rwsgi-no-such-user\" exists"),
    (["WSGIDaemonProcess site user=nobody group=rwsgi-no-such-group"],
     r"WSGIDaemonProcess site: no group named \"rwsgi-no-such-group\" exists \(group=\)"),
    (["WSGIDaemonProcess site user=nobody group=#0"],
     r"WSGIDaemonProcess site: group=\"#0\" is root's group \(gid 0\)"),
    (["WSGIDaemonProcess site threads=0"],
     r"option \"threads\" must be a whole number from 1"),
    (["WSGIProcessGroup nope"],
     r"WSGIProcessGroup nope at .*httpd.conf:\d+: no WSGIDaemonProcess defines a process group "
     r"named \"nope\""),
    (["WSGIScriptAlias /x {apps}/hello.py process-group=nope"],
     r"WSGIScriptAlias process-group=nope at .*httpd.conf:\d+: no WSGIDaemonProcess defines"),
    (["WSGIImportScript {apps}/hello.py process-group=nope application-group=%{GLOBAL}"],
     r"WSGIImportScript process-group=nope at .*: no WSGIDaemonProcess defines"),
    (["WSGIDaemonProcess site", "WSGIDaemonProcess site threads=2"],
     r"WSGIDaemonProcess site at .*httpd.conf:\d+: a group of that name is already defined"),
    (["WSGIDaemonProcess site",
      "WSGIScriptAliasMatch ^/m/(\\w+) {apps}/$1.py process-group=site"],
     r"\$N substitutions cannot run in a daemon process group yet"),
    (["<VirtualHost 127.0.0.1:1>", "ServerName a.example", "WSGIDaemonProcess site",
      "</VirtualHost>", "<VirtualHost 127.0.0.1:1>", "ServerName b.example",
      "WSGIProcessGroup site", "</VirtualHost>"],
     r"WSGIProcessGroup site at .*: process group \"site\" is defined in the virtual host "
     r"a.example and only that virtual host may use it"),
    (["WSGIProcessGroup %{ENV:GROUP}"],
     r"computed process group names are not supported"),
    (["WSGIDaemonProcess site", "WSGIDaemonProgram /nonexistent/rwsgi-daemon"],
     r"/nonexistent/rwsgi-daemon cannot be used.*set WSGIDaemonProgram"),
    (["WSGISocketPrefix /run/" + "d" * 100, "WSGIDaemonProcess site"],
     r"WSGIDaemonProcess site: the socket path /run/d+\.rwsgi/site\.sock is \d+ bytes, longer "
     r"than a unix socket allows \(107\); choose a shorter WSGISocketPrefix"),
]


@pytest.mark.parametrize("lines,words", REFUSED, ids=[
    "unknown-option", "user-root", "unsupported-option", "unknown-user", "unknown-group",
    "group-root", "bad-number",
    "undefined-group", "undefined-alias-group", "undefined-import-group", "defined-twice",
    "alias-match-substitution", "other-vhost", "computed-name", "missing-program",
    "socket-path-too-long"])
def test_config_mistakes_are_refused_by_name(apache, lines, words):
    s = apache()
    ok, out = s.check_text(s.config_text([f"WSGIScriptAlias /ok {s.apps_dir}/hello.py"] + lines))
    assert not ok, f"accepted:\n{out}"
    assert re.search(words, out, re.S), f"message does not say {words!r}:\n{out}"
    assert s.supervisor_pid() is None


def test_mod_wsgi_daemon_config_loads_unchanged(apache):
    """The lines of a typical mod_wsgi site, as they are."""
    s = apache()
    pydir = s.run / "srv"
    pydir.mkdir()
    pydir.chmod(0o755)
    (pydir / "helper_mod.py").write_text("VALUE = 'from python-path'\n")
    (pydir / "helper_mod.py").chmod(0o644)
    app = s.apps_dir / "uses_helper.py"
    app.write_text("import helper_mod, os\n"
                   "def application(environ, start_response):\n"
                   "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                   "    return [('%s %s %s' % (helper_mod.VALUE, environ['mod_wsgi.process_group'],"
                   " environ['mod_wsgi.application_group'] or '-')).encode()]\n")
    app.chmod(0o644)
    start(s, [
        f"WSGIDaemonProcess site processes=2 threads=15 display-name=%{{GROUP}} python-path={pydir}",
        "WSGIProcessGroup site",
        "WSGIApplicationGroup %{GLOBAL}",
        f"WSGIScriptAlias / {app}",
    ])
    r = get(s.port, "/")
    assert r.status == 200 and r.body == b"from python-path site -", r
    assert len(s.daemon_pids()) == 2
    assert "every WSGI application group runs in the main Python interpreter" in s.error_log()


def test_restrict_embedded_refuses_apps_outside_groups(apache):
    s = apache()
    start(s, ["WSGIRestrictEmbedded On",
              "WSGIDaemonProcess g threads=2",
              "WSGIScriptAlias /in {apps}/hello.py process-group=g",
              "WSGIScriptAlias /out {apps}/hello.py"])
    assert get(s.port, "/in").body == b"Hello, world!\n"
    mark, _ = s.log_mark()
    assert get(s.port, "/out").status == 500
    assert s.wait_error_log(r"WSGIRestrictEmbedded On: .*hello.py is not in a daemon process group",
                            mark), s.error_log(mark)
    assert not apache_children_have_python(s)


# ---- restarts, caps, timeouts ----------------------------------------------------

def test_graceful_restart_under_load_loses_nothing(apache):
    s = apache()
    lines = ["WSGIDaemonProcess site processes=2 threads=8",
             "WSGIScriptAlias /app {apps}/daemon_app.py process-group=site"]
    start(s, lines, threads=32)
    pids = s.daemon_pids()
    assert len(pids) == 2
    errors, done, retried = [], [], []
    stop = threading.Event()

    def client():
        """Requests on one keep-alive connection until told to stop or closed. An old
        child closes its idle keep-alive connections at a graceful restart: a request
        sent on a reused connection that closes before any byte of an answer is retried
        on a new one, as HTTP clients do (RFC 9112, 9.3.1); anything else is an error."""
        n = 0
        with Conn(s.port, timeout=30) as c:
            while not stop.is_set():
                c.send(build_request("GET", "/app/", host="x"))
                try:
                    r = c.read_response()
                except Closed as e:
                    if n > 0 and not c.buf and "b''" in str(e):
                        retried.append(1)
                        return n
                    raise
                if r.status != 200 or json.loads(r.body).get("hello") != "world":
                    errors.append(r)
                n += 1
                if r.closed:
                    break
        return n

    def looping_client():
        try:
            while not stop.is_set():
                done.append(client())
        except Exception as e:          # noqa: BLE001 - every failure counts
            errors.append(repr(e))

    threads = [threading.Thread(target=looping_client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    s.graceful()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert sum(done) >= 200, f"only {sum(done)} requests ran"
    # the group did not change: same processes
    assert s.daemon_pids() == pids


def test_stuck_group_holds_at_most_its_cap(apache):
    s = apache()
    start(s, ["WSGIDaemonProcess stuck processes=1 threads=2",
              "WSGIScriptAlias /stuck {apps}/sleep_app.py process-group=stuck"], threads=16)
    mark, _ = s.log_mark()
    results = []

    def stuck_request():
        t0 = time.monotonic()
        r = get(s.port, "/stuck?t=6", timeout=30)
        results.append((r.status, time.monotonic() - t0, r.header("retry-after")))

    threads = [threading.Thread(target=stuck_request) for _ in range(12)]
    for t in threads:
        t.start()
    # Static files stay fast while the group is stuck.
    assert wait_until(lambda: len(results) >= 10, 10), results
    times = []
    for _ in range(100):
        t0 = time.monotonic()
        r = get(s.port, "/static.txt")
        times.append(time.monotonic() - t0)
        assert r.status == 200
    for t in threads:
        t.join(30)
    times.sort()
    assert times[98] < 0.1, f"static p99 {times[98]:.3f} s while a group is stuck"
    served = [x for x in results if x[0] == 200]
    refused = [x for x in results if x[0] == 503]
    assert len(served) == 2 and len(refused) == 10, results
    assert all(d < 2.0 and ra == "5" for _, d, ra in refused), refused
    assert re.search(r"daemon process group stuck already holds 2 Apache threads",
                     s.error_log(mark)), s.error_log(mark)


def test_request_timeout_gives_504_and_the_stack(apache):
    s = apache()
    start(s, ["WSGIDaemonProcess slow threads=2 request-timeout=2",
              "WSGIDaemonProcess silent threads=2 socket-timeout=1",
              "WSGIScriptAlias /slow {apps}/daemon_app.py process-group=slow",
              "WSGIScriptAlias /silent {apps}/daemon_app.py process-group=silent"])
    mark, _ = s.log_mark()
    t0 = time.monotonic()
    r = get(s.port, "/slow/sleep?s=30", timeout=30)
    took = time.monotonic() - t0
    assert r.status == 504 and took < 10, (r, took)
    text = s.wait_error_log(r"request-timeout=2.*stuck_in_view", mark)
    assert text, s.error_log(mark)
    # socket-timeout: Apache gives up on a silent group (504 before any head)
    mark, _ = s.log_mark()
    t0 = time.monotonic()
    r = get(s.port, "/silent/sleep?s=5", timeout=30)
    assert r.status == 504 and time.monotonic() - t0 < 4, r
    assert s.wait_error_log(r"daemon process group silent sent nothing for socket-timeout=1 s",
                            mark), s.error_log(mark)



def test_script_reloading_off_keeps_the_process(apache):
    """A touched script recycles its group's process (test_daemon_supervisor), unless
    WSGIScriptReloading is Off: as with mod_wsgi, the script is then never reloaded."""
    s = apache()
    script = s.apps_dir / "off.py"
    app = ("import os\n"
           "def application(environ, start_response):\n"
           "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
           "    return [b'version 1 %d' % os.getpid()]\n")
    script.write_text(app)
    script.chmod(0o644)
    start(s, ["WSGIDaemonProcess off threads=2", "WSGIScriptReloading Off",
              "WSGIScriptAlias /off {apps}/off.py process-group=off"])
    first = get(s.port, "/off").body
    assert first.startswith(b"version 1 "), first
    script.write_text(app.replace("version 1", "version 2"))
    st = script.stat()
    os.utime(script, (st.st_atime, st.st_mtime + 5))
    # A process watches its scripts every 250 ms: 2 s is 8 chances to (wrongly) recycle.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert get(s.port, "/off").body == first, \
            "WSGIScriptReloading Off: the script was reloaded or its process recycled"
        time.sleep(0.1)
