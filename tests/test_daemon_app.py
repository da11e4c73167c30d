"""The app process (`rwsgi-daemon app`), daemon mode's front end, on its own: started the
way the supervisor starts it (listening socket on fd 3, its configuration on a pipe on
fd 4), with this test acting as the server worker through tests/harness/daemon_wire.py.
What a server worker sees of it, and what a hostile local process cannot do with it.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from harness.common import MODULES, make_rundir, wait_until
from harness import daemon_wire as wire

pytestmark = pytest.mark.server_side

PROGRAM = MODULES / "rwsgi-daemon"


class AppProcess:
    def __init__(self, run, **options):
        self.run = run
        self.app = str(run / "apps" / "daemon_app.py")
        self.socket = str(run / "group.sock")
        self.secret = os.urandom(32)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket)
        os.chmod(self.socket, 0o777)     # so that another user's connection reaches it
        self.listener.listen(100)
        options.setdefault("threads", 4)
        config = {"group": wire.group("g1", [self.app], **options),
                  "secret": self.secret.hex(), "allowed_uids": [0], "server": "test"}
        self.stderr_path = run / "app.stderr"
        self.proc = self._spawn(json.dumps(config).encode())

    def _spawn(self, config: bytes):
        r, w = os.pipe()
        listen_fd = self.listener.fileno()

        def fds():
            # fd 3 = the listening socket, fd 4 = the configuration pipe.
            a, b = os.dup(listen_fd), os.dup(r)
            os.dup2(a, 3, inheritable=True)
            os.dup2(b, 4, inheritable=True)

        with open(self.stderr_path, "ab") as err:
            proc = subprocess.Popen([str(PROGRAM), "app"], stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, preexec_fn=fds, close_fds=False)
        os.close(r)
        os.write(w, config)
        os.close(w)
        return proc

    def request(self, path="/", **kw):
        kw.setdefault("path", path)
        return wire.request(self.socket, self.secret, self.app, **kw)

    def log(self):
        return self.stderr_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.listener.close()


@pytest.fixture
def start_app():
    run = make_rundir("daemon-app")
    procs = []

    def start(**options):
        p = AppProcess(run, **options)
        procs.append(p)
        assert wait_until(lambda: "serving 1 app" in p.log() or p.proc.poll() is not None, 30), p.log()
        assert p.proc.poll() is None, p.log()
        return p

    yield start
    for p in procs:
        p.stop()


def test_serves_a_request_end_to_end(start_app):
    p = start_app()
    a = p.request("/hello")
    assert a.status == 200 and a.final == "end"
    assert json.loads(a.body)["pid"] == p.proc.pid
    # A server that asks is told when the request entered Python (its gauges); one that
    # does not ask (an older module) gets no frame it would not know.
    assert a.stages == []
    a = p.request("/hello", stages=True)
    assert a.status == 200 and a.stages == ["running"]


def test_body_is_pulled_only_when_the_app_reads_it(start_app):
    p = start_app()
    body = os.urandom(3 * 1024 * 1024 + 17)
    a = p.request("/echo", method="POST", body=body)
    assert a.final == "end" and a.body == body
    # An app that never reads gets no READ sent for it: the server would not read its client.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(p.socket)
    sock.sendall(wire.request_frame(p.secret, p.app, method="POST", path="/hello",
                                    body_length=100))
    frames = []
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    while data:
        length = int.from_bytes(data[:4], "big")
        frames.append(data[4])
        data = data[4 + length:]
    assert wire.READ not in frames and frames[0] == wire.HEAD and frames[-1] == wire.END, frames


def test_wsgi_errors_lines_travel_with_the_request(start_app):
    p = start_app()
    a = p.request("/errors", query=b"tag=tag-4711")
    assert a.final == "end"
    assert any("a line for the error log: tag-4711" in line for line in a.logs), a.logs


def test_a_wrong_secret_gets_no_answer(start_app):
    p = start_app()
    a = wire.request(p.socket, os.urandom(32), p.app, path="/hello")
    assert a.status is None and a.final is None and not a.body
    assert wait_until(lambda: "wrong secret" in p.log(), 5), p.log()
    assert p.request("/hello").status == 200


def test_a_peer_of_another_user_gets_no_answer(start_app):
    p = start_app()
    # The same request as a user that is not the server's (nobody), with the right secret.
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from harness import daemon_wire as w\n"
        "a = w.request(%r, bytes.fromhex(%r), %r, path='/hello')\n"
        "print(a.status, a.final)\n"
    ) % (str(os.path.dirname(__file__)), p.socket, p.secret.hex(), p.app)
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          "/usr/bin/python3", "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "None None", out
    assert wait_until(lambda: "refused a connection from uid 65534" in p.log(), 5), p.log()


def test_only_the_groups_apps_run(start_app):
    p = start_app()
    other = str(p.run / "apps" / "hello.py")
    a = wire.request(p.socket, p.secret, other, path="/")
    assert a.final == ("fail", 500)
    assert any("is not an app of process group g1" in line for line in a.logs), a.logs


def test_queue_timeout_answers_504(start_app):
    p = start_app(queue_timeout=1)
    long_ago = int((time.time() - 5) * 1e6)
    a = p.request("/hello", connected_at_us=long_ago)
    assert a.final == ("fail", 504)
    assert any("queue-timeout=1" in line for line in a.logs), a.logs
    assert p.request("/hello", connected_at_us=int(time.time() * 1e6)).status == 200


def test_request_timeout_answers_504_with_the_stack_and_recycles(start_app):
    p = start_app(request_timeout=1, graceful_timeout=2)
    a = p.request("/sleep", query=b"s=30", timeout=20)
    assert a.final == ("fail", 504)
    stack = "\n".join(a.logs)
    assert "request-timeout=1" in stack and "stuck_in_view" in stack, stack
    # The process recycles (exit 0) once its stuck thread is given up on.
    assert p.proc.wait(15) == 0
    assert "stuck_in_view" in p.log()


def test_maximum_requests_recycles_after_draining(start_app):
    p = start_app(maximum_requests=3)
    for _ in range(3):
        assert p.request("/hello").status == 200
    assert p.proc.wait(10) == 0
    assert "maximum-requests=3" in p.log()


def test_sigterm_finishes_the_request_in_flight(start_app):
    p = start_app()
    import threading
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("a", p.request("/sleep", query=b"s=1.5")))
    t.start()
    time.sleep(0.5)
    p.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert got["a"].status == 200 and got["a"].final == "end"
    assert p.proc.wait(10) == 0


def test_a_client_that_leaves_closes_the_iterable(start_app):
    p = start_app()
    marker = p.run / "markers" / "closed"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(p.socket)
    sock.sendall(wire.request_frame(p.secret, p.app, path="/stream",
                                    query=f"n=1000&delay=0.01&marker={marker}".encode()))
    sock.recv(65536)
    sock.close()
    assert wait_until(marker.exists, 10), p.log()
    assert int(marker.read_text()) < 1000
    assert p.request("/hello").status == 200


def test_a_request_that_breaks_the_protocol_is_dropped(start_app):
    p = start_app()
    for garbage in [b"\x00\x00\x00\x00\x01", b"\xff\xff\xff\xff\x01", b"\x00\x00\x00\x02\x02x",
                    b"\x00\x00\x00\x05\x01abcd"]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(p.socket)
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""
        s.close()
    assert p.proc.poll() is None
    assert p.request("/hello").status == 200
