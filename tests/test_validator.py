"""The suite's conformant apps behind wsgiref.validate.validator (warnings are errors):
GET, POST with every wsgi.input method, streaming, write(), file_wrapper, HEAD. Any
violation by the server shows up as a 500 and an AssertionError/WSGIWarning in the log."""
import hashlib
import json

import pytest

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
