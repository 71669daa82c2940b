"""Every path through the Azure Function, with ServiceNow mocked by ``responses``.

Requests go through ``function_app.py``'s user functions exactly as the Functions host would
call them (``func.HttpRequest`` or ``func.QueueMessage`` in, ``func.HttpResponse`` out). The
Entra ID stand-in serves real signing keys on loopback; every ServiceNow call is asserted: URL,
query, JSON body, and the exact sequence of calls. Each test has its own SQLite state file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
import pytest
import requests
import responses
from azure.functions.timer import TimerRequest
from responses import matchers

from bridge import __version__, runtime, threads
from bridge.alerts import parse_alert
from bridge.api import UnavailableApi
from bridge.config import AZURE_MONITOR_APP_ID
from bridge.correlation import correlation_key, fingerprint, note_marker
from bridge.rules import MappingRules
from bridge.sandbox.entra import EntraStandIn
from bridge.sandbox.stack import load_sample
from bridge.state.record import Record

INSTANCE = "https://contoso.service-now.com"
INCIDENTS = f"{INSTANCE}/api/now/table/incident"
CMDB = f"{INSTANCE}/api/now/table/cmdb_ci"
PASSWORD = "Pa55-w0rd-never-logged"
AUDIENCE = "api://azure-monitor-bridge"
CLIENT_ID = "0b7c4d3e-2f1a-4e5d-9c8b-7a6f5e4d3c2b"
SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
METRIC = "metric_static_fired.testaction.json"
METRIC_KEY = "12345678-1234-1234-1234-1234567890ab"
FIND_FIELDS = "sys_id,number,state,correlation_id,correlation_display,sys_created_on"
RESOLVED_AT = "2025-04-15T18:32:12.8510000Z"

# ServiceNow calls as (method, path), in the order sent.
FIND = ("GET", "/api/now/table/incident")
CI = ("GET", "/api/now/table/cmdb_ci")
CREATE = ("POST", "/api/now/table/incident")


def patch_call(sys_id: str) -> tuple[str, str]:
    return ("PATCH", f"/api/now/table/incident/{sys_id}")


def journal_call(sys_id: str) -> tuple[str, str]:
    return ("GET", f"/api/now/table/incident/{sys_id}")


UserFunctions = dict[str, Callable[..., Any]]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def settings_env(entra: EntraStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        "AUTH_TENANT_ID": entra.tenant_id,
        "AUTH_AUDIENCES": f"{AUDIENCE},{CLIENT_ID}",
        "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
        "AUTH_OPENID_CONFIG_URL": entra.openid_config_url,
        "SERVICENOW_INSTANCE_URL": INSTANCE,
        "SERVICENOW_USERNAME": "azure.bridge",
        "SERVICENOW_PASSWORD": PASSWORD,
        "ITSM_RETRY_ATTEMPTS": "3",
        "STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
        # Outbox back-off of at most 0.5 s, so a queued alert is due again within the test.
        "OUTBOX_MAX_DELAY_SECONDS": "0.5",
    }


@pytest.fixture
def install(sleeps: list[float], settings_env: dict[str, str]) -> Iterator[Callable[..., runtime.Runtime]]:
    """``install(**overrides)``: a runtime built with recorded sleeps, made the process-wide one."""
    built: list[runtime.Runtime] = []

    def _install(**overrides: str) -> runtime.Runtime:
        rt = runtime.build_runtime({**settings_env, **overrides}, sleep=sleeps.append)
        built.append(rt)
        runtime.install(rt.api, rt)
        return rt

    _install()
    yield _install
    runtime.reset()
    for rt in built:
        rt.close()


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


@pytest.fixture
def health(user_functions: UserFunctions) -> Callable[[], func.HttpResponse]:
    def _health() -> func.HttpResponse:
        response: func.HttpResponse = user_functions["health"](
            func.HttpRequest(method="GET", url="/api/health", body=b"")
        )
        return response

    return _health


def body_of(response: func.HttpResponse) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(response.get_body())
    return result


def itsm_calls(snow: responses.RequestsMock) -> list[tuple[str, str]]:
    """The ServiceNow calls made so far (not the Entra ID key fetches passed through)."""
    return [
        (c.request.method or "", str(urlsplit(c.request.url).path))
        for c in snow.calls
        if (c.request.url or "").startswith(INSTANCE)
    ]


def next_round(snow: responses.RequestsMock) -> None:
    """Every answer registered so far was used: forget them and the calls, for the next delivery."""
    assert all(r.call_count for r in snow.registered()), "a registered ServiceNow answer was not used"
    for registered in list(snow.registered()):
        snow.remove(registered)
    snow.calls.reset()


def installed() -> runtime.Runtime:
    rt = runtime.get_runtime()
    assert rt is not None
    return rt


def record_of(key: str) -> Record:
    stored = installed().reconciler.store.load(key)
    assert stored is not None, f"no state record for {key}"
    return stored.record


def print_of(payload: dict[str, Any]) -> str:
    return fingerprint(parse_alert(json.dumps(payload).encode()))


def expect_find(snow: responses.RequestsMock, key: str, result: list[dict[str, Any]], **kw: Any) -> None:
    kw.setdefault("json", {"result": result})
    snow.get(
        INCIDENTS,
        match=[matchers.query_param_matcher({
            "sysparm_query": f"correlation_id={key}^correlation_display=Azure Monitor^ORDERBYsys_created_on",
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


def expect_metric_ci_misses(snow: responses.RequestsMock) -> None:
    target = load_sample(METRIC)["data"]["essentials"]["alertTargetIDs"][0]
    expect_ci_lookup(snow, "object_id", target, [])
    expect_ci_lookup(snow, "name", "test-storageAccount", [])


def incident(sys_id: str, key: str, state: str = "1", number: str = "INC0010001") -> dict[str, str]:
    return {"sys_id": sys_id, "number": number, "state": state, "correlation_id": key,
            "correlation_display": "Azure Monitor", "sys_created_on": "2025-04-15 18:17:13"}


def post_body(snow: responses.RequestsMock) -> dict[str, Any]:
    posts = [c for c in snow.calls if c.request.method == "POST"]
    assert len(posts) == 1
    result: dict[str, Any] = json.loads(posts[0].request.body or b"")
    return result


def last_patch(snow: responses.RequestsMock) -> dict[str, Any]:
    patches = [c for c in snow.calls if c.request.method == "PATCH"]
    assert patches
    result: dict[str, Any] = json.loads(patches[-1].request.body or b"")
    return result


def created_metric(call: Any, snow: responses.RequestsMock, sys_id: str = "a" * 32) -> dict[str, Any]:
    """The metric sample delivered once and created (lookup, CMDB, create); then a fresh round."""
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": sys_id, "number": "INC0010001"}})
    response = call(load_sample(METRIC))
    body = body_of(response)
    assert (response.status_code, body["action"]) == (200, "created"), body
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    next_round(snow)
    return body


def metric_again(value: float = 97.5) -> dict[str, Any]:
    payload = load_sample(METRIC)
    payload["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = value
    return payload


def metric_resolved() -> dict[str, Any]:
    return load_sample(METRIC, monitorCondition="Resolved", resolvedDateTime=RESOLVED_AT)


def wait_until_due(key: str) -> None:
    """The queue delivers a key's message once its record is due; so must the test."""
    due = record_of(key).due
    assert due is not None and due - time.time() <= 0.5
    time.sleep(max(0.0, due - time.time()) + 0.01)


