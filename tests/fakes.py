"""An in-memory ITSM adapter for lifecycle tests: exact control over records and failures."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bridge.adapters.base import (
    ConfigurationItem,
    Resolution,
    WorkItem,
    WorkItemRecord,
    WorkItemRef,
    WorkItemStatus,
)
from bridge.errors import ItsmError, Reason


@dataclass
class StoredItem:
    ref: WorkItemRef
    item: WorkItem
    state: str = "1"
    notes: list[str] = field(default_factory=list)
    close_code: str | None = None
    close_notes: str | None = None


@dataclass
class PlannedFailure:
    operation: str
    error: ItsmError
    commit: bool = False  # perform the operation, then fail (the response was lost)


_STATUSES = {"1": WorkItemStatus.OPEN, "2": WorkItemStatus.OPEN, "3": WorkItemStatus.OPEN,
             "6": WorkItemStatus.RESOLVED, "7": WorkItemStatus.CLOSED, "8": WorkItemStatus.CANCELED}


class MemoryAdapter:
    name: ClassVar[str] = "memory"
    display_name: ClassVar[str] = "Memory"
    settings: ClassVar[tuple[Any, ...]] = ()
    title_limit: ClassVar[int] = 160
    description_limit: ClassVar[int] = 32_000
    managed_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.items: list[StoredItem] = []
        self.calls: list[tuple[str, Any]] = []
        self.failures: list[PlannedFailure] = []
        self.cis: dict[str, ConfigurationItem] = {}
        self.before_create: list[Any] = []  # callables run once, just before the next create
        self._ids = itertools.count(1)

    # -- test controls -------------------------------------------------------------------
    def fail(self, operation: str, *, retryable: bool = True, commit: bool = False,
             status: int | None = 503, retry_after: float | None = None, reason: Reason | None = None) -> None:
        reason = reason or (Reason.SERVER_ERROR if retryable else Reason.CLIENT_ERROR)
        error = ItsmError(f"planned {operation} failure", retryable=retryable, reason=reason,
                          status=status, retry_after=retry_after)
        self.failures.append(PlannedFailure(operation, error, commit))

    def seed(self, correlation_id: str, state: str = "1") -> StoredItem:
        n = next(self._ids)
        ref = WorkItemRef("memory", f"id{n}", f"INC{n:07d}")
        item = WorkItem(correlation_id, "seeded", "seeded", "seeded", "Sev4", 3, 3)
        stored = StoredItem(ref, item, state)
        self.items.append(stored)
        return stored

    def ops(self) -> list[str]:
        return [name for name, _ in self.calls]

    def _maybe_fail(self, operation: str, before: bool) -> None:
        for planned in self.failures:
            if planned.operation == operation and planned.commit != before:
                self.failures.remove(planned)
                raise planned.error

    def _get(self, ref: WorkItemRef) -> StoredItem:
        return next(s for s in self.items if s.ref.id == ref.id)

    # -- the adapter contract --------------------------------------------------------------
    def find(self, correlation_id: str) -> Sequence[WorkItemRecord]:
        self.calls.append(("find", correlation_id))
        self._maybe_fail("find", before=True)
        return [
            WorkItemRecord(s.ref, s.item.correlation_id, _STATUSES[s.state], s.state)
            for s in self.items
            if s.item.correlation_id == correlation_id
        ]

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        self.calls.append(("create", item))
        self._maybe_fail("create", before=True)
        while self.before_create:
            self.before_create.pop(0)()
        n = next(self._ids)
        stored = StoredItem(WorkItemRef("memory", f"id{n}", f"INC{n:07d}"), item, notes=[item.note])
        if resolution is not None:
            stored.state = "6"
            stored.close_code, stored.close_notes = resolution.code or "Solution provided", resolution.summary
            stored.notes.append(resolution.note)
        self.items.append(stored)
        self._maybe_fail("create", before=False)
        return stored.ref

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        self.calls.append(("add_note", (ref, note)))
        self._maybe_fail("add_note", before=True)
        self._get(ref).notes.append(note)
        self._maybe_fail("add_note", before=False)

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        self.calls.append(("has_note", (ref, marker)))
        return any(marker in note for note in self._get(ref).notes)

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        self.calls.append(("resolve", (ref, resolution)))
        self._maybe_fail("resolve", before=True)
        stored = self._get(ref)
        stored.state = "6"
        stored.close_code = resolution.code or "Solution provided"
        stored.close_notes = resolution.summary
        stored.notes.append(resolution.note)
        self._maybe_fail("resolve", before=False)

    def find_configuration_item(self, resource_ids: Sequence[str], names: Sequence[str]) -> ConfigurationItem | None:
        self.calls.append(("find_ci", (tuple(resource_ids), tuple(names))))
        self._maybe_fail("find_ci", before=True)
        for value in (*resource_ids, *names):
            if value.lower() in self.cis:
                return self.cis[value.lower()]
        return None

    def check(self) -> None:
        self.calls.append(("check", None))

    def close(self) -> None:
        pass
