"""The embedded sandbox: both stand-ins started together, and the bridge settings that point at them.

Used by ``python -m bridge demo``, ``python -m bridge serve --sandbox`` and the integration tests,
so all three run the bridge against the same stand-ins with the same settings.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..config import AZURE_MONITOR_APP_ID
from .entra import SANDBOX_AUDIENCE, SANDBOX_CLIENT_ID, EntraStandIn
from .servicenow import ServiceNowStandIn

__all__ = ["SANDBOX_AUDIENCE", "SANDBOX_CLIENT_ID", "SandboxStack", "sample_cmdb"]

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


class SandboxStack:
    """A ServiceNow stand-in (seeded CMDB) and an Entra ID stand-in on loopback."""

    def __init__(self, *, servicenow_port: int = 0, entra_port: int = 0) -> None:
        self.servicenow = ServiceNowStandIn(port=servicenow_port, seed={"cmdb_ci": sample_cmdb()})
        self.entra = EntraStandIn(port=entra_port)
        # The stand-ins start empty, so the bridge's state must too: a fresh SQLite file per stack.
        self.state_dir = Path(tempfile.mkdtemp(prefix="bridge-sandbox-"))

    def start(self) -> SandboxStack:
        self.servicenow.start()
        try:
            self.entra.start()
        except Exception:
            self.servicenow.stop()
            raise
        return self

    def stop(self) -> None:
        self.entra.stop()
        self.servicenow.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> SandboxStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def bridge_env(self, **overrides: str) -> dict[str, str]:
        """Bridge settings that point at the stand-ins (OAuth client credentials to ServiceNow)."""
        env = {
            "AUTH_TENANT_ID": self.entra.tenant_id,
            "AUTH_AUDIENCES": f"{SANDBOX_AUDIENCE},{SANDBOX_CLIENT_ID}",
            "AUTH_ALLOWED_APP_IDS": AZURE_MONITOR_APP_ID,
            "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
            "AUTH_OPENID_CONFIG_URL": self.entra.openid_config_url,
            "SERVICENOW_INSTANCE_URL": self.servicenow.url,
            "SERVICENOW_CLIENT_ID": "sandbox-client",
            "SERVICENOW_CLIENT_SECRET": "sandbox-secret",
            "ITSM_RETRY_BUDGET_SECONDS": "8",
            "STATE_STORE": "sqlite",
            "STATE_SQLITE_PATH": str(self.state_dir / "state.sqlite3"),
        }
        env.update(overrides)
        return env

    def token(self, version: str = "2.0", **kwargs: Any) -> str:
        """A token as Azure Monitor's secure webhook would send it (v2: aud = client id)."""
        audience = SANDBOX_CLIENT_ID if version == "2.0" else SANDBOX_AUDIENCE
        return self.entra.mint(version=version, audience=kwargs.pop("audience", audience), **kwargs)


def load_sample(name: str, **essentials: Any) -> dict[str, Any]:
    """A bundled sample payload, with some essentials replaced (e.g. monitorCondition)."""
    data: dict[str, Any] = json.loads((SAMPLES_DIR / name).read_text(encoding="utf-8"))
    data["data"]["essentials"].update(essentials)
    return data


def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES_DIR.glob("*.json"))
