"""What every sandbox stand-in needs, whatever service it imitates.

A stand-in (:mod:`bridge.sandbox.servicenow`, :mod:`bridge.sandbox.jira`) is a real HTTP server on
loopback that behaves like the service where a client has to cope with it. The parts that do not
depend on the service live here:

* :class:`FaultInjector` and :class:`FaultRule` (kinds in :data:`FAULT_KINDS`): latency, error
  statuses, dropped connections and lost responses, matched by method and path, a number of times
  or with a seeded probability. :func:`fault_response` renders a status fault, with an error body
  built by the stand-in, so a 429 looks like the imitated service's 429.
* :class:`RequestRecord`: one entry of a stand-in's request log (:func:`auth_scheme` names the
  credential kind presented, never the credential; :func:`json_or_none` keeps a JSON body).
* :class:`Response`: what a stand-in's request handler answers.
* :class:`LoopbackStandIn`: the base class of a stand-in. It owns the threaded loopback server
  (:class:`LoopbackServer`, which tracks its connections so ``stop()`` is prompt), the lifecycle
  (``start``/``stop``, context manager, ``url``, same port after a restart), the fault injector,
  the request log, and the flow of every request (:class:`LoopbackHandler`): read the body, take
  the fault plan, sleep the latency, then drop, answer the fault status, or handle (and drop the
  answer for ``commit_then_drop``), and log the request before the client can see the outcome.
  A subclass implements ``_handle`` (the service itself), ``_fault_body`` and ``_internal_error``.
"""

from __future__ import annotations

import abc
import http
import json
import logging
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FAULT_KINDS",
    "FaultInjector",
    "FaultPlan",
    "FaultRule",
    "LoopbackHandler",
    "LoopbackServer",
    "LoopbackStandIn",
    "RequestRecord",
    "Response",
    "auth_scheme",
    "fault_response",
    "json_or_none",
    "serve_until_stopped",
    "status_phrase",
]

logger = logging.getLogger(__name__)

FAULT_KINDS = ("latency", "status", "drop", "commit_then_drop")


# --------------------------------------------------------------------------------------------
# Responses and the request log


@dataclass(frozen=True)
class Response:
    """An answer: status, body bytes, and headers in the order they are sent."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of_json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        extra = tuple((headers or {}).items())
        content = (("Content-Type", "application/json;charset=UTF-8"),)
        return cls(status, json.dumps(payload).encode("utf-8"), content + extra)

    @classmethod
    def of_text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
        extra = tuple((headers or {}).items())
        content = (("Content-Type", "text/plain;charset=UTF-8"),)
        return cls(status, text.encode("utf-8"), content + extra)


@dataclass(frozen=True)
class RequestRecord:
    """One request a stand-in saw. Never holds credentials, tokens or form bodies.

    ``status`` is None when the connection was dropped without an answer; ``auth`` is the
    scheme presented (``"basic"``, ``"bearer"`` or None), valid or not; ``body`` is the JSON
    body of an API request (None otherwise; each stand-in says which paths it keeps);
    ``fault`` names the fault applied, if any.
    """

    method: str
    path: str
    query: Mapping[str, str]
    status: int | None
    auth: str | None
    body: Any = None
    fault: str | None = None


def json_or_none(body: bytes) -> Any:
    """The JSON value of a request body, or None when it is empty or not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def auth_scheme(header: str | None) -> str | None:
    """The scheme of an Authorization header, for the request log (never the credential)."""
    scheme = (header or "").partition(" ")[0].lower()
    return scheme if scheme in ("basic", "bearer") else None


