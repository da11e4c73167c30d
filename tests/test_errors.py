"""Application errors and the PEP 3333 corners servers get wrong: every one must give a
500 (nothing sent yet) or a visibly broken body (something sent), a clear log line, and
never put bad bytes on the wire."""
import json

import pytest

from harness.common import Mount
from harness.http import Conn, get, request


def expect_500(server, path, log_pattern, mark):
    r = get(server.port, path)
    assert r.status == 500, f"{path}: expected 500, got {r}"
    assert b"must not be sent" not in r.body
    log = server.wait_error_log(log_pattern, mark)
    assert log, f"no error-log line matching {log_pattern!r}:\n{server.error_log(mark)}"
    return r, log


def test_exception_before_body_is_500_with_traceback(server):
    mark, _ = server.log_mark()
    r, log = expect_500(server, "/errors/before", r"RuntimeError: boom-before-body", mark)
    assert "Traceback (most recent call last)" in log
    assert "errors_app.py" in log  # the frame of the app is in the traceback
    assert "boom-before-body" not in r.body.decode("latin-1"), "traceback leaked to the client"


def test_server_keeps_serving_after_exception(server):
    get(server.port, "/errors/before")
    assert get(server.port, "/hello").body == b"Hello, world!\n"


def test_exception_after_body_breaks_framing(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/after_body")
        assert r.status == 200  # headers were out already
        assert r.body.startswith(b"first part of the body\n")
        assert r.chunked, "a streamed HTTP/1.1 body of unknown length is chunked"
        assert not r.complete, "the terminating 0-chunk was sent after an exception: " \
                               "the broken body looks complete"
        assert r.closed, "the connection must be closed after a broken body"
    assert server.wait_error_log(r"RuntimeError: boom-after-body", mark), server.log_tail()


def test_exception_after_body_http10_closes(server):
    with Conn(server.port) as c:
        c.send(b"GET /errors/after_body HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.body == b"first part of the body\n" and r.closed


def test_headers_deferred_past_empty_chunk(server):
    # yield b"" then raise: the headers must not have gone out, so it is still a 500
    mark, _ = server.log_mark()
    expect_500(server, "/errors/empty_then_raise", r"boom-after-empty-chunk", mark)


def test_start_response_twice_without_exc_info(server):
    mark, _ = server.log_mark()
    r, log = expect_500(server, "/errors/start_twice", r"start_response", mark)
    assert r.body != b"second status won\n"
    assert "AssertionError" in log or "second time" in log, log


def test_exc_info_before_headers_sent_replaces_status(server):
    r = get(server.port, "/errors/exc_info_before")
    assert r.status == 503
    assert r.header("x-replaced") == "yes"
    assert r.body == b"error page from the app\n"


def test_exc_info_after_headers_sent_is_reraised(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/exc_info_after")
    assert r.status == 200
    assert r.body.startswith(b"headers are out\n")
    assert b"tail that must not be sent" not in r.body
    assert not r.complete and r.closed
    log = server.wait_error_log(r"start_response re-raised: late-error-reraised", mark)
    assert log, server.error_log(mark)
    assert "did NOT re-raise" not in log


@pytest.mark.parametrize("case,name", [
    ("crlf_value", "X-Crlf-Value"),
    ("lf_value", "X-Lf-Value"),
    ("cr_name", "X-Cr"),
    ("lf_name", "X-Lf-Name"),
    ("latin1", "X-Not-Latin1"),
    ("space_name", "X Space Name"),
])
def test_bad_header_is_500_never_on_wire(server, case, name):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", f"/errors/header_{case}", headers={"Connection": "close"})
    assert r.status == 500, r
    assert b"X-Injected" not in r.raw_head and b"X-Injected" not in r.body
    assert name.encode() not in r.raw_head
    assert server.wait_error_log(name, mark), \
        f"no log line naming header {name!r}:\n{server.error_log(mark)}"


def test_bad_status_line_is_500(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/bad_status", headers={"Connection": "close"})
    assert r.status == 500
    assert b"X-Injected" not in r.raw_head
    assert server.wait_error_log(r"status", mark), server.error_log(mark)


def test_str_body_item_in_list_is_500(server):
    mark, _ = server.log_mark()
    r, _ = expect_500(server, "/errors/str_item_list", r"bytes|str", mark)
    assert b"a str, not bytes" not in r.body


def test_str_body_item_after_bytes_never_complete(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/str_item_later")
    assert not (r.status == 200 and r.complete), f"a str item gave a complete 200: {r}"
    assert b"then a str" not in r.body
    assert server.wait_error_log(r"bytes|str", mark), server.error_log(mark)


@pytest.mark.parametrize("path,pattern", [
    ("/errors/returns_none", r"None|iterable|NoneType"),
    ("/errors/non_iterable", r"int|iterable"),
    ("/errors/no_start_response", r"start_response"),
])
def test_bad_return_values_are_500(server, path, pattern):
    mark, _ = server.log_mark()
    expect_500(server, path, pattern, mark)
    assert get(server.port, "/hello").status == 200


def test_content_length_overrun_never_on_wire(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/cl_overrun")
        assert r.status == 200 and r.content_length == 5 and r.body == b"12345"
        # the next response on the same connection is intact: no extra bytes leaked
        if not c.eof:
            try:
                r2 = c.request("GET", "/hello")
            except Exception as e:  # closed connection is fine, garbage is not
                assert c.eof, f"connection neither closed nor in sync: {e}"
            else:
                assert r2.status == 200 and r2.body == b"Hello, world!\n"
                assert b"EXTRA" not in r2.raw_head
    assert server.wait_error_log(r"Content-Length|content-length", mark), server.error_log(mark)


def test_content_length_overrun_single_item(server):
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/cl_overrun_one")
        assert r.status == 200 and r.body == b"12345"
        if not c.eof:
            try:
                r2 = c.request("GET", "/hello")
            except Exception as e:
                assert c.eof, f"connection neither closed nor in sync: {e}"
            else:
                assert r2.body == b"Hello, world!\n"


def test_content_length_short_closes_connection(server):
    mark, _ = server.log_mark()
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/cl_short")
    assert r.status == 200 and r.content_length == 100
    assert r.body == b"only ten.\n"
    assert not r.complete and r.closed, f"short body must end in a closed connection: {r}"
    assert server.wait_error_log(r"Content-Length|content-length|fewer", mark), server.error_log(mark)


# -- broken app files: a dedicated server, since they must not take the others down --

@pytest.fixture(scope="module")
def broken_server(request, kind):
    from conftest import SERVERS
    s = SERVERS[kind]()
    s.start([
        Mount("/hello", "hello.py"),
        Mount("/broken", "broken_import.py"),
        Mount("/missing", "/nonexistent/rwsgi/app.py"),
        Mount("/nocallable", "no_callable.py"),
    ], workers=1)
    yield s
    s.stop()
    s.cleanup()


def _missing_status(kind):
    # nginx: 500. Apache: mod_wsgi answers 404 for a missing script file; accept both.
    return (500,) if kind == "nginx" else (404, 500)


def test_import_error_is_500_with_traceback(broken_server):
    s = broken_server
    mark, _ = s.log_mark()
    r = get(s.port, "/broken/x")
    assert r.status == 500
    log = s.wait_error_log(r"this_module_does_not_exist_rwsgi", mark)
    assert log and "Traceback" in log and "broken_import.py" in log, s.error_log(mark)
    assert get(s.port, "/hello").body == b"Hello, world!\n"
    # still 500 on the next request (a failed load is not cached as success)
    assert get(s.port, "/broken/x").status == 500


def test_missing_app_file(broken_server, kind):
    s = broken_server
    mark, _ = s.log_mark()
    r = get(s.port, "/missing")
    assert r.status in _missing_status(kind), r
    assert s.wait_error_log(r"/nonexistent/rwsgi/app\.py", mark), s.error_log(mark)
    assert get(s.port, "/hello").body == b"Hello, world!\n"
    assert get(s.port, "/static.txt").body == b"static file\n"


def test_missing_callable(broken_server):
    s = broken_server
    mark, _ = s.log_mark()
    r = get(s.port, "/nocallable")
    assert r.status == 500
    assert s.wait_error_log(r"application", mark), s.error_log(mark)
    assert get(s.port, "/hello").status == 200
