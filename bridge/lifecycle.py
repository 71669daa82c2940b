"""The alert lifecycle: what one alert does to its work item (CONTRACT section 2).

Each alert is one *step*, retried as a whole: every attempt starts with a fresh lookup by
correlation key, so a create whose response was lost is found (not repeated) on the next
attempt. Deliveries of the same alert inside this process are serialised by a per-key lock;
the ITSM lookup is what keeps separate processes from acting twice on an existing item.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .adapters.base import ConfigurationItem, ItsmAdapter, WorkItemRecord, WorkItemRef
from .alerts import Alert
from .cmdb import CmdbBinder
from .config import MappingRules
from .correlation import correlation_key, fingerprint, note_marker
from .deadline import deadline
from .mapping import build_work_item, duplicate_resolution, resolution, update_note
from .retry import RetryPolicy, call_with_retry

__all__ = ["Action", "Lifecycle", "Outcome"]

logger = logging.getLogger(__name__)


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Outcome:
    action: Action
    correlation_id: str
    work_item: WorkItemRef | None
    reason: str | None = None
    configuration_item: ConfigurationItem | None = None


@dataclass
class _Attempt:
    """What earlier attempts of the same step did, so a retry can tell its own writes apart."""

    create_sent: bool = False
    note_sent: bool = False
    resolve_sent: bool = False
    binding_done: bool = False
    ci: ConfigurationItem | None = None
    ci_note: str | None = None


class _KeyLocks:
    """One lock per correlation key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _Tombstones:
    """Keys whose Resolved arrived before any incident existed, remembered for a day.

    Azure retries a failed Fired for minutes, so its Resolved can overtake it; the late Fired
    must then open nothing. This memory is per process: the durable state table
    (``STATE_TABLE_NAME``) is where it will live across instances.
    """

    def __init__(self, ttl_seconds: float = 86400.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, now: float) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = now + self._ttl
            while len(self._entries) > self._max:
                del self._entries[next(iter(self._entries))]  # the oldest

    def __contains__(self, item: tuple[str, float]) -> bool:
        key, now = item
        with self._lock:
            expires = self._entries.get(key)
            if expires is not None and expires <= now:
                del self._entries[key]
                return False
            return expires is not None


class Lifecycle:
    """Applies alerts to work items through one adapter."""

    def __init__(
        self,
        adapter: ItsmAdapter,
        rules: MappingRules,
        policy: RetryPolicy,
        cmdb: CmdbBinder | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._adapter = adapter
        self._rules = rules
        self._policy = policy
        self._cmdb = cmdb
        self._sleep = sleep
        self._clock = clock
        self._locks = _KeyLocks()
        self._resolved_early = _Tombstones()

    def apply(self, alert: Alert) -> Outcome:
        key = correlation_key(alert.alert_id)
        attempt = _Attempt()
        with self._locks.hold(key), deadline(self._policy.budget_seconds, self._clock):
            return call_with_retry(
                lambda: self._step(alert, key, attempt),
                self._policy,
                sleep=self._sleep,
                clock=self._clock,
                describe=f"alert {key}",
            )

    def _step(self, alert: Alert, key: str, attempt: _Attempt) -> Outcome:
        records = self._adapter.find(key)
        if alert.is_resolved and not alert.is_stateless:
            return self._resolve(alert, key, records, attempt)

        open_items = [r for r in records if r.is_open]

        if open_items:
            target = open_items[0]
            if attempt.create_sent:
                # Our earlier create committed although its response was lost.
                return Outcome(Action.CREATED, key, target.ref, configuration_item=attempt.ci)
            if self._adapter.has_note(target.ref, note_marker(fingerprint(alert))):
                if attempt.note_sent:  # our own note, whose response was lost
                    return Outcome(Action.UPDATED, key, target.ref)
                return Outcome(Action.IGNORED, key, target.ref, "identical alert already recorded")
            attempt.note_sent = True
            self._adapter.add_note(target.ref, update_note(alert))
            return Outcome(Action.UPDATED, key, target.ref)

        if records:
            return Outcome(
                Action.IGNORED,
                key,
                records[-1].ref,
                f"incident already {_state_word(records[-1])}; a Fired after the Resolved opens nothing",
            )

        if not alert.is_stateless and (key, self._clock()) in self._resolved_early:
            return Outcome(
                Action.IGNORED, key, None, "the alert resolved before this Fired arrived; it opens nothing"
            )

        if not attempt.binding_done:
            if self._cmdb is not None:
                attempt.ci, attempt.ci_note = self._cmdb.bind(alert)
            attempt.binding_done = True
        item = build_work_item(alert, self._rules, attempt.ci, attempt.ci_note)
        attempt.create_sent = True
        ref = self._adapter.create(item)
        return self._settle(alert, key, ref, attempt)

    def _settle(self, alert: Alert, key: str, ref: WorkItemRef, attempt: _Attempt) -> Outcome:
        """Yield to a twin created at the same moment by another instance.

        The key lock covers one process only. Azure Monitor can deliver the same alert to two
        instances at once (several action groups, or a retry while the first call still runs);
        both then find nothing and create. Every creator looks again right after creating: the
        oldest item (lowest number) stays, and each younger one is closed as its duplicate, so
        all creators agree without talking to each other.
        """
        rivals = [r for r in self._adapter.find(key) if r.is_open]
        oldest = min(rivals, key=_age, default=None)
        if oldest is None or oldest.ref.id == ref.id or all(r.ref.id != ref.id for r in rivals):
            return Outcome(Action.CREATED, key, ref, configuration_item=attempt.ci)
        original = oldest.ref.number or oldest.ref.id
        logger.warning(
            "correlationId=%s was created twice concurrently; closing %s as a duplicate of %s",
            key, ref.number or ref.id, original,
        )
        self._adapter.resolve(ref, duplicate_resolution(alert, self._rules, original))
        return Outcome(
            Action.IGNORED,
            key,
            oldest.ref,
            f"delivered concurrently elsewhere; {ref.number or ref.id} closed as a duplicate of {original}",
        )

    def _resolve(
        self,
        alert: Alert,
        key: str,
        records: Sequence[WorkItemRecord],
        attempt: _Attempt,
    ) -> Outcome:
        open_items = [r for r in records if r.is_open]
        if not records:
            self._resolved_early.add(key, self._clock())
            return Outcome(Action.IGNORED, key, None, "no incident for this alert")
        if not open_items:
            if attempt.resolve_sent:  # our own resolve, whose response was lost
                return Outcome(Action.RESOLVED, key, records[0].ref)
            return Outcome(
                Action.IGNORED, key, records[-1].ref, f"incident already {_state_word(records[-1])}"
            )
        if len(open_items) > 1:
            # Exact duplicates of one alert: all of them describe the same condition, so all resolve.
            logger.warning(
                "correlationId=%s has %d open work items; resolving all of them", key, len(open_items)
            )
        how = resolution(alert, self._rules)
        attempt.resolve_sent = True
        for item in open_items:
            self._adapter.resolve(item.ref, how)
        return Outcome(Action.RESOLVED, key, open_items[0].ref)


def _age(record: WorkItemRecord) -> tuple[int, str, str]:
    """Creation order: ServiceNow numbers grow (and may grow a digit), ids break ties."""
    number = record.ref.number or ""
    return len(number), number, record.ref.id


_STATE_WORDS = {"6": "resolved", "7": "closed", "8": "canceled"}


def _state_word(record: WorkItemRecord) -> str:
    return _STATE_WORDS.get(record.state, f"in state {record.state}")
