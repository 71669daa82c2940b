"""Every path through the Azure Function, with ServiceNow mocked by ``responses``.

Requests go through ``function_app.py``'s user functions exactly as the Functions host would
call them (``func.HttpRequest`` in, ``func.HttpResponse`` out). The Entra ID stand-in serves
real signing keys on loopback; every ServiceNow call is asserted: URL, query and JSON body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest
import requests
import responses
from responses import matchers

from bridge import __version__, runtime
from bridge.config import AZURE_MONITOR_APP_ID
from bridge.correlation import correlation_key
from bridge.sandbox.entra import EntraStandIn
from bridge.sandbox.stack import load_sample

INSTANCE = "https://contoso.service-now.com"
INCIDENTS = f"{INSTANCE}/api/now/table/incident"
CMDB = f"{INSTANCE}/api/now/table/cmdb_ci"
PASSWORD = "Pa55-w0rd-never-logged"
AUDIENCE = "api://azure-monitor-bridge"
CLIENT_ID = "0b7c4d3e-2f1a-4e5d-9c8b-7a6f5e4d3c2b"
SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
METRIC_KEY = "12345678-1234-1234-1234-1234567890ab"
FIND_FIELDS = "sys_id,number,state,correlation_id,sys_created_on"

UserFunctions = dict[str, Callable[[func.HttpRequest], Any]]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def settings_env(entra: EntraStandIn) -> dict[str, str]:
    return {
        "AUTH_TENANT_ID": entra.tenant_id,
        "AUTH_AUDIENCES": f"{AUDIENCE},{CLIENT_ID}",
        "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
        "AUTH_OPENID_CONFIG_URL": entra.openid_config_url,
        "SERVICENOW_INSTANCE_URL": INSTANCE,
        "SERVICENOW_USERNAME": "azure.bridge",
        "SERVICENOW_PASSWORD": PASSWORD,
        "ITSM_RETRY_ATTEMPTS": "3",
    }


@pytest.fixture
def install(sleeps: list[float], settings_env: dict[str, str]) -> Iterator[Callable[..., None]]:
    def _install(**overrides: str) -> None:
        runtime.install(runtime.build_api({**settings_env, **overrides}, sleep=sleeps.append))

    _install()
    yield _install
    runtime.reset()


@pytest.fixture
def snow(entra: EntraStandIn) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(entra.base_url)
        yield mock


@pytest.fixture
def call(user_functions: UserFunctions, entra: EntraStandIn, install: Any) -> Callable[..., func.HttpResponse]:
    def _call(payload: Any, *, token: str | None = "default",  # noqa: S107
              raw: bytes | None = None) -> func.HttpResponse:
        if token == "default":
            token = entra.mint(audience=CLIENT_ID)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else json.dumps(payload).encode()
        request = func.HttpRequest(method="POST", url="/api/alerts", headers=headers, body=body)
        response: func.HttpResponse = user_functions["alerts"](request)
        return response

    return _call


def body_of(response: func.HttpResponse) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(response.get_body())
    return result


def expect_find(snow: responses.RequestsMock, key: str, result: list[dict[str, Any]], **kw: Any) -> None:
    kw.setdefault("json", {"result": result})
    snow.get(
        INCIDENTS,
        match=[matchers.query_param_matcher({
            "sysparm_query": f"correlation_id={key}^ORDERBYsys_created_on",
            "sysparm_fields": FIND_FIELDS,
            "sysparm_limit": "10",
            "sysparm_exclude_reference_link": "true",
        })],
        **kw,
    )


def expect_ci_lookup(snow: responses.RequestsMock, field: str, value: str, result: list[dict[str, Any]]) -> None:
    snow.get(
        CMDB,
        json={"result": result},
        match=[matchers.query_param_matcher({
            "sysparm_query": f"{field}={value}",
            "sysparm_fields": f"sys_id,name,{field}" if field != "name" else "sys_id,name",
            "sysparm_limit": "2",
            "sysparm_exclude_reference_link": "true",
        })],
    )


def incident(sys_id: str, key: str, state: str = "1", number: str = "INC0010001") -> dict[str, str]:
    return {"sys_id": sys_id, "number": number, "state": state, "correlation_id": key,
            "sys_created_on": "2025-04-15 18:17:13"}


def post_body(snow: responses.RequestsMock) -> dict[str, Any]:
    posts = [c for c in snow.calls if c.request.method == "POST"]
    assert len(posts) == 1
    result: dict[str, Any] = json.loads(posts[0].request.body)
    return result


# --- every bundled sample through the whole Function ------------------------------------------


def test_metric_sample_creates_an_incident_bound_to_its_ci(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("metric_static_fired.testaction.json")
    target = payload["data"]["essentials"]["alertTargetIDs"][0]
    expect_find(snow, METRIC_KEY, [])
    expect_ci_lookup(snow, "object_id", target, [
        {"sys_id": "ci0001", "name": "test-storageAccount", "object_id": target},
    ])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "a" * 32, "number": "INC0010001"}},
              match=[matchers.query_param_matcher({"sysparm_fields": "sys_id,number"})])

    response = call(payload)

    assert response.status_code == 200
    assert body_of(response) == {
        "status": "processed",
        "action": "created",
        "alertId": payload["data"]["essentials"]["alertId"],
        "correlationId": METRIC_KEY,
        "workItem": {
            "system": "servicenow",
            "id": "a" * 32,
            "number": "INC0010001",
            "url": f"{INSTANCE}/nav_to.do?uri=incident.do%3Fsys_id%3D{'a' * 32}",
        },
    }
    sent = post_body(snow)
    assert {k: v for k, v in sent.items() if k not in ("description", "work_notes")} == {
        "correlation_id": METRIC_KEY,
        "correlation_display": "Azure Monitor",
        "short_description": "[Azure Monitor] Sev4 Fired: test-metricAlertRule on test-storageAccount",
        "impact": "3",
        "urgency": "3",
        "cmdb_ci": "ci0001",
    }
    for fragment in ("Alert rule: test-metricAlertRule", "Severity: Sev4", "metric: Transactions",
                     "threshold: 0", "value: 100", payload["data"]["essentials"]["alertId"],
                     "https://portal.azure.com/", "Fired at: 2025-04-15T18:17:12.851"):
        assert fragment in sent["description"]
    assert "AzMonBridge-" in sent["work_notes"]
    auth = snow.calls[0].request.headers["Authorization"]
    assert auth.startswith("Basic ")


def test_log_alert_sample_binds_by_name_when_no_resource_id_matches(
    call: Any, snow: responses.RequestsMock
) -> None:
    payload = load_sample("log_alerts_v2_fired.testaction.json")
    target = payload["data"]["essentials"]["alertTargetIDs"][0]
    expect_find(snow, METRIC_KEY, [])
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-computer", [{"sys_id": "ci0002", "name": "test-computer"}])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "b" * 32, "number": "INC0010002"}})

    response = call(payload)

    assert (response.status_code, body_of(response)["action"]) == (200, "created")
    sent = post_body(snow)
    assert sent["cmdb_ci"] == "ci0002"
    assert sent["short_description"] == "[Azure Monitor] Sev4 Fired: test-logAlertRule-v2 on test-logAnalyticsWorkspace"
    assert "Heartbeat" in sent["description"]  # the log search query is shown


def test_activity_log_sample_with_rule_path_id_is_keyed_by_hash(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("activity_log_administrative_fired.testaction.json")
    key = correlation_key(payload["data"]["essentials"]["alertId"])
    target = payload["data"]["essentials"]["alertTargetIDs"][0]
    expect_find(snow, key, [])
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-VM", [])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "c" * 32, "number": "INC0010003"}})

    response = call(payload)

    assert body_of(response)["correlationId"] == key
    sent = post_body(snow)
    assert sent["correlation_id"] == key and "cmdb_ci" not in sent
    assert f"No CMDB configuration item found for {target}, test-VM." in sent["description"]
    assert "Operation: Microsoft.Compute/virtualMachines/restart/action" in sent["description"]


def test_service_health_sample_is_created_without_a_ci(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("service_health_incident.testaction.json")
    key = correlation_key(payload["data"]["essentials"]["alertId"])
    expect_find(snow, key, [])
    expect_ci_lookup(snow, "object_id", f"/subscriptions/{SUBSCRIPTION}", [])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "d" * 32, "number": "INC0010004"}})

    response = call(payload)

    assert (response.status_code, body_of(response)["action"]) == (200, "created")
    sent = post_body(snow)
    assert sent["impact"] == "3" and sent["urgency"] == "3"
    assert "Tracking ID: TEST-TTT" in sent["description"]


def test_resolved_sample_without_incident_is_ignored(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("metric_static_resolved.json")
    expect_find(snow, "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e", [])

    response = call(payload)

    assert response.status_code == 200
    assert body_of(response) == {
        "status": "processed", "action": "ignored", "alertId": payload["data"]["essentials"]["alertId"],
        "correlationId": "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e", "workItem": None,
        "reason": "no incident for this alert",
    }
    assert len(snow.calls) == 1


# --- lifecycle through the Function ------------------------------------------------------------


def test_fired_again_adds_a_work_note(call: Any, snow: responses.RequestsMock) -> None:
    sys_id = "e" * 32
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.get(f"{INCIDENTS}/{sys_id}", json={"result": {"work_notes": "2025-04-15 18:17:13 - bridge (Work notes)\n"
                                                                      "opened [AzMonBridge-0000000000000000]\n\n"}},
             match=[matchers.query_param_matcher({"sysparm_fields": "work_notes", "sysparm_display_value": "true"})])
    snow.patch(f"{INCIDENTS}/{sys_id}", json={"result": {"sys_id": sys_id}})

    response = call(load_sample("metric_static_fired.testaction.json"))

    assert body_of(response)["action"] == "updated"
    patch = json.loads(snow.calls[-1].request.body)
    assert list(patch) == ["work_notes"]
    assert "fired again" in patch["work_notes"]


def test_redelivered_fired_changes_nothing(call: Any, snow: responses.RequestsMock) -> None:
    from bridge.alerts import parse_alert
    from bridge.correlation import fingerprint, note_marker

    payload = load_sample("metric_static_fired.testaction.json")
    marker = note_marker(fingerprint(parse_alert(payload)))
    sys_id = "e" * 32
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.get(f"{INCIDENTS}/{sys_id}", json={"result": {"work_notes": f"... [{marker}]\n\n"}})

    response = call(payload)

    assert body_of(response)["action"] == "ignored"
    assert body_of(response)["reason"] == "identical alert already recorded"
    assert [c.request.method for c in snow.calls] == ["GET", "GET"]


def test_resolved_resolves_the_open_incident(call: Any, snow: responses.RequestsMock) -> None:
    sys_id = "f" * 32
    payload = load_sample("metric_static_fired.testaction.json", monitorCondition="Resolved",
                          resolvedDateTime="2025-04-15T18:32:12.8510000Z")
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.patch(f"{INCIDENTS}/{sys_id}", json={"result": {"sys_id": sys_id, "state": "6"}},
               match=[matchers.query_param_matcher({"sysparm_fields": "sys_id,state"})])

    response = call(payload)

    assert body_of(response)["action"] == "resolved"
    patch = json.loads(snow.calls[-1].request.body)
    assert patch["state"] == "6"
    assert patch["close_code"] == "Solution provided"
    assert "2025-04-15T18:32:12" in patch["close_notes"]
    assert patch["work_notes"]


def test_resolved_twice_is_ignored(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("metric_static_fired.testaction.json", monitorCondition="Resolved")
    expect_find(snow, METRIC_KEY, [incident("f" * 32, METRIC_KEY, state="6")])

    response = call(payload)

    assert body_of(response)["action"] == "ignored"
    assert body_of(response)["reason"] == "incident already resolved"
    assert len(snow.calls) == 1


def test_non_exact_lookup_results_are_never_updated(call: Any, snow: responses.RequestsMock) -> None:
    # An instance that dropped the query clause answers with unrelated incidents.
    expect_find(snow, METRIC_KEY, [
        incident("1" * 32, "someone-elses-key", number="INC0000001"),
        incident("2" * 32, METRIC_KEY.upper() + "x", number="INC0000002"),
    ])
    target = load_sample("metric_static_fired.testaction.json")["data"]["essentials"]["alertTargetIDs"][0]
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-storageAccount", [])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "3" * 32, "number": "INC0010005"}})

    response = call(load_sample("metric_static_fired.testaction.json"))

    assert body_of(response)["action"] == "created"
    assert not [c for c in snow.calls if c.request.method == "PATCH"]


# --- retries ---------------------------------------------------------------------------------


def _created_after_failures(snow: responses.RequestsMock, *failures: dict[str, Any]) -> None:
    target = load_sample("metric_static_fired.testaction.json")["data"]["essentials"]["alertTargetIDs"][0]
    for failure in failures:
        expect_find(snow, METRIC_KEY, [], **failure)
    expect_find(snow, METRIC_KEY, [])
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-storageAccount", [])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "9" * 32, "number": "INC0010009"}})


def test_429_with_retry_after_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    _created_after_failures(snow, {"status": 429, "headers": {"Retry-After": "2"}})
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 1 and sleeps[0] >= 2


def test_503_twice_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    _created_after_failures(snow, {"status": 503}, {"status": 503})
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 2


def test_timeout_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    snow.get(INCIDENTS, body=requests.exceptions.ReadTimeout("read timed out"))
    _created_after_failures(snow)
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 1


def test_permanent_rejection_is_not_retried_and_gives_502(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    expect_find(snow, METRIC_KEY, [])
    target = load_sample("metric_static_fired.testaction.json")["data"]["essentials"]["alertTargetIDs"][0]
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-storageAccount", [])
    snow.post(INCIDENTS, status=400, json={"error": {"message": "Invalid value for field impact",
                                                     "detail": "impact must be 1-3"}, "status": "failure"})

    response = call(load_sample("metric_static_fired.testaction.json"))

    assert response.status_code == 502
    error = body_of(response)["error"]
    assert error["code"] == "itsm_rejected"
    assert "Invalid value for field impact" in error["message"]
    assert sleeps == []


def test_itsm_down_past_the_budget_gives_503_with_retry_after(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    for _ in range(3):  # ITSM_RETRY_ATTEMPTS=3
        expect_find(snow, METRIC_KEY, [], status=503)

    response = call(load_sample("metric_static_fired.testaction.json"))

    assert response.status_code == 503
    assert body_of(response)["error"]["code"] == "unavailable"
    assert "3 attempt(s)" in body_of(response)["error"]["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert len(sleeps) == 2


def test_retry_after_beyond_the_budget_is_passed_on(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    expect_find(snow, METRIC_KEY, [], status=429, headers={"Retry-After": "120"})
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "120"
    assert sleeps == []


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, status, needle",
    [
        (b"not json at all", 400, "JSON"),
        (b"\xff\xfe\x00garbage", 400, ""),
        (b"[1, 2, 3]", 400, ""),
        (json.dumps({"schemaId": "somethingElse", "data": {}}).encode(), 400, "schemaId"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema"}).encode(), 400, "data"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {}}}).encode(),
         400, "alertId"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
            "alertId": "/x", "monitorCondition": "Fired", "alertTargetIDs": "not-a-list"}}}).encode(),
         400, "alertTargetIDs"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
            "alertId": "/x", "monitorCondition": "Sleeping"}}}).encode(), 400, "monitorCondition"),
        (b"{" + b" " * (2 * 1024 * 1024) + b"}", 413, "limit"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
            "alertId": "/x/\\ud800", "monitorCondition": "Fired"}}}).replace("\\\\", "\\").encode(),
         400, "surrogate"),
        (json.dumps({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {
            "alertId": "/x", "monitorCondition": "Fired", "firedDateTime": "9999-12-31T23:59:59-01:00"}}}).encode(),
         400, "firedDateTime"),
    ],
    ids=["not-json", "not-utf8", "array", "wrong-schema", "no-data", "no-alert-id", "targets-not-list",
         "bad-condition", "2MiB", "lone-surrogate", "timestamp-overflow"],
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    call: Any, snow: responses.RequestsMock, raw: bytes, status: int, needle: str
) -> None:
    response = call(None, raw=raw)
    assert response.status_code == status
    error = body_of(response)["error"]
    assert error["code"] == ("payload_too_large" if status == 413 else "invalid_payload")
    assert needle in error["message"]
    assert len(snow.calls) == 0


def test_no_token_is_401_with_www_authenticate(call: Any, snow: responses.RequestsMock) -> None:
    response = call(load_sample("metric_static_fired.testaction.json"), token=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert body_of(response)["error"]["code"] == "invalid_token"


def test_auth_comes_before_parsing(call: Any, snow: responses.RequestsMock) -> None:
    assert call(None, raw=b"garbage", token=None).status_code == 401


def test_jwks_unreachable_is_503(call: Any, snow: responses.RequestsMock, entra: EntraStandIn,
                                 install: Callable[..., None]) -> None:
    install()  # a fresh verifier: no keys cached
    entra.set_available(False)
    try:
        response = call(load_sample("metric_static_fired.testaction.json"))
    finally:
        entra.set_available(True)
    assert response.status_code == 503
    assert "Retry-After" in response.headers


def test_subscription_not_allowed_is_403(call: Any, snow: responses.RequestsMock,
                                         install: Callable[..., None]) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS="22222222-2222-2222-2222-222222222222")
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert response.status_code == 403
    assert body_of(response)["error"]["code"] == "forbidden"
    assert SUBSCRIPTION in body_of(response)["error"]["message"]


def test_allowed_subscription_passes(call: Any, snow: responses.RequestsMock,
                                     install: Callable[..., None]) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    expect_find(snow, "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e", [])
    payload = load_sample("metric_static_resolved.json")
    payload["data"]["essentials"]["alertId"] = payload["data"]["essentials"]["alertId"].replace(
        "<subscription ID>", SUBSCRIPTION)
    payload["data"]["essentials"]["alertTargetIDs"] = [
        t.replace("<subscription ID>", SUBSCRIPTION) for t in payload["data"]["essentials"]["alertTargetIDs"]]
    assert call(payload).status_code == 200


def test_unexpected_bug_is_503_not_500(call: Any, snow: responses.RequestsMock,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import api

    def explode(body: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "parse_alert", explode)
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert response.status_code == 503
    assert "boom" not in response.get_body().decode()


# --- secrets --------------------------------------------------------------------------------


def test_no_secret_or_token_in_logs_or_error_bodies(
    call: Any, snow: responses.RequestsMock, entra: EntraStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = entra.mint(audience=CLIENT_ID)
    # ServiceNow echoes the credentials back in its error (it happens with proxies and bad configs).
    expect_find(snow, METRIC_KEY, [], status=401,
                json={"error": {"message": f"User Not Authenticated: {PASSWORD}", "detail": token}})
    bodies = [call(load_sample("metric_static_fired.testaction.json"), token=token).get_body().decode()]
    expired = entra.mint(audience=CLIENT_ID, lifetime_seconds=-3600)
    bodies.append(call(load_sample("metric_static_fired.testaction.json"), token=expired).get_body().decode())
    bodies.append(call(None, raw=b"{bad", token=token + "x").get_body().decode())

    text = "\n".join(bodies) + "\n" + caplog.text
    for secret in (PASSWORD, token, expired, token.split(".")[2], expired.split(".")[1]):
        assert secret not in text
    assert "itsm_rejected" in bodies[0]  # a 401 from ServiceNow is a permanent refusal


# --- health and configuration ------------------------------------------------------------------


def test_health_reports_version_and_adapter_only(user_functions: UserFunctions, install: Any) -> None:
    response = user_functions["health"](func.HttpRequest(method="GET", url="/api/health", body=b""))
    assert response.status_code == 200
    assert body_of(response) == {"status": "ok", "version": __version__, "adapter": "servicenow"}


def test_bad_settings_answer_503_and_name_the_setting(user_functions: UserFunctions,
                                                      settings_env: dict[str, str]) -> None:
    env = {**settings_env, "SERVICENOW_PASSWORD": ""}
    runtime.reset()
    try:
        api = runtime.get_api(env)
        alerts = user_functions["alerts"](func.HttpRequest(method="POST", url="/api/alerts", body=b"{}"))
        health = user_functions["health"](func.HttpRequest(method="GET", url="/api/health", body=b""))
    finally:
        runtime.reset()
    assert type(api).__name__ == "UnavailableApi"
    assert alerts.status_code == 503
    assert health.status_code == 503
    assert body_of(health)["setting"] == "SERVICENOW_PASSWORD"
    assert PASSWORD not in health.get_body().decode()


def test_function_routes_and_auth_levels() -> None:
    import function_app

    routes = {}
    for fn in function_app.app._function_builders:  # the registered decorators, not yet built
        built = fn.build()
        trigger = built.get_bindings()[0]
        routes[built.get_function_name()] = (trigger.route, trigger.methods, trigger.auth_level)
    assert routes["alerts"][0] == "alerts"
    assert [str(m) for m in routes["alerts"][1]] in (["POST"], ["HttpMethod.POST"])
    assert str(routes["alerts"][2]).lower().endswith("anonymous")
    assert routes["health"][0] == "health"
    assert str(routes["health"][2]).lower().endswith("function")


def test_allowed_app_default_is_azure_monitor() -> None:
    from bridge.config import SETTINGS

    assert next(s for s in SETTINGS if s.name == "AUTH_ALLOWED_APP_IDS").default == AZURE_MONITOR_APP_ID


def test_a_start_up_crash_answers_503_not_500(user_functions: UserFunctions, settings_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no such device")

    monkeypatch.setattr(runtime, "build_adapter", broken)
    runtime.reset()
    try:
        runtime.get_api(settings_env)
        alerts = user_functions["alerts"](func.HttpRequest(method="POST", url="/api/alerts", body=b"{}"))
        health = user_functions["health"](func.HttpRequest(method="GET", url="/api/health", body=b""))
    finally:
        runtime.reset()
    assert alerts.status_code == 503 and alerts.headers["Retry-After"]
    assert body_of(health)["status"] == "misconfigured"
    assert body_of(health)["message"] == "start-up failed: OSError"
