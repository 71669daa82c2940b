"""ITSM calls per event type, and the time a queued alert takes to land after an outage.

    python bench/itsm_calls.py

Runs the bridge (its local server, outbox worker and a fresh SQLite state file) against the
ServiceNow stand-in over loopback and counts the Table API calls each kind of delivery costs
(CMDB lookups and OAuth token requests are counted apart). Then takes ServiceNow down, sends a
batch of alerts (all answered 202), brings it back and times the drain.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.runtime import build_runtime
from bridge.sandbox.stack import SandboxStack
from bridge.sandbox.stack import metric_alert as metric
from bridge.server import BridgeServer

OUTAGE_ALERTS = 100


def main() -> None:
    with SandboxStack() as stack:
        runtime = build_runtime(stack.bridge_env(OUTBOX_MAX_DELAY_SECONDS="1"))
        runtime.worker.start()
        try:
            with BridgeServer(runtime.api, port=0) as server, requests.Session() as http:

                def post(payload: dict[str, Any]) -> tuple[int, str]:
                    before = len(stack.servicenow.requests)
                    response = http.post(
                        f"{server.url}/api/alerts",
                        json=payload,
                        headers={"Authorization": f"Bearer {stack.token()}"},
                        timeout=30,
                    )
                    calls = stack.servicenow.requests[before:]
                    incident = [c for c in calls if "/table/incident" in c.path]
                    body = response.json()
                    return len(incident), f"{response.status_code} {body.get('action') or body.get('status')}"

                a, b = str(uuid.uuid4()), str(uuid.uuid4())
                rows = [
                    ("new Fired (lookup, create)", post(metric(a))),
                    ("identical Fired (redelivery)", post(metric(a))),
                    ("Fired, new payload (re-read, note)", post(metric(a, value=99.0))),
                    ("Resolved (re-read, resolve)", post(metric(a, "Resolved"))),
                    ("identical Resolved", post(metric(a, "Resolved"))),
                    ("Resolved before any Fired (lookup)", post(metric(b, "Resolved"))),
                    ("its Fired, late (lookup, create resolved)", post(metric(b))),
                ]
                print(f"{'event':45} {'ITSM calls':>10}  answer")
                for name, (calls, answer) in rows:
                    print(f"{name:45} {calls:>10}  {answer}")

                guids = [str(uuid.uuid4()) for _ in range(OUTAGE_ALERTS)]
                stack.servicenow.stop()
                started = time.monotonic()
                answers = [post(metric(g))[1] for g in guids]
                answered = time.monotonic() - started
                queued = sum(1 for a in answers if a.startswith("202"))
                stack.servicenow.start()
                back = time.monotonic()
                while True:
                    present = {i["correlation_id"] for i in stack.servicenow.records("incident")}
                    if all(g in present for g in guids) or time.monotonic() - back > 120:
                        break
                    time.sleep(0.05)
                drained = time.monotonic() - back
                landed = sum(1 for g in guids if g in present)
                stack.servicenow.faults.latency(10.0)  # ServiceNow answers only after 10 s
                slow = []
                for _ in range(5):
                    started = time.monotonic()
                    slow.append((post(metric(str(uuid.uuid4())))[1], time.monotonic() - started))
                stack.servicenow.faults.clear()
                print(
                    f"\nServiceNow answering after 10 s: answers {sorted({a for a, _ in slow})}, "
                    f"slowest {max(t for _, t in slow) * 1000:.0f} ms"
                )
                print(
                    f"outage: {OUTAGE_ALERTS} alerts while ServiceNow was down, {queued} answered 202 "
                    f"(mean answer {answered / OUTAGE_ALERTS * 1000:.0f} ms); {landed} incidents "
                    f"{drained:.1f} s after ServiceNow came back"
                )
        finally:
            runtime.close()


if __name__ == "__main__":
    main()
