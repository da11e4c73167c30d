"""The status page (nginx `wsgi_status`, Apache `SetHandler rwsgi-status`): counters
aggregated over two worker processes through shared memory, in HTML, JSON and the
Prometheus text format (parsed with prometheus_client, which `make deps` installs), the
server's own access control, and stuck requests logged with their Python stack
(`wsgi_stuck_after` / `WSGIStuckAfter`)."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid

import pytest

from harness import http
from harness.common import Mount, daemon_app, wait_until

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the suite never skips: say what is missing
    text_string_to_metric_families = None

pytestmark = pytest.mark.server_side

MOUNTS = [Mount("/hello", "hello.py"), Mount("/sleep", "sleep_app.py")]


def status_config(kind: str, stuck_after: int | None = None) -> dict:
    """/rwsgi-status open to the test client, /denied-status closed to everyone, and a
    second access log naming each request by its id ($request_id / %L)."""
    if kind == "nginx":
        http_extra = ["log_format rid '$request_id $request_uri';",
                      "access_log {run}/rid.log rid;"]
        if stuck_after:
            http_extra.append(f"wsgi_stuck_after {stuck_after};")
        return {"http_extra": http_extra, "server_extra": [
            "location /rwsgi-status { wsgi_status; allow 127.0.0.1; deny all; }",
            "location /denied-status { wsgi_status; deny all; }",
        ]}
    extra = [
        "<Location /rwsgi-status>\n    SetHandler rwsgi-status\n    Require all granted\n</Location>",
        "<Location /denied-status>\n    SetHandler rwsgi-status\n    Require all denied\n</Location>",
        'LogFormat "%L %U%q" rid',
        "CustomLog {run}/rid.log rid",
    ]
    if stuck_after:
        extra.append(f"WSGIStuckAfter {stuck_after}")
    return {"extra": extra}


@pytest.fixture
def status_server(kind, make_server):
    srv = make_server(MOUNTS, workers=2, threads=8, **status_config(kind))
    # Both workers have started (and counted their start) once they serve.
    assert wait_until(lambda: status_json(srv)["worker_starts"] == 2, 10), status_json(srv)
    return srv


def status_json(srv) -> dict:
    r = http.get(srv.port, "/rwsgi-status?format=json")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("application/json")
    return json.loads(r.body)


def app_of(doc: dict, name: str) -> dict:
    apps = {a["app"]: a for a in doc["apps"]}
    assert name in apps, doc
    return apps[name]


def spread_requests(srv) -> tuple[int, int, set[int]]:
    """Requests to /hello and /sleep until both worker processes have served some (rounds
    of concurrent sleeps, so that one process cannot take them all): (hello count, sleep
    count, pids seen)."""
    hellos = sleeps = 0
    pids: set[int] = set()
    for _ in range(10):
        bodies = []

        def one():
            bodies.append(http.get(srv.port, "/sleep?t=0.3"))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sleeps += len(threads)
        for r in bodies:
            assert r.status == 200, r
            pids.add(int(re.search(rb"pid (\d+)", r.body).group(1)))
        for _ in range(5):
            assert http.get(srv.port, "/hello").status == 200
            hellos += 1
        if len(pids) >= 2:
            break
    return hellos, sleeps, pids


def test_counts_aggregate_over_two_workers(status_server):
    srv = status_server
    before = status_json(srv)
    assert before["worker_starts"] == 2
    assert before["apps"] == [] or all(sum(a["requests"].values()) == 0 for a in before["apps"])
    hellos, sleeps, pids = spread_requests(srv)
    assert len(pids) == 2, f"every request went to one worker: {pids}"
    assert pids == set(srv.python_pids())
    doc = status_json(srv)
    hello, sleep = app_of(doc, "/hello"), app_of(doc, "/sleep")
    assert hello["requests"] == {"1xx": 0, "2xx": hellos, "3xx": 0, "4xx": 0, "5xx": 0}
    assert hello["requests_total"] == hellos
    assert sleep["requests"]["2xx"] == sleeps
    assert hello["in_flight"] == sleep["in_flight"] == 0
    assert hello["bytes_out"] == hellos * len(b"Hello, world!\n")
    assert sleep["duration_seconds"]["count"] == sleeps
    assert sleep["duration_seconds"]["buckets"]["0.25"] == 0
    assert sleep["duration_seconds"]["buckets"]["0.5"] == sleeps
    assert sleep["duration_seconds"]["sum"] >= 0.3 * sleeps
    assert doc["worker_starts"] == 2
    assert doc["rwsgi_version"] and doc["python_version"].startswith("3.")


def test_prometheus_output_parses(status_server, kind):
    assert text_string_to_metric_families is not None, \
        "prometheus_client is missing from the test venv: run `make deps`"
    srv = status_server
    n = 7
    for _ in range(n):
        assert http.get(srv.port, "/hello").status == 200
    assert http.get(srv.port, "/hello/missing-is-still-200").status == 200
    n += 1
    for how in ({"path": "/rwsgi-status?format=prometheus"},
                {"path": "/rwsgi-status", "headers": {"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"}},
                {"path": "/rwsgi-status", "headers": {"Accept": "application/openmetrics-text; version=1.0.0"}}):
        r = http.get(srv.port, how["path"], headers=how.get("headers"))
        assert r.status == 200
        assert r.header("Content-Type").startswith("text/plain; version=0.0.4"), r.headers
        families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families.values() for s in f.samples}
        assert samples[("rwsgi_requests_total", (("app", "/hello"), ("code", "2xx")))] == n
        assert samples[("rwsgi_requests_total", (("app", "/hello"), ("code", "5xx")))] == 0
        assert samples[("rwsgi_requests_in_flight", (("app", "/hello"),))] == 0
        assert samples[("rwsgi_request_duration_seconds_count", (("app", "/hello"),))] == n
        assert samples[("rwsgi_request_duration_seconds_bucket", (("app", "/hello"), ("le", "+Inf")))] == n
        assert samples[("rwsgi_response_bytes_total", (("app", "/hello"),))] == n * 14
        assert samples[("rwsgi_worker_starts_total", ())] == 2
        assert families["rwsgi_request_duration_seconds"].type == "histogram"
        assert families["rwsgi_requests"].type == "counter"
        info = [s for s in families["rwsgi_info"].samples][0]
        assert info.labels["server"] == kind and info.labels["python_version"].startswith("3.")


@pytest.mark.embedded_only("the thread gauges count the server's own Python threads: nginx's "
                            "workers have none in daemon mode (the app processes' threads are "
                            "not on the status page yet)")
def test_html_page(status_server):
    srv = status_server
    for _ in range(3):
        http.get(srv.port, "/hello")
    r = http.get(srv.port, "/rwsgi-status")
    assert r.status == 200
    assert r.header("Content-Type").startswith("text/html")
    assert r.header("Cache-Control") == "no-store"
    page = r.body.decode()
    assert "<h1>rwsgi status</h1>" in page
    # app, requests, in flight, waiting, 1xx, 2xx
    assert re.search(r"<td>/hello</td><td>3</td><td>0</td><td>0</td><td>0</td><td>3</td>", page), page
    assert "2 worker starts" in page
    # The gauges settle on their own time: a worker's threads count once its pool has
    # started (after its start is counted), and a thread is idle once back in its pool,
    # which can be just after its client has the response.
    settled = {"busy": 0, "waiting": 0, "idle": 16}
    assert wait_until(lambda: status_json(srv)["threads"] == settled, 10), status_json(srv)
    page = http.get(srv.port, "/rwsgi-status").body.decode()
    assert "2 worker processes · threads: 0 busy, 0 waiting, 16 idle" in page, page


def test_access_control_is_the_servers(status_server):
    r = http.get(status_server.port, "/denied-status?format=json")
    assert r.status == 403
    assert b"rwsgi_requests_total" not in r.body and b"/hello" not in r.body


def test_no_status_unless_configured(make_server):
    srv = make_server(MOUNTS, workers=1)
    for path in ("/rwsgi-status", "/rwsgi-status?format=prometheus", "/server-status"):
        r = http.get(srv.port, path)
        assert r.status == 404, (path, r)
        assert b"rwsgi_" not in r.body


@pytest.mark.embedded_only("wsgi_stuck_after / WSGIStuckAfter read the stack of the worker's own "
                           "Python thread; a daemon group logs its stack at request-timeout")
def test_stuck_request_logged_with_its_stack(kind, make_server):
    srv = make_server(MOUNTS, workers=2, threads=4, **status_config(kind, stuck_after=1))
    mark, _ = srv.log_mark()
    tag = uuid.uuid4().hex[:12]
    r = http.get(srv.port, f"/sleep?t=2.6&tag={tag}")
    assert r.status == 200
    # The access log gives the request's id ($request_id / %L).
    rid_log = srv.run / "rid.log"
    line = next((l for l in rid_log.read_text().splitlines() if tag in l), None)
    assert line, rid_log.read_text()
    rid = line.split()[0]
    log = srv.error_log(mark)
    label = re.escape(f"rwsgi[app=/sleep req={rid}]: ")
    head = re.findall(rf"{label}request \"GET /sleep\?t=2.6&tag={tag} HTTP/1.1\" "
                      rf"still in progress after (\d+) s", log)
    assert head and head[0] == "1", log
    assert len(head) >= 2, f"not reported again after another second:\n{log}"
    assert re.search(rf"{label}\s+File \".*sleep_app.py\", line \d+, in application", log), log
    assert re.search(rf"{label}\s+time.sleep\(t\)", log), log
    # A quick request is never reported.
    mark, _ = srv.log_mark()
    http.get(srv.port, "/hello")
    http.get(srv.port, "/sleep?t=0.2")
    assert "still in progress" not in srv.error_log(mark)


@pytest.mark.only("nginx")
def test_nginx_reload_keeps_the_counts(status_server):
    srv = status_server
    for _ in range(4):
        assert http.get(srv.port, "/hello").status == 200
    start = status_json(srv)["start_time"]
    srv.reload()
    assert wait_until(lambda: status_json(srv)["worker_starts"] == 4, 10), status_json(srv)
    doc = status_json(srv)
    assert app_of(doc, "/hello")["requests"]["2xx"] == 4
    assert doc["start_time"] == start


def test_in_flight_while_the_app_runs(status_server):
    srv = status_server
    done = []
    t = threading.Thread(target=lambda: done.append(http.get(srv.port, "/sleep?t=1.2&token=inflight")))
    t.start()
    assert srv.wait_marker("inflight.sleeping", 5)
    assert app_of(status_json(srv), "/sleep")["in_flight"] == 1
    t.join()
    assert done[0].status == 200
    assert app_of(status_json(srv), "/sleep")["in_flight"] == 0


@pytest.mark.only("nginx")  # wsgi_max_queue; Apache queues connections in its listener
@pytest.mark.embedded_only("wsgi_max_queue bounds the queue of the nginx worker's own Python thread pool")
def test_queue_full_counted(make_server):
    srv = make_server(MOUNTS, workers=1, threads=1, max_queue=1, **status_config("nginx"))
    results = []
    first = threading.Thread(target=lambda: results.append(http.get(srv.port, "/sleep?t=1.2&token=q1")))
    first.start()
    assert srv.wait_marker("q1.sleeping", 5)
    second = threading.Thread(target=lambda: results.append(http.get(srv.port, "/sleep?t=0.1")))
    second.start()
    time.sleep(0.3)  # waits in the queue (size 1)
    assert http.get(srv.port, "/sleep?t=0.1").status == 503
    first.join()
    second.join()
    sleep = app_of(status_json(srv), "/sleep")
    assert sleep["queue_full"] == 1
    assert sleep["requests"]["5xx"] == 1 and sleep["requests"]["2xx"] == 2
    assert sleep["in_flight"] == 0


@pytest.mark.embedded_only("counts the imports a server worker does when it starts; a daemon "
                           "group imports in its own processes")
def test_import_failures_counted(kind, make_server):
    """nginx imports every app when a worker starts; Apache the scripts it preloads (an
    alias naming both groups, as mod_wsgi does). A failed app is tried again by each
    request, and each failure counts."""
    config = status_config(kind)
    if kind == "nginx":
        mounts = MOUNTS + [Mount("/broken", "errors_app.py", callable="no_such_callable")]
    else:
        mounts = MOUNTS
        config["extra"].append("WSGIScriptAlias /broken {apps}/errors_app.py process-group=%{GLOBAL} "
                               "application-group=%{GLOBAL} callable-object=no_such_callable")
    srv = make_server(mounts, workers=2, **config)
    assert wait_until(lambda: status_json(srv)["worker_starts"] == 2, 10)
    assert wait_until(lambda: app_of(status_json(srv), "/broken")["import_failures"] == 2, 10), \
        status_json(srv)
    # The start-up lines name the app.
    failed = "cannot load" if kind == "nginx" else "failed to load"
    assert re.search(rf"rwsgi\[app=/broken\]: {failed} .*errors_app\.py", srv.error_log()), srv.error_log()
    for _ in range(3):
        assert http.get(srv.port, "/broken").status == 500
    doc = status_json(srv)
    assert app_of(doc, "/broken")["requests"]["5xx"] == 3
    assert app_of(doc, "/broken")["import_failures"] == 2 + 3
    assert app_of(doc, "/hello")["import_failures"] == 0


@pytest.mark.only("apache")
def test_apache_import_failures_on_first_request_counted(make_server):
    """A WSGIScriptAlias that is not preloaded imports its script on its first request:
    each request that finds it failing counts, no more (and no start-up failure)."""
    config = status_config("apache")
    config["extra"].append("WSGIScriptAlias /lazy {apps}/errors_app.py callable-object=no_such_callable")
    srv = make_server(MOUNTS, workers=2, **config)
    assert wait_until(lambda: status_json(srv)["worker_starts"] == 2, 10)
    assert app_of(status_json(srv), "/lazy")["import_failures"] == 0
    n = 5
    for _ in range(n):
        assert http.get(srv.port, "/lazy").status == 500
    assert http.get(srv.port, "/hello").status == 200
    doc = status_json(srv)
    lazy = app_of(doc, "/lazy")
    assert lazy["import_failures"] == n and lazy["requests"]["5xx"] == n, lazy
    assert lazy["in_flight"] == lazy["waiting"] == 0
    assert app_of(doc, "/hello")["import_failures"] == 0


@pytest.mark.embedded_only("the thread gauges count the server's own Python threads: nginx's "
                            "workers have none in daemon mode (the app processes' threads are "
                            "not on the status page yet)")
def test_threads_busy_while_the_app_runs(status_server):
    """2 workers of 8 threads: idle at rest, one busy while a request sleeps in the app,
    idle again after; in all three forms."""
    srv = status_server

    def threads():
        return status_json(srv)["threads"]

    assert wait_until(lambda: threads() == {"busy": 0, "waiting": 0, "idle": 16}, 10), threads()
    assert status_json(srv)["worker_processes"] == 2
    done = []
    t = threading.Thread(target=lambda: done.append(http.get(srv.port, "/sleep?t=1.5&token=busy")))
    t.start()
    assert srv.wait_marker("busy.sleeping", 5)
    assert threads() == {"busy": 1, "waiting": 0, "idle": 15}, threads()
    prom = http.get(srv.port, "/rwsgi-status?format=prometheus").body.decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(prom) for s in f.samples}
    assert samples[("rwsgi_threads", (("state", "busy"),))] == 1
    assert samples[("rwsgi_threads", (("state", "idle"),))] == 15
    assert samples[("rwsgi_worker_processes", ())] == 2
    assert samples[("rwsgi_requests_waiting", (("app", "/sleep"),))] == 0
    t.join()
    assert done[0].status == 200
    assert wait_until(lambda: threads() == {"busy": 0, "waiting": 0, "idle": 16}, 5), threads()


def test_requests_waiting_to_enter_python(kind, make_server):
    """While one request holds the GIL, another cannot start: it waits in nginx's queue
    for a thread, on its own httpd thread for the GIL on Apache; counted for its app (and
    as a waiting thread on Apache) until it runs."""
    mounts = MOUNTS + [Mount("/logs", "log_app.py")]
    srv = make_server(mounts, workers=1, threads=4, **status_config(kind))
    results = []
    holder = threading.Thread(target=lambda: results.append(
        http.get(srv.port, "/logs?hold_gil=3&token=gil")))
    holder.start()
    assert srv.wait_marker("gil.holding", 5)
    waiter = threading.Thread(target=lambda: results.append(http.get(srv.port, "/hello")))
    waiter.start()

    def waiting():
        doc = status_json(srv)
        return app_of(doc, "/hello")["waiting"], doc["threads"]["waiting"]

    expected = (1, 1 if kind == "apache" else 0)
    assert wait_until(lambda: waiting() == expected, 2.5), waiting()
    assert app_of(status_json(srv), "/hello")["in_flight"] == 1
    holder.join()
    waiter.join()
    assert [r.status for r in results] == [200, 200], results
    assert wait_until(lambda: waiting() == (0, 0), 5), waiting()
    doc = status_json(srv)
    assert app_of(doc, "/hello")["requests"]["2xx"] == 1 and app_of(doc, "/hello")["in_flight"] == 0


def test_daemon_requests_counted(kind, make_server):
    """In a daemon process group the app process's engine says when a request entered
    Python and when its app failed to load (STAGE frames): the server counts a request
    as waiting until then (and, on Apache, its proxying thread as waiting, then busy),
    and each failed load as an import failure, as in embedded mode."""
    config = status_config(kind)
    mounts = MOUNTS + daemon_app(kind, config, "/dlogs", "log_app.py", "held")
    mounts += daemon_app(kind, config, "/dbroken", "errors_app.py", "broken",
                         callable="no_such_callable")
    srv = make_server(mounts, workers=1, threads=4, **config)
    n = 3
    for _ in range(n):
        assert http.get(srv.port, "/dbroken").status == 500
    broken = app_of(status_json(srv), "/dbroken")
    assert broken["import_failures"] == n and broken["requests"]["5xx"] == n, broken
    assert broken["in_flight"] == broken["waiting"] == 0, broken
    assert app_of(status_json(srv), "/hello")["import_failures"] == 0

    # One request holds its app process's GIL; the group's second thread takes the next
    # one, which cannot enter Python until then.
    results = []
    holder = threading.Thread(target=lambda: results.append(
        http.get(srv.port, "/dlogs?hold_gil=3&token=dgil")))
    holder.start()
    assert srv.wait_marker("dgil.holding", 10)
    waiter = threading.Thread(target=lambda: results.append(http.get(srv.port, "/dlogs?tag=w")))
    waiter.start()

    def gauges():
        doc = status_json(srv)
        app = app_of(doc, "/dlogs")
        return app["in_flight"], app["waiting"], doc["threads"]["busy"], doc["threads"]["waiting"]

    # The holder ran (it is not waiting): its STAGE came through.
    expected = (2, 1, 1, 1) if kind == "apache" else (2, 1, 0, 0)
    assert wait_until(lambda: gauges() == expected, 2.5), gauges()
    holder.join()
    waiter.join()
    assert sorted(r.status for r in results) == [200, 500], results
    assert wait_until(lambda: gauges() == (0, 0, 0, 0), 5), gauges()
    assert app_of(status_json(srv), "/dlogs")["import_failures"] == 0


@pytest.mark.only("nginx")  # nginx notices the client leaving while the app runs
def test_client_abort_counted(status_server):
    srv = status_server
    c = http.Conn(srv.port)
    c.send(http.build_request("GET", "/sleep?t=1&token=abort", None, [], host=f"127.0.0.1:{srv.port}"))
    assert srv.wait_marker("abort.sleeping", 5)
    c.close()
    assert wait_until(lambda: app_of(status_json(srv), "/sleep")["client_aborts"] == 1, 5), \
        status_json(srv)
    sleep = app_of(status_json(srv), "/sleep")
    assert sleep["in_flight"] == 0 and sum(sleep["requests"].values()) == 0


@pytest.mark.parametrize("value", ["0", "abc", "100000"])
def test_stuck_after_values_checked(kind, new_server, value):
    s = new_server()
    if kind == "nginx":
        ok, out = s.check_config(MOUNTS, http_extra=[f"wsgi_stuck_after {value};"])
        assert not ok and "wsgi_stuck_after" in out and value in out, out
    else:
        ok, out = s.check_config(MOUNTS, extra=[f"WSGIStuckAfter {value}"])
        assert not ok and "WSGIStuckAfter" in out and value in out, out


@pytest.mark.only("nginx")
def test_status_location_runs_no_app(new_server):
    s = new_server()
    ok, out = s.check_config(MOUNTS, server_extra=["location /x { wsgi_status; wsgi_app {apps}/hello.py; }"])
    assert not ok and "wsgi_status" in out, out
    ok, out = s.check_config(MOUNTS, server_extra=["location /x { wsgi_app {apps}/hello.py; wsgi_status; }"])
    assert not ok and "content handler" in out, out
    ok, out = s.check_config(MOUNTS, server_extra=["location /x { wsgi_status; }"])
    assert ok, out


@pytest.mark.only("apache")
def test_apache_graceful_restart_starts_new_counters(status_server):
    srv = status_server
    for _ in range(3):
        assert http.get(srv.port, "/hello").status == 200
    srv.reload()
    # The new generation's children count in a new segment: from zero, both listed.
    assert wait_until(lambda: status_json(srv)["worker_starts"] == 2, 10), status_json(srv)
    assert http.get(srv.port, "/hello").status == 200
    doc = status_json(srv)
    assert app_of(doc, "/hello")["requests"]["2xx"] == 1
    assert app_of(doc, "/sleep")["requests_total"] == 0
