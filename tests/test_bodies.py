"""Request bodies and wsgi.input: sizes, chunked, read()/read(n)/readline()/readline(n)/
readlines()/iteration, 413, Expect: 100-continue, unread bodies on keep-alive."""
import hashlib
import json
import os
import time

from harness.http import Conn, build_request, request

LINES = b"first line\nsecond line is longer\n\nfourth after an empty one\nno newline at end"


def post(server, path, body, **kw):
    r = request(server.port, "POST", path, body=body, **kw)
    assert r.status == 200, f"{r}\n{server.log_tail()}"
    return r


def test_post_small_echo(server):
    r = post(server, "/body/echo", b"hello body", headers={"Content-Type": "text/plain"})
    assert r.body == b"hello body"


def test_post_empty(server):
    r = post(server, "/body/read", b"")
    out = json.loads(r.body)
    assert out["len"] == 0
    assert out["content_length"] in ("0", None)


def test_post_10mib(server):
    body = os.urandom(10 << 20)
    r = post(server, "/body/sha", body)
    out = json.loads(r.body)
    assert out["len"] == len(body)
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert out["content_length"] == str(len(body))


def test_post_10mib_echo_back(server):
    body = os.urandom(10 << 20)
    r = post(server, "/body/echo", body)
    assert len(r.body) == len(body)
    assert r.body == body


def test_post_chunked(server):
    body = os.urandom(300_000)
    r = post(server, "/body/read", body, chunked=True)
    out = json.loads(r.body)
    assert out["len"] == len(body)
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert out["input_terminated"] is True


def test_post_chunked_large(server):
    body = os.urandom(3 << 20)
    r = post(server, "/body/sha", body, chunked=True)
    out = json.loads(r.body)
    assert out["len"] == len(body) and out["sha256"] == hashlib.sha256(body).hexdigest()


def test_read_all_then_eof(server):
    body = b"x" * 100_000
    out = json.loads(post(server, "/body/read", body).body)
    assert out["len"] == len(body)
    # after the body: b"" for read(), read(n) and readline(), never blocking
    assert out["again"] == "" and out["again_n"] == "" and out["again_line"] == ""


def test_read_n(server):
    body = os.urandom(200_001)
    out = json.loads(post(server, "/body/read_n?n=7000", body).body)
    assert out["len"] == len(body)
    assert out["sha256"] == hashlib.sha256(body).hexdigest()
    assert all(0 < s <= 7000 for s in out["sizes"])
    # read(n) returns n bytes while that many remain (a file's semantics)
    assert out["sizes"][:-1] == [7000] * (len(out["sizes"]) - 1)


def test_readline(server):
    out = json.loads(post(server, "/body/readline", LINES).body)
    assert out["lines"] == [l.decode() for l in LINES.splitlines(keepends=True)]


def test_readline_size(server):
    out = json.loads(post(server, "/body/readline_size?n=6", LINES).body)
    expected = []
    for line in LINES.splitlines(keepends=True):
        expected += [line[i:i + 6].decode() for i in range(0, len(line), 6)]
    assert out["lines"] == expected


def test_readlines(server):
    out = json.loads(post(server, "/body/readlines", LINES).body)
    assert out["lines"] == [l.decode() for l in LINES.splitlines(keepends=True)]


def test_iteration(server):
    out = json.loads(post(server, "/body/iter", LINES).body)
    assert out["lines"] == [l.decode() for l in LINES.splitlines(keepends=True)]


def test_readline_long_lines_across_buffers(server):
    body = b"".join(b"%d:" % i + b"y" * (i * 997 % 150_000) + b"\n" for i in range(20))
    out = json.loads(post(server, "/body/readline", body).body)
    assert out["lines"] == [l.decode() for l in body.splitlines(keepends=True)]


def test_readline_chunked_body(server):
    out = json.loads(post(server, "/body/readlines", LINES, chunked=True).body)
    assert out["lines"] == [l.decode() for l in LINES.splitlines(keepends=True)]


def test_body_over_limit_gets_413(server):
    r = request(server.port, "POST", "/small/read", body=b"z" * 5000)
    assert r.status == 413
    r = request(server.port, "POST", "/small/read", body=b"z" * 500)
    assert r.status == 200 and json.loads(r.body)["len"] == 500


def test_expect_100_continue(server):
    body = b"q" * 50_000
    with Conn(server.port) as c:
        c.send(build_request("POST", "/body/echo", None, [
            ("Content-Length", str(len(body))), ("Expect", "100-continue"),
            ("Connection", "close")], host="x"))
        interim = c.recv_some(timeout=5)
        assert interim.startswith(b"HTTP/1.1 100"), \
            f"expected 100 Continue before sending the body, got {interim[:100]!r}"
        c.buf = interim[interim.index(b"\r\n\r\n") + 4:]
        c.send(body)
        r = c.read_response()
    assert r.status == 200 and r.body == body


def test_expect_100_continue_app_does_not_read(server):
    # Whether or not the server sends 100, the request must complete and the
    # connection must stay in sync.
    with Conn(server.port) as c:
        c.send(build_request("POST", "/body/noread", None, [
            ("Content-Length", "10"), ("Expect", "100-continue")], host="x"))
        time.sleep(0.3)
        c.send(b"0123456789")
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body)["read"] is False
        if server.kind == "apache":
            # httpd itself closes a connection whose 100-continue body was never read
            # (RFC 9110 allows it; mod_wsgi behaves the same): it must say so.
            assert r.header("connection") == "close" and r.closed, r
            return
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"


def test_keepalive_after_unread_body(server):
    with Conn(server.port) as c:
        r1 = c.request("POST", "/body/noread", body=b"GET /hello HTTP/1.1\r\n\r\n" * 4000)
        assert r1.status == 200 and json.loads(r1.body)["read"] is False
        r2 = c.request("GET", "/env/after")
        assert r2.status == 200 and json.loads(r2.body)["PATH_INFO"] == "/after"
        # partly read body
        r3 = c.request("POST", "/body/partial?n=10", body=b"a" * 200_000)
        assert r3.status == 200 and json.loads(r3.body)["got"] == 10
        r4 = c.request("GET", "/hello")
        assert r4.body == b"Hello, world!\n"


def test_keepalive_after_unread_chunked_body(server):
    with Conn(server.port) as c:
        c.send(build_request("POST", "/body/noread", b"w" * 100_000, host="x", chunked=True))
        r1 = c.read_response()
        assert r1.status == 200
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"


def test_slowly_sent_body(server):
    """The body arrives in pieces with pauses; the app still sees all of it."""
    parts = [b"part%d-" % i * 1000 for i in range(5)]
    body = b"".join(parts)
    with Conn(server.port) as c:
        c.send(build_request("POST", "/body/read", None, [
            ("Content-Length", str(len(body))), ("Connection", "close")], host="x"))
        for p in parts:
            time.sleep(0.1)
            c.send(p)
        r = c.read_response()
    out = json.loads(r.body)
    assert out["len"] == len(body) and out["sha256"] == hashlib.sha256(body).hexdigest()

