"""The whole job over real loopback HTTP: local bridge server, ServiceNow and Entra ID stand-ins.

Every test posts alerts with ``requests`` to a :class:`~bridge.server.BridgeServer` on port 0 and
then asserts what the ServiceNow stand-in holds afterwards (records, journals, the request log)
and what the Entra ID stand-in served. Faults are injected in the stand-in, never mocked; retry
waits are recorded by the ``sleeps`` fixture instead of slept, so the suite stays fast.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests

from bridge.adapters import build_adapter
from bridge.api import BridgeApi
from bridge.auth import TokenVerifier
from bridge.cmdb import CmdbBinder
from bridge.config import Settings
from bridge.correlation import correlation_key
from bridge.httpclient import new_session
from bridge.lifecycle import Lifecycle
from bridge.retry import RetryPolicy
from bridge.sandbox.servicenow import RequestRecord, ServiceNowStandIn
from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample, sample_names

from .conftest import CLIENT_TIMEOUT_SECONDS, FakeClock, LocalBridge, StartBridge, client_session

pytestmark = pytest.mark.integration

INCIDENT_PATH = "/api/now/table/incident"
CMDB_PATH = "/api/now/table/cmdb_ci"
METRIC = "metric_static_fired.testaction.json"
ACTIVITY = "activity_log_administrative_fired.testaction.json"
LOG_V2 = "log_alerts_v2_fired.testaction.json"
SERVICE_HEALTH = "service_health_incident.testaction.json"
RESOLVED_ELSEWHERE = "metric_static_resolved.json"
METRIC_KEY = "12345678-1234-1234-1234-1234567890ab"
RESOLVED_AT = "2025-04-15T18:32:12.8510000Z"


# --- helpers -------------------------------------------------------------------------------------


def with_alert_id(name: str, guid: str, **essentials: Any) -> dict[str, Any]:
    """A bundled sample made into a different alert instance (its own alertId GUID)."""
    alert_id = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    return load_sample(name, alertId=alert_id, **essentials)


def ci_id(snow: ServiceNowStandIn, name: str) -> str:
    matches = [str(ci["sys_id"]) for ci in snow.records("cmdb_ci") if ci["name"] == name]
    assert len(matches) == 1, f"the seeded CMDB has one {name}"
    return matches[0]


def only_incident(snow: ServiceNowStandIn) -> dict[str, Any]:
    incidents = snow.records("incident")
    assert len(incidents) == 1, [i["number"] for i in incidents]
    return incidents[0]


def table_calls(snow: ServiceNowStandIn, method: str, path: str) -> list[RequestRecord]:
    return [r for r in snow.requests if r.method == method and r.path == path]


def body_of(response: requests.Response) -> dict[str, Any]:
    result: dict[str, Any] = response.json()
    return result


def assert_processed(response: requests.Response, action: str) -> dict[str, Any]:
    body = body_of(response)
    assert response.status_code == 200, body
    assert body["status"] == "processed"
    assert body["action"] == action, body
    return body


# --- every bundled sample ------------------------------------------------------------------------

# sample -> (short description, CMDB CI name or None, seeded field the CI was matched on)
CREATED_SAMPLES: dict[str, tuple[str, str | None, str | None]] = {
    ACTIVITY: ("[Azure Monitor] Sev4 Fired: test-activityLogAlertRule on test-VM", "test-VM", "resource_id"),
    LOG_V2: (
        "[Azure Monitor] Sev4 Fired: test-logAlertRule-v2 on test-logAnalyticsWorkspace",
        "test-computer",
        "name",
    ),
    METRIC: (
        "[Azure Monitor] Sev4 Fired: test-metricAlertRule on test-storageAccount",
        "test-storageAccount",
        "resource_id",
    ),
    SERVICE_HEALTH: (
        f"[Azure Monitor] Sev4 Fired: test-ServiceHealthAlertRule on {SANDBOX_SUBSCRIPTION}",
        None,
        None,
    ),
}


def test_every_bundled_sample_is_covered_here() -> None:
    assert set(sample_names()) == {*CREATED_SAMPLES, RESOLVED_ELSEWHERE}


@pytest.mark.parametrize("name", sorted(CREATED_SAMPLES))
def test_fired_sample_creates_one_incident(name: str, bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    payload = load_sample(name)
    alert_id = payload["data"]["essentials"]["alertId"]
    short, ci_name, matched_on = CREATED_SAMPLES[name]

    body = assert_processed(bridge.post_alert(payload), "created")

    incident = only_incident(snow)
    key = correlation_key(alert_id)
    assert body["alertId"] == alert_id
    assert body["correlationId"] == key == incident["correlation_id"]
    assert body["workItem"]["system"] == "servicenow"
    assert body["workItem"]["id"] == incident["sys_id"]
    assert body["workItem"]["number"] == incident["number"] == "INC0010001"
    assert body["workItem"]["url"] == (
        f"{snow.url}/nav_to.do?uri=incident.do%3Fsys_id%3D{incident['sys_id']}"
    )
    assert incident["correlation_display"] == "Azure Monitor"
    assert incident["short_description"] == short
    # Sev4 -> impact 3, urgency 3; the instance's matrix makes that priority 5.
    assert (incident["impact"], incident["urgency"], incident["priority"]) == ("3", "3", "5")
    assert incident["state"] == "1"
    assert alert_id in incident["description"]
    if ci_name is None:
        assert incident["cmdb_ci"] == ""
        assert "No CMDB configuration item found" in incident["description"]
    else:
        assert incident["cmdb_ci"] == ci_id(snow, ci_name)
        assert f"matched on {matched_on}" in incident["description"]
    notes = snow.journal("incident", incident["sys_id"])
    assert len(notes) == 1
    assert notes[0].startswith("Opened by the Azure Monitor bridge")
    assert "[AzMonBridge-" in notes[0]
    assert snow.journal("incident", incident["sys_id"], "comments") == []
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1


def test_resolved_sample_without_an_incident_is_ignored(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    body = assert_processed(bridge.post_alert(load_sample(RESOLVED_ELSEWHERE)), "ignored")

    assert body["workItem"] is None
    assert body["reason"] == "no incident for this alert"
    assert snow.records("incident") == []
    assert {(r.method, r.path) for r in snow.requests if r.path.startswith("/api/")} == {
        ("GET", INCIDENT_PATH)
    }


@pytest.mark.parametrize(
    ("severity", "impact", "urgency", "priority"),
    [("Sev0", "1", "1", "1"), ("Sev1", "1", "2", "2"), ("Sev2", "2", "2", "3"), ("Sev3", "2", "3", "4")],
)
def test_severity_sets_impact_urgency_and_so_priority(
    severity: str, impact: str, urgency: str, priority: str, bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    payload = load_sample(METRIC, severity=severity)

    assert_processed(bridge.post_alert(payload), "created")

    incident = only_incident(snow)
    assert (incident["impact"], incident["urgency"], incident["priority"]) == (impact, urgency, priority)
    assert incident["short_description"].startswith(f"[Azure Monitor] {severity} Fired:")


# --- the lifecycle -------------------------------------------------------------------------------


def test_full_lifecycle_of_one_alert(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    fired = load_sample(METRIC)
    fired_again = load_sample(METRIC)
    fired_again["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 97.5
    resolved = load_sample(METRIC, monitorCondition="Resolved", resolvedDateTime=RESOLVED_AT)

    created = assert_processed(bridge.post_alert(fired), "created")
    incident = only_incident(snow)
    sys_id = incident["sys_id"]
    assert created["workItem"]["id"] == sys_id
    assert len(snow.journal("incident", sys_id)) == 1

    updated = assert_processed(bridge.post_alert(fired_again), "updated")
    assert updated["workItem"]["id"] == sys_id
    notes = snow.journal("incident", sys_id)
    assert len(notes) == 2
    assert notes[1].startswith("Azure Monitor reports the alert fired again.")
    assert "value: 97.5" in notes[1]

    redelivered = assert_processed(bridge.post_alert(fired_again), "ignored")
    assert redelivered["reason"] == "identical alert already recorded"
    assert redelivered["workItem"]["id"] == sys_id
    assert len(snow.journal("incident", sys_id)) == 2

    assert_processed(bridge.post_alert(resolved), "resolved")
    incident = only_incident(snow)
    assert incident["state"] == "6"
    assert incident["close_code"] == "Solution provided"
    assert incident["close_notes"].startswith("Resolved automatically: Azure Monitor reported alert rule")
    assert fired["data"]["essentials"]["alertId"] in incident["close_notes"]
    assert incident["resolved_at"] != ""
    notes = snow.journal("incident", sys_id)
    assert len(notes) == 3
    assert notes[2].startswith("Azure Monitor reported the alert as resolved")

    again = assert_processed(bridge.post_alert(resolved), "ignored")
    assert again["reason"] == "incident already resolved"
    assert len(snow.journal("incident", sys_id)) == 3

    late = assert_processed(bridge.post_alert(load_sample(METRIC)), "ignored")
    assert late["reason"] == "incident already resolved; a Fired after the Resolved opens nothing"
    assert late["workItem"]["id"] == sys_id
    assert only_incident(snow)["state"] == "6"
    assert len(snow.journal("incident", sys_id)) == 3
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    # updated, resolved: the only two writes after the create.
    assert len(table_calls(snow, "PATCH", f"{INCIDENT_PATH}/{sys_id}")) == 2


# --- Entra ID signing keys -----------------------------------------------------------------------


def hand_built_api(stack: SandboxStack, clock: FakeClock, sleeps: list[float]) -> BridgeApi:
    """What ``runtime.build_api`` assembles, with the token verifier on a clock the test moves."""
    settings = Settings.from_env(stack.bridge_env())
    adapter = build_adapter(settings, new_session())
    cmdb = CmdbBinder(adapter, ttl_seconds=settings.cmdb_cache_seconds)
    lifecycle = Lifecycle(
        adapter, settings.mapping, RetryPolicy.from_settings(settings), cmdb, sleep=sleeps.append
    )
    verifier = TokenVerifier(settings, new_session(), clock=clock)
    return BridgeApi(settings, verifier, lifecycle, adapter_name=adapter.name)


def test_rotated_signing_key_is_picked_up_with_exactly_one_refresh(
    start_bridge: StartBridge, sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    entra = sandbox.entra
    clock = FakeClock()
    bridge = start_bridge(hand_built_api(sandbox, clock, sleeps))
    entra.reset_counts()

    old_token = sandbox.token()
    assert_processed(bridge.post_alert(load_sample(METRIC), token=old_token), "created")
    assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (1, 1)

    new_kid = entra.rotate_key()
    new_token = sandbox.token()
    # Within the verifier's 10 s refresh gap the unknown key id cannot trigger a fetch.
    early = bridge.post_alert(load_sample(ACTIVITY), token=new_token)
    assert early.status_code == 401
    assert body_of(early)["error"]["code"] == "invalid_token"
    assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (1, 1)

    clock.advance(11)
    accepted = bridge.post_alert(load_sample(ACTIVITY), token=new_token)
    assert_processed(accepted, "created")
    assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (2, 2)
    assert entra.current_kid == new_kid

    # The new key is cached now; the old one left the key set and refreshes stay rate-limited.
    assert_processed(bridge.post_alert(load_sample(SERVICE_HEALTH), token=sandbox.token()), "created")
    assert bridge.post_alert(load_sample(SERVICE_HEALTH), token=old_token).status_code == 401
    assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (2, 2)
    assert entra.count("metadata_v1") == entra.count("jwks_v1") == 0
    assert len(snow.records("incident")) == 3


# --- CMDB binding --------------------------------------------------------------------------------


def test_ci_found_by_resource_id_despite_different_case(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    payload = load_sample(ACTIVITY)
    target = payload["data"]["essentials"]["alertTargetIDs"][0]
    stored = next(ci for ci in snow.records("cmdb_ci") if ci["name"] == "test-VM")["object_id"]
    assert target != stored and target.lower() == stored.lower()

    assert_processed(bridge.post_alert(payload), "created")

    incident = only_incident(snow)
    vm = ci_id(snow, "test-VM")
    assert incident["cmdb_ci"] == vm
    assert f"CMDB configuration item: test-VM ({vm}, matched on resource_id)" in incident["description"]
    lookups = table_calls(snow, "GET", CMDB_PATH)
    assert [r.query["sysparm_query"] for r in lookups] == [f"object_id={target}"]


def test_ci_found_by_name_after_the_resource_id_misses(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    payload = load_sample(LOG_V2)
    target = payload["data"]["essentials"]["alertTargetIDs"][0]

    assert_processed(bridge.post_alert(payload), "created")

    incident = only_incident(snow)
    computer = ci_id(snow, "test-computer")
    assert incident["cmdb_ci"] == computer
    assert f"CMDB configuration item: test-computer ({computer}, matched on name)" in incident["description"]
    lookups = table_calls(snow, "GET", CMDB_PATH)
    assert [r.query["sysparm_query"] for r in lookups] == [f"object_id={target}", "name=test-computer"]


def test_ci_not_found_is_noted_and_nothing_bound(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    assert_processed(bridge.post_alert(load_sample(SERVICE_HEALTH)), "created")

    incident = only_incident(snow)
    assert incident["cmdb_ci"] == ""
    note = f"No CMDB configuration item found for /subscriptions/{SANDBOX_SUBSCRIPTION}."
    assert note in incident["description"]
    assert note in snow.journal("incident", incident["sys_id"])[0]


@pytest.mark.parametrize(("name", "lookups_each"), [(METRIC, 1), (SERVICE_HEALTH, 1), (LOG_V2, 2)])
def test_ci_lookup_is_cached_for_the_next_alert_on_the_same_resource(
    name: str, lookups_each: int, bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    first = with_alert_id(name, "0a0a0a0a-0000-4000-8000-000000000001")
    second = with_alert_id(name, "0a0a0a0a-0000-4000-8000-000000000002")

    assert_processed(bridge.post_alert(first), "created")
    assert len(table_calls(snow, "GET", CMDB_PATH)) == lookups_each
    assert_processed(bridge.post_alert(second), "created")

    assert len(table_calls(snow, "GET", CMDB_PATH)) == lookups_each
    incidents = snow.records("incident")
    assert len(incidents) == 2
    assert incidents[0]["cmdb_ci"] == incidents[1]["cmdb_ci"]
    assert incidents[0]["correlation_id"] != incidents[1]["correlation_id"]


# --- injected ServiceNow faults ------------------------------------------------------------------


def test_added_latency_still_creates(bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]) -> None:
    rule = snow.faults.latency(0.05, path=r"^/api/now/")

    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    assert snow.faults.fired(rule) == 4  # lookup, CMDB lookup, create, the look-again for a concurrent twin
    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    assert sleeps == []


def test_rate_limit_with_retry_after_then_success(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    rule = snow.faults.status(429, retry_after=1, method="GET", path=f"^{INCIDENT_PATH}$", times=1)

    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    assert snow.faults.fired(rule) == 1
    assert sleeps == [1.0]  # Retry-After outweighs the first backoff (at most 0.25 s)
    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    lookups = table_calls(snow, "GET", INCIDENT_PATH)
    # the 429, the retried lookup, then the look-again after creating
    assert [(r.status, r.fault) for r in lookups] == [(429, "status"), (200, None), (200, None)]


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_then_success(
    status: int, bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    snow.faults.status(status, method="POST", path=f"^{INCIDENT_PATH}$", times=1)

    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    assert len(sleeps) == 1 and 0.125 <= sleeps[0] <= 0.25  # first backoff: base 0.25 s, equal jitter
    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    posts = table_calls(snow, "POST", INCIDENT_PATH)
    assert [r.status for r in posts] == [status, 201]


def test_dropped_connection_then_success(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    snow.faults.drop(method="POST", path=f"^{INCIDENT_PATH}$", times=1)

    body = assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    incident = only_incident(snow)
    assert body["workItem"]["id"] == incident["sys_id"]
    assert len(sleeps) == 1
    posts = table_calls(snow, "POST", INCIDENT_PATH)
    assert [(r.status, r.fault) for r in posts] == [(None, "drop"), (201, None)]


def test_create_committed_but_response_lost_makes_exactly_one_incident(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    snow.faults.commit_then_drop(method="POST", path=f"^{INCIDENT_PATH}$", times=1)

    body = assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    incident = only_incident(snow)
    assert body["workItem"]["id"] == incident["sys_id"]
    assert body["workItem"]["number"] == incident["number"]
    assert len(sleeps) == 1
    # The retry's fresh lookup finds the committed incident; no second create is sent.
    posts = table_calls(snow, "POST", INCIDENT_PATH)
    assert [(r.status, r.fault) for r in posts] == [(None, "commit_then_drop")]
    assert len(table_calls(snow, "GET", INCIDENT_PATH)) == 2
    assert len(snow.journal("incident", incident["sys_id"])) == 1


def test_servicenow_down_for_every_attempt_answers_503_and_writes_nothing(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    rule = snow.faults.status(503, retry_after=2, path=r"^/api/now/")

    response = bridge.post_alert(load_sample(METRIC))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    error = body_of(response)["error"]
    assert error["code"] == "unavailable"
    assert "after 4 attempt(s)" in error["message"]
    assert snow.faults.fired(rule) == 4  # ITSM_RETRY_ATTEMPTS default
    assert sleeps == [2.0, 2.0, 2.0]
    snow.faults.clear()
    assert snow.records("incident") == []
    assert table_calls(snow, "POST", INCIDENT_PATH) == []


def test_permanent_data_policy_refusal_answers_502_without_retrying(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    refusal = {
        "error": {
            "message": "Data Policy Exception: The following fields are mandatory: Assignment group",
            "detail": "Operation against table 'incident' aborted by a data policy",
        },
        "status": "failure",
    }
    snow.faults.status(403, method="POST", path=f"^{INCIDENT_PATH}$", body=refusal)

    response = bridge.post_alert(load_sample(METRIC))

    assert response.status_code == 502
    error = body_of(response)["error"]
    assert error["code"] == "itsm_rejected"
    assert "Data Policy Exception: The following fields are mandatory: Assignment group" in error["message"]
    assert "sandbox-secret" not in response.text
    assert sleeps == []
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    assert snow.records("incident") == []


# --- callers that are not Azure Monitor ----------------------------------------------------------


@pytest.mark.parametrize(
    ("token_options", "status", "code", "message"),
    [
        ({"unpublished_key": True}, 401, "invalid_token", "signing key not found"),
        ({"lifetime_seconds": -3600}, 401, "invalid_token", "token expired"),
        ({"roles": ()}, 403, "forbidden", "required role missing"),
    ],
    ids=["forged", "expired", "no-role"],
)
def test_bad_tokens_are_refused_and_nothing_is_written(
    token_options: dict[str, Any],
    status: int,
    code: str,
    message: str,
    bridge: LocalBridge,
    sandbox: SandboxStack,
    snow: ServiceNowStandIn,
) -> None:
    token = sandbox.token(**token_options)

    response = bridge.post_alert(load_sample(METRIC), token=token)

    assert response.status_code == status
    assert body_of(response) == {"error": {"code": code, "message": message}}
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert token not in response.text
    assert snow.requests == []  # not even a lookup reached ServiceNow
    assert snow.records("incident") == []


def test_missing_token_is_401_and_nothing_is_written(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    response = bridge.post_alert(load_sample(METRIC), with_token=False)

    assert response.status_code == 401
    assert body_of(response)["error"] == {"code": "invalid_token", "message": "missing bearer token"}
    assert snow.requests == []


# --- concurrency ---------------------------------------------------------------------------------


def test_ten_simultaneous_deliveries_make_exactly_one_incident(
    bridge: LocalBridge, sandbox: SandboxStack, snow: ServiceNowStandIn
) -> None:
    body = json.dumps(load_sample(METRIC)).encode("utf-8")
    token = sandbox.token()
    start = threading.Barrier(10)
    results: list[tuple[int, str | None]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        try:
            with client_session() as http:
                start.wait(timeout=5)
                response = http.post(
                    f"{bridge.url}/api/alerts",
                    data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    timeout=CLIENT_TIMEOUT_SECONDS,
                )
            with lock:
                results.append((response.status_code, response.json().get("action")))
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            with lock:
                failures.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    assert sorted(results) == [(200, "created")] + [(200, "ignored")] * 9
    incident = only_incident(snow)
    assert len(snow.journal("incident", incident["sys_id"])) == 1
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1


def test_two_instances_racing_on_one_alert_leave_one_open_incident(
    sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    # Two Function instances (separate processes: no shared lock) get the same alert at once,
    # and ServiceNow is slow to commit creates, so each lookup runs before the other's create
    # lands: both find nothing and both create.
    from bridge.api import ApiRequest
    from bridge.runtime import build_api

    instances = [build_api(sandbox.bridge_env(), sleep=sleeps.append) for _ in range(2)]
    snow.faults.latency(0.5, method="POST", path=f"^{INCIDENT_PATH}$", times=2)
    request = ApiRequest.of(
        "POST", "/api/alerts", {"Authorization": f"Bearer {sandbox.token()}"},
        json.dumps(load_sample(METRIC)).encode("utf-8"),
    )
    start = threading.Barrier(2)
    bodies: list[dict[str, Any]] = []

    def deliver(api: BridgeApi) -> None:
        start.wait(timeout=5)
        response = api.handle(request)
        bodies.append({"status": response.status, **response.body})

    threads = [threading.Thread(target=deliver, args=(api,)) for api in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 2  # the race really happened
    incidents = sorted(snow.records("incident"), key=lambda i: str(i["number"]))
    kept, closed = incidents
    assert (kept["state"], closed["state"]) == ("1", "6")
    assert str(closed["close_notes"]).startswith(f"Duplicate of {kept['number']}")
    assert sorted(b["action"] for b in bodies) == ["created", "ignored"]
    assert {b["workItem"]["number"] for b in bodies} == {kept["number"]}


def test_a_slow_servicenow_cannot_stretch_an_alert_past_its_budget(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    # Every call takes 1 s; unbounded, find + CMDB + create + look-again would take 5 s or more,
    # and retries more still. The 1 s budget is a total: calls are cut to what is left.
    import time

    bridge = start_bridge(ITSM_RETRY_BUDGET_SECONDS="1", ITSM_TIMEOUT_SECONDS="4")
    snow.faults.latency(1.0, path=r"^/api/now/")
    started = time.monotonic()
    response = bridge.post_alert(load_sample(METRIC))
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert elapsed < 3.0


def test_a_slow_cmdb_costs_an_alert_at_most_its_share_and_is_not_asked_again(
    bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    import time

    snow.faults.latency(3.0, method="GET", path=f"^{CMDB_PATH}$")
    started = time.monotonic()
    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")
    elapsed = time.monotonic() - started

    incident = only_incident(snow)
    assert incident["cmdb_ci"] in ("", None)
    assert "CMDB lookup failed" in str(incident["description"])
    assert elapsed < 3.0  # the CMDB's share is 2 s, not 3 s per lookup

    cmdb_calls = len(table_calls(snow, "GET", CMDB_PATH))
    other = with_alert_id(METRIC, "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a")
    assert_processed(bridge.post_alert(other), "created")
    assert len(table_calls(snow, "GET", CMDB_PATH)) == cmdb_calls  # the failure is remembered


# --- OAuth to ServiceNow -------------------------------------------------------------------------


def test_expired_servicenow_token_is_renewed_mid_run(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")
    oauth = [r for r in snow.requests if r.path == "/oauth_token.do"]
    assert [(r.method, r.status) for r in oauth] == [("POST", 200)]
    seen = len(snow.requests)

    snow.expire_tokens()
    assert_processed(bridge.post_alert(load_sample(ACTIVITY)), "created")

    after = [(r.method, r.path, r.status, r.auth) for r in snow.requests[seen:]]
    assert after[:3] == [
        ("GET", INCIDENT_PATH, 401, "bearer"),
        ("POST", "/oauth_token.do", 200, None),
        ("GET", INCIDENT_PATH, 200, "bearer"),
    ]
    assert [r for r in after[3:] if r[2] == 401 or r[1] == "/oauth_token.do"] == []
    assert sleeps == []  # the adapter repeats the call once itself; no retry round was needed
    assert len(snow.records("incident")) == 2
