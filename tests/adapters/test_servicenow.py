"""ServiceNow adapter: the shared contract over two fakes, then ServiceNow's wire details.

Two implementations of the contract's ``FakeItsm`` run the whole contract:

* :class:`FakeServiceNow` answers through ``responses`` callbacks, so nothing leaves the process.
  It keeps incidents and CMDB records, parses encoded queries the way ServiceNow does (unknown
  clauses silently ignored, ``=`` case-insensitive), renders journal fields as display values,
  checks basic auth or OAuth bearer tokens, and lets a test script failures.
* :class:`StandInServiceNow` drives the sandbox's :class:`ServiceNowStandIn`, a real HTTP server on
  loopback, through its fault injector: the same cases over real sockets, real keep-alive
  connections, real timeouts and dropped connections.

The wire classes after them assert exact URLs, query strings, bodies and headers (on the
``responses`` fake), the failures only a mock can produce (a 100 as a final answer, a refused
connection), and the instance behaviour only the stand-in has (its data policy, token expiry).
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import itertools
import json
import logging
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
import requests
import responses
from urllib3.exceptions import ProtocolError

from bridge import __version__
from bridge.adapters import adapter_class, build_adapter
from bridge.adapters import servicenow as servicenow_module
from bridge.adapters.base import ConfigurationItem, ItsmAdapter, Resolution, WorkItemRef, WorkItemStatus
from bridge.adapters.registry import settings_of
from bridge.adapters.servicenow import CORRELATION_DISPLAY, KEY_PATTERN, SERVICENOW_SETTINGS, ServiceNowAdapter
from bridge.config import Settings
from bridge.deadline import deadline
from bridge.errors import ConfigError, ItsmError, Reason, classify_status
from bridge.httpclient import error_from_exception, new_session, parse_retry_after, redact_url
from bridge.sandbox.servicenow import ServiceNowStandIn

from .contract import KEY, RESOURCE_ID, AdapterContract, FakeClock, FakeRecord, make_item

INSTANCE = "https://contoso.service-now.com"
TABLE_URL = f"{INSTANCE}/api/now/table/incident"
USERNAME = "svc_azure_bridge"
PASSWORD = "pw-Sup3r$ecret!value"
CLIENT_ID = "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c"
CLIENT_SECRET = "cs-T0p~Secret_client_value"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

AUTH_MODES = ("basic", "oauth_client_credentials", "oauth_password")
OPEN_STATES = ("1", "2", "3")
_STATE_OF: Mapping[WorkItemStatus, str] = {
    WorkItemStatus.OPEN: "1",
    WorkItemStatus.RESOLVED: "6",
    WorkItemStatus.CLOSED: "7",
    WorkItemStatus.CANCELED: "8",
}
_STATUS_OF: Mapping[str, WorkItemStatus] = {
    **dict.fromkeys(OPEN_STATES, WorkItemStatus.OPEN),
    "6": WorkItemStatus.RESOLVED,
    "7": WorkItemStatus.CLOSED,
    "8": WorkItemStatus.CANCELED,
}
FOREIGN_DISPLAY = "Contoso Event Management"  # another integration that writes correlation_id too
_INCIDENT_FIELDS = frozenset(
    {
        "sys_id",
        "number",
        "state",
        "correlation_id",
        "correlation_display",
        "short_description",
        "description",
        "impact",
        "urgency",
        "work_notes",
        "cmdb_ci",
        "caller_id",
        "assignment_group",
        "category",
        "subcategory",
        "close_code",
        "close_notes",
        "sys_created_on",
        "u_source",
        "u_alert_rule",
    }
)
_CI_FIELDS = frozenset({"sys_id", "name", "object_id", "sys_class_name", "u_azure_id", "sys_created_on"})
# The tables reference columns point at, and the fields a query may name there.
_REFERENCE_TABLES: Mapping[str, frozenset[str]] = {
    "sys_user": frozenset({"sys_id", "user_name", "name", "email"}),
    "sys_user_group": frozenset({"sys_id", "name", "u_code"}),
    "cmdb_ci_service": frozenset({"sys_id", "name"}),
    "core_company": frozenset({"sys_id", "name"}),
    "cmn_location": frozenset({"sys_id", "name"}),
}
# A column a resolve may write that the adapter does not manage (and that is no reference).
EXTRA_FIELD = ("subcategory", "Azure Monitor")
# A status whose answer carries no body (RFC 9110 6.4.1): a server sends none, even for a fault.
_NO_BODY = frozenset({*range(100, 200), 204, 304})


def make_settings(
    auth: str = "basic", *, instance: str = INSTANCE, drop: tuple[str, ...] = (), **extra: str
) -> Settings:
    env = {
        "AUTH_TENANT_ID": TENANT,
        "AUTH_AUDIENCES": "api://bridge",
        "SERVICENOW_INSTANCE_URL": instance,
    }
    if auth in ("basic", "oauth_password"):
        env.update(SERVICENOW_USERNAME=USERNAME, SERVICENOW_PASSWORD=PASSWORD)
    if auth.startswith("oauth"):
        env.update(SERVICENOW_CLIENT_ID=CLIENT_ID, SERVICENOW_CLIENT_SECRET=CLIENT_SECRET)
    env.update(extra)
    for name in drop:
        env.pop(name, None)
    return Settings.from_env(env)


def sn_error(message: str | None, detail: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "detail": detail}, "status": "failure"})


def _configured_secrets(auth: str) -> list[str]:
    if auth == "basic":
        return [PASSWORD, base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()]
    if auth == "oauth_password":
        return [PASSWORD, CLIENT_SECRET]
    return [CLIENT_SECRET]


class _CommitThenDrop:
    """A scripted failure of :class:`FakeServiceNow`: handle the request, then lose the answer."""


class FakeServiceNow:
    """A small, stateful ServiceNow behind ``responses``; satisfies the contract's ``FakeItsm``."""

    def __init__(self, mock: responses.RequestsMock, *, auth: str, clock: FakeClock) -> None:
        self.auth = auth
        self.clock = clock
        self.tables: dict[str, dict[str, dict[str, str]]] = {
            "incident": {},
            "cmdb_ci": {},
            **{table: {} for table in _REFERENCE_TABLES},
        }
        self.journal: dict[str, list[str]] = {}
        self.failures: deque[tuple[int, Mapping[str, str], str] | Exception | _CommitThenDrop] = deque()
        self.token_failures: deque[tuple[int, Mapping[str, str], str] | Exception] = deque()
        self.valid_tokens: dict[str, float] = {}
        self.issued_tokens: list[str] = []
        self.token_forms: list[dict[str, str]] = []
        self.api_requests: list[requests.PreparedRequest] = []
        self.token_lifetime: Any = 1799
        self.sloppy = False
        self._numbers = itertools.count(10001)
        self._created = itertools.count()
        mock.add_callback(responses.POST, f"{INSTANCE}/oauth_token.do", callback=self._token_endpoint)
        api = re.compile(re.escape(INSTANCE) + r"/api/now/table/.*")
        for method in (responses.GET, responses.POST, responses.PATCH, responses.PUT, responses.DELETE):
            mock.add_callback(method, api, callback=self._table_api)

    # ------------------------------------------------------------- FakeItsm

    def seed(self, correlation_id: str, *, status: WorkItemStatus = WorkItemStatus.OPEN) -> str:
        return self.seed_incident(correlation_id, state=_STATE_OF[status])

    def seed_foreign(self, correlation_id: str) -> str:
        return self.seed_incident(correlation_id, correlation_display=FOREIGN_DISPLAY)

    def seed_incident(
        self, correlation_id: str, *, state: str = "1", correlation_display: str = CORRELATION_DISPLAY, **fields: str
    ) -> str:
        values = {"correlation_id": correlation_id, "correlation_display": correlation_display, "state": state}
        return self._insert("incident", {**values, **fields})

    def seed_ci(self, name: str, resource_id: str | None = None) -> str:
        fields = {"name": name, "sys_class_name": "cmdb_ci_vm_instance"}
        if resource_id is not None:
            fields["object_id"] = resource_id
        return self._insert("cmdb_ci", fields)

    def extra_field(self) -> tuple[str, str]:
        return EXTRA_FIELD

    def records(self) -> list[FakeRecord]:
        return [
            FakeRecord(
                id=sys_id,
                correlation_id=row.get("correlation_id", ""),
                status=_STATUS_OF.get(row.get("state", ""), WorkItemStatus.OPEN),
                notes=tuple(self.journal.get(sys_id, [])),
                fields=dict(row),
            )
            for sys_id, row in self.tables["incident"].items()
        ]

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        if body is None:
            body = "" if status in _NO_BODY else sn_error(_reason(status), None)
        for _ in range(times):
            self.failures.append((status, dict(headers or {}), body))

    def drop_next(self) -> None:
        # What requests raises when the server closes the connection after reading the request.
        self.failures.append(_remote_disconnected())

    def commit_then_drop_next(self) -> None:
        self.failures.append(_CommitThenDrop())

    def delay_next(self) -> None:
        self.failures.append(requests.ReadTimeout("Read timed out. (read timeout=4.0)"))

    def clear_failures(self) -> None:
        self.failures.clear()

    def sloppy_search(self) -> None:
        self.sloppy = True

    def error_body(self, message: str, detail: str) -> str:
        return sn_error(message, detail)

    def secrets(self) -> list[str]:
        return [*_configured_secrets(self.auth), *self.issued_tokens]

    # ------------------------------------------------------------- extra controls (wire tests)

    def refuse_next(self) -> None:
        """The next API request finds nobody listening (a failure before anything was sent)."""
        self.failures.append(requests.ConnectionError(OSError(111, "Connection refused")))

    def fail_token_next(self, status: int, headers: Mapping[str, str] | None = None, body: str | None = None) -> None:
        if body is None:
            body = json.dumps({"error_description": "access_denied", "error": "server_error"})
        self.token_failures.append((status, dict(headers or {}), body))

    def revoke_tokens(self) -> None:
        self.valid_tokens.clear()

    def incident(self, sys_id: str) -> dict[str, str]:
        return self.tables["incident"][sys_id]

    def seed_record(self, table: str, **fields: str) -> str:
        """A record of a table reference columns point at (a user, a group...)."""
        return self._insert(table, fields)

    def lookups(self) -> list[tuple[str, str]]:
        """(table, sysparm_query) of every GET on a table other than incident and cmdb_ci."""
        found = []
        for request in self.api_requests:
            table = urlsplit(request.url or "").path.split("/")[4]
            if request.method == "GET" and table in _REFERENCE_TABLES:
                found.append((table, parse_qs(urlsplit(request.url or "").query)["sysparm_query"][0]))
        return found

    # ------------------------------------------------------------- HTTP

    def _token_endpoint(self, request: requests.PreparedRequest) -> Any:
        form = dict(parse_qsl(_body_text(request), keep_blank_values=True))
        self.token_forms.append(form)
        if self.token_failures:
            return _scripted(self.token_failures.popleft())
        denied: tuple[int, dict[str, str], str] = (
            401,
            {},
            json.dumps({"error_description": "access_denied", "error": "server_error"}),
        )
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return denied
        grant = form.get("grant_type")
        if grant == "password":
            if form.get("username") != USERNAME or form.get("password") != PASSWORD:
                return denied
        elif grant != "client_credentials":
            return (400, {}, json.dumps({"error": "unsupported_grant_type"}))
        token = f"tok-{len(self.issued_tokens)}-{uuid.uuid4().hex}"
        self.issued_tokens.append(token)
        body: dict[str, Any] = {"access_token": token, "scope": "useraccount", "token_type": "Bearer"}
        if self.token_lifetime is not None:
            body["expires_in"] = self.token_lifetime
        lifetime = float(self.token_lifetime) if isinstance(self.token_lifetime, int) else 1799.0
        self.valid_tokens[token] = self.clock() + lifetime
        return (200, {"Content-Type": "application/json"}, json.dumps(body))

    def _table_api(self, request: requests.PreparedRequest) -> Any:
        self.api_requests.append(request)
        if not self._authorized(str(request.headers.get("Authorization", ""))):
            return (401, {}, sn_error("User Not Authenticated", "Required to provide Auth information"))
        if self.failures:
            failure = self.failures.popleft()
            if isinstance(failure, _CommitThenDrop):
                self._serve(request)
                return _remote_disconnected()
            return _scripted(failure)
        return self._serve(request)

    def _serve(self, request: requests.PreparedRequest) -> Any:
        parts = urlsplit(request.url or "")
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        segments = parts.path.split("/")[4:]  # after /api/now/table/
        table = segments[0]
        if table not in self.tables:
            return (400, {}, sn_error(f"Invalid table {table}", None))
        sys_id = segments[1] if len(segments) > 1 else None
        method = request.method
        if method == "GET" and sys_id is None:
            return self._list(table, params)
        if method == "POST" and sys_id is None:
            fields = json.loads(_body_text(request))
            new_id = self._insert(table, {k: str(v) for k, v in fields.items()})
            return _ok(self._render(table, new_id, params), status=201)
        if sys_id is None or sys_id not in self.tables[table]:
            return (
                404,
                {},
                sn_error("No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
            )
        if method == "GET":
            return _ok(self._render(table, sys_id, params))
        if method == "PATCH":
            self._update(table, sys_id, json.loads(_body_text(request)))
            return _ok(self._render(table, sys_id, params))
        return (405, {}, sn_error("Method not Supported", None))

    def _authorized(self, header: str) -> bool:
        if self.auth == "basic":
            expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
            return header == f"Basic {expected}"
        if not header.startswith("Bearer "):
            return False
        expires = self.valid_tokens.get(header.removeprefix("Bearer "))
        return expires is not None and self.clock() < expires

    # ------------------------------------------------------------- store

    def _insert(self, table: str, fields: Mapping[str, str]) -> str:
        sys_id = uuid.uuid4().hex
        created = datetime(2025, 6, 15, 9, 0, tzinfo=UTC) + timedelta(seconds=next(self._created))
        row = {"sys_id": sys_id, "sys_created_on": created.strftime("%Y-%m-%d %H:%M:%S")}
        if table == "incident":
            row["number"] = f"INC{next(self._numbers):07d}"
            row.setdefault("state", "1")
        row.update({k: v for k, v in fields.items() if k != "work_notes"})
        self.tables[table][sys_id] = row
        if fields.get("work_notes"):
            self.journal.setdefault(sys_id, []).append(fields["work_notes"])
        return sys_id

    def _update(self, table: str, sys_id: str, fields: Mapping[str, Any]) -> None:
        row = self.tables[table][sys_id]
        for key, value in fields.items():
            if key == "work_notes":
                if value:
                    self.journal.setdefault(sys_id, []).append(str(value))
            else:
                row[key] = str(value)

    def _list(self, table: str, params: Mapping[str, str]) -> Any:
        rows = list(self.tables[table].values())
        known = _INCIDENT_FIELDS if table == "incident" else _REFERENCE_TABLES.get(table, _CI_FIELDS)
        order: tuple[str, bool] | None = None
        conditions: list[tuple[str, str]] = []
        for clause in params.get("sysparm_query", "").split("^"):
            if clause.startswith("ORDERBYDESC"):
                order = (clause.removeprefix("ORDERBYDESC"), True)
            elif clause.startswith("ORDERBY"):
                order = (clause.removeprefix("ORDERBY"), False)
            elif "=" in clause and clause.split("=", 1)[0] in known:
                field, value = clause.split("=", 1)
                conditions.append((field, value))
            # Anything else is dropped without a word, as ServiceNow does by default.
        if not self.sloppy:
            rows = [r for r in rows if all(r.get(f, "").lower() == v.lower() for f, v in conditions)]
        if order is not None:
            rows.sort(key=lambda r: r.get(order[0], ""), reverse=order[1])
        limit = int(params.get("sysparm_limit", "10000"))
        result = [self._render(table, r["sys_id"], params) for r in rows[:limit]]
        return _ok(result)

    def _render(self, table: str, sys_id: str, params: Mapping[str, str]) -> dict[str, str]:
        row = dict(self.tables[table][sys_id])
        notes = self.journal.get(sys_id, [])
        if params.get("sysparm_display_value") == "true":
            # A journal field's display value: every entry, newest first, with a header line each.
            row["work_notes"] = "".join(
                f"2025-06-15 10:{i:02d}:00 - Azure Bridge (Work notes)\n{note}\n\n"
                for i, note in reversed(list(enumerate(notes)))
            )
        else:
            row["work_notes"] = ""
        fields = params.get("sysparm_fields")
        if fields:
            row = {f: row.get(f, "") for f in fields.split(",")}
        return row


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _remote_disconnected() -> requests.ConnectionError:
    return requests.ConnectionError(
        ProtocolError("Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection"))
    )