def queue_message(key: str) -> func.QueueMessage:
    """What the queue trigger hands over for an outbox message (already Base64-decoded)."""
    return func.QueueMessage(id="m1", body=json.dumps({"key": key}).encode("utf-8"), pop_receipt="r1")


# --- every bundled sample through the whole Function ------------------------------------------


def test_metric_sample_creates_an_incident_bound_to_its_ci(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample(METRIC)
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
    # One lookup, one create: no look-again for a concurrent twin (the record's claim rules it out).
    assert itsm_calls(snow) == [FIND, CI, CREATE]
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
    assert note_marker(print_of(payload)) in sent["work_notes"]
    auth = snow.calls[0].request.headers["Authorization"]
    assert auth.startswith("Basic ")
    record = record_of(METRIC_KEY)
    assert record.item is not None and record.item["id"] == "a" * 32
    assert record.written == {print_of(payload): "created"}
    assert (record.due, record.claim, record.intent, record.dead) == (None, None, None, None)


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
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
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
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    sent = post_body(snow)
    assert sent["correlation_id"] == key and "cmdb_ci" not in sent
    assert f"No CMDB configuration item found for {target}, test-VM." in sent["description"]
    assert "Operation: Microsoft.Compute/virtualMachines/restart/action" in sent["description"]


def test_service_health_sample_is_created_without_a_ci(call: Any, snow: responses.RequestsMock) -> None:
    payload = load_sample("service_health_incident.testaction.json")
    # Kept per trackingId and incident type: its work item carries that thread's correlation id.
    place = threads.place(parse_alert(json.dumps(payload)), MappingRules())
    key = threads.episode_correlation(place.key, place.member)
    expect_find(snow, key, [])
    expect_ci_lookup(snow, "object_id", f"/subscriptions/{SUBSCRIPTION}", [])
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "d" * 32, "number": "INC0010004"}})

    response = call(payload)

    assert (response.status_code, body_of(response)["action"]) == (200, "created")
    assert itsm_calls(snow) == [FIND, CI, CREATE]
    sent = post_body(snow)
    assert sent["impact"] == "3" and sent["urgency"] == "3"
    assert "Tracking ID: TEST-TTT" in sent["description"]


def test_resolved_sample_without_incident_is_recorded_and_ignored_after_one_lookup(
    call: Any, snow: responses.RequestsMock
) -> None:
    payload = load_sample("metric_static_resolved.json")
    key = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
    expect_find(snow, key, [])  # an incident from an earlier version would be resolved

    response = call(payload)

    assert response.status_code == 200
    assert body_of(response) == {
        "status": "processed", "action": "ignored", "alertId": payload["data"]["essentials"]["alertId"],
        "correlationId": key, "workItem": None,
        "reason": "no work item for this alert; the resolution is recorded and applies if its Fired arrives",
    }
    assert itsm_calls(snow) == [FIND]
    record = record_of(key)
    assert [e.condition for e in record.events] == ["Resolved"]
    assert record.item is None and record.due is None and record.written == {}


# --- lifecycle through the Function ------------------------------------------------------------


