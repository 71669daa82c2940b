"""Alert to work item: the ITSM-neutral texts and fields the bridge writes for an alert.

:func:`build_work_item` makes a new work item's content (a title from the configured template, a
plain-text description a person can act on, impact/urgency hints from severity, the fields of
the mapping file and routing, their templates filled from the alert); :func:`update_note` is the
note for a repeated Fired; :func:`resolution` says how to resolve when the alert resolves (by its
route's policy, :func:`policy_for`). Routing is the first rule whose every ``match`` key matches
(see ``RoutingRule``); :func:`configuration_item_override` is the configuration item a route names
instead of the CMDB's. Every note carries
:func:`~bridge.correlation.note_marker` of the payload, so a redelivery of the same notification
is recognised and skipped. Limits are the adapter's: callers pass them in.

Everything here is linear in the payload, and most of it is bounded: at most ``_MAX_ITEMS``
entries of any one list or object and ``_TEXT_MAX_CHARS`` characters of any one text are looked
at, whatever the payload holds. Every text written is made safe to show (:func:`_safe`): the
``[code]`` markup of journal fields is neutralised and ``javascript:``/``vbscript:``/``data:`` links
are dropped; the portal link is only ever a link to the Azure portal (see ``Alert.portal_link``).
"""

from __future__ import annotations

import functools
import heapq
import html
import json
import logging
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from itertools import islice
from operator import itemgetter
from types import MappingProxyType
from typing import Any

from .adapters.base import ConfigurationItem, Resolution, WorkItem
from .alerts import Alert, AlertKind, Condition, display_text, nesting_depth, thaw
from .correlation import correlation_key, fingerprint, note_marker
from .rules import DEFAULT_TITLE_TEMPLATE, TEMPLATE_NAMES, MappingRules, MatchValue, Policy, RoutingRule
from .telemetry import REFERENCE_LABEL

__all__ = [
    "DEFAULT_DESCRIPTION_LIMIT",
    "DEFAULT_TITLE_LIMIT",
    "build_work_item",
    "configuration_item_override",
    "fingerprint_text",
    "policy_for",
    "render_title",
    "resolution",
    "template_values",
    "update_note",
]

logger = logging.getLogger(__name__)

# Used when an adapter states no limit of its own; each adapter states its ITSM's.
DEFAULT_TITLE_LIMIT = 160
# These caps only keep a runaway payload readable; an ITSM's own limit may be lower.
DEFAULT_DESCRIPTION_LIMIT = 32_000
_LINE_MAX_CHARS = 4_000
_TRUNCATED_LINE = "[description shortened; the full alert is in Azure Monitor, see the portal link]"
_TRUNCATED_NOTE = "[note shortened; the full alert is in Azure Monitor, see the portal link]"
# Bounds on the work one payload can cause: entries of any one list or object shown (targets,
# CIs, properties, labels, conditions, dimensions, links...), characters of any one text looked
# at (a line shows 4,000 at most anyway), of a service health communication before its tags are
# stripped, and of impactedServices sent as a JSON string before it is decoded (and its depth).
_MAX_ITEMS = 200
_TEXT_MAX_CHARS = 16_000
_MARKUP_MAX_CHARS = 64_000
_JSON_TEXT_MAX_CHARS = 64_000
_JSON_TEXT_MAX_DEPTH = 16
# Routing keys that set the priority hints rather than a field.
_PRIORITY_KEYS = ("impact", "urgency")

_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_RESOURCE_GROUP = re.compile(r"/resourcegroups/([^/]+)", re.IGNORECASE)
# A tag never contains "<": so a run of "<" without ">" costs one pass, not one pass per "<".
_TAG = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")
# Journal markup (an ITSM's work notes): [code]...[/code] renders its content as HTML. Every
# spelling of the tag (any case, spaces anywhere inside the brackets) gets parentheses instead.
# Possessive quantifiers between fixed characters: linear, whatever the text.
_CODE_TAG = re.compile(r"\[\s*+(?:/\s*+)?c\s*+o\s*+d\s*+e\s*+\]", re.IGNORECASE)


def _spread(word: str) -> str:
    # URL parsers drop tabs and line breaks anywhere in a URL: "java\tscript:" is "javascript:".
    return r"[\t\n\r]*".join(word)


# Script and data URLs, in any case, wherever they start (after a quote, a control character or
# inside a word alike); a data URL when it looks like one ("data:text/html,...", "data:,...").
_UNSAFE_URL = re.compile(
    rf"(?:{_spread('javascript')}|{_spread('vbscript')}|{_spread('livescript')})[\t\n\r]*:\S*"
    rf"|{_spread('data')}[\t\n\r]*:(?:[\w.+-]+/[\w.+-]+|[;,])\S*",
    re.IGNORECASE,
)
_UNSAFE_URL_REPLACEMENT = "(unsafe link removed)"
# Control characters but tab and line breaks: nothing a person reads, and they hide the above.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")
# For _may_need_safing: the URL pattern's optional tab and line breaks dropped, and every character
# _CONTROL removes turned into NUL (one mark to look for).
_URL_SCAN = {
    **{c: None for c in (0x09, 0x0A, 0x0D)},
    **{c: "\x00" for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)},
}


# --------------------------------------------------------------------------- public API


