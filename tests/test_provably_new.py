"""A new Fired skips its lookup only where no work item can exist (bridge/epoch.py).

One ITSM call (the create) for an alert fired after the store's epoch, purge cut-off and any
fallback taint, plus the margin; the lookup first in every other case: fired too early, no
fired time, a purge, a fallback write in this process or in a process that died (its marker),
a raised epoch seen from another instance, an uncertain create, a Resolved first. The state
file is real SQLite, the ITSM the in-memory fake, time a fake clock (real time where threads race).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.alerts import parse_alert
from bridge.cmdb import CmdbBinder
from bridge.correlation import canonical_payload, fingerprint
from bridge.epoch import (
    MARGIN_SECONDS,
    PURGED_BEFORE,
    RECORDS_SINCE,
    REFRESH_SECONDS,
    StoreEpoch,
    marker_directory,
)
from bridge.reconcile import Action, Delivery, Reconciler, Timing
from bridge.retry import RetryPolicy
from bridge.rules import MappingRules
from bridge.sandbox.stack import load_sample
from bridge.state.azure import AzureStore
from bridge.state.base import StateUnavailable
from bridge.state.connection import DEVELOPMENT_KEY, AzureConnection
from bridge.state.sqlite import SqliteStore
from bridge.worker import OutboxWorker
from tests.fakes import MemoryAdapter
from tests.kit import FakeClock

START = 1_800_000_000.0
DAY = 86400.0
KEY = "0f3c1d2e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
OTHER = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def metric(guid: str, fired_at: float | None, condition: str = "Fired") -> dict[str, Any]:
    extra: dict[str, Any] = {"resolvedDateTime": iso((fired_at or START) + 60)} if condition == "Resolved" else {}
    return load_sample(
        "metric_static_fired.testaction.json",
        alertId=f"/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/{guid}",
        monitorCondition=condition,
        firedDateTime=iso(fired_at) if fired_at is not None else None,
        **extra,
    )


def activity(guid: str, fired_at: float) -> dict[str, Any]:
    return load_sample(
        "activity_log_administrative_fired.testaction.json",
        alertId=f"/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/{guid}",
        firedDateTime=iso(fired_at),
    )


class Machine:
    """A host's temp directory: the processes on it share fallback markers."""

    def __init__(self, root: Path) -> None:
        self.markers = root
        root.mkdir(parents=True, exist_ok=True)


def process(
    adapter: MemoryAdapter, path: Path, clock: Any, machine: Machine, *, sleep: Any = None, real: bool = False
) -> Reconciler:
    """One bridge process on ``machine`` over the state file at ``path``."""
    wall = time.time if real else clock
    store = SqliteStore(path, clock=wall)
    return Reconciler(
        store,
        adapter,
        MappingRules(),
        RetryPolicy(attempts=3, budget_seconds=8),
        CmdbBinder(adapter, ttl_seconds=300, clock=wall),
        timing=Timing(),
        sleep=sleep or (time.sleep if real else clock.sleep),
        clock=time.monotonic if real else clock,
        wall=wall,
        rand=lambda: 0.5,
        epoch=StoreEpoch(store, wall=wall, marker_root=machine.markers),
    )


def send(reconciler: Reconciler, payload: dict[str, Any]) -> Delivery:
    alert = parse_alert(payload)
    canonical = canonical_payload(alert)
    return reconciler.deliver(alert, canonical, fingerprint(alert, canonical))


def send_unrecorded(reconciler: Reconciler, payload: dict[str, Any]) -> Delivery:
    alert = parse_alert(payload)
    canonical = canonical_payload(alert)
    return reconciler.deliver_unrecorded(alert, canonical, fingerprint(alert, canonical), 3.0)


def ops(adapter: MemoryAdapter) -> list[str]:
    return [op for op in adapter.ops() if op != "find_ci"]


def creates(adapter: MemoryAdapter) -> int:
    return sum(1 for op in adapter.ops() if op == "create")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def adapter() -> MemoryAdapter:
    return MemoryAdapter()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


@pytest.fixture
def here(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "machine-1")


@pytest.fixture
def rec(adapter: MemoryAdapter, path: Path, clock: FakeClock, here: Machine) -> Reconciler:
    """A process whose store has kept records for a day."""
    reconciler = process(adapter, path, clock, here)
    reconciler.store.put_meta(RECORDS_SINCE, {"at": START - DAY})
    return reconciler


