"""RWSGI_DAEMON=1: every server the suite starts runs its apps in a daemon process group.

The conformance suite is written once, against embedded mode's configuration. With the
switch on, each config the harness writes gets one process group, `suite`, that every
app joins, and that inherits what the embedded config would have given the apps:

- nginx: `wsgi_daemon suite ...;` and `wsgi_process_group suite;` at http level (so the
  locations of `server_extra` / `http_extra` lines join too); the group's supervisor
  keeps its sockets in the run dir (`NginxServer.daemon_dir`).
- Apache (rendered and hand-written configs alike, mod_wsgi's side of a comparison
  too): `WSGIDaemonProcess suite ...` and `WSGIProcessGroup suite` at the end of the
  config; the supervisor's directory is WSGISocketPrefix's default, inside the run dir
  (`ApacheServer.supervisor_dir`).

What carries over: the worker processes become `processes=` (left out for one nginx
worker, so `wsgi.multiprocess` keeps its value: Apache's MPM always says True), the
Python threads `threads=` (Apache's ThreadsPerChild, 1 under
prefork, so `wsgi.multithread` keeps its value too), the Python home `python-home=`, and
Apache's WSGIPythonPath `python-path=` (nginx's wsgi_python_path is per location and
travels with each app). A config that defines groups of its own (a test of daemon mode
itself) is left as it is, and so is an alias an Apache config puts in `%{GLOBAL}` (a
config whose every alias does so is not changed at all).

Cases that test embedded mode's own machinery carry `@pytest.mark.embedded_only("why")`
and are deselected in this mode (conftest.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .common import MODULES

ENABLED = os.environ.get("RWSGI_DAEMON", "") not in ("", "0")

GROUP = "suite"
# The supervisor for modules that have none beside them (the fault-injection build, the
# Python package's).
PROGRAM = MODULES / "rwsgi-daemon"


def options(processes: int | None, threads: int | None, python_home: str | None,
            python_path: list[str] = ()) -> str:
    """The group's options, mod_wsgi style, from what the embedded config says.
    `processes`: None leaves the option out (so wsgi.multiprocess is False, as mod_wsgi
    does; given at all, even as 1, it is True)."""
    words = [] if processes is None else [f"processes={processes}"]
    if threads is not None:
        words.append(f"threads={threads}")
    if python_home:
        words.append(f"python-home={python_home}")
    if python_path:
        words.append("python-path=" + ":".join(python_path))
    return " ".join(words)


def nginx_http_lines(workers: int, threads: int | None, python_home: str | None
                     ) -> tuple[dict[str, str], list[str]]:
    """(daemons, http-level lines) for an nginx config the switch converts. One
    embedded worker gives wsgi.multiprocess False: processes= is then left out."""
    return ({GROUP: options(workers if workers > 1 else None, threads, python_home)},
            [f"wsgi_process_group {GROUP};"])


def _directive(text: str, name: str) -> str | None:
    """The argument of the last top-level `name ARG` line of an httpd config."""
    found = re.findall(rf"^\s*{name}\s+(.+?)\s*$", text, re.M | re.I)
    return found[-1] if found else None


def apache_text(text: str) -> str:
    """An httpd config with its apps moved into the `suite` group (unchanged when the
    switch is off, when the config defines groups itself or gives every alias its group,
    or loads no WSGI module). A
    config for mod_wsgi (the other side of a comparison) gets the same group, so both
    sides run in daemon mode."""
    if not ENABLED or re.search(r"^\s*WSGIDaemonProcess\s", text, re.M | re.I):
        return text
    if not re.search(r"^\s*LoadModule\s+(rwsgi|wsgi)_module\s", text, re.M):
        return text
    aliases = re.findall(r"^\s*WSGIScriptAlias(?:Match)?\s.*$", text, re.M | re.I)
    if aliases and all("process-group=" in a for a in aliases):
        return text  # every alias chose its group (%{GLOBAL}: embedded on purpose)
    threads = _directive(text, "ThreadsPerChild")
    processes = int(_directive(text, "StartServers") or 1)
    home = _directive(text, "WSGIPythonHome")
    path = _directive(text, "WSGIPythonPath")
    opts = options(processes, int(threads) if threads else 1, home,
                   path.split(":") if path else [])
    lines = [f"WSGIDaemonProcess {GROUP} {opts}", f"WSGIProcessGroup {GROUP}"]
    module = re.search(r"^\s*LoadModule\s+rwsgi_module\s+(\S+)", text, re.M)
    if module and not (Path(module.group(1)).parent / "rwsgi-daemon").exists():
        # A module from elsewhere (the Python package's) has no rwsgi-daemon beside it.
        lines.append(f"WSGIDaemonProgram {PROGRAM}")
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
