"""Common alert schema parsing: one request body in, one typed, immutable :class:`Alert` out.

Only what the bridge relies on is validated (the envelope, ``alertId``, ``monitorCondition``,
the types of the essentials it reads, timestamps). Everything else is kept as sent: unknown
fields stay in ``payload``/``essentials``/``context``, an unknown ``monitoringService`` gives
kind ``UNKNOWN``, and odd alert-context shapes (integer ``channels``, ``claims`` or
``impactedServices`` as JSON strings) are never a reason to refuse an alert. Anything that is
refused raises :class:`~bridge.errors.PayloadError` naming the field.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import quote

from .errors import PayloadError

__all__ = [
    "MAX_DEPTH",
    "SCHEMA_ID",
    "Alert",
    "AlertKind",
    "Condition",
    "canonical_json",
    "display_text",
    "nesting_depth",
    "parse_alert",
    "parse_timestamp",
    "safe_portal_link",
    "thaw",
]

logger = logging.getLogger(__name__)

SCHEMA_ID = "azureMonitorCommonAlertSchema"

# What the portal's own "copy link" produces for an alert instance; used when the payload
# carries no investigationLink (that field is still a limited preview), or one that is not a link
# to the Azure portal.
_PORTAL_ALERT_URL = "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/AlertDetails.ReactView/alertId~/"
# The one nesting limit: a body (or a mapping handed over) nested deeper than this many arrays and
# objects is refused at parse time, so every later step (freeze, thaw, canonical JSON, mapping)
# stays far from the interpreter's recursion limit. Real alerts nest about 8 levels.
MAX_DEPTH = 400
# An investigationLink is kept only when it is an https link to the Azure portal: no credentials,
# no port, nothing but URL characters (RFC 3986), and of a length a link has.
_PORTAL_LINK = re.compile(
    r"https://(?:[a-z0-9-]+\.)*portal\.azure\.com(?:[/?#][A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*)?\Z",
    re.IGNORECASE,
)
_PORTAL_LINK_MAX_CHARS = 4_096
# For the depth scan: escape pairs (a backslash and the character it escapes) go first, then
# strings, closed or running to the end of the text. Single-character classes, no groups repeated:
# each pass is linear whatever the text.
_JSON_ESCAPE = re.compile(r"\\.", re.DOTALL)
_JSON_STRING = re.compile(r'"[^"]*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class AlertKind(enum.StrEnum):
    """Which alert-context shape the alert carries, derived from ``monitoringService``."""

    METRIC = "metric"
    LOG = "log"
    LOG_V1 = "log_v1"
    ACTIVITY_LOG = "activity_log"
    SERVICE_HEALTH = "service_health"
    RESOURCE_HEALTH = "resource_health"
    SMART_DETECTOR = "smart_detector"
    PROMETHEUS = "prometheus"
    BUDGET = "budget"
    UNKNOWN = "unknown"


# Activity-log families never send Resolved (FACTS 3.4); budgets have no monitor state at all.
_STATELESS = frozenset(
    {AlertKind.ACTIVITY_LOG, AlertKind.SERVICE_HEALTH, AlertKind.RESOURCE_HEALTH, AlertKind.BUDGET}
)

# monitoringService with spaces, hyphens and case removed -> kind. Both spellings Microsoft
# uses ("Resource Health" / "ResourceHealth") fold to the same key.
_SERVICE_KINDS: Mapping[str, AlertKind] = {
    "platform": AlertKind.METRIC,
    "loganalytics": AlertKind.LOG_V1,
    "applicationinsights": AlertKind.LOG_V1,
    "logalertsv2": AlertKind.LOG,
    "simplelogalert": AlertKind.LOG,
    "servicehealth": AlertKind.SERVICE_HEALTH,
    "resourcehealth": AlertKind.RESOURCE_HEALTH,
    "smartdetector": AlertKind.SMART_DETECTOR,
    "prometheus": AlertKind.PROMETHEUS,
    "costalerts": AlertKind.BUDGET,
}

_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SEVERITY = re.compile(r"^sev([0-4])$", re.IGNORECASE)
_TIMESTAMP = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<fraction>\d+))?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Condition:
    """One criterion of ``alertContext.condition.allOf``, or the query of a log alert V1.

    Numbers are kept as text, formatted for display, because thresholds arrive as strings in
    some shapes and as numbers in others.
    """

    name: str | None
    operator: str | None
    threshold: str | None
    value: str | None
    time_aggregation: str | None
    dimensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Alert:
    """One common-schema alert. The mapping fields are deep read-only views of the payload."""

    alert_id: str
    alert_rule: str | None
    alert_rule_id: str | None
    severity: str | None
    signal_type: str | None
    monitor_condition: str
    monitoring_service: str | None
    target_ids: tuple[str, ...]
    configuration_items: tuple[str, ...]
    origin_alert_id: str | None
    fired_at: datetime | None
    resolved_at: datetime | None
    description: str | None
    essentials: Mapping[str, Any] = field(repr=False, hash=False)
    context: Mapping[str, Any] = field(repr=False, hash=False)
    custom_properties: Mapping[str, Any] | None = field(repr=False, hash=False)
    payload: Mapping[str, Any] = field(repr=False, hash=False)
    kind: AlertKind = AlertKind.UNKNOWN
    conditions: tuple[Condition, ...] = ()
    # The payload as canonical JSON (see correlation.canonical_payload), written at parse time
    # from the decoded document, which costs half of thawing the frozen view again; None when it
    # was not made there (a mapping handed over, or a value that cannot be written as UTF-8).
    canonical: bytes | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def is_resolved(self) -> bool:
        return self.monitor_condition == "Resolved"

    @property
    def is_stateless(self) -> bool:
        """Activity log, service health, resource health and budget alerts never resolve."""
        return self.kind in _STATELESS

    @property
    def subscription_ids(self) -> frozenset[str]:
        """Lower-cased subscription segments of ``alertId`` and every ``alertTargetIDs`` entry.

        Any segment is returned, GUID or not, so an allow-list check sees every subscription
        the payload claims.
        """
        found: set[str] = set()
        for resource_id in (self.alert_id, *self.target_ids):
            match = _SUBSCRIPTION.match(resource_id.strip())
            if match:
                found.add(match.group(1).lower())
        return frozenset(found)

    @property
    def portal_link(self) -> str:
        """The payload's ``investigationLink`` when it links to the Azure portal, else the
        bridge's own link to the alert (built from ``alertId``): never another site's link."""
        link = safe_portal_link(self.essentials.get("investigationLink"))
        return link if link is not None else _PORTAL_ALERT_URL + quote(self.alert_id, safe="")


def safe_portal_link(value: Any) -> str | None:
    """``value`` stripped when it is an ``https://portal.azure.com`` (or ``*.portal.azure.com``)
    link made of URL characters only; None otherwise (``javascript:``, ``data:``, other hosts,
    credentials, ports, backslashes, spaces, control characters)."""
    if not isinstance(value, str):
        return None
    link = value.strip()
    if len(link) > _PORTAL_LINK_MAX_CHARS or not _PORTAL_LINK.match(link):
        return None
    return link


def parse_alert(body: bytes | str | Mapping[str, Any]) -> Alert:
    """Parse one common-schema alert; raise :class:`PayloadError` naming the bad field.

    A body nested deeper than :data:`MAX_DEPTH` arrays and objects is refused before it is
    decoded (and a mapping handed over, before it is copied).
    """
    try:
        return _parse(body)
    except RecursionError:
        # Not reached with the depth limit in place; kept so no input can ever turn into a 503.
        raise PayloadError(_TOO_DEEP, field="body") from None


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """How deeply the JSON ``text`` nests arrays and objects (0 for a scalar), in linear time.

    Brackets inside strings do not count. When the text holds no more than ``limit`` opening
    brackets in all, its depth cannot exceed ``limit`` and that count is returned instead of
    the exact depth (enough to compare with the limit, and free for every real alert). Text that
    is not JSON gets a number too, never an error: the decoder refuses it afterwards.
    """
    openers = text.count("[") + text.count("{")
    if openers <= limit:
        return openers
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", _JSON_ESCAPE.sub("", text)))
    if limit > 0 and re.search(r"[\[{]{" + str(limit + 1) + "}", skeleton):
        # More than ``limit`` brackets opened in a row (the usual bomb): no need to count further.
        return limit + 1
    return max(accumulate(map(_BRACKET_STEP.__getitem__, skeleton.encode("ascii"))), default=0)


def parse_timestamp(value: str, field_name: str) -> datetime:
    """An ISO 8601 timestamp as a timezone-aware UTC datetime.

    Azure sends up to 7 fractional digits (``2019-03-22T13:58:24.3713213Z``); digits beyond
    microseconds are dropped, never rounded (rounding could carry into the next second).
    A timestamp without an offset is taken as UTC, which is what the schema documents.
    """
    match = _TIMESTAMP.match(value.strip())
    if not match:
        _fail(field_name, "is not an ISO 8601 timestamp")
    time_part = match.group("time")
    if time_part.count(":") == 1:
        time_part += ":00"
    fraction = (match.group("fraction") or "")[:6].ljust(6, "0")
    tz = (match.group("tz") or "Z").upper()
    try:
        moment = datetime.fromisoformat(f"{match.group('date')}T{time_part}.{fraction}")
        return moment.replace(tzinfo=_offset(tz)).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 pushed past the range by the offset
        _fail(field_name, "is not a valid date and time")


def thaw(value: Any) -> Any:
    """A JSON-serialisable copy of a frozen view (mappings to dicts, tuples to lists).

    Iterative: any depth, no recursion.
    """
    return _rebuild(value, dict, list, keys_as_text=False)


_TOO_DEEP = f"body is nested too deeply: more than {MAX_DEPTH} levels of arrays and objects (the limit)"


def _parse(body: bytes | str | Mapping[str, Any]) -> Alert:
    loaded = _load(body)
    if not isinstance(loaded, Mapping):
        _fail("body", "must be a JSON object")
    # Only what json.loads made is plain JSON as it stands; a mapping handed over may hold other
    # keys or views, and is canonicalised from its frozen copy when asked (as before).
    canonical = None if isinstance(body, Mapping) else canonical_json(loaded)
    # Frozen once, whole (the depth is checked on the way), and read from the frozen views only.
    document: Mapping[str, Any] = _freeze(loaded)
    schema_id = document.get("schemaId")
    if schema_id != SCHEMA_ID:
        if schema_id is None:
            _fail("schemaId", f"is missing; expected {SCHEMA_ID!r} (enable the common alert schema)")
        _fail("schemaId", f"is {_short(schema_id)}; expected {SCHEMA_ID!r}")
    data = document.get("data")
    if not isinstance(data, Mapping):
        _fail("data", "is missing" if data is None else "must be an object")
    essentials = data.get("essentials")
    if not isinstance(essentials, Mapping):
        _fail("data.essentials", "is missing" if essentials is None else "must be an object")
    context = data.get("alertContext")
    if context is None:
        context = _EMPTY
    elif not isinstance(context, Mapping):
        _fail("data.alertContext", "must be an object")
    custom = data.get("customProperties")
    if custom is not None and not isinstance(custom, Mapping):
        _fail("data.customProperties", "must be an object or null")

    alert_id = essentials.get("alertId")
    if alert_id is None:
        _fail("data.essentials.alertId", "is missing")
    if not isinstance(alert_id, str):
        _fail("data.essentials.alertId", "must be a string")
    if not alert_id.strip():
        _fail("data.essentials.alertId", "must not be empty")

    monitoring_service = _optional_text(essentials, "monitoringService")
    kind = _kind(monitoring_service, context)
    return Alert(
        alert_id=alert_id.strip(),
        alert_rule=_optional_text(essentials, "alertRule"),
        alert_rule_id=_rule_id(essentials),
        severity=_severity(essentials),
        signal_type=_optional_text(essentials, "signalType"),
        monitor_condition=_monitor_condition(essentials),
        monitoring_service=monitoring_service,
        target_ids=_text_list(essentials, "alertTargetIDs"),
        configuration_items=_text_list(essentials, "configurationItems"),
        origin_alert_id=_optional_text(essentials, "originAlertId"),
        fired_at=_optional_time(essentials, "firedDateTime"),
        resolved_at=_optional_time(essentials, "resolvedDateTime"),
        description=_optional_text(essentials, "description"),
        essentials=essentials,
        context=context,
        custom_properties=custom,
        payload=document,
        kind=kind,
        conditions=_conditions(kind, context),
        canonical=canonical,
    )


def canonical_json(document: Any) -> bytes | None:
    """``document`` (plain JSON values) as canonical JSON: keys sorted, no spaces, UTF-8.

    None when it cannot be written here (an unpaired surrogate from a text body, or a stack too
    deep for the encoder): whoever needs it then makes it from the frozen view, and meets the
    same problem where it always met it.
    """
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return None


def _load(body: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(body, Mapping):
        return body
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            # utf-8-sig: a byte-order mark is harmless, so it is not a reason to drop an alert.
            text = bytes(body).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise PayloadError(
                f"body is not valid UTF-8 (byte {exc.start})", field="body"
            ) from None
    elif isinstance(body, str):
        text = body
    else:
        raise PayloadError("body must be bytes, text or an object", field="body")
    if not text.strip():
        _fail("body", "is empty")
    if nesting_depth(text) > MAX_DEPTH:
        # Refused before decoding: the decoder (and every later walk) never sees such a body.
        raise PayloadError(_TOO_DEEP, field="body")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"body is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", field="body"
        ) from None
    except ValueError as exc:
        # NaN/Infinity, or an integer literal too long to convert.
        raise PayloadError(f"body is not valid JSON ({exc})", field="body") from None
    if _SURROGATE_ESCAPE.search(text):
        # json accepts "\ud800" alone, but such a string cannot be encoded, logged or sent on.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError("body holds an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF)",
                               field="body") from None
    return data


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


_EMPTY: Mapping[str, Any] = MappingProxyType({})
_SCALARS = (str, int, float, type(None))


def _freeze(value: Any) -> Any:
    """A deep read-only copy (mappings to read-only views with text keys, lists to tuples);
    refuses, with :class:`PayloadError`, a value nested deeper than :data:`MAX_DEPTH`."""
    return _rebuild(value, MappingProxyType, tuple, keys_as_text=True, limit=MAX_DEPTH)


def _rebuild(
    value: Any,
    make_mapping: Callable[[dict[Any, Any]], Any],
    make_sequence: Callable[[list[Any]], Any],
    *,
    keys_as_text: bool,
    limit: int | None = None,
) -> Any:
    """``value`` copied with every mapping and list/tuple rebuilt by ``make_*``, without recursion.

    An explicit stack of (items, copy, is_mapping) frames replaces the call stack, so the depth
    costs memory, not interpreter frames; ``limit``, when given, bounds it.
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        stack: list[tuple[Any, Any, bool]] = [(iter(value.items()), {}, True)]
    elif isinstance(value, list | tuple):
        stack = [(iter(value), [], False)]
    else:
        return value
    keys: list[Any] = []  # the key under which each open frame goes into its parent mapping
    while True:
        items, copy, is_mapping = stack[-1]
        for entry in items:
            if is_mapping:
                key, item = entry
                if keys_as_text and type(key) is not str:
                    key = str(key)
            else:
                key, item = None, entry
            if isinstance(item, _SCALARS):
                pass
            # dict and list first by exact type: the Mapping check is an ABC's (slow), and a list
            # is never a Mapping.
            elif type(item) is dict or (type(item) is not list and isinstance(item, Mapping)):
                if limit is not None and len(stack) >= limit:
                    raise PayloadError(_TOO_DEEP, field="body")
                keys.append(key)
                stack.append((iter(item.items()), {}, True))
                break
            elif isinstance(item, list | tuple):
                if limit is not None and len(stack) >= limit:
                    raise PayloadError(_TOO_DEEP, field="body")
                keys.append(key)
                stack.append((iter(item), [], False))
                break
            if is_mapping:
                copy[key] = item
            else:
                copy.append(item)
        else:
            stack.pop()
            done = make_mapping(copy) if is_mapping else make_sequence(copy)
            if not stack:
                return done
            key = keys.pop()
            _, parent, parent_is_mapping = stack[-1]
            if parent_is_mapping:
                parent[key] = done
            else:
                parent.append(done)


