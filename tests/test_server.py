"""The local server's transport: what reaches the API, and what it refuses before reading."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pytest

from bridge.api import MAX_BODY_BYTES, ApiRequest, ApiResponse
from bridge.server import BridgeServer


class RecordingApi:
    def __init__(self) -> None:
        self.requests: list[ApiRequest] = []

    def handle(self, request: ApiRequest) -> ApiResponse:
        self.requests.append(request)
        return ApiResponse(200, {"seen": len(request.body)}, {"X-Test": "yes"})


@pytest.fixture
def served() -> Iterator[tuple[RecordingApi, http.client.HTTPConnection]]:
    api = RecordingApi()
    with BridgeServer(api, port=0) as server:
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        yield api, conn
        conn.close()


def test_repeated_headers_are_joined_like_the_functions_host(
    served: tuple[RecordingApi, http.client.HTTPConnection],
) -> None:
    api, conn = served
    conn.putrequest("POST", "/api/alerts?code=ignored")
    conn.putheader("Authorization", "Bearer first")
    conn.putheader("Authorization", "Bearer second")
    conn.putheader("Content-Length", "2")
    conn.endheaders(b"{}")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("X-Test") == "yes"
    assert json.loads(response.read()) == {"seen": 2}
    request = api.requests[0]
    assert (request.method, request.path, request.body) == ("POST", "/api/alerts", b"{}")
    assert request.headers["authorization"] == "Bearer first, Bearer second"


def test_an_oversized_body_is_refused_unread(served: tuple[RecordingApi, http.client.HTTPConnection]) -> None:
    api, conn = served
    conn.putrequest("POST", "/api/alerts")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()  # no body sent: the server must answer without waiting for it
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "payload_too_large"
    assert response.getheader("Connection") == "close"
    assert api.requests == []


@pytest.mark.parametrize("length", ["abc", "-5"])
def test_a_bad_content_length_is_400(served: tuple[RecordingApi, http.client.HTTPConnection], length: str) -> None:
    api, conn = served
    conn.putrequest("POST", "/api/alerts")
    conn.putheader("Content-Length", length)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"]["code"] == "invalid_payload"
    assert api.requests == []


# --- framing, deadlines and the connection cap, over raw sockets ---------------------------------
#
# Raw sockets, because every case here is something a well-behaved client library never sends.


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[RecordingApi, int]]]:
    """``start(**limits)``: a server on a free port with those limits; its API and port."""
    servers: list[BridgeServer] = []

    def _start(**limits: Any) -> tuple[RecordingApi, int]:
        api = RecordingApi()
        server = BridgeServer(api, port=0, **limits).start()
        servers.append(server)
        return api, int(server.url.rsplit(":", 1)[1])

    yield _start
    for server in servers:
        server.stop()


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from a connection's stream (status, lower-cased headers, body)."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw)
        return read_response(stream)


def post(body_framing: str, body: bytes = b"") -> bytes:
    return f"POST /api/alerts HTTP/1.1\r\nHost: bridge\r\n{body_framing}\r\n".encode() + body


def closed_by_server(sock: socket.socket, within: float, trickle: bytes | None = None) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (bounded loop), the client
    sending one byte of ``trickle`` every 0.1 s meanwhile when given."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + within
    sent = 0
    while time.monotonic() < deadline:
        try:
            if trickle is not None and sent < len(trickle):
                sock.send(trickle[sent:sent + 1])
                sent += 1
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed as well
            return True
    return False


def test_a_chunked_body_is_read_whole_and_the_connection_stays_in_step(
    start: Callable[..., tuple[RecordingApi, int]],
) -> None:
    api, port = start()
    chunks = b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    chunked = post("Transfer-Encoding: chunked\r\n", chunks)
    with connect(port) as sock, sock.makefile("rb") as stream:
        # Before, the chunk bytes were parsed as the next request; now the GET after is the next.
        sock.sendall(chunked + b"GET /api/health HTTP/1.1\r\nHost: bridge\r\n\r\n")
        first, second = read_response(stream), read_response(stream)
    assert (first[0], json.loads(first[2])) == (200, {"seen": 11})
    assert second[0] == 200
    assert [(r.method, r.body) for r in api.requests] == [("POST", b"hello world"), ("GET", b"")]


def test_a_chunked_body_over_the_limit_is_413_unread(start: Callable[..., tuple[RecordingApi, int]]) -> None:
    api, port = start()
    status, headers, body = exchange(port, post("Transfer-Encoding: chunked\r\n", b"100001\r\n"))
    assert (status, json.loads(body)["error"]["code"], headers["connection"]) == (413, "payload_too_large", "close")
    assert api.requests == []


@pytest.mark.parametrize(
    "framing, body",
    [
        ("Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),
        ("Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
    ],
    ids=["size-not-hex", "negative-size", "no-crlf-after-data", "bare-lf", "other-coding", "twice", "with-length"],
)
def test_malformed_or_ambiguous_framing_is_400_and_closes(
    start: Callable[..., tuple[RecordingApi, int]], framing: str, body: bytes
) -> None:
    api, port = start()
    status, headers, answer = exchange(port, post(framing, body))
    assert (status, json.loads(answer)["error"]["code"], headers["connection"]) == (400, "invalid_payload", "close")
    assert api.requests == []


@pytest.mark.parametrize(
    "headers",
    ["Content-Length: 1_0\r\n", "Content-Length: +10\r\n", "Content-Length: 10, 10\r\n",
     "Content-Length: 10\r\nContent-Length: 10\r\n", "Content-Length: \x0b10\r\n", "Content-Length: 1 0\r\n",
     "Content-Length: 0x0a\r\n", "Content-Length: 10.0\r\n", "Content-Length: 10\r\n 0\r\n"],
    ids=["underscore", "plus", "list", "twice", "vertical-tab", "inner-space", "hex", "decimal", "folded"],
)
def test_content_length_must_be_digits_only(start: Callable[..., tuple[RecordingApi, int]], headers: str) -> None:
    api, port = start()
    status, answer_headers, answer = exchange(port, post(headers, b"0123456789"))
    assert (status, json.loads(answer)["error"]["code"]) == (400, "invalid_payload")
    assert answer_headers["connection"] == "close"
    assert api.requests == []


def test_content_length_with_the_whitespace_http_allows_around_it_is_read(
    start: Callable[..., tuple[RecordingApi, int]],
) -> None:
    # "Content-Length:  10 " is valid HTTP (optional whitespace around the value), and the
    # Functions host takes it: so does the local server. Leading zeros are digits too.
    api, port = start()
    assert exchange(port, post("Content-Length:  10 \r\n", b"0123456789"))[0] == 200
    assert exchange(port, post("Content-Length: 0010\r\n", b"0123456789"))[0] == 200
    assert [r.body for r in api.requests] == [b"0123456789", b"0123456789"]


def test_slow_clients_are_cut_off_and_do_not_hold_up_a_normal_request(
    start: Callable[..., tuple[RecordingApi, int]],
) -> None:
    api, port = start(max_connections=16, header_timeout=1.0, body_timeout=1.0)
    slow = [connect(port) for _ in range(6)]
    try:
        for sock in slow[:3]:
            sock.sendall(b"POST /api/alerts HTTP/1.1\r\nHo")  # headers that never finish
        for sock in slow[3:]:
            sock.sendall(post("Content-Length: 100\r\n", b"{}"))  # a body that never comes
        assert exchange(port, post("Content-Length: 2\r\n", b"{}"))[0] == 200  # served meanwhile

        # A client trickling a byte at a time is cut off at the header deadline all the same.
        assert closed_by_server(slow[0], within=5.0, trickle=b"st: bridge\r\nX-Slow: " + b"." * 100)
        for sock in slow[1:3]:
            assert closed_by_server(sock, within=5.0)
        for sock in slow[3:]:
            with sock.makefile("rb") as stream:
                status, headers, body = read_response(stream)
            assert (status, json.loads(body)["error"]["code"], headers["connection"]) == (
                408, "request_timeout", "close")
    finally:
        for sock in slow:
            sock.close()
    assert len(api.requests) == 1


def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout(
    start: Callable[..., tuple[RecordingApi, int]],
) -> None:
    _, port = start(header_timeout=1.0)
    with connect(port) as sock, sock.makefile("rb") as stream:
        sock.sendall(post("Content-Length: 2\r\n", b"{}"))
        assert read_response(stream)[0] == 200
        assert closed_by_server(sock, within=5.0)


def test_connections_beyond_the_cap_get_a_quick_503_and_service_resumes(
    start: Callable[..., tuple[RecordingApi, int]],
) -> None:
    api, port = start(max_connections=4, header_timeout=30.0)
    silent = [connect(port) for _ in range(100)]  # connect and never send: each would hold a thread
    try:
        started = time.monotonic()
        status, headers, body = exchange(port, post("Content-Length: 2\r\n", b"{}"))
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        assert json.loads(body)["error"]["code"] == "unavailable"
        assert time.monotonic() - started < 5.0  # answered, not left waiting behind the silent ones
        assert threading.active_count() < 50  # four connection threads, not a hundred
    finally:
        for sock in silent:
            sock.close()
    # The silent connections gone, their threads end and a normal request is served again.
    deadline = time.monotonic() + 10.0
    while (status := exchange(port, post("Content-Length: 2\r\n", b"{}"))[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200
    assert len(api.requests) == 1
