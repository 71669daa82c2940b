"""ITSM calls per event type, and (standalone) the time a queued alert takes to land after an outage.

    python -m bench.itsm_calls [--outage 100]

Runs the bridge (its local server, outbox worker and a fresh SQLite state file) against the
ServiceNow stand-in over loopback, in this process: counts are not timings, and here the suite
can see when the bridge has finished with an event. After a warm-up alert (OAuth token and CMDB
binding cached), each delivery's calls are counted until its record has nothing pending and the
stand-in has heard nothing for a moment, so calls the outbox makes after the answer count too.

With ``--outage N`` it then takes ServiceNow down, sends N alerts (all answered 202), brings it
back and times the drain; and sends 5 alerts while ServiceNow answers only after 10 s.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable
from typing import Any

import requests

from bench.alerts import body, new_key
from bench.report import Part, Target, print_figures
from bridge.epoch import RECORDS_SINCE
from bridge.runtime import Runtime, build_runtime
from bridge.sandbox.stack import SandboxStack
from bridge.server import BridgeServer

__all__ = ["EVENTS", "measure"]

_QUIET_SECONDS = 0.3
_SETTLE_TIMEOUT = 15.0

# (label, which alert, condition, metric value): one lifecycle of alert "a", then alert "b"
# resolved before it ever fired. A repeated label re-sends the very same bytes.
EVENTS: list[tuple[str, str, str, float | None, Target | None]] = [
    ("new Fired", "a", "Fired", None, Target(1, text="1 (≤ 2 if not provably new)")),
    ("identical Fired (redelivery)", "a", "Fired", None, Target(0)),
    ("Fired, new payload", "a", "Fired", 99.0, None),
    ("Resolved", "a", "Resolved", None, Target(2)),
    ("identical Resolved (redelivery)", "a", "Resolved", None, Target(0)),
    ("Resolved before any Fired", "b", "Resolved", None, None),
    ("its Fired, late", "b", "Fired", None, None),
]


def _kind(path: str) -> str:
    if "/table/cmdb" in path:
        return "cmdb"
    if path == "/oauth_token.do":
        return "oauth"
    return "incident" if "/table/incident" in path else "other"


class _Harness:
    """The stack, the bridge serving it, and one delivery at a time with its ITSM calls."""

    def __init__(self, stack: SandboxStack, runtime: Runtime, url: str, http: requests.Session) -> None:
        self.stack, self.runtime, self.url, self.http = stack, runtime, url, http

    def post(self, data: bytes) -> tuple[int, str]:
        response = self.http.post(
            f"{self.url}/api/alerts",
            data=data,
            headers={"Authorization": f"Bearer {self.stack.token()}", "Content-Type": "application/json"},
            timeout=30,
        )
        answer = response.json()
        return response.status_code, str(answer.get("action") or answer.get("status"))

    def deliver(self, key: str, data: bytes) -> tuple[collections.Counter[str], str]:
        """Send one alert; the ITSM calls it caused until the bridge has finished with it."""
        before = len(self.stack.servicenow.requests)
        status, action = self.post(data)
        self._settle(key)
        calls = collections.Counter(
            f"{record.method} {_kind(record.path)}" for record in self.stack.servicenow.requests[before:]
        )
        return calls, f"{status} {action}"

    def _settle(self, key: str) -> None:
        end = time.monotonic() + _SETTLE_TIMEOUT
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < end:
            current = self.runtime.reconciler.store.load(key)
            pending = current is not None and (current.record.due is not None or current.record.claim is not None)
            count = len(self.stack.servicenow.requests)
            if count != seen:
                seen, quiet_since = count, time.monotonic()
            if not pending and time.monotonic() - quiet_since >= _QUIET_SECONDS:
                return
            time.sleep(0.02)


def _serving(env_overrides: dict[str, str], work: Callable[[_Harness], Any]) -> Any:
    with SandboxStack() as stack:
        runtime = build_runtime(stack.bridge_env(OUTBOX_MAX_DELAY_SECONDS="1", **env_overrides))
        # The steady state: a store that has kept records for a day. A store's first use can
        # vouch for no alert fired within its first 15 minutes (bridge/epoch.py), whose new
        # Fired then keeps its lookup.
        runtime.reconciler.store.put_meta(RECORDS_SINCE, {"at": time.time() - 86400})
        runtime.worker.start()
        try:
            with BridgeServer(runtime.api, port=0) as server, requests.Session() as http:
                return work(_Harness(stack, runtime, server.url, http))
        finally:
            runtime.close()


def measure() -> Part:
    part = Part("itsm_calls")
    started = time.monotonic()

    def run(h: _Harness) -> list[tuple[str, collections.Counter[str], str]]:
        warm = new_key()
        h.deliver(warm, body(warm))
        keys = {"a": new_key(), "b": new_key()}
        sent: dict[tuple[str, str, float | None], bytes] = {}
        rows = []
        for label, which, condition, value, _ in EVENTS:
            key = keys[which]
            data = sent.setdefault((key, condition, value), body(key, condition, value))
            calls, answer = h.deliver(key, data)
            rows.append((label, calls, answer))
        return rows

    rows = _serving({}, run)
    part.seconds = time.monotonic() - started
    for (label, calls, answer), event in zip(rows, EVENTS, strict=True):
        shown = ", ".join(f"{name} {count}" for name, count in sorted(calls.items())) or "none"
        part.add(f"ITSM calls: {label}", sum(calls.values()), "", event[4], note=f"{answer}; {shown}")
    part.details = {"events": [{"event": label, "calls": dict(c), "answer": answer} for label, c, answer in rows]}
    return part


def outage(alerts: int) -> None:
    """Prints how an outage drains, and what a 10 s ITSM answer costs the sender."""

    def run(h: _Harness) -> None:
        warm = new_key()
        h.deliver(warm, body(warm))
        keys = [new_key() for _ in range(alerts)]
        h.stack.servicenow.stop()
        started = time.monotonic()
        answers = [h.post(body(key)) for key in keys]
        answered = time.monotonic() - started
        queued = sum(1 for status, _ in answers if status == 202)
        h.stack.servicenow.start()
        back = time.monotonic()
        present: set[str] = set()
        while time.monotonic() - back < 120:
            present = {row["correlation_id"] for row in h.stack.servicenow.records("incident")}
            if all(key in present for key in keys):
                break
            time.sleep(0.05)
        drained = time.monotonic() - back
        landed = sum(1 for key in keys if key in present)
        h.stack.servicenow.faults.latency(10.0)
        slow = []
        for _ in range(5):
            sent = time.monotonic()
            status, action = h.post(body(new_key()))
            slow.append((f"{status} {action}", time.monotonic() - sent))
        h.stack.servicenow.faults.clear()
        print(
            f"\nServiceNow answering after 10 s: answers {sorted({a for a, _ in slow})}, "
            f"slowest {max(t for _, t in slow) * 1000:.0f} ms"
        )
        print(
            f"outage: {alerts} alerts while ServiceNow was down, {queued} answered 202 "
            f"(mean answer {answered / alerts * 1000:.0f} ms); {landed} incidents "
            f"{drained:.1f} s after ServiceNow came back"
        )

    _serving({}, run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=int, default=0, metavar="N", help="also time an outage of N alerts")
    args = parser.parse_args()
    print_figures(measure().figures)
    if args.outage:
        outage(args.outage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
