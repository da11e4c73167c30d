"""A package app for the module:callable form (found through the python path)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"package app " + __name__.encode() + b"\n"]
