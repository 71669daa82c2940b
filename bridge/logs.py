"""Logging for the command line: what ``serve`` (and the other commands) write to stderr.

A person watching ``serve`` wants one line per alert, not the HTTP chatter of every library;
a machine wants one JSON object per line. The per-alert and per-outbox-pass records carry
flat attributes (``bridge_event``, ``alertId``, ``action``, ...: :data:`EVENT_FIELDS`); the
formatters read those, never the message text, so a reworded message changes nothing here.

Levels, from quiet to loud:

``warning``  warnings and errors only (the demo, which prints its own report; send; outbox)
``info``     plus one line per alert and per outbox pass (``serve``'s default); the bridge's
             other INFO records (a created work item, loaded signing keys) repeat what that
             line says, so they wait for ``debug``
``debug``    plus everything the bridge logs (``-v``); other libraries still only warn
``all``      everyone at DEBUG, urllib3 and the Azure SDK included (``-vv``)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

from . import telemetry

__all__ = ["EVENT_FIELDS", "Format", "JsonFormatter", "Level", "TextFormatter", "configure", "level_for"]

Level = Literal["warning", "info", "debug", "all"]
Format = Literal["text", "json"]

# The flat attributes an alert or outbox record carries (bridge.telemetry.log_event); absent or
# None means "not known for this one".
EVENT_FIELDS = telemetry.EVENT_FIELDS

# Loggers of other libraries and the level they keep below ``all``. urllib3 stays at ERROR: its
# "Retrying ... after connection broken" warnings would precede every one-line error the
# commands report (msal retries on its own), and say nothing the bridge's own line does not.
THIRD_PARTY: Mapping[str, int] = {
    "urllib3": logging.ERROR,
    "requests": logging.WARNING,
    "msal": logging.WARNING,
    "azure": logging.WARNING,
    "azure.core.pipeline": logging.WARNING,
    "opentelemetry": logging.WARNING,
}

# What an answer's status means, for an alert line that has no action (it was refused or failed).
_STATUS_WORDS: Mapping[int, str] = {
    400: "invalid",
    401: "denied",
    403: "forbidden",
    404: "not-found",
    405: "not-allowed",
    413: "too-large",
    502: "rejected",
    503: "unavailable",
}
_MAX_ERROR_CHARS = 300


def level_for(verbosity: int, default: Level) -> Level:
    """``-v`` counted: none keeps the command's default, one is the bridge's debug, two is all."""
    if verbosity >= 2:
        return "all"
    if verbosity == 1:
        return "debug"
    return default


# --------------------------------------------------------------------------------- formatting


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event fields the record carries (None and absent alike left out)."""
    found = {}
    for name in EVENT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            found[name] = value
    return found


