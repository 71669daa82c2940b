"""A Jira Service Management stand-in: a real HTTP server on loopback that behaves like a site where it matters.

It serves, from an in-memory store, what an alert bridge uses of Jira, with the behaviour a client
has to cope with (``/work/shared/FACTS-jira.md`` has the facts and their sources):

* Cloud (``deployment="cloud"``): REST API v3 with Atlassian Document Format (ADF) for
  descriptions and comment bodies, v2 with wiki-markup strings, ``POST /rest/api/3/search/jql``
  (token pagination, no ``total``, ids only without ``fields``), the retired ``/search`` answering
  410, API-token basic auth (``email:token``).
* Data Center (``deployment="datacenter"``): v2 only, ``/rest/api/2/search`` (GET and POST,
  ``startAt``/``total`` pagination), no ``/search/jql``, personal access tokens (Bearer).
* Both: issue create/read/edit with Jira's field rules (create and edit screens, summary and
  label limits, ADF validation, 400 for a field not on the screen), comments (public, or internal
  through the ``sd.public.comment`` property or ``/rest/servicedeskapi/request/{key}/comment``),
  a workflow with transitions per status (Resolve, Close, Reopen) and a resolution screen, text
  custom fields on the create and edit screens (and on the resolution screen when asked), a
  Closed issue that is no longer editable, a JQL subset that refuses
  anything outside it with a 400 (never ignoring a term), Jira's error bodies, and the shared
  fault injector for 429/5xx/latency/drops (:mod:`bridge.sandbox.common`).

Where FACTS-jira.md is silent the stand-in does what real Jira does as best we know, and says so
in a comment; such wording is marked "stand-in wording". Clients should match error field keys,
not texts (Jira localises its messages).

Run it alone with ``python -m bridge.sandbox.jira --port 8081`` (``--deployment datacenter``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.sandbox.common import (
    FaultInjector,
    FaultRule,
    LoopbackStandIn,
    RequestRecord,
    Response,
    serve_until_stopped,
    status_phrase,
)

__all__ = [
    "DEPLOYMENTS",
    "PRIORITIES",
    "RESERVED_CHARACTERS",
    "RESERVED_WORDS",
    "RESOLUTIONS",
    "STATUSES",
    "AdfError",
    "FaultInjector",
    "FaultRule",
    "JiraStandIn",
    "JqlAnd",
    "JqlClause",
    "JqlError",
    "JqlOr",
    "JqlOrder",
    "JqlQuery",
    "JqlValue",
    "RequestRecord",
    "adf_to_wiki",
    "main",
    "parse_jql",
    "validate_adf",
    "wiki_to_adf",
]

logger = logging.getLogger(__name__)

DEPLOYMENTS = ("cloud", "datacenter")
SUMMARY_MAX = 255  # "Summary can't exceed 255 characters." [FACTS §1]
LABEL_MAX = 255  # per label [FACTS §1]
TEXT_MAX = 32767  # description (and comment) limit [FACTS §1]
SEARCH_DEFAULT_PAGE = 50
# Jira caps page sizes silently rather than refusing them. FACTS gives no figures; these are the
# documented defaults as best we know: /search/jql up to 5000 ids or 100 full issues, and the
# Data Center /search up to 1000 (jira.search.views.default.max).
SEARCH_MAX_IDS = 5000
SEARCH_MAX_ISSUES = 100
DC_SEARCH_MAX = 1000
COMMENTS_DEFAULT_PAGE = 5000  # Jira's default for GET .../comment, as best we know
RECONCILE_MAX = 50  # reconcileIssues takes at most 50 ids [FACTS §3]
INTERNAL_PROPERTY = "sd.public.comment"  # [FACTS §4]

# -- messages (FACTS-sourced unless marked) --------------------------------------------------
NOT_ON_SCREEN = "Field '{}' cannot be set. It is not on the appropriate screen, or unknown."
SUMMARY_TOO_LONG = "Summary can't exceed 255 characters."
TEXT_TOO_LONG = "The entered text is too long. It exceeds the allowed limit of 32,767 characters."
NOT_ADF = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
COMMENT_NOT_VALID = "Comment body is not valid!"
RESOLUTION_REQUIRED = "Field Resolution is required."
ISSUE_NOT_FOUND = "Issue does not exist or you do not have permission to see it."
SEARCH_REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
# Not in FACTS; Jira's texts as best we know.
NOT_A_STRING = "Operation value must be a string"
SUMMARY_REQUIRED = "You must specify a summary of the issue."
SUMMARY_NEWLINE = "The summary is invalid because it contains newline characters."
LABELS_NOT_STRINGS = "Specify the value for labels in an array of strings"
LABEL_SPACES = "The label '{}' contains spaces which is invalid."
NOT_AUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."
UNBOUNDED_JQL = "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."


# --------------------------------------------------------------------------------------------
# Workflow, priorities, resolutions


@dataclass(frozen=True)
class _Category:
    id: int
    key: str
    name: str
    color: str


# Jira's three status categories, with their ids and colours [FACTS §5; ids as in Jira].
_CATEGORIES = {
    "new": _Category(2, "new", "To Do", "blue-gray"),
    "indeterminate": _Category(4, "indeterminate", "In Progress", "yellow"),
    "done": _Category(3, "done", "Done", "green"),
}


@dataclass(frozen=True)
class _Status:
    id: str
    name: str
    category: str


# The classic Jira workflow's statuses and ids.
STATUSES: dict[str, _Status] = {
    status.name: status
    for status in (
        _Status("1", "Open", "new"),
        _Status("3", "In Progress", "indeterminate"),
        _Status("5", "Resolved", "done"),
        _Status("6", "Closed", "done"),
    )
}


@dataclass(frozen=True)
class _Transition:
    """A workflow transition. ``screen`` means a screen with a required resolution field."""

    id: str
    name: str
    to: str
    screen: bool = False
    clears_resolution: bool = False


# Transitions available from each status, with the classic workflow's ids: "Close Issue" is id 2
# from Open/In Progress (resolution screen) but 701 from Resolved (no screen, keeps the
# resolution), so a client must look transitions up per issue, by name, as FACTS §5 advises.
_TRANSITIONS: dict[str, tuple[_Transition, ...]] = {
    "Open": (
        _Transition("4", "Start Progress", "In Progress"),
        _Transition("5", "Resolve Issue", "Resolved", screen=True),
        _Transition("2", "Close Issue", "Closed", screen=True),
    ),
    "In Progress": (
        _Transition("301", "Stop Progress", "Open"),
        _Transition("5", "Resolve Issue", "Resolved", screen=True),
        _Transition("2", "Close Issue", "Closed", screen=True),
    ),
    "Resolved": (
        _Transition("701", "Close Issue", "Closed"),
        _Transition("3", "Reopen Issue", "Open", clears_resolution=True),
    ),
    "Closed": (_Transition("3", "Reopen Issue", "Open", clears_resolution=True),),
}

# The default priority scheme [FACTS §8]; the ids 1-5 are UNCONFIRMED there, used here as Jira's defaults.
PRIORITIES: dict[str, str] = {"Highest": "1", "High": "2", "Medium": "3", "Low": "4", "Lowest": "5"}
DEFAULT_PRIORITY = "Medium"
# A Cloud site's default resolutions, with ids as a new site numbers them (not in FACTS).
RESOLUTIONS: dict[str, str] = {"Done": "10000", "Won't Do": "10001", "Duplicate": "10002", "Cannot Reproduce": "10003"}

_CREATE_SCREEN = frozenset({"project", "issuetype", "summary", "description", "labels", "priority"})
_EDIT_SCREEN = frozenset({"summary", "description", "labels", "priority"})
# Statuses whose issues cannot be edited: the classic workflow's Closed step sets the property
# jira.issue.editable=false, so an edit finds no field on its screen (as best we know).
_NOT_EDITABLE = frozenset({"Closed"})
_CUSTOM_FIELD_ID = re.compile(r"customfield_[0-9]{1,12}")
TEXT_FIELD_MAX = 255  # a single-line text custom field
_ALL_FIELDS = (
    "summary",
    "description",
    "labels",
    "priority",
    "status",
    "resolution",
    "resolutiondate",
    "created",
    "updated",
    "issuetype",
    "project",
    "comment",
)
_NAVIGABLE_FIELDS = tuple(name for name in _ALL_FIELDS if name != "comment")


# --------------------------------------------------------------------------------------------
# Errors


class _ApiError(Exception):
    """A refused request, with the body it is answered with."""

    def __init__(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, payload)
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})

    def response(self) -> Response:
        if self.payload is None:
            return Response(self.status, b"", tuple(self.headers.items()))
        return Response.of_json(self.status, self.payload, self.headers)


def _error_body(messages: Sequence[str] = (), errors: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Jira's error body: ``{"errorMessages": [...], "errors": {field: message}}``."""
    return {"errorMessages": list(messages), "errors": dict(errors or {})}


def _jira_error(
    status: int, *messages: str, errors: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None
) -> _ApiError:
    return _ApiError(status, _error_body(messages, errors), headers)


def _servicedesk_error(status: int, message: str, i18n_key: str) -> _ApiError:
    # The servicedeskapi has its own error shape (not in FACTS; as Jira Service Management answers).
    return _ApiError(status, {"errorMessage": message, "i18nErrorMessage": {"i18nKey": i18n_key, "parameters": []}})


def _not_found() -> _ApiError:
    return _jira_error(404, ISSUE_NOT_FOUND)


# --------------------------------------------------------------------------------------------
# Atlassian Document Format


class AdfError(ValueError):
    """Why a value is not an ADF document Jira accepts."""


_BLOCK_NODES = frozenset({"paragraph", "heading", "bulletList", "orderedList", "codeBlock", "blockquote", "rule"})
_LIST_ITEM_CHILDREN = frozenset({"paragraph", "bulletList", "orderedList", "codeBlock"})
_MARKS = frozenset({"strong", "em", "code", "strike", "underline", "link", "subsup", "textColor"})


