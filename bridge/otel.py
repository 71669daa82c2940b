"""The OpenTelemetry implementation of :class:`bridge.telemetry.Telemetry`.

Imported only when telemetry is on (:func:`bridge.telemetry.configure`). :class:`OtelTelemetry`
works over whatever providers it is given (tests pass SDK providers with in-memory exporters);
:func:`from_environment` takes the process's global ones, after setting them up with the Azure
Monitor distro unless someone did already: the Functions Python worker does so itself when
``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY`` is true, and configuring twice would export
everything twice.

The distro is set up without any of its instrumentations: not the HTTP clients' (requests, urllib,
urllib3, httpx), not Azure SDK tracing, not those of web frameworks the bridge does not use. ITSM
calls get a dependency span of their own here, with the path but never the query string or a body,
and instrumentations switched on by someone else are suppressed for the duration of each ITSM call,
so a call is never recorded twice, nor a token request with its form.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .telemetry import CONNECTION_STRING_SETTING, AttrValue, CallSpan, Span, Telemetry

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from .state.stats import OutboxStats

__all__ = ["BRIDGE_LOGGER", "OtelTelemetry", "credential_from", "distro_options", "from_environment", "path_template"]

log = logging.getLogger(__name__)

# The logger whose records go to Application Insights when the bridge configures the distro.
BRIDGE_LOGGER = "bridge"
AUTHENTICATION_STRING_SETTING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
# Every instrumentation the distro knows: the HTTP clients would record ITSM calls a second time
# (see the module docstring), and the bridge uses none of the web frameworks or databases.
_UNWANTED_INSTRUMENTATIONS = (
    "requests", "urllib", "urllib3", "httpx", "httpx2", "azure_sdk", "django", "fastapi", "flask", "psycopg2",
)

# Span attributes come partly from the payload (an alertId is the sender's text): keep them short.
_MAX_TEXT = 1024
_ALERT_SPAN = "alert"
_OUTBOX_SPAN = "outbox pass"
_GAUGES: tuple[tuple[str, str, str, str], ...] = (
    # (metric, OutboxStats field or "credential", unit, description)
    ("bridge.outbox.pending", "waiting", "{record}", "records whose ITSM work is due or held"),
    ("bridge.outbox.oldest_pending_age", "oldest_pending_seconds", "s", "how long the oldest waiting work has waited"),
    ("bridge.outbox.dead_letters", "dead", "{record}", "records the ITSM refused (dead-lettered)"),
    ("bridge.credential.refused", "credential", "1", "1 while the ITSM refuses the bridge's credential"),
)

# Path segments that name one record (long numbers, hex ids, GUIDs, PROJ-123 keys): {id} in
# span names and the operation attribute, so they stay a handful of values.
_ID_SEGMENT = re.compile(
    r"\d{3,}|[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[a-z][a-z0-9_]*-\d+",
    re.IGNORECASE,
)

# The invocation's trace context (set by function_app.py), parent of the alert spans within it.
_invocation: ContextVar[otel_context.Context | None] = ContextVar("bridge_invocation", default=None)



def _http_muting() -> Callable[[], AbstractContextManager[None]]:
    """What keeps HTTP client instrumentations (someone else's) quiet during an ITSM call."""
    try:
        from opentelemetry.instrumentation.utils import suppress_http_instrumentation
    except ImportError:  # the distro's package, not ours: without it no instrumentation is there to mute
        return lambda: nullcontext()
    return suppress_http_instrumentation


_suppress_http = _http_muting()


class _OtelSpan(Span):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: AttrValue | None) -> None:
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            value = value[: _MAX_TEXT - 1] + "\u2026"
        if value is not None:
            self._span.set_attribute(key, value)

    def set_outcome(self, outcome: str, *, failed: bool = False, error: str | None = None) -> None:
        self._span.set_attribute("bridge.outcome", outcome)
        if error:
            self._span.set_attribute("error.type", error)
        if failed:
            self._span.set_status(Status(StatusCode.ERROR, outcome))

    def reference(self) -> str | None:
        return _trace_id(self._span)


class _OtelCall(CallSpan):
    __slots__ = ("_span", "label")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.label: str | None = None  # bridge.itsm.calls' status

    def status(self, code: int) -> None:
        self.label = str(code)
        self._span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self._span.set_attribute("error.type", str(code))
            self._span.set_status(Status(StatusCode.ERROR))

    def error(self, kind: str) -> None:
        self.label = "error"
        self._span.set_attribute("error.type", kind)
        self._span.set_status(Status(StatusCode.ERROR, kind))


