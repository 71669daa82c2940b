"""The Jira Service Management adapter: issues, internal comments and workflow transitions.

Everything Jira-specific lives here: its settings (``JIRA_*``), Cloud (REST API v3, Atlassian
Document Format, email + API token) versus Data Center (REST API v2, plain text, personal access
token), JQL, labels, status categories, transitions and resolutions, and its error bodies
(``{"errorMessages": [...], "errors": {field: message}}``). HTTP hygiene (timeouts from the
deadline, no redirects, classification with Retry-After, scrubbing) is the shared
:class:`~bridge.adapters.http.ItsmHttpClient`'s. The facts behind the choices are in
``shared/FACTS-jira.md`` (section numbers below are that sheet's).

Correlation. A new issue carries the label ``{JIRA_LABEL_PREFIX}{correlation key}`` (and, when
``JIRA_CORRELATION_FIELD`` names a text custom field, the key in that field too); ``find`` looks
it up with one JQL query over every status (the core decides what a resolved issue means).
Values are validated against strict patterns *and* quoted and escaped before they go into JQL,
and every issue Jira returns is checked again for exactly that label or field value in exactly
the configured project: a search that matched more than asked (a text search on a custom field
does) never makes the bridge touch someone else's issue. Cloud searches with
``POST /rest/api/3/search/jql`` (the old ``/search`` answers 410 since 2025, §3); Data Center
has only ``/rest/api/2/search``.

Jira's operations are not one call each:

- ``create``: the issue, then its note as an internal comment (2 calls).
- ``resolve``: read the transitions, make one, then write the summary and the note as two
  internal comments (4 calls). The resolution's fields go with the transition when its screen
  has them; the others in one ``PUT /issue`` before it (5). One more read when no transition
  applies (the issue may be done already).
- ``create`` already resolved: both (6, or 7 with the PUT).
- ``reopen``: read the transitions, make one, then the note as an internal comment (3; one more
  read when none applies: an issue someone reopened already just gets the note).
- ``add_note`` 1, ``has_note`` 1 per page of 100 comments, ``find`` 1 per page of 50, ``check`` 1.

Once the issue exists or the transition is made, a failed comment is logged, not raised: raising
would have the core repeat a write that landed.

Transitions are looked up per issue, by name or id (workflows name them freely, §5). Resolving
takes ``JIRA_RESOLVE_TRANSITION`` or the first to a done status, preferring "Resolve"; closing
(``Resolution.close``) takes ``JIRA_CLOSE_TRANSITION`` or a done one named Close / Closed, else
resolves; reopening takes ``JIRA_REOPEN_TRANSITION`` or one named Reopen, else the first to an
in-progress or to-do status, and clears the resolution when its screen has the field (otherwise
the workflow's post-function does, as in Jira's own workflows).

Fields written on resolve go into the transition where its screen has them, and otherwise into a
``PUT /issue`` *before* the transition: Jira refuses a field that is not on a transition's screen,
a closed issue is usually not editable any more (``jira.issue.editable=false`` on Closed), and a
refused edit then leaves the issue as it was, so the core's retry or dead letter starts clean.

Statuses. ``find`` reports a done issue whose status name has the word "closed" as CLOSED, which
the core never reopens; any other done issue is RESOLVED (or CANCELED when its resolution or
status says so), which a re-fire may reopen. So a close that fell back to the resolve transition,
or a close transition to a status not called Closed, leaves an issue that can be reopened: the
adapter warns, and ``JIRA_CLOSE_TRANSITION`` should name a transition to a Closed status.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

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
from .http import Authenticator, BasicAuth, BearerToken, ItsmHttpClient, member_list

__all__ = [
    "JIRA_SETTINGS",
    "KEY_PATTERN",
    "JiraAdapter",
    "adf_document",
    "adf_text",
    "jql_string",
]

log = logging.getLogger(__name__)

_SYSTEM = "Jira"
CLOUD, DATACENTER = "cloud", "datacenter"

# Correlation keys are lower-case GUIDs or hex hashes (bridge.correlation); nothing else may form
# a label or reach JQL, even quoted.
KEY_PATTERN = re.compile(r"^[0-9a-f-]{1,100}\Z")
# Jira's default project key pattern is [A-Z][A-Z0-9_]+; stored upper-case.
_PROJECT_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{0,254}\Z")
_FIELD_PATTERN = re.compile(r"^customfield_([0-9]{1,12})\Z")
# A label may not contain spaces (§1); the prefix keeps to characters that need no thought anywhere.
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,100}\Z")
# Issue ids are numbers, keys PROJ-123; anything path-like must never reach a URL.
_ISSUE_REF_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_SEVERITY_PATTERN = re.compile(r"^sev([0-4])\Z", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Names in settings (issue type, transition, resolution, priorities, email) are one line of text.
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")
# Resolutions (or statuses) that say nobody fixed anything: the work item was canceled.
_CANCELED = re.compile(r"won['\u2019]?t (do|fix)|\bcancel|\bduplicate|\bdeclined|\brejected", re.IGNORECASE)
# What a default resolve transition is preferably called; transitions to a done status that look
# like cancelling are never chosen by default (they would mark the alert's issue canceled).
_RESOLVE_WORDS = re.compile(r"resolve", re.IGNORECASE)
_DONE_WORDS = re.compile(r"\b(done|complete|fix)", re.IGNORECASE)
_CLOSE_WORDS = re.compile(r"\bclosed?\b", re.IGNORECASE)
_REOPEN_WORDS = re.compile(r"\bre-?open", re.IGNORECASE)
# A done status whose name says closed: final, never reopened by the core.
_CLOSED_STATUS = re.compile(r"\bclosed\b", re.IGNORECASE)
_OPEN_CATEGORIES = ("indeterminate", "new")  # in progress first: a reopened issue is worked on

_TITLE_LIMIT = 255  # "Summary can't exceed 255 characters." (§1)
_DESCRIPTION_LIMIT = 32_767  # "...exceeds the allowed limit of 32,767 characters." (§1)
_PAGE_SIZE = 50
_MAX_SEARCH_PAGES = 20
_COMMENT_PAGE_SIZE = 100
_MAX_COMMENT_PAGES = 60  # Cloud caps an issue at 5,000 comments (§1)
# Search is eventually consistent; reconcileIssues asks for read-after-write on at most 50 ids (§3).
_RECONCILE_LIMIT = 50
_SHORTENED = "[shortened to fit Jira's limit; the full alert is in Azure Monitor]"
_INTERNAL_PROPERTY = {"key": "sd.public.comment", "value": {"internal": True}}
_SEARCH_FIELDS = ("project", "labels", "status", "resolution", "created")
_DEFAULT_PRIORITY_MAP = "Sev0=Highest,Sev1=High,Sev2=Medium,Sev3=Low,Sev4=Lowest"

JIRA_SETTINGS: tuple[Setting, ...] = (
    Setting("JIRA_BASE_URL", "e.g. https://contoso.atlassian.net (Cloud) or https://jira.contoso.com", required=True),
    Setting("JIRA_DEPLOYMENT", "cloud (REST API v3, email + API token) or datacenter (API v2, PAT)", CLOUD),
    Setting("JIRA_EMAIL", "Cloud: the Atlassian account email the API token belongs to"),
    Setting("JIRA_API_TOKEN", "Cloud: API token (basic auth with JIRA_EMAIL)", secret=True),
    Setting("JIRA_PAT", "Data Center: personal access token (Bearer)", secret=True),
    Setting("JIRA_PROJECT", "project key new issues go to and are searched in, e.g. OPS", required=True),
    Setting("JIRA_ISSUE_TYPE", "issue type name (or id) of new issues", "Incident"),
    Setting(
        "JIRA_CORRELATION_FIELD",
        "text custom field (customfield_NNNNN) holding the correlation key; default: only the label",
    ),
    Setting("JIRA_LABEL_PREFIX", "prefix of the correlation label (label = prefix + correlation key)", "azmon-"),
    Setting(
        "JIRA_PRIORITY_MAP",
        "severity -> priority name (or id), e.g. Sev0=Highest,Sev1=High; 'none' sends no priority",
        _DEFAULT_PRIORITY_MAP,
    ),
    Setting(
        "JIRA_RESOLVE_TRANSITION",
        "transition (name or id) that resolves; default: the first to a done status, preferring 'Resolve'",
    ),
    Setting(
        "JIRA_CLOSE_TRANSITION",
        "transition (name or id) that closes (resolution policy close); default: a done one named 'Close', "
        "else the resolve transition",
    ),
    Setting(
        "JIRA_REOPEN_TRANSITION",
        "transition (name or id) that reopens a resolved issue; default: one named 'Reopen', "
        "else the first to an in-progress or to-do status",
    ),
    Setting("JIRA_RESOLUTION", "resolution set when resolving, unless the mapping names one", "Done"),
    Setting("JIRA_INTERNAL_COMMENTS", "notes as internal (agent-only) comments: true or false", "true"),
)
_TRUE, _FALSE = frozenset({"true", "yes", "1", "on"}), frozenset({"false", "no", "0", "off"})


class JiraAdapter:
    """:class:`~bridge.adapters.base.ItsmAdapter` for Jira Service Management (Cloud or Data Center).

    ``clock`` (wall time, seconds) turns HTTP-date ``Retry-After`` values into seconds.
    """

    name: ClassVar[str] = "jira"
    display_name: ClassVar[str] = "Jira Service Management"
    settings: ClassVar[tuple[Setting, ...]] = JIRA_SETTINGS
    title_limit: ClassVar[int] = _TITLE_LIMIT
    description_limit: ClassVar[int] = _DESCRIPTION_LIMIT
    # Fields the bridge sets itself; the mapping file and routing must not overwrite them (the
    # configured correlation custom field is refused too, see ``_extra_fields``).
    managed_fields: ClassVar[frozenset[str]] = frozenset(
        {"project", "issuetype", "summary", "description", "labels", "priority", "status", "resolution", "comment"}
    )

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        get = settings.reader(self.settings)

        base = get("JIRA_BASE_URL")
        if not base:
            raise ConfigError("JIRA_BASE_URL", "is required for the jira adapter")
        self._base = https_url("JIRA_BASE_URL", base).rstrip("/")

        deployment = (get("JIRA_DEPLOYMENT") or CLOUD).lower()
        if deployment not in (CLOUD, DATACENTER):
            raise ConfigError("JIRA_DEPLOYMENT", "must be cloud or datacenter")
        self._deployment = deployment
        self._auth = _authenticator(deployment, get)

        project = (get("JIRA_PROJECT") or "").upper()
        if not project:
            raise ConfigError("JIRA_PROJECT", "is required for the jira adapter")
        if not _PROJECT_PATTERN.match(project):
            raise ConfigError("JIRA_PROJECT", "must be a project key (a letter, then letters, digits or _)")
        self._project = project

        issue_type = get("JIRA_ISSUE_TYPE") or "Incident"
        if _NOT_ONE_LINE.search(issue_type) or len(issue_type) > 255:
            raise ConfigError("JIRA_ISSUE_TYPE", "must be an issue type name or id")
        self._issue_type = issue_type

        field = get("JIRA_CORRELATION_FIELD")
        self._field: str | None = None
        self._field_number: str | None = None
        if field:
            match = _FIELD_PATTERN.match(field)
            if not match:
                raise ConfigError("JIRA_CORRELATION_FIELD", "must be a custom field id like customfield_10050")
            self._field, self._field_number = field, match.group(1)

        prefix = get("JIRA_LABEL_PREFIX") or "azmon-"
        if not _PREFIX_PATTERN.match(prefix):
            raise ConfigError("JIRA_LABEL_PREFIX", "must be 1-100 letters, digits or . _ : - (labels have no spaces)")
        self._prefix = prefix

        self._priorities = _priority_map(get("JIRA_PRIORITY_MAP") or _DEFAULT_PRIORITY_MAP)

        self._transition = _transition_setting(get, "JIRA_RESOLVE_TRANSITION")
        self._close_transition = _transition_setting(get, "JIRA_CLOSE_TRANSITION")
        self._reopen_transition = _transition_setting(get, "JIRA_REOPEN_TRANSITION")
        self._resolution = get("JIRA_RESOLUTION") or "Done"
        if _NOT_ONE_LINE.search(self._resolution):
            raise ConfigError("JIRA_RESOLUTION", "must be a resolution name")

        internal = (get("JIRA_INTERNAL_COMMENTS") or "true").lower()
        if internal not in _TRUE | _FALSE:
            raise ConfigError("JIRA_INTERNAL_COMMENTS", "must be true or false")
        self._internal = internal in _TRUE

        self._api = "/rest/api/3" if deployment == CLOUD else "/rest/api/2"
        self._recent: deque[str] = deque(maxlen=_RECONCILE_LIMIT)
        self._http = ItsmHttpClient(
            _SYSTEM,
            self._base,
            self._auth,
            read_timeout=settings.itsm_timeout_seconds,
            error_text=_error_text,
            session=session,
            # Jira localizes its messages; the bridge logs and dead-letters them in one language (§2).
            headers={"Accept": "application/json", "Accept-Language": "en"},
            clock=clock,
        )

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session | None = None) -> ItsmAdapter:
        return cls(settings, session)

    def __repr__(self) -> str:
        return f"JiraAdapter(base_url={self._base!r}, deployment={self._deployment!r}, project={self._project!r})"

    @property
    def cloud(self) -> bool:
        return self._deployment == CLOUD

    # ----------------------------------------------------------------- find

    def find(self, correlation_id: str) -> list[WorkItemRecord]:
        label = self._label(correlation_id)
        if self._field_number is not None:
            # A text field is searched with ~ (text search); the phrase keeps the key's hyphenated
            # parts together. It may match more than the key: the re-check below drops the rest.
            where = f"cf[{self._field_number}] ~ {jql_string(jql_string(correlation_id))}"
        else:
            where = f"labels = {jql_string(label)}"
        # Every status: a resolved or closed issue is the core's decision, not the search's (and
        # "!=" would silently drop issues with an empty field, §3).
        jql = f"project = {jql_string(self._project)} AND {where} ORDER BY created ASC"
        fields = [*_SEARCH_FIELDS, *([self._field] if self._field else [])]

        exact: list[tuple[tuple[float, int, int], WorkItemRecord]] = []
        for index, issue in enumerate(self._search(jql, fields)):
            record = self._record(issue, correlation_id, label)
            if record is None:
                continue
            exact.append((_age_key(issue, index), record))
        # Oldest first, whatever order the server used; the issue id breaks ties (ids grow).
        exact.sort(key=lambda pair: pair[0])
        return [record for _, record in exact]

    def _search(self, jql: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        if self.cloud:
            yield from self._search_cloud(jql, fields)
        else:
            yield from self._search_datacenter(jql, fields)

    def _search_cloud(self, jql: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        token: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_SEARCH_PAGES):
            body: dict[str, Any] = {"jql": jql, "fields": fields, "maxResults": _PAGE_SIZE}
            if self._recent:
                body["reconcileIssues"] = [int(i) for i in self._recent if i.isdigit()]
                if not body["reconcileIssues"]:
                    del body["reconcileIssues"]
            if token is not None:
                body["nextPageToken"] = token
            payload = self._http.json("POST", f"{self._api}/search/jql", json=body)
            yield from _issues(payload)
            token = payload.get("nextPageToken") if isinstance(payload, dict) else None
            if not isinstance(token, str) or not token or payload.get("isLast") is True:
                return
            if token in seen:
                raise ItsmError(
                    f"{_SYSTEM}: search returned the same page token twice",
                    retryable=True,
                    reason=Reason.INVALID_RESPONSE,
                )
            seen.add(token)
        log.warning("Jira search for %s stopped after %d pages", jql, _MAX_SEARCH_PAGES)

    def _search_datacenter(self, jql: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        start = 0
        for _ in range(_MAX_SEARCH_PAGES):
            payload = self._http.json(
                "POST",
                f"{self._api}/search",
                json={"jql": jql, "fields": fields, "startAt": start, "maxResults": _PAGE_SIZE},
            )
            issues = _issues(payload)
            yield from issues
            start += len(issues)
            total = payload.get("total") if isinstance(payload, dict) else None
            if not issues or not isinstance(total, int) or start >= total:
                return
        log.warning("Jira search for %s stopped after %d pages", jql, _MAX_SEARCH_PAGES)

    def _record(self, issue: Mapping[str, Any], correlation_id: str, label: str) -> WorkItemRecord | None:
        issue_id, key = _text(issue.get("id")), _text(issue.get("key"))
        fields = issue.get("fields")
        fields = fields if isinstance(fields, Mapping) else {}
        project = fields.get("project")
        project_key = _text(project.get("key")) if isinstance(project, Mapping) else ""
        labels = fields.get("labels")
        labels = [x for x in labels if isinstance(x, str)] if isinstance(labels, list) else []
        if self._field is not None:
            carried = _text(fields.get(self._field))
            exact = carried == correlation_id
            seen = f"{self._field} {carried[:120]!r}"
        else:
            exact = label in labels
            seen = f"labels {[x[:120] for x in labels[:10]]!r}"
        if not exact or project_key != self._project or not issue_id or not _ISSUE_REF_PATTERN.match(issue_id):
            # The search matched more than asked: never act on such an issue.
            log.warning(
                "Jira returned issue %s (project %r, %s) for key %s; ignoring it",
                key or issue_id or "<no id>",
                project_key[:40],
                seen,
                correlation_id,
            )
            return None
        status, state = _status(fields)
        return WorkItemRecord(
            ref=self._ref(issue_id, key or None), correlation_id=correlation_id, status=status, state=state
        )

    # ----------------------------------------------------------------- create

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        label = self._label(item.correlation_id)
        fields: dict[str, Any] = self._extra_fields(item.fields)
        fields.update(
            {
                "project": {"key": self._project},
                "issuetype": _by_name_or_id(self._issue_type),
                "summary": _summary(item.title),
                "labels": [label],
            }
        )
        description = _clean(item.description)
        if description.strip():
            fields["description"] = _fitted_adf(description) if self.cloud else description
        if self._field is not None:
            fields[self._field] = item.correlation_id
        priority = self._priorities.get(_severity(item.severity))
        if priority is not None:
            fields["priority"] = _by_name_or_id(priority)
        payload = self._http.json("POST", f"{self._api}/issue", json={"fields": fields})
        issue_id = _text(payload.get("id")) if isinstance(payload, dict) else ""
        key = _text(payload.get("key")) if isinstance(payload, dict) else ""
        if not issue_id or not _ISSUE_REF_PATTERN.match(issue_id):
            raise ItsmError(
                f"{_SYSTEM}: the created issue's answer carries no id",
                retryable=True,
                reason=Reason.INVALID_RESPONSE,
                maybe_applied=True,
            )
        if issue_id.isdigit():
            self._recent.append(issue_id)
        ref = self._ref(issue_id, key or None)
        log.info("Jira issue %s created for key %s", key or issue_id, item.correlation_id)

        # From here on the issue exists. Raising now would make the core send the create again
        # (and a search that has not caught up yet would not stop it): a duplicate issue is worse
        # than a missing note, which only carries the payload marker (has_note then says "not
        # written", so a redelivery adds the note again). So comment failures are logged only.
        if item.note:
            self._comment_after(ref, item.note)
        if resolution is not None:
            try:
                done = self._transition_to_done(ref, resolution)
            except ItsmError as exc:
                # Unlike a note, an open issue for an alert that is over matters: report it, but
                # as "may have been applied", so the core looks the issue up before creating again
                # and then resolves the issue it finds.
                raise ItsmError(
                    f"{_SYSTEM}: issue {key or issue_id} was created, but resolving it failed: {exc}",
                    retryable=exc.retryable,
                    reason=exc.reason,
                    status=exc.status,
                    retry_after=exc.retry_after,
                    maybe_applied=True,
                ) from None
            if done:
                for text in _resolution_comments(resolution):
                    self._comment_after(ref, text)
        return ref

    def _comment_after(self, ref: WorkItemRef, text: str) -> None:
        """A comment after the write that matters (the create, the transition) has landed."""
        try:
            self._comment(ref, text)
        except ItsmError as exc:
            log.warning("Jira issue %s was written, but a comment was not added: %s", ref.number or ref.id, exc)

    def _extra_fields(self, mapped: Mapping[str, str], what: str = "mapped fields") -> dict[str, Any]:
        refused = self.managed_fields | ({self._field} if self._field else set())
        ignored = sorted(set(mapped) & refused)
        if ignored:
            log.warning("%s %s are managed by the bridge and were ignored", what, ignored)
        fields: dict[str, Any] = {}
        for name, value in mapped.items():
            if name in refused:
                continue
            if name == "components":
                fields[name] = [{"name": part.strip()} for part in value.split(",") if part.strip()]
            elif name in ("assignee", "reporter"):
                # Cloud identifies users by accountId (GDPR mode); Data Center by user name.
                fields[name] = {"accountId": value} if self.cloud else {"name": value}
            else:
                fields[name] = value
        return fields

    # ----------------------------------------------------------------- notes

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        if not note:
            raise ValueError("note must not be empty")
        self._comment(ref, note)

    def _comment(self, ref: WorkItemRef, text: str) -> None:
        issue = self._issue(ref)
        text = _clean(text)
        if self.cloud:
            body: dict[str, Any] = {"body": _fitted_adf(text)}
            if self._internal:
                # Internal (agent-only) in Jira Service Management (§4); a plain comment elsewhere.
                body["properties"] = [_INTERNAL_PROPERTY]
            self._http.json("POST", f"{self._api}/issue/{issue}/comment", json=body)
        elif self._internal:
            self._http.json(
                "POST", f"/rest/servicedeskapi/request/{issue}/comment", json={"body": text, "public": False}
            )
        else:
            self._http.json("POST", f"{self._api}/issue/{issue}/comment", json={"body": text})

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        if not marker:
            raise ValueError("marker must not be empty")
        issue = self._issue(ref)
        start = 0
        for _ in range(_MAX_COMMENT_PAGES):
            payload = self._http.json(
                "GET",
                f"{self._api}/issue/{issue}/comment",
                # Newest first: the marker looked for is usually the latest note.
                params={"startAt": str(start), "maxResults": str(_COMMENT_PAGE_SIZE), "orderBy": "-created"},
            )
            comments = member_list(_SYSTEM, payload, "comments", "comments response")
            for comment in comments:
                body = comment.get("body") if isinstance(comment, dict) else None
                text = body if isinstance(body, str) else adf_text(body)
                if marker in text:
                    return True
            start += len(comments)
            total = payload.get("total")
            if not comments or not isinstance(total, int) or start >= total:
                return False
        log.warning("Jira issue %s has more comments than read; marker not found", ref.number or ref.id)
        return False

    # ----------------------------------------------------------------- resolve

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        if not self._transition_to_done(ref, resolution):
            return
        log.info("Jira issue %s %s", ref.number or ref.id, "closed" if resolution.close else "resolved")
        # The issue is resolved now: a failed comment must not make the core resolve it again
        # (or dead-letter an alert whose issue is resolved), so it is logged only.
        for text in _resolution_comments(resolution):
            self._comment_after(ref, text)

    def _transition_to_done(self, ref: WorkItemRef, resolution: Resolution) -> bool:
        """Transition ``ref`` to done (closed with ``resolution.close``), writing the resolution's
        fields; False when it is done already (nothing to do)."""
        issue = self._issue(ref)
        transitions = self._transitions(issue)
        extra = self._extra_fields(resolution.fields, "resolution fields")
        chosen = self._choose_close(transitions, extra) if resolution.close else None
        if chosen is None:
            chosen = self._choose_transition(transitions, extra)
            if resolution.close and chosen is not None:
                missing = (
                    f"JIRA_CLOSE_TRANSITION {self._close_transition!r}"
                    if self._close_transition is not None
                    else "transition to close it (set JIRA_CLOSE_TRANSITION)"
                )
                log.warning(
                    "Jira issue %s offers no %s; resolving it with %r instead, so a re-fire may reopen it",
                    ref.number or ref.id,
                    missing,
                    _text(chosen.get("name")),
                )
        if chosen is None:
            return self._no_transition(ref, issue, transitions, close=resolution.close)
        if _category(chosen.get("to")) != "done":
            log.warning(
                "JIRA_%s_TRANSITION %r leads to status %r, which is not in the done category",
                "CLOSE" if resolution.close else "RESOLVE",
                _text(chosen.get("name")),
                _target_name(chosen),
            )
        elif resolution.close and not _CLOSED_STATUS.search(_target_name(chosen)):
            log.warning(
                "Jira issue %s is closed with transition %r to status %r, which the bridge reads as "
                "resolved (a status named Closed is final): a re-fire may reopen it",
                ref.number or ref.id,
                _text(chosen.get("name")),
                _target_name(chosen),
            )
        screen = chosen.get("fields")
        screen = screen if isinstance(screen, Mapping) else {}
        on_screen = {name: value for name, value in extra.items() if name in screen}
        elsewhere = {name: value for name, value in extra.items() if name not in screen}
        if elsewhere:
            # Before the transition: a closed issue is often not editable, and a refused edit
            # leaves the issue as it was (module docstring).
            self._http.request("PUT", f"{self._api}/issue/{issue}", json={"fields": elsewhere})
        if "resolution" in screen:
            # Only when the transition's screen has it: Jira refuses a field that is not on the
            # screen ("Field 'resolution' cannot be set", §5); without it a post-function sets it.
            on_screen["resolution"] = {"name": self._resolution_name(resolution, screen["resolution"])}
        body: dict[str, Any] = {"transition": {"id": _text(chosen.get("id"))}}
        if on_screen:
            body["fields"] = on_screen
        self._http.request("POST", f"{self._api}/issue/{issue}/transitions", json=body)
        return True

    def _transitions(self, issue: str) -> list[dict[str, Any]]:
        payload = self._http.json(
            "GET", f"{self._api}/issue/{issue}/transitions", params={"expand": "transitions.fields"}
        )
        listed = member_list(_SYSTEM, payload, "transitions", "transitions response")
        return [t for t in listed if isinstance(t, dict) and _text(t.get("id"))]

    def _choose_transition(
        self, transitions: list[dict[str, Any]], provided: Collection[str] = ()
    ) -> dict[str, Any] | None:
        """The resolving transition; ``provided`` names the fields the bridge writes with it."""
        available = _available(transitions)
        if self._transition is not None:
            return _named(available, self._transition)
        ranked = sorted(
            (
                (_transition_rank(t, provided), index, t)
                for index, t in enumerate(available)
                if _category(t.get("to")) == "done" and not _CANCELED.search(_transition_words(t))
            ),
            key=lambda entry: (entry[0], entry[1]),
        )
        return ranked[0][2] if ranked else None

    def _choose_close(self, transitions: list[dict[str, Any]], provided: Collection[str]) -> dict[str, Any] | None:
        """The closing transition; None when there is none (the caller resolves instead)."""
        available = _available(transitions)
        if self._close_transition is not None:
            return _named(available, self._close_transition)
        ranked = sorted(
            (
                (10 if _blocking(t, provided) else 0, index, t)
                for index, t in enumerate(available)
                if _category(t.get("to")) == "done"
                and _CLOSE_WORDS.search(_transition_words(t))
                and not _CANCELED.search(_transition_words(t))
            ),
            key=lambda entry: (entry[0], entry[1]),
        )
        return ranked[0][2] if ranked else None

    def _no_transition(
        self, ref: WorkItemRef, issue: str, transitions: list[dict[str, Any]], *, close: bool = False
    ) -> bool:
        """No transition applies: fine when the issue is done already, a workflow problem otherwise."""
        status, state = self._current_status(issue)
        if status is not WorkItemStatus.OPEN:
            log.info("Jira issue %s is %s already; no transition", ref.number or ref.id, state or status.value)
            return False
        if self._transition is not None:
            wanted = "the configured JIRA_RESOLVE_TRANSITION is not among them"
        elif close:
            wanted = "none leads to a done status (set JIRA_CLOSE_TRANSITION or JIRA_RESOLVE_TRANSITION)"
        else:
            wanted = "none leads to a done status (set JIRA_RESOLVE_TRANSITION)"
        raise _stuck(f"cannot {'close' if close else 'resolve'}", ref, state, transitions, wanted)

    def _current_status(self, issue: str) -> tuple[WorkItemStatus, str]:
        payload = self._http.json("GET", f"{self._api}/issue/{issue}", params={"fields": "status,resolution"})
        fields = payload.get("fields") if isinstance(payload, dict) else None
        return _status(fields if isinstance(fields, Mapping) else {})

    # ----------------------------------------------------------------- reopen

    def reopen(self, ref: WorkItemRef, note: str) -> None:
        issue = self._issue(ref)
        transitions = self._transitions(issue)
        chosen = self._choose_reopen(transitions)
        if chosen is None:
            status, state = self._current_status(issue)
            if status is not WorkItemStatus.OPEN:
                wanted = (
                    "the configured JIRA_REOPEN_TRANSITION is not among them"
                    if self._reopen_transition is not None
                    else "none leads to a to-do or in-progress status (set JIRA_REOPEN_TRANSITION)"
                )
                raise _stuck("cannot reopen", ref, state, transitions, wanted)
            # Someone reopened it already: nothing was written yet, so a failed note is raised.
            log.info("Jira issue %s is open already (%s); adding the note only", ref.number or ref.id, state)
            if note:
                self._comment(ref, note)
            return
        if _category(chosen.get("to")) not in _OPEN_CATEGORIES:
            log.warning(
                "JIRA_REOPEN_TRANSITION %r leads to status %r, which is not a to-do or in-progress status",
                _text(chosen.get("name")),
                _target_name(chosen),
            )
        body: dict[str, Any] = {"transition": {"id": _text(chosen.get("id"))}}
        screen = chosen.get("fields")
        if isinstance(screen, Mapping) and "resolution" in screen:
            # A reopened issue is unresolved again; Jira may need that said on the screen (§5).
            body["fields"] = {"resolution": None}
        self._http.request("POST", f"{self._api}/issue/{issue}/transitions", json=body)
        log.info("Jira issue %s reopened", ref.number or ref.id)
        if note:
            self._comment_after(ref, note)

    def _choose_reopen(self, transitions: list[dict[str, Any]]) -> dict[str, Any] | None:
        available = _available(transitions)
        if self._reopen_transition is not None:
            return _named(available, self._reopen_transition)
        ranked = sorted(
            (
                (_reopen_rank(t), index, t)
                for index, t in enumerate(available)
                if _category(t.get("to")) in _OPEN_CATEGORIES
            ),
            key=lambda entry: (entry[0], entry[1]),
        )
        return ranked[0][2] if ranked else None

    def _resolution_name(self, resolution: Resolution, screen_field: Any) -> str:
        """The mapping's resolution, else JIRA_RESOLUTION, spelled as the screen offers it."""
        candidates = [name for name in (resolution.code, self._resolution) if name]
        allowed = screen_field.get("allowedValues") if isinstance(screen_field, Mapping) else None
        names = [_text(v.get("name")) for v in allowed if isinstance(v, Mapping)] if isinstance(allowed, list) else []
        by_fold = {name.casefold(): name for name in names if name}
        for candidate in candidates:
            if not by_fold or candidate.casefold() in by_fold:
                return by_fold.get(candidate.casefold(), candidate)
        # None is offered: send the first and let Jira's own message say what is wrong.
        return candidates[0]

    # ----------------------------------------------------------------- the rest

    def find_configuration_item(self, resource_ids: Sequence[str], names: Sequence[str]) -> ConfigurationItem | None:
        # This adapter binds no CMDB (Jira Assets is a separate product and API): no call.
        return None

    def check(self) -> None:
        self._http.json("GET", f"{self._api}/myself")

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- plumbing

    def _label(self, correlation_id: str) -> str:
        if not KEY_PATTERN.match(correlation_id):
            raise ValueError("correlation id must match " + KEY_PATTERN.pattern)
        return self._prefix + correlation_id

    def _issue(self, ref: WorkItemRef) -> str:
        if ref.system != self.name:
            raise ValueError(f"not a Jira work item: {ref.system!r}")
        if not _ISSUE_REF_PATTERN.match(ref.id):
            raise ValueError("issue id must match " + _ISSUE_REF_PATTERN.pattern)
        return ref.id

    def _ref(self, issue_id: str, key: str | None) -> WorkItemRef:
        url = f"{self._base}/browse/{key}" if key and _ISSUE_REF_PATTERN.match(key) else None
        return WorkItemRef(system=self.name, id=issue_id, number=key, url=url)


