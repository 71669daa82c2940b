"""Deep health (``GET /api/health?deep=1``): every failure reported by its check's name, within budget.

Runtimes are built from the sandbox's settings, against the ServiceNow and Entra ID stand-ins on
loopback (each test its own SQLite state file); the health answer goes through the API as either
front door sends it. Every body is checked for the secrets the test's settings hold.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from bridge.api import ApiRequest, ApiResponse
from bridge.auth import TokenVerifier
from bridge.cli import main
from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.health import CHECK_NAMES, CheckState, HealthChecks
from bridge.runtime import Runtime, build_runtime, get_api, reset
from bridge.sandbox.stack import SandboxStack, metric_alert
from bridge.state.base import StateUnavailable

KV_PASSWORD = "@Microsoft.KeyVault(SecretUri=https://kv-bridge.vault.azure.net/secrets/servicenow-password/)"
KV_OTHER = " @microsoft.keyvault(VaultName=kv-bridge;SecretName=audiences) "
ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LW5ldmVyLXNob3du" * 2
# What no health body may contain: the sandbox's credentials, reference texts, a storage key.
SECRETS = ("sandbox-secret", "sandbox-password", "SecretUri", "vault.azure.net", "kv-bridge", ACCOUNT_KEY)
INCIDENTS = r"^/api/now/table/incident$"
BASIC_AUTH = {"SERVICENOW_CLIENT_ID": "", "SERVICENOW_CLIENT_SECRET": "", "SERVICENOW_USERNAME": "bridge"}

MakeRuntime = Callable[..., Runtime]


@pytest.fixture(scope="module")
def stack() -> Iterator[SandboxStack]:
    with SandboxStack() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(stack: SandboxStack) -> Iterator[SandboxStack]:
    stack.servicenow.reset()
    stack.entra.set_available(True)
    yield stack
    stack.servicenow.faults.clear()
    stack.entra.set_available(True)


@pytest.fixture
def make(sandbox: SandboxStack, tmp_path: Path) -> Iterator[MakeRuntime]:
    """``make(**overrides)``: a runtime from the sandbox settings (retry waits skipped), closed afterwards."""
    built: list[Runtime] = []

    def _make(**overrides: str) -> Runtime:
        overrides.setdefault("STATE_SQLITE_PATH", str(tmp_path / f"state-{len(built)}.sqlite3"))
        overrides.setdefault("OUTBOX_MAX_DELAY_SECONDS", "0.5")
        runtime = build_runtime(sandbox.bridge_env(**overrides), sleep=lambda _: None)
        built.append(runtime)
        return runtime

    yield _make
    for runtime in built:
        runtime.close()


def health(api: Any, target: str = "/api/health?deep=1") -> ApiResponse:
    response: ApiResponse = api.handle(ApiRequest.of("GET", target, {}, b""))
    text = json.dumps(response.body)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in a health body"
    return response


def checks(response: ApiResponse) -> dict[str, dict[str, Any]]:
    assert response.status == 200
    found: dict[str, dict[str, Any]] = response.body["checks"]
    assert list(found) == list(CHECK_NAMES)
    return found


def states(response: ApiResponse) -> dict[str, str]:
    return {name: check["state"] for name, check in checks(response).items()}


def alert(sandbox: SandboxStack, api: Any, guid: str | None = None) -> ApiResponse:
    body = json.dumps(metric_alert(guid or str(uuid.uuid4()))).encode()
    headers = {"Authorization": f"Bearer {sandbox.token()}", "Content-Type": "application/json"}
    response: ApiResponse = api.handle(ApiRequest.of("POST", "/api/alerts", headers, body))
    return response


def pieces(runtime: Runtime, env: dict[str, str], **kwargs: Any) -> HealthChecks:
    """Health checks over a runtime's reconciler, with their own verifier and options."""
    settings = Settings.from_env(env)
    return HealthChecks(settings, TokenVerifier(settings), runtime.reconciler, **kwargs)


# --- all good -------------------------------------------------------------------------------------


def test_all_checks_ok_answer_ok_with_every_check_by_name(make: MakeRuntime) -> None:
    response = health(make().api)

    assert response.body["status"] == "ok"
    assert "reason" not in response.body
    found = checks(response)
    assert all(check["state"] == "ok" and "reason" not in check for check in found.values())
    assert found["signing_keys"]["keys"] == 1
    assert {k: found["outbox"][k] for k in ("pending", "held", "dead", "oldestPendingSeconds")} == {
        "pending": 0, "held": 0, "dead": 0, "oldestPendingSeconds": 0,
    }
    assert all(isinstance(check["ms"], int) for check in found.values())


