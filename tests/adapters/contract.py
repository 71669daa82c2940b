"""The contract every ITSM adapter passes, whatever ITSM it speaks to.

An adapter's test module opts in by subclassing :class:`AdapterContract` (at least twice: once
over a ``responses`` fake, once over its sandbox stand-in on real sockets), setting the class
attributes ``adapter_name`` (the name the registry knows it by) and ``fake_kind``
(``"responses"`` or ``"standin"``), and overriding two fixtures: ``adapter`` (the adapter under
test, built with the contract's ``clock``) and ``itsm`` (a controller of a fake of that ITSM,
satisfying :class:`FakeItsm`).

The cases here speak only through the :class:`~bridge.adapters.base.ItsmAdapter` protocol and
that neutral controller, so a new adapter gets the whole suite (lifecycle, with close, reopen and
fields written on resolve; neutral statuses, ordering and exactness of ``find``, the status
table, transport failures, Retry-After, secret hygiene) by writing its fakes. Failures are
expressed only in terms that a ``responses`` fake and a real loopback server can both produce:
answer status N with body B and headers H, drop the connection, carry the request out and then
drop the connection, answer too late. Wire details
(exact URLs and bodies, exotic client-library exceptions) are tested beside each adapter.
``tests/adapters/test_registry.py`` checks that every registered adapter has both subclasses.
"""

from __future__ import annotations

import email.utils
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pytest

from bridge.adapters.base import ItsmAdapter, Resolution, WorkItem, WorkItemRef, WorkItemStatus
from bridge.adapters.registry import adapter_class
from bridge.config import Setting
from bridge.errors import ItsmError, Reason, classify_status
from tests.kit import FakeClock

__all__ = [
    "FAKE_KINDS",
    "KEY",
    "NON_2XX_STATUSES",
    "RESOURCE_ID",
    "SAMPLE_STATUSES",
    "AdapterContract",
    "FakeClock",
    "FakeItsm",
    "FakeRecord",
    "make_item",
]

KEY = "0d3f5b8a-41c6-4e2f-9a7b-5c1d2e3f4a5b"
OTHER_KEY = "ffffffff-0000-4000-8000-000000000000"
RESOURCE_ID = (
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-web"
    "/providers/Microsoft.Compute/virtualMachines/vm-web-01"
)

# What a contract subclass runs against: a ``responses`` fake in the process, or the adapter's
# sandbox stand-in, a real HTTP server on loopback.
FAKE_KINDS = ("responses", "standin")

# Every status an ITSM can answer with that is not success: informational statuses (as a final
# answer), redirects (never followed with credentials), every 4xx and 5xx. Not 100: on a real
# HTTP/1.1 connection a 100 is always interim (the client skips it and waits for the final
# answer), so no server can give it as an answer; adapters test it beside their mock, if at all.
NON_2XX_STATUSES: tuple[int, ...] = (101, 102, 103, 300, 301, 302, 303, 304, 307, 308, *range(400, 600))
# A sample across the classes, used where every operation is exercised.
SAMPLE_STATUSES: tuple[int, ...] = (302, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)
OPERATIONS = ("find", "create", "add_note", "has_note", "resolve", "reopen", "find_configuration_item", "check")


@dataclass(frozen=True)
class FakeRecord:
    """One work item as the fake ITSM holds it, in neutral terms."""

    id: str
    correlation_id: str
    status: WorkItemStatus
    notes: tuple[str, ...]  # internal notes, oldest first
    fields: Mapping[str, Any]  # the ITSM's own field names and values

    @property
    def is_open(self) -> bool:
        return self.status is WorkItemStatus.OPEN


