"""Lifecycles longer than one alertId: which record an alert belongs to, when its condition is
over, and whether a later firing reopens the work item or opens the next one (issue #11).

A record is kept per *thread*:

- one alertId (the default, ``thread`` None): Azure Monitor's own lifecycle, Fired then Resolved;
- one fingerprint (``"fingerprint"``), when the route's policy groups alerts or has a re-fire
  window: every alert whose fingerprint text (:func:`bridge.mapping.fingerprint_text`) is the
  same is a *member* of one record, so concurrent deliveries of different members serialise on
  one claim and create one work item;
- one Service Health event (``"service-health"``): the communications of one trackingId and
  incident type, whose ``stage`` says whether the event is over.

Everything here is a pure function of the record (and, for :func:`place`, of the alert and the
rules): the reconciler decides from it, under its claim, whatever the order of arrival.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from .alerts import Alert, AlertKind, parse_timestamp
from .correlation import HASH_KEY_LENGTH, correlation_key
from .errors import PayloadError
from .mapping import fingerprint_text, policy_for, template_values
from .rules import MappingRules, Policy
from .state.record import Event, Record

__all__ = [
    "FINGERPRINT",
    "RESOLVED_STAGES",
    "SERVICE_HEALTH",
    "Placement",
    "condition_over",
    "episode_correlation",
    "may_reopen",
    "place",
    "refire_events",
    "resolving_event",
]

FINGERPRINT = "fingerprint"
SERVICE_HEALTH = "service-health"
# Service Health stages that end the event (incidents: Resolved, then RCA; maintenance:
# Complete or Canceled); any other stage (Active, Planned, ...) means it is going on.
RESOLVED_STAGES = frozenset({"resolved", "rca", "complete", "completed", "canceled", "cancelled"})


@dataclass(frozen=True)
class Placement:
    """Where one alert is kept: its record's key, the thread kind, and the event's facts."""

    key: str
    thread: str | None
    member: str  # the alert's own correlation key in a thread; "" otherwise
    at: float | None  # the alert's own time of this change
    stage: str
    policy: Policy


def place(alert: Alert, rules: MappingRules) -> Placement:
    """The record ``alert`` belongs to under ``rules``."""
    policy = policy_for(alert, rules)
    at = _change_time(alert)
    if alert.kind is AlertKind.SERVICE_HEALTH and rules.service_health_lifecycle:
        values = template_values(alert)
        tracking = values["trackingId"].casefold()
        if tracking:
            stage = values["stage"] or _status(alert)
            key = _hash(SERVICE_HEALTH, tracking, values["incidentType"].casefold())
            return Placement(key, SERVICE_HEALTH, correlation_key(alert.alert_id), at, stage, policy)
    if policy.threaded:
        text = fingerprint_text(alert, policy.fingerprint)
        if text:
            return Placement(_hash(FINGERPRINT, text), FINGERPRINT, correlation_key(alert.alert_id), at, "", policy)
    return Placement(correlation_key(alert.alert_id), None, "", at, "", policy)


def episode_correlation(key: str, opener: str) -> str:
    """The correlation id of a thread's work item opened by ``opener`` (a member or payload).

    A new id per work item: a lookup for the current one never finds its predecessors, and
    after the record is purged a new firing opens a new work item rather than finding an old
    one. 40 hex digits, like a hashed alert key, so every adapter's key rules hold.
    """
    return hashlib.sha256(f"{key}/{opener}".encode()).hexdigest()[:HASH_KEY_LENGTH]


def condition_over(record: Record) -> bool:
    """Whether what the record's work item is about has ended, by the alerts' own account."""
    if record.thread == SERVICE_HEALTH:
        latest = _latest(record.events)
        return latest is not None and latest.stage.casefold() in RESOLVED_STAGES
    if record.stateless:
        return False  # only quiet (auto-resolve) ends it
    if record.thread is not None:
        ended = False
        for fired, resolved in record.members.values():
            if resolved is None:
                if fired is not None:
                    return False  # a member still firing
            else:
                ended = True
        return ended
    return record.resolved_event is not None


def resolving_event(record: Record) -> Event | None:
    """The event whose alert says the condition ended (for the resolution's text)."""
    if record.thread == SERVICE_HEALTH:
        return _latest(record.events) if condition_over(record) else None
    if record.thread is not None:
        return _latest([e for e in record.events if e.condition == "Resolved"])
    return record.resolved_event


def refire_events(record: Record) -> list[Event]:
    """Unwritten events that start the condition again after the work item stopped being open:
    newer than its resolution (or than when the bridge saw a person close it). Never for one
    stateful alertId: Azure gives a new firing a new alertId."""
    if record.thread is None and not record.stateless:
        return []
    since = record.resolved_at if record.resolution_written else record.left_at
    if since is None or condition_over(record):
        return []
    return [
        e for e in record.unwritten if (record.stateless or e.condition != "Resolved") and e.when > since
    ]


def may_reopen(record: Record, event: Event) -> bool:
    """Whether ``event`` reopens the work item rather than opening the next one: the bridge
    resolved it (not closed it, and no person did), within the re-fire window. A Service Health
    event reopens whenever it becomes active again."""
    if not record.resolution_written or record.resolution_kind != "resolve" or record.resolved_at is None:
        return False
    if record.item_status not in (None, "resolved"):
        return False
    if record.thread == SERVICE_HEALTH:
        return True
    return record.reopen_window > 0 and event.when - record.resolved_at <= record.reopen_window


def members_firing(record: Record) -> list[str]:
    return [member for member, (fired, resolved) in record.members.items() if fired is not None and resolved is None]


# ---------------------------------------------------------------------------- helpers


def _latest(events: list[Event]) -> Event | None:
    best: Event | None = None
    for event in events:
        if best is None or (event.when, event.received_at) >= (best.when, best.received_at):
            best = event
    return best


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:HASH_KEY_LENGTH]


def _change_time(alert: Alert) -> float | None:
    moment: datetime | None = alert.resolved_at if alert.is_resolved and not alert.is_stateless else None
    if alert.kind is AlertKind.SERVICE_HEALTH:
        # Each communication has its own time; firedDateTime may be the event's start.
        for name in ("eventTimestamp", "submissionTimestamp"):
            raw = alert.context.get(name)
            if isinstance(raw, str) and raw:
                try:
                    moment = parse_timestamp(raw, name)
                    break
                except PayloadError:
                    continue
    if moment is None:
        moment = alert.fired_at
    return moment.timestamp() if moment is not None else None


def _status(alert: Alert) -> str:
    status = alert.context.get("status")
    return status.strip() if isinstance(status, str) else ""
