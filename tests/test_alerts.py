"""Parsing common-schema alerts (bridge.alerts): every documented service, and every way a body
can be unusable. Fixtures and their provenance: tests/fixtures/alerts/README.md."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from bridge.alerts import SCHEMA_ID, Alert, AlertKind, Condition, parse_alert, parse_timestamp, thaw
from bridge.errors import PayloadError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alerts"
SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
SAMPLE_SUB = "11111111-1111-1111-1111-111111111111"


def raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def load(name: str) -> Alert:
    return parse_alert((FIXTURES / name).read_bytes())


def minimal(**essentials: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "alertId": f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/"
        "01234567-89ab-cdef-0123-456789abcdef",
        "monitorCondition": "Fired",
    }
    base.update(essentials)
    return {"schemaId": SCHEMA_ID, "data": {"essentials": base, "alertContext": {}}}


# --------------------------------------------------------------------------- every fixture

# file: (kind, monitor condition, severity, alert rule, stateless, number of conditions)
EXPECTED: dict[str, tuple[AlertKind, str, str | None, str | None, bool, int]] = {
    "metric_static_fired.testaction.json": (
        AlertKind.METRIC, "Fired", "Sev4", "test-metricAlertRule", False, 1,
    ),
    "metric_static_resolved.json": (AlertKind.METRIC, "Resolved", "Sev3", "WCUS-R2-Gen2", False, 1),
    "metric_dynamic_fired.testaction.json": (
        AlertKind.METRIC, "Fired", "Sev4", "test-dynamicMetricAlertRule", False, 1,
    ),
    "metric_availability_fired.testaction.json": (
        AlertKind.METRIC, "Fired", "Sev4", "test-availabilityTest-test-applicationInsights", False, 1,
    ),
    "log_alerts_v2_fired.testaction.json": (AlertKind.LOG, "Fired", "Sev4", "test-logAlertRule-v2", False, 1),
    "log_alerts_v2_simple_fired.constructed.json": (
        AlertKind.LOG, "Fired", "Sev3", "test-simpleLogAlertRule", False, 1,
    ),
    "log_v1_log_analytics_fired.testaction.json": (
        AlertKind.LOG_V1, "Fired", "Sev4", "test-logAlertRule-v1-numResults", False, 1,
    ),
    "log_v1_application_insights_fired.constructed.json": (
        AlertKind.LOG_V1, "Fired", "Sev2", "test-appInsightsLogAlertRule-v1", False, 1,
    ),
    "activity_log_administrative_fired.testaction.json": (
        AlertKind.ACTIVITY_LOG, "Fired", "Sev4", "test-activityLogAlertRule", True, 0,
    ),
    "activity_log_policy_fired.constructed.json": (
        AlertKind.ACTIVITY_LOG, "Fired", "Sev4", "test-policyActivityLogAlertRule", True, 0,
    ),
    "activity_log_autoscale_fired.constructed.json": (
        AlertKind.ACTIVITY_LOG, "Fired", "Sev4", "test-autoscaleActivityLogAlertRule", True, 0,
    ),
    "activity_log_security_fired.constructed.json": (
        AlertKind.ACTIVITY_LOG, "Fired", "Sev1", "test-securityActivityLogAlertRule", True, 0,
    ),
    "service_health_incident.testaction.json": (
        AlertKind.SERVICE_HEALTH, "Fired", "Sev4", "test-ServiceHealthAlertRule", True, 0,
    ),
    "service_health_maintenance.constructed.json": (
        AlertKind.SERVICE_HEALTH, "Fired", "Sev3", "test-ServiceHealthMaintenanceRule", True, 0,
    ),
    "resource_health_fired.testaction.json": (
        AlertKind.RESOURCE_HEALTH, "Fired", "Sev4", "test-ResourceHealthAlertRule", True, 0,
    ),
    "resource_health_nospace_fired.constructed.json": (
        AlertKind.RESOURCE_HEALTH, "Fired", "Sev2", "test-ResourceHealthAlertRule-2", True, 0,
    ),
    "smart_detector_fired.testaction.json": (
        AlertKind.SMART_DETECTOR, "Fired", "Sev4", "test-SmartAlertRule", False, 0,
    ),
    "prometheus_fired.constructed.json": (
        AlertKind.PROMETHEUS, "Fired", "Sev1", "myRuleGroup/SQLDown", False, 0,
    ),
    "budget_forecasted.testaction.json": (AlertKind.BUDGET, "Fired", None, None, True, 0),
}


def test_every_fixture_is_covered() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(EXPECTED)


def test_shared_samples_are_exact_copies() -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
    if not shared.is_dir():  # a clone without shared/ beside it: the copies are all there is
        return
    for sample in shared.glob("*.json"):
        assert (FIXTURES / sample.name).read_bytes() == sample.read_bytes(), sample.name


BUNDLED = Path(__file__).resolve().parents[1] / "bridge" / "sandbox" / "samples"
SANDBOX_ALERT = "/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/"
METRIC_VALUE = ("data", "alertContext", "condition", "allOf", 0, "metricValue")
# The sandbox's own samples (not fixtures): each is its documented source with only these changes,
# so that sent in order they tell one alert's story (README, "Sample alerts that chain").
DERIVED: dict[str, tuple[str, dict[tuple[str | int, ...], Any]]] = {
    "metric_static_fired_again.sandbox.json": ("metric_static_fired.testaction.json", {METRIC_VALUE: 97.5}),
    "metric_static_resolved.sandbox.json": ("metric_static_fired.testaction.json", {
        ("data", "essentials", "monitorCondition"): "Resolved",
        ("data", "essentials", "resolvedDateTime"): "2025-04-15T18:32:12.851Z",
        METRIC_VALUE: 0,
    }),
    "log_alerts_v2_fired.sandbox.json": ("log_alerts_v2_fired.testaction.json", {
        ("data", "essentials", "alertId"): SANDBOX_ALERT + "9f0e6a52-3c1d-4b7e-8a2f-6d5c4b3a2f10",
    }),
}


def test_bundled_samples_are_the_test_fixtures() -> None:
    # The demo and `send` use the copies inside the package; they must not drift from these.
    bundled = sorted(p for p in BUNDLED.glob("*.json") if p.name not in DERIVED)
    assert len(bundled) == 5
    for sample in bundled:
        assert (FIXTURES / sample.name).read_bytes() == sample.read_bytes(), sample.name


def test_derived_sandbox_samples_differ_from_their_fixture_only_where_they_say() -> None:
    assert sorted(p.name for p in BUNDLED.glob("*.sandbox.json")) == sorted(DERIVED)
    for name, (source, changes) in DERIVED.items():
        expected = raw(source)
        for path, value in changes.items():
            node: Any = expected
            for step in path[:-1]:
                node = node[step]
            node[path[-1]] = value
        derived = json.loads((BUNDLED / name).read_text(encoding="utf-8"))
        assert derived == expected, name
        parse_alert((BUNDLED / name).read_bytes())  # a usable alert


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_kind_and_essentials(name: str) -> None:
    kind, condition, severity, rule, stateless, n_conditions = EXPECTED[name]
    alert = load(name)
    essentials = raw(name)["data"]["essentials"]

    assert alert.kind is kind
    assert alert.monitor_condition == condition
    assert alert.is_resolved is (condition == "Resolved")
    assert alert.severity == severity
    assert alert.alert_rule == rule
    assert alert.is_stateless is stateless
    assert len(alert.conditions) == n_conditions
    assert alert.alert_id == essentials["alertId"]
    assert alert.monitoring_service == essentials["monitoringService"]
    assert alert.signal_type == essentials["signalType"]
    assert alert.target_ids == tuple(essentials["alertTargetIDs"] or ())
    assert alert.configuration_items == tuple(essentials.get("configurationItems") or ())
    assert alert.origin_alert_id == essentials["originAlertId"]
    assert alert.description == essentials["description"]
    assert alert.fired_at is not None and alert.fired_at.tzinfo is UTC
    # Nothing is dropped: the views hold the whole payload.
    assert thaw(alert.payload) == raw(name)
    assert thaw(alert.essentials) == essentials
    assert thaw(alert.context) == raw(name)["data"]["alertContext"]


def test_metric_static_resolved_sample() -> None:
    alert = load("metric_static_resolved.json")
    assert alert.fired_at == datetime(2019, 3, 22, 13, 58, 24, 371321, tzinfo=UTC)
    assert alert.resolved_at == datetime(2019, 3, 22, 14, 3, 16, 224631, tzinfo=UTC)
    assert alert.conditions == (
        Condition(
            name="Percentage CPU",
            operator="GreaterThan",
            threshold="25",
            value="7.727",
            time_aggregation="Average",
            dimensions=(("ResourceId", "3efad9dc-3d50-4eac-9c87-8b3fd6f97e4e"),),
        ),
    )
    assert dict(alert.custom_properties or {}) == {"Key1": "Value1", "Key2": "Value2"}
    assert alert.context["properties"] is None
    assert alert.subscription_ids == frozenset({"<subscription id>"})


def test_metric_static_fired_sample() -> None:
    alert = load("metric_static_fired.testaction.json")
    assert alert.fired_at == datetime(2025, 4, 15, 18, 17, 12, 851000, tzinfo=UTC)
    assert alert.resolved_at is None
    assert alert.conditions == (
        Condition("Transactions", "GreaterThan", "0", "100", "Total", (("ApiName", "GetBlob"),)),
    )
    assert alert.subscription_ids == frozenset({SAMPLE_SUB})


def test_dynamic_and_availability_conditions() -> None:
    dynamic = load("metric_dynamic_fired.testaction.json")
    assert dynamic.conditions == (Condition("Transactions", "GreaterThan", "0.3", "78.09", "Average", ()),)
    webtest = load("metric_availability_fired.testaction.json")
    # metricValue 5.0 is displayed as a whole number
    assert webtest.conditions == (Condition("FailedLocation", "GreaterThan", "2", "5", "Sum", ()),)


def test_log_v2_conditions_including_null_criteria() -> None:
    v2 = load("log_alerts_v2_fired.testaction.json")
    assert v2.conditions == (
        Condition("Heartbeat", "GreaterThan", "0", "3", "Count", (("Computer", "test-computer"),)),
    )
    simple = load("log_alerts_v2_simple_fired.constructed.json")
    (condition,) = simple.conditions
    assert condition.name is not None and condition.name.startswith("exceptions | where")
    assert (condition.operator, condition.threshold, condition.time_aggregation) == (None, None, None)
    assert condition.value == "1"
    assert condition.dimensions == ()
    assert simple.description is None


def test_log_v1_condition_is_the_query() -> None:
    la = load("log_v1_log_analytics_fired.testaction.json")
    assert la.conditions == (Condition("Heartbeat", "Greater Than", "0", "1", None, ()),)
    ai = load("log_v1_application_insights_fired.constructed.json")
    (condition,) = ai.conditions
    assert condition.operator == "Less Than"
    assert condition.threshold == "10000"
    assert condition.value == "2"
    assert condition.dimensions == (("IP", "1.1.1.1"),)
    # The V1 interval timestamps are not ISO and are not parsed: kept raw.
    assert ai.context["SearchIntervalStartTimeUtc"] == "3/22/2019 1:36:33 PM"
    assert ai.custom_properties is None


def test_log_analytics_service_with_v2_context_reads_as_v2() -> None:
    body = raw("log_alerts_v2_fired.testaction.json")
    body["data"]["essentials"]["monitoringService"] = "Log Analytics"
    alert = parse_alert(body)
    assert alert.kind is AlertKind.LOG
    assert alert.conditions[0].name == "Heartbeat"


def test_service_health_quirks_are_kept_raw() -> None:
    incident = load("service_health_incident.testaction.json")
    assert incident.context["channels"] == 1
    assert incident.context["eventSource"] == 2
    assert incident.context["level"] == 3
    assert isinstance(incident.context["properties"]["impactedServices"], tuple)
    assert incident.configuration_items == ()
    maintenance = load("service_health_maintenance.constructed.json")
    assert isinstance(maintenance.context["properties"]["impactedServices"], str)
    assert maintenance.context["claims"] is None


def test_activity_log_claims_string_is_kept_raw() -> None:
    policy = load("activity_log_policy_fired.constructed.json")
    assert isinstance(policy.context["claims"], str)
    assert json.loads(policy.context["claims"])["ver"] == "1.0"
    autoscale = load("activity_log_autoscale_fired.constructed.json")
    assert autoscale.context["properties"]["newInstancesCount"] == "10"


def test_resource_health_both_spellings() -> None:
    spaced = load("resource_health_fired.testaction.json")
    unspaced = load("resource_health_nospace_fired.constructed.json")
    assert spaced.monitoring_service == "Resource Health"
    assert unspaced.monitoring_service == "ResourceHealth"
    assert spaced.kind is unspaced.kind is AlertKind.RESOURCE_HEALTH


def test_budget_alert_with_nulls() -> None:
    alert = load("budget_forecasted.testaction.json")
    assert alert.alert_rule is None
    assert alert.severity is None
    assert alert.signal_type is None
    assert alert.target_ids == ()
    assert alert.origin_alert_id is None
    assert alert.configuration_items == ("budgets",)
    assert alert.subscription_ids == frozenset({SUB})
    assert alert.context["AlertData"]["BudgetName"] == "Test_forcasted_budget"


def test_prometheus_and_smart_detector() -> None:
    prometheus = load("prometheus_fired.constructed.json")
    assert prometheus.context["expression"] == "sql_up > 0"
    assert prometheus.fired_at == datetime(2022, 11, 8, 8, 1, 2, 392982, tzinfo=UTC)
    smart = load("smart_detector_fired.testaction.json")
    assert smart.fired_at == datetime(2021, 10, 28, 19, 9, 9, 111508, tzinfo=UTC)
    assert smart.context["SmartDetectorId"] == "DependencyPerformanceDegradationDetector"


# --------------------------------------------------------------------------- leniency


def test_unknown_service_and_extra_fields_are_kept() -> None:
    body = minimal(monitoringService="Some Future Service", futureField={"x": [1, 2]}, severity="Sev2")
    body["data"]["alertContext"] = {"newShape": True}
    body["data"]["extraSection"] = "kept"
    body["topLevelExtra"] = 7
    alert = parse_alert(body)
    assert alert.kind is AlertKind.UNKNOWN
    assert alert.is_stateless is False
    assert alert.essentials["futureField"]["x"] == (1, 2)
    assert alert.context["newShape"] is True
    assert alert.payload["data"]["extraSection"] == "kept"
    assert alert.payload["topLevelExtra"] == 7


@pytest.mark.parametrize(
    ("service", "kind"),
    [
        (None, AlertKind.UNKNOWN),
        ("platform", AlertKind.METRIC),
        ("Activity Log - Recommendation", AlertKind.ACTIVITY_LOG),
        ("ActivityLog", AlertKind.ACTIVITY_LOG),
        ("Service Health", AlertKind.SERVICE_HEALTH),
        ("Smart Detector", AlertKind.SMART_DETECTOR),
        ("costalerts", AlertKind.BUDGET),
        ("Log Alerts V2", AlertKind.LOG),
    ],
)
def test_kind_from_monitoring_service(service: str | None, kind: AlertKind) -> None:
    assert parse_alert(minimal(monitoringService=service)).kind is kind


@pytest.mark.parametrize(
    ("sent", "kept"), [("fired", "Fired"), (" FIRED ", "Fired"), ("resolved", "Resolved")]
)
def test_monitor_condition_is_case_tolerant(sent: str, kept: str) -> None:
    assert parse_alert(minimal(monitorCondition=sent)).monitor_condition == kept


@pytest.mark.parametrize(("sent", "kept"), [("sev2", "Sev2"), ("SEV0", "Sev0"), ("Critical", "Critical")])
def test_severity_spelling(sent: str, kept: str) -> None:
    assert parse_alert(minimal(severity=sent)).severity == kept


def test_missing_alert_context_is_empty() -> None:
    body = minimal()
    del body["data"]["alertContext"]
    alert = parse_alert(body)
    assert dict(alert.context) == {}
    assert alert.conditions == ()


def test_bytes_text_and_mapping_inputs_agree() -> None:
    data = (FIXTURES / "metric_static_fired.testaction.json").read_bytes()
    from_bytes = parse_alert(data)
    assert parse_alert(data.decode("utf-8")) == from_bytes
    assert parse_alert(json.loads(data)) == from_bytes
    assert parse_alert(b"\xef\xbb\xbf" + data) == from_bytes  # a UTF-8 byte-order mark is tolerated


class _Key(str):
    """A key of a str subclass, as a caller's mapping may hold."""