class OtelTelemetry(Telemetry):
    """Spans, metrics and (with ``logger_provider``) log records through OpenTelemetry.

    With a ``logger_provider``, the records of the ``bridge`` logger go to it through an
    OpenTelemetry logging handler (the distro attaches its own when it is configured, so
    :func:`from_environment` passes none). :meth:`close` detaches it.
    """

    enabled = True

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        logger_provider: Any = None,
    ) -> None:
        self._tracer = tracer_provider.get_tracer("bridge", __version__)
        meter = meter_provider.get_meter("bridge", __version__)
        self._alerts = meter.create_counter(
            "bridge.alerts", unit="{alert}", description="alerts handled, by type, action and outcome"
        )
        self._itsm_calls = meter.create_counter(
            "bridge.itsm.calls", unit="{call}", description="calls to the ITSM, by operation and status"
        )
        self._duration = meter.create_histogram(
            "bridge.alert.duration", unit="ms", description="time from an alert's request to its answer"
        )
        self._gauge_lock = threading.Lock()
        self._gauge_values: dict[str, float] = {}
        for name, field, unit, description in _GAUGES:
            meter.create_observable_gauge(name, callbacks=[self._observer(field)], unit=unit, description=description)
        self._handler: logging.Handler | None = None
        if logger_provider is not None:
            self._handler = _logging_handler(logger_provider)
            logging.getLogger(BRIDGE_LOGGER).addHandler(self._handler)

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger(BRIDGE_LOGGER).removeHandler(self._handler)
            self._handler = None

    # ------------------------------------------------------------------ spans

    @contextmanager
    def invocation(self, trace_parent: str | None, trace_state: str | None = None) -> Iterator[None]:
        parent = _extract(trace_parent, trace_state)
        token = _invocation.set(parent) if parent is not None else None
        try:
            yield
        finally:
            if token is not None:
                _invocation.reset(token)

    def alert(self, attributes: Mapping[str, AttrValue] | None = None) -> AbstractContextManager[Span]:
        return self._span(_ALERT_SPAN, SpanKind.SERVER, attributes)

    def outbox_pass(self, attributes: Mapping[str, AttrValue] | None = None) -> AbstractContextManager[Span]:
        return self._span(_OUTBOX_SPAN, SpanKind.CONSUMER, attributes)

    @contextmanager
    def _span(self, name: str, root_kind: SpanKind, attributes: Mapping[str, AttrValue] | None) -> Iterator[Span]:
        parent = _invocation.get()
        # Under the host's invocation (or any span) this is a step of it; alone, it is the request.
        nested = parent is not None or trace.get_current_span().get_span_context().is_valid
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL if nested else root_kind, attributes=attributes
        )
        # Exceptions are not recorded: their messages are the callers' to scrub, and they log them.
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield _OtelSpan(span)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    @contextmanager
    def itsm_call(self, itsm: str, method: str, url: str) -> Iterator[CallSpan]:
        target = _Target.of(url)
        operation = path_template(target.path)
        attributes: dict[str, AttrValue] = {
            "http.request.method": method,
            "server.address": target.host,
            "server.port": target.port,
            "url.path": target.path,
            "url.full": target.full,
            "bridge.itsm": itsm.lower(),
            "bridge.itsm.operation": operation,
        }
        span = self._tracer.start_span(f"{method} {operation}", kind=SpanKind.CLIENT, attributes=attributes)
        call = _OtelCall(span)
        try:
            with (
                trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False),
                _suppress_http(),
            ):
                try:
                    yield call
                except BaseException as exc:
                    if call.label is None:  # the caller did not classify it (a bug, or the deadline)
                        call.error(type(exc).__name__)
                    raise
        finally:
            self._itsm_calls.add(
                1,
                {"itsm": itsm.lower(), "method": method, "operation": operation, "status": call.label or "error"},
            )

    def current_reference(self) -> str | None:
        return _trace_id(trace.get_current_span())

    # ------------------------------------------------------------------ metrics

    def alert_done(self, alert_type: str, action: str | None, outcome: str, seconds: float) -> None:
        self._alerts.add(1, {"alert_type": alert_type, "action": action or "none", "outcome": outcome, "path": "http"})
        self._duration.record(max(0.0, seconds) * 1000.0, {"outcome": outcome})

    def pass_done(self, alert_type: str, action: str | None, outcome: str) -> None:
        self._alerts.add(
            1, {"alert_type": alert_type, "action": action or "none", "outcome": outcome, "path": "outbox"}
        )

    def outbox(self, stats: OutboxStats, credential_refused: bool) -> None:
        values = {
            "waiting": float(stats.waiting),
            "oldest_pending_seconds": float(stats.oldest_pending_seconds),
            "dead": float(stats.dead),
            "credential": 1.0 if credential_refused else 0.0,
        }
        with self._gauge_lock:
            self._gauge_values.update(values)

    def _observer(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._gauge_lock:
                value = self._gauge_values.get(field)
            # Nothing until the first tick: a gauge at 0 before anything was counted would lie.
            return [] if value is None else [Observation(value)]

        return observe


class _Target:
    """Where an ITSM call goes, as far as telemetry may say: no user info, no query, no fragment."""

    __slots__ = ("full", "host", "path", "port")

    def __init__(self, host: str, port: int, path: str, full: str) -> None:
        self.host, self.port, self.path, self.full = host, port, path, full

    @classmethod
    def of(cls, url: str) -> _Target:
        try:
            parts = urlsplit(url)
        except ValueError:  # an unparseable URL: its call fails on its own; the span says nothing of it
            return cls("", 0, "/", "")
        scheme = parts.scheme.lower() or "https"
        default = 443 if scheme == "https" else 80
        host = parts.hostname or ""
        try:
            port = parts.port or default
        except ValueError:
            port = default
        path = parts.path or "/"
        shown = f"[{host}]" if ":" in host else host
        netloc = shown if port == default else f"{shown}:{port}"
        return cls(host, port, path, f"{scheme}://{netloc}{path}")


def path_template(path: str) -> str:
    """``path`` with the segments that name one record as ``{id}``."""
    return "/".join("{id}" if _ID_SEGMENT.fullmatch(segment) else segment for segment in path.split("/"))


def _trace_id(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None


def _extract(trace_parent: str | None, trace_state: str | None) -> otel_context.Context | None:
    """The W3C trace context as an OpenTelemetry context, or None when it is not a valid one."""
    if not trace_parent:
        return None
    carrier = {"traceparent": trace_parent}
    if trace_state:
        carrier["tracestate"] = trace_state
    extracted = TraceContextTextMapPropagator().extract(carrier)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


def _logging_handler(logger_provider: Any) -> logging.Handler:
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
    except ImportError:  # before the handler moved out of the SDK
        from opentelemetry.sdk._logs import LoggingHandler as SdkLoggingHandler

        return SdkLoggingHandler(logger_provider=logger_provider)
    return LoggingHandler(logger_provider=logger_provider)


# ---------------------------------------------------------------------- the process's providers


def credential_from(authentication: str | None) -> TokenCredential | None:
    """The credential ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` asks for: a managed identity
    (user-assigned with ``ClientId=...``) for ``Authorization=AAD``, else None (the connection
    string's key is used)."""
    fields: dict[str, str] = {}
    for part in (authentication or "").split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    if fields.get("authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = fields.get("clientid")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def from_environment(env: Mapping[str, str]) -> OtelTelemetry:
    """Telemetry over the process's global providers, configuring the Azure Monitor distro first
    unless the process has an SDK tracer provider already (the Functions worker's)."""
    if not _sdk_configured():
        _configure_distro(env)
    else:
        log.info("telemetry: using the OpenTelemetry providers this process configured already")
    bridge_logger = logging.getLogger(BRIDGE_LOGGER)
    if bridge_logger.level == logging.NOTSET and bridge_logger.getEffectiveLevel() > logging.INFO:
        # One record per alert is the point; the default WARNING of the root logger would drop it.
        bridge_logger.setLevel(logging.INFO)
    return OtelTelemetry(trace.get_tracer_provider(), metrics.get_meter_provider())


def _sdk_configured() -> bool:
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


def distro_options(env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``configure_azure_monitor`` for ``env``."""
    options: dict[str, Any] = {
        "connection_string": env[CONNECTION_STRING_SETTING].strip(),
        "logger_name": BRIDGE_LOGGER,
        # Live metrics would stream every request and dependency to the portal's live view on a
        # thread of its own; the metrics above are what the alert rules and workbook read.
        "enable_live_metrics": False,
        "instrumentation_options": {name: {"enabled": False} for name in _UNWANTED_INSTRUMENTATIONS},
    }
    if not env.get("OTEL_TRACES_SAMPLER"):
        # Alerts are few, and a work note names its trace: keep every trace unless told otherwise.
        options["sampling_ratio"] = 1.0
    credential = credential_from(env.get(AUTHENTICATION_STRING_SETTING))
    if credential is not None:
        options["credential"] = credential
    return options


def _configure_distro(env: Mapping[str, str]) -> None:
    if env.get("FUNCTIONS_WORKER_RUNTIME"):
        # As the Functions worker does: the Functions detector, not the VM one (which asks IMDS).
        os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_functions")
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(**distro_options(env))
    log.info("telemetry: Azure Monitor OpenTelemetry configured")
