"""Several ``python -m bridge serve`` processes on one SQLite state file, against the stand-ins.

What a production deployment is, in miniature: instances that share the durable state and can be
killed, a ServiceNow that can go down (its stand-in stops; connections are refused) and come
back on the same port, and an Azure-Monitor-like sender that retries only what Azure retries.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bridge.config import Settings
from bridge.sandbox.stack import SandboxItem, SandboxStack
from bridge.state import StateStore, build_store

from .test_demo_and_cli import LineReader

REPO = Path(__file__).resolve().parents[2]
# Azure Monitor retries only these (CONTRACT section 1); its waits are scaled down in tests.
AZURE_RETRIED = frozenset({408, 429, 503, 504})
AZURE_WAITS = (5.0, 20.0, 5.0, 40.0, 5.0)

# Short enough that tests drain in seconds, the same mechanisms as the defaults.
FAST_SETTINGS = {
    "ITSM_INLINE_SECONDS": "1.5",
    "ITSM_RETRY_BUDGET_SECONDS": "4",
    "ITSM_TIMEOUT_SECONDS": "2",
    "ITSM_SETTLE_SECONDS": "3",
    "OUTBOX_MAX_DELAY_SECONDS": "1",
}


class Instance:
    """One ``serve`` process; kill() is SIGKILL, as a crashed host would be."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.name = name
        self._env = env
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", "0"],
            cwd=REPO,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        reader = LineReader(self.process.stdout)
        self.url = reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ", timeout=30)[1]
        reader.until(r"^Ctrl-C to stop$")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Sent:
    """What the sender saw for one delivery."""

    status: int | None  # None: no answer at all after the last retry
    body: dict[str, Any]
    attempts: int


class Cluster:
    def __init__(self, stack: SandboxStack, state_file: Path, instances: int = 2, **settings: str) -> None:
        self.stack = stack
        env = {**os.environ, **stack.bridge_env(**{**FAST_SETTINGS, **settings})}
        env["STATE_SQLITE_PATH"] = str(state_file)  # used when STATE_STORE is sqlite
        env.pop("WEBSITE_INSTANCE_ID", None)
        self.env = env
        self.instances = [Instance(env, f"bridge-{i}") for i in range(instances)]

    @property
    def snow(self) -> Any:
        """The ServiceNow stand-in (a cluster over ServiceNow)."""
        return self.stack.servicenow

    @property
    def standin(self) -> Any:
        """The ITSM stand-in, whichever ITSM: faults, stop/start, requests."""
        return self.stack.itsm.standin

    def stop(self) -> None:
        for instance in self.instances:
            instance.stop()

    def post(
        self,
        instance: int,
        payload: dict[str, Any],
        *,
        http: requests.Session | None = None,
        retry_scale: float = 0.0,
        timeout: float = 10.0,
    ) -> Sent:
        """POST like an action group: retries 408/429/503/504 and silence (waits scaled)."""
        token = self.stack.token()
        session = http or requests.Session()
        attempts = 0
        waits = [w * retry_scale for w in AZURE_WAITS] if retry_scale else []
        while True:
            attempts += 1
            target = self.instances[instance % len(self.instances)]
            try:
                response = session.post(
                    f"{target.url}/api/alerts",
                    json=payload,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=timeout,
                )
                status: int | None = response.status_code
                body = response.json() if response.content else {}
            except requests.RequestException:
                status, body = None, {}
            if status is not None and status not in AZURE_RETRIED:
                return Sent(status, body, attempts)
            if not waits:
                return Sent(status, body, attempts)
            time.sleep(waits.pop(0))
            instance += 1  # Azure's retry may land on another instance

    def store(self) -> StateStore:
        """The instances' state store, opened from their settings (SQLite file or Azure)."""
        return build_store(Settings.from_env(self.env))

    def pending(self) -> int:
        store = self.store()
        try:
            return sum(1 for r in store.records() if r.due is not None and r.dead is None)
        finally:
            store.close()

    def wait_drained(self, timeout: float = 60.0) -> float:
        """Seconds until no record is pending (raises when it takes longer than ``timeout``)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.pending() == 0:
                return time.monotonic() - started
            time.sleep(0.2)
        raise AssertionError(f"{self.pending()} record(s) still pending after {timeout:.0f} s")

    def items_by_key(self) -> dict[str, list[SandboxItem]]:
        """The ITSM's work items by correlation key, in neutral terms (whichever ITSM)."""
        found: dict[str, list[SandboxItem]] = {}
        for item in self.stack.itsm.items():
            found.setdefault(item.correlation_id, []).append(item)
        return found

    def incidents_by_key(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for incident in self.snow.records("incident"):
            found.setdefault(incident["correlation_id"], []).append(incident)
        return found


def running(stack: SandboxStack, state_file: Path, instances: int = 2, **settings: str) -> Iterator[Cluster]:
    cluster = Cluster(stack, state_file, instances, **settings)
    try:
        yield cluster
    finally:
        cluster.stop()


def marker_counts(notes: list[str]) -> dict[str, int]:
    """How many journal entries carry each payload marker (a marker in two entries is a repeat)."""
    counts: dict[str, int] = {}
    for entry in notes:
        for marker in set(re.findall(r"\[AzMonBridge-([0-9a-f]{16})\]", entry)):
            counts[marker] = counts.get(marker, 0) + 1
    return counts
