"""Telemetry with the OpenTelemetry SDK's in-memory exporters: the spans, attributes, metrics and
log fields of each kind of delivery through the real API (Entra ID and ServiceNow stand-ins on
loopback), the outbox pass and its gauges, the trace id in the work notes, and a sweep of every
exported span, metric and log record for tokens, passwords and secrets.

The wiring to the Azure Monitor distro (``from_environment``) and the cold import with telemetry
off and on are in ``test_telemetry_setup.py``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from bridge import runtime, telemetry
from bridge.api import ApiRequest, ApiResponse
from bridge.otel import OtelTelemetry
from bridge.sandbox.entra import EntraStandIn
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import metric_alert
from bridge.state.base import StateUnavailable

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
except ImportError:  # opentelemetry-sdk before 1.39 had only the older name
    from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs  # type: ignore[no-redef]

AUDIENCE = "api://azure-monitor-bridge"
CLIENT_ID = "0b7c4d3e-2f1a-4e5d-9c8b-7a6f5e4d3c2b"
# Distinctive credentials, so the sweep can look for them (and their basic-auth encoding).
SN_USER = "bridge"
SN_PASSWORD = "Pa55-telemetry-never-exported"
SN_CLIENT = "bridge-oauth-client"
SN_SECRET = "client-s3cret-telemetry-never-exported"
KEY = "7a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
REFERENCE = re.compile(r"Azure Monitor ITSM bridge operation: ([0-9a-f]{32})")
MINT = "(mint a good token)"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


# ---------------------------------------------------------------------- what was exported


@dataclass
class Exported:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: Any
    telemetry: OtelTelemetry
    tracer_provider: TracerProvider
    tokens: list[str] = field(default_factory=list)  # every Entra token the test sent

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def calls_under(self, parent: ReadableSpan) -> list[ReadableSpan]:
        return [
            s for s in self.finished()
            if s.kind is SpanKind.CLIENT and s.parent is not None and s.parent.span_id == parent.context.span_id
        ]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of metric ``name`` as of now (cumulative)."""
        data = self.metrics.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return found

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], int]:
        return {tuple(sorted(attrs.items())): point.value for attrs, point in self.points(name)}

    def gauge(self, name: str) -> float | None:
        values = [point.value for _, point in self.points(name)]
        assert len(values) <= 1
        return values[0] if values else None

    def records(self, event: str | None = None) -> list[Any]:
        records = [item.log_record for item in self.logs.get_finished_logs()]
        return [r for r in records if event is None or (r.attributes or {}).get("bridge_event") == event]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def exported() -> Iterator[Exported]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogs()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    tel = OtelTelemetry(tracer_provider, meter_provider, logger_provider)
    bridge_logger = logging.getLogger("bridge")
    level = bridge_logger.level
    bridge_logger.setLevel(logging.INFO)
    telemetry.install(tel)
    try:
        yield Exported(spans, reader, logs, tel, tracer_provider)
    finally:
        telemetry.reset()
        tel.close()
        bridge_logger.setLevel(level)
        meter_provider.shutdown()
        tracer_provider.shutdown()


# ---------------------------------------------------------------------- the bridge under test


@pytest.fixture(scope="module")
def snow() -> Iterator[ServiceNowStandIn]:
    with ServiceNowStandIn(username=SN_USER, password=SN_PASSWORD, client_id=SN_CLIENT, client_secret=SN_SECRET) as s:
        yield s


@dataclass
class Bridge:
    rt: runtime.Runtime
    entra: EntraStandIn
    snow: ServiceNowStandIn
    exported: Exported

    def post(self, payload: Any, *, token: str | None = MINT, raw: bytes | None = None) -> ApiResponse:
        """POST one alert; a good token unless told otherwise (None: no Authorization header)."""
        headers = {"Content-Type": "application/json"}
        if token is MINT:
            token = self.entra.mint(audience=CLIENT_ID)
            self.exported.tokens.append(token)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else json.dumps(payload).encode()
        return self.rt.api.handle(ApiRequest.of("POST", "/api/alerts", headers, body))

    def incident(self, key: str = KEY) -> dict[str, Any]:
        rows = [r for r in self.snow.records("incident") if r["correlation_id"] == key]
        assert len(rows) == 1
        return rows[0]

    def notes(self, key: str = KEY) -> list[str]:
        return self.snow.journal("incident", self.incident(key)["sys_id"])


