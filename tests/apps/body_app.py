"""wsgi.input semantics. PATH_INFO picks how the body is read; the answer is JSON
(or the body itself for /echo)."""
import hashlib
import json
from urllib.parse import parse_qs


def _lines(lines):
    return [l.decode("latin-1") for l in lines]


def application(environ, start_response):
    inp = environ["wsgi.input"]
    mode = environ.get("PATH_INFO", "")
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    n = int(qs.get("n", ["0"])[0])
    out = {"mode": mode,
           "content_length": environ.get("CONTENT_LENGTH"),
           "content_type": environ.get("CONTENT_TYPE"),
           "input_terminated": environ.get("wsgi.input_terminated")}
    if mode == "/echo":
        data = inp.read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(data)))])
        return [data]
    if mode == "/sha":
        h = hashlib.sha256()
        total = 0
        while True:
            block = inp.read(65536)
            if not block:
                break
            h.update(block)
            total += len(block)
        out.update(len=total, sha256=h.hexdigest())
    elif mode == "/read":
        data = inp.read()
        out.update(len=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   again=inp.read().decode(), again_n=inp.read(10).decode(),
                   again_line=inp.readline().decode())
    elif mode == "/read_n":
        sizes = []
        h = hashlib.sha256()
        while True:
            block = inp.read(n)
            if not block:
                break
            sizes.append(len(block))
            h.update(block)
        out.update(sizes=sizes, sha256=h.hexdigest(), len=sum(sizes))
    elif mode == "/readline":
        lines = []
        while True:
            line = inp.readline()
            if not line:
                break
            lines.append(line)
        out.update(lines=_lines(lines))
    elif mode == "/readline_size":
        lines = []
        while True:
            line = inp.readline(n)
            if not line:
                break
            lines.append(line)
        out.update(lines=_lines(lines))
    elif mode == "/readline_len":
        # Sizes only: the test measures the worker's memory, which a copy would blur.
        line = inp.readline()
        out.update(line_len=len(line), rest_len=len(inp.read()))
    elif mode == "/read_len":
        out.update(len=len(inp.read()))
    elif mode == "/readlines":
        out.update(lines=_lines(inp.readlines()))
    elif mode == "/iter":
        out.update(lines=_lines(list(inp)))
    elif mode == "/noread":
        out.update(read=False)
    elif mode == "/partial":
        out.update(got=len(inp.read(n)))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"unknown mode\n"]
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