# --------------------------------------------------------------------- settings


def _authenticator(deployment: str, get: Callable[[str], str | None]) -> Authenticator:
    email, token, pat = get("JIRA_EMAIL"), get("JIRA_API_TOKEN"), get("JIRA_PAT")
    if deployment == CLOUD:
        if pat:
            raise ConfigError("JIRA_PAT", "is for JIRA_DEPLOYMENT=datacenter; Cloud uses JIRA_EMAIL and JIRA_API_TOKEN")
        if not email:
            raise ConfigError("JIRA_EMAIL", "is required for Jira Cloud (with JIRA_API_TOKEN)")
        if "@" not in email or ":" in email or _NOT_ONE_LINE.search(email):
            raise ConfigError("JIRA_EMAIL", "must be the email address of the Atlassian account")
        if not token:
            raise ConfigError("JIRA_API_TOKEN", "is required for Jira Cloud (with JIRA_EMAIL)")
        return BasicAuth(email, token)
    if token:
        raise ConfigError("JIRA_API_TOKEN", "is for Jira Cloud; Data Center uses JIRA_PAT")
    if email:
        raise ConfigError("JIRA_EMAIL", "is for Jira Cloud; Data Center uses JIRA_PAT")
    if not pat:
        raise ConfigError("JIRA_PAT", "is required for JIRA_DEPLOYMENT=datacenter")
    return BearerToken(pat)


