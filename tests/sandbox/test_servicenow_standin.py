"""The ServiceNow stand-in over real loopback HTTP: Table API semantics, auth, faults, concurrency."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from bridge.sandbox.servicenow import FaultInjector, RequestRecord, ServiceNowStandIn
from bridge.sandbox.snow_query import Condition, parse_query
from tests.kit import FakeClock
from tests.sandbox.command_line import standin_process

pytestmark = pytest.mark.integration

USER, PASSWORD = "bridge", "sandbox-password"
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC).timestamp()
VM_SYS_ID = "a" * 32
INCIDENT = "/api/now/table/incident"
NOT_AUTHENTICATED = {
    "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
    "status": "failure",
}


SEED = {
    "cmdb_ci": [
        {
            "sys_id": VM_SYS_ID,
            "name": "test-VM",
            "object_id": "/subscriptions/1/resourceGroups/RG/providers"
            "/Microsoft.Compute/virtualMachines/test-VM",
            "sys_class_name": "cmdb_ci_vm_instance",
        },
        {"name": "test-storage", "sys_class_name": "cmdb_ci_cloud_storage_account"},
    ]
}


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(scope="module")
def server(clock: FakeClock) -> Iterator[ServiceNowStandIn]:
    with ServiceNowStandIn(seed=SEED, clock=clock, token_lifetime_seconds=600) as standin:
        yield standin


@pytest.fixture()
def sn(server: ServiceNowStandIn, clock: FakeClock) -> ServiceNowStandIn:
    """The shared stand-in, back to its seed, with no faults, an empty log and the clock at T0."""
    server.reset()
    clock.now = T0
    return server


@pytest.fixture()
def api(sn: ServiceNowStandIn) -> Iterator[Api]:
    with Api(sn.url) as client:
        yield client


class Api:
    """A requests session with basic auth and the stand-in's base URL."""

    def __init__(self, base: str, auth: Any = (USER, PASSWORD)) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.auth = auth

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base + path, **kwargs)

    def create(self, **fields: Any) -> dict[str, Any]:
        response = self.request("POST", INCIDENT, json=fields)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    def numbers(self, query: str, **params: str) -> list[str]:
        response = self.request(
            "GET", INCIDENT, params={"sysparm_query": query, "sysparm_fields": "number", **params}
        )
        assert response.status_code == 200, response.text
        return [row["number"] for row in response.json()["result"]]


# ----------------------------------------------------------------------------------------------
# CRUD and defaults


def test_post_returns_201_with_string_values_and_defaults(api: Api, sn: ServiceNowStandIn) -> None:
    response = api.request("POST", INCIDENT, json={"short_description": "Disk full", "hold_reason": 4})

    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    result = response.json()["result"]
    assert len(result["sys_id"]) == 32 and int(result["sys_id"], 16) >= 0
    assert response.headers["Location"] == f"{sn.url}{INCIDENT}/{result['sys_id']}"
    assert result["number"] == "INC0010001"
    assert (result["state"], result["impact"], result["urgency"], result["priority"]) == ("1", "3", "3", "5")
    assert result["sys_created_on"] == result["sys_updated_on"] == "2026-11-26 10:00:00"
    assert result["opened_at"] == "2026-11-26 10:00:00"
    assert result["sys_created_by"] == "bridge" and result["sys_mod_count"] == "0"
    assert result["hold_reason"] == "4"  # numbers come back as strings
    assert result["close_code"] == "" and result["cmdb_ci"] == ""  # unset is the empty string
    assert result["active"] == "true"
    assert all(isinstance(value, str) for value in result.values())


def test_numbers_follow_a_sequence_and_other_tables_get_none(api: Api) -> None:
    assert [api.create(short_description=f"n{i}")["number"] for i in range(3)] == [
        "INC0010001",
        "INC0010002",
        "INC0010003",
    ]
    ci = api.request("POST", "/api/now/table/cmdb_ci", json={"name": "web-01"}).json()["result"]
    assert "number" not in ci and ci["operational_status"] == "1" and ci["sys_class_name"] == "cmdb_ci"


def test_get_patch_put_delete_round_trip(api: Api, clock: FakeClock) -> None:
    created = api.create(short_description="before")
    path = f"{INCIDENT}/{created['sys_id']}"

    clock.advance(60)
    patched = api.request("PATCH", path, json={"short_description": "after", "category": "network"})
    assert patched.status_code == 200
    assert patched.json()["result"]["short_description"] == "after"
    assert patched.json()["result"]["sys_updated_on"] == "2026-11-26 10:01:00"
    assert patched.json()["result"]["sys_mod_count"] == "1"

    put = api.request("PUT", path, json={"description": "details"})
    assert put.status_code == 200
    # PUT is a partial update on an instance: fields not sent are kept.
    assert put.json()["result"]["short_description"] == "after"
    assert put.json()["result"]["description"] == "details"

    got = api.request("GET", path)
    assert got.status_code == 200
    assert got.json()["result"]["category"] == "network"

    deleted = api.request("DELETE", path)
    assert deleted.status_code == 204 and deleted.content == b""
    missing = api.request("GET", path)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "No Record found",
            "detail": "Record doesn't exist or ACL restricts the record retrieval",
        },
        "status": "failure",
    }
    assert api.request("PATCH", path, json={"state": "2"}).status_code == 404
    assert api.request("DELETE", path).status_code == 404


def test_versioned_paths_are_the_same_api(api: Api) -> None:
    created = api.request("POST", "/api/now/v2/table/incident", json={"short_description": "v2"})
    assert created.status_code == 201
    sys_id = created.json()["result"]["sys_id"]
    assert (
        api.request("GET", f"/api/now/v1/table/incident/{sys_id}").json()["result"]["number"] == "INC0010001"
    )
    assert api.request("GET", f"{INCIDENT}/{sys_id}").json()["result"]["short_description"] == "v2"


