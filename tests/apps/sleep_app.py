"""Sleeps `t` seconds (releasing the GIL), then answers with who served it. With
`token`, first records in a marker that the request is in the app."""
import os
import threading
import time
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")


def application(environ, start_response):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    t = float(qs.get("t", ["1"])[0])
    if "token" in qs:
        with open(os.path.join(MARKERS, qs["token"][0] + ".sleeping"), "w") as f:
            f.write(str(t))
    time.sleep(t)
    body = ("slept %s pid %d thread %d\n" % (t, os.getpid(), threading.get_ident())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
