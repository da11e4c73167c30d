"""The write() callable returned by start_response (PEP 3333's imperative API)."""
import time


def application(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written 1\n")
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(0.6)
    write(b"written 2\n")
    return [b"returned 3\n"]