def _fail(field_name: str, problem: str) -> NoReturn:
    raise PayloadError(f"{field_name} {problem}", field=field_name)


def _short(value: Any) -> str:
    text = repr(thaw(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _optional_text(essentials: Mapping[str, Any], key: str) -> str | None:
    value = essentials.get(key)
    if value is None or isinstance(value, str):
        return value
    _fail(f"data.essentials.{key}", "must be a string or null")


def _rule_id(essentials: Mapping[str, Any]) -> str | None:
    # The schema table spells it alertRuleID, the sample payload alertRuleId.
    for key in ("alertRuleID", "alertRuleId"):
        value = _optional_text(essentials, key)
        if value:
            return value
    return None


def _severity(essentials: Mapping[str, Any]) -> str | None:
    value = _optional_text(essentials, "severity")
    if value is None:
        return None
    match = _SEVERITY.match(value.strip())
    # "sev2" and "Sev2" are the same severity; anything else is kept as sent.
    return f"Sev{match.group(1)}" if match else value


def _monitor_condition(essentials: Mapping[str, Any]) -> str:
    value = essentials.get("monitorCondition")
    name = "data.essentials.monitorCondition"
    if value is None:
        _fail(name, "is missing")
    if not isinstance(value, str):
        _fail(name, "must be a string")
    folded = value.strip().lower()
    if folded == "fired":
        return "Fired"
    if folded == "resolved":
        return "Resolved"
    _fail(name, f"is {_short(value)}; expected 'Fired' or 'Resolved'")


def _text_list(essentials: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = essentials.get(key)
    name = f"data.essentials.{key}"
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        _fail(name, "must be a list of strings or null")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            _fail(f"{name}[{index}]", "must be a string")
        if item.strip():
            items.append(item.strip())
    return tuple(items)


def _optional_time(essentials: Mapping[str, Any], key: str) -> datetime | None:
    value = essentials.get(key)
    name = f"data.essentials.{key}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        _fail(name, "must be a timestamp string or null")
    return parse_timestamp(value, name)


def _offset(tz: str) -> timezone:
    if tz == "Z":
        return UTC
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or "0")
    if hours > 23 or minutes > 59:
        raise ValueError("offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _kind(monitoring_service: str | None, context: Mapping[str, Any]) -> AlertKind:
    if not monitoring_service:
        return AlertKind.UNKNOWN
    key = re.sub(r"[\s_\-]", "", monitoring_service.lower())
    if key.startswith("activitylog"):
        return AlertKind.ACTIVITY_LOG
    kind = _SERVICE_KINDS.get(key, AlertKind.UNKNOWN)
    if kind is AlertKind.LOG_V1 and "SearchQuery" not in context and "condition" in context:
        # A Log Analytics / Application Insights alert from the scheduled-query API carries
        # the V2 context; read it as such.
        return AlertKind.LOG
    return kind


def _conditions(kind: AlertKind, context: Mapping[str, Any]) -> tuple[Condition, ...]:
    if kind is AlertKind.LOG_V1 or ("SearchQuery" in context and "condition" not in context):
        return (
            Condition(
                name=display_text(context.get("SearchQuery")),
                operator=display_text(context.get("Operator")),
                threshold=display_text(context.get("Threshold")),
                value=display_text(context.get("ResultCount")),
                time_aggregation=None,
                dimensions=_dimensions(context.get("Dimensions")),
            ),
        )
    condition = context.get("condition")
    if not isinstance(condition, Mapping):
        return ()
    criteria = condition.get("allOf")
    if not isinstance(criteria, tuple):
        return ()
    found: list[Condition] = []
    for criterion in criteria:
        if not isinstance(criterion, Mapping):
            continue
        name = criterion.get("metricName")
        if name is None:
            name = criterion.get("searchQuery")
        found.append(
            Condition(
                name=display_text(name),
                operator=display_text(criterion.get("operator")),
                threshold=display_text(criterion.get("threshold")),
                value=display_text(criterion.get("metricValue")),
                time_aggregation=display_text(criterion.get("timeAggregation")),
                dimensions=_dimensions(criterion.get("dimensions")),
            )
        )
    return tuple(found)


def _dimensions(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, tuple):
        return ()
    pairs: list[tuple[str, str]] = []
    for entry in value:
        if isinstance(entry, Mapping) and entry.get("name") is not None:
            pairs.append((display_text(entry.get("name")) or "", display_text(entry.get("value")) or ""))
    return tuple(pairs)


def display_text(value: Any) -> str | None:
    """Scalar payload values as text; containers as compact JSON; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(thaw(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
