"""The alert lifecycle (CONTRACT section 2) against an in-memory adapter.

The same scenarios run end to end through the Function in ``test_function_app.py`` (ServiceNow
mocked with ``responses``) and over real HTTP in ``tests/integration``.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from bridge.adapters.base import ConfigurationItem
from bridge.alerts import parse_alert
from bridge.cmdb import CmdbBinder
from bridge.config import MappingRules
from bridge.correlation import correlation_key
from bridge.errors import ItsmError
from bridge.lifecycle import Action, Lifecycle
from bridge.retry import RetryPolicy
from bridge.sandbox.stack import load_sample
from tests.fakes import MemoryAdapter

METRIC_KEY = "12345678-1234-1234-1234-1234567890ab"


def metric(condition: str = "Fired", value: float | None = None) -> dict[str, Any]:
    extra = {"resolvedDateTime": "2025-04-15T18:32:12.8510000Z"} if condition == "Resolved" else {}
    data = load_sample("metric_static_fired.testaction.json", monitorCondition=condition, **extra)
    if value is not None:
        data["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = value
    return data


@pytest.fixture
def adapter() -> MemoryAdapter:
    return MemoryAdapter()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def lifecycle(adapter: MemoryAdapter, sleeps: list[float]) -> Lifecycle:
    cmdb = CmdbBinder(adapter, ttl_seconds=300)
    return Lifecycle(adapter, MappingRules(), RetryPolicy(attempts=4, budget_seconds=8), cmdb,
                     sleep=sleeps.append)


def apply(lifecycle: Lifecycle, payload: dict[str, Any]) -> Any:
    return lifecycle.apply(parse_alert(payload))


def test_fired_creates_one_incident_keyed_by_the_alert(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    outcome = apply(lifecycle, metric())
    assert outcome.action is Action.CREATED
    assert outcome.correlation_id == METRIC_KEY
    assert len(adapter.items) == 1
    created = adapter.items[0].item
    assert created.correlation_id == METRIC_KEY
    assert created.correlation_display == "Azure Monitor"
    assert (created.impact, created.urgency) == (3, 3)  # Sev4
    assert outcome.work_item == adapter.items[0].ref


def test_fired_again_adds_a_note_to_the_same_incident(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    first = apply(lifecycle, metric())
    second = apply(lifecycle, metric(value=99.0))
    assert second.action is Action.UPDATED
    assert second.work_item == first.work_item
    assert len(adapter.items) == 1
    assert len(adapter.items[0].notes) == 2  # the opening note, then the update


def test_identical_redelivery_changes_nothing(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric(value=99.0))
    apply(lifecycle, metric(value=42.0))
    notes_before = list(adapter.items[0].notes)
    again = apply(lifecycle, metric(value=42.0))
    assert again.action is Action.IGNORED
    assert again.reason == "identical alert already recorded"
    assert adapter.items[0].notes == notes_before
    assert "add_note" not in adapter.ops()[-2:]


def test_first_fired_redelivered_is_recognised(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    again = apply(lifecycle, metric())
    assert again.action is Action.IGNORED
    assert len(adapter.items) == 1 and len(adapter.items[0].notes) == 1


def test_resolved_resolves_with_close_code_and_notes(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    outcome = apply(lifecycle, metric("Resolved"))
    assert outcome.action is Action.RESOLVED
    stored = adapter.items[0]
    assert stored.state == "6"
    assert stored.close_code == "Solution provided"
    assert stored.close_notes
    assert len(stored.notes) == 2


def test_close_code_comes_from_the_rules(adapter: MemoryAdapter) -> None:
    rules = MappingRules(close_code="Resolved by caller")
    lifecycle = Lifecycle(adapter, rules, RetryPolicy(), sleep=lambda s: None)
    apply(lifecycle, metric())
    apply(lifecycle, metric("Resolved"))
    assert adapter.items[0].close_code == "Resolved by caller"


def test_resolved_twice_is_ignored(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    apply(lifecycle, metric("Resolved"))
    calls = len(adapter.calls)
    outcome = apply(lifecycle, metric("Resolved"))
    assert outcome.action is Action.IGNORED
    assert outcome.reason == "incident already resolved"
    assert adapter.ops()[calls:] == ["find"]


def test_resolved_without_incident_is_ignored(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    outcome = apply(lifecycle, metric("Resolved"))
    assert outcome.action is Action.IGNORED
    assert outcome.reason == "no incident for this alert"
    assert outcome.work_item is None
    assert adapter.items == []


def test_fired_after_resolved_opens_nothing(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    apply(lifecycle, metric("Resolved"))
    outcome = apply(lifecycle, metric(value=12.0))
    assert outcome.action is Action.IGNORED
    assert "opens nothing" in (outcome.reason or "")
    assert len(adapter.items) == 1 and adapter.items[0].state == "6"


@pytest.mark.parametrize("state, word", [("7", "closed"), ("8", "canceled")])
def test_closed_or_canceled_incident_is_left_alone(
    lifecycle: Lifecycle, adapter: MemoryAdapter, state: str, word: str
) -> None:
    adapter.seed(METRIC_KEY, state=state)
    assert apply(lifecycle, metric("Resolved")).reason == f"incident already {word}"
    assert apply(lifecycle, metric()).action is Action.IGNORED
    assert len(adapter.items) == 1


def test_stateless_alerts_create_then_update(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    payload = load_sample("activity_log_administrative_fired.testaction.json")
    first = apply(lifecycle, payload)
    changed = copy.deepcopy(payload)
    changed["data"]["alertContext"]["status"] = "Failed"
    second = apply(lifecycle, changed)
    assert (first.action, second.action) == (Action.CREATED, Action.UPDATED)
    # The activity log alertId is a rule path, not a GUID: the key is a hash of it.
    assert first.correlation_id == correlation_key(payload["data"]["essentials"]["alertId"])
    assert "^" not in first.correlation_id and len(first.correlation_id) <= 100


def test_service_health_with_non_guid_id_is_keyed_and_stateless(
    lifecycle: Lifecycle, adapter: MemoryAdapter
) -> None:
    payload = load_sample("service_health_incident.testaction.json")
    outcome = apply(lifecycle, payload)
    assert outcome.action is Action.CREATED
    assert outcome.correlation_id != payload["data"]["essentials"]["alertId"].rsplit("/", 1)[-1]


def test_a_lost_create_response_is_not_repeated(
    lifecycle: Lifecycle, adapter: MemoryAdapter, sleeps: list[float]
) -> None:
    adapter.fail("create", commit=True)  # the write commits, the answer never arrives
    outcome = apply(lifecycle, metric())
    assert outcome.action is Action.CREATED
    assert len(adapter.items) == 1
    assert adapter.ops().count("create") == 1
    assert adapter.ops().count("add_note") == 0
    assert len(sleeps) == 1


def test_create_that_failed_before_committing_is_retried(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    adapter.fail("create")
    outcome = apply(lifecycle, metric())
    assert outcome.action is Action.CREATED
    assert adapter.ops().count("create") == 2
    assert len(adapter.items) == 1


def test_cmdb_is_looked_up_once_even_when_retried(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    adapter.cis["test-storageaccount"] = ConfigurationItem("ci1", "test-storageAccount", "name")
    adapter.fail("create")
    outcome = apply(lifecycle, metric())
    assert adapter.ops().count("find_ci") == 1
    assert adapter.items[0].item.configuration_item == ConfigurationItem("ci1", "test-storageAccount", "name")
    assert outcome.configuration_item is not None


def test_cmdb_failure_binds_nothing_but_keeps_the_alert(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    adapter.fail("find_ci")
    outcome = apply(lifecycle, metric())
    assert outcome.action is Action.CREATED
    assert adapter.items[0].item.configuration_item is None
    assert "CMDB lookup failed" in adapter.items[0].item.description


def test_permanent_failure_is_not_retried(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    adapter.fail("create", retryable=False, status=403)
    with pytest.raises(ItsmError) as caught:
        apply(lifecycle, metric())
    assert caught.value.retryable is False
    assert adapter.ops().count("create") == 1


def test_unavailable_itsm_gives_up_after_the_attempts(adapter: MemoryAdapter) -> None:
    for _ in range(3):
        adapter.fail("find")
    lifecycle = Lifecycle(adapter, MappingRules(), RetryPolicy(attempts=3, budget_seconds=8), sleep=lambda s: None)
    with pytest.raises(ItsmError) as caught:
        apply(lifecycle, metric())
    assert caught.value.retryable and caught.value.attempts == 3
    assert adapter.items == []


def test_duplicate_open_items_all_resolve(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    a = adapter.seed(METRIC_KEY)
    b = adapter.seed(METRIC_KEY)
    outcome = apply(lifecycle, metric("Resolved"))
    assert outcome.action is Action.RESOLVED and outcome.work_item == a.ref
    assert a.state == b.state == "6"


def test_concurrent_deliveries_of_one_alert_make_one_incident(
    lifecycle: Lifecycle, adapter: MemoryAdapter
) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[Action] = []

    def deliver() -> None:
        barrier.wait()
        outcomes.append(apply(lifecycle, metric()).action)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(adapter.items) == 1
    assert sorted(outcomes) == sorted([Action.CREATED] + [Action.IGNORED] * 7)


def test_a_twin_created_elsewhere_first_wins_and_ours_is_closed(
    lifecycle: Lifecycle, adapter: MemoryAdapter
) -> None:
    # Another instance creates the same alert's incident between our lookup and our create.
    twins: list[Any] = []
    adapter.before_create.append(lambda: twins.append(adapter.seed(METRIC_KEY)))

    outcome = apply(lifecycle, metric())

    theirs, ours = adapter.items
    assert twins == [theirs]
    assert outcome.action is Action.IGNORED
    assert outcome.work_item == theirs.ref
    assert outcome.reason == (
        f"delivered concurrently elsewhere; {ours.ref.number} closed as a duplicate of {theirs.ref.number}"
    )
    assert theirs.state == "1"
    assert ours.state == "6"
    assert ours.close_notes is not None and ours.close_notes.startswith(f"Duplicate of {theirs.ref.number}")
    assert adapter.ops() == ["find", "find_ci", "create", "find", "resolve"]


def test_a_younger_twin_leaves_ours_alone(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    outcome = apply(lifecycle, metric())
    adapter.seed(METRIC_KEY)  # the other instance created after us: it closes its own
    assert outcome.action is Action.CREATED
    assert [s.state for s in adapter.items] == ["1", "1"]
    assert "resolve" not in adapter.ops()


def test_creation_order_survives_a_longer_number() -> None:
    from bridge.adapters.base import WorkItemRecord, WorkItemRef
    from bridge.lifecycle import _age

    older = WorkItemRecord(WorkItemRef("servicenow", "b", "INC9999999"), "k", True, "1")
    newer = WorkItemRecord(WorkItemRef("servicenow", "a", "INC10000000"), "k", True, "1")
    assert min([newer, older], key=_age) is older


def test_a_fired_overtaken_by_its_resolved_opens_nothing(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    # The Fired failed once and Azure retried it after the Resolved had already arrived.
    assert apply(lifecycle, metric("Resolved")).reason == "no incident for this alert"
    late = apply(lifecycle, metric())
    assert late.action is Action.IGNORED
    assert late.reason == "the alert resolved before this Fired arrived; it opens nothing"
    assert adapter.items == []
    # Another alert is not affected.
    other = metric()
    other["data"]["essentials"]["alertId"] = other["data"]["essentials"]["alertId"].replace(
        METRIC_KEY, "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a")
    assert apply(lifecycle, other).action is Action.CREATED


def test_stateless_alerts_ignore_the_resolved_memory(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    payload = load_sample("service_health_incident.testaction.json")
    resolved = copy.deepcopy(payload)
    resolved["data"]["essentials"]["monitorCondition"] = "Resolved"
    assert apply(lifecycle, resolved).action is Action.CREATED  # stateless: handled as Fired
    assert apply(lifecycle, payload).action is Action.UPDATED
    assert len(adapter.items) == 1


def test_a_lost_note_response_still_reports_updated(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    adapter.fail("add_note", commit=True)
    outcome = apply(lifecycle, metric(value=55.0))
    assert outcome.action is Action.UPDATED
    assert len(adapter.items[0].notes) == 2  # one note, not two


def test_a_lost_resolve_response_still_reports_resolved(lifecycle: Lifecycle, adapter: MemoryAdapter) -> None:
    apply(lifecycle, metric())
    adapter.fail("resolve", commit=True)
    outcome = apply(lifecycle, metric("Resolved"))
    assert outcome.action is Action.RESOLVED
    assert adapter.items[0].state == "6"
    assert adapter.ops().count("resolve") == 1
