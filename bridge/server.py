"""A local, multi-threaded HTTP server for the bridge's API (``python -m bridge serve``).

It serves exactly what the Azure Function serves, through the same :meth:`BridgeApi.handle`,
so local runs and tests exercise the production code path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from .api import MAX_BODY_BYTES, ApiRequest, ApiResponse, error

__all__ = ["BridgeServer"]

logger = logging.getLogger(__name__)


class _Handles(Protocol):
    def handle(self, request: ApiRequest) -> ApiResponse: ...


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client's delayed
    # ACK would hold every response back by ~40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length_header = self.headers.get("Content-Length", "0") or "0"
        try:
            length = int(length_header)
        except ValueError:
            self._write(error(400, "invalid_payload", "Content-Length is not a number"), close=True)
            return
        if length < 0:
            self._write(error(400, "invalid_payload", "Content-Length is negative"), close=True)
            return
        if length > MAX_BODY_BYTES:
            # Answer without reading a body we will not use, and drop the connection after.
            self._write(
                error(413, "payload_too_large", f"body is {length} bytes; the limit is {MAX_BODY_BYTES}"),
                close=True,
            )
            return
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        request = ApiRequest.of(self.command, path, _joined(self.headers.items()), body)
        self._write(self.server.api.handle(request))

    def _write(self, response: ApiResponse, *, close: bool = False) -> None:
        payload = response.body_bytes()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _joined(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Repeated headers joined with ", ", as the Functions host does, so both front doors agree
    (two Authorization headers then make one malformed value: 401)."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default of 5 pending connections makes a burst of simultaneous deliveries
    # (several action groups, Azure's retries) wait a second for the kernel to retry the SYN.
    request_queue_size = 64
    api: _Handles


class BridgeServer:
    """The API on ``host:port`` (port 0 picks a free one), served from a background thread."""

    def __init__(self, api: _Handles, host: str = "127.0.0.1", port: int = 7071) -> None:
        self._httpd = _Server((host, port), _Handler)
        self._httpd.api = api
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> BridgeServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="bridge-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
