"""What to write, decided from the state record: the one place that moves work items (CONTRACT §2).

Every delivery is first *recorded* (:meth:`Reconciler.deliver`); then a *pass* compares what the
record has seen with what it has done and makes the ITSM calls that close the gap. The HTTP
path runs one pass within a short budget, the outbox worker runs the later ones
(:meth:`Reconciler.run`), and ``outbox replay`` runs one on demand: none of them decides on its own.

Order of arrival does not matter because the gap is computed from the whole record:

- a Fired and no work item: look it up by correlation key (it may predate the record, or be a
  create whose answer was lost), else create it, already resolved when the Resolved is known.
  The lookup is skipped only when the key provably has no item (:mod:`bridge.epoch`);
- a Resolved and an open item: re-read the item (a person may have closed it), then resolve;
- a new Fired payload and an open item: re-read, then add a work note;
- a payload already written, or an item no longer open: nothing, no ITSM call.

One creator: a pass acts only while it holds the record's *claim* (a lease written
conditionally, so two instances cannot both hold it, and one whose holder died expires). The
intent to create is written before the create is sent; after an uncertain outcome the next pass
looks up before creating again, and gives the ITSM ``settle`` seconds to land a slow create.
"""

from __future__ import annotations

import copy
import enum
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from . import notes, telemetry, threads
from .adapters.base import ConfigurationItem, ItsmAdapter, Resolution, WorkItemRecord, WorkItemRef, WorkItemStatus
from .alerts import Alert, parse_alert
from .cmdb import CmdbBinder
from .correlation import note_marker
from .deadline import deadline
from .epoch import StoreEpoch
from .errors import ItsmError
from .mapping import build_work_item, configuration_item_override, resolution, update_note
from .retry import RetryPolicy, call_with_retry
from .rules import MappingRules
from .state.base import StateConflict, StateStore, StateUnavailable, Versioned
from .state.record import Claim, DeadLetter, Event, Intent, Record
from .state.stats import outbox_state
from .threads import Placement

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["Action", "Delivery", "PassResult", "Reconciler", "Timing"]

logger = logging.getLogger(__name__)


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Delivery:
    """What the HTTP path answers for one delivery: processed (200), queued (202) or rejected (502)."""

    status: str  # "processed" | "queued" | "rejected"
    correlation_id: str
    action: Action | None = None
    work_item: WorkItemRef | None = None
    reason: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class PassResult:
    record: Record | None
    wrote: Mapping[str, str] = field(default_factory=dict)  # fingerprints this pass wrote, and how
    error: ItsmError | None = None
    busy_until: float | None = None  # another holder has the claim until then


@dataclass(frozen=True)
class Timing:
    """Time bounds of the reconciler; see the ITSM_* and OUTBOX_* settings."""

    inline_seconds: float = 3.0
    pass_seconds: float = 8.0
    settle_seconds: float = 60.0
    horizon_seconds: float = 72 * 3600.0
    base_delay_seconds: float = 2.0
    max_delay_seconds: float = 60.0
    # How long a claim outlives its pass's budget before others may take over.
    lease_margin_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Timing:
        return cls(
            inline_seconds=settings.inline_seconds,
            pass_seconds=settings.retry_budget_seconds,
            settle_seconds=settings.settle_seconds,
            horizon_seconds=settings.outbox_horizon_seconds,
            max_delay_seconds=settings.outbox_max_delay_seconds,
        )


class _Wait(Exception):
    """Not an error: the step must not act before ``until`` (wall clock)."""

    def __init__(self, until: float, why: str) -> None:
        super().__init__(why)
        self.until = until


class _ClaimLost(Exception):
    """Another pass holds the claim: this one stops without writing."""

    def __init__(self, until: float) -> None:
        super().__init__("claimed elsewhere")
        self.until = until


class _Owner:
    """One pass: the id its claim carries, and the record as the pass last read or wrote it.

    The pass reads that copy instead of the store (a SELECT, or an HTTP GET with Azure Table)
    until it writes again or a write of its conflicts. Why that decides exactly as a read would:

    - Every write is conditional on the version it was based on. A write based on the copy
      after someone else wrote fails with :class:`StateConflict`, and is redone from the store.
    - A read of the copy is a read of the store just after the pass's own last read or write.
      Anything another writer did since is concurrent with the pass and could as well have
      landed just after a real read. The pass cannot have seen it elsewhere first: other
      writers make no ITSM call while this pass holds the claim (a write that needs no claim
      is a *fact* about a call already made, or an appended event), and the pass reads no
      other record state in between.
    - The copy is never older than the pass's latest successful write, so what the pass knew
      "under the claim" (after its claim write) is what the store held at that moment.

    Any attempt that ends in an exception (a retry after a wait, a lost claim, a held pass)
    starts again from the store (:meth:`forget`). Kept per pass, never shared: the copy is
    private, and every caller gets its own (:func:`_copy`).
    """

    __slots__ = ("_known", "id")

    def __init__(self, owner_id: str, known: Versioned | None = None) -> None:
        self.id = owner_id
        self._known = known

    def known(self) -> Versioned | None:
        known = self._known
        return Versioned(_copy(known.record), known.etag) if known is not None else None

    def keep(self, record: Record, etag: str) -> None:
        self._known = Versioned(_copy(record), etag)

    def forget(self) -> None:
        self._known = None


def _copy(record: Record) -> Record:
    """A record equal to what the store returns for ``record`` written: the same values, its
    maps in the key order of the stored JSON (sorted), and no list or map shared with it.

    Cheaper than a JSON round trip; nested values (events, intent, claim, ...) are immutable."""
    twin = copy.copy(record)
    for name, value in vars(record).items():
        if isinstance(value, list):
            setattr(twin, name, list(value))
        elif isinstance(value, dict):
            setattr(twin, name, dict(sorted(value.items())))
    return twin


_CONFLICT_RETRIES = 50
_BUSY_POLL_SECONDS = 0.05


