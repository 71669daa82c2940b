"""The bridge's one error hierarchy, and the one place HTTP statuses are classified.

    BridgeError
    ├── ConfigError            a setting is missing or malformed (names the setting)
    ├── PayloadError           the alert body is not usable (400, names the field)
    │   └── PayloadTooLarge    the body is over the limit (413)
    ├── AuthError              the caller is not proven or not allowed
    │   ├── InvalidToken       401: no token, malformed, bad signature, expired, wrong iss/aud
    │   └── Forbidden          403: valid token, but app, role, tenant or subscription not allowed
    ├── AuthUnavailable        503: signing keys could not be fetched; never "accept"
    └── ItsmError              the ITSM call failed; ``retryable`` says whether trying again may help

Messages never carry secrets: callers build them from field names, statuses and the
ITSM's own error text, never from headers, tokens or credentials.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthError",
    "AuthUnavailable",
    "BridgeError",
    "ConfigError",
    "Forbidden",
    "InvalidToken",
    "ItsmError",
    "PayloadError",
    "PayloadTooLarge",
    "Reason",
    "classify_status",
    "status_maybe_applied",
]


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing or malformed. ``setting`` names it; the value is never echoed."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class PayloadError(BridgeError):
    """The request body is not a usable common-schema alert."""

    status = 400
    code = "invalid_payload"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLarge(PayloadError):
    status = 413
    code = "payload_too_large"


class AuthError(BridgeError):
    """The caller is not authenticated (401) or not authorized (403)."""

    status = 401
    code = "invalid_token"


class InvalidToken(AuthError):
    status = 401
    code = "invalid_token"


class Forbidden(AuthError):
    status = 403
    code = "forbidden"


class AuthUnavailable(BridgeError):
    """The signing keys could not be fetched, so no token can be judged: retry later."""

    status = 503
    code = "unavailable"


class Reason(enum.StrEnum):
    """Why an ITSM call failed: a closed set, independent of retryability."""

    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    AUTH_ERROR = "auth_error"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    NETWORK = "network"
    INVALID_RESPONSE = "invalid_response"


class ItsmError(BridgeError):
    """An ITSM call failed.

    ``retryable`` is the only thing the retry loop looks at. ``retry_after`` carries the
    server's ``Retry-After`` in seconds when it sent one. ``attempts`` is filled in by the
    retry loop when it gives up. ``maybe_applied`` says whether the ITSM may have carried the
    request out anyway (a read timeout, a connection lost after sending, a 500/502/504): a
    create that failed that way must be looked for before it is sent again.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        reason: Reason,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_applied: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.attempts = 1
        self.maybe_applied = maybe_applied if maybe_applied is not None else status_maybe_applied(status)

    @property
    def credential_refused(self) -> bool:
        """The ITSM refuses the bridge itself (401/403): nothing will work until that is fixed."""
        return self.reason is Reason.AUTH_ERROR


def status_maybe_applied(status: int | None) -> bool:
    """Whether a request answered with ``status`` (None: no answer) may still have been carried out.

    Gateways answer 502/504 while the backend may finish the work, and a 500 can come from a
    rule that ran after the insert; a 429, 503 or any 4xx is a refusal before any work.
    """
    return status is None or status in (500, 502, 504)


def classify_status(status: int) -> tuple[bool, Reason]:
    """Map an unsuccessful HTTP status to (retryable, reason).

    408, 429 and every 5xx are worth retrying; every other status is a permanent answer.
    """
    if status == 429:
        return True, Reason.RATE_LIMITED
    if status == 408:
        return True, Reason.TIMEOUT
    if status >= 500:
        return True, Reason.SERVER_ERROR
    if status in (401, 403):
        return False, Reason.AUTH_ERROR
    return False, Reason.CLIENT_ERROR
