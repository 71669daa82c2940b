"""Settings: every environment variable the core reads, declared once, validated at start-up.

``SETTINGS`` is the core's list of names; each ITSM adapter declares its own beside itself
(``settings`` on the adapter class) and reads them from :attr:`Settings.env`, so the core never
names an ITSM. The infra templates, ``check-config`` and ``local.settings.sample.json`` are
tested against both. ``Settings.from_env`` turns an environment into one frozen object or raises
:class:`~bridge.errors.ConfigError` naming the first bad setting. Values of secret settings never
appear in messages or in ``repr``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError
from .rules import MappingRules, load_mapping
from .state.connection import AzureConnection

__all__ = [
    "AZURE_MONITOR_APP_ID",
    "SECRET_SETTING_NAMES",
    "SETTINGS",
    "SETTING_NAMES",
    "MappingRules",
    "Setting",
    "Settings",
    "https_url",
]

AZURE_MONITOR_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    default: str | None = None
    required: bool = False
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("AUTH_TENANT_ID", "Entra tenant (GUID) whose tokens are accepted", required=True),
    Setting(
        "AUTH_AUDIENCES", "comma list of accepted 'aud' values (Application ID URI and/or client id)", required=True
    ),
    Setting("AUTH_ALLOWED_APP_IDS", "comma list of caller app ids (appid v1 / azp v2)", AZURE_MONITOR_APP_ID),
    Setting("AUTH_REQUIRED_ROLE", "app role that must be in 'roles', e.g. ActionGroupsSecureWebhook"),
    Setting(
        "AUTH_OPENID_CONFIG_URL", "OpenID discovery document to take jwks_uri from (default: Entra ID's for the tenant)"
    ),
    Setting("ALLOWED_SUBSCRIPTION_IDS", "comma list of subscription ids whose alerts are accepted (default: any)"),
    Setting("ITSM_ADAPTER", "ITSM adapter: servicenow, jira, or one an installed package registers", "servicenow"),
    Setting("ITSM_TIMEOUT_SECONDS", "read timeout of one ITSM HTTP call", "4"),
    Setting("ITSM_RETRY_ATTEMPTS", "most quick attempts within one pass over an alert's ITSM work", "4"),
    Setting("ITSM_RETRY_BUDGET_SECONDS", "time one outbox pass may spend on an alert's ITSM work", "8"),
    Setting(
        "ITSM_INLINE_SECONDS",
        "time the HTTP answer may wait for the ITSM before the work goes to the outbox (202)",
        "3",
    ),
    Setting(
        "ITSM_SETTLE_SECONDS",
        "after a create whose outcome is unknown, how long the ITSM gets to land it before it is sent again",
        "60",
    ),
    Setting("CMDB_LOOKUP", "bind work items to the configuration items of the alert's resources (true/false)", "true"),
    Setting("CMDB_CACHE_SECONDS", "how long CMDB lookups (found or not) are cached", "300"),
    Setting("MAPPING_FILE", "JSON file of mapping rules (severity matrix, title template, routing, fields)"),
    Setting(
        "STATE_STORE",
        "where state records and the outbox live: sqlite (one machine) or azure (Table + Queue through "
        "AzureWebJobsStorage)",
        "sqlite",
    ),
    Setting("STATE_SQLITE_PATH", "the SQLite state file (STATE_STORE=sqlite)", ".bridge/state.sqlite3"),
    Setting("STATE_TABLE_NAME", "Azure Table of state records (STATE_STORE=azure)", "alertstate"),
    Setting("OUTBOX_QUEUE_NAME", "Azure Queue of the outbox; <name>-poison beside it (STATE_STORE=azure)", "outbox"),
    Setting("OUTBOX_HORIZON_HOURS", "how long failing ITSM work is retried before it is dead-lettered", "72"),
    Setting("OUTBOX_MAX_DELAY_SECONDS", "longest wait between two outbox attempts", "60"),
    Setting("STATE_RETENTION_DAYS", "how long finished state records are kept", "30"),
)

# Set by App Service / Functions on every instance in Azure, never by Core Tools or serve.
AZURE_INSTANCE_VARIABLE = "WEBSITE_INSTANCE_ID"

SETTING_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS)
SECRET_SETTING_NAMES: frozenset[str] = frozenset(s.name for s in SETTINGS if s.secret)
_BY_NAME = {s.name: s for s in SETTINGS}

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


def _split(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive_float(name: str, value: str, *, most: float = 86400.0) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(name, "must be a number") from None
    if not math.isfinite(number) or number <= 0 or number > most:
        raise ConfigError(name, f"must be a number greater than 0 and at most {most:g}")
    return number


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "must be true or false")


def https_url(name: str, value: str, *, allow_loopback_http: bool = True) -> str:
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme == "https" or (allow_loopback_http and parts.scheme == "http" and loopback):
        if parts.hostname:
            return value.rstrip("/")
    raise ConfigError(name, "must be an https:// URL (plain http is allowed only on loopback)")


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed and validated. Build with :meth:`from_env`."""

    tenant_id: str
    audiences: tuple[str, ...]
    allowed_app_ids: tuple[str, ...]
    required_role: str | None
    openid_config_url: str | None
    allowed_subscription_ids: frozenset[str]
    itsm_adapter: str
    itsm_timeout_seconds: float
    retry_attempts: int
    retry_budget_seconds: float
    cmdb_lookup: bool
    cmdb_cache_seconds: float
    mapping: MappingRules
    state_store: str
    state_sqlite_path: str
    state_table_name: str
    outbox_queue_name: str
    storage: AzureConnection | None
    inline_seconds: float
    settle_seconds: float
    outbox_horizon_seconds: float
    outbox_max_delay_seconds: float
    retention_seconds: float
    # The whole environment: the adapter reads its own settings from it (its declarations), so
    # the core never names them. Secrets live here, hence no repr.
    env: Mapping[str, str] = field(repr=False, default_factory=dict)

    def value(self, name: str, default: str | None = None) -> str | None:
        """A setting's value from the environment, stripped; None (or ``default``) when empty."""
        raw = (self.env.get(name) or "").strip()
        return raw or default

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            raw = env.get(name)
            value = raw.strip() if raw is not None else ""
            if value:
                return value
            spec = _BY_NAME[name]
            if spec.required:
                raise ConfigError(name, "is required")
            return spec.default

        tenant_id = get("AUTH_TENANT_ID") or ""
        if not _GUID.match(tenant_id):
            raise ConfigError("AUTH_TENANT_ID", "must be the tenant's GUID")
        audiences = _split(get("AUTH_AUDIENCES"))
        if not audiences:
            raise ConfigError("AUTH_AUDIENCES", "is required")
        allowed_app_ids = tuple(a.lower() for a in _split(get("AUTH_ALLOWED_APP_IDS")))
        if not allowed_app_ids:
            raise ConfigError("AUTH_ALLOWED_APP_IDS", "must name at least one app id")
        openid = get("AUTH_OPENID_CONFIG_URL")
        if openid:
            openid = https_url("AUTH_OPENID_CONFIG_URL", openid)
        subscriptions = frozenset(s.lower() for s in _split(get("ALLOWED_SUBSCRIPTION_IDS")))
        for sub in subscriptions:
            if not _GUID.match(sub):
                raise ConfigError("ALLOWED_SUBSCRIPTION_IDS", "every entry must be a subscription GUID")

        adapter = (get("ITSM_ADAPTER") or "").lower()
        attempts_raw = get("ITSM_RETRY_ATTEMPTS") or ""
        if not re.fullmatch(r"[0-9]{1,3}", attempts_raw) or not 1 <= int(attempts_raw) <= 20:
            raise ConfigError("ITSM_RETRY_ATTEMPTS", "must be a whole number from 1 to 20")

        mapping = load_mapping(get("MAPPING_FILE"))

        in_azure = bool((env.get(AZURE_INSTANCE_VARIABLE) or "").strip())
        store = (env.get("STATE_STORE") or "").strip().lower() or ("azure" if in_azure else "sqlite")
        if store not in ("sqlite", "azure"):
            raise ConfigError("STATE_STORE", "must be sqlite or azure")
        if store == "sqlite" and in_azure:
            raise ConfigError(
                "STATE_STORE",
                "sqlite keeps state on one machine and cannot be used in Azure, where instances come and "
                "go; use azure",
            )
        # Only the azure backend reads the connection: a SQLite setup never fails over it.
        storage = AzureConnection.from_env(env) if store == "azure" else None
        if store == "azure" and storage is None:
            raise ConfigError(
                "AzureWebJobsStorage",
                "is required for STATE_STORE=azure (a connection string, or __accountName / "
                "__tableServiceUri and __queueServiceUri for an identity)",
            )
        table_name = get("STATE_TABLE_NAME") or "alertstate"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", table_name):
            raise ConfigError("STATE_TABLE_NAME", "must be 3-63 letters and digits, starting with a letter")
        queue_name = get("OUTBOX_QUEUE_NAME") or "outbox"
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,54}[a-z0-9]", queue_name):
            raise ConfigError(
                "OUTBOX_QUEUE_NAME", "must be 3-56 lower-case letters, digits and single hyphens (the -poison "
                "queue must fit in 63)"
            )

        return cls(
            tenant_id=tenant_id.lower(),
            audiences=audiences,
            allowed_app_ids=allowed_app_ids,
            required_role=get("AUTH_REQUIRED_ROLE"),
            openid_config_url=openid,
            allowed_subscription_ids=subscriptions,
            itsm_adapter=adapter,
            itsm_timeout_seconds=_positive_float(
                "ITSM_TIMEOUT_SECONDS", get("ITSM_TIMEOUT_SECONDS") or "", most=120
            ),
            retry_attempts=int(attempts_raw),
            # Azure Monitor's webhook call must finish first; minutes of retrying would only be cut off.
            retry_budget_seconds=_positive_float(
                "ITSM_RETRY_BUDGET_SECONDS", get("ITSM_RETRY_BUDGET_SECONDS") or "", most=120
            ),
            cmdb_lookup=_bool("CMDB_LOOKUP", get("CMDB_LOOKUP") or ""),
            cmdb_cache_seconds=_positive_float("CMDB_CACHE_SECONDS", get("CMDB_CACHE_SECONDS") or ""),
            mapping=mapping,
            state_store=store,
            state_sqlite_path=get("STATE_SQLITE_PATH") or ".bridge/state.sqlite3",
            state_table_name=table_name,
            outbox_queue_name=queue_name,
            storage=storage,
            # Azure Monitor gives up on an answer after about 10 s; the answer must come within 5.
            inline_seconds=_positive_float("ITSM_INLINE_SECONDS", get("ITSM_INLINE_SECONDS") or "", most=4),
            settle_seconds=_positive_float("ITSM_SETTLE_SECONDS", get("ITSM_SETTLE_SECONDS") or "", most=3600),
            outbox_horizon_seconds=3600
            * _positive_float("OUTBOX_HORIZON_HOURS", get("OUTBOX_HORIZON_HOURS") or "", most=24 * 90),
            outbox_max_delay_seconds=_positive_float(
                "OUTBOX_MAX_DELAY_SECONDS", get("OUTBOX_MAX_DELAY_SECONDS") or "", most=3600
            ),
            retention_seconds=86400
            * _positive_float("STATE_RETENTION_DAYS", get("STATE_RETENTION_DAYS") or "", most=3650),
            env=dict(env),
        )
