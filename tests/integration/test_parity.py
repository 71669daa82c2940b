"""The two front doors answer alike: the Azure Function entry point and the local server.

The same request goes to ``function_app``'s user functions (``func.HttpRequest`` in, after
``runtime.install``) and over loopback HTTP to the local :class:`~bridge.server.BridgeServer`,
each front door with a runtime built from the same settings but its own SQLite state file (so
neither sees the other's deliveries as redeliveries), against the same ServiceNow and Entra ID
stand-ins. Status, JSON body and the API's own headers (``WWW-Authenticate``, ``Retry-After``)
must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import pytest

from bridge import __version__, runtime
from bridge.api import MAX_BODY_BYTES, BridgeApi, UnavailableApi
from bridge.runtime import Runtime
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import SandboxStack, load_sample

from .conftest import CLIENT_TIMEOUT_SECONDS, LocalBridge, MakeRuntime, StartBridge

pytestmark = pytest.mark.integration

UserFunctions = dict[str, Callable[[func.HttpRequest], Any]]
Install = Callable[[Runtime | BridgeApi | UnavailableApi], None]
# The headers BridgeApi itself sets; transport headers (Date, Server, ...) differ by design.
API_HEADERS = ("www-authenticate", "retry-after")
METRIC = "metric_static_fired.testaction.json"
OTHER_SUBSCRIPTION = "22222222-2222-2222-2222-222222222222"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def _api_headers(headers: Mapping[str, str]) -> dict[str, str]:
    lowered = {name.lower(): value for name, value in headers.items()}
    return {name: lowered[name] for name in API_HEADERS if name in lowered}


@pytest.fixture
def installed() -> Iterator[Install]:
    """Make a runtime (or a bare API) the Function's process-wide one; forget it afterwards."""

    def _install(what: Runtime | BridgeApi | UnavailableApi) -> None:
        if isinstance(what, Runtime):
            runtime.install(what.api, what)
        else:
            runtime.install(what)

    yield _install
    runtime.reset()


