"""An iterable whose close() records that it was called (marker `<token>.closed` holding
the reason and how many items were produced)."""
import os
import time
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")


def mark(name, text):
    path = os.path.join(MARKERS, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Body:
    def __init__(self, token, n, delay, fail_at=None, sleep_first=0.0):
        self.token, self.n, self.delay = token, n, delay
        self.fail_at = fail_at
        self.sleep_first = sleep_first
        self.produced = 0

    def __iter__(self):
        if self.sleep_first:
            time.sleep(self.sleep_first)
        for i in range(self.n):
            if self.fail_at is not None and i == self.fail_at:
                raise RuntimeError("close-app-failure")
            if i and self.delay:
                time.sleep(self.delay)
            self.produced += 1
            mark(self.token + ".progress", str(self.produced))
            yield b"item %06d\n" % i

    def close(self):
        mark(self.token + ".closed", "closed produced=%d" % self.produced)


def application(environ, start_response):
    qs = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    token = qs["token"]
    n = int(qs.get("n", "3"))
    delay = float(qs.get("delay", "0"))
    fail_at = int(qs["fail_at"]) if "fail_at" in qs else None
    sleep_first = float(qs.get("sleep", "0"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body(token, n, delay, fail_at, sleep_first)
