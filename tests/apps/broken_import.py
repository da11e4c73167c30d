"""An app file that fails at import time."""
import this_module_does_not_exist_rwsgi  # noqa: F401


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable\n"]