def test_fired_again_with_a_new_payload_rereads_then_adds_a_work_note(
    call: Any, snow: responses.RequestsMock
) -> None:
    sys_id = "a" * 32
    created_metric(call, snow, sys_id)
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.patch(f"{INCIDENTS}/{sys_id}", json={"result": {"sys_id": sys_id}},
               match=[matchers.query_param_matcher({"sysparm_fields": "sys_id"})])
    again = metric_again()

    response = call(again)

    body = body_of(response)
    assert (response.status_code, body["action"]) == (200, "updated")
    assert body["workItem"]["id"] == sys_id
    assert itsm_calls(snow) == [FIND, patch_call(sys_id)]  # no journal read: the record knows what it wrote
    patch = last_patch(snow)
    assert list(patch) == ["work_notes"]
    assert "fired again" in patch["work_notes"] and "value: 97.5" in patch["work_notes"]
    assert note_marker(print_of(again)) in patch["work_notes"]
    assert record_of(METRIC_KEY).written[print_of(again)] == "updated"


def test_identical_redelivery_makes_no_itsm_call(call: Any, snow: responses.RequestsMock) -> None:
    created = created_metric(call, snow)

    response = call(load_sample(METRIC))

    body = body_of(response)
    assert response.status_code == 200
    assert body["action"] == "ignored"
    assert body["reason"] == "identical alert already recorded"
    assert body["workItem"] == created["workItem"]
    assert itsm_calls(snow) == []


def test_fired_for_an_incident_from_before_the_record_is_adopted_and_not_noted_twice(
    call: Any, snow: responses.RequestsMock
) -> None:
    # An incident an earlier version of the bridge opened, with this very payload's note on it.
    payload = load_sample(METRIC)
    marker = note_marker(print_of(payload))
    sys_id = "e" * 32
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.get(f"{INCIDENTS}/{sys_id}", json={"result": {"work_notes": f"... [{marker}]\n\n"}},
             match=[matchers.query_param_matcher({"sysparm_fields": "work_notes", "sysparm_display_value": "true"})])

    response = call(payload)

    body = body_of(response)
    assert (body["action"], body["reason"]) == ("ignored", "identical alert already recorded")
    assert body["workItem"]["id"] == sys_id
    # Found by lookup, re-read before the note, and the journal says the note is there already.
    assert itsm_calls(snow) == [FIND, FIND, journal_call(sys_id)]
    record = record_of(METRIC_KEY)
    assert record.adopted and record.item is not None and record.item["id"] == sys_id


def test_fired_for_an_incident_from_before_the_record_without_its_note_gets_one(
    call: Any, snow: responses.RequestsMock
) -> None:
    sys_id = "e" * 32
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.get(f"{INCIDENTS}/{sys_id}", json={"result": {"work_notes": "2025-04-15 18:17:13 - bridge (Work notes)\n"
                                                                      "opened [AzMonBridge-0000000000000000]\n\n"}})
    snow.patch(f"{INCIDENTS}/{sys_id}", json={"result": {"sys_id": sys_id}})

    response = call(load_sample(METRIC))

    assert body_of(response)["action"] == "updated"
    assert itsm_calls(snow) == [FIND, FIND, journal_call(sys_id), patch_call(sys_id)]
    assert "fired again" in last_patch(snow)["work_notes"]


def test_resolved_rereads_then_resolves_and_a_second_resolved_makes_no_call(
    call: Any, snow: responses.RequestsMock
) -> None:
    sys_id = "f" * 32
    created_metric(call, snow, sys_id)
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY)])
    snow.patch(f"{INCIDENTS}/{sys_id}", json={"result": {"sys_id": sys_id, "state": "6"}},
               match=[matchers.query_param_matcher({"sysparm_fields": "sys_id,state"})])

    response = call(metric_resolved())

    assert (response.status_code, body_of(response)["action"]) == (200, "resolved")
    assert itsm_calls(snow) == [FIND, patch_call(sys_id)]
    patch = last_patch(snow)
    assert patch["state"] == "6"
    assert patch["close_code"] == "Solution provided"
    assert "2025-04-15T18:32:12" in patch["close_notes"]
    assert patch["work_notes"]
    next_round(snow)

    again = call(metric_resolved())

    assert (again.status_code, body_of(again)["action"]) == (200, "ignored")
    assert body_of(again)["reason"] == "identical alert already recorded"
    assert itsm_calls(snow) == []

    late = call(metric_again(55.0))  # a Fired after the Resolved

    assert (late.status_code, body_of(late)["action"]) == (200, "ignored")
    assert body_of(late)["reason"] == "work item already resolved; a Fired after the Resolved opens nothing"
    assert body_of(late)["workItem"]["id"] == sys_id
    assert itsm_calls(snow) == []


def test_resolved_before_fired_then_the_fired_creates_it_already_resolved(
    call: Any, snow: responses.RequestsMock
) -> None:
    expect_find(snow, METRIC_KEY, [])
    first = call(metric_resolved())

    assert body_of(first)["action"] == "ignored"
    assert "the resolution is recorded" in body_of(first)["reason"]
    assert itsm_calls(snow) == [FIND]
    snow.calls.reset()

    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "7" * 32, "number": "INC0010007"}})
    response = call(load_sample(METRIC))

    body = body_of(response)
    assert (response.status_code, body["action"]) == (200, "created")
    assert body["workItem"]["id"] == "7" * 32
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]  # one insert, no PATCH after it
    sent = post_body(snow)
    assert sent["state"] == "6"
    assert sent["close_code"] == "Solution provided"
    assert "2025-04-15T18:32:12" in sent["close_notes"]
    assert sent["short_description"].startswith("[Azure Monitor] Sev4 Fired:")
    assert "Azure Monitor reported the alert as resolved" in sent["work_notes"]
    record = record_of(METRIC_KEY)
    assert record.written == {print_of(metric_resolved()): "resolved", print_of(load_sample(METRIC)): "created"}
    assert record.item_open is False and record.resolution_written


