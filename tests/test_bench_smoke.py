"""The benchmark suite runs: ``python bench/run.py --quick`` measures and prints every figure.

It asserts that the suite works (every part ran, every figure has a value and a verdict, the
stand-ins and the bridge took every alert, no credential reached the output), never how fast
anything is: speeds are the suite's to print, not a test's to judge.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

# What the table asks for, by part: each must be among the printed figures.
EXPECTED = {
    "itsm_calls": [
        "ITSM calls: new Fired",
        "ITSM calls: identical Fired (redelivery)",
        "ITSM calls: Fired, new payload",
        "ITSM calls: Resolved",
        "ITSM calls: identical Resolved (redelivery)",
        "ITSM calls: Resolved before any Fired",
        "ITSM calls: its Fired, late",
    ],
    "serial": [
        "bridge: POST until the incident exists",
        "bare write (same client, same stand-in)",
        "ratio bare / bridge",
    ],
    "storm": [
        "bridge: alerts/s until every incident exists",
        "bare writes/s (same senders, same stand-in)",
        "ratio bridge / bare",
        "bridge answers p50",
        "bridge answers p99",
        "stand-in alone (latency 0): capacity",
        "incidents missing / duplicated",
    ],
    "inprocess": [
        "floor: RS256 signature check p99",
        "token verify (keys cached) p99",
        "parse p99",
        "correlate + fingerprint p99",
        "map to a work item p99",
        "reconcile: record + decide + write (dict ITSM, SQLite) p99",
        "whole request: BridgeApi.handle (dict ITSM, SQLite) p50",
        "whole request: BridgeApi.handle (dict ITSM, SQLite) p99",
    ],
    "memory": ["bridge peak RSS after 1,000 alerts"],
    "cold_import": ["import function_app, as deployed", "floor: import azure.functions, requests, jwt",
                    "ratio deployed / floor"],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    results = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(results.read_text(encoding="utf-8"))


def test_the_machine_comes_first(run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, results = run
    first = done.stdout.splitlines()[0]
    assert re.match(r"machine: \d+ CPU\(s\), CPython 3\.\d+\.\d+", first), first
    assert results["machine"]["cpus"] >= 1
    assert results["options"]["quick"] is True


def test_every_figure_is_measured_and_printed_with_its_verdict(
    run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, results = run
    figures = {(f["part"], f["name"]): f for f in results["figures"]}
    for part, names in EXPECTED.items():
        assert results["parts"][part]["seconds"] > 0
        for name in names:
            assert (part, name) in figures, (part, name)
    # The table's columns are separated by two spaces or more; the last table is the summary.
    rows = [re.split(r"\s{2,}", line.strip()) for line in done.stdout.splitlines()]
    for (part, name), figure in figures.items():
        assert isinstance(figure["value"], int | float) and math.isfinite(figure["value"]), (name, figure)
        assert figure["verdict"] in (("pass", "FAIL") if figure["target"] else ("-",)), figure
        printed = [row for row in rows if row[:2] == [part, name]]
        assert len(printed) == 1 and figure["verdict"] in printed[0][2:], (name, printed)


def test_every_alert_became_exactly_one_incident(run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, results = run
    storm, serial, memory = results["parts"]["storm"], results["parts"]["serial"], results["parts"]["memory"]
    assert storm["missing"] == 0 and storm["duplicates"] == 0
    for part in (storm, serial):
        # Processed inline or queued, never refused: a crashed bridge must not pass for a fast one.
        assert sum(part["statuses"].values()) == part["alerts"], part["statuses"]
        assert all(status.split()[0] in ("200", "202") for status in part["statuses"]), part["statuses"]
    assert set(memory["statuses"]) <= {"200", "202"} and sum(memory["statuses"].values()) == memory["alerts"] == 1000
    # The bridge's calls are counted apart from the suite's own bare writes.
    assert not any(name.startswith("bare ") for name in storm["itsm_calls"])
    assert storm["itsm_calls"].get("POST incident") == storm["alerts"]
    events = {e["event"]: e for e in results["parts"]["itsm_calls"]["events"]}
    assert events["identical Fired (redelivery)"]["answer"] == "200 ignored"
    assert events["Resolved"]["answer"] == "200 resolved"


def test_no_credential_reaches_the_output(run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, results = run
    text = done.stdout + done.stderr + json.dumps(results)
    assert "sandbox-password" not in text
    assert "sandbox-secret" not in text
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text)  # a JWT