def validate_adf(value: Any) -> None:
    """Raise :class:`AdfError` unless ``value`` is an ADF document of the nodes Jira takes.

    The document needs ``type: doc``, ``version: 1`` and a ``content`` list [FACTS §2]. Nodes:
    paragraph, heading (level 1-6), bulletList/orderedList of listItem, codeBlock (optional
    ``attrs.language``; unmarked text only), blockquote, rule; inline text (non-empty ``text``,
    known marks; a link needs ``attrs.href``) and hardBreak (``attrs.text``, if any, is ``"\\n"``).
    Unknown node types and unknown properties are refused, as Jira's schema validation does: not
    every node of the published schema is valid in Jira [FACTS §2], so the stand-in accepts the
    common subset only.
    """
    if not isinstance(value, Mapping) or value.get("type") != "doc":
        raise AdfError(NOT_ADF)
    version = value.get("version")
    if type(version) is not int or version != 1 or not isinstance(value.get("content"), list):
        raise AdfError(NOT_ADF)
    _only_keys(value, {"type", "version", "content"}, "doc")
    for index, node in enumerate(value["content"]):
        _block(node, f"content[{index}]", _BLOCK_NODES)


def _only_keys(node: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    extra = sorted(set(node) - set(allowed))
    if extra:
        raise AdfError(f"{where}: unexpected property '{extra[0]}'")


def _node_type(node: Any, where: str) -> str:
    if not isinstance(node, Mapping) or not isinstance(node.get("type"), str):
        raise AdfError(f"{where}: a node must be an object with a type")
    return str(node["type"])


def _attrs(node: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    attrs = node.get("attrs", {})
    if not isinstance(attrs, Mapping):
        raise AdfError(f"{where}: attrs must be an object")
    return attrs


def _children(node: Mapping[str, Any], where: str, *, required: bool) -> list[Any]:
    content = node.get("content")
    if content is None and not required:
        return []
    if not isinstance(content, list) or (required and not content):
        raise AdfError(f"{where}: content must be a {'non-empty ' if required else ''}list")
    return content


def _block(node: Any, where: str, allowed: frozenset[str]) -> None:
    kind = _node_type(node, where)
    if kind not in allowed:
        raise AdfError(f"{where}: node type '{kind}' is not allowed here")
    if kind in ("paragraph", "heading"):
        _only_keys(node, {"type", "content", "attrs"}, where)
        if kind == "heading":
            level = _attrs(node, where).get("level")
            if type(level) is not int or not 1 <= level <= 6:
                raise AdfError(f"{where}: a heading needs attrs.level between 1 and 6")
        for index, child in enumerate(_children(node, where, required=False)):
            _inline(child, f"{where}.content[{index}]")
    elif kind in ("bulletList", "orderedList"):
        _only_keys(node, {"type", "content", "attrs"}, where)
        order = _attrs(node, where).get("order", 1)
        if kind == "orderedList" and (type(order) is not int or order < 0):
            raise AdfError(f"{where}: attrs.order must be a non-negative integer")
        for index, item in enumerate(_children(node, where, required=True)):
            item_where = f"{where}.content[{index}]"
            if _node_type(item, item_where) != "listItem":
                raise AdfError(f"{item_where}: a list holds listItem nodes only")
            _only_keys(item, {"type", "content", "attrs"}, item_where)
            for child_index, child in enumerate(_children(item, item_where, required=True)):
                _block(child, f"{item_where}.content[{child_index}]", _LIST_ITEM_CHILDREN)
    elif kind == "codeBlock":
        _only_keys(node, {"type", "content", "attrs"}, where)
        language = _attrs(node, where).get("language")
        if language is not None and not isinstance(language, str):
            raise AdfError(f"{where}: attrs.language must be a string")
        for index, child in enumerate(_children(node, where, required=False)):
            child_where = f"{where}.content[{index}]"
            if _node_type(child, child_where) != "text" or child.get("marks"):
                raise AdfError(f"{child_where}: a codeBlock holds text without marks only")
            _inline(child, child_where)
    elif kind == "blockquote":
        _only_keys(node, {"type", "content"}, where)
        for index, child in enumerate(_children(node, where, required=True)):
            _block(child, f"{where}.content[{index}]", _LIST_ITEM_CHILDREN)
    else:  # rule
        _only_keys(node, {"type"}, where)


def _inline(node: Any, where: str) -> None:
    kind = _node_type(node, where)
    if kind == "text":
        _only_keys(node, {"type", "text", "marks"}, where)
        text = node.get("text")
        if not isinstance(text, str) or not text:
            raise AdfError(f"{where}: a text node needs non-empty text")  # minLength 1 [FACTS §2]
        marks = node.get("marks", [])
        if not isinstance(marks, list):
            raise AdfError(f"{where}: marks must be a list")
        seen: set[str] = set()
        for index, mark in enumerate(marks):
            mark_where = f"{where}.marks[{index}]"
            mark_type = _node_type(mark, mark_where)
            if mark_type not in _MARKS or mark_type in seen:
                raise AdfError(f"{mark_where}: mark '{mark_type}' is unknown or repeated")
            seen.add(mark_type)
            _only_keys(mark, {"type", "attrs"}, mark_where)
            if mark_type == "link" and not isinstance(_attrs(mark, mark_where).get("href"), str):
                raise AdfError(f"{mark_where}: a link mark needs attrs.href")
    elif kind == "hardBreak":
        _only_keys(node, {"type", "attrs"}, where)
        attrs = _attrs(node, where)
        if "text" in attrs and attrs["text"] != "\n":
            raise AdfError(f'{where}: hardBreak attrs.text must be "\\n"')  # [FACTS §2]
    else:
        raise AdfError(f"{where}: node type '{kind}' is not allowed inline")


def _adf_length(document: Any) -> int:
    # Whether Jira counts the ADF JSON or the rendered text against 32,767 is UNCONFIRMED [FACTS §1];
    # the stand-in counts the compact JSON, the stricter reading, so what passes here passes there.
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False))


def adf_to_wiki(document: Any) -> str:
    """An ADF document as wiki markup, roughly as v2 shows a v3 description (marks, lists, code)."""
    if not isinstance(document, Mapping):
        return ""
    return "\n\n".join(_wiki_block(node) for node in document.get("content", []))


def _wiki_block(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    content = node.get("content", [])
    if kind == "heading":
        return f"h{node.get('attrs', {}).get('level', 1)}. {_wiki_inline(content)}"
    if kind in ("bulletList", "orderedList"):
        bullet = "*" if kind == "bulletList" else "#"
        items = (" ".join(_wiki_block(child) for child in item.get("content", [])) for item in content)
        return "\n".join(f"{bullet} {item}" for item in items)
    if kind == "codeBlock":
        language = node.get("attrs", {}).get("language")
        opener = f"{{code:{language}}}" if language else "{code}"
        return f"{opener}\n{_wiki_inline(content)}\n{{code}}"
    if kind == "blockquote":
        return "{quote}" + "\n\n".join(_wiki_block(child) for child in content) + "{quote}"
    if kind == "rule":
        return "----"
    return _wiki_inline(content)


def _wiki_inline(nodes: Iterable[Mapping[str, Any]]) -> str:
    parts: list[str] = []
    for node in nodes:
        if node.get("type") == "hardBreak":
            parts.append("\n")
            continue
        text = str(node.get("text", ""))
        for mark in node.get("marks", []):
            kind = mark.get("type")
            if kind == "strong":
                text = f"*{text}*"
            elif kind == "em":
                text = f"_{text}_"
            elif kind == "code":
                text = f"{{{{{text}}}}}"
            elif kind == "strike":
                text = f"-{text}-"
            elif kind == "link":
                text = f"[{text}|{mark.get('attrs', {}).get('href', '')}]"
        parts.append(text)
    return "".join(parts)


def wiki_to_adf(text: str) -> dict[str, Any]:
    """A wiki-markup string as ADF, as v3 shows a v2 description.

    Real Jira parses the markup; the stand-in keeps the text as plain paragraphs (blank lines
    split paragraphs, single newlines become hardBreaks), which is enough to read it back.
    """
    content: list[dict[str, Any]] = []
    for paragraph in re.split(r"\n{2,}", text.replace("\r\n", "\n")):
        inline: list[dict[str, Any]] = []
        for index, line in enumerate(paragraph.split("\n")):
            if index:
                inline.append({"type": "hardBreak"})
            if line:
                inline.append({"type": "text", "text": line})
        if inline:
            content.append({"type": "paragraph", "content": inline})
    return {"type": "doc", "version": 1, "content": content}


# --------------------------------------------------------------------------------------------
# JQL: a subset, parsed strictly


class JqlError(ValueError):
    """A JQL query Jira (or the stand-in's subset) refuses; ``str()`` is the message Jira sends."""


# Jira's reserved words: used as a value they must be quoted (FACTS §3: project keys DO and INT).
RESERVED_WORDS = frozenset(
    """
    a an abort access add after alias all alter and any are as asc at audit avg before begin between
    boolean break by byte catch cf char character check checkpoint collate collation column commit
    connect continue count create current date decimal declare decrement default defaults define
    delete delimiter desc difference distinct divide do double drop else empty encoding end equals
    escape exclusive exec execute exists explain false fetch file field first float for from function
    go goto grant greater group having identified if immediate in increment index initial inner inout
    input insert int integer intersect intersection into is isempty isnull join last left less like
    limit lock long max min minus mode modify modulo more multiply next noaudit not notin nowait null
    number object of on option or order outer output power previous prior privileges public raise raw
    remainder rename resource return returns revoke right row rowid rownum rows select session set
    share size sqrt start strict string subtract sum synonym table then to trans transaction trigger
    true uid union unique update user validate values view when whenever where while with
    """.split()
)
# Characters Jira reserves outside quotes (Atlassian's documented list; FACTS §3 found no full list).
RESERVED_CHARACTERS = frozenset("+.,;?|*/%^$#@[]")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "r": "\r", "t": "\t", " ": " "}
_OPERATOR_RE = re.compile(r"!=|!~|>=|<=|=|~|>|<")
_WORD_STOP = frozenset("=!~<>(),\"'")

