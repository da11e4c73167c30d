"""Apache only: mod_rwsgi as a drop-in for mod_wsgi's configuration. A mod_wsgi-style
config (Debian's docs: WSGIScriptAlias + <Directory> Require all granted, WSGIPythonPath,
WSGIPassAuthorization, ...) runs unchanged with only the LoadModule line swapped, and gives
the application the same environ as mod_wsgi itself; wrong values and loading both modules
fail `apache2 -t` with the file, the line and a clear reason (daemon mode's own refusals:
test_daemon_apache.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.apache import MODDIR, ApacheServer
from harness.common import ServerError
from harness.http import Conn, get, request

# Left out of the validated pass (RWSGI_VALIDATE=1 in `make test`):
# Apache configuration: its apps are hand-written configs, not harness mounts.
pytestmark = pytest.mark.server_side

MOD_WSGI = Path(MODDIR) / "mod_wsgi.so"
MOD_WSGI_LINE = f"LoadModule wsgi_module {MOD_WSGI}"
MODULES = [
    f"LoadModule alias_module {MODDIR}/mod_alias.so",
    f"LoadModule env_module {MODDIR}/mod_env.so",
    f"LoadModule mime_module {MODDIR}/mod_mime.so",
    "TypesConfig /etc/mime.types",
]


def need_mod_wsgi():
    if not MOD_WSGI.is_file():
        pytest.fail(f"{MOD_WSGI} is missing: apt-get install -y libapache2-mod-wsgi-py3 "
                    "(the side-by-side checks compare with the real mod_wsgi)", pytrace=False)


def mod_wsgi_site(s: ApacheServer) -> list[str]:
    """Site configuration written for mod_wsgi, in the style of its Debian documentation."""
    run, apps = s.run, s.apps_dir
    pylib = run / "pylib"
    pylib.mkdir(exist_ok=True)
    pylib.chmod(0o755)
    (apps / "private").mkdir(exist_ok=True)
    (apps / "private").chmod(0o755)
    hidden = apps / "private" / "secret.py"
    hidden.write_bytes((apps / "hello.py").read_bytes())
    hidden.chmod(0o644)
    return MODULES + [
        "<Directory />",
        "    AllowOverride None",
        "    Require all denied",
        "</Directory>",
        f"<Directory {run}/htdocs>",
        "    Require all granted",
        "</Directory>",
        "",
        "WSGIRestrictEmbedded Off",
        f"WSGISocketPrefix {run}/wsgi",
        "WSGILazyInitialization On",
        f"WSGIPythonPath {pylib}",
        "WSGIScriptAlias /myapp " + str(apps / "environ_app.py"),
        "WSGIScriptAlias /other " + str(apps / "environ_app.py")
        + " process-group=%{GLOBAL} application-group=%{GLOBAL} callable-object=other",
        "WSGIScriptAlias /denied " + str(hidden),
        "WSGIScriptAlias /gone " + str(apps / "no_such_script.wsgi"),
        # mod_alias maps first, so static files stay static under a WSGI app at "/"
        "Alias /static " + str(run / "htdocs"),
        "WSGIScriptAlias / " + str(apps / "hello.py"),
        "SetEnv APP_SETTING from-setenv",
        f"<Directory {apps}>",
        "    WSGIPassAuthorization On",
        "    WSGIScriptReloading On",
        "    WSGIChunkedRequest On",
        "    WSGIMapHEADToGET Auto",
        "    <Files environ_app.py>",
        "        Require all granted",
        "    </Files>",
        "    <Files hello.py>",
        "        Require all granted",
        "    </Files>",
        "    <Files no_such_script.wsgi>",
        "        Require all granted",
        "    </Files>",
        "</Directory>",
    ]


COMPARED = [
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "SERVER_ADDR",
    "GATEWAY_INTERFACE", "SCRIPT_FILENAME", "DOCUMENT_ROOT", "CONTEXT_PREFIX",
    "CONTEXT_DOCUMENT_ROOT", "REQUEST_SCHEME", "REMOTE_ADDR", "CONTENT_TYPE", "CONTENT_LENGTH",
    "HTTP_HOST", "HTTP_X_CUSTOM", "HTTP_AUTHORIZATION", "APP_SETTING",
    "mod_wsgi.process_group", "mod_wsgi.application_group", "mod_wsgi.callable_object",
    "mod_wsgi.script_reloading", "mod_wsgi.request_handler",
    "wsgi.url_scheme", "wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
    "wsgi.input_terminated",
]

REQUESTS = [
    ("GET", "/myapp", None, {}),
    ("GET", "/myapp/", None, {}),
    ("GET", "/myapp/a/b%20c?x=1&y=%20z", None, {"X-Custom": "v1"}),
    ("POST", "/myapp/form", b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded",
                                         "Authorization": "Bearer secret-token"}),
]


def observe(s: ApacheServer) -> dict:
    seen = {}
    for method, path, body, headers in REQUESTS:
        r = request(s.port, method, path, body=body, headers=headers)
        assert r.status == 200, (path, r, s.log_tail())
        env = json.loads(r.body)
        # keys one side lacks show up as "<absent>" so a difference is reported
        seen[f"{method} {path}"] = {k: env.get(k, "<absent>") for k in COMPARED}
    for path in ["/other", "/static/static.txt", "/denied", "/gone", "/anything/else"]:
        r = get(s.port, path)
        seen[path] = (r.status, r.body.decode("latin-1") if r.status == 200 else "")
    with Conn(s.port) as c:
        r = c.request("HEAD", "/myapp/head")
        seen["HEAD"] = (r.status, r.header("Content-Type"), r.body.decode("latin-1"))
    return seen


def normalize(seen: dict, s: ApacheServer) -> dict:
    """Run-specific values (port, run dir) replaced by placeholders, and each module's
    banner token ("mod_wsgi/4.9.4", "mod_rwsgi/0.1.0") by one placeholder."""
    text = json.dumps(seen, sort_keys=True, default=repr)
    text = text.replace(str(s.run), "<run>").replace(str(s.port), "<port>")
    text = re.sub(r"mod_r?wsgi/[0-9.]+", "<module>/<version>", text)
    return json.loads(text)


def test_mod_wsgi_config_runs_unchanged_with_the_same_environ(apache):
    need_mod_wsgi()
    theirs = apache()
    site = mod_wsgi_site(theirs)
    theirs.start_text("\n".join(theirs.base_lines(1, 4, module_line=MOD_WSGI_LINE) + site) + "\n")
    expected = normalize(observe(theirs), theirs)
    theirs.stop()

    ours = apache()
    site = mod_wsgi_site(ours)
    ours.start_text("\n".join(ours.base_lines(1, 4) + site) + "\n")
    got = normalize(observe(ours), ours)

    diffs = []
    for key in expected:
        if isinstance(expected[key], dict):
            for k in COMPARED:
                if expected[key][k] != got[key][k]:
                    diffs.append(f"{key} {k}: mod_wsgi={expected[key][k]!r} mod_rwsgi={got[key][k]!r}")
        elif expected[key] != got[key]:
            diffs.append(f"{key}: mod_wsgi={expected[key]!r} mod_rwsgi={got[key]!r}")
    assert not diffs, "differences from mod_wsgi:\n" + "\n".join(diffs)
    # and the facts themselves, not only "same as mod_wsgi"
    e = got["GET /myapp/a/b%20c?x=1&y=%20z"]
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"]) == ("/myapp", "/a/b c", "x=1&y=%20z")
    assert got["GET /myapp"]["PATH_INFO"] == ""
    assert got["POST /myapp/form"]["HTTP_AUTHORIZATION"] == "Bearer secret-token"
    assert got["GET /myapp"]["APP_SETTING"] == "from-setenv"
    assert got["GET /myapp"]["mod_wsgi.application_group"] == "127.0.0.1:<port>|/myapp"
    assert got["/other"][0] == 200 and got["/static/static.txt"] == [200, "static file\n"]
    assert got["/denied"][0] == 403 and got["/gone"][0] == 404
    # and for the reasons they stand for: httpd's access rules, mod_rwsgi's missing script
    log = ours.error_log()
    assert re.search(r"client denied by server configuration: \S*/private/secret\.py", log), log
    assert re.search(r"rwsgi\[app=\S+ req=\S+\]: target WSGI script not found or unable to stat: "
                     r"\S*/no_such_script\.wsgi", log), log
    assert got["/anything/else"] == [200, "Hello, world!\n"]
    assert "rwsgi: every WSGI application group runs in the main Python interpreter" \
        in ours.error_log()
    # apache.version: mod_wsgi reports the httpd it was compiled against, mod_rwsgi the
    # running one
    env = json.loads(get(ours.port, "/myapp").body)
    running = re.search(r"Apache/(\d+)\.(\d+)\.(\d+)", env["SERVER_SOFTWARE"]).groups()
    assert env["apache.version"] == [int(x) for x in running]
    assert re.search(r"mod_rwsgi/\S+ Python/3\.\d+", env["SERVER_SOFTWARE"]), env["SERVER_SOFTWARE"]


def test_authorization_is_withheld_by_default(apache):
    s = apache()
    site = [f"WSGIScriptAlias /env {s.apps_dir}/environ_app.py",
            f"WSGIScriptAlias /pass {s.apps_dir}/environ_app.py pass-authorization=On",
            f"<Directory {s.run}>\n    Require all granted\n</Directory>"]
    s.start_text("\n".join(s.base_lines(1, 4) + site) + "\n")
    auth = {"Authorization": "Basic dXNlcjpwdw==", "Proxy-Authorization": "Basic eA=="}
    env = json.loads(get(s.port, "/env", headers=auth).body)
    assert "HTTP_AUTHORIZATION" not in env and "HTTP_PROXY_AUTHORIZATION" not in env
    env = json.loads(get(s.port, "/pass", headers=auth).body)
    assert env["HTTP_AUTHORIZATION"] == "Basic dXNlcjpwdw=="


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the config")


BAD = [
    # (directive lines, needle on the failing line, what the message must say)
    # Every refusal starts with the directive's name, so each pattern matches the reason
    # proper, up to the value that is wrong.
    (["WSGIDaemonProcess site frobnicate=1"], "WSGIDaemonProcess",
     r"WSGIDaemonProcess site: unknown option \"frobnicate\""),
    (["WSGIProcessGroup %{ENV:G}"], "WSGIProcessGroup",
     r"WSGIProcessGroup: process group \"%\{ENV:G\}\": computed process group names"),
    (["WSGIScriptAlias /p {apps}/hello.py process-group=a/b"], "process-group=a/b",
     r"WSGIScriptAlias: process group name \"a/b\""),
    (["<VirtualHost 127.0.0.1:1>", "WSGIRestrictEmbedded On", "</VirtualHost>"],
     "WSGIRestrictEmbedded", r"WSGIRestrictEmbedded cannot occur within <VirtualHost> section"),
    (["WSGIScriptAlias /x"], "WSGIScriptAlias /x",
     r"expected a URL path and a script file: WSGIScriptAlias URL-path FILE"),
    (["WSGIScriptAlias noslash {apps}/hello.py"], "noslash",
     r"URL path \"noslash\" must begin with /"),
    (["WSGIScriptAlias /t {apps}/hello.py threads=3"], "threads=3",
     r"unknown option \"threads\": expected one of process-group=\.\.\."),
    (["WSGIScriptAlias /t {apps}/hello.py pass-authorization=maybe"], "maybe",
     r"pass-authorization must be On or Off, not \"maybe\""),
    (["WSGIScriptAlias /t {apps}/ "], "WSGIScriptAlias /t",
     r"\"{apps}/\" is a directory: mapping a URL to a directory of WSGI scripts is not supported"),
    (["WSGIScriptAliasMatch ^/(x {apps}/hello.py"], "^/(x",
     r"regular expression \"\^/\(x\" could not be compiled"),
    (["WSGIScriptAliasMatch ^/(\\w+) {apps}/$2.py"], "$2.py",
     r"refers to \$2 but \"\^/\(\\\\w\+\)\" has only 1 capture group"),
    (["WSGIPythonHome /nonexistent/python/home"], "WSGIPythonHome",
     r"\"/nonexistent/python/home\" is not a directory"),
    # httpd's own wording (mod_rwsgi passes ap_check_cmd_context's message on)
    (["<VirtualHost 127.0.0.1:1>", "WSGIPythonPath /tmp", "</VirtualHost>"], "WSGIPythonPath",
     r"WSGIPythonPath cannot occur within <VirtualHost> section"),
    # httpd's own FLAG parsing
    (["WSGIPassAuthorization maybe"], "WSGIPassAuthorization",
     r"WSGIPassAuthorization must be On or Off"),
    (["WSGIMapHEADToGET Sometimes"], "WSGIMapHEADToGET",
     r"must be one of Off, On, Auto, not \"Sometimes\""),
    (["WSGIApplicationGroup %{BOGUS}"], "WSGIApplicationGroup",
     r"unknown application group \"%\{BOGUS\}\""),
    (["WSGICallableObject 1app"], "WSGICallableObject",
     r"\"1app\" is not a Python name for the WSGI callable"),
    (["WSGIImportScript {apps}/hello.py application-group=%{NOPE}"], "WSGIImportScript",
     r"unknown application group \"%\{NOPE\}\""),
    (["WSGIImportScript {apps}/hello.py process-group=%{SERVER}"], "WSGIImportScript",
     r"WSGIImportScript: process group \"%\{SERVER\}\": computed process group names"),
]


@pytest.mark.parametrize("lines,needle,words", BAD, ids=[
    "daemon-option", "process-group", "alias-process-group", "restrict-embedded-in-vhost",
    "alias-missing-file", "alias-relative-url", "alias-unknown-option", "alias-bad-flag",
    "alias-directory", "match-bad-regex", "match-missing-group", "python-home-missing",
    "python-path-in-vhost", "pass-auth-value", "map-head-value", "app-group-value",
    "callable-value", "import-group", "import-daemon"])
def test_wrong_value_fails_config_test(apache, lines, needle, words):
    s = apache()
    text = "\n".join(s.base_lines(1, 4) + [f"WSGIScriptAlias /ok {s.apps_dir}/hello.py"]
                     + [s.expand(x) for x in lines]) + "\n"
    ok, out = s.check_text(text)
    assert not ok, f"accepted:\n{out}"
    line = line_of(text, s.expand(needle))
    assert re.search(rf"line {line} of {re.escape(str(s.conf_path))}", out), \
        f"message does not name {s.conf_path} line {line}:\n{out}"
    words = words.replace("{apps}", re.escape(str(s.apps_dir)))
    assert re.search(words, out), f"message does not say {words!r}:\n{out}"


def test_accepted_mod_wsgi_directives_pass_config_test(apache):
    s = apache()
    lines = s.base_lines(1, 4) + [
        f"WSGIScriptAlias /a {s.apps_dir}/hello.py process-group=%{{GLOBAL}} application-group=%{{GLOBAL}}",
        f"WSGIScriptAliasMatch ^/m/([a-z_]+) {s.apps_dir}/$1.py",
        f"WSGIImportScript {s.apps_dir}/hello.py process-group=%{{GLOBAL}} application-group=%{{GLOBAL}}",
        "WSGIProcessGroup %{GLOBAL}", "WSGIApplicationGroup %{RESOURCE}", "WSGICallableObject application",
        "WSGIRestrictEmbedded Off", "WSGISocketPrefix /var/run/wsgi", "WSGILazyInitialization On",
        "WSGIChunkedRequest Off", "WSGIScriptReloading Off", "WSGIMapHEADToGET On",
        "WSGIEnableSendfile On", "WSGIRestrictStdout Off", "WSGIPythonPath /tmp:/srv",
    ]
    ok, out = s.check_text("\n".join(lines) + "\n")
    assert ok, out


@pytest.mark.parametrize("order", ["rwsgi-first", "mod_wsgi-first"])
def test_mod_wsgi_and_mod_rwsgi_together_fail(apache, order):
    need_mod_wsgi()
    s = apache()
    ours = f"LoadModule rwsgi_module {s.module_path}"
    both = [ours, MOD_WSGI_LINE] if order == "rwsgi-first" else [MOD_WSGI_LINE, ours]
    lines = s.base_lines(1, 4, module_line="\n".join(both))
    ok, out = s.check_text("\n".join(lines) + "\n")
    assert not ok, f"both modules were accepted together:\n{out}"
    assert re.search(r"mod_wsgi\.c \(wsgi_module\) is loaded too.*load only one of them", out, re.S), out
    # with a WSGI directive the refusal names its line too
    lines.append(f"WSGIScriptAlias /a {s.apps_dir}/hello.py")
    text = "\n".join(lines) + "\n"
    ok, out = s.check_text(text)
    assert not ok, out
    line = line_of(text, "WSGIScriptAlias /a")
    assert re.search(rf"line {line} of {re.escape(str(s.conf_path))}:\s*WSGIScriptAlias: "
                     r"mod_wsgi\.c \(wsgi_module\) is loaded too.*load only one of them",
                     out), out
    with pytest.raises(ServerError):
        s.start_text("\n".join(lines) + "\n")
