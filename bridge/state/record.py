"""The per-alert state record: what the bridge has seen of one alert and what it has done about it.

One record per correlation key. It is the bridge's own truth (CONTRACT section 2): events seen
(condition, payload fingerprint, arrival time), the work item once known, which payloads have
been written to it, the intent to create (recorded before the create is sent), the claim that
makes one reconciler at a time act on the key, and the outbox bookkeeping (when to try next,
why it failed, dead letter). The ITSM remains the truth for what people did; the reconciler
re-reads it before changing anything a person could have changed.

Records are plain data with a JSON form that both state backends store verbatim, so SQLite and
Azure Table hold exactly the same document. Lists are bounded so a record stays small
(Azure Table strings hold at most 32K characters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_EVENTS",
    "Claim",
    "DeadLetter",
    "Event",
    "Intent",
    "Record",
]

RECORD_VERSION = 1
# A flapping alert instance cannot grow its record without bound; the oldest events go first
# (an event already written is all the bookkeeping needs of it).
MAX_EVENTS = 50
# Members of a thread remembered (each alert's fired and resolved times); resolved ones go first.
MAX_MEMBERS = 200
_MAX_TEXT = 500
# Reasons are kept per payload (up to MAX_EVENTS of them): short, so a record stays far below
# the 32K characters an Azure Table string holds.
_MAX_REASON = 160


@dataclass(frozen=True)
class Event:
    """One distinct payload received for the key (redeliveries of it are not new events)."""

    fingerprint: str
    condition: str  # "Fired" or "Resolved" as sent; stateless alerts are treated as Fired
    received_at: float  # wall clock, seconds
    # In a thread (a record kept by fingerprint or trackingId, see bridge.threads): the alert's
    # own correlation key, and its Service Health stage. "" in a record of one alertId.
    member: str = ""
    # The alert's own time of this change (fired, resolved, communication), wall clock seconds:
    # what orders changes that arrive out of order. None when the payload gives none.
    at: float | None = None
    stage: str = ""

    @property
    def when(self) -> float:
        return self.at if self.at is not None else self.received_at


@dataclass(frozen=True)
class Intent:
    """A write that was sent (or is about to be) and whose outcome is not yet known.

    Written before the write is sent, so whoever acts next knows to look before writing again.
    """

    operation: str  # "create", "note", "resolve" or "reopen"
    sent_at: float
    fingerprint: str = ""  # the payload the write carries (its marker is in the note)


@dataclass(frozen=True)
class Claim:
    """Who may act on the key until when; a claim whose holder died simply expires."""

    owner: str
    until: float


@dataclass(frozen=True)
class DeadLetter:
    """The ITSM permanently refused this alert's change; kept for ``outbox list`` and ``replay``."""

    reason: str
    at: float
    status: int | None = None


