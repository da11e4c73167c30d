"""Log lines that tie together: every line rwsgi writes for a request carries
`rwsgi[app=MOUNT req=ID]`, where ID is what the access log prints for the same request
(nginx `$request_id`; Apache `UNIQUE_ID` with mod_unique_id, else the request's log id,
`%L`), so that an operator goes from a traceback to its access-log line. wsgi.errors
lines carry it too; Python's `logging` to stderr still reaches the error log. In daemon
mode the app process sends its lines bare and the server worker proxying the request
labels them, so they read the same."""
from __future__ import annotations

import re
import uuid

import pytest

from harness import http
from harness.apache import MODDIR
from harness.common import Mount, daemon_app, wait_until

pytestmark = pytest.mark.server_side

MOUNTS = [Mount("/logs", "log_app.py"), Mount("/hello", "hello.py")]


def id_config(kind: str, unique_id: bool = False) -> dict:
    """A second access log, rid.log: the id, (Apache) UNIQUE_ID, then the URI."""
    if kind == "nginx":
        return {"http_extra": ["log_format rid '$request_id - $request_uri';",
                               "access_log {run}/rid.log rid;"]}
    extra = ['LogFormat "%L %{UNIQUE_ID}e %U%q" rid', "CustomLog {run}/rid.log rid"]
    if unique_id:
        extra.insert(0, f"LoadModule unique_id_module {MODDIR}/mod_unique_id.so")
    return {"extra": extra}


def access_ids(srv, tag: str) -> tuple[str, str]:
    """(id, UNIQUE_ID or '-') of the request whose URI holds `tag`, from rid.log."""
    rid_log = srv.run / "rid.log"
    found = []

    def look():
        found[:] = [l.split() for l in rid_log.read_text().splitlines() if tag in l]
        return bool(found)

    assert wait_until(look, 5), rid_log.read_text()
    assert len(found) == 1, found
    return found[0][0], found[0][1]


def check_request_lines(srv, mark: int, rid: str, tag: str):
    label = re.escape(f"rwsgi[app=/logs req={rid}]: ")
    log = srv.wait_error_log(rf"{label}RuntimeError: boom {tag}", mark)
    assert log, srv.error_log(mark)
    assert re.search(rf"{label}errors line {tag}\b", log), log
    assert re.search(rf"{label}exception in WSGI application .*log_app\.py", log), log
    assert re.search(rf"{label}Traceback \(most recent call last\):", log), log
    assert re.search(rf"{label}\s+File \".*log_app\.py\", line \d+, in application", log), log
    # Every line of the request's traceback and wsgi.errors carries the label: none
    # without it, and none with another request's id.
    for line in log.splitlines():
        if "rwsgi[app=/logs]: loaded" in line:  # the app's start-up line, not the request's
            continue
        if f"boom {tag}" in line or f"errors line {tag}" in line or "log_app.py" in line:
            assert re.search(label, line), line
    # logging's StreamHandler writes to stderr, which the server sends to its error log.
    assert srv.wait_error_log(rf"logging line {tag}", mark), srv.error_log(mark)


def test_daemon_request_lines_carry_the_access_log_id(kind, make_server):
    """A request in a daemon process group: its traceback and wsgi.errors lines come from
    the app process over the group's socket and are written by the server with the same
    label as embedded mode's, once (the app process adds none)."""
    config = id_config(kind)
    mounts = [Mount("/hello", "hello.py")] + daemon_app(kind, config, "/logs", "log_app.py", "logs")
    srv = make_server(mounts, workers=2, **config)
    mark, _ = srv.log_mark()
    tag = uuid.uuid4().hex[:12]
    r = http.get(srv.port, f"/logs?tag={tag}")
    assert r.status == 500
    rid, _ = access_ids(srv, tag)
    if kind == "nginx":
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    check_request_lines(srv, mark, rid, tag)
    ours = [l for l in srv.error_log(mark).splitlines()
            if f"boom {tag}" in l or f"errors line {tag}" in l]
    assert ours and all(l.count("rwsgi[") == 1 for l in ours), ours


def test_traceback_carries_the_access_log_id(kind, make_server):
    srv = make_server(MOUNTS, workers=2, **id_config(kind))
    mark, _ = srv.log_mark()
    tag = uuid.uuid4().hex[:12]
    r = http.get(srv.port, f"/logs?tag={tag}")
    assert r.status == 500
    rid, unique = access_ids(srv, tag)
    if kind == "nginx":
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    else:
        assert unique == "-", "mod_unique_id is not loaded here"
    check_request_lines(srv, mark, rid, tag)
    # Another request gets another id.
    other = uuid.uuid4().hex[:12]
    assert http.get(srv.port, f"/logs?tag={other}").status == 500
    assert access_ids(srv, other)[0] != rid


@pytest.mark.only("apache")
def test_apache_uses_unique_id_when_mod_unique_id_is_loaded(make_server):
    srv = make_server(MOUNTS, workers=1, **id_config("apache", unique_id=True))
    mark, _ = srv.log_mark()
    tag = uuid.uuid4().hex[:12]
    assert http.get(srv.port, f"/logs?tag={tag}").status == 500
    log_id, unique = access_ids(srv, tag)
    assert unique != "-" and len(unique) >= 20, unique
    # mod_unique_id makes it the log id too: %L and %{UNIQUE_ID}e agree.
    assert log_id == unique
    check_request_lines(srv, mark, unique, tag)


def test_engine_errors_carry_the_label(server):
    """The engine's own complaints about a request (here: a body longer than its
    Content-Length) name it too."""
    mark, _ = server.log_mark()
    http.get(server.port, "/errors/cl_overrun")
    what = "sent more bytes than its Content-Length"
    log = server.wait_error_log(what, mark)
    assert log, server.error_log(mark)
    lines = [l for l in log.splitlines() if what in l]
    assert lines and all(re.search(r"rwsgi\[app=/errors req=\S+\]: the application", l)
                         for l in lines), lines
