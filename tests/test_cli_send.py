"""``python -m bridge send`` with a real msal client-credentials flow against a mocked Entra ID.

The loopback variants (sandbox token, literal token) run in ``tests/integration``; here msal
itself runs, discovering the tenant's metadata and posting to its token endpoint, and the token
it gets is what reaches the bridge URL.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import responses
from responses import matchers

from bridge.cli import main

TENANT = "aaaaaaaa-0000-4000-8000-000000000000"
AUTHORITY = f"https://login.microsoftonline.com/{TENANT}"
BRIDGE_URL = "https://bridge.example.net/api/alerts"
SECRET = "client-Secret-value-42"
SAMPLE = Path(__file__).resolve().parents[1] / "bridge" / "sandbox" / "samples" / "metric_static_fired.testaction.json"


def _metadata(request: Any) -> tuple[int, dict[str, str], str]:
    return 200, {}, json.dumps({
        "issuer": f"{AUTHORITY}/v2.0",
        "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
        "token_endpoint": f"{AUTHORITY}/oauth2/v2.0/token",
    })


def _argv(*extra: str) -> list[str]:
    return ["send", str(SAMPLE), "--url", BRIDGE_URL, "--tenant", TENANT, "--client-id", "test-client",
            "--scope", "api://azure-monitor-bridge/.default", *extra]


def test_send_acquires_a_token_with_msal_and_posts_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.GET, re.compile(re.escape(AUTHORITY) + r"/v2\.0/\.well-known/.*"),
                          callback=_metadata)
        mock.post(
            f"{AUTHORITY}/oauth2/v2.0/token",
            json={"access_token": "msal-issued-token", "token_type": "Bearer", "expires_in": 3599},
            match=[matchers.urlencoded_params_matcher({
                "client_id": "test-client", "grant_type": "client_credentials", "client_info": "1",
                "client_secret": SECRET, "scope": "api://azure-monitor-bridge/.default",
            })],
        )
        mock.post(
            BRIDGE_URL,
            status=200,
            json={"status": "processed", "action": "created"},
            match=[
                matchers.header_matcher({"Authorization": "Bearer msal-issued-token"}),
                matchers.body_matcher(SAMPLE.read_text(encoding="utf-8")),
            ],
        )
        code = main(_argv("--client-secret", SECRET))

    out, err = capsys.readouterr()
    assert code == 0
    assert '200 {"status": "processed", "action": "created"}' in out
    assert SECRET not in out + err and "msal-issued-token" not in out + err
    # A secret on the command line works, with a warning naming the better way.
    assert err == (
        "send: warning: --client-secret puts a secret on the command line, where the process list and shell "
        "history show it; prefer the BRIDGE_SEND_CLIENT_SECRET environment variable\n"
    )


def test_send_reports_a_refused_token_request_without_the_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_SEND_CLIENT_SECRET", SECRET)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        # After an error msal may consult Entra's instance discovery; answer as Entra does.
        mock.get(re.compile(r"https://login\.microsoftonline\.com/common/discovery/instance.*"), json={
            "tenant_discovery_endpoint": f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": "login.microsoftonline.com",
                          "preferred_cache": "login.windows.net",
                          "aliases": ["login.microsoftonline.com", "login.windows.net"]}],
        })
        mock.add_callback(responses.GET, re.compile(re.escape(AUTHORITY) + r"/v2\.0/\.well-known/.*"),
                          callback=_metadata)
        mock.post(f"{AUTHORITY}/oauth2/v2.0/token", status=401, json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\nTrace ID: 1",
        })
        with pytest.raises(SystemExit) as exited:
            main(_argv())

    message = str(exited.value)
    assert message == "send: no token from Entra ID: invalid_client: AADSTS7000215: Invalid client secret provided."
    out, err = capsys.readouterr()
    assert SECRET not in message + out + err
    assert "warning" not in err  # the secret came from the environment


def test_send_non_2xx_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with responses.RequestsMock() as mock:
        mock.post(BRIDGE_URL, status=401, json={"error": {"code": "invalid_token", "message": "token expired"}})
        code = main(["send", str(SAMPLE), "--url", BRIDGE_URL, "--token", "literal-token"])
    assert code == 1
    assert "401" in capsys.readouterr().out


def test_send_reports_a_missing_file_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    with responses.RequestsMock() as mock:
        mock.post(BRIDGE_URL, status=200, json={"status": "processed", "action": "created"})
        code = main(["send", "/nonexistent/alert.json", str(SAMPLE), "--url", BRIDGE_URL, "--token", "t"])
    out = capsys.readouterr().out
    assert code == 1
    assert "/nonexistent/alert.json: cannot read: No such file or directory" in out
    assert f"{SAMPLE}: 200" in out


def test_check_config_with_an_unreadable_settings_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--settings", "/nonexistent/local.settings.json"])
    assert exited.value.code == 2
    assert "cannot read settings file /nonexistent/local.settings.json" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[1]


def _bridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", "bridge", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api/alerts"


def test_send_warns_when_a_token_is_on_the_command_line_and_not_when_it_comes_from_the_environment() -> None:
    token = "literal-Token-value-17"
    url = _dead_url()

    literal = _bridge("send", str(SAMPLE), "--url", url, "--token", token)
    from_env = _bridge("send", str(SAMPLE), "--url", url, "--token-env", "BRIDGE_TEST_TOKEN",
                       env={"BRIDGE_TEST_TOKEN": token})

    assert literal.returncode == from_env.returncode == 1  # nothing listens there
    assert literal.stderr == (
        "send: warning: --token puts a secret on the command line, where the process list and shell history "
        "show it; prefer --token-env VAR\n"
    )
    assert from_env.stderr == ""
    assert token not in literal.stdout + from_env.stdout


def test_send_help_says_to_keep_secrets_in_the_environment() -> None:
    result = _bridge("send", "--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Keep secrets off the command line" in text
    assert "--token-env VAR and the msal client secret in BRIDGE_SEND_CLIENT_SECRET" in text
    assert "prefer setting BRIDGE_SEND_CLIENT_SECRET" in text and "prefer --token-env" in text
