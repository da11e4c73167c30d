"""Apps that hand a body to a status that has none, or give an interim (1xx) status as
their own. The body looks like a whole second response, as user text in Django's
`HttpResponse(text, status=204)` could: a server that sent it would let the app forge the
next response on a keep-alive or proxy connection.

PATH_INFO: /<status> returns the body as a list; /<status>/write sends it with write();
/<status>/stream yields it forever from an iterable whose close() writes the marker
`<token>.closed` (QUERY_STRING token=...); /<status>/file returns it through
wsgi.file_wrapper.
"""
import io
import os
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")
FORGED = (b"HTTP/1.1 200 OK\r\nX-Forged: yes\r\nContent-Length: 7\r\n\r\nforged!")
REASONS = {100: "Continue", 101: "Switching Protocols", 103: "Early Hints",
           204: "No Content", 304: "Not Modified"}


class Endless:
    def __init__(self, token):
        self.token = token

    def __iter__(self):
        while True:
            yield FORGED

    def close(self):
        if self.token:
            path = os.path.join(MARKERS, self.token + ".closed")
            with open(path + ".tmp", "w") as f:
                f.write("closed")
            os.replace(path + ".tmp", path)


def application(environ, start_response):
    parts = environ.get("PATH_INFO", "").strip("/").split("/")
    code = int(parts[0])
    how = parts[1] if len(parts) > 1 else "list"
    token = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(FORGED)))]
    write = start_response(f"{code} {REASONS.get(code, 'X')}", headers)
    if how == "write":
        write(FORGED)
        return []
    if how == "stream":
        return Endless(token)
    if how == "file":
        return environ["wsgi.file_wrapper"](io.BytesIO(FORGED))
    return [FORGED]
