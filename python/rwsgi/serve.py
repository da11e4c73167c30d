"""`rwsgi serve`: one WSGI app through nginx or Apache httpd, in the foreground.

Steps: resolve the app, Python home and paths; check that the port is free, that the
app imports with the Python the server will embed, and that the worker user can read
what it needs; write the config (config.py) into the working directory and test it
(`nginx -t` / `apache2 -t`); run the server in its own process group with its logs on
our terminal; with --reload, poll the app's files and reload the server when one
changes; on SIGINT/SIGTERM stop the server, wait for it, exit 0.

A problem found before the server starts is one line on stderr and exit status 2
(UsageError).
"""
from __future__ import annotations

import ctypes
import errno
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import build_info, module_path, python_home
from .config import APACHE_MODULE_DIRS, Site, conf_name, render, stub_text

SERVERS = ("nginx", "apache")
BINARIES = {"nginx": ["nginx"], "apache": ["apache2", "httpd"]}
BINARY_ENV = {"nginx": "RWSGI_NGINX", "apache": "RWSGI_APACHE"}
PACKAGES = {"nginx": "nginx", "apache": "apache2"}
DEFAULT_USER = {"nginx": "nobody", "apache": "www-data"}
SBIN = ["/usr/sbin", "/sbin", "/usr/local/sbin"]
NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
POLL = 1.0  # seconds between file checks with --reload
WATCH_LIMIT = 5000  # files watched at most under the python path


class UsageError(Exception):
    """A problem to report in one line before anything runs (exit status 2)."""


def say(msg: str):
    print(f"rwsgi: {msg}", file=sys.stderr, flush=True)


# -- resolving the command line -----------------------------------------------------

def find_binary(server: str) -> str | None:
    override = os.environ.get(BINARY_ENV[server])
    if override:
        return override if os.access(override, os.X_OK) else None
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    for name in BINARIES[server]:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def choose_server(wanted: str | None) -> tuple[str, str]:
    """(server, binary): the one asked for, else nginx if installed, else Apache."""
    for server in [wanted] if wanted else SERVERS:
        binary = find_binary(server)
        if binary:
            return server, binary
    if wanted:
        where = os.environ.get(BINARY_ENV[wanted])
        hint = f" ({BINARY_ENV[wanted]}={where} is not executable)" if where else ""
        raise UsageError(f"{wanted} is not installed{hint}: install it (apt-get install "
                         f"{PACKAGES[wanted]}) or choose the other with --server")
    raise UsageError("neither nginx nor apache2 is installed: install one "
                     "(apt-get install nginx, or apache2)")


def parse_app(value: str, callable_opt: str | None) -> tuple[str | None, str | None, str]:
    """(script, module, callable) from APP: a file (`app.py`, `app.wsgi`, `dir/app`,
    `app.py:name`) or `module:callable` (`module` alone: callable `application`)."""
    callable_name = callable_opt
    m = re.match(r"^(.+\.(?:py|wsgi)):([\w.]+)$", value)
    if m:
        value, callable_name = m.group(1), callable_opt or m.group(2)
    is_file = "/" in value or value.endswith((".py", ".wsgi")) or os.path.isfile(value)
    if is_file:
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"app file {value} not found"
                             + (f" (looked for {path})" if str(path) != value else ""))
        script, module = str(path), None
    else:
        module, _, attr = value.partition(":")
        if not NAME.match(module) or (attr and not NAME.match(attr)):
            raise UsageError(f"{value!r} is neither an app file nor module:callable")
        script, callable_name = None, callable_opt or attr or None
    callable_name = callable_name or "application"
    if not NAME.match(callable_name):
        raise UsageError(f"{callable_name!r} is not a Python name")
    return script, module, callable_name


def existing_dir(value: str, what: str) -> str:
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"{what} {value} is not a directory")
    return str(path)


