"""No lost request in daemon mode, at the scale of a busy site: ~300 client connections
(keep-alive clients looping short GETs and POSTs whose echo is checked, and slow
clients streaming multi-MiB responses whose length and content are checked at the end)
run against real nginx / Apache with real `rwsgi-daemon` groups while the server
reloads, upgrades its binary or restarts gracefully, and while the group's processes
recycle by maximum-requests or because their script was touched.

Every failure counts: a refused or reset connection, a non-200, a short or wrong body, a
stream cut short. The one retry allowed is RFC 9112 9.3.1's: a request written to an idle
keep-alive connection that the server closed before reading it (no byte of answer, on a
connection that had already served a request) is sent again on a new connection, as HTTP
clients do. Groups whose configuration did not change keep their processes.

The load runs on one asyncio loop in a thread of its own (not hundreds of OS threads),
so the test's body can reload the server meanwhile. No latency is asserted: the box is
shared and slow under this load."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from harness.apache import ApacheServer
from harness.common import HOST, Mount, wait_until
from harness.nginx import NginxServer, _uid_of

pytestmark = pytest.mark.server_side

USERS = ("rwsgi-t1", "rwsgi-t2")
# Two groups under load: g1 changes (or recycles) in a scenario, g2 does not. They run
# different copies of the same app, so touching g1's script leaves g2 alone.
SCRIPT_1, SCRIPT_2 = "daemon_app.py", "daemon_app_2.py"

CLIENTS = 280          # keep-alive clients looping short requests
STREAMS = 20           # clients streaming a large response slowly
STREAM_CHUNKS = 48     # 64 KiB chunks: 3 MiB per stream
READ_PAUSE = 0.08      # seconds a slow client sleeps after each 64 KiB read: >= 4 s a stream
# The app paces the stream too: loopback TCP buffers (MiBs) would otherwise take a whole
# stream at once and free the app's thread long before the slow client is done.
STREAM_DELAY = 0.06
POST_SIZES = (0, 1, 1000, 16_384, 100_000)
REQUEST_TIMEOUT = 60   # a request not answered by then is a lost one


# ---- the load ------------------------------------------------------------------------------

class _CountingReader(asyncio.StreamReader):
    """A stream reader that counts the bytes the connection delivered, so the client can
    tell "the server closed without a byte of answer" from a cut answer."""

    received = 0

    def feed_data(self, data):
        self.received += len(data)
        super().feed_data(data)


class _NoAnswer(Exception):
    """The connection ended before any byte of the answer."""


class _Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.used = 0   # answers read on this connection

    @classmethod
    async def open(cls, port, rcvbuf=None):
        """`rcvbuf`: a small receive buffer (a slow client's): the answer then waits in
        the app, not in loopback buffers that would take a whole stream at once."""
        loop = asyncio.get_running_loop()
        reader = _CountingReader(limit=1 << 16)
        protocol = asyncio.StreamReaderProtocol(reader)
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def close(self):
        self.writer.close()


async def _exchange(conn, head: bytes, body: bytes, pause: float = 0.0):
    """Sends one request and reads its answer: (status, headers, body digest or bytes,
    length, closed). `pause`: sleep after each 64 KiB read (a slow client); the body is
    then hashed as it arrives instead of kept. Raises _NoAnswer when the connection ended
    before any byte of the answer."""
    before = conn.reader.received
    try:
        conn.writer.write(head + body)
        await conn.writer.drain()
        line = await conn.reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        if conn.reader.received == before:
            raise _NoAnswer(repr(e)) from None
        raise
    lines = line.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for h in lines[1:]:
        if h:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
    keep = pause == 0
    got = bytearray() if keep else None
    digest = hashlib.sha256()
    length = 0

    async def take(n):
        nonlocal length
        while n > 0:
            part = await conn.reader.read(min(n, 1 << 16))
            if not part:
                raise asyncio.IncompleteReadError(bytes(got or b""), n)
            n -= len(part)
            length += len(part)
            if keep:
                got.extend(part)
            else:
                digest.update(part)
                await asyncio.sleep(pause * len(part) / 65536)

    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await conn.reader.readuntil(b"\r\n")   # no trailers are sent
                break
            await take(size)
            if await conn.reader.readexactly(2) != b"\r\n":
                raise AssertionError("bad chunk framing")
    elif "content-length" in headers:
        await take(int(headers["content-length"]))
    else:
        raise AssertionError(f"a response without framing: {headers}")
    conn.used += 1
    closed = headers.get("connection", "").lower() == "close"
    return status, headers, bytes(got) if keep else digest.hexdigest(), length, closed


def _request_head(method, path, port, length=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\nContent-Type: application/octet-stream\r\n"
    return (head + "\r\n").encode()


def _expected_stream(seed: str, n: int) -> tuple[int, str]:
    """Length and sha256 of /pattern?seed=&n= (the app's pattern_chunk)."""
    d = hashlib.sha256()
    for i in range(n):
        d.update(hashlib.sha256(b"%s:%d" % (seed.encode(), i)).digest() * 2048)
    return n * 65536, d.hexdigest()


class Load:
    """~300 client connections against `prefixes` (each a mount of daemon_app.py), until
    stopped. `ok`, `streams_done`, `retried`, `errors`, and the app pids the hello
    answers named per prefix (`pids`)."""

    def __init__(self, port, prefixes, clients=CLIENTS, streams=STREAMS):
        self.port, self.prefixes = port, list(prefixes)
        self.clients, self.streams = clients, streams
        self.ok = self.streams_done = self.attempts = 0
        self.streaming = 0   # streams in flight
        self.retried: list[str] = []   # tags of the attempts sent again
        self.spans: list[tuple[float, float]] = []   # (start, end) of each whole stream
        self.marks: dict[str, float] = {}
        self.errors: list[str] = []
        self.pids = {p: set() for p in self.prefixes}
        self.stopping = False
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Lets every client finish what it is doing (a stream to its end), then returns."""
        self.stopping = True
        self.thread.join(REQUEST_TIMEOUT * 2)
        if self.thread.is_alive():
            self.errors.append("the load did not finish within "
                               f"{REQUEST_TIMEOUT * 2} s of being stopped")

    def wait_more(self, n, timeout=60):
        """Waits until `n` more requests have been answered (a scenario's worth of load)."""
        start = self.ok
        return wait_until(lambda: self.ok >= start + n or self.errors, timeout, 0.1)

    def mark(self, event):
        """Notes when `event` happened: streams must have been running across it."""
        self.marks[event] = time.monotonic()

    def streams_across(self, event) -> int:
        t = self.marks[event]
        return sum(1 for a, b in self.spans if a < t < b)

    def unread_retries(self, server) -> list[str]:
        """Retried attempts the server logged: it read those requests, so closing their
        connection without an answer lost them (the retry rule does not cover them)."""
        logged = server.access_log()
        return [t for t in self.retried if f"r={t} " in logged]

    def summary(self):
        took = sorted(b - a for a, b in self.spans) or [0]
        return (f"{self.ok} requests and {self.streams_done} streams answered "
                f"(in {took[0]:.1f} to {took[-1]:.1f} s), "
                f"{len(self.retried)} retried per RFC 9112 9.3.1, {len(self.errors)} errors: "
                f"{self.errors[:10]}")

    async def _main(self):
        tasks = [self._client(i) for i in range(self.clients)]
        tasks += [self._streamer(i) for i in range(self.streams)]
        await asyncio.gather(*tasks)

    async def _one(self, state, what, method, path, body=None, pause=0.0):
        """One request with the only retry allowed; returns the answer or None (an error,
        recorded). Each attempt carries a tag of its own (r=) in its query string: a
        retried attempt must be missing from the access log (see unread_retries)."""
        for _ in range(3):
            self.attempts += 1
            tag = f"t{self.attempts}x"
            tagged = f"{path}{'&' if '?' in path else '?'}r={tag}"
            head = _request_head(method, tagged, self.port, None if body is None else len(body))
            try:
                if state.get("conn") is None:
                    state["conn"] = await _Conn.open(self.port, 16384 if pause else None)
                conn = state["conn"]
                answer = await asyncio.wait_for(_exchange(conn, head, body or b"", pause),
                                                REQUEST_TIMEOUT)
                if answer[4]:
                    conn.close()
                    state["conn"] = None
                return answer
            except _NoAnswer as e:
                conn = state.pop("conn")
                conn.close()
                if conn.used == 0:
                    self.errors.append(f"{what}: closed unanswered on a new connection: {e}")
                    return None
                self.retried.append(tag)
            except Exception as e:   # noqa: BLE001 - every failure counts
                conn = state.pop("conn", None)
                if conn is not None:
                    conn.close()
                self.errors.append(f"{what}: {e!r}")
                return None
        self.errors.append(f"{what}: closed unanswered three times")
        return None

    async def _client(self, i):
        rnd = random.Random(i)
        state = {}
        await asyncio.sleep(rnd.random() * 0.5)   # not all 300 connects at once
        n = 0
        while not self.stopping:
            prefix = self.prefixes[(i + n) % len(self.prefixes)]
            n += 1
            if rnd.random() < 0.5:
                what = f"GET {prefix}/"
                answer = await self._one(state, what, "GET", f"{prefix}/")
                if answer is None:
                    continue
                status, _, body, _, _ = answer
                try:
                    data = json.loads(body)
                    assert status == 200 and data["hello"] == "world"
                except Exception:   # noqa: BLE001
                    self.errors.append(f"{what}: {status} {body[:200]!r}")
                    continue
                self.pids[prefix].add(data["pid"])
            else:
                size = rnd.choice(POST_SIZES)
                payload = rnd.randbytes(size)
                what = f"POST {prefix}/echo ({size} bytes)"
                answer = await self._one(state, what, "POST", f"{prefix}/echo", payload)
                if answer is None:
                    continue
                status, _, body, _, _ = answer
                if status != 200 or body != payload:
                    self.errors.append(f"{what}: {status}, {len(body)} bytes back"
                                       f"{'' if status != 200 else ' (a different body)'}")
                    continue
            self.ok += 1
        if state.get("conn") is not None:
            state["conn"].close()

    async def _streamer(self, i):
        state = {}
        k = 0
        await asyncio.sleep(i * 0.05)
        while not self.stopping:
            prefix = self.prefixes[i % len(self.prefixes)]
            seed = f"s{i}-{k}"
            k += 1
            path = f"{prefix}/pattern?seed={seed}&n={STREAM_CHUNKS}&delay={STREAM_DELAY}"
            began = time.monotonic()
            self.streaming += 1
            answer = await self._one(state, f"stream {path}", "GET", path, pause=READ_PAUSE)
            self.streaming -= 1
            if answer is None:
                continue
            status, _, digest, length, _ = answer
            want_length, want_digest = _expected_stream(seed, STREAM_CHUNKS)
            if status != 200 or length != want_length or digest != want_digest:
                self.errors.append(f"stream {path}: {status}, {length} of {want_length} bytes"
                                   f"{', wrong content' if length == want_length else ''}")
                continue
            self.streams_done += 1
            self.spans.append((began, time.monotonic()))
        if state.get("conn") is not None:
            state["conn"].close()


# ---- servers and groups ------------------------------------------------------------------

@pytest.fixture(scope="session")
def tenants():
    """System users the groups run as (created once, kept: tests run as root)."""
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", name], capture_output=True)
    return {name: pwd.getpwnam(name) for name in USERS}


@pytest.fixture
def servers():
    created = []

    def factory(cls):
        s = cls()
        s.check_module()
        # g2's copy of the app (see SCRIPT_2)
        shutil.copy(s.apps_dir / SCRIPT_1, s.apps_dir / SCRIPT_2)
        os.chmod(s.apps_dir / SCRIPT_2, 0o644)
        created.append(s)
        return s

    yield factory
    for s in created:
        s.stop()
        s.cleanup()


def group_pids(s, user) -> list[int]:
    """The app processes running as `user` (each group here has a user of its own)."""
    if isinstance(s, NginxServer):
        return s.app_pids(user)
    uid = pwd.getpwnam(user).pw_uid
    return sorted(p for p in s.daemon_pids() if _uid_of(p) == uid)


def nginx_start(s, g1="", g2=""):
    """nginx, 2 workers, g1 at /g1 (rwsgi-t1) and g2 at /g2 (rwsgi-t2)."""
    mounts = [Mount(f"/{g}", script, extra=[f"wsgi_process_group {g};"], validate=False)
              for g, script in (("g1", SCRIPT_1), ("g2", SCRIPT_2))]
    daemons = {"g1": f"user=rwsgi-t1 processes=2 threads=8 {g1}".strip(),
               "g2": f"user=rwsgi-t2 processes=2 threads=8 {g2}".strip()}
    # POST bodies stay in memory (no "buffered to a temporary file" warning per request).
    return mounts, dict(daemons=daemons, workers=2, http_extra=["client_body_buffer_size 128k;"])


def apache_lines(s, g1="", g2=""):
    """Apache, 2 children of 32 threads; each group has 2 x 16 threads, which makes its
    cap of Apache threads per child (processes x threads) the child's 32: no request of
    this load is refused for the cap."""
    return s.config_text([
        f"WSGIDaemonProcess g1 processes=2 threads=16 user=rwsgi-t1 {g1}".strip(),
        f"WSGIDaemonProcess g2 processes=2 threads=16 user=rwsgi-t2 {g2}".strip(),
        f"WSGIScriptAlias /g1 {{apps}}/{SCRIPT_1} process-group=g1",
        f"WSGIScriptAlias /g2 {{apps}}/{SCRIPT_2} process-group=g2",
    ], workers=2, threads=32)


def start(kind, servers, g1="", g2=""):
    """A server of `kind` with groups g1 and g2 (extra options per group), serving."""
    if kind == "nginx":
        s = servers(NginxServer)
        mounts, opts = nginx_start(s, g1, g2)
        s.start(mounts, **opts)
    else:
        s = servers(ApacheServer)
        s.start_text(apache_lines(s, g1, g2), workers=2)
    assert wait_until(lambda: len(group_pids(s, "rwsgi-t1")) == 2
                      and len(group_pids(s, "rwsgi-t2")) == 2, 30), s.log_tail()
    return s


def run_load(s, scenario, before=500, after=1500):
    """Runs the load; `scenario()` once `before` requests were answered; then `after`
    more; stops the load (streams finish) and asserts nothing was lost."""
    with Load(s.port, ["/g1", "/g2"]) as load:
        assert load.wait_more(before), load.summary()
        assert wait_until(lambda: load.streaming == STREAMS, 10), load.summary()
        scenario(load)
        assert load.wait_more(after), load.summary()
    assert load.errors == [], f"{load.summary()}\nerror log:\n{s.log_tail(60)}"
    # Once every answered attempt is in the access log, so is any retried one the server
    # read (it logs a request when it is done with it, answered or not).
    answered = load.attempts - len(load.retried)
    assert wait_until(lambda: s.access_log().count("\n") >= answered, 20), load.summary()
    read = load.unread_retries(s)
    assert read == [], f"retried requests the server had read: {read[:10]}"
    statuses = set(re.findall(r'HTTP/1\.1" (\d{3}) ', s.access_log()))
    assert statuses == {"200"}, f"the access log has statuses {statuses}"
    # Slow streams were running across each event (and finished whole: no errors).
    for event in load.marks:
        assert load.streams_across(event) >= STREAMS // 2, (event, load.summary())
    # Every slow client finished at least one whole stream.
    assert load.streams_done >= STREAMS, load.summary()
    print(f"{s.kind}: {load.summary()}")
    return load


# ---- scenarios ----------------------------------------------------------------------------

# A recycled process finishes its slow streams (seconds here, minutes for real downloads)
# while its group must keep serving: a connect-timeout shorter than a stream makes any
# request that waits for the drain to end fail (503), instead of only being slow.
DRAIN_TEST = "connect-timeout=2"

def test_nginx_reload_loses_nothing(servers, tenants):
    s = start("nginx", servers)
    g1, g2 = group_pids(s, "rwsgi-t1"), group_pids(s, "rwsgi-t2")

    def scenario(load):
        load.mark("reload")
        s.reload()                                        # the same config
        assert load.wait_more(1000), load.summary()
        mounts, opts = nginx_start(s, g2="graceful-timeout=20")
        load.mark("reload with g2 changed")
        s.reload(mounts, **opts)

    run_load(s, scenario)
    assert group_pids(s, "rwsgi-t1") == g1, "an unchanged group keeps its processes"
    new = group_pids(s, "rwsgi-t2")
    assert len(new) == 2 and not set(new) & set(g2), "a changed group gets new processes"


def test_nginx_binary_upgrade_loses_nothing(servers, tenants):
    s = start("nginx", servers)
    apps = s.app_pids()
    old_master = s.master_pid
    masters = []

    def scenario(load):
        load.mark("USR2")
        os.kill(old_master, signal.SIGUSR2)
        assert wait_until(lambda: (s.master_pid or old_master) != old_master, 10), s.log_tail()
        masters.append(s.master_pid)
        assert wait_until(lambda: len(s.worker_pids()) >= 2, 10), s.log_tail()
        assert load.wait_more(500), load.summary()        # both masters' workers serve
        load.mark("WINCH")
        os.kill(old_master, signal.SIGWINCH)              # the old workers finish and go
        assert load.wait_more(500), load.summary()
        load.mark("QUIT")
        os.kill(old_master, signal.SIGQUIT)
        assert wait_until(lambda: not os.path.exists(f"/proc/{old_master}"), 30)

    run_load(s, scenario)
    assert s.master_pid == masters[0] and s.master_pid != old_master
    assert s.app_pids() == apps, "the groups keep their processes across the upgrade"


def test_apache_graceful_restart_loses_nothing(servers, tenants):
    s = start("apache", servers)
    g1, g2 = group_pids(s, "rwsgi-t1"), group_pids(s, "rwsgi-t2")

    def scenario(load):
        load.mark("graceful")
        s.reload()                                        # the same config
        assert load.wait_more(1000), load.summary()
        s.conf_path.write_text(apache_lines(s, g2="graceful-timeout=20"))
        load.mark("graceful with g2 changed")
        s.reload()

    run_load(s, scenario)
    assert group_pids(s, "rwsgi-t1") == g1, "an unchanged group keeps its processes"
    new = group_pids(s, "rwsgi-t2")
    assert len(new) == 2 and not set(new) & set(g2), "a changed group gets new processes"


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_maximum_requests_recycling_loses_nothing(servers, tenants, kind):
    s = start(kind, servers, g1=f"maximum-requests=150 {DRAIN_TEST}")
    g2 = group_pids(s, "rwsgi-t2")

    def scenario(load):
        # Several recycles of g1's processes: the hello answers name their pids.
        assert wait_until(lambda: len(load.pids["/g1"]) >= 8 or load.errors, 90), \
            load.summary()
        load.mark("recycled 6 times")

    load = run_load(s, scenario, after=200)
    assert len(load.pids["/g1"]) >= 8, load.pids
    assert group_pids(s, "rwsgi-t2") == g2, "the other group keeps its processes"
    assert load.pids["/g2"] == set(g2)


@pytest.mark.parametrize("kind", ["nginx", "apache"])
def test_touching_the_script_loses_nothing(servers, tenants, kind):
    s = start(kind, servers, g1=DRAIN_TEST)
    g1, g2 = group_pids(s, "rwsgi-t1"), group_pids(s, "rwsgi-t2")
    script = s.apps_dir / SCRIPT_1

    def scenario(load):
        seen = set(g1)
        for i in (1, 2):
            later = time.time() + 10 * i
            load.mark(f"touch {i}")
            os.utime(script, (later, later))
            # g1 gets new processes, and they serve
            assert wait_until(lambda: (p := group_pids(s, "rwsgi-t1")) and len(p) == 2
                              and not set(p) & seen, 30), s.log_tail()
            seen |= set(group_pids(s, "rwsgi-t1"))
            assert load.wait_more(500), load.summary()

    load = run_load(s, scenario)
    assert len(load.pids["/g1"]) >= 4, load.pids
    assert group_pids(s, "rwsgi-t2") == g2, "the other group keeps its processes"