@pytest.mark.parametrize(("state", "word"), [("7", "closed"), ("6", "resolved"), ("8", "canceled")])
def test_an_incident_a_person_closed_is_never_touched_again(
    state: str, word: str, call: Any, snow: responses.RequestsMock
) -> None:
    sys_id = "c" * 32
    created_metric(call, snow, sys_id)
    expect_find(snow, METRIC_KEY, [incident(sys_id, METRIC_KEY, state=state)])

    response = call(metric_resolved())

    body = body_of(response)
    assert (response.status_code, body["action"]) == (200, "ignored")
    assert body["reason"] == f"work item already {word}"
    assert itsm_calls(snow) == [FIND]  # re-read, and left alone
    next_round(snow)

    fired = call(metric_again())

    assert body_of(fired)["action"] == "ignored"
    assert body_of(fired)["reason"] == f"work item already {word}; a Fired after the Resolved opens nothing"
    assert itsm_calls(snow) == []


def test_non_exact_lookup_results_are_never_updated(call: Any, snow: responses.RequestsMock) -> None:
    # An instance that dropped the query clause answers with unrelated incidents.
    expect_find(snow, METRIC_KEY, [
        incident("1" * 32, "someone-elses-key", number="INC0000001"),
        incident("2" * 32, METRIC_KEY.upper() + "x", number="INC0000002"),
    ])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "3" * 32, "number": "INC0010005"}})

    response = call(load_sample(METRIC))

    assert body_of(response)["action"] == "created"
    assert body_of(response)["workItem"]["id"] == "3" * 32
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]


# --- retries within the inline budget ------------------------------------------------------------


def _created_after_failures(snow: responses.RequestsMock, *failures: dict[str, Any]) -> None:
    for failure in failures:
        expect_find(snow, METRIC_KEY, [], **failure)
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "9" * 32, "number": "INC0010009"}})


def test_429_with_retry_after_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    _created_after_failures(snow, {"status": 429, "headers": {"Retry-After": "2"}})
    response = call(load_sample(METRIC))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 1 and sleeps[0] >= 2
    assert itsm_calls(snow) == [FIND, FIND, CI, CI, CREATE]


def test_503_twice_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    _created_after_failures(snow, {"status": 503}, {"status": 503})
    response = call(load_sample(METRIC))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 2
    assert itsm_calls(snow) == [FIND, FIND, FIND, CI, CI, CREATE]


def test_timeout_then_success(call: Any, snow: responses.RequestsMock, sleeps: list[float]) -> None:
    snow.get(INCIDENTS, body=requests.exceptions.ReadTimeout("read timed out"))
    _created_after_failures(snow)
    response = call(load_sample(METRIC))
    assert body_of(response)["action"] == "created"
    assert len(sleeps) == 1
    assert [c for c in itsm_calls(snow) if c == CREATE] == [CREATE]


def test_permanent_rejection_is_dead_lettered_and_gives_502(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=400, json={"error": {"message": "Invalid value for field impact",
                                                     "detail": "impact must be 1-3"}, "status": "failure"})

    response = call(load_sample(METRIC))

    assert response.status_code == 502
    error = body_of(response)["error"]
    assert error["code"] == "itsm_rejected"
    assert "Invalid value for field impact" in error["message"]
    assert "outbox replay" in error["message"]
    assert sleeps == []
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    record = record_of(METRIC_KEY)
    assert record.dead is not None and record.dead.status == 400
    assert "Invalid value for field impact" in record.dead.reason
    assert record.due is None and record.item is None and record.intent is None
    next_round(snow)

    again = call(load_sample(METRIC))  # Azure Monitor does not retry a 502, but a person might resend

    assert again.status_code == 502
    assert "Invalid value for field impact" in body_of(again)["error"]["message"]
    assert itsm_calls(snow) == []


