"""The server configurations `rwsgi serve` writes: complete, self-contained, commented
nginx.conf / httpd.conf texts for one WSGI app (plus static directories), everything
(pid file, temp dirs, runtime files) under one working directory."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

MIME_TYPES = {"nginx": "/etc/nginx/mime.types", "apache": "/etc/mime.types"}
APACHE_MODULE_DIRS = ["/usr/lib/apache2/modules", "/usr/lib64/httpd/modules",
                      "/usr/lib/httpd/modules", "/usr/local/apache2/modules"]


@dataclasses.dataclass
class Site:
    """Everything a config needs, already resolved to absolute paths."""

    server: str                    # "nginx" | "apache"
    module: Path                   # the packaged server module
    workdir: Path
    host: str
    port: int
    processes: int
    threads: int
    python_home: str
    python_path: list[str]
    script: str | None             # the app file, or None for module:callable
    module_name: str | None        # the app module, or None for a file
    callable: str
    static: list[tuple[str, str]]  # (URL prefix without trailing slash, directory)
    user: str | None               # worker user (None: the user running the server)
    group: str | None
    apache_modules: str = "/usr/lib/apache2/modules"

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def app_label(self) -> str:
        if self.script:
            return self.script if self.callable == "application" \
                else f"{self.script} (callable {self.callable})"
        return f"{self.module_name}:{self.callable}"

    @property
    def stub(self) -> Path:
        """Apache has no module:callable form: a generated script imports the module."""
        return self.workdir / "wsgi_app.py"


def stub_text(site: Site) -> str:
    return (
        '"""Written by `rwsgi serve`: mod_wsgi-style script for the app '
        f'{site.module_name}:{site.callable}."""\n'
        "import importlib\n\n"
        "application = importlib.import_module({!r})\n"
        "for _name in {!r}.split('.'):\n"
        "    application = getattr(application, _name)\n"
    ).format(site.module_name, site.callable)


def header(site: Site, comment: str) -> list[str]:
    return [
        f"{comment} Written by `rwsgi serve` for {site.app_label}",
        f"{comment} on http://{site.listen}/ ; working directory {site.workdir}.",
        f"{comment} The server runs in the foreground; its error log goes to stderr and its",
        f"{comment} access log to stdout. Edit and run by hand with:",
    ]


def nginx_conf(site: Site) -> str:
    w = site.workdir
    lines = header(site, "#") + [
        f"#   nginx -e stderr -p {w} -c {w}/nginx.conf",
        "",
        "# The rwsgi module, built for the Python of the virtualenv below.",
        f"load_module {site.module};",
        "",
        "daemon off;                 # foreground: `rwsgi serve` watches and stops it",
        "master_process on;",
        f"worker_processes {site.processes};          # --processes",
    ]
    if site.user:
        lines.append(f"user {site.user} {site.group};       "
                     "# workers (and the app) run as this user: --user")
    lines += [
        "error_log stderr notice;",
        f"pid {w}/nginx.pid;",
        "# After a reload, old workers get this long to finish requests in progress.",
        "worker_shutdown_timeout 10s;",
        "",
        "events { worker_connections 1024; }",
        "",
        "http {",
    ]
    mime = MIME_TYPES["nginx"]
    if site.static and os.path.isfile(mime):
        lines.append(f"    include {mime};")
    lines += [
        "    default_type application/octet-stream;",
        "    access_log /dev/stdout;",
        "    # Temporary files (large request bodies) stay in the working directory.",
    ]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        lines.append(f"    {kind}_temp_path {w}/tmp/{kind};")
    lines += [
        "",
        "    # Python: the virtualenv whose packages the app sees (its Python version is",
        "    # the one the module was built for), and threads per worker process.",
        f"    wsgi_python_home {site.python_home};",
        f"    wsgi_threads {site.threads};                 # --threads",
        "",
        "    server {",
        f"        listen {site.listen};",
        "        server_name localhost;",
    ]
    for url, directory in site.static:
        lines += [
            f"        # --static {url}={directory}",
            f"        location ^~ {url}/ {{ alias {directory}/; }}",
        ]
    lines.append("        # The WSGI app, mounted at /.")
    lines.append("        location / {")
    if site.script:
        lines.append(f"            wsgi_app {site.script};")
        if site.callable != "application":
            lines.append(f"            wsgi_callable {site.callable};")
    else:
        lines.append(f"            wsgi_app {site.module_name}:{site.callable};")
    if site.python_path:
        lines.append("            # put in front of sys.path: --python-path, then the app's directory")
        lines.append("            wsgi_python_path " + " ".join(site.python_path) + ";")
    lines += ["        }", "    }", "}", ""]
    return "\n".join(lines)