@dataclass(frozen=True)
class FrontDoors:
    user_functions: UserFunctions
    bridge: LocalBridge

    def function(self, method: str, route: str, headers: Mapping[str, str], body: bytes,
                 params: Mapping[str, str] | None = None) -> Answer:
        # As the host hands it over: the URL with its query, and the query parsed into params.
        query = f"?{urlencode(params)}" if params else ""
        request = func.HttpRequest(method=method, url=f"/api/{route}{query}", headers=dict(headers), body=body,
                                   params=dict(params or {}))
        response: func.HttpResponse = self.user_functions[route](request)
        return Answer(response.status_code, json.loads(response.get_body()), _api_headers(response.headers))

    def server(self, method: str, route: str, headers: Mapping[str, str], body: bytes,
               params: Mapping[str, str] | None = None) -> Answer:
        response = self.bridge.http.request(
            method, f"{self.bridge.url}/api/{route}", headers=dict(headers), data=body, params=params,
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
        assert response.headers["Content-Type"].startswith("application/json")
        return Answer(response.status_code, response.json(), _api_headers(response.headers))

    def both(self, method: str, route: str, headers: Mapping[str, str], body: bytes,
             params: Mapping[str, str] | None = None) -> tuple[Answer, Answer]:
        return (self.function(method, route, headers, body, params),
                self.server(method, route, headers, body, params))


@pytest.fixture
def doors(
    user_functions: UserFunctions,
    start_bridge: StartBridge,
    make_runtime: MakeRuntime,
    installed: Install,
) -> Callable[..., FrontDoors]:
    """``doors(**env_overrides)``: the same sandbox settings behind both front doors, each with its
    own runtime and state file."""

    def _doors(**overrides: str) -> FrontDoors:
        bridge = start_bridge(**overrides)
        function_runtime = make_runtime(**overrides)
        assert bridge.runtime is not None
        assert bridge.runtime.reconciler.store is not function_runtime.reconciler.store
        installed(function_runtime)
        return FrontDoors(user_functions, bridge)

    return _doors


def alert_headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def encoded(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


def wrong_schema() -> dict[str, Any]:
    payload = load_sample(METRIC)
    payload["schemaId"] = "AzureMonitorMetricAlert"
    return payload


# case -> (token options or None for no token, body builder)
DETERMINISTIC: dict[str, tuple[dict[str, Any] | None, Callable[[], bytes]]] = {
    "ignored-resolved": ({}, lambda: encoded(load_sample("metric_static_resolved.json"))),
    "no-token": (None, lambda: encoded(load_sample(METRIC))),
    "forged-token": ({"unpublished_key": True}, lambda: encoded(load_sample(METRIC))),
    "no-role": ({"roles": ()}, lambda: encoded(load_sample(METRIC))),
    "bad-json": ({}, lambda: b'{"schemaId": "azureMonitorCommonAlertSchema", '),
    "wrong-schema": ({}, lambda: encoded(wrong_schema())),
    "too-large": ({}, lambda: b" " * (MAX_BODY_BYTES + 1)),
}
EXPECTED_STATUS = {
    "ignored-resolved": 200,
    "no-token": 401,
    "forged-token": 401,
    "no-role": 403,
    "bad-json": 400,
    "wrong-schema": 400,
    "too-large": 413,
}


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
def test_same_answer_for_the_same_alert_request(
    case: str, doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn
) -> None:
    token_options, body = DETERMINISTIC[case]
    headers = alert_headers(None if token_options is None else sandbox.token(**token_options))

    via_function, via_server = doors().both("POST", "alerts", headers, body())

    assert via_function == via_server
    assert via_server.status == EXPECTED_STATUS[case]
    if via_server.status == 401:
        assert via_server.headers == {"www-authenticate": 'Bearer error="invalid_token"'}
    else:
        assert via_server.headers == {}
    assert snow.records("incident") == []


def test_same_403_for_an_alert_from_a_subscription_not_allowed(
    doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn
) -> None:
    front = doors(ALLOWED_SUBSCRIPTION_IDS=OTHER_SUBSCRIPTION)

    via_function, via_server = front.both(
        "POST", "alerts", alert_headers(sandbox.token()), encoded(load_sample(METRIC))
    )

    assert via_function == via_server
    assert via_server.status == 403
    assert via_server.body["error"]["code"] == "forbidden"
    assert "11111111-1111-1111-1111-111111111111" in via_server.body["error"]["message"]
    assert snow.requests == []


def test_same_health_answer(doors: Callable[..., FrontDoors]) -> None:
    via_function, via_server = doors().both("GET", "health", {}, b"")

    assert via_function == via_server
    assert via_server == Answer(200, {"status": "ok", "version": __version__, "adapter": "servicenow"}, {})


DEEP = {"deep": "1"}


def timeless(answer: Answer) -> Answer:
    """The deep health answer without each check's duration (the one thing that may differ)."""
    body = json.loads(json.dumps(answer.body))
    for check in body.get("checks", {}).values():
        assert isinstance(check.pop("ms", 0), int)
    return Answer(answer.status, body, answer.headers)


def test_same_deep_health_answer(doors: Callable[..., FrontDoors]) -> None:
    via_function, via_server = doors().both("GET", "health", {}, b"", DEEP)

    assert timeless(via_function) == timeless(via_server)
    assert via_server.status == 200
    assert via_server.body["status"] == "ok"
    assert {name: check["state"] for name, check in via_server.body["checks"].items()} == {
        "settings": "ok", "key_vault_references": "ok", "signing_keys": "ok", "itsm_credential": "ok",
        "state_store": "ok", "outbox": "ok",
    }


def test_same_deep_health_while_servicenow_refuses_the_credential(
    doors: Callable[..., FrontDoors], snow: ServiceNowStandIn
) -> None:
    front = doors()
    snow.faults.status(401, method="POST", path="^/oauth_token.do$",
                       body={"error": "invalid_client", "error_description": "Client authentication failed"})

    via_function, via_server = front.both("GET", "health", {}, b"", DEEP)

    assert timeless(via_function) == timeless(via_server)
    assert via_server.body["status"] == "degraded"
    assert via_server.body["checks"]["itsm_credential"]["state"] == "failed"
    assert "sandbox-secret" not in json.dumps(via_server.body)


def test_same_created_answer_once_the_new_incident_id_is_normalised(
    doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn
) -> None:
    front = doors()
    body = encoded(load_sample(METRIC))

    via_function = front.function("POST", "alerts", alert_headers(sandbox.token()), body)
    function_incident = snow.records("incident")
    snow.reset()  # same seed, same incident numbering: the server's create is the first one again
    via_server = front.server("POST", "alerts", alert_headers(sandbox.token()), body)
    server_incident = snow.records("incident")

    assert len(function_incident) == len(server_incident) == 1
    assert via_function.body["workItem"]["id"] == function_incident[0]["sys_id"]
    assert via_server.body["workItem"]["id"] == server_incident[0]["sys_id"]

    def normalised(answer: Answer, sys_id: str) -> Answer:
        text = json.dumps(answer.body).replace(sys_id, "<sys_id>")
        return Answer(answer.status, json.loads(text), answer.headers)

    assert normalised(via_function, function_incident[0]["sys_id"]) == normalised(
        via_server, server_incident[0]["sys_id"]
    )
    assert via_server.status == 200
    assert via_server.body["action"] == "created"
    assert via_server.body["workItem"]["number"] == "INC0010001"


def test_same_queued_answer_while_servicenow_is_down(
    doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    front = doors()
    snow.faults.status(503, path=r"^/api/now/")
    payload = load_sample(METRIC)

    via_function, via_server = front.both("POST", "alerts", alert_headers(sandbox.token()), encoded(payload))

    assert via_function == via_server
    assert via_server.status == 202
    assert via_server.body == {
        "status": "queued",
        "alertId": payload["data"]["essentials"]["alertId"],
        "correlationId": "12345678-1234-1234-1234-1234567890ab",
        "reason": via_server.body["reason"],
    }
    assert via_server.body["reason"].startswith("queued for the outbox: ServiceNow 503")
    assert via_server.headers == {}
    assert snow.records("incident") == []


def test_same_502_for_a_permanent_refusal(
    doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    front = doors()
    snow.faults.status(400, method="POST", path="^/api/now/table/incident$",
                       body={"error": {"message": "Invalid value for field: impact"}, "status": "failure"})

    via_function, via_server = front.both(
        "POST", "alerts", alert_headers(sandbox.token()), encoded(load_sample(METRIC))
    )

    assert via_function == via_server
    assert via_server.status == 502
    assert via_server.body["error"]["code"] == "itsm_rejected"
    assert "Invalid value for field: impact" in via_server.body["error"]["message"]
    assert via_server.headers == {}
    assert snow.records("incident") == []


def test_same_degraded_health_while_servicenow_refuses_the_credential(
    doors: Callable[..., FrontDoors], sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    front = doors()
    snow.faults.status(401, method="POST", path="^/oauth_token.do$",
                       body={"error": "invalid_client", "error_description": "Client authentication failed"})

    alert = front.both("POST", "alerts", alert_headers(sandbox.token()), encoded(load_sample(METRIC)))
    health = front.both("GET", "health", {}, b"")

    assert alert[0] == alert[1]
    assert alert[1].status == 202
    assert health[0] == health[1]
    assert health[1].status == 200
    assert health[1].body["status"] == "degraded"
    assert "refuses the bridge's credential" in health[1].body["reason"]
    assert "sandbox-secret" not in json.dumps(health[1].body)


def test_same_answers_when_the_settings_are_bad(
    start_bridge: StartBridge,
    installed: Install,
    user_functions: UserFunctions,
    sandbox: SandboxStack,
) -> None:
    runtime.reset()
    broken = runtime.get_api(sandbox.bridge_env(SERVICENOW_CLIENT_SECRET=""))
    assert isinstance(broken, UnavailableApi)
    front = FrontDoors(user_functions, start_bridge(broken))
    installed(broken)

    health = front.both("GET", "health", {}, b"")
    deep = front.both("GET", "health", {}, b"", DEEP)
    alert = front.both("POST", "alerts", alert_headers(sandbox.token()), encoded(load_sample(METRIC)))

    assert health[0] == health[1]
    assert health[1].status == 503
    assert health[1].body["setting"] == "SERVICENOW_CLIENT_SECRET"
    assert "sandbox-secret" not in json.dumps(health[1].body)
    assert deep[0] == deep[1]
    assert deep[1].status == 503
    assert deep[1].body == {**health[1].body, "checks": {"settings": {"state": "failed",
                                                                       "reason": health[1].body["message"]}}}
    assert alert[0] == alert[1]
    assert alert[1].status == 503
    assert alert[1].body["error"]["code"] == "unavailable"
    assert alert[1].headers == {"retry-after": "30"}


# --- routes only the local server has to answer ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nope", 404, "not_found"),
        ("POST", "/alerts", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("GET", "/api/alerts", 405, "method_not_allowed"),
        ("PUT", "/api/alerts", 405, "method_not_allowed"),
        ("DELETE", "/api/health", 405, "method_not_allowed"),
        ("POST", "/api/health", 405, "method_not_allowed"),
    ],
)
def test_local_server_answers_unknown_routes_and_methods(
    method: str, path: str, status: int, code: str, start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge()

    response = bridge.http.request(method, f"{bridge.url}{path}", timeout=CLIENT_TIMEOUT_SECONDS)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert snow.requests == []


def test_local_server_ignores_the_query_string_and_a_trailing_slash(start_bridge: StartBridge) -> None:
    bridge = start_bridge()

    response = bridge.http.get(f"{bridge.url}/api/health/?code=abc", timeout=CLIENT_TIMEOUT_SECONDS)

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
