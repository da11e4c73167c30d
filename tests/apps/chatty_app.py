"""A response whose app keeps talking to wsgi.errors from a background thread while the
response itself is stuck behind a client that reads nothing: lines written to
wsgi.errors must never wait for the client (they are written with the GIL held)."""
import os
import threading
import time
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")


def mark(name, text):
    path = os.path.join(MARKERS, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def application(environ, start_response):
    qs = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    total = int(qs.get("total", str(16 << 20)))
    token = qs["token"]
    # The thread stops when the response ends (close()), and in any case after `life`
    # seconds, so a server stopping under a stuck test still shuts down.
    life = float(qs.get("life", "8"))
    errors = environ["wsgi.errors"]
    stop = threading.Event()

    def chatter():
        n = 0
        deadline = time.monotonic() + life
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                n += 1
                errors.write(f"chatty {token} line {n}\n")
                if n == 1:
                    mark(token + ".chatting", "1")
                stop.wait(0.01)
        finally:
            mark(token + ".lines", str(n))

    threading.Thread(target=chatter, daemon=True).start()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(total))])
    return Body(total, token, stop)


class Body:
    """`total` bytes in 64 KiB pieces; progress in a marker, close() ends the chatter."""

    def __init__(self, total, token, stop):
        self.total, self.token, self.stop = total, token, stop
        self.piece = bytes(range(256)) * 256

    def __iter__(self):
        sent = 0
        while sent < self.total:
            part = self.piece[: min(len(self.piece), self.total - sent)]
            yield part
            sent += len(part)
            mark(self.token + ".progress", str(sent))

    def close(self):
        self.stop.set()
        mark(self.token + ".closed", "1")