def test_an_unchanged_update_does_not_bump_the_record(api: Api, clock: FakeClock) -> None:
    created = api.create(short_description="same")
    clock.advance(30)
    result = api.request("PATCH", f"{INCIDENT}/{created['sys_id']}", json={"short_description": "same"})
    assert result.json()["result"]["sys_mod_count"] == "0"
    assert result.json()["result"]["sys_updated_on"] == "2026-11-26 10:00:00"


@pytest.mark.parametrize(
    ("impact", "urgency", "priority"),
    [
        ("1", "1", "1"),
        ("1", "2", "2"),
        ("2", "1", "2"),
        ("1", "3", "3"),
        ("2", "2", "3"),
        ("3", "1", "3"),
        ("2", "3", "4"),
        ("3", "2", "4"),
        ("3", "3", "5"),
    ],
)
def test_priority_follows_the_default_matrix(api: Api, impact: str, urgency: str, priority: str) -> None:
    assert api.create(impact=int(impact), urgency=urgency)["priority"] == priority


def test_priority_is_recomputed_on_update_and_cannot_be_written(api: Api) -> None:
    created = api.create(impact="3", urgency="3", priority="1")
    assert created["priority"] == "5"
    path = f"{INCIDENT}/{created['sys_id']}"
    assert api.request("PATCH", path, json={"impact": "1"}).json()["result"]["priority"] == "3"
    assert api.request("PATCH", path, json={"urgency": 1}).json()["result"]["priority"] == "1"


def test_json_values_are_stored_as_strings(api: Api) -> None:
    result = api.create(short_description=12.5, description=None, category=True)
    assert (result["short_description"], result["description"], result["category"]) == ("12.5", "", "true")


def test_unknown_fields_are_silently_ignored_on_write(api: Api, sn: ServiceNowStandIn) -> None:
    response = api.request("POST", INCIDENT, json={"short_description": "ok", "u_no_such_field": "x"})
    assert response.status_code == 201
    assert "u_no_such_field" not in response.json()["result"]
    sys_id = response.json()["result"]["sys_id"]
    patched = api.request("PATCH", f"{INCIDENT}/{sys_id}", json={"nonexistent": "y"})
    assert patched.status_code == 200
    assert "nonexistent" not in sn.records("incident")[0]


def test_read_only_system_fields_are_ignored_on_write(api: Api) -> None:
    created = api.create(sys_created_on="2000-01-01 00:00:00", sys_mod_count="99", sys_class_name="nope")
    assert created["sys_created_on"] == "2026-11-26 10:00:00"
    assert created["sys_mod_count"] == "0"
    assert created["sys_class_name"] == "incident"


def test_a_client_may_choose_the_sys_id_on_insert_only(api: Api) -> None:
    chosen = "0123456789abcdef0123456789abcdef"
    created = api.create(sys_id=chosen, short_description="mine")
    assert created["sys_id"] == chosen
    patched = api.request("PATCH", f"{INCIDENT}/{chosen}", json={"sys_id": "f" * 32}).json()["result"]
    assert patched["sys_id"] == chosen


@pytest.mark.parametrize(
    ("field", "limit"),
    [("correlation_id", 100), ("short_description", 160), ("correlation_display", 100), ("category", 40)],
)
def test_strings_are_silently_truncated_at_their_max_length(api: Api, field: str, limit: int) -> None:
    value = "x" * (limit - 1) + "yz" + "q" * 50
    result = api.create(**{field: value})
    assert result[field] == value[:limit]
    assert len(result[field]) == limit


# ----------------------------------------------------------------------------------------------
# Queries


@pytest.fixture()
def corpus(api: Api) -> dict[str, str]:
    """Five incidents; returns their numbers by a short name."""
    rows = {
        "disk": {
            "short_description": "Disk full on web-01",
            "correlation_id": "abc-1",
            "category": "storage",
        },
        "cpu": {"short_description": "CPU high on web-02", "correlation_id": "ABC-2", "impact": "1"},
        "net": {"short_description": "Network down", "correlation_id": "xyz-3", "category": "network"},
        "mem": {"short_description": "Memory leak web-03", "correlation_id": "", "state": "2"},
        "dns": {"short_description": "DNS failure", "correlation_id": "abc-10", "state": "3", "urgency": "1"},
    }
    return {name: api.create(**fields)["number"] for name, fields in rows.items()}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("correlation_id=abc-1", ["disk"]),
        ("correlation_id=ABC-1", ["disk"]),  # comparisons ignore case
        ("correlation_id!=abc-1", ["cpu", "net", "mem", "dns"]),
        ("correlation_idINabc-1,xyz-3", ["disk", "net"]),
        ("correlation_idNOT INabc-1,xyz-3", ["cpu", "mem", "dns"]),
        ("correlation_idSTARTSWITHabc", ["disk", "cpu", "dns"]),
        ("short_descriptionENDSWITHweb-02", ["cpu"]),
        ("short_descriptionLIKEweb", ["disk", "cpu", "mem"]),
        ("short_descriptionNOT LIKEweb", ["net", "dns"]),
        ("correlation_idISEMPTY", ["mem"]),
        ("correlation_idISNOTEMPTY", ["disk", "cpu", "net", "dns"]),
        ("categoryISEMPTY^correlation_idSTARTSWITHabc", ["cpu", "dns"]),
        ("state=1^short_descriptionLIKEweb", ["disk", "cpu"]),
        ("correlation_id=abc-1^ORcorrelation_id=xyz-3", ["disk", "net"]),
        ("correlation_id=abc-1^ORcategory=network^state=1", ["disk", "net"]),
        ("state=2^NQstate=3", ["mem", "dns"]),
        ("state=2^NQcorrelation_id=abc-1^ORcorrelation_id=abc-2", ["disk", "cpu", "mem"]),
        ("state>1", ["mem", "dns"]),
        ("state<=1^priority<5", ["cpu"]),
        ("stateIN2,3^urgency=1", ["dns"]),
        ("", ["disk", "cpu", "net", "mem", "dns"]),
    ],
)
def test_query_operators(api: Api, corpus: dict[str, str], query: str, expected: list[str]) -> None:
    assert api.numbers(query) == [corpus[name] for name in expected]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # The danger the bridge must survive: a condition on an unknown field is dropped, not false.
        ("nonexistent=abc-1", ["disk", "cpu", "net", "mem", "dns"]),
        ("u_correlation=abc-1^state=2", ["mem"]),
        ("correlation_id=abc-1^ORnonexistent=x", ["disk"]),
        ("nonexistent=x^NQstate=2", ["disk", "cpu", "net", "mem", "dns"]),
        ("this is not a condition^state=3", ["dns"]),
        ("ORDERBYnonexistent^state=3", ["dns"]),
    ],
)
def test_unknown_fields_in_a_query_are_silently_ignored(
    api: Api, corpus: dict[str, str], query: str, expected: list[str]
) -> None:
    response = api.request("GET", INCIDENT, params={"sysparm_query": query, "sysparm_fields": "number"})
    assert response.status_code == 200
    assert [row["number"] for row in response.json()["result"]] == [corpus[name] for name in expected]


