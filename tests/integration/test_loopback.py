"""The whole job over real loopback HTTP: local bridge server, ServiceNow and Entra ID stand-ins.

Every test posts alerts with ``requests`` to a :class:`~bridge.server.BridgeServer` on port 0 and
then asserts what the ServiceNow stand-in holds afterwards (records, journals, the request log),
what the Entra ID stand-in served, and what the bridge's SQLite state record says. Faults are
injected in the stand-in, never mocked; retry waits are recorded by the ``sleeps`` fixture instead
of slept, so the suite stays fast. What the HTTP answer leaves queued (202) is finished by driving
the runtime's outbox (``reconciler.run`` or ``worker.drain_once``) once the stand-in answers.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.api import BridgeApi
from bridge.auth import TokenVerifier
from bridge.config import Settings
from bridge.correlation import correlation_key
from bridge.httpclient import new_session
from bridge.runtime import Runtime, build_runtime
from bridge.sandbox.servicenow import RequestRecord, ServiceNowStandIn
from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample, sample_names
from bridge.state.record import Record

from .conftest import CLIENT_TIMEOUT_SECONDS, FakeClock, LocalBridge, MakeRuntime, StartBridge, client_session

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


def assert_queued(response: requests.Response, key: str = METRIC_KEY) -> dict[str, Any]:
    body = body_of(response)
    assert response.status_code == 202, body
    assert body["status"] == "queued"
    assert body["correlationId"] == key
    assert body["reason"].startswith("queued for the outbox: ")
    return body


def itsm_calls(snow: ServiceNowStandIn) -> list[tuple[str, str]]:
    """The table API calls ServiceNow received, in order (OAuth token requests left out)."""
    return [(r.method, r.path) for r in snow.requests if r.path.startswith("/api/now/")]


def record_of(bridge: LocalBridge, key: str = METRIC_KEY) -> Record:
    stored = bridge.reconciler.store.load(key)
    assert stored is not None, f"no state record for {key}"
    return stored.record


def fingerprint_of(payload: dict[str, Any]) -> str:
    from bridge.alerts import parse_alert
    from bridge.correlation import fingerprint

    return fingerprint(parse_alert(json.dumps(payload).encode("utf-8")))


def drain_when_due(bridge: LocalBridge, key: str = METRIC_KEY, most: float = 1.5) -> None:
    """Let the outbox worker take ``key`` once its record is due (it keeps to the record's back-off)."""
    assert bridge.runtime is not None
    due = record_of(bridge, key).due
    assert due is not None and due - time.time() <= most, "the test would wait too long"
    if due > time.time() + 0.05:
        assert bridge.runtime.worker.drain_once() == 0  # not taken before its time
    time.sleep(max(0.0, due - time.time()) + 0.02)
    assert bridge.runtime.worker.drain_once() == 1


FIND = ("GET", INCIDENT_PATH)
CMDB_LOOKUP = ("GET", CMDB_PATH)
CREATE = ("POST", INCIDENT_PATH)


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


# The sandbox's samples that make one alert's story: sent in order in
# tests/integration/test_demo_and_cli.py (test_the_bundled_samples_chain_into_one_alerts_story).
CHAINED_SAMPLES = {
    "metric_static_fired_again.sandbox.json",
    "metric_static_resolved.sandbox.json",
    "log_alerts_v2_fired.sandbox.json",
}


def test_every_bundled_sample_is_covered_here() -> None:
    assert set(sample_names()) == {*CREATED_SAMPLES, RESOLVED_ELSEWHERE, *CHAINED_SAMPLES}


@pytest.mark.parametrize("name", sorted(CREATED_SAMPLES))
def test_fired_sample_creates_one_incident(name: str, bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    payload = load_sample(name)
    alert_id = payload["data"]["essentials"]["alertId"]
    short, ci_name, matched_on = CREATED_SAMPLES[name]

    body = assert_processed(bridge.post_alert(payload), "created")

    incident = only_incident(snow)
    # A Service Health communication is kept per trackingId (its lifecycle), not per alertId.
    key = correlation_key(alert_id) if name != SERVICE_HEALTH else body["correlationId"]
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
    # The Service Health sample is a communication of stage Resolved: its event is over.
    assert incident["state"] == ("6" if name == SERVICE_HEALTH else "1")
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


def test_resolved_sample_without_an_incident_is_recorded_after_one_lookup(
    bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    payload = load_sample(RESOLVED_ELSEWHERE)

    body = assert_processed(bridge.post_alert(payload), "ignored")

    assert body["workItem"] is None
    assert body["reason"] == "no work item for this alert; the resolution is recorded and applies if its Fired arrives"
    assert snow.records("incident") == []
    # One lookup (an incident from an earlier version would be resolved), no write.
    assert [(r.method, r.path) for r in snow.requests if r.path == INCIDENT_PATH] == [("GET", INCIDENT_PATH)]
    assert_processed(bridge.post_alert(payload), "ignored")
    assert len([r for r in snow.requests if r.path == INCIDENT_PATH]) == 1  # looked for once
    record = record_of(bridge, correlation_key(payload["data"]["essentials"]["alertId"]))
    assert [e.condition for e in record.events] == ["Resolved"] and record.due is None


def test_resolved_before_fired_creates_the_incident_already_resolved(
    bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    resolved = load_sample(METRIC, monitorCondition="Resolved", resolvedDateTime=RESOLVED_AT)

    assert_processed(bridge.post_alert(resolved), "ignored")
    assert [(r.method, r.path) for r in snow.requests if r.path == INCIDENT_PATH] == [("GET", INCIDENT_PATH)]
    body = assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    incident = only_incident(snow)
    assert body["workItem"]["id"] == incident["sys_id"]
    assert incident["state"] == "6"
    assert incident["close_code"] == "Solution provided"
    assert incident["close_notes"].startswith("Resolved automatically: Azure Monitor reported alert rule")
    assert incident["resolved_at"] != ""
    assert incident["short_description"].startswith("[Azure Monitor] Sev4 Fired:")
    # One insert carries both, so the data policy (close_code and close_notes when resolved) holds.
    assert itsm_calls(snow) == [FIND, FIND, CMDB_LOOKUP, CREATE]  # the Resolved's lookup, then the Fired's
    notes = snow.journal("incident", incident["sys_id"])
    assert len(notes) == 1
    assert "Opened by the Azure Monitor bridge" in notes[0]
    assert "Azure Monitor reported the alert as resolved" in notes[0]

    again = assert_processed(bridge.post_alert(resolved), "ignored")
    assert again["reason"] == "identical alert already recorded"
    assert len(itsm_calls(snow)) == 4


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
    fired_late = load_sample(METRIC)
    fired_late["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 12.0

    created = assert_processed(bridge.post_alert(fired), "created")
    incident = only_incident(snow)
    sys_id = incident["sys_id"]
    record_path = f"{INCIDENT_PATH}/{sys_id}"
    assert created["workItem"]["id"] == sys_id
    assert len(snow.journal("incident", sys_id)) == 1
    assert itsm_calls(snow) == [FIND, CMDB_LOOKUP, CREATE]  # no look-again after the create
    seen = len(itsm_calls(snow))

    updated = assert_processed(bridge.post_alert(fired_again), "updated")
    assert updated["workItem"]["id"] == sys_id
    notes = snow.journal("incident", sys_id)
    assert len(notes) == 2
    assert notes[1].startswith("Azure Monitor reports the alert fired again.")
    assert "value: 97.5" in notes[1]
    assert itsm_calls(snow)[seen:] == [FIND, ("PATCH", record_path)]  # re-read, then the note
    seen = len(itsm_calls(snow))

    redelivered = assert_processed(bridge.post_alert(fired_again), "ignored")
    assert redelivered["reason"] == "identical alert already recorded"
    assert redelivered["workItem"]["id"] == sys_id
    assert len(snow.journal("incident", sys_id)) == 2
    assert itsm_calls(snow)[seen:] == []  # the record knows: no ITSM call at all

    assert_processed(bridge.post_alert(resolved), "resolved")
    assert itsm_calls(snow)[seen:] == [FIND, ("PATCH", record_path)]
    seen = len(itsm_calls(snow))
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
    assert again["reason"] == "identical alert already recorded"
    assert len(snow.journal("incident", sys_id)) == 3

    late = assert_processed(bridge.post_alert(fired_late), "ignored")
    assert late["reason"] == "work item already resolved; a Fired after the Resolved opens nothing"
    assert late["workItem"]["id"] == sys_id
    first_again = assert_processed(bridge.post_alert(fired), "ignored")
    assert first_again["reason"] == "identical alert already recorded"
    assert only_incident(snow)["state"] == "6"
    assert len(snow.journal("incident", sys_id)) == 3
    assert itsm_calls(snow)[seen:] == []
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    # updated, resolved: the only two writes after the create.
    assert len(table_calls(snow, "PATCH", record_path)) == 2
    record = record_of(bridge)
    assert record.written == {
        fingerprint_of(fired): "created",
        fingerprint_of(fired_again): "updated",
        fingerprint_of(resolved): "resolved",
        fingerprint_of(fired_late): "ignored",
    }


def test_an_incident_a_person_closed_is_left_alone(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")
    incident = only_incident(snow)
    # A service desk agent closes it through the Table API.
    with client_session() as agent:
        closed = agent.patch(
            f"{snow.url}{INCIDENT_PATH}/{incident['sys_id']}",
            json={"state": "7", "close_code": "Closed/Resolved by Caller", "close_notes": "rebooted it myself"},
            auth=("bridge", "sandbox-password"),
            timeout=CLIENT_TIMEOUT_SECONDS,
        )
    assert closed.status_code == 200, closed.text
    seen = len(itsm_calls(snow))

    resolved = bridge.post_alert(load_sample(METRIC, monitorCondition="Resolved", resolvedDateTime=RESOLVED_AT))

    body = assert_processed(resolved, "ignored")
    assert body["reason"] == "work item already closed"
    assert itsm_calls(snow)[seen:] == [FIND]  # re-read before writing, and nothing written
    after = only_incident(snow)
    assert (after["state"], after["close_code"], after["close_notes"]) == (
        "7", "Closed/Resolved by Caller", "rebooted it myself"
    )
    assert len(snow.journal("incident", incident["sys_id"])) == 1


# --- Entra ID signing keys -----------------------------------------------------------------------


def hand_built_runtime(stack: SandboxStack, clock: FakeClock, sleeps: list[float], state_path: Path) -> Runtime:
    """What ``runtime.build_runtime`` assembles, with the token verifier on a clock the test moves."""
    env = stack.bridge_env(STATE_SQLITE_PATH=str(state_path))
    built = build_runtime(env, sleep=sleeps.append)
    settings = Settings.from_env(env)
    verifier = TokenVerifier(settings, new_session(), clock=clock)
    api = BridgeApi(settings, verifier, built.reconciler, adapter_name=built.reconciler.adapter.name)
    return Runtime(api, built.reconciler, built.worker)


def test_rotated_signing_key_is_picked_up_with_exactly_one_refresh(
    start_bridge: StartBridge, sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float],
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    entra = sandbox.entra
    clock = FakeClock()
    runtime = hand_built_runtime(sandbox, clock, sleeps, tmp_path / "state.sqlite3")
    request.addfinalizer(runtime.close)
    bridge = start_bridge(runtime)
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
    if name == SERVICE_HEALTH:
        # Another Service Health event: the same one's communications share one incident.
        second["data"]["alertContext"]["properties"]["trackingId"] = "TEST-OTHER"

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

    assert snow.faults.fired(rule) == 3  # lookup, CMDB lookup, create: no look-again after creating
    assert itsm_calls(snow) == [FIND, CMDB_LOOKUP, CREATE]
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
    # the 429, then the retried lookup; nothing after the create
    assert [(r.status, r.fault) for r in lookups] == [(429, "status"), (200, None)]


def test_a_refused_create_is_sent_again_at_once(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    # A 503 is a refusal before any work: the create cannot have landed.
    snow.faults.status(503, method="POST", path=f"^{INCIDENT_PATH}$", times=1)

    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    assert len(sleeps) == 1 and 0.125 <= sleeps[0] <= 0.25  # first backoff: base 0.25 s, equal jitter
    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    posts = table_calls(snow, "POST", INCIDENT_PATH)
    assert [r.status for r in posts] == [503, 201]
    assert itsm_calls(snow) == [FIND, CMDB_LOOKUP, CREATE, FIND, CREATE]  # the CI is cached


@pytest.mark.parametrize("fault", ["status-500", "drop"])
def test_a_create_with_an_unknown_outcome_is_not_sent_again_before_it_settles(
    fault: str, start_bridge: StartBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    # A 500 or a connection lost after sending may have committed the create. The bridge looks
    # again at once; finding nothing, it gives ServiceNow ITSM_SETTLE_SECONDS before sending again.
    bridge = start_bridge(ITSM_SETTLE_SECONDS="1")
    if fault == "drop":
        snow.faults.drop(method="POST", path=f"^{INCIDENT_PATH}$", times=1)
    else:
        snow.faults.status(500, method="POST", path=f"^{INCIDENT_PATH}$", times=1)
    payload = load_sample(METRIC)

    body = assert_queued(bridge.post_alert(payload))

    assert "given time to land" in body["reason"]
    assert snow.records("incident") == []
    assert itsm_calls(snow) == [FIND, CMDB_LOOKUP, CREATE, FIND]
    record = record_of(bridge)
    assert record.intent is not None and record.intent.operation == "create"
    assert record.due is not None and record.due <= record.intent.sent_at + 1 + 0.01
    assert bridge.runtime is not None and bridge.runtime.worker.drain_once() == 0  # not due yet

    time.sleep(max(0.0, record.due - time.time()) + 0.05)
    assert bridge.runtime.worker.drain_once() == 1

    incident = only_incident(snow)
    assert itsm_calls(snow)[4:] == [FIND, CREATE]  # looked up once more, then created once
    record = record_of(bridge)
    assert record.item is not None and record.item["id"] == incident["sys_id"]
    assert record.written == {fingerprint_of(payload): "created"}
    assert (record.intent, record.due) == (None, None)
    again = assert_processed(bridge.post_alert(payload), "ignored")
    assert again["workItem"]["number"] == incident["number"]


def test_create_committed_but_response_lost_makes_exactly_one_incident(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    snow.faults.commit_then_drop(method="POST", path=f"^{INCIDENT_PATH}$", times=1)

    body = assert_processed(bridge.post_alert(load_sample(METRIC)), "created")

    incident = only_incident(snow)
    assert body["workItem"]["id"] == incident["sys_id"]
    assert body["workItem"]["number"] == incident["number"]
    assert len(sleeps) == 1
    # The retry's fresh lookup finds the committed incident and adopts it; no second create is sent.
    posts = table_calls(snow, "POST", INCIDENT_PATH)
    assert [(r.status, r.fault) for r in posts] == [(None, "commit_then_drop")]
    assert len(table_calls(snow, "GET", INCIDENT_PATH)) == 2
    assert len(snow.journal("incident", incident["sys_id"])) == 1
    record = record_of(bridge)
    assert record.item is not None and record.item["id"] == incident["sys_id"]
    assert record.intent is None and not record.adopted  # our own create, not someone else's


@pytest.mark.parametrize("change", ["note", "resolve"])
def test_a_note_or_resolve_whose_answer_was_lost_is_written_exactly_once(
    change: str, bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")
    sys_id = only_incident(snow)["sys_id"]
    if change == "note":
        payload = load_sample(METRIC)
        payload["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 97.5
    else:
        payload = load_sample(METRIC, monitorCondition="Resolved", resolvedDateTime=RESOLVED_AT)
    snow.faults.commit_then_drop(method="PATCH", path=f"^{INCIDENT_PATH}/", times=1)

    body = assert_processed(bridge.post_alert(payload), "updated" if change == "note" else "resolved")

    assert body["workItem"]["id"] == sys_id
    assert len(sleeps) == 1
    patches = table_calls(snow, "PATCH", f"{INCIDENT_PATH}/{sys_id}")
    assert [(r.status, r.fault) for r in patches] == [(None, "commit_then_drop")]  # never sent again
    notes = snow.journal("incident", sys_id)
    assert len(notes) == 2
    if change == "resolve":
        assert only_incident(snow)["state"] == "6"
        assert notes[1].startswith("Azure Monitor reported the alert as resolved")
    else:
        assert "value: 97.5" in notes[1]
    assert record_of(bridge).intent is None
    assert record_of(bridge).written[fingerprint_of(payload)] == body["action"]


def test_servicenow_down_for_every_attempt_answers_202_then_the_outbox_creates_it_once(
    start_bridge: StartBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    bridge = start_bridge(OUTBOX_MAX_DELAY_SECONDS="0.2")
    rule = snow.faults.status(503, retry_after=1, path=r"^/api/now/")
    payload = load_sample(METRIC)

    before = time.time()
    body = assert_queued(bridge.post_alert(payload))

    assert "503" in body["reason"]
    assert snow.faults.fired(rule) == 4  # ITSM_RETRY_ATTEMPTS default
    assert sleeps == [1.0, 1.0, 1.0]
    assert snow.records("incident") == []
    assert table_calls(snow, "POST", INCIDENT_PATH) == []
    record = record_of(bridge)
    assert record.due is not None and record.due >= before + 1  # Retry-After outweighs the 0.2 s back-off
    assert (record.item, record.dead, record.held) == (None, None, None)
    snow.faults.clear()
    seen = len(snow.requests)

    drain_when_due(bridge)

    assert snow.requests[seen:]  # the outbox went to ServiceNow only once the record was due
    incident = only_incident(snow)
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    assert record_of(bridge).due is None
    again = assert_processed(bridge.post_alert(payload), "ignored")
    assert again["reason"] == "identical alert already recorded"
    assert again["workItem"]["id"] == incident["sys_id"]
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1


def test_servicenow_stopped_then_back_the_outbox_worker_delivers(
    start_bridge: StartBridge, sandbox: SandboxStack, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    bridge = start_bridge(OUTBOX_MAX_DELAY_SECONDS="0.2")
    assert bridge.runtime is not None
    sandbox.servicenow.stop()
    try:
        body = assert_queued(bridge.post_alert(load_sample(METRIC)))
    finally:
        sandbox.servicenow.start()  # same port again
    assert "connection failed" in body["reason"]
    assert snow.records("incident") == []

    bridge.runtime.worker.start()
    try:
        deadline = time.monotonic() + 10
        while not snow.records("incident") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        bridge.runtime.worker.stop()

    incident = only_incident(snow)
    assert incident["correlation_id"] == METRIC_KEY
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    record = record_of(bridge)
    assert record.item is not None and record.item["id"] == incident["sys_id"]
    assert record.due is None and record.attempts == 0


def test_permanent_refusal_answers_502_is_dead_lettered_and_replays_once_fixed(
    bridge: LocalBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    refusal = {
        "error": {
            "message": "Invalid value for field: impact",
            "detail": "Operation against table 'incident' aborted: impact must be 1, 2 or 3",
        },
        "status": "failure",
    }
    snow.faults.status(400, method="POST", path=f"^{INCIDENT_PATH}$", body=refusal, times=1)

    response = bridge.post_alert(load_sample(METRIC))

    assert response.status_code == 502
    error = body_of(response)["error"]
    assert error["code"] == "itsm_rejected"
    assert "Invalid value for field: impact" in error["message"]
    assert "sandbox-secret" not in response.text
    assert sleeps == []
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    assert snow.records("incident") == []
    record = record_of(bridge)
    assert record.dead is not None and record.dead.status == 400
    assert "Invalid value for field: impact" in record.dead.reason
    assert record.due is None

    # Someone fixes the mapping (here: the fault is used up) and replays it.
    assert bridge.reconciler.replay(METRIC_KEY) is not None
    result = bridge.reconciler.run(METRIC_KEY)

    assert result.error is None
    incident = only_incident(snow)
    assert incident["correlation_id"] == METRIC_KEY
    record = record_of(bridge)
    assert record.dead is None and record.due is None and record.item is not None


@pytest.mark.parametrize("refusal", ["oauth-401", "acl-403"])
def test_servicenow_refusing_the_bridge_is_held_with_health_degraded_never_dead_lettered(
    refusal: str, start_bridge: StartBridge, snow: ServiceNowStandIn, sleeps: list[float]
) -> None:
    bridge = start_bridge(OUTBOX_MAX_DELAY_SECONDS="0.2")
    if refusal == "oauth-401":
        snow.faults.status(401, method="POST", path="^/oauth_token.do$",
                           body={"error": "invalid_client", "error_description": "Client authentication failed"})
        needle = "invalid_client"
    else:
        # An ACL refusing the bridge's user (a role taken away): its own access, not this change.
        snow.faults.status(403, method="POST", path=f"^{INCIDENT_PATH}$", body={
            "error": {"message": "User Not Authorized", "detail": "Insufficient rights to insert into incident"},
            "status": "failure",
        })
        needle = "User Not Authorized"
    health_url = f"{bridge.url}/api/health"

    body = assert_queued(bridge.post_alert(load_sample(METRIC)))

    assert needle in body["reason"]
    assert "sandbox-secret" not in json.dumps(body)
    assert sleeps == []  # refused: not retried inline
    assert snow.records("incident") == []
    record = record_of(bridge)
    assert record.held is not None and needle in record.held
    assert record.dead is None and record.due is not None
    degraded = bridge.http.get(health_url, timeout=CLIENT_TIMEOUT_SECONDS)
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert "refuses the bridge's credential" in degraded.json()["reason"]
    assert "sandbox-secret" not in degraded.text

    drain_when_due(bridge)  # still refused: held again, not dead-lettered
    record = record_of(bridge)
    assert record.held is not None and record.dead is None and record.attempts == 2
    assert snow.records("incident") == []

    snow.faults.clear()  # the credential (or the instance's rule) is fixed
    drain_when_due(bridge)

    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    assert record_of(bridge).held is None
    healthy = bridge.http.get(health_url, timeout=CLIENT_TIMEOUT_SECONDS)
    assert healthy.json()["status"] == "ok" and "reason" not in healthy.json()


def test_a_403_from_a_data_policy_refuses_the_change_and_is_dead_lettered(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge()
    snow.faults.status(403, method="POST", path=f"^{INCIDENT_PATH}$", times=1, body={
        "error": {"message": "Data Policy Exception: The following fields are mandatory: Assignment group",
                  "detail": "Operation against table 'incident' aborted by a data policy"},
        "status": "failure",
    })

    response = bridge.post_alert(load_sample(METRIC))

    assert response.status_code == 502 and response.json()["error"]["code"] == "itsm_rejected"
    assert "Data Policy Exception" in response.json()["error"]["message"]
    record = record_of(bridge)
    assert record.dead is not None and record.dead.status == 403 and record.held is None
    assert bridge.http.get(f"{bridge.url}/api/health", timeout=CLIENT_TIMEOUT_SECONDS).json()["status"] == "ok"


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


def test_a_delivery_overtaken_by_a_concurrent_one_does_not_also_answer_created(
    bridge: LocalBridge, sandbox: SandboxStack, snow: ServiceNowStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving ten simultaneous deliveries hit now and then, made deterministic: the first
    # delivery records the alert, and before its own pass starts, a redelivery of the same payload
    # takes the claim and creates the incident. One incident, so one answer may say "created".
    store = bridge.reconciler.store
    real_insert = store.insert
    second: list[requests.Response] = []

    def insert_then_let_a_redelivery_overtake(*args: Any, **kwargs: Any) -> str:
        version = real_insert(*args, **kwargs)
        if not second:
            with client_session() as http:
                second.append(http.post(
                    f"{bridge.url}/api/alerts", json=load_sample(METRIC),
                    headers={"Authorization": f"Bearer {sandbox.token()}"}, timeout=CLIENT_TIMEOUT_SECONDS,
                ))
        return version

    monkeypatch.setattr(store, "insert", insert_then_let_a_redelivery_overtake)

    first = bridge.post_alert(load_sample(METRIC))

    incident = only_incident(snow)
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    answers = [body_of(first), body_of(second[0])]
    assert {a["workItem"]["id"] for a in answers} == {incident["sys_id"]}
    assert sorted(a["action"] for a in answers) == ["created", "ignored"], answers


def test_two_instances_sharing_one_state_file_send_exactly_one_create(
    make_runtime: MakeRuntime, sandbox: SandboxStack, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    # Two bridge instances (separate runtimes: no shared lock, no shared connection) get the same
    # alert at once, and ServiceNow is slow to commit creates. The claim on the one shared record
    # lets only one of them create; the other waits for it and answers with its incident.
    from bridge.api import ApiRequest

    shared = str(tmp_path / "shared-state.sqlite3")
    instances = [make_runtime(STATE_SQLITE_PATH=shared).api for _ in range(2)]
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
        bodies.append({"http": response.status, **response.body})

    threads = [threading.Thread(target=deliver, args=(api,)) for api in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1
    incident = only_incident(snow)
    assert incident["state"] == "1"
    assert sorted((b["http"], b["action"]) for b in bodies) == [(200, "created"), (200, "ignored")]
    ignored = next(b for b in bodies if b["action"] == "ignored")
    assert ignored["reason"] == "identical alert already recorded (handled by an earlier or concurrent delivery)"
    assert {b["workItem"]["number"] for b in bodies} == {incident["number"]}


def test_a_slow_servicenow_is_answered_202_within_the_inline_budget(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    # Every ServiceNow call takes 1.3 s; the HTTP answer may wait ITSM_INLINE_SECONDS (1 s here)
    # in all, then the alert is left to the outbox.
    bridge = start_bridge(ITSM_INLINE_SECONDS="1", ITSM_TIMEOUT_SECONDS="4", OUTBOX_MAX_DELAY_SECONDS="0.2")
    snow.faults.latency(1.3, path=r"^/api/now/")
    payload = load_sample(METRIC)

    started = time.monotonic()
    response = bridge.post_alert(payload)
    elapsed = time.monotonic() - started

    body = assert_queued(response)
    assert "timed out" in body["reason"]
    assert elapsed < 1.0 + 0.5
    assert snow.records("incident") == []
    assert record_of(bridge).due is not None
    wait_for_requests(snow, "GET", INCIDENT_PATH, 1)  # the lookup the bridge gave up on

    snow.faults.clear()
    drain_when_due(bridge)
    assert only_incident(snow)["correlation_id"] == METRIC_KEY
    assert len(table_calls(snow, "POST", INCIDENT_PATH)) == 1


def wait_for_requests(snow: ServiceNowStandIn, method: str, path: str, count: int, timeout: float = 5.0) -> None:
    """Wait until the stand-in has logged ``count`` such requests (one the bridge gave up on is
    logged only when its injected latency is over), so none lands in the next test's log."""
    deadline = time.monotonic() + timeout
    while len(table_calls(snow, method, path)) < count:
        assert time.monotonic() < deadline, f"the stand-in never logged {count} {method} {path}"
        time.sleep(0.02)


def test_a_slow_cmdb_costs_an_alert_at_most_its_share_and_is_not_asked_again(
    bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    snow.faults.latency(2.5, method="GET", path=f"^{CMDB_PATH}$")
    started = time.monotonic()
    assert_processed(bridge.post_alert(load_sample(METRIC)), "created")
    elapsed = time.monotonic() - started

    incident = only_incident(snow)
    assert incident["cmdb_ci"] in ("", None)
    assert "CMDB lookup failed" in str(incident["description"])
    assert elapsed < 2.4  # the CMDB's share is 2 s, whatever the CMDB takes
    wait_for_requests(snow, "GET", CMDB_PATH, 1)

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
