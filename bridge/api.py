"""The bridge's HTTP API, free of any web framework (CONTRACT section 1).

Both front doors, the Azure Function (``function_app.py``) and the local server
(:mod:`bridge.server`), turn their request into an :class:`ApiRequest`, call
:meth:`BridgeApi.handle` and write back the :class:`ApiResponse`: one code path, so the two
cannot diverge. Nothing in here ever answers 500: an unexpected failure becomes a 503, which
Azure Monitor retries, so no alert is lost to a bug either.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from . import __version__, telemetry
from .alerts import Alert, parse_alert
from .auth import TokenVerifier
from .config import Settings
from .correlation import canonical_payload, correlation_key, fingerprint
from .errors import (
    AuthError,
    AuthUnavailable,
    BridgeError,
    Forbidden,
    ItsmError,
    PayloadError,
    PayloadTooLarge,
)
from .health import HealthChecks
from .reconcile import Action, Delivery, Reconciler
from .state.base import StateUnavailable

__all__ = ["MAX_BODY_BYTES", "ApiRequest", "ApiResponse", "BridgeApi", "UnavailableApi"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
# The subscription segment that starts an Azure resource id: /subscriptions/<id> then / or the end.
_SUBSCRIPTION_PREFIX = re.compile(r"/subscriptions/([^/]*)(?:/|\Z)", re.IGNORECASE)
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# Azure Monitor retries 503 a few times within about a minute; ask for a short pause.
DEFAULT_RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str  # without the query
    headers: Mapping[str, str]  # keys lower-cased by :meth:`of`
    body: bytes
    query: Mapping[str, str] = field(default_factory=dict)  # the last value of each name

    @classmethod
    def of(
        cls,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        query: Mapping[str, str] | None = None,
    ) -> ApiRequest:
        """``path`` may carry a query string (the local server's request target); ``query`` is
        what the Functions host parsed (``req.params``), and wins over it."""
        path, _, text = path.partition("?")
        parsed = dict(parse_qsl(text, keep_blank_values=True))
        parsed.update(query or {})
        return cls(method.upper(), path, {k.lower(): v for k, v in headers.items()}, body, parsed)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status, {"error": {"code": code, "message": message}}, dict(headers or {}))


def unavailable(message: str, retry_after: float | None = None) -> ApiResponse:
    seconds = max(1, round(retry_after)) if retry_after else DEFAULT_RETRY_AFTER_SECONDS
    return error(503, "unavailable", message, {"Retry-After": str(seconds)})


ROUTES: Mapping[tuple[str, str], str] = {
    ("POST", "/api/alerts"): "alerts",
    ("GET", "/api/health"): "health",
}


class _Routed:
    """Dispatch shared by the working API and the misconfigured stand-in."""

    def handle(self, request: ApiRequest) -> ApiResponse:
        name = ROUTES.get((request.method, request.path.rstrip("/") or "/"))
        if name is None:
            if any(path == request.path.rstrip("/") for _, path in ROUTES):
                return error(405, "method_not_allowed", f"{request.method} is not allowed here")
            return error(404, "not_found", "no such route")
        handler: Callable[[ApiRequest], ApiResponse] = getattr(self, name)
        return handler(request)

    def alerts(self, request: ApiRequest) -> ApiResponse:
        raise NotImplementedError

    def health(self, request: ApiRequest) -> ApiResponse:
        raise NotImplementedError


class BridgeApi(_Routed):
    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        reconciler: Reconciler,
        *,
        adapter_name: str,
        clock: Callable[[], float] = time.monotonic,
        health: HealthChecks | None = None,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._reconciler = reconciler
        self._adapter_name = adapter_name
        self._clock = clock
        self._health = health if health is not None else HealthChecks(settings, verifier, reconciler)

    def health(self, request: ApiRequest) -> ApiResponse:
        body: dict[str, Any] = {"status": "ok", "version": __version__, "adapter": self._adapter_name}
        if _deep(request):
            # 200 either way, as plain health answers degraded: the body says what is wrong.
            report = self._health.run()
            if not report.ok:
                body["status"] = "degraded"
                body["reason"] = report.summary
            body["checks"] = report.as_json()
            return ApiResponse(200, body)
        reasons = []
        refused = self._reconciler.credential_status()
        if refused is not None:
            # Work is held (never lost) until the credential works again; say so, never a value.
            reasons.append(f"the ITSM refuses the bridge's credential; alerts are held: {refused.get('reason', '')}")
        known = self._health.degraded_reason
        if known is not None:
            reasons.append(known)
        if reasons:
            body["status"] = "degraded"
            body["reason"] = "; ".join(reasons)
        return ApiResponse(200, body)

    def alerts(self, request: ApiRequest) -> ApiResponse:
        started = self._clock()
        tel = telemetry.current()
        # The span covers the whole answer, and the log line is written inside it so that it
        # carries the trace id too.
        with tel.alert() as span:
            answer = self._answer(request, started)
            if tel.enabled:
                try:
                    _report(tel, span, answer, self._clock() - started)
                except Exception:
                    # Telemetry must not turn an answer into a 500.
                    logger.exception("could not record the telemetry of an alert (status %s)", answer.response.status)
            self._log(answer.alert, answer.delivery, answer.response, started, answer.error)
        return answer.response

    def _answer(self, request: ApiRequest, started: float) -> _Answer:
        alert: Alert | None = None
        try:
            if len(request.body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"body is {len(request.body)} bytes; the limit is {MAX_BODY_BYTES}")
            caller = self._verifier.verify(request.headers.get("authorization"))
            alert = parse_alert(request.body)
            self._authorize_subscription(alert)
            delivery = self._deliver(alert, started)
        except BridgeError as exc:
            return _Answer(self._error_response(exc), alert, error=exc, failure=type(exc).__name__)
        except Exception as exc:
            # A bug must not lose the alert: 503 makes Azure Monitor deliver it again.
            logger.exception("unexpected failure handling an alert")
            response = unavailable("the bridge failed unexpectedly; the alert will be retried")
            return _Answer(response, alert, failure=type(exc).__name__)
        logger.debug("caller app %s (token v%s)", caller.app_id, caller.version)
        return _Answer(_delivery_response(alert, delivery), alert, delivery)

    def _deliver(self, alert: Alert, started: float) -> Delivery:
        canonical = canonical_payload(alert)
        print_ = fingerprint(alert, canonical)
        try:
            return self._reconciler.deliver(alert, canonical, print_)
        except StateUnavailable as exc:
            # Nothing could be recorded: the old inline path still serves while the ITSM is up.
            logger.warning("state store unavailable, trying the ITSM without a record: %s", exc)
            budget = self._reconciler.timing.inline_seconds - (self._clock() - started)
            return self._reconciler.deliver_unrecorded(alert, canonical, print_, budget)

    def _authorize_subscription(self, alert: Alert) -> None:
        """With ``ALLOWED_SUBSCRIPTION_IDS`` set, the alertId and every target must each start with
        ``/subscriptions/<an allowed id>``: an id without that segment is refused too, never let
        through unchecked. (A filter on what the trusted, token-proven caller sends, not a
        boundary against that caller: it can write any subscription into the payload.)"""
        allowed = self._settings.allowed_subscription_ids
        if not allowed:
            return
        for name, resource_id in _resource_ids(alert):
            match = _SUBSCRIPTION_PREFIX.match(resource_id)
            subscription = match.group(1).lower() if match else ""
            if not subscription:
                raise Forbidden(
                    f"{name} names no subscription (/subscriptions/<id>/...), and only alerts from listed "
                    "subscriptions are accepted"
                )
            if subscription not in allowed:
                # Only a GUID is quoted back: anything else in that segment is the sender's text.
                shown = subscription if _GUID.match(subscription) else "(not a subscription id)"
                raise Forbidden(f"subscription {shown} of {name} is not allowed")

    def _error_response(self, exc: BridgeError) -> ApiResponse:
        if isinstance(exc, PayloadError):
            return error(exc.status, exc.code, str(exc))
        if isinstance(exc, AuthError):
            headers = {}
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return error(exc.status, exc.code, str(exc), headers)
        if isinstance(exc, AuthUnavailable):
            return unavailable(str(exc))
        if isinstance(exc, StateUnavailable):
            return unavailable(f"the alert could not be recorded and the ITSM did not take it: {exc}")
        if isinstance(exc, ItsmError):
            if exc.retryable:
                return unavailable(
                    f"the ITSM is unavailable after {exc.attempts} attempt(s): {exc}", exc.retry_after
                )
            return error(502, "itsm_rejected", str(exc))
        return unavailable("the bridge cannot process alerts right now")

    def _log(
        self,
        alert: Alert | None,
        outcome: Delivery | None,
        response: ApiResponse,
        started: float,
        exc: BaseException | None,
    ) -> None:
        """One structured line per alert. Never raises: logging must not turn an answer into a 500.

        The fields are flat attributes of the record (``extra``): OpenTelemetry's logging handler
        makes them ``customDimensions``, and the local formatter (:mod:`bridge.logs`) shows them.
        """
        try:
            fields: dict[str, object] = {
                "alertId": alert.alert_id if alert else None,
                "correlationId": _correlation_id(alert, outcome),
                "alertType": alert.kind.value if alert else None,
                "action": outcome.action.value if outcome and outcome.action else None,
                "delivery": outcome.status if outcome else None,
                "workItem": _work_item(outcome),
                "status": response.status,
                "durationMs": round((self._clock() - started) * 1000),
            }
            if exc is not None:
                fields["error"] = f"{type(exc).__name__}: {exc}"
            level = logging.INFO if response.status < 500 else logging.WARNING
            telemetry.log_event(logger, level, "alert", fields)
        except Exception:
            logger.exception("could not log the outcome of an alert (status %s)", response.status)


@dataclass(frozen=True)
class _Answer:
    """What the alerts route answered, and what it knew by then (for the log line and telemetry)."""

    response: ApiResponse
    alert: Alert | None = None
    delivery: Delivery | None = None
    error: BridgeError | None = None  # an expected refusal, its message safe to log
    failure: str | None = None  # the class of what went wrong, expected or not


def _correlation_id(alert: Alert | None, delivery: Delivery | None) -> str | None:
    if delivery is not None:
        return delivery.correlation_id
    return correlation_key(alert.alert_id) if alert is not None else None


def _work_item(delivery: Delivery | None) -> str | None:
    if delivery is None or delivery.work_item is None:
        return None
    return delivery.work_item.number or delivery.work_item.id


def _report(tel: telemetry.Telemetry, span: telemetry.Span, answer: _Answer, seconds: float) -> None:
    """The alert's span attributes and metrics (only called while telemetry is on)."""
    alert, delivery, status = answer.alert, answer.delivery, answer.response.status
    alert_type = alert.kind.value if alert is not None else "unknown"
    action = delivery.action.value if delivery is not None and delivery.action is not None else None
    outcome = telemetry.outcome_of(status)
    if alert is not None:
        span.set("alert.id", alert.alert_id)
        span.set("alert.condition", alert.monitor_condition)
        span.set("alert.severity", alert.severity)
    span.set("alert.correlation_id", _correlation_id(alert, delivery))
    span.set("alert.type", alert_type)
    span.set("bridge.action", action)
    span.set("bridge.work_item", _work_item(delivery))
    span.set("http.response.status_code", status)
    span.set_outcome(outcome, failed=status >= 500, error=answer.failure)
    tel.alert_done(alert_type, action, outcome, seconds)


def _resource_ids(alert: Alert) -> list[tuple[str, str]]:
    """(field name, id) of the alertId and of every non-blank ``alertTargetIDs`` entry, read from
    the payload itself with the payload's own indexes (whatever the parsed alert keeps of them)."""
    named = [("alertId", alert.alert_id)]
    targets = alert.essentials.get("alertTargetIDs")
    if isinstance(targets, list | tuple):
        for index, target in enumerate(targets):
            if isinstance(target, str) and target.strip():
                named.append((f"alertTargetIDs[{index}]", target.strip()))
    return named


def _delivery_response(alert: Alert, delivery: Delivery) -> ApiResponse:
    """200 processed, 202 queued (recorded durably; the outbox finishes it) or 502 rejected."""
    if delivery.status == "queued":
        return ApiResponse(
            202,
            {
                "status": "queued",
                "alertId": alert.alert_id,
                "correlationId": delivery.correlation_id,
                "reason": delivery.reason,
            },
        )
    if delivery.status == "rejected":
        return error(
            502,
            "itsm_rejected",
            f"the ITSM refused this alert's change; it is kept as dead-lettered for `outbox replay`: "
            f"{delivery.reason}",
        )
    assert delivery.action is not None
    body: dict[str, Any] = {
        "status": "processed",
        "action": delivery.action.value,
        "alertId": alert.alert_id,
        "correlationId": delivery.correlation_id,
        "workItem": delivery.work_item.as_json() if delivery.work_item else None,
    }
    if delivery.action is Action.IGNORED:
        body["reason"] = delivery.reason
    return ApiResponse(200, body)


class UnavailableApi(_Routed):
    """What answers when the settings are bad: alerts get 503 (Azure retries, nothing is lost)
    and health names the bad setting (never its value) until the operator fixes it."""

    def __init__(self, setting: str, message: str) -> None:
        self._setting = setting
        self._message = message

    def alerts(self, request: ApiRequest) -> ApiResponse:
        return unavailable(f"the bridge is misconfigured ({self._setting}); see its logs")

    def health(self, request: ApiRequest) -> ApiResponse:
        body: dict[str, Any] = {
            "status": "misconfigured", "version": __version__, "setting": self._setting, "message": self._message,
        }
        if _deep(request):
            # Nothing else can be checked without good settings; the one check says why.
            body["checks"] = {"settings": {"state": "failed", "reason": self._message}}
        return ApiResponse(503, body, {"Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)})


def _deep(request: ApiRequest) -> bool:
    return request.query.get("deep", "").strip().lower() in ("1", "true", "yes", "on")
