"""The embedded state backend: one SQLite file that several processes on one machine may share.

WAL lets readers and the one writer proceed together; every write is a ``BEGIN IMMEDIATE``
transaction, so it takes the write lock up front and waits (busy timeout) instead of failing
half-way. A record's ``due`` column is the outbox itself, written in the same transaction as the
record: there is no window in which a record is pending but nobody would look at it.

WAL needs one host: never put the file on a network share (Azure Files included), which is why
this backend is refused when the bridge runs in Azure.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .base import DueWork, StateConflict, StateUnavailable, Versioned
from .record import Record

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    due REAL,
    leased_until REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_due ON records(due) WHERE due IS NOT NULL;
CREATE TABLE IF NOT EXISTS payloads (
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (key, fingerprint)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_BUSY_TIMEOUT_SECONDS = 10.0
# About 64 MiB of WAL at 4 KiB pages before a commit checkpoints by itself (see maintain()).
WAL_AUTOCHECKPOINT_PAGES = 16384
_INSERT = "INSERT INTO records (key, version, doc, due, updated) VALUES (?, 1, ?, ?, ?)"
# Conditional on the version read: the statement itself is the compare-and-swap.
_REPLACE = "UPDATE records SET version = version + 1, doc = ?, due = ?, updated = ? WHERE key = ? AND version = ?"


class SqliteStore:
    """:class:`~bridge.state.base.StateStore` in a SQLite file (``":memory:"`` for a private one)."""

    name: ClassVar[str] = "sqlite"

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = str(path)
        self._clock = clock
        # One connection per store, serialised by a lock: every statement is short, and SQLite
        # admits one writer at a time anyway. Processes coordinate through the file's locks.
        self._lock = threading.RLock()
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            if self._path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                # The WAL is copied back into the file by maintain() (the outbox worker, about
                # once a second), not by whichever commit crosses SQLite's 1,000 pages: that copy
                # cost the request that made it 2 ms. The automatic one stays, far higher, as a
                # bound for a process that runs no worker.
                self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            # With WAL, NORMAL survives any application crash; only a power loss may undo the
            # last commits (FACTS-storage 5).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateUnavailable(f"SQLite state file cannot be opened: {type(exc).__name__}: {exc}") from None

    @property
    def path(self) -> str:
        return self._path

    # ------------------------------------------------------------------ records

    def load(self, key: str) -> Versioned | None:
        row = self._one("SELECT doc, version FROM records WHERE key = ?", (key,))
        if row is None:
            return None
        return Versioned(Record.from_json(row[0]), str(row[1]))

    def insert(self, record: Record, payloads: Mapping[str, bytes] | None = None) -> str:
        params = (record.key, record.to_json(), record.due, record.updated_at)

        def write(db: sqlite3.Connection) -> str:
            try:
                db.execute(_INSERT, params)
            except sqlite3.IntegrityError:
                raise StateConflict(record.key) from None
            self._put_payloads(db, record.key, payloads)
            return "1"

        return str(self._write(write, payloads))

    def replace(self, record: Record, etag: str, payloads: Mapping[str, bytes] | None = None) -> str:
        params = (record.to_json(), record.due, record.updated_at, record.key, int(etag))

        def write(db: sqlite3.Connection) -> str:
            if db.execute(_REPLACE, params).rowcount != 1:
                raise StateConflict(record.key)
            self._put_payloads(db, record.key, payloads)
            return str(int(etag) + 1)

        return str(self._write(write, payloads))

    def payload(self, key: str, fingerprint: str) -> bytes | None:
        row = self._one("SELECT body FROM payloads WHERE key = ? AND fingerprint = ?", (key, fingerprint))
        return bytes(row[0]) if row is not None else None

    def records(self) -> Iterator[Record]:
        with self._lock:
            try:
                docs = [row[0] for row in self._db.execute("SELECT doc FROM records")]
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
        for doc in docs:
            yield Record.from_json(doc)

    def purge(self, before: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            rows = db.execute("SELECT key, doc FROM records WHERE due IS NULL AND updated < ?", (before,)).fetchall()
            keys = [(key,) for key, doc in rows if _finished(Record.from_json(doc))]
            db.executemany("DELETE FROM records WHERE key = ?", keys)
            db.executemany("DELETE FROM payloads WHERE key = ?", keys)
            return len(keys)

        purged: int = self._transaction(work)
        return purged

    def delete(self, key: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM records WHERE key = ?", (key,))
            db.execute("DELETE FROM payloads WHERE key = ?", (key,))

        self._transaction(write)

    # ------------------------------------------------------------------ outbox

    def schedule(self, key: str, delay_seconds: float) -> None:
        at = self._clock() + max(0.0, delay_seconds)
        self._statement(lambda db: db.execute("UPDATE records SET due = MIN(COALESCE(due, ?), ?) WHERE key = ?",
                                              (at, at, key)))

    def take_due(self, limit: int, lease_seconds: float) -> list[DueWork]:
        def take(db: sqlite3.Connection) -> list[DueWork]:
            now = self._clock()
            keys = [
                row[0]
                for row in db.execute(
                    "SELECT key FROM records WHERE due IS NOT NULL AND due <= ? "
                    "AND (leased_until IS NULL OR leased_until <= ?) ORDER BY due LIMIT ?",
                    (now, now, limit),
                )
            ]
            until = now + lease_seconds
            db.executemany("UPDATE records SET leased_until = ? WHERE key = ?", [(until, k) for k in keys])
            # The lease's end is the receipt: a late finish() must not free someone else's lease.
            return [DueWork(k, until) for k in keys]

        works: list[DueWork] = self._transaction(take)
        return works

    def finish(self, work: DueWork) -> None:
        self._statement(
            lambda db: db.execute(
                "UPDATE records SET leased_until = NULL WHERE key = ? AND leased_until = ?", (work.key, work.receipt)
            )
        )

    def sweep(self, now: float, grace_seconds: float) -> int:
        return 0  # the due column is the schedule; nothing can fall between record and outbox

    # ------------------------------------------------------------------ meta, health

    def get_meta(self, name: str) -> dict[str, Any] | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return json.loads(row[0]) if row is not None else None

    def put_meta(self, name: str, value: Mapping[str, Any]) -> None:
        text = json.dumps(dict(value), separators=(",", ":"), sort_keys=True)
        self._statement(
            lambda db: db.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, text),
            )
        )

    def ping(self) -> None:
        self._one("SELECT 1", ())

    def maintain(self) -> None:
        """Copy the WAL back into the database file, as far as no reader still needs it (PASSIVE:
        it never waits for other connections and never blocks their writes for long)."""
        if self._path != ":memory:":
            self._one("PRAGMA wal_checkpoint(PASSIVE)", ())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ plumbing

    def _put_payloads(self, db: sqlite3.Connection, key: str, payloads: Mapping[str, bytes] | None) -> None:
        if payloads:
            db.executemany(
                "INSERT OR IGNORE INTO payloads (key, fingerprint, body) VALUES (?, ?, ?)",
                [(key, fp, sqlite3.Binary(body)) for fp, body in payloads.items()],
            )

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None

    def _write(self, work: Callable[[sqlite3.Connection], Any], payloads: Mapping[str, bytes] | None) -> Any:
        """A record write: with payloads, one transaction for both; without, the one statement."""
        return self._transaction(work) if payloads else self._statement(work)

    def _statement(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """``work`` that is a single write statement, run on its own.

        A lone statement is its own transaction in SQLite: atomic, and it takes the write lock
        when it starts, waiting for it as BEGIN IMMEDIATE would (the busy timeout applies). So
        BEGIN and COMMIT around it would only be two more statements.
        """
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
            try:
                result = work(self._db)
                self._db.execute("COMMIT")
                return result
            except BaseException as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc) from None
                raise

    def _unavailable(self, exc: sqlite3.Error) -> StateUnavailable:
        return StateUnavailable(f"SQLite state store failed: {type(exc).__name__}: {exc}")


def _finished(record: Record) -> bool:
    return record.due is None and record.dead is None and record.claim is None