def test_plain_health_stays_cheap_and_unchanged(make: MakeRuntime, sandbox: SandboxStack) -> None:
    api = make().api
    sandbox.servicenow.reset()
    sandbox.entra.reset_counts()

    for target in ("/api/health", "/api/health?deep=0", "/api/health?deeper=1"):
        response = health(api, target)
        assert response.status == 200
        assert set(response.body) == {"status", "version", "adapter"}

    assert sandbox.servicenow.requests == []  # no ITSM call
    assert sandbox.entra.request_count == {}  # no key fetch


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_deep_is_asked_for_with_a_true_value(make: MakeRuntime, value: str) -> None:
    assert "checks" in health(make().api, f"/api/health?deep={value}").body


# --- itsm_credential ------------------------------------------------------------------------------


def test_a_refused_itsm_credential_fails_itsm_credential(make: MakeRuntime, sandbox: SandboxStack) -> None:
    api = make().api
    sandbox.servicenow.faults.status(401, method="POST", path="^/oauth_token.do$",
                                     body={"error": "invalid_client", "error_description": "sandbox-secret is wrong"})

    response = health(api)

    assert response.body["status"] == "degraded"
    assert response.body["reason"] == "failed: itsm_credential"
    found = checks(response)
    assert found["itsm_credential"] == {
        "state": "failed",
        "reason": "the ITSM refuses the bridge's credential (ServiceNow, HTTP 401)",
        "ms": found["itsm_credential"]["ms"],
    }
    assert {name for name, state in states(response).items() if state != "ok"} == {"itsm_credential"}


def test_a_refused_table_read_with_basic_auth_fails_itsm_credential(make: MakeRuntime, sandbox: SandboxStack) -> None:
    api = make(**BASIC_AUTH, SERVICENOW_PASSWORD="not-the-sandbox-password").api

    found = checks(health(api))

    assert found["itsm_credential"]["state"] == "failed"
    assert found["itsm_credential"]["reason"].startswith("the ITSM refuses the bridge's credential")
    assert "not-the-sandbox-password" not in json.dumps(found)


def test_the_credential_working_again_while_work_is_held_is_a_warning(make: MakeRuntime,
                                                                      sandbox: SandboxStack) -> None:
    api = make().api
    refused = sandbox.servicenow.faults.status(401, method="POST", path="^/oauth_token.do$")
    assert alert(sandbox, api).status == 202  # recorded and held
    assert sandbox.servicenow.faults.fired(refused) >= 1
    sandbox.servicenow.faults.clear()

    found = checks(health(api))

    assert found["itsm_credential"]["state"] == "warning"
    assert "goes out at its next outbox attempt" in found["itsm_credential"]["reason"]
    assert found["outbox"]["held"] == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (503, "ServiceNow is unavailable (HTTP 503)"),
        (429, "ServiceNow is unavailable (HTTP 429)"),
        (404, "ServiceNow refused the check (HTTP 404)"),
    ],
)
def test_itsm_failures_other_than_the_credential_are_named(make: MakeRuntime, sandbox: SandboxStack,
                                                           status: int, reason: str) -> None:
    api = make().api
    sandbox.servicenow.faults.status(status, method="GET", path=INCIDENTS,
                                     body={"error": {"message": "echo sandbox-secret"}, "status": "failure"})

    found = checks(health(api))

    assert (found["itsm_credential"]["state"], found["itsm_credential"]["reason"]) == ("failed", reason)


def test_an_unreachable_itsm_fails_itsm_credential(make: MakeRuntime) -> None:
    api = make(SERVICENOW_INSTANCE_URL="http://127.0.0.1:9").api  # the discard port: nothing listens

    found = checks(health(api))

    assert found["itsm_credential"]["state"] == "failed"
    assert found["itsm_credential"]["reason"] == "ServiceNow is unreachable (the connection failed)"


def test_a_hanging_itsm_costs_the_health_answer_its_budget_only(make: MakeRuntime, sandbox: SandboxStack) -> None:
    # A read timeout longer than the budget: only the deadline can cut the call short.
    api = make(ITSM_TIMEOUT_SECONDS="20").api
    sandbox.servicenow.faults.latency(12, path="^/")  # OAuth token and table read alike

    started = time.monotonic()
    response = health(api)
    elapsed = time.monotonic() - started

    # The default budget is 4 s, and the socket timeouts are cut to it: the check itself gives up
    # (it is not merely abandoned), and the answer comes well within Azure's 10 s.
    assert 3.5 < elapsed < 5.5, elapsed
    found = checks(response)
    assert found["itsm_credential"]["state"] == "failed"
    assert found["itsm_credential"]["reason"].startswith("ServiceNow did not answer in time")
    assert 3500 < found["itsm_credential"]["ms"] < 5000
    assert [name for name, state in states(response).items() if state != "ok"] == ["itsm_credential"]