def build_work_item(
    alert: Alert,
    rules: MappingRules,
    ci: ConfigurationItem | None = None,
    ci_note: str | None = None,
    *,
    title_limit: int = DEFAULT_TITLE_LIMIT,
    description_limit: int = DEFAULT_DESCRIPTION_LIMIT,
    reference: str | None = None,
) -> WorkItem:
    """A new work item for a Fired alert (or a stateless alert of any condition).

    ``reference`` (the telemetry trace id, when telemetry is on) gets a line of the first note,
    just above the marker, so a person reading the work item can find the invocation."""
    impact, urgency = rules.impact_urgency(alert.severity)
    fill = _filler(alert)
    fields = {name: fill(template, "fields") for name, template in rules.fields.items()}
    route = _first_route(alert, rules.routing)
    if route is not None:
        for key, template in route.set.items():
            value = fill(template, "set")
            if key in _PRIORITY_KEYS:
                level = _level(value)
                if level is None:
                    logger.warning("routing set.%s=%r is not 1, 2 or 3; ignored", key, value)
                elif key == "impact":
                    impact = level
                else:
                    urgency = level
            else:
                fields[key] = value

    marker = note_marker(fingerprint(alert))
    note_lines = [
        f"Opened by the Azure Monitor bridge from alert rule {_quoted(_rule_name(alert))} "
        f"({_joined(alert.severity, alert.monitor_condition)}"
        f"{', fired ' + _iso(alert.fired_at) if alert.fired_at else ''}).",
        f"Alert ID: {alert.alert_id}",
    ]
    if ci_note:
        note_lines.append(f"CMDB: {_clean(ci_note)}")
    note_lines.extend(_reference(reference))
    note_lines.append(f"[{marker}]")

    return WorkItem(
        correlation_id=correlation_key(alert.alert_id),
        title=render_title(rules.title_template, alert, title_limit),
        description=_description(alert, ci, ci_note, description_limit),
        note="\n".join(_written(note_lines)),
        severity=alert.severity,
        impact=impact,
        urgency=urgency,
        configuration_item=ci,
        fields=MappingProxyType(fields),
    )


def update_note(alert: Alert, reference: str | None = None) -> str:
    """The work note added to the open work item when the alert fires again (with the
    ``reference`` line, as in :func:`build_work_item`)."""
    if alert.is_stateless:
        heading = "Azure Monitor sent a new notification for this alert"
        if alert.is_resolved:
            heading += " (monitor condition Resolved; this alert type never resolves work items by itself)"
    else:
        heading = "Azure Monitor reports the alert fired again"
    lines = [heading + "."]
    lines.append(
        "; ".join(
            part
            for part in (
                f"Rule: {_rule_name(alert)}",
                f"severity: {alert.severity}" if alert.severity else "",
                f"fired at: {_iso(alert.fired_at)}" if alert.fired_at else "",
            )
            if part
        )
    )
    lines.extend(_summary(alert))
    body = _written(lines)
    tail = [_line(f"Portal: {alert.portal_link}"), *_reference(reference), f"[{note_marker(fingerprint(alert))}]"]
    # The marker is what recognises a redelivery: it always ends the note, however long the rest.
    budget = DEFAULT_DESCRIPTION_LIMIT - sum(len(line) + 1 for line in tail)
    if sum(len(line) + 1 for line in body) > budget:
        body = [_fit(body, budget, _TRUNCATED_NOTE)]
    return "\n".join([*body, *tail])


def resolution(alert: Alert, rules: MappingRules, reference: str | None = None) -> Resolution:
    """How to resolve the open work item when its alert resolves, by the alert's policy
    (:func:`policy_for`): its resolution code (else the mapping file's), closed rather than
    resolved when the policy says ``close``, and its ``resolve_fields`` filled from ``alert``.
    The note carries the ``reference`` line, as in :func:`build_work_item`. (``note-only`` is
    the caller's to honour: it resolves nothing.)"""
    policy = policy_for(alert, rules)
    code = policy.resolution_code or rules.resolution_code
    close = policy.resolution == "close"
    verb = "closed" if close else "resolved"
    when = _iso(alert.resolved_at) if alert.resolved_at else "an unreported time"
    rule = _quoted(_rule_name(alert))
    target = _target(alert)
    summary = "\n".join(
        _line(line)
        for line in (
            f"{verb.capitalize()} automatically: Azure Monitor reported alert rule {rule} on {_clean(target)} "
            f"as resolved at {when}.",
            f"Alert ID: {alert.alert_id}",
        )
    )
    how = f" ({_quoted(code)})" if code else ""
    note = "\n".join(
        (
            f"Azure Monitor reported the alert as resolved at {when}; the bridge {verb} this work item{how}.",
            _line(f"Portal: {alert.portal_link}"),
            *_reference(reference),
            f"[{note_marker(fingerprint(alert))}]",
        )
    )
    fill = _filler(alert)
    fields = {name: fill(template, "resolve_fields") for name, template in policy.resolve_fields.items()}
    return Resolution(code=code, summary=summary, note=note, close=close, fields=MappingProxyType(fields))


def template_values(alert: Alert) -> dict[str, str]:
    """The names a title template may use (:data:`~bridge.rules.TEMPLATE_NAMES`), as text."""
    values = {
        "severity": alert.severity or "",
        "monitorCondition": alert.monitor_condition,
        "alertRule": _rule_name(alert),
        "target": _target(alert),
        "resourceGroup": _resource_group(alert),
        "resourceType": _resource_type(alert),
        "subscriptionId": _subscription(alert),
        "monitoringService": alert.monitoring_service or "",
        "signalType": alert.signal_type or "",
        "configurationItem": alert.configuration_items[0] if alert.configuration_items else "",
        "alertId": alert.alert_id,
        "correlationId": correlation_key(alert.alert_id),
        "description": alert.description or "",
        "firedDateTime": _iso(alert.fired_at) if alert.fired_at else "",
        "kind": alert.kind.value,
        # The rule name stands in where a payload omits the rule id (the portal's test samples do).
        "alertRuleId": alert.alert_rule_id or _rule_name(alert),
        "targets": ",".join(sorted(t.strip().lower() for t in alert.target_ids[:_MAX_ITEMS])),
        "dimensions": _dimensions_text(alert),
        "trackingId": _service_health(alert, "trackingId"),
        "incidentType": _service_health(alert, "incidentType"),
        "stage": _service_health(alert, "stage"),
    }
    return values


