"""The embedded sandbox: an ITSM stand-in (ServiceNow or Jira) and the Entra ID stand-in started
together, and the bridge settings that point at them.

Used by ``python -m bridge demo [--itsm jira]``, ``python -m bridge serve --sandbox [--itsm jira]``
and the integration tests, so all run the bridge against the same stand-ins with the same
settings. :class:`SandboxItem` is a neutral view of what the ITSM stand-in holds, so the demo
reads the same whichever ITSM it runs against.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import AZURE_MONITOR_APP_ID
from .entra import SANDBOX_AUDIENCE, SANDBOX_CLIENT_ID, EntraStandIn
from .jira import JiraStandIn
from .servicenow import ServiceNowStandIn

__all__ = [
    "ITSMS",
    "SANDBOX_AUDIENCE",
    "SANDBOX_CLIENT_ID",
    "ItsmSandbox",
    "SandboxItem",
    "SandboxStack",
    "metric_alert",
    "sample_cmdb",
]

SANDBOX_SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_cmdb() -> list[dict[str, Any]]:
    """CMDB records for the bundled samples: some found by resource id, one by name, some missing."""
    rg = f"/subscriptions/{SANDBOX_SUBSCRIPTION}/resourcegroups/test-RG/providers"
    return [
        {
            "name": "test-storageAccount",
            "object_id": f"{rg}/microsoft.storage/storageaccounts/test-storageAccount",
            "sys_class_name": "cmdb_ci_cloud_storage_account",
            "operational_status": "1",
        },
        {
            "name": "test-VM",
            # Azure discovery stores ids as Azure returns them; alerts may differ in case.
            "object_id": f"/subscriptions/{SANDBOX_SUBSCRIPTION}/resourceGroups/test-RG/providers"
            "/Microsoft.Compute/virtualMachines/test-VM",
            "sys_class_name": "cmdb_ci_vm_instance",
            "operational_status": "1",
        },
        {
            "name": "test-computer",
            "sys_class_name": "cmdb_ci_computer",
            "operational_status": "1",
        },
    ]


@dataclass(frozen=True)
class SandboxItem:
    """A work item in an ITSM stand-in, in the bridge's neutral terms."""

    number: str
    status: str  # open, resolved, closed, canceled
    correlation_id: str
    title: str
    configuration_item: str | None  # the CI's name, when the ITSM binds one
    notes: tuple[str, ...]  # the bridge's notes (work notes, internal comments) as text, oldest first


class ItsmSandbox(Protocol):
    """What the stack needs of an ITSM stand-in: its life, where it is, how the bridge reaches
    it, and what it holds."""

    name: str
    display_name: str
    binds_configuration_items: bool

    @property
    def standin(self) -> Any: ...

    @property
    def url(self) -> str: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def bridge_env(self) -> dict[str, str]: ...

    def owned_settings(self) -> frozenset[str]: ...

    def items(self) -> list[SandboxItem]: ...

    def credentials(self) -> str: ...


class _StandInSandbox:
    """What every ITSM sandbox does the same way: run its stand-in."""

    standin: Any

    @property
    def url(self) -> str:
        return str(self.standin.url)

    def start(self) -> Any:
        return self.standin.start()

    def stop(self) -> None:
        self.standin.stop()


class _ServiceNowSandbox(_StandInSandbox):
    name = "servicenow"
    display_name = "ServiceNow"
    binds_configuration_items = True
    _STATUS = {"1": "open", "2": "open", "3": "open", "6": "resolved", "7": "closed", "8": "canceled"}

    def __init__(self, port: int) -> None:
        self.standin: ServiceNowStandIn = ServiceNowStandIn(port=port, seed={"cmdb_ci": sample_cmdb()})

    def bridge_env(self) -> dict[str, str]:
        return {
            "ITSM_ADAPTER": "servicenow",
            "SERVICENOW_INSTANCE_URL": self.standin.url,
            "SERVICENOW_CLIENT_ID": "sandbox-client",
            "SERVICENOW_CLIENT_SECRET": "sandbox-secret",
        }

    def owned_settings(self) -> frozenset[str]:
        # The instance and every credential: a basic-auth user of another instance beside the
        # stand-in's OAuth client would turn its client credentials into a password grant.
        return frozenset({
            "SERVICENOW_INSTANCE_URL", "SERVICENOW_USERNAME", "SERVICENOW_PASSWORD",
            "SERVICENOW_CLIENT_ID", "SERVICENOW_CLIENT_SECRET",
        })

    def credentials(self) -> str:
        return "user bridge / sandbox-password; OAuth client sandbox-client / sandbox-secret"

    def items(self) -> list[SandboxItem]:
        cis = {ci["sys_id"]: ci["name"] for ci in self.standin.records("cmdb_ci")}
        found = []
        for row in self.standin.records("incident"):
            ci = row.get("cmdb_ci") or ""
            ci_id = ci.get("value", "") if isinstance(ci, dict) else ci
            found.append(
                SandboxItem(
                    number=row["number"],
                    status=self._STATUS.get(str(row.get("state")), "open"),
                    correlation_id=row["correlation_id"],
                    title=row["short_description"],
                    configuration_item=cis.get(ci_id),
                    notes=tuple(self.standin.journal("incident", row["sys_id"])),
                )
            )
        return found


