"""Identity of an alert: the correlation key that ties it to one work item, and the payload
fingerprint that recognises a redelivery of the very same notification.

The key goes into ITSM queries, so it is restricted to ``[0-9a-f-]``: it can never
contain ``^`` (the query separator) and stays within the 100 characters of ``correlation_id``.
"""

from __future__ import annotations

import hashlib
import json
import re

from .alerts import Alert, thaw

__all__ = [
    "HASH_KEY_LENGTH",
    "MARKER_PREFIX",
    "canonical_payload",
    "correlation_key",
    "fingerprint",
    "note_marker",
]

# 40 hex digits (160 bits) without hyphens: never 36 characters long, never hyphenated, so a
# hashed key can never look like (or collide with) the GUID form.
HASH_KEY_LENGTH = 40
MARKER_PREFIX = "AzMonBridge-"

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.IGNORECASE)


def correlation_key(alert_id: str) -> str:
    """The alertId's last path segment, lower-cased, when it is a GUID; else a hash of alertId.

    Metric, log, resource-health and smart-detector alerts end in the alert instance's GUID.
    Activity-log alerts carry the rule's resource path and service-health alerts a 64-character
    non-GUID id, so those are hashed. The hash covers the lower-cased id because Azure resource
    ids are case-insensitive and the same rule is sometimes spelled with different case.
    """
    last = alert_id.strip().rstrip("/").rsplit("/", 1)[-1]
    if _GUID.match(last):
        return last.lower()
    digest = hashlib.sha256(alert_id.strip().lower().encode("utf-8")).hexdigest()
    return digest[:HASH_KEY_LENGTH]


def canonical_payload(alert: Alert) -> bytes:
    """The payload as canonical JSON (keys sorted, no spaces): what is fingerprinted and stored.

    Taken as made at parse time when it was (the same text: the frozen view is a copy of that
    document), else written from a thawed copy of the view.
    """
    if alert.canonical is not None:
        return alert.canonical
    return json.dumps(thaw(alert.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def fingerprint(alert: Alert, canonical: bytes | None = None) -> str:
    """16 hex digits identifying the exact payload (canonical JSON, keys sorted).

    Azure Monitor redelivers byte-identical payloads; a later firing differs at least in its
    timestamps, so it gets a new fingerprint. Pass ``canonical`` when it is already at hand.
    """
    data = canonical if canonical is not None else canonical_payload(alert)
    return hashlib.sha256(data).hexdigest()[:16]


def note_marker(fingerprint: str) -> str:
    """The token embedded in every work note the bridge writes for one payload."""
    return f"{MARKER_PREFIX}{fingerprint}"
