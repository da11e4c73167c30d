"""The benchmark's WSGI app: one file served unchanged by every server in bench/run.py.

Routes on PATH_INFO, one route per workload. bench/run.py copies this file next to
data-1m.bin (the file served by /file) in a world-readable temp dir.
"""
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_1M = os.path.join(HERE, "data-1m.bin")
HELLO = b"Hello, world!\n"
CHUNK = b"x" * 65536          # /stream: 160 chunks of 64 KiB = 10 MiB
STREAM_CHUNKS = 160
ITEMS = [{"id": i, "name": f"item-{i}", "price": 9.99 + i, "tags": ["a", "b"]} for i in range(3)]


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def api(environ, start_response):
    body = json.dumps({"ok": True, "path": environ.get("PATH_INFO", ""),
                       "method": environ["REQUEST_METHOD"], "items": ITEMS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def sleep(environ, start_response):
    time.sleep(0.010)
    return hello(environ, start_response)


def echo(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _read_blocks(f, size):
    try:
        while True:
            block = f.read(size)
            if not block:
                return
            yield block
    finally:
        f.close()


def file(environ, start_response):
    f = open(DATA_1M, "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    wrapper = environ.get("wsgi.file_wrapper")
    return wrapper(f, 65536) if wrapper else _read_blocks(f, 65536)


def _stream_body():
    for _ in range(STREAM_CHUNKS):
        yield CHUNK


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _stream_body()


ROUTES = {"/hello": hello, "/json": api, "/sleep": sleep, "/echo": echo, "/file": file, "/stream": stream}


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO") or "/")
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    return route(environ, start_response)
