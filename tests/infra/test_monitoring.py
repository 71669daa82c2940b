"""The bridge watched from Azure: alert rules about the bridge itself, the operator action group they
notify (never the bridge's own), the lifecycle workbook, always-ready instances, the order in which the
app and its role assignments are deployed, and host.json's telemetry mode.

Rules and workbook query the bridge's telemetry by name, so the names here are the contract with
``bridge.telemetry`` (whose documentation lists them) and are checked against it. Deployments are
played through the templates with the evaluator in ``tests/infra/bicep.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

import bridge.telemetry
from tests.infra.bicep import (
    INFRA,
    ROOT,
    TEMPLATES,
    DeployTime,
    Scope,
    accessor_path,
    deployment,
    description,
    evaluate,
    instances,
    main_module,
    module_config,
    parse,
    refs,
    resources_of_type,
    template,
    the_resource,
)

# The bridge's metrics (customMetrics: the instrument's name in `name`, attributes in customDimensions)
# and log fields (customDimensions of traces).
METRICS: dict[str, frozenset[str]] = {
    "bridge.alerts": frozenset({"alert_type", "action", "outcome", "path"}),
    "bridge.itsm.calls": frozenset({"itsm", "method", "operation", "status"}),
    "bridge.alert.duration": frozenset({"outcome"}),
    "bridge.outbox.pending": frozenset(),
    "bridge.outbox.oldest_pending_age": frozenset(),
    "bridge.outbox.dead_letters": frozenset(),
    "bridge.credential.refused": frozenset(),
}
GAUGES = frozenset(name for name in METRICS if name.startswith(("bridge.outbox.", "bridge.credential.")))
# The log records' fields, as the code writes them (each checked below against the telemetry docs).
LOG_FIELDS = frozenset(bridge.telemetry.EVENT_FIELDS)
OUTCOMES = frozenset(
    {"processed", "queued", "rejected", "unavailable", "invalid", "unauthorized", "forbidden", "too_large"}
)
COMPONENT_ID = DeployTime("appInsights.id")  # monitoring.outputs.applicationInsightsId, as Azure fills it in
EXISTING_GROUP = "/subscriptions/0000/resourceGroups/rg-ops/providers/Microsoft.Insights/actionGroups/ag-oncall"
RULE = "Microsoft.Insights/scheduledQueryRules"
GROUP = "Microsoft.Insights/actionGroups"


@dataclass(frozen=True)
class Expected:
    metric: str
    aggregation: str
    measure: str | None
    operator: str
    threshold: float
    frequency: str
    window: str
    severity: int


# The rule list the README's "Operating the bridge" section describes.
RULES: dict[str, Expected] = {
    "failed": Expected("bridge.alerts", "Total", "failed", "GreaterThan", 0, "PT5M", "PT15M", 1),
    "slow": Expected("bridge.alert.duration", "Maximum", "slowest_ms", "GreaterThan", 5000, "PT5M", "PT15M", 2),
    "dead-letters": Expected(
        "bridge.outbox.dead_letters", "Maximum", "dead_letters", "GreaterThan", 0, "PT15M", "PT15M", 2
    ),
    "stuck": Expected(
        "bridge.outbox.oldest_pending_age", "Maximum", "oldest_pending_s", "GreaterThan", 600, "PT5M", "PT15M", 2
    ),
    "degraded": Expected(
        "bridge.credential.refused", "Maximum", "refused", "GreaterThanOrEqual", 1, "PT5M", "PT15M", 1
    ),
    "silent": Expected("bridge.outbox.pending", "Count", None, "LessThan", 1, "PT15M", "PT30M", 2),
}

_METRIC_NAMES = re.compile(r'\bname\s*(?:==\s*"([^"]+)"|in\s*\(([^)]*)\))')
_DIMENSION = re.compile(r'customDimensions\["([^"]+)"\]')
_PARAMETER_REF = re.compile(r"\{(\w+)(?::\w+)?\}")


def _minutes(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", duration)
    assert match, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def metric_names(query: str) -> set[str]:
    names: set[str] = set()
    for single, listed in _METRIC_NAMES.findall(query):
        names |= {single} if single else set(re.findall(r'"([^"]+)"', listed))
    return names


def assert_plausible_kql(query: str) -> None:
    """What a typo in a hand-written query usually breaks: a table first, one operator per line, and
    balanced brackets and quotes."""
    lines = [line for line in query.strip().splitlines() if line.strip()]
    assert lines[0] in ("customMetrics", "traces"), lines[0]
    assert all(line.startswith("| ") for line in lines[1:]), query
    unquoted = re.sub(r'"[^"]*"', '""', query)
    assert query.count('"') % 2 == 0, query
    for opening, closing in ("()", "[]", "{}"):
        assert unquoted.count(opening) == unquoted.count(closing), query


# ---------- playing deployments ----------


def module_deployed(scope: Scope, name: str) -> bool:
    condition, _ = module_config(scope.tpl["modules"][name])
    return condition is None or evaluate(condition, scope) is True


def deployed(scope: Scope, resource_type: str) -> list[dict[str, Any]]:
    return [body for r in resources_of_type(scope.tpl, resource_type) for body in instances(r, scope)]


def operator_alerts(**params: Any) -> Scope:
    main = deployment(**params)
    assert module_deployed(main, "operatorAlerts")
    return main.module("operatorAlerts")


def deployed_rules(**params: Any) -> dict[str, dict[str, Any]]:
    """Rule key -> the rule as deployed (the key is the name between sqr-itsm- and the token)."""
    rules = {}
    for body in deployed(operator_alerts(**params), RULE):
        match = re.fullmatch(r"sqr-itsm-(.+)-<to_lower\(\)>", body["name"])
        assert match, body["name"]
        rules[match.group(1)] = body
    return rules


def notified(**params: Any) -> list[Any]:
    """The action groups the rules notify (the same for every rule)."""
    targets = [rule["properties"]["actions"]["actionGroups"] for rule in deployed_rules(**params).values()]
    assert all(target == targets[0] for target in targets), "every rule notifies the same operators"
    value: list[Any] = targets[0]
    return value


# ---------- the rules ----------


def test_the_rules_are_the_documented_ones() -> None:
    assert set(deployed_rules()) == set(RULES)
    tpl = template("app/operator-alerts.bicep")
    [rule] = resources_of_type(tpl, RULE)
    assert rule.api_version == "2023-12-01"  # the current GA version of log search alert rules
    assert rule.loop is not None and rule.loop["detail"]["array_name"] == "rules"


@pytest.mark.parametrize("key", RULES)
def test_each_rule_watches_its_metric_against_its_threshold(key: str) -> None:
    expected = RULES[key]
    rule = deployed_rules()[key]
    props = rule["properties"]
    assert rule["kind"] == "LogAlert"
    assert rule["location"] == "westeurope" and rule["tags"] == {"azd-env-name": "itsm-test"}
    # The workspace-based component, queried with the classic table names.
    assert props["scopes"] == [COMPONENT_ID]
    assert props["enabled"] is True and props["autoMitigate"] is True
    assert (props["severity"], props["evaluationFrequency"], props["windowSize"]) == (
        expected.severity,
        expected.frequency,
        expected.window,
    )
    [criterion] = props["criteria"]["allOf"]
    query = criterion["query"]
    assert_plausible_kql(query)
    assert query.startswith("customMetrics\n")
    assert metric_names(query) == {expected.metric}
    assert (criterion["timeAggregation"], criterion["operator"], criterion["threshold"]) == (
        expected.aggregation,
        expected.operator,
        expected.threshold,
    )
    assert criterion["metricMeasureColumn"] == expected.measure
    project = query.strip().splitlines()[-1]
    assert project.startswith("| project timestamp"), "the alert service bins by the time column"
    if expected.measure is not None:
        assert re.search(rf"\b{expected.measure} = value(Sum|Max)\b", project), project
    for dimension in criterion["dimensions"]:
        assert re.search(rf"\b{dimension['name']}\b", project), f"{dimension['name']} is not in the result"
    assert criterion["failingPeriods"] == {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1}
    assert _minutes(props["windowSize"]) >= _minutes(props["evaluationFrequency"])
    # Each says what to do, and where to read more.
    assert props["displayName"].startswith("ITSM bridge: ")
    assert 'See README, "Operating the bridge".' in props["description"]
    assert props["actions"]["customProperties"] == {"runbook": 'README.md, section "Operating the bridge"'}


def test_failed_alerts_are_rejected_or_unavailable_split_by_outcome_and_path() -> None:
    [criterion] = deployed_rules()["failed"]["properties"]["criteria"]["allOf"]
    [listed] = re.findall(r"outcome in \(([^)]*)\)", criterion["query"])
    assert set(re.findall(r'"([^"]+)"', listed)) == {"rejected", "unavailable"} <= OUTCOMES
    assert criterion["dimensions"] == [
        {"name": "outcome", "operator": "Include", "values": ["*"]},
        {"name": "path", "operator": "Include", "values": ["*"]},
    ]
    assert "valueSum" in criterion["query"], "a counter's points carry the increment in valueSum"


def test_gauge_rules_look_back_over_several_sweeps() -> None:
    # The gauges are reported every 5 minutes (the outbox sweep timer): a window of one sweep would
    # flap, and "silent" needs room for several missed ones.
    for key, expected in RULES.items():
        if expected.metric in GAUGES:
            assert _minutes(RULES[key].window) >= 15, key
    assert _minutes(RULES["silent"].window) >= 30


def test_rule_queries_read_only_the_bridges_metrics_and_their_dimensions() -> None:
    for key, rule in deployed_rules().items():
        [criterion] = rule["properties"]["criteria"]["allOf"]
        [metric] = metric_names(criterion["query"])
        assert metric in METRICS, key
        assert set(_DIMENSION.findall(criterion["query"])) <= METRICS[metric], key


def test_rules_need_no_identity() -> None:
    # Log search alerts read a component in their own resource group without one; an identity would
    # need roles of its own.
    [rule] = resources_of_type(template("app/operator-alerts.bicep"), RULE)
    assert "identity" not in rule.body


def test_the_rules_can_be_left_out() -> None:
    assert template("main.bicep")["parameters"]["deployOperatorAlerts"]["default"] is True
    condition, _ = module_config(main_module("operatorAlerts"))
    assert condition == "deployOperatorAlerts"
    main = deployment(deployOperatorAlerts=False, operatorEmails="ops@contoso.com")
    assert not module_deployed(main, "operatorAlerts")
    assert evaluate(main.tpl["outputs"]["BRIDGE_OPERATOR_ACTION_GROUP_ID"]["value"], main) == ""


# ---------- who hears them ----------


def test_operator_emails_get_an_action_group_of_their_own() -> None:
    scope = operator_alerts(operatorEmails="ops@contoso.com, oncall@contoso.com")
    [group] = deployed(scope, GROUP)
    assert group["location"] == "Global" and group["name"] == "ag-itsm-ops-<to_lower()>"
    props = group["properties"]
    assert props["groupShortName"] == "itsm-ops" and props["enabled"] is True
    assert [(r["emailAddress"], r["useCommonAlertSchema"]) for r in props["emailReceivers"]] == [
        ("ops@contoso.com", True),
        ("oncall@contoso.com", True),
    ]
    assert len({r["name"] for r in props["emailReceivers"]}) == 2, "receiver names are unique in a group"
    assert set(props) == {"groupShortName", "enabled", "emailReceivers"}
    assert notified(operatorEmails="ops@contoso.com, oncall@contoso.com") == [DeployTime("operatorGroup.id")]


def test_the_operator_group_name_can_be_overridden() -> None:
    scope = operator_alerts(operatorEmails="ops@contoso.com", operatorActionGroupName="ag-platform-ops")
    assert [group["name"] for group in deployed(scope, GROUP)] == ["ag-platform-ops"]


def test_an_existing_action_group_wins_and_nothing_is_created() -> None:
    for emails in ("", "ops@contoso.com"):
        scope = operator_alerts(operatorActionGroupId=EXISTING_GROUP, operatorEmails=emails)
        assert deployed(scope, GROUP) == []
        assert notified(operatorActionGroupId=EXISTING_GROUP, operatorEmails=emails) == [EXISTING_GROUP]
    main = deployment(operatorActionGroupId=EXISTING_GROUP)
    assert evaluate(main.tpl["outputs"]["BRIDGE_OPERATOR_ACTION_GROUP_ID"]["value"], main) == EXISTING_GROUP


def test_without_operators_the_rules_still_fire_but_notify_nobody() -> None:
    assert deployed(operator_alerts(), GROUP) == []
    assert set(deployed_rules()) == set(RULES)
    assert notified() == []
    main = deployment()
    assert evaluate(main.tpl["outputs"]["BRIDGE_OPERATOR_ACTION_GROUP_ID"]["value"], main) == ""


def test_alerts_about_the_bridge_never_reach_the_bridge() -> None:
    # Nothing of the bridge's own action group (or of the app it calls) flows into the operator module.
    _, config = module_config(main_module("operatorAlerts"))
    read = set().union(*(refs(value) for value in config["params"].values()))
    assert not read & {"actionGroup", "api", "entra"}, read
    # The module has no webhook at all: its group only e-mails.
    text = (INFRA / "app/operator-alerts.bicep").read_text()
    assert "webhookReceivers" not in text and "serviceUri" not in text
    # And the group it creates is not the bridge's.
    main = deployment(operatorEmails="ops@contoso.com")
    [bridge_group] = deployed(main.module("actionGroup"), GROUP)
    [operator_group] = deployed(main.module("operatorAlerts"), GROUP)
    assert operator_group["name"] != bridge_group["name"]
    assert operator_group["properties"]["groupShortName"] != bridge_group["properties"]["groupShortName"]


# ---------- the workbook ----------

WORKBOOK_FILE = INFRA / "app/workbooks/bridge-lifecycle.workbook.json"


def workbook_definition() -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(WORKBOOK_FILE.read_text())
    return definition


def workbook_queries() -> dict[str, str]:
    return {item["name"]: item["content"]["query"] for item in workbook_definition()["items"] if item["type"] == 3}


def test_the_workbook_is_a_shared_workbook_of_the_component_with_a_guid_name() -> None:
    tpl = template("app/workbook.bicep")
    workbook = the_resource(tpl, "Microsoft.Insights/workbooks")
    assert workbook.api_version == "2023-06-01"
    name = workbook.body["name"]["function"]
    assert name["type"] == "guid" and refs(name["parameters"]) == {"applicationInsightsId"}
    [deployed_workbook] = deployed(deployment().module("workbook"), "Microsoft.Insights/workbooks")
    assert deployed_workbook["kind"] == "shared"
    props = deployed_workbook["properties"]
    assert props["category"] == "workbook"
    assert props["sourceId"] == COMPONENT_ID
    assert props["version"] == "Notebook/1.0"
    assert props["displayName"] == "ITSM bridge: alert lifecycle"
    assert accessor_path(module_config(main_module("workbook"))[1]["params"]["applicationInsightsId"]) == (
        "monitoring.outputs.applicationInsightsId"
    )
    assert module_config(main_module("workbook"))[0] is None
    assert "BRIDGE_WORKBOOK_ID" in template("main.bicep")["outputs"]


def test_the_workbooks_serialized_data_is_its_definition_opened_on_the_component() -> None:
    [deployed_workbook] = deployed(deployment().module("workbook"), "Microsoft.Insights/workbooks")
    serialized = deployed_workbook["properties"]["serializedData"]
    assert isinstance(serialized, str)
    data = json.loads(serialized)
    assert data["fallbackResourceIds"] == [str(COMPONENT_ID)]
    assert {k: v for k, v in data.items() if k != "fallbackResourceIds"} == {
        k: v for k, v in workbook_definition().items() if k != "fallbackResourceIds"
    }


def test_the_workbook_definition_is_well_formed() -> None:
    definition = workbook_definition()
    assert definition["version"] == "Notebook/1.0"
    items = definition["items"]
    names = [item["name"] for item in items]
    assert len(names) == len(set(names)), "step names are unique"
    parameters = {p["name"] for item in items if item["type"] == 9 for p in item["content"]["parameters"]}
    assert "TimeRange" in parameters
    for item in items:
        assert item["type"] in (1, 3, 9), item["name"]
        if item["type"] != 3:
            continue
        content = item["content"]
        assert content["version"] == "KqlItem/1.0"
        assert (content["queryType"], content["resourceType"]) == (0, "microsoft.insights/components")
        assert content["timeContextFromParameter"] in parameters
        assert set(_PARAMETER_REF.findall(content["query"])) <= parameters, item["name"]
        assert content["visualization"] in ("timechart", "table"), item["name"]
        assert_plausible_kql(content["query"])


def test_the_workbook_shows_the_lifecycle_at_a_glance() -> None:
    queries = workbook_queries()
    shown = set().union(*(metric_names(q) for q in queries.values()))
    assert shown == set(METRICS), f"not shown: {sorted(set(METRICS) - shown)}"
    by_metric = {name: [q for q in queries.values() if name in metric_names(q)] for name in METRICS}
    # Alerts by action and outcome over time; answer latency; ITSM calls by status.
    assert any("bin(timestamp" in q and "outcome" in q and "action" in q for q in by_metric["bridge.alerts"])
    assert any("valueMax" in q and "bin(timestamp" in q for q in by_metric["bridge.alert.duration"])
    assert any("by bin(timestamp, {TimeRange:grain}), status" in q for q in by_metric["bridge.itsm.calls"])
    # Recent rejected and dead-letter lines from the logs, newest first.
    problems = queries["problems"]
    assert problems.startswith("traces\n") and "bridge_event" in problems and "error" in problems
    assert "order by timestamp desc" in problems
    for name, query in queries.items():
        allowed = LOG_FIELDS if query.startswith("traces") else frozenset().union(*METRICS.values())
        assert set(_DIMENSION.findall(query)) <= allowed, name


def test_metric_and_log_names_are_the_ones_the_bridge_documents() -> None:
    # bridge.telemetry documents what it records ("names are fixed"); a rename there must show here.
    documented = bridge.telemetry.__doc__ or ""
    for name in METRICS:
        assert f"``{name}``" in documented, name
    for dimensions in METRICS.values():
        for dimension in dimensions:
            assert f"``{dimension}``" in documented, dimension
    for field in LOG_FIELDS:
        assert f"``{field}``" in documented or f'``{field}="' in documented, field
    for outcome in OUTCOMES:
        assert f"``{outcome}``" in documented, outcome


# ---------- always-ready instances ----------


def deployed_scale(**params: Any) -> dict[str, Any]:
    api = deployment(**params).module("api")
    [app] = deployed(api, "Microsoft.Web/sites")
    scale: dict[str, Any] = app["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    return scale


def test_no_always_ready_instance_by_default() -> None:
    scale = deployed_scale()
    assert scale == {"instanceMemoryMB": 2048, "maximumInstanceCount": 40, "alwaysReady": []}
    assert template("main.bicep")["parameters"]["alwaysReadyInstances"]["default"] == 0
    assert deployed_scale(alwaysReadyInstances=0)["alwaysReady"] == []


@pytest.mark.parametrize("count", [1, 3, 10])
def test_always_ready_instances_serve_the_http_group(count: int) -> None:
    assert deployed_scale(alwaysReadyInstances=count)["alwaysReady"] == [{"name": "http", "instanceCount": count}]


@pytest.mark.parametrize("count", [-1, 11])
def test_always_ready_instances_are_bounded(count: int) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        deployed_scale(alwaysReadyInstances=count)


def test_always_ready_documents_its_cost() -> None:
    text = description(template("main.bicep")["parameters"]["alwaysReadyInstances"])
    assert "billed around the clock" in text and "10 s" in text


def test_the_http_group_is_the_alerts_and_health_routes() -> None:
    # "http" groups every HTTP-triggered function: what Azure Monitor (and health checks) call.
    import function_app

    routes = {}
    for builder in function_app.app._function_builders:
        function = builder.build()
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                routes[function.get_function_name()] = binding.route
    assert routes == {"alerts": "alerts", "health": "health"}


# ---------- deployment order ----------


def _module_dependencies(main: dict[str, Any]) -> dict[str, set[str]]:
    """Module -> the modules it waits for: explicit dependsOn, and any module whose outputs it reads."""
    names = set(main["modules"])
    graph = {}
    for name, module in main["modules"].items():
        _, config = module_config(module)
        read = refs(config["params"]) | {accessor_path(d) for d in config.get("dependsOn") or []}
        graph[name] = read & names
    return graph


def _after(graph: dict[str, set[str]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[name])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    return seen


def test_the_app_is_created_after_its_role_assignments() -> None:
    main = template("main.bicep")
    graph = _module_dependencies(main)
    _, api = module_config(main["modules"]["api"])
    assert "rbac" in [accessor_path(d) for d in api["dependsOn"]]
    assert _after(graph, "api") >= {"identity", "storage", "monitoring", "keyvault", "rbac"}
    # No cycle: the role assignments never wait for the app.
    assert "api" not in _after(graph, "rbac")
    assert module_config(main["modules"]["rbac"])[0] is None, "the roles are always granted"
    # rbac holds every role assignment of the deployment, so "after rbac" is "after all of them".
    for path in TEMPLATES:
        if path.name != "rbac.bicep":
            assert not resources_of_type(parse(path), "Microsoft.Authorization/roleAssignments"), path
    # The bridge's action group (and with it Azure Monitor's first call) comes after the app.
    assert "api" in _after(graph, "actionGroup")


# ---------- parameters, azd, host.json ----------


def test_the_new_options_are_azd_variables() -> None:
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert mapped["alwaysReadyInstances"]["value"] == "${ALWAYS_READY_INSTANCES=0}"
    assert mapped["deployOperatorAlerts"]["value"] == "${DEPLOY_OPERATOR_ALERTS=true}"
    assert mapped["operatorEmails"]["value"] == "${OPERATOR_EMAILS}"
    assert mapped["operatorActionGroupId"]["value"] == "${OPERATOR_ACTION_GROUP_ID}"
    text = (ROOT / "azure.yaml").read_text()
    for variable in ("ALWAYS_READY_INSTANCES", "OPERATOR_EMAILS", "OPERATOR_ACTION_GROUP_ID", "DEPLOY_OPERATOR_ALERTS"):
        assert variable in text, variable


def test_no_output_feeds_back_into_an_azd_variable() -> None:
    # azd writes the outputs into the environment; an output named like a variable the parameters file
    # reads becomes the next provision's input (BRIDGE_OPERATOR_ACTION_GROUP_ID named OPERATOR_ACTION_GROUP_ID
    # would turn the e-mail group into an "existing" one). Only an output that is that parameter may.
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    outputs = template("main.bicep")["outputs"]
    for param, entry in mapped.items():
        match = re.match(r"\$\{([A-Z0-9_]+)", entry["value"])
        assert match, entry
        if match.group(1) in outputs:
            assert outputs[match.group(1)]["value"] == param, match.group(1)


def test_host_exports_opentelemetry_and_keeps_its_settings() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert host["version"] == "2.0"
    assert host["functionTimeout"] == "00:02:00"
    assert host["extensions"]["queues"]["messageEncoding"] == "base64"
    assert host["extensionBundle"]["id"] == "Microsoft.Azure.Functions.ExtensionBundle"


def test_the_worker_does_not_configure_azure_monitor_itself() -> None:
    # The Python worker's configure_azure_monitor() passes no credential (azure-functions-python-worker,
    # azure_functions_worker/dispatcher.py and runtimes/*/otel.py); only azure-monitor-opentelemetry-
    # exporter >= 1.0.0b36 would pick APPLICATIONINSIGHTS_AUTHENTICATION_STRING up on its own. With local
    # auth off that is not enough to rely on: the bridge configures the distro with the managed identity
    # itself and takes the trace context from func.Context.
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" not in deployed_settings_names()
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" not in (INFRA / "app/api.bicep").read_text()


def deployed_settings_names() -> set[str]:
    api = deployment().module("api")
    [settings] = deployed(api, "Microsoft.Web/sites/config")
    return set(settings["properties"])
