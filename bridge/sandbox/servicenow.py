"""A ServiceNow stand-in: a real HTTP server on loopback that behaves like an instance where it matters.

It serves the Table API (``/api/now/table`` and ``/api/now/v2/table``) and the OAuth token
endpoint (``/oauth_token.do``) from an in-memory store, with the instance behaviour a client
has to cope with: values as strings, generated numbers and sys_ids, the incident priority
matrix, journal fields, silent truncation, silently ignored unknown fields, the resolve data
policy, reopening (Resolved back to In Progress, counted; a Closed incident cannot be reopened),
reference links, display values, and ServiceNow's error bodies. A reference column stores
whatever it is given, a name included, which then shows no display value (whether an instance
would look such a name up is not modelled: clients send sys_ids). The fault injector, the
request log and the loopback server come from :mod:`bridge.sandbox.common` (re-exported here):
faults add latency, error statuses, dropped connections and lost responses for tests and benchmarks.

Run it alone with ``python -m bridge.sandbox.servicenow --port 8080``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

from bridge.sandbox.common import (
    FAULT_KINDS,
    FaultInjector,
    FaultRule,
    LoopbackStandIn,
    RequestRecord,
    Response,
    json_or_none,
    serve_until_stopped,
    status_phrase,
)
from bridge.sandbox.snow_query import EncodedQuery, parse_query

__all__ = [
    "FAULT_KINDS",
    "INCIDENT_STATES",
    "PRIORITY_MATRIX",
    "TABLES",
    "FaultInjector",
    "FaultRule",
    "FieldSpec",
    "RequestRecord",
    "ServiceNowStandIn",
    "TableSchema",
    "main",
]

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10000  # an instance's default page size for the Table API
REFRESH_TOKEN_LIFETIME_SECONDS = 100 * 24 * 3600  # ServiceNow's default refresh token lifespan


# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class FieldSpec:
    """One column: its kind, its maximum length (strings are cut there silently), and more.

    ``kind`` is one of ``string``, ``integer``, ``boolean``, ``datetime``, ``reference`` (then
    ``reference`` names the target table) or ``journal`` (``work_notes``, ``comments``).
    ``read_only`` fields are set by the instance and ignored on writes through the API.
    """

    kind: str = "string"
    max_length: int = 40
    reference: str | None = None
    choices: Mapping[str, str] = field(default_factory=dict)
    read_only: bool = False


@dataclass(frozen=True)
class TableSchema:
    """A table: its fields (inherited ones included), parent table, number prefix, display field."""

    name: str
    fields: Mapping[str, FieldSpec]
    parent: str | None = None
    number_prefix: str | None = None
    display_field: str = "name"


def _string(max_length: int) -> FieldSpec:
    return FieldSpec("string", max_length)


def _ref(table: str) -> FieldSpec:
    return FieldSpec("reference", 32, reference=table)


def _choice(choices: Mapping[str, str], *, read_only: bool = False) -> FieldSpec:
    return FieldSpec("integer", 40, choices=choices, read_only=read_only)


_DATETIME = FieldSpec("datetime", 40)
_BOOLEAN = FieldSpec("boolean", 40)
_INTEGER = FieldSpec("integer", 40)
_JOURNAL = FieldSpec("journal", 4000)

_SYSTEM_FIELDS: dict[str, FieldSpec] = {
    "sys_id": FieldSpec("string", 32, read_only=True),
    "sys_class_name": FieldSpec("string", 80, read_only=True),
    "sys_created_on": FieldSpec("datetime", 40, read_only=True),
    "sys_created_by": FieldSpec("string", 40, read_only=True),
    "sys_updated_on": FieldSpec("datetime", 40, read_only=True),
    "sys_updated_by": FieldSpec("string", 40, read_only=True),
    "sys_mod_count": FieldSpec("integer", 40, read_only=True),
}

INCIDENT_STATES = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
_IMPACT = {"1": "1 - High", "2": "2 - Medium", "3": "3 - Low"}
_PRIORITY = {"1": "1 - Critical", "2": "2 - High", "3": "3 - Moderate", "4": "4 - Low", "5": "5 - Planning"}
_OPERATIONAL_STATUS = {
    "1": "Operational",
    "2": "Non-Operational",
    "3": "Repair in Progress",
    "4": "DR Standby",
    "5": "Ready",
    "6": "Retired",
}
# ServiceNow's default priority data lookup: (impact, urgency) -> priority.
PRIORITY_MATRIX: dict[tuple[str, str], str] = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("2", "1"): "2",
    ("1", "3"): "3",
    ("2", "2"): "3",
    ("3", "1"): "3",
    ("2", "3"): "4",
    ("3", "2"): "4",
    ("3", "3"): "5",
}
_JOURNAL_LABELS = {"work_notes": "Work notes", "comments": "Additional comments"}
_RESOLVED_STATES = ("6", "7")
_OPEN_STATES = ("1", "2", "3")
_MANDATORY_ON_RESOLVE = (("close_code", "Resolution code"), ("close_notes", "Resolution notes"))

_INCIDENT_FIELDS: dict[str, FieldSpec] = {
    **_SYSTEM_FIELDS,
    "number": _string(40),
    "short_description": _string(160),
    "description": _string(4000),
    "correlation_id": _string(100),
    "correlation_display": _string(100),
    "state": _choice(INCIDENT_STATES),
    "impact": _choice(_IMPACT),
    "urgency": _choice(_IMPACT),
    "priority": _choice(_PRIORITY, read_only=True),
    "severity": _choice(_IMPACT),
    "active": _BOOLEAN,
    "category": _string(40),
    "subcategory": _string(40),
    "contact_type": _string(40),
    "close_code": _string(40),
    "close_notes": _string(4000),
    "hold_reason": _INTEGER,
    "work_notes": _JOURNAL,
    "comments": _JOURNAL,
    "cmdb_ci": _ref("cmdb_ci"),
    "business_service": _ref("cmdb_ci_service"),
    "service_offering": _ref("service_offering"),
    "company": _ref("core_company"),
    "location": _ref("cmn_location"),
    "caller_id": _ref("sys_user"),
    "opened_by": _ref("sys_user"),
    "assigned_to": _ref("sys_user"),
    "resolved_by": _ref("sys_user"),
    "assignment_group": _ref("sys_user_group"),
    "opened_at": _DATETIME,
    "resolved_at": _DATETIME,
    "closed_at": _DATETIME,
    # Set by the instance when a resolved incident is reopened ("Last reopened by/at", "Reopen count").
    "reopen_count": FieldSpec("integer", 40, read_only=True),
    "reopened_by": FieldSpec("reference", 32, reference="sys_user", read_only=True),
    "reopened_time": FieldSpec("datetime", 40, read_only=True),
}
_CMDB_CI_FIELDS: dict[str, FieldSpec] = {
    **_SYSTEM_FIELDS,
    "name": _string(255),
    "object_id": _string(255),
    "correlation_id": _string(512),
    "short_description": _string(1000),
    "operational_status": _choice(_OPERATIONAL_STATUS),
    "install_status": _INTEGER,
    "category": _string(40),
    "subcategory": _string(40),
    "ip_address": _string(255),
    "fqdn": _string(255),
    "discovery_source": _string(40),
    "support_group": _ref("sys_user_group"),
}

TABLES: dict[str, TableSchema] = {
    schema.name: schema
    for schema in (
        TableSchema("incident", _INCIDENT_FIELDS, number_prefix="INC", display_field="number"),
        TableSchema("cmdb_ci", _CMDB_CI_FIELDS),
        TableSchema(
            "cmdb_ci_vm_instance",
            {**_CMDB_CI_FIELDS, "vm_inst_id": _string(255), "state": _string(40)},
            parent="cmdb_ci",
        ),
        TableSchema(
            "cmdb_ci_server",
            {**_CMDB_CI_FIELDS, "host_name": _string(255), "os": _string(40)},
            parent="cmdb_ci",
        ),
        TableSchema("cmdb_ci_service", _CMDB_CI_FIELDS, parent="cmdb_ci"),
        TableSchema(
            "service_offering",
            {**_CMDB_CI_FIELDS, "parent": _ref("cmdb_ci_service")},
            parent="cmdb_ci_service",
        ),
        TableSchema(
            "core_company",
            {**_SYSTEM_FIELDS, "name": _string(80), "customer": _BOOLEAN, "vendor": _BOOLEAN},
        ),
        TableSchema(
            "cmn_location",
            {**_SYSTEM_FIELDS, "name": _string(100), "full_name": _string(255), "city": _string(100)},
        ),
        TableSchema(
            "sys_user",
            {
                **_SYSTEM_FIELDS,
                "user_name": _string(40),
                "name": _string(151),
                "email": _string(100),
                "active": _BOOLEAN,
            },
        ),
        TableSchema(
            "sys_user_group",
            {
                **_SYSTEM_FIELDS,
                "name": _string(80),
                "description": _string(1000),
                "email": _string(100),
                "active": _BOOLEAN,
            },
        ),
    )
}


def _is_a(tables: Mapping[str, TableSchema], table: str, ancestor: str) -> bool:
    """Whether ``table`` is ``ancestor`` or extends it (cmdb_ci_vm_instance is a cmdb_ci)."""
    current: str | None = table
    while current is not None:
        if current == ancestor:
            return True
        schema = tables.get(current)
        current = schema.parent if schema else None
    return False


# --------------------------------------------------------------------------------------------
# Errors


class _ApiError(Exception):
    """A request the instance refuses; rendered as ServiceNow's error body."""

    def __init__(
        self, status: int, message: str, detail: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


def _error_body(message: str, detail: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def _error_response(error: _ApiError) -> Response:
    return Response.of_json(error.status, _error_body(error.message, error.detail), error.headers)


def _fault_error_body(status: int) -> dict[str, Any]:
    """ServiceNow's error body for an injected status fault."""
    detail = "Rate limit exceeded" if status == 429 else f"Injected fault: HTTP {status}"
    return _error_body(status_phrase(status), detail)


# --------------------------------------------------------------------------------------------
# Store


@dataclass(frozen=True)
class _JournalEntry:
    created_on: str
    author: str
    label: str
    text: str

    def render(self) -> str:
        return f"{self.created_on} - {self.author} ({self.label})\n{self.text}\n\n"


def _to_text(raw: Any) -> str:
    """Turn a JSON value into the string an instance would store."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float):
        return str(raw)
    if isinstance(raw, Mapping) and "value" in raw:
        return _to_text(raw["value"])  # a reference object sent back as it was read
    return json.dumps(raw)


def _normalise(text: str, spec: FieldSpec) -> str:
    if spec.kind == "boolean" and text:
        return "true" if text.strip().lower() in ("true", "1") else "false"
    if spec.kind == "string":
        return text[: spec.max_length]  # an instance truncates silently, without an error
    return text


# Columns whose equality conditions are answered from an index (how the bridge finds its incidents
# and its CIs): a lookup then costs the same with ten thousand incidents as with ten, so a filled
# stand-in is never what a benchmark measures.
_INDEXED_FIELDS = ("correlation_id", "object_id", "name")


class _Index:
    """sys_ids by the case-folded value of each indexed column, in insertion order of the rows.

    It only narrows the rows a query looks at: the query is still tested against each of them, so
    results are exactly those of a scan.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, set[str]]] = {name: {} for name in _INDEXED_FIELDS}
        self._position: dict[str, int] = {}
        self._next = 0

    def clear(self) -> None:
        for buckets in self._buckets.values():
            buckets.clear()
        self._position.clear()

    def add(self, row: Mapping[str, str]) -> None:
        sys_id = row["sys_id"]
        if sys_id not in self._position:
            self._position[sys_id] = self._next
            self._next += 1
        for name, buckets in self._buckets.items():
            value = row.get(name, "")
            if value:
                buckets.setdefault(value.casefold(), set()).add(sys_id)

    def remove(self, row: Mapping[str, str], *, forget: bool = True) -> None:
        sys_id = row["sys_id"]
        for name, buckets in self._buckets.items():
            value = row.get(name, "")
            bucket = buckets.get(value.casefold()) if value else None
            if bucket is not None:
                bucket.discard(sys_id)
                if not bucket:
                    del buckets[value.casefold()]
        if forget:
            self._position.pop(sys_id, None)

    def candidates(self, query: EncodedQuery) -> list[str] | None:
        """The sys_ids that can match ``query`` (oldest first), or None when it needs a scan."""
        if len(query.groups) != 1:
            return None  # ^NQ adds rows from other groups
        for alternatives in query.groups[0]:
            if len(alternatives) != 1:
                continue  # an ^OR term can match rows outside any one bucket
            condition = alternatives[0]
            buckets = self._buckets.get(condition.field)
            # "=" compares case-folded, like the keys; an empty value matches rows without the column.
            if buckets is not None and condition.op == "=" and condition.value:
                found = buckets.get(condition.value.casefold(), ())
                return sorted(found, key=self._position.__getitem__)
        return None


