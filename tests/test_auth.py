"""TokenVerifier: the forged-token suite, good tokens, key caching, rotation and outages.

Keys and tokens come from :class:`bridge.sandbox.entra.EntraStandIn` (real loopback HTTP) or,
for Entra's own discovery URLs and for broken documents, from ``responses``. The stand-in's
endpoints themselves are tested in ``tests/test_sandbox_entra.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import requests
import responses

from bridge.auth import Caller, TokenVerifier, _decode_jws
from bridge.config import AZURE_MONITOR_APP_ID, Settings
from bridge.errors import AuthError, AuthUnavailable, Forbidden, InvalidToken
from bridge.sandbox.entra import EntraStandIn
from tests.kit import FakeClock

TENANT = "0b3e1d2c-4a5f-4e6d-9c8b-7a6f5e4d3c2b"
OTHER_TENANT = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
APP_ID_URI = "api://itsm-bridge"
CLIENT_ID = "6f1c2d3e-1111-4222-8333-944455566677"
LOGIN = "https://login.microsoftonline.com"
ROLE = "ActionGroupsSecureWebhook"
OTHER_APP = "11111111-2222-4333-8444-555555555555"
NOT_BEARER = "authorization scheme must be Bearer"
BAD_ALG = "token algorithm not accepted"


def make_settings(**env: str) -> Settings:
    base = {
        "AUTH_TENANT_ID": TENANT,
        "AUTH_AUDIENCES": f"{APP_ID_URI},{CLIENT_ID.upper()}",
        "SERVICENOW_INSTANCE_URL": "https://example.service-now.com",
        "SERVICENOW_USERNAME": "bridge",
        "SERVICENOW_PASSWORD": "not-a-real-password",
    }
    base.update(env)
    return Settings.from_env(base)


def loopback_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route loopback through an environment proxy
    return session


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: Any, signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def issued_at(now: float, lifetime: int) -> dict[str, Any]:
    """Time claims of a token issued at ``now`` (a test clock's) for ``lifetime`` seconds."""
    return {"iat": int(now), "nbf": int(now), "exp": int(now) + lifetime}


def claims_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    loaded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return loaded


@pytest.fixture(scope="module")
def entra() -> Iterator[EntraStandIn]:
    with EntraStandIn(TENANT) as stand_in:
        yield stand_in


@pytest.fixture(autouse=True)
def _fresh_stand_in(entra: EntraStandIn) -> Iterator[None]:
    entra.set_available(True)
    entra.reset_counts()
    yield
    entra.set_available(True)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(time.time())


VerifierFactory = Callable[..., TokenVerifier]


@pytest.fixture()
def make_verifier(entra: EntraStandIn, clock: FakeClock) -> VerifierFactory:
    def build(**env: str) -> TokenVerifier:
        env.setdefault("AUTH_OPENID_CONFIG_URL", entra.openid_config_url)
        return TokenVerifier(make_settings(**env), loopback_session(), clock=clock)

    return build


@pytest.fixture()
def verifier(make_verifier: VerifierFactory) -> TokenVerifier:
    return make_verifier(AUTH_REQUIRED_ROLE=ROLE)


# --------------------------------------------------------------------------- good tokens


def test_v2_token_accepted(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    token = entra.mint(audience=CLIENT_ID)

    caller = verifier.verify(f"Bearer {token}")

    assert caller == Caller(
        app_id=AZURE_MONITOR_APP_ID,
        tenant_id=TENANT,
        version="2.0",
        audience=CLIENT_ID,
        roles=(ROLE,),
        object_id=claims_of(token)["oid"],
    )


def test_v1_token_accepted_with_app_id_uri_audience(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    token = entra.mint(version="1.0", audience=APP_ID_URI, app_id=AZURE_MONITOR_APP_ID.upper())

    caller = verifier.verify(f"bearer {token}")  # the scheme is case-insensitive

    assert (caller.version, caller.audience, caller.app_id) == ("1.0", APP_ID_URI, AZURE_MONITOR_APP_ID)
    assert caller.tenant_id == TENANT and caller.roles == (ROLE,)


def test_expiry_within_leeway_still_accepted(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    token = entra.mint(audience=APP_ID_URI, lifetime_seconds=-60)  # expired 60 s ago, leeway 120 s

    assert verifier.verify(f"Bearer {token}").audience == APP_ID_URI


def test_a_token_valid_for_exactly_a_day_is_accepted(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    now = int(time.time())
    token = entra.mint(audience=CLIENT_ID, claims={"iat": now, "nbf": now, "exp": now + 86400})

    assert verifier.verify(f"Bearer {token}").version == "2.0"


def test_no_role_needed_when_none_is_configured(make_verifier: VerifierFactory, entra: EntraStandIn) -> None:
    token = entra.mint(audience=CLIENT_ID, roles=())

    assert make_verifier().verify(f"Bearer {token}").roles == ()


def test_openid_config_issuer_is_accepted_too(clock: FakeClock, entra: EntraStandIn) -> None:
    custom = "https://idp.example.test/tenant-x/"
    with responses.RequestsMock() as mock:
        mock.get(
            "https://idp.example.test/.well-known/openid-configuration",
            json={"issuer": custom, "jwks_uri": "https://idp.example.test/keys"},
        )
        mock.get("https://idp.example.test/keys", json=entra.jwks())
        settings = make_settings(AUTH_OPENID_CONFIG_URL="https://idp.example.test/.well-known/openid-configuration")
        verifier = TokenVerifier(settings, clock=clock)

        caller = verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, claims={'iss': custom})}")
        tenant_form = verifier.verify(f"Bearer {entra.mint(version='1.0', audience=APP_ID_URI)}")

        # One document serves both token versions.
        assert [c.request.url for c in mock.calls] == [
            "https://idp.example.test/.well-known/openid-configuration",
            "https://idp.example.test/keys",
        ]
    assert caller.version == "2.0" and tenant_form.version == "1.0"


@responses.activate
def test_default_discovery_picks_metadata_by_token_version(clock: FakeClock, entra: EntraStandIn) -> None:
    v1_meta = f"{LOGIN}/{TENANT}/.well-known/openid-configuration"
    v2_meta = f"{LOGIN}/{TENANT}/v2.0/.well-known/openid-configuration"
    responses.get(v1_meta, json={"issuer": f"https://sts.windows.net/{TENANT}/",
                                 "jwks_uri": f"{LOGIN}/{TENANT}/discovery/keys"})
    responses.get(v2_meta, json={"issuer": f"{LOGIN}/{TENANT}/v2.0",
                                 "jwks_uri": f"{LOGIN}/{TENANT}/discovery/v2.0/keys"})
    responses.get(f"{LOGIN}/{TENANT}/discovery/keys", json=entra.jwks("1.0"))
    responses.get(f"{LOGIN}/{TENANT}/discovery/v2.0/keys", json=entra.jwks("2.0"))
    verifier = TokenVerifier(make_settings(), clock=clock)

    verifier.verify(f"Bearer {entra.mint(version='1.0', audience=APP_ID_URI)}")
    verifier.verify(f"Bearer {entra.mint(version='2.0', audience=CLIENT_ID)}")
    verifier.verify(f"Bearer {entra.mint(version='2.0', audience=CLIENT_ID)}")  # cached

    assert [c.request.url for c in responses.calls] == [
        v1_meta, f"{LOGIN}/{TENANT}/discovery/keys", v2_meta, f"{LOGIN}/{TENANT}/discovery/v2.0/keys",
    ]
    for call in responses.calls:
        assert call.request.req_kwargs["timeout"] == 5.0  # type: ignore[attr-defined]


def test_one_session_is_reused_with_explicit_timeouts(clock: FakeClock, entra: EntraStandIn) -> None:
    seen: list[tuple[str, object, object]] = []

    class RecordingSession(requests.Session):
        def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            seen.append((str(url), kwargs.get("timeout"), kwargs.get("allow_redirects")))
            return super().get(url, **kwargs)

    session = RecordingSession()
    session.trust_env = False
    settings = make_settings(AUTH_OPENID_CONFIG_URL=entra.openid_config_url)
    verifier = TokenVerifier(settings, session, clock=clock, http_timeout_seconds=2.5)

    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")

    verifier.verify(f"Bearer {entra.mint(version='1.0', audience=APP_ID_URI)}")

    assert seen == [
        (entra.openid_config_url, 2.5, False),
        (f"{entra.base_url}/{TENANT}/discovery/v2.0/keys", 2.5, False),
    ]


# ------------------------------------------------------------------------ forged tokens


def _hs256_with_public_key(entra: EntraStandIn) -> str:
    # The classic confusion attack: HMAC keyed with the (public) RSA key, hoping the verifier
    # feeds the published key to whatever algorithm the header names.
    header = {"typ": "JWT", "alg": "HS256", "kid": entra.current_kid}
    claims = claims_of(entra.mint(audience=CLIENT_ID))
    signing_input = unsigned(header, claims).rsplit(".", 1)[0]
    mac = hmac.new(entra.public_key_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _tampered_payload(entra: EntraStandIn) -> str:
    head, _, signature = entra.mint(audience=CLIENT_ID, app_id=OTHER_APP).split(".")
    claims = claims_of(entra.mint(audience=CLIENT_ID))
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def _tampered_signature(entra: EntraStandIn) -> str:
    head, body, signature = entra.mint(audience=CLIENT_ID).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def _with_raw_claims(**raw: str) -> Callable[[EntraStandIn], str]:
    """A correctly signed token whose claims carry JSON text that json.dumps never writes (e.g.
    ``1e999999``, which Python's json reads as inf): each named claim's value is replaced verbatim."""

    def make(entra: EntraStandIn) -> str:
        claims = claims_of(entra.mint(audience=CLIENT_ID))
        text = json.dumps({**claims, **{name: f"@{name}@" for name in raw}})
        for name, literal in raw.items():
            text = text.replace(f'"@{name}@"', literal)
        head = b64url(json.dumps({"typ": "JWT", "alg": "RS256", "kid": entra.current_kid}).encode())
        signing_input = f"{head}.{b64url(text.encode())}"
        signature = entra._signing.sign(signing_input.encode())  # the stand-in's published key
        return f"{signing_input}.{b64url(signature)}"

    return make


def _alg_none(entra: EntraStandIn) -> str:
    return unsigned({"typ": "JWT", "alg": "none"}, claims_of(entra.mint(audience=CLIENT_ID)))


Forge = Callable[[EntraStandIn], str | None]


def bearer(make_token: Callable[[EntraStandIn], str]) -> Forge:
    return lambda entra: f"Bearer {make_token(entra)}"


# (id, builds the Authorization header, expected exception, message)
FORGED: list[tuple[str, Forge, type[AuthError], str]] = [
    ("no header", lambda e: None, InvalidToken, "missing bearer token"),
    ("empty header", lambda e: "", InvalidToken, "missing bearer token"),
    ("bearer without token", lambda e: "Bearer ", InvalidToken, "missing bearer token"),
    ("basic scheme", lambda e: "Basic YnJpZGdlOnBhc3N3b3Jk", InvalidToken, NOT_BEARER),
    ("token without scheme", lambda e: e.mint(audience=CLIENT_ID), InvalidToken, NOT_BEARER),
    ("garbage", lambda e: "Bearer not-a-jwt-at-all", InvalidToken, "malformed token"),
    ("garbage segments", lambda e: "Bearer a.b.c", InvalidToken, "malformed token"),
    ("two tokens", lambda e: f"Bearer {e.mint(audience=CLIENT_ID)} extra", InvalidToken, "malformed token"),
    ("oversized", lambda e: f"Bearer {e.mint(audience=CLIENT_ID, claims={'pad': 'x' * 20000})}",
     InvalidToken, "malformed token"),
    ("payload not an object", bearer(lambda e: unsigned({"alg": "RS256", "kid": e.current_kid}, [])),
     InvalidToken, "malformed token"),
    ("alg none", bearer(_alg_none), InvalidToken, BAD_ALG),
    ("HS256 keyed with public key", bearer(_hs256_with_public_key), InvalidToken, BAD_ALG),
    ("RS256 signature labelled HS256", bearer(lambda e: e.mint(audience=CLIENT_ID, headers={"alg": "HS256"})),
     InvalidToken, BAD_ALG),
    ("RS384", bearer(lambda e: e.mint(audience=CLIENT_ID, headers={"alg": "RS384"})),
     InvalidToken, BAD_ALG),
    ("no alg", bearer(lambda e: e.mint(audience=CLIENT_ID, headers={"alg": None})),
     InvalidToken, BAD_ALG),
    ("no kid", bearer(lambda e: e.mint(audience=CLIENT_ID, headers={"kid": None})),
     InvalidToken, "token has no usable key id"),
    ("unknown kid", bearer(lambda e: e.mint(audience=CLIENT_ID, unpublished_key=True)),
     InvalidToken, "signing key not found"),
    ("known kid, other key", bearer(lambda e: e.mint(audience=CLIENT_ID, unpublished_key=True,
                                                     headers={"kid": e.current_kid})),
     InvalidToken, "invalid token signature"),
    ("tampered payload", bearer(_tampered_payload), InvalidToken, "invalid token signature"),
    ("tampered signature", bearer(_tampered_signature), InvalidToken, "invalid token signature"),
    ("unknown version", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"ver": "3.0"})),
     InvalidToken, "token version not accepted"),
    ("expired", bearer(lambda e: e.mint(audience=CLIENT_ID, lifetime_seconds=-121)),
     InvalidToken, "token expired"),
    ("no expiry", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"exp": None})),
     InvalidToken, "token has no valid expiry"),
    ("exp 1e308", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"exp": 1e308})),
     InvalidToken, "token lifetime too long"),
    ("exp a day and a second after iat", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={
        "iat": int(time.time()), "nbf": int(time.time()), "exp": int(time.time()) + 86401})),
     InvalidToken, "token lifetime too long"),
    ("exp two days ahead, no iat or nbf", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={
        "iat": None, "nbf": None, "exp": int(time.time()) + 2 * 86400})),
     InvalidToken, "token lifetime too long"),
    ("exp 1e999999 (inf)", bearer(_with_raw_claims(exp="1e999999")), InvalidToken, "token has no valid expiry"),
    ("exp Infinity", bearer(_with_raw_claims(exp="Infinity")), InvalidToken, "token has no valid expiry"),
    ("exp NaN", bearer(_with_raw_claims(exp="NaN")), InvalidToken, "token has no valid expiry"),
    ("exp an integer beyond any float", bearer(_with_raw_claims(exp="1" + "0" * 400)),
     InvalidToken, "token has no valid expiry"),
    ("iat -1e999999 (-inf)", bearer(_with_raw_claims(iat="-1e999999")), InvalidToken, "token has an invalid iat"),
    ("nbf NaN", bearer(_with_raw_claims(nbf="NaN")), InvalidToken, "token has an invalid nbf"),
    ("not yet valid", bearer(lambda e: e.mint(audience=CLIENT_ID, not_before_offset=600)),
     InvalidToken, "token not yet valid"),
    ("issued in the future",
     bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"iat": int(time.time()) + 900})),
     InvalidToken, "token not yet valid"),
    ("wrong issuer", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"iss": "https://evil.example/"})),
     InvalidToken, "issuer not accepted"),
    ("issuer without trailing slash", bearer(lambda e: e.mint(
        version="1.0", audience=APP_ID_URI, claims={"iss": f"https://sts.windows.net/{TENANT}"})),
     InvalidToken, "issuer not accepted"),
    ("no tenant", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"tid": None})),
     InvalidToken, "issuer not accepted"),
    ("other tenant's issuer, our tid", bearer(lambda e: e.mint(
        audience=CLIENT_ID, claims={"iss": f"{LOGIN}/{OTHER_TENANT}/v2.0"})),
     InvalidToken, "issuer not accepted"),
    ("other tenant", bearer(lambda e: e.mint(
        audience=CLIENT_ID, claims={"tid": OTHER_TENANT, "iss": f"{LOGIN}/{OTHER_TENANT}/v2.0"})),
     Forbidden, "tenant not allowed"),
    ("other tenant v1", bearer(lambda e: e.mint(
        version="1.0", audience=APP_ID_URI,
        claims={"tid": OTHER_TENANT, "iss": f"https://sts.windows.net/{OTHER_TENANT}/"})),
     Forbidden, "tenant not allowed"),
    ("wrong audience", bearer(lambda e: e.mint(audience="api://someone-else")),
     InvalidToken, "audience not accepted"),
    ("no audience", bearer(lambda e: e.mint(audience=CLIENT_ID, claims={"aud": None})),
     InvalidToken, "audience not accepted"),
    ("wrong caller app", bearer(lambda e: e.mint(audience=CLIENT_ID, app_id=OTHER_APP)),
     Forbidden, "caller app not allowed"),
    ("v1 token with azp only", bearer(lambda e: e.mint(
        version="1.0", audience=APP_ID_URI, claims={"appid": None, "azp": AZURE_MONITOR_APP_ID})),
     Forbidden, "caller app not allowed"),
    ("missing role", bearer(lambda e: e.mint(audience=CLIENT_ID, roles=())),
     Forbidden, "required role missing"),
    ("other role", bearer(lambda e: e.mint(audience=CLIENT_ID, roles=("Reader",))),
     Forbidden, "required role missing"),
]


