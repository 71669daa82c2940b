"""The alerts the suite sends: the bundled metric alert as many distinct instances, stamped now.

Azure Monitor stamps ``firedDateTime`` (and ``resolvedDateTime``) when it sends, so the suite does
too: an alert that looks months old could be treated differently from a fresh one. Bodies are
serialised once, before any timing starts, and a redelivery is the very same bytes.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from bridge.sandbox.stack import metric_alert

__all__ = ["alert", "bodies", "body", "new_key"]


def new_key() -> str:
    """A fresh alert instance id; it is also the correlation key the bridge derives from it."""
    return str(uuid.uuid4())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert(key: str, condition: str = "Fired", value: float | None = None) -> dict[str, Any]:
    payload = metric_alert(key, condition, value)
    essentials = payload["data"]["essentials"]
    essentials["firedDateTime"] = _now()
    if condition == "Resolved":
        essentials["resolvedDateTime"] = _now()
    return payload


def body(key: str, condition: str = "Fired", value: float | None = None) -> bytes:
    return json.dumps(alert(key, condition, value)).encode("utf-8")


def bodies(count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct new Fired alerts: (correlation key, body)."""
    keys = [new_key() for _ in range(count)]
    return [(key, body(key)) for key in keys]
