"""The policies of issue #11 over HTTP against each ITSM's stand-in (ServiceNow and Jira), read
back in neutral terms: the same story ends the same way whichever adapter writes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.runtime import build_runtime
from bridge.sandbox.stack import SandboxItem, SandboxStack
from bridge.server import BridgeServer

from .test_policies import health, metric

pytestmark = pytest.mark.integration


class Bridge:
    def __init__(self, stack: SandboxStack, url: str) -> None:
        self.stack, self.url, self.http = stack, url, requests.Session()

    def send(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        response = self.http.post(
            f"{self.url}/api/alerts",
            json=payload,
            headers={"Authorization": f"Bearer {self.stack.token()}"},
            timeout=15,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        return body["action"], (body.get("workItem") or {}).get("number")

    def items(self) -> list[SandboxItem]:
        return self.stack.itsm.items()


@pytest.fixture(params=["servicenow", "jira"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with SandboxStack(itsm=request.param) as stack:
        runtimes: list[Any] = []
        servers: list[BridgeServer] = []

        def _start(mapping: dict[str, Any] | None = None, **env: str) -> Bridge:
            if mapping is not None:
                path = tmp_path / "mapping.json"
                path.write_text(json.dumps(mapping), encoding="utf-8")
                env["MAPPING_FILE"] = str(path)
            runtime = build_runtime(stack.bridge_env(STATE_SQLITE_PATH=str(tmp_path / "state.sqlite3"), **env))
            runtimes.append(runtime)
            server = BridgeServer(runtime.api, port=0).__enter__()
            servers.append(server)
            return Bridge(stack, server.url)

        try:
            yield _start
        finally:
            for server in servers:
                server.__exit__(None, None, None)
            for runtime in runtimes:
                runtime.close()


def test_a_re_fire_within_the_window_reopens(start: Any) -> None:
    bridge = start(REOPEN_WINDOW="1h")
    action, number = bridge.send(metric(1))
    assert action == "created"
    assert bridge.send(metric(1, "Resolved")) == ("resolved", number)
    assert [i.status for i in bridge.items()] == ["resolved"]

    assert bridge.send(metric(2, fired="2026-03-01T10:20:00Z")) == ("reopened", number)

    (item,) = bridge.items()
    assert item.status == "open"
    assert any("reopened" in note for note in item.notes)
    assert bridge.send(metric(2, "Resolved", resolved="2026-03-01T10:30:00Z")) == ("resolved", number)
    assert [i.status for i in bridge.items()] == ["resolved"]


def test_service_health_from_active_to_resolved_and_back(start: Any) -> None:
    bridge = start()
    action, number = bridge.send(health(1, "Active", "2026-03-01T10:00:00Z", "Investigating"))
    assert action == "created"
    assert bridge.send(health(2, "Active", "2026-03-01T10:30:00Z", "Mitigating")) == ("updated", number)
    assert bridge.send(health(3, "Resolved", "2026-03-01T11:00:00Z", "Mitigated")) == ("resolved", number)
    (item,) = bridge.items()
    assert item.status == "resolved" and any("Mitigating" in note for note in item.notes)
    assert bridge.send(health(4, "Active", "2026-03-02T09:00:00Z", "Recurred")) == ("reopened", number)
    assert [i.status for i in bridge.items()] == ["open"]


def test_a_group_resolves_once_every_member_has(start: Any) -> None:
    bridge = start({"policy": {"grouping": "group", "fingerprint": "{alertRuleId}"}})
    action, number = bridge.send(metric(1, target="vm-a"))
    assert action == "created"
    assert bridge.send(metric(2, target="vm-b")) == ("updated", number)
    assert bridge.send(metric(2, "Resolved", target="vm-b")) == ("updated", number)
    assert [i.status for i in bridge.items()] == ["open"]
    assert bridge.send(metric(1, "Resolved", target="vm-a")) == ("resolved", number)
    assert [i.status for i in bridge.items()] == ["resolved"]


def test_close_is_final_and_a_re_fire_opens_the_next(start: Any) -> None:
    bridge = start({"policy": {"resolution": "close", "reopen_window": "1h"}})
    _, first = bridge.send(metric(1))
    bridge.send(metric(1, "Resolved"))
    assert [i.status for i in bridge.items()] == ["closed"]

    action, second = bridge.send(metric(2, fired="2026-03-01T10:20:00Z"))

    assert action == "created" and second != first
    statuses = {i.number: i.status for i in bridge.items()}
    assert statuses == {first: "closed", second: "open"}


def test_note_only_never_resolves(start: Any) -> None:
    bridge = start({"policy": {"resolution": "note-only"}})
    _, number = bridge.send(metric(1))
    assert bridge.send(metric(1, "Resolved")) == ("resolved", number)
    (item,) = bridge.items()
    assert item.status == "open" and any("resolved" in note for note in item.notes[1:])