@pytest.mark.parametrize(
    ("forge", "expected", "message"), [f[1:] for f in FORGED], ids=[f[0] for f in FORGED]
)
def test_forged_tokens_are_rejected(
    verifier: TokenVerifier,
    entra: EntraStandIn,
    caplog: pytest.LogCaptureFixture,
    forge: Forge,
    expected: type[AuthError],
    message: str,
) -> None:
    header = forge(entra)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(AuthError) as raised:
        verifier.verify(header)

    assert type(raised.value) is expected
    assert raised.value.status == (403 if expected is Forbidden else 401)
    assert str(raised.value) == message
    _assert_no_token_text(header, str(raised.value), caplog.text)


def test_algorithm_is_refused_before_any_key_is_fetched(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    for forged in (_hs256_with_public_key(entra), _alg_none(entra)):
        with pytest.raises(InvalidToken, match="token algorithm not accepted"):
            verifier.verify(f"Bearer {forged}")

    assert entra.request_count == {}


# ------------------------------------------------------------------------ token shapes
# The verifier takes the compact JWS apart itself (once) instead of letting PyJWT decode it twice;
# the shapes it refuses as "malformed token" must stay exactly those PyJWT refused.


_OUTSIDE_BASE64URL = re.compile(r"[^A-Za-z0-9_\-=.]")


def _pyjwt_accepts(token: str) -> dict[str, Any] | None:
    try:
        decoded: dict[str, Any] = jwt.PyJWS().decode_complete(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return None
    return decoded


def _with_header(token: str, header: Any) -> str:
    return f"{b64url(json.dumps(header).encode())}.{token.split('.', 1)[1]}"


def _token_shapes(token: str) -> list[str]:
    head, body, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))

    def padded(segment: str, pad: str) -> str:
        return segment + pad

    def last_char_bumped(segment: str) -> str:
        # The next letter differs only in the lowest bit: stray bits unless the length is 0 mod 4.
        return segment[:-1] + chr(ord(segment[-1]) ^ 1)

    shapes = [
        token, f"{head}.{body}", f"{head}.{body}.", f".{body}.{signature}", "..", "", ".", "a.b.c",
        f"{head}.{body}.{signature}.{signature}", f"{head}.{body}.{signature} ", f"{head} .{body}.{signature}",
        f"{head}.{body}.{signature}\u00e9", f"{head}.{body}.{signature}\ud800", f"{head}.{body}+.{signature}",
        f"{head}.{body}/.{signature}", f"{head}=.{body}.{signature}", f"{head}.{body}.{signature}=",
        f"{head}.{body}.{signature}==", f"{head}.{body}.{signature}===", f"{head}.{body}.{signature}====",
        f"{head}.{body[:-1]}.{signature}", f"{head}.{body}.{signature[:-1]}", f"{head}.{body}.{signature[:-2]}",
        f"{head}.{body}.{signature[:-3]}", f"{head}.{body[:5]}={body[5:]}.{signature}",
        f"{head}.{last_char_bumped(body)}.{signature}", f"{head}.{body}.{last_char_bumped(signature)}",
        f"{last_char_bumped(head)}.{body}.{signature}",
    ]
    for segment_index in range(3):
        parts = [head, body, signature]
        stem = parts[segment_index]
        for pad in ("=", "==", "==="):
            parts[segment_index] = padded(stem, "=" * (-len(stem) % 4) if pad == "=" else pad)
            shapes.append(".".join(parts))
    headers: list[Any] = [
        [], "text", 7, None, {**header, "kid": 7}, {**header, "kid": None}, {**header, "crit": []},
        {**header, "crit": "b64"}, {**header, "crit": ["b64"]}, {**header, "crit": ["b64"], "b64": True},
        {**header, "crit": ["b64"], "b64": False}, {**header, "b64": False}, {**header, "crit": ["exp"], "exp": 1},
        {**header, "crit": [1]}, {**header, "b64": "no"}, {**header, "alg": None}, {"kid": header["kid"]},
    ]
    shapes += [_with_header(token, h) for h in headers]
    shapes += [f"{b64url(json.dumps(header).encode('utf-16'))}.{body}.{signature}",
               f"{b64url(b'{')}.{body}.{signature}", f"{b64url(b'[' * 100_000)}.{body}.{signature}",
               f"{b64url(json.dumps({**header, 'b64': False}).encode())}..{signature}"]
    rng = random.Random(12)
    alphabet = "AZaz09-_=.+/ \t\u00e9"
    for _ in range(300):
        chars = list(token)
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        shapes.append("".join(chars))
    return shapes


