"""Telemetry as the core sees it: a small neutral interface, and a default that does nothing.

The core calls :func:`current` and the methods of :class:`Telemetry`; it never imports
OpenTelemetry. Telemetry is off unless ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, and while
it is off every call returns at once and :mod:`bridge.otel` (with OpenTelemetry and the Azure
Monitor distro behind it) is never imported. :func:`configure` turns it on from the environment;
tests :func:`install` an implementation over in-memory exporters instead.

What is recorded when it is on (names are fixed: infra's alert rules and workbook query them in
Application Insights):

**Spans**

=========================== =============================================================================
span                        what it is
=========================== =============================================================================
``alert``                   one per ``POST /api/alerts``: a child of the Functions host's invocation when
                            there is one (INTERNAL), else a request of its own (SERVER)
``outbox pass``             one per outbox pass over a key (INTERNAL under an invocation, else CONSUMER)
``<METHOD> <path>``         one per ITSM call (CLIENT; a dependency in Application Insights), ids in the
                            path shown as ``{id}``; the OAuth token request is one too
=========================== =============================================================================

=================================== ===========================================================================
span attribute                      meaning
=================================== ===========================================================================
``alert.id``                        the alert's ``essentials.alertId``
``alert.correlation_id``            the correlation key (the work item's correlation id)
``alert.type``                      the alert's kind, from ``monitoringService`` (``metric``, ``log``,
                                    ``activity_log``...; ``unknown`` before the payload is parsed)
``alert.condition``                 ``Fired`` or ``Resolved``
``alert.severity``                  ``Sev0`` ... ``Sev4``
``bridge.action``                   what was done: ``created``, ``updated``, ``resolved``, ``reopened``,
                                    ``ignored``
``bridge.outcome``                  how it ended (see below)
``bridge.work_item``                the work item's number (or id when it has no number)
``bridge.attempt``                  outbox passes: which attempt at the key's work this pass was (1 = first)
``http.response.status_code``       ``alert``: the answer's status; ITSM calls: the ITSM's status
``error.type``                      why it failed: ``alert``, the error's class (``InvalidToken``,
                                    ``PayloadError``, ``ItsmError``, ``StateUnavailable``...); ``outbox pass``,
                                    the ITSM error's reason (``server_error``, ``auth_error``, ``timeout``...);
                                    ITSM calls, the status code or the transport failure (``timeout``,
                                    ``network``)
``http.request.method``             ITSM calls: the method
``server.address``, ``server.port`` ITSM calls: the ITSM's host and port
``url.path``, ``url.full``          ITSM calls: the path, and the URL without user info or query string
``bridge.itsm``                     ITSM calls: the ITSM (its name, lower case)
``bridge.itsm.operation``           ITSM calls: the path with record ids as ``{id}``
=================================== ===========================================================================

``bridge.outcome`` on the HTTP path is ``processed`` (200), ``queued`` (202), ``invalid`` (400), ``unauthorized``
(401), ``forbidden`` (403), ``too_large`` (413), ``rejected`` (502) or ``unavailable`` (503); on an outbox pass
``processed`` (nothing left), ``queued`` (tried again later), ``held`` (the ITSM refuses the bridge's credential),
``rejected`` (dead-lettered), ``busy`` (another instance holds the key), ``not_due``, ``gone``,
``unavailable`` (the state store failed) or ``failed`` (an unexpected error; it is tried again).

**Metrics** (``customMetrics``)

==================================== ============= ============================================================
metric                               kind          attributes / meaning
==================================== ============= ============================================================
``bridge.alerts``                    counter       ``alert_type``, ``action`` (``none`` when nothing was done),
                                                   ``outcome``, ``path`` (``http`` per delivery; ``outbox`` per
                                                   pass that wrote or dead-lettered)
``bridge.itsm.calls``                counter       ``itsm``, ``method``, ``operation`` (the path template),
                                                   ``status`` (the HTTP status as a string, or ``error``)
``bridge.alert.duration``            histogram, ms ``outcome``: the HTTP path, from request to answer
``bridge.outbox.pending``            gauge         records whose work is due or held
``bridge.outbox.oldest_pending_age`` gauge, s      how long the oldest of them has waited
``bridge.outbox.dead_letters``       gauge         dead-lettered records
``bridge.credential.refused``        gauge, 0/1    1 while the ITSM refuses the bridge's credential
==================================== ============= ============================================================

The gauges are computed by the outbox worker's ``tick()`` (every 5 minutes in Azure) and reported
from then on.

**Logs**: one record per alert (``bridge_event="alert"``) and one per outbox pass
(``bridge_event="outbox"``), with flat fields ``alertId``, ``correlationId``, ``alertType``, ``action``,
``delivery``, ``workItem``, ``durationMs``, ``error``, and ``status`` (the HTTP answer) on alerts or
``attempt`` on passes, each only when it has a value; they become ``customDimensions`` of ``traces``.
The trace id (Application Insights' ``operation_Id``) is written into the notes the bridge adds to
work items (:data:`REFERENCE_LABEL`).

No token, password, client secret, query string or request body is ever put in any of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .state.stats import OutboxStats

__all__ = [
    "CONNECTION_STRING_SETTING",
    "EVENT_FIELDS",
    "REFERENCE_LABEL",
    "AttrValue",
    "CallSpan",
    "Span",
    "Telemetry",
    "configure",
    "current",
    "install",
    "log_event",
    "outcome_of",
    "reset",
]

logger = logging.getLogger(__name__)

CONNECTION_STRING_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
# Begins the line of a work note that names the operation; the Application Insights operation_Id
# (the trace id) follows, so a person reading the work item can find the invocation.
REFERENCE_LABEL = "Azure Monitor ITSM bridge operation:"

# The flat attributes of the one log record per alert (``bridge_event="alert"``) and per outbox
# pass (``"outbox"``): customDimensions in Application Insights, columns of serve's log lines.
EVENT_FIELDS = (
    "bridge_event",
    "alertId",
    "correlationId",
    "alertType",
    "action",
    "delivery",
    "workItem",
    "status",
    "durationMs",
    "attempt",
    "error",
)

AttrValue = str | bool | int | float
_T = TypeVar("_T")


def log_event(log: logging.Logger, level: int, event: str, fields: Mapping[str, object]) -> None:
    """The one record of an alert or an outbox pass: ``"<event> k=v ..."`` for a person, and the
    same fields as flat attributes (those that have a value) for structured logs."""
    present = {k: v for k, v in fields.items() if v is not None}
    log.log(level, f"{event} %s", " ".join(f"{k}={v}" for k, v in present.items()),
            extra={"bridge_event": event, **present})

# HTTP answer of the alerts route -> bridge.outcome.
_OUTCOMES: Mapping[int, str] = {
    200: "processed",
    202: "queued",
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    502: "rejected",
    503: "unavailable",
}


def outcome_of(status: int) -> str:
    """``bridge.outcome`` of an answer of the alerts route."""
    return _OUTCOMES.get(status, "unavailable" if status >= 500 else "invalid" if status >= 400 else "processed")


class Span:
    """The alert's (or outbox pass's) span. This base records nothing."""

    __slots__ = ()

    def set(self, key: str, value: AttrValue | None) -> None:
        """One attribute; ``None`` leaves it unset."""

    def set_outcome(self, outcome: str, *, failed: bool = False, error: str | None = None) -> None:
        """``bridge.outcome``; ``failed`` marks the span as an error, ``error`` is its ``error.type``."""

    def reference(self) -> str | None:
        """The trace id (32 hex digits), which Application Insights shows as ``operation_Id``."""
        return None


class CallSpan:
    """One ITSM call's span. This base records nothing."""

    __slots__ = ()

    def status(self, code: int) -> None:
        """The ITSM answered with ``code``."""

    def error(self, kind: str) -> None:
        """No answer: ``kind`` says why (``timeout``, ``network``...)."""


