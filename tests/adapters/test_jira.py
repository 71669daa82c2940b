"""Jira Service Management adapter: the shared contract over a ``responses`` fake and over the
sandbox stand-in (Cloud and Data Center each), then Jira's wire details.

The fake (:class:`FakeJira`) answers through ``responses`` callbacks, so nothing leaves the
process. It keeps issues (project, labels, fields, status and resolution), comments (ADF bodies
on Cloud, strings on Data Center, internal or public) and a workflow (transitions per status, with
screens), parses the JQL subset the adapter may send (and refuses anything else the way Jira
does, reserved words included), validates Atlassian Document Format, answers 410 on the retired
search endpoint, checks the credential of the deployment (Basic email:token on Cloud, Bearer PAT on
Data Center), and lets a test script failures, globally or for one method and path.
:class:`StandInJira` drives :class:`~bridge.sandbox.jira.JiraStandIn` (a real loopback server)
through the same neutral controls, with its fault injector.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.client import RemoteDisconnected
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.exceptions import ProtocolError

from bridge.adapters.base import Resolution, WorkItemRef, WorkItemStatus
from bridge.adapters.jira import JIRA_SETTINGS, KEY_PATTERN, JiraAdapter, adf_document, adf_text, jql_string
from bridge.adapters.registry import adapter_class, build_adapter
from bridge.config import Settings
from bridge.errors import ConfigError, ItsmError, Reason
from bridge.sandbox.jira import JiraStandIn

from .contract import KEY, OTHER_KEY, AdapterContract, FakeClock, FakeRecord, make_item

BASE = "https://contoso.atlassian.net"
PROJECT = "OPS"
EMAIL = "bridge@contoso.com"
API_TOKEN = "ATATT3xFfGF0-T0k3n_Secret=value"
PAT = "NjE2MzQ2OTk4OTk0Om-PAT-Secret+value"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
PREFIX = "azmon-"
LABEL = PREFIX + KEY
FIELD = "customfield_10050"
DEPLOYMENTS = ("cloud", "datacenter")

_STATUS_CATEGORY = {"Open": "new", "In Progress": "indeterminate", "Resolved": "done", "Closed": "done"}
_STATUS_CATEGORY["Canceled"] = "done"
_RESOLUTIONS = ("Done", "Fixed", "Won't Do", "Duplicate")
_PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
_SEED_STATUS = {
    WorkItemStatus.OPEN: ("Open", None),
    WorkItemStatus.RESOLVED: ("Resolved", "Done"),
    WorkItemStatus.CLOSED: ("Closed", "Done"),
    WorkItemStatus.CANCELED: ("Canceled", "Won't Do"),
}
_SETTABLE = {"components", "assignee", "reporter", "duedate", FIELD, "customfield_10070"}
# Custom text fields of the stand-in site: a root cause that resolving may record (edit screen).
ROOT_CAUSE = "customfield_10060"
_STANDIN_FIELDS = {ROOT_CAUSE: "Root cause"}
_RETIRED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)


def make_settings(deployment: str = "cloud", **extra: str) -> Settings:
    env = {
        "AUTH_TENANT_ID": TENANT,
        "AUTH_AUDIENCES": "api://bridge",
        "ITSM_ADAPTER": "jira",
        "JIRA_BASE_URL": BASE,
        "JIRA_PROJECT": PROJECT,
        "JIRA_DEPLOYMENT": deployment,
    }
    if deployment == "cloud":
        env.update(JIRA_EMAIL=EMAIL, JIRA_API_TOKEN=API_TOKEN)
    else:
        env.update(JIRA_PAT=PAT)
    env.update(extra)
    return Settings.from_env({k: v for k, v in env.items() if v is not None})


def jira_error(messages: list[str] | None = None, errors: Mapping[str, str] | None = None) -> str:
    return json.dumps({"errorMessages": list(messages or []), "errors": dict(errors or {})})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ===================================================================== JQL, as Jira reads it


class JqlError(Exception):
    pass


_JQL_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<cf>cf\[[0-9]+\])|(?P<word>[A-Za-z_][A-Za-z0-9_.-]*)|(?P<op>!=|=|~))',
    re.DOTALL,
)
_JQL_RESERVED = frozenset(
    {"and", "or", "not", "empty", "null", "order", "by", "asc", "desc", "in", "is", "was", "do", "int", "select"}
)
_JQL_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", " ": " "}


def jql_tokens(jql: str) -> list[tuple[str, str]]:
    """(kind, value) tokens; string literals unescaped. Raises JqlError as Jira answers 400."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while jql[position:].strip():
        match = _JQL_TOKEN.match(jql, position)
        if match is None:
            raise JqlError(f"Error in the JQL Query: the character '{jql[position:].lstrip()[:1]}' is reserved")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        if kind == "str":
            out, chars = [], iter(raw[1:-1])
            for char in chars:
                if char == "\\":
                    escaped = next(chars)
                    if escaped not in _JQL_ESCAPES:
                        raise JqlError(f"Error in the JQL Query: illegal escape sequence '\\{escaped}'")
                    out.append(_JQL_ESCAPES[escaped])
                else:
                    out.append(char)
            tokens.append(("str", "".join(out)))
        else:
            tokens.append((kind, raw))
        position = match.end()
    return tokens


@dataclass
class Jql:
    clauses: list[tuple[str, str, str]]  # (field, operator, value)
    order: tuple[str, bool] | None  # (field, descending)


def parse_jql(jql: str) -> Jql:
    tokens = jql_tokens(jql)
    clauses: list[tuple[str, str, str]] = []
    order: tuple[str, bool] | None = None
    i = 0

    def word(at: int) -> str:
        return tokens[at][1].lower() if at < len(tokens) and tokens[at][0] == "word" else ""

    while i < len(tokens):
        if len(tokens) < i + 3:
            raise JqlError("Error in the JQL Query: expecting an operator and a value")
        (fkind, fname), (okind, op), (vkind, value) = tokens[i], tokens[i + 1], tokens[i + 2]
        if fkind not in ("word", "cf") or okind != "op" or vkind not in ("str", "word"):
            raise JqlError("Error in the JQL Query: expecting a field, an operator and a value")
        fname = fname.lower() if fkind == "word" else fname
        if fname not in ("project", "labels", "status", "statuscategory", "resolution") and fkind != "cf":
            raise JqlError(f"Field '{fname}' does not exist or you do not have permission to view it.")
        if vkind == "word" and value.lower() in _JQL_RESERVED:
            raise JqlError(f"Error in the JQL Query: '{value}' is a reserved JQL word. Enclose it in quotation marks")
        clauses.append((fname, op, value))
        i += 3
        if i == len(tokens):
            break
        if word(i) == "and":
            i += 1
            continue
        if word(i) == "order" and word(i + 1) == "by" and i + 2 < len(tokens):
            descending = word(i + 3) == "desc"
            order = (tokens[i + 2][1].lower(), descending)
            end = i + 3 + (1 if word(i + 3) in ("asc", "desc") else 0)
            if end != len(tokens):
                raise JqlError("Error in the JQL Query: unexpected text after ORDER BY")
            break
        raise JqlError(f"Error in the JQL Query: expecting AND or ORDER BY but got '{tokens[i][1]}'")
    return Jql(clauses, order)


# ===================================================================== ADF, as Jira validates it


def adf_is_valid(doc: Any) -> bool:
    if not isinstance(doc, dict) or doc.get("version") != 1 or doc.get("type") != "doc":
        return False
    content = doc.get("content")
    if not isinstance(content, list):
        return False
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "paragraph":
            return False
        for node in block.get("content", []):
            if not isinstance(node, dict):
                return False
            if node.get("type") == "text":
                if not isinstance(node.get("text"), str) or not node["text"]:
                    return False
            elif node.get("type") == "hardBreak":
                attrs = node.get("attrs")
                if attrs is not None and attrs.get("text", "\n") != "\n":
                    return False
            else:
                return False
    return True


def adf_plain(doc: Any) -> str:
    """The fake's own reading of an ADF document: paragraphs joined by a blank line."""
    paragraphs = []
    for block in doc.get("content", []):
        parts = []
        for node in block.get("content", []):
            parts.append(node["text"] if node.get("type") == "text" else "\n")
        paragraphs.append("".join(parts))
    return "\n\n".join(paragraphs)


# ===================================================================== the fake


@dataclass
class Transition:
    id: str
    name: str
    to: str
    screen: dict[str, dict[str, Any]] = field(default_factory=dict)


def _resolution_screen(required: bool = True) -> dict[str, dict[str, Any]]:
    return {
        "resolution": {
            "required": required,
            "name": "Resolution",
            "allowedValues": [{"id": str(i + 1), "name": n} for i, n in enumerate(_RESOLUTIONS)],
        }
    }


def default_workflow() -> dict[str, list[Transition]]:
    """A JSM-like workflow: Open/In Progress -> Resolved (resolution screen), Closed, Canceled."""
    to_done = [
        Transition("11", "Start progress", "In Progress"),
        Transition("21", "Resolve", "Resolved", _resolution_screen()),
        Transition("31", "Close", "Closed"),
        Transition("41", "Cancel", "Canceled"),
    ]
    reopen = Transition("51", "Reopen", "Open")
    return {
        "Open": to_done,
        "In Progress": [t for t in to_done if t.id != "11"],
        "Resolved": [reopen, Transition("31", "Close", "Closed")],
        "Closed": [reopen],
        "Canceled": [reopen],
    }


@dataclass
class Comment:
    id: str
    body: Any  # ADF document (Cloud) or string (Data Center)
    internal: bool
    created: str

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else adf_plain(self.body)


@dataclass
class Issue:
    id: str
    key: str
    project: str
    labels: list[str]
    status: str
    resolution: str | None
    created: str
    fields: dict[str, Any]
    comments: list[Comment] = field(default_factory=list)