@pytest.fixture
def bridge(exported: Exported, entra: EntraStandIn, snow: ServiceNowStandIn, tmp_path: Path) -> Iterator[Bridge]:
    snow.reset()
    env = {
        "AUTH_TENANT_ID": entra.tenant_id,
        "AUTH_AUDIENCES": f"{AUDIENCE},{CLIENT_ID}",
        "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
        "AUTH_OPENID_CONFIG_URL": entra.openid_config_url,
        "SERVICENOW_INSTANCE_URL": snow.url,
        # OAuth with the password grant: the token form carries both the password and the secret.
        "SERVICENOW_USERNAME": SN_USER,
        "SERVICENOW_PASSWORD": SN_PASSWORD,
        "SERVICENOW_CLIENT_ID": SN_CLIENT,
        "SERVICENOW_CLIENT_SECRET": SN_SECRET,
        "ITSM_RETRY_ATTEMPTS": "2",
        "STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
        "OUTBOX_MAX_DELAY_SECONDS": "0.5",
    }
    rt = runtime.build_runtime(env, sleep=lambda seconds: None)
    try:
        yield Bridge(rt, entra, snow, exported)
    finally:
        rt.close()
        snow.faults.clear()


# ---------------------------------------------------------------------- the lifecycle, one span each


def test_created_alert_span_calls_metrics_log_and_work_note(bridge: Bridge, exported: Exported) -> None:
    response = bridge.post(metric_alert(KEY))
    assert response.status == 200 and response.body["action"] == "created"
    number = bridge.incident()["number"]

    span = exported.one("alert")
    assert span.kind is SpanKind.SERVER  # no host invocation around it: it is the request
    assert span.status.status_code is not StatusCode.ERROR
    a = attrs(span)
    assert a["alert.id"].endswith(f"/alerts/{KEY}")
    assert a["alert.correlation_id"] == KEY
    assert a["alert.type"] == "metric"
    assert a["alert.condition"] == "Fired" and a["alert.severity"] == "Sev4"
    assert (a["bridge.action"], a["bridge.outcome"], a["bridge.work_item"]) == ("created", "processed", number)
    assert a["http.response.status_code"] == 200

    # One dependency per ITSM call, children of the alert: token, lookup, CMDB, create.
    calls = exported.calls_under(span)
    operations = [(attrs(c)["http.request.method"], attrs(c)["bridge.itsm.operation"]) for c in calls]
    assert ("POST", "/oauth_token.do") in operations
    assert operations.count(("GET", "/api/now/table/incident")) == 1
    assert ("GET", "/api/now/table/cmdb_ci") in operations
    assert ("POST", "/api/now/table/incident") in operations
    host, port = bridge.snow.url.removeprefix("http://").split(":")
    for call in calls:
        c = attrs(call)
        assert call.name == f"{c['http.request.method']} {c['bridge.itsm.operation']}"
        assert (c["server.address"], c["server.port"], c["bridge.itsm"]) == (host, int(port), "servicenow")
        assert c["url.full"] == f"{bridge.snow.url}{c['url.path']}" and "?" not in c["url.full"]
        assert c["http.response.status_code"] in (200, 201)
        assert call.context.trace_id == span.context.trace_id

    # The work note names the trace, above the marker that recognises redeliveries.
    trace_id = format_trace_id(span.context.trace_id)
    note = bridge.notes()[0]
    assert REFERENCE.findall(note) == [trace_id]
    lines = note.splitlines()
    assert lines[-2] == f"Azure Monitor ITSM bridge operation: {trace_id}"
    assert lines[-1].startswith("[AzMonBridge-")

    assert exported.counts("bridge.alerts") == {
        (("action", "created"), ("alert_type", "metric"), ("outcome", "processed"), ("path", "http")): 1
    }
    [(duration_attrs, duration)] = exported.points("bridge.alert.duration")
    assert duration_attrs == {"outcome": "processed"} and duration.count == 1 and duration.sum > 0
    calls_by = exported.counts("bridge.itsm.calls")
    assert calls_by[
        (("itsm", "servicenow"), ("method", "POST"), ("operation", "/oauth_token.do"), ("status", "200"))
    ] == 1
    assert calls_by[
        (("itsm", "servicenow"), ("method", "POST"), ("operation", "/api/now/table/incident"), ("status", "201"))
    ] == 1

    [record] = exported.records("alert")
    fields = dict(record.attributes)
    assert {k: fields[k] for k in ("alertId", "correlationId", "alertType", "action", "delivery", "workItem")} == {
        "alertId": a["alert.id"], "correlationId": KEY, "alertType": "metric", "action": "created",
        "delivery": "processed", "workItem": number,
    }
    assert fields["status"] == 200 and isinstance(fields["durationMs"], int) and "error" not in fields
    assert record.trace_id == span.context.trace_id and record.span_id == span.context.span_id
    assert str(record.body).startswith("alert alertId=")


