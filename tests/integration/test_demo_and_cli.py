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
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from bridge import __version__, demo
from bridge.api import ApiRequest, UnavailableApi
from bridge.cli import SEND_SECRET_VARIABLE, _parser, main
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
DEMO_STEPS = 17


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
    # The metric condition, re-fired under a new alertId within its rule's window: one work item.
    assert all(f" {prefix}1 " in steps[str(n)] for n in range(1, 8)), step_rows[:7]
    assert "new alertId" in steps["6"] and "200 reopened" in steps["6"]
    assert "200 resolved" in steps["7"]
    # The Service Health event of one trackingId: created, updated, resolved on one work item.
    assert "200 created" in steps["11"] and "200 updated" in steps["12"] and "200 resolved" in steps["13"]
    assert all(f" {prefix}5 " in steps[str(n)] for n in (11, 12, 13)), step_rows[10:13]
    assert "ITSM down" in steps["17"] and "202 queued" in steps["17"]
    assert re.search(rf"^the queued alert became {prefix}6 [\d.]+ s after recovery$", text, re.MULTILINE)
    assert f"Work items in the {itsm} stand-in (6)" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(prefix)}
    assert sorted(rows) == [f"{prefix}{n}" for n in range(1, 7)]
    assert " resolved " in rows[f"{prefix}1"] and "test-metricAlertRule" in rows[f"{prefix}1"]
    # Kept by fingerprint under the re-fire window: its correlation id is the thread's hash.
    assert re.search(r"\s[0-9a-f]{40}\s", rows[f"{prefix}1"])
    assert " open " in rows[f"{prefix}2"] and "test-logAlertRule-v2" in rows[f"{prefix}2"]
    assert " open " in rows[f"{prefix}3"] and "test-activityLogAlertRule" in rows[f"{prefix}3"]
    assert " resolved " in rows[f"{prefix}4"] and "test-ServiceHealthAlertRule" in rows[f"{prefix}4"]
    assert " resolved " in rows[f"{prefix}5"] and "test-ServiceHealthAlertRule" in rows[f"{prefix}5"]
    # The alert sent while the ITSM was down, created by the outbox once it was back.
    assert " open " in rows[f"{prefix}6"] and "0d8f3c2b-5a4e-4f6d-9b7c-1e2f3a4b5c6d" in rows[f"{prefix}6"]
    bound = sorted(number for number, row in rows.items() if not re.search(r"\s-\s", row))
    if bound_to_ci:
        assert "test-storageAccount" in rows[f"{prefix}1"] and "test-computer" in rows[f"{prefix}2"]
        assert bound == [f"{prefix}1", f"{prefix}2", f"{prefix}3", f"{prefix}6"]  # 4 bound to a CI
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


