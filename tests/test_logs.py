"""bridge/logs.py: the command line's log lines, for a person (text) and for a machine (json).

The formatters are fed records built here, with the flat event attributes bridge/api.py and
bridge/worker.py attach (``bridge_event``, ``alertId``, ...); the level tests log through real
loggers into a string; the end-to-end tests run ``python -m bridge serve --sandbox`` as a
process, send a Fired and a Resolved with ``python -m bridge send``, and read its stderr.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.api import ApiRequest
from bridge.cli import _parser, main
from bridge.logs import EVENT_FIELDS, THIRD_PARTY, JsonFormatter, TextFormatter, configure, level_for
from bridge.runtime import build_runtime
from bridge.sandbox.entra import mint_remote
from bridge.sandbox.stack import SAMPLES_DIR, SandboxStack

from .integration.test_demo_and_cli import LineReader, bridge_command, child_env, run_bridge

REPO = Path(__file__).resolve().parents[1]
KEY = "0f6b3cda-6a9b-4a3a-9b8e-3a2f1c0d9e8b"
ALERT_ID = f"/subscriptions/11111111-2222-3333-4444-555555555555/providers/Microsoft.AlertsManagement/alerts/{KEY}"
# 2024-03-05 06:07:08.912 UTC
CREATED = 1709618828.912
CLOCK = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$")


def record(
    msg: str = "alert something happened",
    *args: object,
    level: int = logging.INFO,
    name: str = "bridge.api",
    exc_info: Any = None,
    **fields: object,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)
    made.created = CREATED
    made.msecs = 912.0
    for key, value in fields.items():
        setattr(made, key, value)
    return made


def alert(**overrides: object) -> logging.LogRecord:
    fields: dict[str, object] = {
        "bridge_event": "alert",
        "alertId": ALERT_ID,
        "correlationId": KEY,
        "alertType": "metric",
        "action": "created",
        "delivery": "processed",
        "workItem": "INC0010001",
        "status": 200,
        "durationMs": 38,
        "error": None,
    }
    fields.update(overrides)
    return record(**fields)  # type: ignore[arg-type]


def local_clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + ".912"


def columns(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


# --- text: one line per alert, aligned -------------------------------------------------------------


def test_an_alert_is_one_line_of_columns_a_person_reads() -> None:
    line = TextFormatter().format(alert())

    assert "\n" not in line
    assert columns(line) == [local_clock(CREATED), "alert", "200", "created", "INC0010001", "38 ms", KEY, "metric"]


def test_an_alert_without_action_says_what_its_status_means_and_why() -> None:
    refused = alert(action=None, delivery=None, workItem=None, correlationId=None, alertId=None, alertType=None,
                    status=401, durationMs=2, error="AuthError: the token\nhas expired\x1b[2J")
    queued = alert(action=None, delivery="queued", workItem=None, status=202, durationMs=5003)
    odd = alert(action=None, delivery=None, workItem=None, status=418, durationMs=1, error="Boom: what")

    assert columns(TextFormatter().format(refused))[1:] == [
        "alert", "401", "denied", "-", "2 ms", "-", "AuthError: the token has expired [2J"]
    assert columns(TextFormatter().format(queued))[1:] == [
        "alert", "202", "queued", "-", "5003 ms", KEY, "metric"]
    assert columns(TextFormatter().format(odd))[3] == "error"


def test_an_outbox_pass_shows_its_attempt_instead_of_a_status() -> None:
    line = TextFormatter().format(
        alert(bridge_event="outbox", status=None, attempt=3, action="resolved", durationMs=120.4, name="bridge.worker")
    )

    assert columns(line)[1:] == ["outbox", "#3", "resolved", "INC0010001", "120 ms", KEY, "metric"]


def test_alert_lines_keep_their_columns_aligned_whatever_the_values() -> None:
    lines = [
        TextFormatter().format(alert()),
        TextFormatter().format(alert(action=None, delivery=None, workItem=None, status=503, durationMs=12345)),
        TextFormatter().format(alert(bridge_event="outbox", status=None, attempt=12, action="updated",
                                     workItem="OPS-7", durationMs=0)),
    ]

    for anchor in (" ms  ", "  alert", ):
        found = {line.find(anchor) for line in lines if anchor in line}
        assert len(found) == 1, (anchor, lines)
    # The action and work item start where they start on every other line.
    starts = {line.index(word) for line, word in zip(lines, ("created", "unavailable", "updated"), strict=True)}
    assert len(starts) == 1, lines
    items = {line.index(word) for line, word in zip(lines, ("INC0010001", "-  ", "OPS-7"), strict=True)}
    assert len(items) == 1, lines


def test_without_a_correlation_key_the_alert_ids_last_segment_stands_in() -> None:
    line = TextFormatter().format(alert(correlationId=None, alertType=None))

    assert columns(line)[-1] == KEY


def test_any_other_record_is_time_level_logger_message_with_its_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        exc_info = sys.exc_info()
    plain = TextFormatter().format(record("loaded %d signing keys", 2, name="bridge.auth"))
    failed = TextFormatter().format(record("outbox: unexpected failure", level=logging.ERROR,
                                           name="bridge.worker", exc_info=exc_info))

    assert plain == f"{local_clock(CREATED)}  INFO     bridge.auth: loaded 2 signing keys"
    first, *rest = failed.splitlines()
    assert first == f"{local_clock(CREATED)}  ERROR    bridge.worker: outbox: unexpected failure"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: bad value"


def test_a_record_whose_arguments_do_not_fit_still_makes_a_line() -> None:
    line = TextFormatter().format(record("two %s %s", "one"))

    assert "bridge.api: two %s %s ('one',)" in line


# --- json: one object per line ---------------------------------------------------------------------


def test_json_alert_has_time_level_logger_message_and_every_field_present() -> None:
    line = JsonFormatter().format(alert(error=None, message_extra="not a bridge field"))

    assert "\n" not in line
    document = json.loads(line)
    assert document == {
        "time": "2024-03-05T06:07:08.912Z",
        "level": "INFO",
        "logger": "bridge.api",
        "message": "alert something happened",
        "bridge_event": "alert",
        "alertId": ALERT_ID,
        "correlationId": KEY,
        "alertType": "metric",
        "action": "created",
        "delivery": "processed",
        "workItem": "INC0010001",
        "status": 200,
        "durationMs": 38,
    }


def test_json_outbox_pass_carries_its_attempt_and_error() -> None:
    document = json.loads(JsonFormatter().format(
        alert(bridge_event="outbox", status=None, attempt=2, action=None, delivery="queued", workItem=None,
              error="ItsmError: 503 from the ITSM", level=logging.WARNING, name="bridge.worker")
    ))

    assert document["bridge_event"] == "outbox" and document["attempt"] == 2
    assert document["level"] == "WARNING" and document["error"] == "ItsmError: 503 from the ITSM"
    assert "status" not in document and "workItem" not in document and "action" not in document


def test_json_other_record_with_an_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()

    document = json.loads(JsonFormatter().format(record("failed %s", "here", level=logging.ERROR,
                                                        name="bridge.worker", exc_info=exc_info)))

    assert document["message"] == "failed here" and document["logger"] == "bridge.worker"
    assert document["exc"].startswith("Traceback") and document["exc"].endswith("RuntimeError: boom")
    assert not set(EVENT_FIELDS) & set(document)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_json_never_fails_on_values_json_cannot_hold() -> None:
    circular: list[object] = []
    circular.append(circular)
    cases = {
        "object": alert(workItem=object()),
        "nan": alert(durationMs=math.nan),
        "circular": alert(error=circular),
        "unprintable": alert(workItem=Unprintable()),
        "bad args": record("%d items", "not a number"),
        "bytes": alert(alertType=b"\xff\x00"),
    }

    for name, made in cases.items():
        document = json.loads(JsonFormatter().format(made))  # strict JSON: NaN would not parse back
        assert document["level"] == "INFO", name
    assert json.loads(JsonFormatter().format(cases["nan"]))["durationMs"] == "nan"
    assert json.loads(JsonFormatter().format(cases["unprintable"]))["workItem"] == "<unprintable Unprintable>"


def test_text_never_fails_either() -> None:
    line = TextFormatter().format(alert(workItem=Unprintable(), durationMs="slow", status="?"))

    assert columns(line)[1:5] == ["alert", "?", "created", "<unprintable Unprintable>"]
    assert "- ms" in line


# --- levels: what is shown by default, with -v, with -vv -------------------------------------------


def log_everything() -> None:
    bridge_api = logging.getLogger("bridge.api")
    bridge_api.info("alert key=value", extra={"bridge_event": "alert", "action": "created", "status": 200,
                                              "workItem": "INC0010001", "durationMs": 5})
    logging.getLogger("bridge.worker").info("outbox key=value", extra={"bridge_event": "outbox", "attempt": 1,
                                                                       "action": "updated"})
    logging.getLogger("bridge.reconcile").info("correlationId=k created INC0010001 (bridge info)")
    logging.getLogger("bridge.server").debug("bridge debug line")
    logging.getLogger("bridge.worker").warning("bridge warning line")
    logging.getLogger("urllib3.connectionpool").debug("urllib3 debug line")
    logging.getLogger("urllib3.connectionpool").warning("urllib3 warning line")
    logging.getLogger("urllib3.connectionpool").error("urllib3 error line")
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("azure info line")
    logging.getLogger("azure.storage").warning("azure warning line")
    logging.getLogger("msal.application").debug("msal debug line")
    logging.getLogger("someone.else").info("someone info line")


def shown(level: Any) -> str:
    """What ``configure(level)`` lets through of :func:`log_everything`."""
    stream = io.StringIO()
    restore = configure(level, "text", stream)
    try:
        log_everything()
    finally:
        restore()
    return stream.getvalue()


def test_default_info_shows_one_line_per_alert_and_pass_and_what_warns() -> None:
    out = shown("info")

    assert re.search(r"  alert   200   created", out) and re.search(r"  outbox  #1    updated", out)
    assert "bridge warning line" in out and "azure warning line" in out and "urllib3 error line" in out
    for absent in ("bridge info", "bridge debug", "urllib3 debug", "urllib3 warning", "azure info", "msal debug",
                   "someone info"):
        assert absent not in out, absent
    assert len(out.splitlines()) == 5


def test_v_adds_the_bridges_debug_not_urllib3s() -> None:
    out = shown("debug")

    assert "bridge debug line" in out and "bridge info" in out and "  alert   200" in out
    for absent in ("urllib3 debug", "urllib3 warning", "azure info", "msal debug", "someone info"):
        assert absent not in out, absent


def test_vv_shows_everyone() -> None:
    out = shown("all")

    for present in ("bridge debug", "urllib3 debug", "urllib3 warning", "azure info", "msal debug", "someone info"):
        assert present in out, present


def test_warning_keeps_other_commands_output_to_what_went_wrong() -> None:
    out = shown("warning")

    assert "  alert  " not in out and "outbox  #1" not in out
    assert out.count("\n") == 3  # the bridge's warning, azure's warning, urllib3's error


def test_configure_twice_replaces_its_handler_and_restore_undoes_everything() -> None:
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in ("", "bridge", *THIRD_PARTY)}
    first, second = io.StringIO(), io.StringIO()

    restore_first = configure("info", "text", first)
    restore_second = configure("debug", "json", second)
    logging.getLogger("bridge.x").debug("once")
    restore_second()
    restore_first()

    assert first.getvalue() == "" and json.loads(second.getvalue())["message"] == "once"
    assert root.handlers == handlers
    assert {name: logging.getLogger(name).level for name in levels} == levels


def test_dash_v_counts_into_a_level() -> None:
    assert [level_for(n, "info") for n in (0, 1, 2, 3)] == ["info", "debug", "all", "all"]
    assert level_for(0, "warning") == "warning"
    args = _parser().parse_args(["-vv", "serve", "--log-format", "json"])
    assert args.verbose == 2 and args.log_format == "json"
    assert _parser().parse_args(["serve"]).log_format == "text"
    after = _parser().parse_args(["-v", "serve", "-v"])
    assert after.verbose + after.serve_verbose == 2
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--log-format", "xml"])


def test_main_leaves_logging_as_it_found_it(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    urllib3 = logging.getLogger("urllib3").level

    with pytest.raises(SystemExit):
        main(["check-config", "--settings", "/nonexistent/local.settings.json"])
    main(["-v", "send", "/nonexistent/alert.json", "--url", "http://127.0.0.1:9/api/alerts", "--token-env", "HOME"])

    assert root.handlers == handlers and root.level == level
    assert logging.getLogger("urllib3").level == urllib3
    capsys.readouterr()


# --- end to end: serve --sandbox as a process --------------------------------------------------------

FIRED = SAMPLES_DIR / "metric_static_fired.testaction.json"
RESOLVED = SAMPLES_DIR / "metric_static_resolved.sandbox.json"
ALERT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}  alert ")


def serve_and_send(*options: str) -> tuple[list[dict[str, Any]], list[str], str]:
    """Start ``serve --sandbox`` with ``options``, send a Fired then a Resolved with a token
    minted here, stop it: the two answers, stderr's lines, and the token (to look for)."""
    split = options.index("serve")
    command = bridge_command(*options[:split], "serve", "--sandbox", "--port", "0", *options[split + 1:])
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = LineReader(process.stdout), LineReader(process.stderr)
    try:
        url = out.until(r"^bridge \S+ serving (http://127\.0\.0\.1:\d+)/api/alerts and ")[1]
        entra = out.until(r"^\s+Entra ID stand-in:\s+(http://127\.0\.0\.1:\d+)$")[1]
        out.until(r"^Ctrl-C to stop$")
        token = mint_remote(entra)
        env = {**child_env(), "LOGS_TEST_TOKEN": token}
        sent = run_bridge("send", str(FIRED), str(RESOLVED), "--url", f"{url}/api/alerts",
                          "--token-env", "LOGS_TEST_TOKEN", env=env)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        answers = [json.loads(line.split(" 200 ", 1)[1]) for line in sent.stdout.splitlines()]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    lines = err.rest()
    process.stdout.close()
    process.stderr.close()
    return answers, lines, token