class _Store:
    """All records and journals, behind one lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._rows: dict[str, dict[str, str]] = {}
        self._index = _Index()
        self._journals: dict[tuple[str, str], list[_JournalEntry]] = {}
        self._counters: dict[str, int] = {}
        # Seeding may name CMDB classes the built-in schema lacks; they become subclasses here.
        self._tables: dict[str, TableSchema] = dict(TABLES)

    def schema(self, table: str) -> TableSchema | None:
        with self._lock:
            return self._tables.get(table)

    def table_names(self) -> list[str]:
        with self._lock:
            return sorted(self._tables)

    def is_a(self, table: str, ancestor: str) -> bool:
        return _is_a(self._tables, table, ancestor)

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def now(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%d %H:%M:%S")

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._index.clear()
            self._journals.clear()
            self._counters.clear()

    # -- reads ---------------------------------------------------------------------------

    def field_spec(self, table: str, name: str) -> FieldSpec | None:
        """The spec of a field, following dot-walks through reference fields."""
        head, _, rest = name.partition(".")
        spec = self._tables[table].fields.get(head)
        if spec is None or not rest:
            return spec
        if spec.kind != "reference" or spec.reference is None:
            return None
        return self.field_spec(spec.reference, rest)

    def _owner(
        self, table: str, row: Mapping[str, str], name: str
    ) -> tuple[str, Mapping[str, str] | None, str]:
        """(table, row, field) that actually holds a possibly dot-walked field."""
        head, _, rest = name.partition(".")
        if not rest:
            return table, row, head
        spec = self._tables[table].fields[head]
        assert spec.reference is not None
        target = self._rows.get(row.get(head, ""))
        if target is None or not self.is_a(target["sys_class_name"], spec.reference):
            return spec.reference, None, rest
        return self._owner(spec.reference, target, rest)

    def value(self, table: str, row: Mapping[str, str], name: str) -> str:
        """A field's stored value as queries see it (journal fields: their history text)."""
        owner_table, owner, leaf = self._owner(table, row, name)
        if owner is None:
            return ""
        spec = self._tables[owner_table].fields.get(leaf)
        if spec is not None and spec.kind == "journal":
            return self._history(owner["sys_id"], leaf)
        return owner.get(leaf, "")

    def display(self, table: str, row: Mapping[str, str], name: str) -> str:
        owner_table, owner, leaf = self._owner(table, row, name)
        if owner is None:
            return ""
        spec = self._tables[owner_table].fields.get(leaf)
        raw = owner.get(leaf, "")
        if spec is None:
            return raw
        if spec.kind == "journal":
            return self._history(owner["sys_id"], leaf)
        if spec.choices:
            return spec.choices.get(raw, raw)
        if spec.kind == "reference" and spec.reference is not None:
            target = self._rows.get(raw)
            if target is None:
                return ""
            return target.get(self._tables[target["sys_class_name"]].display_field, "")
        return raw

    def _history(self, sys_id: str, name: str) -> str:
        entries = self._journals.get((sys_id, name), [])
        return "".join(entry.render() for entry in reversed(entries))

    def journal(self, sys_id: str, name: str) -> list[str]:
        with self._lock:
            return [entry.text for entry in self._journals.get((sys_id, name), [])]

    def get(self, table: str, sys_id: str) -> dict[str, str] | None:
        with self._lock:
            row = self._rows.get(sys_id)
            if row is None or not self.is_a(row["sys_class_name"], table):
                return None
            return dict(row)

    def select(self, table: str, query: EncodedQuery) -> list[dict[str, str]]:
        with self._lock:
            candidates = self._index.candidates(query)
            scanned = self._rows.values() if candidates is None else [self._rows[s] for s in candidates]
            rows = [
                dict(row)
                for row in scanned
                if self.is_a(row["sys_class_name"], table)
                and query.matches(functools.partial(self.value, table, row))
            ]
            # Stable sorts applied last key first give a multi-key ORDERBY.
            for order in reversed(query.order):
                spec = self.field_spec(table, order.field)
                numeric = spec is not None and spec.kind == "integer"
                key = functools.partial(self._sort_key, table, order.field, numeric)
                rows.sort(key=key, reverse=order.descending)
            return rows

    def _sort_key(
        self, table: str, name: str, numeric: bool, row: Mapping[str, str]
    ) -> tuple[int, float, str]:
        value = self.value(table, row, name)
        # Empty values first, like NULLs in an ascending MySQL sort.
        if value == "":
            return (0, 0.0, "")
        if numeric:
            try:
                return (1, float(value), "")
            except ValueError:
                pass
        return (2, 0.0, value.casefold())

    def rows(self, table: str) -> list[dict[str, str]]:
        with self._lock:
            return [dict(row) for row in self._rows.values() if self.is_a(row["sys_class_name"], table)]

    # -- writes --------------------------------------------------------------------------

    def insert(self, table: str, values: Mapping[str, Any], user: str, *, trusted: bool) -> dict[str, str]:
        """Insert a record. ``trusted`` (direct seeding) may set system fields and skips data policy."""
        with self._lock:
            cls = self._record_class(table, _to_text(values.get("sys_class_name")), trusted=trusted)
            schema = self._tables[cls]
            now = self.now()
            row = {name: "" for name, spec in schema.fields.items() if spec.kind != "journal"}
            notes = self._apply(schema, row, values, trusted=trusted, inserting=True)
            if not re.fullmatch(r"[0-9a-f]{32}", row["sys_id"]) or row["sys_id"] in self._rows:
                row["sys_id"] = secrets.token_hex(16)
            row["sys_class_name"] = cls
            for stamp in ("sys_created_on", "sys_updated_on"):
                row[stamp] = row[stamp] or now
            for author in ("sys_created_by", "sys_updated_by"):
                row[author] = row[author] or user
            row["sys_mod_count"] = row["sys_mod_count"] or "0"
            is_incident = self.is_a(cls, "incident")
            if is_incident:
                for name, default in (("state", "1"), ("impact", "3"), ("urgency", "3"), ("opened_at", now)):
                    row[name] = row[name] or default
            elif self.is_a(cls, "cmdb_ci"):
                row["operational_status"] = row["operational_status"] or "1"
            _derive(is_incident, row, None, now)
            if not trusted:
                _check_data_policy(is_incident, row)
            if schema.number_prefix and not row.get("number"):
                row["number"] = self._next_number(schema.number_prefix)
            self._rows[row["sys_id"]] = row
            self._index.add(row)
            self._append_notes(row["sys_id"], notes, user, now)
            return dict(row)

    def _record_class(self, table: str, requested: str, *, trusted: bool) -> str:
        """The class a new record gets: the table, or a subclass named by ``sys_class_name``."""
        if trusted and requested not in self._tables and re.fullmatch(r"[a-z][a-z0-9_]*", requested):
            parent = self._tables[table]
            self._tables[requested] = TableSchema(
                requested, parent.fields, table, parent.number_prefix, parent.display_field
            )
        return requested if requested in self._tables and self.is_a(requested, table) else table

    def update(self, table: str, sys_id: str, values: Mapping[str, Any], user: str) -> dict[str, str]:
        with self._lock:
            current = self._rows.get(sys_id)
            if current is None or not self.is_a(current["sys_class_name"], table):
                raise _not_found()
            cls = current["sys_class_name"]
            now = self.now()
            row = dict(current)
            notes = self._apply(self._tables[cls], row, values, trusted=False, inserting=False)
            is_incident = self.is_a(cls, "incident")
            _check_reopen(is_incident, row, current)
            _derive(is_incident, row, current, now)
            if is_incident and current["state"] == "6" and row["state"] in _OPEN_STATES:
                # The instance's reopen: counted, with who and when; close code and notes stay.
                row["reopen_count"] = str(int(row["reopen_count"] or "0") + 1)
                row["reopened_by"] = self._user_id(user)
                row["reopened_time"] = now
            _check_data_policy(is_incident, row)
            if row == current and not notes:
                return dict(current)  # an instance skips an update that changes nothing
            row["sys_updated_on"] = now
            row["sys_updated_by"] = user
            row["sys_mod_count"] = str(int(row["sys_mod_count"] or "0") + 1)
            self._index.remove(current, forget=False)
            self._rows[sys_id] = row
            self._index.add(row)
            self._append_notes(sys_id, notes, user, now)
            return dict(row)

    def _user_id(self, user: str) -> str:
        """The sys_id of the sys_user record named ``user``; "" when none is seeded."""
        for row in self._rows.values():
            if self.is_a(row["sys_class_name"], "sys_user") and row.get("user_name", "").casefold() == user.casefold():
                return row["sys_id"]
        return ""

    def delete(self, table: str, sys_id: str) -> None:
        with self._lock:
            current = self._rows.get(sys_id)
            if current is None or not self.is_a(current["sys_class_name"], table):
                raise _not_found()
            del self._rows[sys_id]
            self._index.remove(current)
            for key in [key for key in self._journals if key[0] == sys_id]:
                del self._journals[key]

    def _apply(
        self,
        schema: TableSchema,
        row: dict[str, str],
        values: Mapping[str, Any],
        *,
        trusted: bool,
        inserting: bool,
    ) -> list[tuple[str, str]]:
        """Write known, writable fields into ``row``; return the journal entries to append."""
        notes: list[tuple[str, str]] = []
        for name, raw in values.items():
            spec = schema.fields.get(name)
            # An instance accepts a client-chosen sys_id on insert, never on update.
            if spec is None or name in ("sys_class_name", "priority"):
                continue  # unknown fields are ignored without an error, like an instance
            if spec.read_only and not trusted and not (inserting and name == "sys_id"):
                continue  # unknown and read-only fields are ignored without an error, like an instance
            if name == "sys_id" and not inserting:
                continue
            text = _to_text(raw)
            if spec.kind == "journal":
                if text.strip():
                    notes.append((name, text))
                continue
            row[name] = _normalise(text, spec)
        return notes

    def _append_notes(self, sys_id: str, notes: Sequence[tuple[str, str]], user: str, now: str) -> None:
        for name, text in notes:
            entry = _JournalEntry(now, user, _JOURNAL_LABELS.get(name, name), text)
            self._journals.setdefault((sys_id, name), []).append(entry)

    def _next_number(self, prefix: str) -> str:
        count = self._counters.get(prefix, 10000) + 1
        self._counters[prefix] = count
        return f"{prefix}{count:07d}"


def _derive(is_incident: bool, row: dict[str, str], before: Mapping[str, str] | None, now: str) -> None:
    """Fields the instance computes: priority, active, resolved/closed stamps."""
    if not is_incident:
        return
    row["priority"] = PRIORITY_MATRIX.get((row["impact"], row["urgency"]), "5")
    state = row["state"]
    previous = before.get("state") if before is not None else None
    if state == "6" and previous != "6":
        row["resolved_at"] = now
    if state == "7" and previous != "7":
        row["closed_at"] = now
        row["resolved_at"] = row["resolved_at"] or now
    row["active"] = "false" if state in ("7", "8") else "true"


def _check_reopen(is_incident: bool, row: Mapping[str, str], before: Mapping[str, str]) -> None:
    """Closed is final: an instance reopens only resolved incidents (its documentation: "Closed
    incidents cannot be reopened"); the stand-in refuses as a business rule would (its wording)."""
    if is_incident and before.get("state") == "7" and row.get("state") != "7":
        raise _ApiError(
            403,
            "Operation Failed",
            "Operation against file 'incident' was aborted by Business Rule 'Closed incidents cannot be reopened'",
        )


def _check_data_policy(is_incident: bool, row: Mapping[str, str]) -> None:
    if not is_incident or row.get("state") not in _RESOLVED_STATES:
        return
    missing = [label for name, label in _MANDATORY_ON_RESOLVE if not row.get(name, "").strip()]
    if missing:
        raise _ApiError(
            403,
            "Data Policy Exception: The following fields are mandatory: " + ", ".join(missing),
            "Operation against table 'incident' aborted by a data policy: a resolved or closed "
            "incident needs close_code and close_notes",
        )


