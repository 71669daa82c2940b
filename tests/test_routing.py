"""Routing and what a route sets (bridge.mapping, issue #11): every match key, lists, wildcards,
tags (custom properties and Prometheus labels), templated fields, the configuration item
override, the route's policy and the resolution it asks for. Loading and refusing the mapping
file's keys is tests/test_policy_rules.py."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import mapping
from bridge.alerts import Alert, parse_alert
from bridge.mapping import (
    build_work_item,
    configuration_item_override,
    policy_for,
    resolution,
)
from bridge.rules import MappingRules, MatchValue, Policy, RoutingRule
from tests.test_bounds import assert_near_linear

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alerts"
METRIC = "metric_static_fired.testaction.json"
PROMETHEUS = "prometheus_fired.constructed.json"
ACTIVITY = "activity_log_administrative_fired.testaction.json"
SERVICE_HEALTH = "service_health_incident.testaction.json"
SUB = "11111111-1111-1111-1111-111111111111"


def body(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def load(name: str) -> Alert:
    return parse_alert(body(name))


def routed(alert: Alert, match: dict[str, Any]) -> bool:
    """Whether a route with ``match`` applies to ``alert`` (its field is set, else the default stays)."""
    rules = MappingRules(
        fields={"assignment_group": "Default"},
        routing=(RoutingRule(match=match, set={"assignment_group": "Routed"}),),
    )
    return build_work_item(alert, rules).fields["assignment_group"] == "Routed"


# --------------------------------------------------------------------------- match keys


@pytest.mark.parametrize(
    ("name", "key", "hit", "miss"),
    [
        (METRIC, "subscription", SUB, "22222222-2222-2222-2222-222222222222"),
        (METRIC, "subscriptionId", SUB.upper(), "22222222-2222-2222-2222-222222222222"),
        (METRIC, "resourceGroup", "TEST-rg", "prod-rg"),
        (METRIC, "resourceGroupName", "test-rg", "prod-rg"),
        (METRIC, "resourceType", "Microsoft.Storage/storageAccounts", "microsoft.compute/virtualmachines"),
        (ACTIVITY, "targetResourceType", "microsoft.compute/virtualMachines", "microsoft.storage/storageaccounts"),
        (METRIC, "alertRule", "TEST-METRICALERTRULE", "other-rule"),
        (METRIC, "ruleName", "test-metricAlertRule", "other-rule"),
        (METRIC, "severity", "sev4", "Sev1"),
        (METRIC, "alertType", "metric", "log"),
        (PROMETHEUS, "alertType", "Prometheus", "metric"),
        (SERVICE_HEALTH, "kind", "service_health", "activity_log"),
        (METRIC, "target", "test-storageaccount", "test-vm"),
        (METRIC, "monitorCondition", "fired", "resolved"),
        (METRIC, "monitoringService", "platform", "Log Analytics"),
        (ACTIVITY, "signalType", "Activity Log", "Metric"),
        (ACTIVITY, "configurationItems", "test-vm", "other-vm"),
        (METRIC, "MonitoringService", "Platform", "Log Analytics"),  # keys in any case
    ],
)
def test_each_match_key_matches_its_value_and_only_it(name: str, key: str, hit: str, miss: str) -> None:
    alert = load(name)
    assert routed(alert, {key: hit})
    assert not routed(alert, {key: miss})


def test_resource_type_is_derived_from_the_target_when_the_payload_names_none() -> None:
    data = body(METRIC)
    data["data"]["essentials"]["alertTargetIDs"] = [
        f"/subscriptions/{SUB}/resourceGroups/db/providers/Microsoft.Sql/servers/s1/databases/orders"
    ]
    alert = parse_alert(data)
    assert routed(alert, {"resourceType": "microsoft.sql/servers/databases"})
    assert not routed(alert, {"resourceType": "microsoft.sql/servers"})


def test_every_match_key_must_match() -> None:
    alert = load(METRIC)
    assert routed(alert, {"resourceGroup": "test-rg", "severity": "Sev4", "alertType": "metric"})
    assert not routed(alert, {"resourceGroup": "test-rg", "severity": "Sev4", "alertType": "log"})


def test_a_list_matches_when_any_of_its_values_does() -> None:
    alert = load(METRIC)
    assert routed(alert, {"severity": ("Sev0", "Sev4")})
    assert not routed(alert, {"severity": ("Sev0", "Sev1")})
    assert routed(alert, {"resourceGroup": ("prod-*", "test-*")})


def test_an_absent_value_matches_only_the_empty_expectation() -> None:
    budget = load("budget_forecasted.testaction.json")  # no severity at all
    assert routed(budget, {"severity": ""})
    assert routed(budget, {"severity": ("Sev0", "")})
    assert not routed(budget, {"severity": "*"})  # "*" is any value, and there is none
    assert routed(load(METRIC), {"severity": "*"})


# --------------------------------------------------------------------------- wildcards


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("test-*", True),
        ("*-METRICALERTRULE", True),
        ("*metric*", True),
        ("t?st-metricAlertRule", True),
        ("test-metricAlertRul?", True),
        ("test-*Alert*Rule", True),
        ("**", True),
        ("*", True),
        ("test", False),  # anchored: the whole value
        ("metric*", False),
        ("*metric", False),
        ("test-metricAlertRul", False),
        ("test-metricAlertRule?", False),
        ("?", False),
        ("*Rule*Alert", False),
        ("[t]est-*", False),  # brackets are literal
    ],
)
def test_wildcards_on_a_route(pattern: str, expected: bool) -> None:
    assert routed(load(METRIC), {"alertRule": pattern}) is expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("ab*ba", "aba", False),  # the head and tail may not overlap
        ("ab*ba", "abba", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("*a?a?b*", "xxaxaxbxx", True),
        ("Straße", "STRASSE", True),  # case-folded, not only lower-cased
    ],
)
def test_glob_cases(pattern: str, text: str, expected: bool) -> None:
    compiled = mapping._pattern(pattern)
    folded = text.casefold()
    assert (compiled.matches(folded) if isinstance(compiled, mapping._Glob) else compiled == folded) is expected


@given(st.text(alphabet="ab*?", max_size=8), st.text(alphabet="ab", max_size=12))
def test_glob_agrees_with_fnmatch(pattern: str, text: str) -> None:
    compiled = mapping._pattern(pattern)
    ours = compiled.matches(text) if isinstance(compiled, mapping._Glob) else compiled == text
    assert ours == fnmatch.fnmatchcase(text, pattern)


@pytest.mark.parametrize("pattern", ["*a*a*a*a*b*", "*a?a?a?b", "a*a*a*a*b"])
def test_glob_time_is_linear_in_the_text(pattern: str) -> None:
    # A backtracking matcher takes time to the power of the stars on these (the text has no b).
    glob = mapping._pattern(pattern)
    assert isinstance(glob, mapping._Glob)
    assert_near_linear(glob.matches, lambda n: "a" * n)


# --------------------------------------------------------------------------- tags


def with_custom(custom: Any, name: str = METRIC) -> Alert:
    data = body(name)
    data["data"]["customProperties"] = custom
    return parse_alert(data)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"Env": "PROD"}, True),
        ({"env": "prod", "team": ("payments", "orders")}, True),
        ({"env": "pr*"}, True),
        ({"env": "staging"}, False),
        ({"env": "prod", "team": "billing"}, False),  # every tag must match
        ({"owner": "*"}, False),  # an absent tag has no value
        ({"owner": ""}, True),
    ],
)
def test_tags_are_the_custom_properties(tags: dict[str, MatchValue], expected: bool) -> None:
    alert = with_custom({"env": "Prod", "team": "orders"})
    assert routed(alert, {"tags": tags}) is expected


def test_tags_of_an_alert_without_custom_properties() -> None:
    alert = with_custom(None)
    assert not routed(alert, {"tags": {"env": "*"}})
    assert routed(alert, {"tags": {"env": ""}})


def test_prometheus_labels_are_tags() -> None:
    alert = load(PROMETHEUS)  # labels Environment=Prod, cluster=myCluster1; no custom properties
    assert routed(alert, {"tags": {"environment": "prod"}})
    assert routed(alert, {"tags": {"cluster": ("other", "mycluster?")}})
    assert not routed(alert, {"tags": {"environment": "test"}})


def test_labels_count_only_for_prometheus_alerts() -> None:
    data = body(METRIC)
    data["data"]["customProperties"] = None
    data["data"]["alertContext"]["labels"] = {"env": "prod"}
    assert not routed(parse_alert(data), {"tags": {"env": "prod"}})


def test_a_tag_value_that_is_not_text_is_matched_as_shown() -> None:
    assert routed(with_custom({"tier": 1}), {"tags": {"tier": "1"}})


# --------------------------------------------------------------------------- templated fields


def test_fields_and_set_are_filled_from_the_alert() -> None:
    rules = MappingRules(
        fields={"u_scope": "{subscriptionId}/{resourceGroup}", "u_plain": "Cloud Ops", "u_braces": "{{x}} {severity}"},
        routing=(
            RoutingRule(match={"alertType": "metric"}, set={"u_rule": "{alertRule} ({resourceType})", "urgency": "1"}),
        ),
    )
    item = build_work_item(load(METRIC), rules)
    assert dict(item.fields) == {
        "u_scope": f"{SUB}/test-RG",
        "u_plain": "Cloud Ops",
        "u_braces": "{x} Sev4",
        "u_rule": "test-metricAlertRule (microsoft.storage/storageaccounts)",
    }
    assert item.urgency == 1


def test_a_routed_field_wins_over_the_files_field_of_that_name() -> None:
    rules = MappingRules(
        fields={"assignment_group": "{resourceGroup}-default"},
        routing=(RoutingRule(match={}, set={"assignment_group": "{resourceGroup}-routed"}),),
    )
    assert build_work_item(load(METRIC), rules).fields["assignment_group"] == "test-RG-routed"


def test_impact_and_urgency_may_be_templated() -> None:
    data = body(METRIC)
    data["data"]["customProperties"] = None
    data["data"]["essentials"]["alertRule"] = "2"
    rules = MappingRules(routing=(RoutingRule(match={}, set={"impact": "{alertRule}"}),))
    assert build_work_item(parse_alert(data), rules).impact == 2


def test_a_filled_value_is_one_safe_bounded_line() -> None:
    data = body(METRIC)
    data["data"]["essentials"]["alertRule"] = "cpu\nhigh [code]<b>x</b>[/code] javascript:alert(1)"
    data["data"]["essentials"]["description"] = "d" * 50_000
    rules = MappingRules(fields={"u_rule": "rule: {alertRule}", "u_description": "{description}"})
    fields = build_work_item(parse_alert(data), rules).fields
    assert fields["u_rule"] == "rule: cpu high (code)<b>x</b>(/code) (unsafe link removed)"
    assert len(fields["u_description"]) <= 4_000
    assert fields["u_description"].startswith("ddd")


def test_fields_without_a_name_to_fill_are_written_as_given() -> None:
    fields = {"assignment_group": "8a5055c9c61122780043563ef53438e3", "u_note": "two\nlines"}
    assert dict(build_work_item(load(METRIC), MappingRules(fields=fields)).fields) == fields


# --------------------------------------------------------------------------- configuration item


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ((), None),
        ((RoutingRule(match={}, set={}),), None),
        ((RoutingRule(match={}, set={}, configuration_item="{target}"),), "test-storageAccount"),
        ((RoutingRule(match={}, set={}, configuration_item="b0a0d7c1db8a4410a0f3e4b0e3961935"),),
         "b0a0d7c1db8a4410a0f3e4b0e3961935"),
        ((RoutingRule(match={}, set={}, configuration_item="{trackingId}"),), None),  # fills to nothing
        ((RoutingRule(match={"alertType": "log"}, set={}, configuration_item="log-ci"),
          RoutingRule(match={}, set={}, configuration_item="{resourceGroup} storage")), "test-RG storage"),
    ],
)
def test_configuration_item_override(routing: tuple[RoutingRule, ...], expected: str | None) -> None:
    assert configuration_item_override(load(METRIC), MappingRules(routing=routing)) == expected


# --------------------------------------------------------------------------- policy and resolution


def test_the_policy_is_the_first_matching_routes() -> None:
    grouped = Policy(grouping="group")
    closing = Policy(resolution="close")
    top = Policy(reopen_window=600.0)
    rules = MappingRules(
        policy=top,
        routing=(
            RoutingRule(match={"alertType": "log"}, set={}, policy=grouped),
            RoutingRule(match={"resourceGroup": "test-rg"}, set={"category": "Storage"}),  # no policy of its own
            RoutingRule(match={}, set={}, policy=closing),
        ),
    )
    assert policy_for(load("log_alerts_v2_fired.testaction.json"), rules) == grouped
    # The first matching route decides, as for fields: it has no policy, so the file's applies.
    assert policy_for(load(METRIC), rules) == top
    assert policy_for(load(SERVICE_HEALTH), rules) == closing
    assert policy_for(load(METRIC), MappingRules()) == Policy()


def test_resolution_follows_the_routes_policy() -> None:
    alert = load("metric_static_resolved.json")
    policy = Policy(
        resolution="close",
        resolution_code="Closed/Resolved by Caller",
        resolve_fields={"u_resolved_in": "{resourceGroup}", "u_cause": "{monitorCondition} by Azure Monitor"},
    )
    rules = MappingRules(resolution_code="Solved", routing=(RoutingRule(match={}, set={}, policy=policy),))
    how = resolution(alert, rules)
    assert how.close is True
    assert how.code == "Closed/Resolved by Caller"
    assert dict(how.fields) == {"u_resolved_in": "pipelinealertrg", "u_cause": "Resolved by Azure Monitor"}
    assert how.summary.startswith("Closed automatically: Azure Monitor reported alert rule 'WCUS-R2-Gen2'")
    assert "the bridge closed this work item ('Closed/Resolved by Caller')." in how.note


def test_resolution_code_falls_back_to_the_files() -> None:
    alert = load("metric_static_resolved.json")
    rules = MappingRules(resolution_code="Solved", routing=(RoutingRule(match={}, set={}, policy=Policy()),))
    how = resolution(alert, rules)
    assert (how.code, how.close, dict(how.fields)) == ("Solved", False, {})
    assert "the bridge resolved this work item ('Solved')." in how.note


def test_resolve_fields_are_read_only() -> None:
    rules = MappingRules(policy=Policy(resolve_fields={"u": "1"}))
    how = resolution(load("metric_static_resolved.json"), rules)
    with pytest.raises(TypeError):
        how.fields["u"] = "2"  # type: ignore[index]
