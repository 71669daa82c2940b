"""The contract every state backend passes, whatever it stores records and the outbox in.

A backend's test class subclasses :class:`StoreContract` and provides three fixtures: ``store``
(the backend under test, on fresh, empty storage), ``peer`` (a second, independent handle on the
same storage: another process, in effect) and ``pass_time`` (a callable that lets the backend's
notion of time move on by some seconds: a fake clock's advance, or a real sleep). The cases speak
only through :class:`~bridge.state.base.StateStore`.

The outbox is checked only where the backends agree. SQLite's outbox is the record's ``due``
column (``finish`` just releases the lease, and the key is due again until the record is replaced
with ``due=None``); Azure's is a queue (``finish`` deletes the message). So "done" in this suite is
always: replace the record with ``due=None``, then finish.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace as evolve

import pytest

from bridge.state.base import DueWork, StateConflict, StateStore
from bridge.state.record import Claim, DeadLetter, Event, Intent, Record

__all__ = ["KEY", "OTHER_KEY", "PassTime", "StoreContract", "make_record", "take_within"]

KEY = "0d3f5b8a-41c6-4e2f-9a7b-5c1d2e3f4a5b"
OTHER_KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
T0 = 1_750_000_000.0

PassTime = Callable[[float], None]


def make_record(key: str = KEY, **changes: object) -> Record:
    """A record with every field set to something other than its default."""
    record = Record(
        key=key,
        alert_id="/subscriptions/11111111-2222-3333-4444-555555555555/providers/Microsoft.AlertsManagement/alerts/a1",
        stateless=False,
        created_at=T0,
        updated_at=T0 + 1.25,
        events=[
            Event("f" * 64, "Fired", T0 + 0.5),
            Event("e" * 64, "Resolved", T0 + 60.125),
        ],
        written={"f" * 64: "created"},
        reasons={"d" * 64: "duplicate of an open incident"},
        item={"id": "INC0010001", "sys_id": "9d385017c611228701d22104cc95c371", "url": None},
        item_open=True,
        item_status="open",
        adopted=True,
        resolution_written=False,
        intent=Intent("create", T0 + 0.75, fingerprint="f" * 64),
        claim=Claim("worker-1:1234", T0 + 30.0),
        due=T0 + 5.5,
        attempts=3,
        failing_since=T0 + 2.0,
        last_error="ServiceNow answered 503",
        held="credential refused",
        dead=DeadLetter("ServiceNow refused the change", T0 + 9.0, status=400),
    )
    return evolve(record, **changes)  # type: ignore[arg-type]


def take_within(store: StateStore, *, timeout: float, limit: int = 10, lease: float = 30.0) -> list[DueWork]:
    """``take_due`` until it hands something out or ``timeout`` (real seconds) passes.

    Queue visibility has whole-second resolution, so "due after 2 s" may be 2.9 s of wall clock.
    """
    deadline = time.monotonic() + timeout
    while True:
        work = store.take_due(limit, lease)
        if work or time.monotonic() >= deadline:
            return work
        time.sleep(0.1)


def finish_done(store: StateStore, work: DueWork) -> None:
    """The reconciler's "nothing more is due" ending: the record says so, then the work is let go."""
    current = store.load(work.key)
    assert current is not None
    store.replace(evolve(current.record, due=None), current.etag)
    store.finish(work)