def assert_no_secret(lines: list[str], token: str) -> None:
    text = "\n".join(lines)
    assert token not in text and token.split(".")[2] not in text
    assert "sandbox-password" not in text and "sandbox-secret" not in text and "Bearer" not in text


@pytest.mark.integration
def test_serve_prints_one_text_line_per_alert_with_action_and_work_item() -> None:
    answers, lines, token = serve_and_send("serve")

    assert [a["action"] for a in answers] == ["created", "resolved"]
    number = answers[0]["workItem"]["number"]
    assert number.startswith("INC") and answers[1]["workItem"]["number"] == number
    assert len(lines) == 2 and all(ALERT_LINE.match(line) for line in lines), lines
    for line, action in zip(lines, ("created", "resolved"), strict=True):
        cells = columns(line)
        assert cells[1:5] == ["alert", "200", action, number], line
        assert cells[5].endswith(" ms") and cells[6] == answers[0]["correlationId"], line
    assert_no_secret(lines, token)


@pytest.mark.integration
def test_serve_log_format_json_is_one_object_per_line_with_the_alerts_fields() -> None:
    answers, lines, token = serve_and_send("serve", "--log-format", "json")

    documents = [json.loads(line) for line in lines]  # every line is JSON
    alerts = [d for d in documents if d.get("bridge_event") == "alert"]
    assert len(alerts) == 2 == len(documents), lines
    number = answers[0]["workItem"]["number"]
    for document, answer in zip(alerts, answers, strict=True):
        assert document["action"] == answer["action"] and document["workItem"] == number
        assert document["alertId"] == answer["alertId"] and document["correlationId"] == answer["correlationId"]
        assert document["status"] == 200 and document["delivery"] == "processed"
        assert isinstance(document["durationMs"], int) and document["level"] == "INFO"
        assert document["logger"] == "bridge.api" and document["time"].endswith("Z")
    assert_no_secret(lines, token)


