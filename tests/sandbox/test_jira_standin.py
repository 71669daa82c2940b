"""The Jira stand-in over real loopback HTTP: auth, fields and ADF, JQL, comments, transitions, DC, faults."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from bridge.sandbox import common, servicenow
from bridge.sandbox.jira import JiraStandIn, JqlAnd, JqlClause, JqlError, JqlOr, JqlValue, parse_jql
from tests.kit import FakeClock
from tests.sandbox.command_line import standin_process

pytestmark = pytest.mark.integration

EMAIL, TOKEN, PAT = "bridge@example.com", "sandbox-jira-token", "sandbox-jira-pat"
T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC).timestamp()
T0_TEXT = "2026-11-26T10:00:00.000+0000"
PROJECTS = {"OPS": ("Incident", "Task"), "DO": ("Task",)}
NOT_AUTHENTICATED = {
    "errorMessages": ["You are not authenticated. Authentication required to perform this operation."],
    "errors": {},
}
ISSUE_NOT_FOUND = {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}
NOT_ADF = "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
SEARCH_REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
TOO_LONG = "The entered text is too long. It exceeds the allowed limit of 32,767 characters."


def doc(*paragraphs: str) -> dict[str, Any]:
    """An ADF document with one paragraph per text."""
    return {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]} for text in paragraphs],
    }


def not_on_screen(name: str) -> str:
    return f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."


def jql_string(value: str) -> str:
    """A JQL string literal, as a client must build one: backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Api:
    """A requests session against one stand-in, with the right credentials and API version."""

    def __init__(self, standin: JiraStandIn, version: str = "3") -> None:
        self.standin = standin
        self.base = standin.url
        self.version = version
        self.session = requests.Session()
        if standin.cloud:
            self.session.auth = (EMAIL, TOKEN)
        else:
            self.session.headers["Authorization"] = f"Bearer {PAT}"

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        if not path.startswith("/rest/"):
            path = f"/rest/api/{self.version}{path}"
        return self.session.request(method, self.base + path, **kwargs)

    def create(self, summary: str = "Alert", **fields: Any) -> requests.Response:
        body = {"project": {"key": "OPS"}, "issuetype": {"name": "Incident"}, "summary": summary, **fields}
        return self.request("POST", "/issue", json={"fields": body})

    def created(self, summary: str = "Alert", **fields: Any) -> str:
        response = self.create(summary, **fields)
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    def search(self, jql: str, **body: Any) -> requests.Response:
        return self.request("POST", "/search/jql", json={"jql": jql, **body})

    def keys(self, jql: str) -> list[str]:
        response = self.search(jql, fields=["summary"], maxResults=100)
        assert response.status_code == 200, response.text
        return [issue["key"] for issue in response.json()["issues"]]

    def transition(self, key: str, transition_id: str, **fields: Any) -> requests.Response:
        body: dict[str, Any] = {"transition": {"id": transition_id}}
        if fields:
            body["fields"] = fields
        return self.request("POST", f"/issue/{key}/transitions", json=body)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def cloud_server(clock: FakeClock) -> Iterator[JiraStandIn]:
    with JiraStandIn(projects=PROJECTS, clock=clock) as standin:
        yield standin


@pytest.fixture(scope="module")
def dc_server(clock: FakeClock) -> Iterator[JiraStandIn]:
    with JiraStandIn(deployment="datacenter", clock=clock) as standin:
        yield standin


@pytest.fixture()
def jira(cloud_server: JiraStandIn, clock: FakeClock) -> JiraStandIn:
    """The shared Cloud stand-in, empty, with no faults, an empty log and the clock at T0."""
    cloud_server.reset()
    clock.now = T0
    return cloud_server


@pytest.fixture()
def dc(dc_server: JiraStandIn, clock: FakeClock) -> JiraStandIn:
    dc_server.reset()
    clock.now = T0
    return dc_server


@pytest.fixture()
def api(jira: JiraStandIn) -> Iterator[Api]:
    with Api(jira) as client:
        yield client


@pytest.fixture()
def api2(jira: JiraStandIn) -> Iterator[Api]:
    """Cloud, REST API v2 (wiki-markup strings)."""
    with Api(jira, version="2") as client:
        yield client


@pytest.fixture()
def dc_api(dc: JiraStandIn) -> Iterator[Api]:
    with Api(dc, version="2") as client:
        yield client


