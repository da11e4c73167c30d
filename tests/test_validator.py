"""The suite's conformant apps behind wsgiref.validate.validator (warnings are errors):
GET, POST with every wsgi.input method, streaming, write(), file_wrapper, HEAD. Any
violation by the server shows up as a 500 and an AssertionError/WSGIWarning in the log."""
import hashlib
import json

import pytest

from harness import validate
from harness.common import Mount, wait_until
from harness.http import Conn, get, request

VIOLATION = r"AssertionError|WSGIWarning"


def check_clean(server, mark):
    log = server.error_log(mark)
    import re
    bad = [l for l in log.splitlines() if re.search(VIOLATION, l)]
    assert not bad, "validator complained:\n" + "\n".join(bad)


def test_validator_get(server):
    mark, _ = server.log_mark()
    r = get(server.port, "/v/hello")
    assert r.status == 200 and r.body == b"Hello, world!\n", f"{r}\n{server.log_tail()}"
    r = get(server.port, "/v/environ/x?q=1")
    assert r.status == 200, server.log_tail()
    env = json.loads(r.body)
    assert env["SCRIPT_NAME"] == "/v/environ" and env["PATH_INFO"] == "/x"
    r = get(server.port, "/v/environ")
    assert r.status == 200, server.log_tail()
    check_clean(server, mark)


@pytest.mark.parametrize("mode", ["read", "readline", "readlines", "iter"])
def test_validator_post(server, mode):
    mark, _ = server.log_mark()
    body = b"line one\nline two\n" * 5000 + b"tail"
    r = request(server.port, "POST", f"/v/input/{mode}", body=body,
                headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, f"{r}\n{server.log_tail()}"
    assert r.body == body
    check_clean(server, mark)


def test_validator_stream_write_files_head(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/v/stream/chunks?n=3")
        assert r.status == 200 and r.body == b"chunk 0\nchunk 1\nchunk 2\n", server.log_tail()
        r = c.request("GET", "/v/write")
        assert r.status == 200 and r.body == b"written 1\nwritten 2\nreturned 3\n"
        r = c.request("GET", "/v/files/real?token=validator")
        data = (server.data_dir / "blob.bin").read_bytes()
        assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
        r = c.request("GET", "/v/files/bytesio?token=validator2")
        assert r.status == 200 and r.body == data
        r = c.request("HEAD", "/v/hello")
        assert r.status == 200 and r.body == b""
        r = c.request("GET", "/v/hello", version="HTTP/1.0")
        assert r.status == 200
    check_clean(server, mark)


# -- the RWSGI_VALIDATE switch (harness/validate.py) --

def test_validate_switch_wraps_the_apps(server):
    """With RWSGI_VALIDATE=1 the suite's mounts run behind wsgiref.validate: the app sees
    the validator's wsgi.input / wsgi.errors wrappers; without it, the server's objects."""
    env = json.loads(get(server.port, "/env/x").body)
    wrapped = (env["wsgi.input"], env["wsgi.errors"]) == ("<_InputWrapper>", "<ErrorWrapper>")
    assert wrapped == validate.ENABLED, (env["wsgi.input"], env["wsgi.errors"])
    if not validate.ENABLED:
        assert env["wsgi.input"] == "<Input>"


@pytest.mark.validator_complaints
def test_validator_complaints_are_recorded(make_server):
    """A mount forced behind the validator (Mount.validate=True: no route bypassed)
    records each complaint with its request, and the harness hands them to the check
    that fails tests; a conformant request records nothing."""
    s = make_server([Mount("/lint", "errors_app.py", validate=True),
                     Mount("/ok", "hello.py", validate=True)])
    r = get(s.port, "/ok")
    assert r.status == 200 and r.body == b"Hello, world!\n"
    r = get(s.port, "/lint/cl_exact")
    assert r.status == 200 and r.body == b"hello world"
    assert s.validator_complaints() == ""
    assert get(s.port, "/lint/returns_none").status == 500
    assert get(s.port, "/lint/header_space_name").status == 500
    log = wait_until(lambda: (lambda t: t if t.count("\n") >= 2 else None)(
        s.validator_complaints()), 5)
    assert log, s.validator_complaints()
    lines = log.splitlines()
    assert any("GET /lint/returns_none" in l and "must return an iterator" in l for l in lines), log
    assert any("GET /lint/header_space_name" in l and "Bad header name" in l for l in lines), log
    found = validate.take()
    assert sum(s.run.name in l for l in found) == len(lines), found
