"""A local Entra ID stand-in: OpenID metadata, JWKS and Azure-Monitor-like tokens on loopback.

:class:`EntraStandIn` serves, for one tenant, what the bridge reads from Entra ID (both discovery
documents and both key sets, shaped as Entra shapes them) and mints RS256 access tokens whose
claims look like those the Azure Monitor action group's secure webhook sends (FACTS section 1).
Tokens come from :meth:`EntraStandIn.mint` in-process, or from its client-credentials token
endpoint (``POST /{tid}/oauth2/v2.0/token``, used by :func:`mint_remote` for ``send``).
It exists for the demo, ``serve --sandbox`` and tests; it issues tokens to whoever asks, so it
binds to loopback only.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ..config import AZURE_MONITOR_APP_ID

__all__ = ["DEMO_TENANT_ID", "SANDBOX_AUDIENCE", "SANDBOX_CLIENT_ID", "EntraStandIn", "mint_remote"]

# What a deployment's Entra app would be: its Application ID URI and client id (the stack
# configures the bridge to accept these).
SANDBOX_AUDIENCE = "api://azure-monitor-bridge-sandbox"
SANDBOX_CLIENT_ID = "5b1c6f1e-8f0e-4c8e-9a51-2c3d4e5f6a7b"

logger = logging.getLogger(__name__)

# A made-up tenant: not any real organisation's.
DEMO_TENANT_ID = "5c0f3a1e-9d7b-4e2a-8f61-2b4d6c8e0a13"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_MAX_FORM_BYTES = 64 * 1024


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    cert_der: bytes

    @classmethod
    def generate(cls, tenant_id: str) -> _SigningKey:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sandbox-entra-{tenant_id}")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(private_key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        # Entra's kid equals x5t, the certificate's SHA-1 thumbprint (an identifier, not security).
        thumbprint = hashlib.sha1(der, usedforsecurity=False).digest()
        return cls(kid=_b64url(thumbprint), private_key=private_key, cert_der=der)

    def jwk(self, issuer: str | None) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        entry: dict[str, Any] = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
            "x5c": [base64.b64encode(self.cert_der).decode("ascii")],
        }
        if issuer is not None:
            entry["issuer"] = issuer  # v2 key sets carry it, as Entra's do
        return entry

    def sign(self, signing_input: bytes) -> bytes:
        return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections in a burst of parallel callers (a 1 s SYN retry).
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], stand_in: EntraStandIn) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.stand_in = stand_in


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._send(*self.server.stand_in._answer(self.path.split("?", 1)[0]))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM_BYTES:
            self._send(HTTPStatus.BAD_REQUEST, _oauth_error("invalid_request", "bad Content-Length"))
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        fields = {name: values[0] for name, values in form.items() if values}
        self._send(*self.server.stand_in._token_answer(path, fields))

    def _send(self, status: int, body: Mapping[str, Any]) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("entra stand-in: " + format, *args)


class EntraStandIn:
    """Entra ID for one tenant, on loopback. Use as a context manager or ``start()``/``stop()``."""

    def __init__(
        self,
        tenant_id: str = DEMO_TENANT_ID,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if host not in _LOOPBACK:
            raise ValueError("the Entra stand-in mints tokens for anyone: bind it to loopback only")
        self.tenant_id = tenant_id.lower()
        self._host, self._port = host, port
        self._clock = clock
        self._lock = threading.Lock()
        self._available = True
        self._counts: dict[str, int] = {}
        self._signing = _SigningKey.generate(self.tenant_id)
        self._unpublished: _SigningKey | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> EntraStandIn:
        if self._server is None:
            self._server = _Server((self._host, self._port), self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},  # so stop() returns promptly
                name="entra-stand-in",
                daemon=True,
            )
            self._thread.start()
            logger.info("Entra stand-in for tenant %s at %s", self.tenant_id, self.base_url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> EntraStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------- addresses

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the Entra stand-in is not started")
        host, port = self._server.server_address[:2]
        text = host.decode("ascii") if isinstance(host, bytes) else str(host)
        shown = f"[{text}]" if ":" in text else text
        return f"http://{shown}:{port}"

    @property
    def openid_config_url(self) -> str:
        """The v2 discovery document (what ``AUTH_OPENID_CONFIG_URL`` should point at)."""
        return f"{self.base_url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def v1_openid_config_url(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/.well-known/openid-configuration"

    @property
    def issuer_v1(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    @property
    def issuer_v2(self) -> str:
        return f"https://login.microsoftonline.com/{self.tenant_id}/v2.0"

    # ------------------------------------------------------------------ keys

    @property
    def current_kid(self) -> str:
        with self._lock:
            return self._signing.kid

    def public_key_pem(self) -> bytes:
        """The current signing key's public half, PEM (tests use it to forge HS256 tokens)."""
        with self._lock:
            public = self._signing.private_key.public_key()
        return public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def rotate_key(self) -> str:
        """Make a new signing key; the old one leaves the JWKS at once (an emergency roll-over)."""
        fresh = _SigningKey.generate(self.tenant_id)
        with self._lock:
            self._signing = fresh
        logger.info("Entra stand-in rotated its signing key")
        return fresh.kid

    def jwks(self, version: str = "2.0") -> dict[str, Any]:
        """The key set document as served for ``version`` ("1.0" or "2.0")."""
        with self._lock:
            key = self._signing
        return {"keys": [key.jwk(self.issuer_v2 if version == "2.0" else None)]}

    def metadata(self, version: str = "2.0") -> dict[str, Any]:
        """The discovery document as served for ``version`` (needs the server started)."""
        base, tid = self.base_url, self.tenant_id
        if version == "2.0":
            issuer, jwks_uri = self.issuer_v2, f"{base}/{tid}/discovery/v2.0/keys"
            authorize, token = f"{base}/{tid}/oauth2/v2.0/authorize", f"{base}/{tid}/oauth2/v2.0/token"
        else:
            issuer, jwks_uri = self.issuer_v1, f"{base}/{tid}/discovery/keys"
            authorize, token = f"{base}/{tid}/oauth2/authorize", f"{base}/{tid}/oauth2/token"
        return {
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": authorize,
            "token_endpoint": token,
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic",
            ],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver", "oid"],
            "tenant_region_scope": "EU",
        }

    # ------------------------------------------------------------ behaviour

    def set_available(self, available: bool) -> None:
        """When False, every metadata and JWKS request answers 503."""
        with self._lock:
            self._available = available

    @property
    def request_count(self) -> dict[str, int]:
        """Requests served so far, per path (a copy)."""
        with self._lock:
            return dict(self._counts)

    def count(self, kind: str) -> int:
        """Requests for one kind: ``metadata_v1``, ``metadata_v2``, ``jwks_v1`` or ``jwks_v2``."""
        tid = self.tenant_id
        paths = {
            "metadata_v1": f"/{tid}/.well-known/openid-configuration",
            "metadata_v2": f"/{tid}/v2.0/.well-known/openid-configuration",
            "jwks_v1": f"/{tid}/discovery/keys",
            "jwks_v2": f"/{tid}/discovery/v2.0/keys",
        }
        with self._lock:
            return self._counts.get(paths[kind], 0)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def _token_answer(self, path: str, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Entra's client-credentials token endpoint, minus client authentication.

        ``scope`` is ``<resource>/.default`` and the resource becomes ``aud``. Real Entra picks
        the token version from the resource's manifest; here the extra ``token_version`` field
        does. Any client secret is accepted: this is a sandbox.
        """
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
        if path != f"/{self.tenant_id}/oauth2/v2.0/token":
            return HTTPStatus.NOT_FOUND, _oauth_error("not_found", "no such endpoint")
        if form.get("grant_type") != "client_credentials":
            return HTTPStatus.BAD_REQUEST, _oauth_error(
                "unsupported_grant_type", "only client_credentials is supported"
            )
        client_id, scope = form.get("client_id", ""), form.get("scope", "")
        if not client_id:
            return HTTPStatus.BAD_REQUEST, _oauth_error("invalid_request", "client_id is required")
        if not scope.endswith("/.default") or scope == "/.default":
            return HTTPStatus.BAD_REQUEST, _oauth_error("invalid_scope", "scope must be <resource>/.default")
        version = form.get("token_version", "2.0")
        if version not in ("1.0", "2.0"):
            return HTTPStatus.BAD_REQUEST, _oauth_error("invalid_request", "token_version is 1.0 or 2.0")
        lifetime = 3599
        token = self.mint(
            version=version, audience=scope[: -len("/.default")], app_id=client_id, lifetime_seconds=lifetime
        )
        return HTTPStatus.OK, {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            available = self._available
        tid = self.tenant_id
        routes: dict[str, Callable[[], dict[str, Any]]] = {
            f"/{tid}/.well-known/openid-configuration": lambda: self.metadata("1.0"),
            f"/{tid}/v2.0/.well-known/openid-configuration": lambda: self.metadata("2.0"),
            f"/{tid}/discovery/keys": lambda: self.jwks("1.0"),
            f"/{tid}/discovery/v2.0/keys": lambda: self.jwks("2.0"),
        }
        route = routes.get(path)
        if route is None:
            return HTTPStatus.NOT_FOUND, {"error": "not_found", "error_description": "no such endpoint"}
        if not available:
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "error": "temporarily_unavailable",
                "error_description": "the Entra stand-in is switched off",
            }
        return HTTPStatus.OK, route()

    # ---------------------------------------------------------------- tokens

    def mint(
        self,
        *,
        version: str = "2.0",
        audience: str,
        app_id: str = AZURE_MONITOR_APP_ID,
        roles: Sequence[str] = ("ActionGroupsSecureWebhook",),
        lifetime_seconds: int = 3600,
        not_before_offset: int = 0,
        claims: Mapping[str, object] | None = None,
        headers: Mapping[str, object] | None = None,
        unpublished_key: bool = False,
    ) -> str:
        """An RS256 access token shaped like Azure Monitor's secure-webhook token.

        ``claims`` and ``headers`` override or add entries; a value of None removes one.
        ``unpublished_key`` signs with a key that is not in the JWKS (an unknown ``kid``).
        """
        if version not in ("1.0", "2.0"):
            raise ValueError("version must be '1.0' or '2.0'")
        with self._lock:
            if unpublished_key and self._unpublished is None:
                self._unpublished = _SigningKey.generate(self.tenant_id)
            key = self._unpublished if unpublished_key else self._signing
        assert key is not None

        now = int(self._clock())
        nbf = now + not_before_offset
        # The AzNS service principal's object id is fixed per tenant, as in a real tenant.
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/{app_id.lower()}"))
        body: dict[str, object] = {
            "aud": audience,
            "iss": self.issuer_v1 if version == "1.0" else self.issuer_v2,
            "iat": nbf,
            "nbf": nbf,
            "exp": now + lifetime_seconds,
            "aio": _b64url(secrets.token_bytes(48)),
            "idp": self.issuer_v1,
            "idtyp": "app",
            "oid": oid,
            "rh": f"1.{_b64url(secrets.token_bytes(36))}.",
            "sub": oid,
            "tid": self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": version,
        }
        if version == "1.0":
            body.update(appid=app_id, appidacr="2")
        else:
            body.update(azp=app_id, azpacr="2")
        if roles:
            body["roles"] = list(roles)  # Entra omits the claim when no role is assigned
        header: dict[str, object] = {"typ": "JWT", "alg": "RS256", "kid": key.kid}
        if version == "1.0":
            header["x5t"] = key.kid
        _merge(body, claims)
        _merge(header, headers)

        signing_input = (
            f"{_b64url(json.dumps(header, separators=(',', ':')).encode())}."
            f"{_b64url(json.dumps(body, separators=(',', ':')).encode())}"
        ).encode("ascii")
        return f"{signing_input.decode('ascii')}.{_b64url(key.sign(signing_input))}"


def _oauth_error(code: str, description: str) -> dict[str, Any]:
    return {"error": code, "error_description": description}


def mint_remote(
    base_url: str,
    *,
    version: str = "2.0",
    audience: str | None = None,
    app_id: str = AZURE_MONITOR_APP_ID,
    tenant_id: str = DEMO_TENANT_ID,
    timeout_seconds: float = 5.0,
) -> str:
    """A token from a stand-in running elsewhere (``serve --sandbox``), via its token endpoint.

    ``audience`` defaults to what the sandbox stack configures the bridge to accept for the
    token version (client id for v2, Application ID URI for v1).
    """
    import requests  # only the CLI's `send` needs it here

    if audience is None:
        audience = SANDBOX_CLIENT_ID if version == "2.0" else SANDBOX_AUDIENCE
    url = f"{base_url.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": app_id,
        "client_secret": "sandbox",
        "scope": f"{audience}/.default",
        "token_version": version,
    }
    with requests.Session() as session:
        session.trust_env = False  # the stand-in is on loopback; never go through a proxy
        try:
            response = session.post(url, data=form, timeout=timeout_seconds)
        except requests.RequestException as exc:
            raise RuntimeError(
                f"sandbox Entra ID at {base_url} is unreachable ({type(exc).__name__})"
            ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    token = body.get("access_token")
    if response.status_code != 200 or not isinstance(token, str):
        raise RuntimeError(
            f"sandbox Entra ID token endpoint answered HTTP {response.status_code} ({body.get('error')})"
        )
    return token


def _merge(target: dict[str, object], overrides: Mapping[str, object] | None) -> None:
    for name, value in (overrides or {}).items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