# ----------------------------------------------------------------------------------------------
# Authentication


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        _basic(EMAIL, "wrong-token"),
        _basic("someone@example.com", TOKEN),
        f"Bearer {PAT}",  # a Data Center token means nothing to Cloud
        f"Bearer {TOKEN}",
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(f"{EMAIL}{TOKEN}".encode()).decode(),  # no colon
    ],
)
def test_cloud_takes_basic_email_and_api_token_only(jira: JiraStandIn, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(jira.url + "/rest/api/3/myself", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response.headers.get("X-Seraph-LoginReason") == ("AUTHENTICATED_FAILED" if header else None)
    ok = requests.get(jira.url + "/rest/api/3/myself", headers={"Authorization": _basic(EMAIL, TOKEN)}, timeout=5)
    assert ok.status_code == 200
    assert ok.json()["emailAddress"] == EMAIL and "accountId" in ok.json()


@pytest.mark.parametrize("header", [None, _basic(EMAIL, TOKEN), _basic("bridge", PAT), "Bearer wrong", f"Basic {PAT}"])
def test_datacenter_takes_a_bearer_personal_access_token_only(dc: JiraStandIn, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(dc.url + "/rest/api/2/myself", headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (401, NOT_AUTHENTICATED)
    ok = requests.get(dc.url + "/rest/api/2/myself", headers={"Authorization": f"Bearer {PAT}"}, timeout=5)
    assert ok.status_code == 200
    assert ok.json()["name"] == "bridge" and "accountId" not in ok.json()


def test_every_rest_path_needs_auth_and_unknown_paths_are_404(jira: JiraStandIn, api: Api) -> None:
    for path in ("/rest/api/3/issue/OPS-1", "/rest/api/3/search/jql", "/rest/servicedeskapi/request/OPS-1/comment"):
        assert requests.get(jira.url + path, timeout=5).status_code == 401
    assert api.request("GET", "/rest/api/3/nothing").status_code == 404
    assert api.request("GET", "/rest/api/4/issue/OPS-1").status_code == 404
    assert api.request("GET", "/secure/Dashboard.jspa").status_code == 404
    refused = api.request("DELETE", "/issue/OPS-1")
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, PUT"


def test_request_log_records_the_auth_scheme_and_body_but_never_secrets(jira: JiraStandIn, api: Api) -> None:
    api.created("logged", labels=["a"])
    requests.get(jira.url + "/rest/api/3/myself", timeout=5)
    log = jira.requests
    assert [(r.method, r.path, r.status, r.auth) for r in log] == [
        ("POST", "/rest/api/3/issue", 201, "basic"),
        ("GET", "/rest/api/3/myself", 401, None),
    ]
    assert log[0].body["fields"]["labels"] == ["a"]
    assert TOKEN not in repr(log) and base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode() not in repr(log)


# ----------------------------------------------------------------------------------------------
# Creating and reading issues


def test_create_answers_201_with_id_key_self_and_keys_count_per_project(jira: JiraStandIn, api: Api) -> None:
    first = api.create("first")
    assert first.status_code == 201
    assert first.json() == {"id": "10000", "key": "OPS-1", "self": f"{jira.url}/rest/api/3/issue/10000"}
    assert api.created("second") == "OPS-2"
    other = api.request(
        "POST", "/issue", json={"fields": {"project": {"id": "10001"}, "issuetype": {"name": "Task"}, "summary": "x"}}
    )
    assert other.json()["key"] == "DO-1" and other.json()["id"] == "10002"
    by_type_id = api.create("typed by id", issuetype={"id": "10002"})  # Task, by its id
    assert by_type_id.status_code == 201
    assert jira.issue("OPS-3")["fields"]["issuetype"] == "Task"
    # Read-after-write: the stand-in's search finds a new issue at once (real Jira may not).
    assert api.keys("project = OPS ORDER BY key ASC") == ["OPS-1", "OPS-2", "OPS-3"]


def test_a_new_issue_gets_jira_defaults(jira: JiraStandIn, api: Api) -> None:
    key = api.created("defaults")
    assert jira.issues() == [
        {
            "id": "10000",
            "key": key,
            "fields": {
                "project": "OPS",
                "issuetype": "Incident",
                "summary": "defaults",
                "description": None,
                "labels": [],
                "priority": "Medium",
                "status": "Open",
                "statusCategory": "new",
                "resolution": None,
                "created": T0_TEXT,
                "updated": T0_TEXT,
                "resolutiondate": None,
            },
        }
    ]


def test_get_issue_renders_jira_objects(jira: JiraStandIn, api: Api) -> None:
    key = api.created("rendered", description=doc("body"), labels=["b", "a", "b"], priority={"name": "High"})
    response = api.request("GET", f"/issue/{key}")
    assert response.status_code == 200
    issue = response.json()
    assert (issue["id"], issue["key"], issue["self"]) == ("10000", "OPS-1", f"{jira.url}/rest/api/3/issue/10000")
    fields = issue["fields"]
    assert fields["summary"] == "rendered"
    assert fields["description"] == doc("body")
    assert fields["labels"] == ["a", "b"]  # a set, sorted
    assert (fields["priority"]["name"], fields["priority"]["id"]) == ("High", "2")
    assert fields["status"]["name"] == "Open" and fields["status"]["id"] == "1"
    assert fields["status"]["statusCategory"] | {"self": None} == {
        "self": None,
        "id": 2,
        "key": "new",
        "colorName": "blue-gray",
        "name": "To Do",
    }
    assert fields["resolution"] is None and fields["resolutiondate"] is None
    assert fields["created"] == fields["updated"] == T0_TEXT
    assert fields["issuetype"]["name"] == "Incident" and fields["project"]["key"] == "OPS"
    assert fields["comment"] == {"comments": [], "maxResults": 0, "total": 0, "startAt": 0}


def test_get_issue_fields_filter_id_and_case_insensitive_key(api: Api) -> None:
    api.created("filtered", labels=["x"])
    only = api.request("GET", "/issue/OPS-1", params={"fields": "summary,labels,nosuchfield"}).json()
    assert only["fields"] == {"summary": "filtered", "labels": ["x"]}  # unknown names left out
    navigable = api.request("GET", "/issue/10000", params={"fields": "*navigable,-description"}).json()
    assert "comment" not in navigable["fields"] and "description" not in navigable["fields"]
    assert "status" in navigable["fields"]
    assert api.request("GET", "/issue/ops-1", params={"fields": "summary"}).json()["key"] == "OPS-1"
    for missing in ("OPS-99", "NOPE-1", "99999"):
        response = api.request("GET", f"/issue/{missing}")
        assert (response.status_code, response.json()) == (404, ISSUE_NOT_FOUND)


@pytest.mark.parametrize(
    ("summary", "message"),
    [
        (None, "You must specify a summary of the issue."),
        ("   ", "You must specify a summary of the issue."),
        ("x" * 256, "Summary can't exceed 255 characters."),
        ("two\nlines", "The summary is invalid because it contains newline characters."),
        (42, "Operation value must be a string"),
    ],
)
def test_summary_rules(jira: JiraStandIn, api: Api, summary: Any, message: str) -> None:
    fields: dict[str, Any] = {"project": {"key": "OPS"}, "issuetype": {"name": "Incident"}}
    if summary is not None:
        fields["summary"] = summary
    response = api.request("POST", "/issue", json={"fields": fields})
    assert (response.status_code, response.json()) == (400, {"errorMessages": [], "errors": {"summary": message}})
    assert jira.issues() == []


def test_a_summary_of_255_characters_is_accepted(api: Api) -> None:
    assert api.create("x" * 255).status_code == 201


def test_a_field_not_on_the_create_screen_is_refused_with_every_error_at_once(jira: JiraStandIn, api: Api) -> None:
    response = api.create(
        "x" * 300, customfield_10010="k", status={"name": "Closed"}, resolution={"name": "Done"}, labels="nope"
    )
    assert response.status_code == 400
    assert response.json() == {
        "errorMessages": [],
        "errors": {
            "customfield_10010": not_on_screen("customfield_10010"),
            "status": not_on_screen("status"),
            "resolution": not_on_screen("resolution"),
            "summary": "Summary can't exceed 255 characters.",
            "labels": "Specify the value for labels in an array of strings",
        },
    }
    assert jira.issues() == []


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"issuetype": {"name": "Incident"}}, {"project": "Specify a valid project ID or key"}),
        (
            {"project": {"key": "NOPE"}, "issuetype": {"name": "Incident"}},
            {"project": "Specify a valid project ID or key"},
        ),
        ({"project": "OPS", "issuetype": {"name": "Incident"}}, {"project": "Specify a valid project ID or key"}),
        ({"project": {"key": "OPS"}}, {"issuetype": "Specify an issue type"}),
        (
            {"project": {"key": "DO"}, "issuetype": {"name": "Incident"}},
            {"issuetype": "The issue type selected is invalid."},
        ),
    ],
)
def test_project_and_issue_type_must_name_what_exists(api: Api, fields: dict[str, Any], errors: dict[str, str]) -> None:
    response = api.request("POST", "/issue", json={"fields": {**fields, "summary": "s", "bogus": 1}})
    # Screen errors (bogus) only come once the project and type are valid.
    assert (response.status_code, response.json()) == (400, {"errorMessages": [], "errors": errors})


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["ok", "has space"], "The label 'has space' contains spaces which is invalid."),
        (["tab\there"], "The label 'tab\there' contains spaces which is invalid."),
        (["l" * 256], "The label '" + "l" * 256 + "' exceeds the maximum length for a single label of 255 characters."),
        (["ok", 7], "Specify the value for labels in an array of strings"),
        ({"a": 1}, "Specify the value for labels in an array of strings"),
    ],
)
def test_label_rules(api: Api, labels: Any, message: str) -> None:
    response = api.create(labels=labels)
    assert (response.status_code, response.json()) == (400, {"errorMessages": [], "errors": {"labels": message}})


def test_labels_of_255_characters_with_punctuation_are_accepted(jira: JiraStandIn, api: Api) -> None:
    labels = ["l" * 255, 'ALERT{k="v"}', "a\\b"]
    api.created(labels=labels)
    assert jira.issues()[0]["fields"]["labels"] == sorted(labels)


def test_priority_by_name_or_id_and_unknown_priorities_refused(jira: JiraStandIn, api: Api) -> None:
    assert api.create(priority={"name": "Highest"}).status_code == 201
    assert api.create(priority={"id": "5"}).status_code == 201
    assert [i["fields"]["priority"] for i in jira.issues()] == ["Highest", "Lowest"]
    for bad in ({"name": "P1"}, "High", {"id": "9"}):
        response = api.create(priority=bad)
        assert response.status_code == 400
        assert set(response.json()["errors"]) == {"priority"}
    listed = api.request("GET", "/priority").json()
    assert [(p["name"], p["id"]) for p in listed] == [
        ("Highest", "1"),
        ("High", "2"),
        ("Medium", "3"),
        ("Low", "4"),
        ("Lowest", "5"),
    ]


def test_request_bodies_must_be_json_objects(jira: JiraStandIn, api: Api) -> None:
    form = api.request("POST", "/issue", data="fields=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    broken = api.request("POST", "/issue", data="{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["errorMessages"]
    unknown = api.request("POST", "/issue", json={"fields": {}, "transition": {}})
    assert unknown.status_code == 400 and unknown.json()["errorMessages"] == ['Unrecognized field "transition"']
    update = api.request("POST", "/issue", json={"fields": {}, "update": {"labels": [{"add": "x"}]}})
    assert update.status_code == 400 and "update" in update.json()["errorMessages"][0]
    assert jira.issues() == []


def test_edit_changes_fields_on_the_edit_screen_only(jira: JiraStandIn, api: Api, clock: FakeClock) -> None:
    key = api.created("before", labels=["old"])
    clock.advance(60)
    edited = api.request("PUT", f"/issue/{key}", json={"fields": {"summary": "after", "labels": ["new", "b"]}})
    assert edited.status_code == 204 and edited.content == b""
    fields = jira.issue(key)["fields"]
    assert (fields["summary"], fields["labels"]) == ("after", ["b", "new"])
    assert fields["updated"] == "2026-11-26T10:01:00.000+0000" and fields["created"] == T0_TEXT
    refused = api.request("PUT", f"/issue/{key}", json={"fields": {"project": {"key": "DO"}, "summary": ""}})
    assert refused.json() == {
        "errorMessages": [],
        "errors": {"project": not_on_screen("project"), "summary": "You must specify a summary of the issue."},
    }
    assert api.request("PUT", "/issue/OPS-99", json={"fields": {"summary": "x"}}).status_code == 404


# ----------------------------------------------------------------------------------------------
# ADF


VALID_DOC: dict[str, Any] = {
    "type": "doc",
    "version": 1,
    "content": [
        {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Alert fired"}]},
        {
            "type": "paragraph",
            "content": [
                {"type": "text", "text": "Severity: ", "marks": [{"type": "strong"}]},
                {"type": "text", "text": "Sev1"},
                {"type": "hardBreak"},
                {"type": "hardBreak", "attrs": {"text": "\n"}},
                {"type": "text", "text": "portal", "marks": [{"type": "link", "attrs": {"href": "https://x"}}]},
            ],
        },
        {"type": "paragraph"},
        {"type": "codeBlock", "attrs": {"language": "json"}, "content": [{"type": "text", "text": '{"a": 1}'}]},
        {"type": "codeBlock", "content": []},
        {
            "type": "bulletList",
            "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "one"}]}]},
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "two"}]}]},
            ],
        },
        {
            "type": "orderedList",
            "attrs": {"order": 3},
            "content": [{"type": "listItem", "content": [{"type": "paragraph"}]}],
        },
        {"type": "rule"},
    ],
}


