"""`make install` and the Debian packages (`make deb`), checked on the real system.

These cases run once per pytest run, not once per server kind (they use no `kind`
fixture), and are marked `packages` (select or leave them out with -m) and `server_side`
(left out of the validated pass).

- `make install DESTDIR=...` lays out exactly the files of Debian's module packages, plus
  daemon mode's one rwsgi-daemon (root's, 0755) linked beside each module and its systemd
  unit naming it; `make uninstall` takes them away again. Both modules, loaded from that
  layout, run a daemon group through the installed program, as the group's user.
- The .debs built by `make deb` (from target/modules, into a temp dir) declare what
  Debian's own module packages declare; rwsgi-daemon holds the program and the unit, and
  both module packages depend on it (same version) and carry the link.
- The whole life of the packages on this machine: `apt-get install` the three .debs, the
  nginx module enabled by the package's link, `a2enmod rwsgi` refused while mod_wsgi is
  enabled (with a2enmod's conflict message), enabled once `a2dismod wsgi` ran, a small app
  served through the stock /etc/nginx (a conf.d server block) and /etc/apache2 (a site),
  each on a free 127.0.0.1 port, as the workers' user, and through a daemon group of each
  (the supervisor being /usr/lib/rwsgi/rwsgi-daemon) as the group's user; then purge of
  rwsgi-daemon, which takes the module packages with it, after which no file of the
  packages and no enable link is left. /etc/nginx, /etc/apache2 and a2enmod's state in
  /var/lib/apache2 are backed up first and restored exactly afterwards; the supervisors'
  socket directories the test made are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from harness.apache import ApacheServer
from harness.common import REPO, Mount, children_of, free_port, pid_alive, wait_port, wait_until
from harness.http import get
from harness.nginx import NginxServer

pytestmark = [pytest.mark.packages, pytest.mark.server_side]

MODULES = REPO / "target" / "modules"
NGX_PKG = "libnginx-mod-http-rwsgi"
APACHE_PKG = "libapache2-mod-rwsgi"
DAEMON_PKG = "rwsgi-daemon"
PACKAGES = (DAEMON_PKG, NGX_PKG, APACHE_PKG)
# daemon mode's program, its systemd unit, and the link beside each module
PROGRAM = Path("/usr/lib/rwsgi/rwsgi-daemon")
UNIT = Path("/lib/systemd/system/rwsgi-daemon@.service")
PROGRAM_LINK = "../../rwsgi/rwsgi-daemon"
TENANT = "rwsgi-t1"
RUN_RWSGI = Path("/run/rwsgi")  # where nginx's supervisors keep their sockets by default
NGX_LINK = Path("/etc/nginx/modules-enabled/50-mod-http-rwsgi.conf")
APACHE_LINKS = [Path("/etc/apache2/mods-enabled/rwsgi.load"),
                Path("/etc/apache2/mods-enabled/rwsgi.conf")]
# What the packages and the test change on the system, restored afterwards.
BACKED_UP = [Path("/etc/nginx"), Path("/etc/apache2"), Path("/var/lib/apache2")]
NGINX_PID = Path("/run/nginx.pid")
APACHE_PID = Path("/var/run/apache2/apache2.pid")
CONFLICT = ("Module wsgi is enabled - cannot proceed due to conflicts. "
            "It needs to be disabled first!")
APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
APT_LOCK = ["-o", "DPkg::Lock::Timeout=300"]


def run(cmd: list[str], check: bool = True, timeout: float = 300, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (rc {p.returncode}):\n{p.stdout}{p.stderr}",
                    pytrace=False)
    return p


def make(*args: str, check: bool = True):
    # -o build: use the modules already built (the ones the rest of the suite tests).
    return run(["make", "--no-print-directory", "-C", str(REPO), "-o", "build", *args],
               check=check)


def tmpdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)  # apt reads local .debs as _apt; the servers' workers read the app
    return d


def modules_built():
    for so in ("ngx_http_rwsgi_module.so", "mod_rwsgi.so", "rwsgi-daemon"):
        if not (MODULES / so).is_file():
            pytest.fail(f"{MODULES / so} is missing: run `make build`", pytrace=False)


def python_minor() -> int:
    """The python3 the modules are built against (the Makefile's PYO3_PYTHON)."""
    out = run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info.minor)"]).stdout
    return int(out)