def test_token_shapes_are_judged_as_pyjwt_judges_them(entra: EntraStandIn) -> None:
    """What the decoder accepts, PyJWT accepts and decodes the same; what PyJWT refuses, the decoder
    refuses. Never the other way round: older PyJWT releases (the lowest one supported among them)
    read wrong padding that the decoder refuses, and any release may skip whitespace."""
    shapes = _token_shapes(entra.mint(audience=CLIENT_ID))
    accepted = 0
    for shape in shapes:
        expected = _pyjwt_accepts(shape)
        try:
            decoded = _decode_jws(shape)
        except InvalidToken as refused:
            assert str(refused) == "malformed token"
            continue
        # A character outside base64url (and its padding and dots) is never accepted: PyJWT's
        # base64 skips whitespace for some segment lengths, and in a signature it is not signed.
        assert not _OUTSIDE_BASE64URL.search(shape), shape
        assert expected is not None, shape
        accepted += 1
        assert (decoded.header, decoded.payload, decoded.signature) == (
            expected["header"], expected["payload"], expected["signature"]
        ), shape
        assert decoded.signing_input == shape.rsplit(".", 1)[0].encode()
    # Both outcomes are exercised: the token, its padded and crit/b64-true forms pass, the rest not.
    assert 8 <= accepted < len(shapes) - 100