def test_valid_adf_is_stored_and_returned_as_sent(jira: JiraStandIn, api: Api) -> None:
    key = api.created(description=VALID_DOC)
    assert jira.issue(key)["fields"]["description"] == VALID_DOC
    assert api.request("GET", f"/issue/{key}", params={"fields": "description"}).json()["fields"] == {
        "description": VALID_DOC
    }
    empty = api.create(description={"type": "doc", "version": 1, "content": []})
    assert empty.status_code == 201


def _text(text: Any = "t", **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": text, **extra}


def _para(*nodes: Any) -> dict[str, Any]:
    return {"type": "paragraph", "content": list(nodes)}


def _doc_of(*blocks: Any) -> dict[str, Any]:
    return {"type": "doc", "version": 1, "content": list(blocks)}


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("plain text sent to v3", NOT_ADF),
        (["a list"], NOT_ADF),
        ({"type": "doc", "content": []}, NOT_ADF),
        ({"type": "doc", "version": 2, "content": []}, NOT_ADF),
        ({"type": "doc", "version": "1", "content": []}, NOT_ADF),
        ({"type": "doc", "version": True, "content": []}, NOT_ADF),
        ({"type": "doc", "version": 1}, NOT_ADF),
        ({"type": "paragraph", "version": 1, "content": []}, NOT_ADF),
        ({"type": "doc", "version": 1, "content": [], "extra": 1}, "doc: unexpected property 'extra'"),
        (_doc_of(_para(_text(""))), "content[0].content[0]: a text node needs non-empty text"),
        (_doc_of(_para({"type": "text"})), "content[0].content[0]: a text node needs non-empty text"),
        (_doc_of(_para(_text(7))), "content[0].content[0]: a text node needs non-empty text"),
        (_doc_of(_text("loose")), "content[0]: node type 'text' is not allowed here"),
        (_doc_of({"type": "table", "content": []}), "content[0]: node type 'table' is not allowed here"),
        (
            _doc_of(_para({"type": "mention", "attrs": {}})),
            "content[0].content[0]: node type 'mention' is not allowed inline",
        ),
        (_doc_of(_para(_para())), "content[0].content[0]: node type 'paragraph' is not allowed inline"),
        (
            _doc_of(_para({"type": "hardBreak", "attrs": {"text": "x"}})),
            'content[0].content[0]: hardBreak attrs.text must be "\\n"',
        ),
        (
            _doc_of({"type": "codeBlock", "content": [_text("x", marks=[{"type": "strong"}])]}),
            "content[0].content[0]: a codeBlock holds text without marks only",
        ),
        (
            _doc_of({"type": "codeBlock", "content": [{"type": "hardBreak"}]}),
            "content[0].content[0]: a codeBlock holds text without marks only",
        ),
        (
            _doc_of({"type": "codeBlock", "attrs": {"language": 3}, "content": []}),
            "content[0]: attrs.language must be a string",
        ),
        (_doc_of({"type": "heading", "content": []}), "content[0]: a heading needs attrs.level between 1 and 6"),
        (
            _doc_of({"type": "heading", "attrs": {"level": 7}, "content": []}),
            "content[0]: a heading needs attrs.level between 1 and 6",
        ),
        (_doc_of({"type": "bulletList", "content": []}), "content[0]: content must be a non-empty list"),
        (
            _doc_of({"type": "bulletList", "content": [_para()]}),
            "content[0].content[0]: a list holds listItem nodes only",
        ),
        (
            _doc_of({"type": "bulletList", "content": [{"type": "listItem", "content": [_text()]}]}),
            "content[0].content[0].content[0]: node type 'text' is not allowed here",
        ),
        (
            _doc_of(_para(_text("x", marks=[{"type": "blink"}]))),
            "content[0].content[0].marks[0]: mark 'blink' is unknown or repeated",
        ),
        (
            _doc_of(_para(_text("x", marks=[{"type": "em"}, {"type": "em"}]))),
            "content[0].content[0].marks[1]: mark 'em' is unknown or repeated",
        ),
        (
            _doc_of(_para(_text("x", marks=[{"type": "link"}]))),
            "content[0].content[0].marks[0]: a link mark needs attrs.href",
        ),
        (_doc_of(_para(_text("x", colour="red"))), "content[0].content[0]: unexpected property 'colour'"),
        (_doc_of({"type": "paragraph", "content": "text"}), "content[0]: content must be a list"),
        (_doc_of("paragraph"), "content[0]: a node must be an object with a type"),
    ],
)
def test_invalid_adf_descriptions_are_refused(jira: JiraStandIn, api: Api, description: Any, message: str) -> None:
    response = api.create(description=description)
    assert (response.status_code, response.json()) == (400, {"errorMessages": [], "errors": {"description": message}})
    assert jira.issues() == []


def test_description_limit_counts_the_adf_json(jira: JiraStandIn, api: Api, api2: Api) -> None:
    # {"type":"doc","version":1,"content":[{"type":"paragraph","content":[{"type":"text","text":"..."}]}]}
    overhead = len('{"type":"doc","version":1,"content":[{"type":"paragraph","content":[{"type":"text","text":""}]}]}')
    assert api.create(description=doc("x" * (32767 - overhead))).status_code == 201
    too_long = api.create(description=doc("x" * (32768 - overhead)))
    assert too_long.json() == {"errorMessages": [], "errors": {"description": TOO_LONG}}
    assert api2.create(description="y" * 32767).status_code == 201
    assert api2.create(description="y" * 32768).json()["errors"] == {"description": TOO_LONG}


def test_cloud_v2_takes_wiki_strings_and_each_version_reads_its_own_format(
    jira: JiraStandIn, api: Api, api2: Api
) -> None:
    refused = api2.create(description=doc("adf sent to v2"))
    assert refused.json() == {"errorMessages": [], "errors": {"description": "Operation value must be a string"}}
    wiki = api2.created(description="first line\nsecond line\n\nnext paragraph")
    assert jira.issue(wiki)["fields"]["description"] == "first line\nsecond line\n\nnext paragraph"
    as_adf = api.request("GET", f"/issue/{wiki}", params={"fields": "description"}).json()["fields"]["description"]
    assert as_adf == _doc_of(
        _para(_text("first line"), {"type": "hardBreak"}, _text("second line")), _para(_text("next paragraph"))
    )
    adf = api.created(description=VALID_DOC)
    as_wiki = api2.request("GET", f"/issue/{adf}", params={"fields": "description"}).json()["fields"]["description"]
    assert as_wiki.startswith("h2. Alert fired\n\n*Severity: *Sev1\n\n[portal|https://x]")
    assert '{code:json}\n{"a": 1}\n{code}' in as_wiki and "* one\n* two" in as_wiki and as_wiki.endswith("----")
    assert api2.request("GET", f"/issue/{adf}").json()["self"] == f"{jira.url}/rest/api/2/issue/10001"


# ----------------------------------------------------------------------------------------------
# Search: /rest/api/3/search/jql


def test_search_jql_without_fields_returns_ids_only_and_no_total(api: Api) -> None:
    api.created("one")
    api.created("two")
    response = api.search("project = OPS ORDER BY created ASC")
    assert response.status_code == 200
    assert response.json() == {"issues": [{"id": "10000"}, {"id": "10001"}], "isLast": True}


def test_search_jql_with_fields_returns_issues(jira: JiraStandIn, api: Api) -> None:
    api.created("one", labels=["lbl"])
    response = api.search("labels = lbl", fields=["summary", "status", "nosuch"])
    issue = response.json()["issues"][0]
    assert (issue["id"], issue["key"], issue["self"]) == ("10000", "OPS-1", f"{jira.url}/rest/api/3/issue/10000")
    assert set(issue["fields"]) == {"summary", "status"}
    assert issue["fields"]["status"]["statusCategory"]["key"] == "new"
    everything = api.search("labels = lbl", fields=["*all"]).json()["issues"][0]["fields"]
    assert "comment" in everything and "description" in everything


