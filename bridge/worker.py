"""The outbox worker: takes keys whose time has come and runs a reconcile pass over each.

``serve`` runs it as a background thread (so a local run shows the whole job and drains within
seconds of the ITSM's recovery); in Azure the queue-triggered function hands each message to
:meth:`OutboxWorker.handle_message` and a timer calls :meth:`OutboxWorker.tick`. Either way the
decision of what to write stays in :mod:`bridge.reconcile`: the worker only says *when*.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import telemetry
from .reconcile import Reconciler
from .state.base import DueWork, StateUnavailable
from .state.stats import outbox_stats

__all__ = ["OutboxWorker"]

logger = logging.getLogger(__name__)

# A record that should have been attempted this long ago but was not (its holder died between
# writing it and scheduling it) is put back on the queue by the sweep.
SWEEP_GRACE_SECONDS = 120.0
# Finished records older than the retention are deleted at most this often.
PURGE_EVERY_SECONDS = 3600.0
# How often the loop lets the store do its housekeeping (StateStore.maintain).
MAINTAIN_EVERY_SECONDS = 1.0


class OutboxWorker:
    def __init__(
        self,
        reconciler: Reconciler,
        *,
        batch: int = 16,
        threads: int = 4,
        idle_seconds: float = 0.2,
        sweep_every_seconds: float = 60.0,
        retention_seconds: float = 30 * 86400.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._reconciler = reconciler
        self._store = reconciler.store
        self._batch = batch
        self._threads = threads
        self._idle = idle_seconds
        self._sweep_every = sweep_every_seconds
        self._retention = retention_seconds
        self._last_purge = 0.0
        self._wall = wall
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_sweep = 0.0
        self._last_maintain = 0.0

    # ------------------------------------------------------------------ one round

    def drain_once(self) -> int:
        """Run every key due now (one batch); returns how many were taken."""
        lease = self._reconciler.timing.pass_seconds + self._reconciler.timing.lease_margin_seconds
        works = self._store.take_due(self._batch, lease)
        if not works:
            return 0
        if self._pool is None or len(works) == 1:
            for work in works:
                self._run(work)
        else:
            list(self._pool.map(self._run, works))
        return len(works)

    def _run(self, work: DueWork) -> None:
        try:
            self._reconciler.run(work.key)
        except StateUnavailable:
            # The lease runs out and the key is handed out again; nothing is lost. (The pass's
            # own line said why.)
            return
        except Exception:
            logger.exception("outbox: unexpected failure on %s; it will be tried again", work.key)
            return
        try:
            self._store.finish(work)
        except StateUnavailable as exc:
            logger.warning("outbox: could not let go of %s (%s); its lease will expire", work.key, exc)

    def tick(self) -> int:
        """The periodic duty: re-schedule stranded records, forget old finished ones (hourly),
        then drain what is due."""
        now = self._wall()
        swept = self._store.sweep(now, SWEEP_GRACE_SECONDS)
        if swept:
            logger.warning("outbox: %d record(s) were due but not scheduled; scheduled again", swept)
        self._last_sweep = now
        # A fallback write of this machine is recorded as soon as the store answers again.
        self._reconciler.epoch.recover()
        if now - self._last_purge >= PURGE_EVERY_SECONDS:
            before = now - self._retention
            # Written before the purge: a key whose record is gone must not pass for new
            # (bridge.epoch). Should this fail, nothing is purged.
            self._reconciler.epoch.note_purge(before)
            purged = self._store.purge(before)
            self._last_purge = now
            if purged:
                logger.info("state: forgot %d record(s) finished over %.0f days ago", purged, self._retention / 86400)
        total = 0
        while not self._stop.is_set():
            taken = self.drain_once()
            total += taken
            if taken < self._batch:
                break
        self._report_outbox()
        return total

    def _report_outbox(self) -> None:
        """The outbox gauges, from every record: only while telemetry is on (it reads them all)."""
        tel = telemetry.current()
        if not tel.enabled:
            return
        try:
            stats = outbox_stats(self._store.records(), self._wall())
            tel.outbox(stats, self._reconciler.credential_status() is not None)
        except StateUnavailable as exc:
            logger.warning("outbox: could not count the records for telemetry: %s", exc)
        except Exception:
            # The sweep's real work is done; a failure here costs only the gauges.
            logger.exception("outbox: could not report the outbox gauges")

    def handle_message(self, body: str | bytes) -> None:
        """The queue trigger's body: one reconcile pass for the message's key.

        A pass that leaves work schedules its own next message, so the runtime's retry (and
        poison queue) only ever sees failures of the state store itself, raised from here.
        """
        from .state.azure import message_key

        key = message_key(body)
        if key is None:
            logger.warning("outbox: ignoring a message that names no key")
            return
        self._reconciler.run(key)

    # ------------------------------------------------------------------ background thread

    def start(self) -> OutboxWorker:
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="outbox") if self._threads > 1 else None
        self._thread = threading.Thread(target=self._loop, name="outbox-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._wall() - self._last_maintain >= MAINTAIN_EVERY_SECONDS:
                    self._last_maintain = self._wall()
                    self._store.maintain()
                if self._wall() - self._last_sweep >= self._sweep_every:
                    self.tick()
                    taken = 0
                else:
                    taken = self.drain_once()
            except StateUnavailable as exc:
                logger.warning("outbox: state store unavailable: %s", exc)
                taken = 0
            except Exception:
                logger.exception("outbox: unexpected failure; carrying on")
                taken = 0
            if taken == 0:
                self._stop.wait(self._idle)