class Reconciler:
    """Records deliveries and drives each key's work item to what its record says."""

    def __init__(
        self,
        store: StateStore,
        adapter: ItsmAdapter,
        rules: MappingRules,
        policy: RetryPolicy,
        cmdb: CmdbBinder | None = None,
        *,
        timing: Timing = Timing(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        epoch: StoreEpoch | None = None,
    ) -> None:
        self.store = store
        # Whether a new key can have no work item (then its Fired skips the lookup).
        self.epoch = epoch if epoch is not None else StoreEpoch(store, wall=wall)
        self.adapter = adapter
        self._rules = rules
        self._policy = policy
        self._cmdb = cmdb
        self.timing = timing
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._instance = f"{os.uname().nodename if hasattr(os, 'uname') else 'host'}:{os.getpid()}"
        self._credential = _CredentialState(store, wall)

    # ------------------------------------------------------------------ HTTP path

    def deliver(self, alert: Alert, canonical: bytes, fingerprint: str) -> Delivery:
        """Record one delivery durably, then try its work inline within ``inline_seconds``.

        Raises :class:`StateUnavailable` when nothing could be recorded (the caller may fall
        back to an ephemeral store, see :meth:`ephemeral`).
        """
        started = self._clock()
        place = threads.place(alert, self._rules)
        key = place.key
        condition = "Resolved" if alert.is_resolved else "Fired"
        event = Event(fingerprint, condition, self._wall(), place.member, place.at, place.stage)
        stored, new, inserted = self._record(key, alert, event, canonical, place)
        record = stored.record
        # Only the delivery that inserted the record, with a Fired first (a Resolved first keeps
        # its lookup), may skip the lookup; see bridge.epoch for why that is safe.
        fresh = inserted and (alert.is_stateless or not alert.is_resolved) and self.epoch.provably_new(alert.fired_at)
        if not fresh:
            self.epoch.recover()
        if not new and fingerprint in record.written and record.due == record.rest_due() and record.dead is None:
            # An identical redelivery of what is already written: nothing to do, no ITSM call.
            return self._processed(record, fingerprint, Action.IGNORED, "identical alert already recorded")
        if not new and record.dead is not None:
            return Delivery("rejected", record.correlation_id, reason=record.dead.reason)

        budget = self.timing.inline_seconds - (self._clock() - started)
        # The inline pass starts from the record as recorded just now (see _Owner).
        known = Versioned(_copy(record), stored.etag)
        result = self._drive_inline(key, {fingerprint: alert}, budget, fresh=fresh, known=known)
        record = result.record or record
        delivery = self._answer(record, fingerprint, new, result)
        if delivery.status == "processed" and new and record.due is not None and record.due == record.rest_due():
            self._wake_later(key, record.due)
        return delivery

    def _wake_later(self, key: str, at: float) -> None:
        """Have the outbox wake the key at ``at`` (a quiet resolve). SQLite's due column is that
        already; with Azure a queue message is (the sweep timer finds it should this fail)."""
        try:
            self.store.schedule(key, max(0.0, at - self._wall()))
        except StateUnavailable as exc:
            logger.warning("correlationId=%s: the quiet resolve could not be scheduled (%s); the sweep will", key, exc)

    def deliver_unrecorded(self, alert: Alert, canonical: bytes, fingerprint: str, budget: float) -> Delivery:
        """The path when the state store is unreachable: the same reconciler over a throw-away
        in-memory record, so the ITSM lookup decides (as before the record existed).

        Only a finished write may be answered 2xx here; anything that would have to wait for the
        outbox raises :class:`StateUnavailable` (503), and Azure Monitor delivers it again.

        Before any ITSM call the store is *tainted* (:meth:`StoreEpoch.taint`): an item made here
        has no record, so no alert fired until now may skip its lookup later. When the taint
        cannot be recorded, nothing is written (503).
        """
        from .state.sqlite import SqliteStore

        try:
            self.epoch.taint()
        except OSError as exc:
            raise StateUnavailable(
                f"the state store is unreachable and the write could not be marked for later: {exc}"
            ) from None
        private = SqliteStore(":memory:")
        scratch = Reconciler(
            private,
            self.adapter,
            self._rules,
            self._policy,
            self._cmdb,
            timing=replace(self.timing, inline_seconds=max(0.0, min(budget, self.timing.inline_seconds))),
            sleep=self._sleep,
            clock=self._clock,
            wall=self._wall,
            rand=self._rand,
            # The throw-away record says nothing about the ITSM: always look up.
            epoch=StoreEpoch(private, wall=self._wall, enabled=False),
        )
        try:
            delivery = scratch.deliver(alert, canonical, fingerprint)
        finally:
            scratch.store.close()
        if delivery.status == "queued":
            raise StateUnavailable(f"the state store is unreachable and the ITSM did not finish: {delivery.reason}")
        return delivery

    def _answer(self, record: Record, fingerprint: str, new: bool, result: PassResult) -> Delivery:
        key = record.key
        if fingerprint in record.written:
            if not new:
                if record.written[fingerprint] == Action.IGNORED:
                    reason = record.reasons.get(fingerprint) or "identical alert already recorded"
                else:
                    reason = "identical alert already recorded (handled by an earlier or concurrent delivery)"
                return self._processed(record, fingerprint, Action.IGNORED, reason)
            return self._processed(record, fingerprint, Action(record.written[fingerprint]))
        if record.dead is not None:
            return Delivery("rejected", record.correlation_id, reason=record.dead.reason)
        if _plan(record, self._wall()) is None and record.claim is None:
            # Nothing to write for this payload now: a Resolved before any Fired.
            return self._processed(
                record,
                fingerprint,
                Action.IGNORED,
                "no work item for this alert; the resolution is recorded and applies if its Fired arrives",
            )
        reason = record.held or record.last_error or "the ITSM did not finish in time"
        if result.busy_until is not None and result.error is None and not record.last_error:
            reason = "another delivery of this alert is being written"
        delay = max(0.0, (record.due or self._wall()) - self._wall())
        try:
            self.store.schedule(key, delay)
        except StateUnavailable as exc:
            # The record holds the due time; the sweep re-schedules it.
            logger.warning("correlationId=%s could not be scheduled (%s); the sweep will find it", key, exc)
        return Delivery("queued", record.correlation_id, reason=f"queued for the outbox: {reason}", retry_after=delay)

    def _processed(self, record: Record, fingerprint: str, action: Action, reason: str | None = None) -> Delivery:
        if action is Action.IGNORED and reason is None:
            reason = record.reasons.get(fingerprint)
        return Delivery("processed", record.correlation_id, action, _ref(record), reason)

    def _record(
        self, key: str, alert: Alert, event: Event, canonical: bytes, place: Placement | None = None
    ) -> tuple[Versioned, bool, bool]:
        """Add ``event`` to the key's record (creating it): the record, whether the event is new
        to it, and whether this call inserted the record (no record existed)."""
        if place is None:
            place = threads.place(alert, self._rules)
        safety = self.timing.inline_seconds + self.timing.lease_margin_seconds
        for _ in range(_CONFLICT_RETRIES):
            now = self._wall()
            current = self.store.load(key)
            if current is None:
                record = Record(key, alert.alert_id, alert.is_stateless, created_at=now, updated_at=now)
                if place.thread is not None:
                    record.thread = place.thread
                    record.correlation = threads.episode_correlation(key, place.member)
                _take_policy(record, place)
                record.add_event(event)
                # If this instance dies before the inline pass ends, the outbox takes over then.
                record.due = now + safety
                try:
                    etag = self.store.insert(record, {event.fingerprint: canonical})
                except StateConflict:
                    continue
                return Versioned(record, etag), True, True
            record = current.record
            if not record.add_event(event):
                return current, False, False
            _take_policy(record, place)
            if record.dead is not None:
                # A new change of the alert is worth one more try.
                record.dead, record.attempts, record.failing_since = None, 0, None
            record.updated_at = now
            record.due = min(record.due or now + safety, now + safety)
            try:
                etag = self.store.replace(record, current.etag, {event.fingerprint: canonical})
            except StateConflict:
                continue
            return Versioned(record, etag), True, False
        raise StateUnavailable(f"the record of {key} kept changing; could not record the alert")

    def _drive_inline(
        self, key: str, cache: dict[str, Alert], budget: float, *, fresh: bool = False, known: Versioned | None = None
    ) -> PassResult:
        """Passes until the gap is closed, another holder finishes, or the budget is spent.

        ``known``: the record as this delivery just read or wrote it, for the first pass only
        (a pass after waiting for another holder reads the store)."""
        end = self._clock() + max(0.0, budget)
        result = self._pass(key, cache, budget, lease=self.timing.inline_seconds, fresh=fresh, known=known)
        while result.busy_until is not None and result.error is None and self._clock() + _BUSY_POLL_SECONDS < end:
            self._sleep(_BUSY_POLL_SECONDS)
            result = self._pass(key, cache, end - self._clock(), lease=self.timing.inline_seconds, fresh=fresh)
        return result

    # ------------------------------------------------------------------ outbox path

    def run(self, key: str) -> PassResult:
        """One outbox pass over ``key``; schedules the next one when work remains.

        Logs one line (``bridge_event="outbox"``) and, with telemetry on, records the pass's span
        and counts what it wrote.
        """
        tel = telemetry.current()
        started = self._clock()
        seen = _PassSeen()
        with tel.outbox_pass({"alert.correlation_id": key}) as span:
            try:
                result = self._run(key, seen)
            except Exception as exc:
                outcome = "unavailable" if isinstance(exc, StateUnavailable) else "failed"
                span.set_outcome(outcome, failed=True, error=type(exc).__name__)
                self._log_pass(key, None, seen, outcome, started, f"{type(exc).__name__}: {exc}")
                raise
            outcome = _pass_outcome(result, seen)
            if tel.enabled:
                try:
                    self._report_pass(tel, span, key, result, seen, outcome)
                except Exception:
                    # The pass is done and recorded; only its telemetry is lost.
                    logger.exception("could not record the telemetry of an outbox pass over %s", key)
            self._log_pass(key, result, seen, outcome, started, str(result.error) if result.error else None)
        return result

    def _run(self, key: str, seen: _PassSeen) -> PassResult:
        self.epoch.recover()
        current = self.store.load(key)
        if current is None:
            return PassResult(None)
        seen.attempt = current.record.attempts + 1
        due = current.record.due
        if due is not None and due > self._wall() + 1.0 and current.record.claim is None:
            # An early wake-up (a duplicate queue message): keep to the back-off the record says.
            self.store.schedule(key, due - self._wall())
            seen.early = True
            return PassResult(current.record)
        # The pass starts from the record just read (see _Owner).
        known = Versioned(_copy(current.record), current.etag)
        result = self._pass(key, seen.alerts, self.timing.pass_seconds, lease=self.timing.pass_seconds, known=known)
        record = result.record
        if record is None:
            return result
        now = self._wall()
        if result.busy_until is not None:
            self.store.schedule(key, max(0.0, result.busy_until - now) + 0.5)
        elif record.due is not None:
            self.store.schedule(key, max(0.0, record.due - now))
        return result

    def _report_pass(
        self, tel: telemetry.Telemetry, span: telemetry.Span, key: str, result: PassResult, seen: _PassSeen,
        outcome: str,
    ) -> None:
        """The pass's span attributes and count (only called while telemetry is on)."""
        record = result.record
        action = _strongest(result.wrote)
        if action is not None and not seen.alerts and record is not None:
            # Adopted without reading the payload (a create whose answer was lost): read it for its type.
            try:
                self._alert(key, next(iter(result.wrote)), seen.alerts)
            except Exception:  # noqa: S110 - the type is "unknown" then; telemetry never fails a pass
                pass
        alert_type = seen.alert_type() or "unknown"
        span.set("alert.id", record.alert_id if record is not None else None)
        span.set("alert.type", alert_type)
        span.set("bridge.action", action)
        span.set("bridge.work_item", _item_label(record))
        span.set("bridge.attempt", seen.attempt or None)
        failed = outcome == "rejected"
        span.set_outcome(outcome, failed=failed, error=result.error.reason.value if result.error else None)
        if action is not None or failed:
            tel.pass_done(alert_type, action, outcome)

    def _log_pass(
        self, key: str, result: PassResult | None, seen: _PassSeen, outcome: str, started: float, error: str | None
    ) -> None:
        """One line per outbox pass, with the fields of the alerts route's line where they apply.
        Never raises."""
        try:
            record = result.record if result is not None else None
            fields: dict[str, object] = {
                "alertId": record.alert_id if record is not None else None,
                "correlationId": key,
                "alertType": seen.alert_type(),
                "action": _strongest(result.wrote) if result is not None else None,
                "delivery": outcome,
                "workItem": _item_label(record),
                "attempt": seen.attempt or None,
                "durationMs": round((self._clock() - started) * 1000),
                "error": error,
            }
            if outcome in ("gone", "not_due"):
                level = logging.DEBUG
            elif outcome in ("rejected", "unavailable", "failed"):
                level = logging.WARNING
            else:
                level = logging.INFO
            telemetry.log_event(logger, level, "outbox", fields)
        except Exception:
            logger.exception("could not log an outbox pass over %s", key)

    def record_key(self, name: str) -> str:
        """The record key ``name`` means: a key, or the correlation id an answer gave (a work item
        kept by fingerprint or Service Health event carries its own, see bridge.threads)."""
        if self.store.load(name) is not None:
            return name
        return next((r.key for r in self.store.records() if r.correlation == name), name)

    def replay(self, key: str) -> Record | None:
        """Make a held, failing or dead-lettered record due now, with a fresh retry horizon.
        ``key`` may be the correlation id an answer gave (:meth:`record_key`)."""
        key = self.record_key(key)
        for _ in range(_CONFLICT_RETRIES):
            current = self.store.load(key)
            if current is None:
                return None
            record = current.record
            record.dead, record.held, record.attempts, record.failing_since = None, None, 0, None
            record.set_error(None)
            record.due = self._wall()
            record.updated_at = record.due
            try:
                self.store.replace(record, current.etag)
            except StateConflict:
                continue
            self.store.schedule(key, 0)
            return record
        raise StateUnavailable(f"the record of {key} kept changing; could not replay it")

    # ------------------------------------------------------------------ one pass

    def _pass(
        self,
        key: str,
        cache: dict[str, Alert],
        budget: float,
        *,
        lease: float,
        fresh: bool = False,
        known: Versioned | None = None,
    ) -> PassResult:
        wrote: dict[str, str] = {}
        owner = _Owner(f"{self._instance}:{threading.get_ident()}:{os.urandom(4).hex()}", known)
        claim_seconds = lease + self.timing.lease_margin_seconds
        policy = replace(self._policy, budget_seconds=max(0.0, budget))
        try:
            with deadline(max(0.0, budget), self._clock):
                record = call_with_retry(
                    lambda: self._attempt(key, owner, claim_seconds, cache, wrote, fresh),
                    policy,
                    sleep=self._sleep,
                    clock=self._clock,
                    describe=f"alert {key}",
                )
        except _ClaimLost as busy:
            return PassResult(self._load(key), wrote, busy_until=busy.until)
        except _Wait as wait:
            until, why = wait.until, str(wait)
            return self._after(key, owner, wrote, lambda r: _schedule(r, until, why), None)
        except ItsmError as exc:
            error = exc
            self._credential.observe(error)
            return self._after(key, owner, wrote, lambda r: self._failed(r, error), error)
        if wrote:
            self._credential.observe(None)
        return PassResult(record, wrote)

    def _after(
        self, key: str, owner: _Owner, wrote: dict[str, str], change: Callable[[Record], None], exc: ItsmError | None
    ) -> PassResult:
        """Write when to try again (and why) and let go of the claim."""
        try:
            record = self._update(key, owner, change, release=True)
        except _ClaimLost as busy:
            return PassResult(self._load(key), wrote, error=exc, busy_until=busy.until)
        return PassResult(record, wrote, error=exc)

    def _attempt(
        self,
        key: str,
        owner: _Owner,
        claim_seconds: float,
        cache: dict[str, Alert],
        wrote: dict[str, str],
        fresh: bool,
    ) -> Record | None:
        """One attempt at the steps; an attempt that fails leaves the next read to the store."""
        try:
            return self._steps(key, owner, claim_seconds, cache, wrote, fresh)
        except BaseException:
            owner.forget()
            raise

    def _steps(
        self,
        key: str,
        owner: _Owner,
        claim_seconds: float,
        cache: dict[str, Alert],
        wrote: dict[str, str],
        fresh: bool = False,
    ) -> Record | None:
        """Close the record's gap one step at a time; return the record once nothing is left.

        ``fresh``: the key provably had no work item when its record was inserted (see
        :meth:`_ensure_item`)."""
        while True:
            current = self._read(key, owner)
            if current is None:
                return None
            record = current.record
            step = _plan(record, self._wall())
            if step is None:
                settled = self._settle(key, owner, current)
                if _plan(settled, self._wall()) is not None:
                    continue  # new work arrived while settling: the claim is still ours
                return settled
            if step == "ignore":
                self._update(key, owner, _ignore_rest)
                continue
            if step == "renew":
                self._update(key, owner, _renew)
                continue
            if not _mine(record, owner, self._wall()):
                self._update(key, owner, lambda r: _claim(r, owner, self._wall() + claim_seconds))
                continue  # read again under the claim: another holder may just have finished
            if step == "search":
                self._search(key, owner, record, wrote)
            elif step == "ensure":
                self._ensure_item(key, owner, record, cache, wrote, fresh)
            elif step == "resolve":
                self._resolve(key, owner, record, cache, wrote)
            elif step == "expire":
                self._resolve(key, owner, record, cache, wrote, quiet=True)
            elif step == "reopen":
                self._reopen(key, owner, record, cache, wrote)
            else:
                self._note(key, owner, record, cache, wrote)

    def _settle(self, key: str, owner: _Owner, current: Versioned) -> Record:
        """Nothing left to write: clear the outbox bookkeeping (and our claim) if any is set."""
        record = current.record
        if record.due == record.rest_due() and record.claim is None and not record.last_error and not record.held:
            return record
        if record.claim is not None and not _mine(record, owner, self._wall()):
            if record.claim.until > self._wall():
                raise _ClaimLost(record.claim.until)

        def done(r: Record) -> None:
            # Decided again on what is written: if the write conflicted, the record was read
            # again and may hold an event that arrived meanwhile. Its work is then not done:
            # it stays due, and the claim stays with this pass, which goes on to it.
            if _plan(r, self._wall()) is not None:
                return
            _done(r)
            if r.claim is not None and r.claim.owner == owner.id:
                r.claim = None

        return self._update(key, owner, done) or record

    # ------------------------------------------------------------------ steps

    def _ensure_item(
        self, key: str, owner: _Owner, record: Record, cache: dict[str, Alert], wrote: dict[str, str], fresh: bool
    ) -> None:
        """Find the key's work item, or create it.

        The lookup is skipped when ``fresh`` (this delivery inserted the record, and
        :meth:`StoreEpoch.provably_new` rules out every item made without it) and the record,
        read under our claim, shows no create: no intent, no item, no earlier work item. Every
        create through the record writes its intent first, and only a failure that cannot have
        landed clears it, so a create by another pass, or an uncertain one of ours, is looked
        for as before.
        """
        correlation = record.correlation_id
        if fresh and record.intent is None and record.item is None and record.episode == 0:
            found: list[WorkItemRecord] = []
        else:
            found = list(self.adapter.find(correlation))
        if found:
            self._adopt(key, owner, record, found, wrote)
            return
        if record.intent is not None and record.intent.operation == "create":
            self._hold_if_unsettled(record)
        fired = record.fired_events
        latest = fired[-1]
        alert = self._alert(key, latest.fingerprint, cache)
        over = threads.condition_over(record)
        ending = threads.resolving_event(record) if over else None
        how = None
        if ending is not None:
            how = self._resolution_of(key, record, ending, cache, None)
        note_only = how is not None and record.resolution_policy == "note-only"
        ci = ci_note = None
        override = configuration_item_override(alert, self._rules)
        if override is not None:
            # The route names the configuration item: its id, or a name the adapter resolves.
            ci = ConfigurationItem(id=override, name=override, matched_on="route")
            ci_note = f"configuration item {override} set by the mapping file's route"
        elif self._cmdb is not None:
            ci, ci_note = self._cmdb.bind(alert)
        reference = telemetry.current().current_reference()
        item = build_work_item(
            alert,
            self._rules,
            ci,
            ci_note,
            title_limit=self.adapter.title_limit,
            description_limit=self.adapter.description_limit,
            reference=reference,
        )
        item = replace(item, correlation_id=correlation)
        follows = notes.predecessor_line(record.previous)
        if follows is not None:
            item = replace(item, description=f"{follows}\n\n{item.description}", note=f"{follows}\n{item.note}")
        if record.thread is not None:
            # Other members recorded before the create are in it too: name them on it.
            joined = [e for e in fired if e.member != latest.member and e.fingerprint not in record.written]
            others = {e.member: e.fingerprint for e in joined}
            also = notes.members_line([self._alert(key, fp, cache) for fp in others.values()])
            if also is not None:
                item = replace(item, note=f"{also}\n{item.note}")
        if how is not None and note_only:
            # The policy never resolves: the item is made open, its first note saying it is over.
            item, how = replace(item, note=f"{item.note}\n\n{how.note}"), None
        self._update(key, owner, lambda r: _intend(r, "create", self._wall(), latest.fingerprint))
        try:
            ref = self.adapter.create(item, how)
        except ItsmError as exc:
            self._after_write_failed(key, owner, exc)
            raise
        logger.info("correlationId=%s created %s", correlation, ref.number or ref.id)
        ended_at = ending.when if ending is not None else None
        # What the create carried: an event recorded meanwhile (another member, a Resolved) is
        # not in it, and stays for the next step (a note, the resolve).
        carried = {e.fingerprint for e in record.unwritten}

        def created(r: Record) -> None:
            r.item, r.item_open, r.adopted = ref.as_json(), how is None, False
            r.item_status = None
            r.intent = None
            r.resolution_written = ending is not None
            r.resolution_kind = None if ending is None else "note-only" if note_only else _kind(how)
            r.resolved_at = ended_at if ending is not None else r.resolved_at
            for event in r.unwritten:
                if event.fingerprint not in carried:
                    continue
                if event.condition == "Resolved" and not r.stateless:
                    r.mark(event.fingerprint, Action.RESOLVED if ending is not None else Action.IGNORED)
                else:
                    r.mark(event.fingerprint, Action.CREATED)
                wrote[event.fingerprint] = r.written[event.fingerprint]

        self._update(key, owner, created, fact=True)

    def _search(self, key: str, owner: _Owner, record: Record, wrote: dict[str, str]) -> None:
        """A Resolved with no Fired recorded: resolve a work item from before the record, if any."""
        found = list(self.adapter.find(record.correlation_id))
        if found:
            self._adopt(key, owner, record, found, wrote)
            return

        def searched(r: Record) -> None:
            r.searched = True

        self._update(key, owner, searched, fact=True)

    def _adopt(
        self, key: str, owner: _Owner, record: Record, found: list[WorkItemRecord], wrote: dict[str, str]
    ) -> None:
        """Take over an item found by lookup: our own lost create, or one that predates the record."""
        open_items = [r for r in found if r.is_open]
        chosen = (open_items or found)[0]
        ours = record.intent is not None and record.intent.operation == "create"
        if len(found) > 1:
            logger.warning(
                "correlationId=%s has %d work items; keeping %s", record.correlation_id, len(found), _label(chosen.ref)
            )

        def adopt(r: Record) -> None:
            r.item, r.item_open, r.item_status = chosen.ref.as_json(), chosen.is_open, chosen.status.value
            r.intent = None
            r.adopted = not ours
            if not chosen.is_open:
                r.left_at = self._wall()
            if ours:
                # Our create landed although its answer was lost: it carries the latest Fired.
                for event in r.fired_events:
                    if event.fingerprint not in r.written:
                        r.mark(event.fingerprint, Action.CREATED)
                        wrote[event.fingerprint] = Action.CREATED

        self._update(key, owner, adopt, fact=True)

    def _resolve(
        self,
        key: str,
        owner: _Owner,
        record: Record,
        cache: dict[str, Alert],
        wrote: dict[str, str],
        *,
        quiet: bool = False,
    ) -> None:
        """Resolve the open item: its condition is over (or, ``quiet``, a stateless alert has not
        repeated for the auto-resolve time). The route's resolution policy says how: resolve,
        close, or only a note."""
        ending = None if quiet else threads.resolving_event(record)
        item_id = (record.item or {}).get("id")
        current = [r for r in self.adapter.find(record.correlation_id)]
        ours = next((r for r in current if r.ref.id == item_id), None)
        sent = record.intent is not None and record.intent.operation == "resolve"
        now = self._wall()
        ended_at = ending.when if ending is not None else now
        if ours is None or not ours.is_open:
            if sent and ours is not None:
                # Our own resolve landed although its answer was lost.
                kind = _kind_of_status(ours.status)
                self._update(key, owner, lambda r: _resolved(r, ending, wrote, kind, ended_at), fact=True)
            else:
                self._update(key, owner, lambda r: _left_alone(r, ours, self._wall()), fact=True)
            return
        if sent:
            self._hold_if_unsettled(record)
        reference = telemetry.current().current_reference()
        if ending is not None:
            how = self._resolution_of(key, record, ending, cache, reference)
            marker_fp = ending.fingerprint
        else:
            latest = record.fired_events[-1]
            how = notes.quiet_resolution(
                self._alert(key, latest.fingerprint, cache), self._rules, record.auto_resolve_after, reference
            )
            marker_fp = latest.fingerprint
        note_only = record.resolution_policy == "note-only"
        kind = "note-only" if note_only else _kind(how)
        intent = record.intent
        if note_only and intent is not None and intent.operation == "note" and intent.fingerprint == marker_fp:
            if self.adapter.has_note(ours.ref, note_marker(marker_fp)):
                # Our note landed although its answer was lost: not twice.
                self._update(key, owner, lambda r: _resolved(r, ending, wrote, kind, ended_at), fact=True)
                return
            self._hold_if_unsettled(record)
        self._update(key, owner, lambda r: _intend(r, "note" if note_only else "resolve", self._wall(), marker_fp))
        try:
            if note_only:
                self.adapter.add_note(ours.ref, how.note)
            else:
                # Exact duplicates of one alert (from before the record) describe the same condition.
                for item in [r for r in current if r.is_open]:
                    self.adapter.resolve(item.ref, how)
        except ItsmError as exc:
            self._after_write_failed(key, owner, exc)
            raise
        logger.info("correlationId=%s %s %s", record.correlation_id, kind, _label(ours.ref))
        self._update(key, owner, lambda r: _resolved(r, ending, wrote, kind, ended_at), fact=True)

    def _reopen(
        self, key: str, owner: _Owner, record: Record, cache: dict[str, Alert], wrote: dict[str, str]
    ) -> None:
        """The condition fired again within the re-fire window of the resolve: reopen the item,
        unless a person closed it meanwhile (then the next work item is opened instead)."""
        refire = threads.refire_events(record)
        event = refire[-1]
        item_id = (record.item or {}).get("id")
        ours = next((r for r in self.adapter.find(record.correlation_id) if r.ref.id == item_id), None)
        sent = record.intent is not None and record.intent.operation == "reopen"
        if ours is None or ours.status is not WorkItemStatus.RESOLVED:
            if ours is not None and ours.is_open:
                # Open again: our reopen landed although its answer was lost, or a person reopened it.
                action = Action.REOPENED if sent else Action.UPDATED
                self._update(key, owner, lambda r: _reopened(r, refire, wrote, action), fact=True)
            else:
                self._update(key, owner, lambda r: _left_alone(r, ours, self._wall(), ignore=False), fact=True)
            return
        if sent:
            self._hold_if_unsettled(record)
        alert = self._alert(key, event.fingerprint, cache)
        assert record.resolved_at is not None
        note = notes.reopen_note(alert, event, record.resolved_at, telemetry.current().current_reference())
        self._update(key, owner, lambda r: _intend(r, "reopen", self._wall(), event.fingerprint))
        try:
            self.adapter.reopen(ours.ref, note)
        except ItsmError as exc:
            self._after_write_failed(key, owner, exc)
            raise
        logger.info("correlationId=%s reopened %s", record.correlation_id, _label(ours.ref))
        self._update(key, owner, lambda r: _reopened(r, refire, wrote, Action.REOPENED), fact=True)

    def _resolution_of(
        self, key: str, record: Record, ending: Event, cache: dict[str, Alert], reference: str | None
    ) -> Resolution:
        """How to write the end that ``ending`` reports (a Service Health stage has its own text)."""
        alert = self._alert(key, ending.fingerprint, cache)
        if record.thread == threads.SERVICE_HEALTH:
            return notes.stage_resolution(alert, ending, self._rules, reference)
        return resolution(alert, self._rules, reference)

    def _hold_if_unsettled(self, record: Record) -> None:
        """A write whose outcome is unknown and that has not shown up yet may still be on its
        way (a slow request commits after the bridge gave up on it): give the ITSM ``settle``
        seconds to land it before sending it again, looking again meanwhile."""
        intent = record.intent
        if intent is None:
            return
        settle_until = intent.sent_at + self.timing.settle_seconds
        if self._wall() < settle_until:
            raise _Wait(
                min(settle_until, self._wall() + self._delay(max(record.attempts, 1))),
                f"a {intent.operation} whose answer was lost is given time to land before it is sent again",
            )

    def _after_write_failed(self, key: str, owner: _Owner, exc: ItsmError) -> None:
        """A write refused before any work cannot have landed: forget the intent. Otherwise keep
        it, so the next pass looks before it writes again."""
        if not exc.maybe_applied:
            self._update(key, owner, _forget_intent)

    def _note(self, key: str, owner: _Owner, record: Record, cache: dict[str, Alert], wrote: dict[str, str]) -> None:
        if record.thread is not None:
            # A thread notes every change: members joining and resolving, Service Health stages.
            pending = record.unwritten
        else:
            pending = [e for e in record.fired_events if e.fingerprint not in record.written]
        latest = pending[-1]
        item_id = (record.item or {}).get("id")
        ours = next((r for r in self.adapter.find(record.correlation_id) if r.ref.id == item_id), None)
        if ours is None or not ours.is_open:
            self._update(key, owner, lambda r: _left_alone(r, ours, self._wall()), fact=True)
            return
        sent = record.intent is not None and record.intent.operation == "note"
        if sent and record.intent is not None:
            if self.adapter.has_note(ours.ref, note_marker(record.intent.fingerprint)):
                # Our own note landed although its answer was lost: not twice.
                self._update(key, owner, lambda r: _mark_all(r, pending, Action.UPDATED, None, wrote), fact=True)
                return
            self._hold_if_unsettled(record)
        elif record.adopted and self.adapter.has_note(ours.ref, note_marker(latest.fingerprint)):
            # Written by an earlier version of the bridge (or an earlier record) already.
            self._update(
                key, owner, lambda r: _mark_all(r, pending, Action.IGNORED, "identical alert already recorded")
            )
            return
        reference = telemetry.current().current_reference()
        if record.thread is not None:
            changes = [(e, self._alert(key, e.fingerprint, cache)) for e in pending]
            text = notes.member_note(changes, len(threads.members_firing(record)), reference)
        else:
            text = update_note(self._alert(key, latest.fingerprint, cache), reference)
        self._update(key, owner, lambda r: _intend(r, "note", self._wall(), latest.fingerprint))
        try:
            self.adapter.add_note(ours.ref, text)
        except ItsmError as exc:
            self._after_write_failed(key, owner, exc)
            raise

        self._update(key, owner, lambda r: _mark_all(r, pending, Action.UPDATED, None, wrote), fact=True)

    # ------------------------------------------------------------------ bookkeeping

    def _failed(self, record: Record, exc: ItsmError) -> None:
        now = self._wall()
        record.attempts += 1
        record.failing_since = record.failing_since or now
        record.set_error(str(exc))
        if exc.credential_refused:
            # The bridge's own credential: hold the work (never dead-letter it) until it is fixed.
            record.held = str(exc)[:500]
            record.due = now + self._delay(record.attempts)
        elif not exc.retryable:
            record.dead = DeadLetter(str(exc)[:500], now, exc.status)
            record.due = None
            logger.warning("correlationId=%s dead-lettered: %s", record.key, exc)
        elif now - record.failing_since > self.timing.horizon_seconds:
            hours = self.timing.horizon_seconds / 3600
            record.dead = DeadLetter(f"gave up after {hours:g} h of failures; last: {exc}"[:500], now, exc.status)
            record.due = None
            logger.warning("correlationId=%s dead-lettered after %g h: %s", record.key, hours, exc)
        else:
            record.held = None
            delay = self._delay(record.attempts)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, 3600.0))
            record.due = now + delay

    def _delay(self, attempts: int) -> float:
        """Back-off between outbox attempts: doubling from the base, capped, half of it random."""
        ceiling = min(
            self.timing.max_delay_seconds, self.timing.base_delay_seconds * 2.0 ** min(max(attempts - 1, 0), 30)
        )
        return ceiling / 2 + self._rand() * ceiling / 2

    def _alert(self, key: str, fingerprint: str, cache: dict[str, Alert]) -> Alert:
        alert = cache.get(fingerprint)
        if alert is None:
            body = self.store.payload(key, fingerprint)
            if body is None:
                raise StateUnavailable(f"the payload {fingerprint} of {key} is missing from the state store")
            alert = cache[fingerprint] = parse_alert(body)
        return alert

    def _load(self, key: str) -> Record | None:
        current = self.store.load(key)
        return current.record if current is not None else None

    def _read(self, key: str, owner: _Owner) -> Versioned | None:
        """The record as the pass knows it (see :class:`_Owner`), else from the store."""
        current = owner.known()
        if current is None:
            current = self.store.load(key)
            if current is not None:
                owner.keep(current.record, current.etag)
        return current

    def _update(
        self, key: str, owner: _Owner, change: Callable[[Record], None], *, release: bool = False, fact: bool = False
    ) -> Record | None:
        """Apply ``change`` to the latest record and write it conditionally, again on conflict.

        Raises :class:`_ClaimLost` when another pass holds a live claim: decisions are written
        only by the claim holder (events are appended by :meth:`_record` without a claim). A
        ``fact`` (what an ITSM call just did) is written regardless: it is true whoever holds
        the claim, and losing it would make the next holder repeat the call.
        """
        for _ in range(_CONFLICT_RETRIES):
            current = self._read(key, owner)
            if current is None:
                return None
            record = current.record
            now = self._wall()
            if not fact and record.claim is not None and record.claim.owner != owner.id and record.claim.until > now:
                raise _ClaimLost(record.claim.until)
            change(record)
            if release and record.claim is not None and record.claim.owner == owner.id:
                record.claim = None
            record.updated_at = now
            try:
                etag = self.store.replace(record, current.etag)
            except StateConflict:
                # Someone else wrote since (or the copy is stale): redo from the store.
                owner.forget()
                continue
            owner.keep(record, etag)
            return record
        raise StateUnavailable(f"the record of {key} kept changing; could not write it")

    # ------------------------------------------------------------------ health

    def credential_status(self) -> dict[str, object] | None:
        """``{"state": "refused", "reason": ..., "since": ...}`` while the ITSM refuses the credential."""
        return self._credential.status()


