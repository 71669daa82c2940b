"""The test kit: what several test modules need, written once (clocks here; the in-memory ITSM
adapter in ``tests/fakes.py``; the contract suites in ``tests/adapters/contract.py`` and
``tests/state/contract.py``)."""

from __future__ import annotations

from .clock import FakeClock, OffsetClock

__all__ = ["FakeClock", "OffsetClock"]
