"""Binding an alert to the CMDB configuration item of the Azure resource it is about.

Resource ids are tried first (an ITSM's Azure discovery stores them on cloud CIs), then the
names in ``configurationItems``. Results, found or not, are cached for a while: alerts come in
bursts for the same resources, and a missing CI must not cost every alert a round of lookups.
A CMDB failure never fails the alert: it binds nothing and says so in the description.

Only values of a safe shape are ever looked up: resource ids that are Azure resource ids
(``/subscriptions/<guid>[/resourceGroups/<name>][/providers/<namespace>/<type>/<name>...]``) and
names of letters, digits and ``_.-()@#`` and inner spaces, each of bounded length. Anything else
(``javascript:...``, query syntax, control characters) is skipped. However many targets an alert
lists, at most ``_MAX_SCANNED`` of each list are looked at, and deduplicating them is linear.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
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
# Entries of alertTargetIDs / configurationItems looked at: one pathological alert costs no more.
_MAX_SCANNED = 50
_MAX_CACHE_ENTRIES = 2048
# The binding's share of the alert's time: a slow CMDB costs an alert at most this much.
DEFAULT_LOOKUP_SECONDS = 2.0
# A failed lookup is remembered briefly, so a struggling CMDB does not slow every alert.
_FAILURE_TTL_SECONDS = 60.0


# An Azure resource id: a subscription, optionally a resource group, optionally a provider's
# resource (with any child resources). Names: what Azure allows in resource group and resource
# names, minus anything but ASCII. Case-insensitive, like Azure resource ids.
_SEGMENT = r"[A-Za-z0-9_.()\-]{1,260}"
_RESOURCE_ID = re.compile(
    r"/subscriptions/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    rf"(?:/resourceGroups/{_SEGMENT})?"
    rf"(?:/providers/[A-Za-z0-9.]{{1,100}}/[A-Za-z0-9]{{1,100}}/{_SEGMENT}(?:/[A-Za-z0-9]{{1,100}}/{_SEGMENT}){{0,8}})?\Z",
    re.IGNORECASE,
)
_RESOURCE_ID_MAX_CHARS = 1_024
# A CI name: starts and ends with a letter, digit or one of "_()"; spaces only inside.
_NAME = re.compile(r"[A-Za-z0-9_()](?:[A-Za-z0-9_.()@# \-]{0,253}[A-Za-z0-9_.()])?\Z")


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


def is_resource_id(value: str) -> bool:
    """``value`` is an Azure resource id of the strict shape the CMDB is asked about."""
    return len(value) <= _RESOURCE_ID_MAX_CHARS and _RESOURCE_ID.match(value) is not None


def is_ci_name(value: str) -> bool:
    """``value`` is a configuration item name of the safe shape the CMDB is asked about."""
    return len(value) <= 255 and _NAME.match(value) is not None


def _candidates(alert: Alert) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Resource ids (targets, and CIs that are ids) and plain names, deduplicated, in order.

    At most ``_MAX_SCANNED`` entries of each list are looked at and each costs one set lookup:
    the work is bounded whatever the alert lists. Values of another shape are skipped.
    """
    ids: dict[str, str] = {}  # lower-cased -> as sent, first spelling wins
    names: dict[str, str] = {}
    _collect(alert.target_ids[:_MAX_SCANNED], ids, names, targets=True)
    _collect(alert.configuration_items[:_MAX_SCANNED], ids, names, targets=False)
    return tuple(ids.values()), tuple(names.values())


def _collect(values: Iterable[str], ids: dict[str, str], names: dict[str, str], *, targets: bool) -> None:
    for value in values:
        if len(ids) >= _MAX_LOOKUPS_EACH and (targets or len(names) >= _MAX_LOOKUPS_EACH):
            return
        # Targets are resource ids; a configuration item is one when it looks like one.
        if targets or value.startswith("/subscriptions/"):
            bucket, fits = ids, is_resource_id(value)
        else:
            bucket, fits = names, is_ci_name(value)
        if not fits:
            logger.debug("not looking up a CMDB value of an unexpected shape (%d characters)", len(value))
            continue
        if len(bucket) < _MAX_LOOKUPS_EACH:
            bucket.setdefault(value.lower(), value)