def status_phrase(status: int) -> str:
    """``Too Many Requests`` for 429; ``HTTP 599`` for a status without a standard phrase."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


# --------------------------------------------------------------------------------------------
# Fault injection


@dataclass(frozen=True)
class FaultRule:
    """One fault: what to do (``kind``) to which requests (``method``, ``path`` regex)."""

    kind: str
    method: str | None = None
    path: str | None = None
    times: int | None = None
    seconds: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    body: Mapping[str, Any] | str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    probability: float = 1.0

    def applies_to(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass(frozen=True)
class FaultPlan:
    """The faults one request gets: total latency, and at most one other rule (``action``)."""

    latency: float = 0.0
    action: FaultRule | None = None


class FaultInjector:
    """Thread-safe fault rules, consulted for every request before it is handled.

    ``add(kind, *, method=None, path=None, times=None, seconds=0.0, status=None,
    retry_after=None, body=None, headers=None, probability=1.0) -> FaultRule`` adds a rule.
    ``method`` matches the HTTP method (any when None); ``path`` is a regex searched in the URL
    path (any when None); ``times`` is how many matching requests it applies to (always when
    None); ``probability`` is the chance it applies to each matching request (drawn from a
    generator seeded with ``FaultInjector(seed=...)``, so a chaos run can be repeated). Kinds:

    * ``"latency"``: sleep ``seconds`` before handling; combines with any other fault.
    * ``"status"``: answer ``status`` without handling the request, with ``Retry-After:
      retry_after`` when given and ``body`` (a JSON object or text; default the stand-in's own
      error body) plus ``headers``.
    * ``"drop"``: close the connection without answering; nothing is handled.
    * ``"commit_then_drop"``: handle the request (a write is committed), then close the
      connection without sending the response.

    Of the non-latency rules, the oldest matching one wins; only the rules applied use up a
    ``times``. Shorthands: ``latency(seconds, ...)``, ``status(status, ...)``, ``drop(...)``,
    ``commit_then_drop(...)``. ``fired(rule)`` counts how often a rule was applied;
    ``clear()`` removes every rule.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)  # noqa: S311 - fault dice, not secrets
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._remaining: dict[int, int | None] = {}
        self._fired: dict[int, int] = {}

    def add(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int | None = None,
        seconds: float = 0.0,
        status: int | None = None,
        retry_after: float | None = None,
        body: Mapping[str, Any] | str | None = None,
        headers: Mapping[str, str] | None = None,
        probability: float = 1.0,
    ) -> FaultRule:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if kind == "status" and (status is None or not 100 <= status <= 599):
            raise ValueError("a 'status' fault needs an HTTP status between 100 and 599")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for always")
        if path is not None:
            re.compile(path)  # fail here, not inside a request thread
        rule = FaultRule(
            kind, method, path, times, seconds, status, retry_after, body, dict(headers or {}), probability
        )
        with self._lock:
            self._rules.append(rule)
            self._remaining[id(rule)] = times
            self._fired[id(rule)] = 0
        return rule

    def latency(self, seconds: float, **match: Any) -> FaultRule:
        return self.add("latency", seconds=seconds, **match)

    def status(self, status: int, **options: Any) -> FaultRule:
        return self.add("status", status=status, **options)

    def drop(self, **match: Any) -> FaultRule:
        return self.add("drop", **match)

    def commit_then_drop(self, **match: Any) -> FaultRule:
        return self.add("commit_then_drop", **match)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._remaining.clear()
            self._fired.clear()

    @property
    def rules(self) -> list[FaultRule]:
        """The rules still able to fire, oldest first."""
        with self._lock:
            return [rule for rule in self._rules if self._remaining[id(rule)] != 0]

    def fired(self, rule: FaultRule) -> int:
        with self._lock:
            return self._fired.get(id(rule), 0)

    def take(self, method: str, path: str) -> FaultPlan:
        """Pick the faults for one request and use up their ``times``."""
        latency = 0.0
        action: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if self._remaining[id(rule)] == 0 or not rule.applies_to(method, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if rule.kind == "latency":
                    latency += rule.seconds
                elif action is None:
                    action = rule
                else:
                    continue
                remaining = self._remaining[id(rule)]
                self._remaining[id(rule)] = None if remaining is None else remaining - 1
                self._fired[id(rule)] += 1
        return FaultPlan(latency, action)


def fault_response(rule: FaultRule, error_body: Callable[[int], Any]) -> Response:
    """The answer to a ``status`` fault.

    ``error_body(status)`` builds the JSON body when the rule brings none, so each stand-in
    answers an injected 429 or 503 in its service's own error shape.
    """
    status = rule.status or 503
    headers = dict(rule.headers)
    if rule.retry_after is not None:
        seconds = rule.retry_after
        headers["Retry-After"] = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
    if isinstance(rule.body, str):
        return Response.of_text(status, rule.body, headers)
    if rule.body is not None:
        return Response.of_json(status, dict(rule.body), headers)
    return Response.of_json(status, error_body(status), headers)


# --------------------------------------------------------------------------------------------
# The loopback server


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows its open connections, so a stop is prompt."""

    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent clients must not overflow the listen backlog

    def __init__(self, address: tuple[str, int], standin: LoopbackStandIn) -> None:
        self.standin = standin
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, LoopbackHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads idling on keep-alive connections so stop() is prompt."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackHandler(BaseHTTPRequestHandler):
    """The flow of every request: faults first, then the stand-in's ``_handle``, then the log."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the real services offer
    timeout = 30  # idle keep-alive connections are closed after this
    # Headers and body leave in one segment: without this, Nagle's algorithm and the client's
    # delayed ACK add ~40 ms to every response.
    wbufsize = -1
    disable_nagle_algorithm = True
    server: LoopbackServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def version_string(self) -> str:
        return self.server.standin.server_header

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        standin = self.server.standin
        parts = urlsplit(self.path)
        path = parts.path
        query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self._read_body()
        auth = auth_scheme(self.headers.get("Authorization"))
        logged_body = standin._loggable_body(path, body)

        def record(status: int | None, fault: str | None) -> None:
            standin._log(RequestRecord(self.command, path, query, status, auth, logged_body, fault))

        plan = standin.faults.take(self.command, path)
        if plan.latency > 0:
            time.sleep(plan.latency)
        action = plan.action
        # Each request is logged before the client can see its outcome, so a test that has its
        # response (or its ConnectionError) always finds it in the log.
        if action is not None and action.kind == "drop":
            record(None, "drop")
            self._drop()
            return
        if action is not None and action.kind == "status":
            response = fault_response(action, standin._fault_body)
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                # Looked up on the instance at each request, so a test can patch it.
                response = standin._handle(self.command, path, query, headers, body)
            except Exception:
                # A stand-in bug must look like the service's 500, not a dropped connection.
                logger.exception("%s stand-in failed on %s %s", standin.display_name, self.command, path)
                response = standin._internal_error()
        if action is not None and action.kind == "commit_then_drop":
            record(None, "commit_then_drop")
            self._drop()
            return
        record(response.status, action.kind if action is not None else None)
        self._send(response)

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.status != 204:
            self.wfile.write(response.body)


# --------------------------------------------------------------------------------------------
# The stand-in base


class LoopbackStandIn(abc.ABC):
    """A stand-in's lifecycle, fault injector and request log; subclasses serve the API.

    ``start()`` returns self; ``stop()`` shuts down promptly (idle keep-alive connections are
    closed) and is idempotent; a ``stop()`` then ``start()`` comes back on the same port; it is a
    context manager too. ``url`` is the base URL (``http://127.0.0.1:54321``); ``running`` says
    whether it serves; ``faults`` is a :class:`FaultInjector`; ``requests`` is the request log (a
    list of :class:`RequestRecord`).

    A subclass sets ``display_name`` (used in messages, logs and the thread name) and
    ``server_header``, and implements:

    * ``_handle(method, path, query, headers, body) -> Response``: answer one request;
      ``headers`` has lower-case names; exceptions become ``_internal_error()``.
    * ``_fault_body(status)``: the JSON error body of an injected status fault.
    * ``_internal_error()``: the answer when ``_handle`` raises (a stand-in bug).
    * optionally ``_loggable_body(path, body)``: what the log keeps of a request body.
    """

    # Plain class attributes, not ClassVars: a stand-in may set them per instance (Jira's Server
    # header differs between Cloud and Data Center).
    display_name: str = "sandbox"
    server_header: str = "sandbox"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self.faults = FaultInjector()
        self._log_lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"the {self.display_name} stand-in is already running")
        server = LoopbackServer((self._host, self._port), self)
        # A short poll interval keeps stop() prompt.
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.display_name.lower()}-standin",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        # A stop() then start() comes back on the same port: an outage, not a move.
        self._port = server.server_address[1]
        logger.debug("%s stand-in listening on %s", self.display_name, self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {self.display_name} stand-in is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- request log ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._requests)

    def _clear_requests(self) -> None:
        with self._log_lock:
            self._requests.clear()

    def _log(self, record: RequestRecord) -> None:
        logger.debug("%s %s %s -> %s", self.display_name, record.method, record.path, record.status)
        with self._log_lock:
            self._requests.append(record)

    # -- what a subclass provides --------------------------------------------------------

    @abc.abstractmethod
    def _handle(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Answer one request; ``headers`` has lower-case names."""

    @abc.abstractmethod
    def _fault_body(self, status: int) -> Any:
        """The JSON body of an injected status fault that brings no body of its own."""

    @abc.abstractmethod
    def _internal_error(self) -> Response:
        """The answer when ``_handle`` raised: the service's own 500."""

    def _loggable_body(self, path: str, body: bytes) -> Any:
        """What the request log keeps of a body: its JSON value, by default."""
        return json_or_none(body)


def serve_until_stopped(standin: LoopbackStandIn, banner: Sequence[str]) -> int:
    """Run a started stand-in until Ctrl-C or SIGTERM (a stand-in's ``python -m`` entry point)."""
    stopping = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # Printed inside the try: with unbuffered output a reader can see the URL and press Ctrl-C
        # before the banner is complete, and that must still stop cleanly.
        for line in banner:
            print(line)
        print("Press Ctrl-C to stop.", flush=True)
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    print("stopped", flush=True)
    return 0
