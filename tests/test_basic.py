"""Hello, the environ, mounts (SCRIPT_NAME / PATH_INFO), several apps side by side, HEAD,
keep-alive, pipelining, HTTP/1.0, Content-Length."""
import json

import pytest

from harness.http import Conn, build_request, get, request


def env_of(resp):
    assert resp.status == 200, f"{resp}"
    return json.loads(resp.body)


def test_hello(server):
    r = get(server.port, "/hello")
    assert r.status == 200
    assert r.body == b"Hello, world!\n"
    assert r.header("content-type") == "text/plain"
    assert r.content_length == len(b"Hello, world!\n")
    assert not r.chunked


def test_environ_required_keys(server):
    with Conn(server.port) as c:
        r = c.request("GET", "/env/some/path?a=1&b=2", headers={"Connection": "close"})
        client_port = c.local_port
    env = env_of(r)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == "/env"
    assert env["PATH_INFO"] == "/some/path"
    assert env["QUERY_STRING"] == "a=1&b=2"
    assert env["SERVER_PORT"] == str(server.port)
    assert isinstance(env["SERVER_NAME"], str) and env["SERVER_NAME"]
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True
    assert isinstance(env["wsgi.multiprocess"], bool)
    assert env["wsgi.run_once"] is False
    assert "wsgi.input_terminated" in env
    assert env["_file_wrapper_callable"] is True
    assert env["_methods wsgi.input"] == ["__iter__", "read", "readline", "readlines"]
    assert {"write", "writelines", "flush"} <= set(env["_methods wsgi.errors"])
    # GET without a body: no CONTENT_LENGTH / CONTENT_TYPE invented as HTTP_ keys
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env


def test_mount_root_has_empty_path_info(server):
    env = env_of(get(server.port, "/env"))
    assert env["SCRIPT_NAME"] == "/env"
    assert env["PATH_INFO"] == ""
    env = env_of(get(server.port, "/env/"))
    assert env["SCRIPT_NAME"] == "/env"
    assert env["PATH_INFO"] == "/"


def test_path_info_is_decoded_latin1_and_query_raw(server):
    env = env_of(get(server.port, "/env/a%20b/caf%C3%A9/%41?x=%20y&z=%C3%A9+1"))
    assert env["SCRIPT_NAME"] == "/env"
    # UTF-8 bytes of "café" each mapped to one code point (latin-1)
    assert env["PATH_INFO"] == "/a b/caf\u00c3\u00a9/A"
    assert env["QUERY_STRING"] == "x=%20y&z=%C3%A9+1"


def test_empty_query_string_present(server):
    env = env_of(get(server.port, "/env/x"))
    assert env["QUERY_STRING"] == ""


def test_http_host_as_sent(server):
    env = env_of(request(server.port, "GET", "/env", host="Example.COM:8123"))
    assert env["HTTP_HOST"] == "Example.COM:8123"


def test_request_headers_mapped(server):
    env = env_of(request(server.port, "GET", "/env", headers=[
        ("User-Agent", "rwsgi-test/1"), ("X-Custom-Thing", "value with  spaces"),
        ("Accept", "text/plain")]))
    assert env["HTTP_USER_AGENT"] == "rwsgi-test/1"
    assert env["HTTP_X_CUSTOM_THING"] == "value with  spaces"
    assert env["HTTP_ACCEPT"] == "text/plain"


def test_underscore_headers_dropped(server):
    env = env_of(request(server.port, "GET", "/env", headers=[
        ("X-Forwarded-For", "10.0.0.1"), ("X_Forwarded_For", "6.6.6.6"),
        ("X_Only_Underscore", "evil")]))
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "HTTP_X_ONLY_UNDERSCORE" not in env
    assert "6.6.6.6" not in json.dumps(env)