# ---------------------------------------------------------------------- the plan (pure)


def _plan(record: Record, now: float) -> str | None:
    """The next step for ``record`` at wall time ``now``: ensure, search, resolve, note, reopen,
    renew (the next work item), expire (a quiet resolve), ignore, or None when nothing is left."""
    if record.dead is not None:
        return None
    if record.item is None:
        if record.fired_events:
            return "ensure"
        # Only a Resolved so far: its work item may predate the record (an earlier version made
        # it). A thread's correlation ids are new: nothing from before can carry them.
        if record.thread is None and record.resolved_event is not None and not record.searched:
            return "search"
        return None
    open_now = record.item_open and (not record.resolution_written or record.resolution_kind == "note-only")
    if open_now:
        if threads.condition_over(record):
            if not record.resolution_written:
                return "resolve"
            return "ignore" if record.unwritten else None
        if record.unwritten:
            return "note"
        wake = record.wake_at()
        return "expire" if wake is not None and now >= wake else None
    refire = threads.refire_events(record)
    if refire:
        return "reopen" if threads.may_reopen(record, refire[-1]) else "renew"
    return "ignore" if record.unwritten else None


def _mine(record: Record, owner: _Owner, now: float) -> bool:
    return record.claim is not None and record.claim.owner == owner.id and record.claim.until > now