def apache_conf(site: Site) -> str:
    w, mods = site.workdir, site.apache_modules
    n, t = site.processes, site.threads
    lines = header(site, "#") + [
        f"#   apache2 -f {w}/httpd.conf -DFOREGROUND",
        "",
        f"ServerRoot {w}",
        f"DefaultRuntimeDir {w}",
        f"PidFile {w}/apache2.pid",
        "ErrorLog /dev/stderr",
        "LogLevel notice",
        f"Listen {site.listen}",
        f"ServerName {site.listen}",
    ]
    if site.user:
        lines += ["# Child processes (and the app) run as this user: --user",
                  f"User {site.user}", f"Group {site.group}"]
    lines += [
        "",
        f"LoadModule mpm_event_module {mods}/mod_mpm_event.so",
        f"LoadModule authz_core_module {mods}/mod_authz_core.so",
        f"LoadModule mime_module {mods}/mod_mime.so",
    ]
    if site.static:
        lines.append(f"LoadModule alias_module {mods}/mod_alias.so")
    lines += [
        "# The rwsgi module (mod_wsgi's directives), built for the Python of WSGIPythonHome.",
        f"LoadModule rwsgi_module {site.module}",
        "",
        f"# --processes {n} --threads {t}: {n} child process(es) of {t} threads each, kept",
        "# running (all threads count as spare); room for old children during a graceful restart.",
        f"StartServers {n}",
        f"ServerLimit {n * 2}",
        f"ThreadLimit {t}",
        f"ThreadsPerChild {t}",
        f"MaxRequestWorkers {n * t}",
        f"MinSpareThreads {n * t}",
        f"MaxSpareThreads {n * t}",
        "KeepAlive On",
        "Timeout 60",
        "",
        'LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\"" combined',
        "CustomLog /dev/stdout combined",
    ]
    if os.path.isfile(MIME_TYPES["apache"]):
        lines.append(f"TypesConfig {MIME_TYPES['apache']}")
    lines += [
        "",
        "# Python: the virtualenv whose packages the app sees.",
        f"WSGIPythonHome {site.python_home}",
    ]
    if site.python_path:
        lines.append("# put in front of sys.path: --python-path, then the app's directory")
        lines.append("WSGIPythonPath " + ":".join(site.python_path))
    for url, directory in site.static:
        lines += [
            f"# --static {url}={directory} (Alias wins over WSGIScriptAlias /)",
            f"Alias {url} {directory}",
            f"<Directory {directory}>\n    Require all granted\n</Directory>",
        ]
    if site.script:
        script, opts = site.script, ""
        if site.callable != "application":
            opts = f" callable-object={site.callable}"
    else:
        script, opts = str(site.stub), ""
        lines.append(f"# {script} imports {site.module_name} and names its "
                     f"{site.callable} `application`.")
    lines += [
        "# The WSGI app, mounted at /.",
        f"WSGIScriptAlias / {script}{opts}",
        f"<Directory {Path(script).parent}>\n    Require all granted\n</Directory>",
        "",
    ]
    return "\n".join(lines)


def render(site: Site) -> str:
    return nginx_conf(site) if site.server == "nginx" else apache_conf(site)


def conf_name(server: str) -> str:
    return "nginx.conf" if server == "nginx" else "httpd.conf"
