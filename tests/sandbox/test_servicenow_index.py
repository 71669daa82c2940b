"""The ServiceNow stand-in's index: equality lookups give exactly what a scan gives, without a scan."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import pytest

from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.snow_query import parse_query

QUERIES = [
    "correlation_id=key-1",
    "correlation_id=KEY-1",
    "correlation_id=key-1^correlation_display=Azure Monitor^ORDERBYsys_created_on",
    "correlation_id=key-2^state=1",
    "correlation_id=key-1^ORcorrelation_id=key-3",
    "correlation_id=key-1^NQcorrelation_id=key-2",
    "correlation_id=",
    "correlation_id!=key-1",
    "correlation_idLIKEkey-1",
    "correlation_id=nobody",
    "short_description=t^correlation_id=key-3",
    "name=vm-1",
    "object_id=/subscriptions/s/VM-2",
]


def _select(standin: ServiceNowStandIn, table: str, query: str, *, indexed: bool) -> list[dict[str, str]]:
    store = standin._store
    encoded = parse_query(query, lambda name: store.field_spec(table, name) is not None)
    if indexed:
        return store.select(table, encoded)
    with mock.patch.object(store._index, "candidates", return_value=None):  # every query scans
        return store.select(table, encoded)


def _churn(standin: ServiceNowStandIn, rng: random.Random) -> None:
    """Inserts, updates that move rows between keys (in other cases too), and deletes."""
    store = standin._store
    ids: list[str] = []
    for n in range(300):
        key = f"key-{rng.randrange(5)}"
        values: dict[str, Any] = {
            "sys_id": f"{n:032x}",
            "correlation_id": key.upper() if rng.random() < 0.3 else key,
            "correlation_display": rng.choice(["Azure Monitor", "Other"]),
            "short_description": "t",
        }
        if rng.random() < 0.1:
            values["correlation_id"] = ""
        ids.append(standin.insert("incident", values)["sys_id"])
        if rng.random() < 0.3:
            victim = rng.choice(ids)
            if store.get("incident", victim) is not None:
                store.update("incident", victim, {"correlation_id": f"key-{rng.randrange(5)}", "state": "2"}, "u")
        if rng.random() < 0.1:
            victim = rng.choice(ids)
            if store.get("incident", victim) is not None:
                store.delete("incident", victim)
    for n in range(4):
        standin.insert("cmdb_ci", {"name": f"VM-{n}", "object_id": f"/subscriptions/s/vm-{n}"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_query_selects_what_a_scan_selects(seed: int) -> None:
    standin = ServiceNowStandIn()
    _churn(standin, random.Random(seed))
    for table in ("incident", "cmdb_ci"):
        for query in QUERIES:
            indexed = _select(standin, table, query, indexed=True)
            assert indexed == _select(standin, table, query, indexed=False), (table, query)
    assert _select(standin, "incident", "correlation_id=key-1", indexed=True)  # the churn left some


def test_a_reinserted_sys_id_comes_last_like_in_a_scan() -> None:
    standin = ServiceNowStandIn()
    first = standin.insert("incident", {"sys_id": "a" * 32, "correlation_id": "k"})
    standin.insert("incident", {"sys_id": "b" * 32, "correlation_id": "k"})
    standin._store.delete("incident", first["sys_id"])
    standin.insert("incident", {"sys_id": "a" * 32, "correlation_id": "K"})
    found = [row["sys_id"] for row in _select(standin, "incident", "correlation_id=k", indexed=True)]
    assert found == ["b" * 32, "a" * 32]
    assert found == [row["sys_id"] for row in _select(standin, "incident", "correlation_id=k", indexed=False)]


def test_reset_empties_the_index_too() -> None:
    standin = ServiceNowStandIn()
    standin.insert("incident", {"correlation_id": "gone"})
    standin.reset()
    assert _select(standin, "incident", "correlation_id=gone", indexed=True) == []


def test_a_lookup_by_key_does_not_read_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    standin = ServiceNowStandIn()
    for n in range(2000):
        standin.insert("incident", {"correlation_id": f"key-{n}"})
    store = standin._store
    reads = 0
    original = store.value

    def counted(table: str, row: Any, name: str) -> str:
        nonlocal reads
        reads += 1
        return original(table, row, name)

    monkeypatch.setattr(store, "value", counted)
    rows = _select(standin, "incident", "correlation_id=key-1234^correlation_display=", indexed=True)
    assert [row["correlation_id"] for row in rows] == ["key-1234"]
    assert reads <= 4
    reads = 0
    _select(standin, "incident", "correlation_id=key-1234", indexed=False)
    assert reads >= 2000  # what the index saves