def installed(pkg: str) -> bool:
    p = run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], check=False)
    return p.returncode == 0 and p.stdout.strip() not in ("", "not-installed")


@pytest.fixture(scope="session")
def tenant():
    """The system user the daemon groups run as (created once, kept: tests run as root)."""
    try:
        return pwd.getpwnam(TENANT)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             TENANT])
        return pwd.getpwnam(TENANT)


def supervisors(program: Path) -> dict[int, str]:
    """The running `rwsgi-daemon supervise` processes whose program (/proc/PID/exe, the
    file the kernel ran, links resolved) is `program`: pid -> their --dir."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe").removesuffix(" (deleted)")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        if exe == str(program) and argv[1:3] == ["supervise", "--dir"] and pid_alive(int(entry)):
            found[int(entry)] = argv[3]
    return found


def gone(pids) -> bool:
    return not any(pid_alive(p) for p in pids)


def unit_exec_start(text: str) -> str:
    lines = [l for l in text.splitlines() if l.startswith("ExecStart=")]
    assert len(lines) == 1, text
    return lines[0].removeprefix("ExecStart=")


# -- make install -------------------------------------------------------------------------

def tree(root: Path) -> dict[str, str]:
    """Every entry under root: relative path -> 'd' | 'f 0644' | 'l -> target'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = f"l -> {os.readlink(p)}"
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = "d"
        else:
            out[rel] = f"f {stat.S_IMODE(st.st_mode):04o}"
    return out


