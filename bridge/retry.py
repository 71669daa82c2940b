"""The bridge's one retry loop: how often, how long and how patiently ITSM work is repeated.

Adapters never retry; they raise :class:`~bridge.errors.ItsmError` with ``retryable`` set.
:func:`call_with_retry` repeats a whole unit of work (typically a lifecycle step: lookup plus
create/update) while the error is retryable, with exponential backoff and jitter, honouring the
server's ``Retry-After``, and bounded both by a number of attempts and by a total time budget.
It never sleeps past the budget: when the next wait would cross it, it gives up at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import ItsmError

if TYPE_CHECKING:
    import tenacity

    from .config import Settings

__all__ = ["RetryPolicy", "backoff_delay", "call_with_retry"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one retried unit of work.

    ``attempts`` counts calls (1 = no retry). ``budget_seconds`` bounds the time from the first
    call until the last one may start. Backoff before attempt ``n + 1`` is drawn from
    ``[d / 2, d]`` with ``d = min(max_delay, base_delay * 2 ** (n - 1))``.
    """

    attempts: int = 4
    budget_seconds: float = 8.0
    base_delay: float = 0.25
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.budget_seconds < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("budget_seconds, base_delay and max_delay must not be negative")
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay must not be smaller than base_delay")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(attempts=settings.retry_attempts, budget_seconds=settings.retry_budget_seconds)


def backoff_delay(policy: RetryPolicy, failed_attempts: int, rand: Callable[[], float]) -> float:
    """Wait after ``failed_attempts`` failures: exponential, capped, with "equal jitter".

    Half of the delay is fixed so the wait still grows with every attempt; the other half is
    random so that many instances failing together do not retry in lockstep.
    """
    exponent = max(failed_attempts - 1, 0)
    # Cap the exponent so a huge attempts setting cannot overflow the float.
    ceiling = min(policy.max_delay, policy.base_delay * (2.0 ** min(exponent, 60)))
    return ceiling / 2.0 + rand() * ceiling / 2.0


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    describe: str = "",
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it returns, retrying only retryable :class:`ItsmError`.

    Gives up, re-raising the last ``ItsmError`` with ``attempts`` set, when the attempts are
    used up or when the next wait (backoff, or ``Retry-After`` if longer) would end beyond
    ``policy.budget_seconds`` after the first call started. A non-retryable ``ItsmError``
    propagates at once with ``attempts`` set; any other exception propagates untouched.
    ``sleep``, ``clock`` and ``rand`` (uniform in ``[0, 1)``) are injectable for tests.
    """
    start = clock()
    try:
        # The first attempt outside tenacity: most calls succeed at once, and a tenacity.Retrying
        # with its closures, built per call (so per alert), leaves reference cycles for the
        # collector. Only a call that failed goes on to the retry loop below.
        return fn()
    except ItsmError as exc:
        first_failure = exc
    return _retry(fn, first_failure, start, policy, sleep=sleep, clock=clock, what=describe or "ITSM call", rand=rand)


def _retry(
    fn: Callable[[], T],
    first_failure: ItsmError,
    start: float,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    what: str,
    rand: Callable[[], float],
) -> T:
    """The retries after a first attempt that raised ``first_failure``, with tenacity: the first
    attempt tenacity sees is that failure (replayed, not called again), so its rules and counts
    are exactly those of a loop that had made the first call itself."""
    import tenacity  # only once a call has failed: a cold start need not load it

    attempts_made = 0

    def attempt() -> T:
        nonlocal attempts_made
        attempts_made += 1
        if attempts_made == 1:
            raise first_failure
        return fn()

    def should_retry(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        return isinstance(exc, ItsmError) and exc.retryable

    def wait(state: tenacity.RetryCallState) -> float:
        delay = backoff_delay(policy, state.attempt_number, rand)
        exc = _last_error(state)
        if exc is not None and exc.retry_after is not None:
            # The server said when it will be ready; earlier would only be refused again.
            delay = max(delay, exc.retry_after)
        return delay

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        # tenacity computes the wait before asking whether to stop, so it is known here.
        return clock() - start + state.upcoming_sleep > policy.budget_seconds

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = _last_error(state)
        log.warning(
            "%s failed on attempt %d of %d (%s); retrying in %.2f s",
            what,
            state.attempt_number,
            policy.attempts,
            _describe_error(exc) if exc is not None else "unknown error",
            state.upcoming_sleep,
        )

    retrying = tenacity.Retrying(
        retry=should_retry, wait=wait, stop=stop, sleep=sleep, before_sleep=before_sleep, reraise=True
    )
    try:
        return retrying(attempt)
    except ItsmError as exc:
        exc.attempts = attempts_made
        if exc.retryable:
            log.info("%s: giving up after %d attempt(s) (%s)", what, attempts_made, _describe_error(exc))
        raise


def _last_error(state: tenacity.RetryCallState) -> ItsmError | None:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if isinstance(exc, ItsmError) else None


def _describe_error(exc: ItsmError) -> str:
    status = f" {exc.status}" if exc.status is not None else ""
    # ItsmError messages are built without secrets (see bridge.errors), so they may be logged.
    return f"{exc.reason.value}{status}: {exc}"
