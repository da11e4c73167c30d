"""Sleeps `t` seconds (releasing the GIL), then answers with who served it."""
import os
import threading
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    t = float(qs.get("t", ["1"])[0])
    time.sleep(t)
    body = ("slept %s pid %d thread %d\n" % (t, os.getpid(), threading.get_ident())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
