"""Real framework projects (examples/django_site, flask_site, pyramid_site) served through
both modules from a virtualenv given as wsgi_python_home / WSGIPythonHome.

The venv is made from /usr/bin/python3 (the Python the modules link) with the pinned
examples/requirements-frameworks.txt, and kept under target/framework-venvs/<key>, the key
being a hash of that file and the Python version: a warm run reuses it. Each project is
copied into the server's run dir and mounted twice, at `/app` (SCRIPT_NAME /app) and at
`/`, with its writable state (Django's SQLite file and media, Flask's uploads) owned by
the worker user (nginx: nobody, as the harness's `user nobody nogroup`; Apache:
www-data). Django's static files are served by the server (`location /static/` /
`Alias /static/`), not by Django.

Checked: pages render with URLs built for the mount (reverse, url_for, route_url); the
Django admin login (csrftoken cookie + csrfmiddlewaretoken, credentials, the admin index)
and an add-user form POST that writes the SQLite file; uploads and FileResponse /
send_file downloads round-trip byte for byte; streamed responses arrive chunk by chunk;
no traceback in the server's error log.

Left out of the validated pass (RWSGI_VALIDATE=1): the projects are mounted by absolute
path, which the validator wrapper never wraps, so a second pass would repeat this one.
"""
from __future__ import annotations

import fcntl
import grp
import hashlib
import html
import json
import os
import pwd
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from harness.apache import MODDIR
from harness.common import HOST, REPO, Mount
from harness.http import request, timed_stream

pytestmark = pytest.mark.frameworks

EXAMPLES = REPO / "examples"
REQUIREMENTS = EXAMPLES / "requirements-frameworks.txt"
VENVS = REPO / "target" / "framework-venvs"
SYSTEM_PYTHON = "/usr/bin/python3"

# The harness runs nginx workers as `user nobody nogroup` and Apache's as www-data.
WORKER = {"nginx": ("nobody", "nogroup"), "apache": ("www-data", "www-data")}

ADMIN_USER, ADMIN_PASSWORD = "admin", "rwsgi-Admin-pw-7k2"
CRASH = re.compile(r"exited on signal|exit signal|Segmentation fault|panicked|core dumped", re.I)


# ------------------------------------------------------------------ the virtualenv

def _readable_by_all(root: Path):
    """Directories 0755, files o+r (executables keep their x bits): workers run as an
    unprivileged user."""
    root.chmod(0o755)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = Path(dirpath, d)
            if not p.is_symlink():
                p.chmod(0o755)
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & 0o777 | 0o444)


def _python_version() -> str:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _build_venv(venv: Path):
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300,
                   capture_output=True)
    # Wheels only: nothing is built, so no setuptools is needed (Python 3.12+ venvs have none).
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "--no-input", "--only-binary=:all:",
                        "-r", str(REQUIREMENTS)],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        pytest.fail(f"pip could not install {REQUIREMENTS.name} into {venv}:\n{p.stdout}{p.stderr}",
                    pytrace=False)
    _readable_by_all(venv)


@pytest.fixture(scope="session")
def framework_venv() -> Path:
    """The cached venv with the pinned frameworks (built on first use, under a lock)."""
    version = _python_version()
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + f"python{version}".encode()).hexdigest()[:16]
    VENVS.mkdir(parents=True, exist_ok=True)
    for d in (REPO / "target", VENVS):
        d.chmod(d.stat().st_mode | 0o055)
    for parent in VENVS.parents:
        if not parent.stat().st_mode & 0o001:
            pytest.fail(f"{parent} is not searchable by other users: the server's workers "
                        f"could not reach the venv under {VENVS}", pytrace=False)
    venv = VENVS / key
    done = venv / ".complete"
    with open(VENVS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            t0 = time.monotonic()
            _build_venv(venv)
            done.write_text(f"python {version}, built in {time.monotonic() - t0:.1f}s\n")
            for old in VENVS.iterdir():  # venvs of older requirements
                if old.is_dir() and old != venv:
                    shutil.rmtree(old, ignore_errors=True)
    return venv


# ------------------------------------------------------------------ project set-up

def _own(path: Path, kind: str):
    """Gives `path` and everything under it to the worker user of `kind`."""
    user, group = WORKER[kind]
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    os.chown(path, uid, gid)
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(Path(dirpath, name), uid, gid)


def _manage(venv: Path, site: Path, *args: str, env: dict | None = None):
    p = subprocess.run([str(venv / "bin" / "python"), "manage.py", *args], cwd=site,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})})
    assert p.returncode == 0, f"manage.py {' '.join(args)} failed:\n{p.stdout}{p.stderr}"