def _not_found() -> _ApiError:
    return _ApiError(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")


# --------------------------------------------------------------------------------------------
# OAuth tokens


class _TokenStore:
    def __init__(self, clock: Callable[[], float], lifetime: int) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._lock = threading.Lock()
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, tuple[str, float]] = {}

    def issue(self, user: str, refresh_token: str | None = None) -> dict[str, Any]:
        now = self._clock()
        access = secrets.token_urlsafe(32)
        with self._lock:
            self._access[access] = (user, now + self._lifetime)
            if refresh_token is None:
                refresh_token = secrets.token_urlsafe(32)
                self._refresh[refresh_token] = (user, now + REFRESH_TOKEN_LIFETIME_SECONDS)
        return {
            "access_token": access,
            "refresh_token": refresh_token,
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": self._lifetime,
        }

    def user_for(self, token: str) -> str | None:
        return self._lookup(self._access, token)

    def user_for_refresh(self, token: str) -> str | None:
        return self._lookup(self._refresh, token)

    def _lookup(self, tokens: Mapping[str, tuple[str, float]], token: str) -> str | None:
        with self._lock:
            entry = tokens.get(token)
        if entry is None or self._clock() >= entry[1]:
            return None
        return entry[0]

    def expire_all(self) -> None:
        now = self._clock()
        with self._lock:
            self._access = {token: (user, min(expiry, now)) for token, (user, expiry) in self._access.items()}


