"""Issue #11's policies through the HTTP API against the ServiceNow stand-in: re-fire windows,
grouping, Service Health lifecycles, quiet resolves of stateless alerts and resolution policies,
in order, out of order and from two bridge instances at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.api import ApiRequest
from bridge.correlation import correlation_key
from bridge.runtime import Runtime
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, load_sample
from tests.integration.conftest import LocalBridge, MakeRuntime, StartBridge

METRIC = "metric_static_fired.testaction.json"
SERVICE_HEALTH = "service_health_incident.testaction.json"
ALERTS = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/"
VM = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/"


def guid(n: int) -> str:
    return f"0b0b0b0b-0000-4000-8000-{n:012d}"


def metric(n: int, condition: str = "Fired", *, fired: str = "2026-03-01T10:00:00Z", resolved: str | None = None,
           target: str | None = None) -> dict[str, Any]:
    """The bundled metric alert as alert instance ``n``: same rule, optionally another target."""
    essentials: dict[str, Any] = {"alertId": ALERTS + guid(n), "monitorCondition": condition, "firedDateTime": fired}
    if condition == "Resolved":
        essentials["resolvedDateTime"] = resolved or "2026-03-01T10:05:00Z"
    if target is not None:
        essentials["alertTargetIDs"] = [VM + target]
        essentials["configurationItems"] = [target]
    return load_sample(METRIC, **essentials)


def health(n: int, stage: str, at: str, text: str = "Investigating", tracking: str = "TRK-001") -> dict[str, Any]:
    """Communication ``n`` of one Service Health incident."""
    payload = load_sample(SERVICE_HEALTH, alertId=ALERTS + "sh" + guid(n).replace("-", ""), firedDateTime=at)
    context = payload["data"]["alertContext"]
    context["eventTimestamp"] = context["submissionTimestamp"] = at
    context["status"] = "Resolved" if stage in ("Resolved", "RCA") else "Active"
    props = context["properties"]
    props.update(stage=stage, trackingId=tracking, communication=f"<p>{text}</p>", communicationId=f"c{n}")
    return payload


def post(bridge: LocalBridge, payload: dict[str, Any]) -> dict[str, Any]:
    response = bridge.post_alert(payload)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def act(bridge: LocalBridge, payload: dict[str, Any]) -> tuple[str, str | None]:
    body = post(bridge, payload)
    return body["action"], (body.get("workItem") or {}).get("number")


def incidents(snow: ServiceNowStandIn) -> dict[str, dict[str, Any]]:
    return {str(row["number"]): row for row in snow.records("incident")}


def notes(snow: ServiceNowStandIn, number: str) -> list[str]:
    return snow.journal("incident", str(incidents(snow)[number]["sys_id"]))


def mapping(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def close_by_hand(bridge: LocalBridge, snow: ServiceNowStandIn, number: str) -> None:
    """What a person does in ServiceNow: close the incident (through the Table API)."""
    sys_id = str(incidents(snow)[number]["sys_id"])
    snow._store.update(
        "incident", sys_id, {"state": "7", "close_code": "Solution provided", "close_notes": "by hand"}, "admin"
    )


# ---------------------------------------------------------------------------------- re-fire


def test_without_a_window_a_flapping_alert_opens_an_incident_per_firing(
    bridge: LocalBridge, snow: ServiceNowStandIn
) -> None:
    assert act(bridge, metric(1)) == ("created", "INC0010001")
    assert act(bridge, metric(1, "Resolved")) == ("resolved", "INC0010001")
    body = post(bridge, metric(2, fired="2026-03-01T10:07:00Z"))

    assert (body["action"], body["workItem"]["number"]) == ("created", "INC0010002")
    # Today's default: one incident per alertId, keyed by it.
    assert body["correlationId"] == correlation_key(ALERTS + guid(2))
    assert [incidents(snow)[n]["state"] for n in ("INC0010001", "INC0010002")] == ["6", "1"]


def test_within_the_window_the_resolved_incident_is_reopened(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(REOPEN_WINDOW="1h")
    first = post(bridge, metric(1))
    assert first["action"] == "created"
    assert act(bridge, metric(1, "Resolved", resolved="2026-03-01T10:05:00Z")) == ("resolved", "INC0010001")

    again = post(bridge, metric(2, fired="2026-03-01T10:20:00Z"))

    assert (again["action"], again["workItem"]["number"]) == ("reopened", "INC0010001")
    assert again["correlationId"] == first["correlationId"] == incidents(snow)["INC0010001"]["correlation_id"]
    assert list(incidents(snow)) == ["INC0010001"]
    assert incidents(snow)["INC0010001"]["state"] == "2"
    reopen = notes(snow, "INC0010001")[-1]  # oldest first
    assert "reopened" in reopen and ALERTS + guid(2) in reopen and "15m" in reopen
    # The same firing delivered again changes nothing; its resolve resolves the incident again.
    assert act(bridge, metric(2, fired="2026-03-01T10:20:00Z")) == ("ignored", "INC0010001")
    assert act(bridge, metric(2, "Resolved", fired="2026-03-01T10:20:00Z", resolved="2026-03-01T10:30:00Z")) == (
        "resolved",
        "INC0010001",
    )
    assert incidents(snow)["INC0010001"]["state"] == "6"


def test_after_the_window_a_new_incident_names_its_predecessor(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(REOPEN_WINDOW="10m")
    post(bridge, metric(1))
    post(bridge, metric(1, "Resolved", resolved="2026-03-01T10:05:00Z"))

    later = post(bridge, metric(2, fired="2026-03-01T11:00:00Z"))

    assert (later["action"], later["workItem"]["number"]) == ("created", "INC0010002")
    second = incidents(snow)["INC0010002"]
    assert second["correlation_id"] == later["correlationId"] != incidents(snow)["INC0010001"]["correlation_id"]
    assert "Follows INC0010001" in second["description"]
    assert "Follows INC0010001" in notes(snow, "INC0010002")[-1]
    assert incidents(snow)["INC0010001"]["state"] == "6"  # left as it was


def test_an_incident_a_person_closed_is_never_reopened(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(REOPEN_WINDOW="1h")
    post(bridge, metric(1))
    post(bridge, metric(1, "Resolved"))
    close_by_hand(bridge, snow, "INC0010001")

    assert act(bridge, metric(2, fired="2026-03-01T10:10:00Z")) == ("created", "INC0010002")
    assert incidents(snow)["INC0010001"]["state"] == "7"
    assert "Follows INC0010001" in incidents(snow)["INC0010002"]["description"]


def test_a_stale_firing_delivered_after_the_resolve_reopens_nothing(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(REOPEN_WINDOW="1h")
    post(bridge, metric(1))
    post(bridge, metric(1, "Resolved"))
    # Alert 2 fired (10:02) and resolved (10:04) before alert 1's resolve (10:05); its Fired
    # arrives last. The condition is over: nothing to reopen.
    late_resolve = metric(2, "Resolved", fired="2026-03-01T10:02:00Z", resolved="2026-03-01T10:04:00Z")
    assert act(bridge, late_resolve)[0] == "ignored"
    assert act(bridge, metric(2, fired="2026-03-01T10:02:00Z"))[0] == "ignored"
    assert list(incidents(snow)) == ["INC0010001"] and incidents(snow)["INC0010001"]["state"] == "6"


# ---------------------------------------------------------------------------------- grouping


def group_mapping(tmp_path: Path, **policy: Any) -> str:
    return mapping(tmp_path, {"policy": {"grouping": "group", "fingerprint": "{alertRuleId}", **policy}})


def test_group_one_incident_until_every_alert_has_resolved(
    start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    bridge = start_bridge(MAPPING_FILE=group_mapping(tmp_path))

    assert act(bridge, metric(1, target="vm-a")) == ("created", "INC0010001")
    assert act(bridge, metric(2, target="vm-b")) == ("updated", "INC0010001")
    assert ALERTS + guid(2) in notes(snow, "INC0010001")[-1]
    assert act(bridge, metric(1, "Resolved", target="vm-a")) == ("updated", "INC0010001")
    assert "1 alert(s) of this work item still firing" in notes(snow, "INC0010001")[-1]
    assert incidents(snow)["INC0010001"]["state"] == "1"
    assert act(bridge, metric(2, "Resolved", target="vm-b")) == ("resolved", "INC0010001")

    assert list(incidents(snow)) == ["INC0010001"] and incidents(snow)["INC0010001"]["state"] == "6"


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_group_ends_the_same_whatever_the_order(
    order: tuple[int, ...], start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    bridge = start_bridge(MAPPING_FILE=group_mapping(tmp_path))
    story = [
        metric(1, target="vm-a"),
        metric(2, target="vm-b"),
        metric(1, "Resolved", target="vm-a"),
        metric(2, "Resolved", target="vm-b"),
    ]
    for i in order:
        post(bridge, story[i])

    rows = incidents(snow)
    assert list(rows) == ["INC0010001"]
    assert rows["INC0010001"]["state"] == "6"


def test_two_instances_grouping_one_fingerprint_create_one_incident(
    make_runtime: MakeRuntime, start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    shared = str(tmp_path / "shared.sqlite3")
    path = group_mapping(tmp_path)
    one = make_runtime(STATE_SQLITE_PATH=shared, MAPPING_FILE=path)
    two = make_runtime(STATE_SQLITE_PATH=shared, MAPPING_FILE=path)
    snow.faults.latency(0.2, path=r"^/api/now/table/incident$", method="POST")
    answers: dict[int, dict[str, Any]] = {}
    stack = start_bridge().stack
    start = threading.Barrier(2)

    def send(n: int, runtime: Runtime) -> None:
        request = ApiRequest.of(
            "POST",
            "/api/alerts",
            {"Authorization": f"Bearer {stack.token()}"},
            json.dumps(metric(n, target=f"vm-{n}")).encode(),
        )
        start.wait()
        response = runtime.api.handle(request)
        answers[n] = {**response.body, "http": response.status}

    threads = [threading.Thread(target=send, args=(n, rt)) for n, rt in ((1, one), (2, two))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert len(snow.records("incident")) == 1
    assert sorted(a["http"] for a in answers.values()) in ([200, 200], [200, 202]), answers
    assert sorted(a["action"] for a in answers.values() if a["http"] == 200) in (
        ["created", "updated"],
        ["created"],
    )
    # Whatever was queued finishes on the outbox, on the same incident.
    for runtime in (one, two):
        for key in [r.key for r in runtime.reconciler.store.records()]:
            runtime.reconciler.run(key)
    assert len(snow.records("incident")) == 1
    assert any(ALERTS + guid(2) in note or ALERTS + guid(1) in note for note in notes(snow, "INC0010001"))


# ---------------------------------------------------------------------------------- Service Health


def test_service_health_one_incident_from_active_to_resolved(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    assert act(bridge, health(1, "Active", "2026-03-01T10:00:00Z", "We are investigating")) == (
        "created",
        "INC0010001",
    )
    assert incidents(snow)["INC0010001"]["state"] == "1"
    assert act(bridge, health(2, "Active", "2026-03-01T10:30:00Z", "Mitigation in progress")) == (
        "updated",
        "INC0010001",
    )
    update = notes(snow, "INC0010001")[-1]
    assert "stage Active" in update and "Mitigation in progress" in update
    assert act(bridge, health(3, "Resolved", "2026-03-01T11:00:00Z", "Mitigated")) == ("resolved", "INC0010001")
    assert incidents(snow)["INC0010001"]["state"] == "6"
    close_notes = incidents(snow)["INC0010001"]["close_notes"]
    assert "TRK-001 as Resolved at 2026-03-01T11:00:00Z" in close_notes and "Mitigated" in close_notes
    assert "stage Resolved" in notes(snow, "INC0010001")[-1]
    assert act(bridge, health(4, "RCA", "2026-03-02T09:00:00Z", "Root cause")) == ("ignored", "INC0010001")
    # Active again after the resolve: the same incident is reopened.
    assert act(bridge, health(5, "Active", "2026-03-03T09:00:00Z", "Recurred")) == ("reopened", "INC0010001")
    assert incidents(snow)["INC0010001"]["state"] == "2"
    assert list(incidents(snow)) == ["INC0010001"]


def test_service_health_out_of_order_resolved_first(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    assert act(bridge, health(3, "Resolved", "2026-03-01T11:00:00Z"))[0] == "created"
    assert incidents(snow)["INC0010001"]["state"] == "6"
    # Earlier communications arriving late change nothing.
    assert act(bridge, health(1, "Active", "2026-03-01T10:00:00Z"))[0] == "ignored"
    assert act(bridge, health(2, "Active", "2026-03-01T10:30:00Z"))[0] == "ignored"
    assert list(incidents(snow)) == ["INC0010001"] and incidents(snow)["INC0010001"]["state"] == "6"


def test_service_health_events_are_kept_apart_by_tracking_id(bridge: LocalBridge, snow: ServiceNowStandIn) -> None:
    post(bridge, health(1, "Active", "2026-03-01T10:00:00Z", tracking="TRK-A"))
    post(bridge, health(2, "Active", "2026-03-01T10:00:00Z", tracking="TRK-B"))
    assert len(incidents(snow)) == 2


def test_service_health_per_communication_keeps_the_old_behaviour(
    start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    bridge = start_bridge(MAPPING_FILE=mapping(tmp_path, {"service_health": "per-communication"}))
    post(bridge, health(1, "Active", "2026-03-01T10:00:00Z"))
    post(bridge, health(2, "Resolved", "2026-03-01T11:00:00Z"))
    assert [row["state"] for row in incidents(snow).values()] == ["1", "1"]


# ---------------------------------------------------------------------------------- quiet resolve


def activity(n: int, at: str) -> dict[str, Any]:
    name = "activity_log_administrative_fired.testaction.json"
    payload = load_sample(name, alertId=ALERTS + guid(n), firedDateTime=at)
    payload["data"]["alertContext"]["eventTimestamp"] = at
    return payload


def test_a_stateless_alert_is_resolved_after_the_quiet_time_and_a_repeat_opens_the_next(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(AUTO_RESOLVE_AFTER="1")
    created = post(bridge, activity(1, "2026-03-01T10:00:00Z"))
    assert created["action"] == "created"
    key = next(r.key for r in bridge.reconciler.store.records())

    bridge.reconciler.run(key)  # too early: nothing happens
    assert incidents(snow)["INC0010001"]["state"] == "1"
    time.sleep(1.2)
    bridge.reconciler.run(key)  # the worker's (or the queue's) wake-up

    assert incidents(snow)["INC0010001"]["state"] == "6"
    assert "No repeat of this alert for 1s" in notes(snow, "INC0010001")[-1]
    record = bridge.reconciler.store.load(key)
    assert record is not None and record.record.due is None  # nothing more to wake for

    assert act(bridge, activity(1, "2099-03-01T10:00:00Z"))[0] == "created"
    assert "Follows INC0010001" in list(incidents(snow).values())[-1]["description"]


# ---------------------------------------------------------------------------------- resolution


def test_resolution_close_with_fields(start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path) -> None:
    path = mapping(
        tmp_path,
        {"policy": {"resolution": "close", "resolution_code": "Resolved by caller",
                    "resolve_fields": {"u_resolved_rule": "{alertRule}"}}},
    )
    bridge = start_bridge(MAPPING_FILE=path)
    post(bridge, metric(1))
    assert act(bridge, metric(1, "Resolved"))[0] == "resolved"
    row = incidents(snow)["INC0010001"]
    assert (row["state"], row["close_code"]) == ("7", "Resolved by caller")
    patch = [r for r in snow.requests if r.method == "PATCH"][-1]
    assert patch.body["u_resolved_rule"] == "test-metricAlertRule"


def test_resolution_note_only_leaves_the_incident_open(
    start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    bridge = start_bridge(MAPPING_FILE=mapping(tmp_path, {"policy": {"resolution": "note-only"}}))
    post(bridge, metric(1))
    assert act(bridge, metric(1, "Resolved")) == ("resolved", "INC0010001")
    row = incidents(snow)["INC0010001"]
    assert row["state"] == "1"
    assert "reported the alert as resolved" in notes(snow, "INC0010001")[-1]
    assert act(bridge, metric(1, "Resolved"))[0] == "ignored"
    assert len(notes(snow, "INC0010001")) == 2


# ---------------------------------------------------------------------------------- routing


def test_a_route_sets_fields_and_names_the_configuration_item(
    start_bridge: StartBridge, snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    vm = next(row for row in snow.records("cmdb_ci") if row["name"] == "test-VM")
    route = {
        "match": {"alertType": "metric", "severity": ["Sev3", "Sev4"], "resourceGroup": "test-*"},
        "set": {"category": "Software", "subcategory": "{resourceGroup}"},
        "configuration_item": "test-VM",
    }
    bridge = start_bridge(MAPPING_FILE=mapping(tmp_path, {"routing": [route]}))

    assert act(bridge, load_sample(METRIC))[0] == "created"

    row = incidents(snow)["INC0010001"]
    assert (row["category"], row["subcategory"]) == ("Software", "test-RG")
    assert row["cmdb_ci"] == vm["sys_id"]  # the name, resolved to the CI's sys_id
    assert "set by the mapping file's route" in row["description"]


def test_a_queued_thread_answers_the_work_items_correlation_id_and_replay_takes_it(
    start_bridge: StartBridge, snow: ServiceNowStandIn
) -> None:
    bridge = start_bridge(REOPEN_WINDOW="1h")
    snow.faults.status(503, path=r"^/api/now/table/incident")
    queued = bridge.post_alert(metric(1))
    assert queued.status_code == 202
    correlation = queued.json()["correlationId"]
    snow.faults.clear()

    record = bridge.reconciler.replay(correlation)

    assert record is not None and record.correlation_id == correlation != record.key
    bridge.reconciler.run(record.key)
    assert incidents(snow)["INC0010001"]["correlation_id"] == correlation