class _JiraSandbox(_StandInSandbox):
    name = "jira"
    display_name = "Jira"
    binds_configuration_items = False  # no CMDB in Jira here
    _PREFIX = "azmon-"

    def __init__(self, port: int) -> None:
        self.standin: JiraStandIn = JiraStandIn(port=port)

    def bridge_env(self) -> dict[str, str]:
        return {
            "ITSM_ADAPTER": "jira",
            "JIRA_BASE_URL": self.standin.url,
            "JIRA_DEPLOYMENT": "cloud",
            "JIRA_EMAIL": "bridge@example.com",
            "JIRA_API_TOKEN": "sandbox-jira-token",
            "JIRA_PROJECT": "OPS",
            "JIRA_ISSUE_TYPE": "Incident",
            "JIRA_LABEL_PREFIX": self._PREFIX,
            "CMDB_LOOKUP": "false",
        }

    def owned_settings(self) -> frozenset[str]:
        # The site, its credentials and its one project (OPS).
        return frozenset({
            "JIRA_BASE_URL", "JIRA_DEPLOYMENT", "JIRA_EMAIL", "JIRA_API_TOKEN", "JIRA_PAT", "JIRA_PROJECT",
        })

    def credentials(self) -> str:
        return "email bridge@example.com / API token sandbox-jira-token; project OPS"

    def items(self) -> list[SandboxItem]:
        found = []
        for issue in self.standin.issues():
            fields = issue["fields"]
            labels = [label for label in fields.get("labels", []) if label.startswith(self._PREFIX)]
            category = str(fields.get("statusCategory", "")).lower()
            status = "open" if category in ("new", "indeterminate") else "resolved"
            if str(fields.get("status", "")).lower() == "closed":
                status = "closed"
            found.append(
                SandboxItem(
                    number=issue["key"],
                    status=status,
                    correlation_id=labels[0][len(self._PREFIX) :] if labels else "",
                    title=str(fields.get("summary", "")),
                    configuration_item=None,
                    notes=tuple(_adf_text(c["body"]) for c in self.standin.comments(issue["key"])),
                )
            )
        return found


def _adf_text(body: Any) -> str:
    """The text of an ADF document (or a plain string body)."""
    if isinstance(body, str):
        return body
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "text":
                parts.append(str(node.get("text", "")))
            elif node.get("type") == "hardBreak":
                parts.append("\n")
            for child in node.get("content", []) or []:
                walk(child)
            if node.get("type") == "paragraph":
                parts.append("\n")

    walk(body)
    return "".join(parts).strip()


ITSMS: dict[str, type[Any]] = {"servicenow": _ServiceNowSandbox, "jira": _JiraSandbox}

# What points at the stand-ins whichever ITSM: the tenant, audiences and keys of the Entra ID
# stand-in, the adapter, and the state (the stand-ins start empty, so the state must too).
_OWNED_CORE_SETTINGS = frozenset({
    "AUTH_TENANT_ID", "AUTH_AUDIENCES", "AUTH_OPENID_CONFIG_URL", "ITSM_ADAPTER", "STATE_STORE", "STATE_SQLITE_PATH",
})
# What a Functions host needs besides the bridge's settings: its worker, its storage (Azurite),
# and the queue name its `outbox` trigger binds (%OUTBOX_QUEUE_NAME% must resolve).
_FUNCTION_HOST_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME": "python",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "OUTBOX_QUEUE_NAME": "outbox",
}