def test_search_jql_pages_with_next_page_token(api: Api, clock: FakeClock) -> None:
    for index in range(5):
        api.created(f"issue {index}")
        clock.advance(1)
    jql = "project = OPS ORDER BY created ASC"
    seen: list[list[str]] = []
    token: str | None = None
    while True:
        body: dict[str, Any] = {"maxResults": 2, "fields": ["summary"]}
        if token:
            body["nextPageToken"] = token
        page = api.search(jql, **body).json()
        seen.append([issue["key"] for issue in page["issues"]])
        assert "total" not in page
        if page["isLast"]:
            assert "nextPageToken" not in page
            break
        token = page["nextPageToken"]
        assert isinstance(token, str) and token
    assert seen == [["OPS-1", "OPS-2"], ["OPS-3", "OPS-4"], ["OPS-5"]]
    first = api.search(jql, maxResults=2).json()
    elsewhere = api.search("project = OPS ORDER BY created DESC", maxResults=2, nextPageToken=first["nextPageToken"])
    assert elsewhere.status_code == 400  # a token pages the search it came from only
    assert api.search(jql, nextPageToken="garbage").status_code == 400


def test_search_jql_by_get_with_query_parameters(api: Api) -> None:
    api.created("one", labels=["lbl"])
    api.created("two", labels=["lbl"])
    params = {"jql": "labels = lbl ORDER BY key DESC", "fields": "summary,labels", "maxResults": "1"}
    page = api.request("GET", "/search/jql", params=params).json()
    assert [issue["key"] for issue in page["issues"]] == ["OPS-2"] and page["isLast"] is False
    assert set(page["issues"][0]["fields"]) == {"summary", "labels"}
    rest = api.request("GET", "/search/jql", params={**params, "nextPageToken": page["nextPageToken"]}).json()
    assert [issue["key"] for issue in rest["issues"]] == ["OPS-1"] and rest["isLast"] is True


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"jql": "project = OPS", "maxResults": 0}, 400),
        ({"jql": "project = OPS", "maxResults": "10"}, 400),
        ({"jql": "project = OPS", "fields": "summary"}, 400),
        ({"jql": "project = OPS", "reconcileIssues": list(range(51))}, 400),
        ({"jql": "project = OPS", "reconcileIssues": list(range(50))}, 200),
        ({"jql": "project = OPS", "startAt": 0}, 400),  # that is the retired endpoint's parameter
        ({"jql": 5}, 400),
    ],
)
def test_search_jql_validates_its_body(api: Api, body: dict[str, Any], status: int) -> None:
    assert api.request("POST", "/search/jql", json=body).status_code == status


def test_the_retired_search_answers_410_on_cloud(api: Api) -> None:
    for path in ("/rest/api/3/search", "/rest/api/2/search", "/rest/api/latest/search"):
        for method, kwargs in (("GET", {"params": {"jql": "project = OPS"}}), ("POST", {"json": {"jql": "x"}})):
            response = api.request(method, path, **kwargs)
            assert (response.status_code, response.json()) == (410, {"errorMessages": [SEARCH_REMOVED], "errors": {}})


# ----------------------------------------------------------------------------------------------
# The JQL subset


@pytest.fixture()
def corpus(jira: JiraStandIn, clock: FakeClock) -> None:
    """OPS-1 open [alpha]; OPS-2 in progress [alpha, beta] High; OPS-3 resolved Done [beta];
    OPS-4 closed Won't Do, no labels, Task; OPS-5 closed without a resolution [Gamma]; DO-1 open [alpha]."""
    jira.insert_issue("OPS", "one", labels=["alpha"])
    clock.advance(10)
    jira.insert_issue("OPS", "two", labels=["alpha", "beta"], status="In Progress", priority="High")
    clock.advance(10)
    jira.insert_issue("OPS", "three", labels=["beta"], status="Resolved", resolution="Done")
    clock.advance(10)
    jira.insert_issue("OPS", "four", issue_type="Task", status="Closed", resolution="Won't Do")
    clock.advance(10)
    jira.insert_issue("OPS", "five", labels=["Gamma"], status="Closed")
    clock.advance(10)
    jira.insert_issue("DO", "other project", labels=["alpha"])


ORDER = " ORDER BY key ASC"


@pytest.mark.parametrize(
    ("jql", "keys"),
    [
        ("project = OPS", ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]),
        ('project = "ops"', ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]),
        ("project = 10000", ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]),
        ('project = "DO"', ["DO-1"]),
        ("project in (OPS, 'DO') and labels = alpha", ["DO-1", "OPS-1", "OPS-2"]),
        ("labels = alpha", ["DO-1", "OPS-1", "OPS-2"]),
        ("labels = ALPHA", ["DO-1", "OPS-1", "OPS-2"]),  # case-insensitive, so clients re-check
        ("labels = gamma", ["OPS-5"]),
        ("labels != alpha", ["OPS-3", "OPS-5"]),  # != leaves out issues without labels
        ("labels in (alpha, beta) AND project = OPS", ["OPS-1", "OPS-2", "OPS-3"]),
        ("labels not in (alpha) and project = OPS", ["OPS-3", "OPS-5"]),
        ("labels is EMPTY", ["OPS-4"]),
        ("labels = EMPTY", ["OPS-4"]),
        ("labels is not empty and project = OPS", ["OPS-1", "OPS-2", "OPS-3", "OPS-5"]),
        ("labels != EMPTY and project = OPS", ["OPS-1", "OPS-2", "OPS-3", "OPS-5"]),
        ('labels = "empty"', []),  # quoted, the word is a value
        ("statusCategory != Done", ["DO-1", "OPS-1", "OPS-2"]),
        ("statusCategory = Done", ["OPS-3", "OPS-4", "OPS-5"]),
        ('statusCategory = "In Progress"', ["OPS-2"]),
        ("statusCategory = new", ["DO-1", "OPS-1"]),
        ('status = "In Progress"', ["OPS-2"]),
        ("status = closed", ["OPS-4", "OPS-5"]),
        ("status in (Open, Resolved)", ["DO-1", "OPS-1", "OPS-3"]),
        ("resolution is EMPTY", ["DO-1", "OPS-1", "OPS-2", "OPS-5"]),
        ("resolution = Unresolved", ["DO-1", "OPS-1", "OPS-2", "OPS-5"]),
        ("resolution is not EMPTY", ["OPS-3", "OPS-4"]),
        ("resolution = Done", ["OPS-3"]),
        ('resolution != "Won\'t Do"', ["OPS-3"]),  # drops the unresolved: the FACTS trap
        ('(resolution is EMPTY or resolution != "Won\'t Do") and project = OPS', ["OPS-1", "OPS-2", "OPS-3", "OPS-5"]),
        ("key = OPS-2", ["OPS-2"]),
        ("issuekey in (OPS-1, DO-1)", ["DO-1", "OPS-1"]),
        ("issuetype = Task", ["DO-1", "OPS-4"]),
        ("priority = High", ["OPS-2"]),
        ("project = OPS and labels = alpha and statusCategory != Done", ["OPS-1", "OPS-2"]),
        ("labels = beta or labels = gamma", ["OPS-2", "OPS-3", "OPS-5"]),
        # AND binds tighter than OR.
        ('labels = gamma or labels = alpha and project = "DO"', ["DO-1", "OPS-5"]),
        ('(labels = gamma or labels = alpha) and project = "DO"', ["DO-1"]),
        ("Project = OPS AnD LABELS = beta", ["OPS-2", "OPS-3"]),
    ],
)
def test_jql_subset(api: Api, corpus: None, jql: str, keys: list[str]) -> None:
    assert api.keys(jql + ORDER) == sorted(keys, key=lambda k: (k.split("-")[0], int(k.split("-")[1])))


def test_jql_order_by(api: Api, corpus: None) -> None:
    assert api.keys("project = OPS ORDER BY created DESC") == ["OPS-5", "OPS-4", "OPS-3", "OPS-2", "OPS-1"]
    assert api.keys("project = OPS order by created asc") == ["OPS-1", "OPS-2", "OPS-3", "OPS-4", "OPS-5"]
    assert api.keys("labels = alpha ORDER BY key DESC") == ["OPS-2", "OPS-1", "DO-1"]
    assert api.keys("labels = alpha ORDER BY key ASC") == ["DO-1", "OPS-1", "OPS-2"]
    assert api.keys("labels = alpha") == ["DO-1", "OPS-2", "OPS-1"]  # no ORDER BY: newest first


def test_jql_order_by_several_keys_and_ties(jira: JiraStandIn, api: Api, clock: FakeClock) -> None:
    for summary in ("a", "b", "c"):
        jira.insert_issue("OPS", summary)  # same second
    clock.advance(5)
    jira.set_status("OPS-1", "In Progress")
    assert api.keys("project = OPS ORDER BY created ASC") == ["OPS-1", "OPS-2", "OPS-3"]
    assert api.keys("project = OPS ORDER BY created DESC") == ["OPS-3", "OPS-2", "OPS-1"]
    assert api.keys("project = OPS ORDER BY updated DESC, key ASC") == ["OPS-1", "OPS-2", "OPS-3"]


