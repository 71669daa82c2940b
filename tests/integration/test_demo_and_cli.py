"""``python -m bridge``: the demo, the help texts, ``check-config``, ``outbox``, and ``serve`` + ``send``
as processes.

The demo runs both in-process and as a real ``python -m bridge demo``. ``serve --sandbox --port 0``
is started as a subprocess, ``send`` posts to it from another, and the server is stopped with
SIGINT. ``check-config`` runs in-process against a patched environment (and once as a process),
and its output is checked for secret values. ``outbox list`` and ``outbox replay`` run as processes
over a SQLite state file a bridge in this process filled against the ServiceNow stand-in.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests

from bridge import __version__
from bridge.api import ApiRequest
from bridge.cli import main
from bridge.config import SETTINGS
from bridge.demo import run_demo
from bridge.sandbox.servicenow import ServiceNowStandIn
from bridge.sandbox.stack import SAMPLES_DIR, SANDBOX_SUBSCRIPTION, SandboxStack, load_sample

from .conftest import CLIENT_TIMEOUT_SECONDS, MakeRuntime, client_session

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT_SECONDS = 60
PASSWORD = "Pa55-w0rd-must-not-show"
CLIENT_SECRET = "cl13nt-s3cret-must-not-show"
TENANT = "5c0f3a1e-9d7b-4e2a-8f61-2b4d6c8e0a13"
DEMO_STEPS = 12


def child_env() -> dict[str, str]:
    """The test process's environment without any bridge setting, with the repo importable."""
    env = {name: value for name, value in os.environ.items() if name not in {s.name for s in SETTINGS}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def bridge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args]


def run_bridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        bridge_command(*args),
        cwd=REPO,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


# --- the demo ------------------------------------------------------------------------------------


def assert_demo_output(
    text: str, *, itsm: str = "ServiceNow", prefix: str = "INC001000", bound_to_ci: bool = True
) -> None:
    assert "Alerts sent" in text
    step_rows = [line for line in text.splitlines() if re.match(r"^\d+\s{2}", line)]
    assert len(step_rows) == DEMO_STEPS
    assert all(row.endswith("yes") for row in step_rows), step_rows
    steps = {row.split()[0]: row for row in step_rows}
    assert "ITSM down" in steps["12"] and "202 queued" in steps["12"]
    assert re.search(rf"^the queued alert became {prefix}5 [\d.]+ s after recovery$", text, re.MULTILINE)
    assert f"Work items in the {itsm} stand-in (5)" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(prefix)}
    assert sorted(rows) == [f"{prefix}{n}" for n in range(1, 6)]
    assert " resolved " in rows[f"{prefix}1"] and "test-metricAlertRule" in rows[f"{prefix}1"]
    assert " open " in rows[f"{prefix}2"] and "test-logAlertRule-v2" in rows[f"{prefix}2"]
    assert " open " in rows[f"{prefix}3"] and "test-activityLogAlertRule" in rows[f"{prefix}3"]
    assert " open " in rows[f"{prefix}4"] and "test-ServiceHealthAlertRule" in rows[f"{prefix}4"]
    # The alert sent while the ITSM was down, created by the outbox once it was back.
    assert " open " in rows[f"{prefix}5"] and "0d8f3c2b-5a4e-4f6d-9b7c-1e2f3a4b5c6d" in rows[f"{prefix}5"]
    bound = sorted(number for number, row in rows.items() if not re.search(r"\s-\s", row))
    if bound_to_ci:
        assert "test-storageAccount" in rows[f"{prefix}1"] and "test-computer" in rows[f"{prefix}2"]
        assert bound == [f"{prefix}1", f"{prefix}2", f"{prefix}3", f"{prefix}5"]  # 4 bound to a CI
    else:
        assert bound == []  # Jira has no CMDB to bind to
    assert "every step did what it should" in text


def test_demo_runs_in_process_and_names_the_incidents() -> None:
    out = io.StringIO()

    assert run_demo(out=out) == 0

    assert_demo_output(out.getvalue())


def test_the_demo_runs_against_jira_too() -> None:
    out = io.StringIO()

    assert run_demo(out=out, itsm="jira") == 0

    assert_demo_output(out.getvalue(), itsm="Jira", prefix="OPS-", bound_to_ci=False)


def test_python_m_bridge_demo_exits_0() -> None:
    result = run_bridge("demo")

    assert result.returncode == 0, result.stderr
    assert_demo_output(result.stdout)
    assert "sandbox-secret" not in result.stdout + result.stderr


# --- help ----------------------------------------------------------------------------------------