@pytest.mark.parametrize("prefix", ["/usr", "/usr/local"])
def test_make_install_layout(prefix):
    modules_built()
    dest = tmpdir("rwsgi-destdir-")
    try:
        make("install", f"DESTDIR={dest}", f"PREFIX={prefix}")
        p = prefix.lstrip("/")
        files = {k: v for k, v in tree(dest).items() if v != "d"}
        assert files == {
            f"{p}/lib/nginx/modules/ngx_http_rwsgi_module.so": "f 0644",
            f"{p}/lib/nginx/modules/rwsgi-daemon": f"l -> {PROGRAM_LINK}",
            f"{p}/share/nginx/modules-available/mod-http-rwsgi.conf": "f 0644",
            "etc/nginx/modules-enabled/50-mod-http-rwsgi.conf":
                f"l -> {prefix}/share/nginx/modules-available/mod-http-rwsgi.conf",
            f"{p}/lib/apache2/modules/mod_rwsgi.so": "f 0644",
            f"{p}/lib/apache2/modules/rwsgi-daemon": f"l -> {PROGRAM_LINK}",
            "etc/apache2/mods-available/rwsgi.load": "f 0644",
            "etc/apache2/mods-available/rwsgi.conf": "f 0644",
            f"{p}/lib/rwsgi/rwsgi-daemon": "f 0755",
            "lib/systemd/system/rwsgi-daemon@.service": "f 0644",
        }
        for so, sub in (("ngx_http_rwsgi_module.so", "nginx"), ("mod_rwsgi.so", "apache2")):
            assert (dest / p / "lib" / sub / "modules" / so).read_bytes() == \
                (MODULES / so).read_bytes()
            # the link resolves to the one installed program
            link = dest / p / "lib" / sub / "modules" / "rwsgi-daemon"
            assert link.resolve() == (dest / p / "lib/rwsgi/rwsgi-daemon").resolve()
        program = dest / p / "lib/rwsgi/rwsgi-daemon"
        assert program.read_bytes() == (MODULES / "rwsgi-daemon").read_bytes()
        # the modules run it as root only if it is root's and no one else may write it
        assert program.stat().st_uid == 0
        unit = (dest / "lib/systemd/system/rwsgi-daemon@.service").read_text()
        assert unit_exec_start(unit) == (
            f"{prefix}/lib/rwsgi/rwsgi-daemon supervise --standalone --dir /run/rwsgi/%i "
            "--config /etc/rwsgi/daemon/%i.json")
        load = (dest / p / "share/nginx/modules-available/mod-http-rwsgi.conf").read_text()
        assert load.strip() == f"load_module {prefix}/lib/nginx/modules/ngx_http_rwsgi_module.so;"
        lines = (dest / "etc/apache2/mods-available/rwsgi.load").read_text().splitlines()
        # a2enmod reads Conflicts: in the comment lines before the first directive
        assert lines[0] == "# Conflicts: wsgi"
        directives = [l for l in lines if l and not l.startswith("#")]
        assert directives == [f"LoadModule rwsgi_module {prefix}/lib/apache2/modules/mod_rwsgi.so"]
        assert "<IfModule mod_rwsgi.c>" in (dest / "etc/apache2/mods-available/rwsgi.conf").read_text()

        make("uninstall", f"DESTDIR={dest}", f"PREFIX={prefix}")
        left = {k: v for k, v in tree(dest).items() if v != "d"}
        assert left == {}, f"make uninstall left {left}"
        assert not (dest / p / "lib/nginx").exists()
        assert not (dest / p / "lib/rwsgi").exists()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_make_install_runs_daemon_groups(tenant):
    """Each module, loaded from `make install`'s layout, finds the installed program
    through the link beside it (its default wsgi_daemon_program / WSGIDaemonProgram): the
    supervisor runs from $(PREFIX)/lib/rwsgi and the group's app as the group's user."""
    modules_built()
    dest = tmpdir("rwsgi-destdir-")
    program = (dest / "usr/lib/rwsgi/rwsgi-daemon").resolve()
    servers = {
        "nginx": type("Installed", (NginxServer,), {
            "module_path": dest / "usr/lib/nginx/modules/ngx_http_rwsgi_module.so"}),
        "apache": type("Installed", (ApacheServer,), {
            "module_path": dest / "usr/lib/apache2/modules/mod_rwsgi.so"}),
    }
    try:
        make("install", f"DESTDIR={dest}")
        for kind, server_class in servers.items():
            s = server_class()
            try:
                if kind == "nginx":
                    s.start([Mount("/d", "whoami_app.py", extra=["wsgi_process_group g;"],
                                   validate=False)], daemons={"g": f"user={TENANT}"})
                else:
                    s.start_text(s.config_text([
                        f"WSGIDaemonProcess g user={TENANT}",
                        "WSGIScriptAlias /d {apps}/whoami_app.py process-group=g"]))
                r = get(s.port, "/d/who")
                assert r.status == 200, f"{kind}: {r}\n{s.log_tail()}"
                who = json.loads(r.body)
                assert (who["uid"], who["euid"]) == (tenant.pw_uid, tenant.pw_uid), (kind, who)
                sups = supervisors(program)
                assert sups, f"{kind}: no supervisor runs {program}:\n{s.log_tail()}"
                assert who["pid"] in [c for sup in sups for c in children_of(sup)], (kind, who)
            finally:
                s.stop()
                s.cleanup()
            assert wait_until(lambda: not supervisors(program), 30), \
                f"{kind}: the supervisor outlived the server"
        make("uninstall", f"DESTDIR={dest}")
        assert not program.exists()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


# -- make deb ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def debs():
    """{package: .deb path}, built by `make deb` into a temp dir."""
    modules_built()
    out = tmpdir("rwsgi-debs-")
    make("deb", f"DEB_DIR={out}")
    found = {}
    for pkg in PACKAGES:
        hits = list(out.glob(f"{pkg}_*.deb"))
        assert len(hits) == 1, f"make deb made {sorted(x.name for x in out.iterdir())}"
        found[pkg] = hits[0]
    yield found
    shutil.rmtree(out, ignore_errors=True)


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def deb_entries(deb: Path) -> dict[str, str]:
    """Every entry of the package's data: absolute path -> '-' (file) | 'l' | 'd'."""
    out = {}
    for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines():
        kind, path = line[0], line.split(None, 5)[5].split(" -> ")[0]
        out[path.removeprefix(".").rstrip("/") or "/"] = kind
    return out


def deb_files(deb: Path) -> dict[str, str]:
    """The entries that are not directories."""
    return {p: k for p, k in deb_entries(deb).items() if k != "d"}