class _Plain(Mapping[str, Any]):
    """A Mapping that is no dict, to freeze like any other."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_a_mapping_handed_over_is_frozen_whatever_its_kinds() -> None:
    body = minimal()
    body["data"]["customProperties"] = {
        _Key("sub"): "a", 7: "int key", "view": MappingProxyType({"x": [1, (2, 3)]}),
        "plain": _Plain({"y": [{"z": None}]}), "tuple": (True, 1.5), "set": {1},
    }
    custom = parse_alert(body).custom_properties
    assert custom is not None

    assert sorted(custom) == ["7", "plain", "set", "sub", "tuple", "view"]
    assert all(type(key) is str for key in custom)
    assert isinstance(custom["view"], MappingProxyType) and custom["view"]["x"] == (1, (2, 3))
    assert isinstance(custom["plain"], MappingProxyType) and custom["plain"]["y"][0] == {"z": None}
    assert isinstance(custom["plain"]["y"][0], MappingProxyType)
    assert custom["tuple"] == (True, 1.5) and custom["set"] == {1}  # other kinds are kept as they are
    assert thaw(custom)["view"] == {"x": [1, [2, 3]]}


def test_views_are_deeply_read_only_and_detached() -> None:
    body = raw("metric_static_fired.testaction.json")
    alert = parse_alert(body)
    body["data"]["essentials"]["alertRule"] = "changed"
    assert alert.essentials["alertRule"] == "test-metricAlertRule"
    assert isinstance(alert.payload, MappingProxyType)
    with pytest.raises(TypeError):
        alert.payload["data"]["essentials"]["alertRule"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        alert.context["condition"]["allOf"][0]["threshold"] = "1"  # type: ignore[index]
    assert isinstance(alert.context["condition"]["allOf"], tuple)
    with pytest.raises(AttributeError):
        alert.alert_rule = "x"  # type: ignore[misc]
    hash(alert)  # usable as a dict key despite the mapping fields


def test_subscription_ids_from_alert_id_and_targets() -> None:
    other = "BBBB1B1B-CC2C-DD3D-EE4E-FFFFFF5F5F5F"
    alert = parse_alert(
        minimal(alertTargetIDs=[f"/SUBSCRIPTIONS/{other}/resourceGroups/rg/providers/x/y/z", "not-a-path"])
    )
    assert alert.subscription_ids == frozenset({SUB, other.lower()})
    assert parse_alert(minimal(alertId="opaque-id")).subscription_ids == frozenset()


def test_portal_link() -> None:
    alert = load("metric_static_fired.testaction.json")
    assert alert.portal_link == (
        "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/AlertDetails.ReactView/alertId~/"
        "%2Fsubscriptions%2F11111111-1111-1111-1111-111111111111%2Fproviders%2FMicrosoft.AlertsManagement"
        "%2Falerts%2F12345678-1234-1234-1234-1234567890ab"
    )
    link = "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/Investigate/alertId/x"
    assert parse_alert(minimal(investigationLink=link)).portal_link == link


def test_alert_rule_id_in_both_spellings() -> None:
    rule = f"/subscriptions/{SUB}/resourceGroups/rg/providers/microsoft.insights/metricAlerts/r"
    assert parse_alert(minimal(alertRuleID=rule)).alert_rule_id == rule
    assert parse_alert(minimal(alertRuleId=rule)).alert_rule_id == rule
    assert parse_alert(minimal()).alert_rule_id is None


def test_empty_strings_in_lists_and_times_are_ignored() -> None:
    alert = parse_alert(minimal(configurationItems=["", " vm1 "], firedDateTime="", resolvedDateTime=None))
    assert alert.configuration_items == ("vm1",)
    assert alert.fired_at is None and alert.resolved_at is None


# --------------------------------------------------------------------------- malformed input


def with_essentials(**changes: Any) -> bytes:
    body = minimal()
    for key, value in changes.items():
        if value is _DELETE:
            del body["data"]["essentials"][key]
        else:
            body["data"]["essentials"][key] = value
    return json.dumps(body).encode()


def with_data(mutate: Callable[[dict[str, Any]], None]) -> bytes:
    body = minimal()
    mutate(body)
    return json.dumps(body).encode()


_DELETE = object()

MALFORMED: list[tuple[str, bytes | str, str]] = [
    ("not-json", b"{not json", "body"),
    ("invalid-utf8", b'{"schemaId": "\xff\xfe"}', "body"),
    ("empty", b"", "body"),
    ("whitespace", "  \n ", "body"),
    ("top-level-list", b"[]", "body"),
    ("top-level-string", b'"alert"', "body"),
    ("top-level-null", b"null", "body"),
    ("nan", b'{"schemaId": NaN}', "body"),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, "body"),
    ("schema-missing", with_data(lambda b: b.pop("schemaId")), "schemaId"),
    ("schema-wrong", with_data(lambda b: b.update(schemaId="Microsoft.Insights/activityLogs")), "schemaId"),
    ("schema-wrong-type", with_data(lambda b: b.update(schemaId=1)), "schemaId"),
    ("data-missing", with_data(lambda b: b.pop("data")), "data"),
    ("data-list", with_data(lambda b: b.update(data=[])), "data"),
    ("essentials-missing", with_data(lambda b: b["data"].pop("essentials")), "data.essentials"),
    ("essentials-string", with_data(lambda b: b["data"].update(essentials="x")), "data.essentials"),
    ("context-list", with_data(lambda b: b["data"].update(alertContext=[])), "data.alertContext"),
    ("custom-list", with_data(lambda b: b["data"].update(customProperties=["a"])), "data.customProperties"),
    ("alert-id-missing", with_essentials(alertId=_DELETE), "data.essentials.alertId"),
    ("alert-id-null", with_essentials(alertId=None), "data.essentials.alertId"),
    ("alert-id-empty", with_essentials(alertId=""), "data.essentials.alertId"),
    ("alert-id-blank", with_essentials(alertId="   "), "data.essentials.alertId"),
    ("alert-id-number", with_essentials(alertId=42), "data.essentials.alertId"),
    ("condition-missing", with_essentials(monitorCondition=_DELETE), "data.essentials.monitorCondition"),
    ("condition-other", with_essentials(monitorCondition="Active"), "data.essentials.monitorCondition"),
    ("condition-number", with_essentials(monitorCondition=1), "data.essentials.monitorCondition"),
    ("targets-string", with_essentials(alertTargetIDs="/subscriptions/x"), "data.essentials.alertTargetIDs"),
    ("targets-object", with_essentials(alertTargetIDs={"a": 1}), "data.essentials.alertTargetIDs"),
    ("targets-number-item", with_essentials(alertTargetIDs=["/x", 1]), "data.essentials.alertTargetIDs[1]"),
    ("cis-object", with_essentials(configurationItems={"a": 1}), "data.essentials.configurationItems"),
    ("cis-null-item", with_essentials(configurationItems=[None]), "data.essentials.configurationItems[0]"),
    ("severity-number", with_essentials(severity=3), "data.essentials.severity"),
    ("rule-list", with_essentials(alertRule=["r"]), "data.essentials.alertRule"),
    ("service-number", with_essentials(monitoringService=5), "data.essentials.monitoringService"),
    ("description-object", with_essentials(description={}), "data.essentials.description"),
    ("fired-words", with_essentials(firedDateTime="yesterday"), "data.essentials.firedDateTime"),
    ("fired-month-13", with_essentials(firedDateTime="2019-13-01T00:00Z"), "data.essentials.firedDateTime"),
    ("fired-number", with_essentials(firedDateTime=1553263104), "data.essentials.firedDateTime"),
    ("resolved-bad", with_essentials(resolvedDateTime="2019-3-22"), "data.essentials.resolvedDateTime"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_malformed_input_names_the_field(body: bytes | str, field: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_alert(body)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + " ")
    assert caught.value.status == 400


def test_error_message_does_not_echo_long_values() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_alert(with_essentials(monitorCondition="x" * 10_000))
    assert len(str(caught.value)) < 200


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-03-22T13:58:24.3713213Z", datetime(2019, 3, 22, 13, 58, 24, 371321, tzinfo=UTC)),
        ("2021-01-01T00:00:00.9999999Z", datetime(2021, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)),  # truncated
        ("2025-04-15T11:26:21.386Z", datetime(2025, 4, 15, 11, 26, 21, 386000, tzinfo=UTC)),
        ("2019-03-22T13:56:31.2917159+00:00", datetime(2019, 3, 22, 13, 56, 31, 291715, tzinfo=UTC)),
        ("2019-08-26T08:34:14+00:00", datetime(2019, 8, 26, 8, 34, 14, tzinfo=UTC)),
        ("2020-07-09T13:54:34Z", datetime(2020, 7, 9, 13, 54, 34, tzinfo=UTC)),
        ("2021-06-01T02:30:00.5+02:30", datetime(2021, 6, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2021-06-01T00:00:00-0500", datetime(2021, 6, 1, 5, 0, 0, tzinfo=UTC)),
        ("2021-06-01T00:00:00", datetime(2021, 6, 1, tzinfo=UTC)),  # no offset: UTC
        ("2021-06-01 00:00z", datetime(2021, 6, 1, tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, "t")
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2021-06-01",
        "2021-02-30T00:00:00Z",
        "2021-06-01T24:00:00Z",
        "2021-06-01T00:00:00+25:00",
        "3/22/2019 1:36 PM",
    ],
)
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_timestamp(text, "data.essentials.firedDateTime")
    assert caught.value.field == "data.essentials.firedDateTime"


# --------------------------------------------------------------------------- the portal link (issue 10, item 5)

PORTAL = "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/Investigate.ReactView/alertId/%2fsubscriptions%2fx"


@pytest.mark.parametrize(
    "link",
    [
        PORTAL,
        "  " + PORTAL + "\n",
        "HTTPS://PORTAL.AZURE.COM/#blade/x",
        "https://ms.portal.azure.com/#view/x?a=1&b=(2)",
        "https://portal.azure.com",
    ],
)
def test_an_investigation_link_to_the_azure_portal_is_kept(link: str) -> None:
    assert parse_alert(minimal(investigationLink=link)).portal_link == link.strip()


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(document.domain)",
        " JavaScript:alert(1)//https://portal.azure.com/",
        "\x01javascript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        "http://portal.azure.com/#view/x",
        "https://evil.example/#https://portal.azure.com/",
        "https://portal.azure.com.evil.example/",
        "https://evilportal.azure.com/",
        "https://portal.azure.com@evil.example/",
        "https://portal.azure.com:8443/",
        "https://portal.azure.com\\@evil.example/",
        "https://portal.azure.com/#x y",
        "https://portal.azure.com/#x\"><script>alert(1)</script>",
        "https://portal.azure.com/#" + "a" * 5_000,
        "//portal.azure.com/",
    ],
)
def test_any_other_investigation_link_gives_way_to_the_bridges_own(link: str) -> None:
    alert = parse_alert(minimal(investigationLink=link))
    assert alert.portal_link == (
        "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/AlertDetails.ReactView/alertId~/"
        "%2Fsubscriptions%2Faaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e%2Fproviders%2FMicrosoft.AlertsManagement"
        "%2Falerts%2F01234567-89ab-cdef-0123-456789abcdef"
    )


def test_the_bridges_own_portal_link_escapes_the_alert_id() -> None:
    alert = parse_alert(minimal(alertId="javascript:alert(1) [code]<b>x</b>[/code]"))
    link = alert.portal_link
    assert link.endswith("alertId~/javascript%3Aalert%281%29%20%5Bcode%5D%3Cb%3Ex%3C%2Fb%3E%5B%2Fcode%5D")


# --------------------------------------------------------------------------- nesting depth (issue 10, item 6)

LIMIT = 400  # spelled out: the limit is part of the API's documented behaviour


def nested_document(levels: int) -> str:
    """A valid alert whose deepest point is ``levels`` arrays and objects deep (document included)."""
    custom = levels - 2  # the document and data are two of the levels
    inner = '{"a":' * (custom - 1) + "[1]" + "}" * (custom - 1)
    return json.dumps(minimal()).replace('"alertContext": {}', f'"alertContext": {{}}, "customProperties": {inner}')


def nested_mapping(levels: int) -> dict[str, Any]:
    value: Any = [1]
    for _ in range(levels - 3):
        value = {"a": value}
    body = minimal()
    body["data"]["customProperties"] = value
    return body


def test_the_depth_limit_is_400() -> None:
    from bridge.alerts import MAX_DEPTH

    assert MAX_DEPTH == LIMIT


@pytest.mark.parametrize("form", ["bytes", "text", "mapping"])
def test_a_body_at_the_depth_limit_is_accepted(form: str) -> None:
    text = nested_document(LIMIT)
    body: Any = {"bytes": text.encode(), "text": text, "mapping": json.loads(text)}[form]
    alert = parse_alert(body)
    containers, value = 0, thaw(alert.payload)
    while isinstance(value, dict | list):
        containers += 1
        if isinstance(value, list):
            value = value[0]
        else:
            value = value.get("a", value.get("data", value.get("customProperties")))
    assert containers == LIMIT
    assert parse_alert(nested_mapping(LIMIT)).custom_properties is not None


@pytest.mark.parametrize("form", ["bytes", "text", "mapping"])
@pytest.mark.parametrize("levels", [LIMIT + 1, 485, 488, 1_000, 5_000])
def test_a_deeper_body_is_refused_naming_the_limit(form: str, levels: int) -> None:
    text = nested_document(levels)
    body: Any = {"bytes": text.encode(), "text": text, "mapping": nested_mapping(levels)}[form]
    with pytest.raises(PayloadError) as caught:
        parse_alert(body)
    assert caught.value.field == "body" and caught.value.status == 400
    assert "400 levels" in str(caught.value)


def test_a_mapping_deeper_than_the_interpreter_can_recurse_is_refused_cleanly() -> None:
    # Handed over as an object (the Function's path takes bytes, a caller may not): never a RecursionError.
    with pytest.raises(PayloadError) as caught:
        parse_alert(nested_mapping(50_000))
    assert "400 levels" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * (1024 * 1024),
        b"{" * (1024 * 1024),
        b'{"a":' * 200_000,
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(minimal()).encode()[:-2] + b', "customProperties": ' + b"[" * 1_000_000 + b"}}",
    ],
    ids=["1MiB-of-[", "1MiB-of-{", "objects", "balanced-arrays", "inside-customProperties"],
)
def test_a_megabyte_of_brackets_is_a_clean_400_naming_the_limit(body: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_alert(body)
    assert caught.value.status == 400 and "400 levels" in str(caught.value)


def test_brackets_inside_strings_do_not_count() -> None:
    alert = parse_alert(minimal(description="[" * 5_000 + "{" * 5_000 + '\\"[', alertRule="]" * 10))
    assert alert.description is not None and alert.description.startswith("[[[")


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["[[[[", "\\"[[", "\\\\", [["]]]"]]]', 3),
        ('"unterminated [[[[', 0),
        ("[[[", 3),
        ("[]" * 1_000, 1),
    ],
)
def test_nesting_depth(text: str, depth: int) -> None:
    from bridge.alerts import nesting_depth

    assert nesting_depth(text, limit=0) == depth