def policy_for(alert: Alert, rules: MappingRules) -> Policy:
    """The policy of the route ``alert`` takes (the first that matches, as for its fields), when
    that route has one (its keys over the file's); else the mapping file's own."""
    route = _first_route(alert, rules.routing)
    if route is not None and route.policy is not None:
        return route.policy
    return rules.policy


def configuration_item_override(alert: Alert, rules: MappingRules) -> str | None:
    """The configuration item (its id or name in the ITSM) the route ``alert`` takes names, its template
    filled, to bind instead of the CMDB lookup's; None when the route names none or it fills to
    nothing (the lookup applies)."""
    route = _first_route(alert, rules.routing)
    if route is None or not route.configuration_item:
        return None
    text = _SPACES.sub(" ", _filler(alert)(route.configuration_item, "configuration_item")).strip()
    return text or None


def fingerprint_text(alert: Alert, template: str) -> str:
    """``template`` filled from :func:`template_values`, case-folded: the text that says which
    alerts are the same condition (grouping, re-fire). Resource ids are case-insensitive."""
    values = {name: value[:_TEXT_MAX_CHARS] for name, value in template_values(alert).items()}
    rendered = _render(template, values, "fingerprint")
    return (rendered if rendered is not None else "").strip().casefold()


def render_title(template: str, alert: Alert, limit: int = DEFAULT_TITLE_LIMIT) -> str:
    """``template`` filled from :func:`template_values`: one line, at most ``limit`` characters.

    Only plain ``{name}`` fields are substituted. Unknown names, attribute or index access and
    positional fields render as nothing, so a mistyped template never stops an alert; a
    template that cannot be parsed at all falls back to the built-in default.
    """
    values = {name: value[:_TEXT_MAX_CHARS] for name, value in template_values(alert).items()}
    rendered = _render(template, values)
    if rendered is None:
        logger.warning("title_template cannot be parsed; using the default template")
        rendered = _render(DEFAULT_TITLE_TEMPLATE, values) or ""
    text = _SPACES.sub(" ", rendered).strip()
    if not text:
        text = _SPACES.sub(" ", f"Azure Monitor alert {values['alertRule']}").strip()
    return _truncate(_safe(text), limit)


# --------------------------------------------------------------------------- templates


@functools.lru_cache(maxsize=256)
def _parsed(template: str) -> tuple[tuple[str, str | None, str | None, str | None], ...] | None:
    """The template's parts, parsed once per template (title, fingerprints, fields), or None."""
    try:
        return tuple(string.Formatter().parse(template))
    except ValueError:
        return None


def _render(template: str, values: Mapping[str, str], what: str = "title_template") -> str | None:
    parsed = _parsed(template)
    if parsed is None:
        return None
    parts: list[str] = []
    unknown: list[str] = []
    for literal, name, spec, _conversion in parsed:
        parts.append(literal)
        if name is None:
            continue
        value = values.get(name)
        if value is None:
            unknown.append(name)
            continue
        if spec:
            try:
                value = format(value, spec)
            except ValueError:
                pass  # a bad format spec is ignored, the value is still shown
        parts.append(value)
    if unknown:
        _warn_unknown(what, unknown)
    return "".join(parts)


def _warn_unknown(what: str, unknown: Iterable[str]) -> None:
    logger.warning(
        "%s uses unknown names %s; known names: %s", what, sorted(set(unknown)), ", ".join(sorted(TEMPLATE_NAMES))
    )


def _filler(alert: Alert) -> Callable[[str, str], str]:
    """``fill(template, what)``: a field template filled from ``alert`` (:func:`template_values`,
    computed once, and only when a template has a name to fill).

    Each value filled in is one line (a payload cannot add lines to a field); the whole is made
    safe (:func:`_safe`) and capped like a description line. The mapping file's templates are
    checked at load; one that cannot be parsed (a rule built in code) is written as it is, and
    an unknown name, attribute or index fills as nothing.
    """
    values: dict[str, str] | None = None

    def fill(template: str, what: str) -> str:
        nonlocal values
        parsed = _parsed(template)
        if parsed is None:
            return _line(template)
        parts: list[str] = []
        unknown: list[str] = []
        for literal, name, _spec, _conversion in parsed:
            parts.append(literal)
            if name is None:
                continue
            if values is None:
                values = template_values(alert)
            value = values.get(name)
            if value is None:
                unknown.append(name)
            else:
                parts.append(_clean(value))
        if unknown:
            _warn_unknown(what, unknown)
        return _line("".join(parts))

    return fill


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    # Break on a word when that loses little; a long unbroken name is cut mid-word.
    if space >= limit - 40:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


# --------------------------------------------------------------------------- routing


def _first_route(alert: Alert, routing: Iterable[RoutingRule]) -> RoutingRule | None:
    facts: _Facts | None = None
    for rule in routing:
        if facts is None:
            facts = _Facts(alert)
        if all(_matches(facts, key, expected) for key, expected in rule.match.items()):
            return rule
    return None


class _Facts:
    """What routes match on, read from one alert once for every rule (and only what is asked)."""

    def __init__(self, alert: Alert) -> None:
        self.alert = alert
        self._essentials: dict[str, Any] | None = None
        self._tags: dict[str, list[str]] | None = None

    @property
    def essentials(self) -> Mapping[str, Any]:
        if self._essentials is None:
            # Each essentials name once, case-folded (the first spelling wins).
            self._essentials = {}
            for name, raw in islice(self.alert.essentials.items(), _MAX_ITEMS):
                self._essentials.setdefault(name.casefold(), raw)
        return self._essentials

    @property
    def tags(self) -> Mapping[str, list[str]]:
        """Tag name (case-folded) -> its values. Azure resource tags are not in the common schema,
        so they come as the rule's custom properties; a Prometheus alert's labels are tags too."""
        if self._tags is None:
            self._tags = {}
            sources = [self.alert.custom_properties]
            if self.alert.kind is AlertKind.PROMETHEUS:
                sources.append(_mapping(self.alert.context.get("labels")))
            for source in sources:
                for name, raw in islice(_mapping(source).items(), _MAX_ITEMS):
                    text = _text(raw)
                    if text:
                        self._tags.setdefault(str(name)[:_TEXT_MAX_CHARS].strip().casefold(), []).append(text)
        return self._tags


