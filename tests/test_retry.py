"""bridge.retry: scripted failure sequences against a fake clock; nothing really sleeps."""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest

from bridge.config import Settings
from bridge.errors import ItsmError, Reason
from bridge.retry import RetryPolicy, backoff_delay, call_with_retry
from tests.kit import FakeClock as FakeTime

T = TypeVar("T")


class Script:
    """``fn`` for call_with_retry: each call takes the next outcome (raise it, or return it)."""

    def __init__(self, outcomes: Iterable[object], time: FakeTime | None = None, step_seconds: float = 0.0):
        self.outcomes = list(outcomes)
        self.calls = 0
        self.time = time
        self.step_seconds = step_seconds

    def __call__(self) -> object:
        self.calls += 1
        if self.time is not None:
            self.time.now += self.step_seconds
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def http_error(status: int, retry_after: float | None = None) -> ItsmError:
    retryable = status in (408, 429) or status >= 500
    reason = (
        Reason.RATE_LIMITED
        if status == 429
        else Reason.SERVER_ERROR
        if status >= 500
        else Reason.CLIENT_ERROR
    )
    return ItsmError(
        f"ServiceNow {status}: scripted",
        retryable=retryable,
        reason=reason,
        status=status,
        retry_after=retry_after,
    )


def timeout_error() -> ItsmError:
    return ItsmError(
        "ServiceNow GET https://x/api: timed out (ReadTimeout)", retryable=True, reason=Reason.TIMEOUT
    )


@pytest.fixture
def time() -> FakeTime:
    return FakeTime(1000.0)


def run(
    fn: Callable[[], T],
    time: FakeTime,
    policy: RetryPolicy | None = None,
    rand: float = 0.5,
    describe: str = "",
) -> T:
    return call_with_retry(
        fn, policy or RetryPolicy(), sleep=time.sleep, clock=time.clock, rand=lambda: rand, describe=describe
    )


def test_success_first_time_does_not_sleep(time: FakeTime) -> None:
    script = Script(["ok"])
    assert run(script, time) == "ok"
    assert (script.calls, time.sleeps) == (1, [])


def test_429_with_retry_after_then_success(time: FakeTime) -> None:
    script = Script([http_error(429, retry_after=3.0), "created"])

    assert run(script, time) == "created"

    assert script.calls == 2
    assert time.sleeps == [3.0]  # Retry-After beats the 0.25 s backoff


def test_retry_after_shorter_than_backoff_uses_backoff(time: FakeTime) -> None:
    script = Script([http_error(503), http_error(503, retry_after=0.1), "ok"])

    assert run(script, time, rand=1.0) == "ok"

    assert time.sleeps == [0.25, 0.5]


def test_503_503_200(time: FakeTime) -> None:
    script = Script([http_error(503), http_error(503), {"status": 200}])

    assert run(script, time, rand=0.0) == {"status": 200}

    assert script.calls == 3
    assert time.sleeps == [0.125, 0.25]


def test_timeout_then_success(time: FakeTime) -> None:
    script = Script([timeout_error(), "found"])

    assert run(script, time) == "found"
    assert script.calls == 2
    assert len(time.sleeps) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_permanent_error_is_not_retried(time: FakeTime, status: int) -> None:
    error = http_error(status)
    script = Script([error, "never"])

    with pytest.raises(ItsmError) as caught:
        run(script, time)

    assert caught.value is error
    assert caught.value.attempts == 1
    assert (script.calls, time.sleeps) == (1, [])


def test_other_exceptions_propagate_untouched(time: FakeTime) -> None:
    script = Script([ValueError("bad key"), "never"])

    with pytest.raises(ValueError, match="bad key"):
        run(script, time)

    assert (script.calls, time.sleeps) == (1, [])


def test_attempts_exhausted_raises_the_last_error_with_attempts(time: FakeTime) -> None:
    errors = [http_error(503), timeout_error(), http_error(502), http_error(500)]
    script = Script([*errors, "never"])

    with pytest.raises(ItsmError) as caught:
        run(script, time, RetryPolicy(attempts=4, budget_seconds=100))

    assert caught.value is errors[-1]
    assert caught.value.attempts == 4
    assert script.calls == 4
    assert len(time.sleeps) == 3


