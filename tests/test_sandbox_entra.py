"""The Entra ID stand-in over real loopback HTTP: documents, key sets, tokens, switches.

The bridge's use of it (verification end to end) is in ``tests/test_auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import AZURE_MONITOR_APP_ID
from bridge.sandbox.entra import DEMO_TENANT_ID, EntraStandIn, mint_remote

pytestmark = pytest.mark.integration

TENANT = "0b3e1d2c-4a5f-4e6d-9c8b-7a6f5e4d3c2b"
AUDIENCE = "api://itsm-bridge"


@pytest.fixture(scope="module")
def entra() -> Iterator[EntraStandIn]:
    with EntraStandIn(TENANT) as stand_in:
        yield stand_in


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    yield session
    session.close()


@pytest.fixture(autouse=True)
def _reset(entra: EntraStandIn) -> Iterator[None]:
    entra.set_available(True)
    entra.reset_counts()
    yield
    entra.set_available(True)


def _segments(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, payload, _ = token.split(".")
    def decode(part: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        return loaded
    return decode(header), decode(payload)


def _jwk(http: requests.Session, entra: EntraStandIn, path: str = "v2.0/") -> jwt.PyJWK:
    keys = http.get(f"{entra.base_url}/{TENANT}/discovery/{path}keys", timeout=5).json()["keys"]
    assert len(keys) == 1
    return jwt.PyJWK(keys[0], algorithm="RS256")


def test_base_url_is_loopback_with_a_real_port(entra: EntraStandIn) -> None:
    assert entra.base_url.startswith("http://127.0.0.1:")
    assert int(entra.base_url.rsplit(":", 1)[1]) > 0
    assert entra.openid_config_url == f"{entra.base_url}/{TENANT}/v2.0/.well-known/openid-configuration"
    assert entra.tenant_id == TENANT


def test_default_tenant_is_the_demo_guid() -> None:
    assert EntraStandIn().tenant_id == DEMO_TENANT_ID


@pytest.mark.parametrize(
    ("path", "issuer", "jwks_path"),
    [
        (".well-known/openid-configuration", f"https://sts.windows.net/{TENANT}/", "discovery/keys"),
        (
            "v2.0/.well-known/openid-configuration",
            f"https://login.microsoftonline.com/{TENANT}/v2.0",
            "discovery/v2.0/keys",
        ),
    ],
    ids=["v1", "v2"],
)
def test_metadata_documents_match_entra(
    entra: EntraStandIn, http: requests.Session, path: str, issuer: str, jwks_path: str
) -> None:
    response = http.get(f"{entra.base_url}/{TENANT}/{path}", timeout=5)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["issuer"] == issuer
    assert document["jwks_uri"] == f"{entra.base_url}/{TENANT}/{jwks_path}"
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert entra.request_count == {f"/{TENANT}/{path}": 1}


@pytest.mark.parametrize("version_path", ["", "v2.0/"], ids=["v1", "v2"])
def test_jwks_has_entra_shaped_rsa_key_with_matching_certificate(
    entra: EntraStandIn, http: requests.Session, version_path: str
) -> None:
    response = http.get(f"{entra.base_url}/{TENANT}/discovery/{version_path}keys", timeout=5)

    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert {"kty", "use", "kid", "x5t", "n", "e", "x5c"} <= set(key)
    assert (key["kty"], key["use"], key["kid"]) == ("RSA", "sig", entra.current_kid)
    assert key["x5t"] == key["kid"]
    assert key.get("issuer") == (f"https://login.microsoftonline.com/{TENANT}/v2.0" if version_path else None)
    der = base64.b64decode(key["x5c"][0])
    thumbprint = base64.urlsafe_b64encode(hashlib.sha1(der, usedforsecurity=False).digest()).rstrip(b"=")
    assert key["x5t"] == thumbprint.decode()
    public = x509.load_der_x509_certificate(der).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    n = int.from_bytes(base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4)), "big")
    assert public.public_numbers().n == n
    assert key["e"] == "AQAB"


def test_v2_token_looks_like_azure_monitors(entra: EntraStandIn, http: requests.Session) -> None:
    token = entra.mint(audience="6f1c2d3e-1111-4222-8333-944455566677")

    header, claims = _segments(token)
    assert header == {"typ": "JWT", "alg": "RS256", "kid": entra.current_kid}
    assert set(claims) == {
        "aud", "iss", "iat", "nbf", "exp", "aio", "azp", "azpacr", "idp", "idtyp", "oid",
        "rh", "roles", "sub", "tid", "uti", "ver",
    }
    assert claims["iss"] == f"https://login.microsoftonline.com/{TENANT}/v2.0"
    assert (claims["ver"], claims["azp"], claims["azpacr"]) == ("2.0", AZURE_MONITOR_APP_ID, "2")
    assert (claims["tid"], claims["idtyp"], claims["roles"]) == (TENANT, "app", ["ActionGroupsSecureWebhook"])
    assert claims["sub"] == claims["oid"]
    assert isinstance(claims["exp"], int) and isinstance(claims["nbf"], int)
    assert claims["exp"] - claims["nbf"] == 3600
    verified = jwt.decode(
        token, _jwk(http, entra), algorithms=["RS256"], audience="6f1c2d3e-1111-4222-8333-944455566677"
    )
    assert verified == claims


def test_v1_token_has_appid_and_x5t(entra: EntraStandIn, http: requests.Session) -> None:
    token = entra.mint(version="1.0", audience=AUDIENCE, app_id="AAAAAAAA-0000-4000-8000-000000000001")

    header, claims = _segments(token)
    assert header == {"typ": "JWT", "alg": "RS256", "kid": entra.current_kid, "x5t": entra.current_kid}
    assert claims["iss"] == f"https://sts.windows.net/{TENANT}/"
    assert (claims["ver"], claims["aud"]) == ("1.0", AUDIENCE)
    assert (claims["appid"], claims["appidacr"]) == ("AAAAAAAA-0000-4000-8000-000000000001", "2")
    assert "azp" not in claims
    jwt.decode(token, _jwk(http, entra, ""), algorithms=["RS256"], audience=AUDIENCE)


def test_mint_overrides_removes_and_times(entra: EntraStandIn) -> None:
    token = entra.mint(
        audience=AUDIENCE,
        roles=(),
        lifetime_seconds=60,
        not_before_offset=30,
        claims={"tid": "other", "oid": None, "extra": [1, 2]},
        headers={"kid": "forged", "typ": None},
    )

    header, claims = _segments(token)
    assert header == {"alg": "RS256", "kid": "forged"}
    assert claims["tid"] == "other" and claims["extra"] == [1, 2]
    assert "oid" not in claims and "roles" not in claims
    exp, nbf, iat = claims["exp"], claims["nbf"], claims["iat"]
    assert isinstance(exp, int) and isinstance(nbf, int) and isinstance(iat, int)
    assert (nbf - iat, exp - nbf) == (0, 30)


def test_mint_rejects_unknown_version(entra: EntraStandIn) -> None:
    with pytest.raises(ValueError, match="version"):
        entra.mint(version="3.0", audience=AUDIENCE)


def test_unpublished_key_signs_with_a_kid_not_in_the_jwks(
    entra: EntraStandIn, http: requests.Session
) -> None:
    token = entra.mint(audience=AUDIENCE, unpublished_key=True)

    header, _ = _segments(token)
    assert header["kid"] != entra.current_kid
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, _jwk(http, entra), algorithms=["RS256"], audience=AUDIENCE)


def test_rotate_key_replaces_the_published_key(http: requests.Session) -> None:
    with EntraStandIn(TENANT) as entra:
        old_kid = entra.current_kid
        old_token = entra.mint(audience=AUDIENCE)

        new_kid = entra.rotate_key()

        assert new_kid == entra.current_kid != old_kid
        for path in ("", "v2.0/"):
            keys = http.get(f"{entra.base_url}/{TENANT}/discovery/{path}keys", timeout=5).json()["keys"]
            assert [k["kid"] for k in keys] == [new_kid]
        header, _ = _segments(entra.mint(audience=AUDIENCE))
        assert header["kid"] == new_kid
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(old_token, _jwk(http, entra), algorithms=["RS256"], audience=AUDIENCE)


def test_unavailable_answers_503_for_metadata_and_keys(entra: EntraStandIn, http: requests.Session) -> None:
    paths = [
        ".well-known/openid-configuration",
        "v2.0/.well-known/openid-configuration",
        "discovery/keys",
        "discovery/v2.0/keys",
    ]
    entra.set_available(False)
    for path in paths:
        response = http.get(f"{entra.base_url}/{TENANT}/{path}", timeout=5)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"] == "temporarily_unavailable"

    entra.set_available(True)
    assert [http.get(f"{entra.base_url}/{TENANT}/{p}", timeout=5).status_code for p in paths] == [200] * 4
    assert entra.count("metadata_v1") == entra.count("jwks_v2") == 2
    assert entra.count("metadata_v2") == entra.count("jwks_v1") == 2


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/common/discovery/v2.0/keys",
        "/00000000-0000-4000-8000-000000000000/discovery/keys",
        "/x/../keys",
    ],
)
def test_unknown_paths_and_tenants_are_404(entra: EntraStandIn, http: requests.Session, path: str) -> None:
    response = http.get(f"{entra.base_url}{path}", timeout=5)

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_query_string_is_ignored_and_counted_by_path(entra: EntraStandIn, http: requests.Session) -> None:
    response = http.get(f"{entra.base_url}/{TENANT}/discovery/v2.0/keys?appid=abc", timeout=5)

    assert response.status_code == 200
    assert entra.request_count == {f"/{TENANT}/discovery/v2.0/keys": 1}


def test_parallel_requests_are_all_served(entra: EntraStandIn) -> None:
    url = f"{entra.base_url}/{TENANT}/discovery/v2.0/keys"

    def fetch(_: int) -> int:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(url, timeout=5).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(fetch, range(24)))

    assert statuses == [200] * 24
    assert entra.count("jwks_v2") == 24


def test_refuses_to_bind_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        EntraStandIn(TENANT, host="0.0.0.0")  # noqa: S104 - the point of the test


def test_base_url_needs_a_started_server() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = EntraStandIn(TENANT).base_url


def test_stop_closes_the_port(http: requests.Session) -> None:
    entra = EntraStandIn(TENANT).start()
    url = f"{entra.base_url}/{TENANT}/discovery/keys"
    assert http.get(url, timeout=5).status_code == 200

    entra.stop()
    entra.stop()  # idempotent

    with pytest.raises(requests.ConnectionError):
        http.get(url, timeout=2)


# ------------------------------------------------------------------ token endpoint


def _token_url(entra: EntraStandIn) -> str:
    return f"{entra.base_url}/{TENANT}/oauth2/v2.0/token"


@pytest.mark.parametrize(("version", "app_claim"), [("2.0", "azp"), ("1.0", "appid")])
def test_token_endpoint_issues_client_credentials_tokens(
    entra: EntraStandIn, http: requests.Session, version: str, app_claim: str
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": AZURE_MONITOR_APP_ID,
        "client_secret": "anything",
        "scope": f"{AUDIENCE}/.default",
        "token_version": version,
    }

    response = http.post(_token_url(entra), data=form, timeout=5)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["ext_expires_in"]) == ("Bearer", 3599, 3599)
    _, claims = _segments(body["access_token"])
    assert (claims["aud"], claims["ver"], claims[app_claim]) == (AUDIENCE, version, AZURE_MONITOR_APP_ID)
    assert claims["roles"] == ["ActionGroupsSecureWebhook"]
    path = "" if version == "1.0" else "v2.0/"
    jwt.decode(body["access_token"], _jwk(http, entra, path), algorithms=["RS256"], audience=AUDIENCE)
    assert entra.request_count[f"/{TENANT}/oauth2/v2.0/token"] == 1


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "client_id": "c", "scope": "api://x/.default"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "api://x/.default"}, "invalid_request"),
        ({"grant_type": "client_credentials", "client_id": "c", "scope": "api://x"}, "invalid_scope"),
        ({"grant_type": "client_credentials", "client_id": "c", "scope": "/.default"}, "invalid_scope"),
        (
            {
                "grant_type": "client_credentials", "client_id": "c",
                "scope": "x/.default", "token_version": "3",
            },
            "invalid_request",
        ),
    ],
    ids=["grant", "client", "scope", "empty resource", "version"],
)
def test_token_endpoint_rejects_bad_requests(
    entra: EntraStandIn, http: requests.Session, form: dict[str, str], error: str
) -> None:
    response = http.post(_token_url(entra), data=form, timeout=5)

    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "access_token" not in response.json()


def test_token_endpoint_of_another_tenant_is_404(entra: EntraStandIn, http: requests.Session) -> None:
    url = f"{entra.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token"
    response = http.post(url, data={"grant_type": "client_credentials"}, timeout=5)

    assert response.status_code == 404


def test_mint_remote_defaults_to_the_sandbox_audience() -> None:
    from bridge.sandbox.stack import SANDBOX_AUDIENCE, SANDBOX_CLIENT_ID

    with EntraStandIn() as entra:
        v2 = mint_remote(entra.base_url)
        v1 = mint_remote(entra.base_url + "/", version="1.0", app_id="A-B")

    _, v2_claims = _segments(v2)
    _, v1_claims = _segments(v1)
    assert (v2_claims["aud"], v2_claims["ver"]) == (SANDBOX_CLIENT_ID, "2.0")
    assert v2_claims["azp"] == AZURE_MONITOR_APP_ID
    assert (v1_claims["aud"], v1_claims["ver"], v1_claims["appid"]) == (SANDBOX_AUDIENCE, "1.0", "A-B")
    assert v2_claims["tid"] == DEMO_TENANT_ID


def test_mint_remote_reports_failures_without_a_token(entra: EntraStandIn) -> None:
    with pytest.raises(RuntimeError, match=r"HTTP 404 \(not_found\)"):
        mint_remote(entra.base_url, audience=AUDIENCE)  # default tenant is not this stand-in's
    assert mint_remote(entra.base_url, audience=AUDIENCE, tenant_id=TENANT).count(".") == 2

    stopped = EntraStandIn(TENANT).start()
    url = stopped.base_url
    stopped.stop()
    with pytest.raises(RuntimeError, match="unreachable"):
        mint_remote(url, audience=AUDIENCE, tenant_id=TENANT, timeout_seconds=1)
