"""Verify the Entra ID bearer token on an incoming alert and say who the caller is.

:class:`TokenVerifier` turns an ``Authorization`` header into a :class:`Caller` or raises
:class:`~bridge.errors.InvalidToken` (401), :class:`~bridge.errors.Forbidden` (403) or
:class:`~bridge.errors.AuthUnavailable` (503). Signing keys come from the tenant's OpenID
discovery documents (v1 or v2, chosen by the token's ``ver``) and are cached; an unknown key id
triggers at most one refresh per ``min_refresh_gap_seconds`` so forged tokens cannot make the
bridge hammer Entra ID.

Order of checks, and why:

1. header shape, scheme, size, then ``alg`` is exactly RS256 *before any key is touched* (this
   closes ``alg: none`` and the HS256-signed-with-the-public-key confusion);
2. the signature against a key from the configured discovery document (never a key or URL
   named by the token itself: ``jku``/``x5u``/``jwk`` headers are ignored);
3. time (``exp``/``nbf``/``iat`` finite numbers, with leeway; a lifetime of at most 24 h, as no
   Entra access token has more), then issuer/tenant, then audience: all 401, except
   that a correctly signed token from *another* Entra tenant (its ``iss`` is the well-formed
   issuer of its own ``tid``) is 403 "tenant not allowed", as CONTRACT section 1 lists tenant
   under 403;
4. caller app and role: 403.

Messages are fixed short phrases; they never contain the token, any part of it, or a library's
message (which may quote token content).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .config import Settings, url_problem
from .deadline import remaining
from .errors import AuthUnavailable, Forbidden, InvalidToken

__all__ = ["Caller", "KeyStatus", "TokenVerifier"]

logger = logging.getLogger(__name__)

_ALGORITHM = "RS256"
# Entra access tokens are 1-3 KB; anything far larger is not one of them, and bounding it
# bounds the work an unauthenticated caller can make us do.
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_KID_CHARS = 256
_MIN_RSA_BITS = 2048
_LOGIN = "https://login.microsoftonline.com"
_VERSIONS = ("1.0", "2.0")
# Entra access tokens live 60-90 minutes by default and at most a day with a lifetime policy; a
# token valid for longer is not one of them (and a stolen one must not be good for years).
_MAX_LIFETIME_SECONDS = 24 * 3600.0
# Compact JWS: three base64url segments, each with at most two '=' of padding (some issuers pad).
# One match checks the whole token's alphabet (and so excludes whitespace and non-ASCII) in C.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]*)(=*)\.([A-Za-z0-9_-]*)(=*)\.([A-Za-z0-9_-]*)(=*)")
# The one header extension a signature may declare critical (RFC 7515 4.1.11); see _decode_jws.
_SUPPORTED_CRIT = frozenset({"b64"})


@dataclass(frozen=True)
class Caller:
    """Who called, taken from a verified token."""

    app_id: str
    tenant_id: str
    version: str
    audience: str
    roles: tuple[str, ...]
    object_id: str | None


def _entra_issuers(tenant_id: str) -> tuple[str, str]:
    """The v1 and v2 issuer forms Entra ID uses for one tenant."""
    return f"https://sts.windows.net/{tenant_id}/", f"{_LOGIN}/{tenant_id}/v2.0"


def _fetchable_url(value: object) -> bool:
    # The same rule as the settings' URLs (config.url_problem): https, or plain http only on
    # loopback (the sandbox), and one host for every URL parser.
    return isinstance(value, str) and url_problem(value, allow_query=True) is None


@dataclass(frozen=True)
class KeyStatus:
    """What the verifier holds of the signing keys, for a deep health check.

    ``keys``: usable keys held now (over every discovery document). ``stale``: some are past their
    age and serve as last-known-good because refreshing failed. ``problem``: why keys are missing
    or stale, in the verifier's own short words (never a token or a document's content).
    """

    keys: int
    stale: bool = False
    problem: str | None = None


@dataclass
class _KeySource:
    """One discovery document and the signing keys its ``jwks_uri`` published."""

    metadata_url: str
    keys: dict[str, rsa.RSAPublicKey] | None = None
    issuer: str | None = None
    fetched_at: float = 0.0
    last_attempt: float | None = None
    last_attempt_failed: bool = False
    last_error: str | None = None


class _Unavailable(Exception):
    """Internal: a fetch failed; the text is a short reason safe to log."""


class TokenVerifier:
    """Verifies Entra ID access tokens for the configured tenant, audiences, apps and role."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        clock: Callable[[], float] = time.time,
        leeway_seconds: float = 120.0,
        min_refresh_gap_seconds: float = 10.0,
        max_key_age_seconds: float = 86400.0,
        stale_grace_seconds: float = 3 * 86400.0,
        http_timeout_seconds: float = 5.0,
    ) -> None:
        self._settings = settings
        self._session = session if session is not None else requests.Session()
        self._clock = clock
        self._leeway = leeway_seconds
        self._min_gap = min_refresh_gap_seconds
        self._max_age = max_key_age_seconds
        self._stale_grace = stale_grace_seconds
        self._timeout = http_timeout_seconds
        self._tenant = settings.tenant_id.lower()
        self._audiences = {a.casefold(): a for a in settings.audiences}
        self._allowed_apps = frozenset(a.lower() for a in settings.allowed_app_ids)
        # Taken only to refresh: requests that need fresh keys wait for the one fetch instead of
        # each starting their own, while tokens with known keys never wait (see _signing_key).
        self._lock = threading.Lock()
        if settings.openid_config_url:
            shared = _KeySource(settings.openid_config_url)
            self._sources = {"1.0": shared, "2.0": shared}
        else:
            self._sources = {
                "1.0": _KeySource(f"{_LOGIN}/{self._tenant}/.well-known/openid-configuration"),
                "2.0": _KeySource(f"{_LOGIN}/{self._tenant}/v2.0/.well-known/openid-configuration"),
            }

    # ------------------------------------------------------------------ public

    def verify(self, authorization: str | None) -> Caller:
        """Check the ``Authorization`` header value and return the caller it proves."""
        try:
            return self._verify(authorization)
        except (InvalidToken, Forbidden) as exc:
            logger.info("token rejected (%s): %s", exc.status, exc)
            raise

    def ensure_keys(self) -> KeyStatus:
        """The keys held now; for a discovery document without fresh keys, one fetch first.

        The refresh rate limit applies as to tokens (within the gap, the last attempt's outcome
        stands), so calling this often costs Entra ID nothing more. Inside a
        :func:`~bridge.deadline.deadline`, waiting and fetching are cut to what is left.
        """
        distinct = list({id(source): (version, source) for version, source in self._sources.items()}.values())
        held, stale, problems = 0, False, []
        for version, source in distinct:
            label = f"v{version} keys: " if len(distinct) > 1 else ""
            if not self._fresh(source, self._clock()):
                left = remaining()
                wait = self._timeout if left is None else max(0.0, left)
                if not self._lock.acquire(timeout=wait):
                    problems.append(f"{label}a refresh already under way did not finish in time")
                    continue
                try:
                    now = self._clock()
                    if not self._fresh(source, now) and self._may_refresh(source, now):
                        try:
                            self._refresh(source, now)
                        except AuthUnavailable:
                            pass  # the reason is kept in source.last_error
                finally:
                    self._lock.release()
            now = self._clock()
            if self._fresh(source, now):
                assert source.keys is not None
                held += len(source.keys)
            elif source.keys is not None and self._last_known_good(source, now):
                held += len(source.keys)
                stale = True
                hours = (now - source.fetched_at) / 3600
                problems.append(
                    f"{label}keys fetched {hours:.0f} h ago serve as last-known-good; refreshing them failed: "
                    f"{source.last_error or 'not retried yet'}"
                )
            else:
                problems.append(f"{label}{source.last_error or 'not fetched yet'}")
        return KeyStatus(held, stale, "; ".join(problems) or None)

    # ----------------------------------------------------------------- parsing

    def _verify(self, authorization: str | None) -> Caller:
        token = self._bearer_token(authorization)
        # Decoded once: the claims read before the signature is checked are the very bytes it
        # covers, so nothing needs decoding again once it is.
        jws = _decode_jws(token)
        header = jws.header
        if header.get("alg") != _ALGORITHM:
            raise InvalidToken("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_CHARS:
            raise InvalidToken("token has no usable key id")
        claims = self._claims(jws.payload)
        version = claims.get("ver")
        if version not in _VERSIONS:
            raise InvalidToken("token version not accepted")
        assert isinstance(version, str)

        key = self._signing_key(version, kid)
        if key is None:
            raise InvalidToken("signing key not found")
        try:
            # The algorithm is fixed here, never taken from the header: RS256 with the key
            # published for this kid (loaded as RSA of at least _MIN_RSA_BITS).
            key.verify(jws.signature, jws.signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise InvalidToken("invalid token signature") from None
        except (ValueError, TypeError):
            raise InvalidToken("malformed token") from None

        self._check_times(claims)
        tenant = self._check_issuer(claims, version)
        audience = self._check_audience(claims)
        return self._authorize(claims, version, tenant, audience)

    @staticmethod
    def _bearer_token(authorization: str | None) -> str:
        if authorization is None or not authorization.strip():
            raise InvalidToken("missing bearer token")
        parts = authorization.strip().split(None, 1)
        if parts[0].lower() != "bearer":
            raise InvalidToken("authorization scheme must be Bearer")
        token = parts[1].strip() if len(parts) == 2 else ""
        if not token:
            raise InvalidToken("missing bearer token")
        # Whitespace inside the token is refused by _decode_jws's alphabet (same message).
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        return token

    @staticmethod
    def _claims(payload: bytes) -> dict[str, Any]:
        try:
            claims = json.loads(payload)
        except (ValueError, RecursionError):
            raise InvalidToken("malformed token") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed token")
        return claims

    # ------------------------------------------------------------ claim checks

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp = claims.get("exp")
        if not _is_number(exp):
            raise InvalidToken("token has no valid expiry")
        if now >= exp + self._leeway:
            raise InvalidToken("token expired")
        started: list[int | float] = []
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise InvalidToken(f"token has an invalid {name}")
            if value - self._leeway > now:
                raise InvalidToken("token not yet valid")
            started.append(value)
        # Measured from when it became valid, and from now (a token need not carry iat or nbf):
        # exp = 1e308 is a number, but no token Entra issues.
        if exp - min(started, default=now) > _MAX_LIFETIME_SECONDS or exp - now > _MAX_LIFETIME_SECONDS:
            raise InvalidToken("token lifetime too long")

    def _check_issuer(self, claims: Mapping[str, Any], version: str) -> str:
        issuer, tid = claims.get("iss"), claims.get("tid")
        if not isinstance(issuer, str) or not isinstance(tid, str) or not tid:
            raise InvalidToken("issuer not accepted")
        tid = tid.lower()
        if tid != self._tenant:
            # Entra signs every tenant's tokens with the same keys, so a genuine token from
            # another tenant verifies: that caller is proven but not allowed (403). A token
            # whose iss does not even match its own tid is not a genuine Entra token (401).
            if issuer in _entra_issuers(tid):
                raise Forbidden("tenant not allowed")
            raise InvalidToken("issuer not accepted")
        if issuer not in self._accepted_issuers(version):
            raise InvalidToken("issuer not accepted")
        return tid

    def _accepted_issuers(self, version: str) -> set[str]:
        accepted = set(_entra_issuers(self._tenant))
        if self._settings.openid_config_url:
            custom = self._sources[version].issuer  # replaced whole by a refresh: no lock needed
            if custom:
                accepted.add(custom)
        return accepted

    def _check_audience(self, claims: Mapping[str, Any]) -> str:
        aud = claims.get("aud")
        candidates = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        for candidate in candidates:
            # App ID URIs and client ids are case-insensitive in Entra; a GUID typed in upper
            # case in the setting must still match.
            if isinstance(candidate, str) and candidate.casefold() in self._audiences:
                return candidate
        raise InvalidToken("audience not accepted")

    def _authorize(self, claims: Mapping[str, Any], version: str, tenant: str, audience: str) -> Caller:
        app_id = claims.get("appid" if version == "1.0" else "azp")
        if not isinstance(app_id, str) or app_id.lower() not in self._allowed_apps:
            raise Forbidden("caller app not allowed")
        raw_roles = claims.get("roles")
        roles = tuple(r for r in raw_roles if isinstance(r, str)) if isinstance(raw_roles, list) else ()
        required = self._settings.required_role
        if required and required not in roles:
            raise Forbidden("required role missing")
        oid = claims.get("oid")
        return Caller(
            app_id=app_id.lower(),
            tenant_id=tenant,
            version=version,
            audience=audience,
            roles=roles,
            object_id=oid if isinstance(oid, str) else None,
        )

    # -------------------------------------------------------------- key cache

    def _signing_key(self, version: str, kid: str) -> rsa.RSAPublicKey | None:
        """The published key ``kid`` for this token version, refreshing within the limits.

        Returns None only when the keys were confirmed recently and ``kid`` is not among them
        (401). When they cannot be confirmed because Entra ID is unreachable, it raises
        ``AuthUnavailable`` (503): a genuine token signed with a new key is then retried by
        Azure Monitor instead of lost.
        """
        source = self._sources[version]
        # Fast path without the lock: the key set is replaced whole, never changed in place, so
        # a slow refresh (or a flood of forged kids) never holds up tokens with known keys.
        keys, fetched_at = source.keys, source.fetched_at
        if keys is not None and kid in keys and self._clock() - fetched_at < self._max_age:
            return keys[kid]
        with self._lock:
            now = self._clock()
            stale = source.keys is None or now - source.fetched_at >= self._max_age
            if stale:
                if self._may_refresh(source, now):
                    self._refresh(source, now)
                elif not self._last_known_good(source, now):
                    raise AuthUnavailable("signing keys unavailable")
            assert source.keys is not None
            key = source.keys.get(kid)
            if key is None and not stale:
                if self._may_refresh(source, now):
                    # Possibly a rolled-over key: one refresh, then the answer stands until the
                    # gap has passed, however many unknown kids arrive meanwhile.
                    self._refresh(source, now)
                    key = source.keys.get(kid)
                if key is None and source.last_attempt_failed:
                    raise AuthUnavailable("signing keys could not be re-checked")
            return key

    def _fresh(self, source: _KeySource, now: float) -> bool:
        return source.keys is not None and now - source.fetched_at < self._max_age

    def _last_known_good(self, source: _KeySource, now: float) -> bool:
        """Whether keys past their age may still serve while Entra ID cannot be reached.

        Entra publishes a new key well before signing with it and keeps retired keys published
        for a while, so keys a few days old still verify genuine tokens. Refusing them during an
        Entra outage would only turn every alert into a 503 (and Azure Monitor gives up after
        five retries). Past the grace period the bridge refuses: 503, never "accept".
        """
        return source.keys is not None and now - source.fetched_at < self._max_age + self._stale_grace

    def _may_refresh(self, source: _KeySource, now: float) -> bool:
        return source.last_attempt is None or now - source.last_attempt >= self._min_gap

    def _refresh(self, source: _KeySource, now: float) -> None:
        source.last_attempt = now
        try:
            issuer, keys = self._fetch(source.metadata_url)
        except _Unavailable as exc:
            source.last_attempt_failed = True
            source.last_error = str(exc)
            logger.warning("signing keys unavailable from %s: %s", source.metadata_url, exc)
            if not self._last_known_good(source, now):
                raise AuthUnavailable("signing keys unavailable") from None
            return  # keep the current keys: fresh ones, or last-known-good ones within the grace
        source.last_attempt_failed, source.last_error = False, None
        source.fetched_at, source.issuer, source.keys = now, issuer, keys
        logger.info("loaded %d signing keys from %s", len(keys), source.metadata_url)

    def _fetch(self, metadata_url: str) -> tuple[str | None, dict[str, rsa.RSAPublicKey]]:
        metadata = self._get_json(metadata_url, "metadata")
        jwks_uri = metadata.get("jwks_uri")
        if not _fetchable_url(jwks_uri):
            raise _Unavailable("metadata has no usable jwks_uri")
        assert isinstance(jwks_uri, str)
        issuer = metadata.get("issuer")
        jwks = self._get_json(jwks_uri, "jwks")
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise _Unavailable("jwks has no keys list")
        keys: dict[str, rsa.RSAPublicKey] = {}
        for entry in entries:
            parsed = _rsa_signing_key(entry)
            if parsed is not None:
                keys[parsed[0]] = parsed[1]
        if not keys:
            raise _Unavailable("jwks has no usable RSA signing key")
        return (issuer if isinstance(issuer, str) and issuer else None), keys

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            # No redirects: a redirect could only downgrade where keys come from.
            response = self._session.get(url, timeout=self._http_timeout(what), allow_redirects=False)
        except requests.RequestException as exc:
            raise _Unavailable(f"{what} request failed ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise _Unavailable(f"{what} answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise _Unavailable(f"{what} is not JSON") from None
        if not isinstance(body, dict):
            raise _Unavailable(f"{what} is not a JSON object")
        return body

    def _http_timeout(self, what: str) -> float:
        """The fetch timeout, cut to the enclosing deadline (a health check's budget) if any."""
        left = remaining()
        if left is None:
            return self._timeout
        if left <= 0:
            raise _Unavailable(f"{what} not requested: the time budget is spent")
        return min(self._timeout, left)


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number: not a bool, not inf or NaN (``1e999999`` parses as inf), and not an
    integer too large for a float (which arithmetic with the clock could not take)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _rsa_signing_key(entry: object) -> tuple[str, rsa.RSAPublicKey] | None:
    """(kid, key) for a usable RSA signature key entry of a JWKS, else None."""
    if not isinstance(entry, dict):
        return None
    kid = entry.get("kid")
    if entry.get("kty") != "RSA" or not isinstance(kid, str) or not kid:
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", _ALGORITHM) != _ALGORITHM:
        return None
    try:
        key = jwt.PyJWK(entry, algorithm=_ALGORITHM).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < _MIN_RSA_BITS:
        return None
    return kid, key


@dataclass(frozen=True)
class _Jws:
    """A compact JWS taken apart, nothing verified yet."""

    header: dict[str, Any]
    payload: bytes
    signing_input: bytes
    signature: bytes


def _decode_jws(token: str) -> _Jws:
    """Split and decode a compact JWS, or raise InvalidToken("malformed token").

    The rules are PyJWT's (``PyJWS.decode_complete`` as of 2.10), so the tokens refused are the
    same as when it decoded them: each segment base64url with at most two '=' of padding (then
    a multiple of 4 long) and in canonical form (no stray bits after the last byte), the header a
    JSON object whose ``kid``, if any, is a string and whose ``crit``, if any, lists only
    extensions that are present and supported (``b64``); ``b64: false`` (a detached payload) is
    never what Entra sends and is refused. Unlike PyJWT, whitespace anywhere is refused: its base64
    skips it for some segment lengths, and in the signature segment it would not even be signed.
    """
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        raise InvalidToken("malformed token")
    head, payload, signature = (_segment(match.group(i), match.group(i + 1)) for i in (1, 3, 5))
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict) or header.get("b64", True) is False:
        raise InvalidToken("malformed token")
    if "kid" in header and not isinstance(header["kid"], str):
        raise InvalidToken("malformed token")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise InvalidToken("malformed token")
        for name in crit:
            if not isinstance(name, str) or name not in _SUPPORTED_CRIT or name not in header:
                raise InvalidToken("malformed token")
    signing_input = token[: match.end(4)].encode("ascii")
    return _Jws(header, payload, signing_input, signature)


def _segment(text: str, pad: str) -> bytes:
    """One base64url segment (alphabet already checked) decoded, or InvalidToken."""
    if len(pad) > 2 or (pad and (len(text) + len(pad)) % 4) or len(text) % 4 == 1:
        raise InvalidToken("malformed token")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    # Canonical only: a segment whose last character carries bits beyond the data is refused,
    # so one token has exactly one spelling.
    if base64.urlsafe_b64encode(data).rstrip(b"=") != text.encode("ascii"):
        raise InvalidToken("malformed token")
    return data