def test_budget_exhausted_gives_up_before_crossing_it(time: FakeTime) -> None:
    # Each attempt itself takes 3 s and the budget counts that time too (rand=1: full backoff).
    script = Script([http_error(503)] * 10, time, step_seconds=3.0)

    with pytest.raises(ItsmError) as caught:
        run(script, time, RetryPolicy(attempts=10, budget_seconds=8.0), rand=1.0)

    # t=3 fail, wait 0.25 -> t=3.25; t=6.25 fail, next wait 0.5 -> 6.75 <= 8, sleep;
    # t=9.75 fail, next wait 1.0 -> 10.75 > 8: give up without sleeping.
    assert script.calls == 3
    assert caught.value.attempts == 3
    assert time.sleeps == [0.25, 0.5]
    assert time.now - 1000.0 == pytest.approx(9.75)


def test_retry_after_beyond_the_budget_gives_up_immediately(time: FakeTime) -> None:
    error = http_error(429, retry_after=30.0)
    script = Script([error, "never"])

    with pytest.raises(ItsmError) as caught:
        run(script, time, RetryPolicy(attempts=4, budget_seconds=8.0))

    assert caught.value is error
    assert caught.value.attempts == 1
    assert caught.value.retryable
    assert (script.calls, time.sleeps) == (1, [])


def test_retry_after_within_remaining_budget_is_waited(time: FakeTime) -> None:
    script = Script([http_error(503, retry_after=2.0), http_error(429, retry_after=5.0), "ok"])

    # 2 s waited (t=2); the next 5 s would end at t=7 <= 8: still allowed.
    assert run(script, time, RetryPolicy(attempts=4, budget_seconds=8.0)) == "ok"
    assert time.sleeps == [2.0, 5.0]


def test_retry_after_that_would_cross_the_remaining_budget(time: FakeTime) -> None:
    script = Script([http_error(503, retry_after=5.0), http_error(429, retry_after=5.0), "never"])

    with pytest.raises(ItsmError) as caught:
        run(script, time, RetryPolicy(attempts=4, budget_seconds=8.0))

    assert caught.value.attempts == 2
    assert time.sleeps == [5.0]


def test_single_attempt_policy_never_retries(time: FakeTime) -> None:
    script = Script([http_error(503), "never"])

    with pytest.raises(ItsmError) as caught:
        run(script, time, RetryPolicy(attempts=1))

    assert caught.value.attempts == 1
    assert time.sleeps == []


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=2.0)

    full = [backoff_delay(policy, n, lambda: 1.0) for n in range(1, 7)]
    half = [backoff_delay(policy, n, lambda: 0.0) for n in range(1, 7)]

    assert full == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert half == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert backoff_delay(policy, 10_000, lambda: 1.0) == 2.0  # no overflow for absurd attempt counts


def test_sleeps_grow_and_are_jittered(time: FakeTime) -> None:
    rng = random.Random(1234)
    runs: list[list[float]] = []
    for _ in range(20):
        clock = FakeTime()
        script = Script([http_error(503)] * 5)
        with pytest.raises(ItsmError):
            call_with_retry(
                script,
                RetryPolicy(attempts=5, budget_seconds=1000),
                sleep=clock.sleep,
                clock=clock.clock,
                rand=rng.random,
            )
        runs.append(clock.sleeps)

    for sleeps in runs:
        assert len(sleeps) == 4
        ceilings = [0.25, 0.5, 1.0, 2.0]
        for slept, ceiling in zip(sleeps, ceilings, strict=True):
            assert ceiling / 2 <= slept <= ceiling
        assert sleeps == sorted(sleeps)  # equal jitter never lets a later wait be shorter
    firsts = {round(s[0], 9) for s in runs}
    assert len(firsts) > 10  # instances failing together do not retry in lockstep


def test_default_jitter_uses_real_randomness(time: FakeTime) -> None:
    script = Script([http_error(503), "ok"])
    call_with_retry(script, RetryPolicy(), sleep=time.sleep, clock=time.clock)
    assert 0.125 <= time.sleeps[0] <= 0.25


