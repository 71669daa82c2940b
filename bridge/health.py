"""Deep health (``GET /api/health?deep=1``): each thing the bridge needs, checked by a stable name.

The checks and what they prove:

- ``settings``: the core settings (and the mapping file, read again) are still valid;
- ``key_vault_references``: no setting holds an unresolved ``@Microsoft.KeyVault(...)`` text;
- ``signing_keys``: the verifier holds Entra ID's signing keys, or can fetch them now;
- ``itsm_credential``: one cheap authenticated read (the adapter's ``check``) succeeds;
- ``state_store``: the store answers a ping;
- ``outbox``: how much work waits (pending, held) or was dead-lettered, and for how long.

Each check runs in its own thread under its own deadline (carried down to socket timeouts by
:mod:`bridge.deadline`), and the answer waits for none of them longer than the budget: a hung
ITSM or store makes its check ``failed``, never the health call slow. A check still running from
an earlier call is not started twice, so repeated calls cannot pile up threads.

Reasons are the bridge's own short words: they may name settings, HTTP statuses and exception
types, never a setting's value, a token, a URL's credentials or a response body.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .auth import TokenVerifier
from .config import TELEMETRY_SETTING, Settings, UnresolvedReference, unresolved_references
from .deadline import deadline
from .errors import ItsmError, Reason
from .reconcile import Reconciler
from .state.base import StateUnavailable
from .state.stats import outbox_stats

__all__ = ["CHECK_NAMES", "Check", "CheckState", "HealthChecks", "HealthReport"]

logger = logging.getLogger(__name__)

CHECK_NAMES = ("settings", "key_vault_references", "signing_keys", "itsm_credential", "state_store", "outbox")
# Azure Monitor is not the caller here, but the Functions host and load balancers give up too:
# the whole deep check answers in about this long, whatever hangs.
DEFAULT_BUDGET_SECONDS = 4.0
# How long past its budget a check may take to notice (a socket timeout firing) before it is
# reported as not finished.
_GRACE_SECONDS = 0.5
# Work waiting longer than this makes ``outbox`` a warning (the outbox retries within a minute).
OLD_PENDING_SECONDS = 600.0


class CheckState(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAILED = "failed"


@dataclass(frozen=True)
class Check:
    """One check's outcome. ``details`` are counts (the outbox's), never text from outside."""

    name: str
    state: CheckState
    reason: str | None = None
    ms: int | None = None
    details: Mapping[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state.value}
        if self.reason is not None:
            body["reason"] = self.reason
        body.update(self.details)
        if self.ms is not None:
            body["ms"] = self.ms
        return body


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.state is CheckState.OK for check in self.checks)

    @property
    def summary(self) -> str | None:
        """Which checks are not ok, by name (``failed: a, b; warning: c``), None when all are."""
        parts = []
        for state in (CheckState.FAILED, CheckState.WARNING):
            names = [check.name for check in self.checks if check.state is state]
            if names:
                parts.append(f"{state.value}: {', '.join(names)}")
        return "; ".join(parts) or None

    def as_json(self) -> dict[str, Any]:
        return {check.name: check.as_json() for check in self.checks}


class _Slot:
    """Where a check's thread leaves its result."""

    def __init__(self) -> None:
        self.result: Check | None = None