def test_itsm_down_past_the_inline_attempts_is_queued_202_and_recorded(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    for _ in range(3):  # ITSM_RETRY_ATTEMPTS=3
        expect_find(snow, METRIC_KEY, [], status=503)
    payload = load_sample(METRIC)

    before = time.time()
    response = call(payload)

    assert response.status_code == 202
    body = body_of(response)
    assert set(body) == {"status", "alertId", "correlationId", "reason"}
    assert body["status"] == "queued"
    assert body["alertId"] == payload["data"]["essentials"]["alertId"]
    assert body["correlationId"] == METRIC_KEY
    assert body["reason"].startswith("queued for the outbox: ")
    assert "503" in body["reason"]
    assert "Retry-After" not in response.headers
    assert len(sleeps) == 2
    assert itsm_calls(snow) == [FIND, FIND, FIND]
    record = record_of(METRIC_KEY)
    assert record.due is not None and record.due > before  # pending: the outbox takes it from here
    assert record.attempts == 1 and record.last_error is not None and "503" in record.last_error
    assert (record.item, record.dead, record.held, record.claim) == (None, None, None, None)
    assert installed().reconciler.store.payload(METRIC_KEY, print_of(payload)) is not None


def test_retry_after_beyond_the_budget_is_queued_for_then(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    expect_find(snow, METRIC_KEY, [], status=429, headers={"Retry-After": "120"})

    before = time.time()
    response = call(load_sample(METRIC))

    assert response.status_code == 202
    assert body_of(response)["status"] == "queued"
    assert sleeps == []
    assert itsm_calls(snow) == [FIND]
    due = record_of(METRIC_KEY).due
    assert due is not None and before + 119 <= due <= time.time() + 121


def test_an_outbox_message_before_the_record_is_due_keeps_to_the_back_off(
    call: Any, snow: responses.RequestsMock, user_functions: UserFunctions
) -> None:
    # ServiceNow asked for two minutes; a duplicate (early) queue message must not hammer it.
    expect_find(snow, METRIC_KEY, [], status=429, headers={"Retry-After": "120"})
    assert call(load_sample(METRIC)).status_code == 202
    next_round(snow)
    due = record_of(METRIC_KEY).due

    user_functions["outbox"](queue_message(METRIC_KEY))

    assert itsm_calls(snow) == []
    record = record_of(METRIC_KEY)
    assert (record.due, record.attempts, record.item) == (due, 1, None)


# --- the outbox: queue trigger and timer ----------------------------------------------------------


def test_outbox_queue_message_finishes_a_queued_alert_once_servicenow_answers(
    call: Any, snow: responses.RequestsMock, user_functions: UserFunctions
) -> None:
    for _ in range(3):
        expect_find(snow, METRIC_KEY, [], status=503)
    payload = load_sample(METRIC)
    assert call(payload).status_code == 202
    next_round(snow)
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "5" * 32, "number": "INC0010055"}})
    wait_until_due(METRIC_KEY)

    assert user_functions["outbox"](queue_message(METRIC_KEY)) is None

    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    assert post_body(snow)["correlation_id"] == METRIC_KEY
    record = record_of(METRIC_KEY)
    assert record.item is not None and record.item["number"] == "INC0010055"
    assert record.written == {print_of(payload): "created"}
    assert (record.due, record.attempts, record.last_error, record.claim) == (None, 0, None, None)
    next_round(snow)

    # The same message again (queues deliver at least once): nothing left to do, no call.
    user_functions["outbox"](queue_message(METRIC_KEY))
    redelivered = call(payload)

    assert itsm_calls(snow) == []
    assert body_of(redelivered)["action"] == "ignored"
    assert body_of(redelivered)["workItem"]["number"] == "INC0010055"


def test_outbox_message_for_a_still_failing_itsm_schedules_the_next_attempt(
    call: Any, snow: responses.RequestsMock, user_functions: UserFunctions
) -> None:
    for _ in range(3):
        expect_find(snow, METRIC_KEY, [], status=503)
    assert call(load_sample(METRIC)).status_code == 202
    next_round(snow)
    expect_find(snow, METRIC_KEY, [], status=503)
    wait_until_due(METRIC_KEY)

    before = time.time()
    user_functions["outbox"](queue_message(METRIC_KEY))

    assert itsm_calls(snow) == [FIND] * 3
    record = record_of(METRIC_KEY)
    assert record.attempts == 2 and record.dead is None and record.item is None
    assert record.due is not None and record.due > before


def test_outbox_message_naming_no_key_is_dropped_without_a_call(
    install: Any, snow: responses.RequestsMock, user_functions: UserFunctions
) -> None:
    for body in (b"not json", b'{"nokey": 1}', b"\xff\xfe"):
        assert user_functions["outbox"](func.QueueMessage(body=body)) is None
    assert itsm_calls(snow) == []


def test_outbox_message_while_misconfigured_raises_so_the_host_retries(user_functions: UserFunctions) -> None:
    runtime.install(UnavailableApi("SERVICENOW_PASSWORD", "SERVICENOW_PASSWORD: is required"), None)
    try:
        with pytest.raises(RuntimeError, match="misconfigured"):
            user_functions["outbox"](queue_message(METRIC_KEY))
    finally:
        runtime.reset()


def test_outbox_sweep_timer_drains_what_is_due(
    call: Any, snow: responses.RequestsMock, user_functions: UserFunctions
) -> None:
    for _ in range(3):
        expect_find(snow, METRIC_KEY, [], status=503)
    assert call(load_sample(METRIC)).status_code == 202
    next_round(snow)
    timer = TimerRequest(past_due=False)

    user_functions["outbox_sweep"](timer)  # the record is due only after its back-off

    assert itsm_calls(snow) == []
    assert installed().reconciler.replay(METRIC_KEY) is not None  # what `outbox replay` does: due now
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "6" * 32, "number": "INC0010066"}})

    user_functions["outbox_sweep"](timer)

    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    record = record_of(METRIC_KEY)
    assert record.item is not None and record.item["number"] == "INC0010066" and record.due is None


# --- the state store down ------------------------------------------------------------------------


def test_state_store_down_but_itsm_up_still_creates(call: Any, snow: responses.RequestsMock) -> None:
    installed().reconciler.store.close()  # every state operation now fails
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "8" * 32, "number": "INC0010008"}})

    response = call(load_sample(METRIC))

    assert (response.status_code, body_of(response)["action"]) == (200, "created")
    assert body_of(response)["workItem"]["id"] == "8" * 32
    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]


