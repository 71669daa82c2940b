"""Binding an alert to the CMDB configuration item of the Azure resource it is about.

Resource ids are tried first (an ITSM's Azure discovery stores them on cloud CIs), then the
names in ``configurationItems``. Results, found or not, are cached for a while: alerts come in
bursts for the same resources, and a missing CI must not cost every alert a round of lookups.
A CMDB failure never fails the alert: it binds nothing and says so in the description.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .adapters.base import ConfigurationItem, ItsmAdapter
from .alerts import Alert
from .deadline import deadline
from .errors import ItsmError

__all__ = ["DEFAULT_LOOKUP_SECONDS", "CmdbBinder"]

logger = logging.getLogger(__name__)

# Enough for every real alert (one target, a handful of CIs) while bounding the lookups one
# pathological alert can cause.
_MAX_LOOKUPS_EACH = 3
_MAX_CACHE_ENTRIES = 2048
# The binding's share of the alert's time: a slow CMDB costs an alert at most this much.
DEFAULT_LOOKUP_SECONDS = 2.0
# A failed lookup is remembered briefly, so a struggling CMDB does not slow every alert.
_FAILURE_TTL_SECONDS = 60.0


@dataclass(frozen=True)
class _Cached:
    ci: ConfigurationItem | None
    note: str | None
    expires: float


class CmdbBinder:
    def __init__(
        self,
        adapter: ItsmAdapter,
        *,
        ttl_seconds: float,
        lookup_seconds: float = DEFAULT_LOOKUP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._adapter = adapter
        self._ttl = ttl_seconds
        self._lookup_seconds = lookup_seconds
        self._clock = clock
        self._cache: dict[tuple[tuple[str, ...], tuple[str, ...]], _Cached] = {}
        self._lock = threading.Lock()

    def bind(self, alert: Alert) -> tuple[ConfigurationItem | None, str | None]:
        """The CI for ``alert`` (or None) and a note for the description when none was bound."""
        resource_ids, names = _candidates(alert)
        if not resource_ids and not names:
            return None, None
        key = (resource_ids, names)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.expires > now:
            return cached.ci, cached.note

        try:
            with deadline(self._lookup_seconds, self._clock):
                ci = self._adapter.find_configuration_item(resource_ids, names)
        except ItsmError as exc:
            logger.warning("CMDB lookup failed, alert %s bound to no CI: %s", alert.alert_id, exc)
            failed = "CMDB lookup failed; no configuration item bound."
            self._remember(key, None, failed, now + min(self._ttl, _FAILURE_TTL_SECONDS))
            return None, failed
        note = None
        if ci is None:
            wanted = ", ".join((*resource_ids, *names))
            note = f"No CMDB configuration item found for {wanted}."
        self._remember(key, ci, note, now + self._ttl)
        return ci, note

    def _remember(
        self, key: tuple[tuple[str, ...], tuple[str, ...]], ci: ConfigurationItem | None, note: str | None,
        expires: float,
    ) -> None:
        with self._lock:
            if len(self._cache) >= _MAX_CACHE_ENTRIES:
                self._evict(self._clock())
            self._cache[key] = _Cached(ci, note, expires)

    def _evict(self, now: float) -> None:
        for k in [k for k, v in self._cache.items() if v.expires <= now]:
            del self._cache[k]
        while len(self._cache) >= _MAX_CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]


def _candidates(alert: Alert) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resource ids (targets, and CIs that are ids) and plain names, deduplicated, in order."""
    ids: list[str] = []
    names: list[str] = []
    for target in alert.target_ids:
        if target.lower() not in (i.lower() for i in ids):
            ids.append(target)
    for item in alert.configuration_items:
        bucket = ids if item.startswith("/subscriptions/") else names
        if item.lower() not in (b.lower() for b in bucket):
            bucket.append(item)
    return tuple(ids[:_MAX_LOOKUPS_EACH]), tuple(names[:_MAX_LOOKUPS_EACH])