def _matches(facts: _Facts, key: str, expected: MatchValue | Mapping[str, MatchValue]) -> bool:
    folded = key.casefold()
    if folded == "tags":
        if isinstance(expected, str | tuple):
            return False
        return all(
            _any_matches(facts.tags.get(str(tag).strip().casefold(), []), wanted) for tag, wanted in expected.items()
        )
    if not isinstance(expected, str | tuple):
        return False
    return _any_matches(_routing_values(facts, folded), expected)


def _any_matches(values: Sequence[str], expected: MatchValue) -> bool:
    """Whether any of ``values`` matches any of ``expected``. No value (absent, null or empty)
    matches only an empty expectation: ``"*"`` means "any value", not "maybe none"."""
    for wanted in (expected,) if isinstance(expected, str) else expected:
        pattern = _pattern(wanted)
        if not values:
            if pattern == "":
                return True
            continue
        if isinstance(pattern, str):
            if any(value.strip().casefold() == pattern for value in values):
                return True
        elif any(pattern.matches(value.strip().casefold()) for value in values):
            return True
    return False


# Match keys derived from the alert rather than read as sent (aliases name the same value). The
# lambdas look their functions up when called: those are defined with the alert facts, below.
_DERIVED: Mapping[str, Callable[[Alert], str]] = {
    "resourcegroup": lambda a: _resource_group(a),
    "subscriptionid": lambda a: _subscription(a),
    "subscription": lambda a: _subscription(a),
    "resourcetype": lambda a: _resource_type(a),
    "targetresourcetype": lambda a: _resource_type(a),
    "kind": lambda a: a.kind.value,
    "alerttype": lambda a: a.kind.value,
    "target": lambda a: _target(a),
    "monitorcondition": lambda a: a.monitor_condition,
    "severity": lambda a: a.severity or "",
}
# Match keys read from the essentials field of another name.
_ESSENTIALS_ALIASES = {"rulename": "alertrule"}


def _routing_values(facts: _Facts, folded: str) -> list[str]:
    alert = facts.alert
    derive = _DERIVED.get(folded)
    if derive is not None:
        value = derive(alert)
        return [value] if value else []
    essentials = facts.essentials
    folded = _ESSENTIALS_ALIASES.get(folded, folded)
    if folded in essentials:
        raw = essentials[folded]
        if raw is None:
            return []
        if isinstance(raw, tuple):
            return [text for item in raw[:_MAX_ITEMS] if (text := _text(item))]
        text = _text(raw)
        return [text] if text else []
    if folded in ("resourcegroupname", "targetresourcegroup"):
        group = _resource_group(alert)
        return [group] if group else []
    return []


class _Glob:
    """An anchored ``*``/``?`` pattern (already case-folded), matched in time linear in the text
    (times the pattern's length), whatever either holds: the fixed parts between stars are found
    leftmost-first, one after another, which is all a match needs; no backtracking."""

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("*")
        self.starred = len(parts) > 1
        self.head = parts[0]
        self.tail = parts[-1] if self.starred else ""
        self.middle = [part for part in parts[1:-1] if part]
        self._compiled = {part: _fixed(part) for part in {self.head, self.tail, *self.middle}}

    def matches(self, text: str) -> bool:
        head, tail = self._compiled[self.head], self._compiled[self.tail]
        if not self.starred:
            return len(text) == len(self.head) and head.fullmatch(text) is not None
        start, end = len(self.head), len(text) - len(self.tail)
        if end < start or head.match(text) is None or tail.fullmatch(text, end) is None:
            return False
        for part in self.middle:
            found = self._compiled[part].search(text, start, end)
            if found is None:
                return False
            start = found.end()
        return True


