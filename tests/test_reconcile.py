"""The reconciler (CONTRACT section 2) over a real SQLite state file and an in-memory adapter.

Time is a fake clock that retry waits advance, so outbox back-off, the settle window and the
retry horizon are exercised without sleeping. The same scenarios run through the Function in
``test_function_app.py`` and over real HTTP, with processes, in ``tests/integration``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge import reconcile
from bridge.alerts import Alert, parse_alert
from bridge.cmdb import CmdbBinder
from bridge.correlation import canonical_payload, correlation_key, fingerprint, note_marker
from bridge.epoch import RECORDS_SINCE, StoreEpoch
from bridge.errors import Reason
from bridge.reconcile import Action, Delivery, Reconciler, Timing
from bridge.retry import RetryPolicy
from bridge.rules import MappingRules
from bridge.sandbox.stack import load_sample
from bridge.state.base import Versioned
from bridge.state.record import Claim, Event, Record
from bridge.state.sqlite import SqliteStore
from bridge.worker import OutboxWorker
from tests.fakes import MemoryAdapter
from tests.kit import FakeClock as FakeTime

METRIC_KEY = "12345678-1234-1234-1234-1234567890ab"
START = 1_800_000_000.0


def metric(condition: str = "Fired", value: float | None = None, guid: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"resolvedDateTime": "2025-04-15T18:32:12.8510000Z"} if condition == "Resolved" else {}
    if guid is not None:
        subscription = "/subscriptions/11111111-1111-1111-1111-111111111111"
        extra["alertId"] = f"{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    data = load_sample("metric_static_fired.testaction.json", monitorCondition=condition, **extra)
    if value is not None:
        data["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = value
    return data


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime(START)


@pytest.fixture
def adapter() -> MemoryAdapter:
    return MemoryAdapter()


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite3"


def make(adapter: MemoryAdapter, path: Path, clock: FakeTime, **timing: float) -> Reconciler:
    store = SqliteStore(path, clock=clock)
    return Reconciler(
        store,
        adapter,
        MappingRules(),
        RetryPolicy(attempts=3, budget_seconds=8),
        CmdbBinder(adapter, ttl_seconds=300, clock=clock),
        timing=Timing(**timing),
        sleep=clock.sleep,
        clock=clock,
        wall=clock,
        rand=lambda: 0.5,
        # Fallback markers stay in the test's directory, not the machine's temp directory.
        epoch=StoreEpoch(store, wall=clock, marker_root=path.parent / "machine"),
    )


@pytest.fixture
def rec(adapter: MemoryAdapter, state_path: Path, clock: FakeTime) -> Reconciler:
    return make(adapter, state_path, clock)


def send(reconciler: Reconciler, payload: dict[str, Any]) -> Delivery:
    alert = parse_alert(payload)
    canonical = canonical_payload(alert)
    return reconciler.deliver(alert, canonical, fingerprint(alert, canonical))


def fingerprint_of(payload: dict[str, Any]) -> str:
    alert = parse_alert(payload)
    return fingerprint(alert, canonical_payload(alert))


def itsm_ops(adapter: MemoryAdapter) -> list[str]:
    return [op for op in adapter.ops() if op != "find_ci"]


def record_of(reconciler: Reconciler, key: str = METRIC_KEY) -> Any:
    current = reconciler.store.load(key)
    assert current is not None
    return current.record


# --- the lifecycle, call by call ------------------------------------------------------------------


def test_fired_creates_one_incident_with_a_lookup_first(rec: Reconciler, adapter: MemoryAdapter) -> None:
    # The sample fired in 2025, long before this store's first use: an item may predate the
    # record. (Alerts fired after it are created with one call: tests/test_provably_new.py.)
    delivery = send(rec, metric())
    assert (delivery.status, delivery.action) == ("processed", Action.CREATED)
    assert delivery.correlation_id == METRIC_KEY
    assert itsm_ops(adapter) == ["find", "create"]
    assert len(adapter.items) == 1 and adapter.items[0].item.correlation_id == METRIC_KEY
    assert delivery.work_item == adapter.items[0].ref
    record = record_of(rec)
    assert record.item["id"] == adapter.items[0].ref.id and record.due is None and record.claim is None


def test_identical_redelivery_makes_no_itsm_call(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.calls.clear()
    again = send(rec, metric())
    assert (again.status, again.action) == ("processed", Action.IGNORED)
    assert again.reason == "identical alert already recorded"
    assert adapter.calls == []


def test_new_payload_rereads_then_notes(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.calls.clear()
    update = send(rec, metric(value=99.0))
    assert update.action is Action.UPDATED
    assert itsm_ops(adapter) == ["find", "add_note"]
    assert len(adapter.items[0].notes) == 2
    assert note_marker(fingerprint(parse_alert(metric(value=99.0)))) in adapter.items[0].notes[-1]


def test_resolved_rereads_then_resolves_and_a_repeat_is_free(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.calls.clear()
    resolved = send(rec, metric("Resolved"))
    assert resolved.action is Action.RESOLVED
    assert itsm_ops(adapter) == ["find", "resolve"]
    assert adapter.items[0].state == "6" and adapter.items[0].close_code == "Solution provided"
    adapter.calls.clear()
    assert send(rec, metric("Resolved")).action is Action.IGNORED
    assert adapter.calls == []


def test_resolved_before_fired_then_fired_creates_it_already_resolved(rec: Reconciler, adapter: MemoryAdapter) -> None:
    early = send(rec, metric("Resolved"))
    assert (early.status, early.action, early.work_item) == ("processed", Action.IGNORED, None)
    assert adapter.ops() == ["find"]  # an incident from before the record would be resolved
    assert send(rec, metric("Resolved")).action is Action.IGNORED
    assert adapter.ops() == ["find"]  # looked for once
    adapter.calls.clear()
    late = send(rec, metric())
    assert late.action is Action.CREATED
    assert itsm_ops(adapter) == ["find", "create"]
    [item] = adapter.items
    assert item.state == "6" and item.close_notes and "resolved" in item.notes[-1]
    adapter.calls.clear()
    assert send(rec, metric()).action is Action.IGNORED
    assert send(rec, metric(value=5.0)).action is Action.IGNORED  # a Fired after the Resolved opens nothing
    assert adapter.calls == []


def test_an_incident_a_person_closed_is_never_written_again(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.items[0].state = "7"  # closed by a person
    adapter.calls.clear()
    resolved = send(rec, metric("Resolved"))
    assert resolved.action is Action.IGNORED and "closed" in (resolved.reason or "")
    assert itsm_ops(adapter) == ["find"]
    adapter.calls.clear()
    assert send(rec, metric(value=1.0)).action is Action.IGNORED
    assert adapter.calls == []


def test_a_note_is_not_added_to_an_item_closed_meanwhile(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.items[0].state = "8"
    adapter.calls.clear()
    update = send(rec, metric(value=3.0))
    assert update.action is Action.IGNORED
    assert itsm_ops(adapter) == ["find"]
    assert len(adapter.items[0].notes) == 1


def test_stateless_alerts_create_then_note_even_when_resolved(rec: Reconciler, adapter: MemoryAdapter) -> None:
    first = load_sample("activity_log_administrative_fired.testaction.json")
    again = load_sample("activity_log_administrative_fired.testaction.json", monitorCondition="Resolved")
    assert send(rec, first).action is Action.CREATED
    assert send(rec, again).action is Action.UPDATED
    assert adapter.items[0].state == "1"


def test_an_incident_from_before_the_record_is_adopted_and_its_notes_checked(
    rec: Reconciler, adapter: MemoryAdapter
) -> None:
    old = adapter.seed(METRIC_KEY)
    payload = metric(value=7.0)
    old.notes.append(f"written by an earlier version [{note_marker(fingerprint(parse_alert(payload)))}]")
    adapter.calls.clear()
    same = send(rec, payload)
    assert same.action is Action.IGNORED and same.work_item == old.ref
    assert itsm_ops(adapter) == ["find", "find", "has_note"]
    assert send(rec, metric(value=8.0)).action is Action.UPDATED
    assert len(adapter.items) == 1 and len(old.notes) == 2


def test_a_resolved_for_an_incident_from_before_the_record_resolves_it(
    rec: Reconciler, adapter: MemoryAdapter
) -> None:
    old = adapter.seed(METRIC_KEY)  # opened by an earlier version of the bridge
    resolved = send(rec, metric("Resolved"))
    assert resolved.action is Action.RESOLVED and resolved.work_item == old.ref
    assert old.state == "6"
    assert itsm_ops(adapter) == ["find", "find", "resolve"]


def test_several_open_items_from_before_the_record_all_resolve(rec: Reconciler, adapter: MemoryAdapter) -> None:
    adapter.seed(METRIC_KEY)
    adapter.seed(METRIC_KEY)
    send(rec, metric())
    assert send(rec, metric("Resolved")).action is Action.RESOLVED
    assert [i.state for i in adapter.items] == ["6", "6"]


# --- lost answers, uncertain creates, failures ----------------------------------------------------


def test_a_create_whose_answer_was_lost_is_found_not_repeated(rec: Reconciler, adapter: MemoryAdapter) -> None:
    adapter.fail("create", commit=True, status=None)  # written, then the connection dropped
    delivery = send(rec, metric())
    assert delivery.action is Action.CREATED
    assert len(adapter.items) == 1
    assert itsm_ops(adapter) == ["find", "create", "find"]


def test_a_create_refused_before_any_work_is_sent_again_at_once(rec: Reconciler, adapter: MemoryAdapter) -> None:
    adapter.fail("create", status=503)
    assert send(rec, metric()).action is Action.CREATED
    assert itsm_ops(adapter) == ["find", "create", "find", "create"]
    assert len(adapter.items) == 1


def test_a_note_whose_answer_was_lost_is_not_written_twice(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.fail("add_note", commit=True, status=None)
    assert send(rec, metric(value=5.0)).action is Action.UPDATED
    assert len(adapter.items[0].notes) == 2
    assert itsm_ops(adapter)[-3:] == ["add_note", "find", "has_note"]


def test_a_resolve_whose_answer_was_lost_still_reports_resolved(rec: Reconciler, adapter: MemoryAdapter) -> None:
    send(rec, metric())
    adapter.fail("resolve", commit=True, status=None)
    assert send(rec, metric("Resolved")).action is Action.RESOLVED
    assert adapter.ops().count("resolve") == 1 and adapter.items[0].state == "6"


def test_an_uncertain_create_is_given_time_to_land(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock, settle_seconds=60)
    # Timed out without an answer, and the ITSM had not written it (yet): it may still land.
    adapter.fail("create", status=None)
    first = send(rec, metric())
    assert first.status == "queued" and "time to land" in (first.reason or "")
    assert adapter.ops().count("create") == 1
    clock.advance(10)
    rec.run(METRIC_KEY)  # looks, finds nothing, still inside the settle window: no second create
    assert adapter.ops().count("create") == 1
    clock.advance(60)
    result = rec.run(METRIC_KEY)
    assert adapter.ops().count("create") == 2 and len(adapter.items) == 1
    assert result.record is not None and result.record.item is not None and result.record.due is None


def test_an_uncertain_create_that_lands_late_is_adopted(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock, settle_seconds=60)
    adapter.fail("create", status=None)
    assert send(rec, metric()).status == "queued"
    adapter.seed(METRIC_KEY)  # the slow create committed after the bridge gave up on it
    clock.advance(5)
    rec.run(METRIC_KEY)
    assert len(adapter.items) == 1
    record = record_of(rec)
    assert record.item["id"] == adapter.items[0].ref.id
    assert record.written[fingerprint(parse_alert(metric()))] == Action.CREATED


def test_itsm_down_queues_then_the_outbox_delivers_with_capped_backoff(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock, max_delay_seconds=60)
    for _ in range(40):
        adapter.fail("find")
    queued = send(rec, metric())
    assert queued.status == "queued" and "planned find failure" in (queued.reason or "")
    assert adapter.items == []
    delays = []
    for _ in range(12):
        record = record_of(rec)
        delays.append(record.due - clock())
        clock.advance(record.due - clock())
        rec.run(METRIC_KEY)
    assert max(delays) <= 60 and delays[-1] >= 30  # doubled up to the cap, never beyond
    while record_of(rec).due is not None:
        clock.advance(record_of(rec).due - clock())
        rec.run(METRIC_KEY)
    assert len(adapter.items) == 1
    assert record_of(rec).attempts == 0 and record_of(rec).last_error is None


def test_failing_past_the_horizon_is_dead_lettered(adapter: MemoryAdapter, state_path: Path, clock: FakeTime) -> None:
    rec = make(adapter, state_path, clock, horizon_seconds=300)
    for _ in range(200):
        adapter.fail("find")
    send(rec, metric())
    for _ in range(60):
        record = record_of(rec)
        if record.dead is not None:
            break
        clock.advance(record.due - clock())
        rec.run(METRIC_KEY)
    record = record_of(rec)
    assert record.dead is not None and "gave up after" in record.dead.reason and record.due is None


def test_a_permanent_refusal_is_dead_lettered_then_replayed(rec: Reconciler, adapter: MemoryAdapter) -> None:
    adapter.fail("create", retryable=False, status=400)
    rejected = send(rec, metric())
    assert rejected.status == "rejected" and "planned create failure" in (rejected.reason or "")
    record = record_of(rec)
    assert record.dead is not None and record.dead.status == 400 and record.due is None
    assert adapter.items == []
    assert send(rec, metric()).status == "rejected"  # a redelivery is answered from the record
    rec.replay(METRIC_KEY)
    result = rec.run(METRIC_KEY)
    assert result.record is not None and result.record.dead is None
    assert len(adapter.items) == 1


def test_a_refused_credential_holds_the_work_and_says_so(
    rec: Reconciler, adapter: MemoryAdapter, clock: FakeTime
) -> None:
    for _ in range(50):
        adapter.fail("find", retryable=False, status=401, reason=Reason.AUTH_ERROR)
    held = send(rec, metric())
    assert held.status == "queued" and "planned find failure" in (held.reason or "")
    record = record_of(rec)
    assert record.held and record.dead is None and record.due is not None
    status = rec.credential_status()
    assert status is not None and status["state"] == "refused"
    adapter.failures.clear()  # the operator fixed the credential
    rec.run(METRIC_KEY)  # woken early (a duplicate message): the back-off is kept, nothing is sent
    assert adapter.items == []
    clock.advance(record.due - clock())
    rec.run(METRIC_KEY)
    assert len(adapter.items) == 1 and record_of(rec).held is None
    rec._credential._cached = None  # health reads the shared state again
    assert rec.credential_status() is None


# --- one creator ------------------------------------------------------------------------------------


def test_concurrent_deliveries_through_two_reconcilers_on_one_file_create_once(
    adapter: MemoryAdapter, state_path: Path
) -> None:
    import time

    real = [Reconciler(SqliteStore(state_path), adapter, MappingRules(), RetryPolicy(attempts=3, budget_seconds=8),
                       timing=Timing(inline_seconds=3)) for _ in range(2)]
    gate = threading.Event()
    slow_create = threading.Event()

    def hold_create() -> None:
        slow_create.set()
        time.sleep(0.3)  # the other delivery arrives while this create is in flight

    adapter.before_create.append(hold_create)
    answers: list[Delivery] = []

    def deliver(i: int) -> None:
        gate.wait()
        answers.append(send(real[i % 2], metric()))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert adapter.ops().count("create") == 1 and len(adapter.items) == 1
    assert sorted(a.action for a in answers if a.action) == [Action.CREATED] + [Action.IGNORED] * 5
    assert all(a.work_item == adapter.items[0].ref for a in answers)


def test_a_live_claim_elsewhere_queues_and_an_expired_one_is_taken_over(
    rec: Reconciler, adapter: MemoryAdapter, clock: FakeTime
) -> None:
    adapter.fail("find")
    adapter.fail("find")
    adapter.fail("find")
    send(rec, metric())  # queued, record pending
    current = rec.store.load(METRIC_KEY)
    assert current is not None
    record = current.record
    record.claim = Claim("another-instance", clock() + 40)
    rec.store.replace(record, current.etag)
    clock.advance(record.due - clock() if record.due and record.due > clock() else 0)
    result = rec.run(METRIC_KEY)
    assert result.busy_until == record.claim.until and adapter.items == []
    clock.advance(41)  # its holder died: the claim expires
    rec.run(METRIC_KEY)
    assert len(adapter.items) == 1


def test_the_worker_takes_what_is_due_and_leaves_the_rest(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock)
    worker = OutboxWorker(rec, threads=1, wall=clock)
    for _ in range(3):
        adapter.fail("find")
    send(rec, metric())
    assert worker.drain_once() == 0  # not yet due
    clock.advance(record_of(rec).due - clock())
    assert worker.drain_once() == 1
    assert len(adapter.items) == 1 and record_of(rec).due is None
    assert worker.drain_once() == 0


def test_a_delivery_recorded_by_a_process_that_died_is_finished_by_the_worker(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock)
    alert: Alert = parse_alert(metric())
    canonical = canonical_payload(alert)
    # What deliver() writes before its inline pass; the process is then killed.
    event = Event(fingerprint(alert, canonical), "Fired", clock())
    rec._record(correlation_key(alert.alert_id), alert, event, canonical)
    assert adapter.items == []
    clock.advance(rec.timing.inline_seconds + rec.timing.lease_margin_seconds)
    assert OutboxWorker(rec, threads=1, wall=clock).drain_once() == 1
    assert len(adapter.items) == 1


def test_the_state_store_down_falls_back_to_the_itsm_lookup(rec: Reconciler, adapter: MemoryAdapter) -> None:
    rec.store.close()  # every store call now fails
    alert = parse_alert(metric())
    canonical = canonical_payload(alert)
    delivery = rec.deliver_unrecorded(alert, canonical, fingerprint(alert, canonical), 3.0)
    assert delivery.action is Action.CREATED and len(adapter.items) == 1
    again = rec.deliver_unrecorded(alert, canonical, fingerprint(alert, canonical), 3.0)
    assert again.action is Action.IGNORED and len(adapter.items) == 1  # found by lookup, note marker seen


def test_the_hourly_duty_forgets_finished_records_after_the_retention(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    rec = make(adapter, state_path, clock)
    worker = OutboxWorker(rec, threads=1, retention_seconds=30 * 86400, wall=clock)
    send(rec, metric())
    for _ in range(3):
        adapter.fail("find")
    send(rec, metric(guid="0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"))  # still pending
    clock.advance(31 * 86400)
    worker.tick()  # drains the pending one (now finished, but fresh) and forgets the old one
    assert rec.store.load(METRIC_KEY) is None
    assert rec.store.load("0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9") is not None
    assert len(adapter.items) == 2


# --- reads per pass (issue #12): a pass reads its record from the store once --------------------


class CountingStore(SqliteStore):
    """The SQLite store, counting record reads and writes (an HTTP call each with Azure Table)."""

    def __init__(self, path: Path, *, clock: FakeTime) -> None:
        super().__init__(path, clock=clock)
        self.loads = self.writes = 0

    def load(self, key: str) -> Versioned | None:
        self.loads += 1
        return super().load(key)

    def insert(self, record: Record, payloads: Mapping[str, bytes] | None = None) -> str:
        self.writes += 1
        return super().insert(record, payloads)

    def replace(self, record: Record, etag: str, payloads: Mapping[str, bytes] | None = None) -> str:
        self.writes += 1
        return super().replace(record, etag, payloads)

    def taken(self) -> tuple[int, int]:
        """(loads, writes) since the last call."""
        counts = (self.loads, self.writes)
        self.loads = self.writes = 0
        return counts


def counted(adapter: MemoryAdapter, path: Path, clock: FakeTime) -> tuple[Reconciler, CountingStore]:
    store = CountingStore(path, clock=clock)
    reconciler = Reconciler(
        store,
        adapter,
        MappingRules(),
        RetryPolicy(attempts=3, budget_seconds=8),
        CmdbBinder(adapter, ttl_seconds=300, clock=clock),
        sleep=clock.sleep,
        clock=clock,
        wall=clock,
        rand=lambda: 0.5,
        epoch=StoreEpoch(store, wall=clock, marker_root=path.parent / "machine"),
    )
    store.put_meta(RECORDS_SINCE, {"at": START - 86400})  # a store that has kept records for a day
    return reconciler, store


def fired_now(condition: str = "Fired", value: float | None = None) -> dict[str, Any]:
    """The metric alert, fired a minute ago: after the store's epoch, so provably new."""
    data = metric(condition, value)
    data["data"]["essentials"]["firedDateTime"] = datetime.fromtimestamp(START - 60, UTC).isoformat()
    return data