def test_order_by_ascending_descending_and_multiple_keys(api: Api, corpus: dict[str, str]) -> None:
    names = {number: name for name, number in corpus.items()}
    assert [names[n] for n in api.numbers("ORDERBYcorrelation_id")] == ["mem", "disk", "dns", "cpu", "net"]
    assert [names[n] for n in api.numbers("ORDERBYDESCcorrelation_id")] == [
        "net",
        "cpu",
        "dns",
        "disk",
        "mem",
    ]
    # priority is numeric: 3 sorts before 5; ties keep the next key's order.
    assert [names[n] for n in api.numbers("ORDERBYpriority^ORDERBYDESCnumber")] == [
        "dns",
        "cpu",
        "mem",
        "net",
        "disk",
    ]
    assert [names[n] for n in api.numbers("short_descriptionLIKEweb^ORDERBYDESCshort_description")] == [
        "mem",
        "disk",
        "cpu",
    ]


def test_limit_offset_and_total_count(api: Api, corpus: dict[str, str], sn: ServiceNowStandIn) -> None:
    response = api.request(
        "GET",
        INCIDENT,
        params={"sysparm_query": "ORDERBYnumber", "sysparm_fields": "number", "sysparm_limit": "2"},
    )
    assert response.headers["X-Total-Count"] == "5"
    assert [row["number"] for row in response.json()["result"]] == ["INC0010001", "INC0010002"]
    assert 'rel="next"' in response.headers["Link"] and "sysparm_offset=2" in response.headers["Link"]

    page = api.request(
        "GET",
        INCIDENT,
        params={
            "sysparm_query": "ORDERBYnumber",
            "sysparm_fields": "number",
            "sysparm_limit": "2",
            "sysparm_offset": "4",
        },
    )
    assert page.headers["X-Total-Count"] == "5"
    assert [row["number"] for row in page.json()["result"]] == ["INC0010005"]
    assert 'rel="next"' not in page.headers["Link"]
    filtered = api.request("GET", INCIDENT, params={"sysparm_query": "state=1", "sysparm_limit": "1"})
    assert filtered.headers["X-Total-Count"] == "3" and len(filtered.json()["result"]) == 1


def test_default_limit_is_ten_thousand(api: Api) -> None:
    response = api.request("GET", INCIDENT)
    assert response.status_code == 200 and response.json() == {"result": []}
    assert "sysparm_limit=10000" in response.headers["Link"]


def test_fields_selection_keeps_order_and_drops_unknown_fields(api: Api) -> None:
    api.create(short_description="pick", cmdb_ci=VM_SYS_ID)
    response = api.request(
        "GET",
        INCIDENT,
        params={
            "sysparm_fields": "number,nonexistent,short_description,cmdb_ci.name,cmdb_ci.object_id",
            "sysparm_exclude_reference_link": "true",
        },
    )
    assert response.json()["result"] == [
        {
            "number": "INC0010001",
            "short_description": "pick",
            "cmdb_ci.name": "test-VM",
            "cmdb_ci.object_id": SEED["cmdb_ci"][0]["object_id"],
        }
    ]


def test_dot_walked_conditions_follow_the_reference(api: Api) -> None:
    first = api.create(short_description="with ci", cmdb_ci=VM_SYS_ID)["number"]
    api.create(short_description="without ci")
    assert api.numbers("cmdb_ci.name=TEST-vm") == [first]


# ----------------------------------------------------------------------------------------------
# Reference fields and display values


def test_reference_field_link_value_and_display_forms(api: Api, sn: ServiceNowStandIn) -> None:
    sys_id = api.create(cmdb_ci=VM_SYS_ID, state="2")["sys_id"]
    path = f"{INCIDENT}/{sys_id}"
    link = f"{sn.url}/api/now/table/cmdb_ci/{VM_SYS_ID}"

    def get(**params: str) -> dict[str, Any]:
        result: dict[str, Any] = api.request(
            "GET", path, params={"sysparm_fields": "cmdb_ci,state", **params}
        ).json()["result"]
        return result

    assert get() == {"cmdb_ci": {"link": link, "value": VM_SYS_ID}, "state": "2"}
    assert get(sysparm_exclude_reference_link="true") == {"cmdb_ci": VM_SYS_ID, "state": "2"}
    assert get(sysparm_display_value="true") == {
        "cmdb_ci": {"display_value": "test-VM", "link": link},
        "state": "In Progress",
    }
    assert get(sysparm_display_value="true", sysparm_exclude_reference_link="true") == {
        "cmdb_ci": "test-VM",
        "state": "In Progress",
    }
    assert get(sysparm_display_value="all") == {
        "cmdb_ci": {"display_value": "test-VM", "value": VM_SYS_ID, "link": link},
        "state": {"display_value": "In Progress", "value": "2"},
    }