# JQL field names (lower case) the subset supports, to their canonical names.
_JQL_FIELDS = {
    "project": "project",
    "labels": "labels",
    "status": "status",
    "statuscategory": "statusCategory",
    "resolution": "resolution",
    "issuetype": "issuetype",
    "type": "issuetype",
    "priority": "priority",
    "key": "key",
    "issuekey": "key",
    "issue": "key",
}
_SORT_FIELDS = {"created": "created", "createddate": "created", "updated": "updated", "key": "key", "issuekey": "key"}
# Fields real Jira has that the subset does not search: refused with a clear stand-in message.
_UNSUPPORTED_FIELDS = frozenset(
    """
    summary description text comment environment assignee reporter creator created createddate updated
    updateddate resolutiondate resolved due duedate component fixversion affectedversion sprint parent
    watcher watchers voter votes level statuscategorychangeddate lastviewed id
    """.split()
)
_EMPTY_FIELDS = frozenset({"labels", "resolution"})  # fields that may be EMPTY


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "op", "(", ")", ",", "end"
    text: str
    position: int


@dataclass(frozen=True)
class JqlValue:
    """One operand: a literal (``text``) or the EMPTY/NULL keyword (``empty``)."""

    text: str
    empty: bool = False


@dataclass(frozen=True)
class JqlClause:
    """``field operator value(s)``; ``operator`` is one of = != in "not in" is "is not"."""

    field: str
    operator: str
    values: tuple[JqlValue, ...]
    position: int


@dataclass(frozen=True)
class JqlAnd:
    parts: tuple[JqlNode, ...]


@dataclass(frozen=True)
class JqlOr:
    parts: tuple[JqlNode, ...]


JqlNode = JqlClause | JqlAnd | JqlOr


@dataclass(frozen=True)
class JqlOrder:
    field: str
    descending: bool


@dataclass(frozen=True)
class JqlQuery:
    """A parsed query: ``where`` (None when unbounded) and ``order`` (ORDER BY keys)."""

    where: JqlNode | None
    order: tuple[JqlOrder, ...] = ()


def _where(jql: str, position: int) -> str:
    line = jql.count("\n", 0, position) + 1
    column = position - (jql.rfind("\n", 0, position) + 1) + 1
    return f"(line {line}, character {column})"


def _syntax(jql: str, position: int, message: str) -> JqlError:
    return JqlError(f"Error in the JQL Query: {message} {_where(jql, position)}")


def _tokenize(jql: str) -> list[_Token]:
    tokens: list[_Token] = []
    index, length = 0, len(jql)
    while index < length:
        char = jql[index]
        if char.isspace():
            index += 1
            continue
        if char in "(),":
            tokens.append(_Token(char, char, index))
            index += 1
            continue
        operator = _OPERATOR_RE.match(jql, index)
        if operator is not None:
            tokens.append(_Token("op", operator.group(), index))
            index = operator.end()
            continue
        if char in "\"'":
            text, end = _quoted(jql, index)
            tokens.append(_Token("string", text, index))
            index = end
            continue
        start = index
        while index < length and jql[index] not in _WORD_STOP and not jql[index].isspace():
            if jql[index] in RESERVED_CHARACTERS or jql[index] == "\\":
                shown = jql[index]
                raise _syntax(
                    jql,
                    index,
                    f"The character '{shown}' is a reserved JQL character. You must enclose it in a string "
                    f"or use the escape '\\u{ord(shown):04x}' instead.",
                )
            index += 1
        if index == start:  # a lone '!' and the like
            raise _syntax(jql, index, f"The character '{char}' is not valid here.")
        tokens.append(_Token("word", jql[start:index], start))
    tokens.append(_Token("end", "", length))
    return tokens


def _quoted(jql: str, start: int) -> tuple[str, int]:
    """The value of the string opening at ``start`` (with its escapes), and the index after it."""
    quote = jql[start]
    out: list[str] = []
    index = start + 1
    while index < len(jql):
        char = jql[index]
        if char == quote:
            return "".join(out), index + 1
        if char == "\\":
            escape = jql[index + 1 : index + 2]
            if escape == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", jql[index + 2 : index + 6]):
                out.append(chr(int(jql[index + 2 : index + 6], 16)))
                index += 6
                continue
            if escape not in _ESCAPES:
                raise _syntax(
                    jql,
                    index,
                    f"'\\{escape}' is an illegal JQL escape sequence. The valid escape sequences are "
                    "\\', \\\", \\t, \\n, \\r, \\\\, '\\ ' and \\uXXXX.",
                )
            out.append(_ESCAPES[escape])
            index += 2
            continue
        out.append(char)
        index += 1
    raise _syntax(jql, start, f"The quoted string '{jql[start:]}' has not been completed.")


