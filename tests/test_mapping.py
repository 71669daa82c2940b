"""Alert to work item (bridge.mapping): short description, description, impact/urgency, routing,
and the notes that carry the redelivery marker."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import pytest

from bridge import mapping
from bridge.adapters.base import ConfigurationItem
from bridge.alerts import SCHEMA_ID, Alert, parse_alert
from bridge.correlation import correlation_key, fingerprint, note_marker
from bridge.mapping import (
    DEFAULT_DESCRIPTION_LIMIT,
    TEMPLATE_NAMES,
    build_work_item,
    render_title,
    resolution,
    template_values,
    update_note,
)
from bridge.rules import MappingRules, RoutingRule

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alerts"
SUB = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
RULES = MappingRules()


def load(name: str) -> Alert:
    return parse_alert((FIXTURES / name).read_bytes())


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def with_rule(name: str) -> Alert:
    data = body("metric_static_fired.testaction.json")
    data["data"]["essentials"]["alertRule"] = name
    return parse_alert(data)


def lines(text: str) -> list[str]:
    return text.split("\n")


# --------------------------------------------------------------------------- short description


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "metric_static_fired.testaction.json",
            "[Azure Monitor] Sev4 Fired: test-metricAlertRule on test-storageAccount",
        ),
        ("metric_static_resolved.json", "[Azure Monitor] Sev3 Resolved: WCUS-R2-Gen2 on wcus-r2-gen2"),
        (
            "log_alerts_v2_fired.testaction.json",
            "[Azure Monitor] Sev4 Fired: test-logAlertRule-v2 on test-logAnalyticsWorkspace",
        ),
        (
            "activity_log_administrative_fired.testaction.json",
            "[Azure Monitor] Sev4 Fired: test-activityLogAlertRule on test-VM",
        ),
        (
            "service_health_incident.testaction.json",
            "[Azure Monitor] Sev4 Fired: test-ServiceHealthAlertRule on 11111111-1111-1111-1111-111111111111",
        ),
        # Budget: null rule and severity; the budget name stands in for the rule.
        ("budget_forecasted.testaction.json", "[Azure Monitor] Fired: Test_forcasted_budget on budgets"),
    ],
)
def test_short_description_of_samples(name: str, expected: str) -> None:
    assert build_work_item(load(name), RULES).title == expected


def test_long_rule_name_is_truncated_on_a_word_boundary() -> None:
    words = " ".join(f"word{i:02d}" for i in range(40))  # 279 characters
    short = build_work_item(with_rule(words), RULES).title
    full = f"[Azure Monitor] Sev4 Fired: {words} on test-storageAccount"
    assert len(short) <= 160
    assert short.endswith("…")
    kept = short[:-1]
    assert full.startswith(kept)
    assert full[len(kept)] == " "  # the cut fell between words
    assert len(kept) > 160 - 40


def test_long_unbroken_rule_name_is_cut_at_160() -> None:
    short = build_work_item(with_rule("x" * 500), RULES).title
    assert len(short) == 160
    assert short == "[Azure Monitor] Sev4 Fired: " + "x" * 131 + "…"


def test_short_description_is_one_line() -> None:
    short = build_work_item(with_rule("cpu\nhigh\r\n\tagain"), RULES).title
    assert short == "[Azure Monitor] Sev4 Fired: cpu high again on test-storageAccount"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{severity} {nope} {alertRule}", "Sev4 test-metricAlertRule"),
        ("{alertRule.__class__}|{0}|{}|{alertRule[0]}|{severity}", "||||Sev4"),
        ("{severity:*>6}|{monitorCondition!r}|{alertRule:.4}", "**Sev4|Fired|test"),
        ("{severity:bad-spec}", "Sev4"),
        ("{{literal}} {target}", "{literal} test-storageAccount"),
        # Unparseable: the default template is used instead.
        ("{severity", "[Azure Monitor] Sev4 Fired: test-metricAlertRule on test-storageAccount"),
        ("}", "[Azure Monitor] Sev4 Fired: test-metricAlertRule on test-storageAccount"),
        ("{unknown}", "Azure Monitor alert test-metricAlertRule"),
        (
            "{resourceGroup}/{resourceType}/{subscriptionId}/{kind}/{configurationItem}/{signalType}",
            "test-RG/microsoft.storage/storageaccounts/11111111-1111-1111-1111-111111111111/metric/"
            "test-storageAccount/Metric",
        ),
    ],
)
def test_user_templates_never_crash(template: str, expected: str) -> None:
    alert = load("metric_static_fired.testaction.json")
    assert render_title(template, alert) == expected
    rules = MappingRules(title_template=template)
    assert build_work_item(alert, rules).title == expected


def test_unknown_template_names_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.mapping"):
        render_title("{severity} {oops}", load("metric_static_fired.testaction.json"))
    assert "['oops']" in caplog.text


def test_template_values_cover_the_documented_names() -> None:
    values = template_values(load("metric_static_resolved.json"))
    assert set(values) == TEMPLATE_NAMES
    assert values["resourceGroup"] == "pipelinealertrg"
    assert values["resourceType"] == "microsoft.compute/virtualmachines"
    assert values["correlationId"] == "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
    assert values["firedDateTime"] == "2019-03-22T13:58:24.371321Z"
    assert all("\n" not in value for value in values.values())


# --------------------------------------------------------------------------- description


def test_description_of_metric_sample() -> None:
    alert = load("metric_static_fired.testaction.json")
    text = build_work_item(alert, RULES).description
    got = lines(text)
    for line in [
        "Alert rule: test-metricAlertRule",
        "Severity: Sev4",
        "Monitor condition: Fired",
        "Monitoring service: Platform",
        "Signal type: Metric",
        "Fired at: 2025-04-15T18:17:12.851Z",
        f"Alert ID: {alert.alert_id}",
        f"Portal link: {alert.portal_link}",
        "Description: Alertruledescription",
        "Condition (SingleResourceMultipleMetricCriteria, window PT5M):",
        "- metric: Transactions; namespace: Microsoft.Storage/storageAccounts; operator: GreaterThan; "
        "threshold: 0; value: 100; aggregation: Total; dimensions: ApiName=GetBlob",
        "Evaluation window: 2025-04-15T18:17:12.851Z to 2025-04-15T18:17:12.851Z",
        "Targets:",
        f"- {alert.target_ids[0]}",
        "Configuration items: test-storageAccount",
        "Custom properties:",
        "- customKey1: value1",
        "- customKey2: value2",
    ]:
        assert line in got, line
    assert "Resolved at" not in text
    # alertContext.properties equal customProperties here: not shown twice
    assert "Alert rule properties" not in text


def test_description_of_resolved_sample() -> None:
    alert = load("metric_static_resolved.json")
    got = lines(build_work_item(alert, RULES).description)
    assert "Fired at: 2019-03-22T13:58:24.371321Z" in got
    assert "Resolved at: 2019-03-22T14:03:16.224631Z" in got
    assert "- Key1: Value1" in got


def test_description_with_alert_rule_id() -> None:
    data = body("metric_static_fired.testaction.json")
    rule_id = f"/subscriptions/{SUB}/resourceGroups/rg/providers/microsoft.insights/metricAlerts/r"
    data["data"]["essentials"]["alertRuleID"] = rule_id
    assert f"Alert rule ID: {rule_id}" in lines(build_work_item(parse_alert(data), RULES).description)


def test_description_of_log_v2_keeps_search_links() -> None:
    alert = load("log_alerts_v2_fired.testaction.json")
    text = build_work_item(alert, RULES).description
    criterion = body("log_alerts_v2_fired.testaction.json")["data"]["alertContext"]["condition"]["allOf"][0]
    assert "- query: Heartbeat; operator: GreaterThan; threshold: 0; value: 3; aggregation: Count; " \
        "failing periods: 1 of 1; dimensions: Computer=test-computer" in lines(text)
    assert "Log search links:" in lines(text)
    for key in ("linkToSearchResultsUI", "linkToFilteredSearchResultsUI", "linkToSearchResultsAPI",
                "linkToFilteredSearchResultsAPI"):
        assert criterion[key] in text
    assert "- customKey1: value1" in lines(text)  # rule properties, there is no customProperties


def test_description_of_log_v1() -> None:
    alert = load("log_v1_log_analytics_fired.testaction.json")
    got = lines(build_work_item(alert, RULES).description)
    assert "- query: Heartbeat; operator: Greater Than; threshold: 0; value: 1" in got
    assert "Result count: 1" in got
    assert "Alert type: Number of results" in got
    assert "Workspace ID: dddd3333-ee44-5555-66ff-777777aaaaaa" in got
    context = body("log_v1_log_analytics_fired.testaction.json")["data"]["alertContext"]
    link = context["LinkToSearchResultsAPI"]
    assert f"- Filtered search results (API): {link}" in got  # identical links are listed once
    ai = lines(build_work_item(load("log_v1_application_insights_fired.constructed.json"), RULES).description)
    assert "Application ID: 00001111-aaaa-2222-bbbb-3333cccc4444" in ai
    assert "Search interval: 3/22/2019 1:36:33 PM to 3/22/2019 1:51:33 PM" in ai


def test_description_of_metric_variants() -> None:
    dynamic = lines(build_work_item(load("metric_dynamic_fired.testaction.json"), RULES).description)
    assert (
        "- metric: Transactions; namespace: Microsoft.Storage/storageAccounts; operator: GreaterThan; "
        "threshold: 0.3; value: 78.09; aggregation: Average; sensitivity: Low; failing periods: 3 of 3"
    ) in dynamic
    webtest = build_work_item(load("metric_availability_fired.testaction.json"), RULES).description
    assert "web test: test-availabilityTest-test-applicationInsights" in webtest


def test_description_of_activity_log() -> None:
    got = lines(build_work_item(load("activity_log_administrative_fired.testaction.json"), RULES).description)
    for line in [
        "Activity log event:",
        "Operation: Microsoft.Compute/virtualMachines/restart/action",
        "Caller: user-email@domain.com",
        "Status: Succeeded",
        "Event source: Administrative",
    ]:
        assert line in got, line
    policy = build_work_item(load("activity_log_policy_fired.constructed.json"), RULES).description
    assert "Operation: Microsoft.Authorization/policies/audit/action" in lines(policy)
    assert "Level: Warning" in lines(policy)
    assert "42FgYOhynHNw0scy3T" not in policy  # the caller's token claims are not copied
    security = lines(build_work_item(load("activity_log_security_fired.constructed.json"), RULES).description)
    assert "- threatStatus: Quarantined" in security
    assert "Status: Active" in security


def test_description_of_service_health() -> None:
    got = lines(build_work_item(load("service_health_incident.testaction.json"), RULES).description)
    for line in [
        "Title: TestActionGroup-TestServiceHealthAlert",
        "Incident type: Incident",
        "Tracking ID: TEST-TTT",
        "Stage: Resolved",
        "Status: Resolved",
        "Impacted services: AzureServiceName (Global)",
        "Communication: ThisisatestfromServiceHealthAlert",  # HTML stripped
    ]:
        assert line in got, line
    maintenance_alert = load("service_health_maintenance.constructed.json")
    maintenance = lines(build_work_item(maintenance_alert, RULES).description)
    assert "Impacted services: Azure Synapse Analytics (East US)" in maintenance  # from a JSON string
    assert "Stage: Planned" in maintenance


def test_description_of_resource_health() -> None:
    got = lines(build_work_item(load("resource_health_nospace_fired.constructed.json"), RULES).description)
    for line in [
        "Title: This virtual machine is stopping and deallocating as requested by an authorized user "
        "or process",
        "Current health status: Unavailable",
        "Previous health status: Available",
        "Type: Downtime",
        "Cause: UserInitiated",
    ]:
        assert line in got, line


def test_description_of_budget() -> None:
    item = build_work_item(load("budget_forecasted.testaction.json"), RULES)
    got = lines(item.description)
    for line in [
        "Alert rule: Test_forcasted_budget",
        "Budget: Test_forcasted_budget",
        "Spent: $999.99 of budget $50.00",
        "Notification threshold: $50.00 (Forecasted)",
        "Forecasted total for period: $1111.11",
    ]:
        assert line in got, line
    assert not any(line.startswith("Severity:") for line in got)
    assert (item.impact, item.urgency) == (3, 3)  # null severity: the lowest default


def test_description_of_prometheus_and_smart_detector() -> None:
    prometheus = lines(build_work_item(load("prometheus_fired.constructed.json"), RULES).description)
    for line in [
        "Expression: sql_up > 0",
        "Value: 0",
        "For: PT2M",
        "Labels: Environment=Prod, cluster=myCluster1",
        "- summary: alert on SQL availability",
    ]:
        assert line in prometheus, line
    smart = lines(build_work_item(load("smart_detector_fired.testaction.json"), RULES).description)
    assert "Summary: A degradation in the dependency duration over the last 24 hours" in smart
    assert "Detected value: 0.45 sec" in smart
    assert "Normal value: 0.27 sec (over the last 7 days)" in smart


def test_description_of_unknown_service_shows_the_context() -> None:
    data = {
        "schemaId": SCHEMA_ID,
        "data": {
            "essentials": {"alertId": "x/1", "monitorCondition": "Fired", "monitoringService": "Future"},
            "alertContext": {"b": 1, "a": "two"},
        },
    }
    got = lines(build_work_item(parse_alert(data), RULES).description)
    assert 'Alert context: {"a":"two","b":1}' in got


def test_ci_and_ci_note_are_included() -> None:
    alert = load("metric_static_fired.testaction.json")
    ci = ConfigurationItem(id="0123abcd", name="test-storageAccount", matched_on="resource_id")
    item = build_work_item(alert, RULES, ci, "matched by resource id")
    assert item.configuration_item is ci
    got = lines(item.description)
    assert "CMDB configuration item: test-storageAccount (0123abcd, matched on resource_id)" in got
    assert "CMDB: matched by resource id" in got
    missing = build_work_item(alert, RULES, None, "no CMDB record found for test-storageAccount")
    assert missing.configuration_item is None
    assert "CMDB: no CMDB record found for test-storageAccount" in lines(missing.description)
    assert "CMDB: no CMDB record found for test-storageAccount" in lines(missing.note)


def test_runaway_payload_is_capped_but_keeps_the_alert_id() -> None:
    data = body("metric_static_fired.testaction.json")
    data["data"]["essentials"]["description"] = "d" * 50_000
    data["data"]["customProperties"] = {f"k{i}": "v" * 3_000 for i in range(40)}
    alert = parse_alert(data)
    text = build_work_item(alert, RULES).description
    assert len(text) <= DEFAULT_DESCRIPTION_LIMIT
    assert f"Alert ID: {alert.alert_id}" in lines(text)
    assert all(len(line) <= 4_000 for line in lines(text))
    assert text.endswith("see the portal link]")


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("Sev0", (1, 1)), ("Sev1", (1, 2)), ("Sev2", (2, 2)), ("Sev3", (2, 3)), ("Sev4", (3, 3)),
     ("sev1", (1, 2)), ("Sev9", (3, 3)), (None, (3, 3))],
)
def test_default_severity_matrix(severity: str | None, expected: tuple[int, int]) -> None:
    data = body("metric_static_fired.testaction.json")
    data["data"]["essentials"]["severity"] = severity
    item = build_work_item(parse_alert(data), RULES)
    assert (item.impact, item.urgency) == expected


def test_custom_severity_matrix() -> None:
    rules = MappingRules(severity_matrix={"Sev4": (2, 1), "Sev3": (1, 1)})
    alert = load("metric_static_fired.testaction.json")
    item = build_work_item(alert, rules)
    assert (item.impact, item.urgency) == (2, 1)
    resolved = build_work_item(load("metric_static_resolved.json"), rules)
    assert (resolved.impact, resolved.urgency) == (1, 1)


def test_correlation_and_fields_from_rules() -> None:
    fields = {"caller_id": "azure.monitor", "assignment_group": "Cloud Ops", "category": "software"}
    rules = MappingRules(fields=fields)
    alert = load("activity_log_administrative_fired.testaction.json")
    item = build_work_item(alert, rules)
    assert item.correlation_id == correlation_key(alert.alert_id)
    assert item.correlation_id == "a9d5bb84b273e1e65cf23dd745b14a0cac49cb1b"
    assert dict(item.fields) == fields
    assert item.severity == "Sev4"


def test_work_note_of_a_new_item_carries_the_marker() -> None:
    alert = load("metric_static_fired.testaction.json")
    note = build_work_item(alert, RULES).note
    assert note.startswith("Opened by the Azure Monitor bridge from alert rule 'test-metricAlertRule'")
    assert f"Alert ID: {alert.alert_id}" in lines(note)
    assert lines(note)[-1] == f"[{note_marker(fingerprint(alert))}]"


# --------------------------------------------------------------------------- routing


def route(match: dict[str, str], **fields: str) -> RoutingRule:
    return RoutingRule(match=match, set=fields)


def test_routing_first_match_wins_and_overrides_defaults() -> None:
    rules = MappingRules(
        routing=(
            route({"monitoringService": "platform", "severity": "SEV4"}, assignment_group="Storage Team",
                  u_source="metrics"),
            route({"monitoringService": "Platform"}, assignment_group="Second Rule"),
        ),
        fields={"assignment_group": "Default Group", "category": "software", "u_origin": "azure",
                "u_source": "global"},
    )
    item = build_work_item(load("metric_static_fired.testaction.json"), rules)
    # Set by the rule: the rule wins; not set by it: the mapping file's field stays.
    assert dict(item.fields) == {"assignment_group": "Storage Team", "category": "software", "u_origin": "azure",
                                 "u_source": "metrics"}


def test_routing_requires_every_match_key() -> None:
    rules = MappingRules(
        fields={"assignment_group": "Default Group"},
        routing=(route({"monitoringService": "Platform", "severity": "Sev0"}, assignment_group="Critical"),),
    )
    item = build_work_item(load("metric_static_fired.testaction.json"), rules)
    assert item.fields["assignment_group"] == "Default Group"


@pytest.mark.parametrize(
    ("match", "name"),
    [
        ({"resourceGroup": "TEST-rg"}, "metric_static_fired.testaction.json"),
        ({"resourceGroupName": "test-rg"}, "metric_static_fired.testaction.json"),  # derived when absent
        ({"subscriptionId": "11111111-1111-1111-1111-111111111111"}, "metric_static_fired.testaction.json"),
        ({"alertRule": "TEST-METRICALERTRULE"}, "metric_static_fired.testaction.json"),
        ({"signalType": "activity log"}, "activity_log_administrative_fired.testaction.json"),
        ({"configurationItems": "test-vm"}, "activity_log_administrative_fired.testaction.json"),
        ({"kind": "service_health"}, "service_health_incident.testaction.json"),
        ({"monitoringservice": "costalerts", "severity": ""}, "budget_forecasted.testaction.json"),
        ({}, "metric_static_fired.testaction.json"),  # an empty match is a catch-all
    ],
)
def test_routing_keys(match: dict[str, str], name: str) -> None:
    rules = MappingRules(routing=(route(match, assignment_group="Routed"),))
    assert build_work_item(load(name), rules).fields["assignment_group"] == "Routed"


def test_routing_sets_impact_and_urgency_and_passes_fields_to_the_adapter() -> None:
    rules = MappingRules(
        routing=(
            route({"resourceGroup": "test-RG"}, impact="1", urgency="2", correlation_id="evil", state="7",
                  category="Storage"),
        )
    )
    alert = load("metric_static_fired.testaction.json")
    item = build_work_item(alert, rules)
    assert (item.impact, item.urgency) == (1, 2)
    assert item.correlation_id == correlation_key(alert.alert_id)
    # Field names are the ITSM's: the adapter refuses those it manages (tests/adapters).
    assert dict(item.fields) == {"correlation_id": "evil", "state": "7", "category": "Storage"}


def test_routing_ignores_a_bad_impact() -> None:
    rules = MappingRules(routing=(route({}, impact="high"),))
    item = build_work_item(load("metric_static_fired.testaction.json"), rules)
    assert (item.impact, item.urgency) == (3, 3)


def test_fields_are_read_only() -> None:
    item = build_work_item(load("metric_static_fired.testaction.json"), MappingRules(fields={"u": "1"}))
    with pytest.raises(TypeError):
        item.fields["u"] = "2"  # type: ignore[index]


def test_limits_are_the_adapters() -> None:
    alert = with_rule("x" * 500)
    item = build_work_item(alert, RULES, title_limit=255, description_limit=400)
    assert len(item.title) == 255 and len(item.description) <= 400


# --------------------------------------------------------------------------- notes and resolution


def test_update_note_for_a_repeated_fired() -> None:
    alert = load("metric_static_fired.testaction.json")
    note = update_note(alert)
    got = lines(note)
    assert got[0] == "Azure Monitor reports the alert fired again."
    assert "Rule: test-metricAlertRule; severity: Sev4; fired at: 2025-04-15T18:17:12.851Z" in got
    assert "Condition: metric: Transactions; operator: GreaterThan; threshold: 0; value: 100; " \
        "aggregation: Total; dimensions: ApiName=GetBlob" in got
    assert got[-1] == f"[{note_marker(fingerprint(alert))}]"


def test_update_note_for_stateless_alerts() -> None:
    alert = load("service_health_incident.testaction.json")
    got = lines(update_note(alert))
    assert got[0] == "Azure Monitor sent a new notification for this alert."
    assert "Service health: TestActionGroup-TestServiceHealthAlert; stage: Resolved; status: Resolved; " \
        "tracking ID: TEST-TTT" in got
    assert note_marker(fingerprint(alert)) in got[-1]

    data = body("resource_health_fired.testaction.json")
    data["data"]["essentials"]["monitorCondition"] = "Resolved"
    resolved = parse_alert(data)
    assert "never resolves work items by itself" in lines(update_note(resolved))[0]
    assert "Resource health: Rebooted by user; current status: Unavailable; previous status: Available; " \
        "cause: UserInitiated" in lines(update_note(resolved))


def test_update_note_differs_per_payload() -> None:
    first = load("metric_static_fired.testaction.json")
    data = body("metric_static_fired.testaction.json")
    data["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 250
    second = parse_alert(data)
    assert "value: 250" in update_note(second)
    assert lines(update_note(first))[-1] != lines(update_note(second))[-1]


def test_resolution() -> None:
    alert = load("metric_static_resolved.json")
    how = resolution(alert, MappingRules(resolution_code="Resolved by caller"))
    assert how.code == "Resolved by caller"
    assert how.summary == (
        "Resolved automatically: Azure Monitor reported alert rule 'WCUS-R2-Gen2' on wcus-r2-gen2 "
        f"as resolved at 2019-03-22T14:03:16.224631Z.\nAlert ID: {alert.alert_id}"
    )
    assert lines(how.note)[0] == (
        "Azure Monitor reported the alert as resolved at 2019-03-22T14:03:16.224631Z; the bridge "
        "resolved this work item ('Resolved by caller')."
    )
    assert lines(how.note)[-1] == f"[{note_marker(fingerprint(alert))}]"
    assert resolution(alert, RULES).code is None  # the adapter's configured default applies


def test_resolution_without_resolved_time() -> None:
    data = body("log_alerts_v2_fired.testaction.json")
    data["data"]["essentials"]["monitorCondition"] = "Resolved"
    how = resolution(parse_alert(data), RULES)
    assert "as resolved at an unreported time." in how.summary


# --------------------------------------------------------------------------- markup and links (issue 10, item 5)

# What ServiceNow's journal would take for its HTML-rendering markup, loosely: any case, any spaces.
CODE_TAG = re.compile(r"\[\s*/?\s*c\s*o\s*d\s*e\s*\]", re.IGNORECASE)
UNSAFE_URL = re.compile(r"(?:java|vb)[\t\n\r]*script[\t\n\r]*:|data:(?:text|image|application)/|data:,", re.IGNORECASE)
PAYLOAD = "[code]<script>alert(1)</script>[/code]"
CODE_VARIANTS = ["[code]", "[/code]", "[CODE]", "[/CODE]", "[ code ]", "[ / Code ]", "[\tcode\n]", "[c o d e]"]
URL_VARIANTS = [
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "\x01javascript:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:,alert(1)",
]


def _hostile(text: str) -> dict[str, Any]:
    """A log alert (V2) carrying ``text`` wherever the payload's words reach a work item."""
    data = body("log_alerts_v2_fired.testaction.json")
    essentials = data["data"]["essentials"]
    essentials.update(alertRule=f"rule {text}", description=f"desc {text}", investigationLink=text,
                      configurationItems=[f"ci {text}"], alertTargetIDs=[*essentials["alertTargetIDs"], f"/t {text}"])
    criterion = data["data"]["alertContext"]["condition"]["allOf"][0]
    criterion.update(searchQuery=f"Heartbeat | where Computer == '{text}'", operator=text, threshold=text,
                     dimensions=[{"name": f"dim {text}", "value": f"value {text}"}], linkToSearchResultsUI=text)
    data["data"]["alertContext"]["properties"] = {f"key {text}": f"prop {text}"}
    data["data"]["customProperties"] = {"custom": text}
    return data