def _fixed(part: str) -> re.Pattern[str]:
    """``part`` as a pattern of its own length: ``?`` is any one character, the rest literal."""
    return re.compile("".join("." if c == "?" else re.escape(c) for c in part), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _pattern(expected: str) -> str | _Glob:
    """An expected value, stripped and case-folded: the text to equal, or a :class:`_Glob`."""
    wanted = expected.strip().casefold()
    return _Glob(wanted) if "*" in wanted or "?" in wanted else wanted


def _level(value: str) -> int | None:
    text = value.strip()
    return int(text) if text in ("1", "2", "3") else None


# --------------------------------------------------------------------------- alert facts


def _dimensions_text(alert: Alert) -> str:
    """The monitored dimensions (every condition's), as sorted ``name=value`` pairs."""
    pairs = {
        f"{name.strip().casefold()}={value.strip().casefold()}"
        for condition in alert.conditions[:_MAX_ITEMS]
        for name, value in condition.dimensions[:_MAX_ITEMS]
    }
    return ",".join(sorted(pairs))


def _service_health(alert: Alert, name: str) -> str:
    """A Service Health property (trackingId, incidentType, stage) as text, else ""."""
    if alert.kind is not AlertKind.SERVICE_HEALTH:
        return ""
    value = _mapping(alert.context.get("properties")).get(name)
    return value.strip()[:_TEXT_MAX_CHARS] if isinstance(value, str) else ""


def _rule_name(alert: Alert) -> str:
    if alert.alert_rule:
        return alert.alert_rule
    if alert.kind is AlertKind.BUDGET:
        budget = _mapping(alert.context.get("AlertData")).get("BudgetName")
        if isinstance(budget, str) and budget:
            return budget
    return alert.monitoring_service or "Azure Monitor alert"


def _target(alert: Alert) -> str:
    """Resource name: last segment of the first target id, else the first CI, else the service."""
    if alert.target_ids:
        last = alert.target_ids[0].rstrip("/").rsplit("/", 1)[-1]
        if last:
            return last
    if alert.configuration_items:
        return alert.configuration_items[0]
    return alert.monitoring_service or ""


def _resource_group(alert: Alert) -> str:
    for resource_id in alert.target_ids[:_MAX_ITEMS]:
        match = _RESOURCE_GROUP.search(resource_id[:_TEXT_MAX_CHARS])
        if match:
            return match.group(1)
    for key in ("targetResourceGroup", "resourceGroupName"):
        value = alert.essentials.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _subscription(alert: Alert) -> str:
    for resource_id in (*alert.target_ids[:_MAX_ITEMS], alert.alert_id):
        match = _SUBSCRIPTION.match(resource_id[:_TEXT_MAX_CHARS])
        if match:
            return match.group(1)
    return ""


def _resource_type(alert: Alert) -> str:
    for key in ("targetResourceType", "resourceType"):
        value = alert.essentials.get(key)
        if isinstance(value, str) and value:
            return value
    if alert.target_ids:
        _, sep, tail = alert.target_ids[0][:_TEXT_MAX_CHARS].rpartition("/providers/")
        parts = tail.strip("/").split("/")
        if sep and len(parts) >= 2:
            # namespace/type[/name/subtype/name...] -> namespace/type[/subtype...]
            return "/".join([parts[0], *parts[1::2]])
    return ""


def _reference(reference: str | None) -> list[str]:
    """The line naming the telemetry operation, when there is one. Only a trace id (hex) is
    written: whatever else came would be text in someone's work item."""
    if reference is None or not _TRACE_ID.fullmatch(reference):
        return []
    return [f"{REFERENCE_LABEL} {reference}"]


# --------------------------------------------------------------------------- description


def _description(alert: Alert, ci: ConfigurationItem | None, ci_note: str | None, limit: int) -> str:
    lines: list[str] = [f"Azure Monitor alert: {alert.monitor_condition}"]
    add = _adder(lines)
    add("Alert rule", _rule_name(alert))
    add("Severity", alert.severity)
    add("Monitor condition", alert.monitor_condition)
    add("Monitoring service", alert.monitoring_service)
    add("Signal type", alert.signal_type)
    add("Fired at", _iso(alert.fired_at) if alert.fired_at else None)
    add("Resolved at", _iso(alert.resolved_at) if alert.resolved_at else None)
    add("Alert ID", alert.alert_id)
    add("Alert rule ID", alert.alert_rule_id)
    add("Portal link", alert.portal_link)
    add("Description", alert.description)

    if alert.conditions:
        lines.append("")
        lines.extend(_condition_lines(alert))

    details = _DETAILS.get(alert.kind)
    if details is not None:
        section = details(alert)
        if section:
            lines.append("")
            lines.extend(section)

    lines.append("")
    if alert.target_ids:
        lines.append("Targets:")
        lines.extend(f"- {target}" for target in _bounded(alert.target_ids))
    add("Configuration items", ", ".join(_bounded(alert.configuration_items)) or None)
    if ci is not None:
        matched = f", matched on {ci.matched_on}" if ci.matched_on else ""
        add("CMDB configuration item", f"{ci.name or ci.id} ({ci.id}{matched})")
    add("CMDB", ci_note)
    add("Origin alert ID", alert.origin_alert_id)

    properties = _properties_lines("Custom properties", alert.custom_properties)
    rule_properties = _mapping(alert.context.get("properties"))
    # Compared thawed: read-only views compare two interpreter frames per level, plain dicts one.
    if alert.kind in (AlertKind.METRIC, AlertKind.LOG) and thaw(rule_properties) != thaw(
        _mapping(alert.custom_properties)
    ):
        properties += _properties_lines("Alert rule properties", rule_properties)
    if properties:
        lines.append("")
        lines.extend(properties)

    links = _search_links(alert)
    if links:
        lines.append("")
        lines.append("Log search links:")
        lines.extend(links)

    if alert.kind is AlertKind.UNKNOWN and alert.context and not alert.conditions:
        lines.append("")
        add("Alert context", _compact(alert.context))

    return _fit(_written(lines), limit)


def _condition_lines(alert: Alert) -> list[str]:
    condition = _mapping(alert.context.get("condition"))
    heading = "Condition"
    qualifiers = [
        q
        for q in (
            _text(alert.context.get("conditionType")),
            f"window {_text(condition.get('windowSize'))}" if condition.get("windowSize") else None,
        )
        if q
    ]
    if qualifiers:
        heading += f" ({', '.join(qualifiers)})"
    lines = [heading + ":"]
    criteria = condition.get("allOf")
    raw: tuple[Any, ...] = criteria if isinstance(criteria, tuple) else ()
    query = alert.kind in (AlertKind.LOG, AlertKind.LOG_V1)
    for index, item in enumerate(alert.conditions[:_MAX_ITEMS]):
        extra = _mapping(raw[index]) if index < len(raw) else {}
        lines.append("- " + _describe_condition(item, extra, query=query))
    if len(alert.conditions) > _MAX_ITEMS:
        lines.append(_more(len(alert.conditions) - _MAX_ITEMS))
    start, end = _text(condition.get("windowStartTime")), _text(condition.get("windowEndTime"))
    if start or end:
        lines.append(f"Evaluation window: {start or '?'} to {end or '?'}")
    return lines


def _describe_condition(item: Condition, raw: Mapping[str, Any], *, query: bool) -> str:
    parts = [
        f"{'query' if query else 'metric'}: {item.name}" if item.name else "",
        f"namespace: {_text(raw.get('metricNamespace'))}" if raw.get("metricNamespace") else "",
        f"operator: {item.operator}" if item.operator else "",
        f"threshold: {item.threshold}" if item.threshold is not None else "",
        f"value: {item.value}" if item.value is not None else "",
        f"aggregation: {item.time_aggregation}" if item.time_aggregation else "",
        f"measure column: {_text(raw.get('metricMeasureColumn'))}" if raw.get("metricMeasureColumn") else "",
        f"web test: {_text(raw.get('webTestName'))}" if raw.get("webTestName") else "",
        f"sensitivity: {_text(raw.get('alertSensitivity'))}" if raw.get("alertSensitivity") else "",
        _failing_periods(raw.get("failingPeriods")),
        (
            "dimensions: "
            + ", ".join(
                _bounded([f"{name}={value}" for name, value in item.dimensions[:_MAX_ITEMS]], len(item.dimensions))
            )
            if item.dimensions
            else ""
        ),
    ]
    return "; ".join(part for part in parts if part)


def _failing_periods(value: Any) -> str:
    periods = _mapping(value)
    failing, total = _text(periods.get("minFailingPeriodsToAlert")), _text(periods.get("numberOfEvaluationPeriods"))
    if failing is None or total is None:
        return ""
    return f"failing periods: {failing} of {total}"


def _activity_log_details(alert: Alert) -> list[str]:
    ctx = alert.context
    lines = ["Activity log event:"]
    add = _adder(lines)
    add("Operation", ctx.get("operationName"))
    add("Caller", ctx.get("caller"))
    status, sub_status = _text(ctx.get("status")), _text(ctx.get("subStatus"))
    add("Status", f"{status} ({sub_status})" if status and sub_status else status)
    add("Level", ctx.get("level"))
    add("Event source", ctx.get("eventSource"))
    add("Event time", ctx.get("eventTimestamp"))
    add("Correlation ID", ctx.get("correlationId"))
    add("Scope", _mapping(ctx.get("authorization")).get("scope"))
    # `claims` is deliberately left out: it is the caller's token claims, not work item material.
    lines.extend(_properties_lines("Event properties", _mapping(ctx.get("properties")), value_max=300))
    return lines


def _service_health_details(alert: Alert) -> list[str]:
    props = _mapping(alert.context.get("properties"))
    lines = ["Service health event:"]
    add = _adder(lines)
    add("Title", props.get("title") or props.get("defaultLanguageTitle"))
    add("Incident type", props.get("incidentType"))
    add("Tracking ID", props.get("trackingId"))
    add("Stage", props.get("stage"))
    add("Status", alert.context.get("status"))
    add("Service", props.get("service"))
    add("Region", props.get("region"))
    add("Impacted services", _impacted_services(props.get("impactedServices")))
    add("Impact start", props.get("impactStartTime"))
    add("Impact mitigated", props.get("impactMitigationTime"))
    communication = communication_text(alert, 1_000)
    if communication:
        add("Communication", communication)
    return lines


def communication_text(alert: Alert, limit: int) -> str:
    """A Service Health alert's communication as plain text, at most ``limit`` characters; ""
    for any other alert, or one without it."""
    if alert.kind is not AlertKind.SERVICE_HEALTH:
        return ""
    props = _mapping(alert.context.get("properties"))
    communication = props.get("communication") or props.get("defaultLanguageContent")
    if not isinstance(communication, str):
        return ""
    return _cap(_plain(communication[:_MARKUP_MAX_CHARS]), limit)


def _resource_health_details(alert: Alert) -> list[str]:
    props = _mapping(alert.context.get("properties"))
    lines = ["Resource health event:"]
    add = _adder(lines)
    add("Title", props.get("title"))
    add("Current health status", props.get("currentHealthStatus"))
    add("Previous health status", props.get("previousHealthStatus"))
    add("Type", props.get("type"))
    add("Cause", props.get("cause"))
    add("Details", props.get("details"))
    add("Status", alert.context.get("status"))
    add("Event time", alert.context.get("eventTimestamp"))
    return lines


def _budget_details(alert: Alert) -> list[str]:
    data = _mapping(alert.context.get("AlertData"))
    lines = ["Budget alert:"]
    add = _adder(lines)
    add("Budget", data.get("BudgetName"))
    add("Budget type", data.get("BudgetType"))
    spent, budget = _text(data.get("SpentAmount")), _text(data.get("BudgetThreshold"))
    if spent or budget:
        add("Spent", f"{spent or '?'} of budget {budget or '?'}")
    threshold = _text(data.get("NotificationThresholdAmount"))
    kind = _text(data.get("ThresholdType"))
    if threshold:
        add("Notification threshold", f"{threshold} ({kind})" if kind else threshold)
    add("Forecasted total for period", data.get("ForecastedTotalForPeriod"))
    add("Unit", data.get("Unit"))
    add("Scope", data.get("Scope"))
    add("Budget start date", data.get("BudgetStartDate"))
    add("Budget ID", data.get("BudgetId"))
    add("Alert category", alert.context.get("AlertCategory"))
    return lines


def _prometheus_details(alert: Alert) -> list[str]:
    ctx = alert.context
    lines = ["Prometheus rule:"]
    add = _adder(lines)
    add("Expression", ctx.get("expression"))
    add("Value", ctx.get("expressionValue"))
    add("For", ctx.get("for"))
    add("Interval", ctx.get("interval"))
    labels = _mapping(ctx.get("labels"))
    if labels:
        # The first labels by name: a partial sort, so a payload of many labels costs no full sort.
        first = heapq.nsmallest(_MAX_ITEMS, labels.items(), key=itemgetter(0))
        shown = [f"{key}={_text(value)}" for key, value in first]
        if len(labels) > _MAX_ITEMS:
            shown.append(f"… and {len(labels) - _MAX_ITEMS} more")
        add("Labels", ", ".join(shown))
    lines.extend(_properties_lines("Annotations", _mapping(ctx.get("annotations"))))
    add("Rule group", ctx.get("ruleGroup"))
    return lines


def _smart_detector_details(alert: Alert) -> list[str]:
    ctx = alert.context
    lines = ["Smart detection:"]
    add = _adder(lines)
    add("Detector", ctx.get("SmartDetectorName") or ctx.get("SmartDetectorId"))
    add("Summary", ctx.get("DetectionSummary"))
    add("Detected value", ctx.get("DetectedValue"))
    add("Normal value", ctx.get("NormalValue"))
    add("Occurred at", ctx.get("FormattedOccurrenceTime"))
    return lines


def _log_v1_details(alert: Alert) -> list[str]:
    ctx = alert.context
    lines = ["Log search:"]
    add = _adder(lines)
    add("Alert type", ctx.get("AlertType"))
    add("Result count", ctx.get("ResultCount"))
    start, end = _text(ctx.get("SearchIntervalStartTimeUtc")), _text(ctx.get("SearchIntervalEndtimeUtc"))
    if start or end:
        add("Search interval", f"{start or '?'} to {end or '?'}")
    add("Workspace ID", ctx.get("WorkspaceId"))
    add("Application ID", ctx.get("ApplicationId"))
    affected = ctx.get("AffectedConfigurationItems")
    if isinstance(affected, tuple) and affected:
        names = [t for item in affected[:_MAX_ITEMS] if (t := _text(item))]
        unseen = max(len(affected) - _MAX_ITEMS, 0)
        add("Affected configuration items", ", ".join(_bounded(names, len(names) + unseen)))
    add("Search results included", ctx.get("IncludedSearchResults"))
    return lines


_DETAILS: Mapping[AlertKind, Callable[[Alert], list[str]]] = {
    AlertKind.ACTIVITY_LOG: _activity_log_details,
    AlertKind.SERVICE_HEALTH: _service_health_details,
    AlertKind.RESOURCE_HEALTH: _resource_health_details,
    AlertKind.BUDGET: _budget_details,
    AlertKind.PROMETHEUS: _prometheus_details,
    AlertKind.SMART_DETECTOR: _smart_detector_details,
    AlertKind.LOG_V1: _log_v1_details,
}

_V2_LINKS = (
    ("linkToFilteredSearchResultsUI", "Filtered search results (portal)"),
    ("linkToSearchResultsUI", "Search results (portal)"),
    ("linkToFilteredSearchResultsAPI", "Filtered search results (API)"),
    ("linkToSearchResultsAPI", "Search results (API)"),
)
_V1_LINKS = (
    ("LinkToFilteredSearchResultsUI", "Filtered search results (portal)"),
    ("LinkToSearchResults", "Search results (portal)"),
    ("LinkToFilteredSearchResultsAPI", "Filtered search results (API)"),
    ("LinkToSearchResultsAPI", "Search results (API)"),
)


def _search_links(alert: Alert) -> list[str]:
    sources: list[tuple[Mapping[str, Any], tuple[tuple[str, str], ...]]] = [(alert.context, _V1_LINKS)]
    criteria = _mapping(alert.context.get("condition")).get("allOf")
    if isinstance(criteria, tuple):
        sources.extend((_mapping(item), _V2_LINKS) for item in criteria[:_MAX_ITEMS])
    seen: set[str] = set()
    lines: list[str] = []
    for source, names in sources:
        for key, label in names:
            url = _https_link(source.get(key))
            if url is not None and url not in seen:
                seen.add(url)
                lines.append(f"- {label}: {url}")
    return lines


# An https URL made of URL characters only (RFC 3986), without credentials; nothing else is
# shown as a link. Search links point at the portal (UI) or the Log Analytics / Application
# Insights APIs, whose hosts vary by cloud, so the host itself is not restricted here.
_HTTPS_LINK = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*)?\Z")


