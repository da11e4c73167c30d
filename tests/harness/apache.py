"""Apache httpd (event MPM) with mod_rwsgi.so, run in the foreground from a temp run dir.
Directive names are mod_wsgi's. (The Apache module's engineer may adjust this class.)"""
from __future__ import annotations

import os
import signal
import subprocess

from .common import (DEFAULT_PYTHON_HOME, HOST, MODULES, Mount, Server, ServerError, children_of,
                     pid_alive, wait_port, wait_until)

APACHE = "/usr/sbin/apache2"
MODDIR = "/usr/lib/apache2/modules"


class ApacheServer(Server):
    kind = "apache"
    module_path = MODULES / "mod_rwsgi.so"

    def __init__(self):
        super().__init__()
        self.proc: subprocess.Popen | None = None

    @property
    def conf_path(self):
        return self.run / "httpd.conf"

    @property
    def master_pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def base_lines(self, workers: int = 1, threads: int = 16, mpm: str = "event",
                   module_line: str | None = None) -> list[str]:
        """ServerRoot, logs, listener, MPM sizing and LoadModule lines (no WSGI config).
        `mpm`: event (Debian's default), worker or prefork. `module_line`: replaces the
        mod_rwsgi LoadModule line (e.g. mod_wsgi's, for side-by-side checks)."""
        r = self.run
        if module_line is None:
            module_line = f"LoadModule rwsgi_module {self.module_path}"
        lines = [
            f"ServerRoot {r}",
            f"DefaultRuntimeDir {r}",
            f"PidFile {r}/apache.pid",
            f"ErrorLog {r}/error.log",
            "LogLevel info",
            f"Listen {HOST}:{self.port}",
            "ServerName 127.0.0.1",
            "User www-data",
            "Group www-data",
            f"LoadModule mpm_{mpm}_module {MODDIR}/mod_mpm_{mpm}.so",
            f"LoadModule authz_core_module {MODDIR}/mod_authz_core.so",
            module_line,
        ]
        if mpm == "prefork":
            # One process per request in flight: `threads` becomes extra processes.
            procs = workers * threads
            lines += [f"StartServers {procs}", f"ServerLimit {procs * 2}",
                      f"MaxRequestWorkers {procs}", f"MinSpareServers {procs}",
                      f"MaxSpareServers {procs}"]
        else:
            lines += [
                f"StartServers {workers}",
                f"ServerLimit {workers * 2}",  # room for old children finishing after a graceful restart
                f"ThreadLimit {threads}",
                f"ThreadsPerChild {threads}",
                f"MaxRequestWorkers {workers * threads}",
                # All threads count as spare capacity: a child that dies is replaced at once
                # (with MinSpareThreads 1 the parent would not respawn while others idle).
                f"MinSpareThreads {workers * threads}",
                f"MaxSpareThreads {workers * threads}",
            ]
        lines += [
            "KeepAlive On",
            "MaxKeepAliveRequests 0",
            "Timeout 30",
            'LogFormat "%h %l %u %t \\"%r\\" %>s %b" common',
            f"CustomLog {r}/access.log common",
            f"DocumentRoot {r}/htdocs",
        ]
        return lines

    def render(self, mounts: list[Mount], workers: int = 1, threads: int = 16,
               python_home: str | None = None, extra: list[str] = (),
               max_body: int = 64 << 20, mpm: str = "event", **unknown) -> str:
        unknown.pop("max_queue", None)  # nginx-only knob; Apache queues in the listener
        if unknown:
            raise TypeError(f"unknown apache options {sorted(unknown)}")
        r = self.run
        lines = self.base_lines(workers, threads, mpm) + [
            f"LimitRequestBody {max_body}",
            f"<Directory {r}>\n    Require all granted\n</Directory>",
        ]
        if python_home is None:
            python_home = DEFAULT_PYTHON_HOME
        if python_home:
            lines.append(f"WSGIPythonHome {python_home}")
        paths = []
        for m in mounts:
            for p in m.python_path:
                p = self.expand(p)
                if p not in paths:
                    paths.append(p)
        if paths:
            lines.append("WSGIPythonPath " + ":".join(paths))
        # mod_wsgi matches aliases in order: longest prefix first.
        for m in sorted(mounts, key=lambda m: -len(m.prefix)):
            if m.module:
                raise ServerError("module:callable mounts are nginx-only (mod_wsgi has none)")
            if m.params:
                raise ServerError("wsgi_param is nginx-only")
            opts = f" callable-object={m.callable}" if m.callable else ""
            lines.append(f"WSGIScriptAlias {m.prefix} {self.script_path(m)}{opts}")
            if m.max_body is not None or m.extra:
                inner = []
                if m.max_body is not None:
                    inner.append(f"LimitRequestBody {m.max_body}")
                inner.extend(self.expand(x) for x in m.extra)
                lines.append(f"<Location {m.prefix}>\n    " + "\n    ".join(inner) + "\n</Location>")
        lines.extend(self.expand(x) for x in extra)
        return "\n".join(lines) + "\n"

    def write_conf(self, mounts, **opts):
        text = opts.pop("conf_text", None)
        self.conf_path.write_text(text if text is not None else self.render(mounts, **opts))
        self.conf_path.chmod(0o644)

    # -- daemon mode ------------------------------------------------------------------
    def config_text(self, lines: list[str], workers: int = 1, threads: int = 16) -> str:
        """A complete config: base_lines(), the run dir readable, then `lines` (with
        {apps} and {run} expanded), e.g. WSGIDaemonProcess + WSGIScriptAlias lines."""
        return "\n".join(self.base_lines(workers, threads) + [
            f"<Directory {self.run}>\n    Require all granted\n</Directory>",
        ] + [self.expand(x) for x in lines]) + "\n"

    @property
    def supervisor_dir(self):
        """Where mod_rwsgi's supervisor keeps its sockets: WSGISocketPrefix's default
        (DefaultRuntimeDir/wsgi, DefaultRuntimeDir being the run dir) + ".rwsgi"."""
        return self.run / "wsgi.rwsgi"

    def supervisor_pid(self) -> int | None:
        """The `rwsgi-daemon supervise` of this server's socket directory (found in /proc
        by its command line, which names the directory)."""
        want = ["supervise", "--dir", str(self.supervisor_dir)]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(args[i:i + 3] == want for i in range(len(args))) and pid_alive(int(entry)):
                return int(entry)
        return None

    def daemon_pids(self) -> list[int]:
        """The app processes of every group (the supervisor's children)."""
        sup = self.supervisor_pid()
        return children_of(sup) if sup else []

    def _stop_supervisor(self, sup: int | None, timeout: float = 30):
        """After apache2 exited its lifeline is closed: the supervisor stops its groups
        (graceful-timeout) and exits. Killed if it does not."""
        if sup is None:
            return
        kids = children_of(sup)
        if not self._wait_dead(sup, timeout):
            for p in [sup] + kids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise ServerError(f"the rwsgi supervisor {sup} outlived apache2 by {timeout} s")
        for k in kids:
            if not self._wait_dead(k, 5):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def check_text(self, text: str) -> tuple[bool, str]:
        """`apache2 -t` on a complete config text; (ok, output)."""
        self.conf_path.write_text(text)
        self.conf_path.chmod(0o644)
        p = subprocess.run([APACHE, "-t", "-f", str(self.conf_path)],
                           capture_output=True, text=True, timeout=60)
        return p.returncode == 0, p.stdout + p.stderr

    def start_text(self, text: str, workers: int = 1):
        """Starts apache2 on a complete config text (e.g. base_lines() + hand-written
        mod_wsgi-style directives)."""
        return self.start([], conf_text=text, workers=workers)

    def check_config(self, mounts, **opts):
        self.check_module()
        self.write_conf(mounts, **opts)
        p = subprocess.run([APACHE, "-t", "-f", str(self.conf_path)],
                           capture_output=True, text=True, timeout=60)
        return p.returncode == 0, p.stdout + p.stderr

    def start(self, mounts: list[Mount], **opts):
        self.check_module()
        self.mounts, self.opts = list(mounts), dict(opts)
        self.write_conf(self.served_mounts(mounts), **opts)
        # Output must go to files: apache keeps a pipe open and the reader would hang.
        out = open(self.run / "apache.stdout", "ab")
        self.proc = subprocess.Popen([APACHE, "-f", str(self.conf_path), "-DFOREGROUND"],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     # its own process group: on restarts httpd signals its
                                     # whole group, which must not include pytest
                                     start_new_session=True)
        out.close()
        self.started = True
        # Stop waiting as soon as apache2 exits (a refused config), else wait for the port.
        wait_until(lambda: self.proc.poll() is not None or wait_port(self.port, 0.2), 15)
        up = self.proc.poll() is None and wait_port(self.port, 1)
        if not up:
            self.stop()
            raise ServerError(
                f"apache2 did not come up on port {self.port}:\n"
                f"{(self.run / 'apache.stdout').read_text(errors='replace')}\n{self.log_tail()}\n"
                f"config:\n{self.conf_path.read_text()}")
        wait_until(lambda: len(self.worker_pids()) >= opts.get("workers", 1), 10)
        return self

    def signal(self, sig):
        if self.master_pid is None:
            raise ServerError("apache2 is not running")
        os.kill(self.master_pid, sig)

    def reload(self, mounts: list[Mount] | None = None, wait: bool = True, **opts):
        """Graceful restart (SIGUSR1), optionally with a new config; waits for new children."""
        if mounts is not None or opts:
            self.write_conf(self.served_mounts(mounts if mounts is not None else self.mounts),
                            **(opts or self.opts))
        old = set(self.worker_pids())
        self.signal(signal.SIGUSR1)
        if wait:
            n = self.opts.get("workers", 1)
            ok = wait_until(lambda: len(set(self.worker_pids()) - old) >= n, 15)
            if not ok:
                raise ServerError(f"no new apache children after graceful restart:\n{self.log_tail()}")
        return old

    graceful = reload

    def quit(self, wait: float = 0):
        """Graceful stop (SIGWINCH): children finish their requests, then exit."""
        self.signal(signal.SIGWINCH)
        if wait:
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                raise ServerError(f"apache2 still alive {wait}s after graceful-stop")
            self.started = False

    def stop(self):
        if self.proc is None:
            return
        sup = self.supervisor_pid()
        if self.proc.poll() is None:
            kids = self.worker_pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._kill_hard(self.proc.pid)
                self.proc.wait(5)
            for k in kids:
                if not self._wait_dead(k, 5):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.started = False
        self._stop_supervisor(sup)
