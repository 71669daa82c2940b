"""The ServiceNow adapter: incidents and CMDB lookups through the Table API.

Each public method is one ServiceNow operation (plus, with OAuth, a token request and at most one
repeat after a 401). It never retries or sleeps otherwise: failures become
:class:`~bridge.errors.ItsmError` classified by :func:`bridge.errors.classify_status` and the
caller's :mod:`bridge.retry` loop decides what to do.

Two ServiceNow habits shape the code. An encoded query silently drops clauses it cannot parse
and may then match unrelated records, so keys are validated before they are put into a query
and every returned record is re-checked. Error bodies are ``{"error": {"message", "detail"}}``;
their text is kept in the ItsmError message, with any credential the bridge knows scrubbed out.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import requests

from ..config import Settings
from ..deadline import remaining
from ..errors import ConfigError, ItsmError, Reason, classify_status
from ..httpclient import error_from_exception, new_session, parse_retry_after
from .base import ConfigurationItem, Resolution, WorkItem, WorkItemRecord, WorkItemRef

__all__ = ["CONNECT_TIMEOUT_SECONDS", "KEY_PATTERN", "ServiceNowAdapter"]

log = logging.getLogger(__name__)

# Slightly above a multiple of 3 s, the TCP SYN retransmission interval (requests' advice).
CONNECT_TIMEOUT_SECONDS = 3.05
# Correlation keys are GUIDs or hex hashes; nothing here can form encoded-query syntax.
KEY_PATTERN = re.compile(r"^[0-9A-Za-z._:-]{1,100}\Z")
# Real sys_ids are 32 hex digits; anything path-like must never reach the URL.
_SYS_ID_PATTERN = re.compile(r"^[0-9A-Za-z_-]{1,64}\Z")
_OPEN_STATES = frozenset({"1", "2", "3"})  # New, In Progress, On Hold
_RESOLVED_STATE = "6"
_FIND_LIMIT = 10
# Renew an OAuth token this long before it expires, so a call never starts with a dying token.
_TOKEN_RENEW_MARGIN_SECONDS = 60.0
# ServiceNow's default access token lifespan, used when the token response omits expires_in.
_DEFAULT_TOKEN_LIFETIME_SECONDS = 1800.0
_MAX_ERROR_TEXT = 500
# A 403 that refuses this write, not the bridge's access (FACTS 4.4: ACL, business rule, data policy).
_REFUSES_THE_CHANGE = re.compile(r"data policy|business rule|operation against .* aborted", re.IGNORECASE)
_SYSTEM = "ServiceNow"
# Fields the bridge itself manages; mapping "extra_fields" must not override them.
_MANAGED_FIELDS = frozenset(
    {
        "correlation_id",
        "correlation_display",
        "short_description",
        "description",
        "impact",
        "urgency",
        "work_notes",
        "cmdb_ci",
        "state",
        "close_code",
        "close_notes",
    }
)


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float


class ServiceNowAdapter:
    """:class:`~bridge.adapters.base.ItsmAdapter` for a ServiceNow instance's Table API.

    Authenticates with basic auth (``SERVICENOW_USERNAME``/``PASSWORD``) or, when
    ``SERVICENOW_CLIENT_ID``/``SECRET`` are set, with an OAuth token from ``/oauth_token.do``
    (``password`` grant when a username/password is set too, ``client_credentials`` otherwise).
    ``clock`` (wall time, seconds) drives token expiry and HTTP-date ``Retry-After`` values.
    """

    name: ClassVar[str] = "servicenow"

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.servicenow_instance_url:
            raise ConfigError("SERVICENOW_INSTANCE_URL", "is required for the servicenow adapter")
        self._instance = settings.servicenow_instance_url.rstrip("/")
        self._table = settings.servicenow_table
        self._cmdb_table = settings.cmdb_table
        self._cmdb_resource_id_field = settings.cmdb_resource_id_field
        self._cmdb_name_field = settings.cmdb_name_field
        self._timeout = (CONNECT_TIMEOUT_SECONDS, settings.itsm_timeout_seconds)
        self._username = settings.servicenow_username
        self._password = settings.servicenow_password
        self._client_id = settings.servicenow_client_id
        self._client_secret = settings.servicenow_client_secret
        self._oauth = bool(self._client_id and self._client_secret)
        if not self._oauth and not (self._username and self._password):
            raise ConfigError(
                "SERVICENOW_USERNAME",
                "set SERVICENOW_USERNAME/PASSWORD (basic auth) or SERVICENOW_CLIENT_ID/SECRET (OAuth)",
            )
        self._session = session if session is not None else new_session()
        self._clock = clock
        self._token: _Token | None = None
        # Tokens dropped after a 401 are still secrets a server might echo; remember the last few.
        self._recent_tokens: deque[str] = deque(maxlen=4)

    # ----------------------------------------------------------------- incidents

    def find(self, correlation_id: str) -> list[WorkItemRecord]:
        if not KEY_PATTERN.match(correlation_id):
            raise ValueError("correlation id must match " + KEY_PATTERN.pattern)
        payload = self._call(
            "GET",
            self._table_path(),
            params={
                "sysparm_query": f"correlation_id={correlation_id}^ORDERBYsys_created_on",
                "sysparm_fields": "sys_id,number,state,correlation_id,sys_created_on",
                "sysparm_limit": str(_FIND_LIMIT),
                "sysparm_exclude_reference_link": "true",
            },
        )
        rows = _result_list(payload)
        exact: list[dict[str, Any]] = []
        for row in rows:
            if _text(row.get("correlation_id")) != correlation_id or not _text(row.get("sys_id")):
                # ServiceNow drops query clauses it cannot parse; never act on what it returned then.
                log.warning(
                    "ServiceNow returned %s %s (correlation_id %r) for key %s; ignoring it",
                    self._table,
                    _text(row.get("number")) or _text(row.get("sys_id")) or "<no sys_id>",
                    _text(row.get("correlation_id"))[:120],
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
                is_open=_text(row.get("state")) in _OPEN_STATES,
                state=_text(row.get("state")),
            )
            for row in exact
        ]

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        body: dict[str, str] = {}
        optional = {
            "caller_id": item.caller_id,
            "assignment_group": item.assignment_group,
            "category": item.category,
        }
        body.update({field: value for field, value in optional.items() if value})
        ignored = sorted(set(item.extra_fields) & _MANAGED_FIELDS)
        if ignored:
            log.warning("extra_fields %s are managed by the bridge and were ignored", ignored)
        body.update({k: v for k, v in item.extra_fields.items() if k not in _MANAGED_FIELDS})
        body.update(
            {
                "correlation_id": item.correlation_id,
                "correlation_display": item.correlation_display,
                "short_description": item.short_description,
                "description": item.description,
                "impact": str(item.impact),
                "urgency": str(item.urgency),
            }
        )
        notes = [item.work_note]
        if resolution is not None:
            # One insert, already resolved: the data policy wants close_code and close_notes with it.
            body.update(
                {"state": _RESOLVED_STATE, "close_code": resolution.close_code, "close_notes": resolution.close_notes}
            )
            notes.append(resolution.work_note)
        if any(notes):
            body["work_notes"] = "\n\n".join(n for n in notes if n)
        if item.configuration_item is not None:
            body["cmdb_ci"] = item.configuration_item.id
        payload = self._call(
            "POST", self._table_path(), params={"sysparm_fields": "sys_id,number"}, json_body=body
        )
        record = _result_object(payload)
        sys_id = _text(record.get("sys_id"))
        if not sys_id:
            raise ItsmError(
                f"{_SYSTEM}: created record carries no sys_id",
                retryable=True,
                reason=Reason.INVALID_RESPONSE,
            )
        ref = self._ref(sys_id, _text(record.get("number")) or None)
        log.info(
            "ServiceNow %s %s created for key %s", self._table, ref.number or sys_id, item.correlation_id
        )
        return ref

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        self._call(
            "PATCH",
            self._record_path(ref),
            params={"sysparm_fields": "sys_id"},
            json_body={"work_notes": note},
        )

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        if not marker:
            raise ValueError("marker must not be empty")
        # A journal field's display value is its whole history as text, newest entry first.
        payload = self._call(
            "GET",
            self._record_path(ref),
            params={"sysparm_fields": "work_notes", "sysparm_display_value": "true"},
        )
        notes = _result_object(payload).get("work_notes")
        if isinstance(notes, Mapping):  # sysparm_display_value=all shape, should an instance send it
            notes = notes.get("display_value")
        return marker in _text(notes)

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        body = {
            "state": _RESOLVED_STATE,
            "close_code": resolution.close_code,
            "close_notes": resolution.close_notes,
        }
        if resolution.work_note:
            body["work_notes"] = resolution.work_note
        self._call("PATCH", self._record_path(ref), params={"sysparm_fields": "sys_id,state"}, json_body=body)
        log.info("ServiceNow %s %s resolved", self._table, ref.number or ref.id)

    # ----------------------------------------------------------------- CMDB

    def find_configuration_item(
        self, resource_ids: Sequence[str], names: Sequence[str]
    ) -> ConfigurationItem | None:
        lookups = [(self._cmdb_resource_id_field, "resource_id", v) for v in resource_ids]
        lookups += [(self._cmdb_name_field, "name", v) for v in names]
        for field, matched_on, value in lookups:
            if not value or "^" in value or "\n" in value or "\r" in value:
                # Such a value would add clauses to the encoded query instead of being matched.
                log.debug("skipping CMDB lookup of a %s that cannot be queried safely", matched_on)
                continue
            found = self._find_ci(field, matched_on, value)
            if found is not None:
                return found
        return None

    def _find_ci(self, field: str, matched_on: str, value: str) -> ConfigurationItem | None:
        fields = ",".join(dict.fromkeys(("sys_id", "name", field)))
        payload = self._call(
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
            log.warning(
                "CMDB %s has several records with %s=%s; not binding any", self._cmdb_table, field, value
            )
            return None
        if not matches:
            return None
        row = matches[0]
        return ConfigurationItem(
            id=_text(row.get("sys_id")), name=_text(row.get("name")) or None, matched_on=matched_on
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._session.close()

    # ----------------------------------------------------------------- HTTP

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
        url = f"{self._instance}/nav_to.do?{target}"
        return WorkItemRef(system=self.name, id=sys_id, number=number, url=url)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str],
        json_body: Mapping[str, str] | None = None,
    ) -> Any:
        """One Table API call; with OAuth, a 401 drops the token and the call is made once more."""
        response = self._send(method, path, params, json_body)
        if response.status_code == 401 and self._oauth:
            log.info("ServiceNow answered 401 to a bearer token; fetching a new token and repeating once")
            self._token = None
            response = self._send(method, path, params, json_body)
        return self._parse(method, path, response)

    def _send(
        self, method: str, path: str, params: Mapping[str, str], json_body: Mapping[str, str] | None
    ) -> requests.Response:
        url = self._instance + path
        headers: dict[str, str] = {}
        auth: tuple[str, str] | None = None
        if self._oauth:
            headers["Authorization"] = f"Bearer {self._access_token()}"
        else:
            auth = (self._username or "", self._password or "")
        timeout = self._timeouts()
        try:
            return self._session.request(
                method,
                url,
                params=dict(params),
                json=dict(json_body) if json_body is not None else None,
                headers=headers,
                auth=auth,
                timeout=timeout,
                # A redirect here is a misconfiguration (e.g. an SSO page); never follow it with credentials.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise self._scrubbed(error_from_exception(exc, system=_SYSTEM, method=method, url=url)) from None

    def _timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts, shortened to the alert's remaining time (bridge.deadline)."""
        left = remaining()
        if left is None:
            return self._timeout
        if left <= 0:
            raise ItsmError(
                f"{_SYSTEM}: the alert's time budget is spent", retryable=True, reason=Reason.TIMEOUT
            )
        return min(self._timeout[0], left), min(self._timeout[1], left)

    def _parse(self, method: str, path: str, response: requests.Response) -> Any:
        status = response.status_code
        if not 200 <= status < 300:
            raise self._status_error(response)
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ItsmError(
                f"{_SYSTEM} {status}: response to {method} {path} is not JSON",
                retryable=True,
                reason=Reason.INVALID_RESPONSE,
                status=status,
            ) from None

    def _status_error(self, response: requests.Response, *, oauth_endpoint: bool = False) -> ItsmError:
        status = response.status_code
        retryable, reason = classify_status(status)
        label = f"{_SYSTEM} OAuth" if oauth_endpoint else _SYSTEM
        if oauth_endpoint and status in (400, 401):
            # Bad client id/secret or user credentials: trying again cannot help.
            retryable, reason = False, Reason.AUTH_ERROR
        message = _error_text(response, oauth_endpoint=oauth_endpoint)
        if status == 403 and not oauth_endpoint and _REFUSES_THE_CHANGE.search(message):
            # ServiceNow answers 403 both to an ACL (the bridge's own access: hold the work) and to a
            # data policy or business rule aborting this write (the change itself: dead-letter it).
            retryable, reason = False, Reason.CLIENT_ERROR
        error = ItsmError(
            self._scrub(f"{label} {status}: {message}"),
            retryable=retryable,
            reason=reason,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), now=self._clock),
        )
        return error

    # ----------------------------------------------------------------- OAuth

    def _access_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < token.renew_at:
            return token.value
        self._token = token = self._fetch_token()
        self._recent_tokens.append(token.value)
        return token.value

    def _fetch_token(self) -> _Token:
        form = {"client_id": self._client_id or "", "client_secret": self._client_secret or ""}
        if self._username and self._password:
            form.update(grant_type="password", username=self._username, password=self._password)
        else:
            form["grant_type"] = "client_credentials"
        url = f"{self._instance}/oauth_token.do"
        requested_at = self._clock()
        try:
            response = self._session.post(url, data=form, timeout=self._timeouts(), allow_redirects=False)
        except requests.RequestException as exc:
            error = error_from_exception(exc, system=f"{_SYSTEM} OAuth", method="POST", url=url)
            raise self._scrubbed(error) from None
        if not 200 <= response.status_code < 300:
            raise self._status_error(response, oauth_endpoint=True)
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

    # ----------------------------------------------------------------- secrets

    def _secrets(self) -> list[str]:
        values = [self._password, self._client_secret, *self._recent_tokens]
        if self._password and not self._oauth:
            # What actually travels in a basic Authorization header.
            credentials = f"{self._username}:{self._password}".encode()
            values.append(base64.b64encode(credentials).decode("ascii"))
        return [v for v in values if v]

    def _scrub(self, text: str) -> str:
        """Remove any credential the bridge holds, in case the server echoed one back."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _scrubbed(self, error: ItsmError) -> ItsmError:
        error.args = (self._scrub(str(error)),)
        return error


def _error_text(response: requests.Response, *, oauth_endpoint: bool) -> str:
    """ServiceNow's own explanation: ``message (detail)``, or the HTTP reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = detail = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message, detail = _text(error.get("message")), _text(error.get("detail"))
        elif oauth_endpoint and isinstance(error, str):
            # The token endpoint answers in OAuth style: {"error": ..., "error_description": ...}.
            message, detail = error, _text(body.get("error_description"))
    if not message:
        message, detail = detail, ""
    if not message:
        message = response.reason or "no error message"
    text = f"{message} ({detail})" if detail and detail != message else message
    text = " ".join(text.split())  # one line: error bodies may carry newlines or stack traces
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def _result_list(payload: Any) -> list[dict[str, Any]]:
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, list):
        raise ItsmError(
            f"{_SYSTEM}: response has no 'result' list", retryable=True, reason=Reason.INVALID_RESPONSE
        )
    return [row for row in result if isinstance(row, dict)]


def _result_object(payload: Any) -> dict[str, Any]:
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, dict):
        raise ItsmError(
            f"{_SYSTEM}: response has no 'result' object", retryable=True, reason=Reason.INVALID_RESPONSE
        )
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
