"""The mapping file's policies, routes and templates as loaded (bridge.rules, issue #11): what each key
becomes, how route, file and settings defaults stack, durations, and every refusal with the path it
names, as ``check-config`` shows it. How a loaded route applies to an alert is tests/test_routing.py;
the settings REOPEN_WINDOW and AUTO_RESOLVE_AFTER are tests/test_config.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.alerts import parse_alert
from bridge.cli import main
from bridge.config import SETTING_NAMES
from bridge.errors import ConfigError
from bridge.mapping import build_work_item, configuration_item_override, policy_for, resolution
from bridge.rules import (
    DEFAULT_FINGERPRINT_TEMPLATE,
    MATCH_KEYS,
    MAX_DURATION_SECONDS,
    MappingRules,
    Policy,
    load_mapping,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "alerts"
DAY = 86400.0


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "mapping.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def load(tmp_path: Path, data: Any, defaults: Policy | None = None, retention: float | None = None) -> MappingRules:
    return load_mapping(write(tmp_path, data), defaults, retention_seconds=retention)


def refused(tmp_path: Path, data: Any, retention: float | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, data, retention=retention)
    assert raised.value.setting == "MAPPING_FILE"
    return str(raised.value)


# --------------------------------------------------------------------------- defaults unchanged


def test_a_file_without_the_new_keys_loads_as_before(tmp_path: Path) -> None:
    assert load_mapping(None) == MappingRules()
    assert load(tmp_path, {}) == MappingRules()
    rules = load(tmp_path, {
        "close_code": "Solved",
        "routing": [{"match": {"resourceGroup": "pay", "severity": "Sev1"}, "set": {"assignment_group": "Payments",
                                                                               "urgency": 1}}],
    })
    assert rules.policy == Policy()
    assert rules.service_health_lifecycle is True
    route = rules.routing[0]
    assert (route.match, route.set, route.policy, route.configuration_item) == (
        {"resourceGroup": "pay", "severity": "Sev1"}, {"assignment_group": "Payments", "urgency": "1"}, None, None,
    )


def test_the_default_policy_is_off() -> None:
    policy = Policy()
    assert (policy.grouping, policy.fingerprint, policy.reopen_window, policy.auto_resolve_after) == (
        "per-alert", DEFAULT_FINGERPRINT_TEMPLATE, 0.0, 0.0,
    )
    assert (policy.resolution, policy.resolution_code, dict(policy.resolve_fields)) == ("resolve", None, {})
    assert policy.threaded is False


# --------------------------------------------------------------------------- policies


def test_route_keys_go_over_the_files_which_go_over_the_settings(tmp_path: Path) -> None:
    settings = Policy(reopen_window=60.0, auto_resolve_after=120.0)
    rules = load(tmp_path, {
        "policy": {"grouping": "group", "auto_resolve_after": "1h", "close_code": "Solved"},
        "routing": [
            {"match": {"alertType": "log"}, "set": {}, "policy": {"resolution": "close", "reopen_window": "30m",
                                                                 "resolve_fields": {"u_by": "{alertRule}"}}},
            {"match": {"alertType": "metric"}, "set": {"category": "Metrics"}},
        ],
    }, defaults=settings)
    assert rules.policy == Policy(grouping="group", reopen_window=60.0, auto_resolve_after=3600.0,
                                  resolution_code="Solved")
    assert rules.routing[0].policy == Policy(
        grouping="group", reopen_window=1800.0, auto_resolve_after=3600.0, resolution="close",
        resolution_code="Solved", resolve_fields={"u_by": "{alertRule}"},
    )
    assert rules.routing[1].policy is None  # policy_for gives the file's

    log = parse_alert((FIXTURES / "log_alerts_v2_fired.testaction.json").read_bytes())
    metric = parse_alert((FIXTURES / "metric_static_fired.testaction.json").read_bytes())
    assert policy_for(log, rules).resolution == "close"
    assert policy_for(metric, rules) == rules.policy


def test_the_settings_defaults_apply_without_a_policy_in_the_file(tmp_path: Path) -> None:
    settings = Policy(reopen_window=300.0, auto_resolve_after=0.0)
    assert load(tmp_path, {}, defaults=settings).policy == settings
    assert load_mapping(None, settings).policy == settings


@pytest.mark.parametrize(("value", "mode"), [("lifecycle", True), ("per-communication", False)])
def test_service_health_mode(tmp_path: Path, value: str, mode: bool) -> None:
    assert load(tmp_path, {"service_health": value}).service_health_lifecycle is mode


def test_a_fingerprint_template_is_kept_as_written(tmp_path: Path) -> None:
    rules = load(tmp_path, {"policy": {"fingerprint": "{alertRule}|{resourceGroup}", "grouping": "group"}})
    assert rules.policy.fingerprint == "{alertRule}|{resourceGroup}"
    assert rules.policy.threaded is True


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0), ("0", 0.0), (90, 90.0), (90.5, 90.5), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0),
        ("2h", 7200.0), ("1d", DAY), ("1.5h", 5400.0), (" 2H ", 7200.0), ("1 d", DAY), ("30d", 30 * DAY),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("-1", "must be a duration"), (-1, "must be a duration"), ("1w", "must be a duration"),
        ("", "must be a duration"), ("soon", "must be a duration"), ("1h30m", "must be a duration"),
        (True, "must be a duration"), (None, "must be a duration"), ([1], "must be a duration"),
        (float("nan"), "must be a duration"), (float("inf"), "must be a duration"), ("nan", "must be a duration"),
        ("31d", "at most 30 days"), (MAX_DURATION_SECONDS + 1, "at most 30 days"), ("9" * 400, "must be a duration"),
        ("1" + " " * 40 + "w", "must be a duration"),
    ],
)
def test_bad_durations(value: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as raised:
        parse_duration(value)
    assert "soon" not in str(raised.value)  # the value is never repeated


def test_a_json_infinity_is_not_a_duration(tmp_path: Path) -> None:
    message = refused(tmp_path, '{"policy": {"reopen_window": Infinity}}')
    assert "policy.reopen_window must be a duration" in message


# --------------------------------------------------------------------------- refusals


POLICY_KEYS = "['auto_resolve_after', 'close_code', 'fingerprint', 'grouping', 'reopen_window', 'resolution', " \
    "'resolution_code', 'resolve_fields']"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": "group"}, "policy must be an object"),
        ({"policy": {"colour": 1}}, f"policy has unknown keys ['colour']; allowed: {POLICY_KEYS}"),
        ({"policy": {"grouping": "per-rule"}}, "policy.grouping must be one of ['per-alert', 'group']"),
        ({"policy": {"fingerprint": ""}}, "policy.fingerprint must be a non-empty template"),
        ({"policy": {"fingerprint": 7}}, "policy.fingerprint must be a non-empty template"),
        ({"policy": {"fingerprint": "{alertRuleId}|{host}"}}, "policy.fingerprint uses unknown names ['host']"),
        ({"policy": {"fingerprint": "{alertRuleId:>9}"}}, "policy.fingerprint may only use plain {name} fields"),
        ({"policy": {"fingerprint": "{alertRuleId!r}"}}, "policy.fingerprint may only use plain {name} fields"),
        ({"policy": {"fingerprint": "{alertRuleId"}}, "policy.fingerprint is not a valid template"),
        ({"policy": {"reopen_window": "soon"}}, "policy.reopen_window must be a duration"),
        ({"policy": {"auto_resolve_after": "31d"}}, "policy.auto_resolve_after must be at most 30 days"),
        ({"policy": {"resolution": "delete"}}, "policy.resolution must be one of ['resolve', 'close', 'note-only']"),
        ({"policy": {"close_code": 5}}, "policy.resolution_code must be a string"),
        ({"policy": {"close_code": "a", "resolution_code": "b"}},
         "policy.close_code and policy.resolution_code are the same key; give one"),
        ({"policy": {"resolve_fields": ["u_x"]}}, "policy.resolve_fields must be an object of field: value"),
        ({"policy": {"resolve_fields": {"u_x": "{nope}"}}}, "policy.resolve_fields.u_x uses unknown names ['nope']"),
        ({"policy": {"resolve_fields": {"u_x": {"a": 1}}}}, "policy.resolve_fields.u_x must be a string"),
        ({"routing": [{}, {}, {"match": {}, "policy": {"reopen_window": "1 week"}}]},
         "routing[0] must be {\"match\": {...}, \"set\": {...}}"),
        ({"routing": [{"match": {}}, {"match": {}}, {"match": {}, "policy": {"reopen_window": "1 week"}}]},
         "routing[2].policy.reopen_window must be a duration"),
        ({"routing": [{"match": {}, "policy": {"grouping": "all"}}]}, "routing[0].policy.grouping must be one of"),
        ({"routing": [{"match": {}, "set": {}, "colour": 1}]},
         "routing[0] has unknown keys ['colour']; allowed: ['configuration_item', 'match', 'policy', 'set']"),
        ({"routing": {"match": {}}}, "routing must be a list of routes"),
        ({"routing": [{"match": {"host": "x"}}]}, "routing[0].match.host is not a key routes match on; known: ["),
        ({"routing": [{"match": {"severity": []}}]}, "routing[0].match.severity must be a string or a non-empty list"),
        ({"routing": [{"match": {"severity": None}}]}, "routing[0].match.severity must be a string"),
        ({"routing": [{"match": {"severity": ["Sev1", {"x": 1}]}}]}, "routing[0].match.severity must be a string"),
        ({"routing": [{"match": {"severity": True}}]}, "routing[0].match.severity must be a string"),
        ({"routing": [{"match": {"tags": "env=prod"}}]}, "routing[0].match.tags must be an object of tag: value(s)"),
        ({"routing": [{"match": {"tags": {}}}]}, "routing[0].match.tags must be an object of tag: value(s)"),
        ({"routing": [{"match": {"tags": {"env": {"x": 1}}}}]}, "routing[0].match.tags.env must be a string"),
        ({"routing": [{"match": {}, "set": ["x"]}]}, "routing[0].set must be an object of field: value"),
        ({"routing": [{"match": {}, "set": {"u": "{resourcegroup}"}}]},
         "routing[0].set.u uses unknown names ['resourcegroup']"),
        ({"routing": [{"match": {}, "set": {"u": "{severity"}}]}, "routing[0].set.u is not a valid template"),
        ({"routing": [{"match": {}, "set": {"u": None}}]},
         "routing[0].set.u must be a string (a template) or a number"),
        ({"routing": [{"match": {}, "configuration_item": ""}]}, "routing[0].configuration_item must be a non-empty"),
        ({"routing": [{"match": {}, "configuration_item": "{ci}"}]},
         "routing[0].configuration_item uses unknown names ['ci']"),
        ({"fields": {"u": "{nope}"}}, "fields.u uses unknown names ['nope']"),
        ({"fields": {"u": ["x"]}}, "fields.u must be a string (a template) or a number"),
        ({"fields": {"": "x"}}, "fields has an empty field name"),
        ({"assignment_group": "{nope}"}, "assignment_group uses unknown names ['nope']"),
        ({"service_health": "grouped"}, "service_health must be one of ['lifecycle', 'per-communication']"),
        ({"severity_matrix": ["Sev0"]}, "severity_matrix must be an object"),
    ],
)
def test_bad_keys_and_values_name_their_path(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    assert message in refused(tmp_path, data)


def test_unknown_top_level_keys_list_the_allowed_ones(tmp_path: Path) -> None:
    message = refused(tmp_path, {"policies": {}})
    assert message.startswith("MAPPING_FILE: unknown keys ['policies']; allowed: [")
    assert "'policy'" in message and "'service_health'" in message and "'close_code'" in message


def test_an_unknown_match_key_lists_the_known_ones(tmp_path: Path) -> None:
    message = refused(tmp_path, {"routing": [{"match": {"resourcegroup": "x", "tag": "x"}}]})
    assert "routing[0].match.tag is not a key routes match on" in message
    for key in ("subscription", "resourceType", "tags", "ruleName", "alertType", "monitoringService"):
        assert f"'{key}'" in message


@pytest.mark.parametrize("key", sorted(MATCH_KEYS))
def test_every_known_match_key_loads_in_any_case(tmp_path: Path, key: str) -> None:
    value: Any = {"env": "prod"} if key == "tags" else "x"
    for spelling in (key, key.upper(), key.lower()):
        rules = load(tmp_path, {"routing": [{"match": {spelling: value}}]})
        assert rules.routing[0].match == {spelling: value}


def test_match_values_as_loaded(tmp_path: Path) -> None:
    rules = load(tmp_path, {"routing": [{"match": {
        "severity": ["Sev0", "Sev1"], "resourceGroup": "pay-*", "Tags": {"env": ["prod", "prod-*"], "tier": 1},
        "subscription": 7,
    }}]})
    assert rules.routing[0].match == {
        "severity": ("Sev0", "Sev1"), "resourceGroup": "pay-*", "Tags": {"env": ("prod", "prod-*"), "tier": "1"},
        "subscription": "7",
    }


def test_field_values_as_loaded(tmp_path: Path) -> None:
    rules = load(tmp_path, {"fields": {"u_count": 3, "u_flag": True, "u_scope": "{subscriptionId}/{{raw}}"}})
    assert rules.fields == {"u_count": "3", "u_flag": "true", "u_scope": "{subscriptionId}/{{raw}}"}


# --------------------------------------------------------------------------- the re-fire window and retention


def test_a_reopen_window_must_end_before_retention(tmp_path: Path) -> None:
    data = {"routing": [{"match": {}, "policy": {"reopen_window": "2d"}}]}
    message = refused(tmp_path, data, retention=2 * DAY)
    assert "routing[0].policy.reopen_window must be shorter than STATE_RETENTION_DAYS" in message
    assert load(tmp_path, data, retention=3 * DAY).routing[0].policy == Policy(reopen_window=2 * DAY)
    assert "policy.reopen_window must be shorter" in refused(tmp_path, {"policy": {"reopen_window": "3d"}}, 2 * DAY)
    # Auto-resolve waits for nothing the record must remember past retention.
    assert load(tmp_path, {"policy": {"auto_resolve_after": "3d"}}, retention=2 * DAY).policy.auto_resolve_after


# --------------------------------------------------------------------------- the README's example


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Mapping file"):]
    found = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_example_loads_and_routes(tmp_path: Path) -> None:
    rules = load(tmp_path, readme_example(), retention=30 * DAY)
    assert rules.policy.reopen_window == 7200.0

    data = json.loads((FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8"))
    essentials = data["data"]["essentials"]
    essentials["severity"] = "Sev1"
    essentials["alertTargetIDs"] = [
        "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/db-prod/providers/Microsoft.Sql/servers/"
        "sql1/databases/orders"
    ]
    data["data"]["customProperties"] = {"env": "prod-eu"}
    alert = parse_alert(data)
    item = build_work_item(alert, rules)
    assert item.fields["u_environment"] == "11111111-1111-1111-1111-111111111111/db-prod"
    assert configuration_item_override(alert, rules) == "orders"
    policy = policy_for(alert, rules)
    assert (policy.grouping, policy.resolution, policy.reopen_window) == ("group", "close", 7200.0)

    essentials["monitorCondition"] = "Resolved"
    how = resolution(parse_alert(data), rules)
    assert (how.close, how.code, dict(how.fields)) == (
        True, "Solved (Permanently)", {"u_resolved_by": "Azure Monitor (test-metricAlertRule)"},
    )


# --------------------------------------------------------------------------- check-config


GOOD = {
    "AUTH_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "AUTH_AUDIENCES": "api://bridge",
    "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com",
    "SERVICENOW_USERNAME": "bridge",
    "SERVICENOW_PASSWORD": "s3cret-Passw0rd",
}


def check_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: str) -> int:
    for name in SETTING_NAMES | set(GOOD):
        monkeypatch.delenv(name, raising=False)
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {**GOOD, **values}}), encoding="utf-8")
    return main(["check-config", "--settings", str(settings)])


def test_check_config_names_the_bad_mapping_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"routing": [{"match": {}}, {"match": {}, "policy": {"reopen_window": "1 week"}}]})

    assert check_config(tmp_path, monkeypatch, MAPPING_FILE=path) == 2

    err = capsys.readouterr().err
    assert err.startswith("invalid settings: MAPPING_FILE: routing[1].policy.reopen_window must be a duration: ")
    assert "s3cret" not in err


def test_check_config_names_the_bad_duration_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config(tmp_path, monkeypatch, REOPEN_WINDOW="40d", AUTO_RESOLVE_AFTER="later") == 2

    err = capsys.readouterr().err
    assert "REOPEN_WINDOW: must be at most 30 days" in err
    assert "AUTO_RESOLVE_AFTER: must be a duration: " in err
    assert "later" not in err


def test_check_config_accepts_the_readme_example_and_shows_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, readme_example())

    assert check_config(tmp_path, monkeypatch, MAPPING_FILE=path, AUTO_RESOLVE_AFTER="6h") == 0

    out = capsys.readouterr().out
    assert re.search(r"^REOPEN_WINDOW +\(default: 0\)$", out, re.MULTILINE)
    assert re.search(r"^AUTO_RESOLVE_AFTER +6h$", out, re.MULTILINE)
    assert out.rstrip().endswith("settings are valid")