def _claim(record: Record, owner: _Owner, until: float) -> None:
    record.claim = Claim(owner.id, until)
    # Should this pass die, the outbox picks the key up once the claim has expired.
    record.due = max(record.due or 0.0, until)


def _intend(record: Record, operation: str, now: float, fingerprint: str) -> None:
    record.intent = Intent(operation, now, fingerprint)


def _forget_intent(record: Record) -> None:
    record.intent = None


def _schedule(record: Record, until: float, why: str) -> None:
    record.due = until
    record.set_error(why)


def _done(record: Record) -> None:
    record.due = record.rest_due()
    record.attempts, record.failing_since, record.held = 0, None, None
    record.set_error(None)


def _ignore_rest(record: Record) -> None:
    word = record.item_status or ("resolved" if record.resolution_written else "closed")
    if word == WorkItemStatus.OPEN:
        word = "resolved"
    refire = {e.fingerprint for e in threads.refire_events(record)}
    for event in record.unwritten:
        if event.fingerprint in refire:
            continue  # it opens the next work item (see _renew)
        if event.condition == "Resolved" and not record.stateless:
            record.mark(event.fingerprint, Action.IGNORED, f"work item already {word}")
        else:
            record.mark(
                event.fingerprint, Action.IGNORED, f"work item already {word}; a Fired after the Resolved opens nothing"
            )


