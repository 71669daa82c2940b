"""The per-alert deadline: nesting only ever shortens it, and it ends with its block."""

from __future__ import annotations

from bridge.deadline import deadline, remaining
from tests.kit import FakeClock


def test_no_deadline_outside_a_block() -> None:
    assert remaining() is None


def test_remaining_counts_down_and_goes_negative() -> None:
    clock = FakeClock(100.0)
    with deadline(8, clock):
        assert remaining() == 8
        clock.now += 3
        assert remaining() == 5
        clock.now += 6
        assert remaining() == -1
    assert remaining() is None


def test_a_nested_deadline_can_shorten_but_never_extend() -> None:
    clock = FakeClock(100.0)
    with deadline(8, clock):
        with deadline(2, clock):
            assert remaining() == 2
        clock.now += 7
        with deadline(2, clock):  # only 1 s of the outer 8 is left
            assert remaining() == 1
        assert remaining() == 1
