"""Correlation key, payload fingerprint and note marker (bridge.correlation).

The expected keys are written out literally on purpose: changing how a key is derived would
orphan every incident already open in ServiceNow, so it must never change by accident.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bridge.alerts import parse_alert, thaw
from bridge.correlation import canonical_payload, correlation_key, fingerprint, note_marker

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alerts"
KEY_CHARS = re.compile(r"^[0-9a-f-]+$")
GUID_FORM = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

ACTIVITY_RULE = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/test-RG/providers/"
    "microsoft.insights/activityLogAlerts/Test_Alert"
)
SERVICE_HEALTH = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/"
    "1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh1234abcd5678efgh"
)


@pytest.mark.parametrize(
    ("alert_id", "key"),
    [
        (
            "/subscriptions/11111111-1111-1111-1111-111111111111/providers/Microsoft.AlertsManagement/alerts/"
            "12345678-1234-1234-1234-1234567890ab",
            "12345678-1234-1234-1234-1234567890ab",
        ),
        (
            "/subscriptions/x/providers/Microsoft.AlertsManagement/alerts/5B6C7D8E-9FA0-4B1C-8D2E-3F4A5B6C7D8E",
            "5b6c7d8e-9fa0-4b1c-8d2e-3f4a5b6c7d8e",
        ),
        ("5B6C7D8E-9FA0-4B1C-8D2E-3F4A5B6C7D8E", "5b6c7d8e-9fa0-4b1c-8d2e-3f4a5b6c7d8e"),
        # A trailing slash does not hide the GUID.
        (
            "/subscriptions/x/alerts/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/",
            "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e",
        ),
        # Activity-log alerts carry the rule path: hashed.
        (ACTIVITY_RULE, "a9d5bb84b273e1e65cf23dd745b14a0cac49cb1b"),
        # Service health: 64 characters, not a GUID (has g/h): hashed.
        (SERVICE_HEALTH, "8a52c4709995bcee0d2ad9222c740b579b617207"),
    ],
)
def test_correlation_key(alert_id: str, key: str) -> None:
    assert correlation_key(alert_id) == key


def test_hash_is_sha256_of_the_lower_cased_alert_id() -> None:
    expected = hashlib.sha256(ACTIVITY_RULE.lower().encode("utf-8")).hexdigest()[:40]
    assert correlation_key(ACTIVITY_RULE) == expected
    # Azure resource ids are case-insensitive: the same rule in other case is the same alert.
    assert correlation_key(ACTIVITY_RULE.upper()) == expected
    assert correlation_key(ACTIVITY_RULE + "2") != expected


@pytest.mark.parametrize(
    "alert_id",
    [
        "12345678-1234-1234-1234-1234567890ag",  # GUID-shaped but not hex
        "{12345678-1234-1234-1234-1234567890ab}",  # braces are not the GUID form
        "12345678123412341234123456789 0ab",
        "/subscriptions/x/alerts/a^b^c",
        "^^^",
        "x" * 10_000,
        "ümlaut/ß",
        "",
    ],
)
def test_hashed_keys_are_safe_and_never_guid_shaped(alert_id: str) -> None:
    key = correlation_key(alert_id)
    assert "^" not in key
    assert len(key) == 40 <= 100
    assert KEY_CHARS.match(key)
    assert not GUID_FORM.match(key)
    assert "-" not in key


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_fixture_key_is_valid(name: str) -> None:
    alert = parse_alert((FIXTURES / name).read_bytes())
    key = correlation_key(alert.alert_id)
    assert len(key) <= 100
    assert KEY_CHARS.match(key)
    assert GUID_FORM.match(key) or len(key) == 40


def test_fingerprint_is_stable_and_ignores_formatting() -> None:
    text = (FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8")
    alert = parse_alert(text)
    compact = json.dumps(json.loads(text), separators=(",", ":"))
    reordered = json.dumps(dict(reversed(list(json.loads(text).items()))), indent=4)
    value = fingerprint(alert)
    assert re.fullmatch(r"[0-9a-f]{16}", value)
    assert fingerprint(parse_alert(compact)) == value
    assert fingerprint(parse_alert(reordered)) == value
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert value == hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def test_fingerprint_changes_with_the_payload() -> None:
    body = json.loads((FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8"))
    first = fingerprint(parse_alert(body))
    body["data"]["essentials"]["firedDateTime"] = "2025-04-15T18:22:12.851Z"
    second = fingerprint(parse_alert(body))
    body["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 101
    third = fingerprint(parse_alert(body))
    assert len({first, second, third}) == 3


def test_fingerprint_handles_non_ascii() -> None:
    body = json.loads((FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8"))
    body["data"]["essentials"]["description"] = "Überlast \u2013 サーバー"
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(parse_alert(body)))


# Fingerprints recorded by earlier versions: a record's "written" map and every work note's marker
# hold them, so the same payload must keep its fingerprint whatever the implementation does.
KNOWN_FINGERPRINTS = [
    ("activity_log_administrative_fired.testaction.json", "7b9d872d8844e980"),
    ("activity_log_autoscale_fired.constructed.json", "7998a6d8c7701bf7"),
    ("activity_log_policy_fired.constructed.json", "75c4896e75db067d"),
    ("activity_log_security_fired.constructed.json", "f9fc4db6c76baaf1"),
    ("budget_forecasted.testaction.json", "ef9e24aa5b822c67"),
    ("log_alerts_v2_fired.testaction.json", "6ea05704ee415b3e"),
    ("log_alerts_v2_simple_fired.constructed.json", "ebc990f18fa80a6c"),
    ("log_v1_application_insights_fired.constructed.json", "7d8a020225330818"),
    ("log_v1_log_analytics_fired.testaction.json", "3ac6365f271a9359"),
    ("metric_availability_fired.testaction.json", "d0d299551648f1ee"),
    ("metric_dynamic_fired.testaction.json", "9e204d434dfb77f5"),
    ("metric_static_fired.testaction.json", "3ba063abcb116dc2"),
    ("metric_static_resolved.json", "e94ac09706a17524"),
    ("prometheus_fired.constructed.json", "0de0eb1aed430fce"),
    ("resource_health_fired.testaction.json", "5cefeee53e2485d3"),
    ("resource_health_nospace_fired.constructed.json", "541d5aec54269cba"),
    ("service_health_incident.testaction.json", "a40053644da19a64"),
    ("service_health_maintenance.constructed.json", "c0a1157059dff423"),
    ("smart_detector_fired.testaction.json", "2bcab651837be7e3"),
]


@pytest.mark.parametrize(("name", "expected"), KNOWN_FINGERPRINTS, ids=[n for n, _ in KNOWN_FINGERPRINTS])
def test_known_fingerprints_never_change(name: str, expected: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    alert = parse_alert(raw)
    assert fingerprint(alert) == expected
    assert fingerprint(alert, canonical_payload(alert)) == expected
    # What the outbox stores (the canonical form) parses again into the same fingerprint.
    assert fingerprint(parse_alert(canonical_payload(alert))) == expected


def test_known_fingerprint_of_awkward_values_from_bytes_text_and_a_mapping() -> None:
    body = json.loads((FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8"))
    body["data"]["essentials"]["description"] = "Überlast \u2013 サーバー \U0001f600"
    body["data"]["customProperties"] = {
        "float": 1.5e-7, "big": 12345678901234567890, "neg": -0.0, "t": True, "n": None,
        "nested": [{"b": 1, "a": [2.0, "x"]}],
    }
    for given in (json.dumps(body).encode(), json.dumps(body, ensure_ascii=False), body):
        alert = parse_alert(given)
        assert fingerprint(alert) == "5ddbf784cc87a55c"
        assert canonical_payload(alert).endswith(
            b'"severity":"Sev4","signalType":"Metric"}},"schemaId":"azureMonitorCommonAlertSchema"}'
        )


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_canonical_json_made_at_parse_time_is_the_thawed_views(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    from_bytes, from_mapping = parse_alert(raw), parse_alert(json.loads(raw))
    thawed = json.dumps(thaw(from_bytes.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    assert from_bytes.canonical == thawed.encode("utf-8")
    # A mapping handed over is canonicalised from its frozen copy, to the same text.
    assert from_mapping.canonical is None
    assert canonical_payload(from_mapping) == canonical_payload(from_bytes) == thawed.encode("utf-8")


def test_a_text_body_with_a_raw_lone_surrogate_fails_where_it_always_did() -> None:
    # Only a str body can carry one (bytes are decoded as UTF-8): parsing succeeds, and writing the
    # canonical form is what fails, as before it was made at parse time.
    text = (FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8")
    alert = parse_alert(text.replace('"Sev4"', '"Sev4 \ud800"'))

    assert alert.canonical is None
    with pytest.raises(UnicodeEncodeError):
        canonical_payload(alert)


def test_note_marker() -> None:
    assert note_marker("0123456789abcdef") == "AzMonBridge-0123456789abcdef"


def test_a_guid_followed_by_a_newline_is_not_a_guid() -> None:
    # Python's "$" matches before a trailing newline; the key must never carry one.
    key = correlation_key("/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/"
                          "6e8b7a64-1111-2222-3333-444444444444\n/")
    assert "\n" not in key
    assert len(key) == 40 and all(c in "0123456789abcdef" for c in key)


# --------------------------------------------------------------------------- depth (issue 10, item 6)


def _deep_alert(levels: int) -> bytes:
    body = json.loads((FIXTURES / "metric_static_fired.testaction.json").read_text(encoding="utf-8"))
    body["data"]["customProperties"] = {"x": 0}
    inner = '{"a":' * levels + "1" + "}" * levels
    return json.dumps(body).replace('{"x": 0}', inner).encode()


def _from_depth(frames: int, step: Callable[[], T]) -> T:
    return step() if frames <= 0 else _from_depth(frames - 1, step)


def test_key_and_fingerprint_at_the_depth_limit_from_a_deep_stack() -> None:
    # The document is exactly 400 levels deep (the limit). Before, thawing it for the canonical
    # JSON took two interpreter frames per level: payloads of ~480-490 levels parsed, then failed
    # here with RecursionError (a 503, redelivered for ever), and a deeper caller failed sooner.
    raw = _deep_alert(398)
    alert = parse_alert(raw)
    canonical = _from_depth(300, lambda: canonical_payload(alert))
    assert canonical == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert _from_depth(300, lambda: fingerprint(alert)) == hashlib.sha256(canonical).hexdigest()[:16]
    # What the outbox stores parses again into the same alert.
    assert fingerprint(parse_alert(canonical)) == fingerprint(alert)