def _written(alert: Alert, ci_note: str | None = None) -> dict[str, str]:
    item = build_work_item(alert, RULES, ci_note=ci_note)
    how = resolution(alert, RULES)
    return {
        "title": item.title, "description": item.description, "note": item.note, "update": update_note(alert),
        "summary": how.summary, "resolution note": how.note,
    }


@pytest.mark.parametrize("tag", [PAYLOAD, *CODE_VARIANTS])
def test_code_markup_is_neutralised_in_every_text_written(tag: str) -> None:
    alert = parse_alert(_hostile(tag))
    for name, text in _written(alert, ci_note=f"No CMDB configuration item found for {tag}.").items():
        assert not CODE_TAG.search(text), (name, text)
    description = build_work_item(alert, RULES).description
    if tag == PAYLOAD:
        # Still readable, as text: the brackets became parentheses.
        assert "Alert rule: rule (code)<script>alert(1)</script>(/code)" in lines(description)


@pytest.mark.parametrize("url", URL_VARIANTS)
def test_script_and_data_links_are_dropped_from_every_text_written(url: str) -> None:
    alert = parse_alert(_hostile(url))
    for name, text in _written(alert, ci_note=f"No CMDB configuration item found for {url}.").items():
        assert not UNSAFE_URL.search(text), (name, text)
    description = build_work_item(alert, RULES).description
    if not any(c in url for c in "\t\n"):  # (there, the line's spaces are collapsed first: "java script:")
        assert "Alert rule: rule (unsafe link removed)" in lines(description)
    assert "\x01" not in description
    # The investigationLink is not a portal link: the bridge's own stands in for it.
    assert f"Portal link: {alert.portal_link}" in lines(description)
    assert alert.portal_link.startswith("https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/")
    assert "Search results (portal)" not in description


