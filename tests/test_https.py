"""nginx only: rwsgi behind `listen ... ssl` with a self-signed certificate made by the
test. The environ says https, and request bodies and streamed responses go through TLS
intact. (Apache's HTTPS environ is covered in test_apache_runtime.py.)"""
import hashlib
import json
import os
import ssl
import uuid

import pytest

from harness.common import Mount, self_signed_cert
from harness.http import Conn, build_request, request, timed_stream

pytestmark = pytest.mark.only("nginx")

MOUNTS = [
    Mount("/env", "environ_app.py"),
    Mount("/body", "body_app.py"),
    Mount("/stream", "stream_app.py"),
    Mount("/errors", "errors_app.py"),
    Mount("/hello", "hello.py"),
]


@pytest.fixture(scope="module")
def tls_server(kind):
    from conftest import serve
    yield from serve(kind, MOUNTS, prepare=lambda s: self_signed_cert(s.run),
                     workers=1, threads=4, ssl=True)


def tls_request(s, method, path, **kw):
    r = request(s.port, method, path, tls=True, **kw)
    assert r.status == 200, f"{r}\n{s.log_tail()}"
    return r


def test_tls_with_the_test_certificate(tls_server):
    s = tls_server
    with Conn(s.port, tls=True) as c:
        served = c.sock.getpeercert(binary_form=True)
        assert c.sock.version().startswith("TLS")
    assert served == ssl.PEM_cert_to_DER_cert((s.run / "cert.pem").read_text())
    # the listener is TLS only: a plain-text request is not served by the app
    r = request(s.port, "GET", "/env")
    assert r.status == 400, r


def test_environ_says_https(tls_server):
    s = tls_server
    env = json.loads(tls_request(s, "GET", "/env/x?q=1").body)
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["REQUEST_SCHEME"] == "https"
    assert env["SERVER_PORT"] == str(s.port)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/env", "/x", "q=1")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_post_bodies_over_tls(tls_server):
    s = tls_server
    body = os.urandom(3 << 20)
    out = json.loads(tls_request(s, "POST", "/body/sha", body=body).body)
    assert out["len"] == len(body) and out["sha256"] == hashlib.sha256(body).hexdigest()
    echo = os.urandom(300_000)
    assert tls_request(s, "POST", "/body/echo", body=echo).body == echo
    out = json.loads(tls_request(s, "POST", "/body/read", body=body[:500_000], chunked=True).body)
    assert out["len"] == 500_000
    assert out["sha256"] == hashlib.sha256(body[:500_000]).hexdigest()
    lines = b"one\ntwo\n\nthree"
    out = json.loads(tls_request(s, "POST", "/body/readline", body=lines).body)
    assert out["lines"] == ["one\n", "two\n", "\n", "three"]


def test_streamed_response_over_tls(tls_server):
    s = tls_server
    # chunks leave one by one, as they are produced (not buffered until the end)
    t0, arrivals = timed_stream(s.port, "/stream/chunks?n=4&delay=0.4", tls=True)
    data = b"".join(d for _, d in arrivals)
    assert data.startswith(b"HTTP/1.1 200") and b"chunk 3\n" in data
    seen = b""
    first_at = None
    for t, d in arrivals:
        seen += d
        if first_at is None and b"chunk 0\n" in seen:
            first_at = t - t0
    assert arrivals[-1][0] - t0 >= 1.1
    assert first_at is not None and first_at < 0.35, f"first chunk after {first_at}s"
    with Conn(s.port, tls=True) as c:
        r = c.request("GET", "/stream/chunks?n=5")
        assert r.chunked and r.complete and not r.closed
        assert r.body == b"".join(b"chunk %d\n" % i for i in range(5))
        total = (8 << 20) + 4321
        r = c.request("GET", f"/stream/big?total={total}&chunk=65536&token={uuid.uuid4().hex}")
        assert r.status == 200 and r.complete and len(r.body) == total
        assert r.body[:65536] == bytes(range(256)) * 256
        r = c.request("GET", "/hello")  # the TLS connection is still in sync
        assert r.body == b"Hello, world!\n"


def test_broken_stream_over_tls_is_not_complete(tls_server):
    s = tls_server
    with Conn(s.port, tls=True) as c:
        c.send(build_request("GET", "/errors/after_body", host="x"))
        r = c.read_response()
    assert r.status == 200 and r.body.startswith(b"first part of the body\n")
    assert r.chunked and not r.complete and r.closed
