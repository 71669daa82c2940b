"""``python -m bridge demo [--itsm NAME]``: the whole job on the embedded sandbox, no cloud account.

Starts an ITSM stand-in (the sandbox has one per built-in adapter), the Entra ID stand-in and the bridge's
local server (with its outbox worker and a fresh SQLite state file) on loopback, sends the bundled
sample alerts in a short story over real HTTP with signed tokens, takes the ITSM down for one
alert (answered 202, the work item appears once the ITSM is back), prints what happened to each
alert and each work item, and exits 0 only when every step did what it should.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from .runtime import build_runtime
from .sandbox.stack import SANDBOX_SUBSCRIPTION, SandboxStack, load_sample
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

# Sent while the ITSM stand-in is down: recorded, answered 202, created after recovery.
OUTAGE_ALERT_ID = (
    f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/"
    "0d8f3c2b-5a4e-4f6d-9b7c-1e2f3a4b5c6d"
)
RECOVERY_SECONDS = 20.0


def _itsm_down(stack: SandboxStack) -> None:
    stack.itsm.stop()


def _story() -> list[Step]:
    metric_again = load_sample("metric_static_fired.testaction.json")
    metric_again["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = 97.5
    resolved = load_sample(
        "metric_static_fired.testaction.json",
        monitorCondition="Resolved",
        resolvedDateTime="2025-04-15T18:32:12.8510000Z",
    )
    # The documented log alert sample reuses the metric sample's alertId; a real one has its own.
    log_alert = load_sample(
        "log_alerts_v2_fired.testaction.json",
        alertId=f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/"
        "9f0e6a52-3c1d-4b7e-8a2f-6d5c4b3a2f10",
    )
    return [
        Step("metric alert fires", load_sample("metric_static_fired.testaction.json"), 200, "created"),
        Step("same alert fires again, new value", metric_again, 200, "updated"),
        Step("identical redelivery", metric_again, 200, "ignored"),
        Step("metric alert resolves", resolved, 200, "resolved"),
        Step("resolved delivered again", resolved, 200, "ignored"),
        Step("log search alert (v1 token)", log_alert, 200, "created", lambda s: s.token("1.0")),
        Step("activity log alert", load_sample("activity_log_administrative_fired.testaction.json"), 200,
             "created"),
        Step("service health incident (stage Resolved)", load_sample("service_health_incident.testaction.json"),
             200, "created"),
        Step("alert from a subscription not allowed", load_sample("metric_static_resolved.json"), 403),
        Step("forged token (key not published)", load_sample("metric_static_fired.testaction.json"), 401,
             token=lambda s: s.token(unpublished_key=True)),
        Step("token without the webhook role", load_sample("metric_static_fired.testaction.json"), 403,
             token=lambda s: s.token(roles=())),
        Step("ITSM down: a new alert is queued", load_sample("metric_static_fired.testaction.json",
             alertId=OUTAGE_ALERT_ID), 202, before=_itsm_down),
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
        env = stack.bridge_env(ALLOWED_SUBSCRIPTION_IDS=SANDBOX_SUBSCRIPTION)
        runtime = build_runtime(env)
        runtime.worker.start()
        try:
            with BridgeServer(runtime.api, port=0) as server, requests.Session() as http:
                out.write(
                    f"{stack.itsm.display_name} stand-in {stack.itsm.url}   Entra ID stand-in {stack.entra.base_url}\n"
                )
                out.write(f"bridge listening on {server.url}/api/alerts (state: {stack.state_dir})\n\n")
                results = [["#", "step", "expected", "got", "work item", "ok"]]
                failures = 0
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
                    results.append([str(n), step.title, expected, got, work_item, "yes" if ok else "NO"])
                out.write("Alerts sent\n")
                _table(results, out)
                failures += _recover(stack, out)
        finally:
            runtime.close()
        failures += _check_incidents(stack, out)
    elapsed = time.monotonic() - started
    verdict = "every step did what it should" if not failures else f"{failures} check(s) failed"
    out.write(f"\nDemo finished in {elapsed:.1f} s: {verdict}.\n")
    return 0 if not failures else 1


def _recover(stack: SandboxStack, out: TextIO) -> int:
    """Bring the ITSM back and wait for the outbox to create the queued alert's work item."""
    stack.itsm.start()
    back = time.monotonic()
    name = stack.itsm.display_name
    out.write(f"\n{name} is back; waiting for the outbox to deliver the queued alert ...\n")
    while time.monotonic() - back < RECOVERY_SECONDS:
        found = [i for i in stack.itsm.items() if i.correlation_id == OUTAGE_ALERT_ID[-36:]]
        if found:
            out.write(f"the queued alert became {found[0].number} {time.monotonic() - back:.1f} s after recovery\n")
            return 0
        time.sleep(0.1)
    out.write(f"the queued alert did not reach {name} within {RECOVERY_SECONDS:.0f} s\n")
    return 1


def _check_incidents(stack: SandboxStack, out: TextIO) -> int:
    items = stack.itsm.items()
    rows = [["number", "status", "correlation_id", "configuration item", "title"]]
    for item in items:
        rows.append([item.number, item.status, item.correlation_id, item.configuration_item or "-", item.title[:70]])
    out.write(f"\nWork items in the {stack.itsm.display_name} stand-in ({len(items)})\n")
    _table(rows, out)

    failures = 0
    statuses = sorted(item.status for item in items)
    if len(items) != 5 or statuses != ["open", "open", "open", "resolved", "resolved"]:
        out.write("expected 5 work items: the metric and service health ones resolved, three open\n")
        failures += 1
    bound = sum(1 for item in items if item.configuration_item)
    expected = 4 if stack.itsm.binds_configuration_items else 0
    if bound != expected:
        out.write(f"expected {expected} work items bound to a CMDB configuration item, found {bound}\n")
        failures += 1
    return failures
