"""The suite's conformant apps wrapped in wsgiref.validate.validator, with its warnings
turned into errors: any PEP 3333 violation by the server becomes an exception (500 and
a traceback in the error log). The first PATH_INFO segment picks the inner app."""
import os
import runpy
import warnings
from wsgiref.validate import WSGIWarning, validator

warnings.simplefilter("error", WSGIWarning)
HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, attr="application"):
    return runpy.run_path(os.path.join(HERE, name))[attr]


def _input_echo(environ, start_response):
    # The validator's input wrapper only allows read(n) with one argument, readline() /
    # readline(n), readlines() and iteration.
    inp = environ["wsgi.input"]
    mode = environ.get("PATH_INFO", "")
    n = int(environ.get("CONTENT_LENGTH") or 0)
    if mode == "/read":
        data = inp.read(n)
    elif mode == "/readline":
        data = b"".join(iter(inp.readline, b""))
    elif mode == "/readlines":
        data = b"".join(inp.readlines())
    elif mode == "/iter":
        data = b"".join(inp)
    else:
        data = b""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(data)))])
    return [data]


INNER = {
    "hello": _load("hello.py"),
    "environ": _load("environ_app.py"),
    "stream": _load("stream_app.py"),
    "write": _load("write_app.py"),
    "files": _load("file_wrapper_app.py"),
    "input": _input_echo,
}
WRAPPED = {k: validator(v) for k, v in INNER.items()}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    name, _, rest = path.lstrip("/").partition("/")
    app = WRAPPED.get(name)
    if app is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such inner app\n"]
    environ["SCRIPT_NAME"] += "/" + name
    environ["PATH_INFO"] = "/" + rest if rest else ""
    return app(environ, start_response)
