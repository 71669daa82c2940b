"""The ServiceNow adapter: incidents and CMDB lookups through the Table API.

Everything ServiceNow-specific lives here: its settings (``SERVICENOW_*`` and the CMDB table and
fields), its states (1-3 open, 6 resolved, 7 closed, 8 canceled), its columns
(``short_description``, ``work_notes``, ``close_code``...), its 160-character short description,
its OAuth token endpoint and its error bodies (``{"error": {"message", "detail"}}``). HTTP hygiene
(timeouts from the deadline, no redirects, classification, one re-auth on 401, scrubbing) is the
shared :class:`~bridge.adapters.http.ItsmHttpClient`'s.

Two ServiceNow habits shape the code. An encoded query silently drops clauses it cannot parse
and may then match unrelated records, so values are validated before they are put into a query
and every returned record is re-checked. And a 403 means either an ACL (the bridge's own access:
held until fixed) or a data policy / business rule refusing this write (dead-lettered).

Reference columns (``assignment_group``, ``caller_id``, ``cmdb_ci``...) take sys_ids, but the
mapping file, routes and settings may name a group, a user or a CI instead: a value that is not a
sys_id is looked up by the table's display fields (``_References``; defaults below, more from
``SERVICENOW_REFERENCE_FIELDS``). Exactly one match gives its sys_id; none or several leave the
field out with a warning, so a misspelt group never costs an alert its incident. Answers, found
or not, are cached for ``CMDB_CACHE_SECONDS``.

Calls per operation (plus one token request when an OAuth token is due):

- ``find``: 1 GET. ``add_note``, ``reopen`` (state 2, In Progress, with the note): 1 PATCH each.
  ``has_note``: 1 GET. ``check``: 1 GET.
- ``create``: 1 POST, already resolved or closed too (state, close fields and both notes in the
  one insert). ``resolve``: 1 PATCH, state 6 or with ``close`` 7, with close_code, close_notes,
  the resolution's fields and the note.
- Before a create or resolve, 1 GET per reference value given as a name and not cached (a user
  may take up to three: user_name, then name, then email); a failed lookup fails the operation
  before anything is written.
- ``find_configuration_item``: 1 GET per candidate value until one matches.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import requests

from ..config import Setting, Settings, https_url
from ..errors import ConfigError, ItsmError, Reason
from .base import (
    ConfigurationItem,
    ItsmAdapter,
    Resolution,
    WorkItem,
    WorkItemRecord,
    WorkItemRef,
    WorkItemStatus,
)
from .http import Authenticator, BasicAuth, ItsmHttpClient, member_list

__all__ = ["CORRELATION_DISPLAY", "KEY_PATTERN", "SERVICENOW_SETTINGS", "ServiceNowAdapter"]

log = logging.getLogger(__name__)

_SYSTEM = "ServiceNow"
# The bridge marks what it owns with both correlation fields and touches only incidents that carry
# both: another integration may use the same correlation_id (CONTRACT section 2).
CORRELATION_DISPLAY = "Azure Monitor"
# Correlation keys are GUIDs or hex hashes; nothing here can form encoded-query syntax.
KEY_PATTERN = re.compile(r"^[0-9A-Za-z._:-]{1,100}\Z")
# Real sys_ids are 32 hex digits; anything path-like must never reach the URL.
_SYS_ID_PATTERN = re.compile(r"^[0-9A-Za-z_-]{1,64}\Z")
# What a CMDB lookup may put after "field=" in an encoded query: Azure resource ids and CI names,
# ASCII letters, digits, "_.-()@#/" and inner spaces, of bounded length. No "^" (a new clause),
# no line break, no ":" (ServiceNow evaluates a "javascript:" value on the server), no "=" or "%".
_CMDB_VALUE_PATTERN = re.compile(r"[A-Za-z0-9_.()@#/-](?:[A-Za-z0-9_.()@#/ -]{0,1022}[A-Za-z0-9_.()@#/-])?\Z")
# Script URL schemes, however spelled: any case, after leading blanks or control characters, with
# tabs or line breaks inside (URL parsers drop those). Refused even should the pattern above widen.
_SCRIPT_SCHEME = re.compile(r"(?:javascript|vbscript|data)\s*:", re.IGNORECASE)
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f]+")
_STATUSES: Mapping[str, WorkItemStatus] = {
    "1": WorkItemStatus.OPEN,  # New
    "2": WorkItemStatus.OPEN,  # In Progress
    "3": WorkItemStatus.OPEN,  # On Hold
    "6": WorkItemStatus.RESOLVED,
    "7": WorkItemStatus.CLOSED,
    "8": WorkItemStatus.CANCELED,
}
_IN_PROGRESS_STATE = "2"
_RESOLVED_STATE = "6"
_CLOSED_STATE = "7"
_FIND_LIMIT = 10
# Renew an OAuth token this long before it expires, so a call never starts with a dying token.
_TOKEN_RENEW_MARGIN_SECONDS = 60.0
# ServiceNow's default access token lifespan, used when the token response omits expires_in.
_DEFAULT_TOKEN_LIFETIME_SECONDS = 1800.0
# A 403 that refuses this write, not the bridge's access (FACTS 4.4: ACL, business rule, data policy).
_REFUSES_THE_CHANGE = re.compile(r"data policy|business rule|operation against .* aborted", re.IGNORECASE)
# What the settings may add to a new incident (routing and the mapping file's fields win).
_DEFAULT_FIELD_SETTINGS = {
    "caller_id": "SERVICENOW_CALLER_ID",
    "assignment_group": "SERVICENOW_ASSIGNMENT_GROUP",
    "category": "SERVICENOW_CATEGORY",
}

# Real sys_ids: 32 hexadecimal digits. Any other value of a reference column is a display name.
_SYS_ID_VALUE = re.compile(r"^[0-9a-fA-F]{32}\Z")
# Table and column names as ServiceNow forms them (u_ custom columns, x_ scoped tables included).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,79}\Z")
_REFERENCE_CACHE_ENTRIES = 1024


@dataclass(frozen=True)
class _Reference:
    """Where a reference column points: its table, and the fields a display name is matched on,
    in order (the first that matches exactly one record wins)."""

    table: str
    fields: tuple[str, ...]


# The reference columns of an incident whose values the mapping, routes and settings may give as
# names. SERVICENOW_REFERENCE_FIELDS adds columns or overrides these.
_DEFAULT_REFERENCES: Mapping[str, _Reference] = {
    "assignment_group": _Reference("sys_user_group", ("name",)),
    "caller_id": _Reference("sys_user", ("user_name", "name", "email")),
    "assigned_to": _Reference("sys_user", ("user_name", "name", "email")),
    "opened_by": _Reference("sys_user", ("user_name", "name", "email")),
    "cmdb_ci": _Reference("cmdb_ci", ("name",)),
    "business_service": _Reference("cmdb_ci_service", ("name",)),
    "service_offering": _Reference("cmdb_ci_service", ("name",)),
    "company": _Reference("core_company", ("name",)),
    "location": _Reference("cmn_location", ("name",)),
}

SERVICENOW_SETTINGS: tuple[Setting, ...] = (
    Setting("SERVICENOW_INSTANCE_URL", "e.g. https://contoso.service-now.com", required=True),
    Setting("SERVICENOW_USERNAME", "basic auth user (or OAuth password-grant user)"),
    Setting("SERVICENOW_PASSWORD", "basic auth password", secret=True),
    Setting("SERVICENOW_CLIENT_ID", "OAuth client id (/oauth_token.do)"),
    Setting("SERVICENOW_CLIENT_SECRET", "OAuth client secret", secret=True),
    Setting("SERVICENOW_TABLE", "target table", "incident"),
    Setting("SERVICENOW_CALLER_ID", "caller_id for new incidents (a sys_user sys_id or user name), unless mapped"),
    Setting(
        "SERVICENOW_ASSIGNMENT_GROUP", "assignment_group for new incidents (a group sys_id or name), unless mapped"
    ),
    Setting("SERVICENOW_CATEGORY", "category for new incidents, unless mapped"),
    Setting("SERVICENOW_CLOSE_CODE", "close_code when an alert resolves, unless mapped", "Solution provided"),
    Setting(
        "SERVICENOW_REFERENCE_FIELDS",
        "more reference columns whose names are looked up: column=table[:field[|field...]], comma separated",
    ),
    Setting("CMDB_TABLE", "CMDB table searched for the alert's resources", "cmdb_ci"),
    Setting("CMDB_RESOURCE_ID_FIELD", "CMDB field holding the Azure resource id", "object_id"),
    Setting("CMDB_NAME_FIELD", "CMDB field matched against configurationItems", "name"),
)


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class _OAuth:
    """An access token from ``/oauth_token.do``: client credentials, or the password grant when
    a username and password are set too. Renewed before it expires and after a 401."""

    def __init__(
        self, instance: str, client_id: str, client_secret: str, user: str | None, password: str | None
    ) -> None:
        self._url = f"{instance}/oauth_token.do"
        self._client_id, self._client_secret = client_id, client_secret
        self._user, self._password = user, password
        self._token: _Token | None = None
        # Tokens dropped after a 401 are still secrets a server might echo; remember the last few.
        self._recent: deque[str] = deque(maxlen=4)

    def apply(self, client: ItsmHttpClient) -> tuple[dict[str, str], tuple[str, str] | None]:
        token = self._token
        if token is None or client.clock() >= token.renew_at:
            token = self._token = self._fetch(client)
            self._recent.append(token.value)
        return {"Authorization": f"Bearer {token.value}"}, None

    def refresh(self) -> bool:
        log.info("ServiceNow answered 401 to a bearer token; fetching a new token and repeating once")
        self._token = None
        return True

    def secrets(self) -> Sequence[str]:
        return [s for s in (self._client_secret, self._password, *self._recent) if s]

    def _fetch(self, client: ItsmHttpClient) -> _Token:
        form = {"client_id": self._client_id, "client_secret": self._client_secret}
        if self._user and self._password:
            form.update(grant_type="password", username=self._user, password=self._password)
        else:
            form["grant_type"] = "client_credentials"
        requested_at = client.clock()
        response = client.post_form(self._url, form)
        if not 200 <= response.status_code < 300:
            error = client.status_error(response, label=f"{_SYSTEM} OAuth")
            if response.status_code in (400, 401):
                # Bad client id/secret or user credentials: trying again cannot help.
                error.retryable, error.reason = False, Reason.AUTH_ERROR
            raise error
        try:
            body = response.json()
        except ValueError:
            body = None
        value = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise ItsmError(
                f"{_SYSTEM} OAuth {response.status_code}: token response carries no access_token",
                retryable=True,
                reason=Reason.INVALID_RESPONSE,
                status=response.status_code,
            )
        lifetime = _DEFAULT_TOKEN_LIFETIME_SECONDS
        raw = body.get("expires_in") if isinstance(body, dict) else None
        try:
            if raw is not None and float(raw) > 0:
                lifetime = float(raw)
        except (TypeError, ValueError):
            pass
        # Keep a margin, but never more than half the lifetime, so a short-lived token is still reused.
        margin = min(_TOKEN_RENEW_MARGIN_SECONDS, lifetime / 2)
        log.debug("ServiceNow OAuth token obtained (lifetime %.0f s)", lifetime)
        return _Token(value=value, renew_at=requested_at + lifetime - margin)


@dataclass(frozen=True)
class _Answer:
    sys_id: str | None
    why: str  # when sys_id is None: "no" or "several" (records match)
    expires: float


class _References:
    """Display names in reference columns, turned into sys_ids by a lookup on the bridge's side.

    Why not ``sysparm_input_display_value=true``, which has the instance do it: it applies to
    every field of the request, so choice values (state 6, impact 2, the close code) and
    date-times would be read as display values too (FACTS 4.1); and the instance decides silently
    what a name matching nothing or several records becomes. Here a name is matched exactly on
    the table's display fields, and anything but one match leaves the field out, logged.

    Only values of the CMDB lookup's safe shape (``_queryable``) are ever put into a query.
    Answers, found or not, are kept for ``ttl`` seconds, at most ``_REFERENCE_CACHE_ENTRIES``.
    """

    def __init__(
        self,
        columns: Mapping[str, _Reference],
        http: ItsmHttpClient,
        *,
        ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self._columns = dict(columns)
        self._http = http
        self._ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[tuple[str, tuple[str, ...], str], _Answer] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, fields: Mapping[str, str]) -> dict[str, str]:
        """``fields`` with every reference value that is a name replaced by its record's sys_id;
        a name matching no record or several is left out. An ITSM error is raised as it is."""
        resolved: dict[str, str] = {}
        for column, value in fields.items():
            if column not in self._columns:
                resolved[column] = value
                continue
            sys_id = self.sys_id(column, value)
            if sys_id is not None:
                resolved[column] = sys_id
        return resolved

    def sys_id(self, column: str, value: str) -> str | None:
        """The sys_id ``value`` of reference column ``column`` stands for; None (logged) when it
        names no record or several, or cannot be queried safely. Sys_ids and "" pass unchanged."""
        reference = self._columns.get(column)
        if reference is None or not value or _SYS_ID_VALUE.match(value):
            return value
        if not _queryable(value):
            log.warning(
                "ServiceNow reference %s=%r cannot be looked up safely (not a sys_id, nor a name of the "
                "shape the bridge queries); the field is left out",
                column,
                value[:120],
            )
            return None
        key = (reference.table, reference.fields, value.casefold())
        now = self._clock()
        with self._lock:
            answer = self._cache.get(key)
        if answer is None or answer.expires <= now:
            answer = self._lookup(reference, value, now + self._ttl)
            self._remember(key, answer, now)
        if answer.sys_id is None:
            log.warning(
                "ServiceNow reference %s=%r: %s %s record has %s %r; the field is left out",
                column,
                value[:120],
                answer.why,
                reference.table,
                " or ".join(reference.fields),
                value[:120],
            )
        return answer.sys_id

    def _lookup(self, reference: _Reference, value: str, expires: float) -> _Answer:
        wanted = value.casefold()  # "=" ignores case on an instance; the re-check does too
        for field in reference.fields:
            payload = self._http.json(
                "GET",
                f"/api/now/table/{quote(reference.table, safe='')}",
                params={
                    "sysparm_query": f"{field}={value}",
                    "sysparm_fields": ",".join(dict.fromkeys(("sys_id", field))),
                    "sysparm_limit": "2",
                    "sysparm_exclude_reference_link": "true",
                },
            )
            # The instance may have dropped the clause (an unknown field): keep exact matches only.
            found = {
                _text(row.get("sys_id"))
                for row in _result_list(payload)
                if _text(row.get(field)).casefold() == wanted and _SYS_ID_VALUE.match(_text(row.get("sys_id")))
            }
            if len(found) > 1:
                # Two groups of one name: either could send the incident to the wrong people. A
                # later field is not tried either: it would pick one of them by another route.
                return _Answer(None, "several", expires)
            if found:
                return _Answer(found.pop(), "", expires)
        return _Answer(None, "no", expires)

    def _remember(self, key: tuple[str, tuple[str, ...], str], answer: _Answer, now: float) -> None:
        with self._lock:
            self._cache.pop(key, None)
            self._cache[key] = answer
            if len(self._cache) > _REFERENCE_CACHE_ENTRIES:
                for stale in [k for k, v in self._cache.items() if v.expires <= now]:
                    del self._cache[stale]
            while len(self._cache) > _REFERENCE_CACHE_ENTRIES:
                self._cache.popitem(last=False)


def _reference_columns(value: str | None) -> dict[str, _Reference]:
    """The default reference columns with ``SERVICENOW_REFERENCE_FIELDS`` over them:
    ``column=table[:field[|field...]]`` entries separated by commas (the field defaults to name)."""
    columns = dict(_DEFAULT_REFERENCES)
    seen: set[str] = set()
    for entry in (value or "").split(","):
        if not entry.strip():
            continue
        column, sep, target = (part.strip() for part in entry.partition("="))
        table, colon, listed = (part.strip() for part in target.partition(":"))
        fields = tuple(f.strip() for f in listed.split("|")) if colon else ("name",)
        if not sep or not all(_NAME.match(name) for name in (column, table, *fields)):
            raise ConfigError(
                "SERVICENOW_REFERENCE_FIELDS",
                "must be entries like assignment_group=sys_user_group or caller_id=sys_user:user_name|email, "
                "separated by commas (lower-case table, column and field names)",
            )
        if column in seen:
            raise ConfigError("SERVICENOW_REFERENCE_FIELDS", f"names column {column} twice")
        seen.add(column)
        columns[column] = _Reference(table, tuple(dict.fromkeys(fields)))
    return columns


class ServiceNowAdapter:
    """:class:`~bridge.adapters.base.ItsmAdapter` for a ServiceNow instance's Table API.

    Authenticates with basic auth (``SERVICENOW_USERNAME``/``PASSWORD``) or, when
    ``SERVICENOW_CLIENT_ID``/``SECRET`` are set, with an OAuth token from ``/oauth_token.do``.
    ``clock`` (wall time, seconds) drives token expiry and HTTP-date ``Retry-After`` values.
    """

    name: ClassVar[str] = "servicenow"
    display_name: ClassVar[str] = _SYSTEM
    settings: ClassVar[tuple[Setting, ...]] = SERVICENOW_SETTINGS
    # short_description holds 160 characters (FACTS 4.2, commonly cited); long strings are
    # mediumtext and not enforced (ServiceNow KB0685779), so the description keeps the neutral cap.
    title_limit: ClassVar[int] = 160
    description_limit: ClassVar[int] = 32_000
    # Columns the bridge writes itself; the mapping file and routing must not overwrite them.
    managed_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "correlation_id",
            "correlation_display",
            "short_description",
            "description",
            "work_notes",
            "comments",
            "cmdb_ci",
            "state",
            "close_code",
            "close_notes",
            "sys_id",
            "number",
            "impact",
            "urgency",
        }
    )

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        get = settings.reader(self.settings)

        instance = get("SERVICENOW_INSTANCE_URL")
        if not instance:
            raise ConfigError("SERVICENOW_INSTANCE_URL", "is required for the servicenow adapter")
        self._instance = https_url("SERVICENOW_INSTANCE_URL", instance).rstrip("/")
        username, password = get("SERVICENOW_USERNAME"), get("SERVICENOW_PASSWORD")
        client_id, client_secret = get("SERVICENOW_CLIENT_ID"), get("SERVICENOW_CLIENT_SECRET")
        if bool(username) != bool(password):
            raise ConfigError(
                "SERVICENOW_PASSWORD" if username else "SERVICENOW_USERNAME", "username and password go together"
            )
        if bool(client_id) != bool(client_secret):
            raise ConfigError(
                "SERVICENOW_CLIENT_SECRET" if client_id else "SERVICENOW_CLIENT_ID",
                "OAuth client id and secret go together",
            )
        auth: Authenticator
        if client_id and client_secret:
            auth = _OAuth(self._instance, client_id, client_secret, username, password)
        elif username and password:
            auth = BasicAuth(username, password)
        else:
            raise ConfigError(
                "SERVICENOW_USERNAME",
                "set SERVICENOW_USERNAME/PASSWORD (basic auth) or SERVICENOW_CLIENT_ID/SECRET (OAuth)",
            )
        self._table = get("SERVICENOW_TABLE") or "incident"
        self._cmdb_table = get("CMDB_TABLE") or "cmdb_ci"
        self._cmdb_resource_id_field = get("CMDB_RESOURCE_ID_FIELD") or "object_id"
        self._cmdb_name_field = get("CMDB_NAME_FIELD") or "name"
        self._close_code = get("SERVICENOW_CLOSE_CODE") or "Solution provided"
        self._default_fields = {
            column: value for column, setting in _DEFAULT_FIELD_SETTINGS.items() if (value := get(setting))
        }
        columns = _reference_columns(get("SERVICENOW_REFERENCE_FIELDS"))
        self._http = ItsmHttpClient(
            _SYSTEM,
            self._instance,
            auth,
            read_timeout=settings.itsm_timeout_seconds,
            error_text=_error_text,
            classify=_classify,
            session=session,
            clock=clock,
        )
        self._references = _References(columns, self._http, ttl=settings.cmdb_cache_seconds, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session | None = None) -> ItsmAdapter:
        return cls(settings, session)

    # ----------------------------------------------------------------- incidents

    def find(self, correlation_id: str) -> list[WorkItemRecord]:
        if not KEY_PATTERN.match(correlation_id):
            raise ValueError("correlation id must match " + KEY_PATTERN.pattern)
        payload = self._http.json(
            "GET",
            self._table_path(),
            params={
                "sysparm_query": f"correlation_id={correlation_id}^correlation_display={CORRELATION_DISPLAY}"
                "^ORDERBYsys_created_on",
                "sysparm_fields": "sys_id,number,state,correlation_id,correlation_display,sys_created_on",
                "sysparm_limit": str(_FIND_LIMIT),
                "sysparm_exclude_reference_link": "true",
            },
        )
        exact: list[dict[str, Any]] = []
        for row in _result_list(payload):
            ours = _text(row.get("correlation_display")) == CORRELATION_DISPLAY
            if _text(row.get("correlation_id")) != correlation_id or not ours or not _text(row.get("sys_id")):
                # ServiceNow drops query clauses it cannot parse; never act on what it returned then.
                log.warning(
                    "ServiceNow returned %s %s (correlation_id %r, correlation_display %r) for key %s; ignoring it",
                    self._table,
                    _text(row.get("number")) or _text(row.get("sys_id")) or "<no sys_id>",
                    _text(row.get("correlation_id"))[:120],
                    _text(row.get("correlation_display"))[:60],
                    correlation_id,
                )
                continue
            exact.append(row)
        # The server orders by creation already; sorting again keeps "oldest first" true regardless.
        exact.sort(key=lambda row: _text(row.get("sys_created_on")))
        return [
            WorkItemRecord(
                ref=self._ref(_text(row.get("sys_id")), _text(row.get("number")) or None),
                correlation_id=correlation_id,
                # A state this bridge does not know (a custom one) is someone working on it: open.
                status=_STATUSES.get(_text(row.get("state")), WorkItemStatus.OPEN),
                state=_text(row.get("state")),
            )
            for row in exact
        ]

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        # Looked up before anything is written: a failed lookup then fails the create cleanly.
        body = self._references.resolve({**self._default_fields, **self._unmanaged(item.fields, "mapped fields")})
        if resolution is not None:
            body.update(self._references.resolve(self._unmanaged(resolution.fields, "resolution fields")))
        body.update(
            {
                "correlation_id": item.correlation_id,
                "correlation_display": CORRELATION_DISPLAY,
                "short_description": item.title,
                "description": item.description,
                "impact": str(item.impact),
                "urgency": str(item.urgency),
            }
        )
        notes = [item.note]
        if resolution is not None:
            # One insert, already resolved (or closed): the data policy wants close_code and
            # close_notes with it.
            body.update(self._closing(resolution))
            notes.append(resolution.note)
        if any(notes):
            body["work_notes"] = "\n\n".join(n for n in notes if n)
        ci = self._configuration_item(item)
        if ci is not None:
            body["cmdb_ci"] = ci
        payload = self._http.json("POST", self._table_path(), params={"sysparm_fields": "sys_id,number"}, json=body)
        record = _result_object(payload)
        sys_id = _text(record.get("sys_id"))
        if not sys_id:
            raise ItsmError(
                f"{_SYSTEM}: created record carries no sys_id", retryable=True, reason=Reason.INVALID_RESPONSE
            )
        ref = self._ref(sys_id, _text(record.get("number")) or None)
        log.info("ServiceNow %s %s created for key %s", self._table, ref.number or sys_id, item.correlation_id)
        return ref

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        self._http.json("PATCH", self._record_path(ref), params={"sysparm_fields": "sys_id"}, json={"work_notes": note})

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        if not marker:
            raise ValueError("marker must not be empty")
        # A journal field's display value is its whole history as text, newest entry first.
        payload = self._http.json(
            "GET",
            self._record_path(ref),
            params={"sysparm_fields": "work_notes", "sysparm_display_value": "true"},
        )
        notes = _result_object(payload).get("work_notes")
        if isinstance(notes, Mapping):  # sysparm_display_value=all shape, should an instance send it
            notes = notes.get("display_value")
        return marker in _text(notes)

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        path = self._record_path(ref)
        body = self._references.resolve(self._unmanaged(resolution.fields, "resolution fields"))
        body.update(self._closing(resolution))
        if resolution.note:
            body["work_notes"] = resolution.note
        self._http.json("PATCH", path, params={"sysparm_fields": "sys_id,state"}, json=body)
        log.info("ServiceNow %s %s %s", self._table, ref.number or ref.id, "closed" if resolution.close else "resolved")

    def reopen(self, ref: WorkItemRef, note: str) -> None:
        # What the instance's own Reopen does: Resolved back to In Progress (its business rules
        # count the reopen). The close code and notes stay, as they do there.
        body = {"state": _IN_PROGRESS_STATE}
        if note:
            body["work_notes"] = note
        self._http.json("PATCH", self._record_path(ref), params={"sysparm_fields": "sys_id,state"}, json=body)
        log.info("ServiceNow %s %s reopened", self._table, ref.number or ref.id)

    def _closing(self, resolution: Resolution) -> dict[str, str]:
        return {
            "state": _CLOSED_STATE if resolution.close else _RESOLVED_STATE,
            "close_code": resolution.code or self._close_code,
            "close_notes": resolution.summary,
        }

    def _unmanaged(self, fields: Mapping[str, str], what: str) -> dict[str, str]:
        """``fields`` without the columns the bridge writes itself (those are logged)."""
        ignored = sorted(set(fields) & self.managed_fields)
        if ignored:
            log.warning("%s %s are managed by the bridge and were ignored", what, ignored)
        return {k: v for k, v in fields.items() if k not in self.managed_fields}

    def _configuration_item(self, item: WorkItem) -> str | None:
        """The cmdb_ci to write: the CMDB lookup's sys_id, or a route's CI, which may be a name."""
        ci = item.configuration_item
        if ci is None:
            return None
        if ci.matched_on != "route":
            return ci.id
        return self._references.sys_id("cmdb_ci", ci.id) or None

    def check(self) -> None:
        self._http.json("GET", self._table_path(), params={"sysparm_limit": "1", "sysparm_fields": "sys_id"})

    # ----------------------------------------------------------------- CMDB

    def find_configuration_item(self, resource_ids: Sequence[str], names: Sequence[str]) -> ConfigurationItem | None:
        lookups = [(self._cmdb_resource_id_field, "resource_id", v) for v in resource_ids]
        lookups += [(self._cmdb_name_field, "name", v) for v in names]
        for field, matched_on, value in lookups:
            if not _queryable(value):
                # Such a value would add clauses to the encoded query (or run as a script)
                # instead of being matched.
                log.debug("skipping CMDB lookup of a %s that cannot be queried safely", matched_on)
                continue
            found = self._find_ci(field, matched_on, value)
            if found is not None:
                return found
        return None

    def _find_ci(self, field: str, matched_on: str, value: str) -> ConfigurationItem | None:
        fields = ",".join(dict.fromkeys(("sys_id", "name", field)))
        payload = self._http.json(
            "GET",
            f"/api/now/table/{quote(self._cmdb_table, safe='')}",
            params={
                "sysparm_query": f"{field}={value}",
                "sysparm_fields": fields,
                "sysparm_limit": "2",
                "sysparm_exclude_reference_link": "true",
            },
        )
        wanted = value.casefold()  # Azure resource ids are case-insensitive; CMDB names in practice too
        matches = [
            row
            for row in _result_list(payload)
            if _text(row.get(field)).casefold() == wanted and _text(row.get("sys_id"))
        ]
        if len(matches) > 1:
            # Two CIs for one value: binding either could point people at the wrong machine.
            log.warning("CMDB %s has several records with %s=%s; not binding any", self._cmdb_table, field, value)
            return None
        if not matches:
            return None
        row = matches[0]
        return ConfigurationItem(
            id=_text(row.get("sys_id")), name=_text(row.get("name")) or None, matched_on=matched_on
        )

    # ----------------------------------------------------------------- plumbing

    def close(self) -> None:
        self._http.close()

    def _table_path(self) -> str:
        return f"/api/now/table/{quote(self._table, safe='')}"

    def _record_path(self, ref: WorkItemRef) -> str:
        if ref.system != self.name:
            raise ValueError(f"not a ServiceNow work item: {ref.system!r}")
        if not _SYS_ID_PATTERN.match(ref.id):
            raise ValueError("sys_id must match " + _SYS_ID_PATTERN.pattern)
        return f"{self._table_path()}/{ref.id}"

    def _ref(self, sys_id: str, number: str | None) -> WorkItemRef:
        target = urlencode({"uri": f"{self._table}.do?sys_id={sys_id}"})
        return WorkItemRef(system=self.name, id=sys_id, number=number, url=f"{self._instance}/nav_to.do?{target}")


def _queryable(value: str) -> bool:
    """``value`` may go into a CMDB encoded query as the value of one ``field=value`` clause."""
    if not value or len(value) > 1024:
        return False
    if _SCRIPT_SCHEME.search(_URL_IGNORED.sub("", value)):
        return False
    return _CMDB_VALUE_PATTERN.match(value) is not None


def _classify(status: int, text: str) -> tuple[bool, Reason] | None:
    if status == 403 and _REFUSES_THE_CHANGE.search(text):
        # ServiceNow answers 403 both to an ACL (the bridge's own access: hold the work) and to a
        # data policy or business rule aborting this write (the change itself: dead-letter it).
        return False, Reason.CLIENT_ERROR
    return None


def _error_text(response: requests.Response) -> str:
    """ServiceNow's own explanation: ``message (detail)``; the token endpoint's OAuth-style error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = detail = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message, detail = _text(error.get("message")), _text(error.get("detail"))
        elif isinstance(error, str):
            # The token endpoint answers in OAuth style: {"error": ..., "error_description": ...}.
            message, detail = error, _text(body.get("error_description"))
    if not message:
        message, detail = detail, ""
    return f"{message} ({detail})" if detail and detail != message else message


def _result_list(payload: Any) -> list[dict[str, Any]]:
    return [row for row in member_list(_SYSTEM, payload, "result") if isinstance(row, dict)]


def _result_object(payload: Any) -> dict[str, Any]:
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, dict):
        raise ItsmError(f"{_SYSTEM}: response has no 'result' object", retryable=True, reason=Reason.INVALID_RESPONSE)
    return result


def _text(value: Any) -> str:
    """A field as text: ServiceNow returns strings, but tolerate numbers and nulls."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""
