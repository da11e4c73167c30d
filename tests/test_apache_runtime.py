"""Apache only: mod_rwsgi at runtime. WSGIPythonHome with a real virtualenv (a package
pip-installed into it), script reloading on and off, WSGIImportScript preloading,
WSGIScriptAliasMatch substitution, AddHandler wsgi-script, Basic auth and HTTPS in the
environ, WSGIMapHEADToGET, chunked bodies over LimitRequestBody, sendfile, the worker and
prefork MPMs, and repeated graceful / full restarts."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from harness.apache import MODDIR, ApacheServer
from harness.common import HOST, pid_alive, wait_until
from harness.http import Conn, build_request, encode_chunked, get, request
from harness.wheel import build_wheel

# Left out of the validated pass (RWSGI_VALIDATE=1 in `make test`):
# Apache runtime features: hand-written configs, not harness mounts.
pytestmark = pytest.mark.server_side

CRASH = re.compile(r"exit signal|exited on signal|Segmentation fault|panicked|core dumped", re.I)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def start(s: ApacheServer, site: list[str], workers: int = 1, threads: int = 4,
          mpm: str = "event", modules: list[str] = ()):
    loads = [f"LoadModule {m}_module {MODDIR}/mod_{m}.so" for m in modules]
    grant = [f"<Directory {s.run}>", "    Require all granted", "</Directory>"]
    s.start_text("\n".join(s.base_lines(workers, threads, mpm) + loads + grant + site) + "\n",
                 workers=workers)
    return s


def env_of(s, path, **kw):
    r = get(s.port, path, **kw)
    assert r.status == 200, (r, s.log_tail())
    return json.loads(r.body)


def assert_no_crash(s):
    found = [l for l in s.error_log().splitlines() if CRASH.search(l)]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- Python environment

VENV_APP = """\
    import sys
    import rwsgi_localpkg

    def application(environ, start_response):
        body = "%s|%s|%s" % (rwsgi_localpkg.MESSAGE, sys.prefix, rwsgi_localpkg.__file__)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]
    """


def test_python_home_venv_with_pip_installed_package(apache):
    s = apache()
    venv = s.run / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    # As in a venv of Python 3.12+, which has pip but no setuptools (a no-op there).
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y",
                    "setuptools"], check=True, timeout=120, capture_output=True)
    # A wheel, not a setup.py project: installing it needs no build backend (so no
    # setuptools) and no network.
    wheel = build_wheel(s.run / "dist", "rwsgi-localpkg", "1.0",
                        {"rwsgi_localpkg/__init__.py": 'MESSAGE = "installed by pip"\n'})
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                        "--disable-pip-version-check", str(wheel)],
                       timeout=120, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    for root, dirs, files in os.walk(s.run):
        for d in dirs:
            Path(root, d).chmod(0o755)
    app = write(s.run / "site" / "venv_app.py", VENV_APP)
    # the package exists only in the venv, not for /usr/bin/python3
    assert subprocess.run(["/usr/bin/python3", "-c", "import rwsgi_localpkg"],
                          capture_output=True).returncode != 0
    start(s, [f"WSGIPythonHome {venv}", f"WSGIScriptAlias /venv {app}"])
    r = get(s.port, "/venv")
    assert r.status == 200, s.log_tail()
    message, prefix, where = r.body.decode().split("|")
    assert message == "installed by pip"
    assert prefix == str(venv)
    assert where.startswith(str(venv / "lib"))


RELOAD_APP = """\
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"version 1\\n"]
    """


def bump(script: Path, old: bytes, new: bytes):
    script.write_bytes(script.read_bytes().replace(old, new))
    st = script.stat()
    os.utime(script, (st.st_atime, st.st_mtime + 5))


@pytest.mark.embedded_only("WSGIScriptReloading in a <Directory> section is read per request; a "
                           "daemon group takes it from the server level only (not yet)")
def test_script_reloading_on_and_off(apache):
    s = apache()
    on = write(s.run / "on" / "app.py", RELOAD_APP)
    off = write(s.run / "off" / "app.py", RELOAD_APP)
    start(s, [f"WSGIScriptAlias /on {on}", f"WSGIScriptAlias /off {off}",
              f"<Directory {s.run}/off>", "    WSGIScriptReloading Off", "</Directory>"],
          threads=2)
    assert get(s.port, "/on").body == b"version 1\n"
    assert get(s.port, "/off").body == b"version 1\n"
    bump(on, b"version 1", b"version 2")
    bump(off, b"version 1", b"version 2")
    assert get(s.port, "/on").body == b"version 2\n"
    env_seen = [get(s.port, "/off").body for _ in range(5)]
    assert env_seen == [b"version 1\n"] * 5, "WSGIScriptReloading Off reloaded the script"


PRELOADED = """\
    import os
    MARKERS = os.path.join(os.path.dirname(__file__), os.pardir, "markers")
    with open(os.path.join(MARKERS, "%s-%d" % (NAME, os.getpid())), "a") as f:
        f.write("imported\\n")

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    """


@pytest.mark.embedded_only("which Apache child imports a script, and when (preloaded or on its "
                           "first request); a daemon group's processes import all its apps at start")
def test_import_script_and_grouped_alias_are_preloaded(apache):
    s = apache()
    imported = write(s.apps_dir / "imported.py", 'NAME = "imp"\n' + textwrap.dedent(PRELOADED))
    grouped = write(s.apps_dir / "grouped.py", 'NAME = "grp"\n' + textwrap.dedent(PRELOADED))
    lazy = write(s.apps_dir / "lazy.py", 'NAME = "lazy"\n' + textwrap.dedent(PRELOADED))
    start(s, [
        f"WSGIImportScript {imported} process-group=%{{GLOBAL}} application-group=%{{GLOBAL}}",
        f"WSGIScriptAlias /imported {imported}",
        f"WSGIScriptAlias /grouped {grouped} process-group=%{{GLOBAL}} application-group=%{{GLOBAL}}",
        f"WSGIScriptAlias /lazy {lazy}",
    ], workers=2, threads=2)
    pids = s.worker_pids()
    assert len(pids) == 2
    # loaded in every child at startup, before any request
    for pid in pids:
        for name in ("imp", "grp"):
            assert s.wait_marker(f"{name}-{pid}"), f"{name} not preloaded in {pid}:\n{s.log_tail()}"
    assert not list(s.markers.glob("lazy-*")), "a plain alias was loaded before its first request"
    # requests use the preloaded module: it was executed once per child, not again
    for path, name in (("/imported", "imp"), ("/grouped", "grp")):
        for _ in range(4):
            pid = int(get(s.port, path).body)
            assert s.marker(f"{name}-{pid}").read_text() == "imported\n"
    assert get(s.port, "/lazy").status == 200 and list(s.markers.glob("lazy-*"))
    assert re.search(r"rwsgi(\[app=\S+\])?: preloaded .*imported\.py", s.error_log())


# ---------------------------------------------------------------- URL mapping

@pytest.mark.embedded_only("a daemon group runs only the scripts configured for it when Apache started (docs/directives.md, WSGIDaemonProcess); this one is chosen per request")
def test_script_alias_match_substitutes_groups(apache):
    s = apache()
    start(s, [f"WSGIScriptAliasMatch ^/apps/([a-z_]+) {s.apps_dir}/$1.py"])
    assert get(s.port, "/apps/hello").body == b"Hello, world!\n"
    env = env_of(s, "/apps/environ_app/x/y?q=1")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == \
        ("/apps/environ_app", "/x/y", "q=1")
    assert env["SCRIPT_FILENAME"] == f"{s.apps_dir}/environ_app.py"
    mark, _ = s.log_mark()
    assert get(s.port, "/apps/no_such_app").status == 404
    # the pattern matched, and the script it names is missing (not an unmatched URL)
    assert s.wait_error_log(r"rwsgi\[app=\S+ req=\S+\]: target WSGI script not found or unable to stat: "
                            rf"{re.escape(str(s.apps_dir))}/no_such_app\.py", mark), s.log_tail()
    mark, _ = s.log_mark()
    assert get(s.port, "/other").status == 404
    assert not re.search(r"rwsgi(\[|:)", s.error_log(mark)), "an unmatched URL reached mod_rwsgi"


@pytest.mark.embedded_only("a daemon group runs only the scripts configured for it when Apache started (docs/directives.md, WSGIDaemonProcess); this one is chosen per request")
def test_addhandler_wsgi_script_needs_execcgi(apache):
    s = apache()
    for d in ("handlers", "noexec"):
        write(s.run / d / "app.wsgi", (s.apps_dir / "environ_app.py").read_text())
    start(s, [
        "TypesConfig /etc/mime.types",
        f"Alias /h {s.run}/handlers",
        f"<Directory {s.run}/handlers>", "    Options +ExecCGI", "    AddHandler wsgi-script .wsgi",
        "</Directory>",
        f"Alias /noexec {s.run}/noexec",
        f"<Directory {s.run}/noexec>", "    Options -ExecCGI", "    AddHandler wsgi-script .wsgi",
        "</Directory>",
    ], modules=["alias", "mime"])
    env = env_of(s, "/h/app.wsgi/extra/path?x=1")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == \
        ("/h/app.wsgi", "/extra/path", "x=1")
    assert env["mod_wsgi.request_handler"] == "wsgi-script"
    mark, _ = s.log_mark()
    assert get(s.port, "/noexec/app.wsgi").status == 403
    assert s.wait_error_log(r"rwsgi\[app=\S+ req=\S+\]: Options ExecCGI is off in this directory: "
                            rf"{re.escape(str(s.run))}/noexec/app\.wsgi", mark), s.log_tail()


# ---------------------------------------------------------------- environ extras

def test_basic_auth_user_and_https_scheme(apache):
    s = apache()
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    write(s.run / "htpasswd", f"alice:{{SHA}}{digest}\n")
    key, cert = s.run / "key.pem", s.run / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=127.0.0.1", "-days", "2"],
                   check=True, capture_output=True, timeout=60)
    start(s, [
        "SSLEngine on", f"SSLCertificateFile {cert}", f"SSLCertificateKeyFile {key}",
        f"WSGIScriptAlias /private {s.apps_dir}/environ_app.py",
        f"WSGIScriptAlias /public {s.apps_dir}/environ_app.py",
        "<Location /private>", "    AuthType Basic", '    AuthName "rwsgi"',
        f"    AuthUserFile {s.run}/htpasswd", "    Require valid-user", "</Location>",
    ], modules=["ssl", "socache_shmcb", "auth_basic", "authn_core", "authn_file", "authz_user"])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def fetch(path, headers=None):
        c = http.client.HTTPSConnection(HOST, s.port, context=ctx, timeout=20)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    status, _ = fetch("/private/x")
    assert status == 401
    creds = base64.b64encode(b"alice:s3cret").decode()
    status, body = fetch("/private/x", {"Authorization": f"Basic {creds}"})
    assert status == 200, s.log_tail()
    env = json.loads(body)
    assert env["REMOTE_USER"] == "alice" and env["AUTH_TYPE"] == "Basic"
    assert "HTTP_AUTHORIZATION" not in env
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["REQUEST_SCHEME"] == "https" and env["SERVER_PORT"] == str(s.port)
    env = json.loads(fetch("/public")[1])
    assert "REMOTE_USER" not in env and env["wsgi.url_scheme"] == "https"


METHOD_APP = """\
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("X-Method", environ["REQUEST_METHOD"])])
        return [b"body of " + environ["REQUEST_METHOD"].encode()]
    """


def test_map_head_to_get(apache):
    s = apache()
    app = write(s.run / "m" / "method.py", METHOD_APP)
    start(s, [f"WSGIScriptAlias /on {app}", f"WSGIScriptAlias /off {app}",
              "<Location /on>", "    WSGIMapHEADToGET On", "</Location>",
              "<Location /off>", "    WSGIMapHEADToGET Off", "</Location>"])
    with Conn(s.port) as c:
        on = c.request("HEAD", "/on")
        off = c.request("HEAD", "/off")
        get_ = c.request("GET", "/off")
    assert on.header("X-Method") == "GET" and on.body == b""
    assert off.header("X-Method") == "HEAD" and off.body == b""
    assert get_.body == b"body of GET"


# ---------------------------------------------------------------- bodies and files

def test_chunked_body_over_limit_is_413(apache):
    s = apache()
    start(s, [f"WSGIScriptAlias /body {s.apps_dir}/body_app.py",
              "<Location /body>", "    LimitRequestBody 1024", "</Location>"])
    with Conn(s.port) as c:
        c.send(build_request("POST", "/body/read", b"x" * 5000, host="x", chunked=True))
        r = c.read_response()
    assert r.status == 413, r
    with Conn(s.port) as c:
        c.send(build_request("POST", "/body/read", b"y" * 1000, host="x", chunked=True))
        r = c.read_response()
    assert r.status == 200 and json.loads(r.body)["len"] == 1000
    assert get(s.port, "/body/read").status == 200
    assert_no_crash(s)


def test_file_wrapper_with_sendfile_enabled(apache):
    s = apache()
    start(s, [f"WSGIScriptAlias /files {s.apps_dir}/file_wrapper_app.py", "EnableSendfile On",
              f"WSGIScriptAlias /nosend {s.apps_dir}/file_wrapper_app.py",
              "<Location /nosend>", "    WSGIEnableSendfile Off", "</Location>"])
    blob = (s.data_dir / "blob.bin").read_bytes()
    for prefix in ("/files", "/nosend"):
        with Conn(s.port) as c:
            r = c.request("GET", f"{prefix}/real?token=a")
            assert r.status == 200 and r.body == blob and r.complete
            r = c.request("GET", f"{prefix}/offset?token=b")
            assert r.body == blob[1000:]
            r = c.request("GET", f"{prefix}/hello-after")
            assert r.status == 404  # the connection stayed in sync
        # a file shorter than its Content-Length: short body and a closed connection
        with Conn(s.port) as c:
            r = c.request("GET", f"{prefix}/short?token=c")
            assert r.status == 200 and not r.complete and r.closed
    assert_no_crash(s)


# ---------------------------------------------------------------- MPMs and restarts

STREAM_APP = """\
    import os, threading, time

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        def gen():
            yield ("%s %s %s\\n" % (environ["wsgi.multithread"], environ["wsgi.multiprocess"],
                                    os.getpid())).encode()
            for i in range(3):
                time.sleep(0.05)
                yield b"part %d\\n" % i
        return gen()
    """


@pytest.mark.parametrize("mpm,multithread", [("worker", "True"), ("prefork", "False")])
def test_other_mpms(apache, mpm, multithread):
    s = apache()
    app = write(s.run / "mpm" / "stream.py", STREAM_APP)
    start(s, [f"WSGIScriptAlias /stream {app}", f"WSGIScriptAlias /body {s.apps_dir}/body_app.py"],
          workers=2, threads=2, mpm=mpm)
    pids = set()
    for _ in range(6):
        with Conn(s.port) as c:
            r = c.request("GET", "/stream")
        first, *rest = r.body.decode().splitlines()
        mt, mp, pid = first.split()
        assert (mt, mp) == (multithread, "True")
        assert rest == ["part 0", "part 1", "part 2"] and r.chunked and r.complete
        pids.add(pid)
    data = os.urandom(200_000)
    r = request(s.port, "POST", "/body/sha", body=data)
    assert json.loads(r.body)["sha256"] == hashlib.sha256(data).hexdigest()
    with Conn(s.port) as c:
        c.send(build_request("POST", "/body/sha", data, host="x", chunked=True))
        assert json.loads(c.read_response().body)["len"] == len(data)
    s.reload()
    assert get(s.port, "/body/read").status == 200
    assert_no_crash(s)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def hard_restart(s: ApacheServer):
    old = set(s.worker_pids())
    s.signal(signal.SIGHUP)
    ok = wait_until(lambda: not any(pid_alive(p) for p in old)
                    and len(set(s.worker_pids()) - old) >= 1, 15)
    assert ok, f"no new children after SIGHUP:\n{s.log_tail()}"


def test_repeated_graceful_and_full_restarts(apache):
    """The module is unloaded and reloaded by the parent on every restart; Python lives
    only in children, so the parent neither crashes nor grows."""
    s = apache()
    start(s, [f"WSGIScriptAlias /hello {s.apps_dir}/hello.py",
              f"WSGIImportScript {s.apps_dir}/hello.py"], workers=1, threads=4)
    master = s.master_pid
    for _ in range(2):  # warm up: the parent's pools reach their steady size
        s.reload()
        hard_restart(s)
    base = rss_kb(master)
    for _ in range(4):
        s.reload()
        assert get(s.port, "/hello").body == b"Hello, world!\n"
        hard_restart(s)
        assert get(s.port, "/hello").body == b"Hello, world!\n"
    assert s.master_pid == master
    grown = rss_kb(master) - base
    assert grown < 2048, f"parent RSS grew by {grown} kB over 8 restarts"
    assert_no_crash(s)
    assert "Py_" not in s.error_log() and "Fatal Python error" not in s.error_log()


KEEPER_APP = """\
    KEPT = {}

    def application(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/keep":
            KEPT["errors"], KEPT["input"] = environ["wsgi.errors"], environ["wsgi.input"]
            body = b"kept"
        elif path == "/use":
            KEPT["errors"].write("late line from a finished request\\n")
            KEPT["errors"].flush()
            try:
                KEPT["input"].read()
                body = b"read worked"
            except Exception as e:
                body = ("read refused: %s" % type(e).__name__).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    """


def test_streams_kept_beyond_their_request(apache):
    """wsgi.errors / wsgi.input used after their request ended must not touch the freed
    request: the log line goes to the server log, the read fails cleanly."""
    s = apache()
    app = write(s.run / "k" / "keeper.py", KEEPER_APP)
    start(s, [f"WSGIScriptAlias /k {app}"], threads=2)
    assert request(s.port, "POST", "/k/keep", body=b"abc").body == b"kept"
    mark, _ = s.log_mark()
    assert get(s.port, "/k/use").body == b"read refused: OSError"
    log = s.wait_error_log(r"late line from a finished request", mark)
    assert log, s.log_tail()
    line = next(l for l in log.splitlines() if "late line" in l)
    assert "[client " not in line, f"logged in the context of a finished request: {line}"
    assert_no_crash(s)