def _https_link(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    url = value.strip()
    return url if len(url) <= _LINE_MAX_CHARS and _HTTPS_LINK.match(url) else None


def _summary(alert: Alert) -> list[str]:
    """One or two lines for a work note: what this notification says now."""
    ctx, props = alert.context, _mapping(alert.context.get("properties"))
    kind = alert.kind
    if kind is AlertKind.SERVICE_HEALTH:
        return [
            _facts(
                ("Service health", props.get("title")),
                ("stage", props.get("stage")),
                ("status", ctx.get("status")),
                ("tracking ID", props.get("trackingId")),
            )
        ]
    if kind is AlertKind.RESOURCE_HEALTH:
        return [
            _facts(
                ("Resource health", props.get("title")),
                ("current status", props.get("currentHealthStatus")),
                ("previous status", props.get("previousHealthStatus")),
                ("cause", props.get("cause")),
            )
        ]
    if kind is AlertKind.ACTIVITY_LOG:
        return [
            _facts(
                ("Operation", ctx.get("operationName")),
                ("caller", ctx.get("caller")),
                ("status", ctx.get("status")),
            )
        ]
    if kind is AlertKind.BUDGET:
        data = _mapping(ctx.get("AlertData"))
        return [
            _facts(
                ("Budget", data.get("BudgetName")),
                ("spent", data.get("SpentAmount")),
                ("budget", data.get("BudgetThreshold")),
                ("forecast", data.get("ForecastedTotalForPeriod")),
            )
        ]
    if kind is AlertKind.PROMETHEUS:
        return [_facts(("Expression", ctx.get("expression")), ("value", ctx.get("expressionValue")))]
    if kind is AlertKind.SMART_DETECTOR:
        return [_facts(("Detection", ctx.get("DetectionSummary")), ("detected", ctx.get("DetectedValue")))]
    query = kind in (AlertKind.LOG, AlertKind.LOG_V1)
    lines = ["Condition: " + _describe_condition(item, {}, query=query) for item in alert.conditions[:_MAX_ITEMS]]
    if len(alert.conditions) > _MAX_ITEMS:
        lines.append(_more(len(alert.conditions) - _MAX_ITEMS))
    return lines


# --------------------------------------------------------------------------- text helpers


def _adder(lines: list[str]) -> Callable[[str, Any], None]:
    def add(label: str, value: Any) -> None:
        text = _text(value)
        if text:
            lines.append(f"{label}: {_clean(text)}")

    return add


def _properties_lines(title: str, values: Mapping[str, Any] | None, value_max: int = 1_000) -> list[str]:
    if not values:
        return []
    lines = [f"{title}:"]
    for key, value in islice(values.items(), _MAX_ITEMS):
        text = _text(value)
        if text:
            lines.append(f"- {_clean(key)}: {_cap(_clean(text), value_max)}")
    if len(values) > _MAX_ITEMS:
        lines.append(_more(len(values) - _MAX_ITEMS))
    return lines if len(lines) > 1 else []


def _facts(*pairs: tuple[str, Any]) -> str:
    return "; ".join(f"{label}: {_clean(text)}" for label, value in pairs if (text := _text(value)))


def _impacted_services(value: Any) -> str | None:
    services = value
    if isinstance(value, str):
        # Sent as a JSON string by some Service Health alerts: decoded only when it is of the
        # size and depth such a list has; anything else is shown as text.
        if len(value) > _JSON_TEXT_MAX_CHARS or nesting_depth(value, _JSON_TEXT_MAX_DEPTH) > _JSON_TEXT_MAX_DEPTH:
            return _clean(value)
        try:
            services = json.loads(value)
        except (ValueError, RecursionError):
            return _clean(value)
    if not isinstance(services, tuple | list):
        return _text(services)
    described: list[str] = []
    for service in services[:_MAX_ITEMS]:
        entry = _mapping(service)
        name = _text(entry.get("ServiceName"))
        regions = entry.get("ImpactedRegions")
        region_names = [
            text
            for region in (regions[:_MAX_ITEMS] if isinstance(regions, tuple | list) else ())
            if (text := _text(_mapping(region).get("RegionName")))
        ]
        if name:
            described.append(f"{name} ({', '.join(region_names)})" if region_names else name)
    return "; ".join(described) or None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    """Payload values as display text (see :func:`display_text`); empty values as None."""
    if type(value) is str:
        # Most values are; display_text returns them as they are, without the container checks.
        return value[:_TEXT_MAX_CHARS].strip() or None
    if isinstance(value, Mapping | tuple | list) and not value:
        return None
    text = display_text(value)
    return (text[:_TEXT_MAX_CHARS].strip() or None) if text is not None else None


def _compact(value: Any) -> str:
    return json.dumps(thaw(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _plain(markup: str) -> str:
    return _SPACES.sub(" ", html.unescape(_TAG.sub(" ", markup))).strip()


def _clean(text: str) -> str:
    """One line: payload text must not break the description's line structure."""
    text = text[:_TEXT_MAX_CHARS]
    # Every whitespace character but the space is unprintable, so printable text without a double
    # space has nothing for the substitution to change (the usual case, found without a regex).
    if text.isprintable() and "  " not in text:
        return text.strip()
    return _SPACES.sub(" ", text).strip()


def _safe(text: str) -> str:
    """``text`` safe to write into a work item: no control character, no script or data URL, no
    ``[code]`` markup (in that order, so no step can form what an earlier one removed)."""
    return _CODE_TAG.sub(_unbracket, _UNSAFE_URL.sub(_UNSAFE_URL_REPLACEMENT, _CONTROL.sub("", text)))


def _unbracket(match: re.Match[str]) -> str:
    return "(" + match.group(0)[1:-1] + ")"


def _line(text: str) -> str:
    """One written line: bounded before any work, made safe, then capped."""
    return _cap(_safe(text[:_TEXT_MAX_CHARS]))


def _written(lines: Sequence[str]) -> list[str]:
    """``[_line(line) for line in lines]``, with one look at all of them first.

    Nearly every alert has nothing to make safe, and one search per pattern over the joined
    lines costs far less than three substitutions per line. Any match within a line is also a
    match in the joined text (the patterns have no anchors and need nothing after the match),
    so "no match there" means :func:`_safe` would return every line unchanged.
    """
    joined = "\n".join(lines)
    if _may_need_safing(joined):
        return [_line(line) for line in lines]
    return [_cap(line[:_TEXT_MAX_CHARS]) for line in lines]


def _may_need_safing(text: str) -> bool:
    """False only when :func:`_safe` would leave every part of ``text`` unchanged.

    The URL pattern is slow to search (every position tried, case-insensitively), so ASCII text
    is first looked at with plain string operations: a script or data URL there needs, once the
    tabs and line breaks the pattern allows are dropped and the case folded, "script:" or
    "data:" (non-ASCII text could spell them with letters such as U+017F, which the pattern's
    case folding matches: it is searched as ever).
    """
    if _CODE_TAG.search(text):
        return True
    if not text.isascii():
        return _CONTROL.search(text) is not None or _UNSAFE_URL.search(text) is not None
    folded = text.translate(_URL_SCAN).lower()
    return "\x00" in folded or "script:" in folded or "data:" in folded


def _bounded(items: Sequence[str], total: int | None = None) -> list[str]:
    """The first ``_MAX_ITEMS`` of ``items``, then how many more there were (of ``total``)."""
    count = len(items) if total is None else total
    shown = list(items[:_MAX_ITEMS])
    if count > len(shown):
        shown.append(f"… and {count - len(shown)} more")
    return shown


def _more(count: int) -> str:
    return f"- … and {count} more"


def _cap(text: str, limit: int = _LINE_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit(lines: list[str], limit: int, truncated: str = _TRUNCATED_LINE) -> str:
    text = "\n".join(lines).strip()
    if len(text) <= limit:
        return text
    # Whole lines are dropped from the end (links, properties) so no URL is left cut in half.
    kept: list[str] = []
    size = len(truncated)
    for line in lines:
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    kept.append(truncated)
    return "\n".join(kept).strip()


def _iso(moment: datetime) -> str:
    micro = moment.microsecond
    spec = "seconds" if not micro else "milliseconds" if micro % 1000 == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _joined(*parts: str | None) -> str:
    return ", ".join(part for part in parts if part)


def _quoted(text: str) -> str:
    return f"'{_clean(text)}'"
