"""Settings: every environment variable the core reads, declared once, validated at start-up.

``SETTINGS`` is the core's list of names; each ITSM adapter declares its own beside itself
(``settings`` on the adapter class) and reads them from :attr:`Settings.env`, so the core never
names an ITSM. The infra templates, ``check-config`` and ``local.settings.sample.json`` are
tested against both. ``Settings.from_env`` turns an environment into one frozen object or raises
:class:`~bridge.errors.ConfigError`: with one bad setting, the error naming it; with several,
:class:`SettingsErrors`, which lists every one (:meth:`Settings.problems` gives them as a list)
and whose ``setting`` is the first. Values never appear in messages, and secrets never in
``repr``.

App Service hands an app setting's literal ``@Microsoft.KeyVault(...)`` text to the app when it
cannot resolve the reference. :func:`unresolved_references` finds those; a core setting holding
one is a bad setting (its text would be taken at face value: an audience, a tenant, a URL), while
a credential holding one is *tolerated* at start-up: the ITSM refuses it like any wrong
credential, which the bridge survives by holding the work (see ``bridge.runtime``).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .errors import ConfigError
from .rules import MappingRules, Policy, load_mapping, parse_duration
from .state.connection import AzureConnection

__all__ = [
    "AZURE_MONITOR_APP_ID",
    "SECRET_SETTING_NAMES",
    "SETTINGS",
    "SETTING_NAMES",
    "MappingRules",
    "Setting",
    "Settings",
    "SettingsErrors",
    "UnresolvedReference",
    "https_url",
    "is_key_vault_reference",
    "unresolved_references",
    "url_problem",
]

AZURE_MONITOR_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    default: str | None = None
    required: bool = False
    secret: bool = False
    # What the default means, when ``default`` (the literal value used) cannot say it: a default
    # computed from other settings, or "any".
    default_text: str | None = None

    @property
    def shown_default(self) -> str:
        """The default as a person should read it (``check-config``'s "(default: ...)")."""
        return self.default_text or self.default or "none"


SETTINGS: tuple[Setting, ...] = (
    Setting("AUTH_TENANT_ID", "Entra tenant (GUID) whose tokens are accepted", required=True),
    Setting(
        "AUTH_AUDIENCES", "comma list of accepted 'aud' values (Application ID URI and/or client id)", required=True
    ),
    Setting("AUTH_ALLOWED_APP_IDS", "comma list of caller app ids (appid v1 / azp v2)", AZURE_MONITOR_APP_ID),
    Setting("AUTH_REQUIRED_ROLE", "app role that must be in 'roles', e.g. ActionGroupsSecureWebhook"),
    Setting(
        "AUTH_OPENID_CONFIG_URL",
        "OpenID discovery document to take jwks_uri from; its issuer is accepted too",
        default_text="Entra ID's for AUTH_TENANT_ID: https://login.microsoftonline.com/<tenant>/v2.0/"
        ".well-known/openid-configuration (and the v1 document for v1 tokens)",
    ),
    Setting(
        "ALLOWED_SUBSCRIPTION_IDS",
        "comma list of subscription ids whose alerts are accepted: the alertId's and every target's "
        "subscription must be listed",
        default_text="any",
    ),
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
    Setting(
        "MAPPING_FILE",
        "JSON file of mapping rules (severity matrix, title template, routing, fields)",
        default_text="built-in defaults",
    ),
    Setting(
        "REOPEN_WINDOW",
        "a new alert of a condition whose work item the bridge resolved at most this long ago reopens it "
        "(seconds, or 90s, 30m, 2h, 1d; 0 is off; shorter than STATE_RETENTION_DAYS, at most 30 days); the "
        "mapping file's policies may set their own",
        "0",
    ),
    Setting(
        "AUTO_RESOLVE_AFTER",
        "a stateless alert's work item (activity log, service/resource health, budget) is resolved after this "
        "long without a repeat (seconds, or 90s, 30m, 2h, 1d; 0 is off; at most 30 days); the mapping file's "
        "policies may set their own",
        "0",
    ),
    Setting(
        "STATE_STORE",
        "where state records and the outbox live: sqlite (one machine) or azure (Table + Queue through "
        "AzureWebJobsStorage)",
        "sqlite",
        default_text="sqlite locally, azure in Azure",
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
_ORDER = {s.name: index for index, s in enumerate(SETTINGS)}

# Read beside the declared settings: by the state store (and the Functions host) and by telemetry.
STORAGE_SETTING_PREFIX = "AzureWebJobsStorage"
TELEMETRY_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_KEY_VAULT_REFERENCE = "@microsoft.keyvault("
KEY_VAULT_PROBLEM = (
    "is an unresolved Key Vault reference: the platform passed the @Microsoft.KeyVault(...) text instead "
    "of the value it refers to (check that the secret exists and that the app's identity may read it)"
)


def is_key_vault_reference(value: str | None) -> bool:
    """Whether ``value`` is the text of a Key Vault reference rather than what it refers to."""
    return value is not None and value.strip().lower().startswith(_KEY_VAULT_REFERENCE)


@dataclass(frozen=True)
class UnresolvedReference:
    """A setting whose value is an unresolved Key Vault reference (its value is never kept).

    ``tolerated``: the bridge can run with it, degraded. A credential is only refused by the ITSM
    (the work is held until the reference resolves), and telemetry only goes dark; any other
    setting's text would be believed, and alerts refused or misrouted, so that one is a bad setting.
    """

    setting: str
    tolerated: bool

    def error(self) -> ConfigError:
        return ConfigError(self.setting, KEY_VAULT_PROBLEM)


def unresolved_references(env: Mapping[str, str], declared: Sequence[Setting] = ()) -> list[UnresolvedReference]:
    """Every setting the bridge reads (the core's, ``declared`` ones such as the adapter's, the
    ``AzureWebJobsStorage`` connection and telemetry's) whose value is a Key Vault reference."""
    specs = {spec.name: spec for spec in (*SETTINGS, *declared)}
    names = [*specs, *sorted(k for k in env if _is_storage_setting(k)), TELEMETRY_SETTING]
    found: list[UnresolvedReference] = []
    for name in dict.fromkeys(names):
        if is_key_vault_reference(env.get(name)):
            spec = specs.get(name)
            found.append(UnresolvedReference(name, (spec is not None and spec.secret) or name == TELEMETRY_SETTING))
    return found


def _is_storage_setting(name: str) -> bool:
    return name == STORAGE_SETTING_PREFIX or name.startswith(STORAGE_SETTING_PREFIX + "__")


def _setting_order(problem: ConfigError) -> tuple[int, bool]:
    """Problems are listed in the order of ``SETTINGS``; the storage connection's after STATE_STORE."""
    storage = _is_storage_setting(problem.setting)
    return _ORDER.get("STATE_STORE" if storage else problem.setting, len(_ORDER)), storage


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


def _duration(name: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "must be true or false")


_LOOPBACK_NAMES = frozenset({"localhost"})
_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*)(?:\.[a-z0-9_-]+)*\.?\Z")
_HTTPS_RULE = "must be an https:// URL (plain http is allowed only on loopback)"


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(value: str, *, allow_loopback_http: bool = True, allow_query: bool = False) -> str | None:
    """Why ``value`` is not a URL the bridge may send credentials or trust to, or None when it is.

    The URL must mean the same host to every parser on the way: the standard library's
    ``urlsplit`` (what this check reads) and urllib3's ``parse_url`` (what requests connects to).
    So anything parsers read differently is refused outright: backslashes, user info
    (``user:password@``; credentials have their own settings), fragments, spaces, control and
    non-ASCII characters, percent-encoded or otherwise odd host names. Plain http only when the
    host really is loopback (``localhost``, 127.0.0.0/8, ``::1``). The message never quotes the
    value.
    """
    if not value.isascii():
        return "must be ASCII (write an internationalised host name in its xn-- form)"
    if any(c <= " " or c == "\x7f" for c in value):
        return "must not contain spaces or control characters"
    if "\\" in value:
        return "must not contain a backslash"
    if "#" in value:
        return "must not contain a fragment (#...)"
    try:
        parts = urlsplit(value)
        port = parts.port
        parsed = parse_url(value)
    except (ValueError, LocationParseError):
        return "is not a valid URL"
    if "@" in parts.netloc or parts.username is not None or parsed.auth is not None:
        return "must not contain a user name or password (user:password@); use the credential settings"
    if "?" in value and not allow_query:
        return "must not contain a query (?...)"
    host = (parts.hostname or "").lower()
    if not host:
        return _HTTPS_RULE
    bare = (parsed.host or "").lower().removeprefix("[").removesuffix("]")
    if (parsed.scheme or "").lower() != parts.scheme or bare != host or parsed.port != port:
        return "is read differently by different URL parsers; write it plainly (scheme://host[:port]/path)"
    if not _HOST_NAME.match(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "does not have a valid host name"
    if parts.scheme == "https" or (allow_loopback_http and parts.scheme == "http" and _is_loopback(host)):
        return None
    return _HTTPS_RULE


def https_url(name: str, value: str, *, allow_loopback_http: bool = True, allow_query: bool = False) -> str:
    """``value`` without trailing slashes, or ConfigError naming ``name`` (see :func:`url_problem`)."""
    problem = url_problem(value, allow_loopback_http=allow_loopback_http, allow_query=allow_query)
    if problem is not None:
        raise ConfigError(name, problem)
    return value.rstrip("/")


class SettingsErrors(ConfigError):
    """Several settings are bad at once. ``setting`` is the first (what health reports);
    ``problems`` are all of them, and the message lists every one."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        rest = "; ".join(str(p) for p in problems[1:])
        super().__init__(first.setting, f"{str(first).removeprefix(first.setting + ': ')}; {rest}")
        self.problems: tuple[ConfigError, ...] = tuple(problems)


_T = TypeVar("_T")


class _Problems:
    """Collects every bad setting instead of stopping at the first."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def check(self, read: Callable[[], _T], fallback: _T) -> _T:
        try:
            return read()
        except ConfigError as exc:
            self.found.append(exc)
            return fallback

    def add(self, name: str, message: str) -> None:
        self.found.append(ConfigError(name, message))


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

    def reader(self, declared: Sequence[Setting]) -> Callable[[str], str | None]:
        """``get(name)`` for an adapter: a setting it declares, or the default it declares."""
        defaults = {spec.name: spec.default for spec in declared}

        def get(name: str) -> str | None:
            return self.value(name, defaults.get(name))

        return get

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings, or ConfigError: the one bad setting, or :class:`SettingsErrors` listing
        every bad one (its ``setting`` is the first)."""
        settings, problems = cls._read(env)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise SettingsErrors(problems)
        assert settings is not None
        return settings

    @classmethod
    def problems(cls, env: Mapping[str, str]) -> list[ConfigError]:
        """Every bad core setting of ``env`` (in the order of ``SETTINGS``; AzureWebJobsStorage with
        STATE_STORE), empty when all are good. An adapter's own settings are checked when it is
        built, from good core settings."""
        return cls._read(env)[1]

    @classmethod
    def _read(cls, env: Mapping[str, str]) -> tuple[Settings | None, list[ConfigError]]:
        problems = _Problems()
        check = problems.check
        # Reported once as what they are, and then read as unset: "must be the tenant's GUID"
        # would only mislead.
        refused = [ref for ref in unresolved_references(env) if not ref.tolerated]
        problems.found.extend(ref.error() for ref in refused)
        unresolved = frozenset(ref.setting for ref in refused)

        def get(name: str) -> str | None:
            raw = env.get(name) if name not in unresolved else None
            value = raw.strip() if raw is not None else ""
            if value:
                return value
            if name in unresolved:
                return _BY_NAME[name].default
            spec = _BY_NAME[name]
            if spec.required:
                problems.add(name, "is required")
                return None
            return spec.default

        def number(name: str, *, most: float = 86400.0) -> float:
            return check(lambda: _positive_float(name, get(name) or "", most=most), 0.0)

        tenant_id = get("AUTH_TENANT_ID")
        if tenant_id is not None and not _GUID.match(tenant_id):
            problems.add("AUTH_TENANT_ID", "must be the tenant's GUID")
        raw_audiences = get("AUTH_AUDIENCES")
        audiences = _split(raw_audiences)
        if raw_audiences is not None and not audiences:
            problems.add("AUTH_AUDIENCES", "is required")
        allowed_app_ids = tuple(a.lower() for a in _split(get("AUTH_ALLOWED_APP_IDS")))
        if not allowed_app_ids:
            problems.add("AUTH_ALLOWED_APP_IDS", "must name at least one app id")
        openid_raw = get("AUTH_OPENID_CONFIG_URL")
        openid: str | None = None
        if openid_raw:
            # A query is legitimate here: Entra's app-specific keys are ?appid=<client id>.
            openid = check(lambda: https_url("AUTH_OPENID_CONFIG_URL", openid_raw, allow_query=True), None)
        subscriptions = frozenset(s.lower() for s in _split(get("ALLOWED_SUBSCRIPTION_IDS")))
        if any(not _GUID.match(sub) for sub in subscriptions):
            problems.add("ALLOWED_SUBSCRIPTION_IDS", "every entry must be a subscription GUID")

        adapter = (get("ITSM_ADAPTER") or "").lower()
        timeout = number("ITSM_TIMEOUT_SECONDS", most=120)
        attempts_raw = get("ITSM_RETRY_ATTEMPTS") or ""
        if not re.fullmatch(r"[0-9]{1,3}", attempts_raw) or not 1 <= int(attempts_raw) <= 20:
            problems.add("ITSM_RETRY_ATTEMPTS", "must be a whole number from 1 to 20")
            attempts_raw = "0"
        # Azure Monitor's webhook call must finish first; minutes of retrying would only be cut off.
        budget = number("ITSM_RETRY_BUDGET_SECONDS", most=120)
        # Azure Monitor gives up on an answer after about 10 s; the answer must come within 5.
        inline = number("ITSM_INLINE_SECONDS", most=4)
        settle = number("ITSM_SETTLE_SECONDS", most=3600)
        cmdb_lookup = check(lambda: _bool("CMDB_LOOKUP", get("CMDB_LOOKUP") or ""), False)
        cmdb_cache = number("CMDB_CACHE_SECONDS")

        # Read before the mapping file: a re-fire window must end before the record that remembers
        # the resolved work item is deleted, in the settings' default policy and in the file's.
        retention = number("STATE_RETENTION_DAYS", most=3650)
        retention_seconds = 86400 * retention if retention else None
        reopen_window = check(lambda: _duration("REOPEN_WINDOW", get("REOPEN_WINDOW") or "0"), 0.0)
        if retention_seconds is not None and reopen_window >= retention_seconds:
            problems.add(
                "REOPEN_WINDOW",
                "must be shorter than STATE_RETENTION_DAYS: the record that remembers a resolved work item is "
                "deleted after that",
            )
            reopen_window = 0.0
        auto_resolve_after = check(lambda: _duration("AUTO_RESOLVE_AFTER", get("AUTO_RESOLVE_AFTER") or "0"), 0.0)
        defaults = Policy(reopen_window=reopen_window, auto_resolve_after=auto_resolve_after)
        mapping = check(
            lambda: load_mapping(get("MAPPING_FILE"), defaults, retention_seconds=retention_seconds), None
        )

        in_azure = bool((env.get(AZURE_INSTANCE_VARIABLE) or "").strip())
        raw_store = "" if "STATE_STORE" in unresolved else env.get("STATE_STORE") or ""
        store = raw_store.strip().lower() or ("azure" if in_azure else "sqlite")
        storage: AzureConnection | None = None
        if store not in ("sqlite", "azure"):
            problems.add("STATE_STORE", "must be sqlite or azure")
        elif store == "sqlite" and in_azure:
            problems.add(
                "STATE_STORE",
                "sqlite keeps state on one machine and cannot be used in Azure, where instances come and "
                "go; use azure",
            )
        elif store == "azure" and not any(_is_storage_setting(name) for name in unresolved):
            # Only the azure backend reads the connection: a SQLite setup never fails over it.
            before = len(problems.found)
            storage = check(lambda: AzureConnection.from_env(env), None)
            if storage is None and len(problems.found) == before:
                problems.add(
                    "AzureWebJobsStorage",
                    "is required for STATE_STORE=azure (a connection string, or __accountName / "
                    "__tableServiceUri and __queueServiceUri for an identity)",
                )
        table_name = get("STATE_TABLE_NAME") or "alertstate"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", table_name):
            problems.add("STATE_TABLE_NAME", "must be 3-63 letters and digits, starting with a letter")
        queue_name = get("OUTBOX_QUEUE_NAME") or "outbox"
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,54}[a-z0-9]", queue_name):
            problems.add(
                "OUTBOX_QUEUE_NAME", "must be 3-56 lower-case letters, digits and single hyphens (the -poison "
                "queue must fit in 63)"
            )
        horizon = number("OUTBOX_HORIZON_HOURS", most=24 * 90)
        max_delay = number("OUTBOX_MAX_DELAY_SECONDS", most=3600)

        if problems.found:
            return None, sorted(problems.found, key=_setting_order)
        assert tenant_id is not None and mapping is not None
        return cls(
            tenant_id=tenant_id.lower(),
            audiences=audiences,
            allowed_app_ids=allowed_app_ids,
            required_role=get("AUTH_REQUIRED_ROLE"),
            openid_config_url=openid,
            allowed_subscription_ids=subscriptions,
            itsm_adapter=adapter,
            itsm_timeout_seconds=timeout,
            retry_attempts=int(attempts_raw),
            retry_budget_seconds=budget,
            cmdb_lookup=cmdb_lookup,
            cmdb_cache_seconds=cmdb_cache,
            mapping=mapping,
            state_store=store,
            state_sqlite_path=get("STATE_SQLITE_PATH") or ".bridge/state.sqlite3",
            state_table_name=table_name,
            outbox_queue_name=queue_name,
            storage=storage,
            inline_seconds=inline,
            settle_seconds=settle,
            outbox_horizon_seconds=3600 * horizon,
            outbox_max_delay_seconds=max_delay,
            retention_seconds=86400 * retention,
            env=dict(env),
        ), []
