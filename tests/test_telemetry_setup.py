"""Turning telemetry on: nothing imported while it is off, the Azure Monitor distro configured from
the environment (once, and not at all when the Functions worker configured it already), the
credential its authentication string asks for, and a failure to set it up leaving the bridge
serving without it. The spans and metrics themselves are in ``test_telemetry.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge import otel, telemetry
from bridge.otel import credential_from, distro_options, from_environment, path_template

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
CLIENT_ID = "5d2f6a1e-7b3c-4d8e-9f0a-1b2c3d4e5f60"


@pytest.fixture(autouse=True)
def off_again() -> Iterator[None]:
    yield
    telemetry.reset()


def _python(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON value."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed code
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


PROBE = """
import json, sys
import function_app
from bridge import telemetry
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry" or m.startswith("azure.monitor")
               or m == "bridge.otel")
print(json.dumps({"heavy": heavy, "on": telemetry.current().enabled, "kind": type(telemetry.current()).__name__,
                  "instrumented": sorted(m for m in sys.modules if m.startswith("opentelemetry.instrumentation.")
                                         and m.split(".")[2] in ("requests", "urllib", "urllib3", "httpx"))}))
"""


def test_off_import_function_app_imports_no_opentelemetry() -> None:
    seen = _python(PROBE)
    assert seen == {"heavy": [], "on": False, "kind": "Telemetry", "instrumented": []}


def test_on_import_function_app_configures_the_distro_without_http_instrumentations() -> None:
    # Everything stays on this machine: ingestion on a closed loopback port, no statsbeat, no
    # control plane, and the Functions resource detector (the VM one would ask IMDS).
    seen = _python(
        PROBE + """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
assert isinstance(trace.get_tracer_provider(), TracerProvider)
first = telemetry.current()
assert telemetry.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}) is first
with first.alert() as span:
    print(json.dumps({"reference": span.reference()}))
