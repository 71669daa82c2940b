"""The stand-ins in a process of their own: ``python -m bench.standin_host`` (started by the suite).

The ServiceNow stand-in (CMDB seeded as for the sandbox) and the Entra ID stand-in run here, so
neither the client nor the bridge shares an interpreter (and its lock) with them. The process
prints one JSON line (the bridge settings that point at the stand-ins, a token, the Table API's
basic credentials), then answers one JSON line per JSON line read on stdin:

* ``{"op": "latency", "seconds": s}``: every ServiceNow request waits ``s`` seconds first, each in
  its own handler thread (concurrent requests are not serialised); 0 removes the latency;
* ``{"op": "created", "keys": [...]}``: for each correlation key, the monotonic time its first
  incident was created (``time.monotonic`` is the same clock in every process of the machine),
  or null;
* ``{"op": "stats"}``: incidents created, duplicates (a second incident for a key), ServiceNow
  requests by kind (``"GET incident"``; the suite's bare writes, which use basic auth, as
  ``"bare POST incident"``), and the body of the latest incident create (the template of a bare write);
* ``{"op": "stop"}`` (or end of input): stop and exit.

The request log is replaced by counters: a long run must not grow the stand-in's memory.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from bridge.sandbox.common import RequestRecord, Response
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import SandboxStack

__all__ = ["CreateTracker", "main"]

_INCIDENTS = re.compile(r"/api/now(?:/v[12])?/table/incident")


def _kind(path: str) -> str:
    if _INCIDENTS.fullmatch(path) or path.startswith("/api/now/table/incident/"):
        return "incident"
    if path.startswith("/api/now/table/cmdb"):
        return "cmdb"
    if path == "/oauth_token.do":
        return "oauth"
    return "other"


class CreateTracker:
    """Watches a ServiceNow stand-in: when each key's incident was created, and every call by kind."""

    def __init__(self, standin: ServiceNowStandIn) -> None:
        self._lock = threading.Lock()
        self.created: dict[str, float] = {}
        self.creates = 0
        self.duplicates = 0
        self.calls: Counter[str] = Counter()
        self.last_create: dict[str, Any] | None = None
        handle = standin._handle

        def tracked(
            method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
        ) -> Response:
            response = handle(method, path, query, headers, body)
            if method == "POST" and response.status == 201 and _INCIDENTS.fullmatch(path):
                # Stamped after the write is committed, before the answer leaves: the moment it exists.
                now = time.monotonic()
                payload = json.loads(body)
                key = str(payload.get("correlation_id", ""))
                with self._lock:
                    self.creates += 1
                    if key in self.created:
                        self.duplicates += 1
                    else:
                        self.created[key] = now
                    self.last_create = payload
            return response

        def counted(record: RequestRecord) -> None:
            # The bridge authenticates with OAuth; the suite's bare writes with basic auth.
            who = "bare " if record.auth == "basic" else ""
            with self._lock:
                self.calls[f"{who}{record.method} {_kind(record.path)}"] += 1

        # The stand-in looks both up on the instance at each request (see LoopbackHandler).
        standin._handle = tracked  # type: ignore[method-assign]
        standin._log = counted  # type: ignore[method-assign]

    def times(self, keys: list[str]) -> dict[str, float | None]:
        with self._lock:
            return {key: self.created.get(key) for key in keys}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "creates": self.creates,
                "duplicates": self.duplicates,
                "calls": dict(self.calls),
                "last_create": self.last_create,
            }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with SandboxStack() as stack:
        standin = stack.servicenow
        tracker = CreateTracker(standin)
        hello = {
            "env": stack.bridge_env(),
            "servicenow": standin.url,
            "token": stack.token(),
            # The stand-in's own sandbox credentials, for the bare writes (never printed by the suite).
            "basic": ["bridge", "sandbox-password"],
        }
        print(json.dumps(hello), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            answer: dict[str, Any]
            if op == "latency":
                standin.faults.clear()
                seconds = float(command.get("seconds", 0.0))
                if seconds > 0:
                    standin.faults.latency(seconds)
                answer = {"ok": True}
            elif op == "created":
                answer = {"times": tracker.times(list(command.get("keys", [])))}
            elif op == "stats":
                answer = tracker.stats()
            elif op == "stop":
                print(json.dumps({"ok": True}), flush=True)
                break
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
