"""The adapter contract: what the core asks of any ITSM, and the neutral values that cross it.

The core (:mod:`bridge.reconcile`) decides *what* happens to a work item (create, note, resolve,
ignore) in neutral terms: a title, a description, priority hints, a note, a resolution, a status
of open / resolved / closed / canceled. An adapter turns those into its ITSM's fields and calls,
one remote operation per method. Adapters never retry or sleep: they raise
:class:`~bridge.errors.ItsmError` with ``retryable`` set and let :mod:`bridge.retry` decide.

A new ITSM is one module with a class satisfying :class:`ItsmAdapter`, registered under the
``bridge.adapters`` entry-point group (see :mod:`bridge.adapters.registry`), and its tests
(subclass ``tests/adapters/contract.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import requests

    from ..config import Setting, Settings

__all__ = [
    "ConfigurationItem",
    "ItsmAdapter",
    "Resolution",
    "WorkItem",
    "WorkItemRecord",
    "WorkItemRef",
    "WorkItemStatus",
]


class WorkItemStatus(enum.StrEnum):
    """Where a work item stands, whatever the ITSM calls its states."""

    OPEN = "open"  # new, in progress, on hold, waiting: anything a person is still working on
    RESOLVED = "resolved"
    CLOSED = "closed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class WorkItemRef:
    """Where a work item lives: enough to act on it and to show it to a person."""

    system: str
    id: str
    number: str | None = None  # what people call it: INC0010001, OPS-17
    url: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"system": self.system, "id": self.id, "number": self.number, "url": self.url}


@dataclass(frozen=True)
class WorkItemRecord:
    """A work item found by correlation key, as the ITSM holds it now."""

    ref: WorkItemRef
    correlation_id: str
    status: WorkItemStatus
    state: str = ""  # the ITSM's own word for it, for logs and people

    @property
    def is_open(self) -> bool:
        return self.status is WorkItemStatus.OPEN


@dataclass(frozen=True)
class ConfigurationItem:
    """A configuration item (CMDB record) an alert's resource was matched to."""

    id: str
    name: str | None = None
    matched_on: str = ""  # "resource_id" or "name": which lookup found it


@dataclass(frozen=True)
class WorkItem:
    """A new work item's content, ITSM-neutral; each adapter maps it onto its own fields."""

    correlation_id: str
    title: str
    description: str
    note: str  # the first internal note, carrying the payload marker
    severity: str | None  # Sev0..Sev4 as Azure sent it
    impact: int  # priority hints, 1 (high) .. 3 (low), from the severity matrix
    urgency: int
    configuration_item: ConfigurationItem | None = None
    # From the mapping file and routing, in the ITSM's own field names; the adapter refuses the
    # ones it manages itself (see ``managed_fields``).
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolution:
    """How to resolve a work item when its alert resolves."""

    code: str | None  # close code / resolution name; None: the adapter's configured default
    summary: str  # why, for the record (close notes, the resolution comment)
    note: str  # internal note carrying the payload marker
    # Closed (final) rather than resolved (the ITSM's resolved state, which a re-fire may reopen).
    close: bool = False
    # Extra fields written with the resolution, in the ITSM's own names (a data policy may want them).
    fields: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ItsmAdapter(Protocol):
    """One ITSM. Every operation is one remote call (plus re-authentication) and may raise ``ItsmError``.

    Class attributes describe the ITSM to the core: ``name`` (what ``ITSM_ADAPTER`` says),
    ``display_name``, ``settings`` (its environment variables, declared beside it), the field
    limits the neutral content is cut to, and the fields it manages itself.
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    settings: ClassVar[tuple[Setting, ...]]
    title_limit: ClassVar[int]
    description_limit: ClassVar[int]
    managed_fields: ClassVar[frozenset[str]]

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session | None = None) -> ItsmAdapter:
        """Build from the settings (its own read from ``settings.env``); ConfigError names a bad one."""
        ...

    def find(self, correlation_id: str) -> Sequence[WorkItemRecord]:
        """Work items carrying exactly ``correlation_id`` (and this bridge's mark), oldest first.

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

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        """Resolve (or with ``resolution.close``, close) ``ref``, writing ``resolution.fields`` too."""
        ...

    def reopen(self, ref: WorkItemRef, note: str) -> None:
        """Make a resolved ``ref`` open again (in progress) and add ``note``; its alert fired again."""
        ...

    def find_configuration_item(
        self, resource_ids: Sequence[str], names: Sequence[str]
    ) -> ConfigurationItem | None:
        """The first configuration item matching a resource id (preferred), else a name; None if none
        (always None for an ITSM without a CMDB)."""
        ...

    def check(self) -> None:
        """One cheap authenticated read, proving the credential works (for a deep health check)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
