"""An app for daemon-mode tests, one behaviour per PATH_INFO."""
import json
import os
import resource
import sys
import time
from urllib.parse import parse_qs


def _json(start_response, data, status="200 OK"):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def stuck_in_view(seconds):
    time.sleep(seconds)


class Stream:
    """Yields `n` chunks, `delay` s apart; close() leaves a marker file."""

    def __init__(self, n, delay, marker):
        self.n, self.delay, self.marker, self.sent = n, delay, marker, 0

    def __iter__(self):
        for i in range(self.n):
            self.sent = i + 1
            yield b"x" * 65536
            time.sleep(self.delay)

    def close(self):
        if self.marker:
            with open(self.marker, "w") as f:
                f.write(str(self.sent))


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    qs = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/echo":
        data = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return [data]
    if path == "/errors":
        environ["wsgi.errors"].write("a line for the error log: %s\n" % qs.get("tag", ""))
        environ["wsgi.errors"].flush()
        return _json(start_response, {"logged": True})
    if path == "/sleep":
        stuck_in_view(float(qs.get("s", "1")))
        return _json(start_response, {"slept": qs.get("s")})
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Stream(int(qs.get("n", "100")), float(qs.get("delay", "0.05")), qs.get("marker"))
    if path == "/whoami":
        return _json(start_response, {
            "pid": os.getpid(), "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "cwd": os.getcwd(),
            "umask": (lambda m: (os.umask(m), m)[1])(os.umask(0)),
            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
            "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0],
            "rlimit_cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
            "env": {k: os.environ.get(k) for k in ("HOME", "USER", "LANG", "LC_ALL", "PATH")},
            "multiprocess": environ["wsgi.multiprocess"],
            "multithread": environ["wsgi.multithread"],
        })
    if path == "/environ":
        return _json(start_response, {k: (v if isinstance(v, (str, int, bool, type(None)))
                                          else repr(type(v)))
                                      for k, v in environ.items()})
    if path == "/crash":
        os._exit(1)
    return _json(start_response, {"hello": "world", "pid": os.getpid()})