def test_padding_is_read_but_the_signed_text_is_as_sent(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    head, body, signature = entra.mint(audience=CLIENT_ID).split(".")
    assert len(signature) % 4 and len(body) % 4

    # A padded signature is the same signature; a padded payload is other text than was signed.
    assert verifier.verify(f"Bearer {head}.{body}.{signature}{'=' * (-len(signature) % 4)}").version == "2.0"
    with pytest.raises(InvalidToken, match=r"^invalid token signature$"):
        verifier.verify(f"Bearer {head}.{body}{'=' * (-len(body) % 4)}.{signature}")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"crit": ["b64"], "b64": True}, None),
        ({"crit": ["exp"], "exp": 1}, "malformed token"),
        ({"crit": ["b64"], "b64": False}, "malformed token"),
        ({"kid": 17}, "malformed token"),
    ],
    ids=["crit b64 true", "crit unsupported", "detached payload", "kid a number"],
)
def test_signed_header_extensions(
    verifier: TokenVerifier, entra: EntraStandIn, headers: dict[str, Any], message: str | None
) -> None:
    header = f"Bearer {entra.mint(audience=CLIENT_ID, headers=headers)}"
    if message is None:
        assert verifier.verify(header).version == "2.0"
        return
    with pytest.raises(InvalidToken) as raised:
        verifier.verify(header)
    assert str(raised.value) == message


