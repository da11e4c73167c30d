"""The app bench/soak.py hammers: a hello, an echo of the request body, and a stream."""


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 8192 for _ in range(8))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, soak!\n"]
