"""A test client for daemon mode's two protocols (docs/daemon-internals.md), written from
the spec and independent of the Rust code it tests:

- `Control`: the JSON-line control socket of `rwsgi-daemon supervise` (what a server's
  master sends);
- `request()`: one request on a group's socket, as a server worker sends it, with the
  answer decoded (head, body, log lines), or the connection closed without an answer.

Used where a test must act as a peer the servers never are: a local process without the
secret, a hostile or broken server worker, the supervisor before any server exists.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time

REQUEST, BODY = 1, 2
READ, HEAD, DATA, FILE, END, ABORT, FAIL, LOG, STAGE = 16, 17, 18, 19, 20, 21, 22, 23, 24
STAGES = {0: "running", 1: "load-failed"}


class Control:
    """One control connection (the lifeline of whoever opened it)."""

    def __init__(self, directory, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.path.join(directory, "control.sock"))
        self.file = self.sock.makefile("rwb")

    def call(self, message: dict) -> dict:
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise ConnectionError("the supervisor closed the control connection")
        return json.loads(line)

    def apply(self, groups, worker_uid=33, worker_gid=33, server="test"):
        return self.call({"op": "apply", "owner_pid": os.getpid(), "server": server,
                          "worker_uid": worker_uid, "worker_gid": worker_gid,
                          "groups": groups})

    def close(self):
        self.file.close()
        self.sock.close()


def group(name, apps, **options):
    """A GroupSpec as JSON, with mod_wsgi's defaults and `options` (python names)."""
    spec = {
        "name": name, "processes": 1, "threads": 15, "user": None, "group": None,
        "umask": None, "home": None, "python_home": None, "python_path": [],
        "display_name": None, "maximum_requests": 0, "restart_interval": 0,
        "inactivity_timeout": 0, "request_timeout": 0, "graceful_timeout": 15,
        "shutdown_timeout": 5, "listen_backlog": 100, "queue_timeout": 0,
        "connect_timeout": 15, "socket_timeout": 300, "lang": None, "locale": None,
        "memory_limit": None, "cpu_time_limit": None,
        "apps": [app_spec(a) for a in apps],
    }
    spec.update(options)
    return spec


def app_spec(script, callable_="application", reload_on_change=True):
    """reload_on_change: the process is recycled when the script changes (what both
    servers ask for by default; Apache's `WSGIScriptReloading Off` turns it off)."""
    return {"target": {"Script": script}, "callable": callable_, "python_path": [],
            "reload_on_change": reload_on_change}


def _bytes(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">IB", len(payload) + 1, kind) + payload


def request_frame(secret: bytes, script: str, *, method="GET", path="/", query=b"",
                  headers=(), body_length=None, callable_="application",
                  connected_at_us=0, stages=False) -> bytes:
    """`stages`: ask for STAGE frames (REQUEST flag bit 1), as the servers do."""
    flags = 2 if stages else 0
    p = secret + bytes([flags]) + struct.pack(">Q", connected_at_us)
    p += bytes([0]) + _bytes(script.encode()) + _bytes(callable_.encode())
    p += _bytes(method.encode()) + _bytes(b"") + _bytes(path.encode()) + _bytes(query)
    p += _bytes(b"HTTP/1.1") + _bytes(b"localhost") + _bytes(b"80")
    p += _bytes(b"127.0.0.1") + _bytes(b"50000") + bytes([0])
    p += struct.pack(">I", len(headers))
    for name, value in headers:
        p += _bytes(name.encode()) + _bytes(value.encode())
    if body_length is None:
        p += bytes([0])
    else:
        p += bytes([1]) + struct.pack(">Q", body_length)
    p += _bytes(path.encode()) + _bytes(b"rwsgi-test")
    p += struct.pack(">I", 0) + struct.pack(">I", 0)
    return _frame(REQUEST, p)


class Answer:
    def __init__(self):
        self.status = None
        self.headers = []
        self.body = b""
        self.logs = []
        self.stages = []       # the engine's stages the app process reported, in order
        self.final = None      # "end", "abort", ("fail", status) or None (connection closed)


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:   # closed with our bytes unread: no answer either
            return None
        if not chunk:
            return None
        data += chunk
    return data


def request(socket_path, secret: bytes, script: str, body: bytes = b"", timeout=30,
            **kw) -> Answer:
    """Sends one request as a server worker would and reads the answer to the end."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(socket_path)
    answer = Answer()
    try:
        try:
            sock.sendall(request_frame(secret, script, body_length=len(body), **kw))
        except (BrokenPipeError, ConnectionResetError):
            # Refused before the request was read (a peer the app does not serve): the
            # connection closed without an answer.
            return answer
        sent = 0
        while True:
            head = _recv_exact(sock, 5)
            if head is None:
                return answer
            length, kind = struct.unpack(">IB", head)
            payload = _recv_exact(sock, length - 1) if length > 1 else b""
            if kind == READ:
                (want,) = struct.unpack(">I", payload)
                part = body[sent:sent + want]
                sent += len(part)
                sock.sendall(_frame(BODY, part))
            elif kind == HEAD:
                status = struct.unpack(">H", payload[:2])[0]
                (n,) = struct.unpack(">I", payload[2:6])
                at = 6 + n
                (count,) = struct.unpack(">I", payload[at:at + 4])
                at += 4
                for _ in range(count):
                    (ln,) = struct.unpack(">I", payload[at:at + 4])
                    name = payload[at + 4:at + 4 + ln]
                    at += 4 + ln
                    (lv,) = struct.unpack(">I", payload[at:at + 4])
                    value = payload[at + 4:at + 4 + lv]
                    at += 4 + lv
                    answer.headers.append((name.decode("latin-1"), value.decode("latin-1")))
                answer.status = status
            elif kind == DATA:
                answer.body += payload
            elif kind == LOG:
                (n,) = struct.unpack(">I", payload[1:5])
                answer.logs.append(payload[5:5 + n].decode())
            elif kind == STAGE:
                answer.stages.append(STAGES.get(payload[0], payload[0]))
            elif kind in (END, ABORT, FAIL):
                answer.final = {END: "end", ABORT: "abort"}.get(kind) or \
                    ("fail", struct.unpack(">H", payload)[0])
                return answer
    finally:
        sock.close()


def wait_for_socket(path, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear within {timeout} s")