def _jql_error(message: str) -> dict[str, Any]:
    return {"errorMessages": [message], "errors": {}}


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("", "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."),
        (
            "ORDER BY created DESC",
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
        ),
        ("foo = bar", "Field 'foo' does not exist or you do not have permission to view it."),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ("status = Done", "The value 'Done' does not exist for the field 'status'."),
        ("resolution = Fixed", "The value 'Fixed' does not exist for the field 'resolution'."),
        ("statusCategory = Finished", "The value 'Finished' does not exist for the field 'statusCategory'."),
        ("key = OPS-99", "An issue with key 'OPS-99' does not exist for field 'key'."),
        ("project IS EMPTY", "The field 'project' does not support searching for EMPTY values."),
        ("status in (Open, EMPTY)", "The field 'status' does not support searching for EMPTY values."),
        ("labels ~ alpha", "The operator '~' is not supported by the 'labels' field."),
        ("project > OPS", "The operator '>' is not supported by the 'project' field."),
        ("labels WAS alpha", "The operator 'WAS' is not supported by the sandbox stand-in."),
        (
            "project = DO",
            "Error in the JQL Query: 'DO' is a reserved JQL word. You must surround it in quotation marks to use it "
            "in a query. (line 1, character 11)",
        ),
        (
            "labels = and",
            "Error in the JQL Query: 'and' is a reserved JQL word. You must surround it in quotation marks to use it "
            "in a query. (line 1, character 10)",
        ),
        (
            "labels = a.b",
            "Error in the JQL Query: The character '.' is a reserved JQL character. You must enclose it in a string "
            "or use the escape '\\u002e' instead. (line 1, character 11)",
        ),
        (
            "project = OPS\nAND labels = x@y",
            "Error in the JQL Query: The character '@' is a reserved JQL character. You must enclose it in a string "
            "or use the escape '\\u0040' instead. (line 2, character 15)",
        ),
        (
            'labels = "open',
            "Error in the JQL Query: The quoted string '\"open' has not been completed. (line 1, character 10)",
        ),
        (
            'labels = "a\\qb"',
            "Error in the JQL Query: '\\q' is an illegal JQL escape sequence. The valid escape sequences are \\', "
            "\\\", \\t, \\n, \\r, \\\\, '\\ ' and \\uXXXX. (line 1, character 12)",
        ),
        (
            "project = OPS labels = a",
            "Error in the JQL Query: Expecting either 'OR' or 'AND' but got 'labels'. (line 1, character 15)",
        ),
        ("(project = OPS", "Error in the JQL Query: Expecting ')' but got end of the query. (line 1, character 15)"),
        (
            "project OPS",
            "Error in the JQL Query: Expecting operator but got 'OPS'. The valid operators are '=', '!=', "
            "'<', '>', '<=', '>=', '~', '!~', 'IN', 'NOT IN', 'IS' and 'IS NOT'. (line 1, character 9)",
        ),
        (
            "labels is alpha",
            "Error in the JQL Query: Expecting 'EMPTY' or 'NULL' but got 'alpha'. (line 1, character 11)",
        ),
        ("labels in alpha", "Error in the JQL Query: Expecting '(' but got 'alpha'. (line 1, character 11)"),
        (
            "project = OPS ORDER created",
            "Error in the JQL Query: Expecting 'by' but got 'created'. (line 1, character 21)",
        ),
        (
            "NOT labels = alpha",
            "Error in the JQL Query: The sandbox stand-in does not support NOT; write the clause with != or NOT IN. "
            "(line 1, character 1)",
        ),
        (
            "labels = currentUser()",
            "Error in the JQL Query: The sandbox stand-in does not support JQL functions. (line 1, character 10)",
        ),
        (
            "summary ~ disk",
            "The sandbox stand-in does not search the field 'summary'; it supports issuetype, key, labels, priority, "
            "project, resolution, status, statusCategory.",
        ),
        (
            "created >= -1d",
            "The sandbox stand-in does not search the field 'created'; it supports issuetype, key, "
            "labels, priority, project, resolution, status, statusCategory.",
        ),
        (
            "project = OPS ORDER BY summary",
            "The sandbox stand-in orders by created, updated or key only, not 'summary'.",
        ),
        ("project = OPS ORDER BY nosuch", "Field 'nosuch' does not exist or you do not have permission to view it."),
        (
            "project = OPS && labels = a",
            "Error in the JQL Query: Expecting either 'OR' or 'AND' but got '&&'. (line 1, character 15)",
        ),
    ],
)
def test_jql_outside_the_subset_or_invalid_is_refused_never_ignored(
    api: Api, corpus: None, jql: str, message: str
) -> None:
    response = api.search(jql)
    assert (response.status_code, response.json()) == (400, _jql_error(message))


def test_jql_quoting_cannot_be_injected_into(jira: JiraStandIn, api: Api) -> None:
    tricky = 'x"OR"labels=y\\'
    jira.insert_issue("OPS", "x", labels=["x"])
    jira.insert_issue("OPS", "y", labels=["y"])
    jira.insert_issue("OPS", "tricky", labels=[tricky])
    # Escaped, the whole value is one string literal: only the issue with exactly that label.
    assert api.keys(f"project = OPS AND labels = {jql_string(tricky)}") == ["OPS-3"]
    injected = 'x" OR labels = "y'
    assert api.keys(f"labels = {jql_string(injected)}") == []
    # Interpolated raw, the value would rewrite the query: why clients must escape.
    assert api.keys('labels = "x" OR labels = "y" ORDER BY key ASC') == ["OPS-1", "OPS-2"]
    raw = api.search(f'project = OPS AND labels = "{tricky}"')
    assert raw.status_code == 400
    # Single quotes and \u escapes are strings too; an escaped quote ends nothing.
    assert api.keys("labels = 'x'") == ["OPS-1"]
    assert api.keys('labels = "\\u0078"') == ["OPS-1"]
    assert api.keys("labels = 'x\\' OR labels = \\'y'") == []


def test_parse_jql_structure() -> None:
    parsed = parse_jql('project = "OPS" AND (labels = x OR labels != "b c") ORDER BY created DESC, key')
    assert parsed.where == JqlAnd(
        (
            JqlClause("project", "=", (JqlValue("OPS"),), 0),
            JqlOr(
                (
                    JqlClause("labels", "=", (JqlValue("x"),), 21),
                    JqlClause("labels", "!=", (JqlValue("b c"),), 35),
                )
            ),
        )
    )
    assert [(o.field, o.descending) for o in parsed.order] == [("created", True), ("key", False)]
    assert parse_jql("labels is not null").where == JqlClause("labels", "is not", (JqlValue("", empty=True),), 0)
    for reserved in ("project = INT", "labels = a"):  # "a" is a reserved word too
        with pytest.raises(JqlError, match="reserved JQL word"):
            parse_jql(reserved)


# ----------------------------------------------------------------------------------------------
# Comments


def test_comments_public_and_internal_through_the_property(jira: JiraStandIn, api: Api, clock: FakeClock) -> None:
    key = api.created()
    public = api.request("POST", f"/issue/{key}/comment", json={"body": doc("for the customer")})
    assert public.status_code == 201
    body = public.json()
    assert body["id"] == "10000" and body["body"] == doc("for the customer") and body["jsdPublic"] is True
    assert body["self"] == f"{jira.url}/rest/api/3/issue/10000/comment/10000"
    assert body["created"] == T0_TEXT and body["author"]["emailAddress"] == EMAIL
    clock.advance(60)
    internal_property = [{"key": "sd.public.comment", "value": {"internal": True}}]
    internal = api.request(
        "POST", f"/issue/{key}/comment", json={"body": doc("agents only"), "properties": internal_property}
    )
    assert internal.status_code == 201 and internal.json()["jsdPublic"] is False
    explicit_public = [{"key": "sd.public.comment", "value": {"internal": False}}]
    api.request("POST", f"/issue/{key}/comment", json={"body": doc("public again"), "properties": explicit_public})
    assert [(c["body"], c["internal"]) for c in jira.comments(key)] == [
        (doc("for the customer"), False),
        (doc("agents only"), True),
        (doc("public again"), False),
    ]
    assert jira.issue(key)["fields"]["updated"] == "2026-11-26T10:01:00.000+0000"
    with pytest.raises(KeyError):
        jira.comments("OPS-99")


