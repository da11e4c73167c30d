"""Streaming responses, backpressure, and concurrency on one worker process."""
import threading
import time
import uuid

import pytest

from harness.common import Mount, wait_until
from harness.http import Conn, build_request, get, timed_stream


def test_first_chunk_arrives_before_app_finishes(server):
    # 4 chunks, 0.5 s apart: the whole response takes >= 1.5 s
    t0, arrivals = timed_stream(server.port, "/stream/chunks?n=4&delay=0.5")
    data = b"".join(d for _, d in arrivals)
    assert b"chunk 0\n" in data and b"chunk 3\n" in data
    first_chunk_at = next(t for t, d in _cumulative(arrivals) if b"chunk 0" in d) - t0
    last_at = arrivals[-1][0] - t0
    assert last_at >= 1.4, f"response finished after {last_at:.2f}s; the app sleeps 1.5s"
    assert first_chunk_at < 0.45, \
        f"first chunk arrived after {first_chunk_at:.2f}s: the response was buffered"
    # and the chunks came one by one, not in one burst at the end
    second_at = next(t for t, d in _cumulative(arrivals) if b"chunk 1" in d) - t0
    assert 0.35 < second_at < 1.0, f"second chunk at {second_at:.2f}s"


def _cumulative(arrivals):
    acc = b""
    for t, d in arrivals:
        acc += d
        yield t, acc


def test_write_callable_streams(server):
    t0, arrivals = timed_stream(server.port, "/write/slow")
    first = next(t for t, d in _cumulative(arrivals) if b"written 1" in d) - t0
    total = arrivals[-1][0] - t0
    assert total >= 0.55
    assert first < 0.4, f"write() output was held back for {first:.2f}s"
    assert b"returned 3" in b"".join(d for _, d in arrivals)


def test_slow_request_does_not_block_fast_one(server):
    # The shared server runs ONE worker process (nginx worker_processes 1 /
    # apache one child): Python runs on threads, never on the event loop.
    results = {}

    def slow():
        t = time.monotonic()
        r = get(server.port, "/sleep?t=2.5")
        results["slow"] = (r.status, time.monotonic() - t)

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.3)
    times = []
    for path in ("/hello", "/env/fast", "/static.txt", "/stream/chunks?n=2"):
        t = time.monotonic()
        r = get(server.port, path)
        times.append((path, r.status, time.monotonic() - t))
    th.join(10)
    assert results["slow"][0] == 200 and results["slow"][1] >= 2.4
    for path, status, dt in times:
        assert status == 200
        assert dt < 0.5, f"{path} took {dt:.2f}s while a slow request was running"


def test_concurrent_sleeps_overlap(server):
    # 4 requests sleeping 1 s each on a pool of 8 threads: ~1 s in all, not 4 s.
    out = []

    def one():
        out.append(get(server.port, "/sleep?t=1").status)

    t = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(15)
    total = time.monotonic() - t
    assert out == [200] * 4
    assert total < 2.0, f"4 concurrent 1 s sleeps took {total:.2f}s"


def test_concurrent_streams_interleave(server):
    out = {}

    def one(i):
        t0, arrivals = timed_stream(server.port, "/stream/chunks?n=3&delay=0.4")
        out[i] = (arrivals[-1][0] - t0, b"".join(d for _, d in arrivals))

    t = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(15)
    assert time.monotonic() - t < 2.0
    for i in range(4):
        assert b"chunk 2\n" in out[i][1]


