"""The local server's transport: what reaches the API, and what it refuses before reading."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

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