def test_a_stray_bit_in_the_signature_spelling_is_malformed(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    head, body, signature = entra.mint(audience=CLIENT_ID).split(".")
    assert len(signature) % 4 == 2  # 256 bytes: the last character carries 4 bits beyond the data
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray = signature[:-1] + alphabet[alphabet.index(signature[-1]) | 1]
    # The same signature bytes, spelled differently: lenient base64 decoding would accept it.
    assert base64.urlsafe_b64decode(stray + "==") == base64.urlsafe_b64decode(signature + "==")

    with pytest.raises(InvalidToken, match=r"^malformed token$"):
        verifier.verify(f"Bearer {head}.{body}.{stray}")


def _assert_no_token_text(header: str | None, *texts: str) -> None:
    if not header:
        return
    token = header.split(None, 1)[-1]
    fragments = [token, *[p for p in token.split(".") if len(p) >= 8]]
    for text in texts:
        for fragment in fragments:
            assert fragment not in text


# ------------------------------------------------------------------------ key management


def test_rotated_key_is_picked_up_after_one_refresh(clock: FakeClock) -> None:
    with EntraStandIn(TENANT) as entra:
        settings = make_settings(AUTH_OPENID_CONFIG_URL=entra.openid_config_url)
        verifier = TokenVerifier(settings, loopback_session(), clock=clock)
        old_token = entra.mint(audience=CLIENT_ID)
        verifier.verify(f"Bearer {old_token}")
        assert entra.count("jwks_v2") == 1

        entra.rotate_key()
        new_token = entra.mint(audience=CLIENT_ID)
        # Within the refresh gap the new kid is unknown and no fetch is made.
        with pytest.raises(InvalidToken, match="signing key not found"):
            verifier.verify(f"Bearer {new_token}")
        assert entra.count("jwks_v2") == 1

        clock.advance(10)
        assert verifier.verify(f"Bearer {new_token}").app_id == AZURE_MONITOR_APP_ID
        assert verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}").version == "2.0"
        assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (2, 2)
        # The dropped key is gone for good: the old token fails, with no extra fetch yet.
        with pytest.raises(InvalidToken, match="signing key not found"):
            verifier.verify(f"Bearer {old_token}")
        assert entra.count("jwks_v2") == 2