def _message(record: logging.LogRecord) -> str:
    """The record's message; a call whose arguments do not fit its format still says something."""
    try:
        return record.getMessage()
    except Exception:
        return f"{_safe_str(record.msg)} {_safe_str(record.args)}"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _one_line(value: object, limit: int | None = None) -> str:
    """A value fit for one column of one terminal line: control characters (a newline that would
    forge a second line, an escape sequence from an alert's text) become spaces."""
    text = " ".join("".join(c if c.isprintable() else " " for c in _safe_str(value)).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class TextFormatter(logging.Formatter):
    """For a terminal. An alert (or outbox pass), in aligned columns::

        14:03:07.412  alert   200  created      INC0010001        38 ms  0f6b3cda-...  metric
        14:03:09.101  alert   401  denied       -                  2 ms  -  AuthError: the token has expired
        14:03:12.730  outbox  #2   created      INC0010002       120 ms  0f6b3cda-...  metric

    time, where it came from (an HTTP answer, or the outbox worker and its attempt), the answer's
    status, what was done (the action; else queued/rejected; else what the status means), the
    work item, how long it took, the correlation key (what ``outbox replay`` takes) and the alert
    type, then the error when there is one. Any other record: ``time LEVEL logger: message``.
    """

    def format(self, record: logging.LogRecord) -> str:
        try:
            fields = _fields(record)
            if "bridge_event" in fields:
                return self._event_line(record, fields)
            return self._plain_line(record)
        except Exception:  # a log line must never take the bridge down
            return f"{_clock(record)}  {record.levelname:<7}  {record.name}: (unformattable record)"

    def _plain_line(self, record: logging.LogRecord) -> str:
        line = f"{_clock(record)}  {record.levelname:<7}  {record.name}: {_message(record)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line

    @staticmethod
    def _event_line(record: logging.LogRecord, fields: Mapping[str, Any]) -> str:
        source = _one_line(fields["bridge_event"], 6)
        status = fields.get("status")
        if status is not None:
            where = _one_line(status, 4)
        elif fields.get("attempt") is not None:
            where = "#" + _one_line(fields["attempt"], 3)
        else:
            where = "-"
        outcome = fields.get("action") or fields.get("delivery")
        if outcome is None:
            word = _STATUS_WORDS.get(status) if isinstance(status, int) else None
            outcome = word or ("error" if "error" in fields else "-")
        item = fields.get("workItem", "-")
        duration = fields.get("durationMs")
        took = f"{round(duration):>6} ms" if isinstance(duration, int | float) else "     - ms"
        key = fields.get("correlationId") or _tail(fields.get("alertId"))
        columns = [
            _clock(record),
            f"{source:<6}",
            f"{where:<4}",
            f"{_one_line(outcome, 12):<12}",
            f"{_one_line(item, 40):<14}",
            took,
            _one_line(key, 64) if key else "-",
        ]
        if "alertType" in fields:
            columns.append(_one_line(fields["alertType"], 40))
        if "error" in fields:
            columns.append(_one_line(fields["error"], _MAX_ERROR_CHARS))
        return "  ".join(columns).rstrip()


def _tail(alert_id: object) -> str | None:
    """The last path segment of an alertId (its GUID), when there is no correlation key."""
    if alert_id is None:
        return None
    text = _safe_str(alert_id).rstrip("/")
    return text.rsplit("/", 1)[-1] or None


def _clock(record: logging.LogRecord) -> str:
    # Local time: it is read against the clock on the wall of the person watching.
    return time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    every event field the record carries (same names as on the record), ``exc`` for an
    exception. A value JSON cannot hold is written as its text, so a record is never lost."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        document.update(_fields(record))
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(document, default=_safe_str, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            # NaN, a circular structure, a str() that returns no str: each value as its text.
            return json.dumps({k: v if isinstance(v, str | int | bool) else _safe_str(v) for k, v in document.items()},
                              ensure_ascii=False)


# --------------------------------------------------------------------------------- set-up


class _CliHandler(logging.StreamHandler[IO[str]]):
    """The handler :func:`configure` installs (so a second call replaces it, not adds one)."""


def _events_and_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or getattr(record, "bridge_event", None) is not None


def configure(level: Level = "info", fmt: Format = "text", stream: IO[str] | None = None) -> Callable[[], None]:
    """Send log records to ``stream`` (stderr) at ``level`` in ``fmt``; returns what undoes it
    (``main`` runs in-process in tests, and must leave the logging as it found it)."""
    root = logging.getLogger()
    bridge = logging.getLogger("bridge")
    touched = [root, bridge, *(logging.getLogger(name) for name in THIRD_PARTY)]
    before = [(logger, logger.level) for logger in touched]
    replaced = [h for h in root.handlers if isinstance(h, _CliHandler)]
    for old in replaced:
        root.removeHandler(old)

    handler = _CliHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if level == "info":
        handler.addFilter(_events_and_warnings)
    elif level == "warning":
        # On the handler, not the bridge logger: telemetry (bridge/otel.py) raises an unset bridge
        # logger to INFO so that App Insights still gets one record per alert.
        handler.setLevel(logging.WARNING)
    root.addHandler(handler)

    root.setLevel(logging.DEBUG if level == "all" else logging.WARNING)
    bridge.setLevel({"warning": logging.NOTSET, "info": logging.INFO}.get(level, logging.DEBUG))
    for name, quiet in THIRD_PARTY.items():
        logging.getLogger(name).setLevel(logging.NOTSET if level == "all" else quiet)

    def restore() -> None:
        root.removeHandler(handler)
        handler.flush()
        for old in replaced:
            root.addHandler(old)
        for logger, previous in before:
            logger.setLevel(previous)

    return restore