def _transition_setting(get: Callable[[str], str | None], name: str) -> str | None:
    value = get(name)
    if value is not None and _NOT_ONE_LINE.search(value):
        raise ConfigError(name, "must be a transition name or id")
    return value


def _priority_map(value: str) -> dict[str, str]:
    """``Sev0=Highest,...`` as {"sev0": "Highest"}; ``none`` for no priority at all."""
    if value.strip().lower() == "none":
        return {}
    priorities: dict[str, str] = {}
    for entry in value.split(","):
        if not entry.strip():
            continue
        severity, sep, priority = entry.partition("=")
        match = _SEVERITY_PATTERN.match(severity.strip())
        priority = priority.strip()
        if not sep or match is None or not priority or _NOT_ONE_LINE.search(priority):
            raise ConfigError("JIRA_PRIORITY_MAP", "must be entries like Sev0=Highest, separated by commas")
        canonical = f"sev{match.group(1)}"
        if canonical in priorities:
            raise ConfigError("JIRA_PRIORITY_MAP", f"names Sev{match.group(1)} twice")
        priorities[canonical] = priority
    if not priorities:
        raise ConfigError("JIRA_PRIORITY_MAP", "must map at least one severity (or be 'none')")
    return priorities


def _severity(severity: str | None) -> str:
    return (severity or "").strip().lower()


