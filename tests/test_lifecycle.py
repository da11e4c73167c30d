"""Reload, graceful quit and worker death while Python requests are in flight; the
thread-pool queue limit. Each test has its own server."""
import threading
import time
import uuid

import pytest

from harness.common import Mount, children_of, pid_alive, wait_until
from harness.http import Conn, build_request, get, timed_stream

# Left out of the validated pass (RWSGI_VALIDATE=1 in `make test`):
# reload / quit / worker death / queue: the servers' lifecycle.
pytestmark = pytest.mark.server_side

MOUNTS = [
    Mount("/hello", "hello.py"),
    Mount("/sleep", "sleep_app.py"),
    Mount("/stream", "stream_app.py"),
    Mount("/close", "close_app.py"),
    Mount("/crash", "crash_app.py"),
    Mount("/body", "body_app.py"),
]


def in_flight(port, paths):
    """Starts one request per path in threads; returns (threads, results dict)."""
    results = {}

    def run(i, path):
        try:
            results[i] = get(port, path, timeout=30)
        except Exception as e:  # recorded, asserted by the test
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    return threads, results


def join(threads):
    for t in threads:
        t.join(40)


def test_reload_during_inflight_requests(make_server):
    s = make_server(MOUNTS, workers=1, threads=8)
    threads, results = in_flight(s.port, ["/sleep?t=1.5"] * 3 + ["/stream/chunks?n=6&delay=0.25"])
    time.sleep(0.4)
    old = s.reload()
    join(threads)
    for i in range(3):
        r = results[i]
        assert not isinstance(r, Exception), f"request {i} failed across reload: {r!r}"
        assert r.status == 200 and r.body.startswith(b"slept 1.5"), r
    r = results[3]
    assert not isinstance(r, Exception) and r.complete, r
    assert r.body == b"".join(b"chunk %d\n" % i for i in range(6))
    # the new generation serves, the old workers exit once done
    assert get(s.port, "/hello").body == b"Hello, world!\n"
    assert wait_until(lambda: not any(pid_alive(p) for p in old), 10), "old workers linger"


def test_repeated_reloads_keep_serving(make_server):
    s = make_server(MOUNTS, workers=2, threads=4)
    for _ in range(4):
        s.reload()
        for _ in range(5):
            assert get(s.port, "/hello").status == 200
    assert "exited on signal" not in s.error_log() and "exit signal" not in s.error_log()


def test_reload_under_load_loses_nothing(make_server):
    s = make_server(MOUNTS, workers=2, threads=4)
    stop = threading.Event()
    failures, count = [], [0]

    def hammer():
        while not stop.is_set():
            try:
                r = get(s.port, "/hello", timeout=10)
                if r.status != 200 or r.body != b"Hello, world!\n":
                    failures.append(r)
                count[0] += 1
            except Exception as e:
                failures.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.4)
            s.reload()
        time.sleep(0.4)
    finally:
        stop.set()
        join(threads)
    assert count[0] > 20
    assert not failures, f"{len(failures)} of {count[0]} requests failed: {failures[:3]}"


def test_quit_during_inflight_requests(make_server):
    s = make_server(MOUNTS, workers=1, threads=8)
    master = s.master_pid
    threads, results = in_flight(s.port, ["/sleep?t=1.5"] * 3 + ["/stream/chunks?n=6&delay=0.25"])
    time.sleep(0.4)
    s.quit()
    join(threads)
    for i in range(3):
        r = results[i]
        assert not isinstance(r, Exception), f"request {i} lost by graceful quit: {r!r}"
        assert r.status == 200 and r.body.startswith(b"slept 1.5"), r
    r = results[3]
    assert not isinstance(r, Exception) and r.complete, r
    assert wait_until(lambda: not pid_alive(master), 10), "server did not exit after quit"
    s.started = False


def _crash_request(port, path):
    try:
        return get(port, path, timeout=10)
    except Exception as e:
        return e


@pytest.mark.parametrize("how", ["exit", "segv"])
def test_worker_death_spares_other_requests(make_server, how):
    s = make_server(MOUNTS, workers=2, threads=4)
    # The processes running Python: nginx's / Apache's workers, or the daemon group's.
    before = set(s.python_pids())
    r = _crash_request(s.port, f"/crash/{how}")
    assert isinstance(r, Exception) or r.status >= 500 or not r.complete, \
        f"a request whose worker died looked successful: {r}"
    assert wait_until(lambda: len(set(s.python_pids()) - before) >= 1
                      and len(s.python_pids()) >= 2, 10), "the dead worker was not replaced"
    ok = [get(s.port, "/hello").status for _ in range(20)]
    assert ok == [200] * 20
    assert pid_alive(s.master_pid)