def test_comment_listing_is_paginated(jira: JiraStandIn, api: Api, clock: FakeClock) -> None:
    key = api.created()
    for text in ("one", "two", "three"):
        api.request("POST", f"/issue/{key}/comment", json={"body": doc(text)})
        clock.advance(1)
    listed = api.request("GET", f"/issue/{key}/comment").json()
    assert (listed["startAt"], listed["maxResults"], listed["total"]) == (0, 5000, 3)
    assert [c["body"] for c in listed["comments"]] == [doc("one"), doc("two"), doc("three")]
    page = api.request("GET", f"/issue/{key}/comment", params={"startAt": 1, "maxResults": 1}).json()
    assert (page["startAt"], page["maxResults"], page["total"]) == (1, 1, 3)
    assert [c["body"] for c in page["comments"]] == [doc("two")]
    newest = api.request("GET", f"/issue/{key}/comment", params={"orderBy": "-created"}).json()
    assert [c["id"] for c in newest["comments"]] == ["10002", "10001", "10000"]
    in_issue = api.request("GET", f"/issue/{key}", params={"fields": "comment"}).json()["fields"]["comment"]
    assert in_issue["total"] == 3 and len(in_issue["comments"]) == 3
    assert api.request("GET", "/issue/OPS-99/comment").json() == ISSUE_NOT_FOUND


@pytest.mark.parametrize(
    ("payload", "errors"),
    [
        ({"body": "plain text on v3"}, {"comment": "Comment body is not valid!"}),
        ({"body": _doc_of(_para(_text("")))}, {"comment": "Comment body is not valid!"}),
        ({"body": {"type": "doc", "version": 2, "content": []}}, {"comment": "Comment body is not valid!"}),
        ({"body": doc("x" * 32767)}, {"comment": TOO_LONG}),
        ({}, {"comment": "Comment body can not be empty!"}),
        ({"body": _doc_of()}, {"comment": "Comment body can not be empty!"}),
    ],
)
def test_invalid_comment_bodies_are_refused(
    jira: JiraStandIn, api: Api, payload: dict[str, Any], errors: dict[str, str]
) -> None:
    key = api.created()
    response = api.request("POST", f"/issue/{key}/comment", json=payload)
    assert (response.status_code, response.json()) == (400, {"errorMessages": [], "errors": errors})
    assert jira.comments(key) == []


def test_comment_on_a_missing_issue_and_bad_properties(api: Api) -> None:
    missing = api.request("POST", "/issue/OPS-99/comment", json={"body": doc("x")})
    assert (missing.status_code, missing.json()) == (404, ISSUE_NOT_FOUND)
    key = api.created()
    bad = api.request("POST", f"/issue/{key}/comment", json={"body": doc("x"), "properties": {"internal": True}})
    assert bad.status_code == 400


def test_servicedesk_comments_public_and_internal_on_cloud(jira: JiraStandIn, api: Api) -> None:
    key = api.created()
    path = f"/rest/servicedeskapi/request/{key}/comment"
    internal = api.request("POST", path, json={"body": "agents only", "public": False})
    assert internal.status_code == 201
    reply = internal.json()
    assert (reply["id"], reply["body"], reply["public"]) == ("10000", "agents only", False)
    assert reply["created"]["epochMillis"] == int(T0 * 1000) and reply["created"]["jira"] == T0_TEXT
    assert api.request("POST", path, json={"body": "for the customer", "public": True}).status_code == 201
    assert api.request("POST", path, json={"body": "no flag"}).status_code == 201  # public by default
    assert [(c["body"], c["internal"]) for c in jira.comments(key)] == [
        ("agents only", True),
        ("for the customer", False),
        ("no flag", False),
    ]
    # Read through v3, the plain-text body comes back as ADF, with its audience.
    listed = api.request("GET", f"/issue/{key}/comment").json()["comments"]
    assert listed[0]["body"] == doc("agents only") and listed[0]["jsdPublic"] is False


@pytest.mark.parametrize(
    ("path", "payload", "status", "i18n_key"),
    [
        ("OPS-1", {"body": "", "public": False}, 400, "sd.comment.body.required"),
        ("OPS-1", {"body": {"type": "doc"}, "public": False}, 400, "sd.comment.body.required"),
        ("OPS-1", {"body": "x", "public": "no"}, 400, "sd.comment.public.invalid"),
        ("OPS-99", {"body": "x", "public": False}, 404, "sd.request.not.found"),
    ],
)
def test_servicedesk_comment_errors_have_the_servicedesk_body(
    api: Api, path: str, payload: dict[str, Any], status: int, i18n_key: str
) -> None:
    api.created()
    response = api.request("POST", f"/rest/servicedeskapi/request/{path}/comment", json=payload)
    assert response.status_code == status
    assert set(response.json()) == {"errorMessage", "i18nErrorMessage"}
    assert response.json()["i18nErrorMessage"]["i18nKey"] == i18n_key


# ----------------------------------------------------------------------------------------------
# Transitions


def _transitions(api: Api, key: str, **params: str) -> list[dict[str, Any]]:
    response = api.request("GET", f"/issue/{key}/transitions", params=params)
    assert response.status_code == 200
    body = response.json()
    assert body["expand"] == "transitions"
    transitions: list[dict[str, Any]] = body["transitions"]
    return transitions


def test_transitions_available_per_status(api: Api) -> None:
    key = api.created()
    listed = _transitions(api, key)
    assert [(t["id"], t["name"], t["to"]["name"], t["to"]["statusCategory"]["key"]) for t in listed] == [
        ("4", "Start Progress", "In Progress", "indeterminate"),
        ("5", "Resolve Issue", "Resolved", "done"),
        ("2", "Close Issue", "Closed", "done"),
    ]
    assert [t["hasScreen"] for t in listed] == [False, True, True]
    assert all("fields" not in t and t["isAvailable"] is True for t in listed)
    expanded = _transitions(api, key, expand="transitions.fields")
    assert expanded[0]["fields"] == {}
    resolution = expanded[1]["fields"]["resolution"]
    assert resolution["required"] is True and resolution["key"] == "resolution"
    assert [v["name"] for v in resolution["allowedValues"]] == ["Done", "Won't Do", "Duplicate", "Cannot Reproduce"]
    assert [t["id"] for t in _transitions(api, key, transitionId="2")] == ["2"]
    assert api.transition(key, "4").status_code == 204
    assert [(t["id"], t["name"]) for t in _transitions(api, key)] == [
        ("301", "Stop Progress"),
        ("5", "Resolve Issue"),
        ("2", "Close Issue"),
    ]
    assert api.request("GET", "/issue/OPS-99/transitions").json() == ISSUE_NOT_FOUND


def test_resolve_close_and_reopen(jira: JiraStandIn, api: Api, clock: FakeClock) -> None:
    key = api.created(labels=["k"])
    clock.advance(60)
    resolved = api.transition(key, "5", resolution={"name": "Won't Do"})
    assert resolved.status_code == 204 and resolved.content == b""
    fields = jira.issue(key)["fields"]
    assert (fields["status"], fields["statusCategory"], fields["resolution"]) == ("Resolved", "done", "Won't Do")
    assert fields["resolutiondate"] == fields["updated"] == "2026-11-26T10:01:00.000+0000"
    assert api.keys("labels = k AND statusCategory != Done") == []
    rendered = api.request("GET", f"/issue/{key}", params={"fields": "resolution,status"}).json()["fields"]
    assert rendered["resolution"]["name"] == "Won't Do" and rendered["status"]["statusCategory"]["key"] == "done"
    # From Resolved, "Close Issue" is another transition (701) with no screen; it keeps the resolution.
    assert [(t["id"], t["name"]) for t in _transitions(api, key)] == [("701", "Close Issue"), ("3", "Reopen Issue")]
    assert api.transition(key, "701").status_code == 204
    assert (jira.issue(key)["fields"]["status"], jira.issue(key)["fields"]["resolution"]) == ("Closed", "Won't Do")
    assert api.transition(key, "3").status_code == 204
    fields = jira.issue(key)["fields"]
    assert (fields["status"], fields["statusCategory"], fields["resolution"], fields["resolutiondate"]) == (
        "Open",
        "new",
        None,
        None,
    )
    assert api.keys("labels = k AND statusCategory != Done") == [key]
    assert api.transition(key, "2", resolution={"id": "10000"}).status_code == 204  # by resolution id
    assert jira.issue(key)["fields"]["resolution"] == "Done"


# ----------------------------------------------------------------------------------------------
# Custom fields, and a Closed issue that is not editable

ROOT_CAUSE, TEAM = "customfield_10060", "customfield_10070"


@pytest.fixture()
def custom(clock: FakeClock) -> Iterator[tuple[JiraStandIn, Api]]:
    """A site with two text custom fields; the root cause is on the resolution screens too."""
    clock.now = T0
    fields = {ROOT_CAUSE: "Root cause", TEAM: "Team"}
    with JiraStandIn(clock=clock, custom_fields=fields, resolution_screen_fields=[ROOT_CAUSE]) as standin:
        with Api(standin) as client:
            yield standin, client


