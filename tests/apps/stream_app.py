"""Streaming responses from a generator."""
import os
import time
from urllib.parse import parse_qs

MARKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "markers")


def mark(name, text):
    path = os.path.join(MARKERS, name)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def application(environ, start_response):
    qs = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    mode = environ.get("PATH_INFO", "")
    if mode == "/big":
        return big(qs, start_response)
    if mode == "/distinct":
        return distinct(qs, start_response)
    if mode == "/tiny":
        return tiny(qs, start_response)
    n = int(qs.get("n", "3"))
    delay = float(qs.get("delay", "0"))
    headers = [("Content-Type", "text/plain")]
    if "cl" in qs:
        headers.append(("Content-Length", qs["cl"]))
    start_response("200 OK", headers)

    def gen():
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            yield b"chunk %d\n" % i
    return gen()


def big(qs, start_response):
    """`total` bytes in `chunk`-byte pieces; progress is recorded in a marker so the test
    can see how far ahead of the client the app ran (backpressure)."""
    total = int(qs["total"])
    chunk = int(qs.get("chunk", "65536"))
    token = qs["token"]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(total))])

    def gen():
        sent = 0
        piece = bytes(range(256)) * (chunk // 256)
        try:
            while sent < total:
                part = piece[: min(chunk, total - sent)]
                yield part
                sent += len(part)
                mark(token + ".progress", str(sent))
        finally:
            mark(token + ".done", str(sent))
    return gen()


def distinct(qs, start_response):
    """`n` chunks of `size` bytes, each a new bytes object that only the server still
    refers to once yielded; garbage of the same size is allocated and scribbled over
    between chunks, so memory freed too early would be reused and show in the body."""
    n, size = int(qs["n"]), int(qs["size"])
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(n * size))])

    def gen():
        for i in range(n):
            yield (b"%08d" % i) * (size // 8)
            junk = bytearray(b"\xff" * size)
            del junk
    return gen()


def tiny(qs, start_response):
    """`n` chunks of `size` bytes (default 1) and no Content-Length: the shape of a
    server-sent-events stream or a row-by-row CSV export."""
    n, size = int(qs["n"]), int(qs.get("size", "1"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    piece = b"x" * size

    def gen():
        for _ in range(n):
            yield piece
    return gen()
