"""In-process cost per stage: what the bridge's own code costs an alert, the ITSM taken away.

    python -m bench.inprocess [--iterations 2000]

Each stage is timed call by call over distinct new Fired alerts, with the garbage collector on as
in production (its pauses count), after a warm-up, in a few rounds of which the quietest (lowest
wall-clock p99) is kept; p50 and p99 per alert. The figures are CPU time of the calling thread
(``time.thread_time_ns``): on a shared machine the wall clock also counts the slices the
scheduler gave other processes, which says nothing of the code; the wall clock is in the notes
and the JSON. The floors are what no verifier or parser can avoid: checking the token's RS256
signature, and ``json.loads`` of the body.

The reconcile and whole-request stages run the production wiring (``build_runtime``: SQLite state
file, retry policy, reconciler, API) with the ITSM adapter swapped for an in-memory one whose
every call is a dict operation, and CMDB lookups off. Logging is left unconfigured (the bridge's
log calls are made; no handler formats or writes them).
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bench.alerts import bodies
from bench.report import Part, Target, percentile, print_figures
from bridge.adapters.base import (
    ConfigurationItem,
    Resolution,
    WorkItem,
    WorkItemRecord,
    WorkItemRef,
    WorkItemStatus,
)
from bridge.alerts import parse_alert
from bridge.api import ApiRequest
from bridge.auth import TokenVerifier
from bridge.config import Settings
from bridge.correlation import canonical_payload, correlation_key, fingerprint
from bridge.mapping import build_work_item
from bridge.runtime import Runtime, build_runtime
from bridge.sandbox.stack import SandboxStack

__all__ = ["DictAdapter", "measure"]

HANDLE_P99_MS = Target(0.3)
_WARM_UP = 50


class DictAdapter:
    """An ITSM in a dict: every operation O(1), so the timings are the bridge's, not the fake's."""

    name: ClassVar[str] = "bench"
    display_name: ClassVar[str] = "Bench"
    settings: ClassVar[tuple[Any, ...]] = ()
    title_limit: ClassVar[int] = 160
    description_limit: ClassVar[int] = 4000
    managed_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self._items: dict[str, list[WorkItemRecord]] = {}
        self._keys: dict[str, str] = {}
        self._notes: dict[str, list[str]] = {}
        self._ids = itertools.count(1)

    @classmethod
    def from_settings(cls, settings: Settings, session: Any = None) -> DictAdapter:
        return cls()

    def find(self, correlation_id: str) -> Sequence[WorkItemRecord]:
        return list(self._items.get(correlation_id, ()))

    def create(self, item: WorkItem, resolution: Resolution | None = None) -> WorkItemRef:
        n = next(self._ids)
        ref = WorkItemRef(self.name, f"{n:032x}", f"INC{n:07d}")
        status = WorkItemStatus.RESOLVED if resolution is not None else WorkItemStatus.OPEN
        self._items.setdefault(item.correlation_id, []).append(WorkItemRecord(ref, item.correlation_id, status))
        self._keys[ref.id] = item.correlation_id
        self._notes[ref.id] = [item.note]
        return ref

    def add_note(self, ref: WorkItemRef, note: str) -> None:
        self._notes[ref.id].append(note)

    def has_note(self, ref: WorkItemRef, marker: str) -> bool:
        return any(marker in note for note in self._notes.get(ref.id, ()))

    def resolve(self, ref: WorkItemRef, resolution: Resolution) -> None:
        key = self._keys[ref.id]
        self._items[key] = [
            WorkItemRecord(r.ref, key, WorkItemStatus.RESOLVED) if r.ref.id == ref.id else r for r in self._items[key]
        ]
        self._notes[ref.id].append(resolution.note)

    def find_configuration_item(self, resource_ids: Sequence[str], names: Sequence[str]) -> ConfigurationItem | None:
        return None

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class _Round:
    """Per call: wall-clock seconds, and CPU seconds of the calling thread."""

    wall: list[float]
    cpu: list[float]


def _timed(count: int, step: Callable[[int], object], first: int) -> _Round:
    """Each call ``step(first + i)`` for i < ``count``, timed."""
    wall_clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    wall: list[float] = []
    cpu: list[float] = []
    for i in range(first, first + count):
        wall_begin, cpu_begin = wall_clock(), cpu_clock()
        step(i)
        cpu.append((cpu_clock() - cpu_begin) / 1e9)
        wall.append((wall_clock() - wall_begin) / 1e9)
    return _Round(wall, cpu)


def _best_round(iterations: int, rounds: int, step: Callable[[int], object]) -> _Round:
    """The quietest of ``rounds`` rounds (lowest wall-clock p99), after ``_WARM_UP`` calls not kept."""
    _timed(_WARM_UP, step, rounds * iterations)
    gc.collect()  # start each stage from the same heap, then let the collector run as it will
    measured = [_timed(iterations, step, r * iterations) for r in range(rounds)]
    return min(measured, key=lambda timed: percentile(timed.wall, 99))


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def measure(iterations: int = 2000, rounds: int = 3) -> Part:
    part = Part("inprocess")
    started = time.monotonic()
    total = rounds * iterations + _WARM_UP
    state = Path(tempfile.mkdtemp(prefix="bench-inprocess-"))
    try:
        with SandboxStack() as stack:
            env = stack.bridge_env(CMDB_LOOKUP="false", STATE_SQLITE_PATH=str(state / "state.sqlite3"))
            settings = Settings.from_env(env)
            token = stack.token()
            verifier = TokenVerifier(settings)
            verifier.verify(f"Bearer {token}")  # fetch the signing keys once: the stages run with them cached
            public_key = serialization.load_pem_public_key(stack.entra.public_key_pem())
            assert isinstance(public_key, rsa.RSAPublicKey)
            runtime = build_runtime(env)
            runtime.reconciler.adapter = DictAdapter()
            try:
                stages = _Stages(runtime, settings, verifier, token, total)
                for name, step, target in stages.all(public_key):
                    timed = _best_round(iterations, rounds, step)
                    cpu = {q: percentile(timed.cpu, q) * 1000 for q in (50, 99)}
                    wall = {q: percentile(timed.wall, q) * 1000 for q in (50, 99)}
                    part.add(f"{name} p50", cpu[50], "ms", note=f"wall clock {wall[50]:.3f} ms")
                    part.add(f"{name} p99", cpu[99], "ms", target, note=f"wall clock {wall[99]:.3f} ms")
                    part.details[name] = {
                        "cpu_p50_ms": cpu[50],
                        "cpu_p99_ms": cpu[99],
                        "cpu_mean_ms": sum(timed.cpu) / iterations * 1000,
                        "wall_p50_ms": wall[50],
                        "wall_p99_ms": wall[99],
                        "wall_mean_ms": sum(timed.wall) / iterations * 1000,
                    }
                part.details["outcomes"] = stages.check()
            finally:
                runtime.close()
            # The same whole request with the state record in memory: what the bridge's own work
            # costs, apart from writing the record to disk (which the p99 target above includes).
            memory = build_runtime({**env, "STATE_SQLITE_PATH": ":memory:"})
            memory.reconciler.adapter = DictAdapter()
            try:
                stages = _Stages(memory, settings, verifier, token, total)
                timed = _best_round(iterations, rounds, stages.handle)
                name = "whole request, state record in memory"
                cpu = {q: percentile(timed.cpu, q) * 1000 for q in (50, 99)}
                wall = {q: percentile(timed.wall, q) * 1000 for q in (50, 99)}
                part.add(f"{name} p50", cpu[50], "ms", note=f"wall clock {wall[50]:.3f} ms")
                part.add(f"{name} p99", cpu[99], "ms", note=f"wall clock {wall[99]:.3f} ms; SQLite :memory:")
                part.details[name] = {"cpu_p50_ms": cpu[50], "cpu_p99_ms": cpu[99], "wall_p99_ms": wall[99]}
                if set(stages.answers) != {"handle 200"}:
                    raise RuntimeError(f"not every alert was processed inline, state in memory: {stages.answers}")
            finally:
                memory.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    part.details["iterations"] = iterations
    part.details["rounds"] = rounds
    part.seconds = time.monotonic() - started
    return part


class _Stages:
    """Each stage and its inputs, prepared before anything is timed (distinct alerts per stage
    where the state would otherwise recognise a redelivery), and a check of what they did."""

    def __init__(self, runtime: Runtime, settings: Settings, verifier: TokenVerifier, token: str, total: int) -> None:
        self._runtime, self._settings, self._verifier = runtime, settings, verifier
        self._authorization = f"Bearer {token}"
        head, claims, signature = token.split(".")
        self._signing_input, self._signature = f"{head}.{claims}".encode("ascii"), _b64url_decode(signature)
        self._raw = [data for _, data in bodies(total)]
        self._alerts = [parse_alert(data) for data in self._raw]
        keyed = [(alert, canonical_payload(alert)) for alert in self._alerts]
        self._delivered = [(alert, canonical, fingerprint(alert, canonical)) for alert, canonical in keyed]
        headers = {"Authorization": self._authorization, "Content-Type": "application/json"}
        self._requests = [ApiRequest.of("POST", "/api/alerts", headers, data) for _, data in bodies(total)]
        self._answers: dict[str, int] = {}

    def all(self, public_key: rsa.RSAPublicKey) -> list[tuple[str, Callable[[int], object], Target | None]]:
        raw, alerts, rules, verifier = self._raw, self._alerts, self._settings.mapping, self._verifier
        return [
            ("floor: RS256 signature check", lambda i: public_key.verify(
                self._signature, self._signing_input, padding.PKCS1v15(), hashes.SHA256()), None),
            ("floor: json.loads of the body", lambda i: json.loads(raw[i]), None),
            ("token verify (keys cached)", lambda i: verifier.verify(self._authorization), None),
            ("parse", lambda i: parse_alert(raw[i]), None),
            ("correlate + fingerprint", lambda i: (
                correlation_key(alerts[i].alert_id), fingerprint(alerts[i], canonical_payload(alerts[i]))), None),
            ("map to a work item", lambda i: build_work_item(alerts[i], rules), None),
            ("reconcile: record + decide + write (dict ITSM, SQLite)", self._deliver, None),
            ("whole request: BridgeApi.handle (dict ITSM, SQLite)", self._handle, HANDLE_P99_MS),
        ]

    def _deliver(self, i: int) -> None:
        delivery = self._runtime.reconciler.deliver(*self._delivered[i])
        self._count(f"reconcile {delivery.status} {delivery.action}")

    def _handle(self, i: int) -> None:
        self._count(f"handle {self._runtime.api.handle(self._requests[i]).status}")

    handle = _handle

    @property
    def answers(self) -> dict[str, int]:
        return dict(self._answers)

    def _count(self, outcome: str) -> None:
        self._answers[outcome] = self._answers.get(outcome, 0) + 1

    def check(self) -> dict[str, int]:
        """A stage that failed quietly must not pass for a fast one: every alert was created."""
        if set(self._answers) != {"reconcile processed created", "handle 200"}:
            raise RuntimeError(f"not every alert was processed inline over the dict ITSM: {self._answers}")
        return dict(self._answers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2000, help="alerts per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per stage; the quietest is kept")
    args = parser.parse_args()
    print_figures(measure(args.iterations, args.rounds).figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
