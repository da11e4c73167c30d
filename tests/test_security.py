"""What a careless or hostile app, client or request body can make the server do:
no forged responses through bodyless statuses or 1xx, the right scheme behind a
TLS-terminating proxy, and request bodies that cost their size once, not three times."""
import json
import os
import re
import uuid

import pytest

from harness.common import Mount
from harness.http import Conn, build_request, get, request

# Raw-socket checks of what the server puts on the wire, and memory of the worker.
pytestmark = pytest.mark.server_side

HELLO = b"Hello, world!\n"


def pipelined(server, first: str, method: str = "GET") -> bytes:
    """`first`, then GET /hello on the same connection (closing it); every byte the
    server sent back."""
    with Conn(server.port, timeout=15) as c:
        c.send(build_request(method, first, host="x")
               + build_request("GET", "/hello", headers=[("Connection", "close")], host="x"))
        return c.read_to_eof(limit=1 << 20)


def assert_second_is_hello(data: bytes, first_status: int):
    """The reply holds exactly two responses: the first one's head and nothing else, then
    /hello's answer. Anything between them (the app's body) would be read by the client
    as the second response."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data[:300]
    assert head.startswith(b"HTTP/1.1 %d " % first_status), data[:300]
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), f"bytes after the first head: {rest[:200]!r}"
    assert b"X-Forged" not in data and b"forged!" not in data, data[:600]
    assert rest.endswith(HELLO), rest[-200:]
    assert data.count(b"HTTP/1.1 ") == 2, data[:600]
    return head


@pytest.mark.parametrize("code", [204, 304])
@pytest.mark.parametrize("how", ["list", "write", "stream", "file"])
def test_no_body_after_204_or_304(server, code, how):
    token = uuid.uuid4().hex
    data = pipelined(server, f"/bodyless/{code}/{how}?token={token}")
    head = assert_second_is_hello(data, code)
    if code == 204:
        assert b"content-length" not in head.lower(), head
    if how == "stream":
        # The endless body was not walked: its iterable was closed at the first chunk.
        assert server.wait_marker(f"{token}.closed") == "closed"


def test_no_body_after_head_request(server):
    token = uuid.uuid4().hex
    data = pipelined(server, f"/bodyless/200/stream?token={token}", method="HEAD")
    assert_second_is_hello(data, 200)
    assert server.wait_marker(f"{token}.closed") == "closed"


def test_dropped_body_is_logged_once_per_app(make_server):
    s = make_server([Mount("/bodyless", "bodyless_app.py"), Mount("/hello", "hello.py")])
    for path in ["/bodyless/204", "/bodyless/204/write", "/bodyless/304/stream"] * 2:
        assert get(s.port, path).status in (204, 304)
    assert s.wait_error_log(r"returned a body with a 204 or 304 status")
    lines = [l for l in s.error_log().splitlines() if "returned a body with a 204 or 304" in l]
    assert len(lines) == 1, lines
    assert "bodyless_app.py" in lines[0]


@pytest.mark.parametrize("code", [100, 101, 103])
def test_interim_status_is_refused(server, code):
    mark, _ = server.log_mark()
    data = pipelined(server, f"/bodyless/{code}")
    assert data.startswith(b"HTTP/1.1 500 "), data[:300]
    assert b"X-Forged" not in data and b"forged!" not in data
    # Both servers close the connection after a 500; if one went on, the next response
    # must be /hello's.
    assert data.count(b"HTTP/1.1 ") == 1 or data.endswith(HELLO), data[-300:]
    assert server.wait_error_log(r"1xx status is not a final response", mark)


# -- the scheme behind a TLS-terminating proxy ----------------------------------------------

def proxied_server(kind, make_server):
    """The documented recipe: X-Forwarded-Proto from the trusted proxy sets HTTPS."""
    if kind == "nginx":
        return make_server(
            [Mount("/env", "environ_app.py", params={"HTTPS": "$forwarded_https"})],
            http_extra=["map $http_x_forwarded_proto $forwarded_https "
                        "{ default off; https on; }"])
    return make_server(
        [Mount("/env", "environ_app.py", extra=["SetEnvIf X-Forwarded-Proto https HTTPS=1"])],
        extra=["LoadModule setenvif_module /usr/lib/apache2/modules/mod_setenvif.so"])


def environ(port, **kw):
    r = get(port, "/env/x", **kw)
    assert r.status == 200, r
    return json.loads(r.body)


def test_url_scheme_follows_the_proxy_recipe(kind, make_server):
    s = proxied_server(kind, make_server)
    env = environ(s.port, headers={"X-Forwarded-Proto": "https"})
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] in ("on", "1")
    env = environ(s.port, headers={"X-Forwarded-Proto": "http"})
    assert env["wsgi.url_scheme"] == "http"
    assert env.get("HTTPS") in (None, "off")


def test_client_https_header_does_not_select_https(server):
    env = environ(server.port, headers={"HTTPS": "on"})
    assert env["wsgi.url_scheme"] == "http"
    assert env["HTTP_HTTPS"] == "on"
    assert "HTTPS" not in env


# -- request bodies cost their size once ----------------------------------------------------

BIG = 96 << 20


def peak_rise(server, path: str, body: bytes, **kw) -> tuple[dict, int]:
    """POSTs `body` to the server's only worker and returns the app's answer and how far
    the worker's peak RSS rose above its size before the request, in bytes."""
    pid = environ(server.port)["_pid"]
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current size

    def status_kb(field):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))

    before = status_kb("VmRSS")
    r = request(server.port, "POST", path, body=body, timeout=120, **kw)
    assert r.status == 200, r
    assert environ(server.port)["_pid"] == pid, "the request ran in another worker"
    return json.loads(r.body), (status_kb("VmHWM") - before) * 1024


@pytest.fixture
def body_server(kind, make_server):
    return make_server([Mount("/body", "body_app.py"), Mount("/env", "environ_app.py")],
                       max_body=BIG + (1 << 20))


def assert_about_one_body(rise: int):
    # One copy of the body plus the interpreter's and server's own slack. Before the fix
    # a growing buffer, its copy and the bytes object held three.
    assert rise < 1.4 * BIG, f"peak RSS rose {rise >> 20} MiB for a {BIG >> 20} MiB body"


def test_readline_of_a_huge_line_holds_it_once(body_server):
    body = b"x" * BIG
    out, rise = peak_rise(body_server, "/body/readline_len", body)
    assert out["line_len"] == BIG and out["rest_len"] == 0
    assert_about_one_body(rise)


def test_chunked_read_holds_the_body_once(body_server):
    body = os.urandom(1 << 20) * (BIG >> 20)
    out, rise = peak_rise(body_server, "/body/read_len", body, chunked=True)
    assert out["len"] == BIG
    assert_about_one_body(rise)


@pytest.mark.only("apache")
def test_configured_keys_never_replace_per_request_ones(make_server):
    """nginx refuses such a wsgi_param at `nginx -t` (test_config.py); Apache's SetEnv
    cannot be refused, so the engine leaves those keys out of the environ."""
    s = make_server(
        [Mount("/env", "environ_app.py", extra=["SetEnv REQUEST_METHOD forged",
                                               "SetEnv HTTP_X_FORWARDED_FOR 6.6.6.6",
                                               "SetEnv wsgi.url_scheme forged",
                                               "SetEnv APP_SETTING kept"])],
        extra=["LoadModule env_module /usr/lib/apache2/modules/mod_env.so"])
    env = environ(s.port)
    assert env["REQUEST_METHOD"] == "GET"
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert env["wsgi.url_scheme"] == "http"
    assert env["APP_SETTING"] == "kept"
