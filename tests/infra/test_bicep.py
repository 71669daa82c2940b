"""Static tests of the deployment templates in ``infra/`` (no Azure, no Bicep CLI).

Every ``.bicep`` file is parsed with pycep-parser (>= 0.7, which understands ``extension``), and the
parsed templates are checked for what the deployment promises: the secure webhook's Entra ID fields,
HTTPS/TLS 1.2, identity-only access (no shared keys, no local auth, no FTP/basic publishing), Key Vault
references for every secret setting, no secret in any default or output, least-privilege role
assignments with deterministic names, and app settings that match the settings declarations exactly
(``bridge.config.SETTINGS`` and each built-in adapter's), so a new bridge setting or a typo in the
templates fails here instead of in Azure. A small evaluator (``deployed_settings``) then plays a whole
deployment through the templates, so the app settings a ServiceNow, Jira Cloud, Jira Data Center or
plugin deployment gets are checked as Azure would compute them.

The parsing and the evaluator live in ``tests/infra/bicep.py``; the alerts about the bridge, the
workbook, always-ready instances and the deployment order in ``test_monitoring.py``. The checkov side
of the infra checks is ``.ci/infra-checks.sh``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.adapters.jira import CLOUD, DATACENTER
from bridge.adapters.registry import BUILTIN, settings_of
from bridge.config import AZURE_MONITOR_APP_ID
from bridge.config import SETTINGS as CORE_SETTINGS
from tests.infra.bicep import (
    INFRA,
    INTERPOLATION,
    ROOT,
    TEMPLATES,
    DeployTime,
    accessor_path,
    deployment,
    description,
    evaluate,
    main_module,
    module_config,
    parse,
    refs,
    resources,
    resources_of_type,
    secure_params,
    strings,
    tainted_names,
    template,
    the_resource,
)

# The templates deploy either built-in adapter (itsmAdapter): the core's settings and the ones each
# adapter declares. A plugin adapter's settings go through the free-form bridgeSettings parameter.
ADAPTERS = ("servicenow", "jira")
ADAPTER_SETTINGS = {name: settings_of(name) for name in ADAPTERS}
SETTINGS = (*CORE_SETTINGS, *(s for name in ADAPTERS for s in ADAPTER_SETTINGS[name]))
SETTING_NAMES = frozenset(s.name for s in SETTINGS)
SECRET_SETTING_NAMES = frozenset(s.name for s in SETTINGS if s.secret)


# App settings that are not bridge settings: the Functions host, Application Insights and
# azure-identity read them. Anything else in the templates must be a bridge setting.
PLATFORM_SETTINGS = frozenset(
    {
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        "AZURE_CLIENT_ID",
    }
)
# Bridge settings every deployment provides, unconditionally.
ALWAYS_PROVIDED = frozenset(
    {
        "AUTH_TENANT_ID",
        "AUTH_AUDIENCES",
        "AUTH_ALLOWED_APP_IDS",
        "AUTH_REQUIRED_ROLE",
        "ITSM_ADAPTER",
        "STATE_STORE",
        "STATE_TABLE_NAME",
        "OUTBOX_QUEUE_NAME",
    }
)
# Bridge settings provided only when their parameter is non-empty (each ITSM's own, basic-only /
# OAuth-only, Jira Cloud / Data Center, any subscription); JIRA_DEPLOYMENT only when itsmAdapter is jira.
PROVIDED_WHEN_SET = frozenset(
    {
        "ALLOWED_SUBSCRIPTION_IDS",
        "SERVICENOW_INSTANCE_URL",
        "SERVICENOW_USERNAME",
        "SERVICENOW_PASSWORD",
        "SERVICENOW_CLIENT_ID",
        "SERVICENOW_CLIENT_SECRET",
        "JIRA_BASE_URL",
        "JIRA_DEPLOYMENT",
        "JIRA_EMAIL",
        "JIRA_API_TOKEN",
        "JIRA_PAT",
        "JIRA_PROJECT",
    }
)
# Bridge settings the templates deliberately leave to the bridge's default (or to the `bridgeSettings`
# parameter). Adding a setting to bridge.config.SETTINGS or to a built-in adapter's declarations fails
# test_every_bridge_setting_is_accounted_for until it is put in one of these three sets.
LEFT_TO_DEFAULT = frozenset(
    {
        "AUTH_OPENID_CONFIG_URL",
        "ITSM_TIMEOUT_SECONDS",
        "ITSM_RETRY_ATTEMPTS",
        "ITSM_RETRY_BUDGET_SECONDS",
        "ITSM_INLINE_SECONDS",
        "ITSM_SETTLE_SECONDS",
        "STATE_SQLITE_PATH",
        "OUTBOX_HORIZON_HOURS",
        "OUTBOX_MAX_DELAY_SECONDS",
        "STATE_RETENTION_DAYS",
        "SERVICENOW_TABLE",
        "SERVICENOW_CALLER_ID",
        "SERVICENOW_ASSIGNMENT_GROUP",
        "SERVICENOW_CATEGORY",
        "SERVICENOW_CLOSE_CODE",
        "SERVICENOW_REFERENCE_FIELDS",
        "CMDB_LOOKUP",
        "CMDB_TABLE",
        "CMDB_RESOURCE_ID_FIELD",
        "CMDB_NAME_FIELD",
        "CMDB_CACHE_SECONDS",
        "MAPPING_FILE",
        "REOPEN_WINDOW",
        "AUTO_RESOLVE_AFTER",
        "JIRA_ISSUE_TYPE",
        "JIRA_CORRELATION_FIELD",
        "JIRA_LABEL_PREFIX",
        "JIRA_PRIORITY_MAP",
        "JIRA_RESOLVE_TRANSITION",
        "JIRA_CLOSE_TRANSITION",
        "JIRA_REOPEN_TRANSITION",
        "JIRA_RESOLUTION",
        "JIRA_INTERNAL_COMMENTS",
    }
)
# Secret setting -> the main.bicep @secure() parameter that carries its value.
SECRET_PARAMS = {
    "SERVICENOW_PASSWORD": "servicenowPassword",
    "SERVICENOW_CLIENT_SECRET": "servicenowClientSecret",
    "JIRA_API_TOKEN": "jiraApiToken",
    "JIRA_PAT": "jiraPat",
}
# Bridge setting -> the main.bicep parameter (and azd variable of the same name as the setting) it
# comes from, for the settings an operator gives directly.
PARAMS = {
    "ITSM_ADAPTER": "itsmAdapter",
    "ALLOWED_SUBSCRIPTION_IDS": "allowedSubscriptionIds",
    "SERVICENOW_INSTANCE_URL": "servicenowInstanceUrl",
    "SERVICENOW_USERNAME": "servicenowUsername",
    "SERVICENOW_CLIENT_ID": "servicenowClientId",
    "JIRA_BASE_URL": "jiraBaseUrl",
    "JIRA_DEPLOYMENT": "jiraDeployment",
    "JIRA_EMAIL": "jiraEmail",
    "JIRA_PROJECT": "jiraProject",
    **SECRET_PARAMS,
}
# Key Vault secret (keyvault.bicep) behind each secret setting.
VAULT_SECRETS = {
    "SERVICENOW_PASSWORD": "servicenow-password",
    "SERVICENOW_CLIENT_SECRET": "servicenow-client-secret",
    "JIRA_API_TOKEN": "jira-api-token",
    "JIRA_PAT": "jira-pat",
}

ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
}
# Resource types that take no tags (children, extension resources, configuration).
UNTAGGABLE = frozenset(
    {
        "Microsoft.Authorization/roleAssignments",
        "Microsoft.Web/sites/config",
        "Microsoft.Web/sites/basicPublishingCredentialsPolicies",
        "Microsoft.Storage/storageAccounts/blobServices",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.Storage/storageAccounts/tableServices",
        "Microsoft.Storage/storageAccounts/tableServices/tables",
        "Microsoft.Storage/storageAccounts/queueServices",
        "Microsoft.Storage/storageAccounts/queueServices/queues",
        "Microsoft.Graph/appRoleAssignedTo",
    }
)


@dataclass(frozen=True)
class AppSetting:
    name: str
    value: Any
    conditional: bool


@dataclass(frozen=True)
class AppSettings:
    settings: dict[str, AppSetting]
    passthrough: tuple[str, ...]  # object parameters merged in (names unknown until deploy time)
    union_order: tuple[str, ...]


def app_settings() -> AppSettings:
    tpl = template("app/api.bicep")
    config = the_resource(tpl, "Microsoft.Web/sites/config")
    assert config.body["name"] == "appsettings"
    variables = tpl["variables"]
    params = tpl["parameters"]
    found: dict[str, AppSetting] = {}
    passthrough: list[str] = []

    def collect(node: Any, conditional: bool) -> None:
        if isinstance(node, str) and node in variables:
            collect(variables[node]["value"], conditional)
        elif isinstance(node, str) and node in params:
            passthrough.append(node)
        elif isinstance(node, dict) and "function" in node:
            assert node["function"]["type"] == "union", node
            for arg in node["function"]["parameters"].values():
                collect(arg, conditional)
        elif isinstance(node, dict) and "operator" in node:
            assert node["operator"]["type"] == "conditional", node
            operands = node["operator"]["operands"]
            collect(operands["true_value"], True)
            collect(operands["false_value"], True)
        elif isinstance(node, dict):
            for key, value in node.items():
                assert key not in found, f"{key} is set twice"
                found[key] = AppSetting(key, value, conditional)
        else:
            raise AssertionError(f"unexpected app settings expression {node!r}")

    properties = config.body["properties"]
    collect(properties, False)
    order = tuple(properties["function"]["parameters"].values()) if "function" in properties else ()
    return AppSettings(found, tuple(passthrough), order)


def deployed_settings(**params: Any) -> dict[str, Any]:
    """The Function app's app settings a deployment with these main.bicep parameters gets."""
    api = deployment(**params).module("api")
    config = the_resource(api.tpl, "Microsoft.Web/sites/config")
    settings: dict[str, Any] = evaluate(config.body["properties"], api)
    return settings


