"""The outbox worker's loop does the store's housekeeping (a SQLite WAL checkpoint) off the
request path, about once a second, and carries on when it fails."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bridge.cmdb import CmdbBinder
from bridge.epoch import StoreEpoch
from bridge.reconcile import Reconciler
from bridge.retry import RetryPolicy
from bridge.rules import MappingRules
from bridge.state.base import StateUnavailable
from bridge.state.sqlite import SqliteStore
from bridge.worker import MAINTAIN_EVERY_SECONDS, OutboxWorker
from tests.fakes import MemoryAdapter


class CountingStore:
    """A real SQLite store whose maintain() calls are counted (and can be made to fail)."""

    def __init__(self, path: Path) -> None:
        self.inner = SqliteStore(path)
        self.maintained: list[float] = []
        self.fail = False

    def maintain(self) -> None:
        self.maintained.append(time.monotonic())
        if self.fail:
            raise StateUnavailable("SQLite state store failed: OperationalError: disk I/O error")
        self.inner.maintain()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "state.sqlite3")


def worker_over(store: CountingStore, tmp_path: Path) -> OutboxWorker:
    adapter = MemoryAdapter()
    reconciler = Reconciler(
        store,  # type: ignore[arg-type]
        adapter,
        MappingRules(),
        RetryPolicy(attempts=1, budget_seconds=1),
        CmdbBinder(adapter, ttl_seconds=300),
        epoch=StoreEpoch(store, wall=time.time, marker_root=tmp_path / "machine"),  # type: ignore[arg-type]
    )
    return OutboxWorker(reconciler, threads=1, idle_seconds=0.05)


def test_the_loop_maintains_the_store_about_once_a_second(store: CountingStore, tmp_path: Path) -> None:
    worker = worker_over(store, tmp_path).start()
    try:
        time.sleep(2.6 * MAINTAIN_EVERY_SECONDS)
    finally:
        worker.stop()
        store.inner.close()
    assert 2 <= len(store.maintained) <= 4
    gaps = [b - a for a, b in zip(store.maintained, store.maintained[1:], strict=False)]
    assert all(gap >= 0.9 * MAINTAIN_EVERY_SECONDS for gap in gaps)


def test_a_failing_maintenance_does_not_stop_the_loop(store: CountingStore, tmp_path: Path) -> None:
    store.fail = True
    worker = worker_over(store, tmp_path).start()
    try:
        time.sleep(2.3 * MAINTAIN_EVERY_SECONDS)
    finally:
        worker.stop()
        store.inner.close()
    assert len(store.maintained) >= 2
