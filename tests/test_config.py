"""Configuration checks: the server's own config test (`nginx -t`, `apache2 -t`) accepts
a good config and rejects bad values with a message naming the file and line."""
import re

import pytest

from harness.common import Mount

# Left out of the validated pass (RWSGI_VALIDATE=1 in `make test`):
# config checks: no request reaches an app.
pytestmark = pytest.mark.server_side

GOOD = [Mount("/hello", "hello.py"), Mount("/env", "environ_app.py", callable="other")]


def test_good_config_passes(new_server):
    s = new_server()
    ok, out = s.check_config(GOOD)
    assert ok, out


def line_of(conf_text, needle):
    for i, line in enumerate(conf_text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in config")


def assert_rejected(s, ok, out, needle, words):
    conf = s.conf_path.read_text()
    assert not ok, f"config with {needle!r} was accepted:\n{out}"
    line = line_of(conf, needle)
    assert re.search(rf"{re.escape(str(s.conf_path))}:{line}\b", out), \
        f"message does not name {s.conf_path}:{line}:\n{out}"
    assert re.search(words, out, re.I), f"message does not say what is wrong ({words}):\n{out}"


NGINX_BAD = [
    # (mounts, opts, needle in the config, the reason expected in the message: never just
    # the directive's name, which every refusal of it contains)
    ([Mount("/a", module="not-a-module!")], {}, "wsgi_app not-a-module!",
     r"neither a file path nor module:callable"),
    ([Mount("/a", module="pkg:")], {}, "wsgi_app pkg:", r"neither a file path nor module:callable"),
    ([Mount("/a", "hello.py")], {"threads": "abc"}, "wsgi_threads abc", r"must be a number from 1 to"),
    ([Mount("/a", "hello.py")], {"threads": 0}, "wsgi_threads 0", r"must be a number from 1 to"),
    ([Mount("/a", "hello.py")], {"max_queue": "-3"}, "wsgi_max_queue -3", r"must be a number from 1 to"),
    ([Mount("/a", "hello.py", extra=["wsgi_no_such_directive on;"])], {},
     "wsgi_no_such_directive", r"unknown directive"),
    ([Mount("/a", "hello.py", extra=["wsgi_app /x/other.py;"])], {},
     "wsgi_app /x/other.py", r"is duplicate"),
    ([Mount("/a", "hello.py", params={"REQUEST_METHOD": "x"})], {},
     "wsgi_param REQUEST_METHOD", r"set by the server for each request"),
    ([Mount("/a", "hello.py", params={"HTTP_X_FORWARDED_FOR": "1.2.3.4"})], {},
     "wsgi_param HTTP_X_FORWARDED_FOR", r"set by the server for each request"),
    ([Mount("/a", "hello.py", callable="1app")], {}, "wsgi_callable 1app", r"not a Python name"),
]


@pytest.mark.parametrize("mounts,opts,needle,words", NGINX_BAD,
                         ids=["bad-app", "empty-callable", "threads-abc", "threads-0",
                              "queue-negative", "unknown-directive", "duplicate-app",
                              "reserved-param", "header-param", "callable-digit"])
@pytest.mark.only("nginx")
def test_bad_directive_value_fails_config_test(new_server, mounts, opts, needle, words):
    s = new_server()
    ok, out = s.check_config(mounts, **opts)
    assert_rejected(s, ok, out, needle, words)


@pytest.mark.only("nginx")
def test_wsgi_app_outside_location_rejected(new_server):
    s = new_server()
    ok, out = s.check_config([Mount("/a", "hello.py")],
                             http_extra=["wsgi_app /srv/app.py;"])
    assert_rejected(s, ok, out, "wsgi_app /srv/app.py", r"not allowed|directive")


# Every refusal starts with the directive's name: each pattern matches mod_rwsgi's reason.
APACHE_BAD = [
    (["WSGIDaemonProcess site processes=2 stack-size=524288"], "WSGIDaemonProcess",
     r"WSGIDaemonProcess site: option \"stack-size\" is not supported by rwsgi"),
    (["WSGIScriptAlias /x"], "WSGIScriptAlias /x",
     r"WSGIScriptAlias: expected a URL path and a script file"),
    (["WSGIScriptAlias /y {apps}/hello.py bogus-option=1"], "bogus-option",
     r"WSGIScriptAlias: unknown option \"bogus-option\""),
    (["WSGIScriptAlias /z {apps}/hello.py callable-object=1app"], "callable-object=1app",
     r"not a Python name"),
]


@pytest.mark.parametrize("extra,needle,words", APACHE_BAD,
                         ids=["daemon-process", "missing-arg", "bad-option", "callable-digit"])
@pytest.mark.only("apache")
def test_bad_mod_wsgi_directive_fails_config_test(new_server, extra, needle, words):
    s = new_server()
    ok, out = s.check_config([Mount("/a", "hello.py")], extra=extra)
    conf = s.conf_path.read_text()
    assert not ok, f"accepted:\n{out}"
    line = line_of(conf, needle)
    assert re.search(rf"line {line}\b", out) and str(s.conf_path) in out, \
        f"message does not name {s.conf_path} line {line}:\n{out}"
    assert re.search(words, out, re.I), out
