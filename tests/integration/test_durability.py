"""Lose nothing, create nothing twice: two ``serve`` processes on one SQLite state file.

Real processes (killed with SIGKILL where a crash is the point), real HTTP, the ServiceNow
stand-in stopped for outages (connections refused) and faulted for refusals.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.epoch import RECORDS_SINCE
from bridge.sandbox.stack import SandboxStack
from bridge.sandbox.stack import metric_alert as metric
from bridge.state.connection import DEVELOPMENT_ACCOUNT, DEVELOPMENT_KEY
from tests.azurite import azurite_executable, free_port

from .cluster import REPO, Cluster, Instance, running

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


# --- a write made while the state store was down --------------------------------------------------


class PinnedAzurite:
    """Azurite on ports fixed for its whole life, so it can be stopped and started again at the
    same address (the state store going away and coming back, its data kept in ``location``)."""

    def __init__(self, location: Path) -> None:
        self.location = location
        self.ports = {"blob": free_port(), "queue": free_port(), "table": free_port()}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEVELOPMENT_ACCOUNT};AccountKey={DEVELOPMENT_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{self.ports['queue']}/{DEVELOPMENT_ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.ports['table']}/{DEVELOPMENT_ACCOUNT};"
        )

    def start(self) -> None:
        self.location.mkdir(parents=True, exist_ok=True)
        command = [str(azurite_executable()), "--silent", "--location", str(self.location), "--disableTelemetry",
                   "--skipApiVersionCheck"]
        for service, port in self.ports.items():
            command += [f"--{service}Port", str(port)]
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=self.location
        )
        deadline = time.monotonic() + 60
        while not all(_listening(self.ports[s]) for s in ("queue", "table")):
            assert self._process.poll() is None, "Azurite exited"
            assert time.monotonic() < deadline, "Azurite did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_a_fallback_create_whose_answer_was_lost_is_found_by_the_next_process_after_the_store_returns(
    stack: SandboxStack, tmp_path: Path
) -> None:
    """The store down, ServiceNow up: the fallback creates the incident without a record, and the
    process is killed before it answers. The store comes back (with its data) and Azure's
    redelivery reaches another process on the same machine. The alert fired just now, after the
    store's epoch: only the fallback's marker keeps the new process from skipping the lookup."""
    azurite = PinnedAzurite(tmp_path / "azurite")
    machine_tmp = tmp_path / "tmp"  # the machine's temp directory, where the marker is left
    machine_tmp.mkdir()
    azurite.start()
    cluster: Cluster | None = None
    try:
        suffix = uuid.uuid4().hex[:10]
        cluster = Cluster(
            stack,
            tmp_path / "unused.sqlite3",
            instances=1,
            STATE_STORE="azure",
            AzureWebJobsStorage=azurite.connection_string,
            STATE_TABLE_NAME=f"state{suffix}",
            OUTBOX_QUEUE_NAME=f"outbox-{suffix}",
            ITSM_INLINE_SECONDS="4",
            ITSM_TIMEOUT_SECONDS="4",
        )
        epoch = time.time() - 86400
        store = cluster.store()
        store.put_meta(RECORDS_SINCE, {"at": epoch})  # the store has kept records for a day
        store.close()
        cluster.env["TMPDIR"] = str(machine_tmp)
        cluster.instances[0].stop()
        cluster.instances[0] = Instance(cluster.env, "bridge-0")

        guid = str(uuid.uuid4())
        payload = metric(guid)
        payload["data"]["essentials"]["firedDateTime"] = (
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )
        azurite.stop()  # the state store is gone
        # The create lands 6 s after it is sent; the process is killed before then.
        cluster.snow.faults.latency(6.0, method="POST", path=INCIDENTS)
        answers: list[Any] = []
        sender = threading.Thread(target=lambda: answers.append(cluster.post(0, payload, timeout=20)))
        sender.start()
        deadline = time.monotonic() + 15
        while not any(r.method == "GET" and guid in str(r.query) for r in cluster.snow.requests):
            assert time.monotonic() < deadline, "the fallback never looked the alert up"
            time.sleep(0.02)
        time.sleep(0.5)  # its create is on its way
        assert len(list(machine_tmp.glob("bridge-taint-*/*.json"))) == 1  # marked before the create
        cluster.instances[0].kill()
        sender.join()
        assert answers[0].status is None  # no answer: Azure will deliver it again
        while not cluster.incidents_by_key().get(guid):
            assert time.monotonic() < deadline + 10, "the create never landed"
            time.sleep(0.1)
        cluster.snow.faults.clear()

        azurite.start()  # the store is back, with its records and meta
        store = cluster.store()
        if store.get_meta(RECORDS_SINCE) is None:
            store.put_meta(RECORDS_SINCE, {"at": epoch})  # Azurite may not have saved it yet
        store.close()
        cluster.instances.append(Instance(cluster.env, "bridge-1"))  # another process, same machine
        again = cluster.post(1, payload, timeout=15)
        assert again.status == 200, again.body
        assert len(cluster.incidents_by_key()[guid]) == 1
        assert creates(cluster) == 1
        assert again.body["workItem"]["number"] == cluster.incidents_by_key()[guid][0]["number"]
        assert list(machine_tmp.glob("bridge-taint-*/*.json")) == []  # recorded in the store
        store = cluster.store()
        raised = store.get_meta(RECORDS_SINCE)
        store.close()
        assert raised is not None and raised["at"] > epoch + 3600
    finally:
        if cluster is not None:
            cluster.stop()
        azurite.stop()