def test_help_of_the_program_and_every_command_exits_0() -> None:
    commands = {
        "": ["--help"],
        **{name: [name, "--help"] for name in ("demo", "serve", "send", "check-config", "outbox")},
    }
    processes = {
        name: subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
            bridge_command(*args), cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for name, args in commands.items()
    }
    outputs = {name: process.communicate(timeout=PROCESS_TIMEOUT_SECONDS) for name, process in processes.items()}

    for name, process in processes.items():
        assert process.returncode == 0, (name, outputs[name][1])
        assert outputs[name][0].startswith("usage: python -m bridge")
    assert "{demo,serve,send,check-config,outbox}" in outputs[""][0]
    assert "--sandbox" in outputs["serve"][0] and "--port" in outputs["serve"][0]
    assert "--url" in outputs["send"][0] and "--sandbox-entra" in outputs["send"][0]
    assert "--settings" in outputs["check-config"][0]
    assert "{list,replay}" in outputs["outbox"][0] and "--all" in outputs["outbox"][0]


def test_version_is_printed() -> None:
    result = run_bridge("--version")

    assert result.returncode == 0
    assert result.stdout.strip() == __version__


# --- check-config --------------------------------------------------------------------------------


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Good settings in the environment (and nothing else of the bridge's)."""
    for spec in SETTINGS:
        monkeypatch.delenv(spec.name, raising=False)
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"close_code": "Resolved by Azure Monitor"}), encoding="utf-8")
    values = {
        "AUTH_TENANT_ID": TENANT,
        "AUTH_AUDIENCES": "api://azure-monitor-bridge",
        "AUTH_REQUIRED_ROLE": "ActionGroupsSecureWebhook",
        "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com",
        "SERVICENOW_USERNAME": "azure.bridge",
        "SERVICENOW_PASSWORD": PASSWORD,
        "SERVICENOW_CLIENT_ID": "bridge-oauth-client",
        "SERVICENOW_CLIENT_SECRET": CLIENT_SECRET,
        "MAPPING_FILE": str(mapping),
        "STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert CLIENT_SECRET not in text


def test_check_config_with_good_settings_exits_0_and_hides_secrets(
    settings_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config"]) == 0

    out, err = capsys.readouterr()
    assert_no_secret(out + err)
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["SERVICENOW_PASSWORD"].endswith("(set, hidden)")
    assert lines["SERVICENOW_CLIENT_SECRET"].endswith("(set, hidden)")
    assert lines["AUTH_TENANT_ID"].endswith(TENANT)
    assert lines["ITSM_ADAPTER"].endswith("(default: servicenow)")
    assert out.rstrip().endswith("settings are valid")
    assert err == ""


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"AUTH_TENANT_ID": None}, "AUTH_TENANT_ID"),
        ({"AUTH_TENANT_ID": "contoso.onmicrosoft.com"}, "AUTH_TENANT_ID"),
        ({"SERVICENOW_INSTANCE_URL": "http://contoso.service-now.com"}, "SERVICENOW_INSTANCE_URL"),
        ({"SERVICENOW_USERNAME": None}, "SERVICENOW_USERNAME"),
        ({"ITSM_RETRY_ATTEMPTS": "many"}, "ITSM_RETRY_ATTEMPTS"),
        ({"MAPPING_FILE": "malformed"}, "MAPPING_FILE"),
        ({"MAPPING_FILE": "unknown-key"}, "MAPPING_FILE"),
        ({"MAPPING_FILE": "missing"}, "MAPPING_FILE"),
    ],
)
def test_check_config_with_a_bad_setting_exits_2_naming_it(
    change: dict[str, str | None],
    setting: str,
    settings_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mapping_files = {
        # The secret inside must not be echoed when the file cannot be parsed.
        "malformed": f'{{"close_code": "{PASSWORD}", ',
        "unknown-key": json.dumps({"close_cod": "typo"}),
    }
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        elif name == "MAPPING_FILE":
            path = tmp_path / f"{value}.json"
            if value in mapping_files:
                path.write_text(mapping_files[value], encoding="utf-8")
            monkeypatch.setenv(name, str(path))
        else:
            monkeypatch.setenv(name, value)

    assert main(["check-config"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"invalid settings: {setting}: ")
    assert_no_secret(out + err)


def test_check_config_process_reads_a_settings_file_and_exits_2_on_a_bad_value(tmp_path: Path) -> None:
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(
        json.dumps({
            "IsEncrypted": False,
            "Values": {
                "AUTH_TENANT_ID": TENANT,
                "AUTH_AUDIENCES": "api://azure-monitor-bridge",
                "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com",
                "SERVICENOW_USERNAME": "azure.bridge",
                "SERVICENOW_PASSWORD": PASSWORD,
                "ALLOWED_SUBSCRIPTION_IDS": "not-a-subscription",
                "STATE_SQLITE_PATH": str(tmp_path / "state.sqlite3"),
            },
        }),
        encoding="utf-8",
    )

    result = run_bridge("check-config", "--settings", str(settings_file))

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "invalid settings: ALLOWED_SUBSCRIPTION_IDS: every entry must be a subscription GUID"
    )
    assert_no_secret(result.stdout + result.stderr)


# --- outbox list and replay ----------------------------------------------------------------------

METRIC_SAMPLE = "metric_static_fired.testaction.json"
DONE_KEY = "12345678-1234-1234-1234-1234567890ab"
DEAD_KEY = "d0d0d0d0-0000-4000-8000-00000000dead"
PENDING_KEY = "b0b0b0b0-0000-4000-8000-0000000b0b0b"


def alert_with_key(key: str) -> dict[str, object]:
    return load_sample(
        METRIC_SAMPLE,
        alertId=f"/subscriptions/{SANDBOX_SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{key}",
    )


def test_outbox_list_and_replay_as_processes(
    sandbox: SandboxStack, snow: ServiceNowStandIn, make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    state = tmp_path / "outbox-state.sqlite3"
    bridge = make_runtime(STATE_SQLITE_PATH=str(state))

    def deliver(payload: dict[str, object]) -> tuple[int, dict[str, object]]:
        response = bridge.api.handle(ApiRequest.of(
            "POST", "/api/alerts", {"Authorization": f"Bearer {sandbox.token()}"}, json.dumps(payload).encode(),
        ))
        return response.status, dict(response.body)

    # One done, one dead-lettered (the instance refuses the create), one pending (ServiceNow down).
    assert deliver(alert_with_key(DONE_KEY))[0] == 200
    snow.faults.status(400, method="POST", path="^/api/now/table/incident$", body={
        "error": {"message": "Invalid value for field: assignment_group", "detail": "no such group"},
        "status": "failure",
    })
    assert deliver(alert_with_key(DEAD_KEY))[0] == 502
    snow.faults.clear()
    snow.faults.status(503, path=r"^/api/now/")
    assert deliver(alert_with_key(PENDING_KEY))[0] == 202
    snow.faults.clear()
    env = {**child_env(), **sandbox.bridge_env(STATE_SQLITE_PATH=str(state))}

    listed = run_bridge("outbox", "list", env=env)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "outbox (sqlite): 1 pending, 0 held, 1 dead, 1 done"
    assert lines[1].split()[:2] == ["key", "state"]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {DEAD_KEY, PENDING_KEY}  # what is done is left out
    assert rows[DEAD_KEY].split()[1] == "dead"
    assert rows[DEAD_KEY].endswith("ServiceNow 400: Invalid value for field: assignment_group (no such group)")
    assert rows[PENDING_KEY].split()[1] == "pending"
    assert "ServiceNow 503" in rows[PENDING_KEY]
    assert "sandbox-secret" not in listed.stdout + listed.stderr
    everything = run_bridge("outbox", "list", "--all", env=env)
    assert {line.split()[0]: line.split()[1] for line in everything.stdout.splitlines()[3:]} == {
        DONE_KEY: "done", DEAD_KEY: "dead", PENDING_KEY: "pending",
    }

    # The refusal is fixed on the instance: replay the dead letter.
    replayed = run_bridge("outbox", "replay", DEAD_KEY.upper(), env=env)

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.strip() == f"{DEAD_KEY}: done INC0010002"
    created = [i for i in snow.records("incident") if i["correlation_id"] == DEAD_KEY]
    assert [i["number"] for i in created] == ["INC0010002"]
    assert len([r for r in snow.requests if r.method == "POST" and r.path == "/api/now/table/incident"]) == 3

    unknown = run_bridge("outbox", "replay", "ffffffff-0000-4000-8000-000000000000", env=env)
    assert unknown.returncode == 1
    assert unknown.stdout.strip() == "ffffffff-0000-4000-8000-000000000000: no such record"
    no_key = run_bridge("outbox", "replay", env=env)
    assert no_key.returncode == 2 and "give a KEY or --all" in no_key.stderr

    # ServiceNow is back too: replay everything that is not done.
    rest = run_bridge("outbox", "replay", "--all", env=env)

    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert rest.stdout.strip() == f"{PENDING_KEY}: done INC0010003"
    assert sorted(i["correlation_id"] for i in snow.records("incident")) == sorted([DONE_KEY, DEAD_KEY, PENDING_KEY])
    final = run_bridge("outbox", "list", env=env)
    assert final.stdout.splitlines() == ["outbox (sqlite): 0 pending, 0 held, 0 dead, 3 done"]
    # The in-process bridge sees what the processes did: the alert answered 502 is now just a redelivery.
    status, body = deliver(alert_with_key(DEAD_KEY))
    assert (status, body["action"]) == (200, "ignored")


# --- serve and send as processes -----------------------------------------------------------------


class LineReader:
    """Lines of a child's stdout, read on a thread so waiting for one can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"output ended without {pattern!r}: {self.seen}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def rest(self, timeout: float = 5.0) -> list[str]:
        self._thread.join(timeout)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        bridge_command("serve", "--sandbox", "--port", "0"),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    reader = LineReader(process.stdout)
    try:
        yield process, reader
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
        process.stdout.close()


def test_serve_sandbox_then_send_then_sigint(served: tuple[subprocess.Popen[str], LineReader]) -> None:
    process, reader = served
    url = reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
    entra = reader.until(r"^\s+Entra ID stand-in:\s+(http://127\.0\.0\.1:\d+)$")[1]
    reader.until(r"^Ctrl-C to stop$")
    assert not url.endswith(":0") and not url.endswith(":7071")

    with client_session() as http:
        health = http.get(f"{url}/api/health", timeout=CLIENT_TIMEOUT_SECONDS)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": __version__, "adapter": "servicenow"}

    metric = SAMPLES_DIR / "metric_static_fired.testaction.json"
    activity = SAMPLES_DIR / "activity_log_administrative_fired.testaction.json"
    sent = run_bridge("send", str(metric), str(activity), "--url", f"{url}/api/alerts", "--sandbox-entra", entra)
    again = run_bridge("send", str(metric), "--url", f"{url}/api/alerts", "--sandbox-entra", entra,
                       "--token-version", "1.0")

    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert len(lines) == 2
    for path, line in zip((metric, activity), lines, strict=True):
        prefix = f"{path}: 200 "
        assert line.startswith(prefix), line
        answer = json.loads(line[len(prefix):])
        assert answer["status"] == "processed" and answer["action"] == "created"
        assert answer["workItem"]["number"].startswith("INC")
    assert again.returncode == 0, again.stdout + again.stderr
    answer = json.loads(again.stdout.split(": 200 ", 1)[1])
    assert answer["action"] == "ignored"  # the same alert again: an identical redelivery

    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    returncode = process.wait(timeout=10)
    assert returncode == 0
    assert time.monotonic() - started < 5
    assert "stopping" in reader.rest()
    with pytest.raises(requests.ConnectionError), client_session() as http:
        http.get(f"{url}/api/health", timeout=2)


def test_serve_sandbox_with_jira_creates_issues() -> None:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        bridge_command("serve", "--sandbox", "--itsm", "jira", "--port", "0"),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    reader = LineReader(process.stdout)
    try:
        url = reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
        reader.until(r"^\s+Jira stand-in:\s+http://127\.0\.0\.1:\d+ \(email bridge@example.com")
        entra = reader.until(r"^\s+Entra ID stand-in:\s+(http://127\.0\.0\.1:\d+)$")[1]
        reader.until(r"^Ctrl-C to stop$")
        with client_session() as http:
            health = http.get(f"{url}/api/health", timeout=CLIENT_TIMEOUT_SECONDS).json()
        assert health["adapter"] == "jira" and health["status"] == "ok"
        metric = SAMPLES_DIR / "metric_static_fired.testaction.json"
        sent = run_bridge("send", str(metric), "--url", f"{url}/api/alerts", "--sandbox-entra", entra)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        answer = json.loads(sent.stdout.split(": 200 ", 1)[1])
        assert answer["action"] == "created" and answer["workItem"]["number"] == "OPS-1"
        assert answer["workItem"]["system"] == "jira" and answer["workItem"]["url"].endswith("/browse/OPS-1")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        process.stdout.close()


def test_send_without_a_token_choice_fails_and_names_the_options() -> None:
    metric = SAMPLES_DIR / "metric_static_fired.testaction.json"

    result = run_bridge("send", str(metric), "--url", "http://127.0.0.1:9/api/alerts")

    assert result.returncode != 0
    assert "--sandbox-entra" in result.stderr and "--token" in result.stderr