def _left_alone(record: Record, found: WorkItemRecord | None, now: float, *, ignore: bool = True) -> None:
    """The item is no longer open (a person closed it, or it is gone): never touch it again.
    A later firing of a thread (or of a stateless alert) opens the next work item instead."""
    record.item_open = False
    record.item_status = found.status.value if found is not None else "gone"
    record.intent = None
    if not record.resolution_written:
        record.left_at = now
    if ignore:
        _ignore_rest(record)


def _mark_all(
    record: Record, events: list[Event], action: Action, reason: str | None, wrote: dict[str, str] | None = None
) -> None:
    for event in events:
        record.mark(event.fingerprint, action, reason)
        if wrote is not None:
            wrote[event.fingerprint] = action
    record.intent = None
    if action is Action.UPDATED and record.resolution_kind == "note-only" and not threads.condition_over(record):
        # The condition came back after a note-only resolution: its next end is noted again.
        record.resolution_written, record.resolution_kind = False, None


def _resolved(record: Record, ending: Event | None, wrote: dict[str, str], kind: str, ended_at: float) -> None:
    """The resolution (of ``kind``: resolve, close, note-only) is written; ``ending`` is the event
    that ended the condition (None for a quiet resolve)."""
    record.item_open = kind == "note-only"
    record.item_status = None
    record.resolution_written, record.resolution_kind, record.resolved_at = True, kind, ended_at
    record.intent = None
    for event in record.unwritten:
        if (ending is not None and event.fingerprint == ending.fingerprint) or (
            event.condition == "Resolved" and not record.stateless
        ):
            record.mark(event.fingerprint, Action.RESOLVED)
        else:
            record.mark(event.fingerprint, Action.IGNORED, "the alert resolved before this update was written")
        wrote[event.fingerprint] = record.written[event.fingerprint]


