"""A local, multi-threaded HTTP server for the bridge's API (``python -m bridge serve``).

It serves exactly what the Azure Function serves, through the same :meth:`BridgeApi.handle`,
so local runs and tests exercise the production code path. At the transport it accepts what the
Functions host accepts, and refuses what it would refuse:

* the body comes framed by a strict ``Content-Length`` (ASCII digits only; ``+10``, ``1_0``,
  ``10, 10``, two such headers, or one beside ``Transfer-Encoding``: 400) or by
  ``Transfer-Encoding: chunked`` (read, and bounded by the 1 MiB limit like any body); other
  transfer codings: 400;
* every connection has deadlines: its request line and headers must arrive within
  ``header_timeout`` seconds of the server starting to wait for them (this also ends idle
  keep-alive connections), its body within ``body_timeout`` seconds after them (else 408), and
  each answer must be taken within ``write_timeout``; so a slow or silent client (slowloris) holds
  a thread for seconds, never for ever;
* at most ``max_connections`` connections are served at once, each by its own thread; one more is
  answered at once ``503`` with ``Retry-After: 1`` (which Azure Monitor retries) and closed,
  instead of waiting unseen while the threads are taken.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol

from .api import MAX_BODY_BYTES, ApiRequest, ApiResponse, error

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_BODY_TIMEOUT_SECONDS",
    "DEFAULT_HEADER_TIMEOUT_SECONDS",
    "DEFAULT_MAX_CONNECTIONS",
    "BridgeServer",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 10.0
DEFAULT_WRITE_TIMEOUT_SECONDS = 10.0

_DIGITS = re.compile(r"[0-9]+\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,8}\Z")
_OWS = " \t"  # the optional whitespace HTTP allows around a field value
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 100


class _Handles(Protocol):
    def handle(self, request: ApiRequest) -> ApiResponse: ...


class _Refused(Exception):
    """The request cannot be read: answer ``response`` and close the connection."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(message: str) -> _Refused:
    return _Refused(error(400, "invalid_payload", message))


