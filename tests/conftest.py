"""Fixtures: every behaviour test runs against real nginx and real Apache httpd, each
loading its rwsgi module, started on 127.0.0.1 with generated configs.

- `kind`: "nginx" / "apache" (session-scoped parameter; `-k nginx` selects one server).
- `server`: one shared, already running server per kind whose config holds all the
  standard mounts (SHARED_MOUNTS); most tests use it.
- `make_server(mounts, **opts)`: a dedicated server for tests that need their own
  config or that stop / reload it; stopped after the test.
- `new_server()`: an unstarted server object (for config checks).

RWSGI_DAEMON=1 runs every app in a daemon process group (harness/daemon_mode.py); cases
marked `embedded_only("why")` are deselected then.

RWSGI_VALIDATE=1 runs every mounted app behind wsgiref.validate.validator (see
harness/validate.py for what stays unwrapped and why); a test during which the validator
complained on any server fails, unless it is marked `validator_complaints`.

A missing module file fails the tests of that server with a clear message: no skips.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.apache import ApacheServer  # noqa: E402
from harness.common import Mount, ServerError  # noqa: E402
from harness.nginx import NginxServer  # noqa: E402
from harness import daemon_mode, validate  # noqa: E402

SERVERS = {"nginx": NginxServer, "apache": ApacheServer}
KINDS = list(SERVERS)


def shared_mounts(kind: str) -> list[Mount]:
    mounts = [
        Mount("/hello", "hello.py"),
        Mount("/env", "environ_app.py"),
        Mount("/env_other", "environ_app.py", callable="other"),
        Mount("/body", "body_app.py"),
        Mount("/small", "body_app.py", max_body=1024),
        Mount("/stream", "stream_app.py"),
        Mount("/sleep", "sleep_app.py"),
        Mount("/errors", "errors_app.py"),
        Mount("/write", "write_app.py"),
        Mount("/files", "file_wrapper_app.py"),
        Mount("/close", "close_app.py"),
        Mount("/v", "validated_app.py"),
        Mount("/bodyless", "bodyless_app.py"),
    ]
    if kind == "nginx":
        mounts += [
            Mount("/pkg", module="rwsgi_testpkg.wsgi:app", python_path=["{apps}/pylib"]),
            Mount("/param", "environ_app.py",
                  params={"RWSGI_FIXED": "fixed value", "RWSGI_VAR": "m=$request_method"}),
            Mount("/renamed", "environ_app.py", script_name="/renamed/sub"),
            Mount("/whole", "environ_app.py", script_name=""),
        ]
    return mounts


# Shared server shape: one worker process (so "a slow request does not block a fast one"
# is tested on the same worker) with enough Python threads for the concurrent cases.
SHARED_OPTS = {"workers": 1, "threads": 8}


@pytest.fixture(scope="session", params=KINDS)
def kind(request):
    cls = SERVERS[request.param]
    if not cls.module_path.is_file():
        pytest.fail(f"{request.param}: module {cls.module_path} is missing; run `make build` "
                    f"(or select the other server with -k)", pytrace=False)
    return request.param


@pytest.fixture(scope="session")
def server(kind):
    s = SERVERS[kind]()
    try:
        s.start(shared_mounts(kind), **SHARED_OPTS)
    except ServerError as e:
        s.stop()
        pytest.fail(str(e), pytrace=False)
    yield s
    s.stop()
    s.cleanup()


@pytest.fixture
def make_server(kind):
    created = []

    def factory(mounts, **opts):
        s = SERVERS[kind]()
        created.append(s)
        s.start(mounts, **opts)
        return s

    yield factory
    for s in created:
        s.stop()
        s.cleanup()


def serve(kind, mounts, prepare=None, **opts):
    """For module-scoped fixtures with a config of their own: starts a server of `kind`
    (after `prepare(server)`, e.g. writing a certificate), yields it, then stops and
    removes it."""
    s = SERVERS[kind]()
    try:
        if prepare is not None:
            prepare(s)
        s.start(mounts, **opts)
        yield s
    finally:
        s.stop()
        s.cleanup()


def _servers(make):
    """A fixture body: yields a factory of servers built by `make`, and stops and removes
    every one of them at the end of the test."""
    created = []

    def factory():
        s = make()
        created.append(s)
        return s

    yield factory
    for s in created:
        s.stop()
        s.cleanup()


def _checked(cls):
    """Makes servers of `cls`, each checked for its module first."""
    def make():
        s = cls()
        s.check_module()
        return s
    return make


@pytest.fixture
def apache():
    """Apache-only tests: a factory of ApacheServer instances (each checked for the
    module), all stopped and removed at the end of the test."""
    yield from _servers(_checked(ApacheServer))


@pytest.fixture
def nginx():
    """nginx-only tests: a factory of NginxServer instances, as `apache`."""
    yield from _servers(_checked(NginxServer))


@pytest.fixture
def new_server(kind):
    yield from _servers(SERVERS[kind])


# A worker that dies on a signal is respawned by both servers, which would hide a crash
# of the module: every test using the shared server fails if one happened during it.
CRASH = re.compile(r"exited on signal|exit signal|Segmentation fault|panicked|core dumped",
                   re.I)


@pytest.fixture(autouse=True)
def _no_worker_crash(request):
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    mark, _ = srv.log_mark()
    yield
    text = srv.error_log(mark)
    found = [l for l in text.splitlines() if CRASH.search(l)]
    if found and not request.node.get_closest_marker("crashes_worker"):
        pytest.fail("worker crash during the test:\n" + "\n".join(found[:10]), pytrace=False)


@pytest.fixture(autouse=True)
def _validator_clean(request):
    """RWSGI_VALIDATE=1: fails the test if wsgiref.validate complained about a request
    made during it (on any server, including dedicated ones already cleaned up)."""
    if not validate.ENABLED:
        yield
        return
    earlier = validate.take()
    yield
    found = validate.take()
    if request.node.get_closest_marker("validator_complaints"):
        found = []
    if earlier:
        found = [f"(recorded before this test started) {l}" for l in earlier] + found
    if found:
        pytest.fail("wsgiref.validate complained:\n" + "\n".join(found[:20]), pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """Complaints recorded after the last test (e.g. while the shared servers stopped)."""
    if not validate.ENABLED:
        return
    late = validate.take()
    if late:
        session.config.get_terminal_writer().line(
            "wsgiref.validate complained after the last test:\n" + "\n".join(late[:20]), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    config.addinivalue_line("markers", "crashes_worker: the test kills a worker on purpose")
    config.addinivalue_line("markers", "validator_complaints: the test provokes wsgiref.validate "
                                       "complaints on purpose (and checks them itself)")
    config.addinivalue_line("markers", "server_side: lifecycle / config / abuse cases, left out "
                                       "of the validated pass (RWSGI_VALIDATE=1)")
    config.addinivalue_line("markers", "packages: make install and the Debian packages, "
                                       "installed into the system and purged (runs once, "
                                       "not per server kind)")
    config.addinivalue_line("markers", "frameworks: the examples/ Django, Flask and Pyramid "
                                       "projects in a venv (test_frameworks.py), left out of "
                                       "the validated pass")
    config.addinivalue_line("markers", "only(kind): the case exists for one server only "
                                       "(a directive or behaviour the other does not have)")
    config.addinivalue_line("markers", "embedded_only(why): the case tests embedded mode's own "
                                       "machinery; deselected when RWSGI_DAEMON=1")


def pytest_collection_modifyitems(config, items):
    """Drops the parameterizations of `only(kind)` tests for the other server, and with
    RWSGI_DAEMON=1 the `embedded_only` cases: they do not apply there (reported as
    deselected, never as passed)."""
    keep, drop = [], []
    for item in items:
        m = item.get_closest_marker("only")
        kind = getattr(item, "callspec", None) and item.callspec.params.get("kind")
        embedded = item.get_closest_marker("embedded_only")
        if embedded and not (embedded.args and isinstance(embedded.args[0], str)
                             and embedded.args[0].strip()):
            raise pytest.UsageError(f"{item.nodeid}: embedded_only needs its reason, "
                                    "embedded_only(\"why\")")
        if m and kind and kind not in m.args:
            drop.append(item)
        elif embedded and daemon_mode.ENABLED:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
