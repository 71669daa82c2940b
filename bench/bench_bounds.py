"""Hostile alerts: what the worst single payloads cost each step. Prints numbers; asserts nothing.

    python bench/bench_bounds.py [--timeout 600] [--only NAME]

Each case builds one payload (most near the 1 MiB body limit; the target-id lists are bigger,
as a caller in the same process could hand them over) and times the step it attacks: parsing,
the payload's key and fingerprint, mapping it to a work item and notes, and the CMDB binding (an
adapter that finds nothing and counts its calls). A case that runs longer than ``--timeout``
seconds is stopped and reported as such. The outcome column says how the step ended: ``ok``,
``400`` (refused with PayloadError, as the HTTP API would answer) or the exception that would
have become a 503 (and an endless redelivery).

The regression tests that keep these bounded are in tests/test_bounds.py.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.adapters.base import ConfigurationItem
from bridge.alerts import SCHEMA_ID, Alert, parse_alert
from bridge.cmdb import CmdbBinder
from bridge.correlation import canonical_payload, fingerprint
from bridge.errors import PayloadError
from bridge.mapping import build_work_item, resolution, update_note
from bridge.rules import MappingRules

SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
ALERT_ID = f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/01234567-89ab-cdef-0123-456789abcdef"
MIB = 1024 * 1024


class TimedOut(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise TimedOut


def document(essentials: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
             custom: Any = None) -> dict[str, Any]:
    base: dict[str, Any] = {"alertId": ALERT_ID, "monitorCondition": "Fired", "alertRule": "bench-rule",
                            "severity": "Sev3", "monitoringService": "Platform"}
    base.update(essentials or {})
    return {"schemaId": SCHEMA_ID, "data": {"essentials": base, "alertContext": context or {},
                                             "customProperties": custom}}


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode("utf-8")


def nested_custom(levels: int) -> bytes:
    """customProperties nested ``levels`` objects deep (the document itself is 2 levels more)."""
    head = json.dumps(document(custom={"x": 0}))
    inner = '{"a":' * levels + "1" + "}" * levels
    return head.replace('{"x": 0}', inner).encode("utf-8")


class CountingAdapter:
    """Finds nothing; counts the lookups and the values it was asked about."""

    def __init__(self) -> None:
        self.calls = 0
        self.values = 0

    def find_configuration_item(self, resource_ids: Sequence[str], names: Sequence[str]) -> ConfigurationItem | None:
        self.calls += 1
        self.values += len(resource_ids) + len(names)
        return None


# --------------------------------------------------------------------------- the steps


def step_parse(raw: bytes) -> Callable[[], str]:
    def run() -> str:
        parse_alert(raw)
        return "ok"

    return run


def step_pipeline(raw: bytes) -> Callable[[], str]:
    """What one delivery does with the payload before any ITSM call: parse, key, map, notes."""

    def run() -> str:
        alert = parse_alert(raw)
        fingerprint(alert, canonical_payload(alert))
        item = build_work_item(alert, MappingRules())
        note = update_note(alert)
        resolution(alert, MappingRules())
        return f"ok (description {len(item.description):,} chars, note {len(note):,} chars)"

    return run


def step_depths(levels: range) -> Callable[[], str]:
    """The pipeline for every nesting depth in ``levels``: which were processed, refused, or failed."""
    bodies = [(n, nested_custom(n)) for n in levels]

    def run() -> str:
        outcomes: dict[str, list[int]] = {}
        for n, raw in bodies:
            try:
                step_pipeline(raw)()
                outcome = "ok"
            except PayloadError:
                outcome = "400"
            except RecursionError:
                outcome = "RecursionError (503)"
            outcomes.setdefault(outcome, []).append(n)
        return "; ".join(f"{k}: {_ranges(v)}" for k, v in outcomes.items())

    return run


def _ranges(values: list[int]) -> str:
    spans: list[list[int]] = []
    for v in values:
        if spans and spans[-1][1] == v - 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def step_map(alert: Alert) -> Callable[[], str]:
    def run() -> str:
        item = build_work_item(alert, MappingRules())
        note = update_note(alert)
        return f"ok (description {len(item.description):,} chars, note {len(note):,} chars)"

    return run


def step_bind(alert: Alert) -> Callable[[], str]:
    def run() -> str:
        adapter = CountingAdapter()
        CmdbBinder(adapter, ttl_seconds=60).bind(alert)  # type: ignore[arg-type]
        return f"ok ({adapter.calls} lookup, {adapter.values} values)"

    return run


# --------------------------------------------------------------------------- the cases


def target_ids(count: int) -> Alert:
    ids = [f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-{i:06d}"
           for i in range(count)]
    return parse_alert(document({"alertTargetIDs": ids, "configurationItems": [f"vm-{i:06d}" for i in range(count)]}))


def service_health(communication: str) -> bytes:
    return body(document({"monitoringService": "ServiceHealth"},
                         {"properties": {"title": "t", "communication": communication}}))


def impacted_services(text: str) -> bytes:
    return body(document({"monitoringService": "ServiceHealth"}, {"properties": {"impactedServices": text}}))


def many_conditions(count: int) -> bytes:
    criteria = [{"metricName": f"m{i}", "operator": "GreaterThan", "threshold": "1", "metricValue": i,
                 "dimensions": [{"name": "d", "value": "v"}]} for i in range(count)]
    return body(document(context={"condition": {"allOf": criteria}}))


def prometheus_labels(count: int) -> bytes:
    labels = {f"label{(i * 7919) % count:06d}": "v" for i in range(count)}
    return body(document({"monitoringService": "Prometheus"}, {"expression": "up == 0", "labels": labels}))


def markup_text(unit: str) -> bytes:
    text = (unit * (MIB // len(unit) - 64))
    return body(document({"description": text}))


CASES: list[tuple[str, Callable[[], Callable[[], str]]]] = [
    ("cmdb: 16,000 target ids + 16,000 CIs, bind", lambda: step_bind(target_ids(16_000))),
    ("cmdb: 64,000 target ids + 64,000 CIs, bind", lambda: step_bind(target_ids(64_000))),
    ("cmdb: 64,000 target ids + 64,000 CIs, map", lambda: step_map(target_ids(64_000))),
    ("service health: communication of 1 MiB of '<'", lambda: step_pipeline(service_health("<" * (MIB - 400)))),
    ("service health: impactedServices, a 1 MiB string of '['",
     lambda: step_pipeline(impacted_services("[" * (MIB - 400)))),
    ("body: 1 MiB of '['", lambda: step_parse(b"[" * MIB)),
    ("body: customProperties of 1 MiB of '['",
     lambda: step_parse(nested_custom(1).replace(b'{"a":1}', b"[" * (MIB - 400)))),
    ("body: customProperties nested 398 levels (document 400)", lambda: step_pipeline(nested_custom(398))),
    ("body: customProperties nested 380-520 levels, each", lambda: step_depths(range(380, 521))),
    ("body: customProperties nested 1,000 levels", lambda: step_pipeline(nested_custom(1_000))),
    ("log alert: 8,000 conditions", lambda: step_pipeline(many_conditions(8_000))),
    ("prometheus: 40,000 labels", lambda: step_pipeline(prometheus_labels(40_000))),
    ("description: 1 MiB of '[ code ]'", lambda: step_pipeline(markup_text("[ code ]"))),
    ("description: 1 MiB of 'javascript:'", lambda: step_pipeline(markup_text("javascript:"))),
    ("description: 1 MiB of spaces", lambda: step_pipeline(markup_text(" "))),
]


def _at_depth(frames: int, step: Callable[[], str]) -> str:
    """``step()`` called ``frames`` Python frames deeper, as from a server thread and the API."""
    return step() if frames <= 0 else _at_depth(frames - 1, step)


def run_case(make: Callable[[], Callable[[], str]], timeout: int, frames: int = 0) -> tuple[str, str]:
    try:
        step = make()  # building the input (and any parse it needs) is not timed
    except PayloadError as exc:
        return "-", f"400 while building: {exc}"
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    started = time.perf_counter()
    try:
        outcome = _at_depth(frames, step)
    except TimedOut:
        return f"> {timeout} s", "stopped (timeout)"
    except PayloadError as exc:
        outcome = f"400: {exc}"
    except RecursionError:
        outcome = "RecursionError (503, redelivered forever)"
    except Exception as exc:
        outcome = f"{type(exc).__name__} (503): {exc}"[:100]
    finally:
        signal.alarm(0)
    elapsed = time.perf_counter() - started
    return _seconds(elapsed), outcome


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=int, default=600, help="stop a case after this many seconds")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    parser.add_argument("--frames", type=int, default=25,
                        help="call each step this many frames deep (a server thread's stack; default 25)")
    args = parser.parse_args()
    sys.setrecursionlimit(1000)  # the interpreter's default, whatever the caller set
    print(f"Python {sys.version.split()[0]}; time per step for one payload, called {args.frames} frames deep")
    for name, make in CASES:
        if args.only and args.only not in name:
            continue
        elapsed, outcome = run_case(make, args.timeout, args.frames)
        print(f"  {name:58} {elapsed:>10}   {outcome}", flush=True)


if __name__ == "__main__":
    main()
