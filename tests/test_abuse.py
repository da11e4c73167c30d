"""Bad input from clients: oversized headers, URIs and bodies get a 4xx from the server,
and many slow clients do not starve the others."""
import json
import re
import resource
import socket
import time

import pytest

from harness.common import HOST, Mount
from harness.http import Conn, get, request

# Left out of the validated pass (RWSGI_VALIDATE=1 in `make test`):
# bad clients: the servers' own limits.
pytestmark = pytest.mark.server_side


def test_oversized_header_is_4xx(server):
    r = request(server.port, "GET", "/env", headers={"X-Huge": "h" * 200_000})
    assert 400 <= r.status < 500, r
    assert get(server.port, "/hello").status == 200


def test_many_headers(server, kind):
    """300 headers of 50 bytes: within nginx's header buffers (all reach the app), past
    Apache's LimitRequestFields (100: refused with 400 before the app runs)."""
    hs = [(f"X-H{i}", "v" * 50) for i in range(300)]
    r = request(server.port, "GET", "/env", headers=hs)
    if kind == "nginx":
        assert r.status == 200, r
        env = json.loads(r.body)
        assert all(env.get(f"HTTP_X_H{i}") == "v" * 50 for i in range(300))
    else:
        assert r.status == 400, r
    assert get(server.port, "/hello").status == 200


def test_oversized_uri_is_4xx(server):
    r = get(server.port, "/env/" + "u" * 100_000)
    assert 400 <= r.status < 500, r
    assert get(server.port, "/hello").status == 200


def test_garbage_request_line(server):
    with Conn(server.port, timeout=10) as c:
        c.send(b"\x00\x01\x02 not http at all\r\n\r\n")
        data = c.read_to_eof()
    assert re.match(rb"HTTP/1\.[01] 400 ", data), data[:100]
    assert get(server.port, "/hello").status == 200


def test_body_shorter_than_content_length_then_close(server):
    # the client promises 1000 bytes, sends 10 and leaves: no crash, server serves on
    with Conn(server.port, timeout=10) as c:
        c.send(b"POST /body/read HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        time.sleep(0.2)
    time.sleep(0.2)
    assert get(server.port, "/hello").status == 200


def check_slow_clients_do_not_starve_others(port):
    """1,000 slowloris-style connections (partial request headers, loopback only) while
    normal requests keep being answered promptly."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = []
    try:
        for i in range(1000):
            s = socket.socket()
            s.settimeout(5)
            s.connect((HOST, port))
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow-%d: " % i)
            socks.append(s)
        time.sleep(0.5)
        for _ in range(5):
            t = time.monotonic()
            r = get(port, "/hello", timeout=10)
            dt = time.monotonic() - t
            assert r.status == 200, r
            assert dt < 2.0, f"a normal request took {dt:.2f}s among 1000 slow clients"
        # the slow clients trickle one more byte; still fine
        for s in socks[:200]:
            try:
                s.sendall(b"a")
            except OSError:
                pass
        assert get(port, "/env/x", timeout=10).status == 200
    finally:
        for s in socks:
            s.close()


@pytest.mark.only("nginx")
def test_slow_clients_do_not_starve_others(server):
    check_slow_clients_do_not_starve_others(server.port)


@pytest.mark.only("apache")
def test_slow_clients_do_not_starve_others_apache(make_server):
    """Apache 2.4 reads request headers in a worker thread before any module runs, so it
    holds off slow clients only with a thread for each (its documented defence, with
    mod_reqtimeout): sized that way, mod_rwsgi keeps serving normal requests promptly."""
    s = make_server([Mount("/hello", script="hello.py"), Mount("/env", script="environ_app.py")],
                    workers=2, threads=640)
    check_slow_clients_do_not_starve_others(s.port)
