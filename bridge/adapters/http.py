"""The HTTP client every ITSM adapter talks through: the hygiene written once.

- **Timeouts from the deadline**: each call's connect and read timeouts are cut to the time the
  alert has left (:mod:`bridge.deadline`), and no call starts once nothing is left.
- **No redirects**: a redirect is a misconfiguration (an SSO page); credentials never follow it.
- **One classification**: transport failures (retryable; whether the request may have been
  carried out) and statuses (:func:`bridge.errors.classify_status`, with ``Retry-After``), with the
  ITSM's own error text, which each adapter extracts (``error_text``) and may refine (``classify``).
- **One re-authentication**: a 401 lets the authenticator drop a token it holds and the call is
  made once more.
- **No secret in any message**: every credential the authenticator holds is scrubbed from error
  texts, URLs are redacted, and the exception's own text (which can quote a URL) is never used.

Alertmanager's ``notify.Retrier`` and its ``CustomDetailsFunc`` are the model: the adapter says
what is special about its ITSM, the client does the rest.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import requests

from .. import telemetry
from ..deadline import remaining
from ..errors import ItsmError, Reason, classify_status
from ..httpclient import error_from_exception, new_session, parse_retry_after

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "Authenticator",
    "BasicAuth",
    "BearerToken",
    "ItsmHttpClient",
    "member_list",
]

# Slightly above a multiple of 3 s, the TCP SYN retransmission interval (requests' advice).
CONNECT_TIMEOUT_SECONDS = 3.05
_MAX_ERROR_TEXT = 500


class Authenticator(Protocol):
    """How an ITSM client proves who it is."""

    def apply(self, client: ItsmHttpClient) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Headers to send, and a (user, password) pair for basic auth, or None."""
        ...

    def refresh(self) -> bool:
        """After a 401: drop what may have expired; True when calling again may succeed."""
        ...

    def secrets(self) -> Sequence[str]:
        """Every credential value this authenticator holds or sent, to scrub from messages."""
        ...


class BasicAuth:
    """``Authorization: Basic`` with a user and a password (or an API token as the password)."""

    def __init__(self, user: str, password: str) -> None:
        self._user, self._password = user, password

    def apply(self, client: ItsmHttpClient) -> tuple[dict[str, str], tuple[str, str] | None]:
        return {}, (self._user, self._password)

    def refresh(self) -> bool:
        return False

    def secrets(self) -> Sequence[str]:
        # What actually travels in the header, as well as the password itself.
        sent = base64.b64encode(f"{self._user}:{self._password}".encode()).decode("ascii")
        return [s for s in (self._password, sent) if s]