def test_seeded_subclasses_are_found_through_the_parent_table(api: Api, sn: ServiceNowStandIn) -> None:
    response = api.request(
        "GET",
        "/api/now/table/cmdb_ci",
        params={
            "sysparm_query": "object_idLIKEvirtualmachines/test-vm",
            "sysparm_fields": "sys_id,name,sys_class_name",
        },
    )
    assert response.json()["result"] == [
        {"sys_id": VM_SYS_ID, "name": "test-VM", "sys_class_name": "cmdb_ci_vm_instance"}
    ]
    storage = api.request("GET", "/api/now/table/cmdb_ci_cloud_storage_account").json()["result"]
    assert [row["name"] for row in storage] == ["test-storage"]
    assert [ci["name"] for ci in sn.records("cmdb_ci")] == ["test-VM", "test-storage"]
    assert sn.records("cmdb_ci_vm_instance")[0]["sys_id"] == VM_SYS_ID


# ----------------------------------------------------------------------------------------------
# Journal fields


def test_work_notes_append_and_display_newest_first(
    api: Api, sn: ServiceNowStandIn, clock: FakeClock
) -> None:
    created = api.create(short_description="noted", work_notes="first note")
    path = f"{INCIDENT}/{created['sys_id']}"
    assert created["work_notes"] == ""
    clock.advance(90)
    api.request("PATCH", path, json={"work_notes": "second note", "comments": "for the caller"})
    api.request("PATCH", path, json={"work_notes": "   "})  # blank entries are not journaled

    plain = api.request("GET", path, params={"sysparm_fields": "work_notes,comments"}).json()["result"]
    assert plain == {"work_notes": "", "comments": ""}
    shown = api.request(
        "GET", path, params={"sysparm_fields": "work_notes,comments", "sysparm_display_value": "true"}
    ).json()["result"]
    assert shown["work_notes"] == (
        "2026-11-26 10:01:30 - bridge (Work notes)\nsecond note\n\n"
        "2026-11-26 10:00:00 - bridge (Work notes)\nfirst note\n\n"
    )
    assert shown["comments"] == "2026-11-26 10:01:30 - bridge (Additional comments)\nfor the caller\n\n"
    assert sn.journal("incident", created["sys_id"]) == ["first note", "second note"]
    assert sn.journal("incident", created["sys_id"], "comments") == ["for the caller"]
    all_form = api.request(
        "GET", path, params={"sysparm_fields": "work_notes", "sysparm_display_value": "all"}
    ).json()["result"]
    assert all_form["work_notes"]["value"] == "" and "first note" in all_form["work_notes"]["display_value"]


def test_a_work_note_alone_counts_as_an_update(api: Api, clock: FakeClock) -> None:
    created = api.create(short_description="x")
    clock.advance(5)
    result = api.request("PATCH", f"{INCIDENT}/{created['sys_id']}", json={"work_notes": "n"}).json()[
        "result"
    ]
    assert result["sys_mod_count"] == "1" and result["sys_updated_on"] == "2026-11-26 10:00:05"


# ----------------------------------------------------------------------------------------------
# Resolve data policy


def test_resolving_without_close_fields_is_refused(api: Api, sn: ServiceNowStandIn) -> None:
    created = api.create(short_description="to resolve")
    path = f"{INCIDENT}/{created['sys_id']}"

    refused = api.request("PATCH", path, json={"state": "6"})
    assert refused.status_code == 403
    body = refused.json()
    assert body["status"] == "failure"
    assert body["error"]["message"].startswith("Data Policy Exception: ")
    assert "Resolution code" in body["error"]["message"] and "Resolution notes" in body["error"]["message"]
    assert body["error"]["detail"]

    only_code = api.request("PATCH", path, json={"state": 7, "close_code": "Solution provided"})
    assert only_code.status_code == 403
    assert "Resolution notes" in only_code.json()["error"]["message"]
    assert "Resolution code" not in only_code.json()["error"]["message"]
    assert sn.records("incident")[0]["state"] == "1"
    assert sn.records("incident")[0]["close_code"] == ""  # nothing of a refused update is kept


def test_resolving_with_close_fields_is_accepted_and_stamped(api: Api, clock: FakeClock) -> None:
    created = api.create(short_description="to resolve")
    path = f"{INCIDENT}/{created['sys_id']}"
    clock.advance(120)
    resolved = api.request(
        "PATCH",
        path,
        json={"state": "6", "close_code": "Solution provided", "close_notes": "Alert resolved"},
    )
    assert resolved.status_code == 200
    result = resolved.json()["result"]
    assert (result["state"], result["resolved_at"], result["active"]) == ("6", "2026-11-26 10:02:00", "true")
    # close fields already on the record satisfy the policy for later updates
    clock.advance(60)
    closed = api.request("PATCH", path, json={"state": "7", "work_notes": "closing"})
    assert closed.status_code == 200
    assert closed.json()["result"]["closed_at"] == "2026-11-26 10:03:00"
    assert closed.json()["result"]["resolved_at"] == "2026-11-26 10:02:00"
    assert closed.json()["result"]["active"] == "false"


def test_creating_a_resolved_incident_needs_close_fields(api: Api, sn: ServiceNowStandIn) -> None:
    refused = api.request("POST", INCIDENT, json={"short_description": "x", "state": "6"})
    assert refused.status_code == 403
    assert sn.records("incident") == []
    accepted = api.create(state="6", close_code="Solution provided", close_notes="done")
    assert accepted["number"] == "INC0010001"  # a refused insert uses no number


