"""A small fault-injecting HTTP proxy in front of the moto S3 server, for the S3 fault tests.

boto3 is pointed at the proxy with AWS_ENDPOINT_URL_S3; every request is forwarded to moto
unless a fault rule matches it. A rule is a (name, predicate, remaining) triple: `remaining`
is how many matching requests it still hits (None: every one, until cleared). Faults:
  - "slowdown": answer 503 SlowDown (S3's throttling answer)
  - "expired": answer 403 ExpiredToken
  - "drop": read half of the request body, then close the connection without an answer
  - "lose_answer": forward the request, then close the connection without returning moto's answer
    (the request took effect; the client cannot know)
  - "corrupt_request": flip a byte in the request body before forwarding it
  - "corrupt_response": flip a byte in moto's response body before returning it
Every request is logged as (method, path?query, status or fault)."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Predicate = Callable[[str, str], bool]  # (method, path with query) -> matches


def upload_part(method: str, path: str) -> bool:
    return method == "PUT" and "partNumber=" in path and "uploadId=" in path


def get_object(method: str, path: str) -> bool:
    p, _, q = path.partition("?")
    return method == "GET" and not q and p.strip("/").count("/") >= 1


def complete_upload(method: str, path: str) -> bool:
    return method == "POST" and "uploadId=" in path


def any_request(method: str, path: str) -> bool:
    return True


ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>'
             '<RequestId>partman-proxy</RequestId></Error>')


@dataclass
class Rule:
    fault: str
    match: Predicate
    remaining: int | None


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ control
    def add(self, fault: str, match: Predicate = any_request, times: int | None = None) -> None:
        with self._lock:
            self.rules.append(Rule(fault, match, times))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def faults(self, fault: str) -> int:
        return sum(1 for _, _, s in self.log if s == fault)

    def _take(self, method: str, path: str) -> str | None:
        with self._lock:
            for r in self.rules:
                if (r.remaining is None or r.remaining > 0) and r.match(method, path):
                    if r.remaining is not None:
                        r.remaining -= 1
                    return r.fault
        return None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        proxy = self
        up = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                upstream_len = dict((k.lower(), v) for k, v in headers).get("content-length")
                self.send_header("Content-Length", upstream_len if self.command == "HEAD" and upstream_len else str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, msg: str) -> None:
                self._answer(status, ERROR_XML.format(code=code, msg=msg).encode(), [("Content-Type", "application/xml")])

            def _handle(self) -> None:
                method, path = self.command, self.path
                fault = proxy._take(method, path)
                if fault == "drop":
                    n = int(self.headers.get("Content-Length") or 0)
                    self.rfile.read(n // 2)
                    proxy.log.append((method, path, "drop"))
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                body = self._body()
                if fault == "slowdown":
                    proxy.log.append((method, path, fault))
                    self._error(503, "SlowDown", "Please reduce your request rate.")
                    return
                if fault == "expired":
                    proxy.log.append((method, path, fault))
                    self._error(403, "ExpiredToken", "The provided token has expired.")
                    return
                if fault == "corrupt_request" and body:
                    body = _flip(body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                headers["Content-Length"] = str(len(body))
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    c.request(method, path, body=body, headers=headers)
                    r = c.getresponse()
                    data = r.read()
                    rh = r.getheaders()
                    status = r.status
                finally:
                    c.close()
                if fault == "corrupt_response" and data and status == 200:
                    data = _flip(data)
                proxy.log.append((method, path, fault or str(status)))
                if fault == "lose_answer":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self._answer(status, data, rh)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