class StoreContract:
    """Behaviour every :class:`StateStore` must show. Subclasses provide the three fixtures."""

    @pytest.fixture
    def store(self) -> StateStore:
        raise NotImplementedError

    @pytest.fixture
    def peer(self, store: StateStore) -> StateStore:
        raise NotImplementedError

    @pytest.fixture
    def pass_time(self) -> PassTime:
        raise NotImplementedError

    # ------------------------------------------------------------------ records

    def test_load_of_a_missing_key_is_none(self, store: StateStore) -> None:
        assert store.load(KEY) is None

    def test_insert_then_load_round_trips_every_field(self, store: StateStore, peer: StateStore) -> None:
        record = make_record()
        etag = store.insert(record)

        loaded = peer.load(KEY)
        assert loaded is not None
        assert loaded.record == record
        assert loaded.record.to_json() == record.to_json()
        assert loaded.etag == etag

    def test_a_record_without_optional_parts_round_trips(self, store: StateStore) -> None:
        record = Record(key=KEY, alert_id="a1", stateless=True, created_at=T0, updated_at=T0)
        store.insert(record)

        loaded = store.load(KEY)
        assert loaded is not None
        assert loaded.record == record

    def test_a_second_insert_of_the_same_key_conflicts(self, store: StateStore, peer: StateStore) -> None:
        store.insert(make_record())

        with pytest.raises(StateConflict):
            peer.insert(make_record(attempts=99))

        loaded = store.load(KEY)
        assert loaded is not None
        assert loaded.record.attempts == 3

    def test_replace_with_the_current_version_succeeds_and_moves_the_version(self, store: StateStore) -> None:
        first = store.insert(make_record())

        second = store.replace(make_record(attempts=4, due=None), first)

        assert second != first
        loaded = store.load(KEY)
        assert loaded is not None
        assert loaded.record == make_record(attempts=4, due=None)
        assert loaded.etag == second
        # The version a write returned is the one the next conditional write needs.
        third = store.replace(make_record(attempts=5), second)
        assert third not in (first, second)

    def test_replace_with_a_stale_version_conflicts_and_changes_nothing(
        self, store: StateStore, peer: StateStore
    ) -> None:
        first = store.insert(make_record())
        peer.replace(make_record(attempts=4), first)

        with pytest.raises(StateConflict):
            store.replace(make_record(attempts=40, last_error="lost"), first)

        loaded = store.load(KEY)
        assert loaded is not None
        assert loaded.record == make_record(attempts=4)

    def test_replace_of_a_deleted_record_conflicts(self, store: StateStore) -> None:
        etag = store.insert(make_record())
        store.delete(KEY)

        with pytest.raises(StateConflict):
            store.replace(make_record(attempts=4), etag)
        assert store.load(KEY) is None

    def test_concurrent_read_modify_write_loses_no_update(self, store: StateStore, peer: StateStore) -> None:
        store.insert(make_record(attempts=0, written={}))
        rounds = 50
        errors: list[BaseException] = []
        conflicts = [0, 0]
        start = threading.Barrier(2)

        def writer(index: int, handle: StateStore) -> None:
            try:
                start.wait()
                for n in range(rounds):
                    while True:
                        current = handle.load(KEY)
                        assert current is not None
                        record = evolve(
                            current.record,
                            attempts=current.record.attempts + 1,
                            written={**current.record.written, f"w{index}-{n}": "updated"},
                        )
                        try:
                            handle.replace(record, current.etag)
                            break
                        except StateConflict:
                            conflicts[index] += 1
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i, h)) for i, h in enumerate((store, peer))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []

        final = store.load(KEY)
        assert final is not None
        assert final.record.attempts == 2 * rounds
        assert len(final.record.written) == 2 * rounds

    # ------------------------------------------------------------------ payloads

    def test_payloads_written_with_the_record_read_back(self, store: StateStore, peer: StateStore) -> None:
        first, second = b'{"schemaId":"azureMonitorCommonAlertSchema"}', bytes(range(256)) * 4
        etag = store.insert(make_record(), {"a" * 64: first})
        store.replace(make_record(attempts=4), etag, {"b" * 64: second})

        assert peer.payload(KEY, "a" * 64) == first
        assert peer.payload(KEY, "b" * 64) == second
        assert peer.payload(KEY, "c" * 64) is None

    def test_a_payload_is_visible_only_under_its_own_key(self, store: StateStore) -> None:
        store.insert(make_record(), {"a" * 64: b"{}"})
        store.insert(make_record(OTHER_KEY))

        assert store.payload(OTHER_KEY, "a" * 64) is None
        assert store.payload(KEY, "a" * 64) == b"{}"

    def test_writing_the_same_payload_again_is_harmless(self, store: StateStore) -> None:
        etag = store.insert(make_record(), {"a" * 64: b'{"x":1}'})
        store.replace(make_record(attempts=4), etag, {"a" * 64: b'{"x":1}'})

        assert store.payload(KEY, "a" * 64) == b'{"x":1}'

    def test_a_large_payload_round_trips(self, store: StateStore) -> None:
        # Random hex compresses only to about half, so it spans several 64 KiB table properties
        # (Azure). Not fully random: Azurite counts an entity's size as its Base64 JSON, so it
        # refuses binary properties above ~750 KiB that the real service (raw bytes) accepts.
        body = os.urandom(450_000).hex().encode()
        store.insert(make_record(), {"a" * 64: body})

        assert store.payload(KEY, "a" * 64) == body

    def test_a_conflicting_insert_stores_no_payload(self, store: StateStore) -> None:
        store.insert(make_record())

        with pytest.raises(StateConflict):
            store.insert(make_record(), {"a" * 64: b"{}"})
        assert store.payload(KEY, "a" * 64) is None

    def test_a_conflicting_replace_stores_no_payload(self, store: StateStore) -> None:
        first = store.insert(make_record())
        store.replace(make_record(attempts=4), first)

        with pytest.raises(StateConflict):
            store.replace(make_record(attempts=5), first, {"a" * 64: b"{}"})
        assert store.payload(KEY, "a" * 64) is None

    # ------------------------------------------------------------------ listing, deleting, meta

    def test_records_lists_records_only(self, store: StateStore) -> None:
        store.insert(make_record(), {"a" * 64: b"{}"})
        store.insert(make_record(OTHER_KEY, due=None))
        store.put_meta("record", {"not": "a record"})
        store.put_meta("schema", {"v": 1})

        listed = sorted(store.records(), key=lambda r: r.key)

        assert listed == sorted([make_record(), make_record(OTHER_KEY, due=None)], key=lambda r: r.key)

    def test_records_of_an_empty_store_is_empty(self, store: StateStore) -> None:
        assert list(store.records()) == []

    def test_delete_removes_the_record_and_its_payloads(self, store: StateStore) -> None:
        store.insert(make_record(), {"a" * 64: b"{}", "b" * 64: b"[]"})
        store.insert(make_record(OTHER_KEY), {"a" * 64: b"{}"})

        store.delete(KEY)
        store.delete(KEY)  # absent is fine

        assert store.load(KEY) is None
        assert store.payload(KEY, "a" * 64) is None
        assert store.payload(KEY, "b" * 64) is None
        assert [r.key for r in store.records()] == [OTHER_KEY]
        assert store.payload(OTHER_KEY, "a" * 64) == b"{}"
        # The key can be used afresh.
        store.insert(make_record(attempts=0))

    def test_meta_round_trips_and_overwrites(self, store: StateStore, peer: StateStore) -> None:
        assert store.get_meta("last_sweep") is None

        store.put_meta("last_sweep", {"at": T0, "nested": {"list": [1, "two", None]}})
        assert peer.get_meta("last_sweep") == {"at": T0, "nested": {"list": [1, "two", None]}}

        store.put_meta("last_sweep", {"at": T0 + 1})
        assert peer.get_meta("last_sweep") == {"at": T0 + 1}
        assert peer.get_meta("other") is None

    def test_ping_answers(self, store: StateStore) -> None:
        store.ping()

    def test_maintain_keeps_everything(self, store: StateStore, peer: StateStore) -> None:
        etag = store.insert(make_record(attempts=1), {"a" * 64: b"{}"})
        store.maintain()
        store.maintain()  # twice, and with nothing to do, is fine
        loaded = peer.load(KEY)
        assert loaded is not None and loaded.etag == etag and loaded.record.attempts == 1
        assert peer.payload(KEY, "a" * 64) == b"{}"

    # ------------------------------------------------------------------ outbox

    def test_scheduled_now_is_handed_out_once_while_leased(self, store: StateStore, peer: StateStore) -> None:
        store.insert(make_record(due=None))
        store.schedule(KEY, 0)

        work = take_within(store, timeout=5)

        assert [w.key for w in work] == [KEY]
        assert peer.take_due(10, 30) == []
        assert store.take_due(10, 30) == []

    def test_nothing_is_due_in_an_empty_outbox(self, store: StateStore) -> None:
        store.insert(make_record(due=None))
        assert store.take_due(10, 30) == []

    def test_finished_work_is_not_handed_out_again(
        self, store: StateStore, peer: StateStore, pass_time: PassTime
    ) -> None:
        store.insert(make_record(due=None))
        store.schedule(KEY, 0)
        [work] = take_within(store, timeout=5, lease=1)

        finish_done(store, work)
        pass_time(1.5)  # past the lease it was taken with

        assert peer.take_due(10, 30) == []
        assert store.take_due(10, 30) == []

    def test_a_lease_that_runs_out_hands_the_key_out_again(
        self, store: StateStore, peer: StateStore, pass_time: PassTime
    ) -> None:
        store.insert(make_record(due=None))
        store.schedule(KEY, 0)
        assert [w.key for w in take_within(store, timeout=5, lease=2)] == [KEY]
        assert peer.take_due(10, 30) == []

        pass_time(2)  # the taker died without finishing

        again = take_within(peer, timeout=5)
        assert [w.key for w in again] == [KEY]
        finish_done(peer, again[0])

    def test_a_late_finish_leaves_the_new_holder_alone(
        self, store: StateStore, peer: StateStore, pass_time: PassTime
    ) -> None:
        store.insert(make_record(due=None))
        store.schedule(KEY, 0)
        [stale] = take_within(store, timeout=5, lease=1)
        pass_time(1)  # the first taker is slow and its lease runs out
        [current] = take_within(peer, timeout=5, lease=30)

        store.finish(stale)  # finishing late is no error, and must not free the peer's lease

        assert store.take_due(10, 30) == []
        finish_done(peer, current)

    def test_a_delayed_key_is_not_handed_out_before_its_time(self, store: StateStore, pass_time: PassTime) -> None:
        store.insert(make_record(due=None))
        store.schedule(KEY, 2)

        assert store.take_due(10, 30) == []
        pass_time(2)

        work = take_within(store, timeout=5)
        assert [w.key for w in work] == [KEY]

    def test_take_due_respects_its_limit_and_hands_each_key_to_one_taker(
        self, store: StateStore, peer: StateStore
    ) -> None:
        keys = [KEY, OTHER_KEY, "3b241101-e2bb-4255-8caf-4136c566a962"]
        for key in keys:
            store.insert(make_record(key, due=None))
            store.schedule(key, 0)

        first = take_within(store, timeout=5, limit=2)
        assert 1 <= len(first) <= 2
        rest: list[DueWork] = []
        deadline = time.monotonic() + 5
        while len(first) + len(rest) < len(keys) and time.monotonic() < deadline:
            rest += peer.take_due(10, 30)

        taken = [w.key for w in first + rest]
        assert sorted(taken) == sorted(keys)
        for work in first:
            finish_done(store, work)
        for work in rest:
            finish_done(peer, work)
        assert store.take_due(10, 30) == []

    # ------------------------------------------------------------------ retention

    def test_purge_forgets_old_finished_records_only(self, store: StateStore) -> None:
        finished = {"due": None, "dead": None, "claim": None}
        keys = {name: str(uuid.uuid4()) for name in ("old", "recent", "pending", "dead", "claimed")}
        store.insert(make_record(keys["old"], updated_at=T0, **finished), {"a" * 16: b"{}"})
        store.insert(make_record(keys["recent"], updated_at=T0 + 1000, **finished))
        store.insert(make_record(keys["pending"], updated_at=T0, **{**finished, "due": T0 + 5}))
        store.insert(make_record(keys["dead"], updated_at=T0, **{**finished, "dead": DeadLetter("no", T0)}))
        store.insert(make_record(keys["claimed"], updated_at=T0, **{**finished, "claim": Claim("w", T0 + 9)}))
        assert store.purge(T0 + 500) == 1
        assert store.load(keys["old"]) is None and store.payload(keys["old"], "a" * 16) is None
        assert all(store.load(keys[k]) is not None for k in ("recent", "pending", "dead", "claimed"))
        assert store.purge(T0 + 500) == 0

