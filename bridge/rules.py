"""The mapping file (``MAPPING_FILE``): how alerts become work items, in any ITSM.

Severity → priority hints (impact, urgency), the title template, routing rules, fields every
new work item gets, the resolution code, and the policies (grouping, re-fire, auto-resolve,
resolution) of all alerts and of each route. Field names in ``fields``, in a route's ``set`` and
in a policy's ``resolve_fields`` are the ITSM's own (its column names or field ids): the bridge
passes them through, and the adapter refuses the ones it manages itself. Their values are
templates over :data:`TEMPLATE_NAMES`, filled per alert by :mod:`bridge.mapping`.

Loaded and checked once, at start-up: every bad key or value is a ConfigError("MAPPING_FILE")
whose message names where it is (``routing[2].policy.reopen_window``), so ``check-config``
says what to fix; nothing in the file can fail later, alert by alert.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_FINGERPRINT_TEMPLATE",
    "DEFAULT_SEVERITY",
    "DEFAULT_SEVERITY_MATRIX",
    "DEFAULT_TITLE_TEMPLATE",
    "GROUPINGS",
    "MATCH_KEYS",
    "MAX_DURATION_SECONDS",
    "RESOLUTIONS",
    "SERVICE_HEALTH_MODES",
    "TEMPLATE_NAMES",
    "MappingRules",
    "MatchValue",
    "Policy",
    "RoutingRule",
    "load_mapping",
    "parse_duration",
]

# Impact/urgency (1 high .. 3 low) per severity; CONTRACT section 2 defaults.
DEFAULT_SEVERITY_MATRIX: Mapping[str, tuple[int, int]] = {
    "Sev0": (1, 1),
    "Sev1": (1, 2),
    "Sev2": (2, 2),
    "Sev3": (2, 3),
    "Sev4": (3, 3),
}
DEFAULT_SEVERITY = (3, 3)
DEFAULT_TITLE_TEMPLATE = "[Azure Monitor] {severity} {monitorCondition}: {alertRule} on {target}"

# The names a template (title, fields, set, configuration_item, resolve_fields, fingerprint) may
# use; bridge.mapping.template_values gives each a value.
TEMPLATE_NAMES = frozenset(
    {
        "severity", "monitorCondition", "alertRule", "target", "resourceGroup", "resourceType",
        "subscriptionId", "monitoringService", "signalType", "configurationItem", "alertId",
        "correlationId", "description", "firedDateTime", "kind",
        "alertRuleId", "targets", "dimensions", "trackingId", "incidentType", "stage",
    }
)

# Routing match keys (case-insensitive). The first group is derived from the alert by
# bridge.mapping (an alias names the same value); the second are common-schema essentials fields,
# matched as sent (earlier versions matched any essentials field by its name).
MATCH_KEYS = frozenset(
    {
        "subscription", "subscriptionId", "resourceGroup", "resourceGroupName", "targetResourceGroup",
        "resourceType", "targetResourceType", "tags", "alertRule", "ruleName", "severity", "alertType",
        "kind", "target", "monitorCondition",
        "alertId", "alertRuleId", "signalType", "monitoringService", "alertTargetIDs", "configurationItems",
        "originAlertId", "firedDateTime", "resolvedDateTime", "description", "essentialsVersion",
        "alertContextVersion", "investigationLink",
    }
)
_MATCH_KEYS_FOLDED = frozenset(key.casefold() for key in MATCH_KEYS)

# Mapping-file keys: the neutral names, and the names earlier versions used (still accepted).
_ALIASES = {
    "short_description_template": "title_template",
    "close_code": "resolution_code",
    "extra_fields": "fields",
}
# Earlier versions' top-level field shorthands; they are fields like any other.
_FIELD_SHORTHANDS = ("caller_id", "assignment_group", "category")
_KNOWN = {"severity_matrix", "title_template", "resolution_code", "routing", "fields", "policy", "service_health"}
_ROUTE_KEYS = ("match", "set", "policy", "configuration_item")
_POLICY_KEYS = (
    "grouping", "fingerprint", "reopen_window", "auto_resolve_after", "resolution", "resolution_code",
    "resolve_fields",
)
_POLICY_ALIASES = {"close_code": "resolution_code"}


# What makes two alerts "the same condition" (grouping, re-fire): the rule, its targets and the
# monitored dimensions. Rendered like the title template, then case-folded.
DEFAULT_FINGERPRINT_TEMPLATE = "{alertRuleId}|{targets}|{dimensions}"

GROUPINGS = ("per-alert", "group")
RESOLUTIONS = ("resolve", "close", "note-only")
# service_health: one work item per trackingId through its stages, or one per communication (as
# every other stateless alert).
SERVICE_HEALTH_MODES = ("lifecycle", "per-communication")

# Re-fire and auto-resolve windows: long enough for any quiet period worth waiting out, short
# enough that the state record remembering the work item is still there (see STATE_RETENTION_DAYS).
MAX_DURATION_SECONDS = 30 * 86400.0
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORMS = 'a number of seconds, or a number with s, m, h or d (e.g. "90s", "30m", "2h", "1d"); 0 is off'


def parse_duration(value: Any) -> float:
    """Seconds from ``value``: a number of seconds (JSON number or text) or text with a unit,
    ``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``; 0 means off. At most :data:`MAX_DURATION_SECONDS`.

    Raises ValueError with a message saying what is allowed (never quoting the value), for the
    caller to put after the name of the setting or key."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a duration: {DURATION_FORMS}")
    if isinstance(value, str):
        text = value.strip()
        # A duration is a few characters: anything longer is refused before any matching.
        match = _DURATION.fullmatch(text) if len(text) <= 32 else None
        if match is None:
            raise ValueError(f"must be a duration: {DURATION_FORMS}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration: {DURATION_FORMS}")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("must be at most 30 days")
    return seconds