class HealthChecks:
    """The deep checks over one runtime's parts. :meth:`run` never raises."""

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        reconciler: Reconciler,
        *,
        unresolved: Sequence[UnresolvedReference] | None = None,
        budget_seconds: float = DEFAULT_BUDGET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._reconciler = reconciler
        adapter_settings = getattr(type(reconciler.adapter), "settings", ())
        if unresolved is None:
            unresolved = unresolved_references(settings.env, adapter_settings)
        # Only tolerated ones reach a running bridge; the others are bad settings (503 misconfigured).
        self._unresolved = tuple(ref for ref in unresolved if ref.tolerated)
        self._adapter_settings = frozenset(spec.name for spec in adapter_settings)
        self.budget_seconds = budget_seconds
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._checks: tuple[tuple[str, Callable[[], Check]], ...] = (
            ("settings", self._check_settings),
            ("key_vault_references", self._check_key_vault_references),
            ("signing_keys", self._check_signing_keys),
            ("itsm_credential", self._check_itsm_credential),
            ("state_store", self._check_state_store),
            ("outbox", self._check_outbox),
        )

    # ------------------------------------------------------------------ plain health

    @property
    def degraded_reason(self) -> str | None:
        """Why plain health is degraded from start-up on (unresolved references), else None.
        Known once the runtime is built, so plain health stays free of any call."""
        if not self._unresolved:
            return None
        return _key_vault_reason(self._unresolved)

    # ------------------------------------------------------------------ deep health

    def run(self, budget_seconds: float | None = None) -> HealthReport:
        """Every check, in parallel, each within ``budget_seconds`` (the default budget if None)."""
        budget = self.budget_seconds if budget_seconds is None else budget_seconds
        started = self._clock()
        launched: list[tuple[str, threading.Thread | None, _Slot]] = []
        for name, check in self._checks:
            slot = _Slot()
            with self._lock:
                previous = self._running.get(name)
                if previous is not None and previous.is_alive():
                    slot.result = Check(name, CheckState.FAILED, "the previous run of this check has not finished yet")
                    launched.append((name, None, slot))
                    continue
                thread = threading.Thread(
                    target=self._run_one, args=(name, check, slot, budget), name=f"health-{name}", daemon=True
                )
                self._running[name] = thread
            thread.start()
            launched.append((name, thread, slot))
        until = started + budget + _GRACE_SECONDS
        checks = []
        for name, started_thread, slot in launched:
            if started_thread is not None:
                started_thread.join(max(0.0, until - self._clock()))
            result = slot.result
            if result is None:
                result = Check(
                    name,
                    CheckState.FAILED,
                    f"did not finish within {budget:g} s",
                    ms=round((self._clock() - started) * 1000),
                )
            checks.append(result)
        report = HealthReport(tuple(checks))
        if not report.ok:
            logger.warning(
                "deep health degraded (%s): %s",
                report.summary,
                "; ".join(f"{c.name}: {c.reason}" for c in report.checks if c.state is not CheckState.OK),
            )
        return report

    def _run_one(self, name: str, check: Callable[[], Check], slot: _Slot, budget: float) -> None:
        started = self._clock()
        try:
            with deadline(budget, self._clock):
                result = check()
        except Exception as exc:
            # A check must never take the health answer down; its type says enough to look further.
            logger.exception("health check %s failed unexpectedly", name)
            result = Check(name, CheckState.FAILED, f"the check failed unexpectedly ({type(exc).__name__})")
        slot.result = Check(
            result.name, result.state, result.reason, round((self._clock() - started) * 1000), result.details
        )

    # ------------------------------------------------------------------ the checks

    def _check_settings(self) -> Check:
        # The environment is what the process started with; the mapping file may have changed since.
        problems = Settings.problems(self._settings.env)
        if problems:
            return Check("settings", CheckState.FAILED, "; ".join(str(p) for p in problems))
        return Check("settings", CheckState.OK)

    def _check_key_vault_references(self) -> Check:
        if self._unresolved:
            return Check("key_vault_references", CheckState.FAILED, _key_vault_reason(self._unresolved))
        return Check("key_vault_references", CheckState.OK)

    def _check_signing_keys(self) -> Check:
        status = self._verifier.ensure_keys()
        details = {"keys": status.keys}
        if status.keys == 0:
            why = status.problem or "none published"
            reason = f"no signing keys: {why}; tokens cannot be verified (alerts get 503)"
            return Check("signing_keys", CheckState.FAILED, reason, details=details)
        if status.stale or status.problem:
            return Check("signing_keys", CheckState.WARNING, status.problem, details=details)
        return Check("signing_keys", CheckState.OK, details=details)

    def _check_itsm_credential(self) -> Check:
        adapter = self._reconciler.adapter
        system = getattr(adapter, "display_name", None) or adapter.name
        try:
            adapter.check()
        except ItsmError as exc:
            reason = _itsm_reason(exc, system)
            suspects = [ref.setting for ref in self._unresolved if ref.setting in self._adapter_settings]
            if suspects:
                reason += f"; {', '.join(suspects)} {_holds(suspects)} an unresolved Key Vault reference"
            return Check("itsm_credential", CheckState.FAILED, reason)
        if self._reconciler.credential_status() is not None:
            return Check(
                "itsm_credential",
                CheckState.WARNING,
                f"{system} accepts the credential now; work held while it was refused goes out at its next "
                "outbox attempt",
            )
        return Check("itsm_credential", CheckState.OK)

    def _check_state_store(self) -> Check:
        try:
            self._reconciler.store.ping()
        except StateUnavailable as exc:
            return Check("state_store", CheckState.FAILED, str(exc))
        return Check("state_store", CheckState.OK)

    def _check_outbox(self) -> Check:
        try:
            stats = outbox_stats(self._reconciler.store.records(), self._wall())
        except StateUnavailable as exc:
            return Check("outbox", CheckState.FAILED, f"the records could not be read: {exc}")
        details = {
            "pending": stats.pending,
            "held": stats.held,
            "dead": stats.dead,
            "oldestPendingSeconds": round(stats.oldest_pending_seconds),
        }
        problems = []
        if stats.dead:
            problems.append(
                f"{stats.dead} dead-lettered (`outbox list` shows why; `outbox replay` once the cause is fixed)"
            )
        if stats.oldest_pending_seconds > OLD_PENDING_SECONDS:
            problems.append(f"the oldest waiting work has waited {stats.oldest_pending_seconds / 60:.0f} min")
        if problems:
            return Check("outbox", CheckState.WARNING, "; ".join(problems), details=details)
        return Check("outbox", CheckState.OK, details=details)


def _holds(names: Sequence[str]) -> str:
    return "holds" if len(names) == 1 else "hold"


def _key_vault_reason(unresolved: Sequence[UnresolvedReference]) -> str:
    names = [ref.setting for ref in unresolved]
    effects = []
    if any(ref.setting != TELEMETRY_SETTING for ref in unresolved):
        effects.append("the ITSM will refuse the credential, so alerts are recorded and held until it resolves")
    if TELEMETRY_SETTING in names:
        effects.append("telemetry cannot be sent")
    return (
        f"{', '.join(names)} {_holds(names)} an unresolved Key Vault reference (the @Microsoft.KeyVault(...) "
        f"text, not the value): {'; '.join(effects)}"
    )


def _itsm_reason(exc: ItsmError, system: str) -> str:
    """What the failed check means, from the error's classification only: its message may carry
    the ITSM's own words, which could echo what was sent."""
    status = f"HTTP {exc.status}" if exc.status is not None else None
    if exc.credential_refused:
        return f"the ITSM refuses the bridge's credential ({system}, {status or 'authentication failed'})"
    if exc.reason is Reason.TIMEOUT:
        return f"{system} did not answer in time (unreachable or too slow{f', {status}' if status else ''})"
    if exc.reason is Reason.NETWORK:
        return f"{system} is unreachable (the connection failed)"
    if exc.reason in (Reason.SERVER_ERROR, Reason.RATE_LIMITED):
        return f"{system} is unavailable ({status})"
    if exc.reason is Reason.INVALID_RESPONSE:
        return f"{system} did not answer as its API does ({status}, not JSON): is its URL right?"
    return f"{system} refused the check ({status or exc.reason.value})"