def test_each_delivery_reads_its_record_once(adapter: MemoryAdapter, state_path: Path, clock: FakeTime) -> None:
    rec, store = counted(adapter, state_path, clock)
    # The record is read when the event is recorded; the pass then works from what it wrote
    # (claim, intent, the created fact, settle). It used to read it 8 times.
    assert send(rec, fired_now()).action is Action.CREATED and itsm_ops(adapter) == ["create"]
    assert store.taken() == (1, 5)
    assert send(rec, fired_now()).action is Action.IGNORED
    assert store.taken() == (1, 0)
    assert send(rec, fired_now(value=99.0)).action is Action.UPDATED
    assert store.taken() == (1, 5)
    assert send(rec, fired_now("Resolved")).action is Action.RESOLVED
    assert store.taken() == (1, 5)
    assert itsm_ops(adapter) == ["create", "find", "add_note", "find", "resolve"]


def test_an_outbox_pass_reads_its_record_once(adapter: MemoryAdapter, state_path: Path, clock: FakeTime) -> None:
    rec, store = counted(adapter, state_path, clock)
    for _ in range(3):
        adapter.fail("create")
    assert send(rec, fired_now()).status == "queued"
    store.taken()
    clock.advance(record_of(rec).due - clock())
    store.taken()
    assert rec.run(METRIC_KEY).wrote == {fingerprint_of(fired_now()): Action.CREATED}
    # The due check's read, then claim, intent, created fact and settle from what was written.
    assert store.taken() == (1, 4)