def test_the_demo_fails_when_the_refire_opens_another_work_item(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the re-fire window the new alertId is a new alert: its own work item, not a reopen.
    monkeypatch.setattr(demo, "DEMO_MAPPING", {})
    out = io.StringIO()

    assert run_demo(out=out) == 1

    text = out.getvalue()
    refire = next(line for line in text.splitlines() if line.startswith("6 "))
    assert "200 created" in refire and refire.endswith("NO")
    assert "expected the metric steps to answer with one work item" in text
    assert "expected the metric work item's notes to name both its first alert and the re-fired one" in text
    assert "check(s) failed" in text


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
    for flag in ("--itsm-port", "--entra-port", "--write-settings", "--settings"):
        assert flag in outputs["serve"][0], flag
    serve_help = " ".join(outputs["serve"][0].split())
    # Which settings win with --sandbox, and that bad settings are served like the Function does.
    assert "except those that point at the stand-ins, which the sandbox always sets" in serve_help
    assert "ALLOWED_SUBSCRIPTION_IDS" in serve_help and "AUTH_OPENID_CONFIG_URL" in serve_help
    assert "answers 503" in serve_help
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


# --- serve --sandbox: settings, chaining samples, settings for func start --------------------------


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """``python -m bridge serve ARGS`` as a process (stderr kept), SIGINT then kill at the end."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        bridge_command("serve", *args),
        cwd=REPO,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    reader = LineReader(process.stdout)
    try:
        yield process, reader
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def started(reader: LineReader) -> tuple[str, str]:
    """The bridge's URL and the Entra ID stand-in's, once ``serve --sandbox`` is ready."""
    url = reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
    entra = reader.until(r"^\s+Entra ID stand-in:\s+(http://127\.0\.0\.1:\d+)$")[1]
    reader.until(r"^Ctrl-C to stop$")
    return url, entra


def send_samples(url: str, entra: str, *names: str) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """``send`` the bundled samples in one process: its exit code and (status, answer) per file."""
    result = run_bridge("send", *(str(SAMPLES_DIR / n) for n in names), "--url", f"{url}/api/alerts",
                        "--sandbox-entra", entra)
    answers = []
    for line in result.stdout.splitlines():
        status, body = line.split(": ", 1)[1].split(" ", 1)
        answers.append((int(status), json.loads(body)))
    assert len(answers) == len(names), result.stdout + result.stderr
    return result.returncode, answers


def standin_url(reader: LineReader) -> str:
    found = re.search(r"ServiceNow stand-in: (http://127\.0\.0\.1:\d+)", "\n".join(reader.seen))
    assert found is not None, reader.seen
    return found[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def incidents_of(standin_url: str) -> list[dict[str, Any]]:
    """The incidents a ServiceNow stand-in in another process holds (its Table API, basic auth)."""
    with client_session() as http:
        response = http.get(f"{standin_url}/api/now/table/incident", auth=("bridge", "sandbox-password"),
                            timeout=CLIENT_TIMEOUT_SECONDS)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["result"]
    return rows


# The README's table "Sample alerts that chain", in its order: what each answers after the previous.
CHAIN = [
    ("metric_static_fired.testaction.json", "created"),
    ("metric_static_fired.testaction.json", "ignored"),
    ("metric_static_fired_again.sandbox.json", "updated"),
    ("metric_static_resolved.sandbox.json", "resolved"),
    ("log_alerts_v2_fired.sandbox.json", "created"),
    ("activity_log_administrative_fired.testaction.json", "created"),
    ("service_health_incident.testaction.json", "created"),
]


def test_the_bundled_samples_chain_into_one_alerts_story() -> None:
    with serving("--sandbox", "--port", "0") as (_, reader):
        url, entra = started(reader)
        standin = standin_url(reader)

        code, answers = send_samples(url, entra, *(name for name, _ in CHAIN))
        # The documented samples that do not chain, sent after it: what the README says of them.
        _, rest = send_samples(url, entra, "metric_static_resolved.json", "log_alerts_v2_fired.testaction.json")
        incidents = {i["number"]: i for i in incidents_of(standin)}

    assert code == 0
    assert [(status, answer["action"]) for status, answer in answers] == [(200, action) for _, action in CHAIN]
    metric, log = answers[0][1], answers[4][1]
    assert [a["correlationId"] for _, a in answers[:4]] == [metric["correlationId"]] * 4
    assert log["correlationId"] != metric["correlationId"]
    assert len({a["workItem"]["number"] for _, a in answers}) == 4  # metric, log, activity, service health
    assert [(status, answer["action"]) for status, answer in rest] == [(200, "ignored"), (200, "ignored")]
    assert rest[1][1]["correlationId"] == metric["correlationId"]  # the documented log sample reuses its id
    assert incidents[metric["workItem"]["number"]]["state"] == "6"
    assert incidents[log["workItem"]["number"]]["state"] == "1"


def test_serve_sandbox_takes_every_other_setting_from_the_environment_and_settings_file(tmp_path: Path) -> None:
    mapping = tmp_path / "rules.json"
    mapping.write_text(json.dumps({
        "title_template": "[{severity}] {alertRule} (routed)",
        "routing": [{"match": {"resourceGroup": "test-RG"}, "set": {"category": "Sandbox routing"}}],
    }), encoding="utf-8")
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "MAPPING_FILE": str(mapping),
        # These point elsewhere: the sandbox replaces them and says so.
        "AUTH_TENANT_ID": TENANT.replace("5c0f", "0000"),
        "SERVICENOW_INSTANCE_URL": "https://contoso.service-now.com",
        "SERVICENOW_USERNAME": "azure.bridge",
        "SERVICENOW_PASSWORD": PASSWORD,
        "STATE_STORE": "azure",
    }}), encoding="utf-8")
    env = {**child_env(), "ALLOWED_SUBSCRIPTION_IDS": SANDBOX_SUBSCRIPTION}

    with serving("--sandbox", "--port", "0", "--settings", str(settings), env=env) as (_, reader):
        url, entra = started(reader)
        standin = standin_url(reader)
        code, answers = send_samples(url, entra, "metric_static_fired.testaction.json", "metric_static_resolved.json")
        incidents = incidents_of(standin)

    assert (
        "  from the sandbox, not your settings: AUTH_TENANT_ID, SERVICENOW_INSTANCE_URL, SERVICENOW_PASSWORD, "
        "SERVICENOW_USERNAME, STATE_STORE"
    ) in reader.seen
    assert PASSWORD not in "\n".join(reader.seen)
    assert answers[0][0] == 200 and answers[0][1]["action"] == "created"
    # MAPPING_FILE (from the settings file) made the title and routed the category.
    assert [(i["short_description"], i["category"]) for i in incidents] == [
        ("[Sev4] test-metricAlertRule (routed)", "Sandbox routing"),
    ]
    # ALLOWED_SUBSCRIPTION_IDS (from the environment): the placeholder subscription is refused.
    assert answers[1][0] == 403 and code == 1


def test_serve_sandbox_prints_the_settings_a_function_needs(tmp_path: Path) -> None:
    with serving("--sandbox", "--port", "0") as (_, reader):
        _, entra = started(reader)
        standin = standin_url(reader)

    lines = reader.seen
    block = lines[lines.index("{"):lines.index("}") + 1]
    values = json.loads("\n".join(block))
    assert values["SERVICENOW_INSTANCE_URL"] == standin
    assert values["AUTH_OPENID_CONFIG_URL"].startswith(f"{entra}/{values['AUTH_TENANT_ID']}/")
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python" and values["OUTBOX_QUEUE_NAME"] == "outbox"
    assert values["STATE_STORE"] == "sqlite" and values["STATE_SQLITE_PATH"].endswith("state.sqlite3")
    assert values["SERVICENOW_USERNAME"] == values["SERVICENOW_PASSWORD"] == ""
    for name in ("AUTH_TENANT_ID", "AUTH_AUDIENCES", "AUTH_ALLOWED_APP_IDS", "AUTH_REQUIRED_ROLE",
                 "SERVICENOW_CLIENT_ID", "SERVICENOW_CLIENT_SECRET", "ITSM_ADAPTER"):
        assert values[name], name


def test_serve_sandbox_writes_function_settings_on_fixed_ports_and_a_second_bridge_uses_them(
    tmp_path: Path,
) -> None:
    itsm_port, entra_port = free_port(), free_port()
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Host": {"CORS": "*"}, "Values": {
        "CMDB_CACHE_SECONDS": "120", "SERVICENOW_USERNAME": "azure.bridge", "SERVICENOW_INSTANCE_URL": "https://x.y",
    }}), encoding="utf-8")

    with serving("--sandbox", "--port", "0", "--itsm-port", str(itsm_port), "--entra-port", str(entra_port),
                 "--write-settings", str(settings)) as (_, reader):
        url, entra = started(reader)
        written = json.loads(settings.read_text(encoding="utf-8"))
        # The second bridge plays `func start`: only the written file tells it where the stand-ins are.
        with serving("--port", "0", "--settings", str(settings)) as (_, function_reader):
            function_url = function_reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
            _, created = send_samples(function_url, entra, "metric_static_fired.testaction.json")
        # The same stand-ins and state: the sandbox's own bridge resolves what the "Function" created.
        _, resolved = send_samples(url, entra, "metric_static_resolved.sandbox.json")

    assert entra == f"http://127.0.0.1:{entra_port}"
    assert f"  ServiceNow stand-in: http://127.0.0.1:{itsm_port} (" in "\n".join(reader.seen)
    assert any(line.startswith("  func start: wrote the settings") for line in reader.seen)
    assert "{" not in reader.seen  # written, not printed
    values = written["Values"]
    assert written["Host"] == {"CORS": "*"} and values["CMDB_CACHE_SECONDS"] == "120"  # the rest is kept
    assert values["SERVICENOW_INSTANCE_URL"] == f"http://127.0.0.1:{itsm_port}"
    assert values["SERVICENOW_USERNAME"] == ""
    assert values["AUTH_OPENID_CONFIG_URL"].startswith(f"http://127.0.0.1:{entra_port}/")
    assert stat.S_IMODE(settings.stat().st_mode) in (0o600, 0o644) or os.name == "nt"
    assert (created[0][0], created[0][1]["action"]) == (200, "created")
    assert (resolved[0][0], resolved[0][1]["action"]) == (200, "resolved")
    assert resolved[0][1]["workItem"]["number"] == created[0][1]["workItem"]["number"]


# --- serve with bad settings: what the Function does ----------------------------------------------


def test_serve_with_bad_settings_answers_503_misconfigured_like_the_function() -> None:
    with serving("--port", "0") as (process, reader):
        url = reader.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
        reader.until(r"^Ctrl-C to stop$")
        with client_session() as http:
            health = http.get(f"{url}/api/health", timeout=CLIENT_TIMEOUT_SECONDS)
            alert = http.post(f"{url}/api/alerts", data=(SAMPLES_DIR / METRIC_SAMPLE).read_bytes(),
                              headers={"Authorization": "Bearer x"}, timeout=CLIENT_TIMEOUT_SECONDS)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None
        err = process.stderr.read()

    assert health.status_code == 503
    assert health.json()["status"] == "misconfigured" and health.json()["setting"] == "AUTH_TENANT_ID"
    assert alert.status_code == 503 and alert.headers["Retry-After"]
    assert alert.json()["error"]["code"] == "unavailable"
    assert "  misconfigured (AUTH_TENANT_ID): alerts get 503 and /api/health names the setting" in reader.seen
    assert err.startswith("invalid settings: AUTH_TENANT_ID: ")
    assert "Traceback" not in err


# --- failures a user causes: one line, exit 1 (usage: 2) ------------------------------------------


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, starts: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(starts), result.stderr


def test_serve_on_a_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        plain = run_bridge("serve", "--port", str(port))
        sandbox_itsm = run_bridge("serve", "--sandbox", "--port", "0", "--itsm-port", str(port))
        sandbox_entra = run_bridge("serve", "--sandbox", "--port", "0", "--entra-port", str(port))

    assert_one_line(plain, 1, f"serve: cannot listen on 127.0.0.1:{port}: ")
    assert_one_line(sandbox_itsm, 1, f"serve: cannot start the sandbox stand-ins (--itsm-port {port}): ")
    assert_one_line(sandbox_entra, 1, f"serve: cannot start the sandbox stand-ins (--entra-port {port}): ")
    usage = run_bridge("serve", "--port", "70000")
    assert usage.returncode == 2 and "a port is 0 to 65535" in usage.stderr and "Traceback" not in usage.stderr


def test_send_to_a_dead_sandbox_entra_is_one_line_and_exit_1() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    sample = str(SAMPLES_DIR / METRIC_SAMPLE)

    result = run_bridge("send", sample, "--url", f"{dead}/api/alerts", "--sandbox-entra", dead)

    assert_one_line(result, 1, f"send: no token: sandbox Entra ID at {dead} is unreachable (")
    assert result.stdout == ""


def test_send_with_msal_and_no_network_is_one_line_and_exit_1() -> None:
    # No network: every HTTPS request goes to a proxy that is not there (msal uses requests).
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {**child_env(), "HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
           "BRIDGE_SEND_CLIENT_SECRET": CLIENT_SECRET}

    result = run_bridge("send", str(SAMPLES_DIR / METRIC_SAMPLE), "--url", "https://bridge.example.net/api/alerts",
                        "--tenant", TENANT, "--client-id", "test-client", "--scope", "api://bridge/.default", env=env)

    assert_one_line(result, 1, f"send: cannot reach Entra ID at https://login.microsoftonline.com/{TENANT} ")
    assert CLIENT_SECRET not in result.stdout + result.stderr


# --- the READMEs say what the code does ------------------------------------------------------------

README = (REPO / "README.md").read_text(encoding="utf-8")
INFRA_README = (REPO / "infra" / "README.md").read_text(encoding="utf-8")


def readme_section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    level = len(heading.split(" ", 1)[0])
    following = re.search(rf"\n#{{1,{level}}} ", text[start + len(heading) + 2:])
    return text[start: start + len(heading) + 2 + following.start()] if following else text[start:]


def cli_examples(text: str) -> list[list[str]]:
    """The arguments of every ``python -m bridge`` command in the fenced code blocks of ``text``."""
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if "-m bridge " not in line:
                continue
            words = shlex.split(re.sub(r"<[^>]*>", "X", line), comments=True)
            commands.append(words[words.index("bridge") + 1:])
    return commands


def test_the_readmes_cli_examples_parse_with_the_cli() -> None:
    examples = cli_examples(README) + cli_examples(INFRA_README)

    assert len(examples) >= 5
    for words in examples:
        try:
            _parser().parse_args(words)
        except SystemExit as exc:  # pragma: no cover - the message is the test's output
            raise AssertionError(f"README example does not parse: python -m bridge {' '.join(words)}") from exc
    documented = " ".join(" ".join(words) for words in examples)
    for flag in ("--itsm-port", "--entra-port", "--write-settings", "--settings", "--sandbox-entra"):
        assert flag in documented, flag


def test_the_readme_says_to_run_the_cli_in_the_virtual_environment() -> None:
    command_line = readme_section(README, "## Command line")
    intro = command_line.split("| command |", 1)[0]
    assert ". .venv/bin/activate" in intro and ".venv/bin/python -m bridge" in intro
    try_it = README.split("\n---\n", 1)[0]  # what a newcomer reads first
    assert ". .venv/bin/activate" in try_it
    # The send example of the deployment guide runs in it too.
    assert ".venv/bin/python -m bridge send" in INFRA_README


def test_the_readme_tables_the_chaining_samples_in_the_tested_order() -> None:
    rows = re.findall(r"^\| (\d) \| `([^`]+)` \| [^|]+ \| `(\w+)`", README, re.MULTILINE)

    assert [(name, action) for _, name, action in rows] == CHAIN
    documented = set(re.findall(r"`([a-z][\w.]*\.json)`", readme_section(README, "### Sample alerts that chain")))
    assert documented == {p.name for p in SAMPLES_DIR.glob("*.json")}  # every bundled sample is explained


def test_the_readme_http_api_lists_404_and_405_as_the_api_answers_them() -> None:
    api = UnavailableApi("AUTH_TENANT_ID", "AUTH_TENANT_ID: is required")
    assert api.handle(ApiRequest.of("GET", "/api/nothing", {}, b"")).status == 404
    assert api.handle(ApiRequest.of("GET", "/api/alerts", {}, b"")).status == 405

    section = readme_section(README, "## HTTP API")
    assert "404 `" in section and '"not_found"' in section
    assert "405 `method_not_allowed`" in section


def test_the_readme_documents_every_environment_variable_the_cli_reads() -> None:
    assert f"`{SEND_SECRET_VARIABLE}`" in readme_section(README, "## Command line")


def test_the_readme_says_resolutions_carry_no_mapped_fields_and_the_oauth_prerequisites() -> None:
    mapping = readme_section(README, "### Mapping file")
    assert "new work items only" in mapping and "Resolving an existing incident sends only" in mapping
    troubleshooting = [line for line in README.splitlines() if line.startswith("| 502 `ServiceNow 403: Data Policy")]
    assert len(troubleshooting) == 1 and "never the mapped fields" in troubleshooting[0]
    servicenow = readme_section(README, "### ServiceNow (`ITSM_ADAPTER=servicenow`)")
    assert "`glide.oauth.inbound.client.credential.grant_type.enabled`" in servicenow
    assert "Washington DC" in servicenow and "OAuth Application User" in servicenow


def test_a_resolve_sends_none_of_the_mapped_fields(
    start_bridge: Callable[..., Any], snow: ServiceNowStandIn, tmp_path: Path
) -> None:
    """What the README says of resolves: the mapped fields go on the create only."""
    mapping = tmp_path / "fields.json"
    mapping.write_text(json.dumps({"fields": {"category": "Software", "subcategory": "Azure"}}), encoding="utf-8")
    bridge = start_bridge(MAPPING_FILE=str(mapping))

    assert bridge.post_alert(load_sample(METRIC_SAMPLE)).status_code == 200
    resolved = json.loads((SAMPLES_DIR / "metric_static_resolved.sandbox.json").read_text(encoding="utf-8"))
    assert bridge.post_alert(resolved).json()["action"] == "resolved"

    create = [r for r in snow.requests if r.method == "POST" and r.path == "/api/now/table/incident"]
    resolve = [r for r in snow.requests if r.method == "PATCH"]
    assert (create[0].body["category"], create[0].body["subcategory"]) == ("Software", "Azure")
    assert [sorted(r.body) for r in resolve] == [["close_code", "close_notes", "state", "work_notes"]]


def test_the_deployment_guide_grants_the_operator_and_loads_the_outputs_before_send() -> None:
    deployments = [block for block in re.findall(r"```(?:sh|bash)\n(.*?)```", INFRA_README, re.DOTALL)
                   if "az deployment sub create" in block]
    assert len(deployments) >= 2
    for block in deployments:
        assert "principalId=" in block, block
    send_block = [block for block in re.findall(r"```(?:sh|bash)\n(.*?)```", INFRA_README, re.DOTALL)
                  if "-m bridge send" in block]
    assert len(send_block) == 1
    assert send_block[0].index("azd env get-values") < send_block[0].index("-m bridge send")
    assert "--client-secret" not in send_block[0]


def test_the_fixture_readme_names_only_paths_a_clone_has() -> None:
    fixtures = REPO / "tests" / "fixtures" / "alerts"
    text = (fixtures / "README.md").read_text(encoding="utf-8")
    paths = re.findall(r"`((?:[\w.-]+/)+[\w.<> -]*)`", text)
    local = [p for p in paths if not p.startswith("articles/")]  # MicrosoftDocs paths are that repository's

    assert local
    for path in local:
        assert list(REPO.glob(re.sub(r"<[^>]*>", "*", path))), f"{path} is not in the repository"
    listed = set(re.findall(r"^\| ([\w.]+\.json) \|", text, re.MULTILINE))
    assert listed == {p.name for p in fixtures.glob("*.json")}


# --- dev.py: --help, send, Ctrl-C on serve ---------------------------------------------------------

DEV_PY = REPO / "dev.py"


def run_dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and script, fixed arguments
        [sys.executable, str(DEV_PY), *args], cwd=DEV_PY.parent, env=child_env(), capture_output=True, text=True,
        timeout=PROCESS_TIMEOUT_SECONDS, check=False,
    )


def test_dev_py_help_exits_0_and_names_send() -> None:
    result = run_dev("--help")

    assert result.returncode == 0, result.stderr
    assert "python3 dev.py send" in result.stdout
    assert run_dev("no-such-command").returncode == 2


def test_dev_py_send_passes_through_to_python_m_bridge_send() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    result = run_dev("send", str(SAMPLES_DIR / METRIC_SAMPLE), "--url", f"{dead}/api/alerts", "--sandbox-entra", dead)

    assert_one_line(result, 1, f"send: no token: sandbox Entra ID at {dead} is unreachable (")


def test_ctrl_c_on_dev_py_serve_stops_it_cleanly_without_a_traceback() -> None:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and script, fixed arguments
        [sys.executable, str(DEV_PY), "serve", "--port", "0"], cwd=DEV_PY.parent, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert process.stdout is not None and process.stderr is not None
    reader = LineReader(process.stdout)
    try:
        reader.until(r"^Ctrl-C to stop$", timeout=60)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        code = process.wait(timeout=15)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()

    assert code == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "stopping" in reader.rest()