def test_burst_of_forged_kids_causes_at_most_one_fetch(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")
    clock.advance(60)
    forged = [entra.mint(audience=CLIENT_ID, headers={"kid": f"forged-{i}"}) for i in range(50)]

    for token in forged:
        with pytest.raises(InvalidToken, match="signing key not found"):
            verifier.verify(f"Bearer {token}")

    assert entra.count("jwks_v2") == 2  # the first load, then exactly one refresh for the burst
    assert entra.count("metadata_v2") == 2


def test_concurrent_burst_on_a_cold_cache_fetches_once(verifier: TokenVerifier, entra: EntraStandIn) -> None:
    forged = [entra.mint(audience=CLIENT_ID, headers={"kid": f"forged-{i}"}) for i in range(50)]
    good = entra.mint(audience=CLIENT_ID)

    def attempt(token: str) -> str:
        try:
            verifier.verify(f"Bearer {token}")
        except InvalidToken as exc:
            return str(exc)
        return "ok"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, [*forged, good]))

    assert outcomes == ["signing key not found"] * 50 + ["ok"]
    assert (entra.count("metadata_v2"), entra.count("jwks_v2")) == (1, 1)


def test_keys_are_rechecked_daily(verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock) -> None:
    def token() -> str:
        return f"Bearer {entra.mint(audience=CLIENT_ID, claims=issued_at(clock.now, 3600))}"

    verifier.verify(token())
    clock.advance(86399)
    verifier.verify(token())
    assert entra.count("jwks_v2") == 1

    clock.advance(1)
    verifier.verify(token())
    assert entra.count("jwks_v2") == 2


