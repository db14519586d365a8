"""The daemon's HTTP endpoints on a ThreadingHTTPServer: /health (catalog-judged, 200/503),
/livez (main-loop heartbeat only, no SQL), /metrics (Prometheus text). Bodies other than
/metrics are always JSON, errors included; nothing secret is ever in a body."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import log

# route -> handler() -> (status, content type, body bytes)
Route = Callable[[], tuple[int, str, bytes]]
JSON = "application/json"


def json_body(status: int, doc: Any) -> tuple[int, str, bytes]:
    return status, JSON, (log.redact(json.dumps(doc, default=str)) + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "partman"
    sys_version = ""
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        route = self.routes.get(path)
        try:
            if route is None:
                status, ctype, body = json_body(404, {"status": "not found", "endpoints": sorted(self.routes)})
            else:
                status, ctype, body = route()
        except Exception as exc:  # noqa: BLE001 - an endpoint never takes the daemon down
            log.get().warning("http_handler_failed", path=path, error=log.redact(str(exc)))
            status, ctype, body = json_body(503, {"status": "error", "reasons": [log.redact(f"{type(exc).__name__}: {exc}")]})
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.get().debug("http_request", client=self.client_address[0], request=log.redact(format % args))


class HttpServer:
    """Serves the routes on a background thread; `stop()` shuts it down."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        handler = type("PartmanHandler", (_Handler,), {"routes": dict(routes)})
        cls: type[ThreadingHTTPServer] = ThreadingHTTPServer
        if ":" in host:  # an IPv6 address such as "::"
            import socket

            cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self.server = cls((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.25},
                                       name="partman-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