# ----------------------------------------------------------------------------------------------
# Reopen and close


def test_reopening_a_resolved_incident_is_counted(api: Api, sn: ServiceNowStandIn, clock: FakeClock) -> None:
    operator = sn.insert("sys_user", {"user_name": USER, "name": "Alert bridge"})["sys_id"]
    created = api.create(state="6", close_code="Solution provided", close_notes="over")
    path = f"{INCIDENT}/{created['sys_id']}"
    clock.advance(300)

    reopened = api.request("PATCH", path, json={"state": "2", "work_notes": "fired again"}).json()["result"]

    assert (reopened["state"], reopened["active"], reopened["reopen_count"]) == ("2", "true", "1")
    assert (reopened["reopened_by"]["value"], reopened["reopened_time"]) == (operator, "2026-11-26 10:05:00")
    # What the instance keeps: the close fields and the resolve stamp (as best we know).
    assert (reopened["close_code"], reopened["close_notes"], reopened["resolved_at"]) == (
        "Solution provided",
        "over",
        "2026-11-26 10:00:00",
    )
    assert sn.journal("incident", created["sys_id"]) == ["fired again"]
    api.request("PATCH", path, json={"state": "6"})
    again = api.request("PATCH", path, json={"state": "1"}).json()["result"]
    assert again["reopen_count"] == "2"
    # Only the instance counts: a client cannot write the reopen fields.
    written = api.request("PATCH", path, json={"reopen_count": "9", "reopened_time": "2020-01-01 00:00:00"})
    assert written.json()["result"]["reopen_count"] == "2"


def test_an_open_incident_moving_between_open_states_is_no_reopen(api: Api) -> None:
    created = api.create(state="1")

    moved = api.request("PATCH", f"{INCIDENT}/{created['sys_id']}", json={"state": "2"}).json()["result"]

    assert (moved["reopen_count"], moved["reopened_time"]) == ("", "")


@pytest.mark.parametrize("state", ["1", "2", "3", "6"])
def test_a_closed_incident_cannot_be_reopened(api: Api, sn: ServiceNowStandIn, state: str) -> None:
    created = api.create(state="7", close_code="Solution provided", close_notes="closed")

    refused = api.request("PATCH", f"{INCIDENT}/{created['sys_id']}", json={"state": state, "work_notes": "x"})

    assert refused.status_code == 403
    detail = refused.json()["error"]["detail"]
    assert detail.startswith("Operation against file 'incident' was aborted by Business Rule")
    (row,) = sn.records("incident")
    assert (row["state"], row["reopen_count"]) == ("7", "")
    assert sn.journal("incident", row["sys_id"]) == []  # nothing of a refused update is kept


def test_closing_directly_needs_the_close_fields_too(api: Api, sn: ServiceNowStandIn) -> None:
    created = api.create(state="2")
    path = f"{INCIDENT}/{created['sys_id']}"

    assert api.request("PATCH", path, json={"state": "7"}).status_code == 403
    closed = api.request("PATCH", path, json={"state": "7", "close_code": "Solution provided", "close_notes": "done"})

    assert closed.status_code == 200
    result = closed.json()["result"]
    assert (result["state"], result["active"]) == ("7", "false")
    assert result["closed_at"] == result["resolved_at"] == "2026-11-26 10:00:00"


# ----------------------------------------------------------------------------------------------
# What reference columns point at


@pytest.mark.parametrize(
    ("table", "values", "query"),
    [
        ("sys_user_group", {"name": "Azure Ops"}, "name=azure ops"),
        ("sys_user", {"user_name": "jsmith", "name": "John Smith", "email": "js@contoso.com"}, "user_name=JSMITH"),
        ("sys_user", {"user_name": "jsmith", "name": "John Smith", "email": "js@contoso.com"}, "name=John Smith"),
        ("sys_user", {"user_name": "jsmith", "name": "John Smith", "email": "js@contoso.com"}, "email=js@contoso.com"),
        ("cmdb_ci_service", {"name": "Web Shop"}, "name=Web Shop"),
        ("service_offering", {"name": "Web Shop EU"}, "name=web shop eu"),
        ("core_company", {"name": "Contoso"}, "name=Contoso"),
        ("cmn_location", {"name": "Paris", "city": "Paris"}, "name=Paris"),
    ],
)
def test_reference_tables_are_seeded_and_queried_by_their_fields(
    api: Api, sn: ServiceNowStandIn, table: str, values: dict[str, str], query: str
) -> None:
    seeded = sn.insert(table, values)["sys_id"]
    sn.insert(table, {**values, **{k: v + " 2" for k, v in values.items()}})

    params = {"sysparm_query": query, "sysparm_fields": "sys_id"}
    response = api.request("GET", f"/api/now/table/{table}", params=params)

    assert response.json()["result"] == [{"sys_id": seeded}]


def test_service_offerings_are_services(api: Api, sn: ServiceNowStandIn) -> None:
    service = sn.insert("cmdb_ci_service", {"name": "Web Shop"})["sys_id"]
    offering = sn.insert("service_offering", {"name": "Web Shop EU", "parent": service})["sys_id"]

    services = api.request("GET", "/api/now/table/cmdb_ci_service", params={"sysparm_fields": "sys_id"})

    assert [row["sys_id"] for row in services.json()["result"]] == [service, offering]
    assert sn.records("cmdb_ci")[-2:] == sn.records("cmdb_ci_service")