def _reopened(record: Record, refire: list[Event], wrote: dict[str, str], action: Action) -> None:
    """The item is open again (reopened by us, or found open): the firing is written on it."""
    record.item_open, record.item_status, record.intent = True, None, None
    record.resolution_written, record.resolution_kind = False, None
    for event in refire:
        if event.fingerprint not in record.written:
            record.mark(event.fingerprint, action)
            wrote[event.fingerprint] = action


def _renew(record: Record) -> None:
    """The condition fired again and its work item may not be reopened: the next work item,
    which names this one, follows (the create is the next step)."""
    refire = threads.refire_events(record)
    if not refire:
        return
    _ignore_rest(record)
    opener = min(refire, key=lambda e: (e.when, e.received_at))
    record.previous = record.item
    record.item, record.item_open, record.item_status = None, False, None
    record.adopted = record.searched = record.resolution_written = False
    record.resolution_kind, record.resolved_at, record.left_at = None, None, None
    record.intent = None
    record.episode += 1
    record.correlation = threads.episode_correlation(record.key, opener.member or opener.fingerprint)


def _kind(how: Resolution | None) -> str:
    return "close" if how is not None and how.close else "resolve"


def _kind_of_status(status: WorkItemStatus) -> str:
    return "close" if status is WorkItemStatus.CLOSED else "resolve"


