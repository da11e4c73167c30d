#!/usr/bin/python3
"""Serves examples/hello.py through the rwsgi module on 127.0.0.1:8080, in the foreground.

Used by `make demo` (nginx) and `make demo SERVER=apache`. Writes a self-contained config
under target/demo/ so it touches nothing in /etc. Stop with Ctrl-C.
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = ROOT / "target" / "modules"
RUN = ROOT / "target" / "demo"

NGINX_CONF = """\
load_module {modules}/ngx_http_rwsgi_module.so;
daemon off;
worker_processes 2;
error_log stderr info;
pid {run}/nginx.pid;
user nobody nogroup;
events {{}}
http {{
    access_log /dev/stdout;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen {host}:{port};
        location / {{ wsgi_app {app}; }}
    }}
}}
"""

APACHE_CONF = """\
ServerRoot /etc/apache2
DefaultRuntimeDir {run}
PidFile {run}/apache2.pid
ErrorLog /dev/stderr
LogLevel info
Listen {host}:{port}
ServerName {host}
User www-data
Group www-data
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule rwsgi_module {modules}/mod_rwsgi.so
WSGIScriptAlias / {app}
<Directory {appdir}>
    Require all granted
</Directory>
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["nginx", "apache"], default="nginx")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--app", default=str(ROOT / "examples" / "hello.py"))
    args = parser.parse_args()

    RUN.mkdir(parents=True, exist_ok=True)
    # Workers run as nobody/www-data: they must be able to reach the app and the module.
    for d in [ROOT, ROOT / "target", MODULES, ROOT / "examples", RUN]:
        os.chmod(d, os.stat(d).st_mode | 0o055)
    app = pathlib.Path(args.app).resolve()
    values = dict(modules=MODULES, run=RUN, host=args.host, port=args.port, app=app, appdir=app.parent)
    if args.server == "nginx":
        conf = RUN / "nginx.conf"
        conf.write_text(NGINX_CONF.format(**values))
        cmd = ["nginx", "-p", str(RUN), "-c", str(conf)]
    else:
        conf = RUN / "apache2.conf"
        conf.write_text(APACHE_CONF.format(**values))
        cmd = ["apache2", "-f", str(conf), "-DFOREGROUND"]
    print(f"rwsgi demo: {args.server} serving {app} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    server = subprocess.Popen(cmd)
    # Stop the server with us, whether we get Ctrl-C or a plain kill.
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        sys.exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