@pytest.fixture(scope="session")
def django_built(framework_venv):
    """examples/django_site with its SQLite DB migrated, a superuser, and collectstatic
    run: copied into each server's run dir."""
    tmp = Path(tempfile.mkdtemp(prefix="rwsgi-django-"))
    site = tmp / "django_site"
    shutil.copytree(EXAMPLES / "django_site", site,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "var", "static_root"))
    (site / "var").mkdir()
    _manage(framework_venv, site, "migrate", "--noinput")
    _manage(framework_venv, site, "createsuperuser", "--noinput", "--username", ADMIN_USER,
            "--email", "admin@example.com", env={"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD})
    _manage(framework_venv, site, "collectstatic", "--noinput")
    yield site
    shutil.rmtree(tmp, ignore_errors=True)


def _serve(kind, venv, project: Path, script: str, callable_=None, http_extra=(),
           server_extra=(), params=None, apache_extra=()):
    """A server of `kind` with `project` copied into its run dir (var/ owned by the
    worker user) and mounted at /app and /."""
    from conftest import SERVERS
    s = SERVERS[kind]()
    try:
        site = s.run / project.name
        shutil.copytree(project, site, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (site / "var").mkdir(exist_ok=True)
        _readable_by_all(site)
        _own(site / "var", kind)
        mounts = [Mount(prefix, str(site / script), callable=callable_, python_path=[str(site)],
                        params=dict(params or {}) if kind == "nginx" else {})
                  for prefix in ("/app", "/")]
        fill = {"site": str(site)}
        opts = {"python_home": str(venv), "workers": 1, "threads": 8}
        if kind == "nginx":
            opts["http_extra"] = list(http_extra)
            opts["server_extra"] = [x.format(**fill) for x in server_extra]
        else:
            opts["extra"] = [x.format(**fill) for x in apache_extra]
        s.start(mounts, **opts)
        s.site = site
        yield s
    finally:
        s.stop()
        s.cleanup()


@pytest.fixture(scope="module")
def django_server(kind, framework_venv, django_built):
    """Static files served by the server; the README's recipe for a TLS-terminating proxy
    in front (X-Forwarded-Proto: https sets HTTPS, so wsgi.url_scheme is https)."""
    yield from _serve(
        kind, framework_venv, django_built, "mysite/wsgi.py",
        http_extra=["map $http_x_forwarded_proto $forwarded_https { default off; https on; }"],
        params={"HTTPS": "$forwarded_https"},
        server_extra=["location /static/ {{ alias {site}/static_root/; }}"],
        apache_extra=[f"LoadModule alias_module {MODDIR}/mod_alias.so",
                      "Alias /static/ {site}/static_root/",
                      f"LoadModule setenvif_module {MODDIR}/mod_setenvif.so",
                      "SetEnvIf X-Forwarded-Proto https HTTPS=1"])


@pytest.fixture(scope="module")
def flask_server(kind, framework_venv):
    yield from _serve(kind, framework_venv, EXAMPLES / "flask_site", "app.py", callable_="app")


@pytest.fixture(scope="module")
def pyramid_server(kind, framework_venv):
    yield from _serve(kind, framework_venv, EXAMPLES / "pyramid_site", "app.py")


@pytest.fixture(autouse=True)
def _clean_error_log(request):
    """Fails a test during which a worker crashed or Python logged a traceback."""
    servers = [request.getfixturevalue(n) for n in ("django_server", "flask_server", "pyramid_server")
               if n in request.fixturenames]
    marks = [s.log_mark()[0] for s in servers]
    yield
    for s, mark in zip(servers, marks):
        text = s.error_log(mark)
        bad = [l for l in text.splitlines() if CRASH.search(l) or "Traceback" in l]
        if bad:
            pytest.fail(f"{s.kind} error log during the test:\n{text[-4000:]}", pytrace=False)


# ------------------------------------------------------------------ a small browser

class Client:
    """Requests with a cookie jar, an Origin header on POSTs (as browsers send, and
    Django's CSRF check compares with the request's scheme and host) and redirects."""

    def __init__(self, s, proxy_https: bool = False):
        self.s = s
        self.cookies: dict[str, str] = {}
        # As a TLS-terminating proxy in front would say (see django_server's config).
        self.headers = {"X-Forwarded-Proto": "https"} if proxy_https else {}
        self.origin = f"{'https' if proxy_https else 'http'}://{HOST}:{s.port}"

    def send(self, method, path, body=None, headers=None):
        hs = {**self.headers, **(headers or {})}
        if self.cookies:
            hs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST":
            hs.setdefault("Origin", self.origin)
        r = request(self.s.port, method, path, body=body, headers=hs)
        for value in r.header_all("set-cookie"):
            name, _, rest = value.partition("=")
            val = rest.split(";", 1)[0]
            if "max-age=0" in value.lower() or not val:
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = val
        assert r.status < 500, f"{method} {path}: {r}\n{self.s.log_tail()}"
        return r

    def get(self, path, status=200):
        r = self.send("GET", path)
        assert r.status == status, f"GET {path}: {r}\n{self.s.log_tail()}"
        return r

    def post_form(self, path, fields: dict):
        return self.send("POST", path, urlencode(fields).encode(),
                         {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path, fields: dict, files: dict):
        body, ctype = multipart(fields, files)
        return self.send("POST", path, body, {"Content-Type": ctype})

    def follow(self, r, status=200):
        """The redirect target of `r`, fetched; Location must stay on this server."""
        assert r.status in (301, 302, 303), r
        loc = urlsplit(r.header("location"))
        assert loc.netloc in ("", f"{HOST}:{self.s.port}"), r
        return self.get(loc.path + (f"?{loc.query}" if loc.query else ""), status)


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "rwsgi" + uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        out += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode(),
                str(value).encode(), b"\r\n"]
    for name, (filename, data) in files.items():
        out += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def form_token(page: bytes) -> str:
    m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert m, page[:2000]
    return m.group(1).decode()


def payload(size: int) -> bytes:
    """Non-repeating binary data with every byte value, CR/LF pairs and a fake multipart
    boundary inside."""
    head = bytes(range(256)) + b"\r\n--rwsgi\r\n\r\n"
    return (head + hashlib.shake_256(str(size).encode()).digest(size))[:size]


def owner(path: Path) -> str:
    return pwd.getpwuid(path.stat().st_uid).pw_name


def assert_streams(s, path: str, lines: int, delay: float):
    """The response's first line arrives long before its last: nothing buffered it."""
    get_warm = request(s.port, "GET", path.split("?")[0] + "?n=1&delay=0")
    assert get_warm.status == 200, (get_warm, s.log_tail())
    t0, arrivals = timed_stream(s.port, path)
    data = b"".join(d for _, d in arrivals)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert b"line 0" in data and f"line {lines - 1}".encode() in data, data[-300:]
    acc, first_at = b"", None
    for t, d in arrivals:
        acc += d
        if first_at is None and b"line 0" in acc:
            first_at = t - t0
    last_at = arrivals[-1][0] - t0
    app_time = (lines - 1) * delay
    assert last_at >= app_time * 0.9, f"done after {last_at:.2f}s, the app sleeps {app_time:.1f}s"
    assert first_at < min(0.6, app_time / 2), \
        f"first line after {first_at:.2f}s of {last_at:.2f}s: the response was buffered"


# ------------------------------------------------------------------ Django

def test_django_pages_render(django_server):
    s = django_server
    for prefix in ("/app", ""):
        page = Client(s).get(f"{prefix}/").body.decode()
        assert "<h1>Django on rwsgi</h1>" in page
        assert f'href="{prefix}/upload/"' in page and f'href="{prefix}/admin/"' in page
        assert 'href="/static/admin/css/base.css"' in page
        assert f"Served at http://{HOST}:{s.port}{prefix}/" in page


def test_django_static_files_served_by_the_server(django_server):
    """STATIC_ROOT is served by the server itself (DEBUG is off: Django serves no static
    files), also next to the app mounted at `/`."""
    s = django_server
    for rel in ("admin/css/base.css", "admin/img/icon-yes.svg", "admin/js/core.js"):
        r = request(s.port, "GET", f"/static/{rel}")
        assert r.status == 200, (r, s.log_tail())
        assert r.body == (s.site / "static_root" / rel).read_bytes()
    assert request(s.port, "GET", "/static/admin/nope.css").status == 404


def test_django_admin_login_and_add_user(django_server):
    s = django_server
    c = Client(s)
    r = c.get("/app/admin/", status=302)
    assert r.header("location") == "/app/admin/login/?next=/app/admin/"
    login = c.follow(r)
    assert "csrftoken" in c.cookies, login
    r = c.post_form("/app/admin/login/?next=/app/admin/", {
        "csrfmiddlewaretoken": form_token(login.body), "username": ADMIN_USER,
        "password": ADMIN_PASSWORD, "next": "/app/admin/"})
    assert r.status == 302, f"login refused: {r}"
    assert r.header("location") == "/app/admin/"
    assert "sessionid" in c.cookies
    index = c.follow(r).body.decode()
    assert "Site administration" in index
    assert 'href="/app/admin/auth/user/"' in index

    username = f"ada-{s.kind}-{uuid.uuid4().hex[:6]}"
    add = c.get("/app/admin/auth/user/add/")
    r = c.post_form("/app/admin/auth/user/add/", {
        "csrfmiddlewaretoken": form_token(add.body), "username": username,
        "usable_password": "true", "password1": "Lovelace-1815-engine",
        "password2": "Lovelace-1815-engine", "_save": "Save"})
    assert r.status == 302, f"add-user form refused: {r.body[:3000]!r}"
    assert re.fullmatch(r"/app/admin/auth/user/\d+/change/", r.header("location")), r
    change = c.follow(r).body.decode()
    assert html.escape(username) in change

    # The worker wrote the row into the SQLite file it owns.
    db = s.site / "var" / "db.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT is_staff, password FROM auth_user WHERE username = ?",
                            (username,)).fetchall()
    assert len(rows) == 1 and rows[0][1].startswith("pbkdf2_sha256$"), rows
    assert owner(db) == WORKER[s.kind][0]
    listing = c.get(f"/app/admin/auth/user/?q={username}").body.decode()
    assert html.escape(username) in listing


def test_django_upload_and_file_response_round_trip(django_server):
    s = django_server
    c = Client(s)
    form = c.get("/app/upload/")
    data = payload(3 * 1024 * 1024 + 17)  # above FILE_UPLOAD_MAX_MEMORY_SIZE: a temp file
    name = f"blob-{s.kind}.bin"
    r = c.post_multipart("/app/upload/", {"csrfmiddlewaretoken": form_token(form.body)},
                         {"file": (name, data)})
    assert r.status == 200, r
    info = json.loads(r.body)
    assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["download"] == f"/app/files/{info['name']}"
    stored = s.site / "var" / "media" / info["name"]
    assert stored.read_bytes() == data
    assert owner(stored) == WORKER[s.kind][0]

    r = c.get(info["download"])
    assert r.body == data, f"download differs: {len(r.body)} bytes, expected {len(data)}"
    assert r.content_length == len(data)
    assert r.header("content-disposition") == f'attachment; filename="{info["name"]}"'
    c.get("/app/files/missing.bin", status=404)


def test_django_streaming_response_streams(django_server):
    assert_streams(django_server, "/app/stream/?n=5&delay=0.3", 5, 0.3)


@pytest.mark.parametrize("prefix", ["/app", ""])
def test_django_reverse_under_the_mount(django_server, prefix):
    s = django_server
    got = json.loads(Client(s).get(f"{prefix}/urls/").body)
    assert got == {
        "home": f"{prefix}/", "upload": f"{prefix}/upload/", "admin": f"{prefix}/admin/",
        "absolute": f"http://{HOST}:{s.port}{prefix}/",
        "static": "/static/admin/css/base.css",
        "script_name": prefix, "path": f"{prefix}/urls/", "path_info": "/urls/",
        "scheme": "http",
    }


def test_django_behind_a_tls_proxy(django_server):
    """The README's HTTPS recipe: with X-Forwarded-Proto: https the app sees https, builds
    https URLs and accepts a login whose Origin is https (and refuses an http one)."""
    s = django_server
    c = Client(s, proxy_https=True)
    got = json.loads(c.get("/app/urls/").body)
    assert got["scheme"] == "https" and got["absolute"] == f"https://{HOST}:{s.port}/app/"
    login = c.get("/app/admin/login/")
    fields = {"csrfmiddlewaretoken": form_token(login.body), "username": ADMIN_USER,
              "password": ADMIN_PASSWORD, "next": "/app/admin/"}
    r = c.send("POST", "/app/admin/login/", urlencode(fields).encode(),
               {"Content-Type": "application/x-www-form-urlencoded",
                "Origin": f"http://{HOST}:{s.port}"})
    assert r.status == 403, f"an http Origin passed Django's CSRF check on https: {r}"
    r = c.post_form("/app/admin/login/", fields)
    assert r.status == 302 and r.header("location") == "/app/admin/", r
    assert "Site administration" in c.follow(r).body.decode()
    # a client's own HTTPS header changes nothing
    plain = json.loads(Client(s).send("GET", "/app/urls/", headers={"HTTPS": "on"}).body)
    assert plain["scheme"] == "http"


# ------------------------------------------------------------------ Flask

def test_flask_page_renders(flask_server):
    s = flask_server
    page = Client(s).get("/app/").body.decode()
    assert "<h1>Flask on rwsgi</h1>" in page
    assert 'href="/app/form"' in page and 'action="/app/upload"' in page
    assert 'href="/app/static/style.css"' in page
    css = Client(s).get("/app/static/style.css").body
    assert css == (s.site / "static" / "style.css").read_bytes()


def test_flask_form_post_redirects_with_url_for(flask_server):
    s = flask_server
    c = Client(s)
    assert b'action="/app/form"' in c.get("/app/form").body
    r = c.post_form("/app/form", {"name": "Ada Lovelace"})
    assert r.status == 303, r
    assert r.header("location") == "/app/greet/Ada%20Lovelace"
    assert "<h1>Hello, Ada Lovelace!</h1>" in c.follow(r).body.decode()
    assert c.post_form("/app/form", {"name": ""}).status == 400


def test_flask_upload_and_send_file_round_trip(flask_server):
    s = flask_server
    c = Client(s)
    data = payload(2 * 1024 * 1024 + 5)
    r = c.post_multipart("/app/upload", {"note": "x"}, {"file": (f"data {s.kind}.bin", data)})
    assert r.status == 200, r
    info = json.loads(r.body)
    assert info == {"name": f"data_{s.kind}.bin", "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "download": f"/app/files/data_{s.kind}.bin"}
    stored = s.site / "var" / "uploads" / info["name"]
    assert owner(stored) == WORKER[s.kind][0]
    r = c.get(info["download"])
    assert r.body == data, f"download differs: {len(r.body)} bytes, expected {len(data)}"
    assert r.content_length == len(data)
    assert r.header("content-disposition").startswith("attachment; filename=")
    c.get("/app/files/..%2Fapp.py", status=404)


def test_flask_streamed_response_streams(flask_server):
    assert_streams(flask_server, "/app/stream?n=5&delay=0.3", 5, 0.3)


@pytest.mark.parametrize("prefix", ["/app", ""])
def test_flask_url_for_under_the_mount(flask_server, prefix):
    s = flask_server
    got = json.loads(Client(s).get(f"{prefix}/urls?q=1").body)
    base = f"http://{HOST}:{s.port}{prefix}"
    assert got == {
        "index": f"{prefix}/", "greet": f"{prefix}/greet/ada", "external": f"{base}/greet/ada",
        "static": f"{prefix}/static/style.css", "script_root": prefix, "path": "/urls",
        "url": f"{base}/urls?q=1",
    }


# ------------------------------------------------------------------ Pyramid

def test_pyramid_views_render(pyramid_server):
    s = pyramid_server
    c = Client(s)
    page = c.get("/app/").body.decode()
    assert "<h1>Pyramid on rwsgi</h1>" in page
    assert f'href="http://{HOST}:{s.port}/app/hello/world"' in page
    assert 'href="/app/urls"' in page
    r = c.get("/app/hello/Grace")
    assert r.header("content-type").startswith("application/json")
    assert json.loads(r.body) == {"greeting": "Hello, Grace!", "self": "/app/hello/Grace",
                                  "home": f"http://{HOST}:{s.port}/app/"}
    c.get("/app/nowhere", status=404)


@pytest.mark.parametrize("prefix", ["/app", ""])
def test_pyramid_route_url_under_the_mount(pyramid_server, prefix):
    s = pyramid_server
    got = json.loads(Client(s).get(f"{prefix}/urls").body)
    base = f"http://{HOST}:{s.port}{prefix}"
    assert got == {
        "home": f"{base}/", "hello": f"{base}/hello/ada?x=1", "hello_path": f"{prefix}/hello/ada",
        "application_url": base, "script_name": prefix, "path_info": "/urls",
    }


def test_flask_send_file_ranges_and_revalidation(flask_server):
    """send_file's Range (206, Werkzeug reading the server's file_wrapper partially) and
    ETag revalidation (304 without a body) come through both servers intact."""
    s = flask_server
    c = Client(s)
    data = payload(300_000)
    info = json.loads(c.post_multipart("/app/upload", {}, {"file": ("ranges.bin", data)}).body)
    full = c.get(info["download"])
    assert full.body == data
    for spec, want in (("bytes=1000-1999", data[1000:2000]), ("bytes=-10", data[-10:]),
                       ("bytes=299990-", data[299990:])):
        r = c.send("GET", info["download"], headers={"Range": spec})
        assert r.status == 206, r
        assert r.body == want and r.content_length == len(want), (spec, r)
    etag = full.header("etag")
    assert etag
    r = c.send("GET", info["download"], headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b"", r
