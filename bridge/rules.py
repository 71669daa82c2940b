"""The mapping file (``MAPPING_FILE``): how alerts become work items, in any ITSM.

Severity → priority hints (impact, urgency), the title template, routing rules, fields every
new work item gets and the resolution code. Field names in ``fields`` and in a route's ``set``
are the ITSM's own (its column names or field ids): the bridge passes them through, and
the adapter refuses the ones it manages itself. Loaded and checked once, at start-up.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_FINGERPRINT_TEMPLATE",
    "DEFAULT_SEVERITY",
    "DEFAULT_SEVERITY_MATRIX",
    "DEFAULT_TITLE_TEMPLATE",
    "TEMPLATE_NAMES",
    "MappingRules",
    "Policy",
    "RoutingRule",
    "load_mapping",
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

# The names a title template may use; bridge.mapping.template_values gives each a value.
TEMPLATE_NAMES = frozenset(
    {
        "severity", "monitorCondition", "alertRule", "target", "resourceGroup", "resourceType",
        "subscriptionId", "monitoringService", "signalType", "configurationItem", "alertId",
        "correlationId", "description", "firedDateTime", "kind",
        "alertRuleId", "targets", "dimensions", "trackingId", "incidentType", "stage",
    }
)

# Mapping-file keys: the neutral names, and the names earlier versions used (still accepted).
_ALIASES = {
    "short_description_template": "title_template",
    "close_code": "resolution_code",
    "extra_fields": "fields",
}
# Earlier versions' top-level field shorthands; they are fields like any other.
_FIELD_SHORTHANDS = ("caller_id", "assignment_group", "category")
_KNOWN = {"severity_matrix", "title_template", "resolution_code", "routing", "fields"}


# What makes two alerts "the same condition" (grouping, re-fire): the rule, its targets and the
# monitored dimensions. Rendered like the title template, then case-folded.
DEFAULT_FINGERPRINT_TEMPLATE = "{alertRuleId}|{targets}|{dimensions}"

GROUPINGS = ("per-alert", "group")
RESOLUTIONS = ("resolve", "close", "note-only")


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


@dataclass(frozen=True)
class RoutingRule:
    """When every ``match`` key equals the alert's value (case-insensitive), ``set`` these fields."""

    match: Mapping[str, str]
    set: Mapping[str, str]
    # The route's policy (the mapping file's defaults with the route's own keys over them).
    policy: Policy | None = None
    # A configuration item (sys_id or name, templated) instead of the CMDB lookup's.
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


def load_mapping(path: str | None) -> MappingRules:
    """Built-in defaults, then ``MAPPING_FILE``. Raises ConfigError("MAPPING_FILE", ...)."""
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
    for old, new in _ALIASES.items():
        if old in data:
            if new in data:
                raise ConfigError("MAPPING_FILE", f"{old} and {new} are the same key; give one")
            data[new] = data.pop(old)
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        allowed = sorted(_KNOWN | set(_ALIASES) | set(_FIELD_SHORTHANDS))
        raise ConfigError("MAPPING_FILE", f"unknown keys {unknown}; allowed: {allowed}")

    matrix = dict(DEFAULT_SEVERITY_MATRIX)
    for sev, pair in (data.get("severity_matrix") or {}).items():
        if not isinstance(pair, dict) or pair.get("impact") not in (1, 2, 3) or pair.get("urgency") not in (1, 2, 3):
            raise ConfigError("MAPPING_FILE", f"severity_matrix.{sev} must be {{\"impact\": 1-3, \"urgency\": 1-3}}")
        matrix[sev] = (pair["impact"], pair["urgency"])

    routing: list[RoutingRule] = []
    for i, rule in enumerate(data.get("routing") or []):
        if not (isinstance(rule, dict) and isinstance(rule.get("match"), dict) and isinstance(rule.get("set"), dict)):
            raise ConfigError("MAPPING_FILE", f"routing[{i}] must be {{\"match\": {{...}}, \"set\": {{...}}}}")
        routing.append(
            RoutingRule(
                match={str(k): str(v) for k, v in rule["match"].items()},
                set={str(k): str(v) for k, v in rule["set"].items()},
            )
        )

    code = data.get("resolution_code")
    if code is not None and not isinstance(code, str):
        raise ConfigError("MAPPING_FILE", "resolution_code must be a string")
    template = data.get("title_template", DEFAULT_TITLE_TEMPLATE)
    if not isinstance(template, str) or not template:
        raise ConfigError("MAPPING_FILE", "title_template must be a non-empty string")
    _check_template(template)
    fields = data.get("fields") or {}
    if not isinstance(fields, dict):
        raise ConfigError("MAPPING_FILE", "fields must be an object of field: value")
    for name, value in shorthand.items():
        if value is not None and not isinstance(value, str):
            raise ConfigError("MAPPING_FILE", f"{name} must be a string")
        if value:
            fields.setdefault(name, value)

    return MappingRules(
        severity_matrix=matrix,
        resolution_code=code or None,
        title_template=template,
        routing=tuple(routing),
        fields={str(k): str(v) for k, v in fields.items()},
    )


def _check_template(template: str) -> None:
    """Refuse at start-up what would otherwise only warn at every alert."""
    try:
        names = [name for _, name, _spec, _conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError("MAPPING_FILE", f"title_template is not a valid template ({exc})") from None
    unknown = sorted({n for n in names if n not in TEMPLATE_NAMES})
    if unknown:
        raise ConfigError(
            "MAPPING_FILE", f"title_template uses unknown names {unknown}; known: {sorted(TEMPLATE_NAMES)}"
        )