@dataclass
class Record:
    key: str
    alert_id: str
    stateless: bool
    created_at: float
    updated_at: float
    events: list[Event] = field(default_factory=list)
    # fingerprint -> what was done for it: created, updated, resolved, ignored
    written: dict[str, str] = field(default_factory=dict)
    # why a fingerprint was ignored, for the answer to its delivery
    reasons: dict[str, str] = field(default_factory=dict)
    item: dict[str, str | None] | None = None  # WorkItemRef.as_json()
    item_open: bool = False
    item_status: str | None = None  # the neutral status last seen (open/resolved/closed/canceled) or "gone"
    # The item was found by lookup, not created through this record (an earlier version of the
    # bridge, or a create whose answer was lost long ago): its notes are checked for our marker.
    adopted: bool = False
    # A lookup found no item (done once for a Resolved that came before any Fired).
    searched: bool = False
    resolution_written: bool = False
    intent: Intent | None = None
    claim: Claim | None = None
    due: float | None = None  # wall clock time of the next attempt; None when nothing is pending
    attempts: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    held: str | None = None  # work held because the ITSM refuses the bridge's credential
    dead: DeadLetter | None = None
    # ---- lifecycle policies (bridge.threads): all empty for a record of one alertId by default.
    # None: one alertId; "fingerprint": the alerts of one fingerprint; "service-health": the
    # communications of one trackingId and incident type.
    thread: str | None = None
    # The current work item's correlation id when it is not the key (threads, later work items).
    correlation: str | None = None
    episode: int = 0  # how many work items came before the current one
    previous: dict[str, str | None] | None = None  # the work item before the current one
    # member -> [fired at, resolved at] (alert times; None when not seen), for threads.
    members: dict[str, list[float | None]] = field(default_factory=dict)
    # What the written resolution was ("resolve", "close", "note-only") and the alert time of
    # the end it reflects (the re-fire window counts from it).
    resolution_kind: str | None = None
    resolved_at: float | None = None
    # When the bridge saw the item closed or gone by a person's hand (a later firing is new).
    left_at: float | None = None
    # The policy in force at the latest event (seconds; 0: off), see bridge.rules.Policy.
    reopen_window: float = 0.0
    auto_resolve_after: float = 0.0
    resolution_policy: str = "resolve"

    # ------------------------------------------------------------------ derived facts

    def seen(self, fingerprint: str) -> bool:
        return any(e.fingerprint == fingerprint for e in self.events) or fingerprint in self.written

    @property
    def fired_events(self) -> list[Event]:
        return [e for e in self.events if self.stateless or e.condition != "Resolved"]

    @property
    def resolved_event(self) -> Event | None:
        if self.stateless:
            return None
        return next((e for e in reversed(self.events) if e.condition == "Resolved"), None)

    @property
    def unwritten(self) -> list[Event]:
        return [e for e in self.events if e.fingerprint not in self.written]

    @property
    def correlation_id(self) -> str:
        """What the current work item carries in its correlation field (and is found by)."""
        return self.correlation or self.key

    def wake_at(self) -> float | None:
        """When the open work item of a stateless alert is resolved for quiet (no repeat of the
        alert for ``auto_resolve_after`` seconds since the last one arrived), else None."""
        if not (self.stateless and self.auto_resolve_after > 0 and self.item is not None and self.item_open):
            return None
        if self.resolution_written:
            return None
        if not self.events:
            return None
        return max(e.received_at for e in self.events) + self.auto_resolve_after

    def rest_due(self) -> float | None:
        """``due`` once nothing is left to write: the wake-up for a quiet resolve, or None."""
        return self.wake_at()

    def add_event(self, event: Event) -> bool:
        """Record ``event``; False when its payload was seen before (a redelivery)."""
        if self.seen(event.fingerprint):
            return False
        self.events.append(event)
        if event.member:
            self._add_member(event)
        if len(self.events) > MAX_EVENTS:
            # Drop the oldest written events first; unwritten ones are pending work.
            for i, old in enumerate(self.events):
                if old.fingerprint in self.written and old is not self.resolved_event:
                    del self.events[i]
                    break
            else:
                del self.events[0]
        self._trim_written()
        return True

    def _add_member(self, event: Event) -> None:
        times = self.members.setdefault(event.member, [None, None])
        slot = 1 if event.condition == "Resolved" and not self.stateless else 0
        current = times[slot]
        times[slot] = event.when if current is None else max(current, event.when)
        if len(self.members) > MAX_MEMBERS:
            # The member that resolved longest ago goes first; one still firing only if none has.
            resolved = [(t[1], m) for m, t in self.members.items() if t[1] is not None and m != event.member]
            victim = min(resolved)[1] if resolved else next(m for m in self.members if m != event.member)
            del self.members[victim]

    def mark(self, fingerprint: str, action: str, reason: str | None = None) -> None:
        self.written[fingerprint] = action
        if reason:
            self.reasons[fingerprint] = reason[:_MAX_REASON]
        self._trim_written()

    def _trim_written(self) -> None:
        keep = {e.fingerprint for e in self.events}
        if len(self.written) > 2 * MAX_EVENTS:
            for fp in [fp for fp in self.written if fp not in keep][: len(self.written) - 2 * MAX_EVENTS]:
                self.written.pop(fp, None)
        # Reasons answer redeliveries of payloads still listed; the rest may go.
        for fp in [fp for fp in self.reasons if fp not in keep]:
            del self.reasons[fp]

    def set_error(self, text: str | None) -> None:
        self.last_error = None if text is None else text[:_MAX_TEXT]

    # ------------------------------------------------------------------ JSON form

    def to_json(self) -> str:
        # The same document dataclasses.asdict gave (pinned in tests/state/test_record.py), at a
        # fraction of its cost: asdict deep-copies every value only for json to read it once.
        # Every field by name (a field added later is written without a change here).
        values = self.__dict__
        doc = {name: values[name] for name in _FIELDS}
        doc["events"] = [event.__dict__ for event in self.events]
        for name in _NESTED:
            part = doc[name]
            if part is not None:
                doc[name] = part.__dict__
        doc["v"] = RECORD_VERSION
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Record:
        doc: dict[str, Any] = json.loads(text)
        doc.pop("v", None)
        doc["events"] = [Event(**e) for e in doc.get("events", [])]
        for name, kind in _NESTED.items():
            if doc.get(name) is not None:
                doc[name] = kind(**doc[name])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in doc.items() if k in known})


# The record's parts that are dataclasses of their own, by field name.
_NESTED: dict[str, type[Intent | Claim | DeadLetter]] = {"intent": Intent, "claim": Claim, "dead": DeadLetter}
_FIELDS = tuple(Record.__dataclass_fields__)