def deployed_secrets(**params: Any) -> dict[str, Any]:
    """Key Vault secret name -> value, for the secrets a deployment with these parameters creates."""
    vault = deployment(**params).module("keyvault")
    created = {}
    for secret in resources_of_type(vault.tpl, "Microsoft.KeyVault/vaults/secrets"):
        if secret.condition is None or evaluate(secret.condition, vault) is True:
            created[evaluate(secret.body["name"], vault)] = evaluate(secret.body["properties"]["value"], vault)
    return created


# ---------- every template parses ----------


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_template_parses(path: Path) -> None:
    parsed = parse(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path} declares nothing"


def test_the_expected_templates_exist() -> None:
    names = {str(p.relative_to(INFRA)) for p in TEMPLATES}
    assert names >= {
        "main.bicep",
        "app/api.bicep",
        "app/rbac.bicep",
        "app/entra.bicep",
        "app/monitoring.bicep",
        "app/keyvault.bicep",
        "app/actiongroup.bicep",
        "app/operator-alerts.bicep",
        "app/workbook.bicep",
    }


def test_every_local_module_path_exists() -> None:
    for path in TEMPLATES:
        for name, module in (parse(path).get("modules") or {}).items():
            assert module["type"] == "local", f"{path}:{name} uses a registry module (needs registry access)"
            assert (path.parent / module["detail"]["path"]).is_file(), f"{path}:{name}"


def test_main_is_subscription_scoped_and_creates_the_resource_group() -> None:
    tpl = template("main.bicep")
    assert tpl["globals"]["scope"]["value"] == "subscription"
    rg = the_resource(tpl, "Microsoft.Resources/resourceGroups")
    assert refs(rg.body["tags"]) == {"tags"}
    for name, module in tpl["modules"].items():
        assert module_config(module)[1].get("scope") == "rg", f"module {name} is not deployed into the resource group"


# ---------- secure webhook (action group) ----------


def test_action_group_has_a_secure_webhook_receiver_in_the_common_schema() -> None:
    tpl = template("app/actiongroup.bicep")
    group = the_resource(tpl, "Microsoft.Insights/actionGroups")
    assert group.api_version == "2023-01-01"
    assert group.body["location"] == "Global"
    assert group.body["properties"]["enabled"] is True
    [receiver] = group.body["properties"]["webhookReceivers"]
    assert receiver["useAadAuth"] is True
    assert receiver["useCommonAlertSchema"] is True
    assert receiver["objectId"] == "webhookAppObjectId"
    assert receiver["identifierUri"] == "webhookIdentifierUri"
    assert receiver["tenantId"] == "tenantId"
    assert receiver["serviceUri"] == "serviceUri"
    # A secure webhook is a webhookReceivers entry; "SecurewebhookReceivers" is not a schema property.
    assert set(group.body["properties"]) == {"groupShortName", "enabled", "webhookReceivers"}