def test_incident_references_show_their_display_values(api: Api, sn: ServiceNowStandIn) -> None:
    group = sn.insert("sys_user_group", {"name": "Azure Ops"})["sys_id"]
    company = sn.insert("core_company", {"name": "Contoso"})["sys_id"]
    location = sn.insert("cmn_location", {"name": "Paris"})["sys_id"]
    service = sn.insert("cmdb_ci_service", {"name": "Web Shop"})["sys_id"]
    offering = sn.insert("service_offering", {"name": "Web Shop EU"})["sys_id"]
    fields = {
        "assignment_group": group,
        "company": company,
        "location": location,
        "business_service": service,
        "service_offering": offering,
    }
    sys_id = api.create(**fields)["sys_id"]

    shown = api.request(
        "GET",
        f"{INCIDENT}/{sys_id}",
        params={
            "sysparm_fields": ",".join(fields),
            "sysparm_display_value": "true",
            "sysparm_exclude_reference_link": "true",
        },
    ).json()["result"]

    assert shown == {
        "assignment_group": "Azure Ops",
        "company": "Contoso",
        "location": "Paris",
        "business_service": "Web Shop",
        "service_offering": "Web Shop EU",
    }
    assert api.numbers("assignment_group.name=azure ops") == ["INC0010001"]


def test_a_name_in_a_reference_column_is_stored_as_given(api: Api, sn: ServiceNowStandIn) -> None:
    sn.insert("sys_user_group", {"name": "Azure Ops"})
    sys_id = api.create(assignment_group="Azure Ops")["sys_id"]

    (row,) = sn.records("incident")
    assert row["assignment_group"] == "Azure Ops"
    shown = api.request(
        "GET", f"{INCIDENT}/{sys_id}", params={"sysparm_fields": "assignment_group", "sysparm_display_value": "true"}
    )
    assert shown.json()["result"]["assignment_group"] == {
        "display_value": "",
        "link": f"{sn.url}/api/now/table/sys_user_group/Azure Ops",
    }


def test_reference_tables_can_be_seeded_at_construction(clock: FakeClock) -> None:
    seed = {"sys_user_group": [{"name": "Azure Ops"}], "core_company": [{"name": "Contoso"}]}
    with ServiceNowStandIn(seed=seed, clock=clock) as standin:
        assert [row["name"] for row in standin.records("sys_user_group")] == ["Azure Ops"]
        standin.reset()
        assert [row["name"] for row in standin.records("core_company")] == ["Contoso"]


# ----------------------------------------------------------------------------------------------
# Authentication


