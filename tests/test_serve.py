"""The `rwsgi` Python package: `pip install .` into a fresh /usr/bin/python3 venv
(harness/serve_venv.py, cached on the sources' hash), then its command against the real
servers: `rwsgi module-config` lines in a server config (embedded, and with a daemon group
run by the rwsgi-daemon the package carries beside the modules), and `rwsgi serve` started as a
subprocess (file and module:callable apps, --static, --processes/--threads, --reload,
Ctrl-C) and its one-line refusals (exit status 2)."""
from __future__ import annotations

import os
import pwd
import re
import stat
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import serve_venv
from harness.apache import ApacheServer
from harness.common import HOST, Mount, children_of, free_port, wait_until
from harness.http import get
from harness.nginx import NginxServer

pytestmark = pytest.mark.server_side

HELLO = '''def application(environ, start_response):
    body = b"hello from rwsgi serve"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''

PREFIX_APP = '''import sys


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%d.%d" % (sys.prefix, *sys.version_info[:2])).encode()]
'''


# Reports the Python, the user and the process it runs in.
DAEMON_APP = '''import os, sys


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s|%d.%d|%d|%d" % (sys.prefix, *sys.version_info[:2], os.getuid(),
                                 os.getpid())).encode()]
'''
TENANT = "rwsgi-t1"


@pytest.fixture(scope="session")
def venv() -> Path:
    return serve_venv.ensure()


@pytest.fixture(scope="session")
def tenant():
    """The system user a daemon group runs as (created once, kept: tests run as root)."""
    try:
        return pwd.getpwnam(TENANT)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", TENANT], check=True, capture_output=True)
        return pwd.getpwnam(TENANT)


@pytest.fixture
def rwsgi(venv) -> str:
    return str(venv / "bin" / "rwsgi")


@pytest.fixture
def appdir():
    """A directory the workers (nobody / www-data) can read."""
    d = Path(tempfile.mkdtemp(prefix="rwsgi-serve-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write(path: Path, text: str, mtime: float | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(0o644)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


class Serve:
    """`rwsgi serve ...` as a subprocess, its stdout / stderr in files."""

    def __init__(self, rwsgi: str, args: list[str], cwd: Path, port: int | None = None):
        self.port = port or free_port()
        self.out, self.err = cwd / "serve.stdout", cwd / "serve.stderr"
        # Append mode: the servers reopen /dev/stdout and /dev/stderr, and every writer
        # must add at the end rather than at its own offset.
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen([rwsgi, "serve", *args, "--port", str(self.port)],
                                         cwd=cwd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_up(self, timeout: float = 60):
        def up():
            if self.proc.poll() is not None:
                return "exited"
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return "up"
            except OSError:
                return None
        state = wait_until(up, timeout, 0.1)
        assert state == "up", f"rwsgi serve is {state or 'not up'}:\n{self.stderr()}"
        # serving is announced once the port answers
        assert wait_until(lambda: "Ctrl-C stops" in self.stderr(), 10), self.stderr()

    def workdir(self) -> str:
        m = re.search(r"config in (\S+)\)", self.stderr())
        assert m, self.stderr()
        return m.group(1)

    def interrupt(self, timeout: float = 40) -> int:
        """Ctrl-C: SIGINT to rwsgi alone (the terminal would send it to its process
        group; the server runs in its own)."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve(rwsgi, appdir):
    started = []

    def start(*args: str, port: int | None = None) -> Serve:
        s = Serve(rwsgi, list(args), appdir, port)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def stopped_cleanly(s: Serve, workdir: str):
    rc = s.interrupt()
    assert rc == 0, f"exit status {rc}:\n{s.stderr()}"
    assert port_free(s.port), "the port is still taken after rwsgi serve exited"
    assert processes_mentioning(workdir) == [], "server processes left behind"
    assert "Traceback" not in s.stderr()


# -- module-config --------------------------------------------------------------------

def test_module_config_lines_load_in_a_server(kind, rwsgi, venv):
    """The printed lines, put in a real config, load the packaged module with the venv
    as Python home: the app runs on the venv's Python."""
    out = subprocess.run([rwsgi, "module-config", "--server", kind], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(out) == 2, out
    site, version = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import rwsgi, sys; print(rwsgi.MODULES_DIR); print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True).stdout.split()
    if kind == "nginx":
        assert out == [f"load_module {site}/ngx_http_rwsgi_module.so;",
                       f"wsgi_python_home {venv};"]
        module, home = out[0].split()[1].rstrip(";"), out[1].split()[1].rstrip(";")
    else:
        assert out == [f"LoadModule rwsgi_module {site}/mod_rwsgi.so", f"WSGIPythonHome {venv}"]
        module, home = out[0].split()[2], out[1].split()[1]
    # The harness renders `load_module <module_path>;` / `LoadModule rwsgi_module
    # <module_path>` and `wsgi_python_home` / `WSGIPythonHome <python_home>`: the lines above.
    base = NginxServer if kind == "nginx" else ApacheServer
    server_class = type("Packaged", (base,), {"module_path": Path(module)})
    s = server_class()
    try:
        write(s.apps_dir / "prefix_app.py", PREFIX_APP)
        s.start([Mount("/prefix", str(s.apps_dir / "prefix_app.py")), Mount("/hello", "hello.py")],
                python_home=home)
        text = s.conf_path.read_text()
        assert out[0] in text and out[1].strip(";") in text
        r = get(s.port, "/prefix")
        assert r.status == 200, r
        assert r.body.decode() == f"{venv}|{version}"
        assert get(s.port, "/hello").body == b"Hello, world!\n"
    finally:
        s.stop()
        s.cleanup()


def test_module_config_lines_run_daemon_groups(kind, rwsgi, venv, tenant):
    """The package carries rwsgi-daemon beside the modules (root's, 0755, as the modules
    require of a program they run as root): with the module-config lines and a daemon
    group, nothing else, the module runs it, and the group's app answers as the group's
    user on the venv's Python (python-home=)."""
    out = subprocess.run([rwsgi, "module-config", "--server", kind], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    if kind == "nginx":
        module, home = out[0].split()[1].rstrip(";"), out[1].split()[1].rstrip(";")
    else:
        module, home = out[0].split()[2], out[1].split()[1]
    program = Path(module).parent / "rwsgi-daemon"
    st = program.stat()
    assert stat.S_ISREG(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    version = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    base = NginxServer if kind == "nginx" else ApacheServer
    s = type("Packaged", (base,), {"module_path": Path(module)})()
    try:
        write(s.apps_dir / "daemon_prefix_app.py", DAEMON_APP)
        group = f"user={TENANT} python-home={venv}"
        if kind == "nginx":
            s.start([Mount("/d", str(s.apps_dir / "daemon_prefix_app.py"),
                           extra=["wsgi_process_group g;"], validate=False)],
                    python_home=home, daemons={"g": group})
            sups = s.supervisor_pids()
        else:
            s.start_text(s.config_text([
                f"WSGIPythonHome {home}", f"WSGIDaemonProcess g {group}",
                "WSGIScriptAlias /d {apps}/daemon_prefix_app.py process-group=g"]))
            sups = [s.supervisor_pid()]
        text = s.conf_path.read_text()
        assert out[0] in text and "daemon_program" not in text.lower()
        r = get(s.port, "/d")
        assert r.status == 200, f"{r}\n{s.log_tail()}"
        prefix, py, uid, pid = r.body.decode().split("|")
        assert (prefix, py, int(uid)) == (str(venv), version, tenant.pw_uid)
        # the app process is a child of a supervisor running the packaged program
        owner = [sup for sup in sups if sup and int(pid) in children_of(sup)]
        assert owner, (pid, sups)
        assert os.readlink(f"/proc/{owner[0]}/exe") == str(program.resolve())
    finally:
        s.stop()
        s.cleanup()


# -- serve ----------------------------------------------------------------------------

def test_serve_file_app_and_ctrl_c(kind, serve, appdir):
    write(appdir / "app.py", HELLO)
    s = serve("app.py", "--server", kind)
    s.wait_up()
    r = get(s.port, "/some/path?x=1")
    assert r.status == 200, r
    assert r.body == b"hello from rwsgi serve"
    # access log on stdout, error log on stderr
    assert wait_until(lambda: '"GET /some/path?x=1 HTTP/1.1" 200' in s.stdout(), 10), s.stdout()
    banner = "start worker process" if kind == "nginx" else "resuming normal operations"
    assert banner in s.stderr()
    workdir = s.workdir()
    assert workdir.startswith("/tmp/rwsgi-serve-")
    stopped_cleanly(s, workdir)
    assert not os.path.exists(workdir), "the fresh working directory is left behind"


def test_serve_module_callable_with_python_path(kind, serve, appdir):
    write(appdir / "lib" / "shop" / "__init__.py", "")
    write(appdir / "lib" / "shop" / "web.py", '''