def test_backpressure_slow_client(server):
    """A client that does not read must stall the generator: the app may run ahead by
    socket and server buffers, not by the whole response."""
    token = uuid.uuid4().hex
    total = 96 << 20
    c = Conn(server.port, rcvbuf=65536)
    try:
        c.send(build_request("GET", f"/stream/big?total={total}&chunk=65536&token={token}",
                             headers=[("Connection", "close")], host="x"))
        progress = server.marker(token + ".progress")
        assert wait_until(progress.exists, 5), "the stream did not start"
        time.sleep(1.5)  # not reading
        ahead = int(progress.read_text())
        assert ahead < 32 << 20, \
            f"app produced {ahead >> 20} MiB while the client read nothing (no backpressure)"
        # now read everything: the stream completes with the right size
        got = 0
        c.sock.settimeout(30)
        data = c.recv_some()
        head_end = None
        buf = b""
        while data:
            if head_end is None:
                buf += data
                if b"\r\n\r\n" in buf:
                    head_end = buf.index(b"\r\n\r\n") + 4
                    assert buf.startswith(b"HTTP/1.1 200")
                    got += len(buf) - head_end
            else:
                got += len(data)
            data = c.recv_some()
        assert got == total
    finally:
        c.close()
    assert server.wait_marker(token + ".done", 5) == str(total)


def test_large_streamed_response_integrity(server):
    token = uuid.uuid4().hex
    total = (8 << 20) + 12345
    with Conn(server.port) as c:
        r = c.request("GET", f"/stream/big?total={total}&chunk=65536&token={token}")
        assert r.status == 200 and r.complete and len(r.body) == total
        piece = bytes(range(256)) * 256
        assert r.body[:65536] == piece and r.body[65536:131072] == piece
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"


