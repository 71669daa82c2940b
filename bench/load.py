"""The client side of the end-to-end parts: one way to send an alert to the bridge, one way to
write the equivalent incident straight to the stand-in (a *bare write*), and senders in threads.

Both paths use the same client: a ``requests.Session`` per sender with its defaults, bodies
serialised before the clock starts, JSON content type. A bare write is the bridge's own create
body (taken from the stand-in after a warm-up alert) with another correlation id, sent to the
same Table API URL with the same query; so the difference between the two is the bridge.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from bench.alerts import body as alert_body
from bench.alerts import new_key
from bench.procs import StandIns

__all__ = ["Answer", "BareWriter", "BridgeSender", "new_session", "run_senders", "warm_up"]

_T = TypeVar("_T")
_TIMEOUT = 30.0


def new_session() -> requests.Session:
    return requests.Session()


@dataclass(frozen=True)
class Answer:
    """One request's outcome: when it was sent and answered (``time.monotonic``), and what came back."""

    key: str
    status: int
    started: float
    ended: float
    action: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class BridgeSender:
    """POST /api/alerts with the sandbox token, as an action group would."""

    def __init__(self, bridge_url: str, token: str) -> None:
        self._url = f"{bridge_url}/api/alerts"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(self, session: requests.Session, job: tuple[str, bytes]) -> Answer:
        key, data = job
        started = time.monotonic()
        try:
            response = session.post(self._url, data=data, headers=self._headers, timeout=_TIMEOUT)
        except requests.RequestException:
            return Answer(key, 0, started, time.monotonic())
        ended = time.monotonic()
        action = None
        if response.status_code == 200:
            action = response.json().get("action")
        elif response.status_code == 202:
            action = "queued"
        return Answer(key, response.status_code, started, ended, action)


class BareWriter:
    """The bridge's create body for another key, straight to the stand-in's Table API."""

    def __init__(self, standins: StandIns, template: dict[str, Any]) -> None:
        self._url = f"{standins.servicenow_url}/api/now/table/incident"
        user, password = standins.basic
        credential = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers = {"Authorization": f"Basic {credential}", "Content-Type": "application/json"}
        self._template = template

    def job(self, key: str) -> tuple[str, bytes]:
        return key, json.dumps({**self._template, "correlation_id": key}).encode("utf-8")

    def send(self, session: requests.Session, job: tuple[str, bytes]) -> Answer:
        key, data = job
        started = time.monotonic()
        try:
            response = session.post(
                self._url, params={"sysparm_fields": "sys_id,number"}, data=data, headers=self._headers,
                timeout=_TIMEOUT,
            )
        except requests.RequestException:
            return Answer(key, 0, started, time.monotonic())
        return Answer(key, response.status_code, started, time.monotonic(), "created")


def warm_up(standins: StandIns, sender: BridgeSender, count: int = 5) -> BareWriter:
    """A few alerts through the bridge (keys fetched, OAuth token and CMDB cached, connections
    open), then a bare writer built from the bridge's own create body."""
    with new_session() as session:
        for _ in range(count):
            key = new_key()
            answer = sender.send(session, (key, alert_body(key)))
            if answer.status not in (200, 202):
                raise RuntimeError(f"the bridge answered a warm-up alert {answer.status}")
            standins.wait_created([key], timeout=30)
    template = standins.stats()["last_create"]
    if not isinstance(template, dict):
        raise RuntimeError("the stand-in saw no incident created by the bridge")
    writer = BareWriter(standins, template)
    with new_session() as session:
        for _ in range(count):
            writer.send(session, writer.job(f"bare-{new_key()}"))
    return writer


def run_senders(
    senders: int, jobs: Sequence[_T], send: Callable[[requests.Session, _T], Answer]
) -> tuple[list[Answer], float]:
    """Send every job from ``senders`` threads (each its own session, each taking the next job
    as soon as it has its answer); returns the answers and when the first could be sent."""
    answers: list[Answer] = []
    lock = threading.Lock()
    counter = itertools.count()
    gate = threading.Barrier(senders + 1)

    def sender() -> None:
        with new_session() as session:
            gate.wait()
            mine: list[Answer] = []
            while (index := next(counter)) < len(jobs):
                mine.append(send(session, jobs[index]))
            with lock:
                answers.extend(mine)

    threads = [threading.Thread(target=sender, name=f"sender-{n}", daemon=True) for n in range(senders)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    return answers, started
