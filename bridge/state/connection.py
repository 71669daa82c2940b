"""How to reach Azure Storage for the state store: the Functions ``AzureWebJobsStorage`` connection.

The Functions host reads one connection, by a prefix, either as a connection string (``<prefix>``)
or as identity settings (``<prefix>__accountName``, ``__tableServiceUri``, ``__queueServiceUri``,
``__credential``, ``__clientId``). The state store follows the same rules so that the queue trigger
and the store always speak to the same account. This module only parses and validates; it imports
no Azure SDK (``bridge.state.azure`` builds the clients).

Connection strings hold account keys: no message, ``repr`` or description here ever contains one,
and errors name the setting without echoing its value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["DEVELOPMENT_ACCOUNT", "DEVELOPMENT_KEY", "AzureConnection"]

# Azurite's well-known account and key, published in its README; they are not a secret.
DEVELOPMENT_ACCOUNT = "devstoreaccount1"
DEVELOPMENT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# UseDevelopmentStorage=true means exactly these ports (FACTS-storage 4).
_DEVELOPMENT_CONNECTION_STRING = (
    f"DefaultEndpointsProtocol=http;AccountName={DEVELOPMENT_ACCOUNT};AccountKey={DEVELOPMENT_KEY};"
    f"BlobEndpoint=http://127.0.0.1:10000/{DEVELOPMENT_ACCOUNT};"
    f"QueueEndpoint=http://127.0.0.1:10001/{DEVELOPMENT_ACCOUNT};"
    f"TableEndpoint=http://127.0.0.1:10002/{DEVELOPMENT_ACCOUNT};"
)
_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class AzureConnection:
    """A validated way to the account's Table and Queue services.

    Exactly one of two shapes: ``connection_string`` set (shared key or SAS; kept out of ``repr``),
    or identity-based (``connection_string`` None; ``managed_identity`` and ``client_id`` choose
    the credential). ``table_endpoint`` and ``queue_endpoint`` are always filled in, for
    :meth:`describe` and for the identity clients.
    """

    setting: str
    table_endpoint: str
    queue_endpoint: str
    account_name: str | None = None
    connection_string: str | None = field(default=None, repr=False)
    managed_identity: bool = False
    client_id: str | None = None
    development_storage: bool = False

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str = "AzureWebJobsStorage") -> AzureConnection | None:
        """The connection configured under ``prefix``, None when nothing is, ConfigError when half is."""

        def get(name: str) -> str | None:
            value = env.get(name)
            return (value.strip() or None) if value is not None else None

        text = get(prefix)
        if text is not None:
            # The host gives the connection string precedence over identity settings; so do we.
            return cls.from_connection_string(text, setting=prefix)

        account = get(f"{prefix}__accountName")
        table_uri = get(f"{prefix}__tableServiceUri")
        queue_uri = get(f"{prefix}__queueServiceUri")
        credential = get(f"{prefix}__credential")
        client_id = get(f"{prefix}__clientId")
        if not any((account, table_uri, queue_uri, credential, client_id)):
            return None

        if account is not None and not _ACCOUNT_NAME.fullmatch(account):
            raise ConfigError(
                f"{prefix}__accountName", "must be a storage account name (3-24 lower-case letters and digits)"
            )
        if account is None:
            if table_uri is None and queue_uri is None:
                raise ConfigError(
                    f"{prefix}__accountName",
                    f"is required for an identity connection (or both {prefix}__tableServiceUri and "
                    f"{prefix}__queueServiceUri)",
                )
            if table_uri is None or queue_uri is None:
                missing, given = (
                    ("tableServiceUri", "queueServiceUri")
                    if table_uri is None
                    else ("queueServiceUri", "tableServiceUri")
                )
                raise ConfigError(
                    f"{prefix}__{missing}",
                    f"is required when {prefix}__{given} is set without {prefix}__accountName",
                )
        # An explicit service URI wins over the one derived from the account name (sovereign
        # clouds, private endpoints with custom names).
        table = (
            _service_uri(f"{prefix}__tableServiceUri", table_uri)
            if table_uri is not None
            else f"https://{account}.table.core.windows.net"
        )
        queue = (
            _service_uri(f"{prefix}__queueServiceUri", queue_uri)
            if queue_uri is not None
            else f"https://{account}.queue.core.windows.net"
        )

        managed = False
        if credential is not None:
            if credential.lower() != "managedidentity":
                raise ConfigError(f"{prefix}__credential", "must be managedidentity, or unset for the default chain")
            managed = True
        if client_id is not None and not _GUID.fullmatch(client_id):
            raise ConfigError(f"{prefix}__clientId", "must be the client id (a GUID) of a user-assigned identity")

        return cls(
            setting=prefix,
            table_endpoint=table,
            queue_endpoint=queue,
            account_name=account or _account_from_host(table),
            managed_identity=managed,
            client_id=client_id,
        )

    @classmethod
    def from_connection_string(cls, text: str, *, setting: str = "AzureWebJobsStorage") -> AzureConnection:
        """Validate a storage connection string (``UseDevelopmentStorage=true`` included)."""
        parts = _parse_connection_string(setting, text)
        if "usedevelopmentstorage" in parts:
            if parts["usedevelopmentstorage"].lower() != "true":
                raise ConfigError(setting, "UseDevelopmentStorage must be true when present")
            return cls(
                setting=setting,
                table_endpoint=f"http://127.0.0.1:10002/{DEVELOPMENT_ACCOUNT}",
                queue_endpoint=f"http://127.0.0.1:10001/{DEVELOPMENT_ACCOUNT}",
                account_name=DEVELOPMENT_ACCOUNT,
                connection_string=_DEVELOPMENT_CONNECTION_STRING,
                development_storage=True,
            )

        account = parts.get("accountname")
        if "accountkey" in parts:
            if not account:
                raise ConfigError(setting, "holds an AccountKey but no AccountName")
        elif "sharedaccesssignature" not in parts:
            raise ConfigError(setting, "holds neither AccountKey nor SharedAccessSignature")

        protocol = parts.get("defaultendpointsprotocol", "https").lower()
        if protocol not in ("http", "https"):
            raise ConfigError(setting, "DefaultEndpointsProtocol must be http or https")
        suffix = parts.get("endpointsuffix", "core.windows.net")

        endpoints: dict[str, str] = {}
        for service in ("table", "queue"):
            explicit = parts.get(f"{service}endpoint")
            if explicit is not None:
                endpoints[service] = _endpoint(setting, f"{service.capitalize()}Endpoint", explicit)
            elif account:
                endpoints[service] = f"{protocol}://{account}.{service}.{suffix}"
            else:
                raise ConfigError(
                    setting, f"names no {service} endpoint (give AccountName or {service.capitalize()}Endpoint)"
                )
        return cls(
            setting=setting,
            table_endpoint=endpoints["table"],
            queue_endpoint=endpoints["queue"],
            account_name=account or _account_from_host(endpoints["table"]),
            connection_string=text,
        )

    # ------------------------------------------------------------------ facts

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None

    def is_development(self) -> bool:
        """True for Azurite: development storage, its well-known account, or a loopback endpoint."""
        if self.development_storage or self.account_name == DEVELOPMENT_ACCOUNT:
            return True
        return all(_is_loopback(urlsplit(url).hostname) for url in (self.table_endpoint, self.queue_endpoint))

    def describe(self) -> str:
        """Where and how, safe for logs and ``check-config``: never a key or signature."""
        if self.connection_string is not None:
            if self.development_storage:
                how = "development storage (UseDevelopmentStorage=true)"
            elif "accountkey=" in self.connection_string.lower():
                how = "connection string with account key"
            else:
                how = "connection string with shared access signature"
        elif self.managed_identity:
            how = "managed identity" + (f" (client id {self.client_id})" if self.client_id else " (system-assigned)")
        else:
            how = "DefaultAzureCredential" + (
                f" (managed identity client id {self.client_id})" if self.client_id else ""
            )
        account = f"account {self.account_name}, " if self.account_name else ""
        return f"{self.setting}: {how}; {account}tables {self.table_endpoint}, queues {self.queue_endpoint}"


# ---------------------------------------------------------------------- helpers


def _parse_connection_string(setting: str, text: str) -> dict[str, str]:
    """``Key=Value;...`` into a dict with lower-cased keys, as the SDKs read it (case-insensitively)."""
    parts: dict[str, str] = {}
    for segment in text.split(";"):
        if not segment.strip():
            continue
        name, sep, value = segment.partition("=")  # values (keys, signatures) contain '=' themselves
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(setting, "is not a storage connection string (Name=Value pairs separated by ';')")
        parts[name.strip().lower()] = value.strip()
    if not parts:
        raise ConfigError(setting, "is not a storage connection string (Name=Value pairs separated by ';')")
    return parts


def _endpoint(setting: str, part: str, url: str) -> str:
    split = urlsplit(url)
    if split.scheme.lower() not in ("http", "https") or not split.hostname or split.query or split.username:
        raise ConfigError(setting, f"{part} must be an http(s) URL without query or user information")
    return url.rstrip("/")


def _service_uri(setting: str, url: str) -> str:
    split = urlsplit(url)
    # Token credentials are refused over plain http by the SDK (FACTS-storage 2); say so up front.
    if split.scheme.lower() != "https" or not split.hostname or split.query or split.fragment or split.username:
        raise ConfigError(setting, "must be an https URL without query, fragment or user information")
    return url.rstrip("/")


def _account_from_host(url: str) -> str | None:
    """The account of an ``https://<account>.<service>.<suffix>`` or path-style (Azurite) URL."""
    split = urlsplit(url)
    host = split.hostname or ""
    if _is_loopback(host):
        first = split.path.strip("/").split("/", 1)[0]
        return first or None
    label = host.split(".", 1)[0]
    return label if _ACCOUNT_NAME.fullmatch(label) and "." in host else None


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
