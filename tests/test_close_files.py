"""close() on the app's iterable on every path, client disconnects, and
wsgi.file_wrapper (sendfile for real files, reading for BytesIO, short files)."""
import hashlib
import socket
import struct
import time
import uuid

from harness.common import wait_until
from harness.http import Conn, build_request, get


def token():
    return uuid.uuid4().hex


def test_close_called_on_normal_end(server):
    t = token()
    r = get(server.port, f"/close/x?token={t}&n=3")
    assert r.status == 200 and r.complete
    assert r.body == b"item 000000\nitem 000001\nitem 000002\n"
    assert server.wait_marker(t + ".closed") == "closed produced=3"


def test_close_called_after_exception_in_iteration(server):
    t = token()
    mark, _ = server.log_mark()
    r = get(server.port, f"/close/x?token={t}&n=5&fail_at=2")
    assert r.status == 200 and not r.complete
    assert server.wait_marker(t + ".closed") == "closed produced=2"
    assert server.wait_error_log("close-app-failure", mark)


def test_close_called_after_exception_before_first_item(server):
    t = token()
    r = get(server.port, f"/close/x?token={t}&n=5&fail_at=0")
    assert r.status == 500
    assert server.wait_marker(t + ".closed") == "closed produced=0"


def test_close_called_for_head(server):
    t = token()
    with Conn(server.port) as c:
        r = c.request("HEAD", f"/close/x?token={t}&n=3")
        assert r.status == 200 and r.body == b""
    assert server.wait_marker(t + ".closed") is not None


def test_client_disconnect_mid_stream(server):
    """The client leaves during a long stream: close() is called, the app stops being
    iterated promptly, nginx logs 499, and the server keeps serving."""
    t = token()
    _, amark = server.log_mark()
    c = Conn(server.port)
    c.send(build_request("GET", f"/close/x?token={t}&n=400&delay=0.02",
                         headers=[("Connection", "close")], host="x"))
    got = c.recv_some(timeout=5)
    assert got.startswith(b"HTTP/1.1 200")
    time.sleep(0.3)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    c.close()
    closed = server.wait_marker(t + ".closed", timeout=5)
    assert closed is not None, "close() was not called after the client disconnected"
    produced = int(closed.split("=")[1])
    assert produced < 200, f"the app kept being iterated after the client left ({produced}/400)"
    assert get(server.port, "/hello").body == b"Hello, world!\n"
    # the access log shows a response cut short (status 200 was already sent)
    line = server.wait_access_log(rf'"GET /close/x\?token={t}[^"]*" \d+ \d+', amark)
    assert line, server.access_log(amark)
    logged = [l for l in line.splitlines() if t in l][0]
    sent = int(logged.split('" ')[1].split()[1])
    assert sent < 400 * 12, f"access log claims the whole body went out: {logged}"


def test_client_disconnect_during_call(server):
    """The client leaves while the app is still inside its call (sleeping before the
    first item): no crash, close() still called, 499 logged by nginx."""
    t = token()
    _, amark = server.log_mark()
    c = Conn(server.port)
    c.send(build_request("GET", f"/close/x?token={t}&n=3&sleep=1.0",
                         headers=[("Connection", "close")], host="x"))
    time.sleep(0.3)
    c.close()
    assert server.wait_marker(t + ".closed", timeout=6) is not None
    assert get(server.port, "/hello").status == 200
    if server.kind == "nginx":
        assert server.wait_access_log(rf'"GET /close/x\?token={t}[^"]*" 499', amark), \
            server.access_log(amark)


def test_many_disconnects_then_still_serving(server):
    for i in range(20):
        c = Conn(server.port)
        c.send(build_request("GET", "/stream/chunks?n=50&delay=0.01", host="x"))
        if i % 2:
            c.recv_some(timeout=2)
        c.close()
    assert wait_until(lambda: get(server.port, "/hello").status == 200, 5)


# -- wsgi.file_wrapper --

def blob(server):
    return (server.data_dir / "blob.bin").read_bytes()


def test_file_wrapper_real_file(server):
    t = token()
    with Conn(server.port) as c:
        r = c.request("GET", f"/files/real?token={t}")
        assert r.status == 200 and r.complete
        data = blob(server)
        assert r.content_length == len(data)
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"
    assert server.wait_marker(t + ".closed") == "real"


def test_file_wrapper_real_file_without_length(server):
    t = token()
    r = get(server.port, f"/files/real_nolength?token={t}")
    assert r.status == 200 and r.complete
    assert r.body == blob(server)
    assert server.wait_marker(t + ".closed") == "real"


def test_file_wrapper_from_offset(server):
    t = token()
    r = get(server.port, f"/files/offset?token={t}")
    assert r.status == 200 and r.complete
    assert r.body == blob(server)[1000:]


def test_file_wrapper_bytesio(server):
    t = token()
    r = get(server.port, f"/files/bytesio?token={t}")
    assert r.status == 200 and r.complete
    assert r.body == blob(server)
    assert server.wait_marker(t + ".closed") == "bytesio"


def test_file_wrapper_short_file(server):
    t = token()
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", f"/files/short?token={t}")
    data = blob(server)
    assert r.status == 200
    assert r.content_length == len(data) + 5000
    assert not r.complete and r.closed, "a file shorter than Content-Length must not look complete"
    assert r.body == data[:len(r.body)]
    assert server.wait_marker(t + ".closed") == "real"


def test_file_wrapper_head(server):
    t = token()
    with Conn(server.port) as c:
        r = c.request("HEAD", f"/files/real?token={t}")
        assert r.status == 200 and r.body == b""
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"