class SandboxStack:
    """An ITSM stand-in (ServiceNow with a seeded CMDB, or Jira) and an Entra ID stand-in on loopback."""

    def __init__(self, *, itsm: str = "servicenow", itsm_port: int = 0, entra_port: int = 0) -> None:
        if itsm not in ITSMS:
            raise ValueError(f"unknown ITSM {itsm!r}; the sandbox has {', '.join(ITSMS)}")
        self.itsm: ItsmSandbox = ITSMS[itsm](itsm_port)
        self.entra = EntraStandIn(port=entra_port)
        # The stand-ins start empty, so the bridge's state must too: a fresh SQLite file per stack.
        self.state_dir = Path(tempfile.mkdtemp(prefix="bridge-sandbox-"))

    @property
    def servicenow(self) -> ServiceNowStandIn:
        """The ServiceNow stand-in (of a stack started with ``itsm="servicenow"``)."""
        if not isinstance(self.itsm, _ServiceNowSandbox):
            raise AttributeError("this sandbox runs Jira, not ServiceNow")
        return self.itsm.standin

    @property
    def jira(self) -> JiraStandIn:
        """The Jira stand-in (of a stack started with ``itsm="jira"``)."""
        if not isinstance(self.itsm, _JiraSandbox):
            raise AttributeError("this sandbox runs ServiceNow, not Jira")
        return self.itsm.standin

    def start(self) -> SandboxStack:
        self.itsm.start()
        try:
            self.entra.start()
        except Exception:
            self.itsm.stop()
            raise
        return self

    def stop(self) -> None:
        self.entra.stop()
        self.itsm.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> SandboxStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def bridge_env(self, **overrides: str) -> dict[str, str]:
        """Bridge settings that point at the stand-ins (for ServiceNow: OAuth client credentials)."""
        env = {
            "AUTH_TENANT_ID": self.entra.tenant_id,
            "AUTH_AUDIENCES": f"{SANDBOX_AUDIENCE},{SANDBOX_CLIENT_ID}",
            "AUTH_ALLOWED_APP_IDS": AZURE_MONITOR_APP_ID,
            "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
            "AUTH_OPENID_CONFIG_URL": self.entra.openid_config_url,
            **self.itsm.bridge_env(),
            "ITSM_RETRY_BUDGET_SECONDS": "8",
            "STATE_STORE": "sqlite",
            "STATE_SQLITE_PATH": str(self.state_dir / "state.sqlite3"),
        }
        env.update(overrides)
        return env

    def owned_settings(self) -> frozenset[str]:
        """The settings that point at the stand-ins: ``serve --sandbox`` always takes them from
        the sandbox (one the sandbox does not set, such as another instance's password, is dropped)."""
        return _OWNED_CORE_SETTINGS | self.itsm.owned_settings()

    def serve_env(self, environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """The settings ``serve --sandbox`` runs with, and the names of those in ``environ`` it replaced.

        Every setting comes from ``environ`` (the environment over a settings file's ``Values``),
        except :meth:`owned_settings`, which are the sandbox's; the sandbox's other values
        (allowed app id, required role, ...) fill only what ``environ`` leaves unset or empty.
        """
        ours = self.bridge_env()
        owned = self.owned_settings()
        env = {name: value for name, value in ours.items() if name not in owned}
        env.update({name: value for name, value in environ.items() if value.strip() or name not in env})
        for name in owned:
            env.pop(name, None)
        env.update({name: value for name, value in ours.items() if name in owned})
        replaced = sorted(
            name for name in owned if (environ.get(name) or "").strip() and environ[name] != ours.get(name)
        )
        return env, replaced

    def function_settings(self) -> dict[str, str]:
        """What a Function (``func start``) needs to use these stand-ins, as ``local.settings.json``
        ``Values``: the host's own settings, everything that points at the stand-ins (an owned
        setting the sandbox does not use is given empty, so it is unset), the caller the Entra ID
        stand-in's tokens name, and this stack's state file (shared with ``serve --sandbox``,
        whose outbox worker then finishes what either one queued)."""
        ours = self.bridge_env()
        wanted = self.owned_settings() | {"AUTH_ALLOWED_APP_IDS", "AUTH_REQUIRED_ROLE"} | set(self.itsm.bridge_env())
        values = {name: ours.get(name, "") for name in wanted}
        return {**_FUNCTION_HOST_SETTINGS, **dict(sorted(values.items()))}

    def token(self, version: str = "2.0", **kwargs: Any) -> str:
        """A token as Azure Monitor's secure webhook would send it (v2: aud = client id)."""
        audience = SANDBOX_CLIENT_ID if version == "2.0" else SANDBOX_AUDIENCE
        return self.entra.mint(version=version, audience=kwargs.pop("audience", audience), **kwargs)


def load_sample(name: str, **essentials: Any) -> dict[str, Any]:
    """A bundled sample payload, with some essentials replaced (e.g. monitorCondition)."""
    data: dict[str, Any] = json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))
    data["data"]["essentials"].update(essentials)
    return data


def metric_alert(guid: str, condition: str = "Fired", value: float | None = None) -> dict[str, Any]:
    """The bundled metric alert as its own alert instance (alertId ending in ``guid``): Fired, or
    Resolved, optionally with another metric value (a new payload of the same instance)."""
    extra: dict[str, Any] = {"resolvedDateTime": "2025-04-15T18:32:12.8510000Z"} if condition == "Resolved" else {}
    payload = load_sample(
        "metric_static_fired.testaction.json",
        alertId=f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{guid}",
        monitorCondition=condition,
        **extra,
    )
    if value is not None:
        payload["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] = value
    return payload


def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES_DIR.glob("*.json"))
