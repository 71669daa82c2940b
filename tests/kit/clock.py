"""Clocks a test moves by hand, so time-dependent code runs without waiting."""

from __future__ import annotations

import threading
import time

__all__ = ["FakeClock", "OffsetClock"]


class FakeClock:
    """A clock (call it for the time) that moves only when told to, or when the code under test
    sleeps with it: pass ``clock`` as both clock and ``sleep``. Thread-safe. ``sleeps`` records
    every sleep asked for."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    # For code that takes a zero-argument clock by attribute.
    def clock(self) -> float:
        return self()


class OffsetClock:
    """Real wall time plus an offset the test moves forward (for code that also talks to real
    servers, where only the code's own notion of elapsed time should jump)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds
