"""What waits in the outbox, counted from the records: for ``outbox list``, deep health and the
outbox metrics. One definition of "pending", "held" and "dead" so the three never disagree."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .record import Record

__all__ = ["OutboxStats", "outbox_state", "outbox_stats", "pending_since"]


def outbox_state(record: Record) -> str:
    """``dead`` (the ITSM refused the change), ``held`` (it refuses the bridge's credential),
    ``pending`` (an attempt is due) or ``done`` (including a record that only waits for its
    quiet resolve)."""
    if record.dead is not None:
        return "dead"
    if record.held:
        return "held"
    if record.due is not None and not _only_waking(record):
        return "pending"
    return "done"


def _only_waking(record: Record) -> bool:
    """Nothing is owed to the ITSM: the record is due only for its quiet resolve (which may be
    hours away), so it is not work waiting in the outbox."""
    return (
        record.due == record.rest_due()
        and record.claim is None
        and not record.last_error
        and not record.unwritten
    )


def pending_since(record: Record) -> float:
    """Since when the record's work has waited (wall clock): its first failure, else the oldest
    event not yet written, else its last change."""
    if record.failing_since:
        return record.failing_since
    unwritten = [e.received_at for e in record.unwritten]
    return min(unwritten) if unwritten else record.updated_at


@dataclass(frozen=True)
class OutboxStats:
    pending: int = 0
    held: int = 0
    dead: int = 0
    done: int = 0
    # Seconds the oldest pending or held work has waited; 0 when nothing waits.
    oldest_pending_seconds: float = 0.0

    @property
    def waiting(self) -> int:
        return self.pending + self.held


def outbox_stats(records: Iterable[Record], now: float) -> OutboxStats:
    counts = {"pending": 0, "held": 0, "dead": 0, "done": 0}
    oldest: float | None = None
    for record in records:
        state = outbox_state(record)
        counts[state] += 1
        if state in ("pending", "held"):
            since = pending_since(record)
            oldest = since if oldest is None else min(oldest, since)
    age = max(0.0, now - oldest) if oldest is not None else 0.0
    return OutboxStats(oldest_pending_seconds=age, **counts)