def test_ordinary_words_are_left_alone() -> None:
    text = "Missing data: 5 points; javascript heap grew; see [codes] and [decode] and https://example.com/x"
    alert = parse_alert(_hostile(text))
    assert f"Description: desc {text}" in lines(build_work_item(alert, RULES).description)


def test_only_https_search_links_are_listed() -> None:
    data = body("log_alerts_v2_fired.testaction.json")
    criterion = data["data"]["alertContext"]["condition"]["allOf"][0]
    criterion["linkToSearchResultsUI"] = "javascript:alert(1)//https://portal.azure.com"
    criterion["linkToFilteredSearchResultsUI"] = "http://portal.azure.com/#plain-http"
    criterion["linkToSearchResultsAPI"] = "https://user:secret@api.loganalytics.io/v1/x"
    text = build_work_item(parse_alert(data), RULES).description
    assert "Search results (portal)" not in text and "Filtered search results (portal)" not in text
    assert "Search results (API)" not in text and "secret" not in text
    assert f"- Filtered search results (API): {criterion['linkToFilteredSearchResultsAPI']}" in lines(text)


def test_a_title_stays_within_its_limit_when_made_safe() -> None:
    alert = with_rule("javascript:x " * 40)
    title = build_work_item(alert, RULES).title
    assert len(title) <= 160 and "javascript" not in title.lower()