""",
        APPLICATIONINSIGHTS_CONNECTION_STRING=CONNECTION,
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="azure_functions",
    )
    assert len(seen["reference"]) == 32 and int(seen["reference"], 16) != 0


def test_on_the_probe_reports_the_distro_loaded() -> None:
    seen = _python(
        PROBE,
        APPLICATIONINSIGHTS_CONNECTION_STRING=CONNECTION,
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="azure_functions",
    )
    assert seen["on"] is True and seen["kind"] == "OtelTelemetry"
    assert "bridge.otel" in seen["heavy"] and "azure.monitor.opentelemetry" in seen["heavy"]
    assert seen["instrumented"] == []  # requests, urllib, urllib3, httpx: never instrumented by the bridge


# ---------------------------------------------------------------------- from_environment


def test_distro_options() -> None:
    options = distro_options({"APPLICATIONINSIGHTS_CONNECTION_STRING": f" {CONNECTION} "})
    assert options == {
        "connection_string": CONNECTION,
        "logger_name": "bridge",
        "enable_live_metrics": False,
        "instrumentation_options": {
            name: {"enabled": False}
            for name in (
                "requests", "urllib", "urllib3", "httpx", "httpx2", "azure_sdk",
                "django", "fastapi", "flask", "psycopg2",
            )
        },
        "sampling_ratio": 1.0,
    }
    # A sampler of the operator's choice is the distro's to read; the bridge does not override it.
    chosen = distro_options({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "OTEL_TRACES_SAMPLER": "x"})
    assert "sampling_ratio" not in chosen


def test_the_authentication_string_asks_for_a_managed_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.identity

    class Recorded:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", Recorded)
    env = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION,
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": f"Authorization=AAD;ClientId={CLIENT_ID}",
    }
    credential = distro_options(env)["credential"]
    assert isinstance(credential, Recorded) and credential.kwargs == {"client_id": CLIENT_ID}
    system_assigned = credential_from("authorization=aad")
    assert isinstance(system_assigned, Recorded) and system_assigned.kwargs == {}
    spaced = credential_from(" ClientId = x ; Authorization = AAD ;")
    assert isinstance(spaced, Recorded) and spaced.kwargs == {"client_id": "x"}
    assert credential_from(None) is None
    assert credential_from("") is None
    assert credential_from("Authorization=Key") is None
    assert credential_from("garbage") is None


def test_configures_the_distro_when_nobody_did(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.monitor.opentelemetry as distro

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(distro, "configure_azure_monitor", lambda **kw: calls.append(kw))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.delenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", raising=False)
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION, "FUNCTIONS_WORKER_RUNTIME": "python"}
    made = from_environment(env)
    assert made.enabled and [c["connection_string"] for c in calls] == [CONNECTION]
    assert calls[0] == distro_options(env)
    # On Functions, as the worker does: the Functions resource detector rather than the VM one.
    assert os.environ["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] == "azure_functions"


def test_reuses_the_providers_the_functions_worker_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.monitor.opentelemetry as distro

    def never(**kw: Any) -> None:
        raise AssertionError("configured twice")

    spans = InMemorySpanExporter()
    worker_tracer = TracerProvider()
    worker_tracer.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(distro, "configure_azure_monitor", never)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: worker_tracer)
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: MeterProvider())
    made = from_environment({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION})
    with made.alert():
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["alert"]


def test_a_failed_setup_leaves_telemetry_off_and_says_so_without_the_connection_string(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(env: Any) -> Any:
        raise ValueError(f"invalid connection string {env['APPLICATIONINSIGHTS_CONNECTION_STRING']}")

    monkeypatch.setattr(otel, "from_environment", broken)
    with caplog.at_level(logging.ERROR, logger="bridge.telemetry"):
        made = telemetry.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION})
    assert made.enabled is False and telemetry.current() is made
    assert "telemetry stays off" in caplog.text and "ValueError" in caplog.text
    assert "InstrumentationKey" not in caplog.text


def test_configure_keeps_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(env: Any) -> Any:
        raise AssertionError("configured again")

    monkeypatch.setattr(otel, "from_environment", never)
    installed = otel.OtelTelemetry(TracerProvider(), MeterProvider())
    telemetry.install(installed)
    assert telemetry.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": CONNECTION}) is installed
    assert telemetry.configure({}) is installed


# ---------------------------------------------------------------------- small pieces


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/now/table/incident", "/api/now/table/incident"),
        ("/api/now/table/incident/0123456789abcdef0123456789abcdef", "/api/now/table/incident/{id}"),
        ("/oauth_token.do", "/oauth_token.do"),
        ("/rest/api/3/issue/OPS-1234/transitions", "/rest/api/3/issue/{id}/transitions"),
        ("/rest/api/2/issue/10042/comment", "/rest/api/2/issue/{id}/comment"),
        ("/x/rest/servicedeskapi/request/5d2f6a1e-7b3c-4d8e-9f0a-1b2c3d4e5f60", "/x/rest/servicedeskapi/request/{id}"),
        ("/", "/"),
    ],
)
def test_path_template(path: str, template: str) -> None:
    assert path_template(path) == template


def test_outcome_of() -> None:
    assert [telemetry.outcome_of(s) for s in (200, 202, 400, 401, 403, 413, 502, 503, 404, 504)] == [
        "processed", "queued", "invalid", "unauthorized", "forbidden", "too_large", "rejected", "unavailable",
        "invalid", "unavailable",
    ]


def test_itsm_call_url_never_carries_user_info_or_query() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    made = otel.OtelTelemetry(provider, MeterProvider())
    with made.itsm_call("Tracker", "GET", "https://user:pa55@itsm.example.com:8443/api/x/123456?q=secret#frag") as call:
        call.status(200)
    with pytest.raises(RuntimeError), made.itsm_call("Tracker", "POST", "http://[::1]/token"):
        raise RuntimeError("boom")
    with made.itsm_call("Tracker", "GET", "http://[::1/unparseable") as call:  # no exception from telemetry
        call.status(200)
    first, second, third = (dict(s.attributes or {}) for s in spans.get_finished_spans())
    assert (third["url.full"], third["http.response.status_code"]) == ("", 200)
    assert first["url.full"] == "https://itsm.example.com:8443/api/x/123456"
    assert (first["server.address"], first["server.port"]) == ("itsm.example.com", 8443)
    assert first["url.path"] == "/api/x/123456"
    assert (first["bridge.itsm"], first["bridge.itsm.operation"]) == ("tracker", "/api/x/{id}")
    assert (second["url.full"], second["server.port"]) == ("http://[::1]/token", 80)
    assert second["error.type"] == "RuntimeError"
    assert "pa55" not in repr(first) and "secret" not in repr(first)


def test_long_attribute_texts_are_cut() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    made = otel.OtelTelemetry(provider, MeterProvider())
    with made.alert() as span:
        span.set("alert.id", "/subscriptions/" + "x" * 5000)
        span.set("bridge.attempt", 3)
        span.set("bridge.work_item", None)
    [done] = spans.get_finished_spans()
    attributes = dict(done.attributes or {})
    assert len(attributes["alert.id"]) == 1024 and attributes["alert.id"].endswith("\u2026")
    assert attributes["bridge.attempt"] == 3 and "bridge.work_item" not in attributes