class FakeItsm(Protocol):
    """What the contract needs from a fake ITSM, independent of how that ITSM speaks.

    "API requests" are the adapter's calls on work items and configuration items; requests for
    credentials (an OAuth token endpoint) are never failed by these controls. Every failure is
    one a real server can produce, so a stand-in on loopback can implement each of them.
    """

    def seed(self, correlation_id: str, *, status: WorkItemStatus = WorkItemStatus.OPEN) -> str:
        """Store a work item this bridge created before the test; return its id. Later seeds are newer."""
        ...

    def seed_foreign(self, correlation_id: str) -> str:
        """Store a work item another integration created with the same correlation id, but without
        this bridge's mark (whatever the adapter uses to tell its own work items); return its id."""
        ...

    def seed_ci(self, name: str, resource_id: str | None = None) -> str | None:
        """Store a configuration item; return its id, or None when the ITSM has no CMDB."""
        ...

    def extra_field(self) -> tuple[str, str]:
        """A field (in the ITSM's own name, not one the adapter manages) and a value for it that a
        resolve may write; ``records()`` shows it in ``fields`` once written."""
        ...

    def records(self) -> list[FakeRecord]:
        """Every work item (this bridge's and others'), oldest first."""
        ...

    def fail_next(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        *,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` API requests with ``status``, ``headers`` and ``body`` (default:
        the ITSM's own error body for that status), without carrying them out."""
        ...

    def drop_next(self) -> None:
        """The next API request reaches the ITSM, which closes the connection without carrying it
        out or answering."""
        ...

    def commit_then_drop_next(self) -> None:
        """The next API request is carried out, then the connection is closed before the answer."""
        ...

    def delay_next(self) -> None:
        """The next API request gets no answer before the adapter stops waiting (its read times
        out); it is not carried out."""
        ...

    def clear_failures(self) -> None:
        """Forget scripted failures not yet used up."""
        ...

    def sloppy_search(self) -> None:
        """From now on, searches ignore their filter and return every record of the kind asked for
        (a misbehaving ITSM: ServiceNow drops a clause it cannot parse, a proxy loses a query...)."""
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
        "title": "[Azure Monitor] Sev2 Fired: cpu-high on vm-web-01",
        "description": "Rule: cpu-high\nSeverity: Sev2\nAlert id: /subscriptions/x/alerts/" + key,
        "note": "Alert fired at 2025-06-15T10:00:00Z [azmon:fired:1]",
        "severity": "Sev2",
        "impact": 2,
        "urgency": 2,
    }
    values.update(overrides)
    return WorkItem(**values)


class _NoCall(Exception):
    """The operation makes no remote call for this ITSM (``find_configuration_item`` without a CMDB)."""


def _failure(call: Callable[[], object]) -> ItsmError | None:
    """The ``ItsmError`` ``call`` raises; None when the operation makes no remote call at all."""
    with pytest.raises((ItsmError, _NoCall)) as caught:
        call()
    return caught.value if isinstance(caught.value, ItsmError) else None


def _full_text(error: BaseException) -> str:
    """Everything a log handler could print for ``error``, chained exceptions included."""
    return "".join(traceback.format_exception(error)) + repr(error)


class AdapterContract:
    """Cases every adapter must pass. Subclasses set ``adapter_name`` and ``fake_kind`` and
    override the ``adapter`` and ``itsm`` fixtures."""

    adapter_name: ClassVar[str] = ""
    fake_kind: ClassVar[str] = ""

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

    def test_is_the_registered_adapter(self, adapter: ItsmAdapter) -> None:
        assert self.fake_kind in FAKE_KINDS, f"set fake_kind to one of {FAKE_KINDS}"
        assert isinstance(adapter, ItsmAdapter)
        assert type(adapter).name == self.adapter_name
        assert adapter_class(self.adapter_name) is type(adapter)

    def test_describes_itself(self, adapter: ItsmAdapter) -> None:
        cls = type(adapter)
        assert isinstance(cls.display_name, str) and cls.display_name.strip()
        assert isinstance(cls.settings, tuple) and all(isinstance(s, Setting) for s in cls.settings)
        assert isinstance(cls.title_limit, int) and cls.title_limit > 0
        assert isinstance(cls.description_limit, int) and cls.description_limit >= cls.title_limit
        assert isinstance(cls.managed_fields, frozenset)
        assert all(isinstance(f, str) and f for f in cls.managed_fields)
        assert callable(cls.from_settings)

    # ----------------------------------------------------------------- lifecycle

    def test_find_without_records_is_empty(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        assert list(adapter.find(KEY)) == []

    def test_create_then_find_returns_exactly_it(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        other = itsm.seed(OTHER_KEY)
        item = make_item()

        ref = adapter.create(item)

        assert ref.system == type(adapter).name
        assert ref.id and ref.id != other
        found = list(adapter.find(KEY))
        assert [(r.ref, r.correlation_id, r.status, r.is_open) for r in found] == [
            (ref, KEY, WorkItemStatus.OPEN, True)
        ]
        stored = [r for r in itsm.records() if r.id == ref.id]
        assert len(stored) == 1
        assert stored[0].correlation_id == KEY
        assert stored[0].is_open
        assert stored[0].notes == (item.note,)
        assert len(itsm.records()) == 2

    @pytest.mark.parametrize("status", list(WorkItemStatus))
    def test_find_reports_the_neutral_status(
        self, adapter: ItsmAdapter, itsm: FakeItsm, status: WorkItemStatus
    ) -> None:
        seeded = itsm.seed(KEY, status=status)

        (found,) = adapter.find(KEY)

        assert (found.ref.id, found.correlation_id, found.status) == (seeded, KEY, status)
        assert found.is_open is (status is WorkItemStatus.OPEN)

    def test_find_returns_every_exact_record_oldest_first(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        first = itsm.seed(KEY, status=WorkItemStatus.CLOSED)
        second = itsm.seed(KEY, status=WorkItemStatus.RESOLVED)
        third = itsm.seed(KEY)

        found = list(adapter.find(KEY))

        assert [(r.ref.id, r.status) for r in found] == [
            (first, WorkItemStatus.CLOSED),
            (second, WorkItemStatus.RESOLVED),
            (third, WorkItemStatus.OPEN),
        ]

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

    def test_find_ignores_work_items_of_other_integrations(
        self, adapter: ItsmAdapter, itsm: FakeItsm, caplog: pytest.LogCaptureFixture
    ) -> None:
        foreign = itsm.seed_foreign(KEY)
        ours = itsm.seed(KEY)

        assert [r.ref.id for r in adapter.find(KEY)] == [ours]

        # Even when the ITSM returns the other integration's work item, the adapter re-checks.
        itsm.sloppy_search()
        with caplog.at_level(logging.WARNING):
            assert [r.ref.id for r in adapter.find(KEY)] == [ours]
        assert any(rec.levelno == logging.WARNING for rec in caplog.records)
        assert foreign in {r.id for r in itsm.records()}

    def test_add_note_appends_and_has_note_sees_the_marker(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(make_item())

        adapter.add_note(ref, "Fired again at 10:05 [azmon:fired:2]")
        adapter.add_note(ref, "Fired again at 10:10 [azmon:fired:3]")

        (stored,) = itsm.records()
        assert stored.notes == (
            make_item().note,
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
            Resolution(code=None, summary="The alert resolved.", note="Alert resolved at 10:30 [azmon:resolved]"),
        )

        (found,) = adapter.find(KEY)
        assert found.ref.id == ref.id and not found.is_open
        assert found.status is not WorkItemStatus.OPEN
        (stored,) = itsm.records()
        assert not stored.is_open
        assert stored.notes[-1] == "Alert resolved at 10:30 [azmon:resolved]"
        assert adapter.has_note(ref, "[azmon:resolved]")

    def test_create_already_resolved(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(
            make_item(),
            Resolution(code=None, summary="The alert was over when it arrived.", note="Resolved [azmon:resolved]"),
        )

        (found,) = adapter.find(KEY)
        assert found.ref.id == ref.id and not found.is_open
        (stored,) = itsm.records()
        assert not stored.is_open
        assert adapter.has_note(ref, "[azmon:fired:1]")
        assert adapter.has_note(ref, "[azmon:resolved]")

    def test_reopen_makes_a_resolved_item_open_with_its_note(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(make_item())
        adapter.resolve(ref, Resolution(code=None, summary="The alert resolved.", note="Resolved [azmon:resolved:1]"))
        (resolved,) = adapter.find(KEY)
        assert resolved.status is WorkItemStatus.RESOLVED  # what the core sees before it reopens

        adapter.reopen(ref, "Fired again at 10:40 [azmon:fired:2]")

        (found,) = adapter.find(KEY)
        assert (found.ref.id, found.status, found.is_open) == (ref.id, WorkItemStatus.OPEN, True)
        (stored,) = itsm.records()
        assert stored.is_open
        assert stored.notes[-1] == "Fired again at 10:40 [azmon:fired:2]"
        assert adapter.has_note(ref, "[azmon:fired:2]")

        # Reopened, it resolves again like any open item.
        adapter.resolve(ref, Resolution(code=None, summary="Over again.", note="Resolved [azmon:resolved:2]"))
        (again,) = adapter.find(KEY)
        assert again.status is WorkItemStatus.RESOLVED

    @pytest.mark.parametrize("resolved_first", [False, True], ids=["from-open", "from-resolved"])
    def test_close_makes_it_closed(self, adapter: ItsmAdapter, itsm: FakeItsm, resolved_first: bool) -> None:
        ref = adapter.create(make_item())
        if resolved_first:
            adapter.resolve(ref, Resolution(code=None, summary="Resolved.", note="Resolved [azmon:resolved]"))

        adapter.resolve(
            ref, Resolution(code=None, summary="Closed for good.", note="Closed [azmon:closed]", close=True)
        )

        (found,) = adapter.find(KEY)
        assert (found.ref.id, found.status, found.is_open) == (ref.id, WorkItemStatus.CLOSED, False)
        (stored,) = itsm.records()
        assert stored.status is WorkItemStatus.CLOSED
        assert stored.notes[-1] == "Closed [azmon:closed]"
        assert adapter.has_note(ref, "[azmon:closed]")

    @pytest.mark.parametrize("close", [False, True], ids=["resolve", "close"])
    def test_fields_on_resolve_land_on_the_item(self, adapter: ItsmAdapter, itsm: FakeItsm, close: bool) -> None:
        name, value = itsm.extra_field()
        ref = adapter.create(make_item())

        adapter.resolve(ref, Resolution(None, "Done.", "Resolved [azmon:resolved]", close=close, fields={name: value}))

        (stored,) = itsm.records()
        assert stored.fields[name] == value
        assert stored.status is (WorkItemStatus.CLOSED if close else WorkItemStatus.RESOLVED)
        assert stored.notes[-1] == "Resolved [azmon:resolved]"

    def test_resolution_fields_cannot_override_managed_fields(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(make_item())
        hijack = {name: "hijack" for name in type(adapter).managed_fields}

        adapter.resolve(ref, Resolution(None, "Done.", "Resolved [azmon:resolved]", fields=hijack))

        (found,) = adapter.find(KEY)
        assert (found.ref.id, found.correlation_id, found.status) == (ref.id, KEY, WorkItemStatus.RESOLVED)
        (stored,) = itsm.records()
        assert (stored.correlation_id, stored.status) == (KEY, WorkItemStatus.RESOLVED)
        assert (stored.notes[0], stored.notes[-1]) == (make_item().note, "Resolved [azmon:resolved]")
        assert "hijack" not in stored.notes

    def test_create_already_closed(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        name, value = itsm.extra_field()

        ref = adapter.create(
            make_item(),
            Resolution(None, "Over when it arrived.", "Closed [azmon:closed]", close=True, fields={name: value}),
        )

        (found,) = adapter.find(KEY)
        assert (found.ref.id, found.status) == (ref.id, WorkItemStatus.CLOSED)
        (stored,) = itsm.records()
        assert stored.status is WorkItemStatus.CLOSED
        assert stored.fields[name] == value
        assert adapter.has_note(ref, "[azmon:fired:1]")
        assert adapter.has_note(ref, "[azmon:closed]")

    def test_mapped_fields_cannot_override_managed_fields(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        hijack = {name: "hijack" for name in type(adapter).managed_fields}

        ref = adapter.create(make_item(fields=hijack))

        (found,) = adapter.find(KEY)
        assert (found.ref.id, found.correlation_id, found.status) == (ref.id, KEY, WorkItemStatus.OPEN)
        (stored,) = itsm.records()
        assert stored.notes == (make_item().note,)

    def test_check_reads_with_the_credential(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        assert adapter.check() is None

        itsm.fail_next(401, times=2)
        with pytest.raises(ItsmError) as caught:
            adapter.check()
        assert (caught.value.reason, caught.value.retryable) == (Reason.AUTH_ERROR, False)
        assert caught.value.credential_refused

        itsm.clear_failures()
        adapter.check()
        assert itsm.records() == []  # a check writes nothing

    # ----------------------------------------------------------------- configuration items

    def test_configuration_item_by_resource_id_ignores_case(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        by_name = itsm.seed_ci("vm-web-01")
        by_id = itsm.seed_ci("vm-web-01 (azure)", RESOURCE_ID)

        ci = adapter.find_configuration_item([RESOURCE_ID.lower()], ["vm-web-01"])

        if by_id is None:  # an ITSM without a CMDB
            assert ci is None
            return
        assert ci is not None
        assert (ci.id, ci.matched_on) == (by_id, "resource_id")
        assert by_name != by_id

    def test_configuration_item_falls_back_to_name(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ci_id = itsm.seed_ci("vm-web-01")

        ci = adapter.find_configuration_item([RESOURCE_ID], ["VM-WEB-01"])

        if ci_id is None:
            assert ci is None
            return
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
        assert (caught.value.retryable, caught.value.reason, caught.value.status) == (retryable, reason, status)

    @pytest.mark.parametrize("status", SAMPLE_STATUSES)
    @pytest.mark.parametrize("operation", OPERATIONS[1:])
    def test_status_table_for_every_operation(
        self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str, status: int
    ) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.fail_next(status, times=2)

        error = _failure(call)

        if error is not None:
            assert (error.retryable, error.reason, error.status) == (*classify_status(status), status)

    @pytest.mark.parametrize("operation", ["find", "create", "add_note", "resolve", "reopen"])
    def test_late_answer_is_a_retryable_timeout(self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.delay_next()

        with pytest.raises(ItsmError) as caught:
            call()

        assert caught.value.retryable
        assert caught.value.reason is Reason.TIMEOUT
        assert caught.value.status is None
        assert caught.value.maybe_applied  # the ITSM had the request: it may still carry it out

    @pytest.mark.parametrize("operation", ["find", "create", "has_note", "reopen", "find_configuration_item", "check"])
    def test_dropped_connection_is_retryable(self, adapter: ItsmAdapter, itsm: FakeItsm, operation: str) -> None:
        call = self._operation(adapter, itsm, operation)
        itsm.drop_next()

        error = _failure(call)

        if error is not None:
            assert (error.retryable, error.reason, error.status, error.maybe_applied) == (
                True,
                Reason.NETWORK,
                None,
                True,
            )

    def test_dropped_create_is_not_carried_out(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.drop_next()
        with pytest.raises(ItsmError):
            adapter.create(make_item())

        assert itsm.records() == []
        assert list(adapter.find(KEY)) == []

    def test_create_whose_answer_is_lost_is_found_afterwards(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.commit_then_drop_next()

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert (caught.value.retryable, caught.value.reason, caught.value.maybe_applied) == (
            True,
            Reason.NETWORK,
            True,
        )
        # The bridge looks before it creates again: the lost create must be there to be found.
        (found,) = adapter.find(KEY)
        assert found.is_open
        assert [r.id for r in itsm.records()] == [found.ref.id]

    def test_note_whose_answer_is_lost_is_there(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        ref = adapter.create(make_item())
        itsm.commit_then_drop_next()

        with pytest.raises(ItsmError) as caught:
            adapter.add_note(ref, "Fired again [azmon:fired:2]")

        assert caught.value.retryable and caught.value.maybe_applied
        assert adapter.has_note(ref, "[azmon:fired:2]")  # how the bridge skips a redelivery

    def test_failures_leave_no_trace_in_the_store(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.fail_next(503)
        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())
        assert not caught.value.maybe_applied  # a 503 is a refusal before any work
        assert itsm.records() == []

    def test_failure_is_used_up(self, adapter: ItsmAdapter, itsm: FakeItsm) -> None:
        itsm.fail_next(503)
        with pytest.raises(ItsmError):
            adapter.find(KEY)

        assert list(adapter.find(KEY)) == []

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
        itsm.fail_next(400, body=itsm.error_body("Operation Failed", "Field u_bogus does not exist"))

        with pytest.raises(ItsmError) as caught:
            adapter.create(make_item())

        assert "400" in str(caught.value)
        assert "Operation Failed" in str(caught.value)
        assert "Field u_bogus does not exist" in str(caught.value)
        assert (caught.value.retryable, caught.value.reason) == (False, Reason.CLIENT_ERROR)

    # ----------------------------------------------------------------- secrets

    def test_no_secret_in_errors_or_logs(
        self, adapter: ItsmAdapter, itsm: FakeItsm, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        errors: list[ItsmError] = []
        ref = adapter.create(make_item())  # with a token-based credential, this obtains a token
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
        itsm.fail_next(429, {"Retry-After": "1"}, body=itsm.error_body(echo, echo))
        expect_error(lambda: adapter.check())
        itsm.delay_next()
        expect_error(lambda: adapter.resolve(ref, Resolution(None, "done", "note")))
        itsm.drop_next()
        expect_error(lambda: adapter.has_note(ref, "marker"))
        itsm.commit_then_drop_next()
        expect_error(lambda: adapter.add_note(ref, "lost answer"))
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
        """A call of ``operation`` on a work item that exists (seeded before any failure is scripted).

        For an ITSM without a CMDB, ``find_configuration_item`` makes no call: the returned call
        then checks that it answers None whatever failure is scripted.
        """
        if operation == "find":
            return lambda: adapter.find(KEY)
        if operation == "create":
            return lambda: adapter.create(make_item())
        if operation == "find_configuration_item":
            if itsm.seed_ci("vm-web-01", RESOURCE_ID) is None:

                def no_cmdb() -> object:
                    assert adapter.find_configuration_item([RESOURCE_ID], ["vm-web-01"]) is None
                    raise _NoCall

                return no_cmdb
            return lambda: adapter.find_configuration_item([RESOURCE_ID], ["vm-web-01"])
        if operation == "check":
            return adapter.check
        if operation == "reopen":
            resolved = WorkItemRef(system=type(adapter).name, id=itsm.seed(KEY, status=WorkItemStatus.RESOLVED))
            return lambda: adapter.reopen(resolved, "Fired again [azmon:fired:2]")
        ref = WorkItemRef(system=type(adapter).name, id=itsm.seed(KEY))
        if operation == "add_note":
            return lambda: adapter.add_note(ref, "note")
        if operation == "has_note":
            return lambda: adapter.has_note(ref, "marker")
        if operation == "resolve":
            return lambda: adapter.resolve(ref, Resolution(None, "done", "resolved"))
        raise AssertionError(operation)
