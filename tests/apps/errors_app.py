"""Apps that break the rules, one per PATH_INFO. Each puts a unique marker string in
its exception or header so the test can find the log line."""
import sys


def ok_headers():
    return [("Content-Type", "text/plain")]


def before(environ, sr):
    raise RuntimeError("boom-before-body")


def after_body(environ, sr):
    sr("200 OK", ok_headers())
    yield b"first part of the body\n"
    raise RuntimeError("boom-after-body")


def empty_then_raise(environ, sr):
    # Headers must still be unsent after an empty chunk: the error can become a 500.
    sr("200 OK", ok_headers())
    yield b""
    raise RuntimeError("boom-after-empty-chunk")


def start_twice(environ, sr):
    sr("200 OK", ok_headers())
    sr("201 Created", ok_headers())  # no exc_info: must raise
    return [b"second status won\n"]


def exc_info_before(environ, sr):
    sr("200 OK", ok_headers())
    try:
        raise ValueError("replaced-before-send")
    except ValueError:
        sr("503 Replaced", [("Content-Type", "text/plain"), ("X-Replaced", "yes")],
           sys.exc_info())
    return [b"error page from the app\n"]


def exc_info_after(environ, sr):
    sr("200 OK", ok_headers())
    yield b"headers are out\n"
    try:
        raise ValueError("late-error-reraised")
    except ValueError:
        try:
            sr("500 Too Late", ok_headers(), sys.exc_info())
        except ValueError as e:
            environ["wsgi.errors"].write("start_response re-raised: %s\n" % e)
            raise
        environ["wsgi.errors"].write("start_response did NOT re-raise\n")
    yield b"tail that must not be sent\n"


def bad_header(kind):
    headers = {
        "crlf_value": ("X-Crlf-Value", "a\r\nX-Injected: yes"),
        "lf_value": ("X-Lf-Value", "a\nX-Injected: yes"),
        "cr_name": ("X-Cr\rName", "v"),
        "lf_name": ("X-Injected: yes\nX-Lf-Name", "v"),
        "latin1": ("X-Not-Latin1", "euro \u20ac"),
        "space_name": ("X Space Name", "v"),
    }[kind]

    def app(environ, sr):
        sr("200 OK", ok_headers() + [headers])
        return [b"must not be sent\n"]
    return app


def bad_status(environ, sr):
    sr("200 OK\r\nX-Injected: yes", ok_headers())
    return [b"must not be sent\n"]


def str_item_list(environ, sr):
    sr("200 OK", ok_headers())
    return ["a str, not bytes"]


def str_item_later(environ, sr):
    sr("200 OK", ok_headers())

    def gen():
        yield b"bytes first\n"
        yield "then a str\n"
    return gen()


def returns_none(environ, sr):
    sr("200 OK", ok_headers())
    return None


def non_iterable(environ, sr):
    sr("200 OK", ok_headers())
    return 42


def no_start_response(environ, sr):
    return [b"body without start_response\n"]


def cl_overrun(environ, sr):
    sr("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345", b"EXTRA-BYTES-MUST-NOT-BE-SENT"]


def cl_overrun_one(environ, sr):
    sr("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345EXTRA"]


def cl_short(environ, sr):
    sr("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])

    def gen():
        yield b"only ten.\n"
    return gen()


def cl_exact(environ, sr):
    sr("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])

    def gen():
        yield b"hello"
        yield b" world"
    return gen()


def custom_status(environ, sr):
    sr("418 I'm a teapot", [("Content-Type", "text/plain"), ("X-Custom", "v1"),
                             ("X-Multi", "a"), ("X-Multi", "b")])
    return [b"short and stout\n"]


def latin1_head(environ, sr):
    """PEP 3333 native strings: the reason and a header value with an e-acute (U+00E9)."""
    sr("200 Caf\u00e9", [("Content-Type", "text/plain"), ("X-Name", "caf\u00e9")])
    return [b"latin-1 head\n"]


def empty_body(environ, sr):
    sr("200 OK", [("Content-Type", "text/plain"), ("X-Empty", "1")])
    return []


ROUTES = {
    "/before": before,
    "/after_body": after_body,
    "/empty_then_raise": empty_then_raise,
    "/start_twice": start_twice,
    "/exc_info_before": exc_info_before,
    "/exc_info_after": exc_info_after,
    "/bad_status": bad_status,
    "/str_item_list": str_item_list,
    "/str_item_later": str_item_later,
    "/returns_none": returns_none,
    "/non_iterable": non_iterable,
    "/no_start_response": no_start_response,
    "/cl_overrun": cl_overrun,
    "/cl_overrun_one": cl_overrun_one,
    "/cl_short": cl_short,
    "/cl_exact": cl_exact,
    "/custom_status": custom_status,
    "/empty_body": empty_body,
    "/latin1_head": latin1_head,
}
for _k in ("crlf_value", "lf_value", "cr_name", "lf_name", "latin1", "space_name"):
    ROUTES["/header_" + _k] = bad_header(_k)


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        start_response("404 Not Found", ok_headers())
        return [b"no such case\n"]
    return route(environ, start_response)
