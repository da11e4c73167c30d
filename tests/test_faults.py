"""A panic in the nginx module's loop side ends the request it happened in and nothing
else: the request gets a 500 (or, once its header went out, a closed connection), the
panic is in the error log, the worker goes on serving and still quits when told.

The panics are injected by the module's test-only build (`make fault-module`, cargo
feature `fault-injection`): a request header `X-Rwsgi-Fault: <point>` makes the loop side
panic at that point (ngx-module/src/fault.rs)."""
import time
import uuid

import pytest

from harness.common import Mount, pid_alive, wait_until
from harness.http import Conn, build_request, get
from harness.nginx import FAULT_MODULE, NginxServer

pytestmark = [pytest.mark.server_side, pytest.mark.only("nginx")]

MOUNTS = [Mount("/hello", "hello.py"), Mount("/stream", "stream_app.py")]
PANIC = r"\[alert\].*rwsgi\[app=\S+ req=\S+\]: (?:output|daemon connection) panicked at \S*output\.rs:\d+:\d+: fault injected at {}"


@pytest.fixture
def fault_server(kind):
    s = NginxServer(module_path=FAULT_MODULE)
    try:
        s.start(MOUNTS, workers=1, threads=4)
        yield s
    finally:
        s.stop()
        s.cleanup()


def faulted(port, path, point, timeout=5.0):
    """Sends GET `path` asking for a panic at `point`; returns the raw bytes the server
    sent before it closed the connection (socket.timeout if it never does)."""
    with Conn(port, timeout=timeout) as c:
        c.send(build_request("GET", path, headers=[("X-Rwsgi-Fault", point)], host="x"))
        return c.read_to_eof()


def assert_worker_survives_and_quits(s, worker, mark, point):
    assert s.wait_error_log(PANIC.format(point.capitalize()), mark), \
        f"no panic in the error log:\n{s.error_log(mark)}"
    for _ in range(3):
        r = get(s.port, "/hello", timeout=5)
        assert r.status == 200 and r.body == b"Hello, world!\n", r
    assert s.worker_pids() == [worker], "the worker was replaced"
    master = s.master_pid
    s.quit()
    t = time.monotonic()
    assert wait_until(lambda: not pid_alive(worker), 5), \
        f"worker {worker} still alive {time.monotonic() - t:.1f} s after quit:\n{s.log_tail()}"
    assert wait_until(lambda: not pid_alive(master), 5), "master still alive after quit"
    s.started = False


def test_panic_before_the_header_gives_500(fault_server):
    s = fault_server
    (worker,) = s.worker_pids()
    mark, _ = s.log_mark()
    raw = faulted(s.port, "/hello", "pump")
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:300]
    assert b"Hello, world!" not in raw
    assert_worker_survives_and_quits(s, worker, mark, "pump")


def test_panic_after_the_header_closes_the_connection(fault_server):
    s = fault_server
    (worker,) = s.worker_pids()
    mark, _ = s.log_mark()
    raw = faulted(s.port, "/hello", "body")
    # The header may or may not have left nginx; the body never does.
    assert b"Hello, world!" not in raw, raw[:300]
    assert_worker_survives_and_quits(s, worker, mark, "body")


def test_panic_stops_a_streaming_app(fault_server):
    """The app of a request that panicked on the loop stops at its next chunk (the client
    is gone for it) instead of streaming into the void or waiting for a drain forever."""
    s = fault_server
    (worker,) = s.worker_pids()
    mark, _ = s.log_mark()
    token = uuid.uuid4().hex
    total = 1 << 30
    raw = faulted(s.port, f"/stream/big?total={total}&chunk=65536&token={token}", "pump")
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:300]
    done = s.wait_marker(token + ".done", 5)
    assert done is not None and int(done) < total, f"the app did not stop: {done}"
    assert_worker_survives_and_quits(s, worker, mark, "pump")