def test_key_age_is_configurable(entra: EntraStandIn, clock: FakeClock) -> None:
    settings = make_settings(AUTH_OPENID_CONFIG_URL=entra.openid_config_url)
    verifier = TokenVerifier(settings, loopback_session(), clock=clock, max_key_age_seconds=300)
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")

    clock.advance(301)
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")

    assert entra.count("jwks_v2") == 2


# ----------------------------------------------------------------------------- outages


def test_jwks_down_is_unavailable_never_accepted(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = entra.mint(audience=CLIENT_ID)
    entra.set_available(False)
    caplog.set_level(logging.DEBUG)

    with pytest.raises(AuthUnavailable, match="signing keys unavailable") as raised:
        verifier.verify(f"Bearer {token}")
    assert raised.value.status == 503
    assert entra.count("metadata_v2") == 1
    _assert_no_token_text(f"Bearer {token}", str(raised.value), caplog.text)

    # Back up, but within the gap: still 503 without asking again, so a down Entra is not hammered.
    entra.set_available(True)
    with pytest.raises(AuthUnavailable):
        verifier.verify(f"Bearer {token}")
    assert entra.count("metadata_v2") == 1

    clock.advance(10)
    assert verifier.verify(f"Bearer {token}").version == "2.0"


def test_last_known_good_keys_serve_while_the_daily_recheck_fails(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")
    clock.advance(86400)
    entra.set_available(False)

    def token() -> str:
        return f"Bearer {entra.mint(audience=CLIENT_ID, claims=issued_at(clock.now, 60))}"

    assert verifier.verify(token()).version == "2.0"
    assert entra.count("metadata_v2") == 2  # it did try to re-check
    assert verifier.verify(token()).version == "2.0"  # and does not hammer Entra meanwhile
    assert entra.count("metadata_v2") == 2
    with pytest.raises(InvalidToken):  # still only published keys verify
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, unpublished_key=True)}")


def test_keys_past_the_grace_are_never_used(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")
    clock.advance(4 * 86400)
    entra.set_available(False)

    with pytest.raises(AuthUnavailable):
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, claims=issued_at(clock.now, 60))}")


def test_failed_unknown_kid_refresh_keeps_current_keys(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")
    clock.advance(30)
    entra.set_available(False)

    # The new kid cannot be checked while Entra is down: 503 (Azure retries), not 401 (lost).
    with pytest.raises(AuthUnavailable, match="could not be re-checked"):
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, unpublished_key=True)}")
    # Inside the gap it is not asked again, and the answer stays 503.
    with pytest.raises(AuthUnavailable):
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, unpublished_key=True)}")
    assert entra.count("metadata_v2") == 2
    # Tokens signed with the keys already held keep working throughout.
    assert verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}").version == "2.0"


def test_unknown_kid_is_401_once_the_keys_are_confirmed(
    verifier: TokenVerifier, entra: EntraStandIn, clock: FakeClock
) -> None:
    verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}")
    clock.advance(30)
    entra.set_available(False)
    with pytest.raises(AuthUnavailable):
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, unpublished_key=True)}")
    entra.set_available(True)
    clock.advance(10)
    with pytest.raises(InvalidToken, match="signing key not found"):
        verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID, unpublished_key=True)}")


def test_known_keys_do_not_wait_for_a_slow_refresh(entra: EntraStandIn, clock: FakeClock) -> None:
    import threading

    settings = make_settings(AUTH_OPENID_CONFIG_URL=entra.openid_config_url)
    verifier = TokenVerifier(settings, loopback_session(), clock=clock)
    good = f"Bearer {entra.mint(audience=CLIENT_ID)}"
    verifier.verify(good)
    clock.advance(30)
    # Hold the refresh lock as a slow refresh would; a token with a known kid must not need it.
    with verifier._lock:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (verifier.verify(good), done.set()))
        worker.start()
        assert done.wait(timeout=5)
    worker.join()