def test_updated_and_resolved_alerts_write_their_trace_into_their_notes(bridge: Bridge, exported: Exported) -> None:
    bridge.post(metric_alert(KEY))
    exported.spans.clear()
    assert bridge.post(metric_alert(KEY, value=99.0)).body["action"] == "updated"
    updated = exported.one("alert")
    assert (attrs(updated)["bridge.action"], attrs(updated)["bridge.outcome"]) == ("updated", "processed")
    assert [attrs(c)["http.request.method"] for c in exported.calls_under(updated)] == ["GET", "PATCH"]

    exported.spans.clear()
    assert bridge.post(metric_alert(KEY, "Resolved")).body["action"] == "resolved"
    resolved = exported.one("alert")
    assert (attrs(resolved)["bridge.action"], attrs(resolved)["alert.condition"]) == ("resolved", "Resolved")

    notes = bridge.notes()
    assert [REFERENCE.findall(n) for n in notes] == [
        [REFERENCE.findall(notes[0])[0]],
        [format_trace_id(updated.context.trace_id)],
        [format_trace_id(resolved.context.trace_id)],
    ]
    assert len({n.splitlines()[-1] for n in notes}) == 3  # each still ends with its own marker
    actions = {dict(k)["action"]: v for k, v in exported.counts("bridge.alerts").items()}
    assert actions == {"created": 1, "updated": 1, "resolved": 1}
    assert [r.attributes["action"] for r in exported.records("alert")] == ["created", "updated", "resolved"]


def test_ignored_redelivery_is_a_span_without_itsm_calls(bridge: Bridge, exported: Exported) -> None:
    bridge.post(metric_alert(KEY))
    exported.spans.clear()
    response = bridge.post(metric_alert(KEY))
    assert response.body["action"] == "ignored"
    span = exported.one("alert")
    assert (attrs(span)["bridge.action"], attrs(span)["bridge.outcome"]) == ("ignored", "processed")
    assert exported.calls_under(span) == []
    assert exported.counts("bridge.alerts")[
        (("action", "ignored"), ("alert_type", "metric"), ("outcome", "processed"), ("path", "http"))
    ] == 1
    assert exported.records("alert")[-1].attributes["action"] == "ignored"


def test_rejected_change_is_a_failed_span_with_the_itsm_status(bridge: Bridge, exported: Exported) -> None:
    bridge.snow.faults.status(
        400, method="POST", path=r"/api/now/table/incident$",
        body={"error": {"message": "Data Policy Exception: Category is mandatory", "detail": ""}, "status": "failure"},
    )
    response = bridge.post(metric_alert(KEY))
    assert response.status == 502

    span = exported.one("alert")
    a = attrs(span)
    assert (a["bridge.outcome"], a["http.response.status_code"]) == ("rejected", 502)
    assert span.status.status_code is StatusCode.ERROR
    assert "bridge.action" not in a and "bridge.work_item" not in a
    [create] = [c for c in exported.calls_under(span) if attrs(c)["http.request.method"] == "POST"
                and attrs(c)["bridge.itsm.operation"] == "/api/now/table/incident"]
    assert (attrs(create)["http.response.status_code"], attrs(create)["error.type"]) == (400, "400")
    assert create.status.status_code is StatusCode.ERROR

    assert exported.counts("bridge.alerts") == {
        (("action", "none"), ("alert_type", "metric"), ("outcome", "rejected"), ("path", "http")): 1
    }
    assert exported.counts("bridge.itsm.calls")[
        (("itsm", "servicenow"), ("method", "POST"), ("operation", "/api/now/table/incident"), ("status", "400"))
    ] == 1
    [record] = exported.records("alert")
    assert record.attributes["delivery"] == "rejected" and record.attributes["status"] == 502
    assert record.severity_number is not None and record.severity_number.value >= SeverityNumber.WARN.value


