"""Imports a package that exists only in the test virtualenv."""
import sys

import rwsgi_venv_only_pkg


def application(environ, start_response):
    body = ("%s|%s|%s" % (rwsgi_venv_only_pkg.MESSAGE, sys.prefix, sys.version_info[:2])).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
