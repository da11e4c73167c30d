"""HTTP client helpers. `request()` is a plain one-shot request over a raw socket;
`Conn` keeps a connection for keep-alive, pipelining, 100-continue and streaming, and
reports the framing facts http.client hides: was the chunked body terminated, did the
connection close, did the body fall short of Content-Length."""
from __future__ import annotations

import dataclasses
import socket
import ssl
import time

from .common import HOST

TIMEOUT = 20.0


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False
    # chunked: the terminating 0-chunk arrived; Content-Length: all bytes arrived;
    # close-delimited: the peer closed (the only end such a body has).
    complete: bool = True
    # The connection was closed by the server at the end of (or during) this response.
    closed: bool = False
    interim: list[int] = dataclasses.field(default_factory=list)  # 1xx statuses seen
    raw_head: bytes = b""

    def header(self, name: str, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def content_length(self):
        v = self.header("content-length")
        return int(v) if v is not None else None

    def __repr__(self):
        b = self.body if len(self.body) < 200 else self.body[:200] + b"..."
        return (f"<Response {self.status} {self.reason!r} chunked={self.chunked} "
                f"complete={self.complete} closed={self.closed} headers={self.headers} body={b!r}>")


class Closed(Exception):
    pass


def tls_context() -> ssl.SSLContext:
    """A client context for the tests' self-signed certificates: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Conn:
    """One client connection to 127.0.0.1:port with a read buffer (`tls`: over TLS,
    certificate not verified)."""

    def __init__(self, port: int, timeout: float = TIMEOUT, rcvbuf: int | None = None,
                 tls: bool = False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        if tls:
            self.sock = tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.port = port
        self.buf = b""
        self.eof = False
        self.timeout = timeout

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def recv_some(self, timeout: float | None = None) -> bytes:
        """Whatever is buffered, or the next bytes from the socket (b"" at EOF)."""
        if self.buf:
            out, self.buf = self.buf, b""
            return out
        old = self.sock.gettimeout()
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            self._fill()
        finally:
            self.sock.settimeout(old)
        out, self.buf = self.buf, b""
        return out

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                raise Closed(f"connection closed mid-line: {self.buf!r}")
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def readexact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                break
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self, limit: int | None = None) -> bytes:
        """Everything until the server closes; stops early past `limit` bytes (for a
        server that might never stop sending)."""
        while (limit is None or len(self.buf) <= limit) and self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def peer_closed(self, timeout: float = 2.0) -> bool:
        """True if the server closed the connection (EOF) within `timeout`, with no
        stray bytes in between (stray bytes raise: they would be a framing bug)."""
        if self.buf:
            raise AssertionError(f"unexpected bytes after the response: {self.buf[:200]!r}")
        if self.eof:
            return True
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
        finally:
            self.sock.settimeout(old)
        if data:
            raise AssertionError(f"unexpected bytes after the response: {data[:200]!r}")
        self.eof = True
        return True

    def read_head(self) -> tuple[str, int, str, list[tuple[str, str]], bytes]:
        line = self.readline()
        raw = line
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise AssertionError(f"bad status line {line!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        while True:
            line = self.readline()
            raw += line
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return version, status, reason, headers, raw

    def read_response(self, method: str = "GET") -> Response:
        interim = []
        while True:
            version, status, reason, headers, raw = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        resp = Response(status, reason, version, headers, b"", interim=interim, raw_head=raw)
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if method == "HEAD" or status in (204, 304):
            resp.body = b""
        elif "chunked" in te:
            resp.chunked = True
            resp.complete = False
            body = b""
            try:
                while True:
                    size_line = self.readline()
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.readline() not in (b"\r\n", b"\n"):
                            pass  # trailers
                        resp.complete = True
                        break
                    chunk = self.readexact(size)
                    body += chunk
                    if len(chunk) < size:
                        break
                    if self.readexact(2) != b"\r\n":
                        raise AssertionError("chunk not followed by CRLF")
            except (Closed, ValueError):
                pass
            resp.body = body
        elif cl is not None:
            n = int(cl)
            resp.body = self.readexact(n)
            resp.complete = len(resp.body) == n
        else:
            resp.body = self.read_to_eof()
            resp.complete = True
        conn_hdr = (resp.header("connection") or "").lower()
        if self.eof or not resp.complete:
            resp.closed = self.eof or self.peer_closed(2.0)
        elif "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr):
            resp.closed = self.peer_closed(5.0)
        return resp

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | list | None = None, version: str = "HTTP/1.1",
                host: str | None = None) -> Response:
        self.send(build_request(method, path, body, headers, version, host or f"{HOST}:{self.port}"))
        return self.read_response(method)


def build_request(method: str, path: str, body: bytes | None = None,
                  headers: dict | list | None = None, version: str = "HTTP/1.1",
                  host: str | None = None, chunked: bool = False) -> bytes:
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if "host" not in names and host is not None:
        hs.insert(0, ("Host", host))
    if body is not None and not chunked and "content-length" not in names \
            and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    if chunked:
        hs.append(("Transfer-Encoding", "chunked"))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    data = head.encode("latin-1")
    if body is not None:
        data += encode_chunked(body) if chunked else body
    return data


def encode_chunked(body: bytes, size: int = 7000) -> bytes:
    parts = []
    for i in range(0, len(body), size):
        part = body[i:i + size]
        parts += [b"%x\r\n" % len(part), part, b"\r\n"]
    return b"".join(parts) + b"0\r\n\r\n"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | list | None = None, version: str = "HTTP/1.1",
            chunked: bool = False, timeout: float = TIMEOUT, host: str | None = None,
            tls: bool = False) -> Response:
    """One request on a fresh connection (Connection: close unless given)."""
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if version == "HTTP/1.1" and not any(k.lower() == "connection" for k, _ in hs):
        hs.append(("Connection", "close"))
    with Conn(port, timeout, tls=tls) as c:
        c.send(build_request(method, path, body, hs, version, host or f"{HOST}:{port}", chunked))
        return c.read_response(method)


def get(port, path, **kw) -> Response:
    return request(port, "GET", path, **kw)


def timed_stream(port: int, path: str, timeout: float = TIMEOUT,
                 tls: bool = False) -> tuple[float, list[tuple[float, bytes]]]:
    """Sends a GET and returns (t0, [(arrival time, raw bytes)...]) until EOF."""
    with Conn(port, timeout, tls=tls) as c:
        t0 = time.monotonic()
        c.send(build_request("GET", path, None, [("Connection", "close")], host=f"{HOST}:{port}"))
        arrivals = []
        while True:
            data = c.recv_some()
            if not data:
                break
            arrivals.append((time.monotonic(), data))
        return t0, arrivals