META = "https://idp.example.test/.well-known/openid-configuration"
KEYS = "https://idp.example.test/keys"


def _good_jwks(entra: EntraStandIn) -> dict[str, Any]:
    return entra.jwks()


def _small_key_jwks(entra: EntraStandIn) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    small = private.public_key().public_numbers()
    entry = {"kty": "RSA", "use": "sig", "kid": entra.current_kid, "e": "AQAB",
             "n": b64url(small.n.to_bytes(128, "big"))}
    return {"keys": [entry]}


BROKEN: list[tuple[str, dict[str, Any], Callable[[EntraStandIn], dict[str, Any]] | None]] = [
    ("metadata 500", {"status": 500, "json": {"error": "boom"}}, None),
    ("metadata redirect", {"status": 302, "headers": {"Location": "http://evil.example/"}}, None),
    ("metadata not JSON", {"body": "<html>sign in</html>"}, None),
    ("metadata a list", {"json": ["jwks_uri"]}, None),
    ("metadata without jwks_uri", {"json": {"issuer": "x"}}, None),
    ("jwks_uri plain http", {"json": {"jwks_uri": "http://idp.example.test/keys"}}, None),
    ("metadata unreachable", {"body": requests.ConnectionError("refused")}, None),
    ("metadata timeout", {"body": requests.Timeout("slow")}, None),
    ("jwks not JSON", {"json": {"jwks_uri": KEYS}}, lambda e: {"__body__": "nope"}),
    ("jwks without keys", {"json": {"jwks_uri": KEYS}}, lambda e: {"kid": "x"}),
    ("jwks empty", {"json": {"jwks_uri": KEYS}}, lambda e: {"keys": []}),
    ("jwks only non-RSA", {"json": {"jwks_uri": KEYS}},
     lambda e: {"keys": [{"kty": "oct", "kid": e.current_kid, "k": "c2VjcmV0"}]}),
    ("jwks only encryption key", {"json": {"jwks_uri": KEYS}},
     lambda e: {"keys": [{**e.jwks()["keys"][0], "use": "enc"}]}),
    ("jwks corrupt RSA", {"json": {"jwks_uri": KEYS}},
     lambda e: {"keys": [{"kty": "RSA", "kid": e.current_kid, "n": "!!", "e": "AQAB"}]}),
    ("jwks 1024-bit key", {"json": {"jwks_uri": KEYS}}, _small_key_jwks),
]


@pytest.mark.parametrize(("metadata", "jwks"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_discovery_is_unavailable(
    entra: EntraStandIn,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    metadata: dict[str, Any],
    jwks: Callable[[EntraStandIn], dict[str, Any]] | None,
) -> None:
    token = entra.mint(audience=CLIENT_ID)
    caplog.set_level(logging.DEBUG)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(META, **metadata)
        if jwks is not None:
            body = jwks(entra)
            if "__body__" in body:
                mock.get(KEYS, body=body["__body__"])
            else:
                mock.get(KEYS, json=body)
        verifier = TokenVerifier(make_settings(AUTH_OPENID_CONFIG_URL=META), clock=clock)

        with pytest.raises(AuthUnavailable, match="signing keys unavailable"):
            verifier.verify(f"Bearer {token}")

        urls = [c.request.url for c in mock.calls]
        assert urls[0] == META
        assert urls[1:] in ([], [KEYS])  # the redirect is not followed
    _assert_no_token_text(f"Bearer {token}", caplog.text)


def test_good_key_next_to_unusable_entries_is_used(entra: EntraStandIn, clock: FakeClock) -> None:
    good = entra.jwks()["keys"][0]
    with responses.RequestsMock() as mock:
        mock.get(META, json={"jwks_uri": KEYS})
        mock.get(KEYS, json={"keys": ["junk", {"kty": "EC", "kid": "ec"}, {**good, "kid": ""}, good]})
        verifier = TokenVerifier(make_settings(AUTH_OPENID_CONFIG_URL=META), clock=clock)

        assert verifier.verify(f"Bearer {entra.mint(audience=CLIENT_ID)}").version == "2.0"


def test_token_from_the_stand_ins_token_endpoint_is_accepted(
    verifier: TokenVerifier, entra: EntraStandIn
) -> None:
    from bridge.sandbox.entra import mint_remote

    token = mint_remote(entra.base_url, version="1.0", audience=APP_ID_URI, tenant_id=TENANT)

    caller = verifier.verify(f"Bearer {token}")

    assert (caller.version, caller.audience, caller.roles) == ("1.0", APP_ID_URI, (ROLE,))
