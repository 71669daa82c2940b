"""The record's JSON form (bridge.state.record): both backends store this text verbatim, so it must
stay the document ``dataclasses.asdict`` produced, and records written by earlier versions must load.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import TypeVar

import pytest

from bridge.state.record import RECORD_VERSION, Claim, DeadLetter, Event, Intent, Record
from tests.state.contract import make_record

# Written by the first version of the record (its item status was still called item_state, and
# it had no "searched"): what an existing SQLite file or Azure table holds.
FIRST_VERSION_DOC = (
    '{"adopted":false,"alert_id":"/subscriptions/s/alerts/a1","attempts":0,'
    '"claim":{"owner":"w:1","until":1750000030.0},"created_at":1750000000.0,"dead":null,"due":null,'
    '"events":[{"condition":"Fired","fingerprint":"abababababababab","received_at":1750000000.25}],'
    '"failing_since":null,"held":null,"intent":null,'
    '"item":{"id":"9d38","number":"INC0010001","system":"servicenow","url":null},"item_open":true,'
    '"item_state":null,"key":"k1","last_error":null,"reasons":{},"resolution_written":false,'
    '"stateless":false,"updated_at":1750000001.5,"v":1,"written":{"abababababababab":"created"}}'
)
T = TypeVar("T")


def reference_json(record: Record) -> str:
    """How the record was written before it had a JSON writer of its own."""
    doc = dataclasses.asdict(record)
    doc["v"] = RECORD_VERSION
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def random_record(rng: random.Random) -> Record:
    def text() -> str:
        return "".join(rng.choice('ab"\\/é\u2028\x00 ') for _ in range(rng.randint(0, 8)))

    def when() -> float:
        return rng.choice([1_750_000_000.0, 1_750_000_000.123456789, 0.1 + 0.2, 1e-7, 2**53 + 0.0])

    def maybe(make: Callable[[], T]) -> T | None:
        return make() if rng.random() < 0.5 else None

    record = Record(text(), text(), rng.random() < 0.5, when(), when())
    for _ in range(rng.randint(0, 4)):
        record.events.append(Event(text(), rng.choice(["Fired", "Resolved"]), when()))
    record.written = {text(): rng.choice(["created", "updated", "ignored"]) for _ in range(rng.randint(0, 3))}
    record.reasons = {text(): text() for _ in range(rng.randint(0, 2))}
    record.item = maybe(lambda: {"system": text(), "id": text(), "number": None, "url": text()})
    record.item_open, record.adopted = rng.random() < 0.5, rng.random() < 0.5
    record.searched, record.resolution_written = rng.random() < 0.5, rng.random() < 0.5
    record.item_status = maybe(text)
    record.intent = maybe(lambda: Intent(text(), when(), text()))
    record.claim = maybe(lambda: Claim(text(), when()))
    record.dead = maybe(lambda: DeadLetter(text(), when(), rng.choice([None, 400, 409])))
    record.due, record.failing_since = maybe(when), maybe(when)
    record.attempts = rng.randint(0, 2**40)
    record.last_error, record.held = maybe(text), maybe(text)
    return record


def test_the_document_is_what_asdict_wrote() -> None:
    rng = random.Random(5)
    records = [
        make_record(),
        Record(key="k", alert_id="a", stateless=True, created_at=1.0, updated_at=2.0),
        *(random_record(rng) for _ in range(500)),
    ]
    for record in records:
        assert record.to_json() == reference_json(record)
        assert Record.from_json(record.to_json()) == record


def test_writing_leaves_the_record_as_it_was() -> None:
    record = make_record()
    before = dataclasses.replace(record)

    record.to_json()

    assert record == before
    assert isinstance(record.intent, Intent) and isinstance(record.events[0], Event)


def test_a_record_written_by_the_first_version_loads() -> None:
    record = Record.from_json(FIRST_VERSION_DOC)

    assert record.key == "k1" and record.item_open and record.item_status is None and not record.searched
    assert record.claim == Claim("w:1", 1750000030.0)
    assert record.events == [Event("abababababababab", "Fired", 1750000000.25)]
    assert record.written == {"abababababababab": "created"}
    assert record.item == {"id": "9d38", "number": "INC0010001", "system": "servicenow", "url": None}
    # Written again, it is today's document: the unknown field is gone, the new one is there.
    assert record.to_json() == reference_json(record)
    assert '"searched":false' in record.to_json() and "item_state" not in record.to_json()


@pytest.mark.parametrize("missing", ["key", "alert_id", "stateless", "created_at", "updated_at"])
def test_a_document_without_a_required_field_is_refused(missing: str) -> None:
    doc = json.loads(FIRST_VERSION_DOC)
    del doc[missing]
    with pytest.raises(TypeError):
        Record.from_json(json.dumps(doc))
