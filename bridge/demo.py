"""``python -m bridge demo [--itsm NAME]``: the whole job on the embedded sandbox, no cloud account.

Starts an ITSM stand-in (the sandbox has one per built-in adapter), the Entra ID stand-in and the bridge's
local server (with its outbox worker and a fresh SQLite state file) on loopback, sends the bundled
sample alerts in a short story over real HTTP with signed tokens, takes the ITSM down for one
alert (answered 202, the work item appears once the ITSM is back), prints what happened to each
alert and each work item, and exits 0 only when every step did what it should.

The story also shows the lifecycles longer than one alertId (issue #11): a mapping file in the
stack's state directory gives the metric alert's rule a re-fire window, so the same condition
firing again under a new alertId reopens its work item; and the Service Health event of one
trackingId goes from Active through an update to Resolved on one work item (the default
``service_health: lifecycle``). Every other alert keeps the default, one work item per alertId.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from .runtime import build_runtime
from .sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxItem, SandboxStack, load_sample
from .server import BridgeServer

__all__ = ["Step", "run_demo"]


@dataclass(frozen=True)
class Step:
    title: str
    payload: dict[str, Any]
    expect_status: int
    expect_action: str | None = None
    token: Callable[[SandboxStack], str] | None = None  # default: a good v2 token
    before: Callable[[SandboxStack], None] | None = None  # e.g. take the ITSM down
    # Steps with the same label must answer with one work item, steps with different labels
    # with different ones: what shows that a lifecycle stayed on its work item.
    work_item: str | None = None


def _alert_id(guid: str) -> str:
    return f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}"


METRIC_RULE = "test-metricAlertRule"
REOPEN_WINDOW = "1h"
# The metric alert's rule alone gets a re-fire window, so the rest of the story keeps the
# default (one work item per alertId) and each of its alerts still makes its own work item.
DEMO_MAPPING: dict[str, Any] = {
    "routing": [{"match": {"alertRule": METRIC_RULE}, "set": {}, "policy": {"reopen_window": REOPEN_WINDOW}}]
}
# The metric story's first alert (the bundled sample's): its work item must name it and the re-fire.
METRIC_ALERT_ID = _alert_id("12345678-1234-1234-1234-1234567890ab")
# The metric condition firing again after it resolved, as Azure Monitor sends it: a new alertId.
REFIRE_ALERT_ID = _alert_id("3c9e1f7a-8b2d-4e6f-a1c3-5d7e9f0b2a4c")
SERVICE_HEALTH_TRACKING_ID = "DEMO-4KQ7"
SERVICE_HEALTH_UPDATE = "Engineers have identified a configuration change as the cause and are rolling it back."
# Sent while the ITSM stand-in is down: recorded, answered 202, created after recovery. Another
# rule than the metric one: under that rule's re-fire window this alert would belong to the metric
# condition, whose work item is resolved by then, and make no work item of its own.
OUTAGE_ALERT_ID = _alert_id("0d8f3c2b-5a4e-4f6d-9b7c-1e2f3a4b5c6d")
OUTAGE_RULE = "test-transactionsAlertRule"
RECOVERY_SECONDS = 20.0


def _itsm_down(stack: SandboxStack) -> None:
    stack.itsm.stop()


def _service_health(guid: str, stage: str, at: str, communication: str) -> dict[str, Any]:
    """One communication of the demo's Service Health incident: each is its own alert (its own
    alertId and time) of the one trackingId."""
    payload = load_sample("service_health_incident.testaction.json", alertId=_alert_id(guid), firedDateTime=at)
    context = payload["data"]["alertContext"]
    context["eventTimestamp"] = context["submissionTimestamp"] = at
    context["eventDataId"] = guid
    context["status"] = "Resolved" if stage == "Resolved" else "Active"
    text = f"<p>{communication}</p>"
    context["properties"].update(
        trackingId=SERVICE_HEALTH_TRACKING_ID,
        title="Storage - West Europe - degraded",
        stage=stage,
        communication=text,
        defaultLanguageContent=text,
        communicationId=guid.replace("-", "")[:14],
    )
    return payload


def _story() -> list[Step]:
    metric_again = load_sample("metric_static_fired.testaction.json")
    metric_again["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 97.5
    resolved = load_sample(
        "metric_static_fired.testaction.json",
        monitorCondition="Resolved",
        resolvedDateTime="2025-04-15T18:32:12.8510000Z",
    )
    # 15 minutes after the resolution: within the rule's re-fire window.
    refired = load_sample(
        "metric_static_fired.testaction.json", alertId=REFIRE_ALERT_ID, firedDateTime="2025-04-15T18:47:12.851Z"
    )
    refired["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 120
    refire_resolved = load_sample(
        "metric_static_fired.testaction.json",
        alertId=REFIRE_ALERT_ID,
        firedDateTime="2025-04-15T18:47:12.851Z",
        monitorCondition="Resolved",
        resolvedDateTime="2025-04-15T18:57:12.851Z",
    )
    # The documented log alert sample reuses the metric sample's alertId; a real one has its own.
    log_alert = load_sample(
        "log_alerts_v2_fired.testaction.json", alertId=_alert_id("9f0e6a52-3c1d-4b7e-8a2f-6d5c4b3a2f10")
    )
    metric = "metric"
    health = "service health"
    return [
        Step("metric alert fires", load_sample("metric_static_fired.testaction.json"), 200, "created",
             work_item=metric),
        Step("same alert fires again, new value", metric_again, 200, "updated", work_item=metric),
        Step("identical redelivery", metric_again, 200, "ignored", work_item=metric),
        Step("metric alert resolves", resolved, 200, "resolved", work_item=metric),
        Step("resolved delivered again", resolved, 200, "ignored", work_item=metric),
        Step(f"metric fires again, new alertId ({REOPEN_WINDOW} window)", refired, 200, "reopened",
             work_item=metric),
        Step("re-fired metric alert resolves", refire_resolved, 200, "resolved", work_item=metric),
        Step("log search alert (v1 token)", log_alert, 200, "created", lambda s: s.token("1.0"), work_item="log"),
        Step("activity log alert", load_sample("activity_log_administrative_fired.testaction.json"), 200,
             "created", work_item="activity log"),
        Step("service health incident (stage Resolved)", load_sample("service_health_incident.testaction.json"),
             200, "created", work_item="service health, first seen resolved"),
        Step("service health incident: Active",
             _service_health("6b1f0c4e-2d3a-4c5b-9e8f-7a6b5c4d3e21", "Active", "2025-04-16T09:05:00Z",
                             "We are investigating degraded availability of Storage in West Europe."),
             200, "created", work_item=health),
        Step("service health incident: an update",
             _service_health("7c2a1d5f-3e4b-4d6c-8f9a-8b7c6d5e4f32", "Active", "2025-04-16T09:35:00Z",
                             SERVICE_HEALTH_UPDATE),
             200, "updated", work_item=health),
        Step("service health incident: Resolved",
             _service_health("8d3b2e6a-4f5c-4e7d-9a0b-9c8d7e6f5a43", "Resolved", "2025-04-16T10:20:00Z",
                             "Mitigated: the change was rolled back and availability has recovered."),
             200, "resolved", work_item=health),
        Step("alert from a subscription not allowed", load_sample("metric_static_resolved.json"), 403),
        Step("forged token (key not published)", load_sample("metric_static_fired.testaction.json"), 401,
             token=lambda s: s.token(unpublished_key=True)),
        Step("token without the webhook role", load_sample("metric_static_fired.testaction.json"), 403,
             token=lambda s: s.token(roles=())),
        Step("ITSM down: a new alert is queued", load_sample("metric_static_fired.testaction.json",
             alertId=OUTAGE_ALERT_ID, alertRule=OUTAGE_RULE), 202, before=_itsm_down),
    ]


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def run_demo(out: TextIO = sys.stdout, *, itsm: str = "servicenow") -> int:
    started = time.monotonic()
    with SandboxStack(itsm=itsm) as stack:
        mapping_file = stack.state_dir / "mapping.json"
        mapping_file.write_text(json.dumps(DEMO_MAPPING, indent=2), encoding="utf-8")
        env = stack.bridge_env(ALLOWED_SUBSCRIPTION_IDS=SANDBOX_SUBSCRIPTION, MAPPING_FILE=str(mapping_file))
        runtime = build_runtime(env)
        runtime.worker.start()
        try:
            with BridgeServer(runtime.api, port=0) as server, requests.Session() as http:
                out.write(
                    f"{stack.itsm.display_name} stand-in {stack.itsm.url}   Entra ID stand-in {stack.entra.base_url}\n"
                )
                out.write(f"bridge listening on {server.url}/api/alerts (state: {stack.state_dir})\n")
                out.write(
                    f"mapping file: alert rule {METRIC_RULE} has a re-fire window of {REOPEN_WINDOW}; "
                    "every other alert, one work item per alertId\n\n"
                )
                results = [["#", "step", "expected", "got", "work item", "ok"]]
                failures = 0
                numbers: dict[str, set[str]] = {}
                queued: list[str] = []
                for n, step in enumerate(_story(), 1):
                    if step.before is not None:
                        step.before(stack)
                    token = step.token(stack) if step.token else stack.token()
                    response = http.post(
                        f"{server.url}/api/alerts",
                        json=step.payload,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=30,
                    )
                    body = response.json()
                    action = body.get("action")
                    got = (
                        f"{response.status_code} "
                        f"{action or body.get('error', {}).get('code', '') or body.get('status', '')}"
                    ).strip()
                    expected = f"{step.expect_status} {step.expect_action or ''}".strip()
                    ok = response.status_code == step.expect_status and (
                        step.expect_action is None or action == step.expect_action
                    )
                    failures += not ok
                    work_item = (body.get("workItem") or {}).get("number") or ""
                    if step.work_item is not None:
                        numbers.setdefault(step.work_item, set()).add(work_item)
                    if response.status_code == 202:
                        queued.append(str(body.get("correlationId") or ""))
                    results.append([str(n), step.title, expected, got, work_item, "yes" if ok else "NO"])
                out.write("Alerts sent\n")
                _table(results, out)
                failures += _check_work_item_per_label(numbers, out)
                failures += _recover(stack, out, queued)
        finally:
            runtime.close()
        failures += _check_incidents(stack, out, numbers)
    elapsed = time.monotonic() - started
    verdict = "every step did what it should" if not failures else f"{failures} check(s) failed"
    out.write(f"\nDemo finished in {elapsed:.1f} s: {verdict}.\n")
    return 0 if not failures else 1


def _check_work_item_per_label(numbers: dict[str, set[str]], out: TextIO) -> int:
    """Each lifecycle of the story answered with one work item of its own."""
    failures = 0
    owners: dict[str, str] = {}
    for label, seen in numbers.items():
        if len(seen) != 1 or "" in seen:
            out.write(f"expected the {label} steps to answer with one work item, got {sorted(seen)}\n")
            failures += 1
            continue
        number = next(iter(seen))
        if number in owners:
            out.write(f"expected the {label} and {owners[number]} steps on different work items, both on {number}\n")
            failures += 1
        owners[number] = label
    return failures


def _recover(stack: SandboxStack, out: TextIO, queued: list[str]) -> int:
    """Bring the ITSM back and wait for the outbox to create each queued alert's work item,
    found by the correlation id its 202 answer named."""
    stack.itsm.start()
    back = time.monotonic()
    name = stack.itsm.display_name
    out.write(f"\n{name} is back; waiting for the outbox to deliver the queued alert ...\n")
    failures = 0
    for correlation_id in queued:
        found: list[SandboxItem] = []
        while not found and correlation_id and time.monotonic() - back < RECOVERY_SECONDS:
            found = [i for i in stack.itsm.items() if i.correlation_id == correlation_id]
            if not found:
                time.sleep(0.1)
        if found:
            out.write(f"the queued alert became {found[0].number} {time.monotonic() - back:.1f} s after recovery\n")
        else:
            out.write(f"the queued alert did not reach {name} within {RECOVERY_SECONDS:.0f} s\n")
            failures += 1
    return failures


def _check_incidents(stack: SandboxStack, out: TextIO, numbers: dict[str, set[str]]) -> int:
    items = stack.itsm.items()
    rows = [["number", "status", "correlation_id", "configuration item", "title"]]
    for item in items:
        rows.append([item.number, item.status, item.correlation_id, item.configuration_item or "-", item.title[:70]])
    out.write(f"\nWork items in the {stack.itsm.display_name} stand-in ({len(items)})\n")
    _table(rows, out)

    failures = 0
    statuses = sorted(item.status for item in items)
    if len(items) != 6 or statuses != ["open"] * 3 + ["resolved"] * 3:
        out.write("expected 6 work items: the metric and both service health ones resolved, three open\n")
        failures += 1
    bound = sum(1 for item in items if item.configuration_item)
    expected = 4 if stack.itsm.binds_configuration_items else 0
    if bound != expected:
        out.write(f"expected {expected} work items bound to a CMDB configuration item, found {bound}\n")
        failures += 1
    notes = {item.number: "\n".join(item.notes) for item in items}

    def noted(label: str, *texts: str) -> bool:
        """Whether one work item of ``label``'s steps has every text in its notes."""
        return any(all(text in notes.get(number, "") for text in texts) for number in numbers.get(label, ()))

    if not noted("metric", METRIC_ALERT_ID, REFIRE_ALERT_ID):
        out.write("expected the metric work item's notes to name both its first alert and the re-fired one\n")
        failures += 1
    if not noted("service health", SERVICE_HEALTH_UPDATE):
        out.write("expected the service health work item's notes to carry the update's communication\n")
        failures += 1
    return failures