@dataclass(frozen=True)
class Policy:
    """How a route's alerts live as work items (README "Policies"); all off by default.

    ``grouping``: ``per-alert`` (one work item per alertId) or ``group`` (one per fingerprint).
    ``reopen_window``: a new alert of the fingerprint reopens a work item the bridge resolved at
    most this many seconds earlier (0: never; a new work item names its predecessor instead).
    ``auto_resolve_after``: a stateless alert's work item is resolved after this many quiet
    seconds without a repeat (0: never). ``resolution``: ``resolve``, ``close`` or ``note-only``,
    with ``resolution_code`` and the templated ``resolve_fields`` written on resolve.
    """

    grouping: str = "per-alert"
    fingerprint: str = DEFAULT_FINGERPRINT_TEMPLATE
    reopen_window: float = 0.0
    auto_resolve_after: float = 0.0
    resolution: str = "resolve"
    resolution_code: str | None = None
    resolve_fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def threaded(self) -> bool:
        """Whether alerts are kept by fingerprint (not alertId): grouped, or re-fired."""
        return self.grouping == "group" or self.reopen_window > 0


# A match value: one text, or several (any of them matches); ``*`` and ``?`` are wildcards.
MatchValue = str | tuple[str, ...]


@dataclass(frozen=True)
class RoutingRule:
    """When every ``match`` key matches the alert's value (case-insensitive; a list matches when
    any of its values does, ``*`` and ``?`` are wildcards), ``set`` these fields (templates).

    ``match["tags"]`` (any case) is itself a mapping of tag name to value(s): every tag must match.
    """

    match: Mapping[str, MatchValue | Mapping[str, MatchValue]]
    set: Mapping[str, str]
    # The route's policy (the mapping file's defaults with the route's own keys over them).
    policy: Policy | None = None
    # A configuration item (its id or name in the ITSM, templated) instead of the CMDB lookup's.
    configuration_item: str | None = None


@dataclass(frozen=True)
class MappingRules:
    """How alerts become work items; loaded from ``MAPPING_FILE`` over the built-in defaults."""

    severity_matrix: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_SEVERITY_MATRIX))
    # None: the adapter's own default (its configured close code or resolution).
    resolution_code: str | None = None
    title_template: str = DEFAULT_TITLE_TEMPLATE
    routing: tuple[RoutingRule, ...] = ()
    # Fields every new work item gets, in the ITSM's own names; a matching route's `set` wins.
    fields: Mapping[str, str] = field(default_factory=dict)
    # The policy of alerts no route matches (or whose route sets none).
    policy: Policy = field(default_factory=Policy)
    # Service Health: one work item per trackingId and incident type, through its stages.
    service_health_lifecycle: bool = True

    def impact_urgency(self, severity: str | None) -> tuple[int, int]:
        return self.severity_matrix.get(severity or "", DEFAULT_SEVERITY)


