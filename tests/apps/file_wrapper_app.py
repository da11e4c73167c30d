"""wsgi.file_wrapper: a real file (sendfile path), a real file read from an offset, a
BytesIO (no fileno: iterated), and a file shorter than the Content-Length the app set.
Each file-like records its close() in a marker named by ?token=."""
import io
import os
from urllib.parse import parse_qs

HERE = os.path.dirname(os.path.abspath(__file__))
MARKERS = os.path.join(HERE, os.pardir, "markers")
BLOB = os.path.join(HERE, os.pardir, "data", "blob.bin")


def mark(name, text):
    path = os.path.join(MARKERS, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class TrackedFile:
    """A real file whose close() is recorded; exposes fileno() so sendfile can be used."""

    def __init__(self, path, token):
        self.f = open(path, "rb")
        self.token = token

    def read(self, n=-1):
        return self.f.read(n)

    def fileno(self):
        return self.f.fileno()

    def tell(self):
        return self.f.tell()

    def seek(self, *a):
        return self.f.seek(*a)

    def close(self):
        self.f.close()
        mark(self.token + ".closed", "real")


class TrackedBytesIO(io.BytesIO):
    def __init__(self, data, token):
        super().__init__(data)
        self.token = token

    def close(self):
        super().close()
        mark(self.token + ".closed", "bytesio")


def application(environ, start_response):
    qs = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    token = qs.get("token", "none")
    mode = environ.get("PATH_INFO", "")
    size = os.path.getsize(BLOB)
    headers = [("Content-Type", "application/octet-stream")]
    if mode == "/real":
        f = TrackedFile(BLOB, token)
        headers.append(("Content-Length", str(size)))
    elif mode == "/real_nolength":
        f = TrackedFile(BLOB, token)
    elif mode == "/offset":
        f = TrackedFile(BLOB, token)
        f.seek(1000)
        headers.append(("Content-Length", str(size - 1000)))
    elif mode == "/bytesio":
        with open(BLOB, "rb") as src:
            f = TrackedBytesIO(src.read(), token)
    elif mode == "/short":
        # The app promises more bytes than the file holds.
        f = TrackedFile(BLOB, token)
        headers.append(("Content-Length", str(size + 5000)))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"unknown\n"]
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 32768)