class _Scope(Generic[_T]):
    """A context manager that hands out one fixed object: the no-op path allocates nothing."""

    __slots__ = ("_value",)

    def __init__(self, value: _T) -> None:
        self._value = value

    def __enter__(self) -> _T:
        return self._value

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = Span()
_NO_CALL = CallSpan()
_NO_SPAN_SCOPE: _Scope[Span] = _Scope(_NO_SPAN)
_NO_CALL_SCOPE: _Scope[CallSpan] = _Scope(_NO_CALL)
_NO_SCOPE: _Scope[None] = _Scope(None)


class Telemetry:
    """What the core reports. This base is telemetry switched off: every method does nothing.

    Implementations must never raise into the caller: telemetry cannot be a reason to lose an alert.
    """

    enabled: bool = False

    def invocation(self, trace_parent: str | None, trace_state: str | None = None) -> AbstractContextManager[None]:
        """Within it, alert spans are children of this W3C trace context (the Functions host's
        invocation), when it is a valid one."""
        return _NO_SCOPE

    def alert(self, attributes: Mapping[str, AttrValue] | None = None) -> AbstractContextManager[Span]:
        """The span of one delivery on the HTTP path."""
        return _NO_SPAN_SCOPE

    def outbox_pass(self, attributes: Mapping[str, AttrValue] | None = None) -> AbstractContextManager[Span]:
        """The span of one outbox pass over a key."""
        return _NO_SPAN_SCOPE

    def itsm_call(self, itsm: str, method: str, url: str) -> AbstractContextManager[CallSpan]:
        """The span of one ITSM call to ``url`` (its query string is never recorded)."""
        return _NO_CALL_SCOPE

    def alert_done(self, alert_type: str, action: str | None, outcome: str, seconds: float) -> None:
        """Count one delivery on the HTTP path, ``seconds`` from its request to its answer."""

    def pass_done(self, alert_type: str, action: str | None, outcome: str) -> None:
        """Count an outbox pass that wrote to the ITSM or dead-lettered its work."""

    def outbox(self, stats: OutboxStats, credential_refused: bool) -> None:
        """The outbox gauges, as of now."""

    def current_reference(self) -> str | None:
        """The trace id of the span in progress, or None."""
        return None


_lock = threading.Lock()
_OFF = Telemetry()
_current: Telemetry = _OFF


def current() -> Telemetry:
    """The process's telemetry (off unless :func:`configure` or :func:`install` turned it on)."""
    return _current


def install(telemetry: Telemetry) -> None:
    """Make ``telemetry`` the process's (tests: an implementation over in-memory exporters)."""
    global _current
    with _lock:
        _current = telemetry


def reset() -> None:
    """Telemetry off again."""
    install(_OFF)


def configure(env: Mapping[str, str]) -> Telemetry:
    """The process's telemetry, turned on from ``env`` when ``APPLICATIONINSIGHTS_CONNECTION_STRING``
    is set and it is not on yet. Only then is OpenTelemetry imported. A failure to set it up is
    logged and leaves it off: the bridge serves alerts either way."""
    global _current
    with _lock:
        if _current.enabled or not env.get(CONNECTION_STRING_SETTING, "").strip():
            return _current
        try:
            from .otel import from_environment

            _current = from_environment(env)
        except Exception as exc:
            # The type only: a message could quote the connection string.
            logger.error("telemetry stays off: OpenTelemetry could not be set up (%s)", type(exc).__name__)
        return _current
