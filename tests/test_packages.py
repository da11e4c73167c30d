"""`make install` and the Debian packages (`make deb`), checked on the real system.

These cases run once per pytest run, not once per server kind (they use no `kind`
fixture), and are marked `packages` (select or leave them out with -m) and `server_side`
(left out of the validated pass).

- `make install DESTDIR=...` lays out exactly the files of Debian's module packages, and
  `make uninstall` takes them away again.
- The .debs built by `make deb` (from target/modules, into a temp dir) declare what
  Debian's own module packages declare.
- The whole life of the packages on this machine: `apt-get install` both .debs, the nginx
  module enabled by the package's link, `a2enmod rwsgi` refused while mod_wsgi is enabled
  (with a2enmod's conflict message), enabled once `a2dismod wsgi` ran, a small app served
  through the stock /etc/nginx (a conf.d server block) and /etc/apache2 (a site), each on a
  free 127.0.0.1 port, as the workers' user; then purge, after which no file of the
  packages and no enable link is left. /etc/nginx, /etc/apache2 and a2enmod's state in
  /var/lib/apache2 are backed up first and restored exactly afterwards.
"""
from __future__ import annotations

import hashlib
import os
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

from harness.common import REPO, free_port, pid_alive, wait_port, wait_until
from harness.http import get

pytestmark = [pytest.mark.packages, pytest.mark.server_side]

MODULES = REPO / "target" / "modules"
NGX_PKG = "libnginx-mod-http-rwsgi"
APACHE_PKG = "libapache2-mod-rwsgi"
PACKAGES = (NGX_PKG, APACHE_PKG)
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
    for so in ("ngx_http_rwsgi_module.so", "mod_rwsgi.so"):
        if not (MODULES / so).is_file():
            pytest.fail(f"{MODULES / so} is missing: run `make build`", pytrace=False)


def python_minor() -> int:
    """The python3 the modules are built against (the Makefile's PYO3_PYTHON)."""
    out = run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info.minor)"]).stdout
    return int(out)


def installed(pkg: str) -> bool:
    p = run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], check=False)
    return p.returncode == 0 and p.stdout.strip() not in ("", "not-installed")


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
            f"{p}/share/nginx/modules-available/mod-http-rwsgi.conf": "f 0644",
            "etc/nginx/modules-enabled/50-mod-http-rwsgi.conf":
                f"l -> {prefix}/share/nginx/modules-available/mod-http-rwsgi.conf",
            f"{p}/lib/apache2/modules/mod_rwsgi.so": "f 0644",
            "etc/apache2/mods-available/rwsgi.load": "f 0644",
            "etc/apache2/mods-available/rwsgi.conf": "f 0644",
        }
        for so, sub in (("ngx_http_rwsgi_module.so", "nginx"), ("mod_rwsgi.so", "apache2")):
            assert (dest / p / "lib" / sub / "modules" / so).read_bytes() == \
                (MODULES / so).read_bytes()
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
                assert os.access(Path(ctl, script), os.X_OK), f"{pkg}: no {script}"
            conffiles = Path(ctl, "conffiles")
            conffiles = conffiles.read_text().split() if conffiles.exists() else []
            md5 = Path(ctl, "md5sums").read_text()
            assert sorted(md5.split()[1::2]) == sorted(p.lstrip("/") for p in deb_files(deb))
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
    # The enable link is made by postinst, never shipped (so an admin's removal sticks).
    assert deb_files(debs[NGX_PKG]) == {
        "/usr/lib/nginx/modules/ngx_http_rwsgi_module.so": "-",
        "/usr/share/nginx/modules-available/mod-http-rwsgi.conf": "-",
        f"/usr/share/doc/{NGX_PKG}/copyright": "-",
    }
    assert deb_files(debs[APACHE_PKG]) == {
        "/usr/lib/apache2/modules/mod_rwsgi.so": "-",
        "/etc/apache2/mods-available/rwsgi.load": "-",
        "/etc/apache2/mods-available/rwsgi.conf": "-",
        f"/usr/share/doc/{APACHE_PKG}/copyright": "-",
    }


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
              "/usr/lib/apache2/modules/mod_rwsgi.so"):
        if os.path.exists(f):
            pytest.fail(f"{f} exists (make install?): `make uninstall` first", pytrace=False)
    for name, pidfile in (("nginx", NGINX_PID), ("apache2", APACHE_PID)):
        if System.pid(pidfile):
            pytest.fail(f"the system's {name} is running ({pidfile}); the test starts its "
                        f"own from the stock configuration", pytrace=False)
    s = System()
    try:
        yield s
    finally:
        s.restore()