class _Parser:
    def __init__(self, jql: str) -> None:
        self.jql = jql
        self.tokens = _tokenize(jql)
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_word(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.text.lower() in words

    def fail(self, message: str, token: _Token | None = None) -> JqlError:
        token = token or self.token
        return _syntax(self.jql, token.position, message)

    @staticmethod
    def shown(token: _Token) -> str:
        return "end of the query" if token.kind == "end" else f"'{token.text}'"

    def query(self) -> JqlQuery:
        where: JqlNode | None = None
        if self.token.kind != "end" and not self.at_word("order"):
            where = self.disjunction()
        order: list[JqlOrder] = []
        if self.at_word("order"):
            self.advance()
            if not self.at_word("by"):
                raise self.fail(f"Expecting 'by' but got {self.shown(self.token)}.")
            self.advance()
            order.append(self.sort_key())
            while self.token.kind == ",":
                self.advance()
                order.append(self.sort_key())
        if self.token.kind != "end":
            raise self.fail(f"Expecting either 'OR' or 'AND' but got {self.shown(self.token)}.")
        return JqlQuery(where, tuple(order))

    def disjunction(self) -> JqlNode:
        parts = [self.conjunction()]
        while self.at_word("or"):
            self.advance()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else JqlOr(tuple(parts))

    def conjunction(self) -> JqlNode:
        parts = [self.unary()]
        while self.at_word("and"):
            self.advance()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else JqlAnd(tuple(parts))

    def unary(self) -> JqlNode:
        if self.token.kind == "(":
            self.advance()
            node = self.disjunction()
            if self.token.kind != ")":
                raise self.fail(f"Expecting ')' but got {self.shown(self.token)}.")
            self.advance()
            return node
        if self.at_word("not"):
            raise self.fail("The sandbox stand-in does not support NOT; write the clause with != or NOT IN.")
        return self.clause()

    def field_name(self) -> tuple[str, _Token]:
        token = self.advance()
        if token.kind not in ("word", "string") or (token.kind == "word" and token.text.lower() in RESERVED_WORDS):
            raise self.fail(f"Expecting a field name but got {self.shown(token)}.", token)
        return token.text, token

    def clause(self) -> JqlClause:
        name, token = self.field_name()
        lowered = name.lower()
        if self.token.kind == "(":
            raise self.fail("The sandbox stand-in does not support JQL functions.", token)
        canonical = _JQL_FIELDS.get(lowered)
        if canonical is None:
            if lowered in _UNSUPPORTED_FIELDS or lowered.startswith("cf["):
                raise JqlError(
                    f"The sandbox stand-in does not search the field '{name}'; it supports "
                    f"{', '.join(sorted(set(_JQL_FIELDS.values())))}."
                )
            raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
        operator = self.operator(canonical)
        if operator in ("in", "not in"):
            values = self.value_list()
        elif operator in ("is", "is not"):
            keyword = self.advance()
            if not (keyword.kind == "word" and keyword.text.lower() in ("empty", "null")):
                raise self.fail(f"Expecting 'EMPTY' or 'NULL' but got {self.shown(keyword)}.", keyword)
            values = (JqlValue("", empty=True),)
        else:
            values = (self.value(),)
        if any(value.empty for value in values) and canonical not in _EMPTY_FIELDS:
            raise JqlError(f"The field '{canonical}' does not support searching for EMPTY values.")
        return JqlClause(canonical, operator, values, token.position)

    def operator(self, field: str) -> str:
        token = self.advance()
        if token.kind == "op":
            if token.text in ("=", "!="):
                return token.text
            raise JqlError(f"The operator '{token.text}' is not supported by the '{field}' field.")
        if token.kind == "word":
            word = token.text.lower()
            if word in ("in", "is"):
                if word == "is" and self.at_word("not"):
                    self.advance()
                    return "is not"
                return word
            if word == "not" and self.at_word("in"):
                self.advance()
                return "not in"
            if word in ("was", "changed"):
                raise JqlError(f"The operator '{token.text.upper()}' is not supported by the sandbox stand-in.")
        raise self.fail(
            f"Expecting operator but got {self.shown(token)}. The valid operators are '=', '!=', '<', '>', "
            "'<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' and 'IS NOT'.",
            token,
        )

    def value(self) -> JqlValue:
        token = self.advance()
        if token.kind == "string":
            return JqlValue(token.text)
        if token.kind != "word":
            raise self.fail(f"Expecting either a value, list or function but got {self.shown(token)}.", token)
        lowered = token.text.lower()
        if lowered in ("empty", "null"):
            return JqlValue("", empty=True)
        if lowered in RESERVED_WORDS:
            raise self.fail(
                f"'{token.text}' is a reserved JQL word. You must surround it in quotation marks to use it in a query.",
                token,
            )
        if self.token.kind == "(":
            raise self.fail("The sandbox stand-in does not support JQL functions.", token)
        return JqlValue(token.text)

    def value_list(self) -> tuple[JqlValue, ...]:
        if self.token.kind != "(":
            raise self.fail(f"Expecting '(' but got {self.shown(self.token)}.")
        self.advance()
        values = [self.value()]
        while self.token.kind == ",":
            self.advance()
            values.append(self.value())
        if self.token.kind != ")":
            raise self.fail(f"Expecting ')' but got {self.shown(self.token)}.")
        self.advance()
        return tuple(values)

    def sort_key(self) -> JqlOrder:
        name, _ = self.field_name()
        canonical = _SORT_FIELDS.get(name.lower())
        if canonical is None:
            if name.lower() in _JQL_FIELDS or name.lower() in _UNSUPPORTED_FIELDS:
                raise JqlError(f"The sandbox stand-in orders by created, updated or key only, not '{name}'.")
            raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
        descending = False
        if self.at_word("asc", "desc"):
            descending = self.advance().text.lower() == "desc"
        return JqlOrder(canonical, descending)


def parse_jql(jql: str) -> JqlQuery:
    """Parse the stand-in's JQL subset; raise :class:`JqlError` for anything outside it.

    Clauses: ``project``, ``labels``, ``status``, ``statusCategory``, ``resolution``,
    ``issuetype``, ``priority`` and ``key`` with ``=``, ``!=``, ``IN``, ``NOT IN``, and ``IS [NOT]
    EMPTY`` (labels and resolution); ``AND``, ``OR`` and parentheses; ``ORDER BY created``,
    ``updated`` or ``key`` with ``ASC``/``DESC``. Values are words or quoted strings (``"..."`` or
    ``'...'`` with ``\\"``, ``\\'``, ``\\\\``, ``\\n``, ``\\t``, ``\\r``, ``\\ `` and ``\\uXXXX``
    escapes); reserved words and reserved characters must be quoted. ``NOT``, functions, text
    search and history operators are refused, never ignored.
    """
    return _Parser(jql).query()


# --------------------------------------------------------------------------------------------
# Store


@dataclass
class _Comment:
    id: int
    body: Any  # an ADF document (v3) or a wiki-markup string (v2, servicedeskapi)
    internal: bool
    created: float
    properties: list[dict[str, Any]] = field(default_factory=list)
    visibility: dict[str, Any] | None = None


@dataclass
class _Issue:
    id: int
    key: str
    project: str
    issuetype: str
    summary: str
    description: Any  # an ADF document, a wiki-markup string, or None
    labels: list[str]
    priority: str
    status: str
    resolution: str | None
    created: float
    updated: float
    resolutiondate: float | None
    comments: list[_Comment] = field(default_factory=list)
    custom: dict[str, str | None] = field(default_factory=dict)  # text custom fields by id

    @property
    def number(self) -> int:
        return int(self.key.rpartition("-")[2])


@dataclass(frozen=True)
class _Project:
    id: str
    key: str
    name: str
    issue_types: tuple[str, ...]


def _timestamp(seconds: float) -> str:
    """Jira's date-time format: ``2026-11-26T10:00:00.000+0000``."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _canonical_labels(labels: Iterable[str]) -> list[str]:
    # Jira keeps an issue's labels as a set and returns them sorted, as best we know.
    return sorted(set(labels))


# --------------------------------------------------------------------------------------------
# The stand-in


class JiraStandIn(LoopbackStandIn):
    """A Jira Service Management site on loopback, for tests, the demo and ``serve --sandbox``.

    ``JiraStandIn(host="127.0.0.1", port=0, *, deployment="cloud" | "datacenter",
    email="bridge@example.com", api_token="sandbox-jira-token",
    personal_access_token="sandbox-jira-pat", projects={"OPS": ("Incident", "Task")},
    clock=time.time)``; port 0 picks a free port. ``start()`` returns self; ``stop()`` is prompt;
    a ``stop()`` then ``start()`` comes back on the same port; it is a context manager too;
    ``url`` is the base URL. Cloud takes ``Authorization: Basic base64(email:api_token)``, Data
    Center ``Authorization: Bearer <personal_access_token>``.

    Inspect and seed: ``issues()`` (copies, oldest first: ``{"id", "key", "fields": {"project",
    "issuetype", "summary", "description", "labels", "priority", "status", "statusCategory",
    "resolution", "created", "updated", "resolutiondate"}}`` with names, not Jira objects),
    ``issue(key)``, ``comments(key)`` (``[{"id", "body", "internal", "created"}]``, oldest first),
    ``insert_issue(...)`` (no screen checks), ``set_status(key, status, resolution="Done")`` (a
    person moving the issue), ``requests`` (a list of :class:`RequestRecord`), ``reset()``
    (issues, counters, faults and the request log cleared). ``faults`` is the shared
    :class:`FaultInjector` (see :mod:`bridge.sandbox.common`); injected statuses answer with
    Jira's error body.

    Projects map a project key to its issue types; project ids count from 10000, issue keys per
    project from 1 (``OPS-1``), issue and comment ids from 10000.

    ``custom_fields`` (``{"customfield_10060": "Root cause"}``) are single-line text fields on the
    create and edit screens; those also named in ``resolution_screen_fields`` are on the screens of
    the transitions that ask for a resolution too. Snapshots show them under their ids.

    The workflow is Jira's classic one: Open and In Progress go to Resolved ("Resolve Issue") or
    Closed ("Close Issue", id 2), both with a resolution screen; Resolved goes to Closed ("Close
    Issue", id 701, no screen, keeping the resolution) or back to Open ("Reopen Issue", whose
    post-function clears the resolution), and so does Closed. A Closed issue is not editable.
    """

    display_name = "Jira"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        deployment: str = "cloud",
        email: str = "bridge@example.com",
        api_token: str = "sandbox-jira-token",  # noqa: S107 - the sandbox's own, printed by design
        personal_access_token: str = "sandbox-jira-pat",  # noqa: S107
        projects: Mapping[str, Sequence[str]] | None = None,
        custom_fields: Mapping[str, str] | None = None,
        resolution_screen_fields: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if deployment not in DEPLOYMENTS:
            raise ValueError(f"deployment must be one of {', '.join(DEPLOYMENTS)}, not {deployment!r}")
        self._custom_fields = dict(custom_fields or {})
        if any(not _CUSTOM_FIELD_ID.fullmatch(name) for name in self._custom_fields):
            raise ValueError("custom field ids look like customfield_10060")
        if not set(resolution_screen_fields) <= set(self._custom_fields):
            raise ValueError("resolution_screen_fields must be ids of custom_fields")
        self._resolution_screen = frozenset({"resolution", *resolution_screen_fields})
        super().__init__(host, port)
        self.deployment = deployment
        # What each deployment's front end says it is (not in FACTS; informational only).
        self.server_header = "AtlassianEdge" if deployment == "cloud" else "Apache-Coyote/1.1"
        self._email = email
        self._api_token = api_token
        self._pat = personal_access_token
        self._clock = clock
        self._projects: dict[str, _Project] = {}
        type_ids: dict[str, str] = {}
        for index, (key, types) in enumerate((projects or {"OPS": ("Incident", "Task")}).items()):
            if not re.fullmatch(r"[A-Z][A-Z0-9_]+", key):
                raise ValueError(f"project key {key!r} must be upper-case letters, digits or _ (two or more)")
            if not types or any(not isinstance(name, str) or not name for name in types):
                raise ValueError(f"project {key} needs at least one issue type name")
            for name in types:
                type_ids.setdefault(name, str(10001 + len(type_ids)))
            self._projects[key] = _Project(str(10000 + index), key, key, tuple(types))
        self._type_ids = type_ids
        self._lock = threading.RLock()
        self._issues: dict[int, _Issue] = {}
        self._by_key: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._next_issue_id = 10000
        self._next_comment_id = 10000

    # -- inspection and seeding ----------------------------------------------------------

    @property
    def cloud(self) -> bool:
        return self.deployment == "cloud"

    def issues(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._snapshot(issue) for issue in sorted(self._issues.values(), key=lambda i: i.id)]

    def issue(self, key: str) -> dict[str, Any]:
        with self._lock:
            return self._snapshot(self._require(key))

    def comments(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            issue = self._require(key)
            return [
                {
                    "id": str(comment.id),
                    "body": json.loads(json.dumps(comment.body)),
                    "internal": comment.internal,
                    "created": _timestamp(comment.created),
                }
                for comment in issue.comments
            ]

    def insert_issue(
        self,
        project: str = "OPS",
        summary: str = "Seeded issue",
        *,
        issue_type: str | None = None,
        description: Any = None,
        labels: Sequence[str] = (),
        priority: str = DEFAULT_PRIORITY,
        status: str = "Open",
        resolution: str | None = None,
        created: float | None = None,
    ) -> dict[str, Any]:
        """Add an issue as a seed, without screens or validation beyond names (a Closed issue
        without a resolution is possible, as on real sites). Returns its snapshot."""
        if project not in self._projects:
            raise ValueError(f"unknown project {project!r}; the stand-in has {', '.join(self._projects)}")
        types = self._projects[project].issue_types
        issue_type = issue_type or types[0]
        if issue_type not in types:
            raise ValueError(f"project {project} has no issue type {issue_type!r}")
        if priority not in PRIORITIES or status not in STATUSES or (resolution and resolution not in RESOLUTIONS):
            raise ValueError("unknown priority, status or resolution")
        if isinstance(description, Mapping):
            validate_adf(description)  # AdfError is a ValueError
        elif description is not None and not isinstance(description, str):
            raise ValueError("a description is an ADF document, a wiki-markup string or None")
        with self._lock:
            now = self._clock() if created is None else created
            issue = self._new_issue(project, issue_type, summary, description, list(labels), priority, now)
            issue.status = status
            issue.resolution = resolution
            issue.resolutiondate = now if resolution else None
            return self._snapshot(issue)

    def set_status(self, key: str, status: str, resolution: str | None = "Done") -> dict[str, Any]:
        """Move an issue to ``status`` as a person would; a done status gets ``resolution``,
        any other status loses its resolution."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; the workflow has {', '.join(STATUSES)}")
        if resolution is not None and resolution not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {resolution!r}")
        with self._lock:
            issue = self._require(key)
            now = self._clock()
            issue.status = status
            if STATUSES[status].category == "done":
                issue.resolution = resolution
                issue.resolutiondate = now if resolution else None
            else:
                issue.resolution = issue.resolutiondate = None
            issue.updated = now
            return self._snapshot(issue)

    def reset(self) -> None:
        with self._lock:
            self._issues.clear()
            self._by_key.clear()
            self._counters.clear()
            self._next_issue_id = self._next_comment_id = 10000
        self.faults.clear()
        self._clear_requests()

    def _require(self, key: str) -> _Issue:
        issue_id = self._by_key.get(key.upper())
        if issue_id is None:
            raise KeyError(f"no issue {key}")
        return self._issues[issue_id]

    def _snapshot(self, issue: _Issue) -> dict[str, Any]:
        return {
            "id": str(issue.id),
            "key": issue.key,
            "fields": {
                "project": issue.project,
                "issuetype": issue.issuetype,
                "summary": issue.summary,
                "description": json.loads(json.dumps(issue.description)),
                "labels": list(issue.labels),
                "priority": issue.priority,
                "status": issue.status,
                "statusCategory": STATUSES[issue.status].category,
                "resolution": issue.resolution,
                "created": _timestamp(issue.created),
                "updated": _timestamp(issue.updated),
                "resolutiondate": _timestamp(issue.resolutiondate) if issue.resolutiondate else None,
                **{name: issue.custom.get(name) for name in self._custom_fields},
            },
        }

    def _new_issue(
        self,
        project: str,
        issue_type: str,
        summary: str,
        description: Any,
        labels: list[str],
        priority: str,
        now: float,
    ) -> _Issue:
        """Allocate id and key and store the issue; the caller holds the lock."""
        number = self._counters.get(project, 0) + 1
        self._counters[project] = number
        issue = _Issue(
            id=self._next_issue_id,
            key=f"{project}-{number}",
            project=project,
            issuetype=issue_type,
            summary=summary,
            description=description,
            labels=_canonical_labels(labels),
            priority=priority,
            status="Open",
            resolution=None,
            created=now,
            updated=now,
            resolutiondate=None,
        )
        self._next_issue_id += 1
        self._issues[issue.id] = issue
        self._by_key[issue.key] = issue.id
        return issue

    # -- LoopbackStandIn hooks -----------------------------------------------------------

    def _fault_body(self, status: int) -> Any:
        # Jira's error shape; the exact text of a real 429 body is not in FACTS.
        message = "Rate limit exceeded." if status == 429 else f"Injected fault: HTTP {status} {status_phrase(status)}"
        return _error_body([message])

    def _internal_error(self) -> Response:
        return Response.of_json(500, _error_body(["Internal server error"]))

    def _handle(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        try:
            return self._route(method, path.rstrip("/") or "/", query, headers, body)
        except _ApiError as error:
            return error.response()

    # -- routing -------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        if not path.startswith("/rest/"):
            raise _jira_error(404, f"No resource at {path}")  # stand-in wording
        self._authenticate(headers)
        if path.startswith("/rest/servicedeskapi/"):
            match = re.fullmatch(r"/rest/servicedeskapi/request/([^/]+)/comment", path)
            if match is None:
                raise _jira_error(404, f"No resource at {path}")
            _allow(method, "POST")
            return self._servicedesk_comment(match[1], headers, body)
        match = re.fullmatch(r"/rest/api/(2|3|latest)(/.*)?", path)
        if match is None or (match[1] == "3" and not self.cloud):
            raise _jira_error(404, f"No resource at {path}")  # Data Center has no v3 [FACTS §1]
        version, rest = match[1], match[2] or ""
        adf = version == "3"
        if rest == "/issue":
            _allow(method, "POST")
            return self._create(version, adf, headers, body)
        if rest in ("/search", "/search/jql"):
            return self._search(rest, method, version, adf, query, headers, body)
        if rest == "/myself":
            _allow(method, "GET")
            return Response.of_json(200, self._user())
        if rest == "/priority":
            _allow(method, "GET")
            return Response.of_json(200, [self._priority_json(name) for name in PRIORITIES])
        if rest == "/resolution":
            _allow(method, "GET")
            return Response.of_json(200, [self._resolution_json(name) for name in RESOLUTIONS])
        issue_match = re.fullmatch(r"/issue/([^/]+)(/comment|/transitions)?", rest)
        if issue_match is None:
            raise _jira_error(404, f"No resource at {path}")
        target, sub = issue_match[1], issue_match[2]
        if sub is None:
            _allow(method, "GET, PUT")
            if method == "GET":
                return self._get_issue(target, version, adf, query)
            return self._edit(target, adf, headers, body)
        if sub == "/comment":
            _allow(method, "GET, POST")
            if method == "GET":
                return self._list_comments(target, version, adf, query)
            return self._add_comment(target, version, adf, headers, body)
        _allow(method, "GET, POST")
        if method == "GET":
            return self._list_transitions(target, version, query)
        return self._transition(target, headers, body)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        header = headers.get("authorization") or ""
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if self.cloud and scheme.lower() == "basic":
            decoded = _decode_basic(credential)
            if decoded is not None and _same(decoded[0], self._email) and _same(decoded[1], self._api_token):
                return
        if not self.cloud and scheme.lower() == "bearer" and _same(credential, self._pat):
            return
        # The text is Jira's as best we know (some edges answer "Client must be authenticated to
        # access this resource." instead); X-Seraph-LoginReason says presented credentials failed.
        extra = {"X-Seraph-LoginReason": "AUTHENTICATED_FAILED"} if header else {}
        raise _jira_error(401, NOT_AUTHENTICATED, headers=extra)

    # -- issues --------------------------------------------------------------------------

    def _create(self, version: str, adf: bool, headers: Mapping[str, str], body: bytes) -> Response:
        payload = _json_object(headers, body)
        fields = self._top_level(payload, ("fields", "update"))
        values = self._validate_fields(fields, _CREATE_SCREEN | set(self._custom_fields), adf=adf, creating=True)
        with self._lock:
            issue = self._new_issue(
                values["project"],
                values["issuetype"],
                values["summary"],
                values.get("description"),
                values.get("labels", []),
                values.get("priority", DEFAULT_PRIORITY),
                self._clock(),
            )
            issue.custom.update({name: values[name] for name in self._custom_fields if name in values})
            reply = {"id": str(issue.id), "key": issue.key, "self": self._issue_url(version, issue)}
        return Response.of_json(201, reply)

    def _edit(self, target: str, adf: bool, headers: Mapping[str, str], body: bytes) -> Response:
        payload = _json_object(headers, body)
        fields = self._top_level(payload, ("fields", "update"))
        with self._lock:
            issue = self._find(target)
            screen = frozenset() if issue.status in _NOT_EDITABLE else _EDIT_SCREEN | set(self._custom_fields)
            values = self._validate_fields(fields, screen, adf=adf, creating=False)
            for name, value in values.items():
                if name in self._custom_fields:
                    issue.custom[name] = value
                else:
                    setattr(issue, name, _canonical_labels(value) if name == "labels" else value)
            if values:
                issue.updated = self._clock()
        return Response(204)

    @staticmethod
    def _top_level(payload: Mapping[str, Any], allowed: Sequence[str]) -> Mapping[str, Any]:
        for name in payload:
            if name not in allowed:
                raise _jira_error(400, f'Unrecognized field "{name}"')  # stand-in wording
        if payload.get("update"):
            # Jira's "update" operations (add/remove/set) are not in the subset: refused, not ignored.
            raise _jira_error(400, "The sandbox stand-in does not support 'update' operations; use 'fields'.")
        fields = payload.get("fields", {})
        if not isinstance(fields, Mapping):
            raise _jira_error(400, "'fields' must be an object")  # stand-in wording
        return fields

    def _validate_fields(
        self, fields: Mapping[str, Any], screen: frozenset[str], *, adf: bool, creating: bool
    ) -> dict[str, Any]:
        """The stored values of ``fields``, or a 400 listing every field's error, as Jira does."""
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        for name in fields:
            if name not in screen:
                errors[name] = NOT_ON_SCREEN.format(name)
        if creating:
            project = self._resolve_project(fields.get("project"))
            if project is None:
                errors["project"] = "Specify a valid project ID or key"
            else:
                values["project"] = project.key
                issue_type = self._resolve_issue_type(project, fields.get("issuetype"))
                if issue_type is None:
                    has_type = fields.get("issuetype") is not None
                    errors["issuetype"] = "The issue type selected is invalid." if has_type else "Specify an issue type"
                else:
                    values["issuetype"] = issue_type
            if "project" in errors or "issuetype" in errors:
                # Jira checks the screens of a valid project and type only.
                raise _jira_error(400, errors={k: v for k, v in errors.items() if k in ("project", "issuetype")})
        if "summary" in fields or creating:
            summary = fields.get("summary")
            if not isinstance(summary, str) and summary is not None:
                errors["summary"] = NOT_A_STRING
            elif summary is None or not summary.strip():
                errors["summary"] = SUMMARY_REQUIRED
            elif len(summary) > SUMMARY_MAX:
                errors["summary"] = SUMMARY_TOO_LONG
            elif "\n" in summary or "\r" in summary:
                errors["summary"] = SUMMARY_NEWLINE
            else:
                values["summary"] = summary
        if "description" in fields and "description" in screen:
            description = fields["description"]
            problem = _text_problem(description, adf=adf, invalid=None)
            if problem is not None:
                errors["description"] = problem
            else:
                values["description"] = description
        if "labels" in fields and "labels" in screen:
            labels = fields["labels"]
            if not isinstance(labels, list) or any(not isinstance(label, str) for label in labels):
                errors["labels"] = LABELS_NOT_STRINGS
            else:
                problem = next((p for p in map(_label_problem, labels) if p), None)
                if problem is not None:
                    errors["labels"] = problem
                else:
                    values["labels"] = labels
        if "priority" in fields and "priority" in screen:
            priority = _resolve_named(fields["priority"], PRIORITIES)
            if priority is None:
                errors["priority"] = "Specify the Priority (id or name) in the valid format"  # as best we know
            else:
                values["priority"] = priority
        errors.update(self._custom_values(fields, screen, values))
        if errors:
            raise _jira_error(400, errors=errors)
        return values

    def _custom_values(
        self, fields: Mapping[str, Any], screen: Iterable[str], values: dict[str, Any]
    ) -> dict[str, str]:
        """Put the text custom fields of ``fields`` that are on ``screen`` into ``values``; their errors."""
        errors: dict[str, str] = {}
        for name in set(fields) & set(screen) & set(self._custom_fields):
            value = fields[name]
            if value is not None and not isinstance(value, str):
                errors[name] = NOT_A_STRING
            elif value is not None and len(value) > TEXT_FIELD_MAX:
                # The text is Jira's as best we know.
                errors[name] = TEXT_TOO_LONG.replace("32,767", str(TEXT_FIELD_MAX))
            else:
                values[name] = value
        return errors

    def _resolve_project(self, value: Any) -> _Project | None:
        if not isinstance(value, Mapping):
            return None
        key, project_id = value.get("key"), value.get("id")
        for project in self._projects.values():
            if (isinstance(key, str) and key.upper() == project.key) or str(project_id) == project.id:
                return project
        return None

    def _resolve_issue_type(self, project: _Project, value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return None
        name, type_id = value.get("name"), value.get("id")
        for type_name in project.issue_types:
            if name == type_name or (type_id is not None and str(type_id) == self._type_ids[type_name]):
                return type_name
        return None

    def _find(self, target: str) -> _Issue:
        """An issue by id or key (keys are case-insensitive, as in Jira); 404 otherwise."""
        with self._lock:
            issue_id = int(target) if target.isdigit() else self._by_key.get(target.upper())
            issue = self._issues.get(issue_id) if issue_id is not None else None
        if issue is None:
            raise _not_found()
        return issue

    def _get_issue(self, target: str, version: str, adf: bool, query: Mapping[str, str]) -> Response:
        names = _select_fields(_split(query.get("fields")), default="*all", custom=tuple(self._custom_fields))
        with self._lock:
            return Response.of_json(200, self._issue_json(self._find(target), version, adf, names))

    # -- search --------------------------------------------------------------------------

    def _search(
        self,
        rest: str,
        method: str,
        version: str,
        adf: bool,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        _allow(method, "GET, POST")
        if rest == "/search":
            if self.cloud:
                raise _jira_error(410, SEARCH_REMOVED)  # retired on Cloud [FACTS §3]
            return self._legacy_search(method, version, query, headers, body)
        if not self.cloud:
            raise _jira_error(404, "No resource at /rest/api/2/search/jql")  # not on Data Center [FACTS §3]
        return self._jql_search(method, version, adf, query, headers, body)

    def _jql_search(
        self, method: str, version: str, adf: bool, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        """``/search/jql``: token pagination, ``isLast``, no ``total``; only ids without ``fields``."""
        if method == "POST":
            payload = _json_object(headers, body)
            allowed = {"jql", "nextPageToken", "maxResults", "fields", "expand", "properties", "fieldsByKeys"}
            allowed |= {"failFast", "reconcileIssues"}
            for name in payload:
                if name not in allowed:
                    raise _jira_error(400, f'Unrecognized field "{name}"')  # stand-in wording
            jql, fields = payload.get("jql", ""), payload.get("fields")
            max_results, token = payload.get("maxResults", SEARCH_DEFAULT_PAGE), payload.get("nextPageToken")
            reconcile = payload.get("reconcileIssues", [])
        else:
            jql, fields, token = query.get("jql", ""), _split(query.get("fields")), query.get("nextPageToken")
            max_results = _int_param(query.get("maxResults"), SEARCH_DEFAULT_PAGE, "maxResults")
            reconcile = [_int_param(part, 0, "reconcileIssues") for part in _split(query.get("reconcileIssues")) or []]
        if not isinstance(jql, str):
            raise _jira_error(400, "jql must be a string")  # stand-in wording
        if fields is not None and (not isinstance(fields, list) or any(not isinstance(f, str) for f in fields)):
            raise _jira_error(400, "fields must be a list of strings")  # stand-in wording
        if type(max_results) is not int or max_results < 1:
            raise _jira_error(400, "maxResults must be a positive integer")  # stand-in wording
        if (
            not isinstance(reconcile, list)
            or len(reconcile) > RECONCILE_MAX
            or any(type(issue_id) is not int for issue_id in reconcile)
        ):
            raise _jira_error(400, f"reconcileIssues takes at most {RECONCILE_MAX} issue ids")  # stand-in wording
        if token is not None and not isinstance(token, str):
            raise _jira_error(400, "nextPageToken must be a string")  # stand-in wording
        parsed = self._parse(jql)
        if parsed.where is None:
            raise _jira_error(400, UNBOUNDED_JQL)
        ids_only = not fields
        limit = min(max_results, SEARCH_MAX_IDS if ids_only else SEARCH_MAX_ISSUES)
        offset = _page_offset(token, jql) if token else 0
        names = _select_fields(fields, default="*navigable", custom=tuple(self._custom_fields)) if fields else []
        # The stand-in's search is read-after-write consistent; real Jira's is eventually
        # consistent (reconcileIssues helps for up to 50 ids) [FACTS §3], so a client must not
        # rely on finding an issue it has just created.
        with self._lock:
            found = self._select(parsed)
            page = found[offset : offset + limit]
            rendered = [
                {"id": str(issue.id)} if ids_only else self._issue_json(issue, version, adf, names) for issue in page
            ]
        reply: dict[str, Any] = {"issues": rendered, "isLast": offset + limit >= len(found)}
        if not reply["isLast"]:
            reply["nextPageToken"] = _page_token(offset + limit, jql)  # the last page has none [FACTS §3]
        return Response.of_json(200, reply)

    def _legacy_search(
        self, method: str, version: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Data Center's ``/rest/api/2/search``: ``startAt``/``maxResults``/``total``."""
        if method == "POST":
            payload = _json_object(headers, body)
            jql, fields = payload.get("jql", ""), payload.get("fields")
            start_at, max_results = payload.get("startAt", 0), payload.get("maxResults", SEARCH_DEFAULT_PAGE)
        else:
            jql, fields = query.get("jql", ""), _split(query.get("fields"))
            start_at = _int_param(query.get("startAt"), 0, "startAt")
            max_results = _int_param(query.get("maxResults"), SEARCH_DEFAULT_PAGE, "maxResults")
        if not isinstance(jql, str) or (
            fields is not None and (not isinstance(fields, list) or any(not isinstance(f, str) for f in fields))
        ):
            raise _jira_error(400, "jql must be a string and fields a list of strings")  # stand-in wording
        if type(start_at) is not int or start_at < 0 or type(max_results) is not int or max_results < 0:
            raise _jira_error(400, "startAt and maxResults must be non-negative integers")  # stand-in wording
        parsed = self._parse(jql)  # unbounded queries are allowed here
        limit = min(max_results, DC_SEARCH_MAX)
        # The old search returns fields by default.
        names = _select_fields(fields, default="*navigable", custom=tuple(self._custom_fields))
        with self._lock:
            found = self._select(parsed)
            page = [self._issue_json(issue, version, False, names) for issue in found[start_at : start_at + limit]]
        reply = {"expand": "schema,names", "startAt": start_at, "maxResults": limit, "total": len(found)}
        return Response.of_json(200, {**reply, "issues": page})

    def _parse(self, jql: str) -> JqlQuery:
        try:
            parsed = parse_jql(jql)
            if parsed.where is not None:
                with self._lock:
                    self._check_values(parsed.where)
        except JqlError as error:
            raise _jira_error(400, str(error)) from None
        return parsed

    def _check_values(self, node: JqlNode) -> None:
        """Refuse values that name nothing, as Jira does (an unknown status is an error, not no match)."""
        if isinstance(node, JqlAnd | JqlOr):
            for part in node.parts:
                self._check_values(part)
            return
        for value in node.values:
            if value.empty:
                continue
            if node.field == "key":
                by_id = value.text.isdigit() and int(value.text) in self._issues
                if value.text.upper() not in self._by_key and not by_id:
                    raise JqlError(f"An issue with key '{value.text}' does not exist for field 'key'.")
            elif node.field != "labels" and not self._known_value(node.field, value.text):
                raise JqlError(f"The value '{value.text}' does not exist for the field '{node.field}'.")

    def _known_value(self, name: str, text: str) -> bool:
        folded = text.casefold()
        if name == "project":
            return any(folded in (p.key.casefold(), p.id, p.name.casefold()) for p in self._projects.values())
        if name == "status":
            return any(folded in (s.name.casefold(), s.id) for s in STATUSES.values())
        if name == "statusCategory":
            return any(folded in (c.key, c.name.casefold(), str(c.id)) for c in _CATEGORIES.values())
        if name == "resolution":
            return folded == "unresolved" or any(folded in (n.casefold(), i) for n, i in RESOLUTIONS.items())
        if name == "issuetype":
            return any(folded in (n.casefold(), i) for n, i in self._type_ids.items())
        return any(folded in (n.casefold(), i) for n, i in PRIORITIES.items())  # priority

    def _select(self, parsed: JqlQuery) -> list[_Issue]:
        """Matching issues in ORDER BY order; without ORDER BY, newest id first.

        Real Jira's order without ORDER BY is not specified; a client must give one.
        """
        where = parsed.where
        found = [issue for issue in self._issues.values() if where is None or _matches(where, issue, self)]
        # Ties follow the first sort key's direction by id, so "created ASC" lists same-second
        # issues oldest first too.
        found.sort(key=lambda issue: issue.id, reverse=parsed.order[0].descending if parsed.order else True)
        for order in reversed(parsed.order):
            found.sort(key=_sort_key(order.field), reverse=order.descending)
        return found

    def _facts(self, issue: _Issue, name: str) -> list[str]:
        """The values a clause on ``name`` compares against (empty list: the field is EMPTY)."""
        if name == "project":
            project = self._projects[issue.project]
            return [project.key, project.id, project.name]
        if name == "labels":
            return list(issue.labels)
        if name == "status":
            return [issue.status, STATUSES[issue.status].id]
        if name == "statusCategory":
            category = _CATEGORIES[STATUSES[issue.status].category]
            return [category.key, category.name, str(category.id)]
        if name == "resolution":
            return [issue.resolution, RESOLUTIONS[issue.resolution]] if issue.resolution else []
        if name == "issuetype":
            return [issue.issuetype, self._type_ids[issue.issuetype]]
        if name == "priority":
            return [issue.priority, PRIORITIES[issue.priority]]
        return [issue.key, str(issue.id)]  # key

    # -- comments ------------------------------------------------------------------------

    def _add_comment(self, target: str, version: str, adf: bool, headers: Mapping[str, str], body: bytes) -> Response:
        payload = _json_object(headers, body)
        for name in payload:
            if name not in ("body", "properties", "visibility"):
                raise _jira_error(400, f'Unrecognized field "{name}"')  # stand-in wording
        problem = _text_problem(payload.get("body"), adf=adf, invalid=COMMENT_NOT_VALID, required=True)
        if problem is not None:
            raise _jira_error(400, errors={"comment": problem})
        properties = payload.get("properties", [])
        if not isinstance(properties, list) or any(
            not isinstance(p, Mapping) or not isinstance(p.get("key"), str) for p in properties
        ):
            raise _jira_error(400, "properties must be a list of {key, value} objects")  # stand-in wording
        visibility = payload.get("visibility")
        if visibility is not None and not isinstance(visibility, Mapping):
            raise _jira_error(400, "visibility must be an object")  # stand-in wording
        internal = any(
            p["key"] == INTERNAL_PROPERTY and isinstance(p.get("value"), Mapping) and p["value"].get("internal") is True
            for p in properties
        )
        with self._lock:
            issue = self._find(target)
            comment = self._append_comment(issue, payload["body"], internal)
            comment.properties = [dict(p) for p in properties]
            comment.visibility = dict(visibility) if visibility is not None else None
            reply = self._comment_json(issue, comment, version, adf)
        return Response.of_json(201, reply)

    def _append_comment(self, issue: _Issue, body: Any, internal: bool) -> _Comment:
        now = self._clock()
        comment = _Comment(self._next_comment_id, body, internal, now)
        self._next_comment_id += 1
        issue.comments.append(comment)
        issue.updated = now
        return comment

    def _list_comments(self, target: str, version: str, adf: bool, query: Mapping[str, str]) -> Response:
        start_at = _int_param(query.get("startAt"), 0, "startAt")
        max_results = _int_param(query.get("maxResults"), COMMENTS_DEFAULT_PAGE, "maxResults")
        order = query.get("orderBy", "created").strip()
        if order not in ("created", "+created", "-created"):
            raise _jira_error(400, f"orderBy must be created, +created or -created, not {order!r}")  # stand-in
        with self._lock:
            issue = self._find(target)
            comments = sorted(issue.comments, key=lambda c: (c.created, c.id), reverse=order == "-created")
            expand = _split(query.get("expand")) or []
            page = [
                self._comment_json(issue, comment, version, adf, properties="properties" in expand)
                for comment in comments[start_at : start_at + max_results]
            ]
            reply = {"comments": page, "maxResults": max_results, "total": len(comments), "startAt": start_at}
        return Response.of_json(200, reply)

    def _servicedesk_comment(self, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """``POST /rest/servicedeskapi/request/{key}/comment`` ``{"body": text, "public": bool}``.

        The body is plain text (wiki markup), on Cloud and Data Center alike [FACTS §4]. Every
        issue of the stand-in's projects counts as a customer request here; on a real site an
        issue without a request type may be refused (not in FACTS).
        """
        try:
            payload = _json_object(headers, body)
        except _ApiError as error:
            if error.status != 400:
                raise
            raise _servicedesk_error(400, "The request body is not valid JSON.", "sd.rest.invalid.json") from None
        text, public = payload.get("body"), payload.get("public", True)
        # A missing "public" is taken as public, so a client that forgets it is caught in tests
        # by a customer-visible comment (Jira's own default is not in FACTS).
        if not isinstance(text, str) or not text.strip():
            raise _servicedesk_error(400, "The comment body is required.", "sd.comment.body.required")
        if not isinstance(public, bool):
            raise _servicedesk_error(400, "'public' must be true or false.", "sd.comment.public.invalid")
        if len(text) > TEXT_MAX:
            raise _servicedesk_error(400, TEXT_TOO_LONG, "sd.comment.body.too.long")
        with self._lock:
            try:
                issue = self._find(target)
            except _ApiError:
                raise _servicedesk_error(
                    404, "Request does not exist or you do not have permission to see it.", "sd.request.not.found"
                ) from None
            comment = self._append_comment(issue, text, internal=not public)
            created = comment.created
            reply = {
                "id": str(comment.id),
                "body": text,
                "public": public,
                "author": self._user(),
                "created": {
                    "iso8601": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000"),
                    "jira": _timestamp(created),
                    "friendly": datetime.fromtimestamp(created, UTC).strftime("%d/%b/%y %I:%M %p"),
                    "epochMillis": int(created * 1000),
                },
                "_links": {"self": f"{self.url}/rest/servicedeskapi/request/{issue.id}/comment/{comment.id}"},
            }
        return Response.of_json(201, reply)

    # -- transitions ---------------------------------------------------------------------

    def _list_transitions(self, target: str, version: str, query: Mapping[str, str]) -> Response:
        expand = _split(query.get("expand")) or []
        wanted = query.get("transitionId")
        with self._lock:
            issue = self._find(target)
            available = [t for t in _TRANSITIONS[issue.status] if wanted is None or t.id == wanted]
            rendered = [self._transition_json(t, version, "transitions.fields" in expand) for t in available]
        return Response.of_json(200, {"expand": "transitions", "transitions": rendered})

    def _transition(self, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        payload = _json_object(headers, body)
        # historyMetadata and properties are accepted and not kept: nothing the stand-in models.
        for name in payload:
            if name not in ("transition", "fields", "update", "historyMetadata", "properties"):
                raise _jira_error(400, f'Unrecognized field "{name}"')  # stand-in wording
        if payload.get("update"):
            raise _jira_error(400, "The sandbox stand-in does not support 'update' on transitions.")
        requested = payload.get("transition")
        if not isinstance(requested, Mapping) or requested.get("id") is None:
            raise _jira_error(400, "Missing 'transition' identifier")  # as best we know
        transition_id = str(requested["id"])
        if not transition_id.isdigit():
            raise _jira_error(400, "'transition' identifier must be an integer")
        fields = payload.get("fields") or {}
        if not isinstance(fields, Mapping):
            raise _jira_error(400, "'fields' must be an object")  # stand-in wording
        with self._lock:
            issue = self._find(target)
            transition = next((t for t in _TRANSITIONS[issue.status] if t.id == transition_id), None)
            if transition is None:
                # The text is Jira's as best we know.
                raise _jira_error(400, f"Transition id '{transition_id}' is not valid for this issue.")
            on_screen = self._resolution_screen if transition.screen else frozenset()
            errors = {name: NOT_ON_SCREEN.format(name) for name in fields if name not in on_screen}
            if errors:
                raise _jira_error(400, errors=errors)  # [FACTS §5]
            custom: dict[str, Any] = {}
            errors = self._custom_values(fields, on_screen, custom)
            if errors:
                raise _jira_error(400, errors=errors)
            resolution: str | None = None
            if transition.screen:
                given = fields.get("resolution")
                if given is None:
                    raise _jira_error(400, RESOLUTION_REQUIRED)  # in errorMessages, as Jira answers [FACTS §5]
                resolution = _resolve_named(given, RESOLUTIONS)
                if resolution is None:
                    invalid = "The resolution selected is invalid."  # as best we know
                    raise _jira_error(400, errors={"resolution": invalid})
            now = self._clock()
            issue.status = transition.to
            issue.custom.update(custom)
            if transition.screen:
                issue.resolution, issue.resolutiondate = resolution, now
            elif transition.clears_resolution:
                issue.resolution = issue.resolutiondate = None
            issue.updated = now
        return Response(204)

    # -- rendering -----------------------------------------------------------------------

    def _user(self) -> dict[str, Any]:
        if self.cloud:
            return {
                "accountId": "557058:5a1d6f1e-sandbox-bridge",
                "emailAddress": self._email,
                "displayName": "Alert bridge",
                "active": True,
                "accountType": "atlassian",
            }
        return {
            "name": "bridge",
            "key": "JIRAUSER10000",
            "emailAddress": self._email,
            "displayName": "Alert bridge",
            "active": True,
        }

    def _issue_url(self, version: str, issue: _Issue) -> str:
        return f"{self.url}/rest/api/{version}/issue/{issue.id}"

    def _issue_json(self, issue: _Issue, version: str, adf: bool, names: Sequence[str]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name in names:
            if name == "summary":
                fields[name] = issue.summary
            elif name == "description":
                fields[name] = _text_for(issue.description, adf)
            elif name == "labels":
                fields[name] = list(issue.labels)
            elif name == "priority":
                fields[name] = self._priority_json(issue.priority)
            elif name == "status":
                fields[name] = self._status_json(STATUSES[issue.status], version)
            elif name == "resolution":
                fields[name] = self._resolution_json(issue.resolution) if issue.resolution else None
            elif name in ("created", "updated", "resolutiondate"):
                stamp = getattr(issue, name)
                fields[name] = _timestamp(stamp) if stamp is not None else None
            elif name == "issuetype":
                fields[name] = {
                    "self": f"{self.url}/rest/api/{version}/issuetype/{self._type_ids[issue.issuetype]}",
                    "id": self._type_ids[issue.issuetype],
                    "name": issue.issuetype,
                    "subtask": False,
                    "hierarchyLevel": 0,
                }
            elif name == "project":
                project = self._projects[issue.project]
                fields[name] = {
                    "self": f"{self.url}/rest/api/{version}/project/{project.id}",
                    "id": project.id,
                    "key": project.key,
                    "name": project.name,
                    "projectTypeKey": "service_desk",
                }
            elif name in self._custom_fields:
                fields[name] = issue.custom.get(name)
            elif name == "comment":
                comments = [self._comment_json(issue, c, version, adf) for c in issue.comments]
                total = len(comments)
                fields[name] = {"comments": comments, "maxResults": total, "total": total, "startAt": 0}
        return {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": str(issue.id),
            "self": self._issue_url(version, issue),
            "key": issue.key,
            "fields": fields,
        }

    def _status_json(self, status: _Status, version: str) -> dict[str, Any]:
        category = _CATEGORIES[status.category]
        return {
            "self": f"{self.url}/rest/api/{version}/status/{status.id}",
            "description": "",
            "name": status.name,
            "id": status.id,
            "statusCategory": {
                "self": f"{self.url}/rest/api/{version}/statuscategory/{category.id}",
                "id": category.id,
                "key": category.key,
                "colorName": category.color,
                "name": category.name,
            },
        }

    def _priority_json(self, name: str) -> dict[str, Any]:
        return {"self": f"{self.url}/rest/api/2/priority/{PRIORITIES[name]}", "id": PRIORITIES[name], "name": name}

    def _resolution_json(self, name: str) -> dict[str, Any]:
        resolution_id = RESOLUTIONS[name]
        return {"self": f"{self.url}/rest/api/2/resolution/{resolution_id}", "id": resolution_id, "name": name}

    def _comment_json(
        self, issue: _Issue, comment: _Comment, version: str, adf: bool, *, properties: bool = False
    ) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "self": f"{self.url}/rest/api/{version}/issue/{issue.id}/comment/{comment.id}",
            "id": str(comment.id),
            "author": self._user(),
            "body": _text_for(comment.body, adf),
            "updateAuthor": self._user(),
            "created": _timestamp(comment.created),
            "updated": _timestamp(comment.created),
            "jsdPublic": not comment.internal,  # how Jira Service Management shows the audience
        }
        if comment.visibility is not None:
            rendered["visibility"] = dict(comment.visibility)
        if properties:
            rendered["properties"] = [dict(p) for p in comment.properties]
        return rendered

    def _transition_json(self, transition: _Transition, version: str, with_fields: bool) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "id": transition.id,
            "name": transition.name,
            "to": self._status_json(STATUSES[transition.to], version),
            "hasScreen": transition.screen,
            "isGlobal": False,
            "isInitial": False,
            "isAvailable": True,
            "isConditional": False,
            "isLooped": False,
        }
        if with_fields:
            screen: dict[str, Any] = {}
            if transition.screen:
                screen["resolution"] = {
                    "required": True,
                    "schema": {"type": "resolution", "system": "resolution"},
                    "name": "Resolution",
                    "key": "resolution",
                    "hasDefaultValue": False,
                    "operations": ["set"],
                    "allowedValues": [self._resolution_json(name) for name in RESOLUTIONS],
                }
                for name in sorted(self._resolution_screen - {"resolution"}):
                    screen[name] = {
                        "required": False,
                        "schema": {
                            "type": "string",
                            "custom": "com.atlassian.jira.plugin.system.customfieldtypes:textfield",
                            "customId": int(name.removeprefix("customfield_")),
                        },
                        "name": self._custom_fields[name],
                        "key": name,
                        "hasDefaultValue": False,
                        "operations": ["set"],
                    }
            rendered["fields"] = screen
        return rendered


# --------------------------------------------------------------------------------------------
# Helpers


def _allow(method: str, allowed: str) -> None:
    if method not in [name.strip() for name in allowed.split(",")]:
        raise _jira_error(405, f"Method {method} is not allowed here.", headers={"Allow": allowed})  # stand-in wording


def _json_object(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    # Jira's REST resources consume application/json only; anything else is a 415 before parsing.
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/json":
        raise _ApiError(415, None)
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise _jira_error(400, "The request body is not a valid JSON object.")  # stand-in wording
    return payload


def _text_problem(value: Any, *, adf: bool, invalid: str | None, required: bool = False) -> str | None:
    """What is wrong with a description or comment body (None: fine).

    v3 takes ADF, v2 a wiki-markup string [FACTS §1]. ``invalid`` replaces the detailed reason
    (comments answer "Comment body is not valid!" whatever the fault [FACTS §2]).
    """
    if value is None:
        return "Comment body can not be empty!" if required else None  # as best we know
    if adf:
        try:
            validate_adf(value)
        except AdfError as error:
            return invalid or str(error)
        length = _adf_length(value)
    else:
        if not isinstance(value, str):
            return invalid or NOT_A_STRING
        length = len(value)
    if required and not (value if isinstance(value, str) else adf_to_wiki(value)).strip():
        return "Comment body can not be empty!"  # as best we know
    return TEXT_TOO_LONG if length > TEXT_MAX else None


def _label_problem(label: str) -> str | None:
    if not label or any(char.isspace() for char in label):
        return LABEL_SPACES.format(label)  # an empty label is refused too (stand-in choice)
    if len(label) > LABEL_MAX:
        # The 255 limit is sourced [FACTS §1]; the wording is as best we know.
        return f"The label '{label}' exceeds the maximum length for a single label of 255 characters."
    return None


def _resolve_named(value: Any, known: Mapping[str, str]) -> str | None:
    """A priority or resolution given as ``{"name"}`` or ``{"id"}``, by its name."""
    if not isinstance(value, Mapping):
        return None
    name, item_id = value.get("name"), value.get("id")
    for known_name, known_id in known.items():
        if name == known_name or (item_id is not None and str(item_id) == known_id):
            return known_name
    return None


def _text_for(value: Any, adf: bool) -> Any:
    """A stored description or comment as the API version shows it (ADF on v3, wiki on v2)."""
    if value is None:
        return None
    if adf:
        return value if isinstance(value, Mapping) else wiki_to_adf(str(value))
    return value if isinstance(value, str) else adf_to_wiki(value)


def _select_fields(requested: Sequence[str] | None, *, default: str, custom: Sequence[str] = ()) -> list[str]:
    """Field names from a ``fields`` list: names, ``*all``, ``*navigable``, ``-name`` exclusions;
    ``custom`` names the site's custom fields (navigable ones).

    Unknown names are left out without an error, as Jira does.
    """
    chosen: list[str] = []
    excluded: set[str] = set()
    for item in requested or [default]:
        for part in (piece.strip() for piece in item.split(",")):
            if part == "*all":
                chosen.extend((*_ALL_FIELDS, *custom))
            elif part == "*navigable":
                chosen.extend((*_NAVIGABLE_FIELDS, *custom))
            elif part.startswith("-"):
                excluded.add(part[1:])
            elif part in _ALL_FIELDS or part in custom:
                chosen.append(part)
    return [name for name in dict.fromkeys(chosen) if name not in excluded]


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _int_param(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _jira_error(400, f"{name} must be an integer") from None  # stand-in wording
    if number < 0:
        raise _jira_error(400, f"{name} must not be negative")  # stand-in wording
    return number


def _page_token(offset: int, jql: str) -> str:
    # Opaque to clients, like Jira's; bound to the query so a token cannot page another search.
    raw = json.dumps({"offset": offset, "jql": hashlib.sha256(jql.encode("utf-8")).hexdigest()[:16]})
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def _page_offset(token: str, jql: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = decoded["offset"]
        same_query = decoded["jql"] == hashlib.sha256(jql.encode("utf-8")).hexdigest()[:16]
    except (ValueError, TypeError, KeyError, binascii.Error):
        offset, same_query = None, False
    if type(offset) is not int or offset < 0 or not same_query:
        raise _jira_error(400, "The provided next page token is invalid or expired.")  # stand-in wording
    return offset


def _matches(node: JqlNode, issue: _Issue, standin: JiraStandIn) -> bool:
    if isinstance(node, JqlAnd):
        return all(_matches(part, issue, standin) for part in node.parts)
    if isinstance(node, JqlOr):
        return any(_matches(part, issue, standin) for part in node.parts)
    facts = [fact.casefold() for fact in standin._facts(issue, node.field)]
    if node.field == "resolution":
        # "Unresolved" is Jira's name for an empty resolution.
        values = [JqlValue("", True) if v.text.casefold() == "unresolved" and not v.empty else v for v in node.values]
    else:
        values = list(node.values)
    # Jira compares these values case-insensitively (labels included, as best we know), so a
    # client must re-check exact labels on the issues it gets back.
    if node.operator in ("=", "in", "is"):
        return any((not facts) if value.empty else value.text.casefold() in facts for value in values)
    # !=, NOT IN and IS NOT never match an empty field [FACTS §3]: "resolution != X" leaves out
    # unresolved issues, and "labels NOT IN (EMPTY, x)" means "has labels, none of them x".
    return bool(facts) and not any(value.text.casefold() in facts for value in values if not value.empty)


def _sort_key(name: str) -> Callable[[_Issue], Any]:
    if name == "key":
        return lambda issue: (issue.project, issue.number)
    return lambda issue: getattr(issue, name)


def _decode_basic(credential: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else None


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a stand-in until Ctrl-C or SIGTERM; prints its URL and sandbox credentials."""
    parser = argparse.ArgumentParser(prog="python -m bridge.sandbox.jira", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--deployment", choices=DEPLOYMENTS, default="cloud")
    parser.add_argument("--email", default="bridge@example.com")
    parser.add_argument("--api-token", default="sandbox-jira-token")
    parser.add_argument("--personal-access-token", default="sandbox-jira-pat")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request (DEBUG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    standin = JiraStandIn(
        args.host,
        args.port,
        deployment=args.deployment,
        email=args.email,
        api_token=args.api_token,
        personal_access_token=args.personal_access_token,
    ).start()
    if standin.cloud:
        credentials = f"  basic auth:   {args.email} / {args.api_token}  (API token)"
    else:
        credentials = f"  bearer token: {args.personal_access_token}  (personal access token)"
    search = "POST /rest/api/3/search/jql" if standin.cloud else "GET /rest/api/2/search"
    # The sandbox credentials are printed on purpose: they are the stand-in's own, for local use.
    return serve_until_stopped(
        standin,
        [
            f"Jira stand-in ({args.deployment}): {standin.url}",
            credentials,
            f"  project:      OPS (Incident, Task); search: {search}",
        ],
    )

if __name__ == "__main__":
    raise SystemExit(main())
