"""The smallest WSGI app: what `make demo` serves."""


def application(environ, start_response):
    body = b"Hello from rwsgi!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