def test_itsm_down_queues_then_the_outbox_pass_creates_with_its_own_trace(bridge: Bridge, exported: Exported) -> None:
    down = bridge.snow.faults.status(503, path=r"/api/now/table/incident")
    response = bridge.post(metric_alert(KEY))
    assert response.status == 202

    span = exported.one("alert")
    assert (attrs(span)["bridge.outcome"], attrs(span)["http.response.status_code"]) == ("queued", 202)
    assert span.status.status_code is not StatusCode.ERROR
    statuses = {attrs(c)["http.response.status_code"] for c in exported.calls_under(span)
                if attrs(c)["bridge.itsm.operation"] == "/api/now/table/incident"}
    assert statuses == {503}
    assert exported.counts("bridge.alerts") == {
        (("action", "none"), ("alert_type", "metric"), ("outcome", "queued"), ("path", "http")): 1
    }
    assert exported.records("alert")[0].attributes["delivery"] == "queued"

    # While it waits, the sweep's gauges show it.
    bridge.rt.worker.tick()
    assert exported.gauge("bridge.outbox.pending") == 1
    assert exported.gauge("bridge.outbox.oldest_pending_age") is not None
    assert exported.gauge("bridge.outbox.dead_letters") == 0
    assert exported.gauge("bridge.credential.refused") == 0
    assert bridge.snow.faults.fired(down) >= 1
    bridge.snow.faults.clear()

    exported.spans.clear()
    result = bridge.rt.reconciler.run(KEY)
    assert result.wrote
    outbox = exported.one("outbox pass")
    assert outbox.kind is SpanKind.CONSUMER
    o = attrs(outbox)
    assert (o["alert.correlation_id"], o["alert.type"], o["bridge.action"], o["bridge.outcome"]) == (
        KEY, "metric", "created", "processed",
    )
    assert o["bridge.attempt"] >= 2 and o["bridge.work_item"] == bridge.incident()["number"]
    assert any(attrs(c)["http.request.method"] == "POST" for c in exported.calls_under(outbox))
    assert REFERENCE.findall(bridge.notes()[0]) == [format_trace_id(outbox.context.trace_id)]
    assert exported.counts("bridge.alerts")[
        (("action", "created"), ("alert_type", "metric"), ("outcome", "processed"), ("path", "outbox"))
    ] == 1
    [line] = exported.records("outbox")
    assert {k: line.attributes[k] for k in ("correlationId", "action", "delivery", "workItem", "alertType")} == {
        "correlationId": KEY, "action": "created", "delivery": "processed", "workItem": o["bridge.work_item"],
        "alertType": "metric",
    }
    assert line.attributes["attempt"] == o["bridge.attempt"]
    assert line.trace_id == outbox.context.trace_id

    bridge.rt.worker.tick()
    assert exported.gauge("bridge.outbox.pending") == 0
    assert exported.gauge("bridge.outbox.oldest_pending_age") == 0


def test_nothing_recorded_and_itsm_down_is_unavailable(
    bridge: Bridge, exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StateUnavailable("the state store is unreachable")

    monkeypatch.setattr(bridge.rt.reconciler.store, "load", broken)
    bridge.snow.faults.status(503, path=r"/api/now/table/incident")
    response = bridge.post(metric_alert(KEY))
    assert response.status == 503

    span = exported.one("alert")
    a = attrs(span)
    assert (a["bridge.outcome"], a["error.type"], a["http.response.status_code"]) == (
        "unavailable", "StateUnavailable", 503,
    )
    assert span.status.status_code is StatusCode.ERROR
    assert exported.counts("bridge.alerts") == {
        (("action", "none"), ("alert_type", "metric"), ("outcome", "unavailable"), ("path", "http")): 1
    }
    [record] = exported.records("alert")
    assert record.attributes["error"].startswith("StateUnavailable: ")


def test_refusals_before_any_itsm_work(bridge: Bridge, exported: Exported) -> None:
    assert bridge.post(metric_alert(KEY), token=None).status == 401
    assert bridge.post(None, raw=b"{not json").status == 400
    spans = exported.named("alert")
    assert [(attrs(s)["bridge.outcome"], attrs(s)["alert.type"], attrs(s)["error.type"]) for s in spans] == [
        ("unauthorized", "unknown", "InvalidToken"), ("invalid", "unknown", "PayloadError"),
    ]
    assert all("alert.id" not in attrs(s) and exported.calls_under(s) == [] for s in spans)
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans)  # the caller's fault, not ours
    outcomes = {dict(k)["outcome"]: v for k, v in exported.counts("bridge.alerts").items()}
    assert outcomes == {"unauthorized": 1, "invalid": 1}
    assert [r.attributes["status"] for r in exported.records("alert")] == [401, 400]