@pytest.mark.only("nginx")  # wsgi_max_queue; Apache queues connections in its listener
@pytest.mark.embedded_only("wsgi_max_queue bounds the queue of the nginx worker's own Python thread pool")
def test_queue_full_gives_503(make_server):
    s = make_server(MOUNTS, workers=1, threads=1, max_queue=1)
    mark, _ = s.log_mark()
    threads, results = in_flight(s.port, ["/sleep?t=1.5"])
    time.sleep(0.3)  # first request running on the only thread
    threads2, results2 = in_flight(s.port, ["/sleep?t=0.1"])
    time.sleep(0.3)  # second one waits in the queue (size 1)
    t = time.monotonic()
    r = get(s.port, "/sleep?t=0.1", timeout=10)
    dt = time.monotonic() - t
    assert r.status == 503, f"expected 503 with a full queue, got {r}"
    assert dt < 1.0, f"the 503 took {dt:.2f}s: it must not wait for a thread"
    assert s.wait_error_log(r"(?i)queue", mark), s.error_log(mark)
    join(threads + threads2)
    assert results[0].status == 200 and results2[0].status == 200
    assert get(s.port, "/hello").status == 200


def _workers_rss_mib(master: int) -> float:
    total = 0
    for pid in children_of(master):
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return total / 1024


@pytest.mark.only("nginx")  # the thread pool is nginx's; Apache's threads are its own
def test_idle_worker_gives_memory_back(make_server):
    """After a burst of large bodies, the worker's pool goes idle and returns freed memory
    to the OS (pool.rs, release_free_memory), including the response bodies nginx held
    without a copy (chunk.rs): RSS falls far below its peak, where glibc alone would keep
    most of it."""
    s = make_server(MOUNTS, workers=1, threads=16,
                    http_extra=["client_body_buffer_size 8m;"])
    master = s.master_pid
    body = bytes(range(256)) * (4 << 12)  # 4 MiB
    results, peak, done = {}, [0.0], threading.Event()

    def echo(i):
        try:
            results[i] = Conn(s.port, timeout=30).request("POST", "/body/echo", body=body)
        except Exception as e:  # recorded, asserted below
            results[i] = e

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _workers_rss_mib(master))
            time.sleep(0.01)

    before = _workers_rss_mib(master)
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(2):
        threads = [threading.Thread(target=echo, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        join(threads)
    done.set()
    sampler.join()
    assert all(getattr(r, "body", None) == body for r in results.values()), results
    grown = peak[0] - before
    assert grown > 24, f"the burst added only {grown:.0f} MiB: nothing to give back"
    # Kept after 3 s: under a third of what the burst added (glibc alone keeps most of it).
    assert wait_until(lambda: _workers_rss_mib(master) - before < grown / 3, 3), (
        f"worker RSS is {_workers_rss_mib(master):.0f} MiB 3 s after the burst "
        f"({before:.0f} MiB before it, {peak[0]:.0f} MiB at its peak)")


@pytest.mark.only("nginx")  # worker_shutdown_timeout is nginx's
@pytest.mark.embedded_only("logs the Python stack of the request stuck in the exiting worker's "
                           "own thread; a daemon group's request is not in the worker")
def test_shutdown_timeout_releases_request_stuck_in_python(make_server):
    """After a reload, an old worker whose request is still in the app exits once
    worker_shutdown_timeout has passed (it does not wait for the app), and the error log
    shows where that request's Python thread was."""
    s = make_server(MOUNTS, workers=1, threads=4, main_extra=["worker_shutdown_timeout 2s;"])
    (old,) = s.worker_pids()
    mark, _ = s.log_mark()
    token = uuid.uuid4().hex
    c = Conn(s.port, timeout=40)
    try:
        c.send(build_request("GET", f"/sleep?t=30&token={token}",
                             headers=[("Connection", "close")], host="x"))
        assert s.wait_marker(token + ".sleeping", 5), "the request did not reach the app"
        s.reload()
        t = time.monotonic()
        gone = wait_until(lambda: not pid_alive(old), 8)
        assert gone, f"old worker {old} still alive {time.monotonic() - t:.1f} s after " \
                     f"the reload (worker_shutdown_timeout 2s):\n{s.log_tail()}"
        assert c.peer_closed(5), "the stuck request's connection was not closed"
    finally:
        c.close()
    log = s.error_log(mark)
    assert "in application" in log and "time.sleep(t)" in log, \
        f"no Python stack of the stuck request in the error log:\n{log}"
    assert get(s.port, "/hello").status == 200


@pytest.mark.only("nginx")  # Apache's MPM owns its threads
@pytest.mark.embedded_only("the growth of the nginx worker's own Python thread pool "
                           "(no wsgi_threads); a daemon group has threads= threads")
def test_default_pool_grows_for_requests_that_wait(make_server):
    """Without wsgi_threads, a worker's pool grows while requests wait on I/O: 64 requests
    that each sleep 0.5 s finish together, where 16 fixed threads would need four rounds
    (2 s)."""
    s = make_server(MOUNTS, workers=1)
    results = []

    def one():
        results.append(get(s.port, "/sleep?t=0.5", timeout=20).status)

    threads = [threading.Thread(target=one) for _ in range(64)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    assert results == [200] * 64, results
    assert took < 1.6, f"64 sleeping requests took {took:.2f} s"