# --- a check that ignores its deadline ----------------------------------------------------------


def test_a_check_that_hangs_is_reported_and_not_started_twice(make: MakeRuntime, sandbox: SandboxStack,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = make()
    release = threading.Event()
    calls: list[float] = []

    def stuck_ping() -> None:  # a backend call that no socket timeout bounds
        calls.append(time.monotonic())
        release.wait(30)

    monkeypatch.setattr(runtime.reconciler.store, "ping", stuck_ping)
    checks_ = pieces(runtime, sandbox.bridge_env(), budget_seconds=1.0)
    try:
        started = time.monotonic()
        first = checks_.run()
        elapsed = time.monotonic() - started
        second = checks_.run()
    finally:
        release.set()

    assert elapsed < 2.0, elapsed
    by_name = {check.name: check for check in first.checks}
    assert by_name["state_store"].state is CheckState.FAILED
    assert by_name["state_store"].reason == "did not finish within 1 s"
    assert by_name["itsm_credential"].state is CheckState.OK  # the others are not held up
    again = {check.name: check for check in second.checks}["state_store"]
    assert again.reason == "the previous run of this check has not finished yet"
    assert len(calls) == 1


def test_a_check_that_raises_fails_with_the_type_only(make: MakeRuntime, sandbox: SandboxStack,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = make()

    def broken() -> None:
        raise RuntimeError("sandbox-secret leaked into an exception")

    monkeypatch.setattr(runtime.reconciler.adapter, "check", broken)

    found = checks(health(runtime.api))

    assert found["itsm_credential"]["reason"] == "the check failed unexpectedly (RuntimeError)"


# --- key_vault_references -----------------------------------------------------------------------


def test_an_unresolved_reference_in_the_password_starts_degraded_and_holds_alerts(
    make: MakeRuntime, sandbox: SandboxStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = str(tmp_path / "shared.sqlite3")
    with caplog.at_level("CRITICAL", logger="bridge.runtime"):
        runtime = make(**BASIC_AUTH, SERVICENOW_PASSWORD=KV_PASSWORD, STATE_SQLITE_PATH=state)
    assert [r.levelname for r in caplog.records if "SERVICENOW_PASSWORD" in r.getMessage()] == ["CRITICAL"]
    assert KV_PASSWORD not in caplog.text

    # Plain health: degraded, naming the setting, computed at start-up (no call made for it).
    sandbox.servicenow.reset()
    plain = health(runtime.api, "/api/health")
    assert plain.status == 200
    assert plain.body["status"] == "degraded"
    assert plain.body["reason"].startswith("SERVICENOW_PASSWORD holds an unresolved Key Vault reference")
    assert sandbox.servicenow.requests == []

    # An alert is recorded and held, not lost: ServiceNow refuses the reference text as a password.
    guid = str(uuid.uuid4())
    queued = alert(sandbox, runtime.api, guid)
    assert queued.status == 202

    deep = health(runtime.api)
    found = checks(deep)
    assert deep.body["status"] == "degraded"
    assert found["key_vault_references"]["state"] == "failed"
    assert found["key_vault_references"]["reason"].startswith(
        "SERVICENOW_PASSWORD holds an unresolved Key Vault reference"
    )
    assert "alerts are recorded and held" in found["key_vault_references"]["reason"]
    assert found["itsm_credential"]["state"] == "failed"
    assert found["itsm_credential"]["reason"].endswith("; SERVICENOW_PASSWORD holds an unresolved Key Vault reference")
    assert found["settings"]["state"] == "ok"
    assert found["outbox"]["held"] == 1

    # The reference resolves (the app restarts with the secret): the held alert goes out.
    resolved = make(**BASIC_AUTH, SERVICENOW_PASSWORD="sandbox-password", STATE_SQLITE_PATH=state)
    time.sleep(0.6)  # the held record's back-off (OUTBOX_MAX_DELAY_SECONDS=0.5)
    assert resolved.worker.tick() >= 1
    assert len(sandbox.servicenow.records("incident")) == 1
    assert states(health(resolved.api)) == dict.fromkeys(CHECK_NAMES, "ok")


def test_an_unresolved_telemetry_connection_string_is_tolerated_and_named(make: MakeRuntime) -> None:
    api = make(APPLICATIONINSIGHTS_CONNECTION_STRING=KV_OTHER).api

    deep = health(api)

    assert states(deep) == {**dict.fromkeys(CHECK_NAMES, "ok"), "key_vault_references": "failed"}
    reason = checks(deep)["key_vault_references"]["reason"]
    assert reason.startswith("APPLICATIONINSIGHTS_CONNECTION_STRING holds an unresolved Key Vault reference")
    assert reason.endswith("telemetry cannot be sent")
    assert health(api, "/api/health").body["status"] == "degraded"


@pytest.mark.parametrize("setting", ["AUTH_AUDIENCES", "SERVICENOW_INSTANCE_URL", "AzureWebJobsStorage"])
def test_an_unresolved_reference_elsewhere_is_a_bad_setting(sandbox: SandboxStack, setting: str) -> None:
    env = sandbox.bridge_env(**{setting: KV_OTHER})
    with pytest.raises(ConfigError) as raised:
        build_runtime(env)
    assert raised.value.setting == setting
    assert "unresolved Key Vault reference" in str(raised.value)

    reset()
    try:
        api = get_api(env)
        response = api.handle(ApiRequest.of("GET", "/api/health?deep=1", {}, b""))
    finally:
        reset()
    assert response.status == 503
    assert response.headers == {"Retry-After": "30"}
    assert response.body["status"] == "misconfigured"
    assert response.body["setting"] == setting
    assert response.body["checks"] == {"settings": {"state": "failed", "reason": response.body["message"]}}
    assert "kv-bridge" not in json.dumps(response.body)


# --- signing_keys ---------------------------------------------------------------------------------


def test_signing_keys_unreachable_fail_signing_keys_within_the_rate_limit(make: MakeRuntime,
                                                                          sandbox: SandboxStack) -> None:
    api = make().api  # a fresh verifier: no keys yet
    sandbox.entra.set_available(False)
    sandbox.entra.reset_counts()

    first = checks(health(api))["signing_keys"]
    sandbox.entra.set_available(True)
    second = checks(health(api))["signing_keys"]

    assert first["state"] == "failed"
    assert first["keys"] == 0
    assert first["reason"] == "no signing keys: metadata answered HTTP 503; tokens cannot be verified (alerts get 503)"
    # Within the refresh gap the last attempt's outcome stands: health does not hammer Entra ID.
    assert second == {**first, "ms": second["ms"]}
    assert sandbox.entra.count("metadata_v2") == 1


def test_keys_once_loaded_are_ok_while_entra_is_down(make: MakeRuntime, sandbox: SandboxStack) -> None:
    api = make().api
    assert checks(health(api))["signing_keys"]["state"] == "ok"
    sandbox.entra.set_available(False)

    assert checks(health(api))["signing_keys"]["state"] == "ok"


OPENID = "https://login.example.com/tenant/v2.0/.well-known/openid-configuration"
JWKS = "https://login.example.com/tenant/discovery/v2.0/keys"


@pytest.mark.parametrize(
    ("jwks", "problem"),
    [
        ({"body": "<html>sign in</html>"}, "jwks is not JSON"),
        ({"json": {"keys": [{"kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"}]}},
         "jwks has no usable RSA signing key"),
        ({"json": {"keys": "none"}}, "jwks has no keys list"),
    ],
)
def test_signing_keys_that_are_not_usable_say_why(sandbox: SandboxStack, jwks: dict[str, Any], problem: str) -> None:
    settings = Settings.from_env(sandbox.bridge_env(AUTH_OPENID_CONFIG_URL=OPENID))
    verifier = TokenVerifier(settings)
    with responses.RequestsMock() as mock:
        mock.get(OPENID, json={"issuer": "https://login.example.com/tenant/v2.0", "jwks_uri": JWKS})
        mock.get(JWKS, **jwks)
        status = verifier.ensure_keys()
    assert (status.keys, status.problem) == (0, problem)


def test_a_key_fetch_honours_the_deadline(sandbox: SandboxStack) -> None:
    from bridge.deadline import deadline

    settings = Settings.from_env(sandbox.bridge_env())
    verifier = TokenVerifier(settings)
    with deadline(0.0):
        status = verifier.ensure_keys()
    assert (status.keys, status.problem) == (0, "metadata not requested: the time budget is spent")


# --- state_store and outbox -----------------------------------------------------------------------


def test_an_unreachable_state_store_fails_state_store_and_outbox(make: MakeRuntime) -> None:
    runtime = make()
    runtime.reconciler.store.close()  # every call now fails as an unreachable store's would

    found = checks(health(runtime.api))

    assert found["state_store"]["state"] == "failed"
    assert found["state_store"]["reason"]
    assert found["outbox"]["state"] == "failed"
    assert found["outbox"]["reason"].startswith("the records could not be read: ")
    assert found["itsm_credential"]["state"] == "ok"


def test_an_azure_store_that_cannot_be_reached_fails_without_showing_its_key(make: MakeRuntime,
                                                                             sandbox: SandboxStack) -> None:
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    env = sandbox.bridge_env(STATE_STORE="azure", AzureWebJobsStorage=connection)
    runtime = make(STATE_STORE="azure", AzureWebJobsStorage=connection)
    checks_ = pieces(runtime, env, budget_seconds=1.5)

    started = time.monotonic()
    report = checks_.run()
    assert time.monotonic() - started < 2.5

    by_name = {check.name: check for check in report.checks}
    assert by_name["state_store"].state is CheckState.FAILED
    assert by_name["outbox"].state is CheckState.FAILED
    assert ACCOUNT_KEY not in json.dumps(report.as_json())


def test_dead_letters_make_outbox_a_warning(make: MakeRuntime, sandbox: SandboxStack) -> None:
    api = make().api
    refusal = {"error": {"message": "Invalid value for field: impact"}, "status": "failure"}
    sandbox.servicenow.faults.status(400, method="POST", path=INCIDENTS, body=refusal)
    assert alert(sandbox, api).status == 502  # dead-lettered
    sandbox.servicenow.faults.clear()

    response = health(api)

    assert response.body["reason"] == "warning: outbox"
    outbox = checks(response)["outbox"]
    assert outbox["state"] == "warning"
    assert (outbox["pending"], outbox["held"], outbox["dead"]) == (0, 0, 1)
    assert outbox["reason"].startswith("1 dead-lettered (`outbox list` shows why")
    assert "Invalid value" not in json.dumps(response.body)  # the ITSM's words stay in `outbox list`


def test_old_pending_work_makes_outbox_a_warning(make: MakeRuntime, sandbox: SandboxStack) -> None:
    runtime = make()
    sandbox.servicenow.faults.status(503, path="^/api/now/")
    assert alert(sandbox, runtime.api).status == 202
    sandbox.servicenow.faults.clear()

    now = pieces(runtime, sandbox.bridge_env()).run()
    later = pieces(runtime, sandbox.bridge_env(), wall=lambda: time.time() + 11 * 60).run()

    fresh = {check.name: check for check in now.checks}["outbox"]
    assert fresh.state is CheckState.OK
    assert fresh.details["pending"] == 1
    old = {check.name: check for check in later.checks}["outbox"]
    assert old.state is CheckState.WARNING
    assert old.reason == "the oldest waiting work has waited 11 min"
    assert old.details["oldestPendingSeconds"] >= 660


# --- settings -------------------------------------------------------------------------------------


def test_a_mapping_file_broken_after_start_up_fails_settings(make: MakeRuntime, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.json"
    mapping.write_text("{}", encoding="utf-8")
    api = make(MAPPING_FILE=str(mapping)).api
    assert checks(health(api))["settings"]["state"] == "ok"

    mapping.write_text("{not json", encoding="utf-8")
    found = checks(health(api))

    assert found["settings"]["state"] == "failed"
    assert found["settings"]["reason"].startswith("MAPPING_FILE: ")


# --- check-config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["SERVICENOW_PASSWORD", "AUTH_AUDIENCES", "APPLICATIONINSIGHTS_CONNECTION_STRING"])
def test_check_config_refuses_every_unresolved_reference(sandbox: SandboxStack, setting: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    env = sandbox.bridge_env(**BASIC_AUTH, SERVICENOW_PASSWORD="sandbox-password")
    env[setting] = KV_PASSWORD
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert main(["check-config"]) == 2

    err = capsys.readouterr().err
    assert f"{setting}: is an unresolved Key Vault reference" in err
    assert "kv-bridge" not in err and "SecretUri" not in err


def test_a_store_ping_failure_message_is_reported_as_the_store_says(make: MakeRuntime, sandbox: SandboxStack,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = make()

    def down() -> None:
        raise StateUnavailable("Table ping failed: ServiceRequestError")

    monkeypatch.setattr(runtime.reconciler.store, "ping", down)

    found = checks(health(runtime.api))

    assert found["state_store"] == {"state": "failed", "reason": "Table ping failed: ServiceRequestError",
                                    "ms": found["state_store"]["ms"]}
