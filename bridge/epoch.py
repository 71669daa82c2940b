"""When a correlation key provably has no work item yet, so a new Fired may skip its lookup.

A new Fired normally costs two ITSM calls: a lookup by correlation key, then the create. The
lookup finds items the state record does not know about. :class:`StoreEpoch` says when there
can be none, so one call is enough. The argument, case by case:

A work item for a key comes into being in one of these ways only:

1. Through a record in this store. A delivery that *inserted* the key's record saw no record,
   so no pass has acted on the key through it. Any later create by another pass first writes
   its intent into the record; the reconciler skips the lookup only while the record has no
   intent (:meth:`bridge.reconcile.Reconciler._ensure_item`).
2. By a bridge version from before the state record, or an old instance still running while
   the new version starts. Such items were made before this store's *epoch* (its first use,
   meta ``records_since``) plus the upgrade overlap.
3. Through a record that the hourly purge has since deleted. That record was finished before
   the purge cut-off (meta ``purged_before``, a running maximum written *before* the purge).
4. By the fallback path (:meth:`bridge.reconcile.Reconciler.deliver_unrecorded`: store down,
   ITSM up), which keeps no record. It *taints* the store before its first ITSM call: an
   in-process time, and a marker file beside the store's identity in the temp directory. The
   next process on the machine that reaches the store raises ``records_since`` to the taint
   time, then removes the marker.
5. Through another store (replaced, or emptied): before this store's first use, so before
   its epoch.

An alert instance keeps its ``firedDateTime`` for life, and each delivery comes after the
firing. So every item of cases 2-5 belongs to an alert fired before
``max(records_since, purged_before, taint) + margin``. The margin (:data:`MARGIN_SECONDS`)
covers the upgrade overlap and the clock skew between Azure, the bridge's hosts and the store.
An alert fired later than that, whose record this delivery inserted, has no work item. An
alert without ``firedDateTime``, or stamped later than now plus the margin (a sender's clock
that is off), never qualifies.

What is left: an instance makes a fallback write, then is gone for good (host lost, marker
with it) before the store comes back. A redelivery of that alert to *another machine* after
the recovery is then not covered by the taint. It is covered only by the margin: the epoch
must be at least a margin old, and the alert fired after that. Every process re-reads the
meta at most every :data:`REFRESH_SECONDS`, so a taint raised by another instance reaches it
within that time.

Meta writes are plain upserts. Two writers racing can leave the smaller of two close values.
Each process keeps the largest value it has seen and writes it back when the store shows less.
The margin is far larger than such a race can be wide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from .state.base import StateStore, StateUnavailable

__all__ = ["MARGIN_SECONDS", "PURGED_BEFORE", "RECORDS_SINCE", "REFRESH_SECONDS", "StoreEpoch", "marker_directory"]

logger = logging.getLogger(__name__)

RECORDS_SINCE = "records_since"
PURGED_BEFORE = "purged_before"
# Upgrade overlap (old instances still creating without a record) plus clock skew. A constant:
# larger only costs the lookup for alerts fired soon after a store's first use.
MARGIN_SECONDS = 900.0
REFRESH_SECONDS = 10.0
_MARKER_PREFIX = "bridge-taint-"


def marker_directory(store: StateStore, root: str | Path | None = None) -> Path | None:
    """Where fallback markers for ``store`` live on this machine. None for a process-private
    store (``:memory:``), which dies with the process and its taint."""
    identity = _identity(store)
    if identity is None:
        return None
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
    return Path(root if root is not None else tempfile.gettempdir()) / f"{_MARKER_PREFIX}{digest}"


def _identity(store: StateStore) -> str | None:
    named = getattr(store, "identity", None)
    if isinstance(named, str) and named:
        return f"{store.name}:{named}"
    path = getattr(store, "path", None)
    if isinstance(path, str) and path and path != ":memory:":
        return f"{store.name}:{os.path.realpath(path)}"
    return None


class _NoEpoch(Exception):
    """The epoch cannot be known now; the lookup is kept."""


class StoreEpoch:
    """Decides whether an alert's key provably has no work item. Thread-safe.

    ``enabled=False`` never says so: for the throw-away store of the fallback path. A store
    with no identity (not a file, not a named table) is treated the same way, unless it is
    process-private (``:memory:``).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        wall: Callable[[], float],
        margin_seconds: float = MARGIN_SECONDS,
        refresh_seconds: float = REFRESH_SECONDS,
        marker_root: str | Path | None = None,
        enabled: bool = True,
    ) -> None:
        self._store = store
        self._wall = wall
        self._margin = margin_seconds
        self._refresh = refresh_seconds
        self._markers = marker_directory(store, marker_root)
        private = getattr(store, "path", None) == ":memory:"
        self._enabled = enabled and (self._markers is not None or private)
        self._lock = threading.Lock()
        # The largest values seen or written by this process: they only ever grow.
        self._since: float | None = None
        self._purged = -math.inf
        self._tainted = -math.inf
        self._read_at = -math.inf

    @property
    def markers(self) -> Path | None:
        return self._markers

    def provably_new(self, fired_at: datetime | None) -> bool:
        """True only when no work item can exist for an alert fired at ``fired_at`` whose record
        was just inserted. Never raises: anything unknown keeps the lookup."""
        if not self._enabled or fired_at is None:
            return False
        try:
            fired = fired_at.timestamp()
        except (OverflowError, OSError, ValueError):
            return False
        try:
            with self._lock:
                self._recover()
                self._read(force=False)
                assert self._since is not None
                horizon = max(self._since, self._purged, self._tainted)
        except (StateUnavailable, OSError, _NoEpoch) as exc:
            logger.debug("the epoch is not known (%s); the lookup is kept", exc)
            return False
        except Exception:
            # Whatever went wrong, the lookup is the safe answer.
            logger.exception("could not tell whether an alert is new; the lookup is kept")
            return False
        # A firing stamped later than now (beyond the skew) comes from a clock that cannot be
        # trusted to have stamped the alert's earlier deliveries before they came.
        return horizon + self._margin < fired <= self._wall() + self._margin

    def taint(self) -> None:
        """Called before a write without a record: from now on, alerts fired until now + margin
        are not provably new, here and (through the marker) in any process on this machine.

        Raises :class:`OSError` when the marker cannot be written; the caller must not write then.
        """
        now = self._wall()
        with self._lock:
            self._tainted = max(self._tainted, now)
        if self._markers is None:
            return
        self._markers.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(16).hex()}"
        scratch = self._markers / f".{name}.tmp"
        scratch.write_text(json.dumps({"at": now}), encoding="utf-8")
        # Atomic: a reader sees a whole marker or none.
        os.replace(scratch, self._markers / f"{name}.json")

    def recover(self) -> None:
        """Apply any fallback markers to the store (the store is reachable). Logs, never raises."""
        if not self._enabled:
            return
        try:
            with self._lock:
                self._recover()
        except (StateUnavailable, OSError, _NoEpoch) as exc:
            logger.warning("could not record an earlier write made without the state store yet: %s", exc)
        except Exception:
            # The markers stay for the next try; the delivery or pass that called goes on.
            logger.exception("could not record an earlier write made without the state store")

    def note_purge(self, before: float) -> None:
        """Record the cut-off of a purge about to run. Raises :class:`StateUnavailable`, and then
        the purge must not run."""
        if not math.isfinite(before):
            raise ValueError("purge needs a finite time")
        with self._lock:
            stored = _at(self._store.get_meta(PURGED_BEFORE))
            value = max(before, self._purged, stored if stored is not None else -math.inf)
            if stored is None or stored < value:
                self._store.put_meta(PURGED_BEFORE, {"at": value})
            self._purged = value

    # ------------------------------------------------------------------ under the lock

    def _recover(self) -> None:
        if self._markers is None:
            return
        try:
            found = [p for p in self._markers.iterdir() if p.suffix == ".json"]
        except FileNotFoundError:
            return
        if not found:
            return
        latest = -math.inf
        for path in found:
            try:
                at = _at(json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                continue  # another process applied it already
            except ValueError:
                at = None
            # An unreadable marker still says a write happened, at the latest now.
            latest = max(latest, at if at is not None else self._wall())
        if latest == -math.inf:
            return
        self._tainted = max(self._tainted, latest)
        self._read(force=True)
        assert self._since is not None
        if self._since < latest:
            self._store.put_meta(RECORDS_SINCE, {"at": latest})
            self._read(force=True)
            if self._since is None or self._since < latest:
                raise _NoEpoch("the raised epoch did not hold")
        for path in found:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        logger.warning(
            "work items were written while the state store was unreachable; alerts fired before %s "
            "are looked up before any create",
            datetime.fromtimestamp(latest + self._margin).isoformat(timespec="seconds"),
        )

    def _read(self, *, force: bool) -> None:
        now = self._wall()
        if not force and self._since is not None and now - self._read_at < self._refresh:
            return
        since = self._stored(RECORDS_SINCE)
        if since is None:
            # This store's first use (or it was emptied): records begin now. Never an older
            # value kept from before, which may belong to a store that was replaced.
            self._store.put_meta(RECORDS_SINCE, {"at": now})
            since = self._stored(RECORDS_SINCE)
            if since is None:
                raise _NoEpoch("the epoch written could not be read back")
        elif self._since is not None and since < self._since:
            # A racing writer left a smaller value: put back what this process knows.
            self._store.put_meta(RECORDS_SINCE, {"at": self._since})
        self._since = max(self._since, since) if self._since is not None else since
        purged = self._stored(PURGED_BEFORE)
        self._purged = max(self._purged, purged if purged is not None else -math.inf)
        if purged is not None and purged < self._purged:
            self._store.put_meta(PURGED_BEFORE, {"at": self._purged})
        self._read_at = now

    def _stored(self, name: str) -> float | None:
        value = self._store.get_meta(name)
        if value is None:
            return None
        at = _at(value)
        if at is None:
            raise _NoEpoch(f"the state store's {name} is not a time")
        return at


def _at(value: object) -> float | None:
    if not isinstance(value, dict):
        return None
    at = value.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        return None
    return float(at)
