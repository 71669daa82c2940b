"""Shared HTTP hygiene for outbound calls: one session shape, safe URLs, one error translation.

Every adapter builds its ``requests.Session`` with :func:`new_session`, shows URLs only through
:func:`redact_url`, and turns ``requests`` exceptions into :class:`~bridge.errors.ItsmError` with
:func:`error_from_exception`, so transport failures are classified in one place and no message
ever carries a credential.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

from . import __version__
from .errors import ItsmError, Reason

__all__ = [
    "USER_AGENT",
    "error_from_exception",
    "new_session",
    "parse_retry_after",
    "redact_url",
]

USER_AGENT = f"azure-monitor-itsm-bridge/{__version__}"

REDACTED = "REDACTED"

# Query parameter names whose values are credentials or bearer-like material.
_SECRET_PARAM = re.compile(
    r"pass|secret|token|key|sig|code|auth|credential|session|jwt|assertion", re.IGNORECASE
)


# Connections kept per host: as many as the local server serves at once (bridge.server caps it at
# 64), so a storm of concurrent alerts reuses connections instead of discarding them
# ("connection pool is full") and opening new TCP + TLS connections for each.
POOL_SIZE = 64
# Origins whose environment settings a session remembers (the bridge talks to two or three).
_MAX_ORIGINS = 32


class _Session(requests.Session):
    """A ``requests.Session`` that reads the environment's proxy and CA settings once per origin.

    With ``trust_env`` a stock session re-reads every environment variable (proxies, ``NO_PROXY``)
    and ``~/.netrc`` on each request; a Function app carries hundreds of settings, which made that
    the largest part of the bridge's own time per ITSM call. The settings are read when the
    process starts anyway, so they are taken once per origin here, with the same meaning
    (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``). ``.netrc`` is not
    consulted: the bridge's credentials come from its settings only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self._origins: dict[str, tuple[dict[str, str], str | None]] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        text = url.decode("utf-8", "replace") if isinstance(url, bytes) else (url or "")
        env_proxies, ca_bundle = self._environment(text)
        merged = dict(proxies or {})
        for scheme, proxy in env_proxies.items():
            merged.setdefault(scheme, proxy)
        if ca_bundle and (verify is True or verify is None):
            verify = ca_bundle
        return super().merge_environment_settings(url, merged, stream, verify, cert)

    def _environment(self, url: str) -> tuple[dict[str, str], str | None]:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        found = self._origins.get(origin)
        if found is None:
            proxies = dict(requests.utils.get_environ_proxies(url))
            ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = (proxies, ca_bundle)
            if len(self._origins) >= _MAX_ORIGINS:
                self._origins.clear()
            self._origins[origin] = found
        return found


def new_session(user_agent_suffix: str = "") -> requests.Session:
    """A session that identifies the bridge and asks for JSON; reuse it for connection pooling."""
    session = _Session()
    pooled = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", pooled)
    session.mount("http://", pooled)
    agent = USER_AGENT if not user_agent_suffix else f"{USER_AGENT} {user_agent_suffix}"
    session.headers.update({"User-Agent": agent, "Accept": "application/json"})
    return session


def redact_url(url: str) -> str:
    """``url`` without userinfo and with secret-looking query values replaced by ``REDACTED``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # Unparseable (e.g. a bad port): showing nothing is safer than showing it raw.
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_PARAM.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP-dates are GMT by definition; a naive one is not an HTTP-date.
    return max(0.0, when.timestamp() - now())


def error_from_exception(
    exc: requests.RequestException, *, system: str, method: str = "", url: str = ""
) -> ItsmError:
    """Classify a transport failure. All of them are worth retrying; the message names no secret.

    The exception's own text is not used: it can quote the request URL (userinfo, query) verbatim.
    Only the exception type, the redacted URL and the operating system's error text are kept.
    """
    where = " ".join(part for part in (method.upper(), redact_url(url) if url else "") if part)
    where = f" {where}" if where else ""
    cause = _os_error_text(exc)
    detail = f"{type(exc).__name__}{f': {cause}' if cause else ''}"
    # A request that never got a connection cannot have been carried out; any later failure
    # (read timeout, connection lost after sending) leaves the outcome unknown.
    unsent = isinstance(exc, requests.ConnectTimeout) or _never_connected(exc)
    # ConnectTimeout is both a Timeout and a ConnectionError; a timeout is the more precise reason.
    if isinstance(exc, requests.Timeout):
        return ItsmError(
            f"{system}{where}: timed out ({detail})", retryable=True, reason=Reason.TIMEOUT, maybe_applied=not unsent
        )
    if isinstance(exc, requests.ConnectionError):
        return ItsmError(
            f"{system}{where}: connection failed ({detail})",
            retryable=True,
            reason=Reason.NETWORK,
            maybe_applied=not unsent,
        )
    return ItsmError(f"{system}{where}: request failed ({detail})", retryable=True, reason=Reason.NETWORK)


def _never_connected(exc: BaseException) -> bool:
    """Whether the failure happened while connecting (refused, unreachable, name not resolved)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectionRefusedError)):
            return True
        for nested in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args):
            if isinstance(nested, BaseException):
                pending.append(nested)
    return False


def _os_error_text(exc: BaseException) -> str:
    """The first ``strerror`` found along the exception's causes, e.g. ``Connection refused``."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        nested_candidates = (getattr(current, "reason", None), current.__cause__, current.__context__)
        for nested in (*nested_candidates, *current.args):
            if isinstance(nested, BaseException):
                pending.append(nested)
    return ""