class BearerToken:
    """``Authorization: Bearer`` with a fixed token (a personal access token)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def apply(self, client: ItsmHttpClient) -> tuple[dict[str, str], tuple[str, str] | None]:
        return {"Authorization": f"Bearer {self._token}"}, None

    def refresh(self) -> bool:
        return False

    def secrets(self) -> Sequence[str]:
        return [self._token] if self._token else []


class ItsmHttpClient:
    """Calls to one ITSM's HTTP API; every failure becomes a classified, scrubbed ``ItsmError``.

    ``error_text(response)`` returns the ITSM's own explanation of a failed call (one line);
    ``classify(status, text)`` may override the central classification for that ITSM (return
    None to keep it). ``clock`` (wall time) turns HTTP-date ``Retry-After`` values into seconds.
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        auth: Authenticator,
        *,
        read_timeout: float,
        error_text: Callable[[requests.Response], str],
        classify: Callable[[int, str], tuple[bool, Reason] | None] | None = None,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.system = system
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.session = session if session is not None else new_session()
        self.clock = clock
        self._timeout = (CONNECT_TIMEOUT_SECONDS, read_timeout)
        self._error_text = error_text
        self._classify = classify
        self._headers = dict(headers or {})

    # ------------------------------------------------------------------ calls

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One call (and one more after a 401 the authenticator can refresh); 2xx or ``ItsmError``."""
        response = self._send(method, path, params, json, data, headers)
        if response.status_code == 401 and self.auth.refresh():
            response = self._send(method, path, params, json, data, headers)
        if not 200 <= response.status_code < 300:
            raise self.status_error(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then the body as JSON (None for an empty body)."""
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ItsmError(
                f"{self.system} {response.status_code}: response to {method} {path} is not JSON",
                retryable=True,
                reason=Reason.INVALID_RESPONSE,
                status=response.status_code,
            ) from None

    def post_form(self, url: str, form: Mapping[str, str]) -> requests.Response:
        """A form POST to ``url`` without the client's authenticator (an OAuth token endpoint)."""
        timeout = self.timeouts()
        # The span names the endpoint only: never the form, which carries the client secret.
        with telemetry.current().itsm_call(self.system, "POST", url) as call:
            try:
                response = self.session.post(url, data=dict(form), timeout=timeout, allow_redirects=False)
            except requests.RequestException as exc:
                error = error_from_exception(exc, system=f"{self.system} OAuth", method="POST", url=url)
                call.error(error.reason.value)
                raise self.scrubbed(error) from None
            call.status(response.status_code)
            return response

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        json: Any,
        data: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> requests.Response:
        url = self.base_url + path
        auth_headers, basic = self.auth.apply(self)
        merged = {**self._headers, **(headers or {}), **auth_headers}
        timeout = self.timeouts()
        # After the authenticator: a token it had to fetch is a call (and a span) of its own. The
        # span sees the URL without its query, whose values may be anything the adapter searched.
        with telemetry.current().itsm_call(self.system, method, url) as call:
            try:
                response = self.session.request(
                    method,
                    url,
                    params=dict(params) if params is not None else None,
                    json=json,
                    data=dict(data) if data is not None else None,
                    headers=merged,
                    auth=basic,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                error = error_from_exception(exc, system=self.system, method=method, url=url)
                call.error(error.reason.value)
                raise self.scrubbed(error) from None
            call.status(response.status_code)
            return response

    def timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts, shortened to the alert's remaining time (bridge.deadline)."""
        left = remaining()
        if left is None:
            return self._timeout
        if left <= 0:
            raise ItsmError(f"{self.system}: the alert's time budget is spent", retryable=True, reason=Reason.TIMEOUT)
        return min(self._timeout[0], left), min(self._timeout[1], left)

    # ------------------------------------------------------------------ errors

    def status_error(self, response: requests.Response, *, label: str | None = None) -> ItsmError:
        """The ``ItsmError`` for an unsuccessful answer, with the ITSM's own words, scrubbed."""
        status = response.status_code
        text = one_line(self._error_text(response)) or response.reason or "no error message"
        retryable, reason = classify_status(status)
        if self._classify is not None:
            refined = self._classify(status, text)
            if refined is not None:
                retryable, reason = refined
        return ItsmError(
            self.scrub(f"{label or self.system} {status}: {text}"),
            retryable=retryable,
            reason=reason,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After"), now=self.clock),
        )

    def scrub(self, text: str) -> str:
        """``text`` without any credential the client holds, in case the server echoed one back."""
        for secret in sorted((s for s in self.auth.secrets() if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def scrubbed(self, error: ItsmError) -> ItsmError:
        error.args = (self.scrub(str(error)),)
        return error

    def close(self) -> None:
        self.session.close()


def one_line(text: str) -> str:
    """Error text as one bounded line: bodies may carry newlines or whole stack traces."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


def member_list(system: str, payload: Any, name: str, what: str = "response") -> list[Any]:
    """``payload[name]`` when the answer is an object holding a list there; otherwise the ITSM
    answered something else than its API promises: a retryable :class:`ItsmError`."""
    listed = payload.get(name) if isinstance(payload, dict) else None
    if not isinstance(listed, list):
        raise ItsmError(f"{system}: {what} has no '{name}' list", retryable=True, reason=Reason.INVALID_RESPONSE)
    return listed