def make():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("shop " + environ["PATH_INFO"]).encode()]
    return app


wsgi = make()
''')
    s = serve("shop.web:wsgi", "--server", kind, "--python-path", "lib")
    s.wait_up()
    r = get(s.port, "/cart")
    assert r.status == 200, r
    assert r.body == b"shop /cart"
    stopped_cleanly(s, s.workdir())


def test_serve_static(kind, serve, appdir):
    write(appdir / "app.py", HELLO)
    write(appdir / "public" / "css" / "site.css", "body { color: red }\n")
    s = serve("app.py", "--server", kind, "--static", "/assets=public")
    s.wait_up()
    r = get(s.port, "/assets/css/site.css")
    assert r.status == 200, r
    assert r.body == b"body { color: red }\n"
    assert r.header("content-type", "").startswith("text/css")
    assert get(s.port, "/assets/missing.css").status == 404
    assert get(s.port, "/elsewhere").body == b"hello from rwsgi serve"
    stopped_cleanly(s, s.workdir())


def test_processes_and_threads_in_config(kind, rwsgi, serve, appdir):
    write(appdir / "app.py", HELLO)
    workdir = appdir / "work"
    port = free_port()
    args = ["app.py", "--server", kind, "--processes", "2", "--threads", "3",
            "--workdir", str(workdir)]
    p = subprocess.run([rwsgi, "serve", *args, "--print-config", "--port", str(port)], cwd=appdir,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    conf = p.stdout
    if kind == "nginx":
        assert re.search(r"^worker_processes 2;", conf, re.M), conf
        assert re.search(r"^\s*wsgi_threads 3;", conf, re.M), conf
        assert re.search(r"^user nobody nogroup;", conf, re.M), conf
    else:
        for line in ("StartServers 2", "ThreadsPerChild 3", "MaxRequestWorkers 6",
                     "User www-data"):
            assert re.search(rf"^{line}$", conf, re.M), (line, conf)
    assert not workdir.exists(), "--print-config wrote files"
    # The server it runs has that shape: two worker processes.
    s = serve(*args, port=port)
    s.wait_up()
    conf_file = workdir / ("nginx.conf" if kind == "nginx" else "httpd.conf")
    assert conf_file.read_text() == conf, "serve ran another config than --print-config shows"
    pidfile = workdir / ("nginx.pid" if kind == "nginx" else "apache2.pid")
    master = int(wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip(), 10))
    assert wait_until(lambda: len(children_of(master)) == 2, 10), children_of(master)
    stopped_cleanly(s, str(workdir))
    assert conf_file.exists(), "a --workdir given is kept"


def test_print_config_defaults_to_nginx(rwsgi, appdir):
    write(appdir / "app.py", HELLO)
    p = subprocess.run([rwsgi, "serve", "app.py", "--print-config"], cwd=appdir,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^load_module .*/ngx_http_rwsgi_module\.so;$", p.stdout, re.M)


def test_reload_picks_up_edits(kind, serve, appdir):
    past = time.time() - 60
    write(appdir / "helper.py", 'WORD = "one"\n', mtime=past)
    write(appdir / "app.py", '''import helper


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("v1 " + helper.WORD).encode()]
''', mtime=past)
    s = serve("app.py", "--server", kind, "--reload")
    s.wait_up()
    assert get(s.port, "/").body == b"v1 one"
    # the app file
    write(appdir / "app.py", (appdir / "app.py").read_text().replace('"v1 "', '"v2 "'))
    assert wait_until(lambda: get(s.port, "/").body == b"v2 one", 30), s.stderr()
    # (Apache's own script reloading may show v2 first: wait for rwsgi's reload too)
    assert wait_until(lambda: s.stderr().count("changed: reloading") == 1, 30), s.stderr()
    # a module next to it (the app's directory is on the python path, and watched)
    write(appdir / "helper.py", 'WORD = "two"\n')
    assert wait_until(lambda: get(s.port, "/").body == b"v2 two", 30), s.stderr()
    # (Apache imports the app lazily, so v2 two may show before the reload is announced)
    assert wait_until(lambda: s.stderr().count("changed: reloading") == 2, 30), s.stderr()
    stopped_cleanly(s, s.workdir())


# -- refusals: one line on stderr, exit status 2 ------------------------------------------

def refused(rwsgi, args, cwd, env=None) -> str:
    p = subprocess.run([rwsgi, "serve", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("rwsgi: error: ")
    assert p.stdout == ""
    return lines[0]


def test_missing_app_is_refused(kind, rwsgi, appdir):
    line = refused(rwsgi, ["nope.py", "--server", kind, "--port", str(free_port())], appdir)
    assert f"{appdir}/nope.py" in line and "not found" in line
    line = refused(rwsgi, ["nowhere.wsgi_mod:app", "--server", kind,
                           "--port", str(free_port())], appdir)
    assert "ModuleNotFoundError: No module named 'nowhere'" in line


def test_app_raising_on_import_is_refused(kind, rwsgi, appdir):
    write(appdir / "app.py", 'print("starting")\nsettings = {}["SECRET"]\n')
    line = refused(rwsgi, ["app.py", "--server", kind, "--port", str(free_port())], appdir)
    assert "KeyError: 'SECRET'" in line and f"{appdir}/app.py:2" in line
    write(appdir / "nocall.py", "app = None\n")
    line = refused(rwsgi, ["nocall.py", "--server", kind, "--port", str(free_port())], appdir)
    assert "has no WSGI callable 'application'" in line


def test_port_in_use_is_refused(kind, rwsgi, appdir):
    write(appdir / "app.py", HELLO)
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(rwsgi, ["app.py", "--server", kind, "--port", str(port)], appdir)
    assert f"port {port} on 127.0.0.1 is already in use" in line


def test_server_not_installed_is_refused(kind, rwsgi, appdir):
    write(appdir / "app.py", HELLO)
    var = "RWSGI_NGINX" if kind == "nginx" else "RWSGI_APACHE"
    line = refused(rwsgi, ["app.py", "--server", kind], appdir,
                   env=dict(os.environ, **{var: "/nonexistent/server"}))
    assert "is not installed" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="workers run as another user only under root")
def test_app_unreadable_by_workers_is_refused(kind, rwsgi, appdir):
    private = appdir / "private"
    write(private / "app.py", HELLO)
    private.chmod(0o700)
    line = refused(rwsgi, [str(private / "app.py"), "--server", kind,
                           "--port", str(free_port())], appdir)
    user = "nobody" if kind == "nginx" else "www-data"
    assert f"{private}/app.py is not readable by {user}" in line
