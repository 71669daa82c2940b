"""The contract every ITSM adapter passes, whatever ITSM it speaks to.

An adapter's test module opts in by subclassing :class:`AdapterContract` and overriding two
fixtures: ``adapter`` (the adapter under test, built with the contract's ``clock``) and ``itsm``
(a controller of a fake of that ITSM, satisfying :class:`FakeItsm`). The cases here speak only
through the :class:`~bridge.adapters.base.ItsmAdapter` protocol and that neutral controller, so
a new adapter gets the whole suite (lifecycle, status table, transport failures, Retry-After,
secret hygiene) by writing its fake. Adapter-specific wire details are tested beside the adapter.
"""

from __future__ import annotations

import email.utils
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from bridge.adapters.base import ItsmAdapter, Resolution, WorkItem, WorkItemRef
from bridge.errors import ItsmError, Reason, classify_status

__all__ = [
    "KEY",
    "NON_2XX_STATUSES",
    "AdapterContract",
    "FakeClock",
    "FakeItsm",
    "FakeRecord",
    "make_item",
]

KEY = "0d3f5b8a-41c6-4e2f-9a7b-5c1d2e3f4a5b"
RESOURCE_ID = (
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web"
    "/providers/Microsoft.Compute/virtualMachines/vm-web-01"
)

# Every status an ITSM can answer with that is not success: all 4xx and 5xx, plus informational
# and redirect statuses, which an adapter must treat as failures too (it never follows redirects
# with credentials, and a 1xx as final answer means something in between is broken).
NON_2XX_STATUSES: tuple[int, ...] = (100, 101, 102, 103, 300, 301, 302, 303, 304, 307, 308, *range(400, 600))
# A sample across the classes, used where every operation is exercised.
SAMPLE_STATUSES: tuple[int, ...] = (302, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)


class FakeClock:
    """Wall-clock stand-in (seconds since the epoch) that moves only when told to."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class FakeRecord:
    """One work item as the fake ITSM holds it, in neutral terms."""

    id: str
    correlation_id: str
    is_open: bool
    notes: tuple[str, ...]  # oldest first
    fields: Mapping[str, Any]  # the ITSM's own field names and values


class FakeItsm(Protocol):
    """What the contract needs from a fake ITSM, independent of how that ITSM speaks."""

    def seed(self, correlation_id: str, *, is_open: bool = True) -> str:
        """Store a work item created before the test; return its id. Later seeds are newer."""
        ...

    def seed_ci(self, name: str, resource_id: str | None = None) -> str:
        """Store a configuration item; return its id."""
        ...

    def records(self) -> list[FakeRecord]:
        """Every work item, oldest first."""
        ...

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` API requests (not token requests) with this status."""
        ...

    def clear_failures(self) -> None:
        """Forget scripted failures not yet used up."""
        ...

    def drop_next(self) -> None:
        """The next API request fails with a connection error."""
        ...

    def timeout_next(self) -> None:
        """The next API request times out."""
        ...

    def sloppy_search(self) -> None:
        """From now on, searches return every work item whatever the filter (a misbehaving ITSM)."""
        ...

    def error_body(self, message: str, detail: str) -> str:
        """An error body in the ITSM's own format carrying ``message`` and ``detail``."""
        ...

    def secrets(self) -> list[str]:
        """Every credential in play: configured secrets and every token issued so far."""
        ...


def make_item(key: str = KEY, **overrides: Any) -> WorkItem:
    values: dict[str, Any] = {
        "correlation_id": key,
        "correlation_display": "Azure Monitor",
        "short_description": "[Azure Monitor] Sev2 Fired: cpu-high on vm-web-01",
        "description": "Rule: cpu-high\nSeverity: Sev2\nAlert id: /subscriptions/x/alerts/" + key,
        "impact": 2,
        "urgency": 2,
        "work_note": "Alert fired at 2025-06-15T10:00:00Z [azmon:fired:1]",
    }
    values.update(overrides)
    return WorkItem(**values)


def _full_text(error: BaseException) -> str:
    """Everything a log handler could print for ``error``, chained exceptions included."""
    return "".join(traceback.format_exception(error)) + repr(error)


