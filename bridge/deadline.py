"""The time one alert may still spend on ITSM calls, carried implicitly to every call.

Azure Monitor's webhook call must finish quickly, so the retry budget is a *total*: the
lifecycle opens a deadline around an alert's work and each adapter call shortens its timeouts
to what is left (and does not start once nothing is left). A nested deadline can only shorten
the one around it, which is how the CMDB lookup gets its own small share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["deadline", "remaining"]

# (clock, expiry on that clock); each request runs in its own thread, hence a ContextVar.
_current: ContextVar[tuple[Callable[[], float], float] | None] = ContextVar("bridge_deadline", default=None)


@contextmanager
def deadline(seconds: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Calls inside may take at most ``seconds`` in all (or less, if an outer deadline says so)."""
    expiry = clock() + seconds
    outer = remaining()
    if outer is not None:
        expiry = min(expiry, clock() + outer)
    token = _current.set((clock, expiry))
    try:
        yield
    finally:
        _current.reset(token)


def remaining() -> float | None:
    """Seconds left before the innermost deadline (≤ 0 when passed), or None outside any."""
    current = _current.get()
    if current is None:
        return None
    clock, expiry = current
    return expiry - clock()
