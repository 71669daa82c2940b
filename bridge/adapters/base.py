"""The adapter contract: what the core asks of any ITSM, and the typed values that cross it.

The core (:mod:`bridge.lifecycle`) decides *what* happens to a work item (create, note,
resolve, ignore); an adapter only performs one ITSM operation per call. Adapters never retry
or sleep: they raise :class:`~bridge.errors.ItsmError` with ``retryable`` set and let
:mod:`bridge.retry` decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "ConfigurationItem",
    "ItsmAdapter",
    "Resolution",
    "WorkItem",
    "WorkItemRecord",
    "WorkItemRef",
]


@dataclass(frozen=True)
class WorkItemRef:
    """Where a work item lives: enough to act on it and to show it to a person."""

    system: str
    id: str
    number: str | None = None
    url: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"system": self.system, "id": self.id, "number": self.number, "url": self.url}


@dataclass(frozen=True)
class WorkItemRecord:
    """A work item found by correlation key, as the ITSM holds it now."""

    ref: WorkItemRef
    correlation_id: str
    is_open: bool
    state: str


@dataclass(frozen=True)
class ConfigurationItem:
    """A CMDB record an alert's resource was matched to."""

    id: str
    name: str | None = None
    matched_on: str = ""  # "resource_id" or "name": which lookup found it


@dataclass(frozen=True)
class WorkItem:
    """A new work item, ITSM-neutral; each adapter maps it onto its own fields."""

    correlation_id: str
    correlation_display: str
    short_description: str
    description: str
    impact: int
    urgency: int
    work_note: str
    configuration_item: ConfigurationItem | None = None
    caller_id: str | None = None
    assignment_group: str | None = None
    category: str | None = None
    extra_fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """How to resolve a work item when its alert resolves."""

    close_code: str
    close_notes: str
    work_note: str


@runtime_checkable
class ItsmAdapter(Protocol):
    """One ITSM. Every method is one remote operation and may raise ``ItsmError``."""

    name: ClassVar[str]

    def find(self, correlation_id: str) -> Sequence[WorkItemRecord]:
        """Work items whose correlation field equals ``correlation_id`` exactly, oldest first.

        Implementations re-check exactness: a record the ITSM returned that does not carry
        exactly this key is dropped (and logged), never returned.
        """
        ...

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        """Create ``item``; with ``resolution``, create it already resolved (its alert is over)."""
        ...

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        """Append an internal note; never overwrites earlier notes."""
        ...

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        """Whether an earlier note on ``ref`` contains ``marker`` (used to skip redeliveries)."""
        ...

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None: ...

    def find_configuration_item(
        self, resource_ids: Sequence[str], names: Sequence[str]
    ) -> ConfigurationItem | None:
        """The first CMDB record matching a resource id (preferred), else a name; None if none."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