def _scripted(entry: tuple[int, Mapping[str, str], str] | Exception) -> Any:
    if isinstance(entry, Exception):
        return entry
    status, headers, body = entry
    return (status, dict(headers), body)


def _ok(result: Any, status: int = 200) -> Any:
    return (status, {"Content-Type": "application/json"}, json.dumps({"result": result}))


def _body_text(request: requests.PreparedRequest) -> str:
    body = request.body
    if body is None:
        return ""
    return body.decode() if isinstance(body, bytes) else str(body)


# ===================================================================== the stand-in as a FakeItsm

_API_PATH = r"^/api/"  # the Table API; never the token endpoint
# The stand-in adapter's read timeout, and how late a delayed answer comes: loopback answers in a
# millisecond or two, so a quarter of a second is ample for every other call.
STANDIN_READ_TIMEOUT = "0.25"
_LATE_SECONDS = 3.0


class _ClockSwitch:
    """The stand-in's clock for the whole module, pointed at each test's ``FakeClock``."""

    def __init__(self) -> None:
        self.target: Callable[[], float] = FakeClock()

    def __call__(self) -> float:
        return self.target()


class StandInServiceNow:
    """The contract's ``FakeItsm`` over :class:`ServiceNowStandIn`, a real server on loopback.

    Seeds are written with the stand-in's trusted ``insert`` (with rising ``sys_created_on``);
    failures are fault-injector rules on the Table API paths; tokens are read off the wire by a
    response hook on the adapter's session (:meth:`session`), as a client sees them.
    """

    def __init__(self, standin: ServiceNowStandIn, *, auth: str) -> None:
        self.standin = standin
        self.auth = auth
        self.tokens: list[str] = []
        self._created = itertools.count()

    def session(self) -> requests.Session:
        """A session for the adapter under test, noting every token the stand-in issues."""
        session = new_session()
        session.hooks["response"].append(self._note_tokens)
        return session

    def restore(self) -> None:
        self.standin.__dict__.pop("_handle", None)
        self.standin.faults.clear()

    # ------------------------------------------------------------- FakeItsm

    def seed(self, correlation_id: str, *, status: WorkItemStatus = WorkItemStatus.OPEN) -> str:
        values = {"correlation_id": correlation_id, "state": _STATE_OF[status]}
        if status is not WorkItemStatus.OPEN:
            values.update(close_code="Solution provided", close_notes="Seeded")
        return self._insert_incident(values)

    def seed_foreign(self, correlation_id: str) -> str:
        return self._insert_incident({"correlation_id": correlation_id, "correlation_display": FOREIGN_DISPLAY})

    def seed_ci(self, name: str, resource_id: str | None = None) -> str:
        values = {"name": name, "sys_class_name": "cmdb_ci_vm_instance"}
        if resource_id is not None:
            values["object_id"] = resource_id
        return str(self.standin.insert("cmdb_ci", values)["sys_id"])

    def extra_field(self) -> tuple[str, str]:
        return EXTRA_FIELD

    def records(self) -> list[FakeRecord]:
        return [
            FakeRecord(
                id=row["sys_id"],
                correlation_id=row["correlation_id"],
                status=_STATUS_OF.get(row["state"], WorkItemStatus.OPEN),
                notes=tuple(self.standin.journal("incident", row["sys_id"])),
                fields=row,
            )
            for row in self.standin.records("incident")
        ]

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        if status == 100:
            raise ValueError("a 100 is always interim on a real connection; it cannot be an answer")
        if body is None and status in _NO_BODY:
            body = ""
        self.standin.faults.status(status, path=_API_PATH, headers=dict(headers or {}), body=body, times=times)

    def drop_next(self) -> None:
        self.standin.faults.drop(path=_API_PATH, times=1)

    def commit_then_drop_next(self) -> None:
        self.standin.faults.commit_then_drop(path=_API_PATH, times=1)

    def delay_next(self) -> None:
        # Late and then dropped unhandled: the client has long given up, and nothing is written
        # behind a later test's back.
        self.standin.faults.latency(_LATE_SECONDS, path=_API_PATH, times=1)
        self.standin.faults.drop(path=_API_PATH, times=1)

    def clear_failures(self) -> None:
        self.standin.faults.clear()

    def sloppy_search(self) -> None:
        standin = self.standin
        handle = type(standin)._handle.__get__(standin)

        def ignore_filters(
            method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
        ) -> Any:
            if method == "GET" and "sysparm_query" in query:
                kept = [term for term in query["sysparm_query"].split("^") if term.startswith("ORDERBY")]
                query = {**query, "sysparm_query": "^".join(kept)}
            return handle(method, path, query, headers, body)

        # The stand-in looks its handler up on the instance at each request, for this purpose.
        standin._handle = ignore_filters  # type: ignore[method-assign]

    def error_body(self, message: str, detail: str) -> str:
        return sn_error(message, detail)

    def secrets(self) -> list[str]:
        return [*_configured_secrets(self.auth), *self.tokens]

    # ------------------------------------------------------------- plumbing

    def _insert_incident(self, values: Mapping[str, str]) -> str:
        created = datetime(2025, 6, 15, 9, 0, tzinfo=UTC) + timedelta(seconds=next(self._created))
        row = self.standin.insert(
            "incident",
            {
                "correlation_display": CORRELATION_DISPLAY,
                "short_description": "seeded",
                "sys_created_on": created.strftime("%Y-%m-%d %H:%M:%S"),
                **values,
            },
        )
        return str(row["sys_id"])

    def _note_tokens(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        # Access tokens only: those are what the adapter sends (and a server could echo). The
        # refresh token the stand-in also issues is never used; TestOverTheStandIn checks it is
        # never logged either.
        if urlsplit(response.url).path != "/oauth_token.do" or not response.ok:
            return
        try:
            body = response.json()
        except ValueError:
            return
        token = body.get("access_token") if isinstance(body, dict) else None
        if isinstance(token, str) and token:
            self.tokens.append(token)


def _start_standin() -> Iterator[tuple[ServiceNowStandIn, _ClockSwitch]]:
    switch = _ClockSwitch()
    with ServiceNowStandIn(
        username=USERNAME, password=PASSWORD, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, clock=switch
    ) as standin:
        yield standin, switch


@pytest.fixture(scope="module")
def standin_server() -> Iterator[tuple[ServiceNowStandIn, _ClockSwitch]]:
    """One stand-in for the contract cases (started once); each test resets it."""
    yield from _start_standin()


@pytest.fixture(scope="module")
def quiet_standin_server() -> Iterator[tuple[ServiceNowStandIn, _ClockSwitch]]:
    """Another for the cases that read the request log, which a late answer from a contract
    case (``delay_next``) could otherwise still append to."""
    yield from _start_standin()


def standin_settings(standin: ServiceNowStandIn, auth: str = "basic", **extra: str) -> Settings:
    return make_settings(auth, instance=standin.url, **{"ITSM_TIMEOUT_SECONDS": STANDIN_READ_TIMEOUT, **extra})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ===================================================================== contract


class TestServiceNowContract(AdapterContract):
    """The shared adapter contract over ``responses``, for basic auth and both OAuth grants."""

    adapter_name = "servicenow"
    fake_kind = "responses"

    @pytest.fixture(params=AUTH_MODES)
    def auth_mode(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def itsm(self, auth_mode: str, clock: FakeClock) -> Iterator[FakeServiceNow]:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield FakeServiceNow(mock, auth=auth_mode, clock=clock)

    @pytest.fixture
    def adapter(self, auth_mode: str, itsm: FakeServiceNow, clock: FakeClock) -> Iterator[ServiceNowAdapter]:
        adapter = ServiceNowAdapter(make_settings(auth_mode), clock=clock)
        yield adapter
        adapter.close()


@pytest.mark.integration
class TestServiceNowStandInContract(AdapterContract):
    """The same contract over real sockets, against the sandbox's ServiceNow stand-in."""

    adapter_name = "servicenow"
    fake_kind = "standin"

    @pytest.fixture(params=AUTH_MODES)
    def auth_mode(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def itsm(
        self, standin_server: tuple[ServiceNowStandIn, _ClockSwitch], auth_mode: str, clock: FakeClock
    ) -> Iterator[StandInServiceNow]:
        standin, switch = standin_server
        standin.reset()
        switch.target = clock
        fake = StandInServiceNow(standin, auth=auth_mode)
        yield fake
        fake.restore()

    @pytest.fixture
    def adapter(self, auth_mode: str, itsm: StandInServiceNow, clock: FakeClock) -> Iterator[ServiceNowAdapter]:
        adapter = ServiceNowAdapter(standin_settings(itsm.standin, auth_mode), itsm.session(), clock=clock)
        yield adapter
        adapter.close()


# ===================================================================== wire details


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeServiceNow]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeServiceNow(mock, auth="basic", clock=clock)


@pytest.fixture
def adapter(fake: FakeServiceNow, clock: FakeClock) -> Iterator[ServiceNowAdapter]:
    adapter = ServiceNowAdapter(make_settings("basic"), clock=clock)
    yield adapter
    adapter.close()


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """A plain scripted mock for responses the stateful fake would never give."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def query_of(request: requests.PreparedRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url or "").query, keep_blank_values=True)


def path_of(request: requests.PreparedRequest) -> str:
    return urlsplit(request.url or "").path


def json_of(request: requests.PreparedRequest) -> Any:
    return json.loads(_body_text(request))


class TestFind:
    def test_exact_request(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        adapter.find(KEY)

        (request,) = fake.api_requests
        assert request.method == "GET"
        assert path_of(request) == "/api/now/table/incident"
        assert query_of(request) == {
            "sysparm_query": [f"correlation_id={KEY}^correlation_display=Azure Monitor^ORDERBYsys_created_on"],
            "sysparm_fields": ["sys_id,number,state,correlation_id,correlation_display,sys_created_on"],
            "sysparm_limit": ["10"],
            "sysparm_exclude_reference_link": ["true"],
        }
        # The encoded query travels percent-encoded: '^' must not reach the server raw.
        assert "%5EORDERBYsys_created_on" in (request.url or "")
        assert request.req_kwargs["timeout"] == (3.05, 4.0)  # type: ignore[attr-defined]
        assert request.headers["Accept"] == "application/json"
        assert request.headers["User-Agent"] == f"azure-monitor-itsm-bridge/{__version__}"
        assert (
            request.headers["Authorization"] == "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        )

    def test_custom_table_and_timeout(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        fake.tables["u_alert_incident"] = {}
        adapter = ServiceNowAdapter(
            make_settings(SERVICENOW_TABLE="u_alert_incident", ITSM_TIMEOUT_SECONDS="9.5"), clock=clock
        )
        sys_id = adapter.create(make_item()).id

        (found,) = adapter.find(KEY)

        assert found.ref.id == sys_id
        assert found.ref.url == f"{INSTANCE}/nav_to.do?uri=u_alert_incident.do%3Fsys_id%3D{sys_id}"
        assert [path_of(r) for r in fake.api_requests] == ["/api/now/table/u_alert_incident"] * 2
        assert {r.req_kwargs["timeout"] for r in fake.api_requests} == {(3.05, 9.5)}  # type: ignore[attr-defined]

    def test_record_fields(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        sys_id = fake.seed_incident(KEY, state="2")

        (found,) = adapter.find(KEY)

        number = fake.incident(sys_id)["number"]
        assert found.ref == WorkItemRef(
            system="servicenow",
            id=sys_id,
            number=number,
            url=f"{INSTANCE}/nav_to.do?uri=incident.do%3Fsys_id%3D{sys_id}",
        )
        assert (found.correlation_id, found.status, found.is_open, found.state) == (
            KEY,
            WorkItemStatus.OPEN,
            True,
            "2",
        )

    @pytest.mark.parametrize(
        ("state", "status"),
        [
            ("1", WorkItemStatus.OPEN),
            ("2", WorkItemStatus.OPEN),
            ("3", WorkItemStatus.OPEN),
            ("6", WorkItemStatus.RESOLVED),
            ("7", WorkItemStatus.CLOSED),
            ("8", WorkItemStatus.CANCELED),
            # A state this bridge does not know (a custom one) is someone working on it.
            ("42", WorkItemStatus.OPEN),
            ("", WorkItemStatus.OPEN),
        ],
    )
    def test_states_map_to_neutral_statuses(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, state: str, status: WorkItemStatus
    ) -> None:
        fake.seed_incident(KEY, state=state)

        (found,) = adapter.find(KEY)

        assert (found.state, found.status, found.is_open) == (state, status, status is WorkItemStatus.OPEN)

    def test_only_incidents_marked_azure_monitor(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.seed_incident(KEY, correlation_display=FOREIGN_DISPLAY)
        fake.seed_incident(KEY, correlation_display="")
        ours = fake.seed(KEY)

        assert [r.ref.id for r in adapter.find(KEY)] == [ours]
        assert query_of(fake.api_requests[0])["sysparm_query"][0].split("^") == [
            f"correlation_id={KEY}",
            "correlation_display=Azure Monitor",
            "ORDERBYsys_created_on",
        ]

    @pytest.mark.parametrize(
        "key",
        [
            "",
            "a^ORsys_id!=0",
            "a^NQactive=true",
            "abc^",
            "x" * 101,
            "with space",
            "new\nline",
            "a=b",
            "a,b",
            "a&sysparm_limit=1",
            "caf\u00e9",
            "a/b",
        ],
    )
    def test_refuses_keys_that_could_inject_query_syntax(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, key: str
    ) -> None:
        with pytest.raises(ValueError, match="correlation id"):
            adapter.find(key)
        assert fake.api_requests == []

    @pytest.mark.parametrize("key", ["x" * 100, "a.b_c:d-E9", "0d3f5b8a41c64e2f9a7b5c1d2e3f4a5b"])
    def test_accepts_keys_at_the_edges(self, adapter: ServiceNowAdapter, fake: FakeServiceNow, key: str) -> None:
        sys_id = fake.seed(key)

        assert [r.ref.id for r in adapter.find(key)] == [sys_id]
        assert query_of(fake.api_requests[0])["sysparm_query"] == [
            f"correlation_id={key}^correlation_display=Azure Monitor^ORDERBYsys_created_on"
        ]

    def test_drops_and_logs_records_with_another_key_or_mark(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock, caplog: pytest.LogCaptureFixture
    ) -> None:
        def row(sys_id: str, number: str, correlation_id: str | None, display: str | None, day: int) -> dict[str, Any]:
            return {
                "sys_id": sys_id,
                "number": number,
                "state": "1",
                "correlation_id": correlation_id,
                "correlation_display": display,
                "sys_created_on": f"2025-01-0{day} 00:00:00",
            }

        mock.get(
            TABLE_URL,
            json={
                "result": [
                    row("a" * 32, "INC0000001", "other", CORRELATION_DISPLAY, 1),
                    row("b" * 32, "INC0000002", KEY, CORRELATION_DISPLAY, 2),
                    row("", "INC0000003", KEY, CORRELATION_DISPLAY, 3),
                    row("c" * 32, "INC0000004", None, CORRELATION_DISPLAY, 4),
                    row("d" * 32, "INC0000005", KEY, FOREIGN_DISPLAY, 5),
                    row("e" * 32, "INC0000006", KEY, None, 6),
                    row("f" * 32, "INC0000007", KEY, "azure monitor", 7),
                ]
            },
        )
        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            found = adapter.find(KEY)

        assert [r.ref.id for r in found] == ["b" * 32]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 6
        assert "INC0000001" in warnings[0] and "'other'" in warnings[0]
        assert "INC0000005" in warnings[3] and repr(FOREIGN_DISPLAY) in warnings[3]

    def test_orders_oldest_first_even_if_the_server_does_not(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock
    ) -> None:
        rows = [
            {
                "sys_id": "b" * 32,
                "number": "INC2",
                "state": "1",
                "correlation_id": KEY,
                "correlation_display": CORRELATION_DISPLAY,
                "sys_created_on": "2025-01-02 00:00:00",
            },
            {
                "sys_id": "a" * 32,
                "number": "INC1",
                "state": "7",
                "correlation_id": KEY,
                "correlation_display": CORRELATION_DISPLAY,
                "sys_created_on": "2025-01-01 00:00:00",
            },
        ]
        mock.get(TABLE_URL, json={"result": rows})

        assert [r.ref.number for r in adapter.find(KEY)] == ["INC1", "INC2"]

    @pytest.mark.parametrize(
        "body",
        ['{"result": {"sys_id": "x"}}', '{"records": []}', "[]", '"result"'],
    )
    def test_unexpected_json_shape_is_invalid_response(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock, body: str
    ) -> None:
        mock.get(TABLE_URL, body=body, content_type="application/json")

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable) == (Reason.INVALID_RESPONSE, True)


class TestCreate:
    def test_exact_request_with_every_field(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        caller = fake.seed_record("sys_user", user_name="azure.monitor", name="Azure Monitor")
        group = "b" * 32
        item = make_item(
            configuration_item=ConfigurationItem(id="c" * 32, name="vm-web-01", matched_on="resource_id"),
            fields={
                "caller_id": "azure.monitor",
                "assignment_group": group,
                "category": "software",
                "u_source": "azure",
                "u_alert_rule": "cpu-high",
            },
        )

        ref = adapter.create(item)

        lookup, request = fake.api_requests
        assert (lookup.method, path_of(lookup)) == ("GET", "/api/now/table/sys_user")
        assert request.method == "POST"
        assert path_of(request) == "/api/now/table/incident"
        assert query_of(request) == {"sysparm_fields": ["sys_id,number"]}
        assert request.headers["Content-Type"] == "application/json"
        assert json_of(request) == {
            "correlation_id": KEY,
            "correlation_display": "Azure Monitor",
            "short_description": item.title,
            "description": item.description,
            "impact": "2",
            "urgency": "2",
            "work_notes": item.note,
            "cmdb_ci": "c" * 32,
            "caller_id": caller,
            "assignment_group": group,
            "category": "software",
            "u_source": "azure",
            "u_alert_rule": "cpu-high",
        }
        stored = fake.incident(ref.id)
        assert ref == WorkItemRef(
            system="servicenow",
            id=stored["sys_id"],
            number=stored["number"],
            url=f"{INSTANCE}/nav_to.do?uri=incident.do%3Fsys_id%3D{stored['sys_id']}",
        )

    def test_minimal_item_sends_only_what_is_set(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        adapter.create(make_item(note="", impact=1, urgency=3, severity=None))

        body = json_of(fake.api_requests[0])
        assert set(body) == {
            "correlation_id",
            "correlation_display",
            "short_description",
            "description",
            "impact",
            "urgency",
        }
        assert (body["impact"], body["urgency"]) == ("1", "3")

    def test_settings_give_defaults_the_mapping_overrides(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        caller = fake.seed_record("sys_user", user_name="azure.monitor")
        default_group = fake.seed_record("sys_user_group", name="Default Group")
        routed_group = fake.seed_record("sys_user_group", name="Routed Group")
        adapter = ServiceNowAdapter(
            make_settings(
                SERVICENOW_CALLER_ID="azure.monitor",
                SERVICENOW_ASSIGNMENT_GROUP="Default Group",
                SERVICENOW_CATEGORY="software",
            ),
            clock=clock,
        )

        adapter.create(make_item(fields={"assignment_group": "Routed Group", "u_source": "azure"}))
        adapter.create(make_item())

        first, second = (json_of(r) for r in fake.api_requests if r.method == "POST")
        assert (first["caller_id"], first["assignment_group"], first["category"], first["u_source"]) == (
            caller,
            routed_group,
            "software",
            "azure",
        )
        assert (second["caller_id"], second["assignment_group"], second["category"]) == (
            caller,
            default_group,
            "software",
        )
        assert "u_source" not in second
        # The overridden default is never looked up; each name once (then cached).
        assert fake.lookups() == [
            ("sys_user", "user_name=azure.monitor"),
            ("sys_user_group", "name=Routed Group"),
            ("sys_user_group", "name=Default Group"),
        ]

    def test_mapped_fields_cannot_override_managed_fields(
        self, fake: FakeServiceNow, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        adapter = ServiceNowAdapter(make_settings(SERVICENOW_ASSIGNMENT_GROUP="d" * 32), clock=clock)
        item = make_item(
            fields={
                "correlation_id": "hijack",
                "correlation_display": "hijack",
                "impact": "1",
                "state": "7",
                "work_notes": "hijack",
                "assignment_group": "e" * 32,
            },
        )
        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            adapter.create(item)

        body = json_of(fake.api_requests[0])
        assert (
            body["correlation_id"],
            body["correlation_display"],
            body["impact"],
            body["work_notes"],
            body["assignment_group"],
        ) == (KEY, "Azure Monitor", "2", item.note, "e" * 32)
        assert "state" not in body
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for name in ("correlation_id", "correlation_display", "impact", "state", "work_notes"):
            assert name in warning
        assert "assignment_group" not in warning

    def test_create_already_resolved_is_one_insert(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        item = make_item()

        ref = adapter.create(item, Resolution(None, "The alert was over.", "Alert resolved [azmon:resolved]"))

        (request,) = fake.api_requests
        body = json_of(request)
        assert (body["state"], body["close_code"], body["close_notes"]) == (
            "6",
            "Solution provided",
            "The alert was over.",
        )
        assert body["work_notes"] == f"{item.note}\n\nAlert resolved [azmon:resolved]"
        assert fake.incident(ref.id)["state"] == "6"

    def test_create_already_resolved_with_a_mapped_code(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        adapter = ServiceNowAdapter(make_settings(SERVICENOW_CLOSE_CODE="Closed/Resolved by Caller"), clock=clock)

        adapter.create(make_item(note=""), Resolution("Workaround provided", "over", ""))
        adapter.create(make_item(note=""), Resolution(None, "over", "resolved [r]"))

        first, second = (json_of(r) for r in fake.api_requests)
        assert first["close_code"] == "Workaround provided"
        assert "work_notes" not in first
        assert second["close_code"] == "Closed/Resolved by Caller"
        assert second["work_notes"] == "resolved [r]"

    @pytest.mark.parametrize("status", [200, 201])
    def test_accepts_200_and_201(self, adapter: ServiceNowAdapter, mock: responses.RequestsMock, status: int) -> None:
        mock.post(TABLE_URL, json={"result": {"sys_id": "d" * 32, "number": "INC0010099"}}, status=status)

        ref = adapter.create(make_item())

        assert (ref.id, ref.number) == ("d" * 32, "INC0010099")

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            ("<html><body>Instance hibernating</body></html>", "text/html"),
            ('{"result": {"number": "INC1"}}', "application/json"),
            ("", "application/json"),
        ],
    )
    def test_unusable_success_is_retryable_invalid_response(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock, body: str, content_type: str
    ) -> None:
        mock.post(TABLE_URL, body=body, status=201, content_type=content_type)

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (caught.value.reason, caught.value.retryable) == (Reason.INVALID_RESPONSE, True)


class TestNotesAndResolve:
    def test_add_note_request(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        sys_id = fake.seed(KEY)

        adapter.add_note(WorkItemRef("servicenow", sys_id), "Fired again [azmon:fired:2]")

        (request,) = fake.api_requests
        assert (request.method, path_of(request)) == ("PATCH", f"/api/now/table/incident/{sys_id}")
        assert query_of(request) == {"sysparm_fields": ["sys_id"]}
        assert json_of(request) == {"work_notes": "Fired again [azmon:fired:2]"}

    def test_has_note_request_and_answer(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        ref = adapter.create(make_item(note="first [m-1]"))
        adapter.add_note(ref, "second [m-2]")
        fake.api_requests.clear()

        assert adapter.has_note(ref, "[m-1]")
        assert adapter.has_note(ref, "[m-2]")
        assert not adapter.has_note(ref, "[m-3]")

        request = fake.api_requests[0]
        assert (request.method, path_of(request)) == ("GET", f"/api/now/table/incident/{ref.id}")
        assert query_of(request) == {"sysparm_fields": ["work_notes"], "sysparm_display_value": ["true"]}

    @pytest.mark.parametrize(
        ("work_notes", "expected"),
        [
            ("2025-06-15 10:00:00 - Bridge (Work notes)\nFired [m-1]\n\n", True),
            ({"display_value": "Fired [m-1]", "value": ""}, True),
            ("", False),
            (None, False),
        ],
    )
    def test_has_note_reads_display_value_shapes(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock, work_notes: Any, expected: bool
    ) -> None:
        mock.get(f"{TABLE_URL}/{'e' * 32}", json={"result": {"work_notes": work_notes}})

        assert adapter.has_note(WorkItemRef("servicenow", "e" * 32), "[m-1]") is expected

    def test_has_note_refuses_an_empty_marker(self, adapter: ServiceNowAdapter) -> None:
        with pytest.raises(ValueError, match="marker"):
            adapter.has_note(WorkItemRef("servicenow", "e" * 32), "")

    def test_resolve_request(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        sys_id = fake.seed(KEY)

        adapter.resolve(
            WorkItemRef("servicenow", sys_id, "INC0010001"),
            Resolution(code="Solution provided", summary="Alert resolved.", note="Resolved [r]"),
        )

        (request,) = fake.api_requests
        assert (request.method, path_of(request)) == ("PATCH", f"/api/now/table/incident/{sys_id}")
        assert query_of(request) == {"sysparm_fields": ["sys_id,state"]}
        assert json_of(request) == {
            "state": "6",
            "close_code": "Solution provided",
            "close_notes": "Alert resolved.",
            "work_notes": "Resolved [r]",
        }
        stored = fake.incident(sys_id)
        assert (stored["state"], stored["close_code"], stored["close_notes"]) == (
            "6",
            "Solution provided",
            "Alert resolved.",
        )

    @pytest.mark.parametrize(
        ("setting", "code", "sent"),
        [
            (None, None, "Solution provided"),
            ("Closed/Resolved by Caller", None, "Closed/Resolved by Caller"),
            ("Closed/Resolved by Caller", "Workaround provided", "Workaround provided"),
        ],
    )
    def test_resolve_code_default_and_no_note(
        self, fake: FakeServiceNow, clock: FakeClock, setting: str | None, code: str | None, sent: str
    ) -> None:
        extra = {"SERVICENOW_CLOSE_CODE": setting} if setting else {}
        adapter = ServiceNowAdapter(make_settings(**extra), clock=clock)
        sys_id = fake.seed(KEY)

        adapter.resolve(WorkItemRef("servicenow", sys_id), Resolution(code, "Alert resolved.", ""))

        assert json_of(fake.api_requests[0]) == {
            "state": "6",
            "close_code": sent,
            "close_notes": "Alert resolved.",
        }
        assert fake.journal.get(sys_id) is None

    def test_missing_record_is_a_permanent_404(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        with pytest.raises(ItsmError) as caught:
            adapter.add_note(WorkItemRef("servicenow", "f" * 32), "note")

        assert str(caught.value) == (
            "ServiceNow 404: No Record found (Record doesn't exist or ACL restricts the record retrieval)"
        )
        assert (caught.value.retryable, caught.value.reason) == (False, Reason.CLIENT_ERROR)

    @pytest.mark.parametrize(
        "ref",
        [
            WorkItemRef("servicenow", "../../sys_user/abc"),
            WorkItemRef("servicenow", "abc?sysparm_query=x"),
            WorkItemRef("servicenow", ""),
            WorkItemRef("jira", "a" * 32),
        ],
    )
    def test_refuses_foreign_or_path_like_refs(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, ref: WorkItemRef
    ) -> None:
        with pytest.raises(ValueError):
            adapter.add_note(ref, "note")
        with pytest.raises(ValueError):
            adapter.resolve(ref, Resolution("c", "n", "w"))
        with pytest.raises(ValueError):
            adapter.has_note(ref, "m")
        assert fake.api_requests == []


class TestCloseAndReopen:
    def test_close_is_state_7_with_the_close_fields_in_one_patch(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        sys_id = fake.seed(KEY)

        adapter.resolve(
            WorkItemRef("servicenow", sys_id),
            Resolution(None, "Closed for good.", "Closed [c]", close=True, fields={"subcategory": "Azure"}),
        )

        (request,) = fake.api_requests
        assert (request.method, path_of(request)) == ("PATCH", f"/api/now/table/incident/{sys_id}")
        assert json_of(request) == {
            "subcategory": "Azure",
            "state": "7",
            "close_code": "Solution provided",
            "close_notes": "Closed for good.",
            "work_notes": "Closed [c]",
        }

    def test_resolution_fields_are_written_with_the_resolve_and_managed_ones_ignored(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, caplog: pytest.LogCaptureFixture
    ) -> None:
        sys_id = fake.seed(KEY)
        fields = {"u_root_cause": "disk full", "state": "1", "close_notes": "hijack", "work_notes": "hijack"}

        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            adapter.resolve(
                WorkItemRef("servicenow", sys_id), Resolution("Workaround provided", "Fixed.", "", fields=fields)
            )

        assert json_of(fake.api_requests[0]) == {
            "u_root_cause": "disk full",
            "state": "6",
            "close_code": "Workaround provided",
            "close_notes": "Fixed.",
        }
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.startswith("resolution fields ['close_notes', 'state', 'work_notes'] are managed")

    def test_create_already_closed_is_one_insert_with_the_fields(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        item = make_item(fields={"subcategory": "mapped", "u_source": "azure"})

        ref = adapter.create(
            item, Resolution(None, "Over.", "Closed [c]", close=True, fields={"subcategory": "on resolve"})
        )

        (request,) = fake.api_requests
        body = json_of(request)
        assert (body["state"], body["close_code"], body["close_notes"]) == ("7", "Solution provided", "Over.")
        # The resolution's fields win over the mapping's: they are written with the resolution.
        assert (body["subcategory"], body["u_source"]) == ("on resolve", "azure")
        assert body["work_notes"] == f"{item.note}\n\nClosed [c]"
        assert fake.incident(ref.id)["state"] == "7"

    def test_reopen_is_one_patch_to_in_progress_with_the_note(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        sys_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        adapter.reopen(WorkItemRef("servicenow", sys_id, "INC0010001"), "Fired again [azmon:fired:2]")

        (request,) = fake.api_requests
        assert (request.method, path_of(request)) == ("PATCH", f"/api/now/table/incident/{sys_id}")
        assert query_of(request) == {"sysparm_fields": ["sys_id,state"]}
        assert json_of(request) == {"state": "2", "work_notes": "Fired again [azmon:fired:2]"}
        assert fake.journal[sys_id] == ["Fired again [azmon:fired:2]"]

    def test_reopen_without_a_note_changes_the_state_only(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        sys_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        adapter.reopen(WorkItemRef("servicenow", sys_id), "")

        assert json_of(fake.api_requests[0]) == {"state": "2"}

    def test_reopen_refuses_foreign_or_path_like_refs(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        for ref in (WorkItemRef("servicenow", "../sys_user/x"), WorkItemRef("jira", "a" * 32)):
            with pytest.raises(ValueError):
                adapter.reopen(ref, "note")
        assert fake.api_requests == []


def reference_adapter(clock: FakeClock, **extra: str) -> ServiceNowAdapter:
    return ServiceNowAdapter(make_settings(**{"CMDB_CACHE_SECONDS": "300", **extra}), clock=clock)


class TestReferences:
    """Display names in reference columns, looked up on the bridge's side (issue #11)."""

    def test_a_group_name_becomes_its_sys_id(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        group = fake.seed_record("sys_user_group", name="Azure Ops")
        fake.seed_record("sys_user_group", name="Azure Ops Tier 2")

        adapter.create(make_item(fields={"assignment_group": "azure ops"}))

        lookup, insert = fake.api_requests
        assert (lookup.method, path_of(lookup)) == ("GET", "/api/now/table/sys_user_group")
        assert query_of(lookup) == {
            "sysparm_query": ["name=azure ops"],
            "sysparm_fields": ["sys_id,name"],
            "sysparm_limit": ["2"],
            "sysparm_exclude_reference_link": ["true"],
        }
        assert json_of(insert)["assignment_group"] == group
        assert all("sysparm_input_display_value" not in query_of(r) for r in fake.api_requests)

    @pytest.mark.parametrize(
        ("value", "queries"),
        [
            ("jsmith", ["user_name=jsmith"]),
            ("John Smith", ["user_name=John Smith", "name=John Smith"]),
            (
                "john.smith@contoso.com",
                ["user_name=john.smith@contoso.com", "name=john.smith@contoso.com", "email=john.smith@contoso.com"],
            ),
        ],
    )
    def test_a_user_by_user_name_then_name_then_email(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, value: str, queries: list[str]
    ) -> None:
        user = fake.seed_record("sys_user", user_name="jsmith", name="John Smith", email="john.smith@contoso.com")

        adapter.create(make_item(fields={"caller_id": value, "assigned_to": value, "opened_by": value}))

        body = json_of(fake.api_requests[-1])
        assert (body["caller_id"], body["assigned_to"], body["opened_by"]) == (user, user, user)
        # Three columns of one table and one value: looked up once.
        assert fake.lookups() == [("sys_user", q) for q in queries]

    @pytest.mark.parametrize(
        ("column", "table"),
        [
            ("business_service", "cmdb_ci_service"),
            ("service_offering", "cmdb_ci_service"),
            ("company", "core_company"),
            ("location", "cmn_location"),
        ],
    )
    def test_default_reference_columns(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, column: str, table: str
    ) -> None:
        record = fake.seed_record(table, name="Contoso Web")

        adapter.create(make_item(fields={column: "Contoso Web"}))

        assert fake.lookups() == [(table, "name=Contoso Web")]
        assert json_of(fake.api_requests[-1])[column] == record

    def test_sys_ids_empty_values_and_other_columns_are_never_looked_up(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        fields = {"assignment_group": "A" * 32, "caller_id": "", "category": "Cloud Ops", "u_team": "Azure Ops"}

        adapter.create(make_item(fields=fields))

        (insert,) = fake.api_requests
        assert {k: json_of(insert)[k] for k in fields} == fields

    @pytest.mark.parametrize("seeded", [0, 2], ids=["none", "several"])
    def test_no_match_or_several_leave_the_field_out_with_a_warning(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, caplog: pytest.LogCaptureFixture, seeded: int
    ) -> None:
        for _ in range(seeded):
            fake.seed_record("sys_user_group", name="Azure Ops")

        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            ref = adapter.create(make_item(fields={"assignment_group": "Azure Ops", "category": "software"}))

        body = json_of(fake.api_requests[-1])
        assert "assignment_group" not in body and body["category"] == "software"
        assert fake.incident(ref.id)["correlation_id"] == KEY  # the alert keeps its incident
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "assignment_group='Azure Ops'" in warning
        assert ("several" if seeded else "no") + " sys_user_group record has name 'Azure Ops'" in warning

    def test_several_users_of_one_name_are_not_narrowed_by_email(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        fake.seed_record("sys_user", user_name="js1", name="John Smith", email="js@contoso.com")
        fake.seed_record("sys_user", user_name="js2", name="John Smith", email="other@contoso.com")

        adapter.create(make_item(fields={"caller_id": "John Smith"}))

        assert "caller_id" not in json_of(fake.api_requests[-1])
        assert fake.lookups() == [("sys_user", "user_name=John Smith"), ("sys_user", "name=John Smith")]

    def test_a_dropped_clause_binds_nothing(self, adapter: ServiceNowAdapter, mock: responses.RequestsMock) -> None:
        # The instance ignored the clause and answered with unrelated groups: none equals the name.
        mock.get(
            f"{INSTANCE}/api/now/table/sys_user_group",
            json={"result": [{"sys_id": "a" * 32, "name": "Network"}, {"sys_id": "b" * 32, "name": "DBA"}]},
        )
        mock.post(TABLE_URL, json={"result": {"sys_id": "d" * 32, "number": "INC0010099"}}, status=201)

        adapter.create(make_item(fields={"assignment_group": "Azure Ops"}))

        assert "assignment_group" not in json.loads(_body_text(mock.calls[-1].request))

    @pytest.mark.parametrize(
        "bad",
        [
            "javascript:gs.getUserID()",
            " JavaScript:x",
            "Azure Ops^ORname=x",
            "Azure Ops^NQname=x",
            "name=Azure Ops",
            "Azure\nOps",
            "Azure%5EOps",
            "Azure Ops ",
            "a" * 1_025,
        ],
        ids=lambda v: repr(v)[:30],
    )
    def test_unsafe_values_are_never_queried(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, caplog: pytest.LogCaptureFixture, bad: str
    ) -> None:
        fake.seed_record("sys_user_group", name="Azure Ops")

        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            adapter.create(make_item(fields={"assignment_group": bad}))

        assert fake.lookups() == []
        assert "assignment_group" not in json_of(fake.api_requests[-1])
        assert any("assignment_group=" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)

    def test_answers_are_cached_found_or_not_until_they_expire(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        adapter = reference_adapter(clock, CMDB_CACHE_SECONDS="60")
        fake.seed_record("sys_user_group", name="Azure Ops")
        item = make_item(fields={"assignment_group": "Azure Ops", "u_team": "x", "location": "Nowhere"})

        adapter.create(item)
        adapter.create(make_item(fields={"assignment_group": "AZURE OPS", "location": "Nowhere"}))
        assert fake.lookups() == [("sys_user_group", "name=Azure Ops"), ("cmn_location", "name=Nowhere")]

        clock.advance(61)
        adapter.create(item)
        assert len(fake.lookups()) == 4

    def test_the_cache_is_bounded(
        self, fake: FakeServiceNow, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(servicenow_module, "_REFERENCE_CACHE_ENTRIES", 2)
        adapter = reference_adapter(clock)

        for name in ("g1", "g2", "g3", "g1"):
            adapter.create(make_item(fields={"assignment_group": name}))

        # g1 was the oldest when g3 came: forgotten, so asked again.
        assert [q for _, q in fake.lookups()] == ["name=g1", "name=g2", "name=g3", "name=g1"]

    def test_a_failed_lookup_fails_the_create_before_anything_is_written(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow
    ) -> None:
        fake.fail_next(503, {"Retry-After": "5"})

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item(fields={"assignment_group": "Azure Ops"}))

        assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (503, True, 5.0)
        assert [r.method for r in fake.api_requests] == ["GET"]
        assert fake.records() == []
        # A failure is not an answer: the next try asks again.
        group = fake.seed_record("sys_user_group", name="Azure Ops")
        adapter.create(make_item(fields={"assignment_group": "Azure Ops"}))
        assert json_of(fake.api_requests[-1])["assignment_group"] == group

    def test_names_in_resolution_fields_are_looked_up(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        user = fake.seed_record("sys_user", user_name="svc_ops", name="Ops Service")
        sys_id = fake.seed(KEY)

        adapter.resolve(
            WorkItemRef("servicenow", sys_id),
            Resolution(None, "Fixed.", "", fields={"assigned_to": "Ops Service", "u_fix": "restart"}),
        )

        body = json_of(fake.api_requests[-1])
        assert (body["assigned_to"], body["u_fix"], body["state"]) == (user, "restart", "6")

    @pytest.mark.parametrize(
        ("matched_on", "value", "lookups", "sent"),
        [
            ("route", "vm-web-01", [("cmdb_ci", "name=vm-web-01")], "ci"),
            ("route", "f" * 32, [], "f" * 32),
            ("route", "vm-missing", [("cmdb_ci", "name=vm-missing")], None),
            ("resource_id", "c" * 32, [], "c" * 32),
        ],
    )
    def test_a_routes_configuration_item_may_be_a_name(
        self,
        adapter: ServiceNowAdapter,
        fake: FakeServiceNow,
        matched_on: str,
        value: str,
        lookups: list[tuple[str, str]],
        sent: str | None,
    ) -> None:
        ci = fake.seed_ci("vm-web-01")

        adapter.create(make_item(configuration_item=ConfigurationItem(id=value, matched_on=matched_on)))

        queried = [
            (path_of(r).split("/")[-1], query_of(r)["sysparm_query"][0]) for r in fake.api_requests if r.method == "GET"
        ]
        assert queried == lookups
        body = json_of(fake.api_requests[-1])
        assert body.get("cmdb_ci") == (ci if sent == "ci" else sent)


class TestReferenceSetting:
    def test_adds_and_overrides_columns(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        team = fake.seed_record("sys_user_group", name="Web", u_code="WEB-1")
        user = fake.seed_record("sys_user", user_name="jsmith", email="js@contoso.com")
        adapter = reference_adapter(
            clock, SERVICENOW_REFERENCE_FIELDS=" u_team = sys_user_group : u_code|name , caller_id=sys_user:email,"
        )

        adapter.create(make_item(fields={"u_team": "Web", "caller_id": "js@contoso.com"}))

        assert fake.lookups() == [
            ("sys_user_group", "u_code=Web"),
            ("sys_user_group", "name=Web"),
            ("sys_user", "email=js@contoso.com"),
        ]
        body = json_of(fake.api_requests[-1])
        assert (body["u_team"], body["caller_id"]) == (team, user)

    def test_the_field_defaults_to_name_and_route_cis_follow_a_cmdb_ci_entry(
        self, fake: FakeServiceNow, clock: FakeClock
    ) -> None:
        fake.tables["cmdb_ci_server"] = {}
        server = fake._insert("cmdb_ci_server", {"name": "db-01"})
        adapter = reference_adapter(clock, SERVICENOW_REFERENCE_FIELDS="cmdb_ci=cmdb_ci_server,u_site=cmn_location")

        adapter.create(
            make_item(
                fields={"u_site": "Paris"},
                configuration_item=ConfigurationItem(id="db-01", matched_on="route"),
            )
        )

        gets = [(path_of(r), query_of(r)["sysparm_query"][0]) for r in fake.api_requests if r.method == "GET"]
        assert gets == [("/api/now/table/cmn_location", "name=Paris"), ("/api/now/table/cmdb_ci_server", "name=db-01")]
        assert json_of(fake.api_requests[-1])["cmdb_ci"] == server

    @pytest.mark.parametrize(
        ("value", "phrase"),
        [
            ("u_team", "must be entries like"),
            ("u_team=", "must be entries like"),
            ("=sys_user_group", "must be entries like"),
            ("u_team=sys_user_group:", "must be entries like"),
            ("u_team=sys_user_group:name|", "must be entries like"),
            ("u_team=Sys_User_Group", "must be entries like"),
            ("u_team=sys_user_group^ORname=x", "must be entries like"),
            ("u_team=sys_user_group:name=x", "must be entries like"),
            ("u_team=../sys_user", "must be entries like"),
            ("u_team=sys_user_group,u_team=sys_user", "names column u_team twice"),
        ],
    )
    def test_bad_values_are_a_config_error_naming_the_setting(self, value: str, phrase: str) -> None:
        with pytest.raises(ConfigError) as caught:
            ServiceNowAdapter(make_settings(SERVICENOW_REFERENCE_FIELDS=value))

        assert caught.value.setting == "SERVICENOW_REFERENCE_FIELDS"
        assert phrase in str(caught.value)


class TestConfigurationItems:
    def test_exact_requests_resource_id_then_name(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        assert adapter.find_configuration_item([RESOURCE_ID, "/subscriptions/x/other"], ["vm-web-01"]) is None

        assert [path_of(r) for r in fake.api_requests] == ["/api/now/table/cmdb_ci"] * 3
        queries = [query_of(r) for r in fake.api_requests]
        assert queries[0] == {
            "sysparm_query": [f"object_id={RESOURCE_ID}"],
            "sysparm_fields": ["sys_id,name,object_id"],
            "sysparm_limit": ["2"],
            "sysparm_exclude_reference_link": ["true"],
        }
        assert queries[1]["sysparm_query"] == ["object_id=/subscriptions/x/other"]
        assert queries[2] == {
            "sysparm_query": ["name=vm-web-01"],
            "sysparm_fields": ["sys_id,name"],
            "sysparm_limit": ["2"],
            "sysparm_exclude_reference_link": ["true"],
        }

    def test_stops_at_the_first_match(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        ci = fake.seed_ci("vm-web-01", RESOURCE_ID)

        found = adapter.find_configuration_item([RESOURCE_ID.upper(), "/other"], ["vm-web-01"])

        assert found == ConfigurationItem(id=ci, name="vm-web-01", matched_on="resource_id")
        assert len(fake.api_requests) == 1

    def test_custom_table_and_fields(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        fake.tables["cmdb_ci_vm_instance"] = {}
        adapter = ServiceNowAdapter(
            make_settings(
                CMDB_TABLE="cmdb_ci_vm_instance", CMDB_RESOURCE_ID_FIELD="u_azure_id", CMDB_NAME_FIELD="name"
            ),
            clock=clock,
        )
        ci = fake._insert("cmdb_ci_vm_instance", {"name": "vm-web-01", "u_azure_id": RESOURCE_ID})

        found = adapter.find_configuration_item([RESOURCE_ID], [])

        assert found == ConfigurationItem(id=ci, name="vm-web-01", matched_on="resource_id")
        (request,) = fake.api_requests
        assert path_of(request) == "/api/now/table/cmdb_ci_vm_instance"
        assert query_of(request)["sysparm_query"] == [f"u_azure_id={RESOURCE_ID}"]
        assert query_of(request)["sysparm_fields"] == ["sys_id,name,u_azure_id"]

    @pytest.mark.parametrize("bad", ["vm^ORname=x", "vm\nname", "vm\r", ""])
    def test_skips_values_that_would_alter_the_query(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, bad: str
    ) -> None:
        ci = fake.seed_ci("vm-web-01")

        found = adapter.find_configuration_item([bad], [bad, "vm-web-01"])

        assert found is not None and found.id == ci
        assert [query_of(r)["sysparm_query"] for r in fake.api_requests] == [["name=vm-web-01"]]

    def test_rejects_records_that_do_not_equal_the_value(
        self, adapter: ServiceNowAdapter, mock: responses.RequestsMock
    ) -> None:
        mock.get(
            f"{INSTANCE}/api/now/table/cmdb_ci",
            json={"result": [{"sys_id": "a" * 32, "name": "vm-web-010"}]},
        )

        assert adapter.find_configuration_item([], ["vm-web-01"]) is None

    def test_ambiguous_match_binds_nothing(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake.seed_ci("vm-web-01")
        fake.seed_ci("VM-WEB-01")

        with caplog.at_level(logging.WARNING, logger="bridge.adapters.servicenow"):
            assert adapter.find_configuration_item([], ["vm-web-01"]) is None

        assert any("several records" in r.getMessage() for r in caplog.records)


class TestConfigurationItemValues:
    """Issue 10, item 4: what may go into a CMDB encoded query. ServiceNow evaluates a value that
    starts with ``javascript:`` on the server, so such values (however spelled) are never sent."""

    @pytest.mark.parametrize(
        "bad",
        [
            "javascript:gs.getUserID()",
            "JavaScript:gs.getUserID()",
            " javascript:gs.getUserID()",
            "\tjavascript:x",
            "\x01javascript:x",
            "\x00javascript:x",
            "java\tscript:x",
            "java\nscript:x",
            "vbscript:x",
            "data:text/html,x",
            "vm-web-01^NQname=x",
            "name=vm-web-01",
            "vm%5Eweb",
            "vm-web-01 ",
            " vm-web-01",
            "vm\x00",
            "vm\u2028web",
            "a" * 1_025,
        ],
        ids=lambda v: repr(v)[:40],
    )
    def test_unsafe_values_are_never_queried(self, adapter: ServiceNowAdapter, fake: FakeServiceNow, bad: str) -> None:
        ci = fake.seed_ci("vm-web-01")

        found = adapter.find_configuration_item([bad], [bad, "vm-web-01"])

        assert found is not None and found.id == ci
        assert [query_of(r)["sysparm_query"] for r in fake.api_requests] == [["name=vm-web-01"]]

    @pytest.mark.parametrize(
        "good",
        [
            RESOURCE_ID,
            RESOURCE_ID.lower(),
            "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e",
            "vm-web-01",
            "host.contoso.com",
            "SQL (prod) #2",
            "user@example",
        ],
    )
    def test_ordinary_ids_and_names_are_queried(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, good: str
    ) -> None:
        assert adapter.find_configuration_item([], [good]) is None

        assert [query_of(r)["sysparm_query"] for r in fake.api_requests] == [[f"name={good}"]]


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "body", "content_type", "expected"),
        [
            (
                400,
                sn_error("Invalid field", "Field 'u_bogus' does not exist"),
                "application/json",
                "ServiceNow 400: Invalid field (Field 'u_bogus' does not exist)",
            ),
            (403, sn_error("Operation Failed", None), "application/json", "ServiceNow 403: Operation Failed"),
            (403, sn_error(None, "ACL restricts"), "application/json", "ServiceNow 403: ACL restricts"),
            (
                500,
                sn_error("Line one\n  line two", "at com.glide.Foo\n\tat Bar"),
                "application/json",
                "ServiceNow 500: Line one line two (at com.glide.Foo at Bar)",
            ),
            (502, "<html><body>Bad gateway</body></html>", "text/html", "ServiceNow 502: Bad Gateway"),
            # A bare string error is read the OAuth way (the token endpoint's shape).
            (429, '{"error": "rate limited"}', "application/json", "ServiceNow 429: rate limited"),
            (429, '{"error": {"detail": 7}}', "application/json", "ServiceNow 429: 7"),
            (503, '{"error": {}}', "application/json", "ServiceNow 503: Service Unavailable"),
            (404, "", "text/plain", "ServiceNow 404: Not Found"),
        ],
    )
    def test_error_body_parsing(
        self,
        adapter: ServiceNowAdapter,
        mock: responses.RequestsMock,
        status: int,
        body: str,
        content_type: str,
        expected: str,
    ) -> None:
        mock.get(TABLE_URL, body=body, status=status, content_type=content_type)

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert str(caught.value) == expected
        assert caught.value.status == status

    @pytest.mark.parametrize(
        ("status", "message", "detail", "reason"),
        [
            # A data policy or business rule refuses this change: permanent, dead-lettered.
            (403, "Operation Failed", "Data Policy Exception: Impact is mandatory", Reason.CLIENT_ERROR),
            (
                403,
                "Data Policy Exception: The following fields are mandatory: Resolution code",
                None,
                Reason.CLIENT_ERROR,
            ),
            (
                403,
                "Operation Failed",
                "Operation against table 'incident' aborted by Business Rule 'Lock'",
                Reason.CLIENT_ERROR,
            ),
            (403, None, "operation against file 'incident' was ABORTED by a before rule", Reason.CLIENT_ERROR),
            (403, "Rejected by BUSINESS RULE 'no resolve on weekends'", None, Reason.CLIENT_ERROR),
            # An ACL (or anything else) refuses the bridge itself: hold the work until it is fixed.
            (403, "Operation Failed", "ACL Exception Update Failed due to security constraints", Reason.AUTH_ERROR),
            (403, "User Not Authorized", "Not permitted to access table incident", Reason.AUTH_ERROR),
            (403, "Forbidden", None, Reason.AUTH_ERROR),
            (403, "Operation against nothing", None, Reason.AUTH_ERROR),
            # Only a 403 is refined: a 401 mentioning a data policy is still the credential.
            (401, "User Not Authenticated", "Data Policy Exception", Reason.AUTH_ERROR),
            (400, "Data Policy Exception", None, Reason.CLIENT_ERROR),
        ],
    )
    def test_403_data_policy_or_business_rule_versus_acl(
        self,
        adapter: ServiceNowAdapter,
        fake: FakeServiceNow,
        status: int,
        message: str | None,
        detail: str | None,
        reason: Reason,
    ) -> None:
        fake.fail_next(status, body=sn_error(message, detail))

        with pytest.raises(ItsmError) as caught:
            adapter.resolve(WorkItemRef("servicenow", "a" * 32), Resolution(None, "done", "note"))

        assert (caught.value.status, caught.value.reason, caught.value.retryable) == (status, reason, False)
        assert caught.value.credential_refused is (reason is Reason.AUTH_ERROR)
        assert str(caught.value).startswith(f"ServiceNow {status}: ")

    def test_100_as_a_final_answer(self, adapter: ServiceNowAdapter, mock: responses.RequestsMock) -> None:
        # Only a mock can give this (on a real connection a 100 is interim); it is a failure all the same.
        mock.get(TABLE_URL, status=100, body="")

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert (caught.value.retryable, caught.value.reason, caught.value.status) == (*classify_status(100), 100)

    def test_long_error_text_is_truncated(self, adapter: ServiceNowAdapter, mock: responses.RequestsMock) -> None:
        mock.get(TABLE_URL, body=sn_error("x" * 5000, None), status=400, content_type="application/json")

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert len(str(caught.value)) <= len("ServiceNow 400: ") + 500
        assert str(caught.value).endswith("...")

    def test_redirect_is_not_followed(self, adapter: ServiceNowAdapter, mock: responses.RequestsMock) -> None:
        mock.get(TABLE_URL, status=302, headers={"Location": "https://login.example.com/sso"})

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert (caught.value.status, caught.value.retryable) == (302, False)
        assert len(mock.calls) == 1

    def test_basic_auth_401_is_not_repeated(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.fail_next(401, body=sn_error("User Not Authenticated", "Required to provide Auth information"))

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable) == (Reason.AUTH_ERROR, False)
        assert len(fake.api_requests) == 1

    def test_rate_limit_retry_after(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.fail_next(
            429,
            {"Retry-After": "42", "X-RateLimit-Limit": "100", "X-RateLimit-Rule": "a" * 32},
            sn_error("Rate limit exceeded", "Too many requests"),
        )

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (caught.value.reason, caught.value.retryable, caught.value.retry_after) == (
            Reason.RATE_LIMITED,
            True,
            42.0,
        )
        assert str(caught.value) == "ServiceNow 429: Rate limit exceeded (Too many requests)"

    def test_refused_connection_message(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.refuse_next()

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        message = str(caught.value)
        assert message == f"ServiceNow POST {TABLE_URL}: connection failed (ConnectionError: Connection refused)"
        assert caught.value.__suppress_context__
        # Nothing was sent: the create cannot have happened, so it may be sent again at once.
        assert (caught.value.retryable, caught.value.maybe_applied) == (True, False)

    def test_dropped_connection_message(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.drop_next()

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert str(caught.value) == f"ServiceNow GET {TABLE_URL}: connection failed (ConnectionError)"
        assert caught.value.maybe_applied

    @pytest.mark.parametrize(
        ("exc", "reason", "maybe_applied"),
        [
            (requests.ConnectTimeout("connect timed out"), Reason.TIMEOUT, False),
            (requests.ReadTimeout("read timed out"), Reason.TIMEOUT, True),
            (requests.exceptions.ChunkedEncodingError("broken"), Reason.NETWORK, True),
            (requests.exceptions.SSLError("bad certificate"), Reason.NETWORK, True),
        ],
    )
    def test_client_library_exceptions(
        self, adapter: ServiceNowAdapter, fake: FakeServiceNow, exc: Exception, reason: Reason, maybe_applied: bool
    ) -> None:
        fake.failures.append(exc)

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (caught.value.retryable, caught.value.reason, caught.value.maybe_applied) == (
            True,
            reason,
            maybe_applied,
        )
        assert fake.records() == []

    def test_a_spent_deadline_makes_no_call(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        with deadline(0.0), pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert (caught.value.retryable, caught.value.reason) == (True, Reason.TIMEOUT)
        assert fake.api_requests == []

    def test_timeouts_are_cut_to_the_deadline(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        with deadline(1.5):
            adapter.find(KEY)

        (timeout,) = {r.req_kwargs["timeout"] for r in fake.api_requests}  # type: ignore[attr-defined]
        assert timeout[0] <= 1.5 and timeout[1] <= 1.5
        assert timeout[1] > 1.0


class TestOAuth:
    @pytest.fixture
    def oauth(self, clock: FakeClock) -> Iterator[FakeServiceNow]:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            yield FakeServiceNow(rsps, auth="oauth_client_credentials", clock=clock)

    @pytest.fixture
    def oauth_adapter(self, oauth: FakeServiceNow, clock: FakeClock) -> Iterator[ServiceNowAdapter]:
        adapter = ServiceNowAdapter(make_settings("oauth_client_credentials"), clock=clock)
        yield adapter
        adapter.close()

    def test_client_credentials_token_request(self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow) -> None:
        oauth_adapter.find(KEY)

        assert oauth.token_forms == [
            {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        ]
        (request,) = oauth.api_requests
        assert request.headers["Authorization"] == f"Bearer {oauth.issued_tokens[0]}"

    def test_password_grant_when_user_is_set_too(self, clock: FakeClock) -> None:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            fake = FakeServiceNow(rsps, auth="oauth_password", clock=clock)
            ServiceNowAdapter(make_settings("oauth_password"), clock=clock).find(KEY)
            token_call = next(c for c in rsps.calls if c.request.url == f"{INSTANCE}/oauth_token.do")

        assert fake.token_forms == [
            {
                "grant_type": "password",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "username": USERNAME,
                "password": PASSWORD,
            }
        ]
        assert token_call.request.method == "POST"
        assert token_call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert token_call.request.req_kwargs["timeout"] == (3.05, 4.0)  # type: ignore[attr-defined]
        assert "Authorization" not in token_call.request.headers

    def test_token_is_cached_until_shortly_before_expiry(
        self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow, clock: FakeClock
    ) -> None:
        oauth_adapter.find(KEY)
        oauth_adapter.find(KEY)
        clock.advance(1799 - 61)
        oauth_adapter.find(KEY)
        assert len(oauth.token_forms) == 1

        clock.advance(2)  # now within 60 s of expiry
        oauth_adapter.find(KEY)

        assert len(oauth.token_forms) == 2
        tokens = [r.headers["Authorization"] for r in oauth.api_requests]
        assert tokens == [f"Bearer {oauth.issued_tokens[0]}"] * 3 + [f"Bearer {oauth.issued_tokens[1]}"]

    @pytest.mark.parametrize(("lifetime", "cached_for"), [(None, 1800 - 60), ("bogus", 1800 - 60), (60, 30)])
    def test_token_lifetime_fallbacks(
        self,
        oauth_adapter: ServiceNowAdapter,
        oauth: FakeServiceNow,
        clock: FakeClock,
        lifetime: Any,
        cached_for: int,
    ) -> None:
        oauth.token_lifetime = lifetime
        oauth_adapter.find(KEY)
        clock.advance(cached_for - 1)
        oauth_adapter.find(KEY)
        assert len(oauth.token_forms) == 1
        clock.advance(1)
        oauth_adapter.find(KEY)
        assert len(oauth.token_forms) == 2

    def test_401_drops_the_token_and_repeats_once(
        self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow
    ) -> None:
        sys_id = oauth.seed(KEY)
        oauth_adapter.find(KEY)
        oauth.revoke_tokens()  # e.g. the instance was restarted or the token revoked

        (found,) = oauth_adapter.find(KEY)

        assert found.ref.id == sys_id
        assert len(oauth.token_forms) == 2
        assert [r.headers["Authorization"] for r in oauth.api_requests] == [
            f"Bearer {oauth.issued_tokens[0]}",
            f"Bearer {oauth.issued_tokens[0]}",
            f"Bearer {oauth.issued_tokens[1]}",
        ]

    def test_401_twice_gives_up_after_one_repeat(self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow) -> None:
        oauth.fail_next(401, times=5)

        with pytest.raises(ItsmError) as caught:
            oauth_adapter.create(make_item())

        assert (caught.value.reason, caught.value.retryable, caught.value.status) == (
            Reason.AUTH_ERROR,
            False,
            401,
        )
        assert len(oauth.api_requests) == 2
        assert len(oauth.token_forms) == 2
        assert oauth.records() == []

    @pytest.mark.parametrize(
        ("status", "body", "reason", "retryable", "message"),
        [
            (401, None, Reason.AUTH_ERROR, False, "ServiceNow OAuth 401: server_error (access_denied)"),
            (
                400,
                '{"error": "invalid_request"}',
                Reason.AUTH_ERROR,
                False,
                "ServiceNow OAuth 400: invalid_request",
            ),
            (403, None, Reason.AUTH_ERROR, False, "ServiceNow OAuth 403: server_error (access_denied)"),
            (404, "", Reason.CLIENT_ERROR, False, "ServiceNow OAuth 404: Not Found"),
            (429, "", Reason.RATE_LIMITED, True, "ServiceNow OAuth 429: Too Many Requests"),
            (
                503,
                sn_error("Instance unavailable"),
                Reason.SERVER_ERROR,
                True,
                "ServiceNow OAuth 503: Instance unavailable",
            ),
        ],
    )
    def test_token_endpoint_failures(
        self,
        oauth_adapter: ServiceNowAdapter,
        oauth: FakeServiceNow,
        status: int,
        body: str | None,
        reason: Reason,
        retryable: bool,
        message: str,
    ) -> None:
        oauth.fail_token_next(status, {"Retry-After": "5"}, body)

        with pytest.raises(ItsmError) as caught:
            oauth_adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable, caught.value.status) == (
            reason,
            retryable,
            status,
        )
        assert str(caught.value) == message
        assert caught.value.retry_after == 5.0
        assert oauth.api_requests == []

    def test_wrong_client_secret_is_permanent(self, clock: FakeClock) -> None:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            FakeServiceNow(rsps, auth="oauth_client_credentials", clock=clock)
            adapter = ServiceNowAdapter(
                make_settings("oauth_client_credentials", SERVICENOW_CLIENT_SECRET="wrong-secret"),
                clock=clock,
            )
            with pytest.raises(ItsmError) as caught:
                adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable) == (Reason.AUTH_ERROR, False)
        assert "wrong-secret" not in str(caught.value)

    @pytest.mark.parametrize(
        "entry",
        [
            (200, {}, "<html>login</html>"),
            (200, {"Content-Type": "application/json"}, '{"token_type": "Bearer"}'),
            (200, {"Content-Type": "application/json"}, '{"access_token": ""}'),
        ],
    )
    def test_unusable_token_response(
        self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow, entry: tuple[int, dict[str, str], str]
    ) -> None:
        oauth.token_failures.append(entry)

        with pytest.raises(ItsmError) as caught:
            oauth_adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable) == (Reason.INVALID_RESPONSE, True)

    @pytest.mark.parametrize(
        ("exc", "reason"),
        [
            (requests.ConnectTimeout("connect timed out"), Reason.TIMEOUT),
            (requests.ConnectionError("reset"), Reason.NETWORK),
        ],
    )
    def test_token_endpoint_transport_errors(
        self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow, exc: Exception, reason: Reason
    ) -> None:
        oauth.token_failures.append(exc)

        with pytest.raises(ItsmError) as caught:
            oauth_adapter.find(KEY)

        assert (caught.value.reason, caught.value.retryable) == (reason, True)
        assert str(caught.value).startswith(f"ServiceNow OAuth POST {INSTANCE}/oauth_token.do: ")

    def test_token_echoed_by_the_server_is_scrubbed(
        self, oauth_adapter: ServiceNowAdapter, oauth: FakeServiceNow
    ) -> None:
        oauth_adapter.find(KEY)
        token = oauth.issued_tokens[0]
        oauth.fail_next(400, body=sn_error(f"Bad header Bearer {token}", f"secret={CLIENT_SECRET}"))

        with pytest.raises(ItsmError) as caught:
            oauth_adapter.find(KEY)

        assert str(caught.value) == "ServiceNow 400: Bad header Bearer *** (secret=***)"


class TestCheck:
    def test_one_cheap_authenticated_read(self, adapter: ServiceNowAdapter, fake: FakeServiceNow) -> None:
        fake.seed(KEY)

        assert adapter.check() is None

        (request,) = fake.api_requests
        assert (request.method, path_of(request)) == ("GET", "/api/now/table/incident")
        assert query_of(request) == {"sysparm_limit": ["1"], "sysparm_fields": ["sys_id"]}
        assert request.headers["Authorization"].startswith("Basic ")

    def test_wrong_password_fails_the_check(self, fake: FakeServiceNow, clock: FakeClock) -> None:
        adapter = ServiceNowAdapter(make_settings(SERVICENOW_PASSWORD="wrong-password"), clock=clock)

        with pytest.raises(ItsmError) as caught:
            adapter.check()

        assert (caught.value.status, caught.value.reason, caught.value.retryable) == (401, Reason.AUTH_ERROR, False)
        assert "wrong-password" not in str(caught.value)

    def test_oauth_check_obtains_a_token(self, clock: FakeClock) -> None:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            fake = FakeServiceNow(rsps, auth="oauth_client_credentials", clock=clock)
            ServiceNowAdapter(make_settings("oauth_client_credentials"), clock=clock).check()

        assert len(fake.token_forms) == 1
        (request,) = fake.api_requests
        assert request.headers["Authorization"] == f"Bearer {fake.issued_tokens[0]}"


class TestConstruction:
    def test_describes_itself(self) -> None:
        assert ServiceNowAdapter.name == "servicenow"
        assert ServiceNowAdapter.display_name == "ServiceNow"
        assert ServiceNowAdapter.settings is SERVICENOW_SETTINGS
        assert ServiceNowAdapter.title_limit == 160
        assert ServiceNowAdapter.description_limit >= 4000
        assert {"correlation_id", "correlation_display", "short_description", "work_notes", "state"} <= (
            ServiceNowAdapter.managed_fields
        )
        assert {"caller_id", "assignment_group", "category"}.isdisjoint(ServiceNowAdapter.managed_fields)

    def test_declares_its_settings(self) -> None:
        by_name = {s.name: s for s in SERVICENOW_SETTINGS}
        assert list(by_name) == [
            "SERVICENOW_INSTANCE_URL",
            "SERVICENOW_USERNAME",
            "SERVICENOW_PASSWORD",
            "SERVICENOW_CLIENT_ID",
            "SERVICENOW_CLIENT_SECRET",
            "SERVICENOW_TABLE",
            "SERVICENOW_CALLER_ID",
            "SERVICENOW_ASSIGNMENT_GROUP",
            "SERVICENOW_CATEGORY",
            "SERVICENOW_CLOSE_CODE",
            "SERVICENOW_REFERENCE_FIELDS",
            "CMDB_TABLE",
            "CMDB_RESOURCE_ID_FIELD",
            "CMDB_NAME_FIELD",
        ]
        assert {n for n, s in by_name.items() if s.secret} == {"SERVICENOW_PASSWORD", "SERVICENOW_CLIENT_SECRET"}
        assert {n for n, s in by_name.items() if s.required} == {"SERVICENOW_INSTANCE_URL"}
        assert (by_name["SERVICENOW_TABLE"].default, by_name["SERVICENOW_CLOSE_CODE"].default) == (
            "incident",
            "Solution provided",
        )
        assert [by_name[n].default for n in ("CMDB_TABLE", "CMDB_RESOURCE_ID_FIELD", "CMDB_NAME_FIELD")] == [
            "cmdb_ci",
            "object_id",
            "name",
        ]

    def test_settings_are_read_from_the_environment(self) -> None:
        settings = make_settings(SERVICENOW_TABLE="  u_alert_incident  ")
        assert not hasattr(settings, "servicenow_instance_url")
        assert settings.value("SERVICENOW_TABLE") == "u_alert_incident"

    @pytest.mark.parametrize(
        ("drop", "extra", "setting"),
        [
            (("SERVICENOW_INSTANCE_URL",), {}, "SERVICENOW_INSTANCE_URL"),
            ((), {"SERVICENOW_INSTANCE_URL": "   "}, "SERVICENOW_INSTANCE_URL"),
            ((), {"SERVICENOW_INSTANCE_URL": "http://contoso.service-now.com"}, "SERVICENOW_INSTANCE_URL"),
            ((), {"SERVICENOW_INSTANCE_URL": "contoso.service-now.com"}, "SERVICENOW_INSTANCE_URL"),
            (("SERVICENOW_USERNAME", "SERVICENOW_PASSWORD"), {}, "SERVICENOW_USERNAME"),
            (("SERVICENOW_PASSWORD",), {}, "SERVICENOW_PASSWORD"),
            (("SERVICENOW_USERNAME",), {}, "SERVICENOW_USERNAME"),
            ((), {"SERVICENOW_CLIENT_ID": CLIENT_ID}, "SERVICENOW_CLIENT_SECRET"),
            ((), {"SERVICENOW_CLIENT_SECRET": CLIENT_SECRET}, "SERVICENOW_CLIENT_ID"),
        ],
    )
    def test_config_errors_name_the_setting(self, drop: tuple[str, ...], extra: dict[str, str], setting: str) -> None:
        settings = make_settings(drop=drop, **extra)

        with pytest.raises(ConfigError) as caught:
            ServiceNowAdapter.from_settings(settings)

        assert caught.value.setting == setting
        for secret in (PASSWORD, CLIENT_SECRET):
            assert secret not in str(caught.value)

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:8080", "http://localhost:8080/", "https://contoso.service-now.com/"]
    )
    def test_accepted_instance_urls(self, url: str) -> None:
        assert isinstance(ServiceNowAdapter.from_settings(make_settings(instance=url)), ServiceNowAdapter)

    def test_oauth_alone_needs_no_user(self) -> None:
        settings = make_settings("oauth_client_credentials")
        assert settings.value("SERVICENOW_USERNAME") is None
        assert isinstance(ServiceNowAdapter.from_settings(settings), ServiceNowAdapter)

    def test_from_settings_uses_the_given_session_and_closes_it(self, fake: FakeServiceNow) -> None:
        closed: list[bool] = []

        class Session(requests.Session):
            def close(self) -> None:
                closed.append(True)
                super().close()

        session = Session()
        session.headers["X-Test"] = "given-session"
        adapter = ServiceNowAdapter.from_settings(make_settings(), session)
        assert isinstance(adapter, ServiceNowAdapter)
        adapter.find(KEY)
        adapter.close()

        assert fake.api_requests[0].headers["X-Test"] == "given-session"
        assert closed == [True]

    def test_from_settings_without_a_session_makes_one(self, fake: FakeServiceNow) -> None:
        adapter = ServiceNowAdapter.from_settings(make_settings())
        adapter.find(KEY)
        adapter.close()

        assert fake.api_requests[0].headers["User-Agent"] == f"azure-monitor-itsm-bridge/{__version__}"

    def test_trailing_slash_in_instance_url(self, fake: FakeServiceNow) -> None:
        adapter = ServiceNowAdapter(make_settings(instance=INSTANCE + "/"))
        ref = adapter.create(make_item())
        assert ref.url is not None and ref.url.startswith(f"{INSTANCE}/nav_to.do?")
        assert (fake.api_requests[0].url or "").startswith(f"{INSTANCE}/api/now/table/incident?")


class TestRegistry:
    def test_registered_under_its_name(self) -> None:
        assert adapter_class("servicenow") is ServiceNowAdapter
        assert adapter_class(" ServiceNow ") is ServiceNowAdapter
        assert settings_of("servicenow") == SERVICENOW_SETTINGS

    def test_build_adapter(self, fake: FakeServiceNow) -> None:
        session = new_session()
        adapter = build_adapter(make_settings(), session)
        assert isinstance(adapter, ServiceNowAdapter)
        assert isinstance(adapter, ItsmAdapter)
        adapter.find(KEY)
        assert len(fake.api_requests) == 1
        adapter.close()

    def test_build_adapter_is_the_default(self, fake: FakeServiceNow) -> None:
        settings = make_settings()
        assert settings.itsm_adapter == "servicenow"
        assert isinstance(build_adapter(settings), ServiceNowAdapter)

    def test_unknown_adapter(self) -> None:
        with pytest.raises(ConfigError) as caught:
            build_adapter(make_settings(ITSM_ADAPTER="remedy"))
        assert caught.value.setting == "ITSM_ADAPTER"
        assert "servicenow" in str(caught.value)
        assert "remedy" not in str(caught.value)


# ===================================================================== the stand-in's own behaviour


@pytest.fixture
def standin(
    quiet_standin_server: tuple[ServiceNowStandIn, _ClockSwitch], clock: FakeClock
) -> Iterator[ServiceNowStandIn]:
    server, switch = quiet_standin_server
    server.reset()
    switch.target = clock
    yield server
    server.__dict__.pop("_handle", None)
    server.faults.clear()


@pytest.mark.integration
class TestOverTheStandIn:
    """What only a faithful instance shows: its data policy, token expiry, stored values."""

    def test_data_policy_refusal_is_permanent_not_the_credential(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin))
        ref = adapter.create(make_item())

        with pytest.raises(ItsmError) as caught:
            adapter.resolve(ref, Resolution(None, "", "Resolved [azmon:resolved]"))  # no close_notes

        assert (caught.value.status, caught.value.reason, caught.value.retryable) == (403, Reason.CLIENT_ERROR, False)
        assert not caught.value.credential_refused
        assert str(caught.value).startswith("ServiceNow 403: Data Policy Exception")
        ((stored,),) = [standin.records("incident")]
        assert stored["state"] == "1"

    def test_data_policy_refuses_a_resolved_create_without_notes(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin))

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item(), Resolution(None, "", "over"))

        assert (caught.value.status, caught.value.reason) == (403, Reason.CLIENT_ERROR)
        assert standin.records("incident") == []

    def test_acl_403_is_the_credential(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin))
        standin.faults.status(
            403,
            path=_API_PATH,
            times=1,
            body={
                "error": {"message": "Operation Failed", "detail": "ACL Exception Insert Failed"},
                "status": "failure",
            },
        )

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (caught.value.reason, caught.value.credential_refused) == (Reason.AUTH_ERROR, True)

    def test_foreign_incident_with_the_same_key_is_not_returned(self, standin: ServiceNowStandIn) -> None:
        standin.insert("incident", {"correlation_id": KEY, "correlation_display": FOREIGN_DISPLAY})
        adapter = ServiceNowAdapter(standin_settings(standin))

        assert adapter.find(KEY) == []
        ref = adapter.create(make_item())
        assert [r.ref.id for r in adapter.find(KEY)] == [ref.id]

        searches = [r for r in standin.requests if r.method == "GET"]
        assert searches[-1].query["sysparm_query"] == (
            f"correlation_id={KEY}^correlation_display=Azure Monitor^ORDERBYsys_created_on"
        )

    def test_created_incident_as_the_instance_stores_it(self, standin: ServiceNowStandIn) -> None:
        ci = standin.insert("cmdb_ci", {"name": "vm-web-01", "object_id": RESOURCE_ID})["sys_id"]
        adapter = ServiceNowAdapter(standin_settings(standin, SERVICENOW_CATEGORY="software"))
        found_ci = adapter.find_configuration_item([RESOURCE_ID.upper()], [])
        assert found_ci == ConfigurationItem(id=ci, name="vm-web-01", matched_on="resource_id")
        item = make_item(title="t" * 200, configuration_item=found_ci, impact=1, urgency=2)

        ref = adapter.create(item)

        ((stored,),) = [standin.records("incident")]
        assert (ref.id, ref.number) == (stored["sys_id"], stored["number"])
        assert ref.url == f"{standin.url}/nav_to.do?uri=incident.do%3Fsys_id%3D{ref.id}"
        assert (stored["correlation_id"], stored["correlation_display"]) == (KEY, "Azure Monitor")
        assert (stored["impact"], stored["urgency"], stored["priority"]) == ("1", "2", "2")
        assert (stored["cmdb_ci"], stored["category"], stored["state"]) == (ci, "software", "1")
        assert stored["short_description"] == "t" * 160  # the instance cuts it; the core cuts it first
        assert standin.journal("incident", ref.id) == [item.note]

    def test_resolved_create_and_resolve_as_stored(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin, SERVICENOW_CLOSE_CODE="Closed/Resolved by Caller"))
        item = make_item()

        early = adapter.create(item, Resolution(None, "over before it arrived", "Resolved [r1]"))
        late = adapter.create(make_item())
        adapter.resolve(late, Resolution("Workaround provided", "fixed", "Resolved [r2]"))

        rows = {r["sys_id"]: r for r in standin.records("incident")}
        assert (rows[early.id]["state"], rows[early.id]["close_code"], rows[early.id]["close_notes"]) == (
            "6",
            "Closed/Resolved by Caller",
            "over before it arrived",
        )
        assert standin.journal("incident", early.id) == [f"{item.note}\n\nResolved [r1]"]
        assert (rows[late.id]["state"], rows[late.id]["close_code"]) == ("6", "Workaround provided")
        assert standin.journal("incident", late.id) == [item.note, "Resolved [r2]"]
        assert [r.status for r in adapter.find(KEY)] == [WorkItemStatus.RESOLVED] * 2

    def test_reopen_and_close_as_the_instance_stores_them(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin))
        ref = adapter.create(make_item())
        adapter.resolve(ref, Resolution(None, "over", "Resolved [r1]"))

        adapter.reopen(ref, "Fired again [f2]")

        (row,) = standin.records("incident")
        assert (row["state"], row["reopen_count"], row["active"]) == ("2", "1", "true")
        assert (row["close_code"], row["close_notes"]) == ("Solution provided", "over")  # kept, as there
        assert standin.journal("incident", ref.id)[-1] == "Fired again [f2]"
        assert [r.status for r in adapter.find(KEY)] == [WorkItemStatus.OPEN]

        adapter.resolve(ref, Resolution(None, "over for good", "Closed [c1]", close=True, fields={"subcategory": "x"}))

        (row,) = standin.records("incident")
        assert (row["state"], row["active"], row["close_notes"], row["subcategory"]) == (
            "7",
            "false",
            "over for good",
            "x",
        )
        assert row["closed_at"]
        assert [r.status for r in adapter.find(KEY)] == [WorkItemStatus.CLOSED]

        # Closed is final on an instance: the core never reopens it, and the instance would refuse.
        with pytest.raises(ItsmError) as caught:
            adapter.reopen(ref, "Fired again [f3]")
        assert (caught.value.status, caught.value.reason, caught.value.retryable) == (403, Reason.CLIENT_ERROR, False)
        assert standin.records("incident")[0]["state"] == "7"

    def test_names_are_looked_up_on_the_instance(self, standin: ServiceNowStandIn) -> None:
        group = standin.insert("sys_user_group", {"name": "Azure Ops"})["sys_id"]
        caller = standin.insert("sys_user", {"user_name": "azure.monitor", "name": "Azure Monitor"})["sys_id"]
        service = standin.insert("cmdb_ci_service", {"name": "Web Shop"})["sys_id"]
        offering = standin.insert("service_offering", {"name": "Web Shop EU"})["sys_id"]
        ci = standin.insert("cmdb_ci", {"name": "vm-web-01"})["sys_id"]
        adapter = ServiceNowAdapter(
            standin_settings(standin, SERVICENOW_ASSIGNMENT_GROUP="azure ops", SERVICENOW_CALLER_ID="Azure Monitor")
        )
        item = make_item(
            fields={"business_service": "Web Shop", "service_offering": "Web Shop EU", "location": "Nowhere"},
            configuration_item=ConfigurationItem(id="vm-web-01", matched_on="route"),
        )

        ref = adapter.create(item)

        (row,) = standin.records("incident")
        assert row["sys_id"] == ref.id
        assert (row["assignment_group"], row["caller_id"], row["cmdb_ci"]) == (group, caller, ci)
        assert (row["business_service"], row["service_offering"], row["location"]) == (service, offering, "")
        queries = [r.query["sysparm_query"] for r in standin.requests if r.method == "GET"]
        assert queries == [
            "user_name=Azure Monitor",
            "name=Azure Monitor",
            "name=azure ops",
            "name=Web Shop",
            "name=Web Shop EU",
            "name=Nowhere",
            "name=vm-web-01",
        ]

    @pytest.mark.parametrize("auth", ["oauth_client_credentials", "oauth_password"])
    def test_expired_token_is_renewed_once(self, standin: ServiceNowStandIn, clock: FakeClock, auth: str) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin, auth), clock=clock)
        adapter.find(KEY)
        standin.expire_tokens()

        adapter.find(KEY)

        log = [(r.method, r.path, r.status, r.auth) for r in standin.requests]
        assert log == [
            ("POST", "/oauth_token.do", 200, None),
            ("GET", "/api/now/table/incident", 200, "bearer"),
            ("GET", "/api/now/table/incident", 401, "bearer"),
            ("POST", "/oauth_token.do", 200, None),
            ("GET", "/api/now/table/incident", 200, "bearer"),
        ]

    def test_token_is_renewed_before_it_expires(self, standin: ServiceNowStandIn, clock: FakeClock) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin, "oauth_client_credentials"), clock=clock)
        adapter.find(KEY)
        clock.advance(1800 - 59)  # the stand-in's tokens live 1800 s; the adapter keeps a 60 s margin

        adapter.find(KEY)

        assert [r.status for r in standin.requests] == [200, 200, 200, 200]
        assert [r.path for r in standin.requests].count("/oauth_token.do") == 2

    def test_wrong_client_secret_is_permanent(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(
            standin_settings(standin, "oauth_client_credentials", SERVICENOW_CLIENT_SECRET="wrong-secret")
        )

        with pytest.raises(ItsmError) as caught:
            adapter.check()

        assert (caught.value.reason, caught.value.retryable, caught.value.status) == (Reason.AUTH_ERROR, False, 401)
        assert str(caught.value) == "ServiceNow OAuth 401: server_error (access_denied)"
        assert [r.path for r in standin.requests] == ["/oauth_token.do"]

    def test_build_adapter_and_check_over_the_wire(self, standin: ServiceNowStandIn) -> None:
        adapter = build_adapter(standin_settings(standin), new_session())

        adapter.check()
        adapter.close()

        (request,) = standin.requests
        assert (request.method, request.path, request.status, request.auth) == (
            "GET",
            "/api/now/table/incident",
            200,
            "basic",
        )
        assert request.query == {"sysparm_limit": "1", "sysparm_fields": "sys_id"}

    def test_lost_create_is_found_by_the_next_find(self, standin: ServiceNowStandIn) -> None:
        adapter = ServiceNowAdapter(standin_settings(standin))
        standin.faults.commit_then_drop(method="POST", times=1)

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (
            str(caught.value)
            == f"ServiceNow POST {standin.url}/api/now/table/incident: connection failed (ConnectionError)"
        )
        (found,) = adapter.find(KEY)
        assert found.ref.number == standin.records("incident")[0]["number"]


class TestHttpHygiene:
    """bridge.httpclient, the shared helpers the adapter builds on."""

    def test_new_session_headers(self) -> None:
        assert new_session().headers["User-Agent"] == f"azure-monitor-itsm-bridge/{__version__}"
        session = new_session("sandbox")
        assert session.headers["User-Agent"] == f"azure-monitor-itsm-bridge/{__version__} sandbox"
        assert session.headers["Accept"] == "application/json"

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (
                "https://user:pw@contoso.service-now.com/api/now/table/incident?sysparm_limit=1",
                "https://contoso.service-now.com/api/now/table/incident?sysparm_limit=1",
            ),
            (
                "https://fn.azurewebsites.net/api/alerts?code=abc123&x=1",
                "https://fn.azurewebsites.net/api/alerts?code=REDACTED&x=1",
            ),
            (
                "https://h/p?access_token=t&client_secret=s&password=p&sig=q&apikey=k",
                "https://h/p?access_token=REDACTED&client_secret=REDACTED&password=REDACTED&sig=REDACTED"
                "&apikey=REDACTED",
            ),
            ("http://127.0.0.1:8080/x#frag", "http://127.0.0.1:8080/x"),
            ("http://[::1]:9000/x", "http://[::1]:9000/x"),
            ("http://h:notaport/x", "<unparseable url>"),
        ],
    )
    def test_redact_url(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, None),
            ("", None),
            ("  ", None),
            ("0", 0.0),
            ("30", 30.0),
            ("1.5", 1.5),
            ("-1", None),
            ("nan", None),
            ("inf", None),
            ("tomorrow", None),
            ("Sun, 15 Jun 2025 00:02:00 GMT", 120.0),
            ("Sat, 14 Jun 2025 23:00:00 GMT", 0.0),
        ],
    )
    def test_parse_retry_after(self, value: str | None, expected: float | None) -> None:
        now = datetime(2025, 6, 15, tzinfo=UTC).timestamp()
        assert parse_retry_after(value, now=lambda: now) == expected

    def test_http_date_matches_formatdate(self) -> None:
        assert parse_retry_after(email.utils.formatdate(1_000_060, usegmt=True), now=lambda: 1_000_000) == 60.0

    @pytest.mark.parametrize(
        ("exc", "reason", "phrase"),
        [
            (requests.ReadTimeout("x"), Reason.TIMEOUT, "timed out (ReadTimeout)"),
            (requests.ConnectTimeout("x"), Reason.TIMEOUT, "timed out (ConnectTimeout)"),
            (
                requests.ConnectionError(OSError(104, "Connection reset by peer")),
                Reason.NETWORK,
                "connection failed (ConnectionError: Connection reset by peer)",
            ),
            (
                requests.exceptions.ChunkedEncodingError("x"),
                Reason.NETWORK,
                "request failed (ChunkedEncodingError)",
            ),
            (requests.TooManyRedirects("x"), Reason.NETWORK, "request failed (TooManyRedirects)"),
        ],
    )
    def test_error_from_exception(self, exc: requests.RequestException, reason: Reason, phrase: str) -> None:
        error = error_from_exception(
            exc, system="ServiceNow", method="get", url="https://u:p4ss@h.example/api?token=t0k&x=1"
        )
        assert (error.retryable, error.reason, error.status) == (True, reason, None)
        assert str(error) == f"ServiceNow GET https://h.example/api?token=REDACTED&x=1: {phrase}"

    def test_error_from_exception_ignores_the_exception_text(self) -> None:
        exc = requests.ConnectionError("HTTPSConnectionPool(host='u:p4ss@h'): Max retries exceeded with url: /?pw=p4ss")
        assert "p4ss" not in str(error_from_exception(exc, system="X"))
        assert str(error_from_exception(exc, system="X")) == "X: connection failed (ConnectionError)"


def test_a_key_with_a_trailing_newline_is_refused() -> None:
    assert KEY_PATTERN.match("6e8b7a64-1111-2222-3333-444444444444")
    assert not KEY_PATTERN.match("6e8b7a64-1111-2222-3333-444444444444\n")
