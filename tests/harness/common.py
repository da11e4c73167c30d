"""Pieces shared by the server classes: run directories, ports, mounts, log access,
process helpers, and the Server base class."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Overrides for builds tested elsewhere than `make build` puts them (make matrix):
# RWSGI_MODULES, the directory holding both modules; RWSGI_PYTHON_HOME, the Python prefix
# (or venv) every server is given when a test does not choose one (`wsgi_python_home` /
# `WSGIPythonHome`), for modules built against a Python installed away from its compiled-in
# prefix. See also RWSGI_NGINX in nginx.py.
MODULES = Path(os.environ.get("RWSGI_MODULES") or REPO / "target" / "modules")
DEFAULT_PYTHON_HOME = os.environ.get("RWSGI_PYTHON_HOME") or None
APPS_SRC = REPO / "tests" / "apps"
HOST = "127.0.0.1"


@dataclasses.dataclass
class Mount:
    """A URL prefix served by a WSGI app.

    `script`: an app file name inside tests/apps (copied into the run dir) or an absolute
    path (used as is, e.g. a missing file). `module`: "module:callable" form (nginx only).
    `callable`: the callable's name when it is not `application`.
    `python_path`: extra sys.path entries ("{apps}" expands to the run dir's apps dir).
    `params`: extra environ keys (nginx `wsgi_param`, values may hold nginx variables).
    `max_body`: request body limit in bytes for this mount (413 above).
    `extra`: raw server-specific config lines for the mount's location block.
    `validate`: run the app behind wsgiref.validate: None follows RWSGI_VALIDATE (see
    harness/validate.py), True always (every route), False never.
    """

    prefix: str
    script: str | None = None
    module: str | None = None
    callable: str | None = None
    python_path: list[str] = dataclasses.field(default_factory=list)
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    script_name: str | None = None
    max_body: int | None = None
    extra: list[str] = dataclasses.field(default_factory=list)
    validate: bool | None = None


def daemon_app(kind: str, config: dict, prefix: str, script: str, group: str,
               options: str = "processes=1 threads=2", callable: str | None = None) -> list[Mount]:
    """Serves tests/apps/`script` at `prefix` in daemon process group `group` (created
    with `options`, as the server's user) on a server of `kind`: adds the group, and on
    Apache the alias, to `config` (the server's start options, changed in place); returns
    the mounts to add (nginx's location; none on Apache, whose alias is in `extra`)."""
    if kind == "nginx":
        config.setdefault("daemons", {})[group] = options
        return [Mount(prefix, script, callable=callable, validate=False,
                      extra=[f"wsgi_process_group {group};"])]
    alias = f"WSGIScriptAlias {prefix} {{apps}}/{script} process-group={group}"
    if callable:
        alias += f" callable-object={callable}"
    config.setdefault("extra", []).extend([f"WSGIDaemonProcess {group} {options}", alias])
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (read from /proc, no process-name matching)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def system_user(name: str):
    """The passwd entry of `name`, a system user without a login or a home (with a group
    of its own) for a daemon group's processes: created if missing and kept for later
    runs (tests run as root). Another session creating it meanwhile is fine."""
    import pwd
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], capture_output=True)
        return pwd.getpwnam(name)


def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def self_signed_cert(run: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A self-signed RSA certificate valid for a day: (cert.pem, key.pem) in `run`."""
    cert, key = run / "cert.pem", run / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    cert.chmod(0o644)
    key.chmod(0o600)  # read by the nginx master (root) only
    return cert, key


def make_rundir(kind: str) -> Path:
    """A fresh run dir under /tmp readable by the unprivileged worker user, with the test
    apps, a data dir and a world-writable markers dir (apps record close() etc. there)."""
    run = Path(tempfile.mkdtemp(prefix=f"rwsgi-{kind}-", dir="/tmp"))
    run.chmod(0o755)
    apps = run / "apps"
    shutil.copytree(APPS_SRC, apps, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for d in ("markers",):
        (run / d).mkdir()
        (run / d).chmod(0o1777)
    (run / "htdocs").mkdir()
    (run / "htdocs" / "static.txt").write_text("static file\n")
    data = run / "data"
    data.mkdir()
    # Deterministic 1 MiB + 123 bytes of non-repeating data for file_wrapper tests.
    blob = bytearray()
    i = 0
    while len(blob) < (1 << 20) + 123:
        blob += i.to_bytes(4, "little") * 3 + b"\n"
        i += 1
    (data / "blob.bin").write_bytes(bytes(blob[: (1 << 20) + 123]))
    for root, dirs, files in os.walk(run):
        for d in dirs:
            p = Path(root, d)
            if p.name != "markers":
                p.chmod(0o755)
        for f in files:
            Path(root, f).chmod(0o644)
    return run


class ServerError(AssertionError):
    pass


class Server:
    """A real HTTP server process hosting WSGI apps through an rwsgi module."""

    kind = "?"
    module_path: Path

    def __init__(self):
        self.run = make_rundir(self.kind)
        self.port = free_port()
        self.mounts: list[Mount] = []
        self.opts: dict = {}
        self.started = False
        self.validator_offset = 0  # bytes of markers/validator.log already reported
        # RWSGI_DAEMON=1 put this server's apps in the `suite` group (daemon_mode.py).
        self.in_suite_group = False
        from . import validate
        validate.LIVE.append(self)

    # -- paths and URLs -------------------------------------------------------------
    @property
    def apps_dir(self) -> Path:
        return self.run / "apps"

    @property
    def markers(self) -> Path:
        return self.run / "markers"

    @property
    def data_dir(self) -> Path:
        return self.run / "data"

    @property
    def error_log_path(self) -> Path:
        return self.run / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.run / "access.log"

    def url(self, path: str = "/") -> str:
        scheme = "https" if self.opts.get("ssl") else "http"
        return f"{scheme}://{HOST}:{self.port}{path}"

    def script_path(self, mount: Mount) -> str:
        assert mount.script is not None
        if mount.script.startswith("/"):
            return mount.script
        return str(self.apps_dir / mount.script)

    def expand(self, s: str) -> str:
        return s.replace("{apps}", str(self.apps_dir)).replace("{run}", str(self.run))

    def check_module(self):
        if not self.module_path.is_file():
            raise ServerError(
                f"{self.kind} module {self.module_path} does not exist: run `make build` "
                f"(the {self.kind} tests do not skip themselves)"
            )

    # -- logs -----------------------------------------------------------------------
    def _read(self, path: Path, since: int = 0) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def error_log(self, since: int = 0) -> str:
        return self._read(self.error_log_path, since)

    def access_log(self, since: int = 0) -> str:
        return self._read(self.access_log_path, since)

    def log_mark(self) -> tuple[int, int]:
        """Current sizes of (error log, access log): pass to the *_since helpers."""
        def size(p):
            try:
                return p.stat().st_size
            except FileNotFoundError:
                return 0
        return size(self.error_log_path), size(self.access_log_path)

    def wait_error_log(self, pattern: str, since: int = 0, timeout: float = 5.0) -> str | None:
        """Waits until the error log (from offset `since`) matches `pattern` (regex);
        returns the log text or None."""
        rx = re.compile(pattern, re.S)
        text = wait_until(lambda: (lambda t: t if rx.search(t) else None)(self.error_log(since)),
                          timeout)
        return text

    def wait_access_log(self, pattern: str, since: int = 0, timeout: float = 5.0) -> str | None:
        rx = re.compile(pattern, re.M)
        return wait_until(lambda: (lambda t: t if rx.search(t) else None)(self.access_log(since)),
                          timeout)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.error_log().splitlines()[-n:])

    # -- markers (files the test apps write) ----------------------------------------
    def marker(self, name: str) -> Path:
        return self.markers / name

    def wait_marker(self, name: str, timeout: float = 5.0) -> str | None:
        p = self.marker(name)
        return wait_until(lambda: p.read_text() if p.exists() else None, timeout)

    # -- lifecycle (implemented per server) ------------------------------------------
    def start(self, mounts: list[Mount], **opts):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def reload(self):
        raise NotImplementedError

    def quit(self):
        raise NotImplementedError

    @property
    def master_pid(self) -> int | None:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        pid = self.master_pid
        return children_of(pid) if pid else []

    def python_pids(self) -> list[int]:
        """The processes the apps run in: the server's workers, or with RWSGI_DAEMON=1
        the `suite` group's app processes."""
        return self.group_pids() if self.in_suite_group else self.worker_pids()

    def group_pids(self) -> list[int]:
        raise NotImplementedError

    def check_config(self, mounts: list[Mount], **opts) -> tuple[bool, str]:
        """Runs the server's config test on a generated config; (ok, output)."""
        raise NotImplementedError

    def served_mounts(self, mounts: list[Mount]) -> list[Mount]:
        """The mounts as configured: behind wsgiref.validate where harness/validate.py
        says so (RWSGI_VALIDATE=1)."""
        from . import validate
        return validate.wrap_mounts(self, mounts)

    def validator_complaints(self) -> str:
        """Everything the validator wrapper recorded on this server so far."""
        from . import validate
        try:
            return (self.markers / validate.LOG_NAME).read_text()
        except FileNotFoundError:
            return ""

    def cleanup(self):
        from . import validate
        validate.collect(self)  # complaints must outlive the run dir
        if self in validate.LIVE:
            validate.LIVE.remove(self)
        if os.environ.get("RWSGI_KEEP_RUNDIR"):
            return
        shutil.rmtree(self.run, ignore_errors=True)

    def _wait_dead(self, pid: int, timeout: float) -> bool:
        return bool(wait_until(lambda: not pid_alive(pid), timeout))

    def _kill_hard(self, pid: int):
        for p in [pid] + children_of(pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __repr__(self):
        return f"<{self.kind} server on port {self.port}, run dir {self.run}>"