def load_mapping(
    path: str | None, defaults: Policy | None = None, *, retention_seconds: float | None = None
) -> MappingRules:
    """Built-in defaults, then ``MAPPING_FILE``. Raises ConfigError("MAPPING_FILE", ...).

    ``defaults`` is the policy the file's own ``policy`` keys go over (the settings'
    REOPEN_WINDOW and AUTO_RESOLVE_AFTER); each route's ``policy`` keys go over the result. A
    ``reopen_window`` in the file must be shorter than ``retention_seconds`` (when given): the
    record that remembers a resolved work item is deleted after that.
    """
    data: dict[str, Any] = {}
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("MAPPING_FILE", f"cannot be read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError("MAPPING_FILE", f"is not valid JSON (line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise ConfigError("MAPPING_FILE", "must hold a JSON object")
    data = dict(data)
    shorthand: dict[str, Any] = {k: data.pop(k) for k in _FIELD_SHORTHANDS if k in data}
    data = _dealiased(data, _ALIASES, "")
    _refuse_unknown(data, _KNOWN, "", [*_ALIASES, *_FIELD_SHORTHANDS])

    matrix = dict(DEFAULT_SEVERITY_MATRIX)
    raw_matrix = data.get("severity_matrix") or {}
    if not isinstance(raw_matrix, dict):
        raise _bad('severity_matrix must be an object of severity: {"impact": 1-3, "urgency": 1-3}')
    for sev, pair in raw_matrix.items():
        if not isinstance(pair, dict) or pair.get("impact") not in (1, 2, 3) or pair.get("urgency") not in (1, 2, 3):
            raise _bad(f"severity_matrix.{sev} must be {{\"impact\": 1-3, \"urgency\": 1-3}}")
        matrix[sev] = (pair["impact"], pair["urgency"])

    base = defaults if defaults is not None else Policy()
    policy = _policy(data["policy"], "policy", base, retention_seconds) if "policy" in data else base

    raw_routing = data.get("routing") or []
    if not isinstance(raw_routing, list):
        raise _bad("routing must be a list of routes")
    routing = tuple(_route(rule, f"routing[{i}]", policy, retention_seconds) for i, rule in enumerate(raw_routing))

    code = data.get("resolution_code")
    if code is not None and not isinstance(code, str):
        raise _bad("resolution_code must be a string")
    template = data.get("title_template", DEFAULT_TITLE_TEMPLATE)
    if not isinstance(template, str) or not template:
        raise _bad("title_template must be a non-empty string")
    _check_template(template, "title_template")
    fields = _fields(data.get("fields") or {}, "fields")
    for name, value in shorthand.items():
        if value is not None and not isinstance(value, str):
            raise _bad(f"{name} must be a string")
        if value:
            _check_template(value, name, plain=True)
            fields.setdefault(name, value)

    service_health = data.get("service_health", "lifecycle")
    if service_health not in SERVICE_HEALTH_MODES:
        raise _bad(f"service_health must be one of {list(SERVICE_HEALTH_MODES)}")

    return MappingRules(
        severity_matrix=matrix,
        resolution_code=code or None,
        title_template=template,
        routing=routing,
        fields=fields,
        policy=policy,
        service_health_lifecycle=service_health == "lifecycle",
    )


# --------------------------------------------------------------------------- parts of the file


def _bad(message: str) -> ConfigError:
    return ConfigError("MAPPING_FILE", message)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _dealiased(data: dict[str, Any], aliases: Mapping[str, str], where: str) -> dict[str, Any]:
    data = dict(data)
    for old, new in aliases.items():
        if old in data:
            if new in data:
                raise _bad(f"{_at(where, old)} and {_at(where, new)} are the same key; give one")
            data[new] = data.pop(old)
    return data


def _refuse_unknown(data: Mapping[str, Any], known: Iterable[str], where: str, also: Iterable[str] = ()) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        allowed = sorted({*known, *also})
        place = f"{where} has unknown keys" if where else "unknown keys"
        raise _bad(f"{place} {unknown}; allowed: {allowed}")


def _route(rule: Any, where: str, policy: Policy, retention_seconds: float | None) -> RoutingRule:
    if not isinstance(rule, dict) or not isinstance(rule.get("match"), dict):
        raise _bad(
            f'{where} must be {{"match": {{...}}, "set": {{...}}}} (set, policy and configuration_item are optional)'
        )
    _refuse_unknown(rule, _ROUTE_KEYS, where)
    match = {str(key): _match_value(value, f"{where}.match.{key}", key) for key, value in rule["match"].items()}
    ci = rule.get("configuration_item")
    if ci is not None:
        if not isinstance(ci, str) or not ci.strip():
            raise _bad(f"{where}.configuration_item must be a non-empty string (an id or a name, templated)")
        _check_template(ci, f"{where}.configuration_item", plain=True)
    return RoutingRule(
        match=match,
        set=_fields(rule.get("set", {}), f"{where}.set"),
        policy=_policy(rule["policy"], f"{where}.policy", policy, retention_seconds) if "policy" in rule else None,
        configuration_item=ci,
    )


def _match_value(value: Any, where: str, key: str) -> MatchValue | Mapping[str, MatchValue]:
    folded = key.casefold()
    if folded not in _MATCH_KEYS_FOLDED:
        raise _bad(f"{where} is not a key routes match on; known: {sorted(MATCH_KEYS)} (any case)")
    if folded == "tags":
        if not isinstance(value, dict) or not value:
            raise _bad(f'{where} must be an object of tag: value(s), e.g. {{"env": "prod"}}')
        return {str(tag): _match_text(item, f"{where}.{tag}") for tag, item in value.items()}
    return _match_text(value, where)


def _match_text(value: Any, where: str) -> MatchValue:
    if isinstance(value, list) and value:
        return tuple(_scalar_text(item, where) for item in value)
    return _scalar_text(value, where)


def _scalar_text(value: Any, where: str) -> str:
    # Numbers are accepted as their text: earlier versions matched str(value).
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _bad(
        f'{where} must be a string or a non-empty list of strings ("*" and "?" are wildcards, "" matches an '
        "absent value)"
    )


def _fields(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object of field: value")
    fields: dict[str, str] = {}
    for name, value in raw.items():
        if not name:
            raise _bad(f"{where} has an empty field name")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise _bad(f"{where}.{name} must be a string (a template) or a number")
        _check_template(text, f"{where}.{name}", plain=True)
        fields[str(name)] = text
    return fields


def _policy(raw: Any, where: str, base: Policy, retention_seconds: float | None) -> Policy:
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object; allowed keys: {sorted(_POLICY_KEYS)}")
    data = _dealiased(raw, _POLICY_ALIASES, where)
    _refuse_unknown(data, _POLICY_KEYS, where, _POLICY_ALIASES)
    changes: dict[str, Any] = {}
    if "grouping" in data:
        if data["grouping"] not in GROUPINGS:
            raise _bad(f"{where}.grouping must be one of {list(GROUPINGS)}")
        changes["grouping"] = data["grouping"]
    if "fingerprint" in data:
        template = data["fingerprint"]
        if not isinstance(template, str) or not template.strip():
            raise _bad(f"{where}.fingerprint must be a non-empty template, e.g. {DEFAULT_FINGERPRINT_TEMPLATE!r}")
        _check_template(template, f"{where}.fingerprint", plain=True)
        changes["fingerprint"] = template
    for key in ("reopen_window", "auto_resolve_after"):
        if key in data:
            try:
                changes[key] = parse_duration(data[key])
            except ValueError as exc:
                raise _bad(f"{where}.{key} {exc}") from None
    window = changes.get("reopen_window", 0.0)
    if retention_seconds is not None and window >= retention_seconds:
        raise _bad(
            f"{where}.reopen_window must be shorter than STATE_RETENTION_DAYS: the record that remembers a "
            "resolved work item is deleted after that"
        )
    if "resolution" in data:
        if data["resolution"] not in RESOLUTIONS:
            raise _bad(f"{where}.resolution must be one of {list(RESOLUTIONS)}")
        changes["resolution"] = data["resolution"]
    if "resolution_code" in data:
        code = data["resolution_code"]
        if code is not None and not isinstance(code, str):
            raise _bad(f"{where}.resolution_code must be a string")
        changes["resolution_code"] = code or None
    if "resolve_fields" in data:
        changes["resolve_fields"] = _fields(data["resolve_fields"], f"{where}.resolve_fields")
    return dataclasses.replace(base, **changes)


def _check_template(template: str, where: str, *, plain: bool = False) -> None:
    """Refuse at start-up what would otherwise only warn at every alert. ``plain``: only
    ``{name}`` fields, no conversion or format spec (a field value is text as it is)."""
    try:
        parts = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise _bad(f"{where} is not a valid template ({exc}; write {{{{ and }}}} for literal braces)") from None
    unknown = sorted({name for name, _spec, _conv in parts if name not in TEMPLATE_NAMES})
    if unknown:
        raise _bad(f"{where} uses unknown names {unknown}; known: {sorted(TEMPLATE_NAMES)}")
    if plain and any(spec or conv for _name, spec, conv in parts):
        raise _bad(f"{where} may only use plain {{name}} fields (no !conversion or :format)")