def test_custom_fields_on_the_create_and_edit_screens(custom: tuple[JiraStandIn, Api]) -> None:
    jira, api = custom
    key = api.created(**{TEAM: "web"})

    assert api.request("PUT", f"/issue/{key}", json={"fields": {ROOT_CAUSE: "disk full"}}).status_code == 204

    fields = jira.issue(key)["fields"]
    assert (fields[TEAM], fields[ROOT_CAUSE]) == ("web", "disk full")
    rendered = api.request("GET", f"/issue/{key}", params={"fields": f"{ROOT_CAUSE},summary"}).json()["fields"]
    assert rendered == {ROOT_CAUSE: "disk full", "summary": "Alert"}
    every = api.request("GET", f"/issue/{key}").json()["fields"]
    assert (every[ROOT_CAUSE], every[TEAM]) == ("disk full", "web")
    found = api.search("labels is EMPTY", fields=["*navigable"]).json()["issues"][0]["fields"]
    assert found[TEAM] == "web"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (17, "Operation value must be a string"),
        (["a"], "Operation value must be a string"),
        ("x" * 256, "The entered text is too long. It exceeds the allowed limit of 255 characters."),
    ],
)
def test_custom_text_fields_are_validated(custom: tuple[JiraStandIn, Api], value: Any, error: str) -> None:
    jira, api = custom
    key = api.created()

    refused = api.request("PUT", f"/issue/{key}", json={"fields": {TEAM: value}})

    assert refused.status_code == 400
    assert refused.json() == {"errorMessages": [], "errors": {TEAM: error}}
    assert jira.issue(key)["fields"][TEAM] is None


def test_the_resolution_screen_takes_the_fields_named_for_it(custom: tuple[JiraStandIn, Api]) -> None:
    jira, api = custom
    key = api.created()

    screen = next(t for t in _transitions(api, key, expand="transitions.fields") if t["id"] == "5")["fields"]
    assert sorted(screen) == [ROOT_CAUSE, "resolution"]
    assert (screen[ROOT_CAUSE]["required"], screen[ROOT_CAUSE]["name"]) == (False, "Root cause")
    refused = api.transition(key, "5", resolution={"name": "Done"}, **{TEAM: "web"})
    assert refused.json() == {"errorMessages": [], "errors": {TEAM: not_on_screen(TEAM)}}

    assert api.transition(key, "5", resolution={"name": "Done"}, **{ROOT_CAUSE: "disk full"}).status_code == 204

    fields = jira.issue(key)["fields"]
    assert (fields["status"], fields["resolution"], fields[ROOT_CAUSE]) == ("Resolved", "Done", "disk full")
    # Transitions without a screen take no field at all.
    assert api.transition(key, "3", **{ROOT_CAUSE: "x"}).json()["errors"] == {ROOT_CAUSE: not_on_screen(ROOT_CAUSE)}


def test_without_custom_fields_the_screens_are_unchanged(jira: JiraStandIn, api: Api) -> None:
    key = api.created()

    refused = api.request("PUT", f"/issue/{key}", json={"fields": {ROOT_CAUSE: "x"}})

    assert refused.json() == {"errorMessages": [], "errors": {ROOT_CAUSE: not_on_screen(ROOT_CAUSE)}}
    assert ROOT_CAUSE not in jira.issue(key)["fields"]
    listed = _transitions(api, key, expand="transitions.fields")
    assert [sorted(t["fields"]) for t in listed if t["id"] == "5"] == [["resolution"]]


def test_custom_field_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="customfield_"):
        JiraStandIn(custom_fields={"rootcause": "Root cause"})
    with pytest.raises(ValueError, match="resolution_screen_fields"):
        JiraStandIn(custom_fields={ROOT_CAUSE: "Root cause"}, resolution_screen_fields=[TEAM])


def test_a_closed_issue_is_not_editable_until_reopened(custom: tuple[JiraStandIn, Api]) -> None:
    jira, api = custom
    key = api.created()
    assert api.transition(key, "2", resolution={"name": "Done"}).status_code == 204

    refused = api.request("PUT", f"/issue/{key}", json={"fields": {"summary": "after", TEAM: "web"}})

    assert refused.status_code == 400
    assert refused.json()["errors"] == {"summary": not_on_screen("summary"), TEAM: not_on_screen(TEAM)}
    assert (jira.issue(key)["fields"]["summary"], jira.issue(key)["fields"][TEAM]) == ("Alert", None)
    # A resolved issue still is; a reopened one again.
    assert api.transition(key, "3").status_code == 204
    assert api.request("PUT", f"/issue/{key}", json={"fields": {TEAM: "web"}}).status_code == 204
    assert api.transition(key, "5", resolution={"name": "Done"}).status_code == 204
    assert api.request("PUT", f"/issue/{key}", json={"fields": {TEAM: "db"}}).status_code == 204
    assert jira.issue(key)["fields"][TEAM] == "db"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, {"errorMessages": ["Missing 'transition' identifier"], "errors": {}}),
        (
            {"transition": {"name": "Resolve Issue"}},
            {"errorMessages": ["Missing 'transition' identifier"], "errors": {}},
        ),
        (
            {"transition": {"id": "abc"}},
            {"errorMessages": ["'transition' identifier must be an integer"], "errors": {}},
        ),
        (
            {"transition": {"id": "3"}},
            {"errorMessages": ["Transition id '3' is not valid for this issue."], "errors": {}},
        ),
        ({"transition": {"id": "5"}}, {"errorMessages": ["Field Resolution is required."], "errors": {}}),
        (
            {"transition": {"id": "2"}, "fields": {"resolution": None}},
            {"errorMessages": ["Field Resolution is required."], "errors": {}},
        ),
        (
            {"transition": {"id": "4"}, "fields": {"resolution": {"name": "Done"}}},
            {"errorMessages": [], "errors": {"resolution": not_on_screen("resolution")}},
        ),
        (
            {"transition": {"id": "5"}, "fields": {"resolution": {"name": "Fixed"}}},
            {"errorMessages": [], "errors": {"resolution": "The resolution selected is invalid."}},
        ),
        (
            {"transition": {"id": "5"}, "fields": {"resolution": {"name": "Done"}, "summary": "x"}},
            {"errorMessages": [], "errors": {"summary": not_on_screen("summary")}},
        ),
    ],
)
def test_transition_errors_change_nothing(jira: JiraStandIn, api: Api, body: dict[str, Any], error: Any) -> None:
    key = api.created()
    response = api.request("POST", f"/issue/{key}/transitions", json=body)
    assert (response.status_code, response.json()) == (400, error)
    fields = jira.issue(key)["fields"]
    assert (fields["status"], fields["resolution"], fields["updated"]) == ("Open", None, T0_TEXT)


def test_transition_on_a_missing_issue_is_404(api: Api) -> None:
    response = api.transition("OPS-99", "5", resolution={"name": "Done"})
    assert (response.status_code, response.json()) == (404, ISSUE_NOT_FOUND)


def test_seeding_and_a_person_moving_issues(jira: JiraStandIn, api: Api) -> None:
    seeded = jira.insert_issue("OPS", "closed by hand", labels=["k"], status="Closed", created=T0 - 3600)
    assert seeded["fields"]["resolution"] is None and seeded["fields"]["created"] == "2026-11-26T09:00:00.000+0000"
    # Closed without a resolution: done by status category, yet unresolved (FACTS §5).
    assert api.keys("statusCategory = Done AND resolution is EMPTY") == [seeded["key"]]
    moved = jira.set_status(seeded["key"], "Open")
    assert (moved["fields"]["status"], moved["fields"]["resolution"]) == ("Open", None)
    resolved = jira.set_status(seeded["key"], "Resolved")
    assert (resolved["fields"]["statusCategory"], resolved["fields"]["resolution"]) == ("done", "Done")
    assert jira.set_status(seeded["key"], "Closed", resolution="Duplicate")["fields"]["resolution"] == "Duplicate"
    with pytest.raises(ValueError):
        jira.set_status(seeded["key"], "Done")
    with pytest.raises(ValueError):
        jira.insert_issue("OPS", "x", issue_type="Bug")
    with pytest.raises(ValueError):
        jira.insert_issue("NOPE", "x")
    with pytest.raises(KeyError):
        jira.set_status("OPS-99", "Open")


# ----------------------------------------------------------------------------------------------
# Data Center


def test_datacenter_serves_v2_only_with_wiki_strings(dc: JiraStandIn, dc_api: Api) -> None:
    assert dc_api.request("POST", "/rest/api/3/issue", json={"fields": {}}).status_code == 404
    created = dc_api.create("on prem", description="h1. Alert\n\nbody", labels=["k"])
    assert created.status_code == 201
    assert created.json() == {"id": "10000", "key": "OPS-1", "self": f"{dc.url}/rest/api/2/issue/10000"}
    refused = dc_api.create("adf", description=doc("no"))
    assert refused.json() == {"errorMessages": [], "errors": {"description": "Operation value must be a string"}}
    issue = dc_api.request("GET", "/issue/OPS-1").json()
    assert issue["fields"]["description"] == "h1. Alert\n\nbody"
    assert dc_api.request("GET", "/rest/api/latest/issue/OPS-1").status_code == 200