# --------------------------------------------------------------------- JQL and ADF


def jql_string(value: str) -> str:
    """``value`` as a JQL string literal: quoted, with backslash and double quote escaped (§3).

    Callers validate values first; this keeps even a value that slipped through from ending the
    literal and adding clauses. Line breaks are escaped too, so a literal is always one line.
    """
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def adf_document(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document (§2): version 1, a paragraph per block of lines
    separated by a blank line, a hardBreak between lines, and never an empty text node."""
    text = _clean(text)
    content: list[dict[str, Any]] = []
    for block in _BLANK_LINES.split(text):
        lines = [line.rstrip() for line in block.split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        inline: list[dict[str, Any]] = []
        for line in lines:
            if inline:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        if inline:
            content.append({"type": "paragraph", "content": inline})
    return {"version": 1, "type": "doc", "content": content}


def _fitted_adf(text: str) -> dict[str, Any]:
    """``adf_document(text)``, shortened until its compact JSON fits Jira's 32,767 characters.

    Whether Jira counts the ADF JSON or the rendered text is UNCONFIRMED (§1): the stricter
    reading is taken, so a long description is shortened here rather than refused there (a
    refusal would be permanent, and the alert dead-lettered).
    """
    doc = adf_document(text)
    size = _json_size(doc)
    while size > _DESCRIPTION_LIMIT:
        keep = max(0, int(len(text) * _DESCRIPTION_LIMIT / size) - len(_SHORTENED) - 64)
        text = text[:keep].rstrip() + "\n\n" + _SHORTENED
        doc = adf_document(text)
        size = _json_size(doc)
    return doc


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def adf_text(node: Any) -> str:
    """The text of an ADF document: text nodes joined, a newline for breaks and between blocks."""
    parts: list[str] = []

    def walk(current: Any) -> None:
        if isinstance(current, list):
            for child in current:
                walk(child)
            return
        if not isinstance(current, Mapping):
            return
        kind = current.get("type")
        if kind == "text":
            parts.append(_text(current.get("text")))
        elif kind == "hardBreak":
            parts.append("\n")
        walk(current.get("content"))
        if kind not in ("text", "hardBreak", None) and kind != "doc":
            parts.append("\n")

    walk(node)
    return "".join(parts)


# --------------------------------------------------------------------- helpers


def _status(fields: Mapping[str, Any]) -> tuple[WorkItemStatus, str]:
    """Neutral status and the status name: the status category decides (§5), a "Closed" status
    is closed, and a done issue whose resolution (or status) says cancelled is canceled."""
    status = fields.get("status")
    status = status if isinstance(status, Mapping) else {}
    name = _text(status.get("name"))
    resolution = fields.get("resolution")
    resolution_name = _text(resolution.get("name")) if isinstance(resolution, Mapping) else ""
    # A category this bridge does not know (or none) is someone working on it: open. So is an
    # issue reopened with a stale resolution: the status category, not the resolution, decides.
    if _category(status) != "done" and name.casefold() != "closed":
        return WorkItemStatus.OPEN, name
    if _CANCELED.search(resolution_name) or _CANCELED.search(name):
        return WorkItemStatus.CANCELED, name
    # Closed is final: the core never reopens it (module docstring).
    return (WorkItemStatus.CLOSED if _CLOSED_STATUS.search(name) else WorkItemStatus.RESOLVED), name


def _category(status: Any) -> str:
    category = status.get("statusCategory") if isinstance(status, Mapping) else None
    return _text(category.get("key")).lower() if isinstance(category, Mapping) else ""


def _target_name(transition: Mapping[str, Any]) -> str:
    target = transition.get("to")
    return _text(target.get("name")) if isinstance(target, Mapping) else ""


def _transition_words(transition: Mapping[str, Any]) -> str:
    return f"{_text(transition.get('name'))} {_target_name(transition)}"


def _available(transitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in transitions if t.get("isAvailable") is not False]


def _named(transitions: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """The transition a setting names, by id or by name (any case)."""
    folded = wanted.casefold()
    for transition in transitions:
        if _text(transition.get("id")) == wanted or _text(transition.get("name")).casefold() == folded:
            return transition
    return None


def _transition_rank(transition: Mapping[str, Any], provided: Collection[str]) -> int:
    words = _transition_words(transition)
    rank = 0 if _RESOLVE_WORDS.search(words) else 1 if _DONE_WORDS.search(words) else 2
    return rank + (10 if _blocking(transition, provided) else 0)


def _reopen_rank(transition: Mapping[str, Any]) -> int:
    if _REOPEN_WORDS.search(_text(transition.get("name"))):
        rank = 0
    else:
        rank = 1 + _OPEN_CATEGORIES.index(_category(transition.get("to")))
    return rank + (10 if _blocking(transition) else 0)


def _blocking(transition: Mapping[str, Any], provided: Collection[str] = ()) -> bool:
    """Whether the transition's screen asks for a field the bridge cannot fill (the resolution,
    and the ``provided`` fields, it can): Jira would refuse the transition (jiralert#118), so such a
    transition is a last resort."""
    screen = transition.get("fields")
    if not isinstance(screen, Mapping):
        return False
    return any(
        name != "resolution"
        and name not in provided
        and isinstance(spec, Mapping)
        and spec.get("required") is True
        and not spec.get("hasDefaultValue")
        for name, spec in screen.items()
    )


def _stuck(doing: str, ref: WorkItemRef, state: str, transitions: list[dict[str, Any]], wanted: str) -> ItsmError:
    """The permanent error of a workflow that offers no usable transition (a setting must change)."""
    names = ", ".join(repr(_text(t.get("name"))[:60]) for t in transitions[:20]) or "none"
    return ItsmError(
        f"{_SYSTEM}: {doing} issue {ref.number or ref.id} from status {state!r}: "
        f"available transitions {names}; {wanted}",
        retryable=False,
        reason=Reason.CLIENT_ERROR,
        maybe_applied=False,
    )


def _issues(payload: Any) -> list[dict[str, Any]]:
    return [issue for issue in member_list(_SYSTEM, payload, "issues", "search response") if isinstance(issue, dict)]


def _age_key(issue: Mapping[str, Any], index: int) -> tuple[float, int, int]:
    fields = issue.get("fields")
    created = _text(fields.get("created")) if isinstance(fields, Mapping) else ""
    when = math.inf
    for pattern in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            when = datetime.strptime(created, pattern).timestamp()
            break
        except ValueError:
            continue
    issue_id = _text(issue.get("id"))
    return when, int(issue_id) if issue_id.isdigit() else 0, index


def _by_name_or_id(value: str) -> dict[str, str]:
    return {"id": value} if value.isdigit() else {"name": value}


def _summary(title: str) -> str:
    """A summary Jira accepts: one line, at most 255 characters as Jira (Java, UTF-16) counts them."""
    text = " ".join(_clean(title).split()) or "Azure Monitor alert"
    return _cut_utf16(text, _TITLE_LIMIT)


def _cut_utf16(text: str, limit: int) -> str:
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit - 1:  # keep room for the ellipsis
            return text[:index] + "\u2026"
    return text


def _clean(text: str) -> str:
    """Text with Windows and old-Mac line ends made \\n and control characters dropped."""
    return _CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _resolution_comments(resolution: Resolution) -> list[str]:
    """What a resolve writes: the summary (Jira has no close notes; it is the resolution comment),
    then the note carrying the payload marker, each an internal comment of its own, so the note is
    exactly the text the core wrote."""
    texts = [resolution.summary.strip(), resolution.note]
    return [text for i, text in enumerate(texts) if text and text not in texts[:i]]


def _error_text(response: requests.Response) -> str:
    """Jira's explanation in one line: ``errorMessages`` then ``field: message`` pairs (and the
    service desk API's ``errorMessage``)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    messages = body.get("errorMessages")
    if isinstance(messages, list):
        parts.extend(m for m in messages if isinstance(m, str) and m)
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts.extend(f"{field}: {message}" for field, message in errors.items() if isinstance(message, str))
    for name in ("errorMessage", "message"):
        value = body.get(name)
        if isinstance(value, str) and value and value not in parts:
            parts.append(value)
    return "; ".join(parts)


def _text(value: Any) -> str:
    """A JSON value as text: ids come as strings, but tolerate numbers and nulls."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""