# --------------------------------------------------------------------------- fast paths
# _written and _clean skip the regular expressions when one cheap look shows they would change
# nothing; whatever the text, the result must be what the expressions give.

_PIECES = [
    "Alert rule: ", "javascript", "JaVaScRiPt", "java\tscript", "jav\u017fcript", "vbscr\u0130pt", "livescript",
    "data", "DATA", "d\na\rta", "meta", ":", " :", "\t:", "text/html", ",", ";", "[code]", "[ / C o d e ]", "[cod",
    "\x01", "\x7f", "\x1f", "\t", "\n", "\r", " ", "  ", "\u00a0", "\u2028", "\u3000", "\x85", "é", "サーバー",
    "https://portal.azure.com/x", "Sev3", "0",
]


def _random_lines(seed: int, count: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        ["".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(1, 6))]
        for _ in range(count)
    ]


def test_written_lines_are_the_lines_made_safe_one_by_one() -> None:
    cases = [
        [f"Description: {variant}" for variant in [*URL_VARIANTS, *CODE_VARIANTS, PAYLOAD]],
        ["Alert rule: jav\u017fcript:alert(1)"],  # only the pattern's case folding sees this one
        ["Fired at: 2025-01-01T00:00:00Z", "Missing data: 5 points", "metadata: none"],
        ["x" * (mapping._TEXT_MAX_CHARS + 10) + "javascript:x"],  # beyond the bound: never reached
        *_random_lines(7, 3000),
    ]
    changed = 0
    for lines_ in cases:
        expected = [mapping._line(line) for line in lines_]
        assert mapping._written(lines_) == expected, lines_
        changed += expected != [mapping._cap(line[: mapping._TEXT_MAX_CHARS]) for line in lines_]
    # Both ways are taken: most random lines have something to make safe, the plain ones not.
    assert 100 < changed < len(cases) - 100


def test_clean_collapses_whitespace_as_the_expression_does() -> None:
    spaces = re.compile(r"\s+")
    every_space = [chr(c) for c in range(0x110000) if spaces.fullmatch(chr(c))]
    # What the shortcut rests on: the space is the only printable whitespace character.
    assert [c for c in every_space if c.isprintable()] == [" "]
    samples = ["".join(line) for line in _random_lines(11, 2000)]
    samples += [f"a{c}b" for c in every_space] + [f" {c} x{c}{c}" for c in every_space] + ["", " ", "a  b", " a "]
    for text in samples:
        assert mapping._clean(text) == spaces.sub(" ", text[: mapping._TEXT_MAX_CHARS]).strip(), repr(text)