def test_what_a_pass_knows_of_its_record_is_what_the_store_holds(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read a pass takes from what it knows is compared with the store (one writer here, so
    they must agree): the same document, in the stored form, at the same version."""
    rec, _ = counted(adapter, state_path, clock)
    witness = SqliteStore(state_path, clock=clock)
    known = reconcile._Owner.known
    compared: list[str] = []

    def checked(owner: Any) -> Versioned | None:
        copy = known(owner)
        if copy is not None:
            stored = witness.load(copy.record.key)
            assert stored is not None and stored.etag == copy.etag
            assert copy.record.to_json() == stored.record.to_json() and copy.record == stored.record
            assert list(copy.record.written) == list(stored.record.written)  # trimming keeps this order
            compared.append(copy.etag)
        return copy

    monkeypatch.setattr(reconcile._Owner, "known", checked)
    send(rec, fired_now())
    send(rec, fired_now(value=99.0))
    adapter.fail("add_note", commit=True)  # landed, but its answer was lost
    send(rec, fired_now(value=98.0))
    clock.advance(rec.timing.settle_seconds)
    rec.run(METRIC_KEY)
    send(rec, fired_now("Resolved"))
    assert len(compared) > 10
    record = record_of(rec)
    assert record.resolution_written and record.due is None and record.claim is None
    assert sorted(record.written.values()) == ["created", "resolved", "updated", "updated"]


def test_a_write_on_a_stale_copy_is_redone_from_the_store(adapter: MemoryAdapter, state_path: Path) -> None:
    """Another delivery records a new payload while the create is in flight: the created fact,
    written on what the pass knew, meets a conflict and is written again on the record as stored."""
    clock = FakeTime(START)
    rec, store = counted(adapter, state_path, clock)
    other = make(adapter, state_path, clock, inline_seconds=0)
    answers: list[Delivery] = []
    adapter.before_create.append(lambda: answers.append(send(other, fired_now(value=99.0))))
    first = send(rec, fired_now())
    assert first.action is Action.CREATED and answers[0].status == "queued"
    assert store.taken()[0] == 2  # the record, then again after the conflict
    record = record_of(rec)
    assert len(adapter.items) == 1 and record.item["id"] == adapter.items[0].ref.id
    assert set(record.written) == {fingerprint_of(fired_now()), fingerprint_of(fired_now(value=99.0))}
    assert record.claim is None and record.intent is None


def test_an_event_recorded_while_a_pass_settles_is_not_dropped(
    adapter: MemoryAdapter, state_path: Path, clock: FakeTime
) -> None:
    """The settle write (nothing left: not due, claim released) conflicts with a new payload that
    another delivery recorded just before it. The pass reads again and writes the note; the new
    event is never left unwritten with nothing due."""
    rec = make(adapter, state_path, clock)
    other = make(adapter, state_path, clock)
    second = metric(value=99.0)
    original = rec.store.replace
    injected: list[str] = []

    def replace(record: Record, etag: str, payloads: Any = None) -> str:
        if not injected and record.due is None and record.claim is None and record.item is not None:
            alert = parse_alert(second)
            canonical = canonical_payload(alert)
            event = Event(fingerprint(alert, canonical), "Fired", clock())
            other._record(METRIC_KEY, alert, event, canonical)
            injected.append(event.fingerprint)
        return original(record, etag, payloads)

    rec.store.replace = replace  # type: ignore[method-assign]
    assert send(rec, metric()).action is Action.CREATED
    assert injected, "the settle write was never reached"
    record = record_of(rec)
    assert record.written.get(injected[0]) == "updated"  # its note was written in the same pass
    assert record.unwritten == [] and record.due is None and record.claim is None
    (item,) = adapter.items
    assert note_marker(injected[0]) in item.notes[-1]