def test_datacenter_search_has_start_at_and_total(dc: JiraStandIn, dc_api: Api) -> None:
    for index in range(3):
        dc_api.created(f"issue {index}", labels=["k"])
    page = dc_api.request(
        "GET", "/search", params={"jql": "labels = k ORDER BY key ASC", "startAt": "1", "maxResults": "1"}
    ).json()
    assert (page["startAt"], page["maxResults"], page["total"]) == (1, 1, 3)
    assert [issue["key"] for issue in page["issues"]] == ["OPS-2"]
    fields = page["issues"][0]["fields"]
    assert "summary" in fields and "status" in fields and "comment" not in fields  # navigable by default
    posted = dc_api.request("POST", "/search", json={"jql": "labels = k", "fields": ["summary"], "maxResults": 10})
    assert posted.json()["total"] == 3 and set(posted.json()["issues"][0]["fields"]) == {"summary"}
    assert dc_api.request("GET", "/search", params={"jql": "order by created"}).json()["total"] == 3  # unbounded ok
    assert dc_api.request("GET", "/search", params={"jql": "labels ~ k"}).status_code == 400
    for method in ("GET", "POST"):
        assert dc_api.request(method, "/search/jql", json={"jql": "labels = k"}).status_code == 404


def test_datacenter_comments(dc: JiraStandIn, dc_api: Api) -> None:
    key = dc_api.created()
    assert dc_api.request("POST", f"/issue/{key}/comment", json={"body": "wiki *text*"}).status_code == 201
    refused = dc_api.request("POST", f"/issue/{key}/comment", json={"body": doc("adf")})
    assert refused.json() == {"errorMessages": [], "errors": {"comment": "Comment body is not valid!"}}
    internal = dc_api.request(
        "POST", f"/rest/servicedeskapi/request/{key}/comment", json={"body": "n", "public": False}
    )
    assert internal.status_code == 201
    prop = [{"key": "sd.public.comment", "value": {"internal": True}}]
    dc_api.request("POST", f"/issue/{key}/comment", json={"body": "also internal", "properties": prop})
    assert [(c["body"], c["internal"]) for c in dc.comments(key)] == [
        ("wiki *text*", False),
        ("n", True),
        ("also internal", True),
    ]


# ----------------------------------------------------------------------------------------------
# Faults


def test_429_with_retry_after_in_jiras_shape_then_normal_service(jira: JiraStandIn, api: Api) -> None:
    jira.faults.add(kind="status", status=429, retry_after=3, method="POST", path=r"/rest/api/3/issue$", times=1)
    limited = api.create()
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {"errorMessages": ["Rate limit exceeded."], "errors": {}}
    assert jira.issues() == []
    assert api.create().status_code == 201
    assert [r.fault for r in jira.requests] == ["status", None]


def test_5xx_until_cleared_filtered_by_method_with_custom_bodies(jira: JiraStandIn, api: Api) -> None:
    jira.faults.status(503, method="POST", headers={"RateLimit-Reason": "jira-burst-based"}, retry_after=0.5)
    for _ in range(2):
        failed = api.create()
        assert failed.status_code == 503 and failed.headers["Retry-After"] == "0.5"
        assert failed.headers["RateLimit-Reason"] == "jira-burst-based"
        assert failed.json() == {"errorMessages": ["Injected fault: HTTP 503 Service Unavailable"], "errors": {}}
    assert api.request("GET", "/myself").status_code == 200
    jira.faults.clear()
    jira.faults.status(502, body="<html>Bad gateway</html>", times=1)
    gateway = api.request("GET", "/myself")
    assert gateway.status_code == 502 and gateway.text == "<html>Bad gateway</html>"
    assert api.create().status_code == 201


def test_latency_fault(jira: JiraStandIn, api: Api) -> None:
    rule = jira.faults.latency(0.15, path=r"/search/jql$", times=1)
    api.created()
    started = time.monotonic()
    assert api.search("project = OPS").status_code == 200
    assert 0.15 <= time.monotonic() - started < 1.0
    assert jira.faults.fired(rule) == 1


def test_drop_handles_nothing_and_commit_then_drop_writes(jira: JiraStandIn, api: Api) -> None:
    jira.faults.drop(method="POST", times=1)
    with pytest.raises(requests.ConnectionError):
        api.create("lost")
    assert jira.issues() == []
    jira.faults.commit_then_drop(method="POST", path=r"/issue$", times=1)
    with pytest.raises(requests.ConnectionError):
        api.create("ghost", labels=["k1"])
    # Written although the client saw an error: a client looks before it retries.
    assert api.keys("labels = k1") == ["OPS-1"]
    assert [(r.status, r.fault) for r in jira.requests[:2]] == [(None, "drop"), (None, "commit_then_drop")]


def test_a_stand_in_bug_is_answered_as_jiras_500(jira: JiraStandIn, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(jira, "_handle", broken)
    response = api.request("GET", "/myself")
    assert (response.status_code, response.json()) == (500, {"errorMessages": ["Internal server error"], "errors": {}})


def test_the_stand_ins_share_the_common_parts() -> None:
    assert servicenow.FaultInjector is common.FaultInjector
    assert servicenow.FaultRule is common.FaultRule
    assert servicenow.RequestRecord is common.RequestRecord
    assert issubclass(servicenow.ServiceNowStandIn, common.LoopbackStandIn)
    assert issubclass(JiraStandIn, common.LoopbackStandIn)


# ----------------------------------------------------------------------------------------------
# Lifecycle, reset, concurrency, command line


def test_reset_clears_issues_counters_faults_and_log(jira: JiraStandIn, api: Api) -> None:
    api.created()
    api.request("POST", "/issue/OPS-1/comment", json={"body": doc("x")})
    jira.faults.add(kind="status", status=500, method="DELETE")
    jira.reset()
    assert jira.issues() == [] and jira.requests == [] and jira.faults.rules == []
    assert api.create().json() == {"id": "10000", "key": "OPS-1", "self": f"{jira.url}/rest/api/3/issue/10000"}
    comment = api.request("POST", "/issue/OPS-1/comment", json={"body": doc("x")})
    assert comment.json()["id"] == "10000"


def test_concurrent_creates_get_distinct_keys(jira: JiraStandIn) -> None:
    keys: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker(index: int) -> None:
        try:
            with Api(jira) as client:
                barrier.wait(timeout=5)
                key = client.created(f"t{index}")
                with lock:
                    keys.append(key)
        except BaseException as error:  # surfaced in the test thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sorted(keys, key=lambda k: int(k.split("-")[1])) == [f"OPS-{n}" for n in range(1, 21)]
    assert sorted(int(issue["id"]) for issue in jira.issues()) == list(range(10000, 10020))


def test_stop_then_start_comes_back_on_the_same_port_with_its_issues() -> None:
    standin = JiraStandIn()
    with pytest.raises(RuntimeError):
        _ = standin.url
    standin.start()
    url = standin.url
    session = requests.Session()  # an idle keep-alive connection must not hold up stop()
    session.auth = (EMAIL, TOKEN)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with pytest.raises(RuntimeError):
            standin.start()
        fields = {"project": {"key": "OPS"}, "issuetype": {"name": "Task"}, "summary": "survives"}
        assert session.post(url + "/rest/api/3/issue", json={"fields": fields}, timeout=5).status_code == 201
        started = time.monotonic()
        standin.stop()
        assert time.monotonic() - started < 1.0
        assert not standin.running
        with pytest.raises(requests.ConnectionError):
            session.get(url + "/rest/api/3/issue/OPS-1", timeout=2)
        standin.start()
        assert standin.url == url
        assert session.get(url + "/rest/api/3/issue/OPS-1", timeout=5).json()["fields"]["summary"] == "survives"
    finally:
        standin.stop()
        session.close()
    standin.stop()  # idempotent


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="deployment"):
        JiraStandIn(deployment="server")
    with pytest.raises(ValueError, match="project key"):
        JiraStandIn(projects={"ops": ("Task",)})
    with pytest.raises(ValueError, match="issue type"):
        JiraStandIn(projects={"OPS": ()})


def test_runs_from_the_command_line_and_stops_on_ctrl_c() -> None:
    with standin_process("bridge.sandbox.jira") as (first, credentials):
        assert first.startswith("Jira stand-in (cloud): http://127.0.0.1:")
        url = first.split(": ", 1)[1].strip()
        assert EMAIL in credentials and TOKEN in credentials
        assert requests.get(url + "/rest/api/3/myself", auth=(EMAIL, TOKEN), timeout=5).status_code == 200