def test_action_group_short_name_fits_twelve_characters() -> None:
    [decorator] = [
        d
        for d in template("app/actiongroup.bicep")["parameters"]["shortName"]["decorators"]
        if d["type"] == "max_length"
    ]
    assert decorator["argument"] <= 12
    default = template("main.bicep")["parameters"]["actionGroupShortName"]["default"]
    assert 1 <= len(default) <= 12


def test_main_wires_the_receiver_to_the_entra_app_object_id_uri_and_alerts_route() -> None:
    params = main_module("actionGroup")["config"]["params"]
    assert params["serviceUri"] == "https://${api.outputs.defaultHostName}/api/alerts"
    # The receiver needs the application's object id, not its client id.
    assert accessor_path(params["webhookAppObjectId"]) == "entra.outputs.objectId"
    assert accessor_path(params["webhookIdentifierUri"]) == "entra.outputs.identifierUri"
    assert accessor_path(params["tenantId"]) == "tenant().tenantId"


def test_example_alert_rules_are_optional_and_use_the_action_group() -> None:
    assert template("main.bicep")["parameters"]["deployExampleAlerts"]["default"] is False
    assert main_module("actionGroup")["config"]["params"]["deployExampleAlerts"] == "deployExampleAlerts"
    tpl = template("app/actiongroup.bicep")
    metric = the_resource(tpl, "Microsoft.Insights/metricAlerts")
    log = the_resource(tpl, "Microsoft.Insights/scheduledQueryRules")
    for rule in (metric, log):
        assert refs(rule.condition) == {"deployExampleAlerts"}, f"{rule.name} is not behind the flag"
    assert [accessor_path(a["actionGroupId"]) for a in metric.body["properties"]["actions"]] == [
        "actionGroup.id"
    ]
    assert [accessor_path(a) for a in log.body["properties"]["actions"]["actionGroups"]] == ["actionGroup.id"]
    [criterion] = metric.body["properties"]["criteria"]["allOf"]
    assert (criterion["metricNamespace"], criterion["metricName"]) == ("Microsoft.Web/sites", "Http5xx")
    assert metric.body["properties"]["scopes"] == ["functionAppId"]
    assert log.body["kind"] == "LogAlert"
    assert log.body["properties"]["scopes"] == ["applicationInsightsId"]


# ---------- Entra ID application ----------


def test_entra_app_defines_the_webhook_role_and_asks_for_v2_tokens() -> None:
    tpl = template("app/entra.bicep")
    assert "microsoftGraphV1" in tpl["extensions"]
    app = the_resource(tpl, "Microsoft.Graph/applications")
    assert app.api_version == "v1.0"
    assert app.body["uniqueName"] == "uniqueName"
    assert app.body["api"]["requestedAccessTokenVersion"] == 2
    assert app.body["signInAudience"] == "AzureADMyOrg"
    [role] = app.body["appRoles"]
    assert role["value"] == "roleValue"
    assert role["allowedMemberTypes"] == ["Application"]
    assert role["isEnabled"] is True
    assert role["id"] == "roleId"
    # A deterministic role id: redeploying must not orphan Azure Monitor's assignment.
    role_id = tpl["variables"]["roleId"]["value"]["function"]
    assert role_id["type"] == "guid"
    assert refs(role_id["parameters"]) >= {"uniqueName", "roleValue"}


def test_deploying_principal_owns_the_entra_app() -> None:
    app = the_resource(template("app/entra.bicep"), "Microsoft.Graph/applications")
    owners = app.body["owners"]["relationships"]
    paths = [accessor_path(item) for item in strings_or_nodes(owners)]
    assert "deployer().objectId" in paths


def strings_or_nodes(node: Any) -> list[Any]:
    """Flatten ``union([...], param)`` into its array items and parameter names."""
    if isinstance(node, list):
        return node
    if isinstance(node, dict) and "function" in node and node["function"]["type"] == "union":
        items: list[Any] = []
        for arg in node["function"]["parameters"].values():
            items.extend(strings_or_nodes(arg))
        return items
    return [node]


def test_azure_monitor_service_principal_gets_the_app_role() -> None:
    tpl = template("app/entra.bicep")
    sps = {r.name: r for r in resources_of_type(tpl, "Microsoft.Graph/servicePrincipals")}
    webhook_sp = next(r for r in sps.values() if accessor_path(r.body["appId"]) == "webhookApp.appId")
    assert webhook_sp.body["appRoleAssignmentRequired"] is True
    monitor_sp = next(r for r in sps.values() if r.body["appId"] == "azureMonitorAppId")
    assignment = the_resource(tpl, "Microsoft.Graph/appRoleAssignedTo")
    assert assignment.body["appRoleId"] == "roleId"
    assert accessor_path(assignment.body["principalId"]) == f"{monitor_sp.name}.id"
    assert accessor_path(assignment.body["resourceId"]) == f"{webhook_sp.name}.id"
    params = main_module("entra")["config"]["params"]
    main_vars = template("main.bicep")["variables"]
    assert main_vars[params["azureMonitorAppId"]]["value"] == AZURE_MONITOR_APP_ID
    assert main_vars[params["roleValue"]]["value"] == "ActionGroupsSecureWebhook"


def test_application_id_uri_is_set_to_api_app_id_on_the_same_application() -> None:
    tpl = template("app/entra.bicep")
    module = tpl["modules"]["identifierUri"]["config"]["params"]
    assert module["identifierUri"] == "api://${webhookApp.appId}"
    assert accessor_path(module["uniqueName"]) == "webhookApp.uniqueName"
    second = the_resource(template("app/entra-identifier.bicep"), "Microsoft.Graph/applications")
    assert second.body["uniqueName"] == "uniqueName"
    assert second.body["identifierUris"] == ["identifierUri"]
    assert accessor_path(tpl["outputs"]["identifierUri"]["value"]) == "identifierUri.outputs.identifierUri"


def test_graph_extension_is_enabled_in_bicepconfig() -> None:
    config = json.loads((INFRA / "bicepconfig.json").read_text())
    registry = "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"
    assert config["extensions"]["microsoftGraphV1"].startswith(registry)
    for path in TEMPLATES:
        parsed = parse(path)
        uses_graph = any(r.type.startswith("Microsoft.Graph/") for r in resources(parsed).values())
        assert uses_graph == ("microsoftGraphV1" in (parsed.get("extensions") or {})), path