class AdapterContract:
    """Cases every adapter must pass. Subclasses override ``adapter`` and ``itsm``."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def adapter(self) -> ItsmAdapter:
        raise NotImplementedError("the adapter's test module supplies the 'adapter' fixture")

    @pytest.fixture
    def itsm(self) -> FakeItsm:
        raise NotImplementedError("the adapter's test module supplies the 'itsm' fixture")

    # ----------------------------------------------------------------- shape

    def test_satisfies_the_protocol(self, adapter: ItsmAdapter) -> None:
        assert isinstance(adapter, ItsmAdapter)
        assert isinstance(type(adapter).name, str) and type(adapter).name

    # ----------------------------------------------------------------- lifecycle

    def test_find_without_records_is_empty(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        assert list(adapter.find(KEY)) == []

    def test_create_then_find_returns_exactly_it(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        other = itsm.seed("ffffffff-0000-4000-8000-000000000000")
        item = make_item()

        ref = adapter.create(item)

        assert ref.system == type(adapter).name
        assert ref.id and ref.id != other
        found = list(adapter.find(KEY))
        assert [(r.ref, r.correlation_id, r.is_open) for r in found] == [(ref, KEY, True)]
        stored = [r for r in itsm.records() if r.id == ref.id]
        assert len(stored) == 1
        assert stored[0].correlation_id == KEY
        assert stored[0].is_open
        assert stored[0].notes == (item.work_note,)
        assert len(itsm.records()) == 2

    def test_find_returns_every_exact_record_oldest_first(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        first = itsm.seed(KEY, is_open=False)
        second = itsm.seed(KEY)

        found = list(adapter.find(KEY))

        assert [(r.ref.id, r.is_open) for r in found] == [(first, False), (second, True)]

    def test_find_ignores_records_whose_key_is_not_exact(
        self, adapter: ItsmAdapter, itsm: FakeItsm, caplog: pytest.LogCaptureFixture
    ) -> None:
        exact = itsm.seed(KEY)
        for near_miss in (KEY.upper(), KEY + "0", KEY[:-1], "unrelated"):
            itsm.seed(near_miss)
        itsm.sloppy_search()

        with caplog.at_level(logging.WARNING):
            found = list(adapter.find(KEY))

        assert [r.ref.id for r in found] == [exact]
        assert all(r.correlation_id == KEY for r in found)
        assert sum(1 for rec in caplog.records if rec.levelno == logging.WARNING) >= 4

    def test_add_note_appends_and_has_note_sees_the_marker(
        self, adapter: ItsmAdapter, itsm: FakeItsm
    ) -> None:
        ref = adapter.create(make_item())

        adapter.add_note(ref, "Fired again at 10:05 [azmon:fired:2]")
        adapter.add_note(ref, "Fired again at 10:10 [azmon:fired:3]")

        (stored,) = itsm.records()
        assert stored.notes == (
            make_item().work_note,
            "Fired again at 10:05 [azmon:fired:2]",
            "Fired again at 10:10 [azmon:fired:3]",
        )
        assert adapter.has_note(ref, "[azmon:fired:1]")
        assert adapter.has_note(ref, "[azmon:fired:3]")
        assert not adapter.has_note(ref, "[azmon:fired:4]")

    def test_resolve_makes_it_not_open(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(make_item())

        adapter.resolve(
            ref,
            Resolution(
                close_code="Solution provided",
                close_notes="The alert resolved.",
                work_note="Alert resolved at 10:30 [azmon:resolved]",
            ),
        )

        (found,) = adapter.find(KEY)
        assert found.ref.id == ref.id and not found.is_open
        (stored,) = itsm.records()
        assert not stored.is_open
        assert stored.notes[-1] == "Alert resolved at 10:30 [azmon:resolved]"
        assert adapter.has_note(ref, "[azmon:resolved]")

    # ----------------------------------------------------------------- configuration items

    def test_configuration_item_by_resource_id_ignores_case(
        self, adapter: ItsmAdapter, itsm: FakeItsm
    ) -> None:
        by_name = itsm.seed_ci("vm-web-01")
        by_id = itsm.seed_ci("vm-web-01 (azure)", RESOURCE_ID)

        ci = adapter.find_configuration_item([RESOURCE_ID.lower()], ["vm-web-01"])

        assert ci is not None
        assert (ci.id, ci.matched_on) == (by_id, "resource_id")
        assert by_name != by_id

    def test_configuration_item_falls_back_to_name(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ci_id = itsm.seed_ci("vm-web-01")

        ci = adapter.find_configuration_item([RESOURCE_ID], ["VM-WEB-01"])

        assert ci is not None
        assert (ci.id, ci.name, ci.matched_on) == (ci_id, "vm-web-01", "name")

    def test_configuration_item_none_when_nothing_matches(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.seed_ci("vm-db-01", RESOURCE_ID.replace("vm-web-01", "vm-db-01"))
        itsm.sloppy_search()

        assert adapter.find_configuration_item([RESOURCE_ID], ["vm-web-01"]) is None
        assert adapter.find_configuration_item([], []) is None

    # ----------------------------------------------------------------- failures

    @pytest.mark.parametrize("status", NON_2XX_STATUSES)
    def test_status_table(self, adapter: ItsmAdapter, itsm: FakeItsm, status: int) -> None:
        # Twice: an adapter may repeat a call once after renewing its credentials.
        itsm.fail_next(status, times=2)

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        retryable, reason = classify_status(status)
        assert (caught.value.retryable, caught.value.reason, caught.value.status) == (
            retryable,
            reason,
            status,
        )

    @pytest.mark.parametrize("status", SAMPLE_STATUSES)
    @pytest.mark.parametrize(
        "operation", ["create", "add_note", "has_note", "resolve", "find_configuration_item"]
    )
    def test_status_table_for_every_operation(
        self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str, status: int
    ) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.fail_next(status, times=2)

        with pytest.raises(ItsmError) as caught:
            call()

        assert (caught.value.retryable, caught.value.reason, caught.value.status) == (
            *classify_status(status),
            status,
        )

    @pytest.mark.parametrize("operation", ["find", "create", "add_note", "resolve"])
    def test_timeout_is_retryable(self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.timeout_next()

        with pytest.raises(ItsmError) as caught:
            call()

        assert caught.value.retryable
        assert caught.value.reason is Reason.TIMEOUT
        assert caught.value.status is None

    @pytest.mark.parametrize("operation", ["find", "create", "has_note", "find_configuration_item"])
    def test_connection_error_is_retryable(
        self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str
    ) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.drop_next()

        with pytest.raises(ItsmError) as caught:
            call()

        assert caught.value.retryable
        assert caught.value.reason is Reason.NETWORK

    def test_failures_leave_no_trace_in_the_store(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.fail_next(503)
        with pytest.raises(ItsmError):
            adapter.create(make_item())
        assert itsm.records() == []

    @pytest.mark.parametrize(
        ("status", "header", "expected"),
        [
            (429, "7", 7.0),
            (503, "120", 120.0),
            (503, "0", 0.0),
            (429, None, None),
            (503, "soon", None),
            (503, "-5", None),
        ],
    )
    def test_retry_after_seconds(
        self,
        adapter: ItsmAdapter,
        itsm: FakeItsm,
        status: int,
        header: str | None,
        expected: float | None,
    ) -> None:
        itsm.fail_next(status, {"Retry-After": header} if header is not None else None)

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert caught.value.retry_after == expected
        assert caught.value.retryable

    @pytest.mark.parametrize(("offset", "expected"), [(90, 90.0), (-30, 0.0)])
    def test_retry_after_http_date(
        self, adapter: ItsmAdapter, itsm: FakeItsm, clock: FakeClock, offset: int, expected: float
    ) -> None:
        when = email.utils.formatdate(clock() + offset, usegmt=True)
        itsm.fail_next(503, {"Retry-After": when})

        with pytest.raises(ItsmError) as caught:
            adapter.find(KEY)

        assert caught.value.retry_after == pytest.approx(expected, abs=1.0)

    def test_error_message_carries_the_itsm_explanation(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.fail_next(
            403, body=itsm.error_body("Operation Failed", "Data Policy Exception: Impact is mandatory")
        )

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert "403" in str(caught.value)
        assert "Operation Failed" in str(caught.value)
        assert "Data Policy Exception: Impact is mandatory" in str(caught.value)
        assert not caught.value.retryable

    # ----------------------------------------------------------------- secrets

    def test_no_secret_in_errors_or_logs(
        self, adapter: ItsmAdapter, itsm: FakeItsm, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        errors: list[ItsmError] = []
        ref = adapter.create(make_item())  # with OAuth, this issues a token
        secrets = itsm.secrets()
        assert secrets, "the fake must name at least one secret"
        echo = " ".join(secrets)

        def expect_error(call: Callable[[], object]) -> None:
            with pytest.raises(ItsmError) as caught:
                call()
            errors.append(caught.value)

        # A server that echoes what it was sent must not get the bridge to repeat it.
        itsm.fail_next(400, body=itsm.error_body(echo, echo))
        expect_error(lambda: adapter.add_note(ref, "note"))
        itsm.fail_next(500, body=itsm.error_body("Internal error for " + echo, echo))
        expect_error(lambda: adapter.find(KEY))
        itsm.fail_next(401, body=itsm.error_body("User Not Authenticated " + echo, echo), times=2)
        expect_error(lambda: adapter.find(KEY))
        itsm.clear_failures()
        itsm.timeout_next()
        expect_error(lambda: adapter.resolve(ref, Resolution("Solution provided", "done", "note")))
        itsm.drop_next()
        expect_error(lambda: adapter.has_note(ref, "marker"))
        adapter.find(KEY)  # a successful call logs too

        secrets = itsm.secrets()  # including tokens issued after a 401
        texts = [_full_text(e) for e in errors]
        texts += [rec.getMessage() for rec in caplog.records]
        texts += [rec.exc_text or "" for rec in caplog.records]
        for text in texts:
            for secret in secrets:
                assert secret not in text, (secret, text)

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _operation(adapter: ItsmAdapter, itsm: FakeItsm, operation: str) -> Callable[[], object]:
        ref = WorkItemRef(system=type(adapter).name, id=itsm.seed(KEY)) if operation != "create" else None
        if operation == "find":
            return lambda: adapter.find(KEY)
        if operation == "create":
            return lambda: adapter.create(make_item())
        assert ref is not None
        if operation == "add_note":
            return lambda: adapter.add_note(ref, "note")
        if operation == "has_note":
            return lambda: adapter.has_note(ref, "marker")
        if operation == "resolve":
            return lambda: adapter.resolve(ref, Resolution("Solution provided", "done", "resolved"))
        if operation == "find_configuration_item":
            return lambda: adapter.find_configuration_item([RESOURCE_ID], ["vm-web-01"])
        raise AssertionError(operation)
