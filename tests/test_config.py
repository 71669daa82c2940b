"""Settings: every bad value fails at start-up with an error naming the setting, never its value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.config import AZURE_MONITOR_APP_ID, SETTING_NAMES, Settings
from bridge.errors import ConfigError

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
GOOD = {
    "AUTH_TENANT_ID": TENANT,
    "AUTH_AUDIENCES": "api://bridge,0b7c4d3e-2f1a-4e5d-9c8b-7a6f5e4d3c2b",
    "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com/",
    "SERVICENOW_USERNAME": "bridge",
    "SERVICENOW_PASSWORD": "s3cret-Passw0rd",
}


def test_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.allowed_app_ids == (AZURE_MONITOR_APP_ID,)
    assert settings.servicenow_instance_url == "https://contoso.service-now.com"
    assert (settings.retry_attempts, settings.retry_budget_seconds, settings.itsm_timeout_seconds) == (4, 8.0, 4.0)
    assert settings.mapping.close_code == "Solution provided"
    assert settings.mapping.impact_urgency("Sev0") == (1, 1)
    assert settings.mapping.impact_urgency(None) == (3, 3)
    assert settings.cmdb_lookup is True and settings.cmdb_resource_id_field == "object_id"
    assert "s3cret-Passw0rd" not in repr(settings)


@pytest.mark.parametrize(
    "change, setting",
    [
        ({"AUTH_TENANT_ID": ""}, "AUTH_TENANT_ID"),
        ({"AUTH_TENANT_ID": "contoso.onmicrosoft.com"}, "AUTH_TENANT_ID"),
        ({"AUTH_TENANT_ID": TENANT + "0"}, "AUTH_TENANT_ID"),
        ({"AUTH_AUDIENCES": " , "}, "AUTH_AUDIENCES"),
        ({"AUTH_OPENID_CONFIG_URL": "http://login.example.com/x"}, "AUTH_OPENID_CONFIG_URL"),
        ({"ALLOWED_SUBSCRIPTION_IDS": "not-a-guid"}, "ALLOWED_SUBSCRIPTION_IDS"),
        ({"SERVICENOW_INSTANCE_URL": ""}, "SERVICENOW_INSTANCE_URL"),
        ({"SERVICENOW_INSTANCE_URL": "http://contoso.service-now.com"}, "SERVICENOW_INSTANCE_URL"),
        ({"SERVICENOW_PASSWORD": ""}, "SERVICENOW_PASSWORD"),
        ({"SERVICENOW_USERNAME": "", "SERVICENOW_PASSWORD": ""}, "SERVICENOW_USERNAME"),
        ({"SERVICENOW_CLIENT_ID": "abc"}, "SERVICENOW_CLIENT_SECRET"),
        ({"ITSM_TIMEOUT_SECONDS": "nan"}, "ITSM_TIMEOUT_SECONDS"),
        ({"ITSM_TIMEOUT_SECONDS": "-1"}, "ITSM_TIMEOUT_SECONDS"),
        ({"ITSM_RETRY_BUDGET_SECONDS": "inf"}, "ITSM_RETRY_BUDGET_SECONDS"),
        ({"ITSM_RETRY_BUDGET_SECONDS": "3600"}, "ITSM_RETRY_BUDGET_SECONDS"),
        ({"ITSM_RETRY_ATTEMPTS": "\u00b2"}, "ITSM_RETRY_ATTEMPTS"),
        ({"ITSM_RETRY_ATTEMPTS": "0"}, "ITSM_RETRY_ATTEMPTS"),
        ({"CMDB_LOOKUP": "maybe"}, "CMDB_LOOKUP"),
        ({"CMDB_CACHE_SECONDS": "0"}, "CMDB_CACHE_SECONDS"),
        ({"MAPPING_FILE": "/nonexistent/mapping.json"}, "MAPPING_FILE"),
    ],
)
def test_bad_settings_name_the_setting(change: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, **change})
    assert raised.value.setting == setting
    assert "s3cret-Passw0rd" not in str(raised.value)


@pytest.mark.parametrize(
    "mapping, needle",
    [
        ("[]", "JSON object"),
        ("{not json", "not valid JSON"),
        (json.dumps({"colour": "blue"}), "unknown keys ['colour']"),
        (json.dumps({"severity_matrix": {"Sev0": {"impact": 0, "urgency": 1}}}), "severity_matrix.Sev0"),
        (json.dumps({"routing": [{"match": "x"}]}), "routing[0]"),
        (json.dumps({"short_description_template": "{alertRule} on {host}"}), "unknown names ['host']"),
        (json.dumps({"short_description_template": "{alertRule"}), "not a valid template"),
        (json.dumps({"short_description_template": "{alertRule.__class__}"}), "unknown names"),
        (json.dumps({"close_code": 7}), "close_code must be a string"),
    ],
)
def test_bad_mapping_files_fail_at_start_up(tmp_path: Path, mapping: str, needle: str) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(mapping, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "MAPPING_FILE": str(path)})
    assert raised.value.setting == "MAPPING_FILE"
    assert needle in str(raised.value)


def test_mapping_file_and_settings_combine(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({
        "severity_matrix": {"Sev3": {"impact": 1, "urgency": 1}},
        "close_code": "Solved (Permanently)",
        "assignment_group": "Cloud Ops",
        "short_description_template": "[{severity}] {alertRule}",
        "routing": [{"match": {"resourceGroup": "pay"}, "set": {"assignment_group": "Payments"}}],
    }), encoding="utf-8")
    settings = Settings.from_env({**GOOD, "MAPPING_FILE": str(path), "SERVICENOW_ASSIGNMENT_GROUP": "Override"})
    rules = settings.mapping
    assert rules.impact_urgency("Sev3") == (1, 1) and rules.impact_urgency("Sev0") == (1, 1)
    assert rules.close_code == "Solved (Permanently)"
    assert rules.assignment_group == "Override"  # the single-value setting wins over the file
    assert rules.routing[0].set == {"assignment_group": "Payments"}


def test_every_setting_is_in_the_sample_file() -> None:
    sample = json.loads((Path(__file__).resolve().parents[1] / "local.settings.sample.json").read_text())
    assert SETTING_NAMES <= set(sample["Values"])