def test_one_warning_per_retry_with_attempt_and_reason(
    time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script([http_error(503), timeout_error(), "ok"])

    with caplog.at_level(logging.DEBUG, logger="bridge.retry"):
        run(script, time, describe="create incident for key abc")

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    first, second = (w.getMessage() for w in warnings)
    assert first.startswith("create incident for key abc failed on attempt 1 of 4 (server_error 503:")
    assert "retrying in 0.19 s" in first
    assert "attempt 2 of 4 (timeout: " in second
    assert all(r.levelno < logging.WARNING for r in caplog.records if r not in warnings)


def test_giving_up_is_logged_below_warning(time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    script = Script([http_error(503)] * 2)

    with caplog.at_level(logging.DEBUG, logger="bridge.retry"), pytest.raises(ItsmError):
        run(script, time, RetryPolicy(attempts=2))

    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert "giving up after 2 attempt(s)" in caplog.records[-1].getMessage()


def test_policy_from_settings() -> None:
    settings = Settings.from_env(
        {
            "AUTH_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "AUTH_AUDIENCES": "api://bridge",
            "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com",
            "SERVICENOW_USERNAME": "u",
            "SERVICENOW_PASSWORD": "p",
            "ITSM_RETRY_ATTEMPTS": "6",
            "ITSM_RETRY_BUDGET_SECONDS": "20",
        }
    )

    assert RetryPolicy.from_settings(settings) == RetryPolicy(
        attempts=6, budget_seconds=20.0, base_delay=0.25, max_delay=2.0
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"budget_seconds": -1.0},
        {"base_delay": -0.1},
        {"base_delay": 3.0, "max_delay": 2.0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_the_wait_is_drawn_for_every_retryable_failure_even_the_last(time: FakeTime) -> None:
    # As with the tenacity loop this replaced: the wait is computed before the stop is decided, so
    # a jitter source shared by many calls advances the same way.
    draws: list[float] = []

    def rand() -> float:
        draws.append(0.5)
        return 0.5

    script = Script([http_error(503)] * 3)
    with pytest.raises(ItsmError):
        call_with_retry(script, RetryPolicy(attempts=3), sleep=time.sleep, clock=time.clock, rand=rand)
    assert (len(draws), len(time.sleeps)) == (3, 2)

    draws.clear()
    with pytest.raises(ItsmError):
        call_with_retry(Script([http_error(404)]), RetryPolicy(), sleep=time.sleep, clock=time.clock, rand=rand)
    assert draws == []


def test_only_the_error_that_propagates_gets_the_attempt_count(time: FakeTime) -> None:
    first, last = http_error(503), http_error(502)
    default = http_error(500).attempts

    with pytest.raises(ItsmError) as caught:
        run(Script([first, last]), time, RetryPolicy(attempts=2))

    assert caught.value is last and last.attempts == 2
    assert first.attempts == default


def _raise_fresh(status: int) -> Callable[[], str]:
    """An ITSM call failing ``status`` once, then answering; it keeps no reference to its error."""
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if calls[0] == 1:
            raise http_error(status)
        return "ok"

    return call


def test_a_call_that_succeeds_at_once_leaves_no_reference_cycles(time: FakeTime) -> None:
    # Nearly every ITSM call: it must not build tenacity's machinery (whose closures and states
    # are cycles the collector has to find, in full collections of ~12 ms under load).
    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            assert run(lambda: "ok", time) == "ok"
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0

    # A call that needed a retry goes through tenacity, and what it leaves is collected.
    for _ in range(50):
        assert run(_raise_fresh(503), time) == "ok"
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o).__name__ == "RetryCallState"]


def test_retries_are_driven_by_tenacity(time: FakeTime, monkeypatch: pytest.MonkeyPatch) -> None:
    import tenacity

    built: list[object] = []
    original = tenacity.Retrying.__init__

    def recording(self: tenacity.Retrying, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(tenacity.Retrying, "__init__", recording)
    assert run(lambda: "ok", time) == "ok"
    assert built == []
    assert run(_raise_fresh(503), time) == "ok"
    assert len(built) == 1 and time.sleeps and len(time.sleeps) == 1
