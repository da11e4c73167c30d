"""nginx with ngx_http_rwsgi_module.so, run standalone from a temp run dir."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from .common import (DEFAULT_PYTHON_HOME, HOST, MODULES, REPO, Mount, Server, ServerError,
                     children_of, pid_alive, wait_port, wait_until)

# RWSGI_NGINX: another nginx binary (one built from source, make matrix); the module must
# have been built against that nginx's configured tree.
NGINX = os.environ.get("RWSGI_NGINX") or "/usr/sbin/nginx"
# The module built with its test-only fault-injection feature (`make fault-module`): a
# request header X-Rwsgi-Fault makes its loop side panic (ngx-module/src/fault.rs).
FAULT_MODULE = REPO / "target" / "modules-fault" / "ngx_http_rwsgi_module.so"


class NginxServer(Server):
    kind = "nginx"
    module_path = MODULES / "ngx_http_rwsgi_module.so"

    def __init__(self, module_path=None):
        """`module_path`: load this build of the module instead (e.g. FAULT_MODULE)."""
        super().__init__()
        if module_path is not None:
            self.module_path = module_path

    def check_module(self):
        if self.module_path == FAULT_MODULE and not FAULT_MODULE.is_file():
            raise ServerError(f"{FAULT_MODULE} does not exist: run `make fault-module` "
                              "(make test-servers builds it)")
        super().check_module()

    @property
    def conf_path(self):
        return self.run / "nginx.conf"

    @property
    def pid_path(self):
        return self.run / "nginx.pid"

    @property
    def master_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    # -- config ---------------------------------------------------------------------
    def render(self, mounts: list[Mount], workers: int = 1, threads: int | None = None,
               max_queue: int | None = None, python_home: str | None = None,
               main_extra: list[str] = (), http_extra: list[str] = (),
               server_extra: list[str] = (),
               max_body: int = 64 << 20, ssl: bool = False, http2: bool = False,
               daemons: dict[str, str] | None = None, **unknown) -> str:
        """`ssl`: the listener speaks TLS with {run}/cert.pem and {run}/key.pem (see
        common.self_signed_cert). `main_extra` / `http_extra` / `server_extra`: raw lines
        for the main, http and server contexts. `daemons`: daemon process groups, name ->
        options (`wsgi_daemon NAME OPTIONS;`), with their supervisor's directory in the
        run dir (`daemon_dir`); a mount joins one with `wsgi_process_group NAME;` in its
        `extra` lines."""
        if unknown:
            raise TypeError(f"unknown nginx options {sorted(unknown)}")
        r = self.run
        http = [
            f"access_log {r}/access.log;",
            f"client_body_temp_path {r}/body;",
            f"proxy_temp_path {r}/proxy;",
            f"fastcgi_temp_path {r}/fastcgi;",
            f"uwsgi_temp_path {r}/uwsgi;",
            f"scgi_temp_path {r}/scgi;",
            f"client_max_body_size {max_body};",
            "keepalive_requests 1000;",
        ]
        if threads is not None:
            http.append(f"wsgi_threads {threads};")
        if max_queue is not None:
            http.append(f"wsgi_max_queue {max_queue};")
        if python_home is None:
            python_home = DEFAULT_PYTHON_HOME
        if python_home is not None:
            http.append(f"wsgi_python_home {python_home};")
        if daemons:
            http.append(f"wsgi_socket_prefix {self.daemon_dir};")
            http.extend(f"wsgi_daemon {name} {self.expand(opts)};".rstrip()
                        for name, opts in daemons.items())
        http.extend(self.expand(x) for x in http_extra)
        locations = [f"location = /static.txt {{ root {r}/htdocs; }}"]
        for m in mounts:
            body = []
            if m.module:
                body.append(f"wsgi_app {m.module};")
            else:
                body.append(f"wsgi_app {self.script_path(m)};")
            if m.callable:
                body.append(f"wsgi_callable {m.callable};")
            if m.python_path:
                body.append("wsgi_python_path " + " ".join(self.expand(p) for p in m.python_path) + ";")
            for k, v in m.params.items():
                body.append(f'wsgi_param {k} "{v}";')
            if m.script_name is not None:
                body.append(f'wsgi_script_name "{m.script_name}";')
            if m.max_body is not None:
                body.append(f"client_max_body_size {m.max_body};")
            body.extend(self.expand(x) for x in m.extra)
            locations.append(f"location {m.prefix} {{\n            " + "\n            ".join(body) + "\n        }")
        if ssl:
            server = [f"listen {HOST}:{self.port} ssl;", "server_name localhost;",
                      f"ssl_certificate {r}/cert.pem;", f"ssl_certificate_key {r}/key.pem;"]
        elif http2:
            # HTTP/2 over cleartext (prior knowledge), as `curl --http2-prior-knowledge` speaks it.
            server = [f"listen {HOST}:{self.port} http2;", "server_name localhost;"]
        else:
            server = [f"listen {HOST}:{self.port};", "server_name localhost;"]
        server.extend(self.expand(x) for x in server_extra)
        return (
            f"load_module {self.module_path};\n"
            f"worker_processes {workers};\n"
            f"error_log {r}/error.log info;\n"
            f"pid {r}/nginx.pid;\n"
            "user nobody nogroup;\n"
            + "".join(self.expand(x) + "\n" for x in main_extra) +
            "events { worker_connections 2048; }\n"
            "http {\n    " + "\n    ".join(http) + "\n"
            "    server {\n        " + "\n        ".join(server + locations) + "\n    }\n}\n"
        )

    # -- daemon mode ------------------------------------------------------------------
    @property
    def daemon_dir(self):
        """The supervisor's directory (wsgi_socket_prefix) when `daemons` are given."""
        return self.run / "daemon"

    def supervisor_pids(self) -> list[int]:
        """Supervisors running for this server's daemon_dir (found by their command
        line, which names the directory: never another test's)."""
        want = ["supervise", "--dir", str(self.daemon_dir)]
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if argv[1:4] == want and pid_alive(int(entry)):
                found.append(int(entry))
        return sorted(found)

    def app_pids(self, user: str | None = None) -> list[int]:
        """The app processes of this server's supervisor(s); `user`: only those running
        as that user."""
        pids = [p for s in self.supervisor_pids() for p in children_of(s)]
        if user is None:
            return pids
        import pwd
        uid = pwd.getpwnam(user).pw_uid
        return [p for p in pids if _uid_of(p) == uid]

    def write_conf(self, mounts, **opts):
        self.conf_path.write_text(self.render(mounts, **opts))
        self.conf_path.chmod(0o644)

    def check_config(self, mounts, **opts):
        self.check_module()
        self.write_conf(mounts, **opts)
        p = subprocess.run([NGINX, "-t", "-p", str(self.run), "-c", str(self.conf_path)],
                           capture_output=True, text=True, timeout=60)
        return p.returncode == 0, p.stdout + p.stderr

    # -- lifecycle --------------------------------------------------------------------
    def start(self, mounts: list[Mount], **opts):
        self.check_module()
        self.mounts, self.opts = list(mounts), dict(opts)
        self.write_conf(self.served_mounts(mounts), **opts)
        p = subprocess.run([NGINX, "-p", str(self.run), "-c", str(self.conf_path)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise ServerError(f"nginx failed to start (rc {p.returncode}):\n{p.stdout}{p.stderr}\n"
                              f"error.log:\n{self.log_tail()}\nconfig:\n{self.conf_path.read_text()}")
        self.started = True
        if not wait_until(lambda: self.master_pid, 10) or not wait_port(self.port):
            raise ServerError(f"nginx did not come up on port {self.port}:\n{self.log_tail()}")
        workers = opts.get("workers", 1)
        wait_until(lambda: len(self.worker_pids()) >= workers, 10)
        return self

    def signal(self, sig):
        pid = self.master_pid
        if pid is None:
            raise ServerError("nginx is not running (no pid file)")
        os.kill(pid, sig)

    def reload(self, mounts: list[Mount] | None = None, wait: bool = True, **opts):
        """`nginx -s reload` (optionally with a new config); waits for new workers."""
        if mounts is not None or opts:
            self.write_conf(self.served_mounts(mounts if mounts is not None else self.mounts),
                            **(opts or self.opts))
        old = set(self.worker_pids())
        p = subprocess.run([NGINX, "-s", "reload", "-p", str(self.run), "-c", str(self.conf_path)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise ServerError(f"nginx -s reload failed: {p.stdout}{p.stderr}")
        if wait:
            n = self.opts.get("workers", 1)
            ok = wait_until(lambda: len(set(self.worker_pids()) - old) >= n, 10)
            if not ok:
                raise ServerError(f"no new nginx workers after reload:\n{self.log_tail()}")
        return old

    graceful = reload

    def quit(self, wait: float = 0):
        """Graceful shutdown (SIGQUIT): workers finish their requests, then exit."""
        pid = self.master_pid
        self.signal(signal.SIGQUIT)
        if wait:
            if not self._wait_dead(pid, wait):
                raise ServerError(f"nginx master {pid} still alive {wait}s after SIGQUIT")
            self.started = False

    def stop(self):
        pid = self.master_pid
        if pid is None or not self.started:
            self.started = False
            self.stop_supervisor()
            return
        workers = children_of(pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_dead(pid, 10):
            self._kill_hard(pid)
        for w in workers:
            if not self._wait_dead(w, 5):
                try:
                    os.kill(w, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.started = False
        self.stop_supervisor()

    def stop_supervisor(self, timeout: float = 30):
        """Waits for this server's supervisor to go (it stops its groups once nginx's
        lifeline closes), then kills what is left of it and its app processes."""
        sups = self.supervisor_pids()
        if not sups:
            return
        apps = [p for s in sups for p in children_of(s)]
        for pid in sups:
            if not self._wait_dead(pid, timeout):
                self._kill_hard(pid)
        for pid in apps:
            if not self._wait_dead(pid, 5):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _uid_of(pid: int) -> int | None:
    """The real uid of process `pid` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
