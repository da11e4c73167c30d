"""The `rwsgi` command: `rwsgi module-config` and `rwsgi serve` (see serve.py)."""
from __future__ import annotations

import argparse
import sys

from . import __version__, build_info, module_path, python_home
from .serve import SERVERS, UsageError, serve


def module_config(args) -> int:
    """The lines that load the packaged module and point it at this Python's
    environment: both come from the same installation, so they always agree on the
    Python version."""
    server = args.server
    path = module_path(server)
    if not path.is_file():
        raise UsageError(f"the {server} module {path} is missing: reinstall rwsgi")
    home = python_home()
    if server == "nginx":
        print(f"load_module {path};")
        print(f"wsgi_python_home {home};")
    else:
        print(f"LoadModule rwsgi_module {path}")
        print(f"WSGIPythonHome {home}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="rwsgi", description="WSGI inside nginx and Apache httpd (rwsgi modules).")
    top.add_argument("--version", action="version",
                     version=f"rwsgi {__version__} (modules built for Python "
                             f"{build_info().get('python_version', '?')})")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mc = sub.add_parser(
        "module-config", help="print the lines that load the module for this Python",
        description="Prints the load line of the packaged module and the Python home line "
                    "for the active virtualenv (nginx: `load_module` for the main context "
                    "and `wsgi_python_home` for http{}; Apache: LoadModule and WSGIPythonHome).")
    mc.add_argument("--server", choices=SERVERS, default="nginx")
    mc.set_defaults(func=module_config)

    sv = sub.add_parser(
        "serve", help="serve a WSGI app through nginx or Apache in the foreground",
        description="Writes a complete config for APP into a working directory, checks it, "
                    "and runs the server in the foreground (error log on stderr, access log "
                    "on stdout) until Ctrl-C. APP is a file (app.py, app.wsgi, app.py:name) "
                    "or module:callable. The app's directory (a file) or the current "
                    "directory (a module) is put on sys.path after --python-path.")
    sv.add_argument("app", metavar="APP")
    sv.add_argument("--server", choices=SERVERS,
                    help="default: nginx if installed, else apache")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="port (8000)")
    sv.add_argument("--processes", type=int, default=1, help="worker processes (1)")
    sv.add_argument("--threads", type=int, default=16, help="Python threads per process (16)")
    sv.add_argument("--callable", help="the callable's name in APP (default application)")
    sv.add_argument("--python-home", metavar="VENV",
                    help="virtualenv the app runs in (default: the one running rwsgi, "
                         f"currently {python_home()})")
    sv.add_argument("--python-path", metavar="DIR", action="append", default=[],
                    help="directory put in front of sys.path (repeatable)")
    sv.add_argument("--static", metavar="URL=DIR", action="append", default=[],
                    help="serve DIR's files under URL, e.g. /static=./static (repeatable)")
    sv.add_argument("--user", help="user the workers run as (when run as root; default "
                                   "nobody for nginx, www-data for apache)")
    sv.add_argument("--reload", action="store_true",
                    help="reload the server when the app file or a .py file under the "
                         "python path changes")
    sv.add_argument("--workdir", metavar="DIR",
                    help="where the config and runtime files go (default: a fresh "
                         "directory under /tmp, removed on exit)")
    sv.add_argument("--print-config", action="store_true",
                    help="print the config and exit")
    sv.set_defaults(func=serve)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"rwsgi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