class FakeJira:
    """A small, stateful Jira behind ``responses``; satisfies the contract's ``FakeItsm``."""

    def __init__(self, mock: responses.RequestsMock, *, deployment: str = "cloud") -> None:
        self.deployment = deployment
        self.api = "/rest/api/3" if deployment == "cloud" else "/rest/api/2"
        self.issues: dict[str, Issue] = {}
        self.workflow = default_workflow()
        self.failures: deque[tuple[Any, ...]] = deque()
        self.targeted: list[tuple[str, re.Pattern[str], tuple[Any, ...]]] = []
        self.requests: list[requests.PreparedRequest] = []
        self.sloppy = False
        self.search_page_size = 50
        self.comment_page_size = 100
        self._numbers = itertools.count(1)
        self._clock = itertools.count()
        self._comment_ids = itertools.count(10000)
        api = re.compile(re.escape(BASE) + r"/rest/.*")
        for method in (responses.GET, responses.POST, responses.PUT, responses.DELETE):
            mock.add_callback(method, api, callback=self._api)

    # ------------------------------------------------------------- FakeItsm

    def seed(self, correlation_id: str, *, status: WorkItemStatus = WorkItemStatus.OPEN) -> str:
        name, resolution = _SEED_STATUS[status]
        return self.insert(labels=[PREFIX + correlation_id], status=name, resolution=resolution)

    def seed_foreign(self, correlation_id: str) -> str:
        # Another integration tags its issues with the bare key: not this bridge's label.
        return self.insert(labels=[correlation_id])

    def seed_ci(self, name: str, resource_id: str | None = None) -> str | None:
        return None  # no CMDB in this adapter

    def extra_field(self) -> tuple[str, str]:
        return "customfield_10070", "team-a"

    def records(self) -> list[FakeRecord]:
        return [
            FakeRecord(
                id=issue.id,
                correlation_id=_correlation_of(issue),
                status=_neutral(issue),
                notes=tuple(c.text for c in issue.comments if c.internal),
                fields=dict(issue.fields),
            )
            for issue in sorted(self.issues.values(), key=lambda i: i.created)
        ]

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        for _ in range(times):
            self.failures.append(self._status_entry(status, headers, body))

    def fail_on(
        self, method: str, path: str, status: int, body: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer the next ``method`` request whose path matches the regex ``path`` with ``status``."""
        self.targeted.append((method, re.compile(path), self._status_entry(status, headers, body)))

    def drop_next(self) -> None:
        self.failures.append(("drop",))

    def commit_then_drop_next(self) -> None:
        self.failures.append(("commit_then_drop",))

    def delay_next(self) -> None:
        self.failures.append(("delay",))

    def clear_failures(self) -> None:
        self.failures.clear()
        self.targeted.clear()

    def sloppy_search(self) -> None:
        self.sloppy = True

    def error_body(self, message: str, detail: str) -> str:
        return jira_error([message], {"description": detail})

    def secrets(self) -> list[str]:
        if self.deployment == "cloud":
            return [API_TOKEN, base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()]
        return [PAT]

    # ------------------------------------------------------------- extra controls

    def insert(
        self,
        *,
        labels: list[str],
        project: str = PROJECT,
        status: str = "Open",
        resolution: str | None = None,
        fields: Mapping[str, Any] | None = None,
        created: str | None = None,
    ) -> str:
        number = next(self._numbers)
        issue_id = str(10000 + number)
        stamp = datetime(2025, 6, 15, 9, 0, tzinfo=UTC) + timedelta(seconds=next(self._clock))
        issue = Issue(
            id=issue_id,
            key=f"{project}-{number}",
            project=project,
            labels=list(labels),
            status=status,
            resolution=resolution,
            created=created or stamp.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            fields=dict(fields or {}),
        )
        self.issues[issue_id] = issue
        return issue_id

    def add_comment(self, issue_id: str, body: Any, *, internal: bool = True) -> None:
        issue = self.issues[issue_id]
        issue.comments.append(Comment(str(next(self._comment_ids)), body, internal, self._stamp()))

    def issue(self, issue_id: str) -> Issue:
        return self.issues[issue_id]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method or "", urlsplit(r.url or "").path) for r in self.requests]

    def bodies(self, method: str, path_suffix: str) -> list[Any]:
        return [
            json.loads(_body_text(r))
            for r in self.requests
            if r.method == method and urlsplit(r.url or "").path.endswith(path_suffix)
        ]

    # ------------------------------------------------------------- HTTP

    def _status_entry(self, status: int, headers: Mapping[str, str] | None, body: str | None) -> tuple[Any, ...]:
        if body is None:
            body = jira_error([_phrase(status)]) if status >= 400 else ""
        return ("status", status, dict(headers or {}), body)

    def _stamp(self) -> str:
        stamp = datetime(2025, 6, 15, 10, 0, tzinfo=UTC) + timedelta(seconds=next(self._clock))
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    def _authorized(self, header: str) -> bool:
        if self.deployment == "cloud":
            return header == "Basic " + base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
        return header == f"Bearer {PAT}"

    def _api(self, request: requests.PreparedRequest) -> Any:
        self.requests.append(request)
        if not self._authorized(str(request.headers.get("Authorization", ""))):
            return (401, {}, jira_error(["Client must be authenticated to access this resource."]))
        path = urlsplit(request.url or "").path
        entry: tuple[Any, ...] | None = None
        for index, (method, pattern, scripted) in enumerate(self.targeted):
            if method == request.method and pattern.search(path):
                entry = scripted
                del self.targeted[index]
                break
        if entry is None and self.failures:
            entry = self.failures.popleft()
        if entry is not None:
            kind = entry[0]
            if kind == "status":
                return (entry[1], entry[2], entry[3])
            if kind == "drop":
                return requests.ConnectionError(
                    ProtocolError("Connection aborted.", RemoteDisconnected("Remote end closed connection"))
                )
            if kind == "delay":
                return requests.ReadTimeout("HTTPSConnectionPool: Read timed out. (read timeout=4.0)")
            self._route(request)  # commit_then_drop: carried out, the answer lost
            return requests.ConnectionError(
                ProtocolError("Connection aborted.", RemoteDisconnected("Remote end closed connection"))
            )
        return self._route(request)

    def _route(self, request: requests.PreparedRequest) -> Any:
        parts = urlsplit(request.url or "")
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        method = request.method
        body = json.loads(_body_text(request)) if _body_text(request) else None
        api = self.api
        if path in ("/rest/api/2/search", "/rest/api/3/search"):
            if self.deployment == "cloud":
                return (410, {}, jira_error([_RETIRED]))
            if method == "POST" and path == "/rest/api/2/search":
                return self._search_datacenter(body)
        if self.deployment == "cloud" and method == "POST" and path == "/rest/api/3/search/jql":
            return self._search_cloud(body)
        if method == "GET" and path == f"{api}/myself":
            who = {"accountId": "5b10ac8d82e05b22cc7d4ef5"} if self.deployment == "cloud" else {"name": "svc-bridge"}
            return _ok({**who, "emailAddress": EMAIL, "active": True})
        if method == "POST" and path == f"{api}/issue":
            return self._create(body)
        match = re.fullmatch(re.escape(api) + r"/issue/([^/]+)(/comment|/transitions)?", path)
        if match:
            issue = self._lookup(match.group(1))
            if issue is None:
                return (404, {}, jira_error(["Issue does not exist or you do not have permission to see it."]))
            sub = match.group(2)
            if sub is None and method == "GET":
                return _ok(self._render(issue, (query.get("fields") or "").split(",")))
            if sub is None and method == "PUT":
                return self._edit(issue, body)
            if sub == "/comment" and method == "GET":
                return self._list_comments(issue, query)
            if sub == "/comment" and method == "POST":
                return self._post_comment(issue, body, api_comment=True)
            if sub == "/transitions" and method == "GET":
                return self._list_transitions(issue, query)
            if sub == "/transitions" and method == "POST":
                return self._transition(issue, body)
        match = re.fullmatch(r"/rest/servicedeskapi/request/([^/]+)/comment", path)
        if match and self.deployment == "datacenter" and method == "POST":
            issue = self._lookup(match.group(1))
            if issue is None:
                return (404, {}, json.dumps({"errorMessage": "The request could not be found."}))
            return self._post_comment(issue, body, api_comment=False)
        return (404, {}, jira_error([f"No resource for {method} {path}"]))

    def _lookup(self, id_or_key: str) -> Issue | None:
        if id_or_key in self.issues:
            return self.issues[id_or_key]
        return next((i for i in self.issues.values() if i.key == id_or_key), None)

    # -- search

    def _matching(self, jql: str) -> list[Issue]:
        query = parse_jql(jql)
        found = sorted(self.issues.values(), key=lambda i: i.created)
        if not self.sloppy:
            for fname, op, value in query.clauses:
                found = [i for i in found if _matches(i, fname, op, value)]
        if query.order is not None and query.order[0] == "created":
            found.sort(key=lambda i: i.created, reverse=query.order[1])
        return found

    def _search_cloud(self, body: Any) -> Any:
        try:
            issues = self._matching(body["jql"])
        except JqlError as exc:
            return (400, {}, jira_error([str(exc)]))
        start = int(body.get("nextPageToken") or "0")
        size = min(int(body.get("maxResults", 50)), self.search_page_size)
        page = issues[start : start + size]
        fields = body.get("fields")
        rendered = [self._render(i, fields) if fields else {"id": i.id} for i in page]
        answer: dict[str, Any] = {"issues": rendered, "isLast": start + size >= len(issues)}
        if start + size < len(issues):
            answer["nextPageToken"] = str(start + size)
        return _ok(answer)

    def _search_datacenter(self, body: Any) -> Any:
        try:
            issues = self._matching(body["jql"])
        except JqlError as exc:
            return (400, {}, jira_error([str(exc)]))
        start = int(body.get("startAt", 0))
        size = min(int(body.get("maxResults", 50)), self.search_page_size)
        page = issues[start : start + size]
        fields = body.get("fields") or ["*navigable"]
        rendered = [self._render(i, fields) for i in page]
        return _ok({"startAt": start, "maxResults": size, "total": len(issues), "issues": rendered})

    def _render(self, issue: Issue, fields: list[str]) -> dict[str, Any]:
        every: dict[str, Any] = {
            **issue.fields,
            "project": {"key": issue.project, "id": "10000", "name": "Operations"},
            "labels": list(issue.labels),
            "status": {
                "name": issue.status,
                "statusCategory": {"key": _STATUS_CATEGORY.get(issue.status, "indeterminate"), "id": 4},
            },
            "resolution": {"name": issue.resolution} if issue.resolution else None,
            "created": issue.created,
        }
        wanted = every if "*navigable" in fields or "*all" in fields else {f: every.get(f) for f in fields if f}
        return {"id": issue.id, "key": issue.key, "self": f"{BASE}{self.api}/issue/{issue.id}", "fields": wanted}

    # -- create

    def _create(self, body: Any) -> Any:
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return (400, {}, jira_error(["No fields"]))
        errors: dict[str, str] = {}
        project = fields.get("project") or {}
        if project.get("key") != PROJECT:
            errors["project"] = "valid project is required"
        if (fields.get("issuetype") or {}).get("name") not in ("Incident", "Task") and (
            fields.get("issuetype") or {}
        ).get("id") != "10004":
            errors["issuetype"] = "valid issue type is required"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif len(summary.encode("utf-16-le")) // 2 > 255:
            errors["summary"] = "Summary can't exceed 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        if "description" in fields:
            description = fields["description"]
            if self.deployment == "cloud" and not adf_is_valid(description):
                errors["description"] = (
                    "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
                )
            if self.deployment == "datacenter" and not isinstance(description, str):
                errors["description"] = "Operation value must be a string"
        labels = fields.get("labels", [])
        if not isinstance(labels, list) or any(not isinstance(x, str) or " " in x or len(x) > 255 for x in labels):
            errors["labels"] = "The label contains spaces which is invalid."
        if "priority" in fields:
            priority = fields["priority"]
            if priority.get("name") not in _PRIORITIES and priority.get("id") not in ("1", "2", "3", "4", "5"):
                errors["priority"] = "Priority name is not valid"
        for name in fields:
            if name not in {"project", "issuetype", "summary", "description", "labels", "priority"} | _SETTABLE:
                errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
        if "components" in fields and any(c.get("name") not in ("Web", "Database") for c in fields["components"]):
            errors["components"] = "Component name is not valid"
        if "assignee" in fields:
            who = "accountId" if self.deployment == "cloud" else "name"
            if set(fields["assignee"]) != {who}:
                errors["assignee"] = f"assignee must be given by {who}"
        if errors:
            return (400, {}, jira_error([], errors))
        extra = {k: v for k, v in fields.items() if k not in ("project", "labels")}
        issue_id = self.insert(labels=list(labels), fields=extra)
        issue = self.issues[issue_id]
        return (201, {"Content-Type": "application/json"}, json.dumps({"id": issue.id, "key": issue.key}))

    def _edit(self, issue: Issue, body: Any) -> Any:
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return (400, {}, jira_error(["No fields"]))
        # A closed issue is not editable: its edit screen offers nothing (jira.issue.editable=false).
        editable = set() if issue.status == "Closed" else _SETTABLE
        errors = {
            name: f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
            for name in fields
            if name not in editable
        }
        if errors:
            return (400, {}, jira_error([], errors))
        issue.fields.update(fields)
        return (204, {}, "")

    # -- comments

    def _post_comment(self, issue: Issue, body: Any, *, api_comment: bool) -> Any:
        content = body.get("body") if isinstance(body, dict) else None
        if self.deployment == "cloud":
            if not adf_is_valid(content) or not (content or {}).get("content"):
                return (400, {}, jira_error([], {"comment": "Comment body is not valid!"}))
            internal = any(
                p.get("key") == "sd.public.comment" and p.get("value") == {"internal": True}
                for p in body.get("properties", [])
            )
        else:
            if not isinstance(content, str) or not content.strip():
                return (400, {}, jira_error([], {"comment": "Comment body can not be empty!"}))
            internal = (body.get("public") is False) if not api_comment else False
        self.add_comment(issue.id, content, internal=internal)
        comment = issue.comments[-1]
        return (201, {"Content-Type": "application/json"}, json.dumps({"id": comment.id, "body": comment.body}))

    def _list_comments(self, issue: Issue, query: Mapping[str, str]) -> Any:
        comments = list(issue.comments)
        if query.get("orderBy") == "-created":
            comments.reverse()
        start = int(query.get("startAt", "0"))
        size = min(int(query.get("maxResults", "50")), self.comment_page_size)
        page = comments[start : start + size]
        return _ok(
            {
                "startAt": start,
                "maxResults": size,
                "total": len(comments),
                "comments": [{"id": c.id, "body": c.body, "created": c.created} for c in page],
            }
        )

    # -- transitions

    def _list_transitions(self, issue: Issue, query: Mapping[str, str]) -> Any:
        expand = "transitions.fields" in query.get("expand", "")
        listed = []
        for t in self.workflow.get(issue.status, []):
            entry: dict[str, Any] = {
                "id": t.id,
                "name": t.name,
                "hasScreen": bool(t.screen),
                "isAvailable": True,
                "to": {"name": t.to, "statusCategory": {"key": _STATUS_CATEGORY.get(t.to, "indeterminate")}},
            }
            if expand:
                entry["fields"] = t.screen
            listed.append(entry)
        return _ok({"expand": "transitions", "transitions": listed})

    def _transition(self, issue: Issue, body: Any) -> Any:
        wanted = (body.get("transition") or {}).get("id")
        transition = next((t for t in self.workflow.get(issue.status, []) if t.id == wanted), None)
        if transition is None:
            return (400, {}, jira_error([f"Transition id '{wanted}' is not valid for this issue."]))
        given_fields = body.get("fields") or {}
        errors = {
            name: f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
            for name in given_fields
            if name not in transition.screen
        }
        for name, spec in transition.screen.items():
            if spec.get("required") and name not in given_fields:
                errors[name] = f"Field {spec.get('name', name)} is required."
        resolution = (given_fields.get("resolution") or {}).get("name")
        if resolution is not None and resolution not in _RESOLUTIONS:
            errors["resolution"] = "Could not find valid 'id' or 'name' in resolution object."
        if errors:
            return (400, {}, jira_error([], errors))
        issue.status = transition.to
        issue.fields.update({name: value for name, value in given_fields.items() if name != "resolution"})
        if _STATUS_CATEGORY.get(transition.to) == "done":
            # A post-function sets a resolution when the screen did not.
            issue.resolution = resolution or ("Won't Do" if transition.to == "Canceled" else "Done")
        else:
            issue.resolution = None
        return (204, {}, "")


def _matches(issue: Issue, fname: str, op: str, value: str) -> bool:
    if fname == "project" and op == "=":
        return issue.project.lower() == value.lower()
    if fname == "labels" and op == "=":
        # Looser than the adapter's re-check: case does not matter here.
        return value.lower() in (x.lower() for x in issue.labels)
    if fname.startswith("cf[") and op == "~":
        number = fname[3:-1]
        carried = str(issue.fields.get(f"customfield_{number}") or "")
        phrase = value.strip('"')
        return phrase.lower() in carried.lower()  # a text search: near misses match too
    raise JqlError(f"The operator '{op}' is not supported by the '{fname}' field.")


def _correlation_of(issue: Issue) -> str:
    for label in issue.labels:
        if label.startswith(PREFIX):
            return label[len(PREFIX) :]
    return issue.labels[0] if issue.labels else str(issue.fields.get(FIELD, ""))


def _neutral(issue: Issue) -> WorkItemStatus:
    if _STATUS_CATEGORY.get(issue.status) != "done":
        return WorkItemStatus.OPEN
    return {"Closed": WorkItemStatus.CLOSED, "Canceled": WorkItemStatus.CANCELED}.get(
        issue.status, WorkItemStatus.RESOLVED
    )


def _ok(payload: Any, status: int = 200) -> Any:
    return (status, {"Content-Type": "application/json"}, json.dumps(payload))


def _body_text(request: requests.PreparedRequest) -> str:
    body = request.body
    if body is None:
        return ""
    return body.decode() if isinstance(body, bytes) else str(body)


# ===================================================================== contract: responses


class TestJiraContract(AdapterContract):
    """The shared adapter contract over the ``responses`` fake, Cloud and Data Center."""

    adapter_name = "jira"
    fake_kind = "responses"

    @pytest.fixture(params=DEPLOYMENTS)
    def deployment(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def itsm(self, deployment: str) -> Iterator[FakeJira]:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            yield FakeJira(mock, deployment=deployment)

    @pytest.fixture
    def adapter(self, deployment: str, itsm: FakeJira, clock: FakeClock) -> Iterator[JiraAdapter]:
        adapter = JiraAdapter(make_settings(deployment), clock=clock)
        yield adapter
        adapter.close()


# ===================================================================== contract: the stand-in


_STANDIN_SEED = {
    WorkItemStatus.OPEN: ("Open", None),
    WorkItemStatus.RESOLVED: ("Resolved", "Done"),
    WorkItemStatus.CLOSED: ("Closed", "Done"),
    # The stand-in's workflow has no Canceled status: a closed issue resolved Won't Do is canceled.
    WorkItemStatus.CANCELED: ("Closed", "Won't Do"),
}


class StandInJira:
    """The contract's ``FakeItsm`` over :class:`~bridge.sandbox.jira.JiraStandIn` (real sockets)."""

    def __init__(self, standin: JiraStandIn, *, delay_seconds: float) -> None:
        self.standin = standin
        self.delay_seconds = delay_seconds
        self._seeded = itertools.count()

    def seed(self, correlation_id: str, *, status: WorkItemStatus = WorkItemStatus.OPEN) -> str:
        name, resolution = _STANDIN_SEED[status]
        return self._insert([PREFIX + correlation_id], name, resolution)

    def seed_foreign(self, correlation_id: str) -> str:
        return self._insert([correlation_id], "Open", None)

    def seed_ci(self, name: str, resource_id: str | None = None) -> str | None:
        return None

    def extra_field(self) -> tuple[str, str]:
        return ROOT_CAUSE, "Disk cleaned up"

    def records(self) -> list[FakeRecord]:
        records = []
        for issue in self.standin.issues():
            fields = issue["fields"]
            labels = fields["labels"]
            ours = [x[len(PREFIX) :] for x in labels if x.startswith(PREFIX)]
            notes = tuple(
                c["body"] if isinstance(c["body"], str) else adf_plain(c["body"])
                for c in self.standin.comments(issue["key"])
                if c["internal"]
            )
            records.append(
                FakeRecord(
                    id=issue["id"],
                    correlation_id=(ours or labels or [""])[0],
                    status=_standin_status(fields),
                    notes=notes,
                    fields=fields,
                )
            )
        return records

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        payload: Any = body
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = body
        self.standin.faults.status(status, times=times, path=r"^/rest/", body=payload or None, headers=headers)

    def drop_next(self) -> None:
        self.standin.faults.drop(times=1, path=r"^/rest/")

    def commit_then_drop_next(self) -> None:
        self.standin.faults.commit_then_drop(times=1, path=r"^/rest/")

    def delay_next(self) -> None:
        # Answered after the adapter stopped waiting, and not carried out: latency, then a drop.
        self.standin.faults.latency(self.delay_seconds, times=1, path=r"^/rest/")
        self.standin.faults.drop(times=1, path=r"^/rest/")

    def clear_failures(self) -> None:
        self.standin.faults.clear()

    def sloppy_search(self) -> None:
        standin = self.standin

        def everything(parsed: Any) -> list[Any]:
            return sorted(standin._issues.values(), key=lambda issue: issue.id)

        standin._select = everything  # type: ignore[method-assign]

    def error_body(self, message: str, detail: str) -> str:
        return jira_error([message], {"description": detail})

    def secrets(self) -> list[str]:
        if self.standin.cloud:
            return [API_TOKEN, base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()]
        return [PAT]

    def _insert(self, labels: list[str], status: str, resolution: str | None) -> str:
        # Seeds are older than anything the adapter creates, in the order they were seeded.
        created = 1_700_000_000.0 + next(self._seeded)
        issue = self.standin.insert_issue(
            PROJECT, "Seeded alert issue", labels=labels, status=status, resolution=resolution, created=created
        )
        return str(issue["id"])


def _standin_status(fields: Mapping[str, Any]) -> WorkItemStatus:
    if fields["statusCategory"] != "done":
        return WorkItemStatus.OPEN
    if fields["resolution"] in ("Won't Do", "Duplicate"):
        return WorkItemStatus.CANCELED
    return WorkItemStatus.CLOSED if fields["status"] == "Closed" else WorkItemStatus.RESOLVED


_STANDIN_TIMEOUT = 0.4


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def jira_standin(request: pytest.FixtureRequest) -> Iterator[JiraStandIn]:
    standin = JiraStandIn(
        deployment=str(request.param),
        email=EMAIL,
        api_token=API_TOKEN,
        personal_access_token=PAT,
        projects={PROJECT: ("Incident", "Task")},
        custom_fields=_STANDIN_FIELDS,
    )
    with standin:
        yield standin


class TestJiraStandInContract(AdapterContract):
    """The shared adapter contract over the Jira stand-in on loopback, Cloud and Data Center."""

    adapter_name = "jira"
    fake_kind = "standin"

    @pytest.fixture
    def itsm(self, jira_standin: JiraStandIn) -> Iterator[StandInJira]:
        jira_standin.reset()
        jira_standin.__dict__.pop("_select", None)  # undo a sloppy search of an earlier test
        yield StandInJira(jira_standin, delay_seconds=_STANDIN_TIMEOUT * 3)
        jira_standin.__dict__.pop("_select", None)
        jira_standin.faults.clear()

    @pytest.fixture
    def adapter(self, jira_standin: JiraStandIn, itsm: StandInJira, clock: FakeClock) -> Iterator[JiraAdapter]:
        settings = make_settings(
            jira_standin.deployment,
            JIRA_BASE_URL=jira_standin.url,
            ITSM_TIMEOUT_SECONDS=str(_STANDIN_TIMEOUT),
        )
        adapter = JiraAdapter(settings, clock=clock)
        yield adapter
        adapter.close()


# ===================================================================== wire details


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> Iterator[FakeJira]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeJira(mock, deployment="cloud")


@pytest.fixture
def dc_fake() -> Iterator[FakeJira]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeJira(mock, deployment="datacenter")


def build(deployment: str = "cloud", clock: FakeClock | None = None, **extra: str) -> JiraAdapter:
    return JiraAdapter(make_settings(deployment, **extra), clock=clock or FakeClock())


@pytest.fixture
def adapter(fake: FakeJira) -> Iterator[JiraAdapter]:
    adapter = build()
    yield adapter
    adapter.close()


@pytest.fixture
def dc_adapter(dc_fake: FakeJira) -> Iterator[JiraAdapter]:
    adapter = build("datacenter")
    yield adapter
    adapter.close()


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """A plain scripted mock for answers the stateful fake would never give."""
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def query_of(request: requests.PreparedRequest) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(request.url or "").query, keep_blank_values=True).items()}