# --- one call where provably new ------------------------------------------------------------------


def test_a_fresh_fired_is_created_with_one_call(rec: Reconciler, adapter: MemoryAdapter) -> None:
    delivery = send(rec, metric(KEY, START - 60))
    assert (delivery.status, delivery.action) == ("processed", Action.CREATED)
    assert ops(adapter) == ["create"]
    assert len(adapter.items) == 1 and delivery.work_item == adapter.items[0].ref
    adapter.calls.clear()
    assert send(rec, metric(KEY, START - 60)).action is Action.IGNORED and adapter.calls == []


def test_a_fresh_stateless_alert_is_created_with_one_call(rec: Reconciler, adapter: MemoryAdapter) -> None:
    assert send(rec, activity(KEY, START - 60)).action is Action.CREATED
    assert ops(adapter) == ["create"]


def test_the_create_intent_is_still_written_before_the_create(rec: Reconciler, adapter: MemoryAdapter) -> None:
    seen: list[Any] = []
    adapter.before_create.append(lambda: seen.append(rec.store.load(KEY).record.intent))  # type: ignore[union-attr]
    send(rec, metric(KEY, START - 60))
    assert [intent.operation for intent in seen] == ["create"]


# --- the lookup kept ------------------------------------------------------------------------------


def test_an_alert_fired_within_the_margin_of_the_epoch_is_looked_up(
    adapter: MemoryAdapter, path: Path, clock: FakeClock, here: Machine
) -> None:
    rec = process(adapter, path, clock, here)  # the store's first use: its epoch is now
    send(rec, metric(KEY, START - 1))
    assert ops(adapter) == ["find", "create"]
    assert rec.store.get_meta(RECORDS_SINCE) == {"at": START}
    adapter.calls.clear()
    send(rec, metric(OTHER, START + MARGIN_SECONDS - 1))  # still not after epoch + margin
    assert ops(adapter) == ["find", "create"]


def test_an_existing_item_of_an_alert_fired_before_the_epoch_is_found_not_duplicated(
    rec: Reconciler, adapter: MemoryAdapter
) -> None:
    adapter.seed(KEY)  # made by a version of the bridge without a state record
    delivery = send(rec, metric(KEY, START - DAY - 60))
    assert ops(adapter)[0] == "find" and "create" not in ops(adapter)
    assert len(adapter.items) == 1 and delivery.work_item == adapter.items[0].ref


def test_an_alert_without_a_fired_time_is_looked_up(rec: Reconciler, adapter: MemoryAdapter) -> None:
    assert parse_alert(metric(KEY, None)).fired_at is None
    send(rec, metric(KEY, None))
    assert ops(adapter) == ["find", "create"]


def test_a_resolved_before_its_fired_keeps_its_lookups(rec: Reconciler, adapter: MemoryAdapter) -> None:
    assert send(rec, metric(KEY, START - 60, "Resolved")).action is Action.IGNORED
    assert ops(adapter) == ["find"]
    adapter.calls.clear()
    assert send(rec, metric(KEY, START - 60)).action is Action.CREATED
    assert ops(adapter) == ["find", "create"]
    assert adapter.items[0].state == "6"


def test_a_redelivery_after_its_record_was_purged_is_looked_up(
    rec: Reconciler, adapter: MemoryAdapter, clock: FakeClock
) -> None:
    send(rec, metric(KEY, START - 60))
    assert ops(adapter) == ["create"]
    worker = OutboxWorker(rec, threads=1, retention_seconds=30 * DAY, wall=clock)
    clock.advance(31 * DAY)
    worker.tick()
    assert rec.store.load(KEY) is None
    assert rec.store.get_meta(PURGED_BEFORE) == {"at": clock() - 30 * DAY}
    adapter.calls.clear()
    delivery = send(rec, metric(KEY, START - 60))  # the same alert, long after
    assert ops(adapter)[0] == "find" and creates(adapter) == 0
    assert len(adapter.items) == 1 and delivery.work_item == adapter.items[0].ref
    adapter.calls.clear()
    send(rec, metric(OTHER, clock() - 60))  # fired after the cut-off (+ margin): one call again
    assert ops(adapter) == ["create"]