def test_missing_or_wrong_credentials_get_401(sn: ServiceNowStandIn) -> None:
    anonymous = requests.get(sn.url + INCIDENT, timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.json() == NOT_AUTHENTICATED
    wrong = requests.get(sn.url + INCIDENT, auth=(USER, "wrong"), timeout=5)
    assert wrong.status_code == 401 and wrong.json() == NOT_AUTHENTICATED
    garbage = requests.get(sn.url + INCIDENT, headers={"Authorization": "Basic %%%"}, timeout=5)
    assert garbage.status_code == 401
    unknown_bearer = requests.get(sn.url + INCIDENT, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert unknown_bearer.status_code == 401 and unknown_bearer.json() == NOT_AUTHENTICATED


def _token(sn: ServiceNowStandIn, **form: str) -> requests.Response:
    return requests.post(sn.url + "/oauth_token.do", data=form, timeout=5)


def _bearer(sn: ServiceNowStandIn, token: str) -> requests.Response:
    return requests.get(sn.url + INCIDENT, headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_oauth_client_credentials_token_is_accepted_until_it_expires(
    sn: ServiceNowStandIn, clock: FakeClock
) -> None:
    response = _token(sn, grant_type="client_credentials", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "scope", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600
    assert _bearer(sn, body["access_token"]).status_code == 200
    clock.advance(599)
    assert _bearer(sn, body["access_token"]).status_code == 200
    clock.advance(1)
    expired = _bearer(sn, body["access_token"])
    assert expired.status_code == 401 and expired.json() == NOT_AUTHENTICATED


def test_oauth_password_grant_and_refresh_after_expire_tokens(sn: ServiceNowStandIn) -> None:
    issued = _token(
        sn,
        grant_type="password",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        username=USER,
        password=PASSWORD,
    ).json()
    assert _bearer(sn, issued["access_token"]).status_code == 200
    sn.expire_tokens()
    assert _bearer(sn, issued["access_token"]).status_code == 401
    refreshed = _token(
        sn,
        grant_type="refresh_token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=issued["refresh_token"],
    )
    assert refreshed.status_code == 200
    new_token = refreshed.json()["access_token"]
    assert new_token != issued["access_token"]
    assert _bearer(sn, new_token).status_code == 200


def test_bearer_writes_are_journaled_as_the_token_user(sn: ServiceNowStandIn) -> None:
    token = _token(
        sn, grant_type="client_credentials", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    ).json()["access_token"]
    created = requests.post(
        sn.url + INCIDENT,
        json={"work_notes": "via oauth"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert created.status_code == 201
    assert created.json()["result"]["sys_created_by"] == "bridge"
    assert sn.requests[-1].auth == "bearer"


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "wrong"},
        {"grant_type": "client_credentials", "client_id": "other", "client_secret": CLIENT_SECRET},
        {
            "grant_type": "password",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "username": USER,
            "password": "wrong",
        },
        {
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": "unknown",
        },
    ],
    ids=["bad-secret", "bad-client", "bad-password", "bad-refresh"],
)
def test_oauth_refusals_are_401_access_denied(sn: ServiceNowStandIn, form: dict[str, str]) -> None:
    response = _token(sn, **form)
    assert response.status_code == 401
    assert response.json() == {"error_description": "access_denied", "error": "server_error"}


def test_oauth_unsupported_grant_and_wrong_method(sn: ServiceNowStandIn) -> None:
    response = _token(sn, grant_type="implicit", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"
    assert requests.get(sn.url + "/oauth_token.do", timeout=5).status_code == 405


def test_oauth_client_may_authenticate_with_basic(sn: ServiceNowStandIn) -> None:
    response = requests.post(
        sn.url + "/oauth_token.do",
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=5,
    )
    assert response.status_code == 200 and response.json()["access_token"]


# ----------------------------------------------------------------------------------------------
# Error bodies


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", INCIDENT, b"{not json", 400, "Exception while reading request"),
        ("POST", INCIDENT, b"[1, 2]", 400, "Exception while reading request"),
        ("POST", INCIDENT, b"", 400, "Exception while reading request"),
        ("GET", "/api/now/table/u_no_such_table", None, 404, "Invalid table u_no_such_table"),
        ("GET", f"{INCIDENT}/{'0' * 32}", None, 404, "No Record found"),
        ("DELETE", INCIDENT, None, 405, "Method not Supported"),
        ("POST", f"{INCIDENT}/{'0' * 32}", b"{}", 405, "Method not Supported"),
        ("GET", "/api/now/nothing/here", None, 400, "Requested URI does not represent any resource"),
        ("GET", "/nav_to.do", None, 404, "Not Found"),
    ],
)
def test_errors_have_the_servicenow_body(
    api: Api, method: str, path: str, body: bytes | None, status: int, message: str
) -> None:
    headers = {"Content-Type": "application/json"}
    response = api.request(method, path, data=body, headers=headers)
    assert response.status_code == status
    payload = response.json()
    assert payload["status"] == "failure"
    assert payload["error"]["message"] == message
    assert set(payload["error"]) == {"message", "detail"}


def test_patch_with_invalid_json_changes_nothing(api: Api, sn: ServiceNowStandIn) -> None:
    sys_id = api.create(short_description="keep")["sys_id"]
    response = api.request("PATCH", f"{INCIDENT}/{sys_id}", data=b"short_description=oops")
    assert response.status_code == 400
    assert response.json()["error"]["detail"] == "The payload is not valid JSON."
    assert sn.records("incident")[0]["short_description"] == "keep"


# ----------------------------------------------------------------------------------------------
# Faults


def test_latency_fault_delays_matching_requests(api: Api, sn: ServiceNowStandIn) -> None:
    rule = sn.faults.add(kind="latency", seconds=0.15, method="GET", times=1)
    started = time.monotonic()
    assert api.request("GET", INCIDENT).status_code == 200
    slow = time.monotonic() - started
    started = time.monotonic()
    assert api.request("GET", INCIDENT).status_code == 200
    fast = time.monotonic() - started
    assert 0.15 <= slow < 1.0
    assert fast < 0.1
    assert sn.faults.fired(rule) == 1


def test_429_with_retry_after_then_normal_service(api: Api, sn: ServiceNowStandIn) -> None:
    sn.faults.add(
        kind="status", status=429, retry_after=2, method="POST", path=r"/api/now/table/incident", times=1
    )
    limited = api.request("POST", INCIDENT, json={"short_description": "x"})
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.json()["status"] == "failure" and limited.json()["error"]["message"] == "Too Many Requests"
    assert sn.records("incident") == []  # the rejected request was not handled
    assert api.request("POST", INCIDENT, json={"short_description": "x"}).status_code == 201
    assert [r.fault for r in sn.requests] == ["status", None]


def test_5xx_fault_always_until_cleared_and_filters_by_method(api: Api, sn: ServiceNowStandIn) -> None:
    sn.faults.add(kind="status", status=503, method="PATCH")
    sys_id = api.create(short_description="x")["sys_id"]
    for _ in range(3):
        failed = api.request("PATCH", f"{INCIDENT}/{sys_id}", json={"state": "2"})
        assert failed.status_code == 503
        assert failed.json()["error"]["message"] == "Service Unavailable"
    assert api.request("GET", f"{INCIDENT}/{sys_id}").status_code == 200
    sn.faults.clear()
    assert api.request("PATCH", f"{INCIDENT}/{sys_id}", json={"state": "2"}).status_code == 200


def test_status_fault_with_custom_body_and_headers(api: Api, sn: ServiceNowStandIn) -> None:
    sn.faults.status(502, body="<html>Bad gateway</html>", headers={"X-Trace": "t1"}, times=1)
    response = api.request("GET", INCIDENT)
    assert response.status_code == 502
    assert response.text == "<html>Bad gateway</html>" and response.headers["X-Trace"] == "t1"


def test_dropped_connection_raises_connection_error_and_handles_nothing(
    api: Api, sn: ServiceNowStandIn
) -> None:
    sn.faults.add(kind="drop", method="POST", times=1)
    with pytest.raises(requests.ConnectionError):
        api.request("POST", INCIDENT, json={"short_description": "lost"})
    assert sn.records("incident") == []
    assert api.request("POST", INCIDENT, json={"short_description": "ok"}).status_code == 201
    dropped = sn.requests[0]
    assert (dropped.method, dropped.status, dropped.fault) == ("POST", None, "drop")


def test_commit_then_drop_writes_although_the_client_saw_an_error(api: Api, sn: ServiceNowStandIn) -> None:
    sn.faults.commit_then_drop(method="POST", path=r"/table/incident$", times=1)
    with pytest.raises(requests.ConnectionError):
        api.request("POST", INCIDENT, json={"short_description": "ghost", "correlation_id": "k1"})
    records = sn.records("incident")
    assert [(r["number"], r["correlation_id"]) for r in records] == [("INC0010001", "k1")]
    # The client can find what it created when it looks before retrying.
    assert api.numbers("correlation_id=k1") == ["INC0010001"]


def test_fault_rules_validate_their_arguments() -> None:
    faults = FaultInjector()
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.add(kind="explode")
    with pytest.raises(ValueError, match="status"):
        faults.add(kind="status")
    with pytest.raises(ValueError, match="times"):
        faults.add(kind="drop", times=0)
    rule = faults.add(kind="drop", times=1)
    assert faults.rules == [rule]
    assert faults.take("GET", "/x").action == rule
    assert faults.rules == [] and faults.take("GET", "/x").action is None


# ----------------------------------------------------------------------------------------------
# Request log, reset, direct seeding, concurrency, lifecycle


def test_request_log_records_auth_kind_but_never_secrets(sn: ServiceNowStandIn) -> None:
    requests.get(sn.url + INCIDENT, auth=(USER, PASSWORD), params={"sysparm_limit": "1"}, timeout=5)
    issued = _token(sn, grant_type="client_credentials", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    token = issued.json()["access_token"]
    _bearer(sn, token)
    requests.get(sn.url + INCIDENT, timeout=5)

    log = sn.requests
    assert [(r.method, r.path, r.status, r.auth) for r in log] == [
        ("GET", INCIDENT, 200, "basic"),
        ("POST", "/oauth_token.do", 200, None),
        ("GET", INCIDENT, 200, "bearer"),
        ("GET", INCIDENT, 401, None),
    ]
    assert log[0].query == {"sysparm_limit": "1"}
    assert isinstance(log[0], RequestRecord)
    text = repr(log)
    for secret in (PASSWORD, CLIENT_SECRET, token):
        assert secret not in text


def test_request_log_keeps_table_api_bodies(api: Api, sn: ServiceNowStandIn) -> None:
    api.create(short_description="logged", impact=2)
    assert sn.requests[0].body == {"short_description": "logged", "impact": 2}


def test_reset_reseeds_and_clears_faults_and_log(api: Api, sn: ServiceNowStandIn) -> None:
    api.create(short_description="gone after reset")
    sn.faults.add(kind="status", status=500)
    sn.reset()
    assert sn.records("incident") == []
    assert sn.records("cmdb_ci")[0]["sys_id"] == VM_SYS_ID
    assert sn.requests == [] and sn.faults.rules == []
    assert api.create(short_description="numbers restart")["number"] == "INC0010001"


def test_direct_insert_applies_post_defaults(sn: ServiceNowStandIn) -> None:
    row = sn.insert("incident", {"short_description": "seeded", "impact": 1, "urgency": 1, "bogus": "x"})
    assert (row["number"], row["state"], row["priority"]) == ("INC0010001", "1", "1")
    assert "bogus" not in row
    assert sn.records("incident") == [row]
    row["short_description"] = "mutated copy"
    assert sn.records("incident")[0]["short_description"] == "seeded"
    with pytest.raises(ValueError, match="unknown table"):
        sn.insert("u_nope", {})
    with pytest.raises(KeyError):
        sn.journal("incident", "f" * 32)


def test_concurrent_posts_get_distinct_numbers(sn: ServiceNowStandIn) -> None:
    numbers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            with Api(sn.url) as client:
                for round_ in range(3):
                    number = client.create(short_description=f"t{index}-{round_}")["number"]
                    with lock:
                        numbers.append(number)
        except BaseException as error:  # surfaced in the test thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sorted(numbers) == [f"INC{10001 + i:07d}" for i in range(36)]
    assert len({r["sys_id"] for r in sn.records("incident")}) == 36


def test_start_stop_and_url_lifecycle() -> None:
    standin = ServiceNowStandIn()
    with pytest.raises(RuntimeError):
        _ = standin.url
    standin.start()
    url = standin.url
    session = requests.Session()  # an idle keep-alive connection must not hold up stop()
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        with pytest.raises(RuntimeError):
            standin.start()
        assert session.get(url + INCIDENT, auth=(USER, PASSWORD), timeout=5).status_code == 200
    finally:
        started = time.monotonic()
        standin.stop()
        stop_seconds = time.monotonic() - started
    assert stop_seconds < 1.0
    with pytest.raises(requests.ConnectionError):
        session.get(url + INCIDENT, auth=(USER, PASSWORD), timeout=2)
    session.close()
    standin.stop()  # idempotent


def test_runs_from_the_command_line_and_stops_on_ctrl_c() -> None:
    with standin_process("bridge.sandbox.servicenow") as (first, credentials):
        assert first.startswith("ServiceNow stand-in: http://127.0.0.1:")
        url = first.split(": ", 1)[1].strip()
        assert USER in credentials and PASSWORD in credentials
        assert requests.get(url + INCIDENT, auth=(USER, PASSWORD), timeout=5).status_code == 200


# ----------------------------------------------------------------------------------------------
# The query engine on its own


def test_parse_query_structure_and_ignored_terms() -> None:
    known = {"a", "b", "c"}.__contains__
    parsed = parse_query("a=1^ORb!=2^cLIKEx^zz=9^NQcISEMPTY^ORDERBYDESCa^EQ", known)
    assert parsed.groups == (
        ((Condition("a", "=", "1"), Condition("b", "!=", "2")), (Condition("c", "LIKE", "x"),)),
        ((Condition("c", "ISEMPTY", ""),),),
    )
    assert [(o.field, o.descending) for o in parsed.order] == [("a", True)]
    assert parsed.ignored == ("zz=9",)


def test_parse_query_operators_with_letters_next_to_field_names() -> None:
    parsed = parse_query("stateNOT IN6,7^descriptionSTARTSWITHIN^nameINa,b", lambda name: True)
    assert [cond for group in parsed.groups for alts in group for cond in alts] == [
        Condition("state", "NOT IN", "6,7"),
        Condition("description", "STARTSWITH", "IN"),
        Condition("name", "IN", "a,b"),
    ]


def test_a_stand_in_bug_is_answered_as_a_500(
    api: Api, sn: ServiceNowStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(sn, "_handle", broken)
    response = api.request("GET", INCIDENT)
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "Internal Server Error", "detail": None},
        "status": "failure",
    }
