"""The Python environment: a virtualenv as python home (wsgi_python_home /
WSGIPythonHome) whose own package the app imports; sys.path additions; script reloading
(mod_wsgi's WSGIScriptReloading, on by default)."""
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.common import Mount, wait_until
from harness.http import get


@pytest.fixture(scope="session")
def venv():
    root = Path(tempfile.mkdtemp(prefix="rwsgi-venv-", dir="/tmp"))
    root.chmod(0o755)
    env = root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    site = next(env.glob("lib/python3*/site-packages"))
    pkg = site / "rwsgi_venv_only_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('MESSAGE = "from the venv"\n')
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            Path(dirpath, d).chmod(0o755)
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.chmod(0o644 if not os.access(p, os.X_OK) else 0o755)
    yield env
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_python_home_venv(make_server, venv):
    s = make_server([Mount("/venv", "venv_app.py"), Mount("/hello", "hello.py")],
                    python_home=str(venv))
    r = get(s.port, "/venv")
    assert r.status == 200, s.log_tail()
    msg, prefix, _ = r.body.decode().split("|")
    assert msg == "from the venv"
    assert prefix == str(venv)


def test_python_home_of_another_version_is_refused(make_server):
    """A virtualenv made with another Python cannot work with this module: the worker
    says so in one line naming both versions, and the app answers 500."""
    root = Path(tempfile.mkdtemp(prefix="rwsgi-venv-other-", dir="/tmp"))
    try:
        root.chmod(0o755)
        (root / "pyvenv.cfg").write_text("home = /nowhere\nversion = 3.7.17\n")
        (root / "pyvenv.cfg").chmod(0o644)
        s = make_server([Mount("/hello", "hello.py")], python_home=str(root))
        assert get(s.port, "/hello").status == 500
        line = s.wait_error_log(r"is for Python 3\.7, but this module was built for Python 3\.\d+")
        assert line, s.log_tail()
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_without_python_home_venv_package_missing(make_server, venv):
    s = make_server([Mount("/venv", "venv_app.py")])
    mark, _ = s.log_mark()
    r = get(s.port, "/venv")
    assert r.status == 500
    assert s.wait_error_log("rwsgi_venv_only_pkg", mark), s.log_tail()


def test_python_path(make_server, kind):
    pkg_app = Path(tempfile.mkdtemp(prefix="rwsgi-pp-", dir="/tmp"))
    try:
        pkg_app.chmod(0o755)
        (pkg_app / "rwsgi_pp_helper.py").write_text('VALUE = "helper on python path"\n')
        (pkg_app / "rwsgi_pp_helper.py").chmod(0o644)
        app = pkg_app / "pp_app.py"
        app.write_text(
            "import rwsgi_pp_helper\n"
            "def application(environ, start_response):\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            "    return [rwsgi_pp_helper.VALUE.encode()]\n")
        app.chmod(0o644)
        extra = {} if kind == "nginx" else {"extra": [f"<Directory {pkg_app}>\n Require all granted\n</Directory>"]}
        s = make_server([Mount("/pp", str(app), python_path=[str(pkg_app)])], **extra)
        r = get(s.port, "/pp")
        assert r.status == 200, s.log_tail()
        assert r.body == b"helper on python path"
    finally:
        subprocess.run(["rm", "-rf", str(pkg_app)], check=False)


@pytest.mark.only("apache")
def test_script_reloading(make_server):
    s = make_server([Mount("/r", "reload_app.py")])
    assert get(s.port, "/r").body == b"version 1\n"
    script = s.apps_dir / "reload_app.py"
    script.write_text(script.read_text().replace("version 1", "version 2"))
    st = script.stat()
    os.utime(script, (st.st_atime, st.st_mtime + 5))
    assert wait_until(lambda: get(s.port, "/r").body == b"version 2\n", 5), get(s.port, "/r")


@pytest.mark.only("nginx")
def test_daemon_group_runs_the_servers_python_home(make_server, venv):
    # A group without python-home= runs wsgi_python_home, as mod_wsgi's daemons run
    # WSGIPythonHome.
    s = make_server([Mount("/venv", "venv_app.py", extra=["wsgi_process_group g;"])],
                    python_home=str(venv), daemons={"g": "threads=2"})
    r = get(s.port, "/venv")
    assert r.status == 200, s.log_tail()
    msg, prefix, _ = r.body.decode().split("|")
    assert (msg, prefix) == ("from the venv", str(venv))


@pytest.mark.only("apache")
def test_daemon_group_runs_the_servers_python_home_apache(apache, venv):
    s = apache()
    s.start_text(s.config_text([
        f"WSGIPythonHome {venv}",
        "WSGIDaemonProcess g threads=2",
        "WSGIScriptAlias /venv {apps}/venv_app.py process-group=g",
    ]))
    r = get(s.port, "/venv")
    assert r.status == 200, s.error_log()
    msg, prefix, _ = r.body.decode().split("|")
    assert (msg, prefix) == ("from the venv", str(venv))