def test_state_store_down_and_itsm_down_is_the_one_503(
    call: Any, snow: responses.RequestsMock, sleeps: list[float]
) -> None:
    installed().reconciler.store.close()
    for _ in range(3):
        expect_find(snow, METRIC_KEY, [], status=503)

    response = call(load_sample(METRIC))

    assert response.status_code == 503
    error = body_of(response)["error"]
    assert error["code"] == "unavailable"
    assert "could not be recorded" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    assert itsm_calls(snow) == [FIND, FIND, FIND]


# --- the ITSM refuses the bridge's credential ----------------------------------------------------


def test_servicenow_refusing_the_credential_holds_the_alert_and_health_says_degraded(
    call: Any, snow: responses.RequestsMock, health: Callable[[], func.HttpResponse],
    user_functions: UserFunctions, sleeps: list[float],
) -> None:
    expect_find(snow, METRIC_KEY, [], status=401,
                json={"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}})

    response = call(load_sample(METRIC))

    assert response.status_code == 202
    assert body_of(response)["status"] == "queued"
    assert "User Not Authenticated" in body_of(response)["reason"]
    assert sleeps == []  # a refused credential is not retried inline
    assert itsm_calls(snow) == [FIND]
    record = record_of(METRIC_KEY)
    assert record.held is not None and "401" in record.held
    assert record.dead is None and record.due is not None
    degraded = health()
    assert degraded.status_code == 200
    assert body_of(degraded)["status"] == "degraded"
    assert "refuses the bridge's credential" in body_of(degraded)["reason"]
    assert PASSWORD not in degraded.get_body().decode()
    next_round(snow)

    # Still refused on the outbox's next pass: held again, never dead-lettered.
    expect_find(snow, METRIC_KEY, [], status=403, json={"error": {"message": "Insufficient rights"}})
    wait_until_due(METRIC_KEY)
    user_functions["outbox"](queue_message(METRIC_KEY))
    record = record_of(METRIC_KEY)
    assert record.dead is None and record.held is not None and record.attempts == 2
    assert body_of(health())["status"] == "degraded"
    next_round(snow)

    # The credential is fixed: the held alert is created, and health is ok again.
    expect_find(snow, METRIC_KEY, [])
    expect_metric_ci_misses(snow)
    snow.post(INCIDENTS, status=201, json={"result": {"sys_id": "4" * 32, "number": "INC0010044"}})
    wait_until_due(METRIC_KEY)
    user_functions["outbox"](queue_message(METRIC_KEY))

    assert itsm_calls(snow) == [FIND, CI, CI, CREATE]
    record = record_of(METRIC_KEY)
    assert record.held is None and record.due is None and record.item is not None
    assert body_of(health()) == {"status": "ok", "version": __version__, "adapter": "servicenow"}


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
                                 install: Callable[..., runtime.Runtime]) -> None:
    install()  # a fresh verifier: no keys cached
    entra.set_available(False)
    try:
        response = call(load_sample("metric_static_fired.testaction.json"))
    finally:
        entra.set_available(True)
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert itsm_calls(snow) == []
    assert installed().reconciler.store.load(METRIC_KEY) is None  # nothing recorded for an unproven caller


def test_subscription_not_allowed_is_403(call: Any, snow: responses.RequestsMock,
                                         install: Callable[..., runtime.Runtime]) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS="22222222-2222-2222-2222-222222222222")
    response = call(load_sample("metric_static_fired.testaction.json"))
    assert response.status_code == 403
    assert body_of(response)["error"]["code"] == "forbidden"
    assert SUBSCRIPTION in body_of(response)["error"]["message"]
    assert itsm_calls(snow) == []
    assert installed().reconciler.store.load(METRIC_KEY) is None


def test_allowed_subscription_passes(call: Any, snow: responses.RequestsMock,
                                     install: Callable[..., runtime.Runtime]) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    payload = load_sample("metric_static_resolved.json")
    payload["data"]["essentials"]["alertId"] = payload["data"]["essentials"]["alertId"].replace(
        "<subscription ID>", SUBSCRIPTION)
    payload["data"]["essentials"]["alertTargetIDs"] = [
        t.replace("<subscription ID>", SUBSCRIPTION) for t in payload["data"]["essentials"]["alertTargetIDs"]]
    key = payload["data"]["essentials"]["alertId"].rsplit("/", 1)[-1].lower()
    expect_find(snow, key, [])
    response = call(payload)
    assert (response.status_code, body_of(response)["action"]) == (200, "ignored")
    assert itsm_calls(snow) == [FIND]  # a Resolved with no Fired is recorded after one lookup


OTHER_SUBSCRIPTION = "22222222-2222-2222-2222-222222222222"
SAMPLE_DIRS = (
    Path(__file__).parent / "fixtures" / "alerts",
    Path(__file__).parents[1] / "bridge" / "sandbox" / "samples",
)


def _refused_for_subscription(call: Any, snow: responses.RequestsMock, payload: dict[str, Any]) -> str:
    response = call(payload)
    assert response.status_code == 403
    error = body_of(response)["error"]
    assert error["code"] == "forbidden"
    assert itsm_calls(snow) == []
    key = correlation_key(payload["data"]["essentials"]["alertId"])
    assert installed().reconciler.store.load(key) is None  # nothing recorded
    message: str = error["message"]
    return message


def test_a_bare_alert_id_does_not_sidestep_the_subscription_allow_list(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime]
) -> None:
    # The same GUID as the sample's alertId, without /subscriptions/<id>/..., and one allowed target.
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    message = _refused_for_subscription(call, snow, load_sample(METRIC, alertId=METRIC_KEY))
    assert message.startswith("alertId names no subscription")