# ---------- Function app ----------


def test_function_app_is_flex_consumption_python_311_https_only_tls12() -> None:
    tpl = template("app/api.bicep")
    plan = the_resource(tpl, "Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert plan.body["properties"]["reserved"] is True
    app = the_resource(tpl, "Microsoft.Web/sites")
    props = app.body["properties"]
    assert app.body["kind"] == "functionapp,linux"
    assert props["httpsOnly"] is True
    assert props["siteConfig"]["minTlsVersion"] == "1.2"
    assert props["siteConfig"]["scmMinTlsVersion"] == "1.2"
    assert props["siteConfig"]["ftpsState"] == "Disabled"
    assert props["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert accessor_path(props["serverFarmId"]) == f"{plan.name}.id"


def test_function_app_runs_as_the_user_assigned_identity_everywhere() -> None:
    app = the_resource(template("app/api.bicep"), "Microsoft.Web/sites")
    assert app.body["identity"]["type"] == "UserAssigned"
    assert list(app.body["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    assert app.body["properties"]["keyVaultReferenceIdentity"] == "identityId"
    auth = app.body["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert auth == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    params = main_module("api")["config"]["params"]
    assert accessor_path(params["identityId"]) == "identity.outputs.id"
    assert accessor_path(params["identityClientId"]) == "identity.outputs.clientId"


def test_ftp_and_basic_publishing_credentials_are_off() -> None:
    policies = resources_of_type(
        template("app/api.bicep"), "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    )
    assert sorted(p.body["name"] for p in policies) == ["ftp", "scm"]
    for policy in policies:
        assert policy.body["parent"] == "functionApp"
        assert policy.body["properties"] == {"allow": False}
        assert policy.condition is None


def test_storage_allows_no_shared_keys_and_holds_the_bridge_table_and_queues() -> None:
    tpl = template("app/storage.bicep")
    account = the_resource(tpl, "Microsoft.Storage/storageAccounts")
    props = account.body["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    [table] = resources_of_type(tpl, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert table.body["name"] == "stateTableName"
    queues = sorted(
        q.body["name"]
        for q in resources_of_type(tpl, "Microsoft.Storage/storageAccounts/queueServices/queues")
    )
    assert queues == ["${outboxQueueName}-poison", "outboxQueueName"]
    [container] = resources_of_type(tpl, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container.body["properties"]["publicAccess"] == "None"
    storage_params = main_module("storage")["config"]["params"]
    api_params = main_module("api")["config"]["params"]
    assert storage_params["stateTableName"] == api_params["stateTableName"] == "stateTableName"
    assert storage_params["outboxQueueName"] == api_params["outboxQueueName"] == "outboxQueueName"
    main_params = template("main.bicep")["parameters"]
    table_setting = next(s for s in SETTINGS if s.name == "STATE_TABLE_NAME")
    queue_setting = next(s for s in SETTINGS if s.name == "OUTBOX_QUEUE_NAME")
    assert main_params["stateTableName"]["default"] == table_setting.default
    assert main_params["outboxQueueName"]["default"] == queue_setting.default


def test_no_template_uses_keys_or_connection_strings_with_secrets() -> None:
    for path in TEMPLATES:
        text = path.read_text()
        assert "listKeys" not in text and "AccountKey=" not in text and "InstrumentationKey=" not in text, (
            path
        )


def test_host_storage_is_identity_based() -> None:
    settings = app_settings().settings
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__credential"].value == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"].value == "identityClientId"
    assert accessor_path(settings["AzureWebJobsStorage__accountName"].value) == "storage.name"
    assert settings["AZURE_CLIENT_ID"].value == "identityClientId"


def test_application_insights_accepts_only_entra_authenticated_telemetry() -> None:
    component = the_resource(template("app/monitoring.bicep"), "Microsoft.Insights/components")
    assert component.body["properties"]["DisableLocalAuth"] is True
    assert accessor_path(component.body["properties"]["WorkspaceResourceId"]) == "workspace.id"
    settings = app_settings().settings
    auth = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"].value
    assert auth == "Authorization=AAD;ClientId=${identityClientId}"
    connection = accessor_path(settings["APPLICATIONINSIGHTS_CONNECTION_STRING"].value)
    assert connection == "appInsights.properties.ConnectionString"


# ---------- Key Vault and secrets ----------


def test_key_vault_uses_rbac_soft_delete_and_purge_protection() -> None:
    vault = the_resource(template("app/keyvault.bicep"), "Microsoft.KeyVault/vaults")
    props = vault.body["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props


@pytest.mark.parametrize("setting", sorted(SECRET_SETTING_NAMES))
def test_secret_settings_are_key_vault_references(setting: str) -> None:
    entry = app_settings().settings[setting]
    assert entry.conditional, f"{setting} must be omitted when its secret is not given"
    uri_param = INTERPOLATION.findall(entry.value)
    assert entry.value == f"@Microsoft.KeyVault(SecretUri=${{{uri_param[0]}}})"
    # main.bicep passes the versionless vault URI only when the matching secret parameter is non-empty.
    passed = main_module("api")["config"]["params"][uri_param[0]]["operator"]
    assert passed["type"] == "conditional"
    assert passed["operands"]["condition"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": SECRET_PARAMS[setting]},
    }
    assert passed["operands"]["true_value"] == ""
    assert accessor_path(passed["operands"]["false_value"]).startswith("keyvault.outputs.")


def test_secret_settings_are_exactly_the_secure_parameters() -> None:
    assert set(SECRET_PARAMS) == SECRET_SETTING_NAMES
    assert secure_params(template("main.bicep")) == set(SECRET_PARAMS.values())


def test_each_secret_is_created_only_when_given() -> None:
    tpl = template("app/keyvault.bicep")
    secrets = resources_of_type(tpl, "Microsoft.KeyVault/vaults/secrets")
    assert {s.body["properties"]["value"] for s in secrets} == secure_params(tpl)
    for secret in secrets:
        value_param = secret.body["properties"]["value"]
        assert secret.condition == {
            "operator": {
                "type": "not",
                "operands": {
                    "bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": value_param}}}
                },
            }
        }


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_secure_parameter_has_a_secret_default(path: Path) -> None:
    tpl = parse(path)
    for name in secure_params(tpl):
        # '' means "not used" (basic-only / OAuth-only) and keeps azd from prompting; anything else
        # would put a secret into the template.
        assert tpl["parameters"][name]["default"] in (None, ""), f"{path}:{name}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_output_reveals_a_secret(path: Path) -> None:
    tpl = parse(path)
    tainted = tainted_names(tpl)
    for name, output in (tpl.get("outputs") or {}).items():
        assert not refs(output["value"]) & tainted, f"{path}: output {name} reads a secure parameter"
        assert not re.search("password|secret", name, re.IGNORECASE), (
            f"{path}: output {name} looks like a secret"
        )
        assert not any(s.startswith("list") for s in strings(output["value"])), (
            f"{path}: output {name} calls list*()"
        )
        assert not any(d["type"] == "secure" for d in output["decorators"])


def test_secret_values_flow_only_into_secure_module_parameters() -> None:
    main = template("main.bicep")
    tainted = tainted_names(main)
    for name, module in main["modules"].items():
        target = parse(INFRA / module["detail"]["path"])
        for param, value in module_config(module)[1]["params"].items():
            if refs(value, skip_empty_checks=True) & tainted:
                assert param in secure_params(target), (
                    f"module {name}: {param} receives a secret but is not @secure()"
                )


# ---------- app settings <-> bridge.config.SETTINGS ----------


def test_every_app_setting_is_a_bridge_or_platform_setting() -> None:
    names = set(app_settings().settings)
    unknown = names - SETTING_NAMES - PLATFORM_SETTINGS
    assert not unknown, f"app settings the bridge does not know: {sorted(unknown)}"


def test_required_bridge_settings_are_always_provided() -> None:
    settings = app_settings().settings
    required = {s.name for s in CORE_SETTINGS if s.required}
    assert required <= ALWAYS_PROVIDED
    for name in ALWAYS_PROVIDED | PLATFORM_SETTINGS:
        assert name in settings and not settings[name].conditional, name


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapters_required_settings_come_from_parameters_documented_as_required(adapter: str) -> None:
    # Required only when that adapter is the one deployed: provided when set, from a parameter whose
    # description says so (the bridge's health route reports one that is missing).
    main_params = template("main.bicep")["parameters"]
    for spec in ADAPTER_SETTINGS[adapter]:
        if not spec.required:
            continue
        assert spec.name in PROVIDED_WHEN_SET, spec.name
        param = main_params[PARAMS[spec.name]]
        assert param["default"] == "", spec.name
        assert f"Required when itsmAdapter is {adapter}." in description(param), spec.name


def test_the_templates_deploy_every_built_in_adapter() -> None:
    # A new built-in adapter fails here until the templates (and these tests) learn its settings.
    assert set(ADAPTERS) == set(BUILTIN)


def test_optional_bridge_settings_are_provided_when_set() -> None:
    settings = app_settings().settings
    conditional = {name for name, entry in settings.items() if entry.conditional}
    assert conditional == PROVIDED_WHEN_SET


def test_every_bridge_setting_is_accounted_for() -> None:
    assert SETTING_NAMES == ALWAYS_PROVIDED | PROVIDED_WHEN_SET | LEFT_TO_DEFAULT
    assert not (ALWAYS_PROVIDED | PROVIDED_WHEN_SET) & LEFT_TO_DEFAULT
    for spec in SETTINGS:
        if spec.name in LEFT_TO_DEFAULT:
            assert not spec.required, f"{spec.name} is required, so the templates must provide it"


def test_caller_supplied_settings_cannot_override_derived_ones() -> None:
    result = app_settings()
    assert result.passthrough == ("bridgeSettings",)
    # union(): later arguments win, so the free-form object must come first.
    assert result.union_order[0] == "bridgeSettings"


def test_auth_settings_come_from_the_entra_app() -> None:
    params = main_module("api")["config"]["params"]
    assert [accessor_path(a) for a in params["authAudiences"]] == [
        "entra.outputs.appId",
        "entra.outputs.identifierUri",
    ]
    allowed = params["authAllowedAppIds"]["function"]
    assert allowed["type"] == "concat"
    assert allowed["parameters"]["arg_1"] == ["azureMonitorAppId"]
    assert params["authRequiredRole"] == "webhookRoleValue"
    settings = app_settings().settings
    assert settings["AUTH_AUDIENCES"].value["function"] == {
        "type": "join",
        "parameters": {"input_array": "authAudiences", "delimiter": ","},
    }
    assert accessor_path(settings["AUTH_TENANT_ID"].value) == "tenant().tenantId"
    assert settings["AUTH_REQUIRED_ROLE"].value == "authRequiredRole"


def test_allowed_subscriptions_default_to_the_deployment_subscription() -> None:
    value = template("main.bicep")["variables"]["subscriptionsSetting"]["value"]["operator"]["operands"]
    assert value["condition"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "allowedSubscriptionIds"},
    }
    assert accessor_path(value["true_value"]) == "subscription().subscriptionId"
    assert main_module("api")["config"]["params"]["allowedSubscriptionIds"] == "subscriptionsSetting"


def _comparisons(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _comparisons(item)
    elif isinstance(node, dict):
        operator = node.get("operator")
        if isinstance(operator, dict) and str(operator.get("type", "")).startswith(("equals", "not_equals")):
            yield operator
        for value in node.values():
            yield from _comparisons(value)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_comparisons_in_conditions_are_parenthesized(path: Path) -> None:
    # pycep-parser reads `a == 'x' ? b : c` as `a == ('x' ? b : c)`; Bicep does not. Parenthesized,
    # both agree, and the checks above (and deployed_settings) see what Azure evaluates.
    for comparison in _comparisons(parse(path)):
        operand = comparison["operands"]["operand_2"]
        assert not (isinstance(operand, dict) and operand.get("operator", {}).get("type") == "conditional"), (
            f"{path.name}: parenthesize the comparison before '?'"
        )


# ---------- the ITSM: ServiceNow, Jira or a plugin adapter ----------

SN_URL = "https://contoso.service-now.com"
JIRA_URL = "https://contoso.atlassian.net"
# Bridge settings every deployment gets, whichever the ITSM.
COMMON = frozenset(
    {
        "AUTH_TENANT_ID",
        "AUTH_AUDIENCES",
        "AUTH_ALLOWED_APP_IDS",
        "AUTH_REQUIRED_ROLE",
        "ALLOWED_SUBSCRIPTION_IDS",
        "ITSM_ADAPTER",
        "STATE_STORE",
        "STATE_TABLE_NAME",
        "OUTBOX_QUEUE_NAME",
    }
)
# A parameter value for each setting an operator gives directly (secrets are fake, of course).
SAMPLE_VALUES = {
    "servicenowInstanceUrl": SN_URL,
    "servicenowUsername": "azure.monitor.bridge",
    "servicenowPassword": "sn-password-123",
    "servicenowClientId": "sn-client-id",
    "servicenowClientSecret": "sn-client-secret-456",
    "jiraBaseUrl": JIRA_URL,
    "jiraEmail": "bridge@contoso.com",
    "jiraProject": "OPS",
    "jiraApiToken": "jira-api-token-789",
    "jiraPat": "jira-pat-012",
}
# name -> (main.bicep parameters, ITSM settings beyond COMMON, Key Vault secrets created)
DEPLOYMENTS: dict[str, tuple[dict[str, Any], set[str], set[str]]] = {
    "servicenow-basic": (
        {"servicenowInstanceUrl": SN_URL, "servicenowUsername": "u", "servicenowPassword": "sn-password-123"},
        {"SERVICENOW_INSTANCE_URL", "SERVICENOW_USERNAME", "SERVICENOW_PASSWORD"},
        {"servicenow-password"},
    ),
    "servicenow-oauth": (
        {
            "itsmAdapter": "servicenow",
            "servicenowInstanceUrl": SN_URL,
            "servicenowClientId": "c",
            "servicenowClientSecret": "sn-client-secret-456",
        },
        {"SERVICENOW_INSTANCE_URL", "SERVICENOW_CLIENT_ID", "SERVICENOW_CLIENT_SECRET"},
        {"servicenow-client-secret"},
    ),
    "jira-cloud": (
        {
            "itsmAdapter": "jira",
            "jiraBaseUrl": JIRA_URL,
            "jiraProject": "OPS",
            "jiraEmail": "bridge@contoso.com",
            "jiraApiToken": "jira-api-token-789",
        },
        {"JIRA_BASE_URL", "JIRA_DEPLOYMENT", "JIRA_PROJECT", "JIRA_EMAIL", "JIRA_API_TOKEN"},
        {"jira-api-token"},
    ),
    "jira-datacenter": (
        {
            "itsmAdapter": "jira",
            "jiraDeployment": "datacenter",
            "jiraBaseUrl": "https://jira.contoso.com",
            "jiraProject": "OPS",
            "jiraPat": "jira-pat-012",
        },
        {"JIRA_BASE_URL", "JIRA_DEPLOYMENT", "JIRA_PROJECT", "JIRA_PAT"},
        {"jira-pat"},
    ),
    "plugin": (
        {"itsmAdapter": "remedy", "bridgeSettings": {"REMEDY_URL": "https://remedy.contoso.com"}},
        {"REMEDY_URL"},
        set(),
    ),
}


def _vault_reference(secret_name: str) -> str:
    # Versionless: the app follows rotations (keyvault.bicep's vaultUri output ends in "/").
    return f"@Microsoft.KeyVault(SecretUri=<vault.properties.vaultUri>secrets/{secret_name})"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_each_kind_of_deployment_gets_exactly_its_settings_and_secrets(name: str) -> None:
    params, itsm_settings, secrets = DEPLOYMENTS[name]
    settings = deployed_settings(**params)
    assert set(settings) - PLATFORM_SETTINGS == COMMON | itsm_settings
    assert set(settings) >= PLATFORM_SETTINGS
    assert settings["ITSM_ADAPTER"] == params.get("itsmAdapter", "servicenow")
    adapter = settings["ITSM_ADAPTER"]
    if adapter in ADAPTER_SETTINGS:
        required = {s.name for s in ADAPTER_SETTINGS[adapter] if s.required}
        assert required <= set(settings), f"{name} misses {sorted(required - set(settings))}"
    created = deployed_secrets(**params)
    assert set(created) == secrets
    for setting, secret_name in VAULT_SECRETS.items():
        if setting in settings:
            assert settings[setting] == _vault_reference(secret_name)
            assert created[secret_name] == params[SECRET_PARAMS[setting]]
    # A secret's value reaches Key Vault and nothing else.
    rendered = json.dumps(settings, default=str)
    for secret_param in SECRET_PARAMS.values():
        if params.get(secret_param):
            assert params[secret_param] not in rendered


def test_a_servicenow_deployment_keeps_its_settings() -> None:
    """The default adapter, deployed as before itsmAdapter existed: the same settings, plus
    ITSM_ADAPTER=servicenow (the bridge's default anyway), and nothing of Jira's."""
    settings = deployed_settings(servicenowInstanceUrl=SN_URL, servicenowUsername="u", servicenowPassword="p")
    assert settings["ITSM_ADAPTER"] == "servicenow"
    assert settings["SERVICENOW_INSTANCE_URL"] == SN_URL
    assert settings["SERVICENOW_USERNAME"] == "u"
    assert settings["AUTH_ALLOWED_APP_IDS"] == AZURE_MONITOR_APP_ID
    assert settings["AUTH_REQUIRED_ROLE"] == "ActionGroupsSecureWebhook"
    assert settings["ALLOWED_SUBSCRIPTION_IDS"] == DeployTime("subscription().subscriptionId")
    assert (settings["STATE_STORE"], settings["STATE_TABLE_NAME"], settings["OUTBOX_QUEUE_NAME"]) == (
        "azure",
        "alertstate",
        "outbox",
    )
    assert not [name for name in settings if name.startswith("JIRA_")]


def test_itsm_adapter_comes_from_the_itsm_adapter_parameter() -> None:
    param = template("main.bicep")["parameters"]["itsmAdapter"]
    core = next(s for s in CORE_SETTINGS if s.name == "ITSM_ADAPTER")
    assert param["default"] == core.default == "servicenow"
    # No @allowed: a plugin adapter is deployed by its name.
    assert not [d for d in param["decorators"] if d["type"] == "allowed"]
    assert all(word in description(param) for word in ("servicenow", "jira", "plugin"))
    assert main_module("api")["config"]["params"]["itsmAdapter"] == "itsmAdapter"
    entry = app_settings().settings["ITSM_ADAPTER"]
    assert entry.value == "itsmAdapter" and not entry.conditional
    for adapter in ("servicenow", "jira", "remedy"):
        assert deployed_settings(itsmAdapter=adapter)["ITSM_ADAPTER"] == adapter
    # Derived settings win over bridgeSettings, ITSM_ADAPTER included.
    overridden = deployed_settings(itsmAdapter="jira", bridgeSettings={"ITSM_ADAPTER": "servicenow"})
    assert overridden["ITSM_ADAPTER"] == "jira"


ITSM_WHEN_SET = sorted(
    name for name in PROVIDED_WHEN_SET if name.startswith(("SERVICENOW_", "JIRA_")) and name != "JIRA_DEPLOYMENT"
)


@pytest.mark.parametrize("setting", ITSM_WHEN_SET)
def test_itsm_settings_appear_only_when_their_parameters_are_set(setting: str) -> None:
    """A Jira deployment's settings (and a ServiceNow one's) exist only when their parameter is set."""
    adapter = "jira" if setting.startswith("JIRA_") else "servicenow"
    param = PARAMS[setting]
    everything = {p: v for p, v in SAMPLE_VALUES.items() if p.startswith(adapter)}
    without = {p: v for p, v in everything.items() if p != param}
    assert setting in deployed_settings(itsmAdapter=adapter, **everything)
    assert setting not in deployed_settings(itsmAdapter=adapter, **without)
    # Nothing of it in a deployment that leaves every ITSM parameter at its default.
    assert setting not in deployed_settings(itsmAdapter=adapter)
    value = deployed_settings(itsmAdapter=adapter, **everything)[setting]
    expected = _vault_reference(VAULT_SECRETS[setting]) if setting in VAULT_SECRETS else SAMPLE_VALUES[param]
    assert value == expected


def test_jira_deployment_is_set_only_for_the_jira_adapter() -> None:
    param = template("main.bicep")["parameters"]["jiraDeployment"]
    spec = next(s for s in ADAPTER_SETTINGS["jira"] if s.name == "JIRA_DEPLOYMENT")
    assert param["default"] == spec.default == CLOUD
    [allowed] = [d["argument"] for d in param["decorators"] if d["type"] == "allowed"]
    assert sorted(allowed) == sorted([CLOUD, DATACENTER])
    assert deployed_settings(itsmAdapter="jira")["JIRA_DEPLOYMENT"] == CLOUD
    assert deployed_settings(itsmAdapter="Jira", jiraDeployment=DATACENTER)["JIRA_DEPLOYMENT"] == DATACENTER
    assert "JIRA_DEPLOYMENT" not in deployed_settings()
    assert "JIRA_DEPLOYMENT" not in deployed_settings(itsmAdapter="remedy", jiraDeployment=DATACENTER)
    with pytest.raises(ValueError, match="not allowed"):
        deployed_settings(itsmAdapter="jira", jiraDeployment="server")


def test_a_plugin_adapter_takes_its_settings_from_bridge_settings() -> None:
    settings = deployed_settings(
        itsmAdapter="remedy",
        bridgeSettings={"REMEDY_URL": "https://remedy.contoso.com", "AUTH_REQUIRED_ROLE": "Other"},
    )
    assert settings["ITSM_ADAPTER"] == "remedy"
    assert settings["REMEDY_URL"] == "https://remedy.contoso.com"
    assert settings["AUTH_REQUIRED_ROLE"] == "ActionGroupsSecureWebhook"
    assert not [name for name in settings if name.startswith(("SERVICENOW_", "JIRA_"))]


def test_allowed_subscriptions_in_a_deployment() -> None:
    assert deployed_settings()["ALLOWED_SUBSCRIPTION_IDS"] == DeployTime("subscription().subscriptionId")
    assert deployed_settings(allowedSubscriptionIds="a,b")["ALLOWED_SUBSCRIPTION_IDS"] == "a,b"
    assert "ALLOWED_SUBSCRIPTION_IDS" not in deployed_settings(allowedSubscriptionIds="*")


# ---------- role assignments ----------


def test_identity_gets_exactly_the_roles_it_needs_with_guid_names() -> None:
    tpl = template("app/rbac.bicep")
    variables = {name: spec["value"] for name, spec in tpl["variables"].items()}
    granted: dict[str, tuple[str, str | None]] = {}
    for assignment in resources_of_type(tpl, "Microsoft.Authorization/roleAssignments"):
        props = assignment.body["properties"]
        role_definition = props["roleDefinitionId"]["function"]
        assert role_definition["type"] == "subscription_resource_id"
        assert role_definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role_var = role_definition["parameters"]["resource_name_1"]
        name = assignment.body["name"]["function"]
        assert name["type"] == "guid"
        # guid(scope.id, principal, role): deterministic and unique per scope, principal and role.
        assert accessor_path(name["parameters"]["base_string"]) == f"{assignment.body['scope']}.id"
        assert name["parameters"]["extra_string_1"] == props["principalId"]
        assert name["parameters"]["extra_string_2"] == role_var
        granted[variables[role_var]] = (props["principalId"], assignment.body["scope"])
        if props["principalId"] == "principalId":
            assert props["principalType"] == "ServicePrincipal"
            assert assignment.condition is None
    assert granted == {
        ROLE_IDS["Storage Blob Data Owner"]: ("principalId", "storage"),
        ROLE_IDS["Storage Queue Data Contributor"]: ("principalId", "storage"),
        ROLE_IDS["Storage Table Data Contributor"]: ("principalId", "storage"),
        ROLE_IDS["Monitoring Metrics Publisher"]: ("principalId", "appInsights"),
        ROLE_IDS["Key Vault Secrets User"]: ("principalId", "vault"),
        ROLE_IDS["Key Vault Secrets Officer"]: ("operatorPrincipalId", "vault"),
    }
    params = main_module("rbac")["config"]["params"]
    assert accessor_path(params["principalId"]) == "identity.outputs.principalId"


# ---------- names, tags, outputs, parameters ----------


def test_names_derive_from_the_environment_token_with_overrides() -> None:
    main = template("main.bicep")
    token = main["variables"]["resourceToken"]["value"]["function"]
    assert token["type"] == "to_lower"
    assert token["parameters"]["string_to_change"]["function"]["type"] == "unique_string"
    assert refs(token) >= {"environmentName", "location"}
    abbreviations = json.loads((INFRA / "abbreviations.json").read_text())
    used = set(re.findall(r"abbrs\.(\w+)", (INFRA / "main.bicep").read_text()))
    assert used and used <= set(abbreviations)
    overrides = {
        "identity": ("name", "userAssignedIdentityName"),
        "storage": ("name", "storageAccountName"),
        "monitoring": ("logAnalyticsName", "logAnalyticsName"),
        "keyvault": ("name", "keyVaultName"),
        "actionGroup": ("name", "actionGroupName"),
        "api": ("planName", "appServicePlanName"),
    }
    for module, (param, override) in overrides.items():
        value = main["modules"][module]["config"]["params"][param]
        assert override in refs(value), f"{module}.{param} has no override"
        assert any("${resourceToken}" in s for s in strings(value)), f"{module}.{param} is not token-derived"
    assert refs(main["variables"]["appName"]["value"]) >= {"functionAppName", "resourceToken"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_resource_is_tagged(path: Path) -> None:
    for resource in resources(parse(path)).values():
        if resource.existing or resource.type in UNTAGGABLE:
            continue
        if (
            resource.type == "Microsoft.Graph/servicePrincipals"
            and resource.body.get("appId") == "azureMonitorAppId"
        ):
            continue  # Microsoft's own service principal: created if missing, never changed.
        assert "tags" in resource.body, f"{path}: {resource.name} has no tags"
    if path.name == "main.bicep":
        assert template("main.bicep")["variables"]["tags"]["value"] == {"'azd-env-name'": "environmentName"}


def test_function_app_carries_the_azd_service_tag() -> None:
    app = the_resource(template("app/api.bicep"), "Microsoft.Web/sites")
    union = app.body["tags"]["function"]
    assert union["type"] == "union"
    assert union["parameters"]["arg_1"] == "tags"
    assert union["parameters"]["arg_2"] == {"'azd-service-name'": "api"}


def test_main_outputs_are_upper_snake_for_azd() -> None:
    outputs = template("main.bicep")["outputs"]
    assert outputs
    for name in outputs:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
    assert {
        "AZURE_FUNCTION_APP_NAME",
        "WEBHOOK_APP_CLIENT_ID",
        "WEBHOOK_APP_ID_URI",
        "BRIDGE_ALERTS_URL",
    } <= set(outputs)


def test_parameters_file_uses_azd_substitutions_for_declared_parameters() -> None:
    declared = template("main.bicep")["parameters"]
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(mapped) <= set(declared)
    required = {name for name, spec in declared.items() if spec["default"] is None}
    assert required <= set(mapped), f"azd would prompt for {sorted(required - set(mapped))}"
    for name, entry in mapped.items():
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(=[^}]*)?\}", entry["value"]), (
            f"{name} holds a literal value"
        )
    assert mapped["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert mapped["location"]["value"] == "${AZURE_LOCATION}"
    for secret in SECRET_PARAMS.values():
        assert "=" not in mapped[secret]["value"], f"{secret} must not have a default in main.parameters.json"


@pytest.mark.parametrize("setting", sorted(PARAMS))
def test_azd_variables_are_named_like_the_settings_they_become(setting: str) -> None:
    # `azd env set JIRA_BASE_URL ...` (or ITSM_ADAPTER, SERVICENOW_PASSWORD, ...) sets the parameter
    # behind the setting of that name; a default there is the bridge's own.
    mapped = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    value = mapped[PARAMS[setting]]["value"]
    name, _, default = value[2:-1].partition("=")
    assert name == setting
    if default:
        spec = next(s for s in SETTINGS if s.name == setting)
        assert default == spec.default == template("main.bicep")["parameters"][PARAMS[setting]]["default"]


# ---------- azd project and package ----------


def test_azure_yaml_deploys_the_repo_as_a_python_function() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    api = dict(project["services"]["api"])
    hooks = api.pop("hooks")
    assert project["services"].keys() == {"api"}
    assert api == {"project": ".", "language": "python", "host": "function"}
    # Hash-checked bytecode goes into the package (tests/test_packaging.py), on every platform.
    assert hooks == {
        "prepackage": {
            "posix": {"shell": "sh", "run": "python3 dev.py compile"},
            "windows": {"shell": "pwsh", "run": "python dev.py compile"},
        }
    }
    assert project["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}


def _ignored(patterns: list[str], relative: str) -> bool:
    # Enough of gitignore for the patterns used here: names and globs that match any path segment,
    # and paths (a "/" inside) that match from the root, a directory with everything under it.
    parts = relative.split("/")
    rooted = [p.strip("/") for p in patterns if "/" in p.strip("/")]
    if any(relative == p or relative.startswith(p + "/") for p in rooted):
        return True
    return any(Path(part).match(pattern) for pattern in patterns if "/" not in pattern.strip("/") for part in parts)


def test_funcignore_keeps_only_what_runs() -> None:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for kept in (
        "function_app.py",
        "host.json",
        "requirements.txt",
        "bridge/__init__.py",
        "bridge/adapters/base.py",
        "bridge/__pycache__/config.cpython-311.pyc",  # bytecode from `dev.py compile`
        "__pycache__/function_app.cpython-311.pyc",
    ):
        assert not _ignored(patterns, kept), kept
    for dropped in (
        "tests/test_x.py",
        "infra/main.bicep",
        "bench/run.py",
        ".venv/bin/python",
        ".ci/run",
        "docs/index.md",
        "README.md",
        "local.settings.json",
        "requirements-dev.txt",
        "dev.py",
        "bridge/sandbox/entra.py",
        "bridge/sandbox/__pycache__/entra.cpython-311.pyc",
        "bridge/sandbox/samples/metric_static_fired.testaction.json",
        "package.json",
        "node_modules/azurite/package.json",
    ):
        assert _ignored(patterns, dropped), dropped


def test_the_function_app_runs_without_the_sandbox() -> None:
    """The sandbox is not deployed (.funcignore), so nothing the Function imports may need it."""
    import subprocess
    import sys

    probe = (
        "import sys, function_app; "
        "loaded = sorted(m for m in sys.modules if m.startswith('bridge.sandbox')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: S603
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_deployed_bridge_keeps_its_state_in_azure_storage() -> None:
    """STATE_STORE=azure (sqlite is refused in Azure), over the table and queue provisioned, which
    the queue trigger reads by the same setting (function_app.py binds %OUTBOX_QUEUE_NAME%)."""
    settings = app_settings().settings
    assert settings["STATE_STORE"].value == "azure"
    assert settings["STATE_TABLE_NAME"].value == "stateTableName"
    assert settings["OUTBOX_QUEUE_NAME"].value == "outboxQueueName"
    import function_app

    queue = next(
        f.build() for f in function_app.app._function_builders if f.build().get_function_name() == "outbox"
    )
    binding = queue.get_bindings()[0]
    assert binding.queue_name == "%OUTBOX_QUEUE_NAME%" and binding.connection == "AzureWebJobsStorage"