def test_the_purge_waits_until_its_cut_off_is_recorded(
    rec: Reconciler, adapter: MemoryAdapter, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(rec, metric(KEY, START - 60))
    worker = OutboxWorker(rec, threads=1, retention_seconds=30 * DAY, wall=clock)
    clock.advance(31 * DAY)

    def refuse(name: str, value: Any) -> None:
        raise StateUnavailable("meta write refused")

    monkeypatch.setattr(rec.store, "put_meta", refuse)
    with pytest.raises(StateUnavailable):
        worker.tick()
    assert rec.store.load(KEY) is not None  # not purged: nobody could know it existed


def test_an_uncertain_create_is_looked_up_before_any_second_create(
    rec: Reconciler, adapter: MemoryAdapter
) -> None:
    adapter.fail("create", commit=True, status=504)  # committed, but the answer is a gateway timeout
    delivery = send(rec, metric(KEY, START - 60))
    assert ops(adapter) == ["create", "find"]
    assert len(adapter.items) == 1 and delivery.action is Action.CREATED


def test_a_create_refused_before_any_work_is_sent_again_without_a_lookup(
    rec: Reconciler, adapter: MemoryAdapter
) -> None:
    adapter.fail("create", status=503)  # 503: not carried out, so it cannot have landed
    assert send(rec, metric(KEY, START - 60)).action is Action.CREATED
    assert ops(adapter) == ["create", "create"] and len(adapter.items) == 1


# --- writes made without the store ---------------------------------------------------------------


def test_a_fallback_write_in_this_process_makes_its_alerts_look_up(
    rec: Reconciler, adapter: MemoryAdapter, clock: FakeClock, here: Machine
) -> None:
    # The store is unreachable: the fallback creates the item, without a record.
    assert send_unrecorded(rec, metric(KEY, START - 60)).action is Action.CREATED
    assert len(list(here.markers.rglob("*.json"))) == 1  # written before the ITSM was called
    adapter.calls.clear()
    # The store is back and Azure delivers the alert again (its answer was lost).
    delivery = send(rec, metric(KEY, START - 60))
    assert ops(adapter)[0] == "find" and creates(adapter) == 0
    assert len(adapter.items) == 1 and delivery.work_item == adapter.items[0].ref
    assert list(here.markers.rglob("*.json")) == []  # recorded in the store, then removed
    assert rec.store.get_meta(RECORDS_SINCE) == {"at": START}
    adapter.calls.clear()
    clock.advance(MARGIN_SECONDS + 120)
    send(rec, metric(OTHER, clock() - 60))  # fired after taint + margin
    assert ops(adapter) == ["create"]


def test_a_fallback_write_of_a_process_that_died_reaches_the_next_process_on_the_machine(
    adapter: MemoryAdapter, path: Path, clock: FakeClock, here: Machine
) -> None:
    first = process(adapter, path, clock, here)
    first.store.put_meta(RECORDS_SINCE, {"at": START - DAY})
    first.store.close()  # the store is down for this process
    with pytest.raises(StateUnavailable):
        send(first, metric(KEY, START - 60))
    assert send_unrecorded(first, metric(KEY, START - 60)).action is Action.CREATED
    del first  # killed before answering: only its marker is left
    clock.advance(5)
    adapter.calls.clear()
    second = process(adapter, path, clock, here)  # a new process on the same machine
    delivery = send(second, metric(KEY, START - 60))
    assert ops(adapter)[0] == "find" and creates(adapter) == 0
    assert len(adapter.items) == 1 and delivery.work_item == adapter.items[0].ref
    assert second.store.get_meta(RECORDS_SINCE) == {"at": START}
    assert list(here.markers.rglob("*.json")) == []


def test_a_process_on_another_machine_sees_a_raised_epoch_within_the_refresh(
    adapter: MemoryAdapter, path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    a = process(adapter, path, clock, Machine(tmp_path / "a"))
    a.store.put_meta(RECORDS_SINCE, {"at": START - DAY})
    send(a, metric(OTHER, START - 60))  # a has read (and cached) the epoch
    assert ops(adapter) == ["create"]
    b = process(adapter, path, clock, Machine(tmp_path / "b"))
    send_unrecorded(b, metric(KEY, START - 30))  # b wrote without a record ...
    b.epoch.recover()  # ... and raised the epoch once the store was back
    assert a.store.get_meta(RECORDS_SINCE) == {"at": START}
    clock.advance(REFRESH_SECONDS + 1)
    adapter.calls.clear()
    delivery = send(a, metric(KEY, START - 30))
    assert ops(adapter)[0] == "find" and creates(adapter) == 0
    assert delivery.work_item == next(s.ref for s in adapter.items if s.item.correlation_id == KEY)


def test_a_lower_epoch_left_by_a_racing_writer_is_put_back(rec: Reconciler, clock: FakeClock) -> None:
    assert rec.epoch.provably_new(datetime.fromtimestamp(START - 60, UTC))
    rec.store.put_meta(RECORDS_SINCE, {"at": START - 2 * DAY})
    clock.advance(REFRESH_SECONDS + 1)
    rec.epoch.provably_new(datetime.fromtimestamp(START, UTC))
    assert rec.store.get_meta(RECORDS_SINCE) == {"at": START - DAY}


def test_an_unreadable_epoch_keeps_the_lookup(rec: Reconciler, adapter: MemoryAdapter) -> None:
    rec.store.put_meta(RECORDS_SINCE, {"at": "yesterday"})
    send(rec, metric(KEY, START - 60))
    assert ops(adapter) == ["find", "create"]


def test_no_fallback_write_when_the_marker_cannot_be_written(
    adapter: MemoryAdapter, path: Path, clock: FakeClock, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    rec = process(adapter, path, clock, Machine(tmp_path / "m"))
    rec.epoch = StoreEpoch(rec.store, wall=clock, marker_root=blocker)
    with pytest.raises(StateUnavailable, match="could not be marked"):
        send_unrecorded(rec, metric(KEY, START - 60))
    assert adapter.calls == []


def test_the_fallback_store_never_skips_a_lookup(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send_unrecorded(rec, metric(KEY, START - 60))
    assert ops(adapter) == ["find", "create"]


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_deliveries_of_a_fresh_alert_create_exactly_one_item(
    adapter: MemoryAdapter, path: Path, tmp_path: Path
) -> None:
    now = time.time()
    machine = Machine(tmp_path / "m")
    setup = process(adapter, path, None, machine, real=True)
    setup.store.put_meta(RECORDS_SINCE, {"at": now - DAY})
    # Several processes (one reconciler each) on the file, and threads in each.
    processes = [process(adapter, path, None, machine, real=True) for _ in range(3)]
    adapter.before_create.append(lambda: time.sleep(0.3))  # a slow create widens the race
    gate = threading.Barrier(12)
    answers: list[Delivery] = []

    def deliver(i: int) -> None:
        gate.wait()
        answers.append(send(processes[i % 3], metric(KEY, now - 60)))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert creates(adapter) == 1 and len(adapter.items) == 1
    assert sorted(a.action for a in answers if a.action) == [Action.CREATED] + [Action.IGNORED] * 11
    assert {a.work_item for a in answers} == {adapter.items[0].ref}


def test_an_alert_stamped_in_the_future_is_looked_up(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric(KEY, START + MARGIN_SECONDS + 60))  # the sender's clock is off
    assert ops(adapter) == ["find", "create"]


def test_markers_are_named_after_the_store_never_its_credential(tmp_path: Path) -> None:
    connection = AzureConnection.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert connection is not None
    one, same, other = (AzureStore(connection, table, "outbox") for table in ("alertstate", "alertstate", "other"))
    assert marker_directory(one, tmp_path) == marker_directory(same, tmp_path) != marker_directory(other, tmp_path)
    assert DEVELOPMENT_KEY not in one.identity and "alertstate" in one.identity
    files = [SqliteStore(tmp_path / name) for name in ("a.sqlite3", "b.sqlite3")]
    assert marker_directory(files[0], tmp_path) != marker_directory(files[1], tmp_path)
    assert marker_directory(SqliteStore(":memory:"), tmp_path) is None


def test_any_failure_reading_the_epoch_keeps_the_lookup(
    rec: Reconciler, adapter: MemoryAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = rec.store.get_meta

    def broken(name: str) -> Any:
        if name == RECORDS_SINCE:
            raise RuntimeError("unexpected")
        return real(name)

    monkeypatch.setattr(rec.store, "get_meta", broken)
    assert send(rec, metric(KEY, START - 60)).action is Action.CREATED
    assert ops(adapter) == ["find", "create"]
