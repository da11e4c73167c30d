"""nginx only: rwsgi behind an HTTP/2 listener (cleartext, prior knowledge), driven by
curl. Requests and responses take nginx's HTTP/2 path (r->stream) through the module:
the environ says HTTP/2.0, bodies arrive intact, responses stream, an app error is a 500,
and a client that leaves mid-call costs no worker."""
import hashlib
import json
import subprocess
import time

import pytest

from harness.common import Mount, children_of

pytestmark = pytest.mark.only("nginx")

MOUNTS = [
    Mount("/env", "environ_app.py"),
    Mount("/body", "body_app.py"),
    Mount("/stream", "stream_app.py"),
    Mount("/errors", "errors_app.py"),
    Mount("/sleep", "sleep_app.py"),
]


@pytest.fixture(scope="module")
def h2_server(kind):
    from conftest import serve
    yield from serve(kind, MOUNTS, workers=1, threads=4, http2=True)


def curl(server, path, *args, timeout=20):
    """Runs curl over HTTP/2; returns (status, body bytes)."""
    p = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}",
         *args, server.url(path)],
        capture_output=True, timeout=timeout)
    body, _, tail = p.stdout.rpartition(b"\n")
    version, code = tail.decode().split()
    assert version == "2", f"curl spoke HTTP/{version}"
    return int(code), body


def test_environ_over_http2(h2_server):
    status, body = curl(h2_server, "/env/a/b?x=%20y")
    assert status == 200
    env = json.loads(body)
    assert env["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/env", "/a/b", "x=%20y")
    assert env["HTTP_HOST"] == f"127.0.0.1:{h2_server.port}"


def test_post_body_over_http2(h2_server, tmp_path):
    data = bytes(range(256)) * 4096 * 3  # 3 MiB: nginx spills it to a temp file
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    status, body = curl(h2_server, "/body/sha", "--data-binary", f"@{f}",
                        "-H", "Content-Type: application/octet-stream")
    assert status == 200
    out = json.loads(body)
    assert out["len"] == len(data)
    assert out["sha256"] == hashlib.sha256(data).hexdigest()


def test_streamed_response_over_http2(h2_server):
    status, body = curl(h2_server, "/stream/?n=50")
    assert status == 200
    assert body == b"".join(b"chunk %d\n" % i for i in range(50))


def test_error_is_500_over_http2(h2_server):
    status, _ = curl(h2_server, "/errors/before")
    assert status == 500
    assert "boom-before-body" in h2_server.error_log()


def test_client_leaving_mid_call_over_http2(h2_server):
    workers = children_of(h2_server.master_pid)
    p = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--max-time", "0.5",
                        h2_server.url("/sleep/?t=2")], capture_output=True, timeout=20)
    assert p.returncode == 28  # curl's "operation timed out": we left mid-call
    time.sleep(2.5)
    status, body = curl(h2_server, "/env/after")
    assert status == 200 and json.loads(body)["PATH_INFO"] == "/after"
    assert children_of(h2_server.master_pid) == workers