# --------------------------------------------------------------------------------------------
# HTTP


_TABLE_PATH_RE = re.compile(r"/api/now(?:/v[12])?/table/(?P<table>[^/]+)(?:/(?P<sys_id>[^/]+))?")
_NOT_AUTHENTICATED = ("User Not Authenticated", "Required to provide Auth information")


def _decode_basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# The stand-in


class ServiceNowStandIn(LoopbackStandIn):
    """A ServiceNow instance on loopback for tests, benchmarks, the demo and ``serve --sandbox``.

    ``ServiceNowStandIn(host="127.0.0.1", port=0, username=..., password=..., client_id=...,
    client_secret=..., token_lifetime_seconds=1800, seed={"cmdb_ci": [...]}, clock=time.time)``;
    port 0 picks a free port. ``start()`` returns self; ``stop()`` shuts down promptly; it is a
    context manager too. ``url`` is the base URL (``http://127.0.0.1:54321``). The lifecycle,
    the fault injector and the request log come from :class:`~bridge.sandbox.common.LoopbackStandIn`.

    Inspect and seed: ``records(table)`` (copies, insertion order, subclass rows included),
    ``journal(table, sys_id, field="work_notes")`` (entry texts, oldest first),
    ``insert(table, values)`` (same defaults as a POST; may set system fields; no data policy),
    ``requests`` (a list of :class:`RequestRecord`), ``reset()`` (records back to the seed; faults
    and request log cleared; tokens kept), ``expire_tokens()`` (every access token expires now).

    Faults: ``faults`` is a :class:`FaultInjector`::

        standin.faults.add(kind="status", status=429, retry_after=2, method="POST",
                           path=r"/api/now/table/incident", times=1)
        standin.faults.add(kind="latency", seconds=0.2)           # every request, always
        standin.faults.add(kind="drop", method="PATCH", times=1)  # connection closed, no answer
        standin.faults.add(kind="commit_then_drop", method="POST", times=1)  # written, answer lost
        standin.faults.clear()

    Tables: incident, cmdb_ci (with cmdb_ci_vm_instance, cmdb_ci_server and cmdb_ci_service
    extending it, and service_offering extending cmdb_ci_service), sys_user, sys_user_group,
    core_company and cmn_location; see :data:`TABLES`. Seed what reference columns point at like
    CIs: ``insert("sys_user_group", {"name": "Azure Ops"})`` or ``seed={"sys_user_group": [...]}``.
    """

    display_name = "ServiceNow"
    server_header = "ServiceNow"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "bridge",
        password: str = "sandbox-password",  # noqa: S107 - the sandbox's own, printed by design
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",  # noqa: S107
        token_lifetime_seconds: int = 1800,
        seed: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host, port)
        self._username = username
        self._password = password
        self._client_id = client_id
        self._client_secret = client_secret
        self._store = _Store(clock)
        self._tokens = _TokenStore(clock, token_lifetime_seconds)
        self._seed: dict[str, list[dict[str, Any]]] = {}
        for table, rows in (seed or {}).items():
            self._require_table(table)
            self._seed[table] = [dict(row) for row in rows]
        self._apply_seed()

    # -- inspection and seeding ----------------------------------------------------------

    def records(self, table: str) -> list[dict[str, Any]]:
        self._require_table(table)
        return list(self._store.rows(table))

    def journal(self, table: str, sys_id: str, field: str = "work_notes") -> list[str]:
        self._require_table(table)
        if self._store.get(table, sys_id) is None:
            raise KeyError(f"no {table} record {sys_id}")
        return self._store.journal(sys_id, field)

    def insert(self, table: str, values: Mapping[str, Any]) -> dict[str, Any]:
        self._require_table(table)
        return dict(self._store.insert(table, values, self._username, trusted=True))

    def reset(self) -> None:
        self._store.clear()
        self._apply_seed()
        self.faults.clear()
        self._clear_requests()

    def expire_tokens(self) -> None:
        """Expire every access token now (refresh tokens stay valid), for refresh-on-401 tests."""
        self._tokens.expire_all()

    def _apply_seed(self) -> None:
        for table, rows in self._seed.items():
            for row in rows:
                self._store.insert(table, row, self._username, trusted=True)

    def _require_table(self, table: str) -> None:
        if self._store.schema(table) is None:
            known = ", ".join(self._store.table_names())
            raise ValueError(f"unknown table {table!r}; the stand-in knows {known}")

    # -- request handling ----------------------------------------------------------------

    def _loggable_body(self, path: str, body: bytes) -> Any:
        # Only Table API bodies: the OAuth form carries secrets.
        return json_or_none(body) if path.startswith("/api/") else None

    def _fault_body(self, status: int) -> Any:
        return _fault_error_body(status)

    def _internal_error(self) -> Response:
        return Response.of_json(500, _error_body("Internal Server Error", None))

    def _handle(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Answer one request; ``headers`` has lower-case names."""
        try:
            if path == "/oauth_token.do":
                if method != "POST":
                    raise _method_not_allowed(method, "POST")
                return self._oauth(headers, body)
            if not path.startswith("/api/"):
                raise _ApiError(404, "Not Found", f"No resource at {path}")
            user = self._authenticate(headers)
            if user is None:
                challenge = {"WWW-Authenticate": 'BASIC realm="Service-now"'}
                raise _ApiError(401, *_NOT_AUTHENTICATED, headers=challenge)
            match = _TABLE_PATH_RE.fullmatch(path.rstrip("/"))
            if match is None:
                raise _ApiError(400, "Requested URI does not represent any resource", None)
            table, sys_id = match["table"], match["sys_id"]
            if self._store.schema(table) is None:
                raise _ApiError(404, f"Invalid table {table}", None)
            return self._table(method, table, sys_id, query, body, user)
        except _ApiError as error:
            return _error_response(error)

    def _authenticate(self, headers: Mapping[str, str]) -> str | None:
        header = headers.get("authorization") or ""
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._tokens.user_for(credential.strip())
        basic = _decode_basic(header)
        if basic is not None and _same(basic[0], self._username) and _same(basic[1], self._password):
            return self._username
        return None

    def _table(
        self, method: str, table: str, sys_id: str | None, query: Mapping[str, str], body: bytes, user: str
    ) -> Response:
        render = self._renderer(table, query)
        if sys_id is None:
            if method == "GET":
                return self._list(table, query, render)
            if method == "POST":
                row = self._store.insert(table, _json_object(body), user, trusted=False)
                location = f"{self.url}/api/now/table/{table}/{row['sys_id']}"
                return Response.of_json(201, {"result": render(row)}, {"Location": location})
            raise _method_not_allowed(method, "GET, POST")
        if method == "GET":
            found = self._store.get(table, sys_id)
            if found is None:
                raise _not_found()
            return Response.of_json(200, {"result": render(found)})
        if method in ("PUT", "PATCH"):
            # PUT is a partial update on an instance too: fields not sent keep their values.
            row = self._store.update(table, sys_id, _json_object(body), user)
            return Response.of_json(200, {"result": render(row)})
        if method == "DELETE":
            self._store.delete(table, sys_id)
            return Response(204)
        raise _method_not_allowed(method, "GET, PUT, PATCH, DELETE")

    def _list(
        self, table: str, query: Mapping[str, str], render: Callable[[dict[str, str]], Any]
    ) -> Response:
        encoded = parse_query(
            query.get("sysparm_query", ""), lambda name: self._store.field_spec(table, name) is not None
        )
        if encoded.ignored:
            logger.debug("query on %s ignored terms %s", table, list(encoded.ignored))
        rows = self._store.select(table, encoded)
        limit = _int_param(query.get("sysparm_limit"), DEFAULT_LIMIT)
        offset = _int_param(query.get("sysparm_offset"), 0)
        page = rows[offset : offset + limit]
        headers = {"X-Total-Count": str(len(rows))}
        links = self._links(table, query, len(rows), limit, offset)
        if links:
            headers["Link"] = links
        return Response.of_json(200, {"result": [render(row) for row in page]}, headers)

    def _links(self, table: str, query: Mapping[str, str], total: int, limit: int, offset: int) -> str:
        if limit <= 0:
            return ""
        base = {key: value for key, value in query.items() if key not in ("sysparm_offset", "sysparm_limit")}

        def link(rel: str, at: int) -> str:
            params = {**base, "sysparm_limit": str(limit), "sysparm_offset": str(at)}
            encoded = "&".join(f"{key}={_quote(value)}" for key, value in params.items())
            return f'<{self.url}/api/now/table/{table}?{encoded}>;rel="{rel}"'

        last = max(0, (total - 1) // limit * limit)
        parts = [link("first", 0)]
        if offset > 0:
            parts.append(link("prev", max(0, offset - limit)))
        if offset + limit < total:
            parts.append(link("next", offset + limit))
        parts.append(link("last", last))
        return ",".join(parts)

    def _renderer(self, table: str, query: Mapping[str, str]) -> Callable[[dict[str, str]], dict[str, Any]]:
        display = query.get("sysparm_display_value", "false").strip().lower()
        if display not in ("true", "false", "all"):
            display = "false"
        exclude_links = query.get("sysparm_exclude_reference_link", "false").strip().lower() == "true"
        requested = [name.strip() for name in query.get("sysparm_fields", "").split(",") if name.strip()]
        schema = self._store.schema(table)
        names = requested or (list(schema.fields) if schema is not None else [])
        base_url = self.url
        store = self._store

        def render(row: dict[str, str]) -> dict[str, Any]:
            with store.lock:
                return {name: value for name in names if (value := cell(row, name)) is not None}

        def cell(row: dict[str, str], name: str) -> Any:
            spec = store.field_spec(table, name)
            if spec is None:
                return None  # unknown fields in sysparm_fields are left out, not an error
            raw = "" if spec.kind == "journal" else store.value(table, row, name)
            link = None
            if spec.kind == "reference" and raw and not exclude_links:
                link = f"{base_url}/api/now/table/{spec.reference}/{raw}"
            if display == "false":
                return {"link": link, "value": raw} if link else raw
            shown = store.display(table, row, name)
            if display == "all":
                return {"display_value": shown, "value": raw} | ({"link": link} if link else {})
            return {"display_value": shown, "link": link} if link else shown

        return render

    def _oauth(self, headers: Mapping[str, str], body: bytes) -> Response:
        form = {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        basic = _decode_basic(headers.get("authorization") or "")
        if not client_id and basic is not None:
            client_id, client_secret = basic
        grant = form.get("grant_type", "")
        if grant not in ("client_credentials", "password", "refresh_token"):
            return Response.of_json(
                400, {"error": "unsupported_grant_type", "error_description": "unsupported grant_type"}
            )
        denied = Response.of_json(401, {"error_description": "access_denied", "error": "server_error"})
        if not (_same(client_id, self._client_id) and _same(client_secret, self._client_secret)):
            return denied
        refresh: str | None = None
        if grant == "client_credentials":
            user: str | None = self._username
        elif grant == "password":
            good = _same(form.get("username", ""), self._username) and _same(
                form.get("password", ""), self._password
            )
            user = self._username if good else None
        else:
            refresh = form.get("refresh_token", "")
            user = self._tokens.user_for_refresh(refresh)
        if user is None:
            return denied
        return Response.of_json(200, self._tokens.issue(user, refresh), {"Cache-Control": "no-store"})


def _method_not_allowed(method: str, allowed: str) -> _ApiError:
    detail = f"{method} method not supported for API"
    return _ApiError(405, "Method not Supported", detail, {"Allow": allowed})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise _ApiError(400, "Exception while reading request", "The payload is not valid JSON.")
    return payload


def _int_param(value: str | None, default: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number >= 0 else default


def _quote(value: str) -> str:
    return quote(value, safe="")


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a stand-in until Ctrl-C or SIGTERM; prints its URL and sandbox credentials."""
    parser = argparse.ArgumentParser(prog="python -m bridge.sandbox.servicenow", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--username", default="bridge")
    parser.add_argument("--password", default="sandbox-password")
    parser.add_argument("--client-id", default="sandbox-client")
    parser.add_argument("--client-secret", default="sandbox-secret")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request (DEBUG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    standin = ServiceNowStandIn(
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        client_id=args.client_id,
        client_secret=args.client_secret,
    ).start()
    # The sandbox credentials are printed on purpose: they are the stand-in's own, for local use.
    return serve_until_stopped(
        standin,
        [
            f"ServiceNow stand-in: {standin.url}",
            f"  basic auth:   {args.username} / {args.password}",
            f"  OAuth client: {args.client_id} / {args.client_secret}  (POST {standin.url}/oauth_token.do)",
        ],
    )

if __name__ == "__main__":
    raise SystemExit(main())