def provides(pkg: str, pattern: str) -> str:
    text = run(["dpkg-query", "-W", "-f=${Provides}", pkg]).stdout
    names = [p.strip().split()[0] for p in text.split(",") if p.strip()]
    hits = [n for n in names if re.fullmatch(pattern, n)]
    assert len(hits) == 1, f"{pkg} provides {names}"
    return hits[0]


def deb_modes(deb: Path) -> dict[str, str]:
    """The non-directory entries of the package's data: absolute path -> 'mode owner'."""
    out = {}
    for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines():
        fields = line.split(None, 5)
        if fields[0][0] != "d":
            out[fields[5].split(" -> ")[0].removeprefix(".")] = f"{fields[0]} {fields[1]}"
    return out


def test_deb_metadata(debs):
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    minor = python_minor()
    python = [f"python3 (>= 3.{minor})", f"python3 (<< 3.{minor + 1})"]
    nginx_abi = provides("nginx", r"nginx-abi-.+")
    apache_api = provides("apache2-bin", r"apache2-api-\d+")
    for pkg, deb in debs.items():
        assert deb.name == f"{pkg}_{version}_{arch}.deb"
        assert deb_field(deb, "Package") == pkg
        assert deb_field(deb, "Version") == version
        assert deb_field(deb, "Section") == "httpd"
        depends = [d.strip() for d in deb_field(deb, "Depends").split(",")]
        for d in python:
            assert d in depends, f"{pkg}: {depends}"
        assert any(re.fullmatch(rf"libpython3\.{minor} \(>= 3\.{minor}\S*\)", d)
                   for d in depends), f"{pkg}: {depends}"
        assert any(d.startswith("libc6 (>= ") for d in depends), f"{pkg}: {depends}"
        with tempfile.TemporaryDirectory() as ctl:
            run(["dpkg-deb", "-e", str(deb), ctl])
            for script in ("postinst", "prerm", "postrm"):
                if pkg == DAEMON_PKG:
                    # a template unit only: nothing to enable, start or stop on install
                    assert not Path(ctl, script).exists(), f"{pkg}: {script}"
                else:
                    assert os.access(Path(ctl, script), os.X_OK), f"{pkg}: no {script}"
            conffiles = Path(ctl, "conffiles")
            conffiles = conffiles.read_text().split() if conffiles.exists() else []
            md5 = Path(ctl, "md5sums").read_text()
            # regular files only, as dh_md5sums (not the links)
            assert sorted(md5.split()[1::2]) == sorted(
                p.lstrip("/") for p, kind in deb_files(deb).items() if kind == "-")
            if pkg == APACHE_PKG:
                assert sorted(conffiles) == ["/etc/apache2/mods-available/rwsgi.conf",
                                             "/etc/apache2/mods-available/rwsgi.load"]
            else:
                assert conffiles == []
    ngx_dep = [d.strip() for d in deb_field(debs[NGX_PKG], "Depends").split(",")]
    assert nginx_abi in ngx_dep, ngx_dep
    apache_dep = [d.strip() for d in deb_field(debs[APACHE_PKG], "Depends").split(",")]
    assert apache_api in apache_dep, apache_dep
    assert "apache2-bin (>= 2.4.16)" in apache_dep  # as dh_apache2 declares
    # the modules and the program they run come from the same build
    for deps in (ngx_dep, apache_dep):
        assert f"{DAEMON_PKG} (= {version})" in deps, deps
    # The enable link is made by postinst, never shipped (so an admin's removal sticks).
    assert deb_files(debs[NGX_PKG]) == {
        "/usr/lib/nginx/modules/ngx_http_rwsgi_module.so": "-",
        "/usr/lib/nginx/modules/rwsgi-daemon": "l",
        "/usr/share/nginx/modules-available/mod-http-rwsgi.conf": "-",
        f"/usr/share/doc/{NGX_PKG}/copyright": "-",
    }
    assert deb_files(debs[APACHE_PKG]) == {
        "/usr/lib/apache2/modules/mod_rwsgi.so": "-",
        "/usr/lib/apache2/modules/rwsgi-daemon": "l",
        "/etc/apache2/mods-available/rwsgi.load": "-",
        "/etc/apache2/mods-available/rwsgi.conf": "-",
        f"/usr/share/doc/{APACHE_PKG}/copyright": "-",
    }
    assert deb_files(debs[DAEMON_PKG]) == {
        str(PROGRAM): "-",
        str(UNIT): "-",
        f"/usr/share/doc/{DAEMON_PKG}/copyright": "-",
    }
    # the supervisor runs as root: root's, writable by root alone
    assert deb_modes(debs[DAEMON_PKG])[str(PROGRAM)] == "-rwxr-xr-x root/root"
    assert deb_modes(debs[DAEMON_PKG])[str(UNIT)] == "-rw-r--r-- root/root"
    for pkg, moddir in ((NGX_PKG, "/usr/lib/nginx/modules"), (APACHE_PKG, "/usr/lib/apache2/modules")):
        listing = run(["dpkg-deb", "-c", str(debs[pkg])]).stdout
        assert f".{moddir}/rwsgi-daemon -> {PROGRAM_LINK}" in listing, listing
        assert os.path.normpath(os.path.join(moddir, PROGRAM_LINK)) == str(PROGRAM)
    with tempfile.TemporaryDirectory() as root:
        run(["dpkg-deb", "-x", str(debs[DAEMON_PKG]), root])
        unit = Path(root, str(UNIT).lstrip("/")).read_text()
        assert unit_exec_start(unit).split()[0] == str(PROGRAM)