class _DeadlineReader(io.RawIOBase):
    """A connection's read side where every receive waits at most until ``deadline`` (monotonic):
    a client trickling a byte at a time cannot stretch a phase past it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client took too long")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client's delayed
    # ACK would hold every response back by ~40 ms.
    disable_nagle_algorithm = True
    _reader: _DeadlineReader

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain one from makefile(); reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # From now on (an idle keep-alive wait included) the request line and headers must come
        # within the header timeout; BaseHTTPRequestHandler closes the connection on TimeoutError.
        self._reader.deadline = time.monotonic() + self.server.header_timeout
        super().handle_one_request()

    def end_headers(self) -> None:
        # Every answer (ours and the stdlib's error pages) gets the write timeout, whatever the
        # last read left on the socket.
        self.connection.settimeout(self.server.write_timeout)
        super().end_headers()

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
        try:
            body = self._read_body()
        except _Refused as refused:
            # The framing is unknown from here on: whatever follows must not be read as a request.
            self._write(refused.response, close=True)
            return
        # The whole request target: ApiRequest.of separates the path from the query (?deep=1).
        request = ApiRequest.of(self.command, self.path, _joined(self.headers.items()), body)
        self._write(self.server.api.handle(request))

    # ------------------------------------------------------------------ the body

    def _read_body(self) -> bytes:
        lengths = self.headers.get_all("Content-Length") or []
        codings = self.headers.get_all("Transfer-Encoding") or []
        self._reader.deadline = time.monotonic() + self.server.body_timeout
        if codings:
            if lengths:
                raise _bad_request("Content-Length and Transfer-Encoding must not both be given")
            if len(codings) != 1 or codings[0].strip(_OWS).lower() != "chunked":
                raise _bad_request("the only Transfer-Encoding accepted is chunked")
            return self._guarded(self._read_chunked)
        if not lengths:
            return b""
        if len(lengths) != 1:
            raise _bad_request("Content-Length is given more than once")
        text = lengths[0].strip(_OWS)
        if not _DIGITS.match(text):
            raise _bad_request("Content-Length must be a number of bytes, in digits only")
        digits = text.lstrip("0") or "0"
        length = int(digits) if len(digits) <= 9 else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            # Answer without reading a body we will not use, and drop the connection after.
            raise _Refused(_too_large(length))
        if not length:
            return b""
        body = self._guarded(lambda: self.rfile.read(length))
        if len(body) < length:
            raise _bad_request(f"the body ended after {len(body)} of {length} bytes")
        return body

    def _guarded(self, read: Callable[[], bytes]) -> bytes:
        try:
            data = read()
        except TimeoutError:
            raise _Refused(
                error(408, "request_timeout", f"the body did not arrive within {self.server.body_timeout:g} s")
            ) from None
        return data

    def _read_chunked(self) -> bytes:
        """A chunked body (RFC 9112 section 7.1), at most MAX_BODY_BYTES of data; trailers are
        read and dropped."""
        body = bytearray()
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
            if not line.endswith(b"\r\n"):
                raise _bad_request("malformed chunked body: a chunk size line is missing, unfinished or too long")
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            if not _HEX.match(size_text):
                raise _bad_request("malformed chunked body: a chunk size is not a hexadecimal number")
            size = int(size_text, 16)
            if size == 0:
                break
            if len(body) + size > MAX_BODY_BYTES:
                raise _Refused(_too_large(len(body) + size, "at least "))
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                raise _bad_request("malformed chunked body: a chunk is shorter than its size or not followed by CRLF")
            body += chunk
        for _ in range(_MAX_TRAILER_LINES):
            line = self.rfile.readline(_MAX_CHUNK_LINE + 1)
            if line == b"\r\n":
                return bytes(body)
            if not line.endswith(b"\r\n"):
                raise _bad_request("malformed chunked body: the trailer section is unfinished or too long")
        raise _bad_request("malformed chunked body: too many trailer fields")

    # ---------------------------------------------------------------- answering

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


def _too_large(length: int, qualifier: str = "") -> ApiResponse:
    return error(413, "payload_too_large", f"body is {qualifier}{length} bytes; the limit is {MAX_BODY_BYTES}")


def _joined(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Repeated headers joined with ", ", as the Functions host does, so both front doors agree
    (two Authorization headers then make one malformed value: 401)."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


_BUSY_BODY = json.dumps(
    {"error": {"code": "unavailable", "message": "the server is serving as many connections as it may; retry"}},
    separators=(",", ":"),
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n".encode()
    + b"Retry-After: 1\r\nConnection: close\r\n\r\n"
    + _BUSY_BODY
)


class _Lingerer:
    """Closes refused connections a moment after their 503, reading and dropping what the client
    sends meanwhile: closing at once with its request unread would reset the connection, and the
    client could lose the answer. One thread, at most ``most`` sockets (the oldest closes first)."""

    def __init__(self, linger_seconds: float = 1.0, most: int = 256) -> None:
        self._linger = linger_seconds
        self._most = most
        self._pending: deque[tuple[float, socket.socket]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopped:
                _close(sock)
                return
            while len(self._pending) >= self._most:
                _close(self._pending.popleft()[1])
            self._pending.append((time.monotonic() + self._linger, sock))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bridge-server-lingerer", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                if self._stopped:
                    return
                pending = list(self._pending)
            now = time.monotonic()
            done = {sock for due, sock in pending if _drained(sock) or due <= now}
            with self._lock:
                self._pending = deque(p for p in self._pending if p[1] not in done)
                for sock in done:
                    _close(sock)
                if not self._pending:
                    self._wake.clear()
            time.sleep(0.05)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            while self._pending:
                _close(self._pending.popleft()[1])
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _drained(sock: socket.socket) -> bool:
    """Reads (a bounded amount of) what waits, without blocking; True once the client has closed
    its side."""
    try:
        for _ in range(16):
            if not sock.recv(65536):
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return False


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default of 5 pending connections makes a burst of simultaneous deliveries
    # (several action groups, Azure's retries) wait a second for the kernel to retry the SYN.
    request_queue_size = 64
    api: _Handles
    header_timeout: float
    body_timeout: float
    write_timeout: float

    def __init__(self, address: tuple[str, int], max_connections: int) -> None:
        # Before binding: a failed bind calls server_close(), which stops the lingerer.
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lingerer = _Lingerer()
        self._busy_since_warning = 0
        self._busy_warned_at = -float("inf")
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        """503 at once, from the accepting thread: a fresh socket's send buffer takes these few
        bytes without waiting (and a short timeout guards it); then the lingerer closes it."""
        try:
            request.settimeout(0.5)
            request.sendall(_BUSY)
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
        except OSError:
            _close(request)
            return
        self._busy_since_warning += 1
        if time.monotonic() - self._busy_warned_at >= 10:  # a flood makes one line per 10 s, not one each
            logger.warning(
                "all %d connections are being served: %d more answered 503",
                self.max_connections, self._busy_since_warning,
            )
            self._busy_warned_at, self._busy_since_warning = time.monotonic(), 0
        self._lingerer.add(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away is no error of the server's; anything else is logged, not printed.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self._lingerer.stop()


class BridgeServer:
    """The API on ``host:port`` (port 0 picks a free one), served from a background thread.

    ``max_connections`` connections are served at once (one thread each); more are answered 503
    at once. A connection's request line and headers must arrive within ``header_timeout``
    seconds (an idle keep-alive connection is closed then), its body within ``body_timeout``.
    """

    def __init__(
        self,
        api: _Handles,
        host: str = "127.0.0.1",
        port: int = 7071,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
        body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT_SECONDS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._httpd = _Server((host, port), max_connections)
        self._httpd.api = api
        self._httpd.header_timeout = header_timeout
        self._httpd.body_timeout = body_timeout
        self._httpd.write_timeout = write_timeout
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