def _take_policy(record: Record, place: Placement) -> None:
    """The policy in force at the latest event decides the record's timing."""
    policy = place.policy
    record.reopen_window = policy.reopen_window
    record.auto_resolve_after = policy.auto_resolve_after
    record.resolution_policy = policy.resolution


class _PassSeen:
    """What an outbox pass learnt on its way, for its log line and span."""

    __slots__ = ("alerts", "attempt", "early")

    def __init__(self) -> None:
        self.attempt = 0  # which attempt at the key's work this pass is (0: no record)
        self.early = False
        self.alerts: dict[str, Alert] = {}  # the payloads the pass parsed, by fingerprint

    def alert_type(self) -> str | None:
        return next(iter(self.alerts.values())).kind.value if self.alerts else None


# What a pass wrote, most telling first: the log line and span name one action.
_ACTION_RANK = (Action.CREATED, Action.RESOLVED, Action.REOPENED, Action.UPDATED, Action.IGNORED)


def _strongest(wrote: Mapping[str, str]) -> str | None:
    done = set(wrote.values())
    return next((action.value for action in _ACTION_RANK if action in done), None)


def _pass_outcome(result: PassResult, seen: _PassSeen) -> str:
    """``bridge.outcome`` of an outbox pass (see :mod:`bridge.telemetry`)."""
    record = result.record
    if record is None:
        return "gone"
    if seen.early:
        return "not_due"
    if result.busy_until is not None:
        return "busy"
    return _OUTCOME_OF_STATE[outbox_state(record)]


