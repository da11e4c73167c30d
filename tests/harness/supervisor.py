"""Runs `rwsgi-daemon supervise` for tests: a supervisor of its own socket directory in
a run dir, its log (stderr) in a file, control connections through daemon_wire.Control.
The test acts as the server's master (apply, lifeline) and as its workers (requests).
Teardown stops only the supervisor it started and the app processes it saw."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from . import daemon_wire
from .common import MODULES, pid_alive, wait_until

PROGRAM = MODULES / "rwsgi-daemon"


class Supervisor:
    def __init__(self, run: Path):
        self.run = run
        self.dir = run / "d"
        self.log_path = run / "supervisor.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.seen_pids: set[int] = set()

    def start(self, *extra: str, pass_fds=(), wait=True, **popen) -> subprocess.Popen:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(PROGRAM), "supervise", "--dir", str(self.dir), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=pass_fds, **popen)
        log.close()
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout=15):
        daemon_wire.wait_for_socket(str(self.dir / "control.sock"), timeout)

    def control(self) -> daemon_wire.Control:
        return daemon_wire.Control(str(self.dir))

    def status(self) -> dict[str, list[int]]:
        """Group name -> pids of its serving (not draining) processes."""
        c = self.control()
        try:
            reply = c.call({"op": "status"})
        finally:
            c.close()
        assert reply["reply"] == "status", reply
        out = {}
        for g in reply["groups"]:
            pids = [p["pid"] for p in g["processes"]]
            self.seen_pids.update(pids)
            out[g["name"]] = sorted(p["pid"] for p in g["processes"] if not p["draining"])
        return out

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout=10.0, count=1):
        """Waits until `pattern` (a regex) matched `count` times; returns the matches."""
        found = wait_until(lambda: len(re.findall(pattern, self.log())) >= count and
                           re.findall(pattern, self.log()), timeout)
        assert found, f"no {count} x {pattern!r} in the supervisor's log:\n{self.log()[-4000:]}"
        return found

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid)

    def stop(self):
        if self.pid is not None and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            if not wait_until(lambda: not pid_alive(self.pid), 30):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.seen_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def secret_of(endpoint: dict) -> bytes:
    return bytes.fromhex(endpoint["secret"])


def endpoints(reply: dict) -> dict[str, dict]:
    assert reply.get("reply") == "applied", reply
    return {e["name"]: e for e in reply["groups"]}


def wait_gone(path: Path, timeout=10.0) -> bool:
    return wait_until(lambda: not os.path.exists(path), timeout)


def now() -> float:
    return time.monotonic()
