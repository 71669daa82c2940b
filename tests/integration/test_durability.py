"""Lose nothing, create nothing twice: two ``serve`` processes on one SQLite state file.

Real processes (killed with SIGKILL where a crash is the point), real HTTP, the ServiceNow
stand-in stopped for outages (connections refused) and faulted for refusals.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.sandbox.stack import SandboxStack
from bridge.sandbox.stack import metric_alert as metric

from .cluster import REPO, Cluster, running

pytestmark = pytest.mark.integration

INCIDENTS = "/api/now/table/incident"


@pytest.fixture
def stack() -> Iterator[SandboxStack]:
    with SandboxStack() as sandbox:
        yield sandbox


@pytest.fixture
def cluster(stack: SandboxStack, tmp_path: Path) -> Iterator[Cluster]:
    yield from running(stack, tmp_path / "state.sqlite3")


def creates(cluster: Cluster) -> int:
    return sum(1 for r in cluster.snow.requests if r.method == "POST" and r.path == INCIDENTS)


def test_concurrent_identical_deliveries_to_two_processes_make_one_create(cluster: Cluster) -> None:
    guid = str(uuid.uuid4())
    # Slow creates widen the window in which the deliveries overlap.
    cluster.snow.faults.latency(0.4, method="POST", path=INCIDENTS)
    gate = threading.Barrier(8)
    answers: list[Any] = []

    def deliver(i: int) -> None:
        gate.wait()
        answers.append(cluster.post(i, metric(guid), timeout=15))

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status for a in answers) == [200] * 8, [a.body for a in answers]
    assert sorted(a.body["action"] for a in answers) == ["created"] + ["ignored"] * 7
    assert creates(cluster) == 1
    [incident] = cluster.incidents_by_key()[guid]
    assert {a.body["workItem"]["number"] for a in answers} == {incident["number"]}


def test_a_process_killed_right_after_answering_202_loses_nothing(cluster: Cluster) -> None:
    guid = str(uuid.uuid4())
    cluster.snow.stop()
    sent = cluster.post(0, metric(guid))
    assert sent.status == 202 and sent.body["status"] == "queued", sent.body
    cluster.instances[0].kill()
    cluster.instances[1].kill()
    cluster.snow.start()
    time.sleep(1.0)
    assert cluster.incidents_by_key().get(guid) is None  # nobody is running: nothing can happen
    cluster.instances[0].start()  # the restarted process picks the work up from the file
    cluster.wait_drained(30)
    assert len(cluster.incidents_by_key()[guid]) == 1
    assert creates(cluster) == 1


def test_an_outage_longer_than_azures_retry_cycle_loses_nothing(cluster: Cluster) -> None:
    guids = [str(uuid.uuid4()) for _ in range(12)]
    cluster.snow.stop()
    down = time.monotonic()
    # Azure's retries scaled by 0.1 last 7.5 s; the outage outlasts them twice over.
    answers = [cluster.post(i, metric(g), retry_scale=0.1) for i, g in enumerate(guids)]
    assert [a.status for a in answers] == [202] * len(guids)
    assert all(a.attempts == 1 for a in answers)  # a 202 is never retried: it is safe
    resolved = [cluster.post(i, metric(g, "Resolved"), retry_scale=0.1) for i, g in enumerate(guids[:6])]
    assert [a.status for a in resolved] == [202] * 6
    time.sleep(max(0.0, 15.0 - (time.monotonic() - down)))
    cluster.snow.start()
    drained = cluster.wait_drained(45)
    incidents = cluster.incidents_by_key()
    assert all(len(incidents[g]) == 1 for g in guids), incidents.keys()
    assert [incidents[g][0]["state"] for g in guids] == ["6"] * 6 + ["1"] * 6
    assert creates(cluster) == len(guids)
    assert drained < 20


def test_resolved_before_fired_on_two_processes_ends_with_one_resolved_incident(cluster: Cluster) -> None:
    guid = str(uuid.uuid4())
    early = cluster.post(0, metric(guid, "Resolved"))
    assert (early.status, early.body["action"], early.body["workItem"]) == (200, "ignored", None)
    assert cluster.incidents_by_key().get(guid) is None
    late = cluster.post(1, metric(guid))
    assert (late.status, late.body["action"]) == (200, "created")
    [incident] = cluster.incidents_by_key()[guid]
    assert incident["state"] == "6" and incident["close_code"] and incident["close_notes"]
    assert cluster.post(0, metric(guid)).body["action"] == "ignored"
    assert creates(cluster) == 1


def outbox(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bridge", "outbox", *args],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_refused_credential_holds_the_work_until_it_is_fixed(cluster: Cluster) -> None:
    guid = str(uuid.uuid4())
    # An expired password: ServiceNow answers 401 to everything.
    cluster.snow.faults.status(401, path=r"^/api/now/", body={"error": {"message": "User Not Authenticated"}})
    sent = cluster.post(0, metric(guid))
    assert sent.status == 202 and "User Not Authenticated" in sent.body["reason"], sent.body
    time.sleep(3)  # the outbox keeps trying; nothing is dead-lettered
    health = requests.get(f"{cluster.instances[1].url}/api/health", timeout=5).json()
    assert health["status"] == "degraded" and "refuses" in health["reason"], health
    listed = outbox(cluster, "list")
    assert listed.returncode == 0 and "held" in listed.stdout and "0 dead" in listed.stdout, listed.stdout
    assert "sandbox-secret" not in listed.stdout + health["reason"]
    cluster.snow.faults.clear()  # the operator fixed the credential
    cluster.wait_drained(20)
    assert len(cluster.incidents_by_key()[guid]) == 1
    deadline = time.monotonic() + 10
    while requests.get(f"{cluster.instances[1].url}/api/health", timeout=5).json()["status"] != "ok":
        assert time.monotonic() < deadline, "health never recovered"
        time.sleep(0.5)


def test_a_dead_letter_is_listed_and_replayed(cluster: Cluster) -> None:
    guid = str(uuid.uuid4())
    policy = {"error": {"message": "Invalid value for field: category", "detail": "data policy"}}
    cluster.snow.faults.status(400, method="POST", path=INCIDENTS, body=policy)
    sent = cluster.post(1, metric(guid))
    assert sent.status == 502 and sent.body["error"]["code"] == "itsm_rejected", sent.body
    listed = outbox(cluster, "list")
    assert listed.returncode == 0
    assert guid in listed.stdout and "dead" in listed.stdout and "Invalid value for field" in listed.stdout
    cluster.snow.faults.clear()  # the mapping was fixed
    replayed = outbox(cluster, "replay", guid)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert len(cluster.incidents_by_key()[guid]) == 1
    assert "1 done" in outbox(cluster, "list").stdout