# -- the packages on the system -----------------------------------------------------------

def manifest(root: Path) -> dict[str, tuple]:
    """Everything under root, by relative path: type, content (or link target), mode,
    owner."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("d", "")
            else:
                what = ("f", hashlib.sha256(p.read_bytes()).hexdigest())
            out[str(p.relative_to(root))] = what + (stat.S_IMODE(st.st_mode), st.st_uid,
                                                    st.st_gid)
    return out


def restore_tree(backup: Path, live: Path) -> list[str]:
    """Makes `live` identical to `backup` (a `cp -a` copy of it), touching only what
    differs; returns what it changed."""
    want, have = manifest(backup), manifest(live)
    changed = []
    for rel in sorted(have, key=lambda r: -r.count("/")):  # deepest first
        if rel not in want or want[rel][0] != have[rel][0] or \
                (want[rel][0] == "l" and want[rel][1] != have[rel][1]):
            p = live / rel
            if have[rel][0] == "d":
                shutil.rmtree(p)
            else:
                p.unlink()
            changed.append(f"removed {p}")
    have = manifest(live)
    for rel in sorted(want):  # parents before children
        src, dst = backup / rel, live / rel
        w = want[rel]
        if have.get(rel) == w:
            continue
        if w[0] == "l":
            os.symlink(w[1], dst)
        elif w[0] == "d":
            dst.mkdir(exist_ok=True)
        else:
            shutil.copyfile(src, dst)
        os.lchown(dst, w[3], w[4])
        if w[0] != "l":
            dst.chmod(w[2])
        changed.append(f"restored {dst}")
    return changed


class System:
    """Backs up what the test changes, starts and stops the stock servers, and restores
    everything at the end."""

    def __init__(self):
        self.backup = tmpdir("rwsgi-sysbackup-")
        for d in BACKED_UP:
            copy = self.copy_of(d)
            copy.parent.mkdir(parents=True, exist_ok=True)
            assert not copy.exists()
            subprocess.run(["cp", "-a", str(d), str(copy)], check=True)
            assert manifest(copy) == manifest(d), f"backup of {d} differs from it"
        self.run = tmpdir("rwsgi-pkgapp-")
        self.started: list[tuple[str, int]] = []
        # socket directories of the supervisors the servers started, made by them (and
        # nginx's default root of them)
        self.daemon_dirs: set[Path] = set()
        self.made_run_rwsgi = not RUN_RWSGI.exists()

    def copy_of(self, d: Path) -> Path:
        return self.backup / d.relative_to("/")

    @staticmethod
    def pid(path: Path) -> int | None:
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def start_nginx(self):
        run(["nginx", "-t", "-c", "/etc/nginx/nginx.conf"])
        run(["nginx", "-c", "/etc/nginx/nginx.conf"])
        pid = wait_until(lambda: self.pid(NGINX_PID), 10)
        assert pid, f"nginx did not start:\n{self.log('/var/log/nginx/error.log')}"
        self.started.append(("nginx", pid))

    def start_apache(self):
        run(["apache2ctl", "configtest"])
        # started directly even where systemd runs (apache2ctl would ask the disabled unit)
        run(["apache2ctl", "start"], env=dict(os.environ, APACHE_STARTED_BY_SYSTEMD="1"))
        pid = wait_until(lambda: self.pid(APACHE_PID), 10)
        assert pid, f"apache2 did not start:\n{self.log('/var/log/apache2/error.log')}"
        self.started.append(("apache2", pid))

    def stop(self, name: str):
        for n, pid in list(self.started):
            if n != name:
                continue
            if name == "nginx":
                run(["nginx", "-s", "stop", "-c", "/etc/nginx/nginx.conf"], check=False)
            else:
                run(["apache2ctl", "stop"], check=False)
            if not wait_until(lambda: not pid_alive(pid), 15):
                os.kill(pid, signal.SIGKILL)
            self.started.remove((n, pid))

    def supervisor(self, server: str) -> int:
        """The supervisor `server` started from the installed program (remembering its
        socket directory, made by it, for restore())."""
        found = wait_until(lambda: supervisors(PROGRAM), 10)
        assert len(found) == 1, f"{server}: supervisors of {PROGRAM}: {found}"
        (pid, d), = found.items()
        self.daemon_dirs.add(Path(d))
        return pid

    @staticmethod
    def stop_supervisors():
        """The supervisors stop once their server is gone; any left is killed."""
        sups = supervisors(PROGRAM)
        apps = [c for sup in sups for c in children_of(sup)]
        if not wait_until(lambda: gone(sups), 30):
            for pid in sups:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not wait_until(lambda: gone(apps), 10):
            for pid in apps:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return sups

    @staticmethod
    def log(path: str, n: int = 30) -> str:
        try:
            return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def restore(self) -> list[str]:
        for name, _ in list(self.started):
            self.stop(name)
        # Neither server ran when the test started: one running now was started by a
        # maintainer script (invoke-rc.d, where policy-rc.d allows it).
        for name, pidfile in (("nginx", NGINX_PID), ("apache2", APACHE_PID)):
            pid = self.pid(pidfile)
            if pid:
                self.started.append((name, pid))
                self.stop(name)
        self.stop_supervisors()
        for d in self.daemon_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self.made_run_rwsgi and RUN_RWSGI.is_dir() and not any(RUN_RWSGI.iterdir()):
            RUN_RWSGI.rmdir()
        leftover = [p for p in PACKAGES if installed(p)]
        if leftover:
            run(["dpkg", "--purge", *leftover], check=False, env=APT_ENV)
        changed = []
        for d in BACKED_UP:
            changed += restore_tree(self.copy_of(d), d)
            assert manifest(d) == manifest(self.copy_of(d)), f"{d} not restored"
        shutil.rmtree(self.backup, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)
        return changed


@pytest.fixture
def system():
    for pkg in PACKAGES:
        if installed(pkg):
            pytest.fail(f"{pkg} is installed on this machine; the test installs and purges it "
                        f"itself: `apt purge {pkg}` first", pytrace=False)
    for f in ("/usr/lib/nginx/modules/ngx_http_rwsgi_module.so",
              "/usr/lib/apache2/modules/mod_rwsgi.so", str(PROGRAM)):
        if os.path.exists(f):
            pytest.fail(f"{f} exists (make install?): `make uninstall` first", pytrace=False)
    for name, pidfile in (("nginx", NGINX_PID), ("apache2", APACHE_PID)):
        if System.pid(pidfile):
            pytest.fail(f"the system's {name} is running ({pidfile}); the test starts its "
                        f"own from the stock configuration", pytrace=False)
    if supervisors(PROGRAM):
        pytest.fail(f"an rwsgi supervisor of {PROGRAM} runs: {supervisors(PROGRAM)}",
                    pytrace=False)
    s = System()
    try:
        yield s
    finally:
        s.restore()


APP = '''\
import os, pwd

def application(environ, start_response):
    body = "%s|%s|%s|%d\\n" % (environ["SERVER_SOFTWARE"], pwd.getpwuid(os.geteuid()).pw_name,
                              environ["PATH_INFO"], os.getpid())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
'''


def answers(port: int, server: str, error_log: str, prefix: str = "/pkg") -> list[str]:
    """The app's answer at PREFIX/check: [SERVER_SOFTWARE, user, PATH_INFO, pid]."""
    assert wait_port(port), f"{server} does not listen on {port}:\n{System.log(error_log)}"
    r = get(port, f"{prefix}/check")
    assert r.status == 200, f"{server}: {r}\n{System.log(error_log)}"
    return r.body.decode().strip().split("|")


