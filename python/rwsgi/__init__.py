"""rwsgi: WSGI inside nginx and Apache httpd.

This package carries the two server modules, built for the Python it is installed in,
and beside them `rwsgi-daemon`, the program the modules run for daemon process groups
(`rwsgi/modules/`), and the `rwsgi` command: `rwsgi module-config` prints the lines that
load them, `rwsgi serve` runs an app through either server in the foreground.
"""
import json
import sys
from pathlib import Path

__version__ = "0.1.0"

MODULES_DIR = Path(__file__).resolve().parent / "modules"
MODULE_FILES = {"nginx": "ngx_http_rwsgi_module.so", "apache": "mod_rwsgi.so"}
# Daemon mode's supervisor and app processes: the modules run the one in their own
# directory unless wsgi_daemon_program / WSGIDaemonProgram names another.
DAEMON_PROGRAM = MODULES_DIR / "rwsgi-daemon"


def module_path(server: str) -> Path:
    """Absolute path of the packaged module for `server` ("nginx" or "apache")."""
    return MODULES_DIR / MODULE_FILES[server]


def build_info() -> dict:
    """What the modules were built for (written by setup.py): {"python_version": "3.11", ...}."""
    try:
        return json.loads((MODULES_DIR / "build.json").read_text())
    except (OSError, ValueError):
        return {}


def python_home() -> str:
    """The Python home the modules should run: the active virtualenv, else this
    Python's prefix (either way, the Python the modules were built for)."""
    return sys.prefix
