"""Echoes the environ as JSON (non-JSON values as their type name)."""
import json
import os
import threading
from urllib.parse import parse_qs


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, tuple) and all(isinstance(x, (int, str)) for x in v):
        return list(v)
    return "<%s>" % type(v).__name__


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    if "errors" in qs:
        # wsgi.errors lines must reach the server's error log.
        environ["wsgi.errors"].write("wsgi.errors line %s\n" % qs["errors"][0])
        environ["wsgi.errors"].flush()
    data = {k: _jsonable(v) for k, v in environ.items()}
    data["_pid"] = os.getpid()
    data["_thread"] = threading.get_ident()
    for name in ("wsgi.input", "wsgi.errors"):
        obj = environ[name]
        data["_methods " + name] = sorted(m for m in ("read", "readline", "readlines", "__iter__",
                                                      "write", "writelines", "flush")
                                          if hasattr(obj, m))
    data["_file_wrapper_callable"] = callable(environ.get("wsgi.file_wrapper"))
    body = json.dumps(data, sort_keys=True).encode("ascii")
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("X-App", "environ")])
    return [body]


def other(environ, start_response):
    """A second callable in the same file (wsgi_callable / callable-object)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"other callable\n"]