def json_of(request: requests.PreparedRequest) -> Any:
    return json.loads(_body_text(request))


def searches(fake: FakeJira) -> list[Any]:
    return fake.bodies("POST", "/search/jql") + fake.bodies("POST", "/rest/api/2/search")


class TestFind:
    def test_exact_search_request(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        adapter.find(KEY)

        assert fake.calls() == [("POST", "/rest/api/3/search/jql")]
        (body,) = searches(fake)
        assert body["jql"] == f'project = "OPS" AND labels = "{LABEL}" ORDER BY created ASC'
        assert set(body["fields"]) >= {"project", "labels", "status", "resolution", "created"}
        assert body["maxResults"] == 50
        assert "nextPageToken" not in body and "startAt" not in body
        (request,) = fake.requests
        assert request.headers["Accept-Language"] == "en"
        assert request.headers["Accept"] == "application/json"

    def test_the_retired_search_is_never_used(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.search_page_size = 1
        for _ in range(3):
            fake.seed(KEY)
        adapter.create(make_item(OTHER_KEY))
        adapter.find(KEY)
        adapter.find(OTHER_KEY)

        paths = {path for _, path in fake.calls()}
        assert "/rest/api/3/search" not in paths and "/rest/api/2/search" not in paths
        assert "/rest/api/3/search/jql" in paths

    def test_the_retired_search_answers_410_permanently(self, mock: responses.RequestsMock) -> None:
        # What the bridge would see if it ever used it: a permanent error, never retried.
        mock.add(responses.POST, f"{BASE}/rest/api/3/search/jql", status=410, body=jira_error([_RETIRED]))
        adapter = build()
        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)
        assert (caught.value.status, caught.value.retryable, caught.value.reason) == (410, False, Reason.CLIENT_ERROR)
        assert "The requested API has been removed" in str(caught.value)

    def test_every_status_is_searched_and_ordered_oldest_first(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        newest = fake.insert(labels=[LABEL], created="2025-06-15T11:00:00.000+0200")  # 09:00 UTC
        oldest = fake.insert(labels=[LABEL], status="Closed", resolution="Done", created="2025-06-15T08:00:00.000+0000")
        middle = fake.insert(
            labels=[LABEL], status="Resolved", resolution="Done", created="2025-06-15T10:00:00.000+0200"
        )

        found = adapter.find(KEY)

        assert [r.ref.id for r in found] == [oldest, middle, newest]
        assert "statusCategory" not in searches(fake)[0]["jql"]

    def test_ref_carries_id_key_and_browse_url(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        (found,) = adapter.find(KEY)

        key = fake.issue(issue_id).key
        assert found.ref == WorkItemRef(system="jira", id=issue_id, number=key, url=f"{BASE}/browse/{key}")
        assert found.state == "Open"

    def test_search_pagination_follows_next_page_token(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.search_page_size = 2
        seeded = [fake.seed(KEY) for _ in range(5)]

        found = adapter.find(KEY)

        assert [r.ref.id for r in found] == seeded
        bodies = searches(fake)
        assert [b.get("nextPageToken") for b in bodies] == [None, "2", "4"]
        assert len({b["jql"] for b in bodies}) == 1

    def test_datacenter_search_pagination_uses_start_at(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        dc_fake.search_page_size = 2
        seeded = [dc_fake.seed(KEY) for _ in range(5)]

        found = dc_adapter.find(KEY)

        assert [r.ref.id for r in found] == seeded
        assert dc_fake.calls() == [("POST", "/rest/api/2/search")] * 3
        assert [b["startAt"] for b in searches(dc_fake)] == [0, 2, 4]

    def test_a_repeated_page_token_is_an_invalid_response(self, mock: responses.RequestsMock) -> None:
        page = {"issues": [], "nextPageToken": "same", "isLast": False}
        mock.add(responses.POST, f"{BASE}/rest/api/3/search/jql", json=page)
        mock.add(responses.POST, f"{BASE}/rest/api/3/search/jql", json=page)
        with pytest.raises(ItsmError) as caught:
            build().find(KEY)
        assert (caught.value.reason, caught.value.retryable) == (Reason.INVALID_RESPONSE, True)

    def test_a_search_answer_without_issues_is_an_invalid_response(self, mock: responses.RequestsMock) -> None:
        mock.add(responses.POST, f"{BASE}/rest/api/3/search/jql", json={"values": []})
        with pytest.raises(ItsmError) as caught:
            build().find(KEY)
        assert (caught.value.reason, caught.value.retryable) == (Reason.INVALID_RESPONSE, True)

    def test_recently_created_issues_are_reconciled(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        ref = adapter.create(make_item())
        adapter.find(KEY)

        assert searches(fake)[-1]["reconcileIssues"] == [int(ref.id)]

    def test_recheck_drops_near_misses_other_projects_and_case(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        exact = fake.seed(KEY)
        fake.insert(labels=[LABEL.upper()])  # matched by Jira's case-insensitive label search
        fake.insert(labels=[LABEL], project="OTHER")
        fake.insert(labels=[LABEL + "0", "azmon"])
        fake.sloppy_search()

        with caplog.at_level(logging.WARNING, logger="bridge.adapters.jira"):
            found = adapter.find(KEY)

        assert [r.ref.id for r in found] == [exact]
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3

    def test_an_issue_with_other_labels_too_is_found(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.insert(labels=["customer-x", LABEL, "p1"])
        assert [r.ref.id for r in adapter.find(KEY)] == [issue_id]


class TestJqlSafety:
    @pytest.mark.parametrize(
        "key",
        [
            "",
            KEY.upper(),
            KEY + " ",
            'x" OR project = "OTHER',
            "x\\",
            "abc\nORDER BY key",
            "0" * 101,
            "ALERT{1}",
            "zz",
            "a b",
        ],
    )
    def test_keys_outside_the_pattern_are_refused_before_any_call(
        self, adapter: JiraAdapter, fake: FakeJira, key: str
    ) -> None:
        with pytest.raises(ValueError):
            adapter.find(key)
        with pytest.raises(ValueError):
            adapter.create(make_item(key))
        assert fake.requests == []

    def test_key_pattern_takes_guids_and_hashes(self) -> None:
        assert KEY_PATTERN.match(KEY) and KEY_PATTERN.match("a" * 40) and KEY_PATTERN.match("0" * 100)

    @pytest.mark.parametrize(
        ("value", "literal"),
        [
            ("OPS", '"OPS"'),
            ('a"b', '"a\\"b"'),
            ("a\\b", '"a\\\\b"'),
            ('\\"', '"\\\\\\""'),
            ("line\nbreak", '"line\\nbreak"'),
            ("", '""'),
        ],
    )
    def test_jql_string_quotes_and_escapes(self, value: str, literal: str) -> None:
        assert jql_string(value) == literal

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
    def test_a_jql_literal_is_always_one_value(self, value: str) -> None:
        # Whatever the value, Jira's tokenizer reads the literal back as exactly one string equal to it.
        tokens = jql_tokens(f"labels = {jql_string(value)} AND project = {jql_string(PROJECT)}")
        assert tokens[2] == ("str", value)
        assert [kind for kind, _ in tokens] == ["word", "op", "str", "word", "word", "op", "str"]

    @pytest.mark.parametrize("project", ["DO", "INT", "AND", "ORDER"])
    def test_reserved_word_project_keys_are_quoted(self, project: str) -> None:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            fake = FakeJira(mock)
            with pytest.raises(JqlError):
                parse_jql(f"project = {project} AND labels = x")  # what an unquoted key would do
            adapter = JiraAdapter(make_settings(JIRA_PROJECT=project))
            assert adapter.find(KEY) == []  # the fake's parser accepted the query
            assert searches(fake)[0]["jql"].startswith(f'project = "{project}" AND ')

    def test_a_hostile_label_prefix_cannot_reach_jql(self) -> None:
        with pytest.raises(ConfigError) as caught:
            JiraAdapter(make_settings(JIRA_LABEL_PREFIX='x" OR labels is not EMPTY OR labels = "'))
        assert caught.value.setting == "JIRA_LABEL_PREFIX"


class TestCorrelationField:
    @pytest.fixture
    def field_adapter(self, fake: FakeJira) -> Iterator[JiraAdapter]:
        adapter = build(JIRA_CORRELATION_FIELD=FIELD)
        yield adapter
        adapter.close()

    def test_search_by_text_field_phrase(self, field_adapter: JiraAdapter, fake: FakeJira) -> None:
        field_adapter.find(KEY)

        (body,) = searches(fake)
        assert body["jql"] == f'project = "OPS" AND cf[10050] ~ "\\"{KEY}\\"" ORDER BY created ASC'
        assert FIELD in body["fields"]
        # Jira's own tokenizer reads the value as the quoted phrase.
        assert jql_tokens(body["jql"])[6] == ("str", f'"{KEY}"')

    def test_create_sets_field_and_label(self, field_adapter: JiraAdapter, fake: FakeJira) -> None:
        ref = field_adapter.create(make_item())

        issue = fake.issue(ref.id)
        assert issue.fields[FIELD] == KEY
        assert issue.labels == [LABEL]

    def test_text_search_near_misses_are_dropped(
        self, field_adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        exact = fake.insert(labels=[], fields={FIELD: KEY})
        fake.insert(labels=[], fields={FIELD: KEY + "0"})  # the text search matches it too
        fake.insert(labels=[], fields={FIELD: f"{KEY} and more"})

        with caplog.at_level(logging.WARNING):
            found = field_adapter.find(KEY)

        assert [r.ref.id for r in found] == [exact]
        assert sum(1 for r in caplog.records if r.levelno == logging.WARNING) == 2

    def test_the_field_cannot_be_mapped(
        self, field_adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING):
            ref = field_adapter.create(make_item(fields={FIELD: "hijack"}))
        assert fake.issue(ref.id).fields[FIELD] == KEY
        assert FIELD in caplog.text


class TestStatus:
    @pytest.mark.parametrize(
        ("status", "category", "resolution", "expected"),
        [
            ("Open", "new", None, WorkItemStatus.OPEN),
            ("Waiting for support", "new", None, WorkItemStatus.OPEN),
            ("In Progress", "indeterminate", None, WorkItemStatus.OPEN),
            ("Pending", "indeterminate", "Done", WorkItemStatus.OPEN),  # reopened, stale resolution
            ("Whatever", "", None, WorkItemStatus.OPEN),
            ("Resolved", "done", "Done", WorkItemStatus.RESOLVED),
            ("Done", "done", "Fixed", WorkItemStatus.RESOLVED),
            ("Done", "done", None, WorkItemStatus.RESOLVED),
            ("Closed", "done", "Done", WorkItemStatus.CLOSED),
            ("CLOSED", "done", None, WorkItemStatus.CLOSED),
            ("Closed - Complete", "done", "Done", WorkItemStatus.CLOSED),
            ("Issue closed", "done", "Done", WorkItemStatus.CLOSED),
            ("Closed", "", None, WorkItemStatus.CLOSED),
            ("Done", "done", "Done", WorkItemStatus.RESOLVED),  # reopened by the core on a re-fire
            ("Not yet closed", "indeterminate", None, WorkItemStatus.OPEN),
            ("Enclosed", "done", "Done", WorkItemStatus.RESOLVED),
            ("Closed", "done", "Won't Do", WorkItemStatus.CANCELED),
            ("Resolved", "done", "Won't Do", WorkItemStatus.CANCELED),
            ("Resolved", "done", "Won\u2019t Fix", WorkItemStatus.CANCELED),
            ("Done", "done", "Cancelled", WorkItemStatus.CANCELED),
            ("Done", "done", "Duplicate", WorkItemStatus.CANCELED),
            ("Done", "done", "Declined", WorkItemStatus.CANCELED),
            ("Canceled", "done", None, WorkItemStatus.CANCELED),
        ],
    )
    def test_status_table(
        self, mock: responses.RequestsMock, status: str, category: str, resolution: str | None, expected: WorkItemStatus
    ) -> None:
        issue = {
            "id": "10001",
            "key": "OPS-1",
            "fields": {
                "project": {"key": PROJECT},
                "labels": [LABEL],
                "status": {"name": status, "statusCategory": {"key": category}},
                "resolution": {"name": resolution} if resolution else None,
                "created": "2025-06-15T09:00:00.000+0000",
            },
        }
        mock.add(responses.POST, f"{BASE}/rest/api/3/search/jql", json={"issues": [issue], "isLast": True})

        (found,) = build().find(KEY)

        assert (found.status, found.state) == (expected, status)


class TestCreate:
    def test_exact_create_request(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        item = make_item()

        ref = adapter.create(item)

        assert fake.calls() == [("POST", "/rest/api/3/issue"), ("POST", f"/rest/api/3/issue/{ref.id}/comment")]
        (body,) = fake.bodies("POST", "/rest/api/3/issue")
        assert body == {
            "fields": {
                "project": {"key": PROJECT},
                "issuetype": {"name": "Incident"},
                "summary": item.title,
                "description": {
                    "version": 1,
                    "type": "doc",
                    "content": [
                        {
                            "type": "paragraph",
                            "content": [
                                {"type": "text", "text": "Rule: cpu-high"},
                                {"type": "hardBreak"},
                                {"type": "text", "text": "Severity: Sev2"},
                                {"type": "hardBreak"},
                                {"type": "text", "text": f"Alert id: /subscriptions/x/alerts/{KEY}"},
                            ],
                        }
                    ],
                },
                "labels": [LABEL],
                "priority": {"name": "Medium"},
            }
        }
        assert ref.number == fake.issue(ref.id).key and ref.url == f"{BASE}/browse/{ref.number}"

    def test_the_note_is_an_internal_adf_comment(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        ref = adapter.create(make_item())

        (comment,) = fake.bodies("POST", f"/issue/{ref.id}/comment")
        assert comment == {
            "body": {
                "version": 1,
                "type": "doc",
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": make_item().note}]}],
            },
            "properties": [{"key": "sd.public.comment", "value": {"internal": True}}],
        }

    def test_a_failed_note_after_the_issue_exists_does_not_raise(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake.fail_on("POST", r"/comment$", 503, headers={"Retry-After": "5"})

        with caplog.at_level(logging.WARNING):
            ref = adapter.create(make_item())

        (stored,) = fake.records()
        assert stored.id == ref.id and stored.notes == ()
        assert "a comment was not added" in caplog.text and "503" in caplog.text
        assert not adapter.has_note(ref, "[azmon:fired:1]")  # so a redelivery writes the note again

    @pytest.mark.parametrize(
        ("severity", "priority"),
        [("Sev0", "Highest"), ("Sev1", "High"), ("Sev2", "Medium"), ("Sev3", "Low"), ("Sev4", "Lowest")],
    )
    def test_default_priority_map(self, adapter: JiraAdapter, fake: FakeJira, severity: str, priority: str) -> None:
        adapter.create(make_item(severity=severity))
        assert fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]["priority"] == {"name": priority}

    @pytest.mark.parametrize("severity", [None, "", "Sev9", "Critical"])
    def test_no_priority_without_a_mapped_severity(self, adapter: JiraAdapter, fake: FakeJira, severity: Any) -> None:
        adapter.create(make_item(severity=severity))
        assert "priority" not in fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]

    @pytest.mark.parametrize(
        ("mapping", "severity", "expected"),
        [
            ("sev0=High, SEV2 = Low", "Sev2", {"name": "Low"}),
            ("Sev2=3", "Sev2", {"id": "3"}),
            ("Sev0=Highest", "Sev2", None),
            ("none", "Sev0", None),
        ],
    )
    def test_configured_priority_map(
        self, fake: FakeJira, mapping: str, severity: str, expected: dict[str, str] | None
    ) -> None:
        build(JIRA_PRIORITY_MAP=mapping).create(make_item(severity=severity))
        assert fake.bodies("POST", "/rest/api/3/issue")[0]["fields"].get("priority") == expected

    def test_summary_is_one_line_of_at_most_255(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        adapter.create(make_item(title="first line\r\nsecond\tline  " + "x" * 400))
        summary = fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]["summary"]
        assert summary.startswith("first line second line x")
        assert len(summary) == 255 and summary.endswith("\u2026")

    def test_summary_limit_counts_like_jira(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        adapter.create(make_item(title="\U0001f525" * 200))  # 400 UTF-16 units
        summary = fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]["summary"]
        assert len(summary.encode("utf-16-le")) // 2 <= 255

    def test_declared_limits(self) -> None:
        assert (JiraAdapter.title_limit, JiraAdapter.description_limit) == (255, 32_767)

    def test_a_long_description_is_shortened_to_fit_as_adf(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        lines = [f"line {n}: " + "x" * 20 for n in range(1, 1200)]  # ~32,000 characters of text
        description = "\n".join(lines)[: JiraAdapter.description_limit]

        adapter.create(make_item(description=description))

        sent = fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]["description"]
        assert adf_is_valid(sent)
        assert len(json.dumps(sent, separators=(",", ":"), ensure_ascii=False)) <= 32_767
        text = adf_text(sent)
        assert text.startswith("line 1: ") and text.rstrip().endswith("the full alert is in Azure Monitor]")

    def test_an_empty_description_is_left_out(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        adapter.create(make_item(description=" \n\n "))
        assert "description" not in fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]

    def test_mapped_fields(self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture) -> None:
        fields = {
            "components": "Web, Database",
            "assignee": "5b10ac8d82e05b22cc7d4ef5",
            "duedate": "2025-07-01",
            "customfield_10070": "team-a",
            "summary": "hijack",
            "labels": "hijack",
            "priority": "Lowest",
        }
        with caplog.at_level(logging.WARNING):
            ref = adapter.create(make_item(fields=fields))

        sent = fake.bodies("POST", "/rest/api/3/issue")[0]["fields"]
        assert sent["components"] == [{"name": "Web"}, {"name": "Database"}]
        assert sent["assignee"] == {"accountId": "5b10ac8d82e05b22cc7d4ef5"}
        assert (sent["duedate"], sent["customfield_10070"]) == ("2025-07-01", "team-a")
        assert (sent["summary"], sent["labels"], sent["priority"]) == (make_item().title, [LABEL], {"name": "Medium"})
        assert "['labels', 'priority', 'summary']" in caplog.text
        assert fake.issue(ref.id)

    def test_a_field_not_on_the_screen_is_a_permanent_error(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item(fields={"customfield_99999": "x"}))
        assert (caught.value.status, caught.value.retryable, caught.value.reason) == (400, False, Reason.CLIENT_ERROR)
        assert "customfield_99999: Field 'customfield_99999' cannot be set" in str(caught.value)
        assert fake.records() == []

    def test_issue_type_by_name_or_id(self, fake: FakeJira) -> None:
        build(JIRA_ISSUE_TYPE="10004").create(make_item())
        build(JIRA_ISSUE_TYPE="Task").create(make_item(OTHER_KEY))
        types = [b["fields"]["issuetype"] for b in fake.bodies("POST", "/rest/api/3/issue")]
        assert types == [{"id": "10004"}, {"name": "Task"}]

    def test_an_answer_without_an_id_is_invalid_but_may_have_landed(self, mock: responses.RequestsMock) -> None:
        mock.add(responses.POST, f"{BASE}/rest/api/3/issue", status=201, json={"key": "OPS-1"})
        with pytest.raises(ItsmError) as caught:
            build().create(make_item())
        assert (caught.value.reason, caught.value.retryable, caught.value.maybe_applied) == (
            Reason.INVALID_RESPONSE,
            True,
            True,
        )


class TestCreateResolved:
    def test_calls_and_outcome(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        resolution = Resolution(code=None, summary="Over before it arrived.", note="Resolved [azmon:resolved]")

        ref = adapter.create(make_item(), resolution)

        base = f"/rest/api/3/issue/{ref.id}"
        assert fake.calls() == [
            ("POST", "/rest/api/3/issue"),
            ("POST", f"{base}/comment"),
            ("GET", f"{base}/transitions"),
            ("POST", f"{base}/transitions"),
            ("POST", f"{base}/comment"),
            ("POST", f"{base}/comment"),
        ]
        (stored,) = fake.records()
        assert stored.status is WorkItemStatus.RESOLVED
        assert stored.notes == (make_item().note, "Over before it arrived.", "Resolved [azmon:resolved]")
        assert fake.issue(ref.id).resolution == "Done"

    def test_a_failed_transition_is_reported_as_maybe_applied(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.fail_on("POST", r"/transitions$", 400, body=jira_error([], {"customfield_1": "Field X is required."}))

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item(), Resolution(None, "over", "Resolved [azmon:resolved]"))

        (stored,) = fake.records()
        assert stored.is_open
        error = caught.value
        assert (error.status, error.retryable, error.reason, error.maybe_applied) == (
            400,
            False,
            Reason.CLIENT_ERROR,
            True,
        )
        assert fake.issue(stored.id).key in str(error) and "Field X is required." in str(error)


class TestNotes:
    def test_cloud_internal_comment(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        adapter.add_note(WorkItemRef("jira", issue_id), "line one\nline two\n\nsecond paragraph")

        assert fake.calls() == [("POST", f"/rest/api/3/issue/{issue_id}/comment")]
        (body,) = fake.bodies("POST", "/comment")
        assert body["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]
        assert body["body"]["content"] == [
            {
                "type": "paragraph",
                "content": [
                    {"type": "text", "text": "line one"},
                    {"type": "hardBreak"},
                    {"type": "text", "text": "line two"},
                ],
            },
            {"type": "paragraph", "content": [{"type": "text", "text": "second paragraph"}]},
        ]

    def test_cloud_public_comment_when_internal_comments_are_off(self, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)
        build(JIRA_INTERNAL_COMMENTS="false").add_note(WorkItemRef("jira", issue_id), "note")
        (body,) = fake.bodies("POST", "/comment")
        assert "properties" not in body
        assert fake.issue(issue_id).comments[0].internal is False

    def test_datacenter_internal_comment_through_the_service_desk_api(
        self, dc_adapter: JiraAdapter, dc_fake: FakeJira
    ) -> None:
        issue_id = dc_fake.seed(KEY)

        dc_adapter.add_note(WorkItemRef("jira", issue_id), "note [m]")

        assert dc_fake.calls() == [("POST", f"/rest/servicedeskapi/request/{issue_id}/comment")]
        assert dc_fake.bodies("POST", "/comment") == [{"body": "note [m]", "public": False}]
        assert dc_fake.requests[0].headers["Authorization"] == f"Bearer {PAT}"

    def test_datacenter_plain_comment_when_internal_comments_are_off(self, dc_fake: FakeJira) -> None:
        issue_id = dc_fake.seed(KEY)
        build("datacenter", JIRA_INTERNAL_COMMENTS="no").add_note(WorkItemRef("jira", issue_id), "note")
        assert dc_fake.calls() == [("POST", f"/rest/api/2/issue/{issue_id}/comment")]
        assert dc_fake.bodies("POST", "/comment") == [{"body": "note"}]

    def test_has_note_pages_through_comments_newest_first(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.comment_page_size = 2
        issue_id = fake.seed(KEY)
        fake.add_comment(issue_id, adf_document("oldest [marker-1]"))
        for n in range(2, 6):
            fake.add_comment(issue_id, adf_document(f"note {n}"))
        ref = WorkItemRef("jira", issue_id)

        assert adapter.has_note(ref, "[marker-1]")
        requests_made = [query_of(r) for r in fake.requests]
        assert [q["startAt"] for q in requests_made] == ["0", "2", "4"]
        assert {q["orderBy"] for q in requests_made} == {"-created"}

        fake.requests.clear()
        assert adapter.has_note(ref, "note 5")
        assert len(fake.requests) == 1  # found on the first page

        fake.requests.clear()
        assert not adapter.has_note(ref, "[marker-9]")
        assert len(fake.requests) == 3

    def test_has_note_reads_markers_split_over_adf_nodes(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)
        split = {
            "version": 1,
            "type": "doc",
            "content": [
                {
                    "type": "paragraph",
                    "content": [
                        {"type": "text", "text": "Fired [AzMon"},
                        {"type": "text", "text": "Bridge-0123", "marks": [{"type": "strong"}]},
                        {"type": "text", "text": "]"},
                    ],
                }
            ],
        }
        fake.add_comment(issue_id, split)
        assert adapter.has_note(WorkItemRef("jira", issue_id), "[AzMonBridge-0123]")

    def test_has_note_datacenter_string_bodies(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        issue_id = dc_fake.seed(KEY)
        dc_fake.add_comment(issue_id, "Fired\n[AzMonBridge-0123]")
        assert dc_adapter.has_note(WorkItemRef("jira", issue_id), "[AzMonBridge-0123]")
        assert dc_fake.calls() == [("GET", f"/rest/api/2/issue/{issue_id}/comment")]

    @pytest.mark.parametrize("bad", ["../10001", "10001/comment", "", "a b", "x" * 65])
    def test_issue_ids_that_could_change_the_path_are_refused(
        self, adapter: JiraAdapter, fake: FakeJira, bad: str
    ) -> None:
        with pytest.raises(ValueError):
            adapter.add_note(WorkItemRef("jira", bad), "note")
        with pytest.raises(ValueError):
            adapter.has_note(WorkItemRef("jira", bad), "marker")
        assert fake.requests == []

    def test_refs_of_another_itsm_are_refused(self, adapter: JiraAdapter) -> None:
        with pytest.raises(ValueError):
            adapter.add_note(WorkItemRef("servicenow", "10001"), "note")

    def test_empty_marker_and_note_are_refused(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        ref = WorkItemRef("jira", fake.seed(KEY))
        with pytest.raises(ValueError):
            adapter.has_note(ref, "")
        with pytest.raises(ValueError):
            adapter.add_note(ref, "")


class TestAdf:
    @pytest.mark.parametrize(
        ("text", "content"),
        [
            ("", []),
            ("\n\n\n", []),
            ("one", [["one"]]),
            ("a\nb", [["a", None, "b"]]),
            ("a\n\nb", [["a"], ["b"]]),
            ("a\n \t\n\n\nb", [["a"], ["b"]]),
            ("\na\n", [["a"]]),
            ("a\r\nb\rc", [["a", None, "b", None, "c"]]),
            ("  indented\n", [["  indented"]]),
            ("bell\x07 and nul\x00", [["bell and nul"]]),
            ("trailing   \nx", [["trailing", None, "x"]]),
        ],
    )
    def test_shape(self, text: str, content: list[list[str | None]]) -> None:
        doc = adf_document(text)
        assert adf_is_valid(doc)
        expected = [
            {
                "type": "paragraph",
                "content": [{"type": "hardBreak"} if t is None else {"type": "text", "text": t} for t in block],
            }
            for block in content
        ]
        assert doc == {"version": 1, "type": "doc", "content": expected}

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
    def test_any_text_is_valid_adf_and_keeps_its_words(self, text: str) -> None:
        doc = adf_document(text)
        assert adf_is_valid(doc)
        assert adf_text(doc).split() == adf_text(adf_document(adf_text(doc))).split()
        printable = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)
        assert "".join(adf_text(doc).split()) == "".join(printable.split())


class TestResolve:
    def _resolution(self, code: str | None = None) -> Resolution:
        return Resolution(code=code, summary="Resolved automatically.", note="Alert resolved [azmon:resolved]")

    def test_default_transition_prefers_resolve_and_sets_the_resolution(
        self, adapter: JiraAdapter, fake: FakeJira
    ) -> None:
        issue_id = fake.seed(KEY)
        ref = WorkItemRef("jira", issue_id, "OPS-1")

        adapter.resolve(ref, self._resolution())

        base = f"/rest/api/3/issue/{issue_id}"
        assert fake.calls() == [
            ("GET", f"{base}/transitions"),
            ("POST", f"{base}/transitions"),
            ("POST", f"{base}/comment"),
            ("POST", f"{base}/comment"),
        ]
        assert query_of(fake.requests[0]) == {"expand": "transitions.fields"}
        assert fake.bodies("POST", "/transitions") == [
            {"transition": {"id": "21"}, "fields": {"resolution": {"name": "Done"}}}
        ]
        issue = fake.issue(issue_id)
        assert (issue.status, issue.resolution) == ("Resolved", "Done")
        comments = fake.bodies("POST", "/comment")
        assert all(c["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}] for c in comments)
        assert [c.text for c in issue.comments] == ["Resolved automatically.", "Alert resolved [azmon:resolved]"]

    def test_the_mapping_resolution_wins_in_the_screen_spelling(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)
        adapter.resolve(WorkItemRef("jira", issue_id), self._resolution("fixed"))
        assert fake.bodies("POST", "/transitions")[0]["fields"] == {"resolution": {"name": "Fixed"}}

    def test_configured_resolution_when_the_mapping_names_none_offered(self, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)
        build(JIRA_RESOLUTION="won't do").resolve(WorkItemRef("jira", issue_id), self._resolution("Solution provided"))
        assert fake.bodies("POST", "/transitions")[0]["fields"] == {"resolution": {"name": "Won't Do"}}

    def test_no_resolution_when_the_screen_has_none(self, fake: FakeJira) -> None:
        fake.workflow["Open"] = [Transition("61", "Done", "Resolved")]
        issue_id = fake.seed(KEY)

        build().resolve(WorkItemRef("jira", issue_id), self._resolution("Fixed"))

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "61"}}]
        assert fake.issue(issue_id).resolution == "Done"  # the workflow's post-function

    @pytest.mark.parametrize(
        ("configured", "chosen"), [("close", "31"), ("CLOSE", "31"), ("31", "31"), ("Cancel", "41")]
    )
    def test_configured_transition_by_name_or_id(self, fake: FakeJira, configured: str, chosen: str) -> None:
        issue_id = fake.seed(KEY)
        build(JIRA_RESOLVE_TRANSITION=configured).resolve(WorkItemRef("jira", issue_id), self._resolution())
        (body,) = fake.bodies("POST", "/transitions")
        assert body == {"transition": {"id": chosen}}

    def test_a_configured_transition_to_an_open_status_is_used_with_a_warning(
        self, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        issue_id = fake.seed(KEY)
        with caplog.at_level(logging.WARNING):
            build(JIRA_RESOLVE_TRANSITION="Start progress").resolve(WorkItemRef("jira", issue_id), self._resolution())
        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "11"}}]
        assert "not in the done category" in caplog.text

    def test_a_configured_transition_that_is_not_available_fails_permanently(self, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        with pytest.raises(ItsmError) as caught:
            build(JIRA_RESOLVE_TRANSITION="Escalate").resolve(
                WorkItemRef("jira", issue_id, "OPS-1"), self._resolution()
            )

        assert (caught.value.retryable, caught.value.reason) == (False, Reason.CLIENT_ERROR)
        assert "JIRA_RESOLVE_TRANSITION" in str(caught.value) and "'Resolve'" in str(caught.value)
        assert fake.bodies("POST", "/transitions") == []
        assert fake.calls()[-1] == ("GET", f"/rest/api/3/issue/{issue_id}")

    def test_already_done_means_nothing_to_do(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.CLOSED)  # Closed offers only Reopen

        adapter.resolve(WorkItemRef("jira", issue_id), self._resolution())

        assert [m for m, _ in fake.calls()] == ["GET", "GET"]
        assert fake.issue(issue_id).comments == []

    def test_cancel_like_transitions_are_never_chosen_by_default(self, fake: FakeJira) -> None:
        fake.workflow["Open"] = [
            Transition("41", "Cancel request", "Canceled"),
            Transition("11", "Start", "In Progress"),
        ]
        issue_id = fake.seed(KEY)

        with pytest.raises(ItsmError) as caught:
            build().resolve(WorkItemRef("jira", issue_id), self._resolution())

        assert "set JIRA_RESOLVE_TRANSITION" in str(caught.value)
        assert fake.issue(issue_id).status == "Open"

    def test_a_screen_with_other_required_fields_is_a_last_resort(self, fake: FakeJira) -> None:
        blocked = {"customfield_1": {"required": True, "name": "Root cause"}, **_resolution_screen()}
        fake.workflow["Open"] = [
            Transition("21", "Resolve", "Resolved", blocked),
            Transition("31", "Close", "Closed"),
        ]
        issue_id = fake.seed(KEY)
        build().resolve(WorkItemRef("jira", issue_id), self._resolution())
        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "31"}}]

    def test_a_failed_comment_after_the_transition_does_not_raise(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        issue_id = fake.seed(KEY)
        fake.fail_on("POST", r"/comment$", 400, body=jira_error([], {"comment": "Comment body is not valid!"}))

        with caplog.at_level(logging.WARNING):
            adapter.resolve(WorkItemRef("jira", issue_id), self._resolution())

        assert fake.issue(issue_id).status == "Resolved"
        assert "Comment body is not valid!" in caplog.text

    def test_datacenter_resolve(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        issue_id = dc_fake.seed(KEY)

        dc_adapter.resolve(WorkItemRef("jira", issue_id), self._resolution())

        assert [p for _, p in dc_fake.calls()] == [
            f"/rest/api/2/issue/{issue_id}/transitions",
            f"/rest/api/2/issue/{issue_id}/transitions",
            f"/rest/servicedeskapi/request/{issue_id}/comment",
            f"/rest/servicedeskapi/request/{issue_id}/comment",
        ]
        assert dc_fake.issue(issue_id).status == "Resolved"


class TestClose:
    def _close(self, **fields: str) -> Resolution:
        return Resolution(None, "Closed automatically.", "Alert resolved [azmon:closed]", close=True, fields=fields)

    def test_default_prefers_a_transition_named_close(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        adapter.resolve(WorkItemRef("jira", issue_id), self._close())

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "31"}}]
        assert fake.issue(issue_id).status == "Closed"
        (found,) = adapter.find(KEY)
        assert found.status is WorkItemStatus.CLOSED
        assert [c.text for c in fake.issue(issue_id).comments] == [
            "Closed automatically.",
            "Alert resolved [azmon:closed]",
        ]

    def test_a_resolved_issue_is_closed_too(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        adapter.resolve(WorkItemRef("jira", issue_id), self._close())

        assert fake.issue(issue_id).status == "Closed"

    @pytest.mark.parametrize(("configured", "chosen"), [("finish", "61"), ("FINISH", "61"), ("61", "61")])
    def test_configured_transition_by_name_or_id(self, fake: FakeJira, configured: str, chosen: str) -> None:
        fake.workflow["Open"].append(Transition("61", "Finish", "Closed"))
        issue_id = fake.seed(KEY)

        build(JIRA_CLOSE_TRANSITION=configured).resolve(WorkItemRef("jira", issue_id), self._close())

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": chosen}}]

    def test_an_unavailable_configured_transition_resolves_instead_with_a_warning(
        self, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        issue_id = fake.seed(KEY)

        with caplog.at_level(logging.WARNING):
            build(JIRA_CLOSE_TRANSITION="Archive").resolve(WorkItemRef("jira", issue_id, "OPS-1"), self._close())

        assert fake.bodies("POST", "/transitions") == [
            {"transition": {"id": "21"}, "fields": {"resolution": {"name": "Done"}}}
        ]
        assert fake.issue(issue_id).status == "Resolved"
        assert "JIRA_CLOSE_TRANSITION 'Archive'" in caplog.text and "may reopen it" in caplog.text

    def test_no_close_transition_resolves_instead_with_a_warning(
        self, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        fake.workflow["Open"] = [t for t in fake.workflow["Open"] if t.name != "Close"]
        issue_id = fake.seed(KEY)

        with caplog.at_level(logging.WARNING):
            build().resolve(WorkItemRef("jira", issue_id, "OPS-1"), self._close())

        assert fake.issue(issue_id).status == "Resolved"
        assert "set JIRA_CLOSE_TRANSITION" in caplog.text

    def test_closing_to_a_status_not_called_closed_warns(
        self, fake: FakeJira, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(_STATUS_CATEGORY, "Done", "done")
        fake.workflow["Open"] = [Transition("71", "Close", "Done")]
        issue_id = fake.seed(KEY)

        with caplog.at_level(logging.WARNING):
            build().resolve(WorkItemRef("jira", issue_id, "OPS-1"), self._close())

        assert fake.issue(issue_id).status == "Done"
        assert "reads as resolved" in caplog.text
        (found,) = build().find(KEY)
        assert found.status is WorkItemStatus.RESOLVED

    def test_cancel_like_close_transitions_are_not_chosen(self, fake: FakeJira) -> None:
        fake.workflow["Open"] = [Transition("41", "Close as duplicate", "Closed"), *fake.workflow["Open"]]
        issue_id = fake.seed(KEY)

        build().resolve(WorkItemRef("jira", issue_id), self._close())

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "31"}}]

    def test_nothing_to_do_when_closed_already(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.CLOSED)

        adapter.resolve(WorkItemRef("jira", issue_id), self._close())

        assert [m for m, _ in fake.calls()] == ["GET", "GET"]

    def test_create_already_closed(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        ref = adapter.create(make_item(), self._close(customfield_10070="team-a"))

        base = f"/rest/api/3/issue/{ref.id}"
        assert fake.calls() == [
            ("POST", "/rest/api/3/issue"),
            ("POST", f"{base}/comment"),
            ("GET", f"{base}/transitions"),
            ("PUT", base),
            ("POST", f"{base}/transitions"),
            ("POST", f"{base}/comment"),
            ("POST", f"{base}/comment"),
        ]
        issue = fake.issue(ref.id)
        assert (issue.status, issue.fields["customfield_10070"]) == ("Closed", "team-a")


class TestResolutionFields:
    def _resolution(self, **fields: str) -> Resolution:
        return Resolution(None, "Resolved automatically.", "Alert resolved [azmon:resolved]", fields=fields)

    def test_fields_on_the_transition_screen_go_with_the_transition(self, fake: FakeJira) -> None:
        screen = {**_resolution_screen(), "customfield_10070": {"required": False, "name": "Team"}}
        fake.workflow["Open"] = [Transition("21", "Resolve", "Resolved", screen)]
        issue_id = fake.seed(KEY)

        build().resolve(WorkItemRef("jira", issue_id), self._resolution(customfield_10070="team-a"))

        assert [m for m, _ in fake.calls()] == ["GET", "POST", "POST", "POST"]  # no PUT
        assert fake.bodies("POST", "/transitions") == [
            {"transition": {"id": "21"}, "fields": {"customfield_10070": "team-a", "resolution": {"name": "Done"}}}
        ]
        assert fake.issue(issue_id).fields["customfield_10070"] == "team-a"

    def test_other_fields_are_one_put_before_the_transition(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        adapter.resolve(
            WorkItemRef("jira", issue_id),
            self._resolution(customfield_10070="team-a", components="Web", assignee="5b10ac8d82e05b22cc7d4ef5"),
        )

        base = f"/rest/api/3/issue/{issue_id}"
        assert fake.calls()[:3] == [("GET", f"{base}/transitions"), ("PUT", base), ("POST", f"{base}/transitions")]
        assert fake.bodies("PUT", base) == [
            {
                "fields": {
                    "customfield_10070": "team-a",
                    "components": [{"name": "Web"}],
                    "assignee": {"accountId": "5b10ac8d82e05b22cc7d4ef5"},
                }
            }
        ]
        assert fake.bodies("POST", "/transitions") == [
            {"transition": {"id": "21"}, "fields": {"resolution": {"name": "Done"}}}
        ]

    def test_a_refused_edit_leaves_the_issue_open(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY)

        with pytest.raises(ItsmError) as caught:
            adapter.resolve(WorkItemRef("jira", issue_id), self._resolution(customfield_99999="x"))

        assert (caught.value.status, caught.value.retryable, caught.value.reason) == (400, False, Reason.CLIENT_ERROR)
        assert "customfield_99999: Field 'customfield_99999' cannot be set" in str(caught.value)
        assert fake.issue(issue_id).status == "Open"
        assert fake.bodies("POST", "/transitions") == [] and fake.issue(issue_id).comments == []

    def test_managed_fields_are_ignored_with_a_warning(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        issue_id = fake.seed(KEY)

        with caplog.at_level(logging.WARNING):
            adapter.resolve(
                WorkItemRef("jira", issue_id),
                self._resolution(resolution="Won't Do", status="Open", labels="x", duedate="2025-07-01"),
            )

        assert fake.bodies("PUT", f"/issue/{issue_id}") == [{"fields": {"duedate": "2025-07-01"}}]
        assert fake.issue(issue_id).resolution == "Done"
        assert "resolution fields ['labels', 'resolution', 'status'] are managed" in caplog.text

    def test_a_screen_field_the_bridge_provides_is_not_blocking(self, fake: FakeJira) -> None:
        blocked = {"customfield_10070": {"required": True, "name": "Team"}, **_resolution_screen()}
        fake.workflow["Open"] = [
            Transition("31", "Close", "Closed"),
            Transition("21", "Done", "Resolved", blocked),
        ]
        issue_id = fake.seed(KEY)

        build().resolve(WorkItemRef("jira", issue_id), self._resolution(customfield_10070="team-a"))

        assert fake.bodies("POST", "/transitions")[0]["transition"] == {"id": "21"}
        assert fake.issue(issue_id).status == "Resolved"


class TestReopen:
    NOTE = "Fired again [azmon:fired:2]"

    def test_default_prefers_a_transition_named_reopen(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        adapter.reopen(WorkItemRef("jira", issue_id, "OPS-1"), self.NOTE)

        base = f"/rest/api/3/issue/{issue_id}"
        assert fake.calls() == [
            ("GET", f"{base}/transitions"),
            ("POST", f"{base}/transitions"),
            ("POST", f"{base}/comment"),
        ]
        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "51"}}]
        issue = fake.issue(issue_id)
        assert (issue.status, issue.resolution) == ("Open", None)
        assert [c.text for c in issue.comments] == [self.NOTE] and issue.comments[0].internal

    def test_the_resolution_is_cleared_when_the_screen_has_it(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.workflow["Resolved"] = [Transition("51", "Reopen", "Open", _resolution_screen(required=False))]
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        adapter.reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "51"}, "fields": {"resolution": None}}]

    def test_without_a_reopen_it_prefers_in_progress_then_to_do(self, fake: FakeJira) -> None:
        fake.workflow["Resolved"] = [
            Transition("31", "Close", "Closed"),
            Transition("61", "Back to the queue", "Open"),
            Transition("62", "Work on it", "In Progress"),
        ]
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        build().reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "62"}}]
        assert fake.issue(issue_id).status == "In Progress"

    def test_a_screen_with_other_required_fields_is_a_last_resort(self, fake: FakeJira) -> None:
        fake.workflow["Resolved"] = [
            Transition("51", "Reopen", "Open", {"customfield_1": {"required": True, "name": "Reason"}}),
            Transition("61", "Back to the queue", "Open"),
        ]
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        build().reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": "61"}}]

    @pytest.mark.parametrize(("configured", "chosen"), [("back to the queue", "61"), ("61", "61")])
    def test_configured_transition_by_name_or_id(self, fake: FakeJira, configured: str, chosen: str) -> None:
        fake.workflow["Resolved"].append(Transition("61", "Back to the queue", "Open"))
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        build(JIRA_REOPEN_TRANSITION=configured).reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert fake.bodies("POST", "/transitions") == [{"transition": {"id": chosen}}]

    def test_a_configured_transition_that_is_not_available_fails_permanently(self, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        with pytest.raises(ItsmError) as caught:
            build(JIRA_REOPEN_TRANSITION="Escalate").reopen(WorkItemRef("jira", issue_id, "OPS-1"), self.NOTE)

        error = caught.value
        assert (error.retryable, error.reason, error.maybe_applied) == (False, Reason.CLIENT_ERROR, False)
        assert "cannot reopen issue OPS-1 from status 'Resolved'" in str(error)
        assert "JIRA_REOPEN_TRANSITION" in str(error) and "'Reopen'" in str(error)
        assert fake.bodies("POST", "/transitions") == [] and fake.issue(issue_id).comments == []

    def test_no_way_back_fails_permanently(self, fake: FakeJira) -> None:
        fake.workflow["Resolved"] = [Transition("31", "Close", "Closed")]
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        with pytest.raises(ItsmError) as caught:
            build().reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert "set JIRA_REOPEN_TRANSITION" in str(caught.value)
        assert fake.issue(issue_id).status == "Resolved"

    def test_an_issue_someone_reopened_just_gets_the_note(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        fake.workflow["Open"] = [Transition("21", "Resolve", "Resolved", _resolution_screen())]
        issue_id = fake.seed(KEY)

        adapter.reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert [m for m, _ in fake.calls()] == ["GET", "GET", "POST"]
        assert fake.bodies("POST", "/transitions") == []
        assert [c.text for c in fake.issue(issue_id).comments] == [self.NOTE]

    def test_a_failed_note_after_the_transition_does_not_raise(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)
        fake.fail_on("POST", r"/comment$", 503)

        with caplog.at_level(logging.WARNING):
            adapter.reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert fake.issue(issue_id).status == "Open"
        assert "a comment was not added" in caplog.text

    def test_a_failed_transition_is_raised(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        issue_id = fake.seed(KEY, status=WorkItemStatus.RESOLVED)
        fake.fail_on("POST", r"/transitions$", 409)

        with pytest.raises(ItsmError) as caught:
            adapter.reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert caught.value.status == 409
        assert fake.issue(issue_id).comments == []

    def test_datacenter_reopen(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        issue_id = dc_fake.seed(KEY, status=WorkItemStatus.RESOLVED)

        dc_adapter.reopen(WorkItemRef("jira", issue_id), self.NOTE)

        assert [p for _, p in dc_fake.calls()] == [
            f"/rest/api/2/issue/{issue_id}/transitions",
            f"/rest/api/2/issue/{issue_id}/transitions",
            f"/rest/servicedeskapi/request/{issue_id}/comment",
        ]
        assert dc_fake.issue(issue_id).status == "Open"


class TestDataCenter:
    def test_create_uses_api_2_with_plain_text(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        ref = dc_adapter.create(make_item(fields={"assignee": "jsmith"}))

        assert dc_fake.calls() == [
            ("POST", "/rest/api/2/issue"),
            ("POST", f"/rest/servicedeskapi/request/{ref.id}/comment"),
        ]
        fields = dc_fake.bodies("POST", "/rest/api/2/issue")[0]["fields"]
        assert fields["description"] == make_item().description
        assert fields["assignee"] == {"name": "jsmith"}
        assert all(r.headers["Authorization"] == f"Bearer {PAT}" for r in dc_fake.requests)

    def test_search_and_check_use_api_2(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        dc_adapter.find(KEY)
        dc_adapter.check()
        assert dc_fake.calls() == [("POST", "/rest/api/2/search"), ("GET", "/rest/api/2/myself")]
        assert searches(dc_fake)[0]["jql"] == f'project = "OPS" AND labels = "{LABEL}" ORDER BY created ASC'


class TestAuthAndCheck:
    def test_cloud_basic_auth_and_myself(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        adapter.check()

        assert fake.calls() == [("GET", "/rest/api/3/myself")]
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
        assert fake.requests[0].headers["Authorization"] == expected

    def test_a_refused_credential_is_an_auth_error_without_a_second_try(self, fake: FakeJira) -> None:
        adapter = JiraAdapter(make_settings(JIRA_API_TOKEN="wrong-token-value"))
        with pytest.raises(ItsmError) as caught:
            adapter.check()
        assert (caught.value.status, caught.value.reason, caught.value.retryable) == (401, Reason.AUTH_ERROR, False)
        assert len(fake.requests) == 1

    def test_find_configuration_item_makes_no_call(self, adapter: JiraAdapter, fake: FakeJira) -> None:
        assert adapter.find_configuration_item(["/subscriptions/x"], ["vm"]) is None
        assert fake.requests == []


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "body", "text", "reason", "retryable"),
        [
            (
                400,
                jira_error([], {"description": "Operation value must be an Atlassian Document"}),
                "description: Operation value must be an Atlassian Document",
                Reason.CLIENT_ERROR,
                False,
            ),
            (400, jira_error(["INVALID_INPUT"]), "INVALID_INPUT", Reason.CLIENT_ERROR, False),
            (
                400,
                jira_error(["Bad one"], {"comment": "Comment body is not valid!", "labels": "No spaces"}),
                "Bad one; comment: Comment body is not valid!; labels: No spaces",
                Reason.CLIENT_ERROR,
                False,
            ),
            (401, "Client must be authenticated", "Unauthorized", Reason.AUTH_ERROR, False),
            (403, jira_error(["You do not have permission"]), "You do not have permission", Reason.AUTH_ERROR, False),
            (404, json.dumps({"errorMessage": "Request not found"}), "Request not found", Reason.CLIENT_ERROR, False),
            (410, jira_error([_RETIRED]), "The requested API has been removed", Reason.CLIENT_ERROR, False),
            (429, "<html>slow down</html>", "Too Many Requests", Reason.RATE_LIMITED, True),
            (503, "", "Service Unavailable", Reason.SERVER_ERROR, True),
        ],
    )
    def test_error_text_and_classification(
        self, adapter: JiraAdapter, fake: FakeJira, status: int, body: str, text: str, reason: Reason, retryable: bool
    ) -> None:
        fake.fail_next(status, body=body)
        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)
        assert text in str(caught.value) and str(status) in str(caught.value)
        assert (caught.value.reason, caught.value.retryable) == (reason, retryable)
        assert "<html>" not in str(caught.value)

    @pytest.mark.parametrize("status", [429, 503])
    def test_retry_after_is_passed_through(self, adapter: JiraAdapter, fake: FakeJira, status: int) -> None:
        fake.fail_next(
            status,
            {"Retry-After": "17", "X-RateLimit-Reset": "2025-06-15T10:00Z", "RateLimit-Reason": "jira-burst-based"},
            jira_error(["Rate limit exceeded."]),
        )
        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())
        assert (caught.value.retry_after, caught.value.retryable, caught.value.maybe_applied) == (17.0, True, False)
        assert fake.records() == []

    def test_secrets_are_scrubbed_from_errors_and_logs(
        self, adapter: JiraAdapter, fake: FakeJira, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        basic = base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()
        echo = f"token {API_TOKEN} header Basic {basic}"
        ref = adapter.create(make_item())
        fake.fail_on("POST", r"/comment$", 400, body=jira_error([echo], {"comment": echo}))
        adapter.resolve(ref, Resolution(None, "summary", "note"))  # the failed comment is logged
        fake.fail_next(500, body=jira_error([echo]))
        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)
        texts = [str(caught.value), repr(caught.value), *(r.getMessage() for r in caplog.records)]
        assert any("***" in t for t in texts)
        for text in texts:
            assert API_TOKEN not in text and basic not in text

    def test_datacenter_pat_is_scrubbed(self, dc_adapter: JiraAdapter, dc_fake: FakeJira) -> None:
        dc_fake.fail_next(400, body=jira_error([f"bad token Bearer {PAT}"]))
        with pytest.raises(ItsmError) as caught:
            dc_adapter.find(KEY)
        assert PAT not in str(caught.value) and "Bearer ***" in str(caught.value)


class TestSettings:
    def test_declared_settings(self) -> None:
        by_name = {s.name: s for s in JIRA_SETTINGS}
        assert set(by_name) == {
            "JIRA_BASE_URL",
            "JIRA_DEPLOYMENT",
            "JIRA_EMAIL",
            "JIRA_API_TOKEN",
            "JIRA_PAT",
            "JIRA_PROJECT",
            "JIRA_ISSUE_TYPE",
            "JIRA_CORRELATION_FIELD",
            "JIRA_LABEL_PREFIX",
            "JIRA_PRIORITY_MAP",
            "JIRA_RESOLVE_TRANSITION",
            "JIRA_CLOSE_TRANSITION",
            "JIRA_REOPEN_TRANSITION",
            "JIRA_RESOLUTION",
            "JIRA_INTERNAL_COMMENTS",
        }
        assert {n for n, s in by_name.items() if s.secret} == {"JIRA_API_TOKEN", "JIRA_PAT"}
        assert {n for n, s in by_name.items() if s.required} == {"JIRA_BASE_URL", "JIRA_PROJECT"}
        assert JiraAdapter.settings is JIRA_SETTINGS
        assert (by_name["JIRA_DEPLOYMENT"].default, by_name["JIRA_ISSUE_TYPE"].default) == ("cloud", "Incident")
        assert (by_name["JIRA_LABEL_PREFIX"].default, by_name["JIRA_RESOLUTION"].default) == ("azmon-", "Done")
        assert by_name["JIRA_INTERNAL_COMMENTS"].default == "true"

    def test_registered_and_built_from_settings(self, fake: FakeJira) -> None:
        assert adapter_class("jira") is JiraAdapter
        adapter = build_adapter(make_settings())
        assert isinstance(adapter, JiraAdapter)
        adapter.check()

    @pytest.mark.parametrize(
        ("deployment", "changes", "setting"),
        [
            ("cloud", {"JIRA_BASE_URL": ""}, "JIRA_BASE_URL"),
            ("cloud", {"JIRA_BASE_URL": "http://contoso.atlassian.net"}, "JIRA_BASE_URL"),
            ("cloud", {"JIRA_BASE_URL": "ftp://contoso"}, "JIRA_BASE_URL"),
            ("cloud", {"JIRA_DEPLOYMENT": "server"}, "JIRA_DEPLOYMENT"),
            ("cloud", {"JIRA_EMAIL": ""}, "JIRA_EMAIL"),
            ("cloud", {"JIRA_EMAIL": "not-an-email"}, "JIRA_EMAIL"),
            ("cloud", {"JIRA_EMAIL": "a:b@contoso.com"}, "JIRA_EMAIL"),
            ("cloud", {"JIRA_API_TOKEN": ""}, "JIRA_API_TOKEN"),
            ("cloud", {"JIRA_PAT": PAT}, "JIRA_PAT"),
            ("datacenter", {"JIRA_PAT": ""}, "JIRA_PAT"),
            ("datacenter", {"JIRA_API_TOKEN": API_TOKEN}, "JIRA_API_TOKEN"),
            ("datacenter", {"JIRA_EMAIL": EMAIL}, "JIRA_EMAIL"),
            ("cloud", {"JIRA_PROJECT": ""}, "JIRA_PROJECT"),
            ("cloud", {"JIRA_PROJECT": 'OPS" OR x'}, "JIRA_PROJECT"),
            ("cloud", {"JIRA_PROJECT": "1OPS"}, "JIRA_PROJECT"),
            ("cloud", {"JIRA_CORRELATION_FIELD": "summary"}, "JIRA_CORRELATION_FIELD"),
            ("cloud", {"JIRA_CORRELATION_FIELD": "cf[10050]"}, "JIRA_CORRELATION_FIELD"),
            ("cloud", {"JIRA_LABEL_PREFIX": "az mon"}, "JIRA_LABEL_PREFIX"),
            ("cloud", {"JIRA_LABEL_PREFIX": "x" * 101}, "JIRA_LABEL_PREFIX"),
            ("cloud", {"JIRA_PRIORITY_MAP": "Sev5=High"}, "JIRA_PRIORITY_MAP"),
            ("cloud", {"JIRA_PRIORITY_MAP": "Sev1"}, "JIRA_PRIORITY_MAP"),
            ("cloud", {"JIRA_PRIORITY_MAP": "Sev1="}, "JIRA_PRIORITY_MAP"),
            ("cloud", {"JIRA_PRIORITY_MAP": "Sev1=High,sev1=Low"}, "JIRA_PRIORITY_MAP"),
            ("cloud", {"JIRA_PRIORITY_MAP": ","}, "JIRA_PRIORITY_MAP"),
            ("cloud", {"JIRA_INTERNAL_COMMENTS": "maybe"}, "JIRA_INTERNAL_COMMENTS"),
            ("cloud", {"JIRA_RESOLVE_TRANSITION": "Resolve\nnow"}, "JIRA_RESOLVE_TRANSITION"),
            ("cloud", {"JIRA_CLOSE_TRANSITION": "Close\tnow"}, "JIRA_CLOSE_TRANSITION"),
            ("cloud", {"JIRA_REOPEN_TRANSITION": "Re\ropen"}, "JIRA_REOPEN_TRANSITION"),
        ],
    )
    def test_bad_settings_name_the_setting_and_never_a_secret(
        self, deployment: str, changes: dict[str, str], setting: str
    ) -> None:
        env = {"JIRA_API_TOKEN": API_TOKEN} if deployment == "cloud" else {"JIRA_PAT": PAT}
        env.update(changes)
        with pytest.raises(ConfigError) as caught:
            JiraAdapter(make_settings(deployment, **env))
        assert caught.value.setting == setting
        assert str(caught.value).startswith(setting + ":")
        for secret in (API_TOKEN, PAT):
            assert secret not in str(caught.value) and secret not in repr(caught.value)

    @pytest.mark.parametrize(
        "changes",
        [
            {"JIRA_BASE_URL": "http://127.0.0.1:8081"},
            {"JIRA_BASE_URL": "https://jira.contoso.com/jira/"},
            {"JIRA_DEPLOYMENT": "CLOUD"},
            {"JIRA_PROJECT": "ops"},
            {"JIRA_PRIORITY_MAP": "Sev0=P1, Sev1=P2,"},
            {"JIRA_INTERNAL_COMMENTS": "FALSE"},
            {"JIRA_CORRELATION_FIELD": FIELD},
        ],
    )
    def test_good_settings(self, changes: dict[str, str]) -> None:
        JiraAdapter(make_settings(**changes)).close()

    def test_a_lower_case_project_key_is_upper_cased(self, fake: FakeJira) -> None:
        JiraAdapter(make_settings(JIRA_PROJECT="ops")).find(KEY)
        assert searches(fake)[0]["jql"].startswith('project = "OPS"')

    @pytest.mark.parametrize("deployment", DEPLOYMENTS)
    def test_no_secret_in_repr(self, deployment: str) -> None:
        adapter = JiraAdapter(make_settings(deployment))
        text = repr(adapter) + repr(adapter.__dict__) + repr(make_settings(deployment))
        for secret in (API_TOKEN, PAT, base64.b64encode(f"{EMAIL}:{API_TOKEN}".encode()).decode()):
            assert secret not in text
        assert "contoso.atlassian.net" in repr(adapter)


def adf_or_text(body: Any) -> str:
    return body if isinstance(body, str) else adf_plain(body)


class TestStandInWire:
    """What the contract does not show about the adapter over the stand-in's real sockets."""

    @pytest.fixture
    def standin(self, jira_standin: JiraStandIn) -> Iterator[JiraStandIn]:
        jira_standin.reset()
        yield jira_standin
        jira_standin.faults.clear()

    @pytest.fixture
    def live(self, standin: JiraStandIn) -> Iterator[JiraAdapter]:
        adapter = JiraAdapter(make_settings(standin.deployment, JIRA_BASE_URL=standin.url))
        yield adapter
        adapter.close()

    def test_lifecycle_on_the_wire(self, standin: JiraStandIn, live: JiraAdapter) -> None:
        ref = live.create(make_item(severity="Sev1"))
        live.add_note(ref, "again [azmon:fired:2]")
        live.resolve(ref, Resolution(None, "Resolved automatically.", "resolved [azmon:resolved]"))

        issue = standin.issue(ref.number or "")
        assert issue["fields"]["labels"] == [LABEL]
        assert issue["fields"]["priority"] == "High"
        assert (issue["fields"]["status"], issue["fields"]["resolution"]) == ("Resolved", "Done")
        comments = standin.comments(ref.number or "")
        assert [c["internal"] for c in comments] == [True] * 4
        live.find(KEY)
        paths = [(r.method, r.path) for r in standin.requests]
        if standin.cloud:
            assert ("POST", "/rest/api/3/search/jql") in paths
            assert all(path.startswith("/rest/api/3/") and path != "/rest/api/3/search" for _, path in paths)
            assert {r.auth for r in standin.requests} == {"basic"}
        else:
            assert ("POST", "/rest/api/2/search") in paths
            assert all(path.startswith(("/rest/api/2/", "/rest/servicedeskapi/")) for _, path in paths)
            assert {r.auth for r in standin.requests} == {"bearer"}
        (found,) = live.find(KEY)
        assert (found.ref, found.status, found.state) == (ref, WorkItemStatus.RESOLVED, "Resolved")

    def test_fields_reopen_and_close_on_the_wire(self, standin: JiraStandIn, live: JiraAdapter) -> None:
        ref = live.create(make_item())
        key = ref.number or ""

        live.resolve(ref, Resolution(None, "Resolved.", "resolved [r1]", fields={ROOT_CAUSE: "disk full"}))
        fields = standin.issue(key)["fields"]
        assert (fields["status"], fields["resolution"], fields[ROOT_CAUSE]) == ("Resolved", "Done", "disk full")

        live.reopen(ref, "fired again [f2]")
        fields = standin.issue(key)["fields"]
        assert (fields["status"], fields["resolution"]) == ("Open", None)  # the workflow's post-function
        assert adf_or_text(standin.comments(key)[-1]["body"]) == "fired again [f2]"
        assert [r.status for r in live.find(KEY)] == [WorkItemStatus.OPEN]

        live.resolve(ref, Resolution(None, "Closed.", "closed [c1]", close=True))
        fields = standin.issue(key)["fields"]
        assert (fields["status"], fields["resolution"]) == ("Closed", "Done")  # "Close Issue", resolution screen
        assert [r.status for r in live.find(KEY)] == [WorkItemStatus.CLOSED]
        posts = [r.path for r in standin.requests if r.method in ("PUT", "POST") and "/issue/" in r.path]
        assert sum(path.endswith("/transitions") for path in posts) == 3
        assert sum(path.endswith(f"/issue/{ref.id}") for path in posts) == 1  # the one PUT, before resolving

    def test_a_long_description_is_accepted(self, standin: JiraStandIn, live: JiraAdapter) -> None:
        description = "\n".join(f"line {n}: " + "x" * 20 for n in range(1, 1200))[: JiraAdapter.description_limit]
        ref = live.create(make_item(description=description))
        assert standin.issue(ref.number or "")["fields"]["description"]

    def test_rate_limited_search_passes_retry_after(self, standin: JiraStandIn, live: JiraAdapter) -> None:
        standin.faults.status(429, retry_after=30, times=1, path=r"/search")
        with pytest.raises(ItsmError) as caught:
            live.find(KEY)
        assert (caught.value.status, caught.value.retry_after, caught.value.reason) == (429, 30.0, Reason.RATE_LIMITED)
        assert "Rate limit exceeded." in str(caught.value)