def test_credential_refused_and_dead_letter_gauges(bridge: Bridge, exported: Exported) -> None:
    bridge.snow.faults.status(403, path=r"/api/now/table/incident")
    assert bridge.post(metric_alert(KEY)).status == 202
    bridge.snow.faults.clear()
    other = "8b2c3d4e-5f6a-4b7c-9d8e-1f2a3b4c5d6e"
    bridge.snow.faults.status(400, method="POST", path=r"/api/now/table/incident$")
    assert bridge.post(metric_alert(other)).status == 502
    bridge.rt.worker.tick()
    assert exported.gauge("bridge.credential.refused") == 1
    assert exported.gauge("bridge.outbox.dead_letters") == 1
    assert exported.gauge("bridge.outbox.pending") == 1  # the held one


# ---------------------------------------------------------------------- the Function's invocation


def test_the_host_invocation_is_the_parent_of_the_alert_span(
    bridge: Bridge, exported: Exported, user_functions: dict[str, Callable[..., Any]]
) -> None:
    import azure.functions as func

    runtime.install(bridge.rt.api, bridge.rt)
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        context = SimpleNamespace(
            trace_context=SimpleNamespace(trace_parent=f"00-{trace_id}-{parent_id}-01", trace_state="az=1")
        )
        token = bridge.entra.mint(audience=CLIENT_ID)
        request = func.HttpRequest(
            method="POST", url="/api/alerts", body=json.dumps(metric_alert(KEY)).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = user_functions["alerts"](request, context)
        assert response.status_code == 200
        # Without a context (or with a broken trace parent) the span is a root of its own.
        other = SimpleNamespace(trace_context=SimpleNamespace(trace_parent="not-a-traceparent", trace_state=None))
        request2 = func.HttpRequest(
            method="POST", url="/api/alerts", body=json.dumps(metric_alert(KEY, value=5.0)).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert user_functions["alerts"](request2, other).status_code == 200
    finally:
        runtime.reset()
    first, second = exported.named("alert")
    assert format_trace_id(first.context.trace_id) == trace_id
    assert first.parent is not None and format_span_id(first.parent.span_id) == parent_id
    assert first.kind is SpanKind.INTERNAL
    assert REFERENCE.findall(bridge.notes()[0]) == [trace_id]
    assert second.parent is None and second.kind is SpanKind.SERVER
    assert format_trace_id(second.context.trace_id) != trace_id


def test_the_host_invocation_is_the_parent_of_an_outbox_pass(
    bridge: Bridge, exported: Exported, user_functions: dict[str, Callable[..., Any]]
) -> None:
    import azure.functions as func

    bridge.snow.faults.status(503, path=r"/api/now/table/incident")
    assert bridge.post(metric_alert(KEY)).status == 202
    bridge.snow.faults.clear()
    runtime.install(bridge.rt.api, bridge.rt)
    try:
        trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        trace = SimpleNamespace(trace_parent=f"00-{trace_id}-{parent_id}-01", trace_state=None)
        context = SimpleNamespace(trace_context=trace)
        user_functions["outbox"](func.QueueMessage(body=json.dumps({"key": KEY}).encode()), context)
    finally:
        runtime.reset()
    (passed,) = [s for s in exported.named("outbox pass") if s.attributes.get("bridge.action") == "created"]
    assert format_trace_id(passed.context.trace_id) == trace_id
    assert passed.parent is not None and format_span_id(passed.parent.span_id) == parent_id
    assert passed.kind is SpanKind.INTERNAL
    assert REFERENCE.findall(bridge.notes()[0]) == [trace_id]


def test_itsm_calls_are_not_recorded_twice_when_requests_is_instrumented(bridge: Bridge, exported: Exported) -> None:
    """The Functions worker's distro instruments requests; the bridge's own spans suppress it."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    instrumentor = RequestsInstrumentor()
    instrumentor.instrument(tracer_provider=exported.tracer_provider)
    try:
        assert bridge.post(metric_alert(KEY)).status == 200
    finally:
        instrumentor.uninstrument()
    clients = [s for s in exported.finished() if s.kind is SpanKind.CLIENT]
    itsm = [s for s in clients if "bridge.itsm" in attrs(s)]
    assert len(itsm) >= 4
    # Only the token verifier's key fetch (Entra ID, not the ITSM) may come from the instrumentation.
    assert all(bridge.snow.url.split("//")[1] not in str(attrs(s).get("url.full", attrs(s).get("http.url", "")))
               for s in clients if s not in itsm)


# ---------------------------------------------------------------------- nothing secret, anywhere


def test_no_token_password_or_secret_in_any_span_metric_or_log(bridge: Bridge, exported: Exported) -> None:
    bridge.post(metric_alert(KEY))
    bridge.post(metric_alert(KEY, value=42.0))
    bridge.post(metric_alert(KEY, "Resolved"))
    bridge.snow.faults.status(401, path=r"/api/now/table/incident")  # re-authentication, token sent again
    bridge.post(metric_alert("9c3d4e5f-6a7b-4c8d-8e9f-2a3b4c5d6e7f"))
    bridge.snow.faults.clear()
    bridge.post(metric_alert(KEY), token="eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl")  # forged: 401
    exported.tokens.append("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl")
    bridge.rt.worker.tick()

    texts: list[str] = []
    for span in exported.finished():
        texts += [span.name, str(span.status.description or ""), json.dumps(attrs(span), default=str)]
        texts += [json.dumps({e.name: dict(e.attributes or {})}, default=str) for e in span.events]
    data = exported.metrics.get_metrics_data()
    texts.append(data.to_json() if data is not None else "")
    for record in exported.records():
        texts += [str(record.body), json.dumps(dict(record.attributes or {}), default=str)]
    everything = "\n".join(texts)

    access_tokens = list(bridge.snow._tokens._access)  # what the stand-in issued (its own bookkeeping)
    assert access_tokens, "the adapter fetched no OAuth token; the sweep would prove nothing"
    forbidden = [SN_PASSWORD, SN_SECRET, *access_tokens, *exported.tokens]
    leaked = [secret for secret in forbidden if secret in everything]
    assert leaked == []
    assert not JWT.search(everything)
    for word in ("Bearer", "client_secret", "password=", "sysparm_query", "grant_type"):
        assert word not in everything, word
    assert len(exported.records("alert")) == 5 and len(exported.finished()) > 10


# ---------------------------------------------------------------------- telemetry off


def test_off_the_work_note_is_unchanged() -> None:
    from bridge.alerts import parse_alert
    from bridge.mapping import build_work_item, resolution, update_note
    from bridge.rules import MappingRules

    assert telemetry.current().enabled is False
    alert = parse_alert(metric_alert(KEY))
    rules = MappingRules()
    assert build_work_item(alert, rules, reference=None) == build_work_item(alert, rules)
    assert update_note(alert, None) == update_note(alert)
    assert resolution(alert, rules, None) == resolution(alert, rules)
    # Only a trace id is ever written, whatever a caller passes.
    assert update_note(alert, "not a trace id\nForged line") == update_note(alert)
    with_id = update_note(alert, "0af7651916cd43dd8448eb211c80319c").splitlines()
    assert with_id[:-2] == update_note(alert).splitlines()[:-1]
    assert with_id[-2:] == ["Azure Monitor ITSM bridge operation: 0af7651916cd43dd8448eb211c80319c",
                            update_note(alert).splitlines()[-1]]


def test_off_nothing_is_recorded_and_the_no_op_allocates_no_span() -> None:
    off = telemetry.current()
    assert off.enabled is False and off.current_reference() is None
    with off.alert() as first, off.alert() as second, off.invocation("00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
        first.set("alert.id", "x")
        first.set_outcome("processed")
        assert first is second and first.reference() is None
    assert off.alert() is off.alert() and off.itsm_call("X", "GET", "https://x/y") is off.itsm_call("X", "GET", "z")
    assert telemetry.configure({}) is off  # no connection string: stays off


# ---------------------------------------------------------------------- telemetry never fails the work


def test_a_telemetry_failure_never_changes_an_answer_or_a_pass(
    bridge: Bridge, exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge import api as api_module
    from bridge import reconcile as reconcile_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("telemetry bug")

    monkeypatch.setattr(api_module, "_report", broken)
    monkeypatch.setattr(reconcile_module.Reconciler, "_report_pass", broken)
    monkeypatch.setattr(exported.telemetry, "outbox", broken)
    bridge.snow.faults.status(503, path=r"/api/now/table/incident")
    assert bridge.post(metric_alert(KEY)).status == 202
    bridge.snow.faults.clear()
    assert bridge.rt.reconciler.run(KEY).wrote  # the pass still writes, and says so
    bridge.rt.worker.tick()  # and the sweep still sweeps
    assert [r.attributes["delivery"] for r in exported.records("alert")] == ["queued"]
    assert [r.attributes["delivery"] for r in exported.records("outbox")] == ["processed"]
    assert bridge.incident()["state"] == "1"
