"""The texts of a thread's lifecycle (bridge.threads): members joining and resolving, Service
Health stages, a reopen, the quiet resolve, and the line naming a work item's predecessor.

Built from :mod:`bridge.mapping`'s own safe-line helpers, so every text is made safe exactly as
the create and update texts are, and every note ends with the payload marker that recognises
a redelivery (and a write whose answer was lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from .adapters.base import Resolution
from .alerts import Alert, AlertKind
from .correlation import fingerprint, note_marker
from .mapping import (
    _cap,
    _iso,
    _mapping,
    _reference,
    _rule_name,
    _target,
    _written,
    communication_text,
    resolution,
    update_note,
)
from .rules import MappingRules
from .state.record import Event

__all__ = [
    "duration",
    "member_note",
    "members_line",
    "predecessor_line",
    "quiet_resolution",
    "reopen_note",
    "stage_resolution",
]

# A note lists at most this many of the changes it reports; the rest are counted.
_MAX_LISTED = 5
_COMMUNICATION_MAX_CHARS = 2_000


def duration(seconds: float) -> str:
    """``90`` -> ``1m30s``; ``7200`` -> ``2h``: how long, for a person."""
    whole = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def member_note(
    changes: Sequence[tuple[Event, Alert]], firing: int, reference: str | None = None
) -> str:
    """The note for a thread's new events (oldest first): who joined or resolved, and, for the
    latest, what Azure Monitor says now (with a Service Health communication's text)."""
    lines: list[str] = []
    for event, alert in changes[-_MAX_LISTED:]:
        if alert.kind is AlertKind.SERVICE_HEALTH:
            stage = event.stage or "update"
            lines.append(f"Azure Service Health sent a communication, stage {stage}.")
            text = _communication(alert)
            if text:
                lines.append(f"Communication: {text}")
        elif event.condition == "Resolved" and not alert.is_stateless:
            lines.append(f"Alert {alert.alert_id} resolved; {firing} alert(s) of this work item still firing.")
        else:
            lines.append(f"Alert {alert.alert_id} of the same condition fired ({firing} firing now).")
    if len(changes) > _MAX_LISTED:
        lines.append(f"({len(changes) - _MAX_LISTED} earlier change(s) not listed.)")
    latest_event, latest = changes[-1]
    if latest_event.condition == "Resolved" and not latest.is_stateless:
        tail = [f"Portal: {latest.portal_link}", *_reference(reference), f"[{note_marker(fingerprint(latest))}]"]
        return "\n".join(_written([*lines, *tail]))
    return "\n".join([*_written(lines), update_note(latest, reference)])


def reopen_note(alert: Alert, event: Event, resolved_at: float, reference: str | None = None) -> str:
    """Why a resolved work item is open again: its condition fired again within the window."""
    after = duration(event.when - resolved_at)
    if alert.kind is AlertKind.SERVICE_HEALTH:
        head = f"Azure Service Health reports this event active again (stage {event.stage or 'Active'})"
    else:
        head = f"Azure Monitor fired this condition again {after} after it resolved"
    lines = [f"{head}: the bridge reopened this work item.", f"New alert ID: {alert.alert_id}"]
    text = _communication(alert)
    if text:
        lines.append(f"Communication: {text}")
    return "\n".join([*_written(lines), update_note(alert, reference)])


def members_line(alerts: Sequence[Alert]) -> str | None:
    """The line naming the other alerts a thread's new work item is made for (they arrived
    before it was created), so every member is named on the work item."""
    if not alerts:
        return None
    shown = [alert.alert_id for alert in alerts[:_MAX_LISTED]]
    more = f" and {len(alerts) - _MAX_LISTED} more" if len(alerts) > _MAX_LISTED else ""
    return _written([f"Also in this work item: alert(s) {', '.join(shown)}{more}."])[0]


def predecessor_line(previous: dict[str, str | None] | None) -> str | None:
    """The line that names the work item the same condition had before this one."""
    if not previous:
        return None
    label = previous.get("number") or previous.get("id") or "an earlier work item"
    return _written([f"Follows {label}: the earlier work item of the same condition, no longer open."])[0]


def quiet_resolution(alert: Alert, rules: MappingRules, quiet: float, reference: str | None = None) -> Resolution:
    """The resolution of a stateless alert's work item after ``quiet`` seconds without a repeat."""
    base = resolution(alert, rules, reference)
    rule = _cap(_rule_name(alert))
    summary = "\n".join(
        _written(
            [
                f"Resolved automatically: alert rule '{rule}' on {_target(alert)} did not fire again for "
                f"{duration(quiet)} (this alert type never reports Resolved).",
                f"Last alert ID: {alert.alert_id}",
            ]
        )
    )
    note = "\n".join(
        _written(
            [
                f"No repeat of this alert for {duration(quiet)}: the bridge resolved this work item "
                "(auto-resolve of alerts that never report Resolved).",
                *_reference(reference),
                f"[{note_marker(fingerprint(alert))}]",
            ]
        )
    )
    return Resolution(code=base.code, summary=summary, note=note, close=base.close, fields=base.fields)


def stage_resolution(alert: Alert, event: Event, rules: MappingRules, reference: str | None = None) -> Resolution:
    """The resolution of a Service Health work item: the communication that ended the event,
    with its stage and text (it carries no resolvedDateTime)."""
    base = resolution(alert, rules, reference)
    tracking = _mapping(alert.context.get("properties")).get("trackingId")
    what = f"tracking ID {tracking}" if isinstance(tracking, str) and tracking else "the event"
    stage = event.stage or "Resolved"
    text = _communication(alert)
    communication = [f"Communication: {text}"] if text else []
    when = _iso(datetime.fromtimestamp(event.when, UTC))
    summary = "\n".join(
        _written(
            [f"Resolved automatically: Azure Service Health reported {what} as {stage} at {when}.", *communication]
        )
    )
    note = "\n".join(
        _written(
            [
                f"Azure Service Health reported stage {stage} for {what}; the bridge "
                f"{'closed' if base.close else 'resolved'} this work item.",
                *communication,
                f"Portal: {alert.portal_link}",
                *_reference(reference),
                f"[{note_marker(fingerprint(alert))}]",
            ]
        )
    )
    return Resolution(code=base.code, summary=summary, note=note, close=base.close, fields=base.fields)


def _communication(alert: Alert) -> str:
    return communication_text(alert, _COMMUNICATION_MAX_CHARS)
