"""Settings: every bad value fails at start-up with an error naming the setting, never its value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.adapters.registry import BUILTIN, settings_of
from bridge.config import (
    AZURE_MONITOR_APP_ID,
    SETTING_NAMES,
    Settings,
    SettingsErrors,
    is_key_vault_reference,
    unresolved_references,
)
from bridge.config import SETTINGS as SETTINGS_OF_CORE
from bridge.errors import ConfigError
from bridge.rules import Policy
from bridge.runtime import validate

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
    assert settings.itsm_adapter == "servicenow"
    assert settings.value("SERVICENOW_INSTANCE_URL") == "https://contoso.service-now.com/"  # the adapter trims it
    assert (settings.retry_attempts, settings.retry_budget_seconds, settings.itsm_timeout_seconds) == (4, 8.0, 4.0)
    assert settings.mapping.resolution_code is None  # the adapter's own default applies
    assert settings.mapping.impact_urgency("Sev0") == (1, 1)
    assert settings.mapping.impact_urgency(None) == (3, 3)
    assert settings.cmdb_lookup is True
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
    # validate() is what start-up and check-config run: the core's settings, then the adapter's.
    with pytest.raises(ConfigError) as raised:
        validate({**GOOD, **change})
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
        (json.dumps({"close_code": 7}), "resolution_code must be a string"),
        (json.dumps({"close_code": "a", "resolution_code": "b"}), "close_code and resolution_code are the same key"),
        (json.dumps({"fields": ["x"]}), "fields must be an object"),
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
    settings = Settings.from_env({**GOOD, "MAPPING_FILE": str(path)})
    rules = settings.mapping
    assert rules.impact_urgency("Sev3") == (1, 1) and rules.impact_urgency("Sev0") == (1, 1)
    # The keys of earlier versions are the neutral ones' aliases.
    assert rules.resolution_code == "Solved (Permanently)"
    assert rules.fields == {"assignment_group": "Cloud Ops"}
    assert rules.title_template == "[{severity}] {alertRule}"
    assert rules.routing[0].set == {"assignment_group": "Payments"}


# --- policy defaults: REOPEN_WINDOW, AUTO_RESOLVE_AFTER (issue #11) -------------------------------


def test_policy_defaults_are_off() -> None:
    assert Settings.from_env(GOOD).mapping.policy == Policy()


def test_policy_settings_are_the_defaults_the_mapping_file_goes_over(tmp_path: Path) -> None:
    env = {**GOOD, "REOPEN_WINDOW": "2h", "AUTO_RESOLVE_AFTER": "1800"}
    assert Settings.from_env(env).mapping.policy == Policy(reopen_window=7200.0, auto_resolve_after=1800.0)

    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({
        "policy": {"reopen_window": "10m"},
        "routing": [{"match": {"alertType": "activity_log"}, "policy": {"auto_resolve_after": "1d"}}],
    }), encoding="utf-8")
    rules = Settings.from_env({**env, "MAPPING_FILE": str(path)}).mapping
    assert rules.policy == Policy(reopen_window=600.0, auto_resolve_after=1800.0)
    assert rules.routing[0].policy == Policy(reopen_window=600.0, auto_resolve_after=86400.0)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("REOPEN_WINDOW", "soon", "must be a duration: a number of seconds, or a number with s, m, h or d"),
        ("REOPEN_WINDOW", "-5", "must be a duration"),
        ("REOPEN_WINDOW", "nan", "must be a duration"),
        ("REOPEN_WINDOW", "31d", "must be at most 30 days"),
        ("AUTO_RESOLVE_AFTER", "1w", "must be a duration"),
        ("AUTO_RESOLVE_AFTER", "2592001", "must be at most 30 days"),
    ],
)
def test_bad_policy_settings_name_the_setting(name: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, name: value})
    assert raised.value.setting == name
    assert str(raised.value).startswith(f"{name}: {needle}")
    assert value not in str(raised.value)


def test_the_reopen_window_must_end_before_the_record_is_purged(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "STATE_RETENTION_DAYS": "2", "REOPEN_WINDOW": "2d"})
    assert str(raised.value) == (
        "REOPEN_WINDOW: must be shorter than STATE_RETENTION_DAYS: the record that remembers a resolved work "
        "item is deleted after that"
    )
    # The default retention (30 days) leaves room for the longest window but one.
    assert Settings.from_env({**GOOD, "REOPEN_WINDOW": "29d"}).mapping.policy.reopen_window == 29 * 86400.0
    with pytest.raises(ConfigError, match="REOPEN_WINDOW: must be shorter than STATE_RETENTION_DAYS"):
        Settings.from_env({**GOOD, "REOPEN_WINDOW": "30d"})
    assert Settings.from_env({**GOOD, "STATE_RETENTION_DAYS": "2", "REOPEN_WINDOW": "1d"}).mapping

    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"routing": [{"match": {}, "policy": {"reopen_window": "3d"}}]}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "STATE_RETENTION_DAYS": "2", "MAPPING_FILE": str(path)})
    assert raised.value.setting == "MAPPING_FILE"
    assert "routing[0].policy.reopen_window must be shorter than STATE_RETENTION_DAYS" in str(raised.value)
    assert Settings.from_env({**GOOD, "STATE_RETENTION_DAYS": "4", "MAPPING_FILE": str(path)}).mapping


def test_a_bad_retention_is_reported_alone_not_as_a_window_too_long() -> None:
    problems = Settings.problems({**GOOD, "STATE_RETENTION_DAYS": "forever", "REOPEN_WINDOW": "20d"})
    assert [p.setting for p in problems] == ["STATE_RETENTION_DAYS"]


def test_bad_policy_settings_and_mapping_file_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps({"policy": {"grouping": "all"}}), encoding="utf-8")
    env = {**GOOD, "MAPPING_FILE": str(path), "REOPEN_WINDOW": "x", "AUTO_RESOLVE_AFTER": "y"}
    assert [p.setting for p in Settings.problems(env)] == ["MAPPING_FILE", "REOPEN_WINDOW", "AUTO_RESOLVE_AFTER"]


def test_every_setting_is_in_the_sample_file() -> None:
    """The core's settings and every built-in adapter's, as each declares them."""
    sample = json.loads((Path(__file__).resolve().parents[1] / "local.settings.sample.json").read_text())
    declared = set(SETTING_NAMES)
    for name in BUILTIN:
        declared |= {s.name for s in settings_of(name)}
    assert declared <= set(sample["Values"])
    assert set(sample["Values"]) - declared <= {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"}


# --- the state store and the outbox ------------------------------------------------------------

ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LW5ldmVyLWVjaG9lZA=="
KEYED_CONNECTION = (
    f"DefaultEndpointsProtocol=https;AccountName=bridgestate;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)


def test_state_and_outbox_defaults() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.state_store == "sqlite"
    assert settings.state_sqlite_path == ".bridge/state.sqlite3"
    assert (settings.state_table_name, settings.outbox_queue_name) == ("alertstate", "outbox")
    assert settings.storage is None
    assert settings.inline_seconds == 3.0
    assert settings.settle_seconds == 60.0
    assert settings.outbox_horizon_seconds == 72 * 3600.0
    assert settings.outbox_max_delay_seconds == 60.0


def test_state_sqlite_path_is_taken_as_given(tmp_path: Path) -> None:
    path = str(tmp_path / "nested" / "state.sqlite3")
    assert Settings.from_env({**GOOD, "STATE_SQLITE_PATH": path}).state_sqlite_path == path


@pytest.mark.parametrize("value", ["SQLite", " sqlite ", "sqlite"])
def test_state_store_sqlite_is_case_and_space_insensitive(value: str) -> None:
    assert Settings.from_env({**GOOD, "STATE_STORE": value}).state_store == "sqlite"


@pytest.mark.parametrize("value", ["redis", "table", "memory", "sqlite3"])
def test_unknown_state_store_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "STATE_STORE": value})
    assert raised.value.setting == "STATE_STORE"
    assert "sqlite or azure" in str(raised.value)


def test_sqlite_is_refused_when_running_in_azure() -> None:
    env = {**GOOD, "STATE_STORE": "sqlite", "WEBSITE_INSTANCE_ID": "a1b2c3", "AzureWebJobsStorage": KEYED_CONNECTION}
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert raised.value.setting == "STATE_STORE"
    assert "cannot be used in Azure" in str(raised.value)
    assert ACCOUNT_KEY not in str(raised.value)


def test_in_azure_the_state_store_defaults_to_azure() -> None:
    env = {**GOOD, "WEBSITE_INSTANCE_ID": "a1b2c3", "AzureWebJobsStorage__accountName": "bridgestate"}
    settings = Settings.from_env(env)
    assert settings.state_store == "azure"
    assert settings.storage is not None and settings.storage.uses_identity
    assert settings.storage.table_endpoint == "https://bridgestate.table.core.windows.net"
    assert settings.storage.queue_endpoint == "https://bridgestate.queue.core.windows.net"


@pytest.mark.parametrize(
    "env",
    [
        {"STATE_STORE": "azure"},
        {"STATE_STORE": "azure", "AzureWebJobsStorage": "  "},
        {"WEBSITE_INSTANCE_ID": "a1b2c3"},  # azure by default in Azure, and no connection
    ],
    ids=["azure-no-connection", "azure-blank-connection", "in-azure-no-connection"],
)
def test_azure_state_store_without_a_storage_connection_names_azurewebjobsstorage(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, **env})
    assert raised.value.setting == "AzureWebJobsStorage"
    assert "STATE_STORE=azure" in str(raised.value)


def test_azure_state_store_with_a_connection_string_keeps_the_key_out_of_repr() -> None:
    settings = Settings.from_env({**GOOD, "STATE_STORE": "azure", "AzureWebJobsStorage": KEYED_CONNECTION})
    assert settings.state_store == "azure"
    assert settings.storage is not None and not settings.storage.uses_identity
    assert settings.storage.table_endpoint == "https://bridgestate.table.core.windows.net"
    assert ACCOUNT_KEY not in repr(settings)
    assert ACCOUNT_KEY not in settings.storage.describe()


def test_azure_state_store_with_development_storage_points_at_azurite() -> None:
    settings = Settings.from_env({**GOOD, "STATE_STORE": "azure", "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert settings.storage is not None and settings.storage.is_development()
    assert settings.storage.queue_endpoint == "http://127.0.0.1:10001/devstoreaccount1"
    assert settings.storage.table_endpoint == "http://127.0.0.1:10002/devstoreaccount1"


@pytest.mark.parametrize(
    "connection",
    ["not a connection string", f"AccountKey={ACCOUNT_KEY}", "AccountName=bridgestate"],
    ids=["garbage", "key-without-account", "neither-key-nor-sas"],
)
def test_a_malformed_storage_connection_names_the_setting_not_the_key(connection: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "STATE_STORE": "azure", "AzureWebJobsStorage": connection})
    assert raised.value.setting == "AzureWebJobsStorage"
    assert ACCOUNT_KEY not in str(raised.value)


@pytest.mark.parametrize("name", ["alertstate", "AlertState2", "abc", "a" + "b" * 62])
def test_good_table_names(name: str) -> None:
    assert Settings.from_env({**GOOD, "STATE_TABLE_NAME": name}).state_table_name == name


@pytest.mark.parametrize("name", ["ab", "1alerts", "alert-state", "alert_state", "a" + "b" * 63, "älerts"])
def test_bad_table_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "STATE_TABLE_NAME": name})
    assert raised.value.setting == "STATE_TABLE_NAME"


@pytest.mark.parametrize("name", ["outbox", "bridge-outbox-2", "abc", "a" * 56])
def test_good_queue_names(name: str) -> None:
    assert Settings.from_env({**GOOD, "OUTBOX_QUEUE_NAME": name}).outbox_queue_name == name


@pytest.mark.parametrize(
    "name",
    ["Outbox", "ob", "out--box", "-outbox", "outbox-", "out_box", "a" * 57],
    ids=["upper-case", "too-short", "double-hyphen", "leading-hyphen", "trailing-hyphen", "underscore",
         "no-room-for-poison"],
)
def test_bad_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "OUTBOX_QUEUE_NAME": name})
    assert raised.value.setting == "OUTBOX_QUEUE_NAME"
    assert "-poison" in str(raised.value)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("ITSM_INLINE_SECONDS", "4", ("inline_seconds", 4.0)),
        ("ITSM_INLINE_SECONDS", "0.5", ("inline_seconds", 0.5)),
        ("ITSM_SETTLE_SECONDS", "3600", ("settle_seconds", 3600.0)),
        ("OUTBOX_HORIZON_HOURS", "0.5", ("outbox_horizon_seconds", 1800.0)),
        ("OUTBOX_HORIZON_HOURS", "2160", ("outbox_horizon_seconds", 2160 * 3600.0)),
        ("OUTBOX_MAX_DELAY_SECONDS", "5", ("outbox_max_delay_seconds", 5.0)),
    ],
)
def test_outbox_timing_settings(name: str, value: str, expected: tuple[str, float]) -> None:
    settings = Settings.from_env({**GOOD, name: value})
    assert getattr(settings, expected[0]) == expected[1]


@pytest.mark.parametrize(
    "name, value",
    [
        # Azure Monitor gives up after about 10 s; the answer must come within 5.
        ("ITSM_INLINE_SECONDS", "4.01"),
        ("ITSM_INLINE_SECONDS", "10"),
        ("ITSM_INLINE_SECONDS", "0"),
        ("ITSM_INLINE_SECONDS", "nan"),
        ("ITSM_SETTLE_SECONDS", "-1"),
        ("ITSM_SETTLE_SECONDS", "3601"),
        ("OUTBOX_HORIZON_HOURS", "0"),
        ("OUTBOX_HORIZON_HOURS", "inf"),
        ("OUTBOX_HORIZON_HOURS", "2161"),
        ("OUTBOX_HORIZON_HOURS", "three days"),
        ("OUTBOX_MAX_DELAY_SECONDS", "0"),
        ("OUTBOX_MAX_DELAY_SECONDS", "3601"),
    ],
)
def test_bad_outbox_timing_settings_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, name: value})
    assert raised.value.setting == name


def test_the_readme_documents_every_declared_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    declared = {s.name for s in SETTINGS_OF_CORE}
    for name in BUILTIN:
        declared |= {s.name for s in settings_of(name)}
    missing = sorted(name for name in declared if f"`{name}`" not in readme)
    assert missing == []


# --- URLs in settings (SERVICENOW_INSTANCE_URL, JIRA_BASE_URL, AUTH_OPENID_CONFIG_URL) ------------

PASSWORD_IN_URL = "Hunter2-in-the-url"


@pytest.mark.parametrize(
    "url, needle",
    [
        # urlsplit reads host localhost; urllib3 (so requests) connects to evil.example, in plain http.
        ("http://evil.example\\@localhost", "backslash"),
        ("https://evil.example\\@contoso.service-now.com", "backslash"),
        (f"https://bridge:{PASSWORD_IN_URL}@contoso.service-now.com", "user name or password"),
        (f"https://{PASSWORD_IN_URL}@contoso.service-now.com", "user name or password"),
        ("https://@contoso.service-now.com", "user name or password"),
        ("https://contoso.service-now.com#frag", "fragment"),
        ("https://contoso.service-now.com /x", "spaces or control characters"),
        ("https://contoso\t.service-now.com", "spaces or control characters"),
        ("https://contoso.service-now.com\r\nX-Injected: 1", "spaces or control characters"),
        ("https://contoso.service-now.com\x00.evil.example", "spaces or control characters"),
        ("https://contoso\u3002service-now.com", "ASCII"),
        # urllib3 2.1+ decodes the host, urlsplit does not; earlier ones keep the %: refused either way.
        ("https://evil%2eexample", ("read differently", "valid host name")),
        ("https://contoso.service-now.com:99999", "not a valid URL"),
        ("https://[::1", "not a valid URL"),
        ("http://localhost.evil.example", "https://"),
        ("http://127.0.0.1.nip.io", "https://"),
        ("http://0x7f.0.0.1", "https://"),
        ("http://contoso.service-now.com", "https://"),
        ("ftp://contoso.service-now.com", "https://"),
        ("https:///contoso.service-now.com", "https://"),
        ("contoso.service-now.com", "https://"),
    ],
)
def test_urls_are_refused_unless_every_parser_reads_one_plain_host(url: str, needle: str | tuple[str, ...]) -> None:
    for name in ("SERVICENOW_INSTANCE_URL", "AUTH_OPENID_CONFIG_URL"):
        with pytest.raises(ConfigError) as raised:
            validate({**GOOD, name: url})
        assert raised.value.setting == name
        assert any(n in str(raised.value) for n in ((needle,) if isinstance(needle, str) else needle))
        # Never echoed: not the value, nor a password in it.
        assert url not in str(raised.value) and PASSWORD_IN_URL not in str(raised.value)


def test_a_base_url_takes_no_query_but_the_discovery_url_may() -> None:
    with pytest.raises(ConfigError) as raised:
        validate({**GOOD, "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com/?sysparm=1"})
    assert raised.value.setting == "SERVICENOW_INSTANCE_URL" and "query" in str(raised.value)


def test_jira_base_url_is_checked_the_same_way() -> None:
    env = {**GOOD, "ITSM_ADAPTER": "jira", "JIRA_BASE_URL": f"https://me:{PASSWORD_IN_URL}@contoso.atlassian.net",
           "JIRA_PROJECT": "OPS", "JIRA_EMAIL": "bridge@contoso.com", "JIRA_API_TOKEN": "t0ken"}
    with pytest.raises(ConfigError) as raised:
        validate(env)
    assert raised.value.setting == "JIRA_BASE_URL" and PASSWORD_IN_URL not in str(raised.value)


@pytest.mark.parametrize(
    "name, url",
    [
        ("SERVICENOW_INSTANCE_URL", "https://contoso.service-now.com/"),
        ("SERVICENOW_INSTANCE_URL", "https://Contoso.Service-Now.com:443"),
        ("SERVICENOW_INSTANCE_URL", "http://127.0.0.1:8080"),
        ("SERVICENOW_INSTANCE_URL", "http://127.0.0.2:8080/sub/path"),
        ("SERVICENOW_INSTANCE_URL", "http://localhost:8080"),
        ("SERVICENOW_INSTANCE_URL", "http://[::1]:8080"),
        ("SERVICENOW_INSTANCE_URL", "https://xn--bcher-kva.example"),
        # Entra's app-specific signing keys are published under ?appid=.
        ("AUTH_OPENID_CONFIG_URL",
         f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration?appid=0b7c4d3e"),
        ("AUTH_OPENID_CONFIG_URL", "http://127.0.0.1:41000/tenant/v2.0/.well-known/openid-configuration"),
    ],
)
def test_plain_urls_are_accepted(name: str, url: str) -> None:
    validate({**GOOD, name: url})


def test_a_url_with_credentials_never_reaches_a_work_item_url() -> None:
    from bridge.adapters.servicenow import ServiceNowAdapter

    with pytest.raises(ConfigError) as raised:
        ServiceNowAdapter(Settings.from_env({
            **GOOD, "SERVICENOW_INSTANCE_URL": f"https://bridge:{PASSWORD_IN_URL}@contoso.service-now.com"}))
    assert raised.value.setting == "SERVICENOW_INSTANCE_URL"


def test_url_problem_says_none_for_a_good_url() -> None:
    from bridge.config import url_problem

    assert url_problem("https://contoso.service-now.com") is None
    assert url_problem("http://localhost:1/x", allow_loopback_http=False) is not None


# --- every bad setting at once, and the defaults as shown ---------------------------------------


def test_every_bad_core_setting_is_reported_not_only_the_first() -> None:
    env = {
        **GOOD,
        "AUTH_TENANT_ID": "contoso.onmicrosoft.com",
        "AUTH_OPENID_CONFIG_URL": f"https://me:{PASSWORD_IN_URL}@login.example.com",
        "ITSM_RETRY_ATTEMPTS": "0",
        "CMDB_LOOKUP": "maybe",
        "OUTBOX_QUEUE_NAME": "Outbox",
        "STATE_RETENTION_DAYS": "forever",
    }
    expected = ["AUTH_TENANT_ID", "AUTH_OPENID_CONFIG_URL", "ITSM_RETRY_ATTEMPTS", "CMDB_LOOKUP",
                "OUTBOX_QUEUE_NAME", "STATE_RETENTION_DAYS"]
    assert [p.setting for p in Settings.problems(env)] == expected

    with pytest.raises(SettingsErrors) as raised:
        validate(env)  # what check-config and start-up run
    assert raised.value.setting == "AUTH_TENANT_ID"  # health names the first
    assert [p.setting for p in raised.value.problems] == expected
    message = str(raised.value)
    for name in expected:
        assert f"{name}: " in message
    assert message.startswith("AUTH_TENANT_ID: must be the tenant's GUID; AUTH_OPENID_CONFIG_URL: ")
    assert PASSWORD_IN_URL not in message and "contoso.onmicrosoft.com" not in message


def test_missing_required_settings_are_all_reported() -> None:
    assert [p.setting for p in Settings.problems({})] == ["AUTH_TENANT_ID", "AUTH_AUDIENCES"]
    assert Settings.problems(GOOD) == []


def test_one_bad_setting_is_the_plain_error_naming_it() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "CMDB_LOOKUP": "maybe"})
    assert type(raised.value) is ConfigError
    assert str(raised.value) == "CMDB_LOOKUP: must be true or false"


def test_the_openid_default_shown_is_entra_ids_discovery_document() -> None:
    spec = {s.name: s for s in SETTINGS_OF_CORE}
    openid = spec["AUTH_OPENID_CONFIG_URL"]
    assert openid.default is None  # the verifier picks Entra ID's URLs for the tenant itself
    assert "login.microsoftonline.com" in openid.shown_default and "none" not in openid.shown_default
    assert spec["ALLOWED_SUBSCRIPTION_IDS"].shown_default == "any"
    assert spec["ITSM_ADAPTER"].shown_default == "servicenow"
    assert spec["AUTH_REQUIRED_ROLE"].shown_default == "none"


# --- unresolved Key Vault references ------------------------------------------------------------

KV = "@Microsoft.KeyVault(SecretUri=https://kv-bridge.vault.azure.net/secrets/s/)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (KV, True),
        ("  @microsoft.keyvault(VaultName=kv-bridge;SecretName=s)\n", True),
        ("@MICROSOFT.KEYVAULT(x)", True),
        ("@Microsoft.KeyVault", False),  # not the reference syntax
        ("p@Microsoft.KeyVault(x)", False),  # a password that merely contains it
        ("", False),
        (None, False),
    ],
)
def test_a_key_vault_reference_is_recognised_case_insensitively_after_stripping(
    value: str | None, expected: bool
) -> None:
    assert is_key_vault_reference(value) is expected


def test_unresolved_references_cover_core_adapter_storage_and_telemetry_settings() -> None:
    env = {
        **GOOD,
        "AUTH_AUDIENCES": KV,
        "SERVICENOW_PASSWORD": KV,
        "SERVICENOW_INSTANCE_URL": KV,
        "AzureWebJobsStorage__accountName": KV,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": KV,
        "SOMETHING_ELSE": KV,  # not read by the bridge
    }

    found = unresolved_references(env, settings_of("servicenow"))

    assert [(ref.setting, ref.tolerated) for ref in found] == [
        ("AUTH_AUDIENCES", False),
        ("SERVICENOW_INSTANCE_URL", False),
        ("SERVICENOW_PASSWORD", True),  # a credential: the ITSM refuses it, the work is held
        ("AzureWebJobsStorage__accountName", False),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", True),  # telemetry only
    ]
    assert unresolved_references(GOOD, settings_of("servicenow")) == []


def test_a_core_setting_holding_a_reference_is_reported_as_one_not_as_malformed() -> None:
    env = {**GOOD, "AUTH_TENANT_ID": KV, "ITSM_RETRY_ATTEMPTS": "0", "STATE_STORE": KV,
           "STATE_TABLE_NAME": KV}

    problems = Settings.problems(env)

    assert [p.setting for p in problems] == ["AUTH_TENANT_ID", "ITSM_RETRY_ATTEMPTS", "STATE_STORE", "STATE_TABLE_NAME"]
    kv = [str(p) for p in problems if p.setting != "ITSM_RETRY_ATTEMPTS"]
    assert all(": is an unresolved Key Vault reference: " in text for text in kv)
    assert all("kv-bridge" not in str(p) and "SecretUri" not in str(p) for p in problems)


def test_a_storage_reference_is_reported_after_state_store_and_not_parsed() -> None:
    env = {**GOOD, "STATE_STORE": "azure", "AzureWebJobsStorage": KV, "OUTBOX_QUEUE_NAME": "Bad"}

    problems = Settings.problems(env)

    assert [p.setting for p in problems] == ["AzureWebJobsStorage", "OUTBOX_QUEUE_NAME"]
    assert "unresolved Key Vault reference" in str(problems[0])


def test_a_credential_reference_passes_the_settings_but_not_check_config() -> None:
    env = {**GOOD, "SERVICENOW_PASSWORD": KV}

    assert Settings.problems(env) == []  # the running bridge tolerates it (degraded, work held)
    with pytest.raises(ConfigError) as raised:
        validate(env)  # check-config refuses it
    assert raised.value.setting == "SERVICENOW_PASSWORD"
    assert "kv-bridge" not in str(raised.value)


def test_check_config_lists_every_unresolved_reference() -> None:
    env = {**GOOD, "SERVICENOW_PASSWORD": KV, "SERVICENOW_USERNAME": KV, "APPLICATIONINSIGHTS_CONNECTION_STRING": KV}

    with pytest.raises(SettingsErrors) as raised:
        validate(env)

    assert [p.setting for p in raised.value.problems] == [
        "SERVICENOW_USERNAME", "SERVICENOW_PASSWORD", "APPLICATIONINSIGHTS_CONNECTION_STRING",
    ]


def test_an_adapter_setting_holding_a_reference_is_named_as_one() -> None:
    with pytest.raises(ConfigError) as raised:
        validate({**GOOD, "SERVICENOW_INSTANCE_URL": KV})
    assert raised.value.setting == "SERVICENOW_INSTANCE_URL"
    assert "unresolved Key Vault reference" in str(raised.value)  # not "must be an https:// URL"