APP = '''\
import os, pwd

def application(environ, start_response):
    body = "%s|%s|%s\\n" % (environ["SERVER_SOFTWARE"], pwd.getpwuid(os.geteuid()).pw_name,
                           environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
'''


def answers(port: int, server: str, error_log: str) -> str:
    assert wait_port(port), f"{server} does not listen on {port}:\n{System.log(error_log)}"
    r = get(port, "/pkg/check")
    assert r.status == 200, f"{server}: {r}\n{System.log(error_log)}"
    return r.body.decode()


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


def test_packages_install_enable_serve_purge(debs, system):
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

    # nginx: enabled by the package's link
    assert NGX_LINK.is_symlink() and \
        os.readlink(NGX_LINK) == "/usr/share/nginx/modules-available/mod-http-rwsgi.conf"
    # Apache: not enabled beside mod_wsgi; postinst says how to switch
    assert "module rwsgi not enabled: module wsgi (mod_wsgi) is enabled" in out, out
    assert "a2dismod wsgi && a2enmod rwsgi" in out, out
    assert not any(l.exists() for l in APACHE_LINKS)

    # make install does not overwrite files that a package owns
    p = make("install", check=False)
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

    # nginx from /etc/nginx, the app in a conf.d server block
    port = free_port()
    conf = Path("/etc/nginx/conf.d/rwsgi-pkgtest.conf")
    conf.write_text(f"server {{\n    listen 127.0.0.1:{port};\n"
                    f"    location /pkg {{ wsgi_app {app}; }}\n}}\n")
    system.start_nginx()
    try:
        body = answers(port, "nginx", "/var/log/nginx/error.log")
    finally:
        system.stop("nginx")
    software, user, path = body.strip().split("|")
    assert "nginx" in software and path == "/check", body
    assert user == "www-data", body  # the `user` of the stock nginx.conf

    # Apache from /etc/apache2, the app in a site
    port = free_port()
    Path("/etc/apache2/sites-available/rwsgi-pkgtest.conf").write_text(
        f"Listen 127.0.0.1:{port}\n"
        f"<VirtualHost 127.0.0.1:{port}>\n"
        f"    WSGIScriptAlias /pkg {app}\n"
        f"    <Directory {system.run}>\n        Require all granted\n    </Directory>\n"
        f"</VirtualHost>\n")
    run(["a2ensite", "-q", "rwsgi-pkgtest"])
    system.start_apache()
    try:
        body = answers(port, "apache2", "/var/log/apache2/error.log")
    finally:
        system.stop("apache2")
    software, user, path = body.strip().split("|")
    assert software.startswith("Apache/2.4") and path == "/check", body
    assert user == "www-data", body  # APACHE_RUN_USER of the stock envvars

    # purge: nothing of the packages is left, nor the enable links
    listed = [os.path.normpath(f) for f in run(["dpkg", "-L", *PACKAGES]).stdout.split()]
    assert "/usr/lib/nginx/modules/ngx_http_rwsgi_module.so" in listed
    assert "/etc/apache2/mods-available/rwsgi.load" in listed
    p = run(["apt-get", "purge", "-y", *APT_LOCK, *PACKAGES], env=APT_ENV)
    for pkg in PACKAGES:
        assert not installed(pkg), f"{pkg} still installed:\n{p.stdout}{p.stderr}"
    # only the directories that were there before stay (/usr/lib/apache2/modules, ...)
    left = sorted(f for f in set(listed) if os.path.lexists(f)
                  and not (os.path.isdir(f) and not os.path.islink(f) and before.get(f)))
    assert left == [], f"left after purge: {left}"
    links = [NGX_LINK, Path(f"{NGX_LINK}.removed"), *APACHE_LINKS]
    assert not [l for l in links if os.path.lexists(l)]
    # a2enmod's record of the module is purged too
    assert not list(Path("/var/lib/apache2/module").glob("*/rwsgi"))
