"""Log lines of every kind a request can cause, for the log-label tests. With `tag`: a
wsgi.errors line and a `logging` line to stderr, then a RuntimeError before
start_response (a 500 and its traceback in the error log). With `hold_gil=SECONDS`: holds
the GIL that long (a C sleep called through ctypes.PyDLL, which keeps the GIL), after
recording `token` in a marker, so that other requests cannot enter Python meanwhile."""
import ctypes
import logging
import os
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")
log = logging.getLogger("log_app")
if not log.handlers:
    log.addHandler(logging.StreamHandler())  # stderr
    log.setLevel(logging.INFO)


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    if "hold_gil" in qs:
        if "token" in qs:
            with open(os.path.join(MARKERS, qs["token"][0] + ".holding"), "w") as f:
                f.write("1")
        ctypes.PyDLL("libc.so.6").sleep(int(qs["hold_gil"][0]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"held\n"]
    tag = qs.get("tag", ["-"])[0]
    environ["wsgi.errors"].write("errors line %s\n" % tag)
    environ["wsgi.errors"].flush()
    log.info("logging line %s", tag)
    raise RuntimeError("boom %s" % tag)
