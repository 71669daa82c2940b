"""The small interface every state backend implements, and the errors it speaks.

A backend keeps three things: *records* (one JSON document per correlation key, written only
conditionally on the version read, so concurrent writers never lose each other's changes),
*payloads* (the canonical JSON of each alert payload, content-addressed by fingerprint, so the
outbox can rebuild the alert later), and the *outbox* (which keys are due for another attempt).

The outbox differs by backend but not in meaning: in SQLite a record's ``due`` column *is* the
outbox (written in the same transaction as the record); with Azure, ``schedule`` puts a message on
a queue and the queue trigger delivers it. Either way ``take_due`` hands out keys whose time has
come, leased so two workers do not take the same one, and ``finish`` lets go of one.

Every backend passes the same contract suite (``tests/state/contract.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..errors import BridgeError
from .record import Record

__all__ = ["DueWork", "StateConflict", "StateStore", "StateUnavailable", "Versioned"]


class StateConflict(Exception):
    """The record changed (or appeared) since it was read; read it again and redo the change."""


class StateUnavailable(BridgeError):
    """The state store could not be reached or refused the operation. Messages carry no secret."""


@dataclass(frozen=True)
class Versioned:
    """A record as read, with the version a conditional write must match."""

    record: Record
    etag: str


@dataclass(frozen=True)
class DueWork:
    """A key handed out by :meth:`StateStore.take_due`; ``receipt`` is the backend's own handle."""

    key: str
    receipt: Any = None


class StateStore(Protocol):
    """Durable records, payloads and outbox. Every method may raise :class:`StateUnavailable`."""

    name: ClassVar[str]

    def load(self, key: str) -> Versioned | None:
        """The record for ``key`` and its version, or None."""
        ...

    def insert(self, record: Record, payloads: Mapping[str, bytes] | None = None) -> str:
        """Create the record (and store ``payloads``, fingerprint -> bytes) at once.

        Raises :class:`StateConflict` when a record for the key exists. Returns the new version.
        """
        ...

    def replace(self, record: Record, etag: str, payloads: Mapping[str, bytes] | None = None) -> str:
        """Overwrite the record if it is still at version ``etag``; else :class:`StateConflict`."""
        ...

    def payload(self, key: str, fingerprint: str) -> bytes | None:
        """A payload stored with the key's record, or None."""
        ...

    def schedule(self, key: str, delay_seconds: float) -> None:
        """Make sure the key is handed out by ``take_due`` (or the queue trigger) after the delay."""
        ...

    def take_due(self, limit: int, lease_seconds: float) -> list[DueWork]:
        """Up to ``limit`` keys whose time has come, hidden from other takers for ``lease_seconds``."""
        ...

    def finish(self, work: DueWork) -> None:
        """Done with ``work`` (the record says whether more is due)."""
        ...

    def sweep(self, now: float, grace_seconds: float) -> int:
        """Re-schedule records due for longer than ``grace_seconds`` (a crash between record and
        schedule); returns how many. SQLite needs none: its ``due`` column is the schedule."""
        ...

    def purge(self, before: float) -> int:
        """Delete records finished before ``before`` (nothing due, not dead-lettered, unclaimed)
        with their payloads; returns how many. A record that changes meanwhile is kept."""
        ...

    def records(self) -> Iterator[Record]:
        """Every record (for ``outbox list`` and health), in no particular order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the record and its payloads; absent is fine."""
        ...

    def get_meta(self, name: str) -> dict[str, Any] | None: ...

    def put_meta(self, name: str, value: Mapping[str, Any]) -> None: ...

    def ping(self) -> None:
        """Raise :class:`StateUnavailable` unless the store answers."""
        ...

    def maintain(self) -> None:
        """Housekeeping kept off the request path, called by the outbox worker about once a
        second (SQLite: a WAL checkpoint). Cheap when there is nothing to do."""
        ...

    def close(self) -> None: ...
