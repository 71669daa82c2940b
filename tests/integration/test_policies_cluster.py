"""Grouping and re-fire across real ``serve`` processes sharing one state store (SQLite, and
Azure Table + Queue on Azurite): concurrent members of one fingerprint, sent to both instances
at once in any order, end as one incident, resolved once every member has resolved."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample
from tests.azurite import Azurite

from .cluster import Cluster, running
from .test_azure_state import azure_settings

pytestmark = pytest.mark.integration

ALERTS = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/"
VM = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/"
MEMBERS = 6


@pytest.fixture
def stack() -> Iterator[SandboxStack]:
    with SandboxStack() as sandbox:
        yield sandbox


def member(alert: str, n: int, condition: str) -> dict[str, Any]:
    essentials: dict[str, Any] = {
        "alertId": ALERTS + alert,
        "monitorCondition": condition,
        "firedDateTime": "2026-03-01T10:00:00Z",
        "alertTargetIDs": [VM + f"vm-{n}"],
        "configurationItems": [f"vm-{n}"],
    }
    if condition == "Resolved":
        essentials["resolvedDateTime"] = "2026-03-01T10:05:00Z"
    return load_sample("metric_static_fired.testaction.json", **essentials)


def group_file(tmp_path: Path) -> str:
    path = tmp_path / "group.json"
    path.write_text(json.dumps({"policy": {"grouping": "group", "fingerprint": "{alertRuleId}"}}), encoding="utf-8")
    return str(path)


def run_group_story(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    alerts = [str(uuid.uuid4()) for _ in range(MEMBERS)]
    fired = [member(a, n, "Fired") for n, a in enumerate(alerts)]
    resolved = [member(a, n, "Resolved") for n, a in enumerate(alerts)]
    cluster.standin.faults.latency(0.05, path=r"^/api/now/table/incident")

    # Every member fires at once, half to each instance; then every member resolves at once.
    for wave in (fired, resolved):
        order = list(range(len(wave)))
        rng.shuffle(order)
        with ThreadPoolExecutor(len(order)) as pool:
            sent = list(pool.map(lambda i, w=wave: cluster.post(i, w[i], retry_scale=0.05), order))
        assert all(s.status in (200, 202) for s in sent), [s.body for s in sent]
        cluster.wait_drained(60)

    incidents = cluster.snow.records("incident")
    assert len(incidents) == 1, [i["number"] for i in incidents]
    assert incidents[0]["state"] == "6"
    notes = cluster.snow.journal("incident", incidents[0]["sys_id"])
    # Every member is named on the incident: in its first note, or in the note of its joining.
    assert [a for a in alerts if not any(a in note for note in notes)] == []


@pytest.mark.parametrize("seed", [1, 2])
def test_two_serve_processes_group_on_sqlite(stack: SandboxStack, tmp_path: Path, seed: int) -> None:
    for cluster in running(stack, tmp_path / "state.sqlite3", MAPPING_FILE=group_file(tmp_path)):
        run_group_story(cluster, seed)


def test_two_serve_processes_group_on_azure_storage(stack: SandboxStack, azurite: Azurite, tmp_path: Path) -> None:
    settings = azure_settings(azurite)
    for cluster in running(stack, tmp_path / "unused.sqlite3", MAPPING_FILE=group_file(tmp_path), **settings):
        run_group_story(cluster, 3)


def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("backend", ["sqlite", "azure"])
def test_the_outbox_wakes_a_quiet_stateless_alert_and_resolves_it(
    stack: SandboxStack, azurite: Azurite, tmp_path: Path, backend: str
) -> None:
    settings = azure_settings(azurite) if backend == "azure" else {}
    for cluster in running(stack, tmp_path / "state.sqlite3", AUTO_RESOLVE_AFTER="2", **settings):
        payload = load_sample(
            "activity_log_administrative_fired.testaction.json", alertId=ALERTS + str(uuid.uuid4())
        )
        sent = cluster.post(0, payload)
        assert (sent.status, sent.body["action"]) == (200, "created")
        assert cluster.snow.records("incident")[0]["state"] == "1"
        # Nothing else is sent: only the outbox's wake-up (SQLite's due column, the queue's
        # delayed message) can resolve it.
        snow = cluster.snow
        assert wait_for(lambda s=snow: s.records("incident")[0]["state"] == "6", 20)
        incident = cluster.snow.records("incident")[0]
        assert "No repeat of this alert for 2s" in cluster.snow.journal("incident", incident["sys_id"])[-1]
