"""bridge.threads: where an alert is kept, when its condition is over, and whether a later
firing reopens or opens the next work item. Pure functions of the record and the rules."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import threads
from bridge.alerts import parse_alert
from bridge.correlation import correlation_key
from bridge.rules import MappingRules, Policy
from bridge.sandbox.stack import load_sample
from bridge.state.record import MAX_MEMBERS, Event, Record

ALERTS = "/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/"


def health(alert: str, *, stage: str = "Active", tracking: str = "TRK-1", kind: str = "Incident") -> Any:
    payload = load_sample("service_health_incident.testaction.json", alertId=ALERTS + alert)
    props = payload["data"]["alertContext"]["properties"]
    props.update(stage=stage, trackingId=tracking, incidentType=kind)
    return parse_alert(payload)


def metric(alert: str, target: str = "vm-a") -> Any:
    return parse_alert(
        load_sample(
            "metric_static_fired.testaction.json",
            alertId=ALERTS + alert,
            alertTargetIDs=[f"/subscriptions/1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{target}"],
        )
    )


# ---------------------------------------------------------------------------------- place


def test_by_default_an_alert_is_kept_by_its_own_id() -> None:
    alert = metric("0c0c0c0c-0000-4000-8000-000000000001")
    place = threads.place(alert, MappingRules())
    assert (place.key, place.thread, place.member) == (correlation_key(alert.alert_id), None, "")


def test_a_service_health_event_is_one_record_per_tracking_id_and_type() -> None:
    rules = MappingRules()
    a, b = threads.place(health("a" * 64), rules), threads.place(health("b" * 64, stage="Resolved"), rules)
    assert a.key == b.key and a.thread == threads.SERVICE_HEALTH and a.member != b.member
    assert b.stage == "Resolved"
    assert threads.place(health("c" * 64, tracking="TRK-2"), rules).key != a.key
    assert threads.place(health("d" * 64, kind="Maintenance"), rules).key != a.key
    # Tracking ids are compared without case, like the portal shows them.
    assert threads.place(health("e" * 64, tracking="trk-1"), rules).key == a.key


def test_per_communication_keeps_each_service_health_alert_apart() -> None:
    rules = MappingRules(service_health_lifecycle=False)
    alert = health("a" * 64)
    assert threads.place(alert, rules).key == correlation_key(alert.alert_id)


@pytest.mark.parametrize("policy", [Policy(grouping="group"), Policy(reopen_window=60.0)])
def test_grouping_or_a_window_keeps_alerts_by_fingerprint(policy: Policy) -> None:
    rules = MappingRules(policy=policy)
    one, two = metric("0c0c0c0c-0000-4000-8000-000000000001"), metric("0c0c0c0c-0000-4000-8000-000000000002")
    other = metric("0c0c0c0c-0000-4000-8000-000000000003", target="vm-b")
    assert threads.place(one, rules).key == threads.place(two, rules).key != threads.place(other, rules).key
    assert threads.place(one, rules).thread == threads.FINGERPRINT


def test_episode_correlations_are_new_per_opener_and_fit_every_adapter() -> None:
    first, second = threads.episode_correlation("k", "a"), threads.episode_correlation("k", "b")
    assert first != second and len(first) == 40 and all(c in "0123456789abcdef" for c in first)


# ---------------------------------------------------------------------------------- over, refire


def record(thread: str | None = threads.FINGERPRINT, *, stateless: bool = False) -> Record:
    r = Record("k", "a", stateless, 0.0, 0.0)
    r.thread = thread
    return r


def test_a_group_is_over_when_every_member_that_fired_has_resolved() -> None:
    r = record()
    r.add_event(Event("f1", "Fired", 1.0, "a", at=10.0))
    assert not threads.condition_over(r)
    r.add_event(Event("f2", "Fired", 2.0, "b", at=11.0))
    r.add_event(Event("r1", "Resolved", 3.0, "a", at=20.0))
    assert not threads.condition_over(r)
    r.add_event(Event("r2", "Resolved", 4.0, "b", at=21.0))
    assert threads.condition_over(r)
    assert threads.resolving_event(r) == r.events[-1]


def test_a_resolve_that_arrives_before_its_fire_still_counts() -> None:
    r = record()
    r.add_event(Event("r1", "Resolved", 1.0, "a", at=20.0))
    r.add_event(Event("f1", "Fired", 2.0, "a", at=10.0))
    assert threads.condition_over(r)


def test_service_health_goes_by_the_latest_communication_not_the_latest_arrival() -> None:
    r = record(threads.SERVICE_HEALTH, stateless=True)
    r.add_event(Event("c3", "Fired", 1.0, "c3", at=30.0, stage="Resolved"))
    r.add_event(Event("c1", "Fired", 2.0, "c1", at=10.0, stage="Active"))
    assert threads.condition_over(r)
    r.add_event(Event("c4", "Fired", 3.0, "c4", at=40.0, stage="Active"))
    assert not threads.condition_over(r)


def resolved_group(window: float) -> Record:
    r = record()
    r.reopen_window = window
    r.add_event(Event("f1", "Fired", 1.0, "a", at=10.0))
    r.add_event(Event("r1", "Resolved", 2.0, "a", at=20.0))
    r.written = {"f1": "created", "r1": "resolved"}
    r.item, r.item_open = {"system": "x", "id": "1"}, False
    r.resolution_written, r.resolution_kind, r.resolved_at = True, "resolve", 20.0
    return r


@pytest.mark.parametrize(("fired_at", "reopens"), [(25.0, True), (80.0, True), (80.5, False)])
def test_a_new_member_reopens_only_within_the_window(fired_at: float, reopens: bool) -> None:
    r = resolved_group(60.0)
    r.add_event(Event("f2", "Fired", 3.0, "b", at=fired_at))
    (event,) = threads.refire_events(r)
    assert threads.may_reopen(r, event) is reopens


def test_a_closed_or_person_touched_item_is_never_reopened() -> None:
    r = resolved_group(3600.0)
    r.add_event(Event("f2", "Fired", 3.0, "b", at=25.0))
    event = threads.refire_events(r)[0]
    r.resolution_kind = "close"
    assert not threads.may_reopen(r, event)
    r.resolution_kind, r.item_status = "resolve", "closed"
    assert not threads.may_reopen(r, event)


def test_a_stale_firing_is_no_refire() -> None:
    r = resolved_group(3600.0)
    # Fired before the resolution it would undo (and already resolved itself).
    r.add_event(Event("f2", "Fired", 3.0, "b", at=15.0))
    r.add_event(Event("r2", "Resolved", 4.0, "b", at=18.0))
    assert threads.refire_events(r) == []


def test_one_stateful_alert_id_never_refires() -> None:
    r = resolved_group(3600.0)
    r.thread = None
    r.add_event(Event("f2", "Fired", 3.0, at=30.0))
    assert threads.refire_events(r) == []


# ---------------------------------------------------------------------------------- record


def test_members_are_bounded_and_resolved_ones_go_first() -> None:
    r = record()
    r.add_event(Event("firing", "Fired", 0.0, "still-firing", at=1.0))
    for n in range(MAX_MEMBERS + 20):
        r.add_event(Event(f"f{n}", "Fired", 1.0, f"m{n}", at=2.0))
        r.add_event(Event(f"r{n}", "Resolved", 1.0, f"m{n}", at=3.0 + n))
    assert len(r.members) == MAX_MEMBERS
    assert "still-firing" in r.members
    assert not threads.condition_over(r)


def test_the_new_fields_survive_the_json_form() -> None:
    r = resolved_group(60.0)
    r.correlation, r.episode, r.previous = "c" * 40, 2, {"system": "x", "id": "0", "number": "INC1", "url": None}
    r.auto_resolve_after, r.resolution_policy, r.left_at = 5.0, "close", 7.0
    again = Record.from_json(r.to_json())
    assert again == r
    assert again.correlation_id == "c" * 40


def test_a_record_written_before_the_policies_reads_as_one_alert_id() -> None:
    old = Record("k", "a", False, 0.0, 0.0)
    old.add_event(Event("f", "Fired", 1.0))
    doc = old.to_json()
    for name in ("thread", "correlation", "episode", "previous", "members", "resolution_kind", "resolved_at",
                 "left_at", "reopen_window", "auto_resolve_after", "resolution_policy"):
        doc = doc.replace(f'"{name}":', f'"x_{name}":')
    again = Record.from_json(doc)
    assert again.thread is None and again.correlation_id == "k" and again.members == {}


def test_a_quiet_resolve_is_due_after_the_last_repeat() -> None:
    r = record(None, stateless=True)
    r.auto_resolve_after = 100.0
    r.add_event(Event("f1", "Fired", 10.0))
    assert r.wake_at() is None  # no work item yet
    r.item, r.item_open = {"system": "x", "id": "1"}, True
    r.add_event(Event("f2", "Fired", 50.0))
    assert r.wake_at() == 150.0
    r.resolution_written = True
    assert r.wake_at() is None


def test_a_record_waiting_only_for_its_quiet_resolve_is_not_pending_work() -> None:
    from bridge.state.stats import outbox_state

    r = record(None, stateless=True)
    r.auto_resolve_after = 3600.0
    r.add_event(Event("f1", "Fired", 10.0))
    r.mark("f1", "created")
    r.item, r.item_open = {"system": "x", "id": "1"}, True
    r.due = r.rest_due()
    assert outbox_state(r) == "done"  # hours away, nothing owed: no "stuck" alarm
    r.add_event(Event("f2", "Fired", 20.0))
    assert outbox_state(r) == "pending"  # a new payload to write