def test_large_chunks_intact_while_client_lags(server):
    """Large chunks reach the server without a copy (src/chunk.rs keeps the app's bytes
    object alive instead). Each chunk here is dropped by the app as soon as it is yielded
    and its memory is fair game for the garbage that follows, while the client does not
    read: every chunk must still arrive exactly as yielded."""
    n, size = 48, 65536
    c = Conn(server.port, rcvbuf=65536)
    try:
        c.send(build_request("GET", f"/stream/distinct?n={n}&size={size}",
                             headers=[("Connection", "close")], host="x"))
        time.sleep(1.0)  # not reading: nginx and Apache hold what the app yielded
        c.sock.settimeout(30)
        raw = c.read_to_eof()
    finally:
        c.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == n * size
    for i in range(n):
        want = (b"%08d" % i) * (size // 8)
        assert body[i * size:(i + 1) * size] == want, f"chunk {i} damaged"


@pytest.mark.parametrize("path", ["/stream/big?total=1048576&chunk=65536&token={t}",
                                  "/stream/chunks?n=40000&token={t}"],
                         ids=["content-length", "chunked"])
def test_head_of_large_streamed_response(server, path):
    """HEAD of a streamed response far larger than the server's output buffers: no body
    goes out, yet the request must finish: the app's iteration ends (run to completion or
    closed), no Python thread stays blocked, and the keep-alive connection answers the
    next request. (Small HEAD responses: test_basic.test_head_runs_app_sends_no_body.)"""
    token = uuid.uuid4().hex
    with Conn(server.port, timeout=5) as c:
        r = c.request("HEAD", path.format(t=token))
        assert r.status == 200 and r.body == b""
        if "big" in path:
            assert r.content_length == 1 << 20
            assert server.wait_marker(token + ".done", 5) is not None, (
                "the app is still blocked in its HEAD response after 5 s (made it to "
                f"{server.marker(token + '.progress').read_text()} bytes)")
        r2 = c.request("GET", "/hello")
        assert r2.status == 200 and r2.body == b"Hello, world!\n"


@pytest.mark.only("nginx")
@pytest.mark.embedded_only("the worker parks a stream whose client is behind to free its own Python thread (wsgi_threads 1); a daemon group's thread waits on its socket, as in mod_wsgi")
def test_slow_clients_do_not_hold_python_threads(make_server):
    """nginx parks a stream whose client is behind instead of keeping its Python thread:
    with ONE thread, three clients that stop reading big streams leave it free for
    others, and each stream still completes once its client reads."""
    s = make_server([Mount("/stream", "stream_app.py"), Mount("/hello", "hello.py")],
                    workers=1, threads=1)
    total = 16 << 20
    conns, tokens = [], []
    try:
        for _ in range(3):
            token = uuid.uuid4().hex
            c = Conn(s.port, rcvbuf=65536)
            c.send(build_request("GET", f"/stream/big?total={total}&chunk=65536&token={token}",
                                 headers=[("Connection", "close")], host="x"))
            assert wait_until(s.marker(token + ".progress").exists, 5), "the stream did not start"
            conns.append(c)
            tokens.append(token)
        time.sleep(0.5)  # none of them reads
        for token in tokens:
            assert int(s.marker(token + ".progress").read_text()) < total, "no backpressure"
        t = time.monotonic()
        r = get(s.port, "/hello", timeout=10)
        assert r.status == 200 and time.monotonic() - t < 1.0, \
            "the only Python thread was held by a client that does not read"
        for c in conns:
            c.sock.settimeout(30)
            received = 0
            data = c.recv_some()
            while data:
                received += len(data)
                data = c.recv_some()
            assert received > total  # headers + the whole body
    finally:
        for c in conns:
            c.close()
    for token in tokens:
        assert s.wait_marker(token + ".done", 10) == str(total)


@pytest.mark.only("nginx")
@pytest.mark.embedded_only("the worker parks a stream whose client is behind to free its own Python thread (wsgi_threads 1); a daemon group's thread waits on its socket, as in mod_wsgi")
def test_unread_list_body_does_not_hold_python_thread(make_server):
    """A list body is in memory already: nginx keeps it for a client that does not read,
    and the only Python thread goes on serving others."""
    s = make_server([Mount("/body", "body_app.py"), Mount("/hello", "hello.py")],
                    workers=1, threads=1)
    payload = b"z" * (16 << 20)
    c = Conn(s.port, rcvbuf=65536)
    try:
        c.send(build_request("POST", "/body/echo", payload, host="x",
                             headers=[("Connection", "close")]))
        time.sleep(0.5)  # the echo is produced; we read none of it
        t = time.monotonic()
        r = get(s.port, "/hello", timeout=10)
        assert r.status == 200 and time.monotonic() - t < 1.0, \
            "the only Python thread was held by a client that does not read"
        c.sock.settimeout(30)
        received, data = 0, c.recv_some()
        while data:
            received += len(data)
            data = c.recv_some()
        assert received > len(payload)  # headers + the whole echo
    finally:
        c.close()


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _read_chunked_body_length(c: Conn) -> int:
    """Reads a Connection: close response to EOF; returns its chunked body's length
    (parsed in place: a naive decoder is quadratic in the number of chunks)."""
    c.sock.settimeout(60)
    raw = bytearray()
    data = c.recv_some()
    while data:
        raw += data
        data = c.recv_some()
    head_end = raw.index(b"\r\n\r\n") + 4
    assert raw.startswith(b"HTTP/1.1 200") and b"chunked" in raw[:head_end].lower(), \
        bytes(raw[:head_end])
    pos, total = head_end, 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return total
        total += size
        pos = eol + 2 + size + 2


def test_tiny_chunks_do_not_grow_worker_memory(make_server):
    """A million one-byte chunks (a long server-sent-events stream, a row-by-row CSV
    export) read by a client that keeps up: the worker's memory is bounded by the
    backpressure window, not by the number of chunks. The peak (VmHWM, reset through
    clear_refs) is measured over the whole response."""
    n = 1_000_000
    s = make_server([Mount("/stream", "stream_app.py", validate=False)], workers=1)
    (pid,) = s.worker_pids()
    # warm up: app loaded, a Python thread started, allocator arenas in use
    assert get(s.port, "/stream/tiny?n=1000").body == b"x" * 1000
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kib(pid, "VmRSS")
    with Conn(s.port) as c:
        c.send(build_request("GET", f"/stream/tiny?n={n}",
                             headers=[("Connection", "close")], host="x"))
        assert _read_chunked_body_length(c) == n
    rise = (_status_kib(pid, "VmHWM") - before) / 1024
    assert rise < 24, f"worker peak RSS rose by {rise:.1f} MiB for {n} one-byte chunks"
