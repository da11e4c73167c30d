"""Its body is rewritten by the script-reloading test."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"version 1\n"]
