"""Fixtures for the integration suite: the sandbox stand-ins and the bridge's local server, on loopback.

One :class:`~bridge.sandbox.stack.SandboxStack` (ServiceNow and Entra ID stand-ins) serves the whole
session; every test starts from the seeded records with no faults and an empty request log. The
bridge under test is a real :class:`~bridge.server.BridgeServer` on port 0, also one per session,
in front of the API the test built (by default a runtime from the stack's settings, with back-off
waits recorded in ``sleeps`` instead of slept). Every runtime gets its own SQLite state file in the
test's temporary directory, unless the test passes ``STATE_SQLITE_PATH`` to share one on purpose.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.api import ApiRequest, ApiResponse, BridgeApi, UnavailableApi, error
from bridge.reconcile import Reconciler
from bridge.runtime import Runtime, build_runtime
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import SandboxStack
from bridge.server import BridgeServer
from tests.kit import OffsetClock as FakeClock

__all__ = [
    "CLIENT_TIMEOUT_SECONDS",
    "FakeClock",
    "LocalBridge",
    "MakeRuntime",
    "StartBridge",
    "client_session",
]

# Loopback answers in milliseconds; this only stops a hung test from hanging the suite.
CLIENT_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class LocalBridge:
    """A running local server, the API behind it (and its runtime), and a client session pointed at it."""

    url: str
    api: BridgeApi | UnavailableApi
    http: requests.Session
    stack: SandboxStack
    runtime: Runtime | None = None

    @property
    def reconciler(self) -> Reconciler:
        assert self.runtime is not None, "this bridge was started from a bare API"
        return self.runtime.reconciler

    def post_alert(
        self,
        payload: Mapping[str, Any] | bytes,
        *,
        token: str | None = None,
        with_token: bool = True,
    ) -> requests.Response:
        """POST one alert as an action group does; a good sandbox v2 token unless told otherwise."""
        headers = {"Content-Type": "application/json"}
        if with_token:
            headers["Authorization"] = f"Bearer {token if token is not None else self.stack.token()}"
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        return self.http.post(
            f"{self.url}/api/alerts", data=body, headers=headers, timeout=CLIENT_TIMEOUT_SECONDS
        )


StartBridge = Callable[..., LocalBridge]
MakeRuntime = Callable[..., Runtime]


class SwitchableApi:
    """What the session's server serves: the API the current test installed, passed through as is.

    One server for the whole session because stopping a ``BridgeServer`` waits out its
    ``serve_forever`` poll interval and closes sockets; once per session keeps the suite fast.
    """

    def __init__(self) -> None:
        self.current: BridgeApi | UnavailableApi | None = None

    def handle(self, request: ApiRequest) -> ApiResponse:
        api = self.current
        if api is None:
            return error(503, "unavailable", "no API installed by the test")
        return api.handle(request)


def client_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never route through a proxy from the environment
    return session


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxStack]:
    with SandboxStack() as stack:
        yield stack


@pytest.fixture
def snow(sandbox: SandboxStack) -> Iterator[ServiceNowStandIn]:
    """The ServiceNow stand-in, back to its seeded CMDB, with no faults and an empty request log."""
    sandbox.servicenow.reset()
    yield sandbox.servicenow
    sandbox.servicenow.faults.clear()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_runtime(sandbox: SandboxStack, sleeps: list[float], tmp_path: Path) -> Iterator[MakeRuntime]:
    """``make_runtime(**env_overrides)``: a runtime from the sandbox settings, closed after the test.

    Each gets a fresh SQLite state file unless ``STATE_SQLITE_PATH`` is among the overrides.
    """
    numbers = itertools.count(1)
    built: list[Runtime] = []

    def _make(**overrides: str) -> Runtime:
        overrides.setdefault("STATE_SQLITE_PATH", str(tmp_path / f"state-{next(numbers)}.sqlite3"))
        runtime = build_runtime(sandbox.bridge_env(**overrides), sleep=sleeps.append)
        built.append(runtime)
        return runtime

    try:
        yield _make
    finally:
        for runtime in built:
            runtime.close()


@pytest.fixture(scope="session")
def local_server() -> Iterator[tuple[BridgeServer, SwitchableApi]]:
    front = SwitchableApi()
    with BridgeServer(front, port=0) as server:
        yield server, front


@pytest.fixture
def start_bridge(
    sandbox: SandboxStack,
    snow: ServiceNowStandIn,
    make_runtime: MakeRuntime,
    local_server: tuple[BridgeServer, SwitchableApi],
) -> Iterator[StartBridge]:
    """``start_bridge(api=None, **env_overrides)``: the local server, now serving ``api``.

    ``api`` may be a :class:`Runtime` (served with its outbox at hand) or a bare API. Without it, a
    fresh runtime built from the sandbox settings plus ``env_overrides``, with its own state file.
    A second call replaces the API the server serves (one test may compare several settings).
    """
    server, front = local_server
    with ExitStack() as cleanup:

        def _start(api: Runtime | BridgeApi | UnavailableApi | None = None, **overrides: str) -> LocalBridge:
            runtime: Runtime | None = None
            served: BridgeApi | UnavailableApi
            if api is None:
                runtime = make_runtime(**overrides)
                served = runtime.api
            elif isinstance(api, Runtime):
                runtime, served = api, api.api
            else:
                served = api
            front.current = served
            http = cleanup.enter_context(client_session())
            return LocalBridge(server.url, served, http, sandbox, runtime)

        try:
            yield _start
        finally:
            front.current = None


@pytest.fixture
def bridge(start_bridge: StartBridge) -> LocalBridge:
    return start_bridge()