@pytest.mark.integration
def test_serve_dash_v_adds_the_bridges_debug_but_no_urllib3_flood() -> None:
    answers, lines, token = serve_and_send("serve", "-v")

    assert [a["action"] for a in answers] == ["created", "resolved"]
    assert sum(1 for line in lines if ALERT_LINE.match(line)) == 2
    assert any(" DEBUG    bridge." in line for line in lines), lines
    assert not any("urllib3" in line or "connectionpool" in line for line in lines), lines
    assert_no_secret(lines, token)


@pytest.mark.integration
def test_serve_json_with_bad_settings_keeps_stderr_all_json() -> None:
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        bridge_command("serve", "--port", "0", "--log-format", "json"),
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    out = LineReader(process.stdout)
    try:
        out.until(r"^Ctrl-C to stop$")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()

    documents = [json.loads(line) for line in err.splitlines()]
    assert len(documents) == 1, err
    assert documents[0]["level"] == "ERROR" and documents[0]["logger"] == "bridge.cli"
    assert documents[0]["message"].startswith("invalid settings: AUTH_TENANT_ID: ")


class Kept(logging.Handler):
    """Keeps the records it is handed (to format them again, as json)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.integration
def test_an_alert_the_itsm_could_not_take_reads_queued_then_created_by_the_outbox(tmp_path: Path) -> None:
    """The real records of the alerts route and of an outbox pass (bridge/api.py, bridge/reconcile.py):
    ServiceNow answers 503 until the alert is queued, then recovers and one outbox pass creates the
    incident. What the default level shows, as text; the same records as json."""
    text, kept = io.StringIO(), Kept()
    with SandboxStack() as stack:
        runtime = build_runtime(stack.bridge_env(STATE_SQLITE_PATH=str(tmp_path / "state.sqlite3")),
                                sleep=lambda _: None)
        restore = configure("info", "text", text)
        logging.getLogger().addHandler(kept)
        try:
            stack.servicenow.faults.status(503, path=r"^/api/now/table/incident")
            answer = runtime.api.handle(ApiRequest.of(
                "POST", "/api/alerts", {"Authorization": f"Bearer {stack.token()}"}, FIRED.read_bytes()))
            stack.servicenow.faults.clear()
            # Due now rather than after its back-off (what `outbox replay` does), then one pass.
            runtime.reconciler.replay(str(answer.body["correlationId"]))
            runtime.reconciler.run(str(answer.body["correlationId"]))
        finally:
            logging.getLogger().removeHandler(kept)
            restore()
            runtime.close()

    assert answer.status == 202, answer.body
    key = answer.body["correlationId"]
    lines = text.getvalue().splitlines()
    # The inline retries warn (the ITSM's answer is the reason the alert waits), then the two events.
    retries, (queued, created) = lines[:-2], lines[-2:]
    assert retries and all(" WARNING  bridge.retry: " in line and "503" in line for line in retries), lines
    assert columns(queued)[1:5] == ["alert", "202", "queued", "-"] and columns(queued)[6:8] == [key, "metric"]
    cells = columns(created)
    assert cells[1] == "outbox" and re.fullmatch(r"#\d+", cells[2]) and cells[3] == "created", created
    assert cells[4].startswith("INC") and cells[6:8] == [key, "metric"], created
    events = [json.loads(JsonFormatter().format(r)) for r in kept.records if hasattr(r, "bridge_event")]
    assert [(e["bridge_event"], e.get("delivery"), e.get("action")) for e in events] == [
        ("alert", "queued", None), ("outbox", "processed", "created")]
    assert events[1]["correlationId"] == key and events[1]["workItem"] == cells[4]
    assert events[1]["logger"] == "bridge.reconcile" and isinstance(events[1]["attempt"], int)


def test_warning_leaves_the_bridge_logger_unset_so_telemetry_can_still_take_its_info() -> None:
    stream = io.StringIO()
    restore = configure("warning", "text", stream)
    bridge = logging.getLogger("bridge")
    try:
        assert bridge.level == logging.NOTSET
        bridge.setLevel(logging.INFO)  # what bridge/otel.py does to an unset bridge logger
        logging.getLogger("bridge.api").info("alert", extra={"bridge_event": "alert", "status": 200})
        logging.getLogger("bridge.api").warning("still shown")
    finally:
        restore()

    assert stream.getvalue().endswith("bridge.api: still shown\n") and stream.getvalue().count("\n") == 1
