"""What the server may do while the app holds the GIL: a line written to wsgi.errors
must never wait for network I/O of its request. On Apache the request's I/O runs on the
request's thread under a lock that a log line used to wait for, with the GIL held: one
client that read nothing froze every Python request of the process until Timeout."""
from __future__ import annotations

import re
import socket
import time
import uuid

from harness.common import Mount, wait_until
from harness.http import Conn, build_request, get


def test_errors_line_does_not_wait_for_stuck_response(make_server):
    """A background thread writes to wsgi.errors every 10 ms while its response (16 MiB)
    is stuck behind a client that reads nothing; a GET of /hello on the same (single)
    worker process must still answer at once, and the chatter must reach the log."""
    s = make_server([Mount("/chatty", "chatty_app.py"), Mount("/hello", "hello.py")],
                    workers=1, threads=4)
    token = uuid.uuid4().hex
    total = 16 << 20
    c = Conn(s.port, rcvbuf=65536)
    try:
        c.send(build_request("GET", f"/chatty?total={total}&token={token}",
                             headers=[("Connection", "close")], host="x"))
        assert s.wait_marker(token + ".chatting", 5), "the chatty app did not start"
        progress = s.marker(token + ".progress")
        assert wait_until(progress.exists, 5), "the response did not start"
        # Wait until the response is stuck: no progress for a while.
        last, still = None, 0
        deadline = time.monotonic() + 10
        while still < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            now = progress.read_text()
            still = still + 1 if now == last else 0
            last = now
        assert int(last) < total, "the whole body went out to a client that reads nothing"
        time.sleep(0.3)  # the chatter goes on meanwhile

        t = time.monotonic()
        try:
            r = get(s.port, "/hello", timeout=10)
        except socket.timeout:
            raise AssertionError("GET /hello got no answer within 10 s while another "
                                 "request's response was stuck") from None
        took = time.monotonic() - t
        assert r.status == 200 and r.body == b"Hello, world!\n"
        assert took < 3.0, f"GET /hello took {took:.1f} s while another response was stuck"
    finally:
        c.close()  # unread data: the server's next write fails, the response ends
    assert s.wait_marker(token + ".closed", 35), "the stuck response never ended"
    lines = int(s.wait_marker(token + ".lines", 10) or 0)
    assert lines > 0, "the chatter did not stop"
    # Every line the app wrote reaches the error log (none lost while the I/O was stuck).
    last_line = rf"chatty {token} line {lines}\b"
    assert s.wait_error_log(last_line, timeout=5), \
        f"line {lines} of the chatter is not in the error log:\n{s.log_tail()}"
    logged = set(map(int, re.findall(rf"chatty {token} line (\d+)\b", s.error_log())))
    missing = sorted(set(range(1, lines + 1)) - logged)
    assert not missing, f"{len(missing)} chatter lines missing from the log, e.g. {missing[:5]}"