def served_by_group(system: System, server: str, error_log: str, port: int):
    """/pkgd is in a daemon group run by the supervisor `server` started from the
    installed program: the app answers as the group's user, from the group's process."""
    software, user, path, pid = answers(port, server, error_log, "/pkgd")
    assert path == "/check" and user == TENANT, (software, user, path)
    sup = system.supervisor(server)
    assert int(pid) in children_of(sup), f"{server}: {pid} is not an app process of {sup}"


def stock_ports_free():
    """The stock configurations also listen on port 80 (nginx's default site, Apache's
    ports.conf)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", 80))
        except OSError as e:
            pytest.fail(f"port 80 is taken ({e}): the stock nginx and Apache configurations "
                        f"listen there", pytrace=False)


def test_packages_install_enable_serve_purge(debs, system, tenant):
    stock_ports_free()
    # mod_wsgi enabled, as Debian's libapache2-mod-wsgi-py3 leaves it
    if run(["a2query", "-m", "wsgi"], check=False).returncode != 0:
        run(["a2enmod", "-q", "wsgi"])
    # what of the packages' paths exists already (directories shared with other packages)
    before = {path: os.path.lexists(path) for deb in debs.values() for path in deb_entries(deb)}
    assert not [p for deb in debs.values() for p in deb_files(deb) if before[p]]

    p = run(["apt-get", "install", "-y", "--no-install-recommends", *APT_LOCK,
             *[str(d) for d in debs.values()]], env=APT_ENV)
    out = p.stdout + p.stderr
    for pkg in PACKAGES:
        assert installed(pkg), f"{pkg} not installed:\n{out}"

    # daemon mode: the one program, root's, linked beside each module; its unit names it
    st = PROGRAM.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    for moddir in ("/usr/lib/nginx/modules", "/usr/lib/apache2/modules"):
        assert Path(moddir, "rwsgi-daemon").resolve() == PROGRAM
    assert unit_exec_start(UNIT.read_text()).split()[0] == str(PROGRAM)
    # systemd checks the unit, and that its ExecStart program exists (a system without
    # systemd, such as the matrix's Debian 13 chroot, has no systemd-analyze: the lines
    # above then are the check)
    if shutil.which("systemd-analyze"):
        run(["systemd-analyze", "verify", "--man=no", "rwsgi-daemon@pkgtest.service"])

    # nginx: enabled by the package's link
    assert NGX_LINK.is_symlink() and \
        os.readlink(NGX_LINK) == "/usr/share/nginx/modules-available/mod-http-rwsgi.conf"
    # Apache: not enabled beside mod_wsgi; postinst says how to switch
    assert "module rwsgi not enabled: module wsgi (mod_wsgi) is enabled" in out, out
    assert "a2dismod wsgi && a2enmod rwsgi" in out, out
    assert not any(l.exists() for l in APACHE_LINKS)

    # make install does not overwrite files that a package owns
    p = make("install", check=False)
    assert p.returncode != 0 and f"belongs to the package {DAEMON_PKG}" in p.stderr, \
        p.stdout + p.stderr
    p = make("install-nginx-files", check=False)
    assert p.returncode != 0 and f"belongs to the package {NGX_PKG}" in p.stderr, \
        p.stdout + p.stderr

    # a2enmod rwsgi while mod_wsgi is enabled: refused, saying what to do
    p = run(["a2enmod", "rwsgi"], check=False)
    assert p.returncode != 0
    assert CONFLICT in p.stdout + p.stderr, p.stdout + p.stderr
    assert not any(l.exists() for l in APACHE_LINKS)
    # the Debian way: disable mod_wsgi, enable mod_rwsgi
    run(["a2dismod", "-q", "wsgi"])
    run(["a2enmod", "-q", "rwsgi"])
    assert all(l.is_symlink() and l.exists() for l in APACHE_LINKS)

    app = system.run / "app.py"
    app.write_text(APP)
    app.chmod(0o644)

    # nginx from /etc/nginx, the app in a conf.d server block (included in http{}),
    # embedded at /pkg and in a daemon group at /pkgd
    port = free_port()
    conf = Path("/etc/nginx/conf.d/rwsgi-pkgtest.conf")
    conf.write_text(f"wsgi_daemon pkgtest user={TENANT};\n"
                    f"server {{\n    listen 127.0.0.1:{port};\n"
                    f"    location /pkg {{ wsgi_app {app}; }}\n"
                    f"    location /pkgd {{ wsgi_process_group pkgtest; wsgi_app {app}; }}\n}}\n")
    system.start_nginx()
    try:
        body = answers(port, "nginx", "/var/log/nginx/error.log")
        served_by_group(system, "nginx", "/var/log/nginx/error.log", port)
    finally:
        system.stop("nginx")
    assert system.stop_supervisors() and not supervisors(PROGRAM)
    software, user, path, _ = body
    assert "nginx" in software and path == "/check", body
    assert user == "www-data", body  # the `user` of the stock nginx.conf

    # Apache from /etc/apache2, the app in a site
    port = free_port()
    Path("/etc/apache2/sites-available/rwsgi-pkgtest.conf").write_text(
        f"Listen 127.0.0.1:{port}\n"
        f"<VirtualHost 127.0.0.1:{port}>\n"
        f"    WSGIDaemonProcess pkgtest user={TENANT}\n"
        f"    WSGIScriptAlias /pkgd {app} process-group=pkgtest\n"
        f"    WSGIScriptAlias /pkg {app}\n"
        f"    <Directory {system.run}>\n        Require all granted\n    </Directory>\n"
        f"</VirtualHost>\n")
    run(["a2ensite", "-q", "rwsgi-pkgtest"])
    system.start_apache()
    try:
        body = answers(port, "apache2", "/var/log/apache2/error.log")
        served_by_group(system, "apache2", "/var/log/apache2/error.log", port)
    finally:
        system.stop("apache2")
    assert system.stop_supervisors() and not supervisors(PROGRAM)
    software, user, path, _ = body
    assert software.startswith("Apache/2.4") and path == "/check", body
    assert user == "www-data", body  # APACHE_RUN_USER of the stock envvars

    # purge: nothing of the packages is left, nor the enable links. Purging rwsgi-daemon
    # alone takes the module packages, which depend on it, with it.
    listed = [os.path.normpath(f) for f in run(["dpkg", "-L", *PACKAGES]).stdout.split()]
    for f in ("/usr/lib/nginx/modules/ngx_http_rwsgi_module.so",
              "/etc/apache2/mods-available/rwsgi.load", str(PROGRAM), str(UNIT),
              "/usr/lib/nginx/modules/rwsgi-daemon", "/usr/lib/apache2/modules/rwsgi-daemon"):
        assert f in listed, f
    p = run(["apt-get", "purge", "-y", *APT_LOCK, DAEMON_PKG], env=APT_ENV)
    for pkg in PACKAGES:
        assert not installed(pkg), f"{pkg} still installed:\n{p.stdout}{p.stderr}"
    # only the directories that were there before stay (/usr/lib/apache2/modules, /lib, ...)
    left = sorted(f for f in set(listed) if os.path.lexists(f)
                  and not (os.path.isdir(f) and before.get(f)))
    assert left == [], f"left after purge: {left}"
    assert not PROGRAM.parent.exists()
    links = [NGX_LINK, Path(f"{NGX_LINK}.removed"), *APACHE_LINKS]
    assert not [l for l in links if os.path.lexists(l)]
    # a2enmod's record of the module is purged too
    assert not list(Path("/var/lib/apache2/module").glob("*/rwsgi"))