# What the record's outbox state (bridge.state.stats) means as a pass's outcome.
_OUTCOME_OF_STATE = {"dead": "rejected", "held": "held", "pending": "queued", "done": "processed"}


def _item_label(record: Record | None) -> str | None:
    ref = _ref(record) if record is not None else None
    return _label(ref) if ref is not None else None


def _ref(record: Record) -> WorkItemRef | None:
    if record.item is None:
        return None
    item = record.item
    return WorkItemRef(str(item["system"]), str(item["id"]), item.get("number"), item.get("url"))


def _label(ref: WorkItemRef) -> str:
    return ref.number or ref.id


class _CredentialState:
    """Whether the ITSM refuses the bridge's credential, shared through the store for health.

    Written only on a change, so a healthy bridge pays nothing; read at most every few seconds.
    """

    _NAME = "itsm_credential"
    _READ_EVERY = 5.0

    def __init__(self, store: StateStore, wall: Callable[[], float]) -> None:
        self._store = store
        self._wall = wall
        self._cached: tuple[float, dict[str, object] | None] | None = None

    def observe(self, exc: ItsmError | None) -> None:
        refused = exc is not None and exc.credential_refused
        if exc is not None and not refused:
            return  # other failures say nothing about the credential
        # Compared with what the store says (another instance may have written since), read at
        # most every few seconds: a healthy bridge pays one small read per interval, no write.
        if refused == (self.status() is not None):
            return
        value: dict[str, object] = {"state": "refused" if refused else "ok", "since": self._wall()}
        if exc is not None:
            value["reason"] = str(exc)[:300]
        try:
            self._store.put_meta(self._NAME, value)
        except StateUnavailable as err:
            logger.warning("could not record the ITSM credential state: %s", err)
        self._cached = None

    def status(self) -> dict[str, object] | None:
        now = self._wall()
        if self._cached is None or now - self._cached[0] > self._READ_EVERY:
            try:
                value = self._store.get_meta(self._NAME)
            except StateUnavailable:
                value = None
            self._cached = (now, value)
        value = self._cached[1]
        return value if value is not None and value.get("state") == "refused" else None

