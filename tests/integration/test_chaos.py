"""Chaos: a few hundred alert lifecycles through two ``serve`` processes on one state file.

Redeliveries, concurrent duplicates on both processes, Resolved before Fired, about 20% injected
ServiceNow faults (429, 500, 503, slow, dropped, committed-then-dropped), a ServiceNow outage and
a SIGKILLed process, with a sender that retries like Azure Monitor (waits scaled down). Then:
0 lost, 0 duplicates, 0 wrong states, no work note written twice. The figures are printed
(``pytest -s``) for the README and the session notes.

The alerts fire "now" and the store has kept records for a day, so new Fireds take the one-call
path (create without a lookup, bridge/epoch.py) through all of it; the run checks they did.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.epoch import RECORDS_SINCE
from bridge.sandbox.servicenow import FaultInjector
from bridge.sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample

from .cluster import Cluster, Sent, marker_counts, running

pytestmark = pytest.mark.integration

SEED = 20261202
LIFECYCLES = 200
SENDERS = 8
OUTAGE_SECONDS = 6.0
# The ITSM calls that are faulted: every work-item call (not OAuth, not the CMDB).
WORK_ITEM_PATHS = {"servicenow": r"^/api/now/table/incident", "jira": r"^/rest/api/3/(issue|search)"}
# Where a create is POSTed.
CREATE_PATHS = {"servicenow": "/api/now/table/incident", "jira": "/rest/api/3/issue"}


@dataclass
class Lifecycle:
    guid: str
    stateless: bool
    events: list[dict[str, Any]] = field(default_factory=list)  # in the order they are sent
    resolves: bool = False
    answers: list[Sent] = field(default_factory=list)


def alert_id(guid: str) -> str:
    return f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}"


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plan(rng: random.Random) -> list[Lifecycle]:
    lifecycles = []
    now = time.time()
    for _ in range(LIFECYCLES):
        guid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        stateless = rng.random() < 0.15
        sample = "activity_log_administrative_fired.testaction.json" if stateless else (
            "metric_static_fired.testaction.json"
        )
        life = Lifecycle(guid, stateless)
        fired_at = now - rng.uniform(0, 120)  # Azure stamps the firing just before it sends
        fired = load_sample(sample, alertId=alert_id(guid), firedDateTime=stamp(fired_at))
        life.events.append(fired)
        if rng.random() < 0.4:
            again = load_sample(sample, alertId=alert_id(guid), firedDateTime=stamp(fired_at + 480))
            life.events.append(again)
        if not stateless and rng.random() < 0.7:
            life.resolves = True
            resolved = load_sample(
                sample, alertId=alert_id(guid), monitorCondition="Resolved",
                firedDateTime=stamp(fired_at), resolvedDateTime=stamp(fired_at + 720),
            )
            if rng.random() < 0.15:
                life.events.insert(0, resolved)  # the Resolved overtakes its Fired
            else:
                life.events.append(resolved)
        lifecycles.append(life)
    return lifecycles


@pytest.fixture(params=["servicenow", "jira"])
def stack(request: pytest.FixtureRequest) -> Iterator[SandboxStack]:
    with SandboxStack(itsm=request.param) as sandbox:
        yield sandbox


@pytest.fixture
def cluster(stack: SandboxStack, tmp_path: Path) -> Iterator[Cluster]:
    yield from running(stack, tmp_path / "state.sqlite3")


def inject_faults(cluster: Cluster) -> dict[str, Any]:
    cluster.standin.faults = faults = FaultInjector(seed=SEED)  # the same dice every run
    INCIDENTS = WORK_ITEM_PATHS[cluster.stack.itsm.name]
    return {
        "429": faults.status(429, retry_after=1, path=INCIDENTS, probability=0.04),
        "500": faults.status(500, path=INCIDENTS, probability=0.03),
        "503": faults.status(503, path=INCIDENTS, probability=0.04),
        "slow (2.5 s)": faults.latency(2.5, path=INCIDENTS, probability=0.03),
        "dropped": faults.drop(path=INCIDENTS, probability=0.03),
        "committed, answer dropped": faults.commit_then_drop(path=INCIDENTS, probability=0.03),
    }


def created_without_lookup(cluster: Cluster, guids: list[str]) -> int:
    """How many keys the ITSM saw created before anything looked for them (the one-call path)."""
    create_path = CREATE_PATHS[cluster.stack.itsm.name]
    first_seen: dict[str, bool] = {}  # guid -> its first mention was a create
    for request in list(cluster.standin.requests):
        text = json.dumps([request.query, request.body], default=str)
        for guid in guids:
            if guid not in first_seen and guid in text:
                first_seen[guid] = request.method == "POST" and request.path == create_path
    return sum(first_seen.values())


def test_chaos_loses_nothing_and_duplicates_nothing(cluster: Cluster) -> None:
    rng = random.Random(SEED)
    lifecycles = plan(rng)
    # The store has kept records for a day: alerts fired now are provably new.
    store = cluster.store()
    try:
        store.put_meta(RECORDS_SINCE, {"at": time.time() - 86400})
    finally:
        store.close()
    rules = inject_faults(cluster)
    deliveries = 0
    counter = threading.Lock()
    progress = {"done": 0}
    chaos_log: list[str] = []

    def send(life: Lifecycle, event: dict[str, Any], instance: int) -> None:
        nonlocal deliveries
        sent = cluster.post(instance, event, retry_scale=0.1, timeout=12)
        with counter:
            deliveries += sent.attempts
            life.answers.append(sent)

    def run(life: Lifecycle, seed: int) -> None:
        local = random.Random(seed)
        for event in life.events:
            instance = local.randrange(2)
            roll = local.random()
            if roll < 0.10:  # the same delivery on both instances at once
                twin = threading.Thread(target=send, args=(life, event, instance + 1))
                twin.start()
                send(life, event, instance)
                twin.join()
            else:
                send(life, event, instance)
                if roll < 0.35:  # redelivered later
                    send(life, event, instance + 1)
        with counter:
            progress["done"] += 1

    def chaos() -> None:
        while progress["done"] < LIFECYCLES * 0.3:
            time.sleep(0.05)
        cluster.standin.stop()
        chaos_log.append(f"{cluster.stack.itsm.display_name} down for {OUTAGE_SECONDS:.0f} s")
        time.sleep(OUTAGE_SECONDS)
        cluster.standin.start()
        while progress["done"] < LIFECYCLES * 0.6:
            time.sleep(0.05)
        cluster.instances[0].kill()
        chaos_log.append("bridge-0 SIGKILLed")
        time.sleep(1.0)
        cluster.instances[0].start()

    started = time.monotonic()
    agent = threading.Thread(target=chaos)
    agent.start()
    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(run, lifecycles, [rng.getrandbits(32) for _ in lifecycles]))
    agent.join()
    sending = time.monotonic() - started
    fault_counts = {name: cluster.standin.faults.fired(rule) for name, rule in rules.items()}
    cluster.standin.faults.clear()
    drain = cluster.wait_drained(60)

    refused = [a for life in lifecycles for a in life.answers if a.status is None or a.status >= 300]
    incidents = cluster.items_by_key()
    lost = [life.guid for life in lifecycles if not incidents.get(life.guid)]
    duplicated = [life.guid for life in lifecycles if len(incidents.get(life.guid, [])) > 1]
    wrong = [
        life.guid
        for life in lifecycles
        if incidents.get(life.guid) and incidents[life.guid][0].status != ("resolved" if life.resolves else "open")
    ]
    repeated_notes = []
    for life in lifecycles:
        for incident in incidents.get(life.guid, []):
            if any(n > 1 for n in marker_counts(list(incident.notes)).values()):
                repeated_notes.append(life.guid)
    statuses: dict[str, int] = {}
    for life in lifecycles:
        for answer in life.answers:
            statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1

    one_call = created_without_lookup(cluster, [life.guid for life in lifecycles])
    fired_first = sum(1 for life in lifecycles if life.events[0]["data"]["essentials"]["monitorCondition"] == "Fired")
    print(
        f"\nchaos ({cluster.stack.itsm.display_name}): {LIFECYCLES} lifecycles, "
        f"{sum(len(life.events) for life in lifecycles)} events, "
        f"{deliveries} deliveries (answers {statuses}); faults {fault_counts}; {', '.join(chaos_log)}; "
        f"sending {sending:.1f} s, drained {drain:.1f} s after the last delivery; "
        f"lost {len(lost)}, duplicates {len(duplicated)}, wrong states {len(wrong)}, "
        f"repeated notes {len(repeated_notes)}, answers Azure would drop {len(refused)}; "
        f"created without a lookup {one_call} of {fired_first} that fired first"
    )
    assert sum(fault_counts.values()) > deliveries * 0.1, fault_counts
    assert refused == []
    assert lost == [] and duplicated == [] and wrong == [] and repeated_notes == []
    # Most new Fireds took the one-call path (faults, the outage and the kill send some back
    # through the lookup, as they should).
    assert one_call > fired_first / 2, (one_call, fired_first)
