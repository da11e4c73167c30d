"""The daemon-mode supervisor (`rwsgi-daemon supervise`) on its own, as root, with real
app processes: the test is the server's master (control socket, lifeline) and its
workers (requests on the group sockets, harness/daemon_wire.py). Covers who the app
processes run as and what they hold, restarts and backoff, applying a changed set of
groups, lifelines and --standalone, and recycling."""
from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import daemon_wire as dw
from harness.common import make_rundir, pid_alive, wait_until
from harness.supervisor import PROGRAM, Supervisor, endpoints, secret_of, wait_gone

pytestmark = pytest.mark.server_side

USERS = ("rwsgi-t1", "rwsgi-t2")
WORKER = pwd.getpwnam("www-data")


@pytest.fixture(scope="session")
def tenants():
    """Two system users without a login (created once; kept for later runs)."""
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--shell", "/usr/sbin/nologin", name], capture_output=True)
            pwd.getpwnam(name)  # created here or by a concurrent session
    return [pwd.getpwnam(n) for n in USERS]


@pytest.fixture
def run():
    assert PROGRAM.is_file(), f"{PROGRAM} is missing: run `make build`"
    path = make_rundir("sup")
    yield path
    if not os.environ.get("RWSGI_KEEP_RUNDIR"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sup(run):
    s = Supervisor(run)
    yield s
    s.stop()


def home_for(run: Path, user) -> str:
    home = run / f"home-{user.pw_name}"
    home.mkdir(exist_ok=True)
    os.chown(home, user.pw_uid, user.pw_gid)
    home.chmod(0o700)
    return str(home)


def app(run: Path, name: str) -> str:
    return str(run / "apps" / name)


def whoami(endpoint, script, query=b"", timeout=30):
    answer = dw.request(endpoint["socket"], secret_of(endpoint), script, query=query,
                        timeout=timeout)
    assert answer.status == 200 and answer.final == "end", vars(answer)
    return json.loads(answer.body)


def apply(control, groups, **kw):
    kw.setdefault("worker_uid", WORKER.pw_uid)
    kw.setdefault("worker_gid", WORKER.pw_gid)
    return endpoints(control.apply(groups, **kw))


def socket_paths_by_inode() -> dict[str, str]:
    """Bound unix sockets: inode -> path (from /proc/net/unix)."""
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8:
                out[fields[6]] = fields[7]
    return out


def fds_of(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


# 1. Tenants

def test_each_group_runs_as_its_user_and_holds_only_its_socket(run, sup, tenants):
    t1, t2 = tenants
    # What a server's master leaks into the programs it runs: a file and a TCP listener.
    leaked_file = open(run / "leaked.txt", "w")
    leaked_listener = socket.socket()
    leaked_listener.bind(("127.0.0.1", 0))
    leaked_listener.listen()
    sup.start(pass_fds=(leaked_file.fileno(), leaked_listener.fileno()))
    secret_b = run / "b-secret.txt"
    secret_b.write_text("b's password")
    os.chown(secret_b, t2.pw_uid, t2.pw_gid)
    secret_b.chmod(0o600)
    c = sup.control()
    eps = apply(c, [
        dw.group("a", [app(run, "whoami_app.py")], user="rwsgi-t1", home=home_for(run, t1)),
        dw.group("b", [app(run, "whoami_app.py")], user="rwsgi-t2", home=home_for(run, t2)),
    ])
    a = whoami(eps["a"], app(run, "whoami_app.py"), query=f"read={secret_b}".encode())
    b = whoami(eps["b"], app(run, "whoami_app.py"), query=f"read={secret_b}".encode())
    for facts, user in ((a, t1), (b, t2)):
        assert (facts["uid"], facts["euid"]) == (user.pw_uid, user.pw_uid)
        assert (facts["gid"], facts["egid"]) == (user.pw_gid, user.pw_gid)
        assert facts["groups"] == sorted(os.getgrouplist(user.pw_name, user.pw_gid))
        assert facts["cwd"] == str(run / f"home-{user.pw_name}")
        assert facts["env"]["USER"] == user.pw_name
    assert b["read"] == "ok: b's password"
    assert a["read"] == "PermissionError"

    # What the supervisor holds: nothing it inherited.
    leaked = {os.readlink(f"/proc/self/fd/{leaked_file.fileno()}"),
              os.readlink(f"/proc/self/fd/{leaked_listener.fileno()}")}
    assert not leaked & set(fds_of(sup.pid).values())
    # What A's process holds, seen by root once it is idle: stdin, the log and its own
    # group's socket, nothing else (of the supervisor, of B, of the server).
    assert wait_until(lambda: set(fds_of(a["pid"])) == {0, 1, 2, 3}, 10), fds_of(a["pid"])
    bound = socket_paths_by_inode()
    fds = fds_of(a["pid"])
    assert fds[0] == "/dev/null"
    assert fds[1] == fds[2] == str(sup.log_path)
    assert bound.get(fds[3][len("socket:["):-1]) == eps["a"]["socket"]
    # The app's own view inside a request: the same, plus the request's connection.
    inside = {int(fd): t for fd, t in a["fds"].items()}
    for fd, target in inside.items():
        assert fd in (0, 1, 2, 3) or target.startswith("socket:["), (fd, target, inside)
        assert target not in leaked
        if target.startswith("socket:["):
            assert bound.get(target[len("socket:["):-1]) in (eps["a"]["socket"], None), inside

    # The socket's mode keeps other tenants out: rwsgi-t1 cannot connect to b's socket.
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\n"
             "except PermissionError: print('refused')\n")
    out = subprocess.run(["/usr/bin/python3", "-c", probe, eps["b"]["socket"]],
                         user=t1.pw_uid, group=t1.pw_gid, extra_groups=[],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused", out
    assert oct(os.stat(eps["b"]["socket"]).st_mode & 0o777) == "0o660"
    assert os.stat(eps["b"]["socket"]).st_gid == WORKER.pw_gid
    assert oct(os.stat(sup.dir / "control.sock").st_mode & 0o777) == "0o600"
    # A peer that may connect but lacks the secret gets no answer at all.
    forged = dw.request(eps["b"]["socket"], bytes(32), app(run, "whoami_app.py"))
    assert (forged.status, forged.final, forged.body) == (None, None, b"")
    sup.wait_log(r"refused a request with a wrong secret")
    c.close()


def test_umask_rlimits_environment_and_process_title(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    eps = apply(c, [dw.group("limits", [app(run, "whoami_app.py")], user="rwsgi-t1",
                             home=home_for(run, t1), umask=0o027, memory_limit=4 << 30,
                             cpu_time_limit=3600, lang="C.UTF-8", locale="C.UTF-8",
                             display_name="%{GROUP}")])
    facts = whoami(eps["limits"], app(run, "whoami_app.py"))
    assert facts["umask"] == 0o027
    assert facts["rlimit_data"] == [4 << 30, 4 << 30]
    assert facts["rlimit_cpu"][0] == 3600
    env = facts["env"]
    assert {k: env[k] for k in ("HOME", "USER", "LOGNAME", "PATH", "LANG", "LC_ALL")} == {
        "HOME": t1.pw_dir, "USER": "rwsgi-t1", "LOGNAME": "rwsgi-t1",
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    # Nothing of the supervisor's (root's) environment reaches the app.
    assert not {k for k in env if k.startswith(("SUDO", "PYTEST", "SSH", "PWD"))}, env
    with open(f"/proc/{facts['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"(wsgi:limits)", b"app"]
    c.close()


def test_bad_groups_are_refused_and_change_nothing(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    good = dw.group("good", [app(run, "hello.py")], user="rwsgi-t1", home=home_for(run, t1))
    apply(c, [good])
    before = sup.status()
    for groups, kw, words in [
        ([good, dw.group("x", [], user="rwsgi-no-such-user")], {}, 'group x: user "rwsgi-no-such-user" does not exist'),
        ([good, dw.group("x", [], user="#0")], {}, "never runs as root"),
        ([good, dw.group("x", [])], {"worker_uid": 0}, "worker user is root"),
        ([good, dw.group("x", [], user="rwsgi-t1", group="rwsgi-no-such-group")], {}, '"rwsgi-no-such-group" does not exist'),
        ([good, good], {}, "configured twice"),
        ([good, dw.group("../x", [])], {}, "process group name"),
    ]:
        kw.setdefault("worker_uid", WORKER.pw_uid)
        reply = c.apply(groups, worker_gid=WORKER.pw_gid, **kw)
        assert reply["reply"] == "error" and words in reply["error"], reply
    assert sup.status() == before
    assert not (sup.dir / "x.sock").exists()
    # The connection is still a working lifeline and control channel.
    assert apply(c, [good])["good"]["socket"] == str(sup.dir / "good.sock")
    c.close()


def test_refuses_to_run_without_root_or_in_an_unsafe_directory(run):
    nobody = pwd.getpwnam("nobody")
    out = subprocess.run([str(PROGRAM), "supervise", "--dir", str(run / "d")],
                         user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "must run as root" in out.stderr, out
    for mode, owner, words in [(0o775, 0, "writable by group or others"),
                               (0o755, nobody.pw_uid, "not root")]:
        d = run / f"unsafe-{mode:o}-{owner}"
        d.mkdir()
        os.chown(d, owner, 0)
        d.chmod(mode)
        out = subprocess.run([str(PROGRAM), "supervise", "--dir", str(d)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and words in out.stderr, out
        assert not (d / "control.sock").exists()
    out = subprocess.run([str(PROGRAM), "supervise", "--dir", "relative"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "absolute path" in out.stderr, out


# 2. Crashes and backoff

def test_crashed_processes_are_restarted_and_waiting_requests_complete(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    script = app(run, "crash_app.py")
    eps = apply(c, [dw.group("crashy", [script], user="rwsgi-t1", home=home_for(run, t1))])
    ep = eps["crashy"]

    def pid_of():
        a = dw.request(ep["socket"], secret_of(ep), script)
        assert a.status == 200, vars(a)
        return int(a.body.split()[1])

    first = pid_of()
    for path, logged in (("/exit1", r"app process %d exited with status 1 \(restarting in \d+ s\)"),
                         ("/segv", r"app process %d was killed by signal 11.*\(restarting in \d+ s\)")):
        pid = pid_of()
        died = dw.request(ep["socket"], secret_of(ep), script, path=path)
        assert died.final is None  # the process died under the request
        # Sent while no process runs: it waits in the group's backlog for the new one.
        assert pid_of() != pid
        sup.wait_log(logged % pid)
    assert first != pid_of()
    c.close()


def test_a_process_that_cannot_start_backs_off(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    apply(c, [dw.group("nostart", [app(run, "hello.py")], user="rwsgi-t1",
                       home=home_for(run, t1), python_home="/nonexistent/python")])
    sup.wait_log(r"group nostart: app process \d+ exited with status 3 \(it could not start")
    started = time.monotonic()
    time.sleep(5)  # the window in which the spawns are counted, not a timing assertion
    spawns = sup.log().count("group nostart: started app process")
    # 1 s, 2 s, 4 s ... between attempts: a handful in 5 s, never a fork loop.
    assert 2 <= spawns <= 5, (spawns, time.monotonic() - started, sup.log())
    assert "restarting in 2 s" in sup.log()
    c.close()


def test_an_app_that_fails_to_import_does_not_loop(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    script = app(run, "broken_import.py")
    ep = apply(c, [dw.group("broken", [script], user="rwsgi-t1", home=home_for(run, t1))])["broken"]
    answer = dw.request(ep["socket"], secret_of(ep), script)
    assert answer.status == 500 or answer.final == ("fail", 500), vars(answer)
    pids = sup.status()["broken"]
    answer = dw.request(ep["socket"], secret_of(ep), script)
    assert sup.status()["broken"] == pids
    assert sup.log().count("group broken: started app process") == 1
    c.close()


# 3. Applying a changed set of groups

def test_apply_keeps_unchanged_groups_and_replaces_changed_ones_without_failures(run, sup, tenants):
    t1, t2 = tenants
    sup.start()
    c = sup.control()
    hello, who = app(run, "hello.py"), app(run, "whoami_app.py")
    keep = dw.group("keep", [hello], user="rwsgi-t1", home=home_for(run, t1), processes=2)
    change = dw.group("change", [who], user="rwsgi-t2", home=home_for(run, t2), processes=2)
    drop = dw.group("drop", [hello], user="rwsgi-t1", home=home_for(run, t1))
    first = apply(c, [keep, change, drop])
    whoami(first["change"], who)
    before = sup.status()
    assert len(before["keep"]) == 2 and len(before["change"]) == 2

    results = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                a = dw.request(first["change"]["socket"], secret_of(first["change"]), who)
            except OSError as e:  # reset, refused: a lost request
                results.append(("failed", repr(e)))
                continue
            ok = a.status == 200 and a.final == "end"
            results.append(json.loads(a.body)["pid"] if ok else ("failed", vars(a)))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) >= 20, 30)
        second = apply(c, [keep, dict(change, threads=4)])
        sup.wait_log(r"replacing change \(changed: threads\)")
        new = wait_until(lambda: (s := sup.status()) and not set(s["change"]) & set(before["change"])
                         and len(s["change"]) == 2 and s, 30)
        assert new, sup.status()
        # Every old process finished (drained) and left.
        assert wait_until(lambda: not any(pid_alive(p) for p in before["change"]), 30)
        served_new = len(results)
        wait_until(lambda: len(results) >= served_new + 20, 30)
        # Twice more, for the races of a process that leaves while requests arrive.
        for count in (5, 6):
            old = sup.status()["change"]
            apply(c, [keep, dict(change, threads=count)])
            assert wait_until(lambda: not any(pid_alive(p) for p in old), 30)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    failures = [r for r in results if isinstance(r, tuple)]
    assert not failures, failures[:3]
    assert set(new["change"]) <= set(results) and set(before["change"]) & set(results)
    assert new["keep"] == before["keep"]
    assert second["change"] == first["change"]  # same socket, same secret
    assert second["keep"] == first["keep"]
    assert "drop" not in second and not new.get("drop")  # at most draining
    assert wait_gone(sup.dir / "drop.sock")
    assert wait_until(lambda: not any(pid_alive(p) for p in before["drop"]), 30)
    assert "removed drop" in sup.log()
    c.close()


# 4. Lifelines

def test_closing_the_last_lifeline_stops_everything(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    master, upgraded = sup.control(), sup.control()
    group = dw.group("life", [app(run, "hello.py")], user="rwsgi-t1", home=home_for(run, t1))
    apply(master, [group])
    pids = sup.status()["life"]
    # A binary upgrade: the new master applies the same groups on its own connection.
    apply(upgraded, [group])
    assert sup.status()["life"] == pids
    master.close()
    ep = apply(upgraded, [group])["life"]  # still answering: one lifeline is left
    assert dw.request(ep["socket"], secret_of(ep), app(run, "hello.py")).status == 200
    upgraded.close()
    assert sup.proc.wait(timeout=30) == 0
    assert not any(pid_alive(p) for p in pids)
    assert not (sup.dir / "life.sock").exists() and not (sup.dir / "control.sock").exists()
    assert "its lifeline closed" in sup.log()


def test_a_process_that_does_not_stop_is_killed(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    ep = apply(c, [dw.group("stuck", [app(run, "hello.py")], user="rwsgi-t1",
                            home=home_for(run, t1), shutdown_timeout=1)])["stuck"]
    assert dw.request(ep["socket"], secret_of(ep), app(run, "hello.py")).status == 200
    (pid,) = sup.status()["stuck"]
    os.kill(pid, signal.SIGSTOP)  # it cannot act on SIGTERM any more
    c.close()
    assert sup.proc.wait(timeout=30) == 0
    assert not pid_alive(pid)
    assert f"old app process {pid} did not stop in time: killing it" in sup.log()


def test_standalone_survives_its_lifelines_and_starts_its_config(run, sup, tenants):
    t1, _ = tenants
    group = dw.group("boot", [app(run, "hello.py")], user="rwsgi-t1", home=home_for(run, t1))
    config = run / "boot.json"
    config.write_text(json.dumps({"owner_pid": 0, "server": "test", "worker_uid": WORKER.pw_uid,
                                  "worker_gid": WORKER.pw_gid, "groups": [group]}))
    sup.start("--standalone", "--config", str(config))
    dw.wait_for_socket(str(sup.dir / "boot.sock"))
    pids = wait_until(lambda: sup.status().get("boot"), 10)
    assert pids
    c = sup.control()
    ep = apply(c, [group])["boot"]  # a server adopts it: the same group is kept
    assert sup.status()["boot"] == pids
    c.close()
    # This status is answered after the closed lifeline was seen (it closed first).
    assert sup.status()["boot"] == pids
    assert dw.request(ep["socket"], secret_of(ep), app(run, "hello.py")).status == 200
    assert sup.alive()
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.proc.wait(timeout=30) == 0
    assert not any(pid_alive(p) for p in pids)
    assert not (sup.dir / "boot.sock").exists()


def test_detach_and_a_second_supervisor_of_the_same_directory(run, sup, tenants):
    t1, _ = tenants
    first = subprocess.run([str(PROGRAM), "supervise", "--dir", str(sup.dir), "--detach"],
                           stdin=subprocess.DEVNULL, stderr=open(sup.log_path, "ab"), timeout=30)
    assert first.returncode == 0
    sup.wait_ready()
    lock = sup.dir / "supervisor.lock"
    sup.pid = int(wait_until(lambda: lock.read_text().strip(), 10))
    assert os.getsid(sup.pid) == sup.pid  # its own session, not the caller's child
    with open(f"/proc/{sup.pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()
    second = subprocess.run([str(PROGRAM), "supervise", "--dir", str(sup.dir), "--detach"],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 0
    assert f"another supervisor (pid {sup.pid}) runs in" in second.stderr
    c = sup.control()
    apply(c, [dw.group("det", [app(run, "hello.py")], user="rwsgi-t1", home=home_for(run, t1))])
    pids = sup.status()["det"]
    c.close()
    assert wait_until(lambda: not pid_alive(sup.pid), 30)
    assert not any(pid_alive(p) for p in pids)


# 5. Recycling through the app process

def test_maximum_requests_recycles_without_failed_requests(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    script = app(run, "crash_app.py")
    ep = apply(c, [dw.group("recycle", [script], user="rwsgi-t1", home=home_for(run, t1),
                            maximum_requests=3)])["recycle"]
    pids = []
    for _ in range(10):
        a = dw.request(ep["socket"], secret_of(ep), script)
        assert a.status == 200 and a.final == "end", vars(a)
        pids.append(int(a.body.split()[1]))
    runs = [len(list(g)) for _, g in itertools.groupby(pids)]
    # Each process serves its 3 requests, then the next one takes over.
    assert runs == [3, 3, 3, 1], pids
    sup.wait_log(r"group recycle: app process \d+ exited \(recycled\)", count=len(runs) - 1)
    c2 = sup.control()
    status = c2.call({"op": "status"})
    c2.close()
    assert status["groups"][0]["restarts"] >= len(runs) - 1


def test_touching_the_script_gives_a_new_process(run, sup, tenants):
    t1, _ = tenants
    sup.start()
    c = sup.control()
    script = app(run, "whoami_app.py")
    ep = apply(c, [dw.group("touch", [script], user="rwsgi-t1", home=home_for(run, t1))])["touch"]
    pid = whoami(ep, script)["pid"]
    later = time.time() + 5
    os.utime(script, (later, later))
    assert wait_until(lambda: whoami(ep, script)["pid"] != pid, 20)
    sup.wait_log(rf"app process {pid} exited \(recycled\)")
    c.close()