@pytest.mark.parametrize(
    "alert_id",
    [
        f"/providers/Microsoft.AlertsManagement/alerts/{METRIC_KEY}",
        f"/resourceGroups/test-RG/subscriptions/{SUBSCRIPTION}/alerts/{METRIC_KEY}",
        f"//subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{METRIC_KEY}",
        f"/subscriptions//providers/Microsoft.AlertsManagement/alerts/{METRIC_KEY}",
        f"subscriptions/{SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{METRIC_KEY}",
    ],
    ids=["no-subscription", "subscription-not-first", "double-slash", "empty-segment", "no-leading-slash"],
)
def test_an_alert_id_without_a_leading_subscription_is_403(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime], alert_id: str
) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    message = _refused_for_subscription(call, snow, load_sample(METRIC, alertId=alert_id))
    assert message.startswith("alertId names no subscription")


def test_a_target_without_a_subscription_is_403_naming_it(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime]
) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    payload = load_sample(METRIC)
    targets = payload["data"]["essentials"]["alertTargetIDs"]
    payload["data"]["essentials"]["alertTargetIDs"] = [*targets, "  ", "test-storageAccount"]
    message = _refused_for_subscription(call, snow, payload)
    assert message.startswith("alertTargetIDs[2] names no subscription")  # the payload's own index


def test_a_target_in_another_subscription_is_403_naming_it(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime]
) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    payload = load_sample(METRIC)
    payload["data"]["essentials"]["alertTargetIDs"].append(
        f"/subscriptions/{OTHER_SUBSCRIPTION.upper()}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm")
    message = _refused_for_subscription(call, snow, payload)
    assert message == f"subscription {OTHER_SUBSCRIPTION} of alertTargetIDs[1] is not allowed"


def test_a_subscription_segment_that_is_no_guid_is_not_quoted_back(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime]
) -> None:
    install(ALLOWED_SUBSCRIPTION_IDS=SUBSCRIPTION)
    payload = load_sample(METRIC, alertId=f"/subscriptions/<script>x</script>/alerts/{METRIC_KEY}")
    message = _refused_for_subscription(call, snow, payload)
    assert message == "subscription (not a subscription id) of alertId is not allowed"