def parse_static(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        url, sep, directory = value.partition("=")
        if not sep or not url.startswith("/") or not directory:
            raise UsageError(f"--static {value}: expected URL=DIR, e.g. /static=./static")
        url = "/" + url.strip("/")
        if url == "/":
            raise UsageError(f"--static {value}: / is the app's; choose a prefix like /static")
        out.append((url, existing_dir(directory, f"--static {url}:")))
    return out


def worker_user(server: str, wanted: str | None) -> tuple[str | None, str | None]:
    """(user, group) for the server's workers; (None, None) for the user running it."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() != 0:
        if wanted and wanted != me:
            raise UsageError(f"--user {wanted} needs root (workers run as {me} otherwise)")
        return None, None
    name = wanted or DEFAULT_USER[server]
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"--user {name}: no such user") from None
    if server == "apache" and entry.pw_uid == 0:
        raise UsageError("Apache refuses to run its children as root: choose another --user")
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return name, group


def resolve_home(value: str | None) -> str:
    if value is None:
        return python_home()
    home = existing_dir(value, "--python-home")
    if not (Path(home, "pyvenv.cfg").is_file() or Path(home, "bin", "python3").exists()):
        raise UsageError(f"--python-home {value} is neither a virtualenv nor a Python prefix")
    return home


def home_python(home: str) -> str:
    """The interpreter of a python home: the one `serve` checks the app with."""
    if os.path.realpath(home) == os.path.realpath(sys.prefix):
        return sys.executable
    for name in ("python3", "python"):
        candidate = Path(home, "bin", name)
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise UsageError(f"--python-home {home} has no bin/python3")


def apache_modules_dir(binary: str) -> str:
    apxs = shutil.which("apxs") or shutil.which("apxs2")
    dirs = list(APACHE_MODULE_DIRS)
    if apxs:
        try:
            found = subprocess.run([apxs, "-q", "LIBEXECDIR"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            if found:
                dirs.insert(0, found)
        except (OSError, subprocess.SubprocessError):
            pass
    for d in dirs:
        if Path(d, "mod_mpm_event.so").is_file():
            return d
    raise UsageError(f"cannot find Apache's modules (mod_mpm_event.so) next to {binary}; "
                     f"looked in {', '.join(dirs)}")


def build_site(args, server: str, binary: str | None, workdir: Path) -> Site:
    script, module, callable_name = parse_app(args.app, args.callable)
    path = [existing_dir(p, "--python-path") for p in args.python_path]
    # The app's directory (a file) or the current one (a module) comes last, as the
    # directory a script's neighbours and a project's packages are imported from.
    default = str(Path(script).parent) if script else os.getcwd()
    if default not in path:
        path.append(default)
    user, group = worker_user(server, args.user)
    site = Site(
        server=server, module=module_path(server), workdir=workdir, host=args.host,
        port=args.port, processes=args.processes, threads=args.threads,
        python_home=resolve_home(args.python_home), python_path=path, script=script,
        module_name=module, callable=callable_name, static=parse_static(args.static),
        user=user, group=group,
    )
    if server == "apache" and binary:
        site.apache_modules = apache_modules_dir(binary)
    return site


# -- checks before starting -----------------------------------------------------------

def check_port(host: str, port: int):
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as the server will: SO_REUSEADDR, so a port in TIME_WAIT counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use "
                                 "(choose another with --port)") from None
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def check_app(site: Site) -> dict:
    """Imports the app in a subprocess with the python home's interpreter (isolated
    mode, the same sys.path entries the server adds); returns what it reports."""
    python = home_python(site.python_home)
    request = {"script": site.script, "module": site.module_name,
               "callable": site.callable, "path": site.python_path}
    checker = Path(__file__).with_name("_appcheck.py")
    try:
        p = subprocess.run([python, "-I", str(checker), json.dumps(request)],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        raise UsageError(f"importing {site.app_label} took more than 120 s") from None
    try:
        answer = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise UsageError(f"cannot check {site.app_label} with {python}: {last}") from None
    if not answer["ok"]:
        where = f" (at {answer['where']})" if answer.get("where") else ""
        raise UsageError(f"cannot load {site.app_label}: {answer['error']}{where}")
    return answer


def check_version(site: Site, answer: dict):
    built = build_info().get("python_version")
    if built and answer["version"] != built:
        raise UsageError(f"{site.python_home} is Python {answer['version']}, but the rwsgi "
                         f"modules were built for Python {built}: use a virtualenv of Python "
                         f"{built}, or install rwsgi with Python {answer['version']}")


def readable_by(user: str, path: str, directory: bool) -> bool:
    entry = pwd.getpwnam(user)
    test = ["test", "-r", path, "-a", "-x", path] if directory else ["test", "-r", path]
    p = subprocess.run(test, user=entry.pw_uid, group=entry.pw_gid,
                       extra_groups=os.getgrouplist(user, entry.pw_gid),
                       stdin=subprocess.DEVNULL, capture_output=True)
    return p.returncode == 0


def check_readable(site: Site, answer: dict):
    """The workers (site.user) must read the app, its python path, the virtualenv and
    the standard library of its Python, and the static directories."""
    if not site.user or pwd.getpwnam(site.user).pw_uid == os.geteuid():
        return
    items = []  # (path, is_dir, what)
    if site.script:
        items.append((site.script, False, "the app file"))
    items += [(p, True, "the python path directory") for p in site.python_path]
    home = site.python_home
    items.append((home, True, "the Python home"))
    if Path(home, "pyvenv.cfg").is_file():
        items.append((str(Path(home, "pyvenv.cfg")), False, "the virtualenv's pyvenv.cfg"))
    for key in ("stdlib", "purelib"):
        p = answer["paths"].get(key)
        if p and Path(p).is_dir():
            items.append((p, True, f"Python's {'standard library' if key == 'stdlib' else 'site-packages'}"))
    items += [(d, True, f"the static directory for {u}") for u, d in site.static]
    items.append((str(site.workdir), True, "the working directory"))
    for path, is_dir, what in items:
        if not readable_by(site.user, path, is_dir):
            raise UsageError(
                f"{what} {path} is not readable by {site.user}, the user the server's "
                f"workers run as: make it readable (chmod o+r{'x' if is_dir else ''}, and o+x "
                f"on its parent directories) or choose another --user")


def server_command(site: Site, binary: str, test: bool = False) -> list[str]:
    conf = str(site.workdir / conf_name(site.server))
    if site.server == "nginx":
        return [binary, "-e", "stderr", "-p", str(site.workdir), "-c", conf] + (["-t"] if test else [])
    return [binary, "-f", conf] + (["-t"] if test else ["-DFOREGROUND"])


def write_config(site: Site) -> Path:
    w = site.workdir
    for d in [w] + ([w / "tmp"] if site.server == "nginx" else []):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
    if site.server == "apache" and site.module_name:
        site.stub.write_text(stub_text(site))
        site.stub.chmod(0o644)
    conf = w / conf_name(site.server)
    conf.write_text(render(site))
    conf.chmod(0o644)
    return conf


def test_config(site: Site, binary: str):
    p = subprocess.run(server_command(site, binary, test=True), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        output = (p.stdout + p.stderr).strip()
        raise UsageError(f"the generated config {site.workdir / conf_name(site.server)} "
                         f"does not pass `{Path(binary).name} -t`:\n{output}")


# -- running -------------------------------------------------------------------------

def watched_files(site: Site) -> list[Path]:
    """The app file and the Python sources under the python path (not in virtualenvs,
    caches or hidden directories), at most WATCH_LIMIT of them."""
    files = [Path(site.script)] if site.script else []
    for root in site.python_path:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")
                           and d not in ("__pycache__", "node_modules", "site-packages")
                           and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))]
            files += [Path(dirpath, f) for f in filenames if f.endswith((".py", ".wsgi"))]
            if len(files) > WATCH_LIMIT:
                break
    return list(dict.fromkeys(files))[:WATCH_LIMIT]


def snapshot(files: list[Path]) -> dict[Path, tuple[int, int] | None]:
    out = {}
    for f in files:
        try:
            st = f.stat()
            out[f] = (st.st_mtime_ns, st.st_size)
        except OSError:
            out[f] = None
    return out


def changed(before: dict, after: dict) -> list[Path]:
    return [f for f in set(before) | set(after) if before.get(f) != after.get(f)]


def die_with_parent():
    """A pre-exec hook making the server's master get SIGTERM if `rwsgi serve` dies, so
    a killed rwsgi never leaves a server behind (Linux; elsewhere nothing)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Runner:
    def __init__(self, site: Site, binary: str, reload: bool):
        self.site, self.binary, self.reload = site, binary, reload
        self.stopping = False
        self.proc: subprocess.Popen | None = None

    def on_signal(self, signum, frame):
        if self.stopping and self.proc is not None:
            # second Ctrl-C: do not wait any longer
            self.kill_group(signal.SIGKILL)
        self.stopping = True

    def kill_group(self, sig) -> bool:
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def start(self):
        # Its own session: Ctrl-C reaches only us (we stop it in order), and Apache's
        # signals to its process group on restarts do not reach us.
        self.proc = subprocess.Popen(server_command(self.site, self.binary),
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent())

    def reload_server(self, why: str):
        name = Path(self.binary).name
        say(f"{why} changed: reloading {name}")
        # = `nginx -s reload` (SIGHUP) / `apachectl graceful` (SIGUSR1) to our server
        self.proc.send_signal(signal.SIGHUP if self.site.server == "nginx" else signal.SIGUSR1)

    def stop(self) -> int:
        """Fast stop (nginx SIGTERM, Apache `-k stop`), then wait for every process of
        the server's group; SIGKILL what is left after 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                say(f"{Path(self.binary).name} still running after 20 s: killing it")
                self.kill_group(signal.SIGKILL)
                self.proc.wait()
        # workers that outlived their master (none normally)
        deadline = time.monotonic() + 5
        while self.kill_group(0) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill_group(signal.SIGKILL)
        return self.proc.returncode

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_signal)
        name = Path(self.binary).name
        files = watched_files(self.site) if self.reload else []
        state = snapshot(files)
        self.start()
        if not wait_port(self.site.host, self.site.port, self.proc, 30) and not self.stopping:
            status = self.stop()
            say(f"{name} did not start (exit status {status}); its log is above")
            return 1
        say(f"{name} serving {self.site.app_label} on http://{self.site.listen}/ "
            f"({self.site.processes} process(es) x {self.site.threads} threads; "
            f"config in {self.site.workdir}); Ctrl-C stops"
            + (f"; watching {len(files)} file(s) for changes" if self.reload else ""))
        last_poll = time.monotonic()
        while not self.stopping:
            if self.proc.poll() is not None:
                say(f"{name} exited with status {self.proc.returncode}")
                self.stop()
                return self.proc.returncode or 1
            time.sleep(0.1)
            if self.reload and time.monotonic() - last_poll >= POLL:
                last_poll = time.monotonic()
                files = watched_files(self.site)
                now = snapshot(files)
                diff = changed(state, now)
                if diff:
                    state = now
                    self.recheck()
                    self.reload_server(", ".join(sorted(str(f) for f in diff)[:3]))
        say(f"stopping {name}")
        self.stop()
        return 0

    def recheck(self):
        """After an edit: say so if the app no longer loads (the server will log the
        traceback and answer 500 until it is fixed)."""
        try:
            check_app(self.site)
        except UsageError as e:
            say(f"warning: {e}")


def serve(args) -> int:
    if args.print_config and args.server:
        # printing needs no installed server (Apache's module dir falls back to Debian's)
        server, binary = args.server, find_binary(args.server)
    else:
        server, binary = choose_server(args.server)
    if not module_path(server).is_file():
        raise UsageError(f"the {server} module {module_path(server)} is missing: "
                         "reinstall rwsgi (pip install .)")
    if args.processes < 1 or args.threads < 1:
        raise UsageError("--processes and --threads must be at least 1")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    own_workdir = args.workdir is None
    if args.print_config:
        workdir = Path(args.workdir or f"/tmp/rwsgi-serve-{args.port}").resolve()
        site = build_site(args, server, binary, workdir)
        sys.stdout.write(render(site))
        if own_workdir:
            print("# (`rwsgi serve` writes this to a fresh working directory; "
                  "pass --workdir to choose it)")
        return 0
    if own_workdir:
        workdir = Path(tempfile.mkdtemp(prefix=f"rwsgi-serve-{server}-", dir="/tmp"))
    else:
        workdir = Path(args.workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    try:
        site = build_site(args, server, binary, workdir)
        check_port(site.host, site.port)
        answer = check_app(site)
        check_version(site, answer)
        check_readable(site, answer)
        write_config(site)
        test_config(site, binary)
        return Runner(site, binary, args.reload).run()
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