def test_content_type_and_length_not_duplicated(server):
    r = request(server.port, "POST", "/env", body=b"a=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    env = env_of(r)
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert env["REQUEST_METHOD"] == "POST"


def test_server_protocol_http10_stays(server):
    env = env_of(request(server.port, "GET", "/env", version="HTTP/1.0"))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_wsgi_errors_goes_to_error_log(server):
    mark, _ = server.log_mark()
    env_of(get(server.port, "/env?errors=token-3f9a"))
    assert server.wait_error_log(r"wsgi\.errors line token-3f9a", mark), server.log_tail()


def test_several_apps_side_by_side(server):
    r1 = get(server.port, "/hello")
    r2 = get(server.port, "/env/x")
    r3 = get(server.port, "/env_other/x")
    r4 = get(server.port, "/write")
    assert r1.body == b"Hello, world!\n"
    assert r2.header("x-app") == "environ" and json.loads(r2.body)["SCRIPT_NAME"] == "/env"
    assert r3.body == b"other callable\n"
    assert r4.body == b"written 1\nwritten 2\nreturned 3\n"
    # the static file location next to them still works
    s = get(server.port, "/static.txt")
    assert s.status == 200 and s.body == b"static file\n"


def test_unknown_path_is_not_an_app(server):
    r = get(server.port, "/nothing-mounted-here")
    assert r.status == 404


def test_head_runs_app_sends_no_body(server):
    with Conn(server.port) as c:
        r = c.request("HEAD", "/hello")
        assert r.status == 200
        assert r.body == b""
        # Same connection still in sync: no body bytes were left on the wire.
        r2 = c.request("GET", "/hello")
        assert r2.status == 200 and r2.body == b"Hello, world!\n"
        r3 = c.request("HEAD", "/stream/chunks?n=3")
        assert r3.status == 200 and r3.body == b""
        r4 = c.request("GET", "/hello", headers={"Connection": "close"})
        assert r4.body == b"Hello, world!\n"


def test_head_request_method_in_environ(server):
    # HEAD must reach the app as HEAD (not be mapped to GET) on both servers by default.
    r = request(server.port, "HEAD", "/env")
    assert r.status == 200 and r.body == b""
    assert r.header("x-app") == "environ"


def test_keepalive_two_requests_one_connection(server):
    with Conn(server.port) as c:
        r1 = c.request("GET", "/env/one")
        r2 = c.request("GET", "/env/two")
        env1, env2 = env_of(r1), env_of(r2)
        assert not r1.closed and not r2.closed
        assert env1["PATH_INFO"] == "/one" and env2["PATH_INFO"] == "/two"
        assert env1["REMOTE_PORT"] == env2["REMOTE_PORT"] == str(c.local_port)
        r3 = c.request("GET", "/stream/chunks?n=4")
        assert r3.chunked and r3.complete
        assert r3.body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
        r4 = c.request("GET", "/hello")
        assert r4.body == b"Hello, world!\n"


def test_pipelined_requests(server):
    with Conn(server.port) as c:
        host = f"127.0.0.1:{server.port}"
        c.send(build_request("GET", "/env/p1", host=host)
               + build_request("POST", "/body/echo", b"pipelined body", host=host)
               + build_request("GET", "/stream/chunks?n=2", host=host)
               + build_request("GET", "/hello", headers={"Connection": "close"}, host=host))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        r4 = c.read_response()
    assert env_of(r1)["PATH_INFO"] == "/p1"
    assert r2.status == 200 and r2.body == b"pipelined body"
    assert r3.complete and r3.body == b"chunk 0\nchunk 1\n"
    assert r4.body == b"Hello, world!\n"


def test_http10_close_delimited_stream(server):
    with Conn(server.port) as c:
        c.send(b"GET /stream/chunks?n=3 HTTP/1.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
    assert r.version in ("HTTP/1.0", "HTTP/1.1")
    assert r.status == 200
    assert not r.chunked, "chunked encoding must not be used for an HTTP/1.0 client"
    assert r.body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert r.closed


def test_http10_content_length_response(server):
    with Conn(server.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and r.body == b"Hello, world!\n" and not r.chunked


def test_streamed_response_is_chunked_for_http11(server):
    r = get(server.port, "/stream/chunks?n=5")
    assert r.status == 200
    assert r.chunked and r.complete
    assert r.content_length is None
    assert r.body == b"".join(b"chunk %d\n" % i for i in range(5))


def test_content_length_honoured(server):
    r = get(server.port, "/errors/cl_exact")
    assert r.status == 200
    assert r.content_length == 11
    assert not r.chunked
    assert r.body == b"hello world"
    # Content-Length with a streamed (generator) body keeps the connection usable
    with Conn(server.port) as c:
        r1 = c.request("GET", "/stream/chunks?n=2&cl=16")
        assert r1.content_length == 16 and r1.body == b"chunk 0\nchunk 1\n" and not r1.chunked
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"


def test_single_item_list_gets_content_length_or_chunked_correctly(server):
    # Framing must be right whichever the server picks.
    r = get(server.port, "/env_other")
    assert r.body == b"other callable\n"
    assert r.content_length == len(r.body) or (r.chunked and r.complete)


def test_status_line_and_repeated_headers(server):
    r = get(server.port, "/errors/custom_status")
    assert r.status == 418
    assert r.reason == "I'm a teapot"
    assert r.header("x-custom") == "v1"
    assert r.header_all("x-multi") == ["a", "b"]
    assert r.body == b"short and stout\n"


def test_empty_body(server):
    with Conn(server.port) as c:
        r = c.request("GET", "/errors/empty_body")
        assert r.status == 200 and r.body == b"" and r.complete
        assert r.header("x-empty") == "1"
        r2 = c.request("GET", "/hello")
        assert r2.body == b"Hello, world!\n"


def test_write_callable(server):
    r = get(server.port, "/write")
    assert r.status == 200 and r.complete
    assert r.body == b"written 1\nwritten 2\nreturned 3\n"


def test_callable_name_option(server):
    r = get(server.port, "/env_other/")
    assert r.status == 200 and r.body == b"other callable\n"


def test_access_log_records_requests(server):
    _, amark = server.log_mark()
    get(server.port, "/hello?access-log-check")
    assert server.wait_access_log(r'"GET /hello\?access-log-check HTTP/1\.1" 200', since=amark), \
        server.access_log(amark)


@pytest.mark.only("nginx")
def test_module_callable_form(server):
    r = get(server.port, "/pkg/x")
    assert r.status == 200, server.log_tail()
    assert r.body == b"package app rwsgi_testpkg.wsgi\n"


@pytest.mark.only("nginx")
def test_wsgi_param(server):
    env = env_of(request(server.port, "PUT", "/param/x", body=b""))
    assert env["RWSGI_FIXED"] == "fixed value"
    assert env["RWSGI_VAR"] == "m=PUT"


@pytest.mark.only("nginx")
def test_wsgi_script_name(server):
    # wsgi_script_name sets the mount point inside the URI
    env = env_of(get(server.port, "/renamed/sub/x/y"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/renamed/sub", "/x/y")
    env = env_of(get(server.port, "/renamed/sub"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/renamed/sub", "")
    # a URI outside it: nothing is stripped
    env = env_of(get(server.port, "/renamed/other"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/renamed/other")
    # the empty script name: the app sees the whole path
    env = env_of(get(server.port, "/whole/x"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/whole/x")


def test_head_goes_out_as_latin1(server):
    """PEP 3333's native strings reach the wire as latin-1, one byte per character, from
    both servers: a reason phrase and a header value holding U+00E9 each become 0xE9."""
    r = get(server.port, "/errors/latin1_head")
    assert r.status == 200 and r.body == b"latin-1 head\n", r
    head = r.raw_head
    assert head.startswith(b"HTTP/1.1 200 Caf\xe9\r\n"), head[:40]
    assert b"\r\nX-Name: caf\xe9\r\n" in head, head
    assert "\xc3".encode("latin-1") not in head, "a character went out as UTF-8"


def test_uri_past_the_mount_is_not_the_apps(server):
    """`location /hello` (like `WSGIScriptAlias /hello`) mounts at a path segment:
    /hellox is not under it and never reaches the app."""
    assert get(server.port, "/hello").status == 200
    r = get(server.port, "/hellox/y")
    assert r.status == 404 and b"Hello, world" not in r.body, r


@pytest.mark.only("nginx")
def test_dechunked_body_has_no_transfer_encoding(server):
    """nginx reads a chunked body whole and hands it over with its length: the environ
    says CONTENT_LENGTH, not Transfer-Encoding: chunked."""
    r = request(server.port, "POST", "/env/x", body=b"a" * 5000, chunked=True)
    env = env_of(r)
    assert env["CONTENT_LENGTH"] == "5000"
    assert "HTTP_TRANSFER_ENCODING" not in env