@pytest.mark.parametrize(
    "sample", [p for d in SAMPLE_DIRS for p in sorted(d.glob("*.json"))], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_every_bundled_sample_passes_with_its_subscription_allowed(
    call: Any, snow: responses.RequestsMock, install: Callable[..., runtime.Runtime], sample: Path
) -> None:
    # The documentation's placeholder subscription stands for a real one.
    text = sample.read_text(encoding="utf-8").replace("<subscription ID>", OTHER_SUBSCRIPTION)
    payload = json.loads(text)
    subscription = payload["data"]["essentials"]["alertId"].split("/")[2].lower()
    install(ALLOWED_SUBSCRIPTION_IDS=subscription)
    # The ITSM answers nothing here (no call is expected): a processed or queued answer, never a 403.
    assert call(payload).status_code in (200, 202)


def test_unexpected_bug_is_503_not_500(call: Any, snow: responses.RequestsMock,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import api

    def explode(body: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "parse_alert", explode)
    response = call(load_sample(METRIC))
    assert response.status_code == 503
    assert "boom" not in response.get_body().decode()
    assert itsm_calls(snow) == []


# --- secrets --------------------------------------------------------------------------------


def test_no_secret_or_token_in_logs_or_error_bodies(
    call: Any, snow: responses.RequestsMock, entra: EntraStandIn, caplog: pytest.LogCaptureFixture,
    health: Callable[[], func.HttpResponse],
) -> None:
    caplog.set_level(logging.DEBUG)
    token = entra.mint(audience=CLIENT_ID)
    basic = "YXp1cmUuYnJpZGdlOlBhNTUtdzByZC1uZXZlci1sb2dnZWQ="  # azure.bridge:<password>, Base64
    # ServiceNow echoes the credentials back in its error (it happens with proxies and bad configs).
    expect_find(snow, METRIC_KEY, [], status=401,
                json={"error": {"message": f"User Not Authenticated: {PASSWORD} {basic}", "detail": token}})
    first = call(load_sample(METRIC), token=token)
    bodies = [first.get_body().decode()]
    expired = entra.mint(audience=CLIENT_ID, lifetime_seconds=-3600)
    bodies.append(call(load_sample(METRIC), token=expired).get_body().decode())
    bodies.append(call(None, raw=b"{bad", token=token + "x").get_body().decode())
    bodies.append(health().get_body().decode())  # degraded, with ServiceNow's reason

    record = record_of(METRIC_KEY)
    text = "\n".join(bodies) + "\n" + caplog.text + "\n" + record.to_json()
    for secret in (PASSWORD, basic, token, expired, token.split(".")[2], expired.split(".")[1]):
        assert secret not in text
    # A 401 from ServiceNow refuses the bridge's own credential: held and queued, never dead-lettered.
    assert first.status_code == 202 and "User Not Authenticated: ***" in bodies[0]
    assert record.held is not None and record.dead is None


# --- health and configuration ------------------------------------------------------------------


def test_health_reports_version_and_adapter_only(health: Callable[[], func.HttpResponse], install: Any) -> None:
    response = health()
    assert response.status_code == 200
    assert body_of(response) == {"status": "ok", "version": __version__, "adapter": "servicenow"}


def deep_health(user_functions: UserFunctions) -> func.HttpResponse:
    # The host parses the query into params; the route names the operation.
    response: func.HttpResponse = user_functions["health"](
        func.HttpRequest(method="GET", url="/api/health?deep=1", params={"deep": "1"}, body=b"")
    )
    return response


def expect_credential_check(snow: responses.RequestsMock, status: int = 200) -> None:
    body: dict[str, Any] = {"result": []} if status == 200 else {"error": {"message": "User Not Authenticated"}}
    snow.get(
        INCIDENTS, status=status, json=body,
        match=[matchers.query_param_matcher({"sysparm_limit": "1", "sysparm_fields": "sys_id"})],
    )


def test_deep_health_through_the_function_runs_every_check(user_functions: UserFunctions, install: Any,
                                                           snow: responses.RequestsMock) -> None:
    expect_credential_check(snow)

    response = deep_health(user_functions)

    assert response.status_code == 200
    body = body_of(response)
    assert body["status"] == "ok"
    assert {name: check["state"] for name, check in body["checks"].items()} == {
        "settings": "ok", "key_vault_references": "ok", "signing_keys": "ok", "itsm_credential": "ok",
        "state_store": "ok", "outbox": "ok",
    }
    assert itsm_calls(snow) == [FIND]  # the one cheap authenticated read


def test_deep_health_through_the_function_names_a_refused_credential(user_functions: UserFunctions, install: Any,
                                                                     snow: responses.RequestsMock) -> None:
    expect_credential_check(snow, 401)

    response = deep_health(user_functions)

    assert response.status_code == 200
    body = body_of(response)
    assert body["status"] == "degraded"
    assert body["reason"] == "failed: itsm_credential"
    assert body["checks"]["itsm_credential"]["reason"] == (
        "the ITSM refuses the bridge's credential (ServiceNow, HTTP 401)"
    )
    assert PASSWORD not in response.get_body().decode()


def test_an_unresolved_password_reference_in_the_function_answers_degraded(
    user_functions: UserFunctions, install: Any, snow: responses.RequestsMock,
    health: Callable[[], func.HttpResponse],
) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-bridge.vault.azure.net/secrets/snow/)"
    install(SERVICENOW_PASSWORD=reference)
    expect_credential_check(snow, 401)  # ServiceNow refuses the reference text as a password

    plain, deep = health(), deep_health(user_functions)

    assert plain.status_code == deep.status_code == 200
    assert body_of(plain)["status"] == "degraded"
    assert "SERVICENOW_PASSWORD holds an unresolved Key Vault reference" in body_of(plain)["reason"]
    checks = body_of(deep)["checks"]
    assert checks["key_vault_references"]["state"] == "failed"
    assert checks["key_vault_references"]["reason"].startswith("SERVICENOW_PASSWORD holds")
    assert checks["itsm_credential"]["state"] == "failed"
    for response in (plain, deep):
        assert "kv-bridge" not in response.get_body().decode()


def test_deep_health_with_bad_settings_answers_503_naming_the_setting(user_functions: UserFunctions,
                                                                      settings_env: dict[str, str]) -> None:
    env = {**settings_env, "AUTH_AUDIENCES": "@Microsoft.KeyVault(VaultName=kv-bridge;SecretName=aud)"}
    runtime.reset()
    try:
        runtime.get_api(env)
        response = deep_health(user_functions)
    finally:
        runtime.reset()
    assert response.status_code == 503
    body = body_of(response)
    assert (body["status"], body["setting"]) == ("misconfigured", "AUTH_AUDIENCES")
    assert body["checks"]["settings"]["state"] == "failed"
    assert body["checks"]["settings"]["reason"].startswith("AUTH_AUDIENCES: is an unresolved Key Vault reference")
    assert "kv-bridge" not in response.get_body().decode()


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

    triggers = {}
    for fn in function_app.app._function_builders:  # the registered decorators, not yet built
        built = fn.build()
        triggers[built.get_function_name()] = built.get_bindings()[0].get_dict_repr()
    assert set(triggers) == {"alerts", "health", "outbox", "outbox_sweep"}
    alerts, health = triggers["alerts"], triggers["health"]
    assert (alerts["type"], alerts["route"]) == ("httpTrigger", "alerts")
    assert [str(m) for m in alerts["methods"]] in (["POST"], ["HttpMethod.POST"])
    assert str(alerts["authLevel"]).lower().endswith("anonymous")
    assert (health["type"], health["route"]) == ("httpTrigger", "health")
    assert [str(m) for m in health["methods"]] in (["GET"], ["HttpMethod.GET"])
    assert str(health["authLevel"]).lower().endswith("function")
    # The queue takes its name from the OUTBOX_QUEUE_NAME setting, through the host's storage connection.
    outbox = triggers["outbox"]
    assert outbox["type"] == "queueTrigger"
    assert outbox["queueName"] == "%OUTBOX_QUEUE_NAME%"
    assert outbox["connection"] == "AzureWebJobsStorage"
    assert "route" not in outbox
    sweep = triggers["outbox_sweep"]
    assert sweep["type"] == "timerTrigger"
    assert sweep["schedule"] == "0 */5 * * * *"  # every 5 minutes, at second 0
    assert sweep["runOnStartup"] is False


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
